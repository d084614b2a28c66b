"""Property-based tests of memoize keys (Hypothesis).

Two promises, checked on generated values and on a catalogue of near misses:

- equal inputs give equal keys, in this process and in fresh ones with other PYTHONHASHSEEDs
  (string hashing, and so set and dict iteration, differ between them);
- inputs give different keys exactly where a function given them could tell them apart.
  What a function can tell apart is written down independently of the encoder, in
  :func:`observe` (an oracle: exact types, floats by their bits, dicts and sets as multisets,
  arrays by dtype, shape and elements, datetimes with their zone), and the keys must agree
  with it both ways.

The run is bounded for CI: derandomized (the same examples on every run, no example database)
and a fixed number of examples per test, well under a minute on two busy cores. For a deeper
local run, set JANGDOK_PROPERTY_EXAMPLES (default 150).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zoneinfo
from collections import Counter, OrderedDict, namedtuple
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jangdok
from jangdok import Cache, stable_hash
from jangdok.memoize import memoize

BOUNDED = settings(
    max_examples=int(os.environ.get("JANGDOK_PROPERTY_EXAMPLES", "150")),
    derandomize=True,
    database=None,
    deadline=None,  # two busy cores: time per example is not the property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
HASH_SEEDS = ("0", "1", "2718")  # 0 turns string hash randomisation off
JANGDOK_SOURCE = Path(jangdok.__file__ or "").parent.parent


# -- types the values are made of (module level: the subprocesses unpickle them by name) ------


class Perm(enum.Flag):
    READ = 1
    WRITE = 2
    EXEC = 4


class Mode(enum.IntFlag):
    R = 1
    W = 2


class Size(enum.IntEnum):
    S = 1
    M = 2


class Color(enum.Enum):
    RED = "red"
    GREEN = ("g", 2)
    CRIMSON = "red"  # an alias: the same member as RED


class Hue(enum.Enum):  # Color's values in another class
    RED = "red"
    GREEN = ("g", 2)


@dataclasses.dataclass(frozen=True)
class Pair:
    left: Any
    right: Any


@dataclasses.dataclass(frozen=True)
class Twin:  # Pair's fields in another class
    left: Any
    right: Any


Point = namedtuple("Point", "left right")


def keyed(value: Any) -> Any:
    """A function whose memoize key the subprocesses compute too."""
    return value


# -- the oracle ---------------------------------------------------------------------------------


def _multiset(items: Any) -> frozenset[tuple[Any, int]]:
    return frozenset(Counter(items).items())


def _zone(moment: datetime.datetime | datetime.time) -> Any:
    zone = moment.tzinfo
    if zone is None:
        return None
    if type(zone) is zoneinfo.ZoneInfo:
        name: Any = zone.key
    else:
        name = (zone.utcoffset(None), zone.tzname(None))
    return type(zone), name, moment.utcoffset(), moment.dst(), moment.tzname()


def _elements(array: np.ndarray) -> Any:
    if array.dtype == object:
        return tuple(observe(item) for item in array.flat)
    if array.dtype.names is not None:  # a record is its fields, not the bytes between them
        return tuple((name, observe(array[name])) for name in array.dtype.names)
    return array.astype(array.dtype.newbyteorder("<"), order="C").tobytes()


def observe(value: Any) -> Any:
    """What a function given ``value`` can tell about it, short of object identity and memory
    layout: two values observe alike exactly when no such function could tell them apart."""
    kind = type(value)
    if isinstance(value, enum.Enum):
        return kind, value  # members are singletons: equal is the same member
    if kind in (type(None), bool, int, str, bytes, datetime.date, datetime.timedelta):
        return kind, value
    if kind is bytearray:
        return kind, bytes(value)
    if kind is float:
        return kind, struct.pack(">d", value)
    if kind is complex:
        return kind, observe(value.real), observe(value.imag)
    if kind in (list, tuple, Point):
        return kind, tuple(observe(item) for item in value)
    if kind is dict:
        return kind, _multiset((observe(key), observe(item)) for key, item in value.items())
    if kind is OrderedDict:
        return kind, tuple((observe(key), observe(item)) for key, item in value.items())
    if kind in (set, frozenset):
        return kind, _multiset(observe(item) for item in value)
    if kind in (datetime.datetime, datetime.time):
        return kind, value.replace(tzinfo=None), value.fold, _zone(value)
    if kind in (PurePosixPath, PureWindowsPath):
        return kind, str(value)
    if dataclasses.is_dataclass(value):
        return kind, tuple((field.name, observe(getattr(value, field.name))) for field in dataclasses.fields(value))
    # Byte order is how numpy stores values, not which (its pickle does not keep it).
    if isinstance(value, np.generic):
        return "scalar", value.dtype.newbyteorder("<"), _elements(np.asarray(value))
    if kind is np.ndarray:
        return "array", value.dtype.newbyteorder("<"), value.shape, _elements(value)
    raise AssertionError(f"no observation for {kind}")


def key_of(value: Any) -> str:
    return stable_hash(value)


# -- strategies ---------------------------------------------------------------------------------

ZONES: list[datetime.tzinfo | None] = [
    None, datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=1)),
    datetime.timezone(datetime.timedelta(hours=1), "CET"), datetime.timezone(-datetime.timedelta(hours=5, minutes=30)),
    zoneinfo.ZoneInfo("UTC"), zoneinfo.ZoneInfo("Europe/London"), zoneinfo.ZoneInfo("Europe/Lisbon"),
    zoneinfo.ZoneInfo("America/New_York"), zoneinfo.ZoneInfo("Asia/Seoul"),
]

floats = st.one_of(
    st.floats(),
    st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack(">d", bits.to_bytes(8, "big"))[0]),  # any NaN payload
    st.sampled_from([0.0, -0.0, math.nan, -math.nan, math.inf]),
)
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)  # lone surrogates too
moments = st.builds(lambda moment, fold: moment.replace(fold=fold),
                    st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(2100, 1, 1),
                                 timezones=st.sampled_from(ZONES)), st.integers(0, 1))
times = st.builds(lambda moment, fold: moment.replace(fold=fold), st.times(timezones=st.sampled_from(ZONES)),
                  st.integers(0, 1))
members = st.one_of(st.sampled_from([*Perm, *Mode, *Size, *Color, *Hue]), st.integers(0, 7).map(Perm),
                    st.integers(0, 63).map(Mode))
hashable_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), floats, texts, st.binary(max_size=6),
    st.complex_numbers(), members, moments, times, st.dates(), st.timedeltas(),
    texts.map(PurePosixPath), texts.map(PureWindowsPath),
)
dtypes = st.one_of(
    hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3),
    hnp.array_dtypes(hnp.scalar_dtypes(), max_size=3, allow_subarrays=True),
)
arrays = dtypes.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                         max_side=3)))
numpy_scalars = dtypes.flatmap(lambda dtype: hnp.arrays(dtype, ())).map(lambda array: array[()])
leaves = st.one_of(hashable_leaves, st.binary(max_size=6).map(bytearray), arrays, numpy_scalars)


def _object_array(items: list[Any]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    small = st.lists(children, max_size=4)
    mapping = st.dictionaries(hashable_leaves, children, max_size=4)
    return st.one_of(
        small, small.map(tuple), mapping, mapping.map(OrderedDict),
        st.sets(hashable_leaves, max_size=4), st.frozensets(hashable_leaves, max_size=4),
        st.builds(Pair, children, children), st.builds(Twin, children, children), st.builds(Point, children, children),
        small.map(_object_array),
    )


values = st.recursive(leaves, _containers, max_leaves=10)


# -- values no function could tell apart from a given one ---------------------------------------


def _relaid(array: np.ndarray) -> np.ndarray:
    """The same array in another memory layout: a strided view into a larger buffer, reversed."""
    if array.ndim == 0:
        return array.copy()
    holder = np.zeros((*array.shape[:-1], array.shape[-1] * 2), dtype=array.dtype)
    view = holder[..., ::-2]
    view[...] = array[..., ::-1]
    return view[..., ::-1]


def rebuilt(value: Any) -> Any:
    """``value`` built again: dicts and sets in reverse order, arrays in another layout."""
    kind = type(value)
    if kind is dict:
        return {key: rebuilt(item) for key, item in reversed(list(value.items()))}
    if kind is OrderedDict:
        return OrderedDict((key, rebuilt(item)) for key, item in value.items())
    if kind in (set, frozenset):
        return kind(reversed(list(value)))
    if kind in (list, tuple):
        return kind(rebuilt(item) for item in value)
    if kind in (Pair, Twin, Point):
        return kind(rebuilt(value.left), rebuilt(value.right))
    if kind is np.ndarray:
        return _object_array([rebuilt(item) for item in value]) if value.dtype == object else _relaid(value)
    return pickle.loads(pickle.dumps(value))


@BOUNDED
@given(values)
def test_rebuilt_values_have_the_same_key(value: Any) -> None:
    again = rebuilt(value)
    assert observe(again) == observe(value)  # the oracle agrees that nothing observable changed
    assert key_of(again) == key_of(value)


# -- near misses: keys differ exactly where the oracle does --------------------------------------


def _swapped(array: np.ndarray) -> np.ndarray:
    return array.astype(array.dtype.newbyteorder())


def neighbours(value: Any) -> list[Any]:
    """Values easily confused with ``value``: some a function can tell apart from it, some not."""
    kind: Any = type(value)
    found: list[Any] = []
    if kind is bool:
        found += [int(value), float(value), not value, np.bool_(value)]
    elif kind is int:
        found += [value + 1, -value, bool(value), np.int64(value) if abs(value) < 2**63 else value - 1]
        found += [float(value)] if abs(value) < 2**53 else []
        found += [Size(value), Mode(value)] if value in (1, 2) else []
    elif kind is float:
        bits = struct.unpack(">Q", struct.pack(">d", value))[0]
        found += [-value, struct.unpack(">d", struct.pack(">Q", bits ^ 1))[0], np.float64(value), complex(value)]
        found += [int(value)] if math.isfinite(value) and value == int(value) else []
    elif kind is complex:
        found += [complex(value.real, -value.imag), value.real, np.complex128(value)]
    elif kind is str:
        found += [value.encode("utf-8", "surrogatepass"), value + "\x00", PurePosixPath(value), np.str_(value)]
    elif kind in (bytes, bytearray):
        found += [bytes(value), bytearray(value), value.decode("latin-1"), value + b"\x00"]
    elif isinstance(value, enum.Flag):
        found += [value.value, kind(0), *(value ^ member for member in kind)]  # composites: other bits
    elif isinstance(value, enum.Enum):
        found += [value.value, *kind] + [member for member in Hue if member.value == value.value]
    elif kind is datetime.datetime:
        found += [value.replace(fold=1 - value.fold), value.replace(tzinfo=None), value.date()]
        found += [value.replace(tzinfo=zone) for zone in ZONES[:6]]
        if value.tzinfo is not None and 1900 < value.year < 2100:
            found += [value.astimezone(zone) for zone in ZONES[1:]]  # the same instant elsewhere
    elif kind is datetime.time:
        found += [value.replace(fold=1 - value.fold), *(value.replace(tzinfo=zone) for zone in ZONES[:7])]
    elif kind in (PurePosixPath, PureWindowsPath):
        found += [str(value), PureWindowsPath(value) if kind is PurePosixPath else PurePosixPath(value)]
    elif kind is np.ndarray and value.dtype != object:
        found += [_swapped(value), value.view(value.dtype.newbyteorder()), value.reshape((1, *value.shape)),
                  _relaid(value), value.copy(order="F")]
        found += [value[()]] if value.ndim == 0 else []
        found += [value.reshape(())] if value.size == 1 else []
    elif isinstance(value, np.generic):
        found += [np.asarray(value), np.asarray(value).reshape(1), value.item()]
    elif kind in (list, tuple):
        found += [tuple(value) if kind is list else list(value), _object_array(list(value))]
        found += [Point(*value), Pair(*value)] if len(value) == 2 else []
    elif kind is dict:
        found += [OrderedDict(value), OrderedDict(reversed(list(value.items()))), set(value)]
    elif kind is OrderedDict:
        found += [dict(value), OrderedDict(reversed(list(value.items())))]
    elif kind in (set, frozenset):
        found += [frozenset(value) if kind is set else set(value), list(value)]
    elif kind in (Pair, Twin, Point):
        found += [Twin(value.left, value.right), Pair(value.right, value.left), (value.left, value.right)]
    return [*found, (value,), rebuilt(value)]


def _parts(value: Any) -> list[Any]:
    """Where in a container a near miss can be made: its indices, keys or fields."""
    kind = type(value)
    if kind in (list, tuple, Point):
        return list(range(len(value)))
    if kind in (dict, OrderedDict):
        return list(value)
    return ["left", "right"] if kind in (Pair, Twin) else []


def _part(value: Any, where: Any) -> Any:
    return getattr(value, where) if type(value) in (Pair, Twin) else value[where]


def _replaced(value: Any, where: Any, new: Any) -> Any:
    kind = type(value)
    if kind in (Pair, Twin):
        return dataclasses.replace(value, **{where: new})
    if kind in (dict, OrderedDict):
        return kind({**value, where: new})
    items = [*value[:where], new, *value[where + 1:]]
    return Point(*items) if kind is Point else kind(items)


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[Any, Any]:
    """A value, and the value with one part replaced by one of that part's neighbours."""
    value = draw(st.one_of(leaves, values))
    route, part = [], value
    while _parts(part) and draw(st.integers(0, 3)) < 3:  # mostly down to a leaf
        where = draw(st.sampled_from(_parts(part)))
        route.append((part, where))
        part = _part(part, where)
    changed = draw(st.sampled_from(neighbours(part)))
    for container, where in reversed(route):
        changed = _replaced(container, where, changed)
    return value, changed


