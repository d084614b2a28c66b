"""Optional per-buffer compression for entry payloads: zstd, with byte shuffling for arrays.

An entry holds a pickle-5 stream plus out-of-band buffers (numpy array data and the like).
Each buffer is compressed on its own, only when it pays, and described by a
:class:`Compression` record that the entry header stores as JSON::

    packed = compress(view, itemsize=arr.itemsize)
    if packed is None:                       # too small, or does not shrink enough
        store view as is
    else:
        data, how = packed                   # how.to_json() goes into the header
    ...
    target = bytearray(how.length)           # or a numpy array's memory
    decompress_into(memoryview(data), Compression.from_json(obj), memoryview(target))

Why these rules: on smooth float data zstd alone barely helps (level 1: about 1.05x on
float64 trajectories, 1.10x on float32) because consecutive values differ in their low
mantissa bytes. *Byte shuffling* (storing byte 0 of every element, then byte 1, and so on)
puts the slowly varying sign/exponent/high-mantissa bytes together, which lifts that to
1.2-1.3x. Whether either is worth it is decided on a sample of the buffer (up to three 64 KiB
slices), so incompressible data (random bytes, already compressed images) costs about a
millisecond before it is stored as is.

Dependencies are imported lazily: ``zstandard`` is the optional extra ``jangdok[zstd]``, and
numpy is not a jangdok dependency at all. Without numpy, :func:`compress` never shuffles and
:func:`decompress_into` un-shuffles with plain memoryview slicing (slower, same bytes), so an
entry written on a machine with numpy stays readable on one without.

Error policy for readers: damaged bytes raise :class:`~jangdok.errors.CorruptEntry` (safe to
delete); an entry this installation cannot decode (unknown codec, zstandard not installed)
raises :class:`~jangdok.errors.UnsupportedEntry`, so the entry is kept for a reader that can.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeGuard

from ..errors import ConfigError, CorruptEntry, UnsupportedEntry
from .limits import shown

__all__ = ["Compression", "compress", "check_frame", "decompress_into", "CODECS", "MIN_SIZE"]

CODECS = ("zstd",)
"""Codec names this version can read and write."""
MIN_SIZE = 4 * 1024
"""Buffers shorter than this are never compressed: the saving cannot matter."""
MIN_SAVING = 0.10
"""Compression is kept only if it removes at least this fraction of the bytes, on the sample
and again on the whole buffer; less is not worth a decompression on every read."""
SHUFFLE_SIZES = (2, 4, 8)
"""Element sizes :func:`compress` tries byte shuffling with (int16 .. float64/int64), and the
only ones a reader un-shuffles: un-shuffling takes a step per byte of the element, so a
description naming the buffer's length as its element size cost a reader seconds per 100 kB."""
_SAMPLE_SLICE = 64 * 1024  # a multiple of every shuffle size, so slices stay element-aligned
_SAMPLE_COUNT = 3
_INSTALL_HINT = 'install it with: pip install "jangdok[zstd]"'
_JSON_FIELDS = ("codec", "shuffle", "length")


@dataclass(frozen=True)
class Compression:
    """How one buffer was stored: what :func:`decompress_into` needs to restore it."""

    codec: str
    """The codec name, one of :data:`CODECS`."""
    shuffle: int
    """Element size the bytes were shuffled with before compressing; 0 for no shuffling."""
    length: int
    """Length of the original (uncompressed) buffer in bytes."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, e.g. ``{"codec": "zstd", "shuffle": 8, "length": 48600000}``."""
        return {"codec": self.codec, "shuffle": self.shuffle, "length": self.length}

    @classmethod
    def from_json(cls, obj: Any) -> Compression:
        """Validate and rebuild what :meth:`to_json` produced (after a trip through JSON).

        Raises :class:`~jangdok.errors.UnsupportedEntry` for an unknown codec or for fields this
        version does not know (a newer writer may have added a parameter decoding depends on),
        and :class:`~jangdok.errors.CorruptEntry` for anything malformed.
        """
        if not isinstance(obj, dict):
            raise CorruptEntry(f"compression description must be a JSON object, got {shown(obj)}")
        codec = obj.get("codec")
        if not isinstance(codec, str):
            raise CorruptEntry(f"compression description has no valid codec name: {shown(obj)}")
        # Checked before the other fields: another codec may well have other fields.
        if codec not in CODECS:
            raise UnsupportedEntry(f"buffer is compressed with {shown(codec)}, which this version of jangdok "
                                   f"cannot read (known: {', '.join(CODECS)}); a newer version may")
        unknown = sorted(str(k) for k in obj if k not in _JSON_FIELDS)
        if unknown:
            raise UnsupportedEntry(f"compression description has fields this version of jangdok does not "
                                   f"know: {shown(unknown)}; it was probably written by a newer version")
        shuffle, length = obj.get("shuffle"), obj.get("length")
        if not _is_int(length) or length < 0:
            raise CorruptEntry(f"compression length must be a non-negative integer, got {shown(length)}")
        if not _is_int(shuffle):
            raise CorruptEntry(f"compression shuffle must be an integer, got {shown(shuffle)}")
        _check_shuffle(shuffle, length)
        return cls(codec=codec, shuffle=shuffle, length=length)


