"""Property tests of the entry decoder: whatever bytes it is given, it answers with a value or
with one of its own errors, within time and memory its input bounds, and with signing keys it
never unpickles what they do not vouch for.

Entries are made by the real writer from generated values (both serializers, compressed or
not, signed or not), then damaged or forged: bit flips, truncations, insertions, header fields
replaced by hostile values with the header's hash redone (as anyone can), and a planted pickle
spliced into the payload with its checksum redone. The decoder is asked through every door:
``decode`` read whole and streamed, ``decode_buffer``, ``verify`` and ``read_header``.

The outcomes allowed:

- the original value: for bytes whose checksums were not redone, or that a signing reader
  accepted (the signature covers everything);
- any value, for an unsigned entry someone rewrote with its checksums redone (it is theirs);
- CorruptEntry, UnsupportedEntry, UntrustedEntry, or the misses ForeignEntry and ExpiredEntry.

An intact entry must give its value through every door. A header that is read must hold times
a date can show. Anything else (another exception, a hang, memory out of proportion, a planted
pickle run by a signing reader, a crash of the garbage collector over what a refusal left) is a
defect: every example starts with a full collection of what the one before left behind, which
is cheap with the process's earlier objects frozen. The profile below is derandomized and keeps
no example database, so CI runs the same examples every time; ``JANGDOK_PROPERTY_EXAMPLES``
asks for more.
"""

from __future__ import annotations

import datetime
import gc
import io
import json
import math
import os
import pickle
import struct
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import pytest
import xxhash
from forge import same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from memory import peak, reset_peak

import jangdok.entry.format as entry_format
import jangdok.entry.header as entry_header
import jangdok.entry.sealing as sealing
from jangdok import CorruptEntry, InvalidValue, Secret, UnsupportedEntry, UntrustedEntry, entry
from jangdok.entry import Trust
from jangdok.entry.limits import MAX_EXPANSION

KEY = "property-key-0123456789abcdef"
TRUST = Trust.from_secrets([Secret(KEY)])
EXAMPLES = int(os.environ.get("JANGDOK_PROPERTY_EXAMPLES", "200"))
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MISSES = (entry.ForeignEntry, entry.ExpiredEntry)
REFUSALS = (CorruptEntry, UnsupportedEntry, UntrustedEntry)


@pytest.fixture(autouse=True, scope="module")
def _collections_see_only_what_examples_make() -> Iterator[None]:
    """Objects made before the examples are left out of collections while they run, so that
    a full collection per example costs next to nothing."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()

# -- values ------------------------------------------------------------------------------------

_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)  # lone surrogates too
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(4298, 4302).map(lambda digits: -(10**digits) if digits % 2 else 10**digits),
    st.floats(allow_nan=True, allow_infinity=True), _text,
    st.binary(max_size=64), st.binary(min_size=4096, max_size=6000).map(bytearray),
)
_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.complex_number_dtypes(), hnp.boolean_dtypes(), hnp.datetime64_dtypes(),
                    hnp.byte_string_dtypes(max_len=4), hnp.unicode_string_dtypes(max_len=4))
_arrays = st.one_of(
    hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)),
    # Large enough to travel out of band and to be compressed: zeros, ramps, noise.
    st.tuples(st.sampled_from(["zeros", "ramp", "noise"]), st.integers(600, 3000),
              st.sampled_from(["<f8", "<i4", "|u1", ">f4"])).map(lambda spec: _big_array(*spec)),
)
# Containers nested around the deepest the safe serializer stores (MAX_NESTING: 100), in
# repeating patterns of lists, tuples and dicts.
_deep = st.tuples(st.integers(95, 105), st.lists(st.sampled_from([list, tuple, dict]), min_size=1, max_size=3),
                  _scalars).map(lambda spec: _nested(*spec))
_leaves = st.one_of(_scalars, _arrays, _arrays.map(lambda array: array[()] if array.ndim == 0 else array), _deep)
VALUES = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(_text, inner, max_size=4)), max_leaves=12)


def _nested(depth: int, kinds: list[type], leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        kind = kinds[level % len(kinds)]
        value = [value] if kind is list else (value,) if kind is tuple else {"k": value}
    return value


def _big_array(kind: str, count: int, dtype: str) -> np.ndarray:
    if kind == "zeros":
        return np.zeros(count, dtype=dtype)
    if kind == "ramp":
        return np.arange(count).astype(dtype)
    return np.random.default_rng(count).integers(0, 255, count * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype)


class Planted:
    """Unpickling this calls :func:`_ran`: it stands for any code a stranger would run."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ran, ("planted",))