@BOUNDED
@given(near_misses())
def test_near_misses_have_different_keys_exactly_where_a_function_could_tell(pair: tuple[Any, Any]) -> None:
    first, second = pair
    assert (key_of(first) == key_of(second)) == (observe(first) == observe(second)), (first, second)


@BOUNDED
@given(values, values)
def test_any_two_values_share_a_key_only_if_indistinguishable(first: Any, second: Any) -> None:
    assert (key_of(first) == key_of(second)) == (observe(first) == observe(second))


# -- the catalogue -------------------------------------------------------------------------------

_london = zoneinfo.ZoneInfo("Europe/London")
_noon_utc = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone.utc)
_grid = np.arange(24, dtype="<f8").reshape(4, 6)
_records = np.zeros(3, dtype=[("x", "<i4"), ("y", "<i4"), ("z", "<f8")])
_other_records = _records.copy()
_other_records["y"] = 9


def _nan(bits: int) -> float:
    return float(struct.unpack(">d", struct.pack(">Q", bits))[0])


# Each group holds values no function could tell apart (one key); values of different groups
# can be told apart (different keys). Named by what they test.
CATALOGUE: dict[str, list[Any]] = {
    "int 1": [1, int("1")], "float 1.0": [1.0], "True": [True], "numpy int64 1": [np.int64(1)],
    "IntEnum S (value 1)": [Size.S, Size(1)], "IntFlag R (value 1)": [Mode.R, Mode(1)], "complex 1": [complex(1, 0)],
    "0.0": [0.0], "-0.0": [-0.0, -1 * 0.0],
    "quiet NaN": [math.nan, float("nan"), _nan(0x7FF8000000000000)], "negative NaN": [_nan(0xFFF8000000000000)],
    "NaN with a payload": [_nan(0x7FF8000000000001)], "signalling NaN": [_nan(0x7FF0000000000001)],
    "READ|WRITE": [Perm.READ | Perm.WRITE, Perm(3)], "READ|EXEC": [Perm.READ | Perm.EXEC], "Perm(0)": [Perm(0)],
    "Mode(0)": [Mode(0)], "Mode(8)": [Mode(8)], "Mode(16)": [Mode(16)],
    "Color.RED": [Color.RED, Color.CRIMSON, Color("red")], "Hue.RED": [Hue.RED], "'red'": ["red"],
    "noon UTC": [_noon_utc, _noon_utc.replace(tzinfo=datetime.timezone(datetime.timedelta(0)))],
    "noon London": [_noon_utc.replace(tzinfo=_london),
                    _noon_utc.replace(tzinfo=zoneinfo.ZoneInfo.no_cache("Europe/London"))],
    "noon Lisbon (also GMT)": [_noon_utc.replace(tzinfo=zoneinfo.ZoneInfo("Europe/Lisbon"))],
    "noon zoneinfo UTC": [_noon_utc.replace(tzinfo=zoneinfo.ZoneInfo("UTC"))],
    "noon naive": [_noon_utc.replace(tzinfo=None)],
    "13:00 +01:00": [_noon_utc.astimezone(datetime.timezone(datetime.timedelta(hours=1)))],
    "13:00 +01:00 'CET'": [_noon_utc.astimezone(datetime.timezone(datetime.timedelta(hours=1), "CET"))],
    "01:30 London, first": [datetime.datetime(2024, 10, 27, 1, 30, tzinfo=_london)],
    "01:30 London, second (fold)": [datetime.datetime(2024, 10, 27, 1, 30, fold=1, tzinfo=_london)],
    "01:30 naive": [datetime.datetime(2024, 10, 27, 1, 30)],
    "01:30 naive, fold 1": [datetime.datetime(2024, 10, 27, 1, 30, fold=1)],
    "dict a, b": [{"a": 1, "b": 2}, {"b": 2, "a": 1}], "dict swapped values": [{"a": 2, "b": 1}],
    "OrderedDict a, b": [OrderedDict(a=1, b=2)], "OrderedDict b, a": [OrderedDict(b=2, a=1)],
    "set": [{"x", "y", "z"}, {"z", "y", "x"}], "frozenset": [frozenset({"x", "y", "z"})],
    "[[1], 2]": [[[1], 2]], "[1, [2]]": [[1, [2]]], "[(1,), 2]": [[(1,), 2]], "((1, 2),)": [((1, 2),)],
    "('ab', 'c')": [("ab", "c")], "('a', 'bc')": [("a", "bc")], "('as', 'b')": [("as", "b")],
    "('a', 'sb')": [("a", "sb")],  # alike if lengths were not written: s,a,s,s,b
    "Pair": [Pair(1, 2)], "Twin": [Twin(1, 2)],
    "Point": [Point(1, 2), Point(left=1, right=2)], "(1, 2)": [(1, 2)],
    "grid transposed": [_grid.T, np.ascontiguousarray(_grid.T)],
    "strided slice": [_grid[::2, 1::3], _grid[::2, 1::3].copy()],
    "grid": [_grid, _grid.copy(order="F"), np.ascontiguousarray(_grid.T).T, _grid[::-1][::-1],
             _grid.astype(">f8"), _grid.astype(">f8").copy(order="F")],  # byte order: how, not what
    "grid as float32": [_grid.astype("<f4")],
    "grid bytes read big-endian": [_grid.view(">f8")],
    "0-d array 7": [np.array(7)], "1-element array 7": [np.array([7])], "1x1 array 7": [np.array([[7]])],
    "numpy scalar 7": [np.int64(7)], "7": [7],
    "records x, z": [_records[["x", "z"]], _other_records[["x", "z"]], _records[["x", "z"]].copy()],
    "records": [_records], "records y=9": [_other_records],
    "path a/b": [PurePosixPath("a/b"), PurePosixPath("a") / "b", PurePosixPath("a//b")],
    "Windows path a/b": [PureWindowsPath("a/b")], "'a/b'": ["a/b"],
    "path é": [PurePosixPath("é")], "path of escaped bytes C3 A9": [PurePosixPath("\udcc3\udca9")],
    "path with a lone surrogate": [PurePosixPath("\ud800")],
    "'é'": ["é"], "b'\\xc3\\xa9'": ["é".encode()], "bytearray C3 A9": [bytearray("é".encode())],
}


