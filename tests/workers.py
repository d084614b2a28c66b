"""What the child processes of tests/test_processes.py run.

A module of its own so that ``spawn`` and ``forkserver`` children, which start a fresh
interpreter, can import these functions by name. It stays light (no numpy, no pytest): every
spawned child imports it, and the test matrix must start dozens of children quickly.

Every child reports once, through the write end of a pipe it is given as its first argument:
a dict of counters, or ``{"fatal": traceback}`` if it failed outside a counted operation.
Values are self-describing (they carry their key, writer and sequence number) and
self-checking (their blob is derived from those), so a reader can tell a value that belongs
to another key (*wrong*) from one mixed from two writes (*torn*).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import traceback
from collections.abc import Callable
from typing import Any

ISOLATED_PREFIXES = ("AWS_", "JANGDOK_")
ISOLATED_NAMES = ("CACHE_DIR", "S3_BUCKET_NAME")
PAD_BYTES = 4096
MAX_SAMPLES = 3


# -- values ---------------------------------------------------------------------------------


def own_value(path: str) -> dict[str, Any]:
    """The value stored at ``path`` in the fixed-size scenario: same size for same-length paths."""
    digest = hashlib.sha256(path.encode()).digest()
    return {"key": path, "pad": digest * (PAD_BYTES // len(digest))}


def blob_for(key: str, writer: Any, seq: int) -> bytes:
    """Bytes derived from (key, writer, seq): about 2 KB to 190 KB, varying with the three."""
    digest = hashlib.blake2b(f"{key}|{writer}|{seq}".encode(), digest_size=64).digest()
    size = (2048 << (digest[0] % 7)) + digest[1] * 256
    return (digest * (size // len(digest) + 1))[:size]


def make_value(key: str, writer: Any, seq: int) -> dict[str, Any]:
    return {"key": key, "writer": writer, "seq": seq, "blob": blob_for(key, writer, seq)}


def make_metadata(value: dict[str, Any]) -> dict[str, Any]:
    return {"key": value["key"], "writer": value["writer"], "seq": value["seq"], "size": len(value["blob"])}


def check_value(key: str, value: Any, metadata: Any = None, with_metadata: bool = False) -> str:
    """``"ok"``, ``"wrong"`` (not this key's value) or ``"torn"`` (this key's, but inconsistent)."""
    if not isinstance(value, dict) or value.get("key") != key:
        return "wrong"
    if set(value) != {"key", "writer", "seq", "blob"} or value["blob"] != blob_for(key, value["writer"], value["seq"]):
        return "torn"
    if with_metadata and metadata != make_metadata(value):
        return "torn"
    return "ok"


def describe(value: Any) -> str:
    """A short description of a value for failure messages (never its whole blob)."""
    if isinstance(value, dict):
        return repr({name: (f"<{len(item)} bytes>" if isinstance(item, bytes) else item)
                     for name, item in value.items()})
    return f"{type(value).__name__} {value!r:.80}"


# -- plumbing ---------------------------------------------------------------------------------


def use_environment(env: dict[str, str]) -> None:
    """Make this process's configuration exactly ``env``, whatever it inherited.

    A forkserver child inherits the environment of the fork server, which was started by an
    earlier test with that test's variables, not the current test's.
    """
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            del os.environ[name]
    os.environ.update(env)


class LogWatch(logging.Handler):
    """What the ``jangdok`` logger says that a correct run never says.

    ``crossed``: reads that returned another key's entry. The cache reads such an entry again
    and never returns it, so a response that crossed over from another request (the issue's
    bug) would otherwise go unnoticed whenever the second read comes out right. Recognised by
    the ForeignEntry the record carries, not by its wording. ``warnings``: any WARNING (a
    corrupt entry deleted, an entry skipped, a fallback).

    Used as a context manager: it lowers the logger to DEBUG and stops propagation (so a
    forked child does not pile records into the test runner's inherited handlers), and
    restores both on exit.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from jangdok.entry import ForeignEntry

        self._foreign = ForeignEntry
        self.crossed = 0
        self.warnings: list[str] = []
        self._logger = logging.getLogger("jangdok")
        self._saved = (self._logger.level, self._logger.propagate)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        raised = record.exc_info[1] if record.exc_info else None
        if isinstance(raised, self._foreign) or any(isinstance(arg, self._foreign) for arg in args):
            self.crossed += 1
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())

    def __enter__(self) -> LogWatch:
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.setLevel(logging.DEBUG)
        self._logger.propagate = False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]

    def report(self) -> dict[str, Any]:
        return {"crossed": self.crossed, "warning_count": len(self.warnings), "warnings": self.warnings[:MAX_SAMPLES]}


def _report(conn: Any, work: Callable[[], dict[str, Any]], barrier: Any) -> None:
    """Send ``work()``'s counters, or the traceback that stopped it (breaking the barrier, so
    that siblings waiting for this child fail at once instead of at the barrier's timeout)."""
    try:
        try:
            result = work()
        except BaseException:
            result = {"fatal": traceback.format_exc()}
            barrier.abort()
        result["pid"] = os.getpid()
        conn.send(result)
    finally:
        conn.close()


def _note(samples: list[str], text: str) -> None:
    if len(samples) < MAX_SAMPLES:
        samples.append(text)


