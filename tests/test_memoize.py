"""Memoize: keys from a function's name and arguments, stable across processes; a cache that
fails never breaks the function. Everything runs on real caches (folders, an unreachable S3
endpoint) and real subprocesses, with no stand-ins for jangdok's parts."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import importlib
import inspect
import json
import linecache
import logging
import math
import os
import pathlib
import pickle
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import zoneinfo
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import jangdok
from jangdok import Cache, stable_hash
from jangdok.errors import AccessDenied, ConfigError, InvalidKey, InvalidValue, JangdokError
from jangdok.location import normalize_key
from jangdok.memoize import memoize

HASH_FILE = r"[0-9a-f]{32}\.pkl"
# The subprocesses import this jangdok, not whichever one is installed.
JANGDOK_SOURCE = Path(jangdok.__file__ or "").parent.parent
# The module itself, even if the package ever exports the function under the same name.
canonical = importlib.import_module("jangdok.canonical")


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(str(tmp_path / "cache"))


class Counter:
    """Counts calls of the functions under test."""

    def __init__(self) -> None:
        self.calls = 0


def keyer(cache: Cache) -> Any:
    """A memoized function of anything, to compare the keys of its arguments."""

    @memoize(cache)
    def anything(value: Any) -> Any:
        return value

    return anything.key


# -- computing once, and keys -------------------------------------------------------------------


def test_computed_once_then_served_from_the_cache(cache: Cache, tmp_path: Path) -> None:
    counter = Counter()

    @memoize(cache)
    def square(x: int) -> int:
        counter.calls += 1
        return x * x

    assert square(4) == 16
    assert square(4) == 16
    assert counter.calls == 1
    assert square(5) == 25
    assert counter.calls == 2
    assert cache.exists(square.key(4)) and cache.exists(square.key(5))

    # Another Cache on the same folder (as another process would open it) is served the entry.
    reopened = memoize(Cache(str(tmp_path / "cache")), square.__wrapped__)
    assert reopened(4) == 16
    assert counter.calls == 2


def test_positional_keyword_and_default_forms_are_one_key(cache: Cache) -> None:
    @memoize(cache)
    def f(a: int, b: int = 2, *, c: str = "x") -> int:
        return a + b

    key = f.key(1, 2)
    assert f.key(1) == key
    assert f.key(1, b=2) == key
    assert f.key(a=1, b=2) == key
    assert f.key(b=2, a=1, c="x") == key
    assert f.key(1, 3) != key
    assert f.key(1, c="y") != key


def test_var_args_and_var_kwargs(cache: Cache) -> None:
    @memoize(cache)
    def f(*args: int, **kwargs: int) -> int:
        return sum(args) + sum(kwargs.values())

    assert f.key(1, 2, x=1, y=2) == f.key(1, 2, **{"y": 2, "x": 1})
    assert f.key(1, 2) != f.key(2, 1)
    assert f.key(1, 2, x=1) != f.key(1, 2, y=1)
    assert f(1, 2, x=3) == 6


def test_arguments_that_do_not_fit_the_signature_raise_type_error(cache: Cache) -> None:
    @memoize(cache)
    def f(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="'b'"):
        f(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        f(1, 2, c=3)  # type: ignore[call-arg]


def test_different_arguments_give_different_keys(cache: Cache) -> None:
    key = keyer(cache)
    values = [
        None, True, False, 0, 1, 1.0, -0.0, 0.0, "1", b"1", bytearray(b"1"), complex(1, 0),
        (1,), [1], {1}, frozenset({1}), {1: 1}, {"1": 1}, (), [], "", b"", 2**70, -(2**70),
        ("ab", "c"), ("a", "bc"), [[1], 2], [1, [2]], OrderedDict(a=1), np.int64(1), np.float64(1.0),
        np.array(1), np.array([1]), np.bool_(True),
    ]
    keys = [key(value) for value in values]
    assert len(set(keys)) == len(keys), [v for v, k in zip(values, keys, strict=True) if keys.count(k) > 1]


def test_floats_are_keyed_by_their_bits(cache: Cache) -> None:
    key = keyer(cache)
    other_nan = struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x01")[0]
    negative_nan = -float("nan")
    assert math.isnan(other_nan) and math.copysign(1.0, negative_nan) == -1.0  # what a function can see
    assert key(float("nan")) == key(math.nan)
    assert len({key(float("nan")), key(other_nan), key(negative_nan)}) == 3
    assert key(-0.0) != key(0.0)
    assert key(0.1 + 0.2) != key(0.3)
    assert key(float("inf")) != key(float("-inf"))


def test_dicts_and_sets_are_independent_of_order(cache: Cache) -> None:
    key = keyer(cache)
    forward = {f"k{i}": i for i in range(50)}
    backward = dict(reversed(list(forward.items())))
    assert list(forward) != list(backward)
    assert key(forward) == key(backward)
    assert key({"a": {"x": 1, "y": 2}}) == key({"a": {"y": 2, "x": 1}})
    assert key({"a", "b", "c"}) == key({"c", "b", "a"})
    assert key(frozenset(range(100))) == key(frozenset(reversed(range(100))))
    assert key({"a": 1, "b": 2}) != key({"a": 2, "b": 1})
    # An ordered dict's order is part of its value (its == says so).
    assert key(OrderedDict(a=1, b=2)) != key(OrderedDict(b=2, a=1))


def test_numpy_arrays_by_dtype_shape_and_content(cache: Cache) -> None:
    key = keyer(cache)
    a = np.arange(12, dtype=np.int64)
    assert key(a) == key(np.arange(12, dtype=np.int64))
    assert key(a) != key(a.astype(np.int32))  # same numbers, another dtype
    assert key(a) != key(a.astype(np.float64))
    assert key(a) != key(a.reshape(3, 4))  # same bytes, another shape
    assert key(a.reshape(3, 4)) != key(a.reshape(4, 3))
    changed = a.copy()
    changed[7] = -1
    assert key(a) != key(changed)

    grid = np.arange(60, dtype=np.float32).reshape(6, 10)
    strided = grid[::2, 1::3]
    assert not strided.flags.c_contiguous
    assert key(strided) == key(np.ascontiguousarray(strided))
    fortran = np.asfortranarray(grid)
    assert key(fortran) == key(grid)
    assert key(grid.T) == key(np.ascontiguousarray(grid.T))
    assert key(grid.T) != key(grid)
    # Byte order is storage, not value: a big-endian array is the same key as a native one
    # (numpy's pickle, which carries arrays to other processes, gives them back in native order).
    big = a.astype(">i8")
    assert pickle.loads(pickle.dumps(big, protocol=4)).dtype.str == "<i8"
    assert key(big) == key(a.astype("<i8"))
    assert key(big) != key(a.view(">i8"))  # the same bytes read the other way: other values
    assert key(np.zeros((0, 3))) != key(np.zeros((3, 0)))
    assert key(np.array(["a", "bc"])) == key(np.array(["a", "bc"]))
    assert key(np.array(["2024-01-01"], dtype="datetime64[D]")) != key(np.array(["2024-01-02"], dtype="datetime64[D]"))
    records = np.array([(1, 2.0)], dtype=[("x", "<i4"), ("y", "<f8")])
    renamed = np.array([(1, 2.0)], dtype=[("u", "<i4"), ("y", "<f8")])
    assert key(records) != key(renamed)
    assert key(np.float32(1.5)) == key(np.float32(1.5))
    assert key(np.float32(1.5)) != key(np.float64(1.5))


def test_large_non_contiguous_arrays_are_hashed_piecewise_alike(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    key = keyer(cache)
    cube = np.random.default_rng(0).random((8, 9, 10))[:, ::2, ::-1]
    expected = key(np.ascontiguousarray(cube))
    monkeypatch.setattr(canonical, "_COPY_LIMIT", 0)  # the row-by-row path of huge arrays
    assert key(cube) == expected


def test_object_arrays_are_hashed_element_wise(cache: Cache) -> None:
    key = keyer(cache)
    assert key(np.array([1, "a", None], dtype=object)) == key(np.array([1, "a", None], dtype=object))
    assert key(np.array([1, "a"], dtype=object)) != key(np.array([1, "b"], dtype=object))
    with pytest.raises(InvalidValue, match=r"value\.flat\[1\]"):
        key(np.array([1, object()], dtype=object))


def test_array_subclasses_with_hidden_state_are_refused(cache: Cache) -> None:
    with pytest.raises(InvalidValue, match="MaskedArray"):
        keyer(cache)(np.ma.masked_array([1, 2], mask=[0, 1]))


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float
    layers: tuple[int, ...] = (64, 64)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OtherConfig:
    lr: float
    layers: tuple[int, ...] = (64, 64)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


Point = namedtuple("Point", "x y")


def test_dataclasses_paths_enums_dates_namedtuples(cache: Cache) -> None:
    key = keyer(cache)
    assert key(Config(0.1)) == key(Config(0.1, (64, 64), {}))
    assert key(Config(0.1)) != key(Config(0.2))
    assert key(Config(0.1, extra={"a": 1, "b": 2})) == key(Config(0.1, extra={"b": 2, "a": 1}))
    assert key(Config(0.1)) != key(OtherConfig(0.1))  # the class is part of the value

    assert key(Path("data/x.csv")) == key(Path("data") / "x.csv")
    assert key(Path("data/x.csv")) != key(Path("data/y.csv"))
    assert key(Path("data/x.csv")) != key("data/x.csv")
    assert key(pathlib.PurePosixPath("data/x.csv")) != key(Path("data/x.csv"))

    assert key(Color.RED) == key(Color.RED)
    assert key(Color.RED) != key(Color.GREEN)
    assert key(Level.LOW) != key(1)

    day = datetime.date(2024, 3, 1)
    moment = datetime.datetime(2024, 3, 1, 12, 30)
    assert key(day) != key(moment)
    assert key(moment) != key(moment.replace(tzinfo=datetime.timezone.utc))
    assert key(moment) == key(datetime.datetime(2024, 3, 1, 12, 30))
    assert key(datetime.timedelta(seconds=1)) != key(datetime.timedelta(seconds=2))
    assert key(datetime.time(1, 30)) != key(datetime.time(1, 30, fold=1))

    assert key(Point(1, 2)) == key(Point(x=1, y=2))
    assert key(Point(1, 2)) != key((1, 2))


class Perm(enum.Flag):
    READ = 1
    WRITE = 2
    EXEC = 4


class Mode(enum.IntFlag):  # boundary KEEP: values with undefined bits are members too
    R = 1
    W = 2


class Shape(enum.Enum):
    SQUARE = (4, "equal")
    RECTANGLE = (4, "unequal")
    QUAD = (4, "equal")  # an alias of SQUARE: the same member


def test_flag_enums_are_keyed_by_class_and_value(cache: Cache) -> None:
    """Composite Flag values have no name on 3.10 (and Flag(0), or bits outside the members,
    none on any version): keyed by name, f(READ|WRITE) was served f(READ|EXEC)'s result."""
    calls: list[Perm] = []

    @memoize(cache)
    def describe(perm: Perm) -> int:
        calls.append(perm)
        return perm.value

    assert describe(Perm.READ | Perm.EXEC) == 5
    assert describe(Perm.READ | Perm.WRITE) == 3
    assert describe(Perm(0)) == 0
    assert describe(Perm.READ | Perm.WRITE) == 3
    assert calls == [Perm.READ | Perm.EXEC, Perm.READ | Perm.WRITE, Perm(0)]

    key = keyer(cache)
    members = [Perm.READ, Perm.READ | Perm.WRITE, Perm.READ | Perm.EXEC, Perm.WRITE | Perm.EXEC, Perm(0),
               Mode(0), Mode(8), Mode(16), Mode.R | Mode.W, Mode(9), Level.LOW, Color.RED]
    assert len({key(member) for member in members}) == len(members)
    assert key(Perm.READ | Perm.WRITE) == key(Perm(3))
    assert key(Mode(3)) != key(3)  # an IntFlag is not its int
    assert key(Shape.QUAD) == key(Shape.SQUARE) != key(Shape.RECTANGLE)