def test_the_catalogue() -> None:
    keys = {name: {key_of(value) for value in group} for name, group in CATALOGUE.items()}
    split = {name: group_keys for name, group_keys in keys.items() if len(group_keys) > 1}
    assert not split, f"values no function could tell apart have different keys: {sorted(split)}"
    owners: dict[str, list[str]] = {}
    for name, group_keys in keys.items():
        owners.setdefault(next(iter(group_keys)), []).append(name)
    shared = [names for names in owners.values() if len(names) > 1]
    assert not shared, f"values a function could tell apart share a key: {shared}"


def test_the_oracle_agrees_with_the_catalogue() -> None:
    """The oracle is a second statement of the same intent; the catalogue checks it too."""
    observed = {name: [observe(value) for value in group] for name, group in CATALOGUE.items()}
    for name, group in observed.items():
        assert all(item == group[0] for item in group), name
    firsts = [group[0] for group in observed.values()]
    assert all(firsts.count(item) == 1 for item in firsts)


# -- across processes and hash seeds ---------------------------------------------------------------


def _keys_in_subprocess(samples: Path, seed: str, cache: Path) -> list[list[str]]:
    code = f"""
        import json, pickle, sys
        import test_memoize_properties as properties
        from jangdok import Cache
        from jangdok.memoize import memoize
        keyed = memoize(Cache({str(cache)!r}), properties.keyed)
        with open({str(samples)!r}, "rb") as file:
            values = pickle.load(file)
        json.dump([[properties.key_of(value), keyed.key(value)] for value in values], sys.stdout)
    """
    env = dict(os.environ, PYTHONHASHSEED=seed,
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(JANGDOK_SOURCE)]))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_equal_values_have_equal_keys_in_every_process_and_hash_seed(tmp_path: Path) -> None:
    assert keyed.__module__ == "test_memoize_properties"  # the name the subprocesses import it by
    collected: list[Any] = [value for group in CATALOGUE.values() for value in group]

    @BOUNDED
    @given(values)
    def collect(value: Any) -> None:
        collected.append(value)

    collect()
    samples = tmp_path / "values.pickle"
    samples.write_bytes(pickle.dumps(collected))
    keyed_here = memoize(Cache(str(tmp_path / "cache")), keyed)
    here = [[key_of(value), keyed_here.key(value)] for value in collected]
    for seed in HASH_SEEDS:
        there = _keys_in_subprocess(samples, seed, tmp_path / "cache")
        differing = [value for value, mine, theirs in zip(collected, here, there, strict=True) if mine != theirs]
        assert not differing, f"PYTHONHASHSEED={seed}: {differing[:3]!r}"
