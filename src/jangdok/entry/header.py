"""The entry header: what an entry says about itself, how it is sealed, parsed and checked.

Format version 2, written by this version::

    magic        8 bytes   b"\\x89JDK\\r\\n\\x1a\\n"
    version      u16 BE    2
    header_len   u32 BE    length of the JSON header that follows
    header       JSON      serializer, checksum, digest, payload_length, stream_length, buffers,
                           compressed, mac_length, created_at, metadata, key, expires_at;
                           signed entries add mac ("hmac-sha256"), mac_chunk and key_id
    header_hash  u32 BE    xxh32 of everything before it (magic to JSON header)
    mac          mac_length bytes: HMAC-SHA256, with the key named by key_id, of the bytes from
                 the magic to the end of the JSON header followed by the SHA-256 of each
                 mac_chunk bytes of the payload (0 bytes when unsigned; see jangdok.entry.signing)
    padding      zeros up to a multiple of 64 bytes from the start of the entry
    payload      the pickle-5 stream (stream_length bytes), then each out-of-band buffer at a
                 64-byte aligned offset; ``buffers`` lists their stored lengths in order, and
                 ``compressed`` says how each compressed one was stored

Format version 1, still read: the same prefix, a JSON header (serializer, compression,
payload_length, checksum, digest, created_at, metadata, key), its hash, and a plain pickle.

The magic starts with a non-ASCII byte and contains CR LF, so text-mode mangling is caught,
and it cannot start a pickle (protocol 2+ pickles start with ``\\x80``, older ones with ASCII).
Anything without the magic is read as the seed's plain pickle. Readers ignore header fields
they do not know. The payload and its verified decoding are :mod:`jangdok.entry.format`'s.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import operator
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import xxhash

from ..errors import CorruptEntry, UnsupportedEntry
from . import safe
from .limits import check_containers, cut, shown
from .signing import MAC_ALGORITHM, MAC_CHUNK, MAX_MAC_CHUNK, MIN_MAC_CHUNK

__all__ = ["EntryHeader", "ForeignEntry", "ExpiredEntry", "read_header", "parse_header", "header_size", "check_key",
           "check_size", "time_problem", "keys_match", "FORMAT_VERSION", "MAGIC", "MAX_METADATA_BYTES",
           "HEADER_PROBE_BYTES", "ALIGNMENT"]

MAGIC = b"\x89JDK\r\n\x1a\n"
FORMAT_VERSION = 2
PREFIX = struct.Struct(">8sHI")
HEADER_HASH = struct.Struct(">I")
MAX_METADATA_BYTES = 1 << 20
"""Metadata is for parameters and provenance; large data belongs in the value."""
# A header holds metadata and one small number per out-of-band buffer; a length beyond this
# is damage, not a header.
_MAX_HEADER_BYTES = 16 << 20
# Within that, a header is bounded by what it may hold, before any of it is read: its metadata
# (padded to BYTES_PER_LIST per list and BYTES_PER_OBJECT per object: up to 8 times for runs
# of "{},"), its key and other fields; and per out-of-band buffer, its length and compression
# (under 96 bytes), for a buffer that costs the payload at least ALIGNMENT bytes (the next one
# starts aligned), or 2 bytes for an empty one, which costs the stream 8 ({"$b":0}).
_HEADER_BASE_BYTES = 8 * MAX_METADATA_BYTES + (64 << 10)
_HEADER_BYTES_PER_PAYLOAD_BYTE = 2
_MAX_MAC_BYTES = 64
HEADER_PROBE_BYTES = 64 * 1024
"""How much to fetch to read a header in one request; enough for any normal metadata."""
ALIGNMENT = 64
"""Payload and buffers start at multiples of this, so arrays on a memory map are aligned."""
CHECKSUM = "xxh3_128"
SERIALIZERS = ("pickle", safe.NAME)
ZEROS = bytes(ALIGNMENT)
# Reads go in pieces that stay in the CPU cache while they are hashed.
_READ_CHUNK = 1 << 20
# Versions are small integers; a value beyond this is a damaged field, not a future format.
_MAX_PLAUSIBLE_VERSION = 255
# Times any date function shows in any time zone: 0001-01-02 to 9999-12-30 UTC.
_EARLIEST = datetime.datetime(1, 1, 2, tzinfo=datetime.timezone.utc).timestamp()
_LATEST = datetime.datetime(9999, 12, 30, tzinfo=datetime.timezone.utc).timestamp()


class Stream(Protocol):
    """What an entry is read from: a store's reader, a file, a BytesIO."""

    def read(self, size: int = -1, /) -> bytes | None: ...

    def readinto(self, buffer: Any, /) -> int | None: ...


