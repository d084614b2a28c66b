"""The ``jangdok`` command: inspect, verify and clean a cache, and run a local S3 server.

    jangdok [--cache LOCATION] [--json] [--debug] COMMAND ...   (the options also after COMMAND)

Every command works on a local folder, an S3 location or a tiered cache, taken from
``--cache`` or from the environment and ``.env`` files as the library reads them (``CACHE_DIR``
and the rest). Built on argparse: it is in the standard library, so the command costs no
dependency and behaves the same wherever Python does, and its subcommands, help and usage
errors are all this needs.

Exit status: 0 success; 1 an error (one line on stderr, a traceback only with ``--debug``);
2 a usage error; 3 problems found (``verify`` found damaged or untrusted entries, ``doctor``
a failing check); 4 a key that is not there; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import secrets
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, NoReturn

from . import __version__
from .cache import Cache, EntryInfo, PruneReport, Verdict
from .console import Console, Interrupts, StopSignals, human_age, human_size, parse_duration, parse_size
from .errors import JangdokError
from .location import is_reserved
from .stores import LOCAL_TIER

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_PROBLEMS", "EXIT_MISSING"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PROBLEMS, EXIT_MISSING = 0, 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: stopped by the signal
_PROBLEMS = ("damaged", "untrusted", "unsupported", "foreign")
_BIG_TRANSFER = 32 * 1024 * 1024
_MANY_KEYS = 50


# What an error is called in the JSON document a script reads, by exit status.
_ERROR_TYPES = {EXIT_ERROR: "CommandError", EXIT_USAGE: "UsageError", EXIT_PROBLEMS: "ProblemsFound",
                EXIT_MISSING: "MissingEntry", EXIT_INTERRUPTED: "Interrupted", EXIT_TERMINATED: "Terminated"}


class Failure(Exception):
    """A command's own failure: a message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class UsageError(Exception):
    """A command line argparse refuses: its message, and the usage of the command it is for."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print and exit: --json needs a document too
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())


def _port(text: str) -> int:
    port = int(text) if text.strip().isdigit() else 0
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} is not a TCP port (1 to 65535)")
    return port


def _option(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser raising ValueError, keeping its message for the user."""

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parsed.__name__ = parse.__name__
    return parsed


def as_json(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2, default=str)


class Context:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.emitted = False
        self._cache: Cache | None = None

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            # An inspection tool must show the cache asked for, never quietly a fallback folder.
            self._cache = Cache(self.args.cache, fallback=False) if self.args.cache else Cache(fallback=False)
        return self._cache

    def emit(self, document: Any) -> None:
        """The command's result for scripts: one JSON document on stdout."""
        self.console.line(as_json(document))
        self.emitted = True

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


# -- inspecting ------------------------------------------------------------------------------


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _tier(cache: Cache, key: str) -> str:
    store = cache.store
    tier = store.local_tier()
    return f"{store.name}+local" if tier is not None and tier.holds(key) else store.name


def _format(info: EntryInfo | None) -> str:
    if info is None:
        return "?"
    if info.format_version is None:
        return "legacy pickle"
    return f"jangdok v{info.format_version} {info.serializer or 'pickle'}"


def cmd_ls(ctx: Context) -> int:
    args, cache, now = ctx.args, ctx.cache, time.time()
    found = [item for item in cache.store.list(args.prefix) if not is_reserved(item.key)]
    order: dict[str, Callable[[Any], Any]] = {"name": lambda item: item.key, "size": lambda item: item.size,
                                              "age": lambda item: -item.modified}
    found.sort(key=order[args.sort], reverse=args.reverse)
    rows = []
    with ctx.console.progress("reading headers", len(found) if args.long else None, "entries", _MANY_KEYS) as bar:
        for item in found:
            row: dict[str, Any] = {"key": item.key, "size": item.size, "age_seconds": round(now - item.modified, 1),
                                   "modified": item.modified}
            if args.long:
                info = cache.stat(item.key, repair=False)  # looking never deletes
                row.update(tier=_tier(cache, item.key), format=_format(info),
                           signed_by=info.signed_by if info else None,
                           metadata=info.metadata if info else None)
                bar.advance()
            rows.append(row)
    if args.json:
        ctx.emit(rows)
        return EXIT_OK
    for row in rows:
        size, age = human_size(row["size"]), human_age(row["age_seconds"])
        if args.long:
            signed = f"signed {row['signed_by']}" if row["signed_by"] else "unsigned"
            ctx.console.line(f"{size:>10}  {age:>5}  {row['tier']:<16} {row['format']:<22} {signed:<20} {row['key']}")
        else:
            ctx.console.line(f"{size:>10}  {age:>5}  {row['key']}")
    total = sum(row["size"] for row in rows)
    ctx.console.line(ctx.console.paint(f"{_count(len(rows), 'entry', 'entries')}, {human_size(total)} in "
                                       f"{cache.location.url}", "dim"))
    return EXIT_OK


