"""Memoize: cache a function's results under a key made from its name and its arguments.

    @cache.memoize
    def extract(path: Path, scale: float = 1.0) -> np.ndarray: ...

    @cache.memoize(version="2", source=True, ignore=("verbose",), ttl=86400)
    def train(config: Config, verbose: bool = False) -> Model: ...

An entry's key is ``<module>.<qualname>/<hash>.pkl``, e.g. ``mypkg.features.extract/3f9a…c2.pkl``:
one folder per function, so ``aws s3 ls`` or a file browser shows which function filled the
cache, and removing a function's entries is removing one folder.

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

import ast
import dataclasses
import datetime
import enum
import functools
import inspect
import logging
import math
import pathlib
import re
import struct
import sys
import zoneinfo
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

import xxhash

from .errors import ConfigError, InvalidKey, InvalidValue, JangdokError
from .location import LOCAL_MAX_NAME_BYTES, normalize_key

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["memoize", "Memoized", "stable_hash", "MEMOIZE_SCHEME"]

log = logging.getLogger("jangdok")

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

MEMOIZE_SCHEME = 2
"""Version of the key scheme (the encoding below). Bumping it changes every memoized key, so
it changes only when an encoding would otherwise be misread, never for cosmetic reasons.

2: enum members by class and value (composite Flag values collided), time zones in the key
of datetimes and times, floats by their exact bits (NaN payloads), paths that hold
surrogates, structured arrays without the bytes between fields."""

# The function's folder is kept well under the 255-byte file name limit, leaving room for
# the fallback folder's layout and for tools that append to names.
_MAX_FOLDER_BYTES = 200
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')
# Values larger than this are hashed piecewise rather than copied whole into C order.
_COPY_LIMIT = 1 << 26

_INT = struct.Struct(">q")


class Memoized(Protocol[P, R_co]):
    """What ``@cache.memoize`` returns: the function, plus ``key()`` and ``cache``.

    Type checkers see the original signature (``ParamSpec``), so a memoized function is
    checked and completed exactly like the function it wraps.
    """

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...

    @property
    def cache(self) -> Cache: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments reads and writes; nothing is computed."""
        ...


# -- the canonical encoding -------------------------------------------------------------------


class _Unhashable(Exception):
    """A part of a value that has no stable encoding, and where it sits in the value."""

    def __init__(self, path: str, value: object, reason: str | None = None) -> None:
        super().__init__(path)
        self.path = path
        self.value = value
        self.reason = reason


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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
            raise _Unhashable(path, value)

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
            raise _Unhashable(f"{path}.tzinfo", zone, "a time zone with no stable name: use "
                              "zoneinfo.ZoneInfo('Area/City') or a datetime.timezone")
        # What this machine's time zone database says of the moment: another database
        # version may give another offset, and so another result.
        for observed in (moment.utcoffset(), moment.dst(), moment.tzname()):
            self.encode(observed, path)

    def _container(self, value: object, path: str, write: Callable[[], None]) -> None:
        ident = id(value)
        if ident in self._active:
            raise _Unhashable(path, value, "contains itself")
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
            raise _Unhashable(path, array, "is a structured array with Python-object fields")
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


def _new_hasher() -> Any:
    hasher = xxhash.xxh3_128()
    hasher.update(f"jangdok-memoize-{MEMOIZE_SCHEME}\x00".encode())
    return hasher


_SUPPORTED = ("None, bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset, "
              "namedtuples, OrderedDict, Enum members, dataclass instances, pathlib paths, "
              "datetime/date/time/timedelta (time zones: zoneinfo.ZoneInfo or datetime.timezone), "
              "numpy arrays and scalars")


def stable_hash(value: object) -> str:
    """A hex digest of ``value`` that is the same in every process and on every machine.

    Equal values of the supported types (``_SUPPORTED``; dicts and sets in any order) hash
    alike; values of different types never do (``1``, ``1.0``, ``True``). Raises
    :class:`~jangdok.errors.InvalidValue` (a ``TypeError``) for anything else.
    """
    encoder = _Encoder(_new_hasher())
    try:
        encoder.encode(value, "value")
    except _Unhashable as problem:
        raise InvalidValue(f"stable_hash: value {_where(problem, 'value')} cannot be hashed stably"
                           f"{_reason(problem)}; supported are {_SUPPORTED}") from None
    except RecursionError:
        raise InvalidValue("stable_hash: value is nested too deeply to hash") from None
    return str(encoder.hasher.hexdigest())


