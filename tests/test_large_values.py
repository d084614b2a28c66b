"""Large values: transfers that copy nothing on save and exactly once on load, progress as
bytes move, and a 1 GB value through S3 within a bounded memory increase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from seaweed import credentials_env

from jangdok import Cache


def label_value(count: int = 60, dtype: type = np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.standard_normal((30, 675)).astype(dtype) for _ in range(count)]


def test_progress_is_reported_as_bytes_move(cache: Cache) -> None:
    value = label_value()
    calls: list[tuple[int, int]] = []
    info = cache.put("big.pkl", value, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (info.size, info.size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    calls.clear()
    loaded = cache.get("big.pkl", progress=lambda done, total: calls.append((done, total)))
    assert all(np.array_equal(a, b) for a, b in zip(loaded, value, strict=True))
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1] > 0.99 * info.size
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_loaded_arrays_share_one_buffer_and_are_not_copied_again(cache: Cache) -> None:
    cache.put("big.pkl", label_value())
    loaded = cache.get("big.pkl")
    bases = {id(_root(array)) for array in loaded}
    assert len(bases) == 1, "every array is a view of the one buffer the payload was read into"
    assert all(array.flags.writeable and array.ctypes.data % 64 == 0 for array in loaded)


def _root(array: np.ndarray) -> object:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_mmap_loads_map_the_file_and_stay_private(tmp_path) -> None:
    value = label_value()
    with Cache(tmp_path / "cache", mmap=True, fallback=False) as cache:
        cache.put("big.pkl", value)
        loaded = cache.get("big.pkl")
        assert all(np.array_equal(a, b) for a, b in zip(loaded, value, strict=True))
        loaded[0][0, 0] = 1e9  # copy-on-write: the file keeps what was saved
        cache.put("big.pkl", [np.zeros(3)])  # replacing the entry leaves the mapped arrays intact
        assert np.array_equal(loaded[1], value[1])
        assert cache.get("big.pkl")[0].tolist() == [0.0, 0.0, 0.0]
    with Cache(tmp_path / "cache", fallback=False) as plain:
        assert plain.get("big.pkl")[0].tolist() == [0.0, 0.0, 0.0]


_GIANT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from jangdok import Cache

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    url = sys.argv[1]
    size = int(sys.argv[2])
    value = np.arange(size // 8, dtype=np.float64)
    with Cache(url, fallback=False) as cache:
        cache.store  # opened before measuring
        before = peak()
        cache.put("giant.pkl", value)
        saved = peak() - before
        checksum = float(value[::4096].sum())
        del value
        before = peak()
        loaded = cache.get("giant.pkl")
        load_increase = peak() - before
        ok = loaded.shape == (size // 8,) and float(loaded[::4096].sum()) == checksum
    print(json.dumps({"save_increase": saved, "load_increase": load_increase, "ok": ok}))
""")


@pytest.mark.slow
def test_a_1_gb_value_round_trips_through_s3_with_bounded_memory(seaweed, s3_url: str) -> None:
    size = 1 << 30
    env = {**os.environ, **credentials_env(seaweed)}
    result = subprocess.run([sys.executable, "-c", _GIANT, s3_url, str(size)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["ok"]
    assert figures["save_increase"] <= 0.05 * size, figures  # no copy of the payload on save
    assert figures["load_increase"] <= 1.1 * size, figures   # exactly one on load, filled in place
