"""The "safe" serializer: plain data and numpy arrays without pickle.

Loading a pickle runs code its writer chose; loading this format cannot. A value becomes a
JSON skeleton (the entry's stream) and raw array buffers (the entry's out-of-band buffers,
written from the arrays' own memory and loaded as views of the payload, exactly as with
pickle). The skeleton holds JSON's own types as they are and tags the rest:

    list            [...]
    tuple           {"$t": [...]}
    dict            {"$d": {...}}          keys must be str
    float           a number, or {"$f": "nan" | "inf" | "-inf"}
    bytes           {"$b": i}              i: index of an out-of-band buffer
    bytearray       {"$b": i, "mutable": true}
    numpy array     {"$a": i, "dtype": "<f4", "shape": [30, 675]}
    numpy scalar    the same with "shape": [] and "scalar": true

Every other type is refused at ``put``, naming where in the value it is: a value that comes back
as something else than what was stored (a set as a list, a subclass as its base) would be a
quiet bug. So is a value nested more than :data:`~jangdok.entry.limits.MAX_NESTING` containers
deep, which some Python version could not read back. Loading builds only these types;
a dtype is parsed by numpy from its string and refused if it could hold Python objects.

A skeleton spends at least :data:`~jangdok.entry.limits.BYTES_PER_LIST` bytes per list and
:data:`~jangdok.entry.limits.BYTES_PER_OBJECT` per object (writers pad it with spaces), checked
before it is parsed, and is decoded in place: what it builds is bounded by its bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

from ..errors import CorruptEntry, InvalidValue, UnsupportedEntry
from .limits import MAX_NESTING, check_containers, container_padding, cut, json_problem

__all__ = ["NAME", "dumps", "loads"]

NAME = "safe"
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_SUPPORTED = ("None, bool, int, float, str, bytes, bytearray, lists, tuples, dicts with str keys, "
              "numpy arrays (not of Python objects) and numpy scalars")


def _refuse(path: str, value: Any, why: str = "") -> InvalidValue:
    return InvalidValue(
        f"the safe serializer cannot store {path} (a {type(value).__module__}.{type(value).__qualname__}"
        f"{why}); it stores {_SUPPORTED}. Convert it, or use serializer='pickle' (JANGDOK_SERIALIZER)"
    )


class _Writer:
    def __init__(self) -> None:
        self.buffers: list[tuple[memoryview, int]] = []

    def buffer(self, view: memoryview, itemsize: int = 1) -> int:
        self.buffers.append((view.cast("B") if view.format != "B" or view.ndim != 1 else view, itemsize))
        return len(self.buffers) - 1

    def encode(self, value: Any, path: str, depth: int = 0) -> Any:
        kind = type(value)
        if kind in (list, tuple, dict):
            if depth == MAX_NESTING:
                raise InvalidValue(f"the safe serializer cannot store {cut(path)}: it is nested too deeply (more than "
                                   f"{MAX_NESTING} lists, tuples and dicts, the most every Python version reads "
                                   "back); flatten it, or use serializer='pickle' (JANGDOK_SERIALIZER)")
            depth += 1
        if value is None or kind in (bool, int, str):
            problem = json_problem(value)
            if problem is not None:
                raise _refuse(path, value, f": {problem}")
            return value
        if kind is float:
            return value if math.isfinite(value) else {"$f": "nan" if math.isnan(value) else
                                                       ("inf" if value > 0 else "-inf")}
        if kind is list:
            return [self.encode(item, f"{path}[{index}]", depth) for index, item in enumerate(value)]
        if kind is tuple:
            return {"$t": [self.encode(item, f"{path}[{index}]", depth) for index, item in enumerate(value)]}
        if kind is dict:
            encoded = {}
            for name, item in value.items():
                if type(name) is not str:
                    raise _refuse(f"the key {name!r} of {path}", name, ": dict keys must be str")
                problem = json_problem(name)
                if problem is not None:
                    raise _refuse(f"the key {name!r} of {path}", name, f": {problem}")
                encoded[name] = self.encode(item, f"{path}[{name!r}]", depth)
            return {"$d": encoded}
        if kind in (bytes, bytearray):
            tag: dict[str, Any] = {"$b": self.buffer(memoryview(value))}
            if kind is bytearray:
                tag["mutable"] = True
            return tag
        if kind.__module__.partition(".")[0] == "numpy":
            return self._numpy(value, path)
        raise _refuse(path, value)

    def _numpy(self, value: Any, path: str) -> Any:
        import numpy as np

        scalar = isinstance(value, np.generic)
        if not scalar and type(value) is not np.ndarray:
            raise _refuse(path, value, ", an array subclass")
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise _refuse(path, value, f" of dtype {array.dtype}, which " + (
                "holds Python objects" if array.dtype.hasobject else "is a structured dtype"))
        shape = list(array.shape)  # before ascontiguousarray, which makes 0-d arrays 1-d
        array = np.ascontiguousarray(array)
        # As bytes: buffers cannot export every dtype (datetime64), but any array views as uint8.
        raw = array.reshape(-1).view(np.uint8).data
        tag: dict[str, Any] = {"$a": self.buffer(raw, array.dtype.itemsize),
                               "dtype": array.dtype.str, "shape": shape}
        if scalar:
            tag["scalar"] = True
        return tag


def dumps(value: Any, key: str | None = None) -> tuple[bytes, list[tuple[memoryview, int]]]:
    """The JSON skeleton and the out-of-band buffers (each with its item size, for compression).
    Raises InvalidValue naming the first part of the value this format cannot hold."""
    writer = _Writer()
    where = f"value under key {key!r}" if key else "value"
    try:
        skeleton = writer.encode(value, where)
        text = json.dumps(skeleton, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError as exc:  # within MAX_NESTING, when put is called this deep in the stack already
        raise InvalidValue(f"{where} is nested too deeply to store; flatten it") from exc
    stream = text.encode("utf-8")
    return stream + container_padding(stream), writer.buffers


class Buffers(Protocol):
    """The out-of-band buffers a skeleton refers to, by index (a list, or views made on demand)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> memoryview: ...