class Holder(enum.Enum):
    LOCK = threading.Lock()


def test_an_enum_whose_value_has_no_stable_encoding_is_refused(cache: Cache) -> None:
    with pytest.raises(InvalidValue, match=r"value\.value \(a lock\)"):
        keyer(cache)(Holder.LOCK)


def test_datetimes_are_keyed_with_their_time_zone(cache: Cache) -> None:
    """The same instant in UTC and in Europe/London on 1 January is +00:00 in both, but half a
    year later London is +01:00: a function adding days gives different answers."""
    calls: list[datetime.datetime] = []

    @memoize(cache)
    def half_a_year_later(start: datetime.datetime) -> str:
        calls.append(start)
        return (start + datetime.timedelta(days=182)).isoformat()

    utc = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone.utc)
    london = datetime.datetime(2024, 1, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/London"))
    assert utc == london
    assert half_a_year_later(utc) == "2024-07-01T12:00:00+00:00"
    assert half_a_year_later(london) == "2024-07-01T12:00:00+01:00"
    assert half_a_year_later(london) == "2024-07-01T12:00:00+01:00"
    assert calls == [utc, london]

    key = keyer(cache)
    hour = datetime.timedelta(hours=1)
    lisbon = london.replace(tzinfo=zoneinfo.ZoneInfo("Europe/Lisbon"))  # also GMT in winter
    moments = [utc, london, lisbon, london.replace(tzinfo=zoneinfo.ZoneInfo("UTC")), utc.replace(tzinfo=None),
               utc.astimezone(datetime.timezone(hour)), utc.astimezone(datetime.timezone(hour, "CET"))]
    assert len({key(moment) for moment in moments}) == len(moments)
    assert key(london) == key(datetime.datetime(2024, 1, 1, 12, tzinfo=zoneinfo.ZoneInfo.no_cache("Europe/London")))
    assert key(utc) == key(datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(0))))
    noon = datetime.time(12)
    assert len({key(noon), key(noon.replace(tzinfo=datetime.timezone.utc)),
                key(noon.replace(tzinfo=zoneinfo.ZoneInfo("Europe/London")))}) == 3


