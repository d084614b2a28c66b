"""The ``jangdok`` command on a cache of many entries: requests per entry, time and memory.

    python -m jangdok.bench.scale [--entries 100000] [--endpoint URL] [--no-local]

For a cache of ``entries / 10`` and of ``entries`` tiny valid entries, on S3 and in a local
folder, runs ``ls``, ``ls -l``, ``stats``, ``verify``, ``prune`` with no TTL in the cache (nothing
to remove), ``prune --max-size --dry-run``, ``prune`` by TTL (a tenth more entries, already
expired, with their expiry markers), ``prune --max-size`` (removing the older half) and
``rm --prefix`` (the rest), each in a fresh process, as a user runs the command. It prints
each one's S3 requests (all of them, from opening the store on: counted with botocore
``before-send`` hooks on the cache's client), requests per entry, time and peak memory, then
PASS or MISS for: ``prune`` with no TTLs and ``ls`` make at most 1 request per 500 entries,
and their memory is flat (peak at ``entries`` within 1.5x the peak at a tenth of them).

Time and memory are those of the command's own work, from an opened store: in a fresh
process, after its imports and the store's opening, the peak RSS (VmHWM, reset first) minus
the RSS before. An RSS of a few MB is at the resolution of the allocator: below
:data:`MEMORY_FLOOR` a peak counts as that floor when the two sizes are compared.

Without ``--endpoint`` it starts its own SeaweedFS on 127.0.0.1 (:mod:`jangdok.server`); with
it, it uses that S3 endpoint (say, a shaping proxy in front of a server started by
``jangdok server``, whose keys it assumes) and the bucket ``scale``, which it creates. The
entries are written by raw parallel PUTs of bytes from jangdok's own entry encoding (signed
with botocore's SigV4, on plain HTTP connections), not by ``Cache.put``. :func:`measure` does
it all and returns the rows and the verdicts, for the main benchmark.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from .fresh import peak_rss
from .tools import Context

__all__ = ["measure", "Measured", "Row", "Verdict", "main", "BUCKET", "MEMORY_FLOOR"]

BUCKET = "scale"
MEMORY_FLOOR = 4 * 2**20
"""Peaks below this count as this much when 10x the entries are compared (allocator noise)."""
REQUESTS_PER_ENTRY = 1 / 500
FLAT = 1.5
TTL_SHARE = 10  # one TTL'd entry per ten plain ones, for prune by TTL
_PUT_WORKERS = 32
_CHILD_TIMEOUT = 3 * 3600


@dataclass
class Row:
    store: str
    entries: int
    """Entries in the cache when the command ran."""
    command: str
    requests: int | None
    """S3 requests, the store's opening included; ``None`` on a local folder."""
    seconds: float
    cpu_seconds: float
    """This process's CPU time: the rest of ``seconds`` is waiting, for the server mostly."""
    peak_bytes: int
    """Peak RSS increase over the command's work."""
    status: int

    @property
    def per_entry(self) -> float | None:
        return None if self.requests is None else self.requests / max(1, self.entries)


@dataclass
class Verdict:
    passed: bool
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS'}  {self.text}"


@dataclass
class Measured:
    rows: list[Row]
    verdicts: list[Verdict]


# -- writing many entries fast ---------------------------------------------------------------