def cmd_stat(ctx: Context) -> int:
    cache, key = ctx.cache, ctx.args.key
    tier = _tier(cache, key)
    verdict = cache.verify(key)  # never deletes, never deserializes
    if verdict.status == "missing":
        raise Failure(f"no entry {key!r} in {cache.location.url}", EXIT_MISSING)
    info = verdict.info or cache.stat(key, repair=False)
    if info is None:  # not even its header can be read
        if ctx.args.json:
            ctx.emit({"key": key, "check": {"status": verdict.status, "detail": verdict.detail}})
        else:
            ctx.console.line(f"{key}: {ctx.console.paint(verdict.status, 'fail')}: {verdict.detail}")
        return EXIT_PROBLEMS
    document = {**asdict(info), "tier": tier, "format": _format(info),
                "check": {"status": verdict.status, "detail": verdict.detail}}
    if ctx.args.json:
        ctx.emit(document)
    else:
        now = time.time()
        show = ctx.console.line
        show(f"key:         {info.key}")
        show(f"path:        {info.path}")
        show(f"tier:        {document['tier']}")
        show(f"size:        {human_size(info.size)} ({info.size} bytes)")
        show(f"created:     {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.created_at))} "
             f"({human_age(now - info.created_at)} ago)")
        if info.expires_at is not None:
            left = info.expires_at - now
            show(f"expires:     {'expired ' + human_age(-left) + ' ago' if left <= 0 else 'in ' + human_age(left)}")
        show(f"format:      {document['format']}")
        show(f"signed by:   {info.signed_by or 'nobody (unsigned)'}")
        status = ctx.console.paint(verdict.status, "ok" if verdict.status in ("ok", "legacy") else "fail")
        show(f"check:       {status}: {verdict.detail}")
        if info.metadata is not None:
            show("metadata:")
            for line in json.dumps(info.metadata, ensure_ascii=False, indent=2).splitlines():
                show(f"  {line}")
    return EXIT_PROBLEMS if verdict.status in _PROBLEMS else EXIT_OK


