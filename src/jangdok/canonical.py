"""The canonical encoding that memoize keys are hashed from (:func:`stable_hash`).

The hash must name the same call on every machine and in every process, for ever, or a shared
cache never hits. Python's ``hash()`` is salted per process and ``pickle`` bytes vary with
protocol, insertion order and object identity, so arguments are instead written in a
canonical, type-tagged encoding (:func:`stable_hash`) and hashed with xxh3-128. Only types whose
value fully determines that encoding are accepted; anything else is refused with an error
naming the argument, because a key that misses part of a value returns a stale result, which
is worse than no cache at all.

What a function can tell apart gets different keys; what it cannot, the same key:

- ``1``, ``1.0``, ``True`` and ``np.int64(1)`` differ (types); so do ``0.0`` and ``-0.0``, and
  NaNs with different bits (a float is keyed by its exact bits).
- Dicts and sets are keyed independently of their order (which varies between equal values,
  and between processes); an ``OrderedDict``'s order is part of its value (its ``==`` says so).
- An enum member is keyed by its class and its value (the value encoded like any argument, so
  an enum whose values cannot be is refused): composite ``Flag`` values have no name of their
  own.
- A ``datetime`` or ``time`` is keyed by its wall-clock fields, ``fold`` and time zone: the
  same instant in UTC and in Europe/London differs (``+ timedelta(days=182)`` gives other wall
  times). A zone is named by its ``zoneinfo.ZoneInfo`` key or, for ``datetime.timezone``, by
  its offset and name; the offset, DST and abbreviation this machine's time zone database gives
  the moment go in too. Other ``tzinfo`` classes (``ZoneInfo.from_file``, pytz, dateutil) are
  refused: nothing names their rules stably.
- A numpy array is keyed by its dtype, shape and elements in C order, not by how numpy
  stores them: a strided view and its copy, C and Fortran order, big- and little-endian
  share a key (numpy's pickle does not keep byte order either). Bytes between the fields of a
  structured dtype are not part of its value (copies leave them uninitialised) and are left out.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import pathlib
import struct
import sys
import zoneinfo
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import xxhash

from .errors import InvalidValue

__all__ = ["stable_hash", "KeyHasher", "Unhashable", "SUPPORTED", "MEMOIZE_SCHEME", "module_name"]

MEMOIZE_SCHEME = 2
"""Version of the key scheme (the encoding below). Bumping it changes every memoized key, so
it changes only when an encoding would otherwise be misread, never for cosmetic reasons.

