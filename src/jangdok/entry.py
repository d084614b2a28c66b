"""The entry format: a short self-describing header, then the serialized payload.

Layout of format version 1::

    magic        8 bytes   b"\\x89JDK\\r\\n\\x1a\\n"
    version      u16 BE    1
    header_len   u32 BE    length of the JSON header that follows
    header       JSON      serializer, compression, payload_length, checksum, digest,
                           created_at, metadata, and key (the key it was written under;
                           absent in entries written before it existed)
    header_hash  u32 BE    xxh32 of everything before it (magic to JSON header)
    payload      payload_length bytes

The magic starts with a non-ASCII byte and contains CR LF, so text-mode mangling is caught,
and it cannot start a pickle (protocol 2+ pickles start with ``\\x80``, older ones with ASCII).
Anything without the magic is read as the seed's plain pickle. The payload digest is xxh3-128:
non-cryptographic but it detects truncation and bit flips at memory speed (signing, against
tampering, is a separate layer).
"""

from __future__ import annotations

import datetime
import json
import pickle
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import xxhash

from .errors import CorruptEntry, InvalidValue, UnsupportedEntry

__all__ = ["EntryHeader", "Decoded", "ForeignEntry", "encode", "decode", "read_header", "header_size",
           "FORMAT_VERSION", "MAGIC", "MAX_HEADER_BYTES"]

MAGIC = b"\x89JDK\r\n\x1a\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sHI")
_HEADER_HASH = struct.Struct(">I")
# A header is a few hundred bytes; anything near this limit is damage, not metadata.
MAX_HEADER_BYTES = 1 << 20
HEADER_PROBE_BYTES = 64 * 1024
"""How much to fetch to read a header in one request; enough for any normal metadata."""
_READ_CHUNK = 1 << 20
_CHECKSUM = "xxh3_128"
_SERIALIZER = "pickle"
_COMPRESSION = "none"

# Unpickling damaged bytes can fail in many ways. Without a checksum (legacy pickles) these
# are taken to mean the bytes are bad; ImportError and AttributeError never are: they mean the
# code changed, not the data. MemoryError and RecursionError are the reader's own limits.
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError,
            OverflowError, UnicodeDecodeError, struct.error)
_READER_LIMITS = (MemoryError, RecursionError)
# Versions are small integers; a value beyond this is a damaged field, not a future format.
_MAX_PLAUSIBLE_VERSION = 255


@dataclass(frozen=True)
class EntryHeader:
    version: int
    serializer: str
    compression: str
    payload_length: int
    checksum: str
    digest: str
    created_at: float
    metadata: dict[str, Any] | None
    header_size: int
    """Bytes before the payload."""
    key: str | None = None
    """The key the entry was written under; ``None`` for entries older than this field."""

    @property
    def entry_size(self) -> int:
        return self.header_size + self.payload_length


@dataclass(frozen=True)
class Decoded:
    value: Any
    header: EntryHeader | None
    """``None`` for a legacy plain pickle, which has no header."""


class ForeignEntry(Exception):
    """An intact entry written for another key: a response that crossed over from another
    request, or a file renamed by hand. Never a value to return, never damage to delete."""


def keys_match(recorded: str, key: str) -> bool:
    """Whether an entry recorded under ``recorded`` belongs at ``key``.

    One object is reached under different keys from different roots (``x.pkl`` in
    ``Cache("s3://b/cache/")``, ``cache/x.pkl`` through ``jangdok.load("s3://b/cache/x.pkl")``),
    and a cache may be copied under another prefix, so the shorter key must be the longer
    one's trailing segments.
    """
    if recorded == key:
        return True
    shorter, longer = sorted((recorded, key), key=len)
    return longer.endswith("/" + shorter)


