"""The payload: how a value becomes an entry's bytes, and how they are verified and loaded.

An entry is a header (:mod:`jangdok.entry.header`) followed by the payload: the serializer's
stream (pickle 5, or :mod:`jangdok.entry.safe`'s JSON skeleton), then its out-of-band buffers.
Numpy arrays (and anything else that offers pickle-5 buffers) travel out of band: their bytes
are written from the arrays themselves and read back into one buffer that the loaded arrays
then share, so a save makes no copy of the payload and a load exactly one (none with a memory
map). The digest covers the whole payload, padding included. Buffers under 4 KB stay in the
stream, where a table entry and padding would cost more than they save.

The payload digest is xxh3-128: non-cryptographic but it detects truncation and bit flips at
memory speed. Against tampering, a reader holding signing keys (:mod:`jangdok.entry.signing`)
also requires a valid MAC, checked with the digest before anything is unpickled or
decompressed: damage fails the digest (and may be deleted), a forgery or another team's key
fails only the MAC (and is kept).
"""

from __future__ import annotations

import hmac
import mmap
import numbers
import pickle
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import xxhash

from ..errors import CorruptEntry, InvalidValue, JangdokError, UnsupportedEntry, UntrustedEntry
from . import safe
from .header import (
    ALIGNMENT,
    CHECKSUM,
    FORMAT_VERSION,
    HEADER_HASH,
    SERIALIZERS,
    ZEROS,
    BufferTable,
    EntryHeader,
    Stream,
    align,
    check_key,
    check_size,
    check_usable,
    parse_header,
    read_header,
    read_into,
    remember,
    time_problem,
)
from .limits import MAX_EXPANSION, check_memory, cut, json_problem, shown
from .sealing import lead, metadata_json, seal
from .signing import MAC_ALGORITHM, MAC_CHUNK, MAC_LENGTH, PieceDigests, Trust, payload_mac

__all__ = ["Decoded", "Progress", "Stream", "encode", "decode", "decode_buffer", "verify"]

_SMALLEST_OUT_OF_BAND = 4096
# Below this a plain bytearray; above it an anonymous map populated by the kernel in one call:
# a bytearray's memset, or faulting pages in one by one as the read touches them, each cost
# ~15 ms more for 50 MB (measured on a VM, where page faults are dear).
_MAPPED_ALLOCATION = 1 << 20
# Entries up to this size are read whole in one call, rather than header and payload apart.
_WHOLE_READ = 256 * 1024
_POPULATED = (mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE) if hasattr(mmap, "MAP_POPULATE") else None

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) as a large entry is read."""

# Unpickling damaged bytes can fail in many ways. Without a checksum (legacy pickles) these
# are taken to mean the bytes are bad; ImportError and AttributeError never are: they mean the
# code changed, not the data. MemoryError and RecursionError are the reader's own limits.
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError,
            OverflowError, UnicodeDecodeError, struct.error)
_READER_LIMITS = (MemoryError, RecursionError)

@dataclass(frozen=True)
class Decoded:
    value: Any
    header: EntryHeader | None
    """``None`` for a legacy plain pickle, which has no header."""


def _under_key(key: str | None) -> str:
    return f" under key {key!r}" if key else ""


def _pickle(value: Any, key: str | None) -> tuple[bytes, list[tuple[memoryview, int]]]:
    """The pickle-5 stream and the buffers it left out of band (contiguous, >= 4 KB), each
    as raw bytes with its item size."""
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        with buffer.raw() as raw:
            if raw.nbytes < _SMALLEST_OUT_OF_BAND:
                return True  # true means: keep it in the stream
        buffers.append(buffer)
        return False

    try:
        stream = pickle.dumps(value, protocol=5, buffer_callback=out_of_band)
        return stream, [(buffer.raw(), memoryview(buffer).itemsize) for buffer in buffers] if buffers else []
    except RecursionError as exc:
        raise InvalidValue(f"value{_under_key(key)} is nested too deeply to pickle ({type(value).__name__}); "
                           "flatten it or store its parts under separate keys") from exc
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise InvalidValue(f"value{_under_key(key)} of type {type(value).__name__} cannot be pickled: {exc}; "
                           "store plain data (numbers, strings, lists, dicts, arrays) instead") from exc


def _laid_out(stream_length: int, lengths: list[int]) -> int:
    """The payload's length: the stream, then each buffer at an aligned offset."""
    position = stream_length
    for length in lengths:
        position = align(position) + length
    return position