def _check_shuffle(shuffle: int, length: int) -> None:
    """Raise CorruptEntry unless ``shuffle`` is 0 or one of :data:`SHUFFLE_SIZES` dividing ``length``."""
    if shuffle and shuffle not in SHUFFLE_SIZES:
        raise CorruptEntry(f"compression shuffle {shown(shuffle)} is not 0 or one of the element sizes "
                           f"{', '.join(map(str, SHUFFLE_SIZES))} that writers shuffle with")
    if shuffle and length % shuffle:
        raise CorruptEntry(f"compression length {length} is not a multiple of its shuffle element size {shuffle}")


def compress(view: memoryview, itemsize: int = 1, level: int = 1) -> tuple[bytes, Compression] | None:
    """Compress one buffer with zstd, or return ``None`` when that does not pay.

    ``view`` is any contiguous buffer (its raw bytes are used); ``itemsize`` is the size of
    its elements (``arr.itemsize`` for a numpy buffer, 1 for opaque bytes); ``level`` is the
    zstd level (1 is fast; higher levels gain little on float data, see the module notes).

    ``None`` means: store the buffer as is. That is the answer for buffers under
    :data:`MIN_SIZE`, and when a sample of the buffer, compressed with and without byte
    shuffling, shrinks by less than :data:`MIN_SAVING`, or the whole buffer then does.
    Shuffling is tried when ``itemsize`` is 2, 4 or 8, divides the length, and numpy is
    importable, and is kept only if it beats plain zstd on the sample.

    The zstd frame records the content size and a checksum of the content, so a damaged
    frame is detected when it is decompressed.

    Raises :class:`~jangdok.errors.ConfigError` if zstandard is not installed, ``ValueError``
    for a non-contiguous buffer.
    """
    zstd = _zstandard()
    if zstd is None:
        raise ConfigError(f"compression 'zstd' needs the zstandard package; {_INSTALL_HINT}")
    with _flat(view, "buffer to compress") as raw:
        return _compress(zstd, raw, itemsize, level)


def _compress(zstd: Any, raw: memoryview, itemsize: int, level: int) -> tuple[bytes, Compression] | None:
    n = len(raw)
    if n < MIN_SIZE:
        return None
    np = _numpy() if itemsize in SHUFFLE_SIZES and n % itemsize == 0 else None
    shuffles = (0, itemsize) if np is not None else (0,)

    cctx = zstd.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    samples = _samples(raw, itemsize if np is not None else 1)
    sample_len = sum(len(s) for s in samples)
    best: tuple[int, int, list[bytes]] | None = None
    for k in shuffles:  # unshuffled first, so that a tie keeps the cheaper path
        frames = [cctx.compress(_shuffle(s, k, np) if k else s) for s in samples]
        size = sum(len(f) for f in frames)
        if best is None or size < best[0]:
            best = (size, k, frames)
    assert best is not None
    size, shuffle, frames = best
    if size > (1 - MIN_SAVING) * sample_len:
        return None
    if len(samples) == 1:  # the sample was the whole buffer: it is already compressed
        return frames[0], Compression(codec="zstd", shuffle=shuffle, length=n)

    data = cctx.compress(_shuffle(raw, shuffle, np) if shuffle else raw)
    if len(data) > (1 - MIN_SAVING) * n:  # the sample was not representative
        return None
    return data, Compression(codec="zstd", shuffle=shuffle, length=n)