def _json_default(value: Any) -> Any:
    """What numpy users put in metadata: numpy scalars become numbers, times ISO strings."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # a numpy scalar or 0-d array
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _pickle(value: Any, key: str | None) -> bytes:
    where = f" under key {key!r}" if key else ""
    try:
        return pickle.dumps(value, protocol=5)
    except RecursionError as exc:
        raise InvalidValue(f"value{where} is nested too deeply to pickle ({type(value).__name__}); "
                           "flatten it or store its parts under separate keys") from exc
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise InvalidValue(f"value{where} of type {type(value).__name__} cannot be pickled: {exc}; "
                           "store plain data (numbers, strings, lists, dicts, arrays) instead") from exc


def _header_json(fields: Mapping[str, Any], key: str | None) -> bytes:
    where = f" for key {key!r}" if key else ""
    try:
        header_json = json.dumps(fields, ensure_ascii=False, sort_keys=True, allow_nan=False,
                                 separators=(",", ":"), default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidValue(
            f"entry metadata{where} must be JSON-serializable (str, int, float, bool, None, lists, dicts, "
            f"numpy scalars, datetimes): {exc}"
        ) from exc
    if len(header_json) > MAX_HEADER_BYTES:
        raise InvalidValue(f"entry metadata{where} is {len(header_json)} bytes as JSON; the limit is "
                           f"{MAX_HEADER_BYTES}: store large data in the value, not in its metadata")
    return header_json


def encode(value: Any, metadata: Mapping[str, Any] | None = None, created_at: float | None = None,
           key: str | None = None) -> tuple[EntryHeader, list[bytes | memoryview]]:
    """Serialize a value into entry chunks (header, payload), ready for ``Store.write``.

    ``key`` is recorded so that a reader can tell an entry that reached it by mistake. Raises
    TypeError for metadata that is not a mapping, and InvalidValue for a value that cannot be
    pickled or metadata that cannot be stored; nothing is written then.
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping such as a dict, got {type(metadata).__name__}")
    payload = _pickle(value, key)
    fields = {
        "serializer": _SERIALIZER,
        "compression": _COMPRESSION,
        "payload_length": len(payload),
        "checksum": _CHECKSUM,
        "digest": xxhash.xxh3_128_hexdigest(payload),
        "created_at": time.time() if created_at is None else created_at,
        "metadata": dict(metadata) if metadata is not None else None,
    }
    if key is not None:
        fields["key"] = key
    header_json = _header_json(fields, key)
    sealed = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_json)) + header_json
    prefix = sealed + _HEADER_HASH.pack(xxhash.xxh32_intdigest(sealed))
    # Read back from the JSON, so the caller sees metadata as every reader will.
    header = _header_from(json.loads(header_json), len(prefix))
    return header, [prefix, payload]


def _header_from(fields: Mapping[str, Any], header_size: int) -> EntryHeader:
    return EntryHeader(
        version=FORMAT_VERSION,
        serializer=fields["serializer"],
        compression=fields["compression"],
        payload_length=int(fields["payload_length"]),
        checksum=fields["checksum"],
        digest=fields["digest"],
        created_at=float(fields["created_at"]),
        metadata=fields.get("metadata"),
        header_size=header_size,
        key=fields.get("key"),
    )


