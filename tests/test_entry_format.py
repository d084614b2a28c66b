"""The entry format: golden files of every version, legacy pickles, and each kind of damage."""

from __future__ import annotations

import codecs
import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import make_golden
import pytest
import xxhash
from make_golden import CREATED_AT, METADATA, V2_VALUE, VALUE

from jangdok import CorruptEntry, InvalidValue, UnsupportedEntry, entry
from jangdok.entry.header import PREFIX

DATA = Path(__file__).parent / "data"

CORRUPT = sorted(p.name for p in DATA.glob("corrupt_*"))
UNSUPPORTED = sorted(p.name for p in DATA.glob("unsupported_*"))


def decode_file(name: str) -> entry.Decoded:
    data = (DATA / name).read_bytes()
    return entry.decode(io.BytesIO(data), len(data))


def test_golden_v1_entry_still_decodes() -> None:
    decoded = decode_file("v1_entry.jdk")
    assert decoded.value == VALUE
    header = decoded.header
    assert header is not None
    assert (header.version, header.serializer, header.compression, header.checksum) == (1, "pickle", "none", "xxh3_128")
    assert header.created_at == CREATED_AT
    assert header.metadata == METADATA
    assert header.entry_size == (DATA / "v1_entry.jdk").stat().st_size


@pytest.mark.parametrize("name", ["legacy_protocol4.pkl", "legacy_protocol5.pkl"])
def test_legacy_plain_pickles_decode_without_a_header(name: str) -> None:
    decoded = decode_file(name)
    assert decoded.value == VALUE and decoded.header is None


def test_golden_v2_entry_decodes_with_its_buffer_out_of_band() -> None:
    decoded = decode_file("v2_entry.jdk")
    assert decoded.value == V2_VALUE
    header = decoded.header
    assert (header.version, header.serializer, header.compression) == (2, "pickle", "none")
    assert (header.key, header.created_at, header.metadata) == ("golden/김치.pkl", CREATED_AT, METADATA)
    (samples,) = header.buffers
    assert samples.stored_length == 5120 and samples.compression is None
    assert header.header_size % entry.ALIGNMENT == 0 and samples.offset % entry.ALIGNMENT == 0
    data = (DATA / "v2_entry.jdk").read_bytes()
    assert data[header.header_size + samples.offset :][:5120] == bytes(range(256)) * 20  # raw, not pickled


def test_a_fresh_encoding_matches_the_golden_file_byte_for_byte() -> None:
    # If this fails the on-disk format changed: bump FORMAT_VERSION and add new golden files
    # instead of editing the old ones.
    _, chunks = entry.encode(V2_VALUE, METADATA, created_at=CREATED_AT, key=make_golden.KEY)
    assert b"".join(bytes(c) for c in chunks) == (DATA / "v2_entry.jdk").read_bytes()


@pytest.mark.parametrize("name", CORRUPT)
def test_every_corrupt_variant_is_detected(name: str) -> None:
    with pytest.raises(CorruptEntry):
        decode_file(name)


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_entries_from_newer_versions_are_unsupported_not_corrupt(name: str) -> None:
    with pytest.raises(UnsupportedEntry, match="upgrade jangdok|a newer version may"):
        decode_file(name)


def test_impossible_length_is_refused_before_allocating() -> None:
    with pytest.raises(CorruptEntry, match="header declares"):
        decode_file("corrupt_v1_impossible_length.jdk")


