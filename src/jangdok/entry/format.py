"""The entry format: a short self-describing header, then the serialized payload.

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

Numpy arrays (and anything else that offers pickle-5 buffers) travel out of band: their bytes
are written from the arrays themselves and read back into one buffer that the loaded arrays
then share, so a save makes no copy of the payload and a load exactly one (none with a memory
map). The digest covers the whole payload, padding included. Buffers under 4 KB stay in the
stream, where a table entry and padding would cost more than they save.

Format version 1, still read: the same prefix, a JSON header (serializer, compression,
payload_length, checksum, digest, created_at, metadata, key), its hash, and a plain pickle.

The magic starts with a non-ASCII byte and contains CR LF, so text-mode mangling is caught,
and it cannot start a pickle (protocol 2+ pickles start with ``\\x80``, older ones with ASCII).
Anything without the magic is read as the seed's plain pickle. The payload digest is xxh3-128:
non-cryptographic but it detects truncation and bit flips at memory speed. Against tampering,
a reader holding signing keys (:mod:`jangdok.entry.signing`) also requires a valid MAC, checked
with the digest before anything is unpickled or decompressed: damage fails the digest (and may
be deleted), a forgery or another team's key fails only the MAC (and is kept). Readers ignore
header fields they do not know.
"""

from __future__ import annotations

import datetime
import hmac
import io
import json
import mmap
import pickle
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import xxhash

from ..errors import CorruptEntry, InvalidValue, UnsupportedEntry, UntrustedEntry
from . import safe
from .signing import (
    MAC_ALGORITHM,
    MAC_CHUNK,
    MAC_LENGTH,
    MAX_MAC_CHUNK,
    MIN_MAC_CHUNK,
    PieceDigests,
    Trust,
    payload_mac,
)

__all__ = ["EntryHeader", "Decoded", "ForeignEntry", "ExpiredEntry", "Progress", "encode", "decode", "decode_buffer",
           "read_header", "header_size", "check_key", "check_size", "keys_match", "verify", "FORMAT_VERSION", "MAGIC",
           "MAX_METADATA_BYTES", "HEADER_PROBE_BYTES", "ALIGNMENT"]

MAGIC = b"\x89JDK\r\n\x1a\n"
FORMAT_VERSION = 2
_PREFIX = struct.Struct(">8sHI")
_HEADER_HASH = struct.Struct(">I")
MAX_METADATA_BYTES = 1 << 20
"""Metadata is for parameters and provenance; large data belongs in the value."""
# A header holds metadata and one small number per out-of-band buffer; a length beyond this
# is damage, not a header.
_MAX_HEADER_BYTES = 16 << 20
_MAX_MAC_BYTES = 64
HEADER_PROBE_BYTES = 64 * 1024
"""How much to fetch to read a header in one request; enough for any normal metadata."""
ALIGNMENT = 64
"""Payload and buffers start at multiples of this, so arrays on a memory map are aligned."""
_SMALLEST_OUT_OF_BAND = 4096
# Reads go in pieces that stay in the CPU cache while they are hashed.
_READ_CHUNK = 1 << 20
# Below this a plain bytearray; above it an anonymous map populated by the kernel in one call:
# a bytearray's memset, or faulting pages in one by one as the read touches them, each cost
# ~15 ms more for 50 MB (measured on a VM, where page faults are dear).
_MAPPED_ALLOCATION = 1 << 20
# Entries up to this size are read whole in one call, rather than header and payload apart.
_WHOLE_READ = 256 * 1024
_POPULATED = (mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE) if hasattr(mmap, "MAP_POPULATE") else None
_CHECKSUM = "xxh3_128"
_SERIALIZERS = ("pickle", safe.NAME)
_ZEROS = bytes(ALIGNMENT)

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) as a large entry is read."""

# Unpickling damaged bytes can fail in many ways. Without a checksum (legacy pickles) these
# are taken to mean the bytes are bad; ImportError and AttributeError never are: they mean the
# code changed, not the data. MemoryError and RecursionError are the reader's own limits.
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError,
            OverflowError, UnicodeDecodeError, struct.error)
_READER_LIMITS = (MemoryError, RecursionError)
# Versions are small integers; a value beyond this is a damaged field, not a future format.
_MAX_PLAUSIBLE_VERSION = 255


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
    buffers: tuple[StoredBuffer, ...] = ()
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


def _align(position: int) -> int:
    return -(-position // ALIGNMENT) * ALIGNMENT


def _json_default(value: Any) -> Any:
    """What numpy users put in metadata: numpy scalars become numbers, times ISO strings."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():  # a numpy scalar or 0-d array
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _to_json(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, ensure_ascii=False, sort_keys=True, allow_nan=False, separators=(",", ":"),
                      default=_json_default).encode("utf-8")


