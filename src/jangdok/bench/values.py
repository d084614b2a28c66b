"""The values the benchmark saves and loads: BIG (the seed's label caches), SMALL (a label's
parameters) and GIANT (1 GB), and how to tell a loaded value is the one saved."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import cached_property
from typing import Any

BIG_ARRAYS, QUICK_BIG_ARRAYS = 300, 30
GIANT_ARRAYS = 125  # of 1000x1000 float64: 1.0 GB
MB = 1e6


def make_value(case: str, big_arrays: int = BIG_ARRAYS) -> Any:
    import numpy as np

    if case == "BIG":  # the seed's label caches: a list of (30, 675) sequences
        rng = np.random.default_rng(0)
        return [rng.standard_normal((30, 675)) for _ in range(big_arrays)]
    if case == "GIANT":
        return [giant_array(i) for i in range(GIANT_ARRAYS)]
    return {  # SMALL: a label's parameters and a little bookkeeping
        "label": "김치", "seq": 30, "aug": 9, "max": None, "min": 10,
        "videos": [f"data/sample/김치/{i:03d}.npz" for i in range(40)],
        "scores": [i / 7 for i in range(200)], "created": "2026-01-01T00:00:00",
    }


def giant_array(index: int) -> Any:
    import numpy as np

    return np.random.default_rng(index).random((1000, 1000))


def same_value(a: Any, b: Any) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclass
class Case:
    name: str
    big_arrays: int = BIG_ARRAYS

    @property
    def key(self) -> str:
        return f"{self.name.lower()}.pkl"

    @cached_property
    def value(self) -> Any:
        return make_value(self.name, self.big_arrays)

    @cached_property
    def pickled(self) -> bytes:
        return pickle.dumps(self.value, protocol=pickle.HIGHEST_PROTOCOL)