def _read_exactly(reader: BinaryIO, size: int) -> bytearray:
    """Read ``size`` bytes or raise CorruptEntry: the store guarantees a short read is real."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = reader.readinto(view[done : done + min(_READ_CHUNK, size - done)])
        if not count:
            raise CorruptEntry(f"entry is truncated: expected {size} bytes, found {done}")
        done += count
    return buffer


def header_size(start: bytes) -> int | None:
    """Bytes before the payload, from an entry's first bytes; ``None`` if they hold no
    complete prefix or no magic. Lets a reader fetch exactly the header and no more."""
    if len(start) < _PREFIX.size or not start.startswith(MAGIC):
        return None
    _, _, header_len = _PREFIX.unpack_from(start)
    return _PREFIX.size + min(header_len, MAX_HEADER_BYTES) + _HEADER_HASH.size


def read_header(reader: BinaryIO) -> EntryHeader | bytes:
    """Parse a header from the start of a stream.

    Returns the header, or the bytes already consumed if the stream holds no magic (a legacy
    plain pickle), so the caller can go on reading it. Raises CorruptEntry or UnsupportedEntry.
    """
    start = bytearray()
    while len(start) < _PREFIX.size:
        chunk = reader.read(_PREFIX.size - len(start))
        if not chunk:
            break
        start += chunk
        if not MAGIC.startswith(bytes(start[: len(MAGIC)])):
            return bytes(start)
    if len(start) < _PREFIX.size:
        if MAGIC.startswith(bytes(start)) and start:
            raise CorruptEntry(f"entry is truncated inside its header ({len(start)} bytes)")
        return bytes(start)
    _, version, header_len = _PREFIX.unpack(start)
    if version < 1 or version > _MAX_PLAUSIBLE_VERSION or header_len > MAX_HEADER_BYTES:
        raise CorruptEntry(f"entry header is damaged (version {version}, header length {header_len})")
    if version > FORMAT_VERSION:
        raise UnsupportedEntry(
            f"entry uses format version {version}; this jangdok reads up to {FORMAT_VERSION}: upgrade jangdok"
        )
    rest = _read_exactly(reader, header_len + _HEADER_HASH.size)
    header_json = bytes(rest[:header_len])
    (expected,) = _HEADER_HASH.unpack_from(rest, header_len)
    if xxhash.xxh32_intdigest(bytes(start) + header_json) != expected:
        raise CorruptEntry("entry header checksum mismatch")
    try:
        fields = json.loads(header_json)
        header = _header_from(fields, _PREFIX.size + header_len + _HEADER_HASH.size)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"entry header is unreadable: {exc}") from exc
    unknown = [
        f"{name} {value!r}"
        for name, value, known in (
            ("serializer", header.serializer, _SERIALIZER),
            ("compression", header.compression, _COMPRESSION),
            ("checksum", header.checksum, _CHECKSUM),
        )
        if value != known
    ]
    if unknown:
        raise UnsupportedEntry(f"entry uses {', '.join(unknown)}, unknown to this jangdok: upgrade jangdok")
    return header


def check_key(header: EntryHeader, key: str | None) -> None:
    """Raise ForeignEntry if the header names another key than the one being read."""
    if key is not None and header.key is not None and not keys_match(header.key, key):
        raise ForeignEntry(f"the entry read for key {key!r} was written for key {header.key!r}")


def decode(reader: BinaryIO, size: int, key: str | None = None) -> Decoded:
    """Read, verify and deserialize a whole entry from a stream of ``size`` bytes.

    With ``key``, an entry recorded under another key raises ForeignEntry before its payload
    is read or unpickled.

    Knowing the size up front is what lets a damaged length be refused before anything is
    allocated for it, and it makes bytes after the payload a size mismatch.

    Raises CorruptEntry for damage (the caller may delete the entry) and UnsupportedEntry for
    intact entries this process cannot use (the caller must keep them).
    """
    header = read_header(reader)
    if not isinstance(header, EntryHeader):
        return Decoded(_load_legacy(header + reader.read()), None)
    check_key(header, key)
    if size != header.entry_size:
        raise CorruptEntry(
            f"entry is {size} bytes but its header declares {header.entry_size} "
            f"({header.header_size} header + {header.payload_length} payload)"
        )
    payload = _read_exactly(reader, header.payload_length)
    if xxhash.xxh3_128_hexdigest(payload) != header.digest:
        raise CorruptEntry("entry payload checksum mismatch (xxh3_128): the bytes were damaged")
    try:
        value = pickle.loads(payload)
    except _READER_LIMITS:
        raise
    except Exception as exc:
        # The checksum matched: the bytes are what was written, so the failure lies with this
        # reader (a missing module, an older library version). Other machines may read it.
        raise UnsupportedEntry(
            f"entry could not be unpickled here ({type(exc).__name__}: {exc}); its bytes are intact, "
            "so this process probably lacks or has another version of the code that wrote it"
        ) from exc
    return Decoded(value, header)


def _load_legacy(data: bytes) -> Any:
    """A plain pickle as the seed wrote it: no header, no checksum."""
    if not data:
        raise CorruptEntry("entry is empty")
    try:
        return pickle.loads(data)
    except _DAMAGED as exc:
        raise CorruptEntry(f"legacy pickle is damaged: {type(exc).__name__}: {exc}") from exc
    except (ImportError, AttributeError) as exc:
        raise UnsupportedEntry(f"legacy pickle needs code this process lacks: {exc}") from exc
    except _READER_LIMITS:
        raise
    except Exception as exc:
        # Raised by the pickled objects' own code (a __setstate__, a constructor): without a
        # checksum there is no telling damage from a code mismatch, so keep the file.
        raise UnsupportedEntry(f"legacy pickle could not be loaded here ({type(exc).__name__}: {exc})") from exc