def _describe(value: Any, depth: int = 0) -> str:
    """A short account of a value: its type, length, and the shapes of its arrays."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__} {dtype} {tuple(shape)}"
    if isinstance(value, (list, tuple)) and depth < 2:
        kinds = sorted({_describe(item, depth + 1) for item in value[:1000]})
        inside = kinds[0] if len(kinds) == 1 else " | ".join(kinds[:4]) + (" | ..." if len(kinds) > 4 else "")
        return f"{type(value).__name__} of {len(value)}" + (f": {inside}" if value else "")
    if isinstance(value, dict) and depth < 2:
        return f"dict of {len(value)}: " + ", ".join(f"{name!r}: {_describe(item, depth + 1)}"
                                                     for name, item in list(value.items())[:8])
    if depth:
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 80 else f"{type(value).__name__} ({len(text)} characters as repr)"


def _encode(value: Any, form: str) -> Callable[[IO[bytes]], None]:
    """How to write the value in a format (checked before anything is written)."""
    if form == "npy":
        import numpy as np

        if not isinstance(value, np.ndarray):
            raise Failure(f"the value is a {_describe(value)}; --format npy holds one numpy array: "
                          "use --format pickle")
        return lambda file: np.save(file, value, allow_pickle=False)
    if form == "json":
        try:
            text = json.dumps(value, ensure_ascii=False, indent=2)
        except (TypeError, ValueError) as exc:
            raise Failure(f"the value is not JSON ({exc}); use --format pickle") from exc
        data = text.encode("utf-8") + b"\n"

        def write_json(file: IO[bytes]) -> None:
            file.write(data)

        return write_json
    return lambda file: pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)


def write_file(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file whole or not at all: into a temporary file beside it, renamed over it once
    complete, so an interrupted or failed write (Ctrl-C, a full disk, a value that cannot be
    pickled) leaves the path as it was, and no temporary file. A path that is not a regular
    file (``/dev/stdout``, a pipe) is written as a stream: there is nothing to replace."""
    target = os.path.realpath(path)  # through a symlink, as opening the path would write
    try:
        kind = os.stat(target).st_mode
    except FileNotFoundError:
        kind = stat.S_IFREG
    if not stat.S_ISREG(kind):
        with open(target, "wb") as stream:
            write(stream)
        return
    folder, name = os.path.split(target)
    temp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
    # O_EXCL: never write through a file someone placed there; 0o666: the umask applies as to any new file.
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def cmd_get(ctx: Context) -> int:
    cache, key = ctx.cache, ctx.args.key
    size = cache.stat(key)
    if size is None:
        raise Failure(f"no entry {key!r} in {cache.location.url}", EXIT_MISSING)
    with ctx.console.progress(f"loading {key}", size.size, "B", _BIG_TRANSFER) as bar:
        found = cache.get_entry(key, progress=bar.to)
    if found is None:
        raise Failure(f"entry {key!r} could not be loaded (see the warning above)", EXIT_PROBLEMS)
    if ctx.args.output:
        try:
            write_file(ctx.args.output, _encode(found.value, ctx.args.format))
        except OSError as exc:
            raise Failure(f"cannot write {ctx.args.output}: {exc.strerror or exc}") from exc
        except (pickle.PicklingError, TypeError, AttributeError, ImportError) as exc:
            raise Failure(f"cannot write the value as {ctx.args.format}: {exc}") from exc
        message = f"wrote {key} to {ctx.args.output} ({ctx.args.format})"
    else:
        message = _describe(found.value)
    if ctx.args.json:
        ctx.emit({"key": key, "summary": _describe(found.value), "output": ctx.args.output,
                  "format": ctx.args.format if ctx.args.output else None, "info": asdict(found.info)})
    else:
        ctx.console.line(message)
    return EXIT_OK


# -- changing --------------------------------------------------------------------------------


def _confirmed(ctx: Context, question: str) -> bool:
    """Whether the user agreed (``--yes`` agrees for them). Without a terminal to ask on, a
    usage error: a script must say ``--yes``."""
    if ctx.args.yes:
        return True
    if not sys.stdin.isatty():
        raise Failure(f"{question} Refusing without confirmation: pass --yes", EXIT_USAGE)
    ctx.console.problem(f"{question} [y/N] ")
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_rm(ctx: Context) -> int:
    cache, args = ctx.cache, ctx.args
    if bool(args.keys) == (args.prefix is not None):
        raise Failure("name keys to remove, or --prefix P (not both)", EXIT_USAGE)
    if args.prefix is not None:
        return _rm_prefix(ctx, args.prefix)
    keys = list(args.keys)
    removed: list[str] = []
    missing: list[str] = []
    if _confirmed(ctx, f"Remove {_count(len(keys), 'entry', 'entries')} from {cache.location.url}?"):
        for key in keys:
            (removed if cache.delete(key) else missing).append(key)
    if args.json:
        ctx.emit({"removed": removed, "missing": missing})
    else:
        for key in removed:
            ctx.console.line(f"removed {key}")
        for key in missing:
            ctx.console.problem(f"jangdok: no entry {key!r}")
        if not removed and not missing:
            ctx.console.problem("nothing removed")
    return EXIT_MISSING if missing else EXIT_OK