def decompress_into(data: memoryview, compression: Compression, target: memoryview) -> None:
    """Restore a buffer that :func:`compress` produced into ``target``.

    ``target`` is a writable contiguous buffer of exactly ``compression.length`` bytes (a
    ``bytearray``, or the memory of an empty numpy array for the value being rebuilt); plain
    zstd frames are decompressed straight into it, shuffled ones through one temporary.

    Raises :class:`~jangdok.errors.CorruptEntry` if ``data`` is damaged (not a zstd frame,
    truncated, checksum mismatch, wrong length) or ``target`` has the wrong length;
    :class:`~jangdok.errors.UnsupportedEntry` if the codec is unknown or zstandard is not
    installed (the entry is fine, this installation cannot read it); ``TypeError`` if
    ``target`` is read-only.
    """
    if compression.codec not in CODECS:
        raise UnsupportedEntry(f"buffer is compressed with {shown(compression.codec)}, which this version of "
                               f"jangdok cannot read (known: {', '.join(CODECS)})")
    zstd = _zstandard()
    if zstd is None:
        raise UnsupportedEntry(f"this entry is zstd-compressed; install jangdok[zstd] to read it ({_INSTALL_HINT})")
    with _flat(data, "compressed data") as src, _flat(target, "decompression target") as out:
        _decompress_into(zstd, src, compression, out)


def _decompress_into(zstd: Any, src: memoryview, compression: Compression, out: memoryview) -> None:
    if out.readonly:
        raise TypeError("decompression target must be writable")
    length, shuffle = compression.length, compression.shuffle
    if len(out) != length:
        raise CorruptEntry(f"decompression target is {len(out)} bytes but the buffer was {length} bytes")
    _check_shuffle(shuffle, length)
    _check_frame(zstd, src, length)
    if not shuffle:
        _decompress_exactly(zstd, src, out)
        return
    np = _numpy()
    tmp = np.empty(length, np.uint8) if np is not None else bytearray(length)
    _decompress_exactly(zstd, src, memoryview(tmp))
    _unshuffle(memoryview(tmp), out, shuffle, np)


def check_frame(data: memoryview, compression: Compression) -> None:
    """Check, without decompressing, that ``data`` is one complete zstd frame of the length
    its description says, so a reader can allocate that length safely. Raises as
    :func:`decompress_into` does."""
    zstd = _zstandard()
    if zstd is None:
        raise UnsupportedEntry(f"this entry is zstd-compressed; install jangdok[zstd] to read it ({_INSTALL_HINT})")
    with _flat(data, "compressed data") as src:
        _check_frame(zstd, src, compression.length)


def _check_frame(zstd: Any, src: memoryview, length: int) -> None:
    """Check that ``src`` is exactly one complete zstd frame declaring ``length`` bytes.

    The streaming reader used to decompress without an extra copy stops quietly at the end
    of its input, so a frame missing its last bytes (or followed by extra ones) would go
    unnoticed; walking the block headers (3 bytes each, one per <= 128 KiB block) finds the
    frame's true size for a few microseconds per megabyte.
    """
    try:
        params = zstd.get_frame_parameters(src)
        pos = zstd.frame_header_size(src)
    except zstd.ZstdError as exc:
        raise CorruptEntry(f"compressed buffer is not a valid zstd frame: {exc}") from exc
    declared = params.content_size
    if declared != length:
        shown = "no length" if declared == zstd.CONTENTSIZE_UNKNOWN else f"{declared} bytes"
        raise CorruptEntry(f"compressed buffer declares {shown}, but its description says {length} bytes")
    end = len(src)
    blocks = 0
    while True:
        blocks += 1
        if pos + 3 > end:
            raise CorruptEntry(f"compressed buffer is truncated: {end} bytes end inside its frame")
        block = int.from_bytes(src[pos:pos + 3], "little")
        last, kind, size = block & 1, (block >> 1) & 3, block >> 3
        if kind == 3:
            raise CorruptEntry(f"compressed buffer has an invalid block header at byte {pos}")
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores its one repeated byte
        if last:
            break
    if length > blocks * _MAX_BLOCK:  # a block holds at most 128 KiB of content
        raise CorruptEntry(f"compressed buffer of {blocks} block(s) cannot hold the {length} bytes it declares")
    pos += 4 if params.has_checksum else 0
    if pos > end:
        raise CorruptEntry(f"compressed buffer is truncated: its frame needs {pos} bytes, it has {end}")
    if pos < end:
        raise CorruptEntry(f"compressed buffer has {end - pos} bytes after its frame")