RAN: list[str] = []


def _ran(token: str) -> str:
    RAN.append(token)
    return token


# -- entries and what is done to them ----------------------------------------------------------

SETUPS = st.fixed_dictionaries({
    "serializer": st.sampled_from(["pickle", "safe"]),
    "compression": st.sampled_from(["none", "zstd"]),
    "signed": st.booleans(),
    "reader_signs": st.booleans(),
})


def _expected(value: Any, setup: dict[str, Any]) -> Any:
    """What a load should give: the value itself, or with pickle what pickle itself gives back
    (numpy, for one, loses a datetime64's byte order in its own pickles)."""
    return value if setup["serializer"] == "safe" else pickle.loads(pickle.dumps(value, protocol=5))


def _encode(value: Any, setup: dict[str, Any], key: str = "k.pkl") -> bytes | None:
    """The real writer's entry for ``value``; ``None`` when it refuses the value."""
    try:
        _, chunks = entry.encode(value, {"seq": 30}, created_at=1767225600.0, key=key, compression=setup["compression"],
                                 serializer=setup["serializer"], trust=TRUST if setup["signed"] else None)
    except InvalidValue:
        return None
    return b"".join(bytes(chunk) for chunk in chunks)


_PREFIX = struct.Struct(">8sHI")


@dataclass
class Parts:
    """An entry taken apart, to be put together again with its header's hash redone (its MAC
    bytes kept as they were): what anyone without the key can write."""

    version: int
    fields: dict[str, Any]
    mac: bytes
    payload: bytes
    raw: str | None = None
    """JSON text used instead of ``fields`` (nesting deeper than the json module writes)."""

    @classmethod
    def of(cls, data: bytes) -> Parts:
        """The parts of an intact entry."""
        _, version, length = _PREFIX.unpack_from(data)
        header = entry.read_header(io.BytesIO(data))
        return cls(version, json.loads(data[_PREFIX.size:_PREFIX.size + length]), header.mac,
                   data[header.header_size:])

    def assemble(self) -> bytes:
        text = self.raw if self.raw is not None else json.dumps(self.fields, allow_nan=True, separators=(",", ":"))
        blob = text.encode("utf-8", "surrogatepass")
        sealed = _PREFIX.pack(entry.MAGIC, self.version, len(blob)) + blob
        lead = sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed)) + self.mac
        if self.version >= 2:  # format 2 pads to an aligned payload; format 1 does not
            lead += bytes(-len(lead) % entry.ALIGNMENT)
        return lead + self.payload

    def with_field(self, name: str, value: Any) -> Parts:
        fields = {**self.fields, name: value if not isinstance(value, _RawJson) else "\0raw\0"}
        raw = None
        if isinstance(value, _RawJson):
            raw = json.dumps(fields, separators=(",", ":")).replace('"\\u0000raw\\u0000"', value.text)
        return Parts(self.version, fields, self.mac, self.payload, raw)

    def planted(self) -> Parts | None:
        """The payload's stream replaced by a planted pickle, the digest redone to match;
        ``None`` if the stream has no room for it."""
        stream_length = self.fields.get("stream_length", len(self.payload))  # format 1: all stream
        planted = pickle.dumps(Planted(), protocol=5)
        if len(planted) > stream_length:
            return None
        payload = planted + b" " * (stream_length - len(planted)) + self.payload[stream_length:]
        fields = {**self.fields, "digest": xxhash.xxh3_128_hexdigest(payload)}
        return Parts(self.version, fields, self.mac, payload)