class Fixed(datetime.tzinfo):
    """A tzinfo that nothing names: its rules are whatever this code says."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(hours=2)

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(0)

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "FIX"


def test_a_time_zone_without_a_stable_name_is_refused(cache: Cache) -> None:
    key = keyer(cache)
    with pytest.raises(InvalidValue, match=r"value\.tzinfo \(a Fixed\).*zoneinfo"):
        key(datetime.datetime(2024, 1, 1, tzinfo=Fixed()))
    london = next((Path(folder) / "Europe" / "London" for folder in zoneinfo.TZPATH
                   if (Path(folder) / "Europe" / "London").is_file()), None)
    if london is None:
        pytest.skip("no time zone files on this system")
    with london.open("rb") as tzfile:
        unnamed = zoneinfo.ZoneInfo.from_file(tzfile)  # no key: it could be any file
    with pytest.raises(InvalidValue, match=r"value\.tzinfo \(a ZoneInfo\)"):
        key(datetime.datetime(2024, 1, 1, tzinfo=unnamed))


def test_structured_arrays_are_keyed_by_their_fields_not_the_bytes_between(cache: Cache) -> None:
    key = keyer(cache)
    table = np.zeros(4, dtype=[("x", "<i4"), ("y", "<i4"), ("z", "<f8")])
    other = table.copy()
    other["y"] = 7
    picked, other_picked = table[["x", "z"]], other[["x", "z"]]  # views with a gap where y was
    assert picked.tobytes() != other_picked.tobytes()
    assert key(picked) == key(other_picked) == key(picked.copy())
    changed = table.copy()
    changed["z"][2] = 1.5
    assert key(changed[["x", "z"]]) != key(picked)
    assert key(picked) != key(table)
    aligned = np.zeros(2, dtype=np.dtype([("a", "u1"), ("b", "<i8")], align=True))
    assert key(aligned) == key(aligned.copy()) != key(aligned.astype([("a", "u1"), ("b", "<i8")]))


class Opaque:
    pass


def test_an_unhashable_argument_is_named(cache: Cache) -> None:
    @memoize(cache)
    def train(config: Any, model: Any) -> None:
        return None

    with pytest.raises(InvalidValue) as raised:
        train(Config(0.1), Opaque())
    message = str(raised.value)
    assert isinstance(raised.value, TypeError)
    assert "argument 'model'" in message and "train" in message and "an Opaque" in message
    assert "ignore=('model',)" in message

    with pytest.raises(InvalidValue, match=r"argument 'config' .*config\['opt'\]\[1\] \(an Opaque\)"):
        train({"opt": [1, Opaque()]}, 1)
    with pytest.raises(InvalidValue, match=r"config\.extra\['x'\]"):
        train(Config(0.1, extra={"x": Opaque()}), 1)
    with pytest.raises(InvalidValue, match="argument 'config'"):
        train({Opaque()}, 1)
    looped: list[Any] = [1]
    looped.append(looped)
    with pytest.raises(InvalidValue, match="contains itself"):
        train(looped, 1)
    with pytest.raises(InvalidValue, match="argument 'config'"):
        train(lambda: 1, 1)
    assert list(cache.keys()) == []


def test_stable_hash_alone() -> None:
    assert stable_hash({"a": [1, 2.5, None], "b": {"x", "y"}}) == stable_hash({"b": {"y", "x"}, "a": [1, 2.5, None]})
    with pytest.raises(InvalidValue, match=r"value holds value\[0\] \(an Opaque\)"):
        stable_hash([Opaque()])


def test_golden_hashes_never_change() -> None:
    """Keys name entries in shared caches for years: any change to the encoding must be a
    deliberate new MEMOIZE_SCHEME, never an accident."""
    value = {
        "ints": [0, -1, 2**64], "floats": (1.5, -0.0, float("nan")), "text": "장독 jar", "raw": b"\x00\xff",
        "set": frozenset({"a", "b"}), "none": None, "flag": True,
        "array": np.arange(6, dtype="<i4").reshape(2, 3), "path": pathlib.PurePosixPath("a/b"),
        "date": datetime.date(2024, 1, 31),
        "big_endian": np.arange(3, dtype=">f8"), "enum": re.RegexFlag.IGNORECASE | re.RegexFlag.MULTILINE,
        "london": datetime.datetime(2024, 1, 31, 12, tzinfo=zoneinfo.ZoneInfo("Europe/London")),
        "seoul": datetime.datetime(2024, 1, 31, 21, tzinfo=datetime.timezone(datetime.timedelta(hours=9), "KST")),
        "escaped path": pathlib.PurePosixPath("\udcc3\udca9"), "negative nan": -math.nan,
    }
    assert canonical.MEMOIZE_SCHEME == 2
    assert stable_hash(value) == GOLDEN_HASH  # the same on 3.10, 3.11 and 3.13
    assert stable_hash(1) == GOLDEN_ONE


GOLDEN_HASH = "4ff9d229703dea8cc02819c5e79351aa"
GOLDEN_ONE = "31bfc4cf9ae1e449b76fd3bc528d3a86"


# -- options ------------------------------------------------------------------------------------


def test_ignore_leaves_arguments_out_of_the_key(cache: Cache) -> None:
    counter = Counter()

    @memoize(cache, ignore=("verbose", "log"))
    def f(x: int, verbose: bool = False, log: Any = None) -> int:
        counter.calls += 1
        return x

    assert f.key(1, verbose=True, log=Opaque()) == f.key(1)  # an ignored value need not be hashable
    assert f(1, verbose=True) == 1
    assert f(1, verbose=False) == 1
    assert counter.calls == 1

    @memoize(cache, ignore="verbose")  # one name as a plain string
    def g(x: int, verbose: bool = False) -> int:
        return x

    assert g.key(1, True) == g.key(1, False)


def test_unknown_ignore_names_raise_at_decoration(cache: Cache) -> None:
    with pytest.raises(ConfigError, match="'verbos'") as raised:
        @memoize(cache, ignore=("verbos", "x"))
        def f(x: int, verbose: bool = False) -> int:
            return x
    assert "'x'" not in str(raised.value).split("which")[0]


def test_version_changes_every_key(cache: Cache) -> None:
    def f(x: int) -> int:
        return x

    one, two = memoize(cache, f, version="1"), memoize(cache, f, version="2")
    assert one.key(1) != two.key(1)
    assert memoize(cache, f).key(1) not in (one.key(1), two.key(1))
    assert one.key(1) == memoize(cache, f, version="1").key(1)
    assert one.key(1).split("/")[0] == two.key(1).split("/")[0]  # same folder: same function


def test_metadata_and_ttl_reach_the_entry(cache: Cache) -> None:
    @memoize(cache, version="3", ttl=3600)
    def f(x: int) -> int:
        return x

    f(1)
    info = cache.stat(f.key(1))
    assert info is not None and info.metadata == {"function": f"{f.__module__}.{f.__qualname__}", "version": "3"}
    assert info.expires_at is not None and info.expires_at == pytest.approx(info.created_at + 3600, abs=1)
    with pytest.raises(ConfigError, match="ttl"):
        memoize(cache, f.__wrapped__, ttl=-1)


def _write_module(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def _in_subprocess(code: str, path: list[Path], seed: str = "0") -> str:
    """Run ``code`` in a fresh interpreter with ``path`` and the jangdok under test importable;
    its last stdout line."""
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.pathsep.join(map(str, [*path, JANGDOK_SOURCE])))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_source_true_changes_the_key_when_the_source_changes(tmp_path: Path) -> None:
    body = """
        def work(x):
            return x + {n}
    """
    first = _write_module(tmp_path / "v1", "srcmod", body.format(n=1)).parent
    edited = _write_module(tmp_path / "v2", "srcmod", body.format(n=2)).parent
    same = _write_module(tmp_path / "v3", "srcmod", body.format(n=1)).parent
    code = f"""
        import srcmod
        from jangdok import Cache
        from jangdok.memoize import memoize
        cache = Cache({str(tmp_path / "cache")!r})
        print(memoize(cache, srcmod.work, source=True).key(1), memoize(cache, srcmod.work).key(1))
    """
    keys = {folder.name: _in_subprocess(code, [folder]).split() for folder in (first, edited, same)}
    assert keys["v1"][0] != keys["v2"][0]  # edited body: new entries
    assert keys["v1"][0] == keys["v3"][0]  # same body elsewhere: same entries
    assert keys["v1"][1] == keys["v2"][1]  # without source=True, edits are not seen
    assert keys["v1"][0].startswith("srcmod.work/")


def test_source_true_needs_the_source(cache: Cache) -> None:
    namespace: dict[str, Any] = {}
    exec("def made(x):\n    return x\n", namespace)
    with pytest.raises(ConfigError, match="source"):
        memoize(cache, namespace["made"], source=True)
    memoize(cache, namespace["made"])  # without source=True it is fine


def test_source_true_refuses_text_that_is_not_the_definition(cache: Cache,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect.getsource returns whatever linecache holds under the code's file name and line:
    for a name such as '<string>' that is text someone else registered (Python 3.13 registers
    the `python -c` program there), not this function's definition."""
    namespace: dict[str, Any] = {}
    exec(compile("def made(x):\n    return x\n", "<generated>", "exec"), namespace)
    monkeypatch.setitem(linecache.cache, "<generated>", (22, None, ["import sys; run(sys.argv)\n"], "<generated>"))
    with pytest.raises(ConfigError, match="not its definition"):
        memoize(cache, namespace["made"], source=True)
    # Another function of the same name, or with other parameters, is not this one's definition either.
    for text in ("def other(x):\n    return x\n", "def made(y):\n    return y\n", "class made:\n    pass\n"):
        monkeypatch.setitem(linecache.cache, "<generated>", (len(text), None, text.splitlines(True), "<generated>"))
        with pytest.raises(ConfigError, match="not its definition"):
            memoize(cache, namespace["made"], source=True)
    registered = "def made(x):\n    return x\n"  # as doctest and IPython register cells: accepted
    monkeypatch.setitem(linecache.cache, "<generated>", (len(registered), None, registered.splitlines(True),
                                                         "<generated>"))
    assert memoize(cache, namespace["made"], source=True).key(1) != memoize(cache, namespace["made"]).key(1)


