"""jangdok against the seed's approach, its peers and the hardware ceilings, side by side.

    python -m jangdok.bench [--quick] [--reps N] [--no-giant] [--out docs/performance.md]

Starts its own SeaweedFS on 127.0.0.1 (:mod:`jangdok.server`; needs the ``bench`` extra) and a
scratch folder, then in one run times save and load of a BIG value (300 float64 arrays of
30x675, about 48.6 MB pickled) and a SMALL one (a dict of a few KB) for:

* jangdok ``Cache`` on a local folder, with ``mmap=True``, and on S3;
* the seed's approach written out (pickle to ``.tmp`` + ``os.replace``; ``put_object`` /
  ``head_object`` + ``get_object``), the baseline every jangdok figure is a ratio to;
* peers: joblib, diskcache (local); s3fs, obstore (S3); raw pickle in memory;
* ceilings: memory copy, page-cache read, disk write, raw GET and PUT of the pickled bytes.

How it measures (also printed, and written to the report):

* median of ``--reps`` timed rounds (>= 7; ``--quick``: 2, small sizes) after one warm-up round;
  within a round every (tool, operation) runs once, in a new seeded random order each round;
* before each timed operation the previous result is dropped (``del`` + ``gc.collect()``, outside
  the timer), so every load allocates into a heap from which a value of the same size was just
  freed: the steady state of a long-running process. A first load in a fresh process (new pages,
  page faults) is measured separately, once per (tool, operation), in a subprocess;
* that subprocess also measures the peak RSS increase of the single operation (peak RSS before
  and after, see :func:`peak_rss`; for loads, before = a process with nothing loaded);
* S3 requests per operation are counted with botocore ``before-send`` hooks (jangdok through
  ``cache.store.client``); s3fs and obstore, which have their own HTTP clients, through a
  loopback counting proxy in a separate untimed pass.

This module is not imported by ``import jangdok``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

BUCKET = "bench"
BIG_ARRAYS, QUICK_BIG_ARRAYS = 300, 30
GIANT_ARRAYS = 125  # of 1000x1000 float64: 1.0 GB
MB = 1e6

HEAP_NOTE = (
    "Heap control: tools alternate within each repetition round (every (tool, operation) once per "
    "round, in a new seeded random order each round, so none always follows the same one and none "
    "runs all its repetitions in a row), and before every timed operation the previous result is "
    "dropped (del + gc.collect(), outside the timer), so every tool starts from the same heap, never "
    "from its own previous value. Disk state: os.sync() before every timed operation (outside the "
    "timer), so no write pays for the writeback of an earlier one's dirty pages. Phases: the local "
    "and in-memory operations are measured first, the S3 ones after them (each phase alternating "
    "its tools as above), because the SeaweedFS server shares this machine's disk and keeps writing "
    "its own files after it has answered: interleaved with S3 saves, jangdok's local save measured "
    "81 ms instead of 24 ms (the page cache throttles a writer while the disk is busy), which says "
    "something about the test rig, not about either tool."
)
HEAP_MODES = {
    "trim": (
        "Allocator: glibc defaults (--heap trim). Freed memory at the top of the heap, and every "
        "block over the mmap threshold, goes back to the system, so a BIG load mostly faults its "
        "pages in anew, as a program's first load does; the 'faults' column counts the minor page "
        "faults of each operation. --heap reuse measures the other state (freed memory kept and reused)."
    ),
    "reuse": (
        "Allocator: --heap reuse, mallopt(M_TRIM_THRESHOLD=1 GiB, M_MMAP_THRESHOLD=32 MiB, glibc's "
        "maximum), so freed memory stays in the process and is reused, as in a long-running process "
        "that loads again and again; blocks over 32 MiB are still mapped anew each time (see 'faults')."
    ),
}
FRESH_NOTE = (
    "The 'fresh ms' column is the same operation run once in a new process (after a SMALL "
    "warm-up), where every page of the result is new; that process also measures the peak RSS."
)


def set_heap_mode(mode: str) -> None:
    """``reuse``: keep freed memory in the process (glibc only; a no-op elsewhere, with a warning)."""
    if mode != "reuse":
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        print("warning: no mallopt (not glibc): --heap reuse has no effect", file=sys.stderr)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_mmap_threshold, 32 << 20)


RSS_NOTE = (
    "Peak RSS increase: measured in a fresh subprocess per (tool, operation), as the process's peak "
    "RSS after the single operation minus before it (for loads, before = a process with nothing "
    "loaded, but with numpy imported and the tool warmed up by a SMALL load), shown as a multiple "
    "of the pickled payload. On Linux ru_maxrss survives fork and exec "
    "(a child starts with its parent's peak), so the child reads its own VmHWM from "
    "/proc/self/status, first reset to the current RSS through /proc/self/clear_refs."
)

# -- values -----------------------------------------------------------------------------------


def make_value(case: str, big_arrays: int = BIG_ARRAYS) -> Any:
    import numpy as np

    if case == "BIG":  # the seed's label caches: a list of (30, 675) sequences
        rng = np.random.default_rng(0)
        return [rng.standard_normal((30, 675)) for _ in range(big_arrays)]
    if case == "GIANT":
        return [giant_array(i) for i in range(GIANT_ARRAYS)]
    return {  # SMALL: a label's parameters and a little bookkeeping
        "label": "김치", "seq": 30, "aug": 9, "max": None, "min": 10,
        "videos": [f"data/sample/김치/{i:03d}.npz" for i in range(40)],
        "scores": [i / 7 for i in range(200)], "created": "2026-01-01T00:00:00",
    }


def giant_array(index: int) -> Any:
    import numpy as np

    return np.random.default_rng(index).random((1000, 1000))


def same_value(a: Any, b: Any) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclass
class Case:
    name: str
    big_arrays: int = BIG_ARRAYS

    @property
    def key(self) -> str:
        return f"{self.name.lower()}.pkl"

    @cached_property
    def value(self) -> Any:
        return make_value(self.name, self.big_arrays)

    @cached_property
    def pickled(self) -> bytes:
        return pickle.dumps(self.value, protocol=pickle.HIGHEST_PROTOCOL)


# -- the tools --------------------------------------------------------------------------------


@dataclass
class Context:
    """Where the tools keep their data; plain values, so a subprocess can rebuild its tool."""

    workdir: str
    endpoint: str
    access_key: str
    secret_key: str

    def folder(self, name: str) -> Path:
        path = Path(self.workdir) / "local" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def boto3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def jangdok_settings(self, location: str, **overrides: Any) -> Any:
        from jangdok import Settings

        if location.startswith("s3://"):
            overrides.update(endpoint_url=self.endpoint, region="us-east-1", access_key_id=self.access_key,
                             secret_access_key=self.secret_key)
        return Settings(cache_dir=location, fallback=False, **overrides)


class RequestCounter:
    """Counts the HTTP requests a botocore client sends (retries included)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-send.s3", self._sent)

    def _sent(self, **_: Any) -> None:
        self.count += 1