def test_every_single_bit_flip_in_the_payload_is_caught() -> None:
    _, chunks = entry.encode([1.5, "김치", b"x" * 50], None)
    data = b"".join(bytes(c) for c in chunks)
    start = entry.header_size(data)
    for offset in range(start, len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            with pytest.raises(CorruptEntry):
                entry.decode(io.BytesIO(bytes(damaged)), len(damaged))


def test_every_single_bit_flip_in_the_header_is_caught() -> None:
    """Many flips leave the header valid JSON with other numbers, times or metadata in it;
    without a signature only the header's own checksum can tell."""
    _, chunks = entry.encode("v", {"chapter": 12, "title": "김치"}, created_at=CREATED_AT)
    data = b"".join(bytes(c) for c in chunks)
    header_length = PREFIX.unpack_from(data)[2]
    for offset in range(PREFIX.size, PREFIX.size + header_length + 4):  # the JSON and its hash
        for bit in range(8):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            for check in (entry.decode, entry.verify):
                with pytest.raises(CorruptEntry):
                    check(io.BytesIO(bytes(damaged)), len(damaged))


@pytest.mark.parametrize("value", [None, "x" * 1000], ids=["shorter-than-a-prefix", "longer"])
def test_verify_calls_a_plain_pickle_legacy_and_an_entry_cut_inside_its_prefix_damage(value: object) -> None:
    legacy = pickle.dumps(value)
    assert entry.verify(io.BytesIO(legacy), len(legacy)) is None  # legacy: nothing to check
    _, chunks = entry.encode(value, None)
    cut = b"".join(bytes(c) for c in chunks)[:5]
    with pytest.raises(CorruptEntry, match="truncated"):
        entry.verify(io.BytesIO(cut), len(cut))


def test_an_empty_entry_is_damage_to_verify_as_to_a_load() -> None:
    with pytest.raises(CorruptEntry, match="empty"):
        entry.decode(io.BytesIO(b""), 0)
    with pytest.raises(CorruptEntry, match="empty"):
        entry.verify(io.BytesIO(b""), 0)


@pytest.mark.parametrize("padding", [0, 1 << 20], ids=["small", "streamed"])
@pytest.mark.parametrize("change", ["trailing bytes", "cut short"])
def test_an_entry_whose_size_disagrees_with_its_header_is_damage(padding: int, change: str) -> None:
    """Small entries are checked whole in memory, larger ones as they stream in: both compare
    the stored size with the header's before a byte of the payload is trusted."""
    _, chunks = entry.encode(("v", b"p" * padding), None, key="k.pkl")
    data = b"".join(bytes(c) for c in chunks)
    data = data + b"\x00" * 7 if change == "trailing bytes" else data[:-7]
    for check in (entry.decode, entry.verify):
        with pytest.raises(CorruptEntry, match="but its header declares"):
            check(io.BytesIO(data), len(data), "k.pkl")


def _with_header_text(data: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """``data`` with the text of its header's JSON changed, and the header hash sealed again."""
    header = entry.read_header(io.BytesIO(data))
    assert isinstance(header, entry.EntryHeader)
    _, version, header_len = PREFIX.unpack_from(data)
    text = change(data[PREFIX.size : PREFIX.size + header_len])
    sealed = PREFIX.pack(entry.MAGIC, version, len(text)) + text
    lead = sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed))
    return lead + bytes(-len(lead) % entry.ALIGNMENT) + data[header.header_size :]


@pytest.mark.parametrize(("change", "readable"), [
    (lambda text: text + b" \n\t\r ", True),  # whitespace after the JSON, as padding adds
    (lambda text: b" " + text, False),  # before it: no writer put any there
    (lambda text: text + b" {}", False),  # more than whitespace after it
    (lambda text: text.decode().encode("utf-16"), False),  # JSON headers are UTF-8
    (lambda text: codecs.BOM_UTF8 + text, False),
], ids=["spaces-after", "space-before", "data-after", "utf-16", "bom"])
def test_a_header_is_utf8_json_with_only_whitespace_after_it(change: Callable[[bytes], bytes], readable: bool) -> None:
    """Alike whether the entry is read whole and parsed in memory or its header read as a stream."""
    data = _with_header_text((DATA / "v2_entry.jdk").read_bytes(), change)
    for read in (lambda: entry.decode(io.BytesIO(data), len(data)),
                 lambda: entry.decode_buffer(memoryview(bytearray(data))),
                 lambda: entry.read_header(io.BytesIO(data), len(data))):
        if readable:
            read()
        else:
            with pytest.raises(CorruptEntry, match="header is unreadable"):
                read()


def test_an_entry_cut_after_its_header_hash_is_damage_in_memory_as_in_a_stream() -> None:
    header, chunks = entry.encode("v", None, key="k.pkl")
    data = b"".join(bytes(c) for c in chunks)
    hashed = len(header.sealed) + 4
    assert hashed < header.header_size
    for cut in (hashed, hashed + 1, header.header_size - 1):
        with pytest.raises(CorruptEntry, match="truncated"):
            entry.decode_buffer(memoryview(bytearray(data[:cut])), "k.pkl")
        with pytest.raises(CorruptEntry, match="truncated"):
            entry.read_header(io.BytesIO(data[:cut]), cut)


def test_header_size_asks_for_the_header_and_little_more() -> None:
    header, chunks = entry.encode("v", {"k": "v" * 100})
    data = b"".join(bytes(c) for c in chunks)
    assert header.header_size <= entry.header_size(data[:14]) <= header.header_size + 192
    assert entry.read_header(io.BytesIO(data[: entry.header_size(data[:14])])) == header
    assert entry.header_size(data[:5]) is None
    assert entry.header_size(pickle.dumps("legacy")) is None