def _rm_prefix(ctx: Context, prefix: str) -> int:
    """Every entry under a prefix, in the version listed: one listing request and one batch
    delete per 1000 entries (where the store has batches), so an entry rewritten since the
    listing is kept."""
    cache = ctx.cache
    listed = sorted((item for item in cache.store.list(prefix) if not is_reserved(item.key)), key=lambda i: i.key)
    if not listed:
        raise Failure(f"no entries under prefix {prefix!r} in {cache.location.url}", EXIT_MISSING)
    question = (f"Remove {_count(len(listed), 'entry', 'entries')} "
                f"({human_size(sum(item.size for item in listed))}) under {prefix!r} from {cache.location.url}?")
    confirmed = _confirmed(ctx, question)
    removed = sorted(cache.store.delete_many(listed)) if confirmed else []
    kept = sorted(set(item.key for item in listed) - set(removed)) if confirmed else []
    if ctx.args.json:
        ctx.emit({"removed": removed, "missing": [], "kept": kept})
        return EXIT_OK
    for key in removed:
        ctx.console.line(f"removed {key}")
    for key in kept:
        ctx.console.problem(f"kept {key}: rewritten or removed by another process since it was listed")
    if not removed:
        ctx.console.problem("nothing removed")
    return EXIT_OK


def cmd_prune(ctx: Context) -> int:
    """Asks first, as rm does: what would go is examined (a dry run), and once confirmed the
    same rule runs for real. Crash leftovers are removed by the real run only, and counted apart."""
    args, cache = ctx.args, ctx.cache

    def prune(dry_run: bool) -> PruneReport:
        with ctx.console.progress("examining", None, "entries", _MANY_KEYS) as bar:  # the total comes with the listing
            return cache.prune(older_than=args.older_than, max_bytes=args.max_size, dry_run=dry_run,
                               progress=bar.to)

    plan = None if args.yes and not args.dry_run else prune(dry_run=True)
    declined = False
    if plan is None:
        report = prune(dry_run=False)
    elif args.dry_run:
        report = plan
    elif not plan.removed:  # no entry to ask about: only the leftovers, which are never asked about
        report = PruneReport((), 0, cache.cleanup(), False)
    elif _confirmed(ctx, f"Remove {_count(len(plan.removed), 'entry', 'entries')} ({human_size(plan.bytes_freed)}) "
                         f"from {cache.location.url}?"):
        report = prune(dry_run=False)
    else:
        report, declined = PruneReport((), 0, 0, False), True
    # Between the question and the real run the cache may change (a rewrite, a new entry):
    # the real run applies the same rule again, and any difference is said, never silent.
    shown = plan.removed if plan is not None and plan is not report and not declined else None
    added = sorted(set(report.removed) - set(shown)) if shown is not None else []
    kept = sorted(set(shown) - set(report.removed)) if shown is not None else []
    if args.json:
        ctx.emit({**asdict(report), "declined": declined, "not_shown_before": added, "kept_since_shown": kept})
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    for key in report.removed:
        ctx.console.line(f"{verb} {key}")
    if report.dry_run:
        leftovers = "; the real run also removes crash leftovers older than an hour, and counts them apart"
    else:
        leftovers = f", and {_count(report.leftovers, 'crash leftover', 'crash leftovers')}"
    ctx.console.line(f"{verb} {_count(len(report.removed), 'entry', 'entries')} ({human_size(report.bytes_freed)})"
                     f"{leftovers}")
    if added:
        ctx.console.problem(f"also removed, as the cache changed after it was examined: {', '.join(added)}")
    if kept:
        ctx.console.problem(f"kept, as they changed after the cache was examined: {', '.join(kept)}")
    if declined:
        ctx.console.problem("nothing removed")
    return EXIT_OK


def cmd_verify(ctx: Context) -> int:
    cache = ctx.cache
    keys = sorted(item.key for item in cache.store.list(ctx.args.prefix) if not is_reserved(item.key))
    verdicts: list[Verdict] = []
    with ctx.console.progress("verifying", len(keys), "entries", _MANY_KEYS) as bar:
        for key in keys:
            verdicts.append(cache.verify(key, delete_damaged=ctx.args.delete))
            bar.advance()
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
    problems = [verdict for verdict in verdicts if verdict.status in _PROBLEMS]
    if ctx.args.json:
        ctx.emit({"counts": counts, "problems": [{"key": v.key, "status": v.status, "detail": v.detail,
                                                   "deleted": v.deleted} for v in problems]})
    else:
        for verdict in problems:
            gone = " (deleted)" if verdict.deleted else ""
            ctx.console.line(f"{ctx.console.paint(verdict.status, 'fail')}{gone}  {verdict.key}: {verdict.detail}")
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no entries"
        ctx.console.line(f"verified {_count(len(verdicts), 'entry', 'entries')} in {cache.location.url}: {summary}")
    return EXIT_PROBLEMS if problems else EXIT_OK