def _where(problem: _Unhashable, top: str) -> str:
    """``(a Foo)`` for the value itself, ``holds x['k'][2] (a Foo), which`` for a part of it."""
    if problem.path == top:
        return f"({_a(problem.value)})"
    return f"holds {problem.path} ({_a(problem.value)}), which"


def _reason(problem: _Unhashable) -> str:
    return f" ({problem.reason})" if problem.reason else ""


# -- keys -------------------------------------------------------------------------------------


def _folder(identity: str) -> str:
    """A readable key segment for a function: ``pkg.mod.outer.inner`` for
    ``pkg.mod.outer.<locals>.inner``, ``pkg.mod.lambda`` for a lambda; valid on every store."""
    text = identity.replace(".<locals>.", ".").replace("<", "").replace(">", "")
    text = _UNSAFE_IN_NAME.sub("-", text)
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > _MAX_FOLDER_BYTES:  # the full name still goes into the hash
        text = encoded[:_MAX_FOLDER_BYTES].decode("utf-8", "ignore")
    text = text.rstrip(". ") or "_"
    try:
        normalize_key(f"{text}/x.pkl")
    except InvalidKey:  # a device name Windows reserves (a module called 'aux'), a reserved prefix
        text = "_" + text
    return text


def _checked_name(name: str) -> str:
    """A folder given with ``name=``, checked against the key rules (it is the user's to fix)."""
    if not isinstance(name, str) or not name.strip("/"):
        raise ConfigError(f"memoize: name must be a non-empty key folder such as 'features/extract', got {name!r}")
    name = name.strip("/")
    try:
        normalize_key(f"{name}/x.pkl")
    except InvalidKey as exc:
        raise InvalidKey(f"memoize: name={name!r} cannot be a key folder: {exc}") from None
    for part in name.split("/"):
        if len(part.encode("utf-8")) > LOCAL_MAX_NAME_BYTES:
            raise InvalidKey(f"memoize: name={name!r} has a segment longer than {LOCAL_MAX_NAME_BYTES} bytes")
    return name


def _source_hash(fn: Callable[..., Any], identity: str) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError) as exc:
        problem = f"which is not available ({exc})"
    else:
        if _defines(source, fn):
            # Line endings follow the checkout (git on Windows may write CRLF); the code does not.
            return xxhash.xxh3_128_hexdigest("\n".join(source.splitlines()).encode("utf-8", "surrogatepass"))
        first_line = next(iter(source.splitlines()), "").strip()
        problem = f"but the text found for it is not its definition ({first_line[:80]!r}...)"
    raise ConfigError(
        f"memoize: source=True needs the source of {identity}, {problem}; functions made by exec() "
        "have none: use version= to invalidate its entries instead"
    )


def _defines(source: str, fn: Callable[..., Any]) -> bool:
    """Whether ``source`` is the definition of ``fn``: its name, and its parameters by name.

    inspect.getsource finds text by file name and line number and never checks it: for code
    compiled from a string, the "file" is a name such as ``<string>``, and whatever linecache
    holds under that name is returned (Python 3.13 puts the ``python -c`` program there, so a
    function made by exec() in such a process "has" that program's first line as its source).
    """
    target = inspect.unwrap(fn)  # as getsource does
    target = getattr(target, "__func__", target)  # a bound method's function
    statements = _statements(source)
    if not statements:
        return False
    if inspect.isclass(target):
        return len(statements) == 1 and isinstance(statements[0], ast.ClassDef) \
            and statements[0].name == target.__name__
    code = getattr(target, "__code__", None)
    if code is None:
        return False
    nodes: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda]
    if code.co_name == "<lambda>":  # the lines holding it, which may hold other code too
        nodes = [node for statement in statements for node in ast.walk(statement) if isinstance(node, ast.Lambda)]
    elif len(statements) == 1 and isinstance(statements[0], (ast.FunctionDef, ast.AsyncFunctionDef)) \
            and statements[0].name == code.co_name:
        nodes = [statements[0]]
    else:
        return False
    return any(_parameter_names(node.args) == _code_parameter_names(code) for node in nodes)


