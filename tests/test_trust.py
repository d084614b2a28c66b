"""Signed entries: with signing keys, nothing a stranger wrote is ever unpickled.

A stranger here is anyone who can write the folder or the bucket: they plant a pickle whose
``__reduce__`` would create a marker folder, as an unsigned entry, as a plain pickle, signed
with their own key, and with a forged signature under our key id. The marker must never appear.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import memory
import numpy as np
import pytest
import xxhash

from jangdok import Cache, ConfigError, Secret, Settings
from jangdok.entry import encode, read_header
from jangdok.entry.signing import Trust, key_id

KEY = "team-key-0123456789abcdef"
OTHER_KEY = "another-teams-key-fedcba9876543210"
ATTACKER_KEY = "attacker-key-00000000000000000000"


class Payload:
    """Unpickling this creates ``marker``: it stands for any code an attacker would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def _stored(chunks: list[Any]) -> bytes:
    return b"".join(bytes(chunk) for chunk in chunks)


def planted(kind: str, marker: Path, key: str) -> bytes:
    """The bytes an attacker writes under ``key``."""
    evil = Payload(str(marker))
    if kind == "plain pickle":
        return pickle.dumps(evil)
    if kind == "unsigned entry":
        return _stored(encode(evil, key=key)[1])
    if kind == "signed with their own key":
        return _stored(encode(evil, key=key, trust=Trust.from_secrets([Secret(ATTACKER_KEY)]))[1])
    # The header names our key id; the attacker cannot make the matching MAC without our key.
    forged = Trust(((key_id(KEY.encode()), ATTACKER_KEY.encode()),))
    return _stored(encode(evil, key=key, trust=forged)[1])


KINDS = ["unsigned entry", "plain pickle", "signed with their own key", "forged signature under our key id"]
WHY = {"unsigned entry": "entry is not signed, and this cache requires a signature",
       "signed with their own key": "which this cache does not hold"}