def cmd_stats(ctx: Context) -> int:
    cache = ctx.cache
    store = cache.store
    tiers: dict[str, dict[str, Any]] = {}
    listed = [item for item in store.list() if not is_reserved(item.key)]
    tiers[store.name] = {"location": cache.location.url if store.fallback_reason is None else store.location.url,
                         "entries": len(listed), "bytes": sum(item.size for item in listed)}
    copies_kept = store.local_tier()
    if copies_kept is not None:
        copies = list(copies_kept.list())
        tiers[LOCAL_TIER] = {"location": copies_kept.location.url, "entries": len(copies),
                             "bytes": sum(item.size for item in copies), "max_bytes": copies_kept.max_bytes}
    counters = {label: asdict(tier) for label, tier in cache.stats().items()}
    if ctx.args.json:
        ctx.emit({"tiers": tiers, "this_process": counters, "fallback_reason": store.fallback_reason})
        return EXIT_OK
    for name, tier in tiers.items():
        bound = f" of {human_size(tier['max_bytes'])}" if tier.get("max_bytes") else ""
        ctx.console.line(f"{name:<18} {tier['entries']:>8} entries  {human_size(tier['bytes']):>10}{bound}  "
                         f"{tier['location']}")
    if store.fallback_reason:
        ctx.console.line(ctx.console.paint(f"on the local fallback folder: {store.fallback_reason}", "note"))
    return EXIT_OK


def cmd_doctor(ctx: Context) -> int:
    from .doctor import run_checks

    marks = {"ok": ("✅", "ok"), "note": ("⚠️", "note"), "fail": ("❌", "fail"), "info": ("  ", "dim")}
    findings = []
    for finding in run_checks(**({"cache_dir": ctx.args.cache} if ctx.args.cache else {})):
        findings.append(finding)
        if ctx.args.json:
            continue
        mark, style = marks[finding.status]
        ctx.console.line(f"{mark} {ctx.console.paint(finding.message, style)}")
        for extra in (finding.error, finding.fix and f"→ fix: {finding.fix}"):
            if extra:
                ctx.console.line(f"   {extra}")
    failures = sum(finding.status == "fail" for finding in findings)
    if ctx.args.json:
        ctx.emit({"failures": failures, "findings": [asdict(finding) for finding in findings]})
    elif failures:
        ctx.console.line(ctx.console.paint(f"{failures} check(s) failed", "fail"))
    else:
        ctx.console.line(ctx.console.paint("every configured cache store works", "ok"))
    return EXIT_PROBLEMS if failures else EXIT_OK


# -- the development server ------------------------------------------------------------------


def cmd_server(ctx: Context) -> int:
    """Whatever happens, stopping the command stops everything it started: signals only set a
    flag (see StopSignals), which the startup wait and the serving loop both watch."""
    from .server import ADMIN_ACTIONS, Identity, Interrupted, ServerError, launch_seaweed

    args = ctx.args
    if args.port is not None:
        _check_port_free(args.port)
    keep = args.dir is not None
    # Keys of this server only, made anew each start: nothing to leak from a printed export.
    identity = Identity("jangdok-dev", "JDK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), ADMIN_ACTIONS)
    with StopSignals() as stop:
        workdir = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="jangdok-server-"))
        try:
            server = launch_seaweed(workdir, port=args.port, access_keys=[identity])
            try:
                ctx.console.problem(f"starting SeaweedFS (pid {server.pid}) in {workdir}; Ctrl-C stops it")
                server.wait_ready(stop)
                _ensure_bucket(server, args.bucket)
                if stop():
                    raise Interrupted("stopped before the server was announced")
                _announce(ctx, server, workdir, args.bucket)
                while not stop():
                    if server.process.poll() is not None:
                        raise Failure(f"the server exited by itself ({server.process.returncode}); "
                                      f"its log is {workdir / 'weed.log'}")
                    time.sleep(0.2)
            finally:
                server.stop()
        except Interrupted as exc:
            status = 128 + (stop.received or signal.SIGINT)
            raise Failure("interrupted: the server was stopped while starting", status) from exc
        except ServerError as exc:
            raise Failure(f"SeaweedFS could not start: {exc}") from exc
        except OSError as exc:
            raise Failure(f"cannot run the server in {workdir}: {exc.strerror or exc}") from exc
        finally:
            if not keep:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
    ctx.console.problem("server stopped")
    return EXIT_OK