def _statements(source: str) -> list[ast.stmt] | None:
    """The statements of a definition's text; None if it does not parse."""
    # An indented definition (a method) parses inside a block; dedenting instead would fail on
    # a string literal whose lines start at column 0.
    indented = source[:1].isspace()
    try:
        module = ast.parse("if 1:\n" + source if indented else source)
    except (SyntaxError, ValueError):
        return None
    if not indented:
        return module.body
    block = module.body[0]
    return block.body if isinstance(block, ast.If) else None


def _parameter_names(args: ast.arguments) -> list[str]:
    """Parameter names in the order a code object lists them: positional, keyword-only, *, **."""
    names = [arg.arg for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return names + [arg.arg for arg in (args.vararg, args.kwarg) if arg is not None]


def _code_parameter_names(code: Any) -> list[str]:
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return list(code.co_varnames[:count])


class _Memo(Generic[P, R]):
    """Everything fixed at decoration time: the function's identity, signature and options."""

    def __init__(self, cache: Cache, fn: Callable[P, R], version: str | int | None, source: bool,
                 ignore: str | Iterable[str], ttl: float | None, name: str | None) -> None:
        self.cache = cache
        self.fn = fn
        self.identity = self._identity(fn, name)
        self.folder = _checked_name(name) if name is not None else _folder(self.identity)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigError(
                f"memoize: {self.identity} is a coroutine or generator function; what it returns "
                "(a coroutine or a generator) cannot be cached: memoize a function that returns the result"
            )
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"memoize: the signature of {self.identity} cannot be read ({exc})") from None
        ignored = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        unknown = [item for item in ignored if item not in self.signature.parameters]
        if unknown:
            raise ConfigError(
                f"memoize: ignore= names {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not a parameter of {self.identity}{self.signature}"
            )
        self.ignored = frozenset(ignored)
        if version is not None and not isinstance(version, (str, int)):
            raise ConfigError(f"memoize: version must be a str or an int, got {version!r}")
        if ttl is not None and not (isinstance(ttl, (int, float)) and 0 < ttl < math.inf):
            raise ConfigError(f"memoize: ttl must be a positive number of seconds or None, got {ttl!r}")
        self.version = version
        self.source = _source_hash(fn, self.identity) if source else None
        self.ttl = ttl
        self.metadata = {"function": self.identity, "version": version}

    @staticmethod
    def _identity(fn: Callable[..., Any], name: str | None) -> str:
        """The name that, with the arguments, tells this function's entries from all others."""
        if name is not None:
            return _checked_name(name)
        qualname = getattr(fn, "__qualname__", None)
        if not isinstance(qualname, str):
            raise ConfigError(f"memoize: {fn!r} has no __qualname__ to name its entries by; pass name='...'")
        if qualname.rpartition(".")[2] == "<lambda>":
            # Every lambda of a module has the same name, so they would share entries.
            raise ConfigError(f"memoize: lambdas all share the name {qualname!r}, so their entries would "
                              "mix; give it a name with def, or pass name='...'")
        return f"{getattr(fn, '__module__', None) or '__main__'}.{qualname}"

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        # Bound and defaulted, so f(1, 2), f(1, b=2) and f(a=1, b=2) are one call, and so is
        # f(1) when b defaults to 2. (A default changed in the code changes the key with it.)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = [(name, value) for name, value in bound.arguments.items() if name not in self.ignored]
        encoder = _Encoder(_new_hasher())
        # The full name goes in too: folders of functions whose names differ only in what
        # _folder() drops or truncates never share an entry.
        for header in (self.identity, self.version, self.source, len(arguments)):
            encoder.encode(header, "key")
        for name, value in arguments:
            encoder.encode(name, name)
            try:
                encoder.encode(value, name)
            except _Unhashable as problem:
                raise self._refusal(name, problem) from None
            except RecursionError:
                raise InvalidValue(f"memoize: argument {name!r} of {self.identity} is nested too deeply "
                                   f"to hash; pass ignore=({name!r},) or flatten it") from None
        digest = encoder.hasher.hexdigest()
        return normalize_key(f"{self.folder}/{digest}.pkl")

    def _refusal(self, name: str, problem: _Unhashable) -> InvalidValue:
        hint = (" (for a method, ignore=('self',) leaves the instance out of the key)"
                if name in ("self", "cls") and problem.path == name else "")
        return InvalidValue(
            f"memoize: argument {name!r} of {self.identity} {_where(problem, name)} cannot be hashed "
            f"stably{_reason(problem)}; pass ignore=({name!r},) or give it a stable form "
            f"(a dataclass, tuple, ...){hint}. Supported: {_SUPPORTED}"
        )

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        key = self.key(args, kwargs)
        state: dict[str, Any] = {}

        def compute() -> R:
            state["started"] = True
            state["result"] = result = self.fn(*args, **kwargs)
            return result

        try:
            return self.cache.get_or_compute(key, compute, metadata=self.metadata, ttl=self.ttl)
        except JangdokError as exc:
            if "result" in state:
                # The value is good and the caller needs it; the cache is only an optimisation.
                log.warning("memoize: %s computed but not saved under %s: %s", self.identity, key, exc,
                            extra={"jangdok_event": "memoize_save_failed", "jangdok_path": key})
                return state["result"]
            if "started" in state:
                raise  # from the function itself: its errors are the caller's business
            log.warning("memoize: cache unusable for %s (%s), computing without it: %s", self.identity, key, exc,
                        extra={"jangdok_event": "memoize_load_failed", "jangdok_path": key})
        return self.fn(*args, **kwargs)