_HOSTILE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), _text,
    st.sampled_from(["x" * 30_000, "\ud800" * 1000]),
    st.lists(st.integers(0, 10**6), max_size=50), st.sampled_from([[0] * 100_000, [1 << 40] * 1000]),
    st.sampled_from([5, 500, 5_000, 50_000]).map(lambda depth: _RawJson("[" * depth + "]" * depth)),
    # Times: JSON's 1e999 parses as infinity; others lie beyond the years a date can show.
    st.sampled_from(["1e999", "-1e999", "1e300", "-1e300", "1e20", "253402300800", "-62135596801"]).map(
        lambda text: _RawJson(text)),
    st.dictionaries(_text, st.integers(), max_size=5),
    st.sampled_from([1, 10, 1000]).map(lambda n: {str(i): {"codec": "zstd", "shuffle": 0, "length": 1 << 40}
                                                  for i in range(n)}),
)
_FIELD_NAMES = st.sampled_from(["serializer", "checksum", "digest", "payload_length", "stream_length", "buffers",
                                "compressed", "mac_length", "created_at", "metadata", "key", "expires_at", "mac",
                                "mac_chunk", "key_id", "compression", "future_field"])


class _RawJson:
    """JSON text inserted as it is."""

    def __init__(self, text: str) -> None:
        self.text = text


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    """A damaged or forged copy of ``data``, and whether its checksums were redone."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "field", "splice", "described",
                                 "payload"]))
    if kind == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return "damaged", data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    if kind == "truncate":
        return "damaged", data[:draw(st.integers(0, len(data) - 1))]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return "damaged", data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if kind == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=32))
        return "damaged", data[:at] + junk + data[at + len(junk):]
    if kind == "field":
        return "forged", Parts.of(data).with_field(draw(_FIELD_NAMES), draw(_HOSTILE)).assemble()
    if kind == "described":
        return _described(draw, Parts.of(data))
    if kind == "payload":  # damage that only decoding can find: the digest redone
        parts = Parts.of(data)
        if not parts.payload:
            return "intact", data
        at = draw(st.integers(0, len(parts.payload) - 1))
        flipped = parts.payload[at] ^ (1 << draw(st.integers(0, 7)))
        payload = parts.payload[:at] + bytes([flipped]) + parts.payload[at + 1:]
        fields = {**parts.fields, "digest": xxhash.xxh3_128_hexdigest(payload)}
        return "forged", Parts(parts.version, fields, parts.mac, payload).assemble()
    planted = Parts.of(data).planted()
    return ("planted", planted.assemble()) if planted is not None else ("intact", data)


def _described(draw: st.DrawFn, parts: Parts) -> tuple[str, bytes]:
    """One buffer's compression description with its element size or length changed: other
    sizes than writers use, lengths its zstd frame disagrees with."""
    lengths = parts.fields.get("buffers")
    if not isinstance(lengths, list) or not lengths:
        return "intact", parts.assemble()
    index = draw(st.integers(0, len(lengths) - 1))
    described = dict(parts.fields.get("compressed") or {})
    how = dict(described.get(str(index)) or {"codec": "zstd", "shuffle": 0, "length": lengths[index]})
    if draw(st.booleans()):  # elements of a buffer's size or half of it: a step per byte, in Python
        how["shuffle"] = draw(st.sampled_from([how["length"], how["length"] // 2, 0, 1, 3, 8, 16, -8]))
    else:
        how["length"] = max(0, how["length"] + draw(st.sampled_from([-4096, -64, -8, -1, 1, 8, 64, 4096])))
    described[str(index)] = how
    return "forged", parts.with_field("compressed", described).assemble()


# -- the decoder's answers ---------------------------------------------------------------------


class Answer(NamedTuple):
    door: str
    outcome: str
    """``value``, ``refused`` (a jangdok error) or ``miss`` (another key's, or expired)."""
    detail: Any
    """The value, or the exception."""


def _answers(data: bytes, reader_signs: bool, key: str | None = "k.pkl") -> list[Answer]:
    """What every door of the decoder makes of ``data``, read as ``key``'s entry, each within a
    time and memory its size bounds."""
    gc.collect()  # what the examples before left: a crash here is a refusal's doing
    trust = TRUST if reader_signs else None
    doors = [
        ("decode", lambda: entry.decode(io.BytesIO(data), len(data), key, trust=trust).value, nullcontext()),
        ("streamed", lambda: entry.decode(io.BytesIO(data), len(data), key, trust=trust).value,
         mock.patch.object(entry_format, "_WHOLE_READ", -1)),
        ("buffer", lambda: entry.decode_buffer(memoryview(bytearray(data)), key, trust).value, nullcontext()),
        ("verify", lambda: entry.verify(io.BytesIO(data), len(data), key, trust), nullcontext()),
        ("header", lambda: entry.read_header(io.BytesIO(data), len(data)), nullcontext()),
    ]
    answers = []
    for door, ask, context in doors:
        reset_peak()
        before, started = peak(), time.monotonic()
        with context:
            try:
                answer = Answer(door, "value", ask())
            except REFUSALS as exc:
                answer = Answer(door, "refused", exc)
                assert not _views_still_exported(exc), f"{door}: {_views_still_exported(exc)} after {exc!r}"
            except MISSES as exc:
                answer = Answer(door, "miss", exc)
        elapsed, after = time.monotonic() - started, peak()
        # Bounds by the entry's size: generous enough for two busy cores, far below a blow-up.
        assert elapsed < 2 + len(data) * 20e-6, f"{door} took {elapsed:.1f} s for {len(data)} bytes"
        if before is not None and after is not None:
            allowed = 64e6 + 2 * MAX_EXPANSION * len(data)
            assert after - before < allowed, f"{door} used {after - before:,} bytes for {len(data)} bytes"
        message = str(answer.detail) if answer.outcome != "value" else ""
        if len(message) > 2000:  # messages end up in logs; a hostile field must not fill them
            pytest.fail(f"{door}: a message of {len(message):,} characters: {message[:300]}...", pytrace=False)
        answers.append(answer)
    return answers


def _views_still_exported(problem: BaseException) -> list[str]:
    """The memoryviews the frames of a refusal still hold whose buffer something still exports.
    Before Python 3.12 the garbage collector crashes the interpreter when it clears one (as it
    does once the refusal is kept in a reference cycle); release() refuses exactly those, and
    the others, released, harm nothing: the read is over."""
    found = []
    link: BaseException | None = problem
    while link is not None:
        trace = link.__traceback__
        while trace is not None:
            for name, value in trace.tb_frame.f_locals.items():
                if isinstance(value, memoryview):
                    try:
                        value.release()
                    except BufferError:
                        found.append(f"{trace.tb_frame.f_code.co_name}(): {name}")
            trace = trace.tb_next
        link = link.__cause__ or link.__context__
    return found


def _judge(answers: list[Answer], original: Any, kind: str, signed_reader: bool) -> None:
    for answer in answers:
        if isinstance(answer.detail, entry.EntryHeader):  # what `jangdok stat` shows of it
            for seconds in (answer.detail.created_at, answer.detail.expires_at):
                assert seconds is None or datetime.datetime.fromtimestamp(seconds), answer
        if answer.outcome != "value" or answer.door in ("verify", "header"):
            continue  # a refusal, a miss, or a header: nothing to compare
        if kind in ("intact", "damaged") or signed_reader:
            assert same(original, answer.detail), f"{answer.door} returned another value than was written ({kind})"


# -- properties --------------------------------------------------------------------------------


@PROFILE
@given(value=VALUES, setup=SETUPS)
def test_every_value_either_round_trips_or_is_refused_at_put(value: Any, setup: dict[str, Any]) -> None:
    data = _encode(value, setup)
    if data is None:
        return
    if setup["reader_signs"] and not setup["signed"]:
        for answer in _answers(data, True)[:4]:
            assert answer.outcome == "refused" and isinstance(answer.detail, UntrustedEntry), answer
        return
    answers = _answers(data, setup["reader_signs"])
    for answer in answers:  # what a writer wrote, every reader reads
        assert answer.outcome == "value", answer
    _judge(answers, _expected(value, setup), "intact", setup["reader_signs"])


_COMPRESSIBLE = st.one_of(
    st.tuples(st.sampled_from(["zeros", "ramp"]), st.sampled_from([600, 3000]), st.sampled_from(["<f8", "<i4", "<i2"])),
    st.tuples(st.just("zeros"), st.just(1 << 20), st.sampled_from(["<f8", "|u1"])),  # 1-8 MB in a few kB
).map(lambda spec: _big_array(*spec))


@PROFILE
@given(arrays=st.lists(_COMPRESSIBLE, min_size=1, max_size=3), setup=SETUPS, data=st.data())
def test_compressed_buffers_described_otherwise_give_a_value_or_a_jangdok_error(
        arrays: list[np.ndarray], setup: dict[str, Any], data: st.DataObject) -> None:
    """A compressed buffer's description is what decompressing trusts to allocate and to
    un-shuffle: every element size and every length its frame disagrees with, on both
    serializers, answered within the bounds of the entry's size."""
    setup = {**setup, "compression": "zstd"}
    written = _encode(arrays, setup)
    assert written is not None
    kind, mutated = _described(data.draw, Parts.of(written))
    _judge(_answers(mutated, setup["reader_signs"]), _expected(arrays, setup), kind, setup["reader_signs"])


@PROFILE
@given(value=VALUES, setup=SETUPS, data=st.data())
def test_damaged_or_forged_entries_give_a_value_or_a_jangdok_error(value: Any, setup: dict[str, Any],
                                                                    data: st.DataObject) -> None:
    written = _encode(value, setup)
    if written is None:
        return
    kind, mutated = data.draw(mutations(written))
    if kind == "planted" and setup["serializer"] == "pickle" and not setup["reader_signs"]:
        return  # an unsigned pickle runs its writer's code: what signing keys are for
    RAN.clear()
    answers = _answers(mutated, setup["reader_signs"])
    if setup["reader_signs"]:
        assert RAN == [], "a signing reader ran a planted pickle"
    _judge(answers, _expected(value, setup), kind, setup["reader_signs"])


GOLDEN = Path(__file__).parent / "data"


@PROFILE
@given(name=st.sampled_from(["v1_entry.jdk", "v2_entry.jdk"]), reader_signs=st.booleans(), data=st.data())
def test_entries_of_earlier_versions_damaged_or_forged_give_a_value_or_a_jangdok_error(
        name: str, reader_signs: bool, data: st.DataObject) -> None:
    """Format 1 parses its header differently: its golden entry, mutated the same ways."""
    from make_golden import V2_VALUE, VALUE

    written = (GOLDEN / name).read_bytes()
    kind, mutated = data.draw(mutations(written))
    if kind == "planted" and not reader_signs:
        return  # an unsigned pickle runs its writer's code
    RAN.clear()
    answers = _answers(mutated, reader_signs, key=None)
    assert RAN == [] or not reader_signs
    _judge(answers, VALUE if name.startswith("v1") else V2_VALUE, kind, reader_signs)


@PROFILE
@given(setup=SETUPS, data=st.data())
def test_a_signing_reader_never_unpickles_a_planted_payload(setup: dict[str, Any], data: st.DataObject) -> None:
    """The planted pickle under every forged header: nothing runs, whatever else is changed."""
    setup = {**setup, "serializer": "pickle", "reader_signs": True}
    written = _encode(["a value with room for a planted stream " * 4, np.arange(2000)], setup)
    assert written is not None
    forged = Parts.of(written).planted()
    assert forged is not None
    for _ in range(data.draw(st.integers(0, 3))):
        forged = forged.with_field(data.draw(_FIELD_NAMES), data.draw(_HOSTILE))
    forged = forged.assemble()
    RAN.clear()
    for answer in _answers(forged, True):
        assert answer.outcome != "value" or answer.door == "header", f"{answer.door} loaded a forged entry"
    assert RAN == []


@PROFILE
@given(stream=st.binary(max_size=300), buffers=st.lists(st.binary(max_size=5000), max_size=3),
       serializer=st.sampled_from(["safe", "pickle"]),
       fields=st.dictionaries(_FIELD_NAMES, _HOSTILE.filter(lambda value: not isinstance(value, _RawJson)), max_size=3))
def test_arbitrary_payloads_under_valid_checksums_give_a_value_or_a_jangdok_error(
        stream: bytes, buffers: list[bytes], serializer: str, fields: dict[str, Any]) -> None:
    """Bytes no writer made, with every checksum right: the safe serializer must take anything
    (pickle only when signed; an unsigned pickle is code by design)."""
    from forge import entry_bytes

    header = {**fields, "key": "k.pkl"}
    if serializer == "pickle":
        header["serializer"] = "pickle"
    data = entry_bytes(stream, buffers, serializer=serializer, fields=header)
    RAN.clear()
    _answers(data, reader_signs=header.get("serializer") == "pickle")  # refused before anything is read
    assert RAN == []


def test_the_profile_keeps_ci_reproducible() -> None:
    assert PROFILE.derandomize and PROFILE.database is None and PROFILE.deadline is None
    assert math.isfinite(PROFILE.max_examples)


@pytest.mark.parametrize("reader_signs", [False, True])
def test_known_escapes_stay_closed(reader_signs: bool) -> None:
    """The defects these properties found, each as it was first seen: header fields of a type
    no writer writes escaped as TypeError (unhashable), and a 30 kB key id filled the message."""
    written = _encode([1, 2], {"serializer": "safe", "compression": "none", "signed": True})
    assert written is not None
    for name, value in [("serializer", ["safe"]), ("checksum", {"x": 1}), ("mac", [1])]:
        for answer in _answers(Parts.of(written).with_field(name, value).assemble(), reader_signs):
            assert answer.outcome != "value" or answer.door == "header", (name, answer)
    _answers(Parts.of(written).with_field("key_id", "x" * 30_000).assemble(), reader_signs)  # messages stay short


# -- what a writer keeps is what a reader parses ------------------------------------------------

_JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), _text)
METADATA = st.one_of(st.none(), st.dictionaries(_text, st.recursive(_JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8), max_size=4))