def _check_port_free(port: int) -> None:
    """Refuse a port something already listens on: the readiness probe would otherwise talk to
    that other program until the startup deadline. (A check before the start, so a program
    taking the port in between is still met by that deadline.)"""
    import socket

    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as weed does: a port in TIME_WAIT is free
        probe.bind(("127.0.0.1", port))
    except OSError as exc:
        raise Failure(f"port {port} on 127.0.0.1 is not free ({exc.strerror or exc}); choose another --port",
                      EXIT_USAGE) from exc
    finally:
        probe.close()


def _ensure_bucket(server: Any, bucket: str) -> None:
    """The bucket to serve, created unless a ``--dir`` used before already holds it."""
    try:
        server.ensure_bucket(bucket, server.client(connect_timeout=2, read_timeout=10))
    except Exception as exc:  # botocore's errors, for a name S3 refuses: one line, not a traceback
        raise Failure(f"cannot create bucket {bucket!r}: {exc}") from exc


def _announce(ctx: Context, server: Any, workdir: Path, bucket: str) -> None:
    access_key, secret_key = server.identity
    exports = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": access_key,
               "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": "us-east-1",
               "CACHE_DIR": f"s3://{bucket}/cache/"}
    if ctx.args.json:
        ctx.emit({"pid": server.pid, "workdir": str(workdir), "exports": exports})
    else:
        ctx.console.problem(f"SeaweedFS S3 server on {server.endpoint} (pid {server.pid}, data in {workdir}). "
                            "In another shell:")
        for name, value in exports.items():
            ctx.console.line(f"export {name}={value}")
    sys.stdout.flush()