class CountingProxy:
    """A loopback TCP proxy in front of the S3 server that counts the HTTP requests passing
    through, for clients without botocore hooks (s3fs's aiobotocore, obstore's Rust client).

    It reads each request's head, counts it, and forwards the body by its Content-Length (or
    its chunks); responses are copied back untouched. Used only in an untimed counting pass.
    """

    def __init__(self, target: str) -> None:
        import socket
        import threading
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.count = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self._threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
            self._threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _copy(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(1 << 20):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def _requests(self, client: Any, upstream: Any) -> None:
        buffer = b""

        def fill() -> bool:
            nonlocal buffer
            data = client.recv(1 << 20)
            buffer += data
            return bool(data)

        def forward(size: int) -> None:  # send exactly size bytes of the stream onwards
            nonlocal buffer
            while len(buffer) < size and fill():
                pass
            upstream.sendall(buffer[:size])
            buffer = buffer[size:]

        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not fill():
                        return
                head_size = buffer.index(b"\r\n\r\n") + 4
                headers = buffer[:head_size].decode("latin-1").lower().split("\r\n")
                with self._lock:
                    self.count += 1
                forward(head_size)
                length = next((int(h.split(":", 1)[1]) for h in headers if h.startswith("content-length:")), 0)
                if any(h.startswith("transfer-encoding:") and "chunked" in h for h in headers):
                    while True:  # chunk-size line, data, CRLF; a zero-size chunk ends the body
                        while b"\r\n" not in buffer:
                            if not fill():
                                return
                        line_size = buffer.index(b"\r\n") + 2
                        chunk = int(buffer[:line_size].split(b";")[0], 16)
                        forward(line_size + chunk + 2 if chunk else line_size)
                        if not chunk:
                            while not buffer.startswith(b"\r\n") and b"\r\n\r\n" not in buffer:
                                if not fill():
                                    return
                            forward(2 if buffer.startswith(b"\r\n") else buffer.index(b"\r\n\r\n") + 4)
                            break
                else:
                    forward(length)
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(1)  # the client is done sending: let the server see it
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()


@dataclass
class Op:
    """One (tool, operation): ``run(case)`` saves or loads ``case`` and returns what it loaded."""

    tool: str
    store: str  # "local", "S3" or "memory"
    name: str
    kind: str  # "save" or "load"
    role: str  # "jangdok", "seed", "peer", "ceiling" or "reference"
    run: Callable[[Case], Any]
    needs: str | None = None  # what must exist before the timer starts: "value" or "bytes"
    counter: RequestCounter | None = None
    prepare: Callable[[Case], None] | None = None
    returns_bytes: bool = False

    @property
    def id(self) -> str:
        return f"{self.tool}|{self.store}|{self.name}"


class Tool:
    """A tool on one store; ``ops()`` lists what it can do. Built lazily: imports happen here."""

    tool = ""
    store = ""
    role = "peer"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def ops(self) -> list[Op]:
        raise NotImplementedError

    def op(self, name: str, kind: str, run: Callable[[Case], Any], **extra: Any) -> Op:
        needs = "value" if kind == "save" else None
        return Op(self.tool, self.store, name, kind, self.role, run, **{"needs": needs, **extra})


class JangdokLocal(Tool):
    tool, store, role = "jangdok", "local", "jangdok"

    def __init__(self, ctx: Context, mmap: bool = False) -> None:
        super().__init__(ctx)
        from jangdok import Cache

        self.mmap = mmap
        options = {"mmap": True} if mmap else {}
        self.cache = Cache.from_settings(ctx.jangdok_settings(str(ctx.folder("jangdok")), **options))

    def ops(self) -> list[Op]:
        if self.mmap:  # saving is the same with or without mmap
            return [self.op("load mmap", "load", lambda c: self.cache.get(c.key))]
        return [self.op("save", "save", lambda c: self.cache.put(c.key, c.value)),
                self.op("load", "load", lambda c: self.cache.get(c.key))]


class JangdokS3(Tool):
    tool, store, role = "jangdok", "S3", "jangdok"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        from jangdok import Cache

        self.cache = Cache.from_settings(ctx.jangdok_settings(f"s3://{BUCKET}/jangdok/"))
        self.counter = RequestCounter(self.cache.store.client)  # opens the store (its probe is not counted)

    def ops(self) -> list[Op]:
        return [self.op("save", "save", lambda c: self.cache.put(c.key, c.value), counter=self.counter),
                self.op("load", "load", lambda c: self.cache.get(c.key), counter=self.counter)]


class SeedLocal(Tool):
    """The seed's local cache functions, written out."""

    tool, store, role = "seed", "local", "seed"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.folder = ctx.folder("seed")

    def save(self, case: Case) -> None:
        path = str(self.folder / case.key)
        with open(path + ".tmp", "wb") as file:
            pickle.dump(case.value, file)
        os.replace(path + ".tmp", path)

    def load(self, case: Case) -> Any:
        with open(self.folder / case.key, "rb") as file:
            return pickle.load(file)

    def exists_load(self, case: Case) -> Any:  # main.py's pattern: cache_exists, then cache_load_pickle
        return self.load(case) if os.path.exists(self.folder / case.key) else None

    def ops(self) -> list[Op]:
        return [self.op("save", "save", self.save), self.op("load", "load", self.load),
                self.op("exists+load", "load", self.exists_load)]


class SeedS3(Tool):
    tool, store, role = "seed", "S3", "seed"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.client = ctx.boto3_client()
        self.counter = RequestCounter(self.client)

    def save(self, case: Case) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"seed/{case.key}", Body=pickle.dumps(case.value))

    def load(self, case: Case) -> Any:
        self.client.head_object(Bucket=BUCKET, Key=f"seed/{case.key}")
        return pickle.loads(self.client.get_object(Bucket=BUCKET, Key=f"seed/{case.key}")["Body"].read())

    def exists_load(self, case: Case) -> Any:
        self.client.head_object(Bucket=BUCKET, Key=f"seed/{case.key}")
        return self.load(case)

    def ops(self) -> list[Op]:
        return [self.op(name, kind, run, counter=self.counter) for name, kind, run in
                (("save", "save", self.save), ("load", "load", self.load), ("exists+load", "load", self.exists_load))]