_MAX_BLOCK = 128 * 1024


def _decompress_exactly(zstd: Any, src: memoryview, out: memoryview) -> None:
    """Decompress the frame in ``src`` (checked by :func:`_check_frame`) into all of ``out``."""
    filled = 0
    try:
        with zstd.ZstdDecompressor().stream_reader(src) as reader:
            while filled < len(out):
                got = reader.readinto(out[filled:])
                if not got:
                    break
                filled += got
            # Reading past the end makes sure the frame's checksum has been verified.
            extra = reader.read(1)
    except zstd.ZstdError as exc:
        raise CorruptEntry(f"compressed buffer is damaged: {exc}") from exc
    if filled < len(out) or extra:
        raise CorruptEntry(f"compressed buffer restored {filled + len(extra)}{'+' if extra else ''} bytes "
                           f"instead of the {len(out)} it declares")


def _samples(raw: memoryview, align: int) -> list[bytes]:
    """The whole buffer if small, else slices at its start, middle and end (element-aligned),
    as copies: at most 192 KiB, and no view of the caller's buffer outlives :func:`compress`."""
    n = len(raw)
    if n <= _SAMPLE_COUNT * _SAMPLE_SLICE:
        return [bytes(raw)]
    middle = (n - _SAMPLE_SLICE) // 2 // align * align
    # n is a multiple of align whenever align > 1, so the last slice is aligned too.
    return [bytes(raw[start:start + _SAMPLE_SLICE]) for start in (0, middle, n - _SAMPLE_SLICE)]


# Arrays over a caller's buffer are made as temporaries of one statement in the two functions
# below: a local one would export the buffer from any traceback holding the frame (see _flat).


def _shuffle(raw: bytes | memoryview, itemsize: int, np: Any) -> Any:
    """Byte-transpose into a new array: byte 0 of every element, then byte 1, and so on.

    One strided copy per byte plane: on large buffers that is 1.1-2x faster than
    ``np.ascontiguousarray(a.reshape(-1, itemsize).T)``, which makes the same single copy.
    """
    out = np.empty((itemsize, len(raw) // itemsize), np.uint8)
    for i in range(itemsize):
        out[i] = np.frombuffer(raw, np.uint8).reshape(-1, itemsize)[:, i]
    return out


def _unshuffle(src: memoryview, out: memoryview, itemsize: int, np: Any) -> None:
    """Undo :func:`_shuffle`, writing into ``out``; without numpy, by strided memoryview slices.

    Per byte plane again, which is 1.6-4x faster than one transposed numpy assignment.
    """
    count = len(out) // itemsize
    for i in range(itemsize):
        if np is not None:
            np.frombuffer(out, np.uint8).reshape(-1, itemsize)[:, i] = np.frombuffer(src, np.uint8)[
                i * count:(i + 1) * count]
        else:
            out[i::itemsize] = src[i * count:(i + 1) * count]


@contextmanager
def _flat(buffer: Any, what: str) -> Iterator[memoryview]:
    """A flat unsigned-byte view of any contiguous buffer (C or Fortran order), keeping
    writability, released with the PickleBuffer under it when the block ends, however it ends.

    Both export ``buffer``. Left to a traceback's frames, they kept it exported after a refused
    entry; once that exception sat in a reference cycle, Python 3.10 and 3.11's garbage
    collector cleared the still-exported memoryview and crashed the interpreter (SIGSEGV)."""
    pickled = pickle.PickleBuffer(buffer)
    try:
        raw = pickled.raw()
    except BufferError as exc:
        pickled.release()
        raise ValueError(f"{what} must be a contiguous buffer: {exc}") from exc
    try:
        yield raw
    finally:
        raw.release()
        pickled.release()


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)