# -- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jangdok", description="Inspect, verify and clean a jangdok cache; run a local S3 server.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 problems found (verify, doctor), 4 missing key, "
               "130 interrupted (143 on SIGTERM).")
    parser.add_argument("--version", action="version", version=f"jangdok {__version__}")

    def options(target: argparse.ArgumentParser, default: Any) -> None:
        # Before or after the command; after it, a default must not undo what came before.
        target.add_argument("--cache", metavar="LOCATION", default=default,
                            help="a folder, s3://bucket/prefix/ (default: CACHE_DIR from the environment or .env)")
        target.add_argument("--json", action="store_true", default=default, help="print one JSON document for scripts")
        target.add_argument("--debug", action="store_true", default=default, help="show tracebacks and jangdok's log")

    options(parser, None)
    parser.set_defaults(json=False, debug=False)
    common = _Parser(add_help=False)
    options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, handler: Callable[[Context], int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    ls = command("ls", "list entries with size and age (--long: tier, format, signature)", cmd_ls)
    ls.add_argument("prefix", nargs="?", default="", help="only keys starting with this")
    ls.add_argument("-l", "--long", action="store_true", help="also read each header: tier, format, signer")
    ls.add_argument("--sort", choices=("name", "size", "age"), default="name")
    ls.add_argument("-r", "--reverse", action="store_true")
    show = command("stat", "show one entry's header, metadata and checksum", cmd_stat)
    show.add_argument("key")
    get = command("get", "load one entry and summarise it, or write it to a file", cmd_get)
    get.add_argument("key")
    get.add_argument("-o", "--output", metavar="FILE", help="write the value here")
    get.add_argument("--format", choices=("pickle", "npy", "json"), default="pickle",
                     help="how to write it (default: a plain pickle)")
    rm = command("rm", "remove entries (asks first; --yes to skip)", cmd_rm)
    rm.add_argument("keys", nargs="*")
    rm.add_argument("--prefix", help="remove every entry under this prefix")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")
    prune = command("prune", "remove expired, old or excess entries and crash leftovers (asks first)", cmd_prune)
    prune.add_argument("--older-than", metavar="AGE", type=_option(parse_duration),
                       help="entries written longer ago than this, e.g. 30d, 12h, 90m (a unit is required)")
    prune.add_argument("--max-size", metavar="SIZE", type=_option(parse_size),
                       help="keep the newest entries within this, e.g. 5GB, 500MB (a unit is required)")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.add_argument("-y", "--yes", action="store_true", help="do not ask")
    verify = command("verify", "check every entry's checksum (and signature) without loading it", cmd_verify)
    verify.add_argument("prefix", nargs="?", default="")
    verify.add_argument("--delete", action="store_true", help="delete the damaged entries found")
    command("stats", "entries and bytes per tier", cmd_stats)
    command("doctor", "check configuration, credentials and permissions (as test_s3_cache.py)", cmd_doctor)
    server = command("server", "run a SeaweedFS S3 server on 127.0.0.1 for development", cmd_server)
    server.add_argument("--dir", help="keep its data here (default: a temporary folder, removed on exit)")
    server.add_argument("--port", type=_option(_port), help="the S3 port (default: a free one)")
    server.add_argument("--bucket", default="jangdok", help="the bucket to create (default: jangdok)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status.

    The first Ctrl-C (or SIGTERM) stops the command where it is, which then cleans up (a file
    half written is removed) and says so in one line; any later one is ignored until it is done.
    Called without ``argv`` this is the process's entry (the ``jangdok`` script, ``python -m
    jangdok``): Ctrl-C then stays ignored once it returns, as the process only shuts down
    (joining threads, closing connections), where an interrupt could only print a traceback.
    Called with ``argv``, it restores the caller's signal handlers.
    """
    console = Console()
    if argv is None:  # the process's entry: what the handlers are restored to when main() returns
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Interrupts() as interrupts:
        try:
            return _run(argv, console, interrupts)
        except KeyboardInterrupt:  # the first one came as the command was closing its cache
            console.problem("jangdok: interrupted")
            return interrupts.status


def _drop_stdout() -> None:
    """Send what is left for stdout nowhere: its reader has gone (``jangdok ls | head``), and
    Python would otherwise complain again when it flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run(argv: Sequence[str] | None, console: Console, interrupts: Interrupts) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    wants_json = "--json" in arguments  # before parsing, so that a usage error gets its document too
    ctx: Context | None = None

    def failed(kind: str, message: str, status: int, shown: str | None = None) -> int:
        """One line on stderr (``shown``, else the message) and, for scripts, one JSON document
        on stdout, unless the command already printed its own."""
        console.problem(shown or f"jangdok: {message}")
        if wants_json and not (ctx is not None and ctx.emitted):
            try:
                console.line(as_json({"error": {"type": kind, "message": message, "exit": status}}))
            except BrokenPipeError:  # nobody reads stdout any more: the status still says it
                _drop_stdout()
        return status

    try:
        args = build_parser().parse_args(arguments)
        wants_json = args.json
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                            format="jangdok: %(levelname)s: %(message)s")
        if not args.debug:
            logging.getLogger("botocore").setLevel(logging.WARNING)
        ctx = Context(args, console)
        return args.handler(ctx)
    except UsageError as exc:
        console.problem(exc.usage.rstrip())
        return failed("UsageError", str(exc), EXIT_USAGE, shown=str(exc))
    except Failure as exc:
        return failed(_ERROR_TYPES.get(exc.status, "CommandError"), str(exc), exc.status)
    except JangdokError as exc:
        status = failed(type(exc).__name__, str(exc), EXIT_ERROR, shown=f"jangdok: error: {exc}")
        if ctx is not None and ctx.args.debug:
            raise
        return status
    except KeyboardInterrupt:
        return failed(_ERROR_TYPES[interrupts.status], "interrupted", interrupts.status)
    except BrokenPipeError:  # `jangdok ls | head`
        _drop_stdout()
        return EXIT_OK
    except Exception as exc:  # a bug: the traceback follows, and a script still gets its document
        if wants_json and not (ctx is not None and ctx.emitted):
            console.line(as_json({"error": {"type": type(exc).__name__, "message": str(exc), "exit": EXIT_ERROR}}))
        raise
    finally:
        if ctx is not None:
            ctx.close()