class Joblib(Tool):
    tool, store = "joblib", "local"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import joblib

        self.joblib, self.folder = joblib, ctx.folder("joblib")

    def ops(self) -> list[Op]:
        path = lambda c: self.folder / c.key  # noqa: E731
        return [self.op("dump", "save", lambda c: self.joblib.dump(c.value, path(c))),
                self.op("load", "load", lambda c: self.joblib.load(path(c))),
                self.op("load mmap_mode=r", "load", lambda c: self.joblib.load(path(c), mmap_mode="r"))]


class Diskcache(Tool):
    tool, store = "diskcache", "local"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import diskcache

        self.cache = diskcache.Cache(str(ctx.folder("diskcache")))

    def ops(self) -> list[Op]:
        return [self.op("set", "save", lambda c: self.cache.set(c.key, c.value)),
                self.op("get", "load", lambda c: self.cache.get(c.key))]


class S3fs(Tool):
    tool, store = "s3fs", "S3"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import s3fs

        self.fs = s3fs.S3FileSystem(key=ctx.access_key, secret=ctx.secret_key, endpoint_url=ctx.endpoint,
                                    client_kwargs={"region_name": "us-east-1"}, use_listings_cache=False)

    def save(self, case: Case) -> None:
        with self.fs.open(f"{BUCKET}/s3fs/{case.key}", "wb") as file:
            file.write(pickle.dumps(case.value))

    def load(self, case: Case) -> Any:
        with self.fs.open(f"{BUCKET}/s3fs/{case.key}", "rb") as file:
            return pickle.loads(file.read())

    def ops(self) -> list[Op]:
        return [self.op("write", "save", self.save), self.op("read", "load", self.load)]