def _metadata(metadata: Mapping[str, Any] | None, key: str | None) -> Any:
    """Metadata as every reader will see it (JSON types), checked for type and size."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidValue(f"metadata must be a mapping such as a dict, got {type(metadata).__name__}")
    where = f" for key {key!r}" if key else ""
    try:
        text = _to_json(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise InvalidValue(
            f"entry metadata{where} must be JSON-serializable (str, int, float, bool, None, lists, dicts, "
            f"numpy scalars, datetimes): {exc}"
        ) from exc
    if len(text) > MAX_METADATA_BYTES:
        raise InvalidValue(f"entry metadata{where} is {len(text)} bytes as JSON; the limit is "
                           f"{MAX_METADATA_BYTES}: store large data in the value, not in its metadata")
    return json.loads(text)


def _pickle(value: Any, key: str | None) -> tuple[bytes, list[tuple[memoryview, int]]]:
    """The pickle-5 stream and the buffers it left out of band (contiguous, >= 4 KB), each
    as raw bytes with its item size."""
    where = f" under key {key!r}" if key else ""
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        with buffer.raw() as raw:
            if raw.nbytes < _SMALLEST_OUT_OF_BAND:
                return True  # true means: keep it in the stream
        buffers.append(buffer)
        return False

    try:
        stream = pickle.dumps(value, protocol=5, buffer_callback=out_of_band)
        return stream, [(buffer.raw(), memoryview(buffer).itemsize) for buffer in buffers]
    except RecursionError as exc:
        raise InvalidValue(f"value{where} is nested too deeply to pickle ({type(value).__name__}); "
                           "flatten it or store its parts under separate keys") from exc
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise InvalidValue(f"value{where} of type {type(value).__name__} cannot be pickled: {exc}; "
                           "store plain data (numbers, strings, lists, dicts, arrays) instead") from exc


def _compressor(compression: str) -> Callable[[memoryview, int], Any] | None:
    if compression == "none":
        return None
    from . import codec  # only entries written with compression need it

    return codec.compress


def encode(value: Any, metadata: Mapping[str, Any] | None = None, created_at: float | None = None,
           key: str | None = None, compression: str = "none", expires_at: float | None = None,
           serializer: str = "pickle", trust: Trust | None = None) -> tuple[EntryHeader, list[bytes | memoryview]]:
    """Serialize a value into entry chunks, ready for ``Store.write``.

    The chunks are views of the value's own arrays, not copies: keep the value unchanged until
    they are written. ``key`` is recorded so that a reader can tell an entry that reached it by
    mistake. ``compression`` is ``none`` or ``zstd``; ``serializer`` is ``pickle`` or ``safe``
    (:mod:`jangdok.entry.safe`). With signing keys in ``trust``, the entry is signed with the first.
    Raises InvalidValue for a value the serializer cannot store, or metadata that is not a
    mapping, not JSON or too large; nothing is written then.
    """
    stored_metadata = _metadata(metadata, key)
    stream, buffers = safe.dumps(value, key) if serializer == safe.NAME else _pickle(value, key)
    compress = _compressor(compression)
    payload: list[bytes | memoryview] = [stream]
    lengths: list[int] = []
    compressed: dict[str, Any] = {}
    position = len(stream)
    for index, (raw, itemsize) in enumerate(buffers):
        padding = _align(position) - position
        if padding:
            payload.append(_ZEROS[:padding])
            position += padding
        stored: bytes | memoryview = raw
        if compress is not None:
            done = compress(stored, itemsize)
            if done is not None:
                stored, how = done
                compressed[str(index)] = how.to_json()
        payload.append(stored)
        lengths.append(len(stored) if isinstance(stored, bytes) else stored.nbytes)
        position += lengths[-1]
    signer = trust.signer if trust is not None and trust.signing else None
    pieces = PieceDigests(MAC_CHUNK) if signer is not None else None
    digest = xxhash.xxh3_128()
    for chunk in payload:
        digest.update(chunk)
        if pieces is not None:  # threads hash the pieces meanwhile
            pieces.update(chunk)
    fields: dict[str, Any] = {
        "serializer": serializer,
        "checksum": _CHECKSUM,
        "digest": digest.hexdigest(),
        "payload_length": position,
        "stream_length": len(stream),
        "buffers": lengths,
        "compressed": compressed,
        "mac_length": 0,
        "created_at": time.time() if created_at is None else created_at,
        "metadata": stored_metadata,
    }
    if key is not None:
        fields["key"] = key
    if expires_at is not None:
        fields["expires_at"] = expires_at
    if signer is not None:
        fields.update(mac=MAC_ALGORITHM, mac_chunk=MAC_CHUNK, key_id=signer[0], mac_length=MAC_LENGTH)
    header_json = _to_json(fields)
    sealed = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_json)) + header_json
    mac = b"" if signer is None or pieces is None else payload_mac(signer[1], sealed, pieces)
    lead = sealed + _HEADER_HASH.pack(xxhash.xxh32_intdigest(sealed)) + mac
    lead += _ZEROS[: _align(len(lead)) - len(lead)]
    header = _header_from(FORMAT_VERSION, fields, len(lead), mac, sealed)
    return header, [lead, *payload]


def _header_from(version: int, fields: Mapping[str, Any], header_size: int, mac: bytes,
                 sealed: bytes = b"") -> EntryHeader:
    """Build a header from its JSON fields; raises KeyError, TypeError or ValueError if they
    do not describe a well-formed entry (the caller calls that damage)."""
    payload_length = _count(fields["payload_length"], "payload_length")
    stream_length = None
    buffers: tuple[StoredBuffer, ...] = ()
    compression = "none"
    if version >= 2:
        stream_length = _count(fields["stream_length"], "stream_length")
        buffers = _buffer_table(stream_length, fields["buffers"], fields.get("compressed") or {})
        end = buffers[-1].offset + buffers[-1].stored_length if buffers else stream_length
        if not 0 <= stream_length <= end == payload_length:
            raise ValueError(f"its buffers end at byte {end} of a {payload_length}-byte payload")
        compression = next((b.compression.codec for b in buffers if b.compression is not None), "none")
    else:
        compression = fields["compression"]
    key = fields.get("key")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key {key!r} is not a string")
    key_id = fields.get("key_id") if mac else None
    mac_chunk = fields.get("mac_chunk", MAC_CHUNK) if mac else MAC_CHUNK
    if mac and not isinstance(key_id, str):
        raise TypeError(f"its signature names the key id {key_id!r}")
    if not MIN_MAC_CHUNK <= _count(mac_chunk, "mac_chunk") <= MAX_MAC_CHUNK:
        raise ValueError(f"mac_chunk {mac_chunk} is out of range")
    return EntryHeader(
        version=version,
        serializer=fields["serializer"],
        compression=compression,
        payload_length=payload_length,
        checksum=fields["checksum"],
        digest=fields["digest"],
        created_at=float(fields["created_at"]),
        metadata=fields.get("metadata"),
        header_size=header_size,
        key=key,
        expires_at=None if fields.get("expires_at") is None else float(fields["expires_at"]),
        stream_length=stream_length,
        buffers=buffers,
        mac=mac,
        key_id=key_id,
        mac_algorithm=fields.get("mac") if mac else None,
        mac_chunk=mac_chunk,
        sealed=sealed,
    )


def _count(value: Any, name: str) -> int:
    """A byte count from a header: a non-negative JSON integer, nothing else."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} {value!r} is not a byte count")
    return value


