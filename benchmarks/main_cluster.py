"""``python main.py`` cold on 1, 2 and all cores (``--workers``), on a Dask LocalCluster
(``--scheduler``), and warm, on a local cache folder and on S3 (a SeaweedFS server started on
127.0.0.1; needs the test extra), measured side by side in one run.

    python benchmarks/main_cluster.py [--repeat 2] [--chapter 인사] [--no-s3]

Every run includes process start-up and training; a cold run computes every label and saves
it, a warm run loads every label. The Dask cluster (as many worker processes as cores, one
thread each, on 127.0.0.1) is started once before the runs and not timed: a cluster outlives
the runs it serves. Within each round the runs take turns in a new random order, so drift and
other load hit them alike; the table gives the fastest round (other load only adds time) and
the median. Compare the ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from seaweed import credentials_env, start_seaweed  # noqa: E402

from chapter_generator import generate_sample_dataset  # noqa: E402


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], env={**os.environ, **env},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"main.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started, result.stdout


def summary_count(output: str, what: str) -> int:
    """``hits`` or ``misses``, summed over the summary's cache lines."""
    return sum(int(count) for count in re.findall(rf"^🗄️ cache \(.+?\): .*?(\d+) {what}", output, re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds (median taken)")
    parser.add_argument("--chapter", action="append", help="limit to a chapter (default: all)")
    parser.add_argument("--no-s3", action="store_true", help="the local folder only")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        generate_sample_dataset(work / "data")
        server = None if args.no_s3 else start_seaweed(work / "seaweed")
        stores: dict[str, tuple[dict[str, str], str]] = {"local folder": ({}, str(work / "cache"))}
        if server is not None:
            server.client().create_bucket(Bucket="bench")
            stores["S3 (SeaweedFS)"] = (credentials_env(server), "s3://bench")
            os.environ.update(credentials_env(server))  # for the cluster's workers
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        starting = time.perf_counter()
        cluster = LocalCluster(processes=True, n_workers=cores, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None)
        cluster_start = time.perf_counter() - starting
        try:
            base = ["--data-dir", str(work / "data"), "--output-dir", str(work / "out"), "-q"]
            for chapter in args.chapter or []:
                base += ["--chapter", chapter]
            runs = {"cold, 1 process": ["--workers", "1"], "cold, 2 processes": ["--workers", "2"],
                    f"cold, all cores ({cores} processes)": [],
                    f"cold, Dask LocalCluster ({cores} workers)": ["--scheduler", cluster.scheduler_address]}
            times: dict[tuple[str, str], list[float]] = {}
            prefixes = itertools.count()
            load = os.getloadavg()[0]
            for round_number in range(args.repeat):
                order = [(store, run) for store in stores for run in [*runs, "warm"]]
                random.Random(round_number).shuffle(order)
                for store, run in order:
                    env, where = stores[store]
                    fresh = f"{where}/run{next(prefixes)}/"
                    if run == "warm":  # what a cold run of this store left, loaded by a new process
                        timed_run([*base, "--cache-dir", fresh], env)
                        seconds, output = timed_run([*base, "--cache-dir", fresh], env)
                        assert summary_count(output, "misses") == 0, f"the warm run missed:\n{output}"
                    else:
                        seconds, output = timed_run([*base, "--cache-dir", fresh, *runs[run]], env)
                        assert summary_count(output, "hits") == 0, f"the cold run found entries:\n{output}"
                    times.setdefault((store, run), []).append(seconds)
            print(f"python main.py, {args.repeat} round(s); this machine: {cores} cores (load average "
                  f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); the cluster started in "
                  f"{cluster_start:.1f} s, before the runs")
            # Other load only ever adds time: the fastest of a run's rounds is the least disturbed.
            print("| store | run | min s | median s | speed-up vs cold on 1 process (min / median) |\n"
                  "|---|---|---:|---:|---:|")
            for store in stores:
                single = times[(store, "cold, 1 process")]
                for run in [*runs, "warm"]:
                    fastest, median = min(times[(store, run)]), statistics.median(times[(store, run)])
                    print(f"| {store} | {run} | {fastest:.2f} | {median:.2f} | {min(single) / fastest:.2f}x / "
                          f"{statistics.median(single) / median:.2f}x |")
        finally:
            cluster.close()
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