def test_source_true_in_a_python_c_process(tmp_path: Path) -> None:
    """The case 3.13 broke: a function made by exec() inside a `python -c` program (as pytest-xdist
    runs its workers) was hashed as that program's first line instead of being refused."""
    code = f"""
        from jangdok import Cache
        from jangdok.errors import ConfigError
        from jangdok.memoize import memoize
        namespace = {{}}
        exec("def made(x):\\n    return x\\n", namespace)
        try:
            memoize(Cache({str(tmp_path / "cache")!r}), namespace["made"], source=True)
        except ConfigError:
            print("refused")
        else:
            print("accepted")
    """
    assert _in_subprocess(code, []) == "refused"


class Decorated:
    @staticmethod
    def _plain(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @_plain
    def method(self, a: int, /, b: int, *rest: int, c: int = 0, **more: int) -> str:
        return f"""{a}
{b}"""  # a string whose lines start at column 0, inside an indented method


def test_source_true_accepts_real_definitions(cache: Cache) -> None:
    # A method behind a decorator (getsource unwraps it), with every kind of parameter.
    assert memoize(cache, Decorated.method, source=True, ignore="self").key(Decorated(), 1, 2)
    assert memoize(cache, Decorated().method, source=True).key(1, 2)
    halve = lambda x: x / 2  # noqa: E731
    assert memoize(cache, halve, source=True, name="halve").key(4)


# -- the wrapper --------------------------------------------------------------------------------


def test_wrapper_keeps_the_function(cache: Cache) -> None:
    def extract(path: str, scale: float = 1.0) -> str:
        """Extract features."""
        return path

    wrapped = memoize(cache, extract)
    assert wrapped.__wrapped__ is extract
    assert wrapped.__name__ == "extract" and wrapped.__doc__ == "Extract features."
    assert wrapped.cache is cache
    assert inspect.signature(wrapped) == inspect.signature(extract)


def test_key_is_readable_and_valid(cache: Cache) -> None:
    def outer() -> Any:
        @memoize(cache)
        def inner(x: int) -> int:
            return x

        return inner

    module = test_key_is_readable_and_valid.__module__
    inner = outer()
    key = inner.key(1)
    assert re.fullmatch(rf"{re.escape(module)}\.test_key_is_readable_and_valid\.outer\.inner/{HASH_FILE}", key), key
    assert normalize_key(key) == key and "<" not in key and ">" not in key
    assert inner(1) == 1 and cache.exists(key)

    @memoize(cache)
    def top(x: int) -> int:
        return x

    assert top.key(1).startswith(f"{module}.test_key_is_readable_and_valid.top/")


def test_awkward_names_still_make_valid_keys(cache: Cache) -> None:
    def f(x: int) -> int:
        return x

    f.__module__ = "aux"  # a device name Windows reserves
    f.__qualname__ = "run"
    key = memoize(cache, f).key(1)
    assert key.startswith("_aux.run/") and normalize_key(key) == key

    g = lambda x: x  # noqa: E731
    with pytest.raises(ConfigError, match="lambda"):
        memoize(cache, g)  # every lambda is '<lambda>': their entries would mix
    assert memoize(cache, g, name="features/identity").key(1).startswith("features/identity/")

    def h(x: int) -> int:
        return x

    h.__qualname__ = "very_" * 80 + "long"
    long = memoize(cache, h)
    assert len(long.key(1).split("/")[0].encode()) <= 200
    assert long(7) == 7 and cache.exists(long.key(7))

    with pytest.raises(InvalidKey):
        memoize(cache, h, name="a:b")


def test_decorating_what_cannot_be_cached_fails_early(cache: Cache) -> None:
    async def fetch(x: int) -> int:
        return x

    def numbers(n: int) -> Any:
        yield from range(n)

    with pytest.raises(ConfigError, match="coroutine or generator"):
        memoize(cache, fetch)
    with pytest.raises(ConfigError, match="coroutine or generator"):
        memoize(cache, numbers)
    with pytest.raises(TypeError, match="version="):
        memoize(cache, "2")  # type: ignore[call-overload]


def test_methods_ignore_self(cache: Cache) -> None:
    class Model:
        def __init__(self) -> None:
            self.calls = 0

        @memoize(cache, ignore=("self",))
        def predict(self, x: int) -> int:
            self.calls += 1
            return 2 * x

        @memoize(cache)
        def score(self, x: int) -> int:
            return x

    model = Model()
    assert model.predict(3) == 6 and model.predict(3) == 6
    assert model.calls == 1
    with pytest.raises(InvalidValue, match=r"ignore=\('self',\)"):
        model.score(1)


def test_closure_values_are_arguments_to_pass(cache: Cache) -> None:
    """The key is name and arguments only: what a nested function reads from its enclosing
    function (often mutable: a counter, a client) does not split its entries."""
    def make(scale: int) -> Any:
        @memoize(cache)
        def scaled(x: int, scale: int = scale) -> int:  # the documented way: make it an argument
            return x * scale

        return scaled

    assert make(2)(5) == 10
    assert make(3)(5) == 15
    assert make(2).key(5) != make(3).key(5)

    @memoize(cache)
    def fib(n: int) -> int:  # refers to itself through its closure
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(20) == 6765
    assert fib.key(20).split("/")[0].endswith("test_closure_values_are_arguments_to_pass.fib")


# -- failures -----------------------------------------------------------------------------------


def _unwritable_cache(tmp_path: Path) -> Cache:
    """A cache whose folder cannot take new entries, for real (no stand-ins)."""
    if os.geteuid() == 0:  # root writes through any mode: put a file where a folder must go
        (tmp_path / "not-a-folder").write_text("a file")
        return Cache(str(tmp_path / "not-a-folder" / "cache"))
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    return Cache(str(folder))


def _warned_about(caplog: pytest.LogCaptureFixture, key: str) -> bool:
    """Whether a WARNING on the "jangdok" logger named the entry (whichever layer logged it)."""
    return any(record.name == "jangdok" and record.levelno == logging.WARNING and key in record.getMessage()
               for record in caplog.records)


def test_a_failed_save_is_a_warning_and_the_value_is_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              request: pytest.FixtureRequest) -> None:
    cache = _unwritable_cache(tmp_path)
    request.addfinalizer(lambda: (tmp_path / "readonly").exists() and (tmp_path / "readonly").chmod(0o700))
    with pytest.raises(JangdokError):  # the experiment: this cache really cannot save
        cache.put("probe/x.pkl", 1)
    counter = Counter()

    @memoize(cache)
    def f(x: int) -> dict[str, int]:
        counter.calls += 1
        return {"x": x}

    for calls in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jangdok"):
            assert f(1) == {"x": 1}
        assert counter.calls == calls  # nothing was stored, so each call computes
        assert _warned_about(caplog, f.key(1))