def _buffer_table(stream_length: int, lengths: list[int], compressed: Mapping[str, Any]) -> tuple[StoredBuffer, ...]:
    table = []
    position = stream_length
    for index, length in enumerate(lengths):
        _count(length, f"buffer {index}'s length")
        position = _align(position)
        how = compressed.get(str(index))
        if how is not None:
            from .codec import Compression

            how = Compression.from_json(how)
        table.append(StoredBuffer(position, length, how))
        position += length
    return tuple(table)


def _allocate(size: int) -> bytearray | mmap.mmap:
    """A writable buffer of ``size`` bytes whose contents are about to be overwritten."""
    if size < _MAPPED_ALLOCATION:
        return bytearray(size)
    if _POPULATED is not None:
        return mmap.mmap(-1, size, flags=_POPULATED)
    return mmap.mmap(-1, size)


def _read_into(reader: BinaryIO, target: memoryview, progress: Progress | None = None,
               digest: Any = None) -> None:
    """Fill ``target`` (feeding ``digest`` as it goes, while each piece is still in the CPU
    cache) or raise CorruptEntry: the store guarantees a short read is real."""
    size = target.nbytes
    done = 0
    while done < size:
        piece = target[done : done + min(_READ_CHUNK, size - done)]
        count = reader.readinto(piece)
        if not count:
            raise CorruptEntry(f"entry is truncated: expected {size} bytes, found {done}")
        if digest is not None:
            digest.update(piece[:count])
        done += count
        if progress is not None:
            progress(done, size)


