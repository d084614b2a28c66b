"""Cold versus warm runs of ``python main.py`` on a local cache folder and on S3 (a SeaweedFS
server started on 127.0.0.1; needs the test extra), measured side by side in one run.

    python benchmarks/main_cold_warm.py [--repeat 2] [--chapter 인사]

A cold run computes every label and saves it; a warm run loads every label from the cache.
Both include process start-up and training. Compare the ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import os
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
                            capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="cold+warm pairs per store (median taken)")
    parser.add_argument("--chapter", action="append", help="limit to a chapter (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        generate_sample_dataset(work / "data")
        server = start_seaweed(work / "seaweed")
        server.client().create_bucket(Bucket="bench")
        try:
            stores = {"local folder": ({}, lambda n: str(work / f"cache{n}")),
                      "S3 (SeaweedFS)": (credentials_env(server), lambda n: f"s3://bench/run{n}/")}
            base = ["--data-dir", str(work / "data"), "--output-dir", str(work / "out"), "-q"]
            for chapter in args.chapter or []:
                base += ["--chapter", chapter]
            print(f"python main.py, {args.repeat} cold/warm pair(s) per store, median seconds")
            for name, (env, location) in stores.items():
                cold, warm = [], []
                for attempt in range(args.repeat):
                    run_args = [*base, "--cache-dir", location(attempt)]
                    seconds, output = timed_run(run_args, env)
                    cold.append(seconds)
                    seconds, output = timed_run(run_args, env)
                    assert " 0 misses" in output, f"the warm run missed:\n{output}"
                    warm.append(seconds)
                c, w = statistics.median(cold), statistics.median(warm)
                print(f"  {name:16s} cold {c:6.2f} s   warm {w:6.2f} s   warm is {c / w:4.1f}x faster")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