@dataclass(frozen=True)
class StoredBuffer:
    """Where one out-of-band buffer lies in the payload, and how it was stored."""

    offset: int
    stored_length: int
    compression: Any = None
    """A :class:`jangdok.entry.codec.Compression`, or ``None`` for bytes stored as they are."""


@dataclass(frozen=True)
class EntryHeader:
    version: int
    serializer: str
    compression: str
    """``none``, or the codec of any compressed buffer (``zstd``)."""
    payload_length: int
    checksum: str
    digest: str
    created_at: float
    metadata: dict[str, Any] | None
    header_size: int
    """Bytes before the payload."""
    key: str | None = None
    """The key the entry was written under; ``None`` for entries older than this field."""
    expires_at: float | None = None
    """When the entry stops being a hit (seconds since the epoch); ``None``: never."""
    stream_length: int | None = None
    """Bytes of the pickle stream at the start of the payload; ``None`` in format 1, whose
    payload is all stream."""
    stored_lengths: Sequence[Any] = field(default=(), repr=False)
    """The ``buffers`` field as read: each buffer's stored length, checked only as far as a
    :class:`BufferTable` is asked (after the payload is verified)."""
    compressed: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The ``compressed`` field as read: how each compressed buffer was stored, by index."""
    mac: bytes = field(default=b"", repr=False)
    key_id: str | None = None
    """The id of the signing key that made ``mac``; ``None`` for an unsigned entry."""
    mac_algorithm: str | None = None
    mac_chunk: int = MAC_CHUNK
    sealed: bytes = field(default=b"", repr=False)
    """The header's bytes from the magic to the end of its JSON, which the MAC covers."""

    @property
    def entry_size(self) -> int:
        return self.header_size + self.payload_length

    def metadata_copy(self) -> dict[str, Any] | None:
        """The metadata, for a caller who may change it: headers are shared (see :func:`remember`)."""
        return None if self.metadata is None else _fresh(self.metadata)

    @functools.cached_property
    def buffers(self) -> tuple[StoredBuffer, ...]:
        """Every out-of-band buffer, checked to lie in order within the payload and to fill it;
        raises CorruptEntry or UnsupportedEntry. Loading uses a :class:`BufferTable` instead,
        which builds only what the stream asks for."""
        table = BufferTable(self)
        buffers = tuple(table[index] for index in range(len(table)))
        end = buffers[-1].offset + buffers[-1].stored_length if buffers else (self.stream_length or 0)
        if self.version >= 2 and end != self.payload_length:
            raise CorruptEntry(f"entry header is unreadable: its buffers end at byte {end} of a "
                               f"{self.payload_length}-byte payload")
        return buffers


class BufferTable:
    """Where each out-of-band buffer lies in the payload, worked out only as far as asked.

    A header may declare millions of buffers in a few megabytes of JSON. Building them all as
    the header is read cost a reader seconds and a gigabyte per forged header, before its
    signature was even looked at; so a header is read with O(1) checks, and its table is built
    after the payload is verified, and then only as far as the stream refers to it (each
    buffer costs the stream at least a byte, so the work is bounded by the entry's size).
    """

    def __init__(self, header: EntryHeader) -> None:
        self._lengths = header.stored_lengths
        self._compressed = header.compressed
        self._payload_length = header.payload_length
        self._offsets: list[int] = []
        self._end = header.stream_length or 0

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, index: int) -> StoredBuffer:
        """Buffer ``index`` (0 <= index < len); raises CorruptEntry if the table puts it outside
        the payload, UnsupportedEntry for a compression this version cannot read."""
        if not 0 <= index < len(self._lengths):
            raise IndexError(f"buffer {index} of {len(self._lengths)}")
        while len(self._offsets) <= index:
            at = len(self._offsets)
            length = self._lengths[at]
            if not _is_count(length):
                raise CorruptEntry(f"entry header is unreadable: buffer {at}'s length {shown(length)} is not a "
                                   "byte count")
            offset = align(self._end)
            if offset + length > self._payload_length:
                raise CorruptEntry(f"entry header is unreadable: buffer {at} ends at byte {offset + length} of a "
                                   f"{self._payload_length}-byte payload")
            self._offsets.append(offset)
            self._end = offset + length
        how = self._compressed.get(str(index))
        if how is not None:
            from .codec import Compression

            how = Compression.from_json(how)
        return StoredBuffer(self._offsets[index], self._lengths[index], how)