def _read_exactly(reader: BinaryIO, size: int) -> bytearray:
    buffer = bytearray(size)
    _read_into(reader, memoryview(buffer))
    return buffer


def header_size(start: bytes) -> int | None:
    """Bytes enough to parse a header, from an entry's first bytes; ``None`` if they hold no
    complete prefix or no magic. Lets a reader fetch the header and little more."""
    if len(start) < _PREFIX.size or not start.startswith(MAGIC):
        return None
    _, _, header_len = _PREFIX.unpack_from(start)
    return _PREFIX.size + min(header_len, _MAX_HEADER_BYTES) + _HEADER_HASH.size + _MAX_MAC_BYTES + ALIGNMENT


def read_header(reader: BinaryIO) -> EntryHeader | bytes:
    """Parse a header from the start of a stream, leaving the stream at the payload.

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
    if version < 1 or version > _MAX_PLAUSIBLE_VERSION or header_len > _MAX_HEADER_BYTES:
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
    parsed = _PREFIX.size + header_len + _HEADER_HASH.size
    try:
        fields = json.loads(header_json)
        mac_length = int(fields.get("mac_length", 0)) if version >= 2 else 0
        if not 0 <= mac_length <= _MAX_MAC_BYTES:
            raise ValueError(f"mac_length {mac_length}")
        size = _align(parsed + mac_length) if version >= 2 else parsed
        mac = bytes(_read_exactly(reader, size - parsed)[:mac_length]) if size > parsed else b""
        header = _header_from(version, fields, size, mac, bytes(start) + header_json)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise CorruptEntry(f"entry header is unreadable: {exc}") from exc
    unknown = [
        f"{name} {value!r}"
        for name, value, known in (
            ("serializer", header.serializer, set(_SERIALIZERS) if header.version >= 2 else {"pickle"}),
            # Format 1 never compressed; a v1 header that says so is not one this code wrote.
            ("compression", header.compression, {"none", "zstd"} if header.version >= 2 else {"none"}),
            ("checksum", header.checksum, {_CHECKSUM}),
            ("signature", header.mac_algorithm, {None, MAC_ALGORITHM}),
        )
        if value not in known
    ]
    if unknown:
        raise UnsupportedEntry(f"entry uses {', '.join(unknown)}, unknown to this jangdok: upgrade jangdok")
    return header


class _Both:
    """Feeds each piece read to two digests."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def update(self, piece: memoryview) -> None:
        self.first.update(piece)
        self.second.update(piece)


class ExpiredEntry(Exception):
    """An intact entry past its expiry time: a miss, left for prune (or the next put) to replace."""