# -- the decorator ----------------------------------------------------------------------------


@overload
def memoize(cache: Cache, fn: Callable[P, R], /, *, version: str | int | None = None, source: bool = False,
            ignore: str | Iterable[str] = (), ttl: float | None = None, name: str | None = None) -> Memoized[P, R]: ...


@overload
def memoize(cache: Cache, fn: None = None, /, *, version: str | int | None = None, source: bool = False,
            ignore: str | Iterable[str] = (), ttl: float | None = None,
            name: str | None = None) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...


def memoize(cache: Cache, fn: Callable[P, R] | None = None, /, *, version: str | int | None = None,
            source: bool = False, ignore: str | Iterable[str] = (), ttl: float | None = None,
            name: str | None = None) -> Memoized[P, R] | Callable[[Callable[P, R]], Memoized[P, R]]:
    """Cache ``fn``'s results in ``cache``, keyed by its name and its arguments.

    Usable bare (``memoize(cache, fn)``, ``@cache.memoize``) or with options
    (``@cache.memoize(version="2")``):

    - ``version``: part of every key; change it when the function's results change meaning.
    - ``source``: also hash the function's source text, so editing the function starts new
      entries. Off by default because it also invalidates on comments and formatting, and
      still misses edits to the functions it calls.
    - ``ignore``: names of parameters left out of the key (a verbosity flag, a logger, a
      client object): calls differing only there share an entry.
    - ``ttl``: seconds after which an entry stops being a hit (default: the cache's setting).
    - ``name``: the key folder instead of ``<module>.<qualname>``: keeps entries across a
      rename or a move, and tells apart functions of different ``__main__`` scripts.

    The key is the function's name and its arguments, nothing else: arguments are hashed by
    value (see :func:`stable_hash` and the module's notes), a path by its name (not the file's
    contents), an enum member by its class and value, a ``datetime`` or ``time`` with its time
    zone (the same instant in UTC and in Europe/London is two keys; a zone is named by its
    ``zoneinfo`` key or its ``datetime.timezone`` offset and name, and any other ``tzinfo`` is
    refused). Globals, and the variables a nested function reads from its enclosing function,
    are not part of it (they may be mutable, and would change the key as they change). So
    ``make(2).f(1)`` and ``make(3).f(1)``, closures of one nested ``f``, share an entry: pass
    such values as arguments. An argument of an unsupported type raises
    :class:`~jangdok.errors.InvalidValue` naming it. The cache never breaks the function: a
    save that fails, or a store that cannot be reached, is logged at WARNING and the
    function's own result returned; the function's own exceptions propagate unchanged and
    nothing is stored for them.
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"memoize: expected a function, got {fn!r}; options are keywords: version={fn!r}")

    def decorate(fn: Callable[P, R]) -> Memoized[P, R]:
        memo = _Memo(cache, fn, version, source, ignore, ttl, name)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return memo.call(args, kwargs)

        def key(*args: P.args, **kwargs: P.kwargs) -> str:
            return memo.key(args, kwargs)

        wrapper.key = key  # type: ignore[attr-defined]
        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)