class _RawPuts:
    """PutObject as one signed HTTP request on a connection kept per thread: a third of the
    client CPU boto3 spends per request, which is what bounds writing 100,000 objects here."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
        from botocore.credentials import Credentials

        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.netloc
        self._endpoint = endpoint.rstrip("/")
        self._bucket = bucket
        self._credentials = Credentials(access_key, secret_key)
        self._local = threading.local()

    def put(self, key: str, body: bytes) -> None:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        path = f"/{self._bucket}/{quote(key)}"
        request = AWSRequest("PUT", self._endpoint + path, data=body)
        S3SigV4Auth(self._credentials, "s3", "us-east-1").add_auth(request)
        for attempt in range(3):  # a kept-alive connection the server closed meanwhile: once more, anew
            connection = self._connection()
            try:
                connection.request("PUT", path, body=body, headers=dict(request.headers))
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"PUT {path}: HTTP {response.status}: {answer[:300]!r}")
            return

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._local.connection = kind(self._host, timeout=60)
        return connection


def _entry_bytes(key: str, number: int, expires_at: float | None = None) -> bytes:
    from jangdok import entry

    created = None if expires_at is None else expires_at - 60
    _, chunks = entry.encode({"n": number}, key=key, created_at=created, expires_at=expires_at)
    return b"".join(bytes(chunk) for chunk in chunks)


def _keys(folder: str, count: int) -> list[str]:
    return [f"{folder}/{number:07d}.pkl" for number in range(count)]


def _write_all(write: Callable[[str, bytes], None], items: Sequence[tuple[str, bytes]], workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda item: write(*item), items):
            pass


class _Target:
    """Where one run's cache lives, and how its objects are written around jangdok."""

    def __init__(self, ctx: Context, kind: str, entries: int, populate_endpoint: str) -> None:
        self.kind = kind
        self.ctx = ctx
        if kind == "S3":
            self.location = f"s3://{BUCKET}/scale-{entries}-{uuid.uuid4().hex[:8]}/"
            puts = _RawPuts(populate_endpoint, ctx.access_key, ctx.secret_key, BUCKET)
            prefix = self.location.split("/", 3)[3]
            self._write = lambda key, body: puts.put(prefix + key, body)
            self._workers = _PUT_WORKERS
        else:
            self.location = str(ctx.folder(f"scale-{entries}-{uuid.uuid4().hex[:8]}"))
            self._write = self._write_file
            self._workers = 4

    def _write_file(self, key: str, body: bytes) -> None:
        path = Path(self.location, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    def settings(self) -> Any:
        return self.ctx.jangdok_settings(self.location)

    def count(self, prefix: str) -> int:
        """Entries under ``prefix`` now (a listing, not counted in any row)."""
        from jangdok import Cache

        with Cache.from_settings(self.settings()) as cache:
            return sum(1 for _ in cache.keys(prefix))

    def populate(self, folder: str, count: int) -> int:
        """``count`` entries under ``folder/``; their total bytes."""
        items = [(key, _entry_bytes(key, number)) for number, key in enumerate(_keys(folder, count))]
        _write_all(self._write, items, self._workers)
        return sum(len(body) for _, body in items)

    def populate_expired(self, folder: str, count: int) -> None:
        """``count`` entries whose TTL has passed, each with its expiry marker written first."""
        from jangdok import expiry, parse_location
        from jangdok.stores import open_store

        store = open_store(parse_location(self.location), self.settings())  # for the markers' naming rules
        expires_at = time.time() - 60
        items = []
        try:
            for number, key in enumerate(_keys(folder, count)):
                items.append(expiry.marker_for(store, key, expires_at))
                items.append((key, _entry_bytes(key, number, expires_at)))
        finally:
            store.close()
        _write_all(self._write, items[0::2], self._workers)
        _write_all(self._write, items[1::2], self._workers)


# -- one command in a fresh process ----------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one command on an opened store; its requests, time and peak RSS increase."""
    import gc

    from jangdok import Cache
    from jangdok.cli import build_parser
    from jangdok.cli.context import Context as CommandContext
    from jangdok.console import Console

    ctx = Context(**spec["ctx"])
    settings = ctx.jangdok_settings(spec["location"])
    lock = threading.Lock()
    sent = [0]

    def count(**_: Any) -> None:
        with lock:  # the command's threads send too
            sent[0] += 1

    class Counted(Cache):
        def _open(self) -> Any:
            if not self.location.is_s3:
                return super()._open()
            from jangdok.stores.s3 import S3Store

            store = S3Store(self.location, settings)
            store.client.meta.events.register("before-send.s3", count)
            store.check()  # what opening the store asks, counted
            return store

    cache = Counted.from_settings(settings)
    cache.store  # noqa: B018 - opened before the measure: its client's setup is no command's work
    args = build_parser().parse_args(spec["argv"])
    with open(os.devnull, "w") as nowhere:
        command = CommandContext(args, Console(out=nowhere, err=nowhere), cache)
        gc.collect()
        before = peak_rss(reset=True)
        started, cpu = time.perf_counter(), time.process_time()
        try:
            status = args.handler(command)
        finally:
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            peak = peak_rss() - before
            cache.close()
    return {"requests": sent[0] if cache.location.is_s3 else None, "seconds": seconds, "cpu_seconds": cpu,
            "peak_bytes": peak, "status": status}


def _in_fresh_process(ctx: Context, location: str, argv: list[str]) -> dict[str, Any]:
    spec = {"ctx": asdict(ctx), "location": location, "argv": argv}
    done = subprocess.run([sys.executable, "-m", "jangdok.bench.scale", "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=_CHILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"jangdok {' '.join(argv)} in a subprocess failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the whole run -----------------------------------------------------------------------------


def _run_store(ctx: Context, kind: str, entries: int, populate_endpoint: str,
               say: Callable[[str], None]) -> list[Row]:
    target = _Target(ctx, kind, entries, populate_endpoint)
    rows: list[Row] = []

    def run(command: str, argv: list[str], present: int) -> None:
        measured = _in_fresh_process(ctx, target.location, argv)
        row = Row(kind, present, command, **measured)
        rows.append(row)
        say(_row_text(row))

    started = time.perf_counter()
    total = target.populate("e", entries)
    say(f"{kind}: wrote {entries} entries ({total / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    half = f"{total // 2}B"
    for command, argv in (("ls", ["ls"]), ("ls -l", ["ls", "-l"]), ("stats", ["stats"]), ("verify", ["verify"]),
                          ("prune, no TTLs", ["prune", "--yes"]),
                          ("prune --max-size --dry-run", ["prune", "--max-size", half, "--dry-run"])):
        run(command, argv, entries)
    expiring = max(1, entries // TTL_SHARE)
    target.populate_expired("t", expiring)
    run(f"prune by TTL ({expiring} expired)", ["prune", "--yes"], entries + expiring)
    run("prune --max-size (the older half)", ["prune", "--max-size", half, "--yes"], entries)
    run("rm --prefix (the rest)", ["rm", "--prefix", "e/", "--yes"], target.count("e/"))
    if kind == "local":
        shutil.rmtree(target.location, ignore_errors=True)
    return rows


def _flat(rows: list[Row], kind: str, command: str, sizes: Sequence[int]) -> Verdict:
    small, large = ([row for row in rows if row.store == kind and row.command == command and row.entries == size]
                    for size in (sizes[0], sizes[-1]))
    if not small or not large:
        return Verdict(False, f"{kind} {command}: not measured")
    low, high = max(small[0].peak_bytes, MEMORY_FLOOR), large[0].peak_bytes
    return Verdict(high <= FLAT * low,
                   f"{kind} {command}: peak memory {high / 2**20:.1f} MB at {sizes[-1]} entries, "
                   f"{small[0].peak_bytes / 2**20:.1f} MB at {sizes[0]} (flat: <= {FLAT}x max(that, "
                   f"{MEMORY_FLOOR // 2**20} MB))")


def _verdicts(rows: list[Row], sizes: Sequence[int]) -> list[Verdict]:
    found = []
    for row in rows:
        if row.requests is not None and row.command in ("ls", "prune, no TTLs") and row.entries == sizes[-1]:
            found.append(Verdict(row.requests <= REQUESTS_PER_ENTRY * row.entries,
                                 f"S3 {row.command}: {row.requests} requests for {row.entries} entries, 1 per "
                                 f"{row.entries / max(1, row.requests):.0f} (target: 1 per 500 or fewer)"))
    for kind in sorted({row.store for row in rows}):
        for command in ("ls", "prune, no TTLs"):
            found.append(_flat(rows, kind, command, sizes))
    return found


def measure(endpoint: str, entries: int = 100_000, *, access_key: str, secret_key: str,
            populate_endpoint: str | None = None, local: bool = True, workdir: str | None = None,
            say: Callable[[str], None] = print) -> Measured:
    """Every command at a tenth of ``entries`` and at ``entries``, on S3 at ``endpoint`` (the
    bucket :data:`BUCKET` is created there if missing) and, with ``local``, in a folder under
    ``workdir``. ``populate_endpoint``: where the entries are written, if not through ``endpoint``
    (the server itself, when ``endpoint`` is a slow link in front of it). ``say`` is given each
    row as it is measured."""
    owned = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="jangdok-scale-")
    ctx = Context(workdir, endpoint, access_key, secret_key)
    try:
        client = ctx.boto3_client()
        try:
            client.create_bucket(Bucket=BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        sizes = sorted({max(1, entries // 10), entries})
        rows: list[Row] = []
        for kind in ("S3", "local") if local else ("S3",):
            for size in sizes:
                rows += _run_store(ctx, kind, size, populate_endpoint or endpoint, say)
        return Measured(rows, _verdicts(rows, sizes))
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


COLUMNS = ("store", "entries", "command", "requests", "req/entry", "seconds", "CPU s", "peak MB")


def _row_text(row: Row) -> str:
    per_entry = "" if row.per_entry is None else f"{row.per_entry:.4f}"
    requests = "" if row.requests is None else str(row.requests)
    failed = "" if row.status == 0 else f"  (exit {row.status})"
    return (f"{row.store:<6} {row.entries:>7}  {row.command:<34} {requests:>7} {per_entry:>9} {row.seconds:>8.2f} "
            f"{row.cpu_seconds:>7.2f} {row.peak_bytes / 2**20:>8.1f}{failed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jangdok.bench.scale", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="the larger cache (the smaller: a tenth)")
    parser.add_argument("--endpoint", help="an S3 endpoint to use (default: start SeaweedFS here)")
    parser.add_argument("--no-local", dest="local", action="store_false", help="S3 only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    from ..server import READ_WRITE, start_seaweed

    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="jangdok-scale-")
    server = None
    try:
        endpoint = args.endpoint
        if endpoint is None:
            server = start_seaweed(Path(workdir) / "seaweed")
            endpoint = server.endpoint
        print(f"{COLUMNS[0]:<6} {COLUMNS[1]:>7}  {COLUMNS[2]:<34} " + " ".join(
            f"{name:>{width}}" for name, width in zip(COLUMNS[3:], (7, 9, 8, 7, 8), strict=True)), flush=True)
        measured = measure(endpoint, args.entries, access_key=READ_WRITE[0], secret_key=READ_WRITE[1],
                           local=args.local, workdir=workdir, say=lambda text: print(text, flush=True))
        print()
        for verdict in measured.verdicts:
            print(verdict.line())
        print(f"done in {time.perf_counter() - started:.0f} s")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