class ForeignEntry(Exception):
    """An intact entry written for another key: a response that crossed over from another
    request, or a file renamed by hand. Never a value to return, never damage to delete."""


class ExpiredEntry(Exception):
    """An intact entry past its expiry time: a miss, left for prune (or the next put) to replace."""


def keys_match(recorded: str, key: str) -> bool:
    """Whether an entry recorded under ``recorded`` belongs at ``key``: exactly the same key.

    Keys are relative to the cache root an entry was written through, so a cache copied whole
    to another prefix, or from S3 to a folder, stays valid. Matching trailing segments instead
    (as earlier versions did) let anyone who can write the cache replay ``a/b/cfg.pkl``'s
    signed entry as ``b/cfg.pkl``.
    """
    return recorded == key


def align(position: int) -> int:
    return -(-position // ALIGNMENT) * ALIGNMENT


# -- reading -----------------------------------------------------------------------------------


def read_into(reader: Stream, target: memoryview, progress: Any = None, digest: Any = None) -> None:
    """Fill ``target`` (feeding ``digest`` the bytes in order as they arrive, while each piece
    is still in the CPU cache, and calling ``progress(done, size)``) or raise CorruptEntry: the
    store guarantees a short read is real. A reader with a ``fill`` method (a store's
    :class:`~jangdok.stores.Reader`) may fill ``target`` in parallel."""
    size = target.nbytes
    fill = getattr(reader, "fill", None)
    if fill is None and digest is None and progress is None:  # nothing to do as bytes arrive
        done = (reader.readinto(target) or 0) if size <= _READ_CHUNK else 0  # a small entry: whole, in one call
        if done < size:
            done += _fill_in_order(reader, target[done:], None)
    else:
        hashed = 0

        def arrived(filled: int) -> None:
            nonlocal hashed
            if digest is not None:
                digest.update(target[hashed:filled])
            hashed = filled
            if progress is not None:
                progress(filled, size)

        done = fill(target, arrived) if fill is not None else _fill_in_order(reader, target, arrived)
    if done < size:
        raise CorruptEntry(f"entry is truncated: expected {size} bytes, found {done}")


def _fill_in_order(reader: Stream, target: memoryview, arrived: Callable[[int], None] | None) -> int:
    done = 0
    while done < target.nbytes:
        count = reader.readinto(target[done : done + _READ_CHUNK])
        if not count:
            break
        done += count
        if arrived is not None:
            arrived(done)
    return done


def _read_exactly(reader: Stream, size: int) -> bytearray:
    buffer = bytearray(size)
    read_into(reader, memoryview(buffer))
    return buffer


def header_from(version: int, fields: Mapping[str, Any], header_size: int, mac: bytes,
                sealed: bytes = b"") -> EntryHeader:
    """Build a header from its JSON fields, with checks that cost nothing however much the
    fields declare (the buffer table is checked as it is used: :class:`BufferTable`). Raises
    KeyError, TypeError or ValueError if they do not describe a well-formed entry (the
    caller calls that damage)."""
    payload_length = _count(fields["payload_length"], "payload_length")
    stream_length = None
    lengths: Sequence[Any] = ()
    compressed: Mapping[str, Any] = {}
    if version >= 2:
        stream_length = _count(fields["stream_length"], "stream_length")
        lengths = _of(fields["buffers"], list, "buffers")
        compressed = _of(fields.get("compressed") or {}, dict, "compressed")
        if stream_length > payload_length:
            raise ValueError(f"its stream of {stream_length} bytes exceeds its {payload_length}-byte payload")
        # The stream refers to every buffer (a byte at least), and describes each one once.
        if len(lengths) > stream_length or len(compressed) > len(lengths):
            raise ValueError(f"it declares {len(lengths)} buffers ({len(compressed)} compressed) for a "
                             f"{stream_length}-byte stream")
        first = next(iter(compressed.values()), None)
        compression = "none" if first is None else _of(_of(first, dict, "a compression").get("codec"), str, "codec")
    else:
        compression = _of(fields["compression"], str, "compression")
    metadata = fields.get("metadata")
    key = fields.get("key")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key {shown(key)} is not a string")
    key_id = fields.get("key_id") if mac else None
    mac_chunk = fields.get("mac_chunk", MAC_CHUNK) if mac else MAC_CHUNK
    if mac and not isinstance(key_id, str):
        raise TypeError(f"its signature names the key id {shown(key_id)}")
    if not MIN_MAC_CHUNK <= _count(mac_chunk, "mac_chunk") <= MAX_MAC_CHUNK:
        raise ValueError(f"mac_chunk {shown(mac_chunk)} is out of range")
    return EntryHeader(
        version=version,
        serializer=_of(fields["serializer"], str, "serializer"),
        compression=compression,
        payload_length=payload_length,
        checksum=_of(fields["checksum"], str, "checksum"),
        digest=_of(fields["digest"], str, "digest"),
        created_at=_seconds(fields["created_at"], "created_at"),
        metadata=_of(metadata, dict, "metadata") if metadata is not None else None,
        header_size=header_size,
        key=key,
        expires_at=None if fields.get("expires_at") is None else _seconds(fields["expires_at"], "expires_at"),
        stream_length=stream_length,
        stored_lengths=lengths,
        compressed=compressed,
        mac=mac,
        key_id=key_id,
        mac_algorithm=_of(fields.get("mac"), str, "mac") if mac else None,
        mac_chunk=mac_chunk,
        sealed=sealed,
    )


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # JSON's integers; bool, an int subclass, is refused


def _count(value: Any, name: str) -> int:
    """A byte count from a header: a non-negative JSON integer, nothing else."""
    if type(value) is not int or value < 0:  # as _is_count, inline: headers have several
        raise ValueError(f"{name} {shown(value)} is not a byte count")
    return value


def _seconds(value: Any, name: str) -> float:
    """A time from a header: a JSON number (seconds since the epoch) that dates can show."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} {shown(value)} is not a number")
    problem = time_problem(value)
    if problem is not None:
        raise ValueError(f"{name} {problem}")
    return float(value)


def time_problem(seconds: float) -> str | None:
    """Why a time cannot be in a header, ``None`` if it can: it must be a date in years 1 to 9999
    (JSON's 1e999 reads as infinity; stat, ls and expiry compute dates from these times)."""
    if not _EARLIEST <= seconds <= _LATEST:  # NaN too
        return (f"{shown(seconds)} is not a time between years 1 and 9999 "
                f"({_EARLIEST:.0f} to {_LATEST:.0f} seconds since the epoch)")
    return None


# Headers this process parsed or wrote, by their sealed bytes and hash (see remember()): up to
# _PARSED_MAX of them, each from at most _PARSED_MAX_BYTES (a few MB in all).
_PARSED: dict[bytes, EntryHeader] = {}
_PARSED_MAX = 1024
_PARSED_MAX_BYTES = 2048


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")  # writers never write NaN or Infinity


# Made once: json.loads with an option builds a decoder (and its scanner) on every call.
_JSON = json.JSONDecoder(parse_constant=_no_constant)
# What this version reads in a header's serializer, compression, checksum and signature fields.
_KNOWN_FIELDS = ("serializer", "compression", "checksum", "signature")
_KNOWN = (frozenset(SERIALIZERS), frozenset({"none", "zstd"}), frozenset({CHECKSUM}), frozenset({None, MAC_ALGORITHM}))
# Format 1 never compressed; a v1 header that says so is not one this code wrote.
_KNOWN_IN_FORMAT_1 = (frozenset({"pickle"}), frozenset({"none"}), *_KNOWN[2:])


def _of(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{name} {shown(value)} is a {type(value).__name__}, not a {kind.__name__}")
    return value



def header_size(start: bytes) -> int | None:
    """Bytes enough to parse a header, from an entry's first bytes; ``None`` if they hold no
    complete prefix or no magic. Lets a reader fetch the header and little more."""
    if len(start) < PREFIX.size or not start.startswith(MAGIC):
        return None
    _, _, header_len = PREFIX.unpack_from(start)
    return PREFIX.size + min(header_len, _MAX_HEADER_BYTES) + HEADER_HASH.size + _MAX_MAC_BYTES + ALIGNMENT


def read_header(reader: Stream, size: int | None = None) -> EntryHeader | bytes:
    """Parse a header from the start of a stream, leaving the stream at the payload.

    ``size``, the whole entry's (when known), bounds what the header may declare before any of
    it is read. Returns the header, or the bytes already consumed if the stream holds no magic
    (a legacy plain pickle), so the caller can go on reading it. Raises CorruptEntry or
    UnsupportedEntry.
    """
    start = bytearray()
    while len(start) < PREFIX.size:
        chunk = reader.read(PREFIX.size - len(start))
        if not chunk:
            break
        start += chunk
        if not MAGIC.startswith(bytes(start[: len(MAGIC)])):
            return bytes(start)
    if len(start) < PREFIX.size:
        if MAGIC.startswith(bytes(start)) and start:
            raise CorruptEntry(f"entry is truncated inside its header ({len(start)} bytes)")
        return bytes(start)
    version, header_len = _prefix(bytes(start), size)
    rest = _read_exactly(reader, header_len + HEADER_HASH.size)
    return _header(bytes(start), rest, version, lambda length: _read_exactly(reader, length))


def parse_header(view: memoryview) -> EntryHeader | None:
    """The header of an entry held whole in memory, parsed and checked as :func:`read_header`
    does from a stream, copying only the header's own bytes; ``None`` if the entry does not
    start with a complete prefix and the magic (a legacy plain pickle)."""
    start = bytes(view[: PREFIX.size])
    if len(start) < PREFIX.size or not start.startswith(MAGIC):
        return None
    parsed = PREFIX.size + PREFIX.unpack(start)[2] + HEADER_HASH.size
    if parsed <= _PARSED_MAX_BYTES:  # a hot entry's header: found by its bytes, so its MAC alone is new
        kept = _PARSED.get(bytes(view[:parsed]))
        if kept is not None and view.nbytes >= kept.header_size:
            mac = bytes(view[parsed : parsed + len(kept.mac)])
            return kept if mac == kept.mac else dataclasses.replace(kept, mac=mac)
    version, header_len = _prefix(start, view.nbytes)
    return _header(start, _taken(view, PREFIX.size, parsed), version,
                   lambda length: _taken(view, parsed, parsed + length))


def _taken(view: memoryview, begin: int, end: int) -> memoryview:
    """``view[begin:end]``, or CorruptEntry as a stream that ends early says it."""
    piece = view[begin:end]
    if piece.nbytes < end - begin:
        raise CorruptEntry(f"entry is truncated: expected {end - begin} bytes, found {piece.nbytes}")
    return piece


def _prefix(start: bytes, size: int | None) -> tuple[int, int]:
    """The format version and JSON header length a prefix declares, checked against ``size``."""
    _, version, header_len = PREFIX.unpack(start)
    room = _MAX_HEADER_BYTES
    if size is not None:
        after = size - PREFIX.size - HEADER_HASH.size - header_len  # what the rest of the entry holds
        room = min(room, header_len + after, _HEADER_BASE_BYTES + _HEADER_BYTES_PER_PAYLOAD_BYTE * after)
    if version < 1 or version > _MAX_PLAUSIBLE_VERSION or header_len > room:
        raise CorruptEntry(f"entry header is damaged (version {version}, header length {header_len}"
                           + (f", in an entry of {size} bytes)" if size is not None else ")"))
    if version > FORMAT_VERSION:
        raise UnsupportedEntry(
            f"entry uses format version {version}; this jangdok reads up to {FORMAT_VERSION}: upgrade jangdok"
        )
    return version, header_len


def _header(start: bytes, rest: bytearray | memoryview, version: int,
            read_lead: Callable[[int], bytearray | memoryview]) -> EntryHeader:
    """The header from its prefix and what follows it (the JSON and its hash); ``read_lead(n)``
    gives the ``n`` bytes after those (the MAC and the padding)."""
    header_len = len(rest) - HEADER_HASH.size
    kept = _PARSED.get(start + bytes(rest)) if len(start) + len(rest) <= _PARSED_MAX_BYTES else None
    if kept is not None:
        parsed = len(start) + len(rest)
        mac = bytes(read_lead(kept.header_size - parsed)[: len(kept.mac)]) if kept.header_size > parsed else b""
        return kept if mac == kept.mac else dataclasses.replace(kept, mac=mac)
    header_json = bytes(rest[:header_len])
    (expected,) = HEADER_HASH.unpack_from(rest, header_len)
    sealed = start + header_json
    if xxhash.xxh32_intdigest(sealed) != expected:
        raise CorruptEntry("entry header checksum mismatch")
    parsed = len(sealed) + HEADER_HASH.size
    check_containers(header_json, "entry header")
    try:
        # UTF-8, as every writer wrote it (json.loads would also guess UTF-16 and -32 from NULs),
        # and no whitespace before it: only after it, where padding goes.
        text = header_json.decode("utf-8", "surrogatepass")
        fields, end = _JSON.raw_decode(text)
        if text[end:].strip(" \t\n\r"):
            raise ValueError(f"its JSON is followed by more than spaces, at character {end}")
        fields = _of(fields, dict, "the header")
        mac_length = _count(fields.get("mac_length", 0), "mac_length") if version >= 2 else 0
        if mac_length > _MAX_MAC_BYTES:
            raise ValueError(f"mac_length {mac_length} is out of range")
        lead_size = align(parsed + mac_length) if version >= 2 else parsed
        mac = bytes(read_lead(lead_size - parsed)[:mac_length]) if lead_size > parsed else b""
        header = header_from(version, fields, lead_size, mac, sealed)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise CorruptEntry(f"entry header is unreadable: {cut(str(exc))}") from exc
    except MemoryError as exc:  # this reader's limit, not damage: kept for others
        raise UnsupportedEntry(f"entry header of {header_len:,} bytes could not be parsed here: not enough "
                               "memory; it was kept") from exc
    values = (header.serializer, header.compression, header.checksum, header.mac_algorithm)
    known = _KNOWN if header.version >= 2 else _KNOWN_IN_FORMAT_1
    if not all(map(operator.contains, known, values)):
        unknown = [f"{name} {shown(value)}" for name, value, allowed in zip(_KNOWN_FIELDS, values, known, strict=True)
                   if value not in allowed]
        raise UnsupportedEntry(f"entry uses {', '.join(unknown)}, unknown to this jangdok: upgrade jangdok")
    remember(sealed + bytes(rest[header_len:]), header)
    return header


def remember(sealed_and_hash: bytes, header: EntryHeader) -> None:
    """Keep ``header`` as what the sealed header bytes followed by their hash parse to (its MAC,
    which follows them, is compared on every read): written or read by this process, a hot
    entry's header is then never parsed again. Parsing is a pure function of those bytes, so
    the header found is exactly the one parsing would build; its ``metadata`` is shared, so
    whatever hands it out copies it (:meth:`EntryHeader.metadata_copy`)."""
    if len(sealed_and_hash) > _PARSED_MAX_BYTES:
        return
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[sealed_and_hash] = header


def _fresh(value: Any) -> Any:
    """A copy of JSON data (a header's metadata) that shares no list or dict with it."""
    if isinstance(value, dict):
        return {name: _fresh(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_fresh(item) for item in value]
    return value


# -- checks before the payload is read ---------------------------------------------------------


def check_key(header: EntryHeader, key: str | None) -> None:
    """Raise ForeignEntry if the header names another key than the one being read, or is signed
    without naming one (older unsigned entries, from before keys were recorded, name none)."""
    if key is None:
        return
    if header.key is None and header.mac:
        raise ForeignEntry(f"the entry read for key {key!r} is signed but names no key, so it could be anyone's")
    if header.key is not None and not keys_match(header.key, key):
        raise ForeignEntry(f"the entry read for key {key!r} was written for key {shown(header.key, 300)}")


def check_usable(header: EntryHeader, key: str | None, now: float | None = None) -> None:
    """Before any payload is read: the entry is this key's, and has not expired at ``now``
    (default: the current time)."""
    if key is not None and header.key != key:
        check_key(header, key)
    if header.expires_at is not None and header.expires_at <= (time.time() if now is None else now):
        raise ExpiredEntry(f"the entry expired at {header.expires_at:.0f} (seconds since the epoch)")


def check_size(header: EntryHeader, size: int) -> None:
    """Raise CorruptEntry unless the stored entry is exactly as long as its header declares."""
    if size != header.header_size + header.payload_length:  # entry_size, without a call on every load
        raise CorruptEntry(
            f"entry is {size} bytes but its header declares {header.entry_size} "
            f"({header.header_size} header + {header.payload_length} payload)"
        )