def check_key(header: EntryHeader, key: str | None) -> None:
    """Raise ForeignEntry if the header names another key than the one being read."""
    if key is not None and header.key is not None and not keys_match(header.key, key):
        raise ForeignEntry(f"the entry read for key {key!r} was written for key {header.key!r}")


def _check_usable(header: EntryHeader, key: str | None, now: float | None) -> None:
    """Before any payload is read: the entry is this key's, and has not expired."""
    check_key(header, key)
    if header.expires_at is not None and header.expires_at <= (time.time() if now is None else now):
        raise ExpiredEntry(f"the entry expired at {header.expires_at:.0f} (seconds since the epoch)")


def check_size(header: EntryHeader, size: int) -> None:
    """Raise CorruptEntry unless the stored entry is exactly as long as its header declares."""
    if size != header.entry_size:
        raise CorruptEntry(
            f"entry is {size} bytes but its header declares {header.entry_size} "
            f"({header.header_size} header + {header.payload_length} payload)"
        )


def decode(reader: BinaryIO, size: int, key: str | None = None, progress: Progress | None = None,
           trust: Trust | None = None, now: float | None = None) -> Decoded:
    """Read, verify and deserialize a whole entry from a stream of ``size`` bytes.

    The payload is read once, into one buffer that the loaded arrays then share. With
    ``key``, an entry recorded under another key raises ForeignEntry before its payload is
    read, and one expired at ``now`` (default: the current time) raises ExpiredEntry. Knowing
    the size up front is what lets a damaged length be refused before anything is allocated
    for it, and it makes bytes after the payload a size mismatch.

    Raises CorruptEntry for damage (the caller may delete the entry), UnsupportedEntry for
    intact entries this process cannot use, and UntrustedEntry, before anything is unpickled,
    for entries ``trust`` does not vouch for (the caller must keep both).
    """
    if size <= _WHOLE_READ:  # one read call, then parsed in memory: small entries are latency
        whole = memoryview(bytearray(size))
        _read_into(reader, whole, progress)
        return decode_buffer(whole, key, trust, now)
    header = read_header(reader)
    if not isinstance(header, EntryHeader):
        return Decoded(_load_legacy(header + reader.read(), trust), None)
    _check_usable(header, key, now)
    signature = _signature(header, trust)
    check_size(header, size)
    payload, digest = _read_payload(reader, header, progress, signature)
    return Decoded(_materialize(header, payload, digest, signature), header)


def _read_payload(reader: BinaryIO, header: EntryHeader, progress: Progress | None,
                  signature: _Verifier | None) -> tuple[memoryview, str]:
    """The payload, read into one buffer, and its checksum computed as it arrived; threads
    hash its pieces for the signature meanwhile."""
    payload = memoryview(_allocate(header.payload_length))
    digest = xxhash.xxh3_128()
    _read_into(reader, payload, progress, digest if signature is None else _Both(digest, signature))
    return payload, digest.hexdigest()


def verify(reader: BinaryIO, size: int, key: str | None = None, trust: Trust | None = None) -> EntryHeader | None:
    """Check a whole entry as :func:`decode` would (checksum, key, signature with ``trust``)
    without deserializing it, so nothing of it runs. ``None`` for a legacy plain pickle, which
    has nothing to check. Raises as :func:`decode` does; expiry is not judged."""
    header = read_header(reader)
    if not isinstance(header, EntryHeader):
        return None
    check_key(header, key)
    signature = _signature(header, trust)
    check_size(header, size)
    _check_payload(header, _read_payload(reader, header, None, signature)[1], signature)
    return header


def decode_buffer(view: memoryview, key: str | None = None, trust: Trust | None = None,
                  now: float | None = None) -> Decoded:
    """Verify and deserialize an entry held whole in memory (read whole, or a memory-mapped
    file): the loaded arrays are views of it, so nothing is copied."""
    needed = header_size(bytes(view[: _PREFIX.size]))
    if needed is None:
        return Decoded(_load_legacy(view, trust), None)
    header = read_header(io.BytesIO(view[:needed]))  # a copy of the header only
    if not isinstance(header, EntryHeader):  # cannot happen: the magic was checked above
        raise CorruptEntry("entry header is unreadable")
    _check_usable(header, key, now)
    signature = _signature(header, trust)
    check_size(header, view.nbytes)
    payload = view[header.header_size :]
    if signature is not None:
        signature.update(payload)
    return Decoded(_materialize(header, payload, None, signature), header)


