"""The value the benchmarks measure: shaped like one of the seed's label caches."""

from __future__ import annotations

import numpy as np

SEQUENCE_SHAPE = (30, 675)  # frames x landmark features, as main.py's labels store them


def label_value(megabytes: float) -> list[np.ndarray]:
    """A list of float32 sequences of about ``megabytes`` MB, the same in every run."""
    count = max(1, int(megabytes * 1e6 / (SEQUENCE_SHAPE[0] * SEQUENCE_SHAPE[1] * 4)))
    rng = np.random.default_rng(0)
    return [rng.standard_normal(SEQUENCE_SHAPE).astype(np.float32) for _ in range(count)]
