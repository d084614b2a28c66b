"""Writing a header: metadata as every reader will see it, the header's JSON, and the bytes
that seal it (the prefix, its hash, the MAC and the padding before the payload).

:mod:`.header` reads what this writes; :func:`~jangdok.entry.format.encode` puts them together.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

import xxhash

from ..errors import InvalidValue
from .header import ALIGNMENT, FORMAT_VERSION, HEADER_HASH, MAGIC, MAX_METADATA_BYTES, PREFIX, ZEROS
from .limits import MAX_NESTING, container_padding, cut, json_problem

__all__ = ["metadata_json", "seal", "lead"]


def _json_default(value: Any) -> Any:
    """What numpy users put in metadata: numpy scalars become numbers, times ISO strings."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # a numpy scalar or 0-d array
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


# Made once: json.dumps with options builds an encoder on every call (a tenth of a small save).
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False, separators=(",", ":"),
                            default=_json_default)


def _to_json(fields: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(fields).encode("utf-8")


def _plain_json(fields: Mapping[str, Any]) -> bytes:
    """``_to_json(fields)``, byte for byte, for the fields of an unsigned entry with nothing
    compressed (see :func:`seal`), formatted in one go: the encoder's setup costs a small save
    more than the JSON it writes."""
    expires, key, metadata = fields.get("expires_at"), fields.get("key"), fields["metadata"]
    return (f'{{"buffers":[{",".join(map(str, fields["buffers"]))}],"checksum":"{fields["checksum"]}",'
            f'"compressed":{{}},"created_at":{fields["created_at"]!r},"digest":"{fields["digest"]}",'
            + ("" if expires is None else f'"expires_at":{expires!r},')
            + ("" if key is None else f'"key":{encode_basestring(key)},')
            + f'"mac_length":0,"metadata":{"null" if metadata is None else _ENCODER.encode(metadata)},'
            f'"payload_length":{fields["payload_length"]},"serializer":"{fields["serializer"]}",'
            f'"stream_length":{fields["stream_length"]}}}').encode("utf-8")


def metadata_json(metadata: Mapping[str, Any] | None, key: str | None) -> Any:
    """Metadata as every reader will see it (JSON types), checked for type and size; raises
    InvalidValue naming where in the metadata anything no reader could parse is."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidValue(f"metadata must be a mapping such as a dict, got {type(metadata).__name__}")
    where = f" for key {key!r}" if key else ""
    try:
        _check_readable(metadata, "metadata", where)
        text = _to_json(dict(metadata))
    except InvalidValue:
        raise
    except RecursionError as exc:  # within MAX_NESTING, when put is called this deep in the stack already
        raise InvalidValue(f"entry metadata{where} is nested too deeply; flatten it") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidValue(
            f"entry metadata{where} must be JSON-serializable (str, int, float, bool, None, lists, dicts, "
            f"numpy scalars, datetimes): {exc}"
        ) from exc
    if len(text) > MAX_METADATA_BYTES:
        raise InvalidValue(f"entry metadata{where} is {len(text)} bytes as JSON; the limit is "
                           f"{MAX_METADATA_BYTES}: store large data in the value, not in its metadata")
    return json.loads(text)


def _check_readable(value: Any, path: str, where: str, depth: int = 0) -> None:
    """Refuse text and integers no reader could parse back (:func:`~jangdok.entry.limits.json_problem`),
    and nesting deeper than :data:`~jangdok.entry.limits.MAX_NESTING`."""
    problem = json_problem(value)
    if problem is not None:
        raise InvalidValue(f"entry metadata{where} cannot hold {path}: {problem}")
    if isinstance(value, (Mapping, list, tuple)):
        if depth == MAX_NESTING:
            raise InvalidValue(f"entry metadata{where} is nested too deeply at {cut(path)}: more than {MAX_NESTING} "
                               "lists and dicts, the most every Python version reads back; flatten it")
        depth += 1
    if isinstance(value, Mapping):
        for name, item in value.items():
            problem = json_problem(name)
            if problem is not None:
                raise InvalidValue(f"entry metadata{where} cannot hold the key {name!r} of {path}: {problem}")
            _check_readable(item, f"{path}[{name!r}]", where, depth)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_readable(item, f"{path}[{index}]", where, depth)


def seal(fields: Mapping[str, Any], plain: bool = False) -> bytes:
    """The header's bytes from the magic to the end of its JSON: what the MAC covers.

    ``plain``: the writer vouches that ``fields`` are exactly those of an unsigned entry with
    nothing compressed: ``buffers`` a list of ints, ``compressed`` empty, ``mac_length`` 0,
    ``created_at`` and any ``expires_at`` floats (checked times), ``key`` absent or a string,
    the other counts ints, and the checksum, digest and serializer names that need no escape."""
    header_json = _plain_json(fields) if plain else _to_json(fields)
    header_json += container_padding(header_json)
    return PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_json)) + header_json


def lead(sealed: bytes, mac: bytes) -> bytes:
    """Everything before the payload: the sealed header, its hash, the MAC and the padding."""
    done = sealed + HEADER_HASH.pack(xxhash.xxh32_intdigest(sealed)) + mac
    return done + ZEROS[: -len(done) % ALIGNMENT]  # up to the payload's alignment