class Obstore(Tool):
    tool, store = "obstore", "S3"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        import obstore
        from obstore.store import S3Store

        self.obstore = obstore
        self.store_ = S3Store(BUCKET, endpoint=ctx.endpoint, access_key_id=ctx.access_key,
                              secret_access_key=ctx.secret_key, region="us-east-1",
                              virtual_hosted_style_request=False, client_options={"allow_http": True})

    def put(self, case: Case) -> None:
        self.obstore.put(self.store_, f"obstore/{case.key}", pickle.dumps(case.value))

    def get(self, case: Case) -> Any:
        return pickle.loads(self.obstore.get(self.store_, f"obstore/{case.key}").bytes())

    def ops(self) -> list[Op]:
        return [self.op("put", "save", self.put), self.op("get", "load", self.get)]


class RawPickle(Tool):
    tool, store, role = "pickle", "memory", "reference"

    def ops(self) -> list[Op]:
        return [self.op("dumps", "save", lambda c: pickle.dumps(c.value, protocol=pickle.HIGHEST_PROTOCOL)),
                self.op("loads", "load", lambda c: pickle.loads(c.pickled), needs="bytes")]


class MemoryCeiling(Tool):
    tool, store, role = "ceiling", "memory", "ceiling"

    def ops(self) -> list[Op]:  # a fresh buffer, as any load must allocate one
        return [self.op("memory copy", "load", lambda c: bytearray(c.pickled), needs="bytes", returns_bytes=True)]


class LocalCeiling(Tool):
    tool, store, role = "ceiling", "local", "ceiling"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.folder = ctx.folder("raw")
        self.buffers: dict[str, bytearray] = {}

    def write(self, case: Case) -> None:
        path = str(self.folder / case.key)
        with open(path + ".tmp", "wb") as file:
            file.write(case.pickled)
        os.replace(path + ".tmp", path)

    def allocate(self, case: Case) -> None:
        size = os.path.getsize(self.folder / case.key)
        if len(self.buffers.get(case.name, b"")) != size:
            self.buffers[case.name] = bytearray(size)

    def read(self, case: Case) -> bytearray:  # into a preallocated buffer: the page cache's speed
        buffer = self.buffers[case.name]
        with open(self.folder / case.key, "rb", buffering=0) as file:
            view, done = memoryview(buffer), 0
            while done < len(buffer):
                done += file.readinto(view[done:]) or len(buffer)
        return buffer

    def ops(self) -> list[Op]:
        return [self.op("disk write", "save", self.write, needs="bytes"),
                self.op("page-cache read", "load", self.read, prepare=self.allocate, returns_bytes=True)]


class S3Ceiling(Tool):
    tool, store, role = "ceiling", "S3", "ceiling"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.client = ctx.boto3_client()
        self.counter = RequestCounter(self.client)

    def ops(self) -> list[Op]:
        put = lambda c: self.client.put_object(Bucket=BUCKET, Key=f"raw/{c.key}", Body=c.pickled)  # noqa: E731
        get = lambda c: self.client.get_object(Bucket=BUCKET, Key=f"raw/{c.key}")["Body"].read()  # noqa: E731
        return [self.op("raw PUT", "save", put, needs="bytes", counter=self.counter),
                self.op("raw GET", "load", get, counter=self.counter, returns_bytes=True)]


TOOLS: dict[str, Callable[[Context], Tool]] = {
    "jangdok local": JangdokLocal,
    "jangdok local mmap": lambda ctx: JangdokLocal(ctx, mmap=True),
    "jangdok S3": JangdokS3,
    "seed local": SeedLocal,
    "seed S3": SeedS3,
    "pickle": RawPickle,
    "joblib": Joblib,
    "diskcache": Diskcache,
    "s3fs": S3fs,
    "obstore": Obstore,
    "ceiling memory": MemoryCeiling,
    "ceiling local": LocalCeiling,
    "ceiling S3": S3Ceiling,
}

# What each jangdok figure is compared with: (seed op, ceiling op, peer ops), as "tool|store|operation".
COMPARISONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "jangdok|local|save": ("seed|local|save", "ceiling|local|disk write", ("joblib|local|dump", "diskcache|local|set")),
    "jangdok|local|load": ("seed|local|load", "ceiling|local|page-cache read",
                           ("joblib|local|load", "diskcache|local|get")),
    "jangdok|local|load mmap": ("seed|local|load", "ceiling|local|page-cache read",
                                ("joblib|local|load mmap_mode=r",)),
    "jangdok|S3|save": ("seed|S3|save", "ceiling|S3|raw PUT", ("s3fs|S3|write", "obstore|S3|put")),
    "jangdok|S3|load": ("seed|S3|load", "ceiling|S3|raw GET", ("s3fs|S3|read", "obstore|S3|get")),
}