"""What the WARNING says of the kinds whose reason names a fix (add the writer's key, sign)."""


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_entry_is_never_unpickled_with_signing_on(kind: str, cache_url: str, make_settings: Any,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "marker"
    cache = Cache.from_settings(make_settings(cache_url, signing_keys=(KEY,)))
    cache.store.write("model.pkl", planted(kind, marker, "model.pkl"))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("model.pkl") is None
        assert cache.get_or_compute("model.pkl", lambda: "recomputed") == "recomputed"
    assert not marker.exists()
    assert "refused, not loaded" in caplog.text and cache.store.path("model.pkl") in caplog.text
    assert WHY.get(kind, "") in caplog.text
    assert cache.stats()[cache.store_label].untrusted >= 1
    assert cache.get("model.pkl") == "recomputed"  # signed now, with our key
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_entry_is_kept_unless_the_user_asks(kind: str, cache_url: str, make_settings: Any,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    keeping = Cache.from_settings(make_settings(cache_url, signing_keys=(KEY,)))
    keeping.store.write("model.pkl", planted(kind, marker, "model.pkl"))
    assert keeping.get("model.pkl") is None and keeping.exists("model.pkl")
    deleting = Cache.from_settings(make_settings(cache_url, signing_keys=(KEY,), delete_untrusted=True))
    assert deleting.get("model.pkl") is None and not deleting.exists("model.pkl")
    assert not marker.exists()
    refused = deleting.stats()[deleting.store_label]
    assert (refused.untrusted, refused.corrupt_deleted) == (1, 0)  # refused and deleted: not damage


def test_without_signing_a_planted_pickle_runs_its_code(tmp_path: Path) -> None:
    """What the README warns about, shown: signing off, a plain pickle is trusted."""
    marker = tmp_path / "marker"
    cache = Cache(str(tmp_path / "cache"))
    cache.store.write("model.pkl", planted("plain pickle", marker, "model.pkl"))
    cache.get("model.pkl")
    assert marker.exists()


def test_plain_pickles_load_with_signing_on_only_when_allowed(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    folder = str(tmp_path / "cache")
    Cache(folder).store.write("old.pkl", pickle.dumps({"data": [1, 2, 3]}))
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert Cache(folder, signing_keys=KEY).get("old.pkl") is None
    assert "JANGDOK_ALLOW_LEGACY=1" in caplog.text  # the message says how
    assert Cache(folder, signing_keys=KEY, allow_legacy=True).get("old.pkl") == {"data": [1, 2, 3]}


def test_keys_rotate_sign_with_the_first_verify_with_any(tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    old = Cache(folder, signing_keys=KEY)
    old.put("a.pkl", np.arange(10_000))
    rotated = Cache(folder, signing_keys=f"{OTHER_KEY},{KEY}")
    assert np.array_equal(rotated.get("a.pkl"), np.arange(10_000))  # signed by the old key
    rotated.put("b.pkl", "new")
    assert old.get("b.pkl") is None  # the old key alone cannot vouch for the new key's entries
    assert Cache(folder, signing_keys=OTHER_KEY).get("b.pkl") == "new"
    assert rotated.get_entry("b.pkl") is not None


def test_signed_entries_load_where_signing_is_off(tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    Cache(folder, signing_keys=KEY).put("a.pkl", [np.ones(5000), "x"])
    value = Cache(folder).get("a.pkl")
    assert value[1] == "x" and value[0].sum() == 5000


@pytest.mark.parametrize("size", [100, 10_000_000])  # read whole; streamed, several MAC pieces
def test_damage_to_a_signed_entry_is_damage_not_distrust(size: int, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cache = Cache(str(folder), signing_keys=KEY)
    cache.put("a.pkl", np.zeros(size, dtype=np.uint8))
    path = folder / "a.pkl"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    assert cache.get("a.pkl") is None
    stats = cache.stats()["local"]
    assert stats.corrupt_deleted == 1 and stats.untrusted == 0 and not path.exists()


def _mac_span(data: bytes) -> slice:
    """Where an entry's MAC lies: right after its sealed header and the header's hash."""
    header = read_header(io.BytesIO(data))
    start = len(header.sealed) + 4
    return slice(start, start + len(header.mac))


@pytest.mark.parametrize("size", [100, 10_000_000])
def test_a_genuine_signature_moved_onto_other_bytes_is_refused(size: int, tmp_path: Path) -> None:
    """The attacker copies our valid MAC onto their header and payload (whose checksums they
    can compute): the MAC covers both, so it no longer matches."""
    folder = tmp_path / "cache"
    Cache(str(folder), signing_keys=KEY).put("a.pkl", np.zeros(size, dtype=np.uint8))
    genuine = (folder / "a.pkl").read_bytes()
    ours = Trust(((key_id(KEY.encode()), ATTACKER_KEY.encode()),))
    evil = bytearray(_stored(encode(np.ones(size, dtype=np.uint8), key="a.pkl", trust=ours)[1]))
    evil[_mac_span(bytes(evil))] = genuine[_mac_span(genuine)]
    (folder / "a.pkl").write_bytes(bytes(evil))
    cache = Cache(str(folder), signing_keys=KEY)
    assert cache.get("a.pkl") is None
    assert cache.stats()["local"].untrusted == 1 and (folder / "a.pkl").exists()


@pytest.mark.parametrize("size", [100, 10_000_000])
def test_a_mac_changed_under_a_header_already_read_is_still_checked(size: int, tmp_path: Path) -> None:
    """A process keeps the headers it wrote and read (their bytes parse the same every time);
    the MAC after them is read and checked on every load even so."""
    folder = tmp_path / "cache"
    cache = Cache(str(folder), signing_keys=KEY)
    cache.put("a.pkl", np.arange(size // 8, dtype=np.int64))
    assert cache.get("a.pkl") is not None
    path = folder / "a.pkl"
    data = bytearray(path.read_bytes())
    data[_mac_span(bytes(data)).start] ^= 0x01
    path.write_bytes(bytes(data))
    assert cache.get("a.pkl") is None
    assert cache.stats()["local"].untrusted == 1 and path.exists()


def test_signing_keys_are_checked_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="shorter than 16 characters.*token_urlsafe"):
        Settings(signing_keys=("short",))
    monkeypatch.setenv("JANGDOK_SIGNING_KEY", f"{KEY} {OTHER_KEY}")
    settings = Settings.resolve()
    assert [key.reveal() for key in settings.signing_keys] == [KEY, OTHER_KEY]
    shown = repr(settings) + repr(Cache.from_settings(settings).trust)
    assert KEY not in shown and OTHER_KEY not in shown and KEY[:-4] not in shown


def test_a_header_declaring_tiny_signature_pieces_is_refused_at_once(tmp_path: Path) -> None:
    """A forged header cannot make a reader hash a payload one byte per task."""
    folder = tmp_path / "cache"
    Cache(str(folder), signing_keys=KEY).put("a.pkl", np.zeros(8 << 20, dtype=np.uint8))
    data = (folder / "a.pkl").read_bytes()
    sealed = read_header(io.BytesIO(data)).sealed
    forged_sealed = sealed.replace(b'"mac_chunk":4194304', b'"mac_chunk":1      ', 1)
    assert forged_sealed != sealed and len(forged_sealed) == len(sealed)
    hashed = forged_sealed + struct.pack(">I", xxhash.xxh32_intdigest(forged_sealed))  # what an attacker can redo
    (folder / "a.pkl").write_bytes(hashed + data[len(hashed):])
    started = time.monotonic()
    assert Cache(str(folder), signing_keys=KEY).get("a.pkl") is None
    assert time.monotonic() - started < 5


_THREADS_AFTER_SIGNED_WORK = """
import os, sys, threading, warnings
import numpy as np
from jangdok import Cache

folder, mmap = sys.argv[1], sys.argv[2] == "mmap"
cache = Cache(folder, signing_keys="team-key-0123456789abcdef", mmap=mmap, fallback=False)
value = np.arange(5 << 20, dtype=np.float32)  # 20 MB: several signature pieces, hashed by threads
cache.put("a.pkl", value)
assert np.array_equal(cache.get("a.pkl"), value)
assert cache.verify("a.pkl").status == "ok"
path = os.path.join(folder, "a.pkl")
with open(path, "r+b") as file:  # damage found by the checksum, before the signature is judged
    file.seek(-100, os.SEEK_END)
    file.write(b"damage")
assert cache.get("a.pkl") is None
left = sorted(thread.name for thread in threading.enumerate() if thread is not threading.main_thread())
print("threads:", left, flush=True)
with warnings.catch_warnings(record=True) as seen:  # a warning raised by fork() would be swallowed
    warnings.simplefilter("always")  # 3.12+: DeprecationWarning when forking a process with threads
    pid = os.fork()
    if pid == 0:
        os._exit(0)
os.waitpid(pid, 0)
print("fork warnings:", [str(warning.message) for warning in seen], flush=True)
"""


@pytest.mark.parametrize("mode", ["read", "mmap"])
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_no_hashing_thread_outlives_a_signed_save_or_load(mode: str, tmp_path: Path) -> None:
    """In a fresh interpreter (pytest's own workers run threads): after signed saves, loads, a
    verify and a damaged load, no thread is left, and a fork warns of none (Python 3.12+ would)."""
    result = subprocess.run([sys.executable, "-c", _THREADS_AFTER_SIGNED_WORK, str(tmp_path / "cache"), mode],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["threads: []", "fork warnings: []"], result.stdout + result.stderr[-2000:]


# -- what is verified is what is unpickled ---------------------------------------------------------


def test_a_signed_load_with_mmap_is_private_memory(tmp_path: Path) -> None:
    """Someone who can write the folder rewrites the file in place after a signed load: the
    loaded value must not change (a memory map, even copy-on-write, would show the write)."""
    folder = tmp_path / "cache"
    cache = Cache(str(folder), signing_keys=KEY, mmap=True, fallback=False)
    value = np.arange(1 << 20, dtype=np.int64)  # 8 MB, travelling out of band
    cache.put("a.pkl", value)
    loaded = cache.get("a.pkl")
    path = folder / "a.pkl"
    header = read_header(io.BytesIO(path.read_bytes()))
    with open(path, "r+b") as file:  # in place, as an attacker holding no key would
        file.seek(header.header_size)
        file.write(b"\xff" * header.payload_length)
    assert np.array_equal(loaded, value)


_FLIPPER = """
import sys, time
path, offset, genuine, evil = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
deadline = time.monotonic() + 120
with open(path, "r+b", buffering=0) as file:
    print("flipping", flush=True)
    while time.monotonic() < deadline:
        file.seek(offset)
        file.write(evil)
        file.seek(offset)
        file.write(genuine)
"""


def test_flipping_the_stream_in_place_during_signed_mmap_loads_runs_nothing(tmp_path: Path) -> None:
    """The review's attack: a process without the key flips a signed entry's pickle stream
    between our own bytes and its payload, in place, while a signed reader with mmap=True loads
    it again and again. The bytes verified must be the bytes unpickled: the payload never runs."""
    folder, marker = tmp_path / "cache", tmp_path / "marker"
    cache = Cache(str(folder), signing_keys=KEY, mmap=True, fallback=False)
    value = {"note": "n" * 400, "data": np.zeros(8 << 20, dtype=np.uint8)}  # hashing 8 MB opens the window
    cache.put("model.pkl", value)
    path = folder / "model.pkl"
    header = read_header(io.BytesIO(path.read_bytes()))
    genuine = path.read_bytes()[header.header_size:][:header.stream_length]
    evil = pickle.dumps(Payload(str(marker)), protocol=5)
    assert len(evil) < len(genuine)  # pickle ignores what follows its STOP opcode
    flipper = subprocess.Popen([sys.executable, "-c", _FLIPPER, str(path), str(header.header_size), genuine.hex(),
                                evil.hex()], stdout=subprocess.PIPE, text=True)
    try:
        assert flipper.stdout is not None and flipper.stdout.readline() == "flipping\n"
        for _ in range(60):
            loaded = cache.get("model.pkl")
            assert loaded is None or loaded["note"] == value["note"]
            assert not marker.exists(), "the planted payload ran"
    finally:
        flipper.kill()
        flipper.wait()
    assert not marker.exists()


# -- a forged header costs little before its signature is judged ----------------------------------


_LOAD_AND_MEASURE = memory.IMPORT + """
import json, time
from jangdok import Cache

cache = Cache(sys.argv[1], signing_keys=sys.argv[2], fallback=False)
figures = {}
for key in ("honest.pkl", "forged.pkl"):
    reset_peak()
    before = peak()
    started = time.perf_counter()
    value = cache.get(key)
    figures[key] = {"seconds": time.perf_counter() - started, "memory": peak() - before, "hit": value is not None}
    del value
figures["untrusted"] = cache.stats()["local"].untrusted
print(json.dumps(figures))
"""


def _forge_buffer_table(data: bytes, count: int) -> bytes:
    """A signed entry's header rewritten to declare ``count`` empty buffers (two bytes of JSON
    each), its hash redone: what anyone without the key can write."""
    header = read_header(io.BytesIO(data))
    fields = json.loads(header.sealed[14:])
    fields.update(buffers=[0] * count, stream_length=count)  # a stream long enough to refer to them all
    blob = json.dumps(fields, separators=(",", ":")).encode()
    sealed = header.sealed[:10] + struct.pack(">I", len(blob)) + blob
    lead = sealed + struct.pack(">I", xxhash.xxh32_intdigest(sealed)) + header.mac
    lead += bytes(-len(lead) % 64)
    return lead + data[header.header_size:]


@pytest.mark.skipif(not memory.MEASURABLE, reason="measures peak memory through Linux's /proc")
def test_a_forged_buffer_table_is_refused_before_it_costs_time_or_memory(tmp_path: Path) -> None:
    """The review's forged entry: a 16 MB header declaring millions of buffers, consistent
    enough to reach the signature check. A signing reader refuses it for its signature, about
    as fast as it loads an honest entry, and without building the table (the review measured
    13 s and 1.1 GB for it)."""
    folder = tmp_path / "cache"
    cache = Cache(str(folder), signing_keys=KEY, fallback=False)
    for key in ("honest.pkl", "forged.pkl"):
        cache.put(key, [np.zeros(16 << 20, dtype=np.uint8)])
    signed = (folder / "forged.pkl").read_bytes()
    (folder / "forged.pkl").write_bytes(_forge_buffer_table(signed, 8_000_000))  # 16 MB of header
    result = subprocess.run([sys.executable, "-c", _LOAD_AND_MEASURE, str(folder), KEY], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    honest_cost, forged_cost = figures["honest.pkl"], figures["forged.pkl"]
    assert honest_cost["hit"] and not forged_cost["hit"] and figures["untrusted"] == 1, figures
    # Parsing the header's JSON is the one cost left: linear, a fraction of a second.
    assert forged_cost["seconds"] < 2 + 20 * honest_cost["seconds"], figures
    assert forged_cost["memory"] < 300e6, figures  # 1.1 GB before the fix


# -- an entry is its own key's only -----------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 1 << 20], ids=["small", "streamed"])  # read whole, or as it streams
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_an_entry_copied_under_another_key_is_refused(signed: bool, padding: int, cache_url: str,
                                                      make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone who can write the cache copies ``a/b/cfg.pkl``'s entry (signed by us) to
    ``b/cfg.pkl``: keys match exactly, so it is never served there (the trailing segments did)."""
    cache = Cache.from_settings(make_settings(cache_url, signing_keys=(KEY,) if signed else ()))
    cache.put("a/b/cfg.pkl", {"lr": 0.1, "padding": b"p" * padding})
    with cache.store.read("a/b/cfg.pkl") as reader:
        cache.store.write("b/cfg.pkl", reader.read())
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert cache.get("b/cfg.pkl") is None
        assert cache.stat("b/cfg.pkl") is None
    assert cache.verify("b/cfg.pkl").status == "foreign"
    assert "was written for key 'a/b/cfg.pkl'" in caplog.text
    assert cache.exists("b/cfg.pkl")  # kept: it may be the only copy of a/b/cfg.pkl's entry
    assert cache.get_or_compute("b/cfg.pkl", lambda: {"lr": 0.5}) == {"lr": 0.5}
    assert cache.get("a/b/cfg.pkl") == {"lr": 0.1, "padding": b"p" * padding}


def test_a_signed_entry_that_names_no_key_belongs_to_none(tmp_path: Path) -> None:
    """Written without a key (encode's own API), a signed entry could be replayed anywhere."""
    folder = tmp_path / "cache"
    cache = Cache(str(folder), signing_keys=KEY, fallback=False)
    trust = Trust.from_secrets([Secret(KEY)])
    cache.store.write("a.pkl", _stored(encode("anywhere", trust=trust)[1]))
    assert cache.get("a.pkl") is None and cache.verify("a.pkl").status == "foreign"
    cache.store.write("b.pkl", _stored(encode("unsigned, older than keys", key=None)[1]))
    assert Cache(str(folder), fallback=False).get("b.pkl") == "unsigned, older than keys"


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_path_level_and_cache_level_reach_the_same_entries(signed: bool, cache_url: str, backend_env: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A path is keyed as the user's cache keys it: from CACHE_DIR when it lies under it. So
    ``jangdok.load(path)`` and ``Cache(root).get(key)`` find each other's entries, and a copy
    under another key neither. Outside CACHE_DIR an S3 path is keyed from its bucket (its whole
    object key), and a local path from its own folder."""
    import jangdok

    if signed:
        monkeypatch.setenv("JANGDOK_SIGNING_KEY", KEY)
    cache = Cache(cache_url)
    cache.put("top.pkl", [1])
    outside = jangdok.load(jangdok.join(cache_url, "top.pkl"), "another key's")
    assert outside == ([1] if not cache_url.startswith("s3://") else "another key's")
    if cache_url.startswith("s3://"):  # keyed from the bucket: a copy elsewhere in it is refused too
        jangdok.save(jangdok.join(cache_url, "a", "b", "cfg.pkl"), "a/b's")
        with cache.store.read("a/b/cfg.pkl") as reader:
            cache.store.write("b/cfg.pkl", reader.read())
        assert jangdok.load(jangdok.join(cache_url, "b", "cfg.pkl"), "miss") == "miss"
    monkeypatch.setenv("CACHE_DIR", cache_url)
    monkeypatch.setattr(jangdok.paths, "_caches", {})  # as a new process would see it
    monkeypatch.setattr(jangdok.paths, "_settings", None)
    cache.put("chapters/x.pkl", [2])
    path = jangdok.join(cache_url, "chapters", "x.pkl")
    assert jangdok.load(path) == [2] and jangdok.stat(path).key == "chapters/x.pkl"
    jangdok.save(path, [3])
    assert cache.get("chapters/x.pkl") == [3]
    assert jangdok.paths.cache_for(path)[0] is jangdok.paths.cache_for(jangdok.join(cache_url, "top.pkl"))[0]
    with cache.store.read("chapters/x.pkl") as reader:  # replayed one folder up, at path level
        cache.store.write("x.pkl", reader.read())
    assert jangdok.load(jangdok.join(cache_url, "x.pkl"), "miss") == "miss"
