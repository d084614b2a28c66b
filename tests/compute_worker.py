"""A process that calls ``get_or_compute`` once, standing for one machine of a fleet.

Run as ``python compute_worker.py KEY LOG SECONDS [hang]`` with the cache configured by the
environment (``CACHE_DIR``, ``CACHE_LOCAL_DIR``, ``AWS_*``, ``JANGDOK_*``). Each computation
appends a line to LOG (``O_APPEND`` writes of one line are atomic), so the test counts them
across processes. With ``hang`` the computation announces itself and never ends: the test
kills it to play an owner that died. It prints its statistics as JSON on success.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from jangdok import Cache


def main() -> None:
    key, log_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    hang = sys.argv[4:] == ["hang"]

    def compute() -> dict[str, object]:
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\n")
        while hang:
            time.sleep(1)
        time.sleep(seconds)
        return {"key": key, "by": os.getpid()}

    cache = Cache()
    value = cache.get_or_compute(key, compute)
    stats = {label: dataclasses.asdict(tier) for label, tier in cache.stats().items()}
    print(json.dumps({"value": value, "stats": stats}))


if __name__ == "__main__":
    main()