def make_tool(name: str, ctx: Context) -> Tool | None:
    """The tool, or ``None`` (with a note) when it is a peer whose library is not installed:
    the test extra runs the quick benchmark without the peers; ``jangdok[bench]`` brings them."""
    try:
        return TOOLS[name](ctx)
    except ImportError as exc:
        print(f"note: {name} skipped: {exc.name} is not installed (pip install \"jangdok[bench]\")",
              file=sys.stderr, flush=True)
        return None


def build_ops(ctx: Context, only: str | None = None) -> list[Op]:
    tools = [make_tool(name, ctx) for name in TOOLS if only is None or only == name]
    return [op for tool in tools if tool is not None for op in tool.ops()]


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Result:
    op: Op
    case: str
    times: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    size: int = 0
    rss_increase: int | None = None  # bytes
    fresh_seconds: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def median_requests(self) -> int | None:
        return int(statistics.median(self.requests)) if self.requests else None


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_op(op: Op, case: Case) -> tuple[Any, float, int | None, int]:
    """One timed run, the heap prepared first: no result of an earlier run is alive. Returns the
    result, seconds, S3 requests (if counted) and minor page faults."""
    if op.needs:
        getattr(case, "pickled" if op.needs == "bytes" else "value")
    if op.prepare:
        op.prepare(case)
    os.sync()  # no operation pays for the writeback of an earlier one's dirty pages
    gc.collect()
    before, faults = (op.counter.count if op.counter else 0), minor_faults()
    started = time.perf_counter()
    result = op.run(case)
    seconds = time.perf_counter() - started
    faults = minor_faults() - faults
    return result, seconds, (op.counter.count - before) if op.counter else None, faults


def check(op: Op, case: Case, result: Any) -> None:
    if op.kind != "load":
        return
    good = len(result) == len(case.pickled) if op.returns_bytes else same_value(result, case.value)
    if not good:
        raise AssertionError(f"{op.tool} {op.store} {op.name} loaded something else than {case.name} was")


def measure(ops: list[Op], cases: list[Case], reps: dict[str, int]) -> dict[tuple[str, str], Result]:
    """Local and in-memory operations first, then S3 ones (see PHASE_NOTE); in each phase a
    warm-up round (which also writes every entry and checks every load), then timed rounds."""
    results: dict[tuple[str, str], Result] = {}
    for phase in ([op for op in ops if op.store != "S3"], [op for op in ops if op.store == "S3"]):
        if phase:
            results.update(_measure_phase(phase, cases, reps))
    return {(op.id, case.name): results[op.id, case.name] for case in cases for op in ops}


def _measure_phase(ops: list[Op], cases: list[Case], reps: dict[str, int]) -> dict[tuple[str, str], Result]:
    results = {(op.id, case.name): Result(op, case.name, size=len(case.pickled)) for case in cases for op in ops}
    order = random.Random(0)  # the same orders in every run
    for round_ in range(1 + max(reps.values())):
        for case in cases:
            if round_ > reps[case.name]:
                continue
            # The warm-up in registry order (every save before its loads), then each round in a new
            # order, so no operation always follows the same one.
            for op in order.sample(ops, len(ops)) if round_ else ops:
                result, seconds, requests, faults = run_op(op, case)
                if round_ == 0:
                    check(op, case, result)
                else:
                    record = results[op.id, case.name]
                    record.times.append(seconds)
                    record.faults.append(faults)
                    if requests is not None:
                        record.requests.append(requests)
                del result  # the next run starts with this value freed
        print(f"  round {round_}/{max(reps.values())} done" + (" (warm-up)" if round_ == 0 else ""), flush=True)
    return results


PROXY_COUNTED = ("s3fs", "obstore")


def count_through_proxy(ctx: Context, cases: list[Case], results: dict[tuple[str, str], Result]) -> None:
    """Requests per operation for the tools without botocore hooks: each of their operations run
    twice through a :class:`CountingProxy` (the second run counted, so connection set-up is not)."""
    proxy = CountingProxy(ctx.endpoint)
    try:
        proxied = Context(ctx.workdir, proxy.endpoint, ctx.access_key, ctx.secret_key)
        for name in PROXY_COUNTED:
            tool = make_tool(name, proxied)
            for op in tool.ops() if tool is not None else []:
                for case in cases:
                    for _ in range(2):
                        before = proxy.count
                        result = op.run(case)
                        del result
                    results[op.id, case.name].requests = [proxy.count - before]
    finally:
        proxy.close()


