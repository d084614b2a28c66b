"""One operation in a fresh process: its first-run time and its peak RSS increase."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .registry import build_ops
from .tools import Context, Op
from .values import GIANT_ARRAYS, Case, giant_array, same_value

FRESH_NOTE = (
    "The 'fresh ms' column is the same operation run once in a new process (after a SMALL "
    "warm-up), where every page of the result is new; that process also measures the peak RSS."
)
RSS_NOTE = (
    "Peak RSS increase: measured in a fresh subprocess per (tool, operation), as the process's peak "
    "RSS after the single operation minus before it (for loads, before = a process with nothing "
    "loaded, but with numpy imported and the tool warmed up by a SMALL load; for saves, before = "
    "after a first save of the same value, whose time is the 'fresh ms', so that what a process "
    "pays once for its first large save, such as botocore's multipart operations and the helper "
    "threads' stacks and allocator arenas, is not counted as a multiple of the payload: the "
    "targets give it as 'a process's first save'), shown as a multiple of the pickled payload. "
    "On Linux ru_maxrss survives fork and exec (a child starts with its parent's peak), so the "
    "child reads its own VmHWM from /proc/self/status, first reset to the current RSS through /proc/self/clear_refs."
)


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
    first = after - before
    if op.kind == "save":  # what each save costs: a second one, after the process's one-time costs
        os.sync()
        gc.collect()
        before = peak_rss(reset=True)
        result = op.run(case)
        after = peak_rss()
    ok = True
    if op.kind == "load" and spec["case"] == "GIANT":
        ok = len(result) == GIANT_ARRAYS and same_value(result[-1], giant_array(GIANT_ARRAYS - 1))
    print(json.dumps({"rss_increase": after - before, "first_rss_increase": first, "seconds": seconds, "ok": ok}))


def in_fresh_process(ctx: Context, tool: str, op: Op, case: str, big_arrays: int) -> dict[str, Any]:
    spec = {"ctx": ctx.__dict__, "tool": tool, "op": op.name, "case": case, "big_arrays": big_arrays}
    done = subprocess.run([sys.executable, "-m", "jangdok.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {op.id} {case} in a subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