# -- the scenario: path-level loads of one's own key ------------------------------------


def load_own_path(conn: Any, api: str, path: str, times: int, env: dict[str, str], barrier: Any) -> None:
    """Load ``path`` ``times`` times through ``jangdok.load`` or ``s3_utils.cache_load_pickle``."""

    def work() -> dict[str, Any]:
        use_environment(env)
        import jangdok.paths

        inherited = len(jangdok.paths._caches)  # the parent's open caches, when forked
        if api == "jangdok":
            load = jangdok.load
        else:
            import s3_utils

            load = s3_utils.cache_load_pickle
        expected = own_value(path)
        wrong = errors = misses = 0
        samples: list[str] = []
        with LogWatch() as watch:
            barrier.wait(timeout=60)
            for _ in range(times):
                try:
                    value = load(path)
                except Exception as exc:
                    errors += 1
                    _note(samples, f"{type(exc).__name__}: {exc}")
                    continue
                if value is None:
                    misses += 1
                elif value != expected:
                    wrong += 1
                    _note(samples, f"wrong value for {path}: {describe(value)}")
        return {"wrong": wrong, "errors": errors, "misses": misses, "samples": samples, "inherited": inherited,
                **watch.report()}

    _report(conn, work, barrier)


# -- a Cache object used after fork --------------------------------------------------------------


def use_inherited_cache(conn: Any, cache: Any, key: str, times: int, put_every: int, barrier: Any) -> None:
    """Use the parent's already open ``cache`` (fork only): get ``key``, put it now and then."""

    def work() -> dict[str, Any]:
        opened = cache._store is not None  # the parent used it before forking
        counts = {"gets": 0, "hits": 0, "puts": 0, "wrong": 0, "torn": 0, "errors": 0}
        samples: list[str] = []
        with LogWatch() as watch:
            barrier.wait(timeout=60)
            for n in range(times):
                try:
                    if put_every and n % put_every == put_every - 1:
                        value = make_value(key, os.getpid(), n)
                        cache.put(key, value, metadata=make_metadata(value))
                        counts["puts"] += 1
                        continue
                    counts["gets"] += 1
                    found = cache.get_entry(key)
                except Exception as exc:
                    counts["errors"] += 1
                    _note(samples, f"{type(exc).__name__}: {exc}")
                    continue
                if found is None:
                    continue
                counts["hits"] += 1
                verdict = check_value(key, found.value, found.info.metadata, with_metadata=True)
                if verdict != "ok":
                    counts[verdict] += 1
                    _note(samples, f"{verdict} value for {key}: {describe(found.value)}")
        return {**counts, "samples": samples, "opened": opened, **watch.report()}

    _report(conn, work, barrier)


# -- stress: mixed operations on a few shared keys -----------------------------------------------


def stress(conn: Any, cache_or_settings: Any, keys: list[str], operations: int, seed: int, barrier: Any) -> None:
    """``operations`` random get/put/delete/stat on ``keys``, checking everything read.

    Given a Cache (a forked child), it uses that inherited object; given Settings (a spawned
    child), it opens its own Cache.
    """

    def work() -> dict[str, Any]:
        from jangdok import Cache, Settings

        if isinstance(cache_or_settings, Settings):
            cache, inherited = Cache.from_settings(cache_or_settings), False
        else:
            cache, inherited = cache_or_settings, True
        rng = random.Random(seed)
        writer = os.getpid()
        counts = dict.fromkeys(["ops", "gets", "hits", "puts", "deletes", "stats", "stat_hits",
                                "wrong", "torn", "errors"], 0)
        samples: list[str] = []
        with LogWatch() as watch:
            barrier.wait(timeout=60)
            for seq in range(operations):
                key = rng.choice(keys)
                roll = rng.random()
                counts["ops"] += 1
                try:
                    if roll < 0.45:
                        counts["gets"] += 1
                        found = cache.get_entry(key)
                        if found is not None:
                            counts["hits"] += 1
                            verdict = check_value(key, found.value, found.info.metadata, with_metadata=True)
                            if verdict == "ok" and found.info.key != key:
                                verdict = "wrong"
                            if verdict != "ok":
                                counts[verdict] += 1
                                _note(samples, f"get {key}: {verdict}: {describe(found.value)}")
                    elif roll < 0.75:
                        counts["puts"] += 1
                        value = make_value(key, writer, seq)
                        cache.put(key, value, metadata=make_metadata(value))
                    elif roll < 0.90:
                        counts["stats"] += 1
                        info = cache.stat(key)
                        if info is not None:
                            counts["stat_hits"] += 1
                            meta = info.metadata or {}
                            if info.key != key or meta.get("key") != key:
                                counts["wrong"] += 1
                                _note(samples, f"stat {key}: wrong: {info}")
                            elif info.size <= meta.get("size", 0) or not isinstance(meta.get("seq"), int):
                                counts["torn"] += 1
                                _note(samples, f"stat {key}: inconsistent: {info}")
                    else:
                        counts["deletes"] += 1
                        cache.delete(key)
                except Exception as exc:
                    counts["errors"] += 1
                    _note(samples, f"{type(exc).__name__}: {exc}")
        if not inherited:
            cache.close()
        return {**counts, "samples": samples, "inherited": inherited, **watch.report()}

    _report(conn, work, barrier)