def test_a_folder_in_the_way_of_the_entry_is_a_failed_save(cache: Cache, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    @memoize(cache)
    def f(x: int) -> int:
        return x + 1

    (tmp_path / "cache" / f.key(1)).mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert f(1) == 2
    assert _warned_about(caplog, f.key(1))


def test_an_unpicklable_result_is_returned_with_a_warning(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    lock = threading.Lock()

    @memoize(cache)
    def f(x: int) -> Any:
        return lock

    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert f(1) is lock
    assert _warned_about(caplog, f.key(1))
    assert not cache.exists(f.key(1))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_store_still_runs_the_function(caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache("s3://jangdok-test/memoize/", endpoint_url=f"http://127.0.0.1:{_closed_port()}",
                  region="us-east-1", access_key_id="test", secret_access_key="test-secret", fallback=False,
                  connect_timeout=0.5, read_timeout=0.5, max_attempts=1, total_timeout=2)
    counter = Counter()

    @memoize(cache)
    def f(x: int) -> int:
        counter.calls += 1
        return x * 10

    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert f(2) == 20
    assert counter.calls == 1
    assert any("computing without it" in record.getMessage() for record in caplog.records)


def test_errors_of_the_function_propagate_and_nothing_is_stored(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    counter = Counter()
    own = AccessDenied("the function's own, not the cache's")

    @memoize(cache)
    def f(x: int) -> int:
        counter.calls += 1
        if x == 0:
            raise ValueError("x must not be 0")
        raise own

    with caplog.at_level(logging.WARNING, logger="jangdok"):
        with pytest.raises(ValueError, match="must not be 0"):
            f(0)
        with pytest.raises(AccessDenied) as raised:
            f(1)  # a JangdokError from the function is not mistaken for a cache failure
    assert raised.value is own
    with pytest.raises(ValueError):
        f(0)
    assert counter.calls == 3
    assert list(cache.keys()) == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


# -- across processes ---------------------------------------------------------------------------


def test_keys_are_the_same_in_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mods = tmp_path / "mods"
    _write_module(mods, "stablemod", """
        import dataclasses
        from pathlib import PurePosixPath

        @dataclasses.dataclass
        class Options:
            names: frozenset
            weights: dict

        def features(labels, options, tags, text, path, opts, table):
            return len(labels)

        def arguments():
            import numpy as np
            return dict(
                labels=["b", "a", "장독"],
                options={"zeta": 1, "alpha": {"nested": (1, 2.5, None)}, "mid": b"raw"},
                tags={"x", "y", "z", "w", "kimchi", "김치"},
                text="jar",
                path=PurePosixPath("data/x.csv"),
                opts=Options(frozenset({"p", "q", "r"}), {"w2": 0.5, "w1": -0.0}),
                table=np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
            )
    """)
    monkeypatch.syspath_prepend(str(mods))
    import stablemod  # type: ignore[import-not-found]

    try:
        cache = Cache(str(tmp_path / "cache"))
        here = memoize(cache, stablemod.features).key(**stablemod.arguments())
        code = f"""
            import stablemod
            from jangdok import Cache
            from jangdok.memoize import memoize
            print(memoize(Cache({str(tmp_path / "cache")!r}), stablemod.features).key(**stablemod.arguments()))
        """
        seeds = ["0", "1", "4242", "random"]
        there = {seed: _in_subprocess(code, [mods], seed) for seed in seeds}
    finally:
        sys.modules.pop("stablemod", None)
    assert set(there.values()) == {here}, json.dumps(there)
    assert re.fullmatch(rf"stablemod\.features/{HASH_FILE}", here)


# -- through Cache.memoize, once it exists --------------------------------------------------------


@pytest.fixture
def wired() -> None:
    if not hasattr(Cache, "memoize"):
        pytest.skip("Cache.memoize is not wired in yet")


@pytest.mark.usefixtures("wired")
def test_cache_memoize_bare(cache: Cache) -> None:
    counter = Counter()

    @cache.memoize  # type: ignore[attr-defined, misc]
    def f(x: int, y: int = 2) -> int:
        counter.calls += 1
        return x + y

    assert f(1) == 3 and f(1, y=2) == 3
    assert counter.calls == 1
    assert f.key(1) == memoize(cache, f.__wrapped__).key(1)
    assert f.cache is cache


@pytest.mark.usefixtures("wired")
def test_cache_memoize_with_options(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    counter = Counter()

    @cache.memoize(version="2", source=True, ignore=("verbose",), ttl=None)  # type: ignore[attr-defined, misc]
    def f(x: int, verbose: bool = False) -> int:
        counter.calls += 1
        return -x

    assert f(4) == -4 and f(4, verbose=True) == -4
    assert counter.calls == 1
    assert f.key(4) != memoize(cache, f.__wrapped__).key(4)
    assert f.key(4) == memoize(cache, f.__wrapped__, version="2", source=True, ignore=("verbose",)).key(4)
