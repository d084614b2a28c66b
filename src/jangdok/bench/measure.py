"""Timed rounds: every (tool, operation) once per round in a new order, the heap and the disk
brought to the same state before each, requests counted."""

from __future__ import annotations

import gc
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .link import UNSHAPED, Link
from .registry import make_tool
from .tools import Context, Op
from .values import Case, same_value

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


@dataclass
class Result:
    op: Op
    case: str
    times: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    size: int = 0
    rss_increase: int | None = None  # bytes
    first_rss_increase: int | None = None  # bytes; a save's, with its process's one-time costs
    fresh_seconds: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def take_fresh(self, measured: dict[str, Any]) -> None:
        """Record what :func:`~jangdok.bench.fresh.in_fresh_process` measured."""
        self.rss_increase, self.fresh_seconds = max(0, measured["rss_increase"]), measured["seconds"]
        self.first_rss_increase = measured["first_rss_increase"]

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
    """Local and in-memory operations first, then S3 ones (see HEAP_NOTE); in each phase a
    warm-up round (which also writes every entry and checks every load), then timed rounds."""
    results: dict[tuple[str, str], Result] = {}
    for phase in ([op for op in ops if op.store != "S3"], [op for op in ops if op.store == "S3"]):
        if phase:
            results.update(_measure_phase(phase, cases, reps))
    return {(op.id, case.name): results[op.id, case.name] for case in cases for op in ops if op.applies(case)}


def _measure_phase(ops: list[Op], cases: list[Case], reps: dict[str, int]) -> dict[tuple[str, str], Result]:
    results = {(op.id, case.name): Result(op, case.name, size=len(case.pickled))
               for case in cases for op in ops if op.applies(case)}
    order = random.Random(0)  # the same orders in every run
    for round_ in range(1 + max(reps.values())):
        for case in cases:
            if round_ > reps[case.name]:
                continue
            # The warm-up in registry order (every save before its loads), then each round in a new
            # order, so no operation always follows the same one.
            for op in order.sample(ops, len(ops)) if round_ else ops:
                if not op.applies(case):
                    continue
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
    twice through an unshaped :class:`.link.Link` (the second run counted, so connection set-up is not)."""
    proxy = Link(ctx.endpoint, **asdict(UNSHAPED))
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
