"""A 48.6 MB label value saved over an existing entry in a local folder: jangdok against the
seed's ``pickle.dump`` to ``.tmp`` + ``os.replace``, alternating in random order, each after
``os.sync()`` so that no save pays for another's writeback.

    python benchmarks/local_save.py [FOLDER]

A standalone check of the one target the full benchmark (``python -m jangdok.bench``) misses
on the development machine; see docs/performance.md.
"""

from __future__ import annotations

import gc
import os
import pickle
import random
import statistics
import sys
import tempfile
import time

import numpy as np

from jangdok import Cache

ROUNDS = 9


def main() -> None:
    folder = tempfile.mkdtemp(prefix="local-save-", dir=sys.argv[1] if len(sys.argv) > 1 else None)
    value = [np.random.default_rng(i).standard_normal((30, 675)) for i in range(300)]
    cache = Cache(os.path.join(folder, "jangdok"), fallback=False)
    seed_path = os.path.join(folder, "seed.pkl")

    def seed_save() -> None:
        with open(seed_path + ".tmp", "wb") as file:
            pickle.dump(value, file)
        os.replace(seed_path + ".tmp", seed_path)

    saves = {"seed": seed_save, "jangdok": lambda: cache.put("big.pkl", value)}
    times: dict[str, list[float]] = {name: [] for name in saves}
    order = random.Random(7)
    for round_number in range(ROUNDS + 1):  # the first round creates the entries and is not counted
        names = list(saves)
        order.shuffle(names)
        for name in names:
            os.sync()
            gc.collect()
            started = time.perf_counter()
            saves[name]()
            if round_number:
                times[name].append(time.perf_counter() - started)
    seed, jangdok = (statistics.median(times[name]) * 1e3 for name in ("seed", "jangdok"))
    print(f"seed {seed:.1f} ms, jangdok {jangdok:.1f} ms (medians of {ROUNDS}): jangdok {seed / jangdok:.2f}x faster")


if __name__ == "__main__":
    main()