@PROFILE
@given(value=VALUES, metadata=METADATA, setup=SETUPS, key=st.sampled_from(["k.pkl", "김치/a b.pkl", "x" * 300]),
       created_at=st.floats(0, 4e9), ttl=st.none() | st.floats(1e-3, 1e9))
def test_the_header_a_writer_keeps_is_the_one_its_bytes_parse_to(value: Any, metadata: Any, setup: dict[str, Any],
                                                                  key: str, created_at: float, ttl: Any) -> None:
    """The writer keeps its header, so that this process never parses it again (and whoever
    reads the same bytes here gets that header): it must be exactly what parsing builds."""
    try:
        header, chunks = entry.encode(value, metadata, created_at=created_at, key=key,
                                      expires_at=None if ttl is None else created_at + ttl,
                                      compression=setup["compression"], serializer=setup["serializer"],
                                      trust=TRUST if setup["signed"] else None)
    except InvalidValue:
        return
    data = memoryview(b"".join(bytes(chunk) for chunk in chunks))
    with mock.patch.dict(entry_header._PARSED, clear=True):  # nothing kept: a parse from the bytes
        parsed = entry.parse_header(data)
        streamed = entry.read_header(io.BytesIO(data), data.nbytes)
    assert parsed == header and streamed == header
    assert entry.parse_header(data) == header


