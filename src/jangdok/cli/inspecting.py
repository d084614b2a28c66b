"""Commands that look at a cache without changing it: ls, stat, get, verify, stats."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict
from typing import IO, Any

from ..bulk import SortedListing, in_order
from ..cache import Cache, EntryInfo, Verdict
from ..console import human_age, human_size
from ..stores import LOCAL_TIER, ObjectInfo
from .context import (
    BIG_TRANSFER,
    EXIT_MISSING,
    EXIT_OK,
    EXIT_PROBLEMS,
    MANY_KEYS,
    PROBLEMS,
    Context,
    Failure,
    listed,
    plural,
)


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


# Ties in key order, whatever order the store lists in.
_ORDERS: dict[str, Callable[[ObjectInfo], Any]] = {"name": lambda item: item.key,
                                                   "size": lambda item: (item.size, item.key),
                                                   "age": lambda item: (-item.modified, item.key)}


def cmd_ls(ctx: Context) -> int:
    """Sorted in bounded memory, then written as they come; ``--long`` reads the headers
    ``concurrency`` at a time, shown in the same order."""
    args, cache, now = ctx.args, ctx.cache, time.time()

    def row(item: ObjectInfo) -> dict[str, Any]:
        found: dict[str, Any] = {"key": item.key, "size": item.size, "age_seconds": round(now - item.modified, 1),
                                 "modified": item.modified}
        if args.long:
            info = cache.stat(item.key, repair=False)  # looking never deletes
            expires_at = info.expires_at if info else None
            found.update(tier=_tier(cache, item.key), format=_format(info),
                         signed_by=info.signed_by if info else None,
                         metadata=info.metadata if info else None,
                         expires_at=expires_at, expired=expires_at is not None and expires_at <= now)
        return found

    with SortedListing(_ORDERS[args.sort], reverse=args.reverse) as found:
        found.extend(listed(cache, args.prefix))
        workers = cache.settings.concurrency if args.long else 1
        with ctx.console.progress("reading headers", found.count if args.long else None, "entries", MANY_KEYS) as bar, \
                closing(in_order(row, found, workers)) as made:

            def rows() -> Iterator[dict[str, Any]]:
                for one in made:
                    if args.long:
                        bar.advance()
                    yield one

            if args.json:
                ctx.emit(rows())
                return EXIT_OK
            total = 0
            for one in rows():
                total += one["size"]
                size, age = human_size(one["size"]), human_age(one["age_seconds"])
                if args.long:
                    # The header's claim: ls reads headers only (verify checks signatures).
                    signed = f"key {one['signed_by']}?" if one["signed_by"] else "unsigned"
                    expired = "  (expired: a miss, removed by prune)" if one["expired"] else ""
                    ctx.console.line(f"{size:>10}  {age:>5}  {one['tier']:<16} {one['format']:<22} {signed:<20} "
                                     f"{one['key']}{expired}")
                else:
                    ctx.console.line(f"{size:>10}  {age:>5}  {one['key']}")
    ctx.console.line(ctx.console.paint(f"{plural(found.count, 'entry', 'entries')}, {human_size(total)} in "
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
        show(f"signed by:   {info.signed_by + ' (as the header says; see check)' if info.signed_by else 'nobody'}")
        status = ctx.console.paint(verdict.status, "ok" if verdict.status in ("ok", "legacy") else "fail")
        show(f"check:       {status}: {verdict.detail}")
        if info.metadata is not None:
            show("metadata:")
            for line in json.dumps(info.metadata, ensure_ascii=False, indent=2).splitlines():
                show(f"  {line}")
    return EXIT_PROBLEMS if verdict.status in PROBLEMS else EXIT_OK


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
    with ctx.console.progress(f"loading {key}", size.size, "B", BIG_TRANSFER) as bar:
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




def cmd_verify(ctx: Context) -> int:
    """Entries in key order (sorted in bounded memory, and counted for the progress bar),
    ``concurrency`` at a time; only the problems found are kept for the report."""
    cache = ctx.cache
    counts: dict[str, int] = {}
    problems: list[Verdict] = []

    def verify(item: ObjectInfo) -> Verdict:
        return cache.verify(item.key, delete_damaged=ctx.args.delete)

    with SortedListing(_ORDERS["name"]) as keys:
        keys.extend(listed(cache, ctx.args.prefix))
        with ctx.console.progress("verifying", keys.count, "entries", MANY_KEYS) as bar, \
                closing(in_order(verify, keys, cache.settings.concurrency)) as verdicts:
            for verdict in verdicts:
                counts[verdict.status] = counts.get(verdict.status, 0) + 1
                if verdict.status in PROBLEMS:
                    problems.append(verdict)
                bar.advance()
    if ctx.args.json:
        ctx.emit({"counts": counts, "problems": [{"key": v.key, "status": v.status, "detail": v.detail,
                                                   "deleted": v.deleted} for v in problems]})
    else:
        for verdict in problems:
            gone = " (deleted)" if verdict.deleted else ""
            ctx.console.line(f"{ctx.console.paint(verdict.status, 'fail')}{gone}  {verdict.key}: {verdict.detail}")
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no entries"
        ctx.console.line(f"verified {plural(keys.count, 'entry', 'entries')} in {cache.location.url}: {summary}")
    return EXIT_PROBLEMS if problems else EXIT_OK


def _tally(items: Iterable[ObjectInfo]) -> dict[str, int]:
    """How many, and their bytes, as a listing goes by."""
    entries = size = 0
    for item in items:
        entries += 1
        size += item.size
    return {"entries": entries, "bytes": size}


def cmd_stats(ctx: Context) -> int:
    cache = ctx.cache
    store = cache.store
    tiers: dict[str, dict[str, Any]] = {}
    tiers[store.name] = {"location": cache.location.url if store.fallback_reason is None else store.location.url,
                         **_tally(listed(cache))}
    copies_kept = store.local_tier()
    if copies_kept is not None:
        tiers[LOCAL_TIER] = {"location": copies_kept.location.url, **_tally(copies_kept.list()),
                             "max_bytes": copies_kept.max_bytes}
    counters = {label: asdict(tier) for label, tier in cache.stats().items()}
    if ctx.args.json:
        ctx.emit({"tiers": tiers, "this_process": counters, "fallback_reason": store.fallback_reason})
        return EXIT_OK
    for name, tier in tiers.items():
        bound = f" of {human_size(tier['max_bytes'])}" if tier.get("max_bytes") else ""
        entries = plural(tier["entries"], "entry", "entries")
        ctx.console.line(f"{name:<18} {entries:>16}  {human_size(tier['bytes']):>10}{bound}  "
                         f"{tier['location']}")
    if store.fallback_reason:
        ctx.console.line(ctx.console.paint(f"on the local fallback folder: {store.fallback_reason}", "note"))
    return EXIT_OK