2: enum members by class and value (composite Flag values collided), time zones in the key
of datetimes and times, floats by their exact bits (NaN payloads), paths that hold
surrogates, structured arrays without the bytes between fields."""

# Values larger than this are hashed piecewise rather than copied whole into C order.
_COPY_LIMIT = 1 << 26

_INT = struct.Struct(">q")


class Unhashable(Exception):
    """A part of a value that has no stable encoding, and where it sits in the value."""

    def __init__(self, path: str, value: object, reason: str | None = None) -> None:
        super().__init__(path)
        self.path = path
        self.value = value
        self.reason = reason

    def where(self, top: str) -> str:
        """``(a Foo)`` for the value itself, ``holds x['k'][2] (a Foo), which`` for a part of it."""
        if self.path == top:
            return f"({_a(self.value)})"
        return f"holds {self.path} ({_a(self.value)}), which"

    def because(self) -> str:
        return f" ({self.reason})" if self.reason else ""


# The names a program's main script runs under: python script.py, python -m, notebooks and
# runpy.run_path(..., run_name="__main__") say __main__; a spawn or forkserver worker imports
# the script again as __mp_main__ (multiprocessing); runpy.run_path's own default is <run_path>.
_MAIN_NAMES = frozenset({"__main__", "__mp_main__", "<run_path>"})


def module_name(name: str | None) -> str:
    """A module's name as keys spell it: the main script's is ``__main__``, however it was
    started and in whichever process it runs, so a function or class defined there keys alike
    in the program, its fork, forkserver and spawn workers, and a Dask worker that received it
    by value. (Not ``__spec__.name`` under ``python -m``: keys made so far would all change.)"""
    return "__main__" if not name or name in _MAIN_NAMES else name


def _class_name(cls: type) -> str:
    return f"{module_name(cls.__module__)}.{cls.__qualname__}"


def _a(value: object) -> str:
    """``a Foo`` / ``an int``: how messages name a value's type."""
    name = type(value).__qualname__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class _Encoder:
    """Writes a value's canonical encoding into a hasher.

    Every item starts with a one-byte type tag, and every variable-length part carries its
    length, so the encoding is unambiguous: ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"``
    differ, as do ``[1]`` and ``(1,)``, and ``("ab", "c")`` differs from ``("a", "bc")``.
    Unordered collections (dicts, sets) contribute the sorted digests of their items, so their
    encoding is independent of insertion and iteration order, which vary between processes
    (string hashing is salted) even when the values are equal.
    """

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self._active: set[int] = set()  # ids of the containers being encoded: a cycle check

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self.hasher.update(data)

    def _tagged(self, tag: bytes, payload: bytes) -> None:
        self._write(tag + _INT.pack(len(payload)) + payload)

    def _digest(self, value: object, path: str) -> bytes:
        """The digest of one item encoded on its own, for order-independent collections."""
        sub = _Encoder(xxhash.xxh3_128())
        sub._active = self._active
        sub.encode(value, path)
        return sub.hasher.digest()

    def encode(self, value: object, path: str) -> None:
        if value is None:
            self._write(b"N")
        elif type(value) is bool:
            self._write(b"T" if value else b"F")
        elif type(value) is int:
            size = (value.bit_length() + 8) // 8  # one sign bit to spare
            self._tagged(b"i", value.to_bytes(size, "big", signed=True))
        elif type(value) is float:
            # The exact bits: -0.0 keeps its sign, and a NaN its sign and payload, which
            # math.copysign and struct show to the function.
            self._tagged(b"f", struct.pack(">d", value))
        elif type(value) is complex:
            self._write(b"c")
            self.encode(value.real, path)
            self.encode(value.imag, path)
        elif type(value) is str:
            self._tagged(b"s", value.encode("utf-8", "surrogatepass"))
        elif type(value) is bytes:
            self._tagged(b"b", value)
        elif type(value) is bytearray:
            self._tagged(b"B", bytes(value))
        elif type(value) is tuple or type(value) is list:
            self._sequence(b"t" if type(value) is tuple else b"l", value, path)
        elif type(value) is dict:
            self._mapping(b"d", value, path)
        elif type(value) is set or type(value) is frozenset:
            self._unordered(b"e" if type(value) is set else b"E", value, path)
        elif isinstance(value, enum.Enum):  # before int and str: IntEnum, StrEnum
            # By value, not by name: a composite Flag (READ|WRITE) has no name on 3.10 and
            # Flag(0) none on any version, so names collide; the value tells members apart.
            self._tagged(b"n", _class_name(type(value)).encode())
            self.encode(value.value, f"{path}.value")
        elif type(value) is OrderedDict:  # equality is order-sensitive, so is the key
            self._container(value, path, lambda: self._ordered_mapping(value, path))
        elif isinstance(value, tuple) and hasattr(type(value), "_fields"):  # a namedtuple
            self._tagged(b"u", _class_name(type(value)).encode())
            self._sequence(b"t", value, path)
        elif type(value) is datetime.datetime or type(value) is datetime.time:
            self._moment(value, path)
        elif type(value) is datetime.date:
            self._tagged(b"a", value.isoformat().encode())
        elif type(value) is datetime.timedelta:
            self._tagged(b"w", f"{value.days},{value.seconds},{value.microseconds}".encode())
        elif isinstance(value, pathlib.PurePath):
            # The path's name, not the file's contents: editing the file does not change the key.
            # surrogatepass, as for str: surrogateescape fails on a lone surrogate and writes
            # 'é' and '\udcc3\udca9' (the bytes C3 A9 escaped) alike.
            self._tagged(b"p", f"{type(value).__qualname__}\x00{value}".encode("utf-8", "surrogatepass"))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            self._container(value, path, lambda: self._dataclass(value, path))
        elif not self._numpy(value, path):
            raise Unhashable(path, value)

    def _moment(self, moment: datetime.datetime | datetime.time, path: str) -> None:
        # fold tells apart the two 01:30 of a night when clocks go back.
        wall = moment.replace(tzinfo=None).isoformat()
        self._tagged(b"D" if type(moment) is datetime.datetime else b"h", f"{wall}|{moment.fold}".encode())
        zone = moment.tzinfo
        if zone is None:
            self._write(b"N")
            return
        # Equal instants in different zones compare equal, but arithmetic on them does not
        # agree (a day added across a DST change), so the zone is part of the value.
        if type(zone) is datetime.timezone:
            self._write(b"z")
            self.encode(zone.utcoffset(None), path)
            self.encode(zone.tzname(None), path)
        elif type(zone) is zoneinfo.ZoneInfo and zone.key is not None:
            self._tagged(b"Z", zone.key.encode("utf-8", "surrogatepass"))
        else:
            raise Unhashable(f"{path}.tzinfo", zone, "a time zone with no stable name: use "
                              "zoneinfo.ZoneInfo('Area/City') or a datetime.timezone")
        # What this machine's time zone database says of the moment: another database
        # version may give another offset, and so another result.
        for observed in (moment.utcoffset(), moment.dst(), moment.tzname()):
            self.encode(observed, path)

    def _container(self, value: object, path: str, write: Callable[[], None]) -> None:
        ident = id(value)
        if ident in self._active:
            raise Unhashable(path, value, "contains itself")
        self._active.add(ident)
        try:
            write()
        finally:
            self._active.discard(ident)

    def _sequence(self, tag: bytes, items: Any, path: str) -> None:
        def write() -> None:
            self._write(tag + _INT.pack(len(items)))
            for index, item in enumerate(items):
                self.encode(item, f"{path}[{index}]")

        self._container(items, path, write)

    def _mapping(self, tag: bytes, mapping: dict[Any, Any], path: str) -> None:
        def write() -> None:
            # Each entry's digest covers key and value, so entries sort totally (even keys
            # that encode alike, such as two distinct NaN objects).
            entries = sorted(self._entry_digest(key, item, path) for key, item in mapping.items())
            self._write(tag + _INT.pack(len(entries)) + b"".join(entries))

        self._container(mapping, path, write)

    def _entry_digest(self, key: object, item: object, path: str) -> bytes:
        sub = _Encoder(xxhash.xxh3_128())
        sub._active = self._active
        sub.encode(key, f"a key of {path}")
        sub.encode(item, f"{path}[{key!r}]")
        return sub.hasher.digest()

    def _ordered_mapping(self, mapping: OrderedDict[Any, Any], path: str) -> None:
        self._write(b"o" + _INT.pack(len(mapping)))
        for key, item in mapping.items():
            self.encode(key, f"a key of {path}")
            self.encode(item, f"{path}[{key!r}]")

    def _unordered(self, tag: bytes, items: set[Any] | frozenset[Any], path: str) -> None:
        def write() -> None:
            digests = sorted(self._digest(item, f"an element of {path}") for item in items)
            self._write(tag + _INT.pack(len(digests)) + b"".join(digests))

        self._container(items, path, write)

    def _dataclass(self, value: Any, path: str) -> None:
        fields = dataclasses.fields(value)
        self._tagged(b"C", _class_name(type(value)).encode())
        self._write(_INT.pack(len(fields)))
        for field in fields:
            self._tagged(b"s", field.name.encode())
            self.encode(getattr(value, field.name), f"{path}.{field.name}")

    def _numpy(self, value: object, path: str) -> bool:
        """Encode a numpy array or scalar; ``False`` if ``value`` is neither.

        numpy is looked up, not imported: if it was never imported, no argument can be one of
        its arrays, and memoize stays usable without numpy installed.
        """
        np = sys.modules.get("numpy")
        if np is None:
            return False
        if isinstance(value, np.generic):
            self._write(b"x")
            self._array(np.asarray(value), path)
            return True
        # Exactly arrays (and memory maps, arrays on disk): subclasses such as masked arrays
        # carry state (a mask) that the data alone does not show.
        if type(value) not in (np.ndarray, np.memmap):
            return False
        self._write(b"A")
        self._array(value, path)
        return True

    def _array(self, array: Any, path: str) -> None:
        np = sys.modules["numpy"]
        shape = _INT.pack(array.ndim) + b"".join(_INT.pack(size) for size in array.shape)
        if array.dtype == object:
            self._container(array, path, lambda: self._object_array(array, shape, path))
            return
        if array.dtype.hasobject:
            raise Unhashable(path, array, "is a structured array with Python-object fields")
        # Little-endian whatever the machine: byte order is how numpy stores the values, not
        # which values they are (== ignores it, and numpy's pickle, which carries arrays to
        # other processes, gives them back in native order), so the same values give the same
        # key everywhere.
        dtype = array.dtype.newbyteorder("<")
        described = dtype.str if dtype.fields is None else repr(dtype.descr)
        self._tagged(b"y", described.encode())
        self._write(shape)
        if _every_byte_in_a_field(dtype):
            self._array_bytes(array if dtype == array.dtype else array.astype(dtype), np)
            return
        # The bytes between fields are not part of the value: a copy leaves them uninitialised,
        # and a multi-field view shows the fields it leaves out.
        for name in dtype.names:
            self._tagged(b"s", name.encode("utf-8", "surrogatepass"))
            self._array(array[name], f"{path}[{name!r}]")

    def _array_bytes(self, array: Any, np: Any) -> None:
        """The array's elements in C order, without copying a large array whole."""
        if array.flags.c_contiguous:
            self._write(array.reshape(-1).view(np.uint8).data)
        elif array.ndim > 1 and array.nbytes > _COPY_LIMIT:
            for row in array:
                self._array_bytes(row, np)
        else:
            self._write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)

    def _object_array(self, array: Any, shape: bytes, path: str) -> None:
        self._write(b"O" + shape)
        for index, item in enumerate(array.flat):
            self.encode(item, f"{path}.flat[{index}]")