def _sealed_or_error(fields: dict[str, Any], plain: bool) -> bytes | str:
    try:
        return sealing.seal(fields, plain)
    except (UnicodeEncodeError, ValueError) as exc:  # a lone surrogate; a metadata number too long
        return type(exc).__name__


_COUNT = st.integers(0, 2**62)
_TIME = st.floats(-6e10, 2.5e11)


@PROFILE
@given(lengths=st.lists(_COUNT, max_size=6), counts=st.tuples(_COUNT, _COUNT), created_at=_TIME,
       expires_at=st.none() | _TIME, key=st.none() | _text | st.just("김치/\"x\"\n" * 40), metadata=METADATA,
       serializer=st.sampled_from(["pickle", "safe"]))
def test_a_plain_header_is_the_json_the_encoder_writes(lengths: list[int], counts: tuple[int, int], created_at: float,
                                                       expires_at: float | None, key: str | None, metadata: Any,
                                                       serializer: str) -> None:
    """Most saves format their header's JSON directly rather than through the JSON encoder: the
    bytes must be the encoder's, escapes, float forms and key order included."""
    fields: dict[str, Any] = {"serializer": serializer, "checksum": "xxh3_128", "payload_length": counts[0],
                              "digest": xxhash.xxh3_128_hexdigest(b"x"), "stream_length": counts[1],
                              "buffers": lengths, "compressed": {}, "mac_length": 0, "created_at": created_at,
                              "metadata": metadata}
    if key is not None:
        fields["key"] = key
    if expires_at is not None:
        fields["expires_at"] = expires_at
    assert _sealed_or_error(fields, plain=True) == _sealed_or_error(fields, plain=False)