def _compressor(compression: str) -> Callable[[memoryview, int], Any]:
    from . import codec  # only entries written with compression need it

    return codec.compress


def _float_time(value: Any) -> float:
    """A time as a float; TypeError for text or a bool, which float() would also read."""
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{type(value).__name__} is not a number")
    return float(value)


def encode(value: Any, metadata: Mapping[str, Any] | None = None, created_at: float | None = None,
           key: str | None = None, compression: str = "none", expires_at: float | None = None,
           serializer: str = "pickle", trust: Trust | None = None) -> tuple[EntryHeader, list[bytes | memoryview]]:
    """Serialize a value into entry chunks, ready for ``Store.write``.

    The chunks are views of the value's own arrays, not copies: keep the value unchanged until
    they are written. ``key`` is recorded so that a reader can tell an entry that reached it by
    mistake. ``compression`` is ``none`` or ``zstd``; ``serializer`` is ``pickle`` or ``safe``
    (:mod:`jangdok.entry.safe`). With signing keys in ``trust``, the entry is signed with the first.
    An entry whose buffers compress beyond what readers accept (:mod:`jangdok.entry.limits`) is
    padded up to it. Raises InvalidValue for a value the serializer cannot store, metadata
    that is not a mapping, not JSON or too large, a time that is not a number of seconds in
    years 1 to 9999, or a key that is not text UTF-8 can encode; nothing is written then.
    """
    if key is not None:  # judged before its truth is asked: an array has none
        problem = json_problem(key) if isinstance(key, str) else f"it must be a string, got {type(key).__name__}"
        if problem is not None:
            raise InvalidValue(f"an entry's key {shown(key)} cannot be recorded: {problem}")
    stored_metadata = None if metadata is None else metadata_json(metadata, key)
    try:  # as readers will see them: JSON numbers, read as floats
        created_at = time.time() if created_at is None else _float_time(created_at)
        expires_at = None if expires_at is None else _float_time(expires_at)
    except (TypeError, OverflowError) as exc:
        raise InvalidValue(f"the entry's creation and expiry times must be seconds since the epoch, got "
                           f"{shown(created_at)} and {shown(expires_at)}{_under_key(key)}") from exc
    for name, seconds in (("creation time", created_at), ("expiry time", expires_at)):
        problem = None if seconds is None else time_problem(seconds)
        if problem is not None:
            raise InvalidValue(f"the entry's {name} {problem}{_under_key(key)}")
    stream, buffers = safe.dumps(value, key) if serializer == safe.NAME else _pickle(value, key)
    compress = None if compression == "none" else _compressor(compression)
    stored: list[bytes | memoryview] = []
    compressed: dict[str, Any] = {}
    expanded = 0
    for index, (raw, itemsize) in enumerate(buffers):
        done = None if compress is None else compress(raw, itemsize)
        if done is None:
            stored.append(raw)
        else:
            stored.append(done[0])
            compressed[str(index)] = done[1].to_json()
            expanded += done[1].length
    lengths = [len(chunk) if isinstance(chunk, bytes) else chunk.nbytes for chunk in stored] if stored else []
    head: list[bytes | memoryview] = [stream]
    # Readers refuse buffers that expand to more than MAX_EXPANSION times the payload (a bomb);
    # only runs of one value (an all-zero array) compress that well. Such an entry gets spaces
    # after its stream, which both serializers ignore: 0.1% of the buffer's size.
    short = -(-expanded // MAX_EXPANSION) - _laid_out(len(stream), lengths) if expanded else 0
    if short > 0:
        head.append(b" " * (short + ALIGNMENT))  # whatever alignment the shift takes back
    stream_length = sum(map(len, head))
    payload: list[bytes | memoryview] = head
    position = stream_length
    for chunk, length in zip(stored, lengths, strict=True):
        if align(position) > position:
            payload.append(ZEROS[: align(position) - position])
        payload.append(chunk)
        position = align(position) + length
    signer = trust.keys[0] if trust is not None and trust.keys else None
    pieces = PieceDigests(MAC_CHUNK) if signer is not None else None
    digest = xxhash.xxh3_128()
    for chunk in payload:
        digest.update(chunk)
        if pieces is not None:  # threads hash the pieces meanwhile
            pieces.update(chunk)
    fields: dict[str, Any] = {
        "serializer": serializer,
        "checksum": CHECKSUM,
        "digest": digest.hexdigest(),
        "payload_length": position,
        "stream_length": stream_length,
        "buffers": lengths,
        "compressed": compressed,
        "mac_length": 0,
        "created_at": created_at,
        "metadata": stored_metadata,
    }
    if key is not None:
        fields["key"] = key
    if expires_at is not None:
        fields["expires_at"] = expires_at
    if signer is not None:
        fields.update(mac=MAC_ALGORITHM, mac_chunk=MAC_CHUNK, key_id=signer[0], mac_length=MAC_LENGTH)
    plain = signer is None and not compressed and serializer in SERIALIZERS and (key is None or type(key) is str)
    sealed = seal(fields, plain)
    mac = b"" if signer is None or pieces is None else payload_mac(signer[1], sealed, pieces)
    before_payload = lead(sealed, mac)
    # What parsing these bytes builds (the fields are this writer's own, so nothing is checked
    # again): a property test holds the two equal.
    header = EntryHeader(
        version=FORMAT_VERSION, serializer=serializer,
        compression="none" if not compressed else next(iter(compressed.values()))["codec"],
        payload_length=position, checksum=CHECKSUM, digest=fields["digest"], created_at=created_at,
        metadata=stored_metadata, header_size=len(before_payload), key=key,
        expires_at=expires_at, stream_length=stream_length,
        stored_lengths=lengths, compressed=compressed, mac=mac,
        key_id=None if signer is None else signer[0], mac_algorithm=None if signer is None else MAC_ALGORITHM,
        mac_chunk=MAC_CHUNK, sealed=sealed)
    remember(before_payload[: len(sealed) + HEADER_HASH.size], header)  # its readers here parse nothing
    return header, [before_payload, *payload]


def _allocate(size: int, what: str, populate: bool = True) -> bytearray | mmap.mmap:
    """A writable buffer of ``size`` bytes whose contents are about to be overwritten; raises
    UnsupportedEntry, naming ``what`` needs it, if this process cannot have that much.
    ``populate=False`` leaves its pages to be faulted in by whoever writes them: threads
    filling it from the network do that while they wait for bytes."""
    check_memory(size, what)
    try:
        if size < _MAPPED_ALLOCATION:
            return bytearray(size)
        if _POPULATED is not None and populate:
            return mmap.mmap(-1, size, flags=_POPULATED)
        return mmap.mmap(-1, size)
    except (MemoryError, OSError) as exc:  # OSError: mmap's ENOMEM
        raise UnsupportedEntry(f"{what} needs {size:,} bytes of memory, which this process could not get now "
                               f"({type(exc).__name__}: {exc}); it was not loaded") from exc


class _Both:
    """Feeds each piece read to two digests."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def update(self, piece: memoryview) -> None:
        self.first.update(piece)
        self.second.update(piece)


def decode(reader: Stream, size: int, key: str | None = None, progress: Progress | None = None,
           trust: Trust | None = None, now: float | None = None) -> Decoded:
    """Read, verify and deserialize a whole entry from a stream of ``size`` bytes.

    The payload is read once, into one buffer of this process's own that the loaded arrays
    then share. With ``key``, an entry recorded under another key raises ForeignEntry before
    its payload is read, and one expired at ``now`` (default: the current time) raises
    ExpiredEntry. Knowing the size up front is what lets a damaged length be refused
    before anything is allocated for it, and it makes bytes after the payload a size mismatch.

    Raises CorruptEntry for damage (the caller may delete the entry), UnsupportedEntry for
    intact entries this process cannot use, and UntrustedEntry, before anything is unpickled,
    for entries ``trust`` does not vouch for (the caller must keep both).
    """
    if size <= _WHOLE_READ:  # one read call, then parsed in memory: small entries are latency
        whole = memoryview(bytearray(size))
        read_into(reader, whole, progress)
        return decode_buffer(whole, key, trust, now)
    header = read_header(reader, size)
    if not isinstance(header, EntryHeader):
        return Decoded(_load_legacy(lambda: header + (reader.read() or b""), size, trust), None)
    check_usable(header, key, now)
    payload = _read_verified(reader, header, size, trust, progress)
    return Decoded(_materialize(header, payload), header)


def _read_verified(reader: Stream, header: EntryHeader, size: int, trust: Trust | None,
                   progress: Progress | None) -> memoryview:
    """The payload, read into one buffer and verified (checksum, and signature with ``trust``)
    as it arrived: threads hash its pieces for the signature meanwhile."""
    signature = _signature(header, trust)
    try:
        check_size(header, size)
        parallel = getattr(reader, "fill", None) is not None
        payload = memoryview(_allocate(header.payload_length, "the entry's payload", populate=not parallel))
        digest = xxhash.xxh3_128()
        read_into(reader, payload, progress, digest if signature is None else _Both(digest, signature))
        _check_payload(header, digest.hexdigest(), signature)
    finally:
        if signature is not None:
            signature.close()
    return payload


def verify(reader: Stream, size: int, key: str | None = None, trust: Trust | None = None) -> EntryHeader | None:
    """Check a whole entry as :func:`decode` would (checksum, key, signature with ``trust``)
    without deserializing it, so nothing of it runs. ``None`` for a legacy plain pickle, which
    has nothing to check. Raises as :func:`decode` does; expiry is not judged."""
    header = read_header(reader, size)
    if not isinstance(header, EntryHeader):
        if not header:  # nothing at all: no pickle, plain or not (as decode says)
            raise CorruptEntry("entry is empty")
        return None
    check_key(header, key)
    _read_verified(reader, header, size, trust, None)
    return header


def decode_buffer(view: memoryview, key: str | None = None, trust: Trust | None = None,
                  now: float | None = None) -> Decoded:
    """Verify and deserialize an entry held whole in memory: the loaded arrays are views of it,
    so nothing is copied.

    What is verified is what is loaded, so with signing keys in ``trust`` the view must be this
    process's own memory: a view of a file another process can write (a memory map, even a
    private one) could change between the check and the unpickling."""
    header = parse_header(view)
    if header is None:
        return Decoded(_load_legacy(lambda: view, view.nbytes, trust), None)
    check_usable(header, key, now)
    signature = None if trust is None or not trust.keys else _signature(header, trust)
    try:
        check_size(header, view.nbytes)
        payload = view[header.header_size :]
        if signature is not None:  # threads hash it while this one computes the checksum
            signature.update(payload)
        _check_payload(header, xxhash.xxh3_128_hexdigest(payload), signature)
    finally:
        if signature is not None:
            signature.close()
    return Decoded(_materialize(header, payload), header)


class _Verifier:
    """Checks one entry's MAC: fed the payload as it is read, judged before deserializing.
    Its hashing threads live until :meth:`matches` is answered or :meth:`close` is called."""

    def __init__(self, key: bytes, header: EntryHeader) -> None:
        self._key = key
        self._header = header
        self._pieces = PieceDigests(header.mac_chunk)

    def update(self, piece: memoryview) -> None:
        self._pieces.update(piece)

    def matches(self) -> bool:
        return hmac.compare_digest(payload_mac(self._key, self._header.sealed, self._pieces), self._header.mac)

    def close(self) -> None:
        self._pieces.close()


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
        raise UntrustedEntry(f"entry is signed with key id {shown(header.key_id)}, which this cache does not hold "
                             f"(it holds {', '.join(trust.ids)}); add that key to JANGDOK_SIGNING_KEY to trust it")
    return _Verifier(key, header)


def _check_payload(header: EntryHeader, digest: str, signature: _Verifier | None) -> None:
    """Damage first (it may be deleted), then the signature (a mismatch is kept)."""
    if digest != header.digest:
        raise CorruptEntry("entry payload checksum mismatch (xxh3_128): the bytes were damaged")
    if signature is not None and not signature.matches():
        raise UntrustedEntry(f"entry signature does not match its bytes (key id {shown(header.key_id)}): it was "
                             "changed or forged by someone without the key; nothing of it was loaded")


def _materialize(header: EntryHeader, payload: memoryview) -> Any:
    """The value of a payload already verified against its header. The buffer table is built
    only now, and only as far as the stream refers to it."""
    stream = payload if header.stream_length is None else payload[: header.stream_length]
    try:
        if header.serializer == safe.NAME:
            return safe.loads(stream, _Buffers(header, payload))
        # Most small values have no buffer: nothing to build then (pickle sees none either way).
        return pickle.loads(stream, buffers=iter(_Buffers(header, payload)) if header.stored_lengths else ())
    except JangdokError:  # from the buffers: one the table misplaces, or that expands too much
        raise
    except _READER_LIMITS as exc:
        raise _beyond_limits(exc) from exc
    except Exception as exc:
        # The checksum matched: the bytes are what was written, so the failure lies with this
        # reader (a missing module, an older library version). Other machines may read it.
        raise UnsupportedEntry(
            f"entry could not be unpickled here ({type(exc).__name__}: {cut(str(exc))}); its bytes are intact, "
            "so this process probably lacks or has another version of the code that wrote it"
        ) from exc


def _beyond_limits(exc: BaseException) -> UnsupportedEntry:
    """An intact entry this process cannot load: out of memory, or nested beyond its recursion
    limit. Not damage (another reader may load it), and never a bare MemoryError."""
    reason = "not enough memory" if isinstance(exc, MemoryError) else "nested beyond this reader's recursion limit"
    return UnsupportedEntry(f"entry could not be loaded here: {reason} ({type(exc).__name__}); it was kept")


class _Buffers:
    """The payload's out-of-band buffers, as the serializer asks for them: views of the
    payload, or decompressed copies. Each is made on first use; none is made twice.

    What decompression may allocate is bounded before it is allocated: in all, at most
    :data:`~jangdok.entry.limits.MAX_EXPANSION` times the payload, and never more than the
    process can have."""

    def __init__(self, header: EntryHeader, payload: memoryview) -> None:
        self._table = BufferTable(header)
        self._payload = payload
        self._expanded = 0

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index: int) -> memoryview:
        stored = self._table[index]
        view = self._payload[stored.offset : stored.offset + stored.stored_length]
        how = stored.compression
        if how is None:
            return view
        from .codec import check_frame, decompress_into

        check_frame(view, how)  # before allocating what the description claims
        self._expanded += how.length
        if self._expanded > MAX_EXPANSION * self._payload.nbytes:
            raise UnsupportedEntry(
                f"entry declares {self._expanded:,} bytes in compressed buffers (buffer {index} and those before "
                f"it), more than {MAX_EXPANSION} times its {self._payload.nbytes:,}-byte payload: no jangdok writer "
                "makes that (a decompression bomb, or an older jangdok's all-zero array); it was not loaded")
        check_memory(self._payload.nbytes + self._expanded, "the entry's payload and its decompressed buffers")
        target = memoryview(_allocate(how.length, f"compressed buffer {index}"))
        try:
            decompress_into(view, how, target)
        except MemoryError as exc:  # the temporary that un-shuffling needs
            raise _beyond_limits(exc) from exc
        return target

    def __iter__(self) -> Iterator[memoryview]:
        return (self[index] for index in range(len(self)))


def _load_legacy(read: Callable[[], bytes | memoryview], size: int, trust: Trust | None = None) -> Any:
    """A plain pickle as the seed wrote it (no header, no checksum), of ``size`` bytes that
    ``read`` returns: called only once this reader may load it at all."""
    if not size:
        raise CorruptEntry("entry is empty")
    if trust is not None and trust.signing and not trust.allow_legacy:
        raise UntrustedEntry("entry is a plain pickle (no jangdok header), which cannot carry a signature, and "
                             "this cache requires signed entries; if you trust whoever wrote it, set "
                             "JANGDOK_ALLOW_LEGACY=1 (allow_legacy=True) to load plain pickles")
    check_memory(size, "the plain pickle")
    try:
        return pickle.loads(read())
    except _DAMAGED as exc:
        raise CorruptEntry(f"legacy pickle is damaged: {type(exc).__name__}: {cut(str(exc))}") from exc
    except (ImportError, AttributeError) as exc:
        raise UnsupportedEntry(f"legacy pickle needs code this process lacks: {cut(str(exc))}") from exc
    except _READER_LIMITS as exc:
        raise _beyond_limits(exc) from exc
    except Exception as exc:
        # Raised by the pickled objects' own code (a __setstate__, a constructor): without a
        # checksum there is no telling damage from a code mismatch, so keep the file.
        raise UnsupportedEntry(f"legacy pickle could not be loaded here ({type(exc).__name__}: "
                               f"{cut(str(exc))})") from exc