class _Verifier:
    """Checks one entry's MAC: fed the payload as it is read, judged before deserializing."""

    def __init__(self, key: bytes, header: EntryHeader) -> None:
        self._key = key
        self._header = header
        self._pieces = PieceDigests(header.mac_chunk)

    def update(self, piece: memoryview) -> None:
        self._pieces.update(piece)

    def matches(self) -> bool:
        return hmac.compare_digest(payload_mac(self._key, self._header.sealed, self._pieces), self._header.mac)


def _signature(header: EntryHeader, trust: Trust | None) -> _Verifier | None:
    """For a reader with signing keys, the verifier of this entry's MAC; raises UntrustedEntry
    for an unsigned entry or one signed with a key the reader does not hold."""
    if trust is None or not trust.signing:
        return None
    if not header.mac:
        raise UntrustedEntry(f"entry is not signed, and this cache requires a signature by one of its keys "
                             f"(key ids {', '.join(trust.ids)}); it was written without JANGDOK_SIGNING_KEY")
    key = trust.key(header.key_id or "")
    if key is None:
        raise UntrustedEntry(f"entry is signed with key id {header.key_id}, which this cache does not hold "
                             f"(it holds {', '.join(trust.ids)}); add that key to JANGDOK_SIGNING_KEY to trust it")
    return _Verifier(key, header)


def _check_payload(header: EntryHeader, digest: str, signature: _Verifier | None) -> None:
    """Damage first (it may be deleted), then the signature (a mismatch is kept)."""
    if digest != header.digest:
        raise CorruptEntry("entry payload checksum mismatch (xxh3_128): the bytes were damaged")
    if signature is not None and not signature.matches():
        raise UntrustedEntry(f"entry signature does not match its bytes (key id {header.key_id}): it was "
                             "changed or forged by someone without the key; nothing of it was loaded")


def _materialize(header: EntryHeader, payload: memoryview, digest: str | None = None,
                 signature: _Verifier | None = None) -> Any:
    """The value of a payload whose header has been checked: verify (unless ``digest`` was
    computed as it was read) and check its signature (fed the payload by the caller), then
    deserialize."""
    _check_payload(header, digest or xxhash.xxh3_128_hexdigest(payload), signature)
    stream = payload if header.stream_length is None else payload[: header.stream_length]
    buffers = [_buffer(payload, stored) for stored in header.buffers]
    if header.serializer == safe.NAME:
        return safe.loads(stream, buffers)
    try:
        return pickle.loads(stream, buffers=buffers)
    except _READER_LIMITS:
        raise
    except Exception as exc:
        # The checksum matched: the bytes are what was written, so the failure lies with this
        # reader (a missing module, an older library version). Other machines may read it.
        raise UnsupportedEntry(
            f"entry could not be unpickled here ({type(exc).__name__}: {exc}); its bytes are intact, "
            "so this process probably lacks or has another version of the code that wrote it"
        ) from exc


def _buffer(payload: memoryview, stored: StoredBuffer) -> memoryview:
    view = payload[stored.offset : stored.offset + stored.stored_length]
    if stored.compression is None:
        return view
    from .codec import check_frame, decompress_into

    check_frame(view, stored.compression)  # before allocating what the description claims
    target = memoryview(_allocate(stored.compression.length))
    decompress_into(view, stored.compression, target)
    return target


def _load_legacy(data: bytes | memoryview, trust: Trust | None = None) -> Any:
    """A plain pickle as the seed wrote it: no header, no checksum."""
    if not len(data):
        raise CorruptEntry("entry is empty")
    if trust is not None and trust.signing and not trust.allow_legacy:
        raise UntrustedEntry("entry is a plain pickle (no jangdok header), which cannot carry a signature, and "
                             "this cache requires signed entries; if you trust whoever wrote it, set "
                             "JANGDOK_ALLOW_LEGACY=1 (allow_legacy=True) to load plain pickles")
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
