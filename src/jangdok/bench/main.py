"""The command line: ``python -m jangdok.bench``."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .fresh import FRESH_NOTE, RSS_NOTE, child_main, in_fresh_process
from .link import DEFAULT_PER_CONNECTION, DEFAULT_RTT, DEFAULT_TOTAL, Shape, link_child
from .linkbench import run_link_section
from .linkreport import link_markdown, link_targets, link_text
from .measure import HEAP_MODES, HEAP_NOTE, count_through_proxy, measure, set_heap_mode
from .registry import build_ops
from .report import machine_info, table_rows, targets, text_table, write_markdown
from .tools import BUCKET, Context
from .values import BIG_ARRAYS, MB, QUICK_BIG_ARRAYS, Case

SMALL_ROUNDS_PER_BIG = 9


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as summary  # the package's, whose first line says what the benchmark does

    parser = argparse.ArgumentParser(prog="python -m jangdok.bench", description=(summary or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 repetitions, small sizes, no 1 GB value, fresh processes for jangdok only (for CI)")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 7, --quick 2)")
    parser.add_argument("--giant", action=argparse.BooleanOptionalAction, default=None,
                        help="also save and load a 1 GB value on S3 (default: on, off with --quick)")
    parser.add_argument("--heap", choices=sorted(HEAP_MODES), default="trim",
                        help="trim: glibc's defaults (default); reuse: keep freed memory for reuse")
    parser.add_argument("--link", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure through a shaped link (default: on; --quick: a smaller form)")
    parser.add_argument("--link-rtt", type=float, default=DEFAULT_RTT * 1e3, metavar="MS",
                        help="the link's round-trip time (default %(default)g ms)")
    parser.add_argument("--link-per-connection", type=float, default=DEFAULT_PER_CONNECTION / MB, metavar="MB/S",
                        help="each connection's bandwidth, each direction (default %(default)g MB/s)")
    parser.add_argument("--link-total", type=float, default=DEFAULT_TOTAL / MB, metavar="MB/S",
                        help="the link's total bandwidth, each direction (default %(default)g MB/s)")
    parser.add_argument("--out", type=Path, help="write the report as markdown here (e.g. docs/performance.md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--link-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.link_child:
        link_child(json.loads(args.link_child))
        return 0
    from ..server import start_seaweed

    started = time.perf_counter()
    set_heap_mode(args.heap)
    heap_note = " ".join((HEAP_NOTE, HEAP_MODES[args.heap], FRESH_NOTE))
    reps = args.reps or (2 if args.quick else 7)
    big_arrays = QUICK_BIG_ARRAYS if args.quick else BIG_ARRAYS
    giant = (not args.quick) if args.giant is None else args.giant
    command = "python -m jangdok.bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    cases = [Case("BIG", big_arrays), Case("SMALL")]
    # A SMALL operation takes under a millisecond with a long tail (a journal commit, a cold
    # cache): over 21 rounds its median moved by 8% between quiet runs of the same code, so it
    # gets more rounds, which cost seconds.
    case_reps = {"BIG": reps, "SMALL": SMALL_ROUNDS_PER_BIG * reps}
    workdir = tempfile.mkdtemp(prefix="jangdok-bench-")
    server = None
    try:
        server = start_seaweed(Path(workdir) / "seaweed")
        from ..server import READ_WRITE

        ctx = Context(workdir, server.endpoint, *READ_WRITE)
        server.client().create_bucket(Bucket=BUCKET)
        settings = (f"BIG = {big_arrays} float64 arrays of 30x675 ({len(cases[0].pickled) / MB:.1f} MB pickled), "
                    f"SMALL = a dict ({len(cases[1].pickled) / 1e3:.1f} KB pickled). Median of {reps} timed "
                    f"rounds for BIG and {SMALL_ROUNDS_PER_BIG * reps} for SMALL, after one warm-up round.")
        print(settings)
        print(heap_note)
        print(RSS_NOTE, flush=True)
        ops = build_ops(ctx)
        results = measure(ops, cases, case_reps)
        count_through_proxy(ctx, cases, results)
        print("peak RSS and first-run time, one fresh process per (tool, operation) on BIG ...", flush=True)
        for op in ops:
            if args.quick and op.role != "jangdok":  # the targets' RSS figures are jangdok's
                continue
            try:
                measured = in_fresh_process(ctx, op.maker, op, "BIG", big_arrays)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:  # report the rest; this one shows as missing
                print(f"warning: {exc}", file=sys.stderr, flush=True)
                continue
            record = results[op.id, "BIG"]
            record.take_fresh(measured)
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
        link = None
        if args.link:
            shape = Shape(args.link_rtt / 1e3, args.link_per_connection * MB, args.link_total * MB)
            link = run_link_section(server.endpoint, READ_WRITE, workdir, shape, quick=args.quick, reps=reps,
                                    giant=giant)
        rows = list(table_rows(results))
        found = targets(results, giant_results) + (link_targets(link) if link else [])
        print()
        print(text_table(rows))
        if giant_results:
            for name, measured in giant_results.items():
                print(f"1 GB value, S3 {name}: {measured['seconds']:.1f} s, "
                      f"peak RSS increase {measured['rss_increase'] / 1e9:.2f} GB")
        if link:
            print()
            print(link_text(link))
        print()
        for target in found:
            print(target.line())
        elapsed = time.perf_counter() - started
        if args.out:
            write_markdown(args.out, command, machine_info(), rows, found, giant_results, settings, heap_note,
                           elapsed, link_markdown(link, command) if link else [])
            print(f"\nwrote {args.out}")
        print(f"done in {elapsed:.0f} s")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