def test_metadata_must_be_json() -> None:
    with pytest.raises(InvalidValue, match="JSON-serializable"):
        entry.encode(1, {"when": object()})


def test_class_missing_at_load_is_unsupported_not_corrupt() -> None:
    # An intact pickle whose class cannot be imported here: the code changed, not the data.
    forged = pickle.dumps(Path("x"), protocol=5).replace(b"pathlib", b"pathlix")
    with pytest.raises(UnsupportedEntry, match="lacks"):
        entry.decode(io.BytesIO(forged), len(forged))
    _, chunks = entry.encode(Path("x"))
    wrapped = b"".join(bytes(c) for c in chunks).replace(b"pathlib", b"pathlix")
    with pytest.raises(CorruptEntry):  # inside an entry the checksum notices the edit first
        entry.decode(io.BytesIO(wrapped), len(wrapped))


def _refuse_to_load() -> None:
    raise ValueError("this library version cannot rebuild the object")


class NeedsNewerLibrary:
    """Unpickles by calling a function that fails, as objects of a changed library do."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def test_intact_entry_that_fails_to_unpickle_is_unsupported_not_corrupt() -> None:
    _, chunks = entry.encode(NeedsNewerLibrary())
    data = b"".join(bytes(c) for c in chunks)
    with pytest.raises(UnsupportedEntry, match="bytes are intact"):
        entry.decode(io.BytesIO(data), len(data))


def test_reader_limits_are_not_mistaken_for_damage(monkeypatch: pytest.MonkeyPatch) -> None:
    _, chunks = entry.encode([1, 2, 3])
    data = b"".join(bytes(c) for c in chunks)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(entry.format.pickle, "loads", out_of_memory)
    with pytest.raises(UnsupportedEntry, match="not enough memory"):  # kept, and no bare MemoryError
        entry.decode(io.BytesIO(data), len(data))


def test_entries_record_their_key_and_readers_ignore_unknown_fields() -> None:
    header, chunks = entry.encode(VALUE, METADATA, created_at=CREATED_AT, key="chapters/김치.pkl")
    data = b"".join(bytes(c) for c in chunks)
    assert header.version == 2 and header.key == "chapters/김치.pkl"
    assert entry.decode(io.BytesIO(data), len(data), "chapters/김치.pkl").value == VALUE
    # Readers ignore fields they do not know, so a later writer may add some.
    future = make_golden.with_header(data, some_future_field={"x": 1})
    assert entry.decode(io.BytesIO(future), len(future)).value == VALUE


@pytest.mark.parametrize(("recorded", "reading", "belongs"), [
    ("x.pkl", "x.pkl", True),
    ("x.pkl", "cache/x.pkl", False),      # keys are relative to one root: exactly the same key
    ("cache/x.pkl", "x.pkl", False),
    ("x.pkl", "y.pkl", False),
    ("x.pkl", "cache/ax.pkl", False),
    ("a/x.pkl", "b/x.pkl", False),
    ("a/b/cfg.pkl", "b/cfg.pkl", False),  # a signed entry replayed under its trailing segments
])
def test_an_entry_for_another_key_is_refused_before_its_payload(recorded: str, reading: str, belongs: bool) -> None:
    _, chunks = entry.encode(["payload"], key=recorded)
    data = b"".join(bytes(c) for c in chunks)
    if belongs:
        assert entry.decode(io.BytesIO(data), len(data), reading).value == ["payload"]
    else:
        with pytest.raises(entry.ForeignEntry, match=f"written for key {recorded!r}"):
            entry.decode(io.BytesIO(data), len(data), reading)


def test_metadata_takes_numpy_scalars_and_datetimes_as_json() -> None:
    import datetime

    import numpy as np

    when = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc)
    metadata = {"seq": np.int64(30), "noise": np.float32(0.5), "ok": np.bool_(True), "when": when,
                "day": when.date(), "nested": [np.int32(1), {"x": np.float64(2.5)}]}
    header, chunks = entry.encode(1, metadata)
    expected = {"seq": 30, "noise": 0.5, "ok": True, "when": "2026-11-26T12:00:00+00:00", "day": "2026-11-26",
                "nested": [1, {"x": 2.5}]}
    assert header.metadata == expected
    data = b"".join(bytes(c) for c in chunks)
    assert entry.read_header(io.BytesIO(data)).metadata == expected


@pytest.mark.parametrize("metadata", [["seq", 30], "seq=30", 30])
def test_metadata_that_is_not_a_mapping_is_a_type_error(metadata: object) -> None:
    with pytest.raises(TypeError, match=f"metadata must be a mapping such as a dict, got {type(metadata).__name__}"):
        entry.encode(1, metadata)


def test_metadata_beyond_the_header_limit_is_refused_at_put() -> None:
    with pytest.raises(InvalidValue, match=r"metadata for key 'big.pkl' is \d+ bytes as JSON; the limit is"):
        entry.encode(1, {"blob": "x" * entry.MAX_METADATA_BYTES}, key="big.pkl")


def test_unpicklable_values_are_refused_naming_key_and_type() -> None:
    import threading

    with pytest.raises(InvalidValue, match=r"value under key 'lock.pkl' of type lock cannot be pickled"):
        entry.encode(threading.Lock(), key="lock.pkl")
    with pytest.raises(InvalidValue, match=r"value under key 'f.pkl' of type function cannot be pickled"):
        entry.encode(lambda: 1, key="f.pkl")


def test_values_nested_too_deeply_are_refused_not_a_recursion_error() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidValue, match=r"value under key 'deep.pkl' is nested too deeply to pickle \(list\)"):
        entry.encode(deep, key="deep.pkl")


class _BrokenOnLoad:
    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: object) -> None:
        raise RuntimeError("the object's own code failed")


class _HugeOnLoad:
    def __reduce__(self) -> tuple[type, tuple[int]]:
        return (bytearray, (1 << 60,))  # what loading it asks for: no machine has it


def test_a_legacy_pickle_whose_loading_raises_anything_is_kept_as_unsupported() -> None:
    data = pickle.dumps(_BrokenOnLoad(), protocol=4)
    with pytest.raises(UnsupportedEntry, match="RuntimeError: the object's own code failed"):
        entry.decode(io.BytesIO(data), len(data))
    data = pickle.dumps(_HugeOnLoad(), protocol=4)  # a MemoryError, never a value of None
    with pytest.raises(UnsupportedEntry):
        entry.decode(io.BytesIO(data), len(data))


@pytest.mark.parametrize("changes", [
    {"payload_length": float("inf")},
    {"payload_length": -1},
    {"payload_length": True},
    {"stream_length": "12"},
    {"key": 5},
    {"key": ["a"]},
    {"buffers": [1.5]},
])
def test_header_fields_of_the_wrong_type_are_damage(changes: dict) -> None:
    data = (DATA / "v2_entry.jdk").read_bytes()
    damaged = make_golden.with_header(data, **changes)
    with pytest.raises(CorruptEntry, match="header is unreadable"):
        entry.decode(io.BytesIO(damaged), len(damaged))


def test_a_header_declaring_more_than_its_stream_can_refer_to_is_damage() -> None:
    """Checked as the header is read, before anything is built from it: a stream longer than
    its payload, more buffers than the stream has bytes, more compressed buffers than buffers."""
    data = (DATA / "v2_entry.jdk").read_bytes()
    header = entry.read_header(io.BytesIO(data))
    assert isinstance(header, entry.EntryHeader) and header.stream_length is not None
    too_many_compressed = {str(index): {"codec": "zstd", "length": 1} for index in range(len(header.buffers) + 1)}
    for changes in ({"stream_length": header.payload_length + 1},
                    {"buffers": [1] * (header.stream_length + 1)},
                    {"compressed": too_many_compressed}):
        damaged = make_golden.with_header(data, **changes)
        with pytest.raises(CorruptEntry, match="header is unreadable"):
            entry.decode(io.BytesIO(damaged), len(damaged))


def test_a_compressed_length_its_frame_cannot_hold_is_refused_before_allocating() -> None:
    import numpy as np

    _, chunks = entry.encode(np.arange(200_000, dtype=np.float64), compression="zstd")
    data = b"".join(bytes(c) for c in chunks)
    header = entry.read_header(io.BytesIO(data))
    assert header.buffers[0].compression is not None
    described = header.buffers[0].compression.to_json()
    damaged = make_golden.with_header(data, compressed={"0": {**described, "length": 10**13}})
    with pytest.raises(CorruptEntry, match="cannot hold|declares"):
        entry.decode(io.BytesIO(damaged), len(damaged))


@pytest.mark.parametrize("serializer", ["pickle", "safe"])
def test_all_zero_arrays_compress_within_what_readers_accept(serializer: str) -> None:
    """zstd turns 64 MiB of zeros into ~2 kB, beyond the expansion readers accept from any
    entry (entry.limits.MAX_EXPANSION): the writer pads the stream, which both serializers
    ignore, so the entry holds at least 1/1024 of what it expands to, and loads."""
    import numpy as np

    from jangdok.entry.limits import MAX_EXPANSION

    value = [np.zeros(64 << 20, dtype=np.uint8), np.arange(100_000, dtype=np.int64), "text"]
    header, chunks = entry.encode(value, compression="zstd", serializer=serializer)
    data = b"".join(bytes(c) for c in chunks)
    expanded = sum(buffer.compression.length for buffer in header.buffers if buffer.compression is not None)
    assert expanded >= 64 << 20 and header.payload_length * MAX_EXPANSION >= expanded
    assert len(data) < 2 * (64 << 20) // MAX_EXPANSION  # what padding costs: 0.1% of the zeros
    loaded = entry.decode(io.BytesIO(data), len(data)).value
    assert not loaded[0].any() and loaded[0].shape == (64 << 20,) and np.array_equal(loaded[1], value[1])
    assert loaded[2] == "text"


@pytest.mark.parametrize("metadata, named, why", [
    ({"note": "lone \udc80"}, "metadata['note']", "lone surrogate"),
    ({"params": {"\udfff": 1}}, "the key '\\udfff' of metadata['params']", "lone surrogate"),
    ({"seeds": [1, 10**4400]}, "metadata['seeds'][1]", "4401 digits"),
])
def test_metadata_no_reader_could_parse_is_refused_naming_where(metadata: dict, named: str, why: str) -> None:
    with pytest.raises(InvalidValue, match="metadata for key 'x.pkl'") as raised:
        entry.encode(1, metadata, key="x.pkl")
    assert named in str(raised.value) and why in str(raised.value), str(raised.value)


def test_metadata_nested_too_deeply_is_refused_not_a_recursion_error() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidValue, match="nested too deeply"):
        entry.encode(1, {"deep": deep}, key="x.pkl")


@pytest.mark.parametrize("options", [{"created_at": "soon"}, {"created_at": 10**400}, {"expires_at": object()},
                                     {"created_at": float("nan")}, {"expires_at": 1e300}, {"key": 5}],
                         ids=["text", "huge int", "object", "nan", "year 10^292", "int key"])
def test_times_and_keys_no_reader_could_read_back_are_refused_when_encoding(options: dict[str, object]) -> None:
    """A writer records its times as JSON numbers and its key as a string; anything else would
    make an entry every reader calls damaged, so it is refused before anything is encoded."""
    with pytest.raises(InvalidValue, match="time|key"):
        entry.encode([1, 2], **options)  # type: ignore[arg-type]


def test_integer_times_are_recorded_as_the_floats_readers_see() -> None:
    header, chunks = entry.encode("v", created_at=1767225600, expires_at=1767225601, key="k.pkl")
    parsed = entry.parse_header(memoryview(b"".join(bytes(chunk) for chunk in chunks)))
    assert parsed == header and type(header.created_at) is float and header.expires_at == 1767225601.0


@pytest.mark.parametrize("options", [{"created_at": "1767225600"}, {"expires_at": " 2e9\n"}, {"created_at": True}],
                         ids=["digits as text", "padded text", "bool"])
def test_times_that_are_not_numbers_are_refused_even_where_float_reads_them(options: dict[str, object]) -> None:
    """float() reads text and booleans, but neither is a time: a caller passing "1767225600"
    or True has a bug the entry must not hide by recording 1970 or the parsed text."""
    with pytest.raises(InvalidValue, match="time"):
        entry.encode([1, 2], key="k.pkl", **options)  # type: ignore[arg-type]


def test_a_key_that_has_no_truth_value_is_refused_as_a_key() -> None:
    import numpy as np

    with pytest.raises(InvalidValue, match="key .* must be a string"):
        entry.encode([1, 2], key=np.array([1, 2]))  # type: ignore[arg-type]


def test_a_key_utf8_cannot_encode_is_refused_as_invalid() -> None:
    """Cache refuses such keys where they enter; the entry layer, called directly, must still
    answer with a jangdok error rather than the encoder's UnicodeEncodeError."""
    with pytest.raises(InvalidValue, match="lone surrogate"):
        entry.encode([1, 2], key="a\udc80.pkl")