def _every_byte_in_a_field(dtype: Any) -> bool:
    """Whether every byte of an item belongs to some field (always, for an unstructured dtype)."""
    if dtype.subdtype is not None:
        return _every_byte_in_a_field(dtype.subdtype[0])
    if dtype.fields is None:
        return True
    covered = bytearray(dtype.itemsize)
    for field_dtype, offset, *_title in dtype.fields.values():
        if not _every_byte_in_a_field(field_dtype):
            return False
        covered[offset:offset + field_dtype.itemsize] = b"\x01" * field_dtype.itemsize
    return all(covered)


class KeyHasher:
    """One digest of a sequence of values' canonical encodings, under the current scheme."""

    def __init__(self) -> None:
        hasher = xxhash.xxh3_128()
        hasher.update(f"jangdok-memoize-{MEMOIZE_SCHEME}\x00".encode())
        self._encoder = _Encoder(hasher)

    def add(self, value: object, path: str) -> None:
        """Encode ``value`` next; raises :class:`Unhashable` (naming ``path``) or RecursionError."""
        self._encoder.encode(value, path)

    def hexdigest(self) -> str:
        return str(self._encoder.hasher.hexdigest())


SUPPORTED = ("None, bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset, "
             "namedtuples, OrderedDict, Enum members, dataclass instances, pathlib paths, "
             "datetime/date/time/timedelta (time zones: zoneinfo.ZoneInfo or datetime.timezone), "
             "numpy arrays and scalars")


def stable_hash(value: object) -> str:
    """A hex digest of ``value`` that is the same in every process and on every machine.

    Equal values of the supported types (``SUPPORTED``; dicts and sets in any order) hash
    alike; values of different types never do (``1``, ``1.0``, ``True``). Raises
    :class:`~jangdok.errors.InvalidValue` (a ``TypeError``) for anything else.
    """
    hasher = KeyHasher()
    try:
        hasher.add(value, "value")
    except Unhashable as problem:
        raise InvalidValue(f"stable_hash: value {problem.where('value')} cannot be hashed stably"
                           f"{problem.because()}; supported are {SUPPORTED}") from None
    except RecursionError:
        raise InvalidValue("stable_hash: value is nested too deeply to hash") from None
    return hasher.hexdigest()
