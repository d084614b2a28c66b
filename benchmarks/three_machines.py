"""Three ``python main.py`` runs started together on one empty S3 prefix, each with its own
local tier (three machines sharing a bucket), then a warm run on each "machine".
S3 is a SeaweedFS started on 127.0.0.1 (needs the test extra).

    python benchmarks/three_machines.py [--chapter 인사]

Reports how many times each label was saved in total (the goal: once), what each run did,
and how much each warm run fetched from S3 versus served from its local tier.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from seaweed import credentials_env, start_seaweed  # noqa: E402

from chapter_generator import generate_sample_dataset  # noqa: E402

_LABEL = re.compile(r"^(?:💾|📂) (\S+) ")
_STATS = re.compile(r"^🗄️ cache \((.+?)\): (\d+) hits, (\d+) misses, read ([\d.]+) MB")


def start(base: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *base], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(run: subprocess.Popen[str]) -> str:
    out, err = run.communicate(timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"main.py failed:\n{out}\n{err}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", action="append", help="limit to a chapter (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        generate_sample_dataset(work / "data")
        server = start_seaweed(work / "seaweed")
        try:
            server.client().create_bucket(Bucket="bench")
            base = ["--data-dir", str(work / "data")]
            for chapter in args.chapter or []:
                base += ["--chapter", chapter]
            clean = {name: value for name, value in os.environ.items()
                     if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
            envs = [{**clean, **credentials_env(server), "CACHE_DIR": "s3://bench/shared/",
                     "CACHE_LOCAL_DIR": str(work / f"machine{n}" / "tier")} for n in range(3)]
            started = time.perf_counter()
            cold = [finish(run) for run in
                    [start([*base, "--output-dir", str(work / f"out{n}")], envs[n]) for n in range(3)]]
            cold_seconds = time.perf_counter() - started
            saves = Counter(m.group(1) for out in cold for line in out.splitlines()
                            if line.startswith("💾") and (m := _LABEL.match(line)))
            loads = sum(line.startswith("📂") for out in cold for line in out.splitlines())
            labels = len(saves)
            print(f"three concurrent cold runs on one empty prefix: {cold_seconds:.1f} s wall")
            print(f"  labels saved: {labels} distinct, {sum(saves.values())} saves in total; "
                  f"saves per label: {dict(Counter(saves.values()))}; loads of another run's labels: {loads}")
            for n, out in enumerate(cold):
                print(f"  machine {n}: saved {sum(line.startswith('💾') for line in out.splitlines())}, "
                      f"loaded {sum(line.startswith('📂') for line in out.splitlines())}")
            print("warm run on each machine (its local tier holds what it computed or loaded):")
            for n in range(3):
                out = finish(start([*base, "--output-dir", str(work / f"out{n}")], envs[n]))
                tiers = {m.group(1): (int(m.group(2)), float(m.group(4))) for line in out.splitlines()
                         if (m := _STATS.match(line))}
                shown = "; ".join(f"{name}: {hits} hits, {megabytes:.1f} MB"
                                  for name, (hits, megabytes) in tiers.items())
                print(f"  machine {n}: {shown}")
            verdict = "PASS" if set(saves.values()) == {1} else "FAIL"
            print(f"{verdict}: each label saved exactly once in total")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