class _Reader:
    def __init__(self, buffers: Buffers) -> None:
        self.buffers = buffers
        self.used: set[int] = set()
        self.numpy: Any = None

    def decode(self, node: Any) -> Any:
        """The value of a parsed ``node``. Lists and dicts are the parser's own, filled in place:
        a copy would double what a skeleton costs."""
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            for index, item in enumerate(node):
                node[index] = self.decode(item)
            return node
        if type(node) is not dict or len(node) == 0:
            raise ValueError(f"unexpected {type(node).__name__} in the skeleton")
        if "$t" in node:
            return tuple(self.decode(_of(node["$t"], list)))
        if "$d" in node:
            items = _of(node["$d"], dict)
            for name, item in items.items():
                items[name] = self.decode(item)
            return items
        if "$f" in node:
            return _FLOATS[node["$f"]]
        if "$b" in node:
            data = self._buffer(node["$b"])
            return bytearray(data) if node.get("mutable") else bytes(data)
        if "$a" in node:
            return self._array(node)
        raise ValueError(f"unknown tag {sorted(node)}")

    def _buffer(self, index: Any) -> memoryview:
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise ValueError(f"buffer {index!r} does not exist")
        if index in self.used:  # the writer gives every buffer one place: no fan-out of copies
            raise ValueError(f"buffer {index} is used twice")
        self.used.add(index)
        return self.buffers[index]

    def _array(self, node: dict[str, Any]) -> Any:
        if self.numpy is None:
            import numpy

            self.numpy = numpy
        np = self.numpy
        dtype = np.dtype(str(node["dtype"]))
        if dtype.hasobject:
            raise ValueError(f"dtype {dtype} would hold Python objects")
        shape = tuple(int(size) for size in node["shape"])
        array = np.frombuffer(self._buffer(node["$a"]), dtype=dtype).reshape(shape)
        return array[()] if node.get("scalar") else array


def _of(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise TypeError(f"expected a {kind.__name__}, found {type(value).__name__}")
    return value


def loads(stream: memoryview | bytes, buffers: Buffers) -> Any:
    """The value of a skeleton and its buffers; raises CorruptEntry for anything malformed, and
    UnsupportedEntry if it holds arrays and numpy is missing or more containers than its bytes
    allow. RecursionError and MemoryError are this reader's limits, not damage: they are left
    to the caller, which keeps such an entry for other readers. Arrays are views of their
    buffers (no copy)."""
    text = bytes(stream)
    check_containers(text, "safe entry's skeleton")
    try:
        return _Reader(buffers).decode(json.loads(text))
    except ImportError as exc:
        raise UnsupportedEntry(f"safe entry holds numpy arrays, and numpy cannot be imported here: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise CorruptEntry(f"safe entry is malformed: {type(exc).__name__}: {cut(str(exc))}") from exc
