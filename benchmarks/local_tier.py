"""Warm reads through the local tier against direct S3 reads, side by side in one run, and the
S3 requests each warm hit costs. S3 is a SeaweedFS started on 127.0.0.1 (needs the test extra).

    python benchmarks/local_tier.py [--repeat 7] [--megabytes 50]

The value is shaped like one of the seed's label caches (a list of float32 arrays). Three
readers load the same entry, in turn within each round so drift hits all three alike:

- direct S3: a cache without a local tier (every hit downloads the entry);
- local tier, trusted: within the trust window (no request at all);
- local tier, revalidated: trust window 0 (one conditional GET answered 304, no body).

Each load starts from a collected, paused garbage collector (a full heap can double a load
time); the median of the rounds is reported, with the ratio to direct S3.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from label_value import label_value

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from helpers import s3_settings  # noqa: E402
from seaweed import start_seaweed  # noqa: E402

from jangdok import Cache  # noqa: E402


def counting(cache: Cache, requests: Counter[str]) -> None:
    """Count every HTTP request the cache's S3 client sends, by operation."""
    store: Any = cache.store
    client = getattr(store, "remote", store).client
    client.meta.events.register("before-send.s3", lambda request, **_: requests.update([request.method]))


def timed_load(cache: Cache, key: str) -> float:
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        value = cache.get(key)
        seconds = time.perf_counter() - started
    finally:
        gc.enable()
    assert value is not None and len(value) > 0
    del value
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds (median taken)")
    parser.add_argument("--megabytes", type=float, default=50.0, help="size of the entry")
    args = parser.parse_args()
    value = label_value(args.megabytes)
    arrays = len(value)
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        server = start_seaweed(work / "seaweed")
        try:
            server.client().create_bucket(Bucket="bench")
            url = "s3://bench/tier/"
            readers = {
                "direct S3": Cache.from_settings(s3_settings(server, url)),
                "local tier, trusted": Cache.from_settings(s3_settings(
                    server, url, local_dir=str(work / "trusted"), local_trust_seconds=3600)),
                "local tier, revalidated": Cache.from_settings(s3_settings(
                    server, url, local_dir=str(work / "revalidated"), local_trust_seconds=0)),
            }
            Cache.from_settings(s3_settings(server, url)).put("label.pkl", value)
            for reader in readers.values():
                reader.get("label.pkl")  # warm: the tiers hold their copies
            size = readers["direct S3"].stat("label.pkl").size
            requests = {name: Counter[str]() for name in readers}
            for name, reader in readers.items():
                counting(reader, requests[name])
            times: dict[str, list[float]] = {name: [] for name in readers}
            for _ in range(args.repeat):
                for name, reader in readers.items():
                    times[name].append(timed_load(reader, "label.pkl"))
            baseline = statistics.median(times["direct S3"])
            print(f"warm loads of a {size / 1e6:.1f} MB entry ({arrays} float32 arrays), "
                  f"median of {args.repeat} interleaved rounds")
            print(f"{'reader':<26}{'median ms':>10}{'vs direct S3':>14}   S3 requests per warm hit")
            for name, samples in times.items():
                median = statistics.median(samples)
                per_hit = {method: count / args.repeat for method, count in sorted(requests[name].items())}
                shown = ", ".join(f"{count:g} {method}" for method, count in per_hit.items()) or "none"
                print(f"{name:<26}{median * 1e3:>10.1f}{baseline / median:>13.1f}x   {shown}")
        finally:
            for reader in readers.values():
                reader.close()
            server.stop()


if __name__ == "__main__":
    main()
