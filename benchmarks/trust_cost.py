"""What trust costs on a 50 MB label value: signed against unsigned entries, and the
pickle-free "safe" serializer against pickle, saved and loaded side by side in one run.

    python benchmarks/trust_cost.py [--mb 50] [--repeat 7] [--no-s3]

The value is shaped like the seed's label caches (a list of (30, 675) float32 arrays). Four
caches (pickle or safe, unsigned or signed) on one local folder, and on a SeaweedFS server
started on 127.0.0.1 (needs the test extra), take turns within each round so drift hits all
alike; every save and load starts from a collected, paused garbage collector (a full heap can
double a load time). Medians; compare the ratios, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from label_value import label_value

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from jangdok import Cache  # noqa: E402

SIGNING_KEY = "benchmark-signing-key-0123456789"
VARIANTS = {
    "pickle, unsigned": {},
    "pickle, signed": {"signing_keys": SIGNING_KEY},
    "safe, unsigned": {"serializer": "safe"},
    "safe, signed": {"serializer": "safe", "signing_keys": SIGNING_KEY},
}


def timed(action: Callable[[], Any]) -> float:
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - started
    finally:
        gc.enable()
    del result
    return seconds * 1e3


def measure(name: str, caches: dict[str, Cache], value: Any, repeat: int) -> None:
    saves: dict[str, list[float]] = {variant: [] for variant in caches}
    loads: dict[str, list[float]] = {variant: [] for variant in caches}
    for round_number in range(repeat + 1):
        for variant, cache in caches.items():
            key = f"{variant.replace(', ', '-')}.pkl"
            saved = timed(lambda: cache.put(key, value))  # noqa: B023 - used at once
            loaded = timed(lambda: cache.get(key))  # noqa: B023
            if round_number:  # the first round warms files, connections and code paths
                saves[variant].append(saved)
                loads[variant].append(loaded)
    base_save = statistics.median(saves["pickle, unsigned"])
    base_load = statistics.median(loads["pickle, unsigned"])
    print(f"\n{name}: median of {repeat} rounds")
    print(f"{'variant':<20}{'save ms':>9}{'vs pickle':>11}{'load ms':>9}{'vs pickle':>11}")
    for variant in caches:
        save, load = statistics.median(saves[variant]), statistics.median(loads[variant])
        print(f"{variant:<20}{save:>9.1f}{save / base_save:>10.2f}x{load:>9.1f}{load / base_load:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS measurement")
    args = parser.parse_args()
    value = label_value(args.mb)
    print(f"value: {len(value)} float32 arrays of (30, 675), {sum(a.nbytes for a in value) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        measure("local folder", {variant: Cache(str(work / "cache"), fallback=False, **options)
                                 for variant, options in VARIANTS.items()}, value, args.repeat)
        if args.no_s3:
            return
        from helpers import s3_settings
        from seaweed import start_seaweed

        server = start_seaweed(work / "seaweed")
        try:
            server.client().create_bucket(Bucket="bench")
            measure("S3 (SeaweedFS on 127.0.0.1)", {
                variant: Cache.from_settings(s3_settings(server, "s3://bench/trust/", **options))
                for variant, options in VARIANTS.items()}, value, args.repeat)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
