"""What verifying an entry costs: xxh3-128 over a 50 MB value versus the whole load.

    python benchmarks/checksum_cost.py [--mb 50] [--repeat 7] [--no-s3]

Loads one entry from a local folder and from a SeaweedFS server it starts on 127.0.0.1 (needs
the test extra), and prints medians measured side by side in one run; compare the ratios, not
absolute times across machines or runs.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import xxhash
from label_value import label_value

from jangdok import Cache, Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def median_ms(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS measurement")
    args = parser.parse_args()

    value = label_value(args.mb)
    sequences = len(value)
    with tempfile.TemporaryDirectory() as workdir:
        caches = {"local folder": Cache(str(Path(workdir) / "cache"), fallback=False)}
        server = None
        if not args.no_s3:
            from seaweed import READ_WRITE, start_seaweed

            server = start_seaweed(Path(workdir) / "seaweed")
            server.client().create_bucket(Bucket="bench")
            caches["S3 (SeaweedFS, loopback)"] = Cache.from_settings(Settings(
                cache_dir="s3://bench/cache/", endpoint_url=server.endpoint, region="us-east-1",
                access_key_id=READ_WRITE[0], secret_access_key=READ_WRITE[1], fallback=False))
        try:
            for name, cache in caches.items():
                info = cache.put("label.pkl", value)
                with cache.store.read("label.pkl") as reader:
                    payload = reader.read()
                load = median_ms(lambda c=cache: c.get("label.pkl"), args.repeat)
                xxh = median_ms(lambda p=payload: xxhash.xxh3_128_hexdigest(p), args.repeat)
                sha = median_ms(lambda p=payload: hashlib.sha256(p).hexdigest(), args.repeat)
                print(f"{name}: entry {info.size / 1e6:.1f} MB ({sequences} arrays of 30x675 float32), "
                      f"median of {args.repeat}")
                print(f"  load (read + verify + unpickle): {load:8.1f} ms")
                print(f"  xxh3_128 checksum:               {xxh:8.1f} ms  = {100 * xxh / load:4.1f}% of the load")
                print(f"  sha256, for comparison:          {sha:8.1f} ms  = {100 * sha / load:4.1f}% of the load")
                cache.close()
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
