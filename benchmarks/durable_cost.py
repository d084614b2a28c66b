"""What ``durable=True`` (JANGDOK_DURABLE=1) costs a local write: fsync of the file before the
rename and of its folder after.

    python benchmarks/durable_cost.py [FOLDER]      # FOLDER: where to write (default: temp dir)

Writes alternate between a durable and a plain store in one loop, so both see the same disk
and page-cache state; the ratio of medians is the figure to compare across machines.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

from jangdok.location import parse_location
from jangdok.stores.local import LocalStore

SIZES = {"1 MB": (1 << 20, 50), "48 MB": (48 << 20, 7)}


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    for label, (size, count) in SIZES.items():
        payload = os.urandom(size)
        root = tempfile.mkdtemp(prefix="durable-cost-", dir=base)
        stores = {durable: LocalStore(parse_location(os.path.join(root, str(durable))), durable=durable)
                  for durable in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        try:
            for number in range(count + 1):  # the first round warms up and is not counted
                os.sync()
                for durable, store in stores.items():
                    started = time.perf_counter()
                    store.write(f"value{number % 2}.bin", payload)  # over an existing entry, as a cache does
                    if number:
                        times[durable].append(time.perf_counter() - started)
        finally:
            shutil.rmtree(root)
        plain, durable = (statistics.median(times[mode]) * 1e3 for mode in (False, True))
        print(f"{count} x {label}: plain {plain:.2f} ms, durable {durable:.2f} ms (median), "
              f"durable/plain {durable / plain:.1f}x")


if __name__ == "__main__":
    main()