def peak_rss(reset: bool = False) -> int:
    """This process's peak resident set size in bytes; ``reset`` first lowers it to the current RSS.

    On Linux, ``ru_maxrss`` survives fork and exec: a child would start with its parent's peak
    and could not see its own operation. So there it is the process's own ``VmHWM`` from
    /proc/self/status, which writing 5 to /proc/self/clear_refs resets. Elsewhere ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def child_main(spec: dict[str, Any]) -> None:
    """In a fresh process: one operation once, its peak RSS increase and time, as JSON."""
    import numpy  # noqa: F401 - the values' module, imported as in any program that uses them

    ctx = Context(**spec["ctx"])
    case = Case(spec["case"], spec["big_arrays"])
    tool_ops = build_ops(ctx, spec["tool"])
    (op,) = [op for op in tool_ops if op.name == spec["op"]]
    # A SMALL load first (connections, lazy imports), so only the operation itself is measured.
    warm, small = next(o for o in tool_ops if o.kind == "load"), Case("SMALL")
    if warm.prepare:
        warm.prepare(small)
    warm.run(small)  # its result is dropped at once
    if op.needs:
        getattr(case, "pickled" if op.needs == "bytes" else "value")
    if op.prepare:
        op.prepare(case)
    os.sync()
    gc.collect()
    before = peak_rss(reset=True)
    started = time.perf_counter()
    result = op.run(case)
    seconds = time.perf_counter() - started
    after = peak_rss()
    ok = True
    if op.kind == "load" and spec["case"] == "GIANT":
        ok = len(result) == GIANT_ARRAYS and same_value(result[-1], giant_array(GIANT_ARRAYS - 1))
    print(json.dumps({"rss_increase": after - before, "seconds": seconds, "ok": ok}))


def in_fresh_process(ctx: Context, tool: str, op: Op, case: str, big_arrays: int) -> dict[str, Any]:
    spec = {"ctx": ctx.__dict__, "tool": tool, "op": op.name, "case": case, "big_arrays": big_arrays}
    done = subprocess.run([sys.executable, "-m", "jangdok.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {op.id} {case} in a subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tool_of(op: Op) -> str:
    """The TOOLS name that builds ``op``."""
    if op.tool in ("jangdok", "seed", "ceiling"):
        suffix = " mmap" if op.name == "load mmap" else ""
        return f"{op.tool} {op.store}{suffix}"
    return op.tool


# -- reporting --------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


@dataclass
class Comparison:
    seed: Result
    ceiling: Result
    best_peer: Result | None

    def speedup(self, result: Result) -> float:
        return self.seed.median / result.median


def comparison(results: dict[tuple[str, str], Result], result: Result) -> Comparison | None:
    if result.op.id not in COMPARISONS:
        return None
    seed, ceiling, peers = COMPARISONS[result.op.id]
    candidates = [results[p, result.case] for p in peers if (p, result.case) in results]
    best = min(candidates, key=lambda r: r.median) if candidates else None
    return Comparison(results[seed, result.case], results[ceiling, result.case], best)


COLUMNS = ("case", "store", "tool", "operation", "median ms", "min ms", "MB/s", "S3 req", "faults", "RSS Δ / payload",
           "fresh ms", "vs seed", "vs ceiling", "vs best peer")


def table_rows(results: dict[tuple[str, str], Result]) -> Iterator[tuple[str, ...]]:
    for result in results.values():
        op = result.op
        row = dict.fromkeys(COLUMNS, "")
        row.update({"case": result.case, "store": op.store, "tool": op.tool, "operation": op.name,
                    "median ms": fmt_ms(result.median), "min ms": fmt_ms(min(result.times)),
                    "faults": str(int(statistics.median(result.faults))),
                    "fresh ms": fmt_ms(result.fresh_seconds)})
        if result.case != "SMALL":
            row["MB/s"] = f"{result.size / MB / result.median:.0f}"
        if result.median_requests is not None:
            row["S3 req"] = str(result.median_requests)
        if result.rss_increase is not None:
            row["RSS Δ / payload"] = f"{result.rss_increase / result.size:.2f}x ({result.rss_increase / MB:.0f} MB)"
        found = comparison(results, result)
        if found:
            row["vs seed"] = f"{found.speedup(result):.2f}x faster"
            row["vs ceiling"] = f"{result.median / found.ceiling.median:.2f}x time"
            if found.best_peer:
                row["vs best peer"] = f"{result.median / found.best_peer.median:.2f}x ({found.best_peer.op.tool})"
        yield tuple(row.values())


def text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:  # text columns left-aligned, figures right-aligned
        return "  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(COLUMNS), line(tuple("-" * w for w in widths)), *map(line, rows)])


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    rule = "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|"
    out = ["| " + " | ".join(COLUMNS) + " |", rule]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


@dataclass
class Target:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS'}  {self.name}: {self.detail}"


def targets(results: dict[tuple[str, str], Result], giant: dict[str, dict[str, Any]] | None) -> list[Target]:
    def get(op_id: str, case: str = "BIG") -> Result:
        return results[op_id, case]

    def rss(result: Result) -> float:
        return float("nan") if result.rss_increase is None else result.rss_increase / result.size

    def speed(op_id: str, case: str = "BIG") -> tuple[Result, float]:
        result = get(op_id, case)
        return result, comparison(results, result).speedup(result)  # type: ignore[union-attr]

    found: list[Target] = []
    for op_id, label, minimum, rss_max in (
        ("jangdok|local|load", "local BIG load (checksum verified)", 1.0, 1.1),
        ("jangdok|local|load mmap", "local BIG load, mmap=True", 3.0, None),
        ("jangdok|local|save", "local BIG save over an existing entry", 1.5, 0.05),
        ("jangdok|S3|load", "S3 BIG load", 1.5, 1.1),
        ("jangdok|S3|save", "S3 BIG save", 1.15, 0.05),
    ):
        result, speedup = speed(op_id)
        passed = speedup >= minimum
        detail = f"{speedup:.2f}x the seed's speed (target >= {minimum}x)"
        if rss_max is not None:
            passed = passed and rss(result) <= rss_max
            detail += f"; RSS increase {rss(result):.2f}x payload (target <= {rss_max}x)"
        found.append(Target(label, passed, detail))
    small, seed_small = get("jangdok|S3|load", "SMALL"), get("seed|S3|exists+load", "SMALL")
    speedup = seed_small.median / small.median
    found.append(Target("S3 SMALL hit", small.median_requests == 1 and speedup >= 2.0,
                        f"{small.median_requests} request(s) (target 1), {speedup:.2f}x the speed of the seed's "
                        f"exists+load ({seed_small.median_requests} requests; target >= 2x)"))
    if giant is not None:
        worst = max(m["rss_increase"] for m in giant.values())
        detail = ", ".join(f"{op} {m['seconds']:.1f} s, RSS +{m['rss_increase'] / 1e9:.2f} GB"
                           for op, m in giant.items())
        ok = all(m["ok"] for m in giant.values())
        found.append(Target("1 GB value, S3 save + load", ok and worst <= 1.2e9, f"{detail} (target <= 1.2 GB)"))
    for result in results.values():
        cmp_ = comparison(results, result)
        if cmp_ is None:
            continue
        to_ceiling = result.median / cmp_.ceiling.median
        to_peer = result.median / cmp_.best_peer.median if cmp_.best_peer else float("inf")
        which = (f"ceiling ({cmp_.ceiling.op.name})" if to_ceiling <= to_peer
                 else f"best peer ({cmp_.best_peer.op.tool} {cmp_.best_peer.op.name})")  # type: ignore[union-attr]
        found.append(Target(f"{result.case} {result.op.store} {result.op.name} within 1.3x",
                            min(to_ceiling, to_peer) <= 1.3,
                            f"{min(to_ceiling, to_peer):.2f}x the time of its {which}"))
    return found


def machine_info() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    from .server import weed_binary

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    ram = ""
    if Path("/proc/meminfo").exists():
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        ram = f"{kb / 1024 ** 2:.1f} GiB"
    weed = subprocess.run([weed_binary(), "version"], capture_output=True, text=True).stdout.split()
    weed_version = f"{weed[2]} ({weed[1]} build)" if len(weed) > 2 else "?"

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    source = Path(__file__).resolve().parent
    git = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    if git.returncode == 0:
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True).stdout.strip()
        source_note = f"{source}, commit {git.stdout.strip()[:70]}{' + uncommitted changes' if dirty else ''}"
    else:
        source_note = str(source)
    return [("CPU", f"{cpu}, {os.cpu_count()} cores"), ("RAM", ram), ("OS", platform.platform()),
            ("Python", platform.python_version()), ("numpy", ver("numpy")), ("boto3", ver("boto3")),
            ("SeaweedFS", weed_version), ("jangdok", f"{ver('jangdok')} from {source_note}"),
            ("peers", ", ".join(f"{n} {ver(n)}" for n in ("joblib", "diskcache", "s3fs", "obstore")))]


def write_markdown(path: Path, command: str, info: list[tuple[str, str]], rows: list[tuple[str, ...]],
                   found: list[Target], giant: dict[str, dict[str, Any]] | None, settings: str,
                   heap_note: str, elapsed: float) -> None:
    lines = [
        "# Performance", "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} ({elapsed:.0f} s); "
        "re-run it to refresh this file. Compare ratios, not absolute times across machines.", "",
        "## Machine", "", *[f"- {k}: {v}" for k, v in info], "",
        "## Method", "", settings, "", heap_note, "", RSS_NOTE, "",
        "S3 is SeaweedFS on 127.0.0.1 (started by `jangdok.server`), so S3 figures show client-side "
        "costs without a network's latency or bandwidth limits. Local files are read from the page cache "
        "(written just before). S3 requests are counted with botocore `before-send` hooks (jangdok's "
        "through `cache.store.client`); s3fs and obstore, which have their own HTTP clients, through a "
        "loopback TCP proxy that counts request heads, in a separate untimed pass. 'vs seed' is the seed's median time "
        "divided by jangdok's; 'vs ceiling' and 'vs best peer' are jangdok's time divided by theirs. "
        "jangdok verifies each entry's length and xxh3-128 checksum on every load.", "",
        "## Results", "", markdown_table(rows), "",
    ]
    if giant is not None:
        lines += ["1 GB value (125 arrays of 1000x1000 float64) on S3, each operation once in a fresh process:", "",
                  *[f"- {op}: {m['seconds']:.1f} s ({1e3 / m['seconds']:.0f} MB/s), peak RSS increase "
                    f"{m['rss_increase'] / 1e9:.2f} GB" for op, m in giant.items()], ""]
    lines += ["## Targets", "", *[f"- {t.line()}" for t in found], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jangdok.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions, small sizes, no 1 GB value (for CI)")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 7, --quick 2)")
    parser.add_argument("--giant", action=argparse.BooleanOptionalAction, default=None,
                        help="also save and load a 1 GB value on S3 (default: on, off with --quick)")
    parser.add_argument("--heap", choices=sorted(HEAP_MODES), default="trim",
                        help="trim: glibc's defaults (default); reuse: keep freed memory for reuse")
    parser.add_argument("--out", type=Path, help="write the report as markdown here (e.g. docs/performance.md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    from .server import start_seaweed

    started = time.perf_counter()
    set_heap_mode(args.heap)
    heap_note = " ".join((HEAP_NOTE, HEAP_MODES[args.heap], FRESH_NOTE))
    reps = args.reps or (2 if args.quick else 7)
    big_arrays = QUICK_BIG_ARRAYS if args.quick else BIG_ARRAYS
    giant = (not args.quick) if args.giant is None else args.giant
    command = "python -m jangdok.bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    cases = [Case("BIG", big_arrays), Case("SMALL")]
    case_reps = {"BIG": reps, "SMALL": 3 * reps}
    workdir = tempfile.mkdtemp(prefix="jangdok-bench-")
    server = None
    try:
        server = start_seaweed(Path(workdir) / "seaweed")
        from .server import READ_WRITE

        ctx = Context(workdir, server.endpoint, *READ_WRITE)
        server.client().create_bucket(Bucket=BUCKET)
        settings = (f"BIG = {big_arrays} float64 arrays of 30x675 ({len(cases[0].pickled) / MB:.1f} MB pickled), "
                    f"SMALL = a dict ({len(cases[1].pickled) / 1e3:.1f} KB pickled). Median of {reps} timed "
                    f"rounds for BIG and {3 * reps} for SMALL, after one warm-up round.")
        print(settings)
        print(heap_note)
        print(RSS_NOTE, flush=True)
        ops = build_ops(ctx)
        results = measure(ops, cases, case_reps)
        count_through_proxy(ctx, cases, results)
        print("peak RSS and first-run time, one fresh process per (tool, operation) on BIG ...", flush=True)
        for op in ops:
            try:
                measured = in_fresh_process(ctx, tool_of(op), op, "BIG", big_arrays)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:  # report the rest; this one shows as missing
                print(f"warning: {exc}", file=sys.stderr, flush=True)
                continue
            record = results[op.id, "BIG"]
            record.rss_increase, record.fresh_seconds = max(0, measured["rss_increase"]), measured["seconds"]
        giant_results = None
        if giant:
            print("1 GB value on S3 (jangdok), save then load, each in a fresh process ...", flush=True)
            jangdok_s3 = [op for op in ops if op.tool == "jangdok" and op.store == "S3"]
            giant_results = {}
            for op in jangdok_s3:
                try:
                    giant_results[op.name] = in_fresh_process(ctx, "jangdok S3", op, "GIANT", big_arrays)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"warning: {exc}", file=sys.stderr, flush=True)
                    giant_results[op.name] = {"rss_increase": float("nan"), "seconds": float("nan"), "ok": False}
        rows = list(table_rows(results))
        found = targets(results, giant_results)
        print()
        print(text_table(rows))
        if giant_results:
            for name, measured in giant_results.items():
                print(f"1 GB value, S3 {name}: {measured['seconds']:.1f} s, "
                      f"peak RSS increase {measured['rss_increase'] / 1e9:.2f} GB")
        print()
        for target in found:
            print(target.line())
        elapsed = time.perf_counter() - started
        if args.out:
            write_markdown(args.out, command, machine_info(), rows, found, giant_results, settings, heap_note,
                           elapsed)
            print(f"\nwrote {args.out}")
        print(f"done in {elapsed:.0f} s")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
