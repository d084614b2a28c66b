"""Locations and keys: one parser for folders and s3:// URLs, and keys that keep their names."""

from __future__ import annotations

import os
import unicodedata
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import s3_settings
from seaweed import SeaweedServer

import jangdok.location
from jangdok import Cache, InvalidKey, InvalidLocation, Settings, is_s3_path, join, parse_location
from jangdok.location import normalize_key, split_path, validate_key

KIMCHI_NFC = "김치"
KIMCHI_NFD = unicodedata.normalize("NFD", KIMCHI_NFC)  # as typed on macOS


@pytest.mark.parametrize(
    ("text", "kind", "root", "prefix"),
    [
        ("cache", "local", "cache", ""),
        ("/var/cache/jangdok", "local", "/var/cache/jangdok", ""),
        ("./relative/dir", "local", "./relative/dir", ""),
        ("C:\\cache", "local", "C:\\cache", ""),
        ("C:/cache", "local", "C:/cache", ""),
        ("file:///tmp/x", "local", "/tmp/x", ""),
        ("file://localhost/tmp/x", "local", "/tmp/x", ""),
        ("FILE://LocalHost/tmp/x", "local", "/tmp/x", ""),
        ("file:///tmp/my%20cache", "local", "/tmp/my cache", ""),  # as Path.as_uri() writes it
        ("file:///C:/cache", "local", "C:/cache", ""),
        # Names that merely start like 's3' are ordinary folders.
        ("s3", "local", "s3", ""),
        ("s3data", "local", "s3data", ""),
        ("s3/x", "local", "s3/x", ""),
        ("./s3:x", "local", "./s3:x", ""),
        ("s3://waterandfish-s3/cache/", "s3", "waterandfish-s3", "cache/"),
        ("s3://waterandfish-s3/cache", "s3", "waterandfish-s3", "cache/"),
        ("S3://bucket.with.dots/a/b/", "s3", "bucket.with.dots", "a/b/"),
        ("s3://my-bucket", "s3", "my-bucket", ""),
        ("s3://my-bucket/", "s3", "my-bucket", ""),
        ("s3://my-bucket/캐시/", "s3", "my-bucket", "캐시/"),
    ],
)
def test_locations_parse(text: str, kind: str, root: str, prefix: str) -> None:
    location = parse_location(text)
    assert (location.kind, location.root, location.prefix) == (kind, root, prefix)


def test_keys_keep_their_names() -> None:
    s3 = parse_location("s3://b12/cache/")
    assert s3.object_key("label_data.pkl") == "cache/label_data.pkl"
    assert s3.path("label_data.pkl") == "s3://b12/cache/label_data.pkl"
    assert s3.object_key("김치_seq30.pkl") == "cache/김치_seq30.pkl"
    local = parse_location("cache")
    assert local.path("label_data.pkl") == os.path.join("cache", "label_data.pkl")
    assert local.local_path("a/b.pkl") == os.path.join("cache", "a", "b.pkl")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("s3://", "no bucket"),
        ("s3:///k", "no bucket"),
        ("s3://Upper_Case/x", "invalid bucket name 'Upper_Case'"),
        ("s3://ab/x", "invalid bucket name 'ab'"),
        ("s3://-dash/x", "invalid bucket name '-dash'"),
        ("s3://a..b/x", "'a..b'"),
        ("s3://192.168.1.1/x", "IP address"),
        ("s3://bucket/a//b/", "empty segment"),
        ("s3://bucket/../up", "'..' segment"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("http://host/x", "unsupported scheme 'http'"),
        ("", "non-empty"),
        ("cache\x00dir", "control character"),
        ("S3://", "no bucket"),
        ("file://otherhost/x", "names the host 'otherhost'"),
        ("file://tmp/x", "names the host 'tmp'"),  # was silently the relative folder 'tmp/x'
        ("file://", "names no folder"),
        ("file://localhost", "names no folder"),
        ("s3://bucket/nul/", "segment 'nul'"),
        ("s3://bucket/a:b/", "segment 'a:b'"),
        ("s3://bucket/dir./x", "segment 'dir.'"),
    ],
)
def test_bad_locations_name_the_offending_text(text: str, named: str) -> None:
    with pytest.raises(InvalidLocation) as caught:
        parse_location(text)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("../x.pkl", "'..' segment"),
        ("a/../../etc/passwd", "'..' segment"),
        ("./x", "'.' segment"),
        ("/etc/passwd", "is an absolute path; keys are relative to the cache root (use 'etc/passwd')"),
        ("a//b", "empty segment"),
        ("dir/", "empty segment"),
        ("", "empty"),
        ("nul\x00byte", "control character"),
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
        ("back\\slash", "backslash"),
        ("\ud800lone-surrogate", "not valid Unicode"),
        (".jangdok-tmp-abc", "reserved"),
    ],
)
def test_bad_keys_name_the_offending_text(key: str, named: str) -> None:
    for location in (parse_location("cache"), parse_location("s3://bucket/cache/")):
        with pytest.raises(InvalidKey) as caught:
            location.path(key)
        assert named in str(caught.value)
        assert repr(key) in str(caught.value)


def test_s3_key_length_limit_counts_utf8_bytes_with_the_prefix() -> None:
    location = parse_location("s3://bucket/cache/")
    room = 1024 - len("cache/")  # 1018 bytes: three segments of 254, one of 253, three separators
    fits = "/".join(["k" * 254] * 3 + ["k" * 253])
    assert len(fits) == room and location.object_key(fits)
    with pytest.raises(InvalidKey, match="1025 bytes"):
        location.object_key(fits + "k")
    # Korean syllables are three bytes each in UTF-8: 4 x 84 of them and 3 separators fill 1011.
    korean = "/".join(["김" * 84] * 4)
    assert len(korean.encode()) == 1011 and location.object_key(korean + "/김김")
    with pytest.raises(InvalidKey, match="S3 allows at most 1024 bytes"):
        location.object_key(korean + "/김김김")


def test_key_segments_over_255_bytes_are_refused_in_folders_and_buckets_alike() -> None:
    for location in (parse_location("cache"), parse_location("s3://bucket/cache/")):
        assert location.path("김" * 85)  # 255 bytes
        with pytest.raises(InvalidKey, match="segment of 258 bytes, longer than 255 bytes"):
            location.path("김" * 86)
        with pytest.raises(InvalidKey, match="longer than 255 bytes"):
            location.path("d" * 256 + "/k.pkl")


@pytest.fixture
def counted_settings(backend: str, cache_url: str, make_settings: Any,
                     request: pytest.FixtureRequest) -> tuple[Settings, FaultProxy | None]:
    """Settings for the backend; on S3 through a proxy that records every request."""
    if backend == "local":
        return make_settings(cache_url), None
    seaweed = request.getfixturevalue("seaweed")
    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    request.addfinalizer(proxy.close)
    return make_settings(cache_url, endpoint_url=proxy.endpoint), proxy


def test_one_key_length_rule_on_every_backend_checked_before_any_request(
        counted_settings: tuple[Settings, FaultProxy | None]) -> None:
    """A key one backend refuses, every backend refuses, with InvalidKey and without a request
    (SeaweedFS itself would answer KeyTooLongError past 255 bytes in a segment)."""
    settings, proxy = counted_settings
    longest = "k" * 251 + ".pkl"  # 255 bytes
    with Cache.from_settings(settings) as cache:
        cache.put(f"sub/{longest}", "fits")
        assert cache.get(f"sub/{longest}") == "fits"
        if proxy is not None:
            proxy.requests.clear()
        for key in ("x" * 300 + ".pkl", "d" * 256 + "/k.pkl", "김" * 86):
            for operation in (lambda key: cache.put(key, 1), cache.get, cache.exists, cache.stat, cache.delete,
                              lambda key: cache.get_or_compute(key, lambda: 1)):
                with pytest.raises(InvalidKey, match="longer than 255 bytes"):
                    operation(key)
        if proxy is not None:
            assert proxy.requests == [], "refused before any request"


def test_an_s3_key_over_1024_bytes_with_its_prefix_is_refused_before_any_request(
        seaweed: SeaweedServer, s3_url: str, s3_prefix: str) -> None:
    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    try:
        with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as cache:
            room = 1024 - len(s3_prefix.encode())
            fits = ("k" * 200 + "/") * 4 + "z" * (room - 4 * 201)  # every segment within 255 bytes
            assert len(fits.encode()) == room and 0 < room - 4 * 201 <= 255
            cache.put(fits, "fits")
            proxy.requests.clear()
            for operation in (lambda key: cache.put(key, 1), cache.get, cache.exists, cache.delete):
                with pytest.raises(InvalidKey, match="S3 allows at most 1024 bytes"):
                    operation(fits + "z")
            assert proxy.requests == []
            assert cache.get(fits) == "fits"
        with Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)) as fresh:
            proxy.requests.clear()
            with pytest.raises(InvalidKey, match="S3 allows at most 1024 bytes"):
                fresh.get(fits + "z")
            assert proxy.requests == [], "a fresh cache refuses the key before it opens its store"
    finally:
        proxy.close()


def test_is_s3_path_and_join() -> None:
    assert is_s3_path("s3://b/x") and is_s3_path("S3://b/x")
    assert not is_s3_path("cache/x") and not is_s3_path("C:\\s3")
    assert join("s3://b/cache/", "label.pkl") == "s3://b/cache/label.pkl"
    assert join("s3://b/cache", "sub", "label.pkl") == "s3://b/cache/sub/label.pkl"
    assert join("cache", "label.pkl") == os.path.join("cache", "label.pkl")


def test_split_path_keys_entries_from_the_configured_root_or_their_folder() -> None:
    location, key = split_path("s3://b12/cache/김치.pkl")  # outside any configured root: from the bucket
    assert (location.url, key) == ("s3://b12/", "cache/김치.pkl")
    location, key = split_path("s3://b12/x.pkl")
    assert (location.url, key) == ("s3://b12/", "x.pkl")
    location, key = split_path(os.path.join("cache", "x.pkl"))
    assert (location.url, key) == ("cache", "x.pkl")
    location, key = split_path("x.pkl")
    assert (location.url, key) == (".", "x.pkl")
    for root, path, expected in [
        ("s3://b12/", "s3://b12/cache/sub/x.pkl", ("s3://b12/", "cache/sub/x.pkl")),
        ("s3://b12/cache", "s3://b12/cache/sub/x.pkl", ("s3://b12/cache/", "sub/x.pkl")),
        ("s3://b12/cache", "s3://b12/cachex/x.pkl", ("s3://b12/", "cachex/x.pkl")),  # not under it
        ("s3://other/cache", "s3://b12/cache/x.pkl", ("s3://b12/", "cache/x.pkl")),
        ("cache", "s3://b12/cache/sub/x.pkl", ("s3://b12/", "cache/sub/x.pkl")),
        ("cache", os.path.join("cache", "sub", "x.pkl"), ("cache", "sub/x.pkl")),
        ("cache", os.path.abspath(os.path.join("cache", "x.pkl")), ("cache", "x.pkl")),
        (os.path.abspath("cache"), os.path.join("cache", "sub", "x.pkl"), (os.path.abspath("cache"), "sub/x.pkl")),
        ("cache", os.path.join("cachex", "x.pkl"), ("cachex", "x.pkl")),
        ("s3://b12/cache/", os.path.join("cache", "x.pkl"), ("cache", "x.pkl")),
    ]:
        location, key = split_path(path, parse_location(root))
        assert (location.url, key) == expected, (root, path)
    with pytest.raises(InvalidKey, match="reserved"):
        split_path(os.path.join("cache", ".jangdok", "leases", "x"), parse_location("cache"))
    with pytest.raises(InvalidKey):
        split_path("s3://b12/cache/../x")
    with pytest.raises(InvalidKey):
        split_path("cache/")


def test_normalize_key_is_public() -> None:
    assert "normalize_key" in jangdok.location.__all__


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (KIMCHI_NFD, KIMCHI_NFC),
        (KIMCHI_NFC, KIMCHI_NFC),
        (f"{KIMCHI_NFD}/seq30.pkl", f"{KIMCHI_NFC}/seq30.pkl"),
        (unicodedata.normalize("NFD", "café.pkl"), "café.pkl"),
        ("label_data.pkl", "label_data.pkl"),
        # The rules judge the stored (NFC) name: '<' + U+0338 composes to '≮', which is allowed.
        ("a<\u0338b", "a\u226eb"),
    ],
)
def test_normalize_key_returns_nfc(key: str, expected: str) -> None:
    assert normalize_key(key) == expected


def test_keys_typed_on_macos_and_linux_are_one_entry() -> None:
    s3 = parse_location("s3://bucket/cache/")
    local = parse_location("cache")
    for key in (KIMCHI_NFD, KIMCHI_NFC):
        assert s3.object_key(normalize_key(key)) == f"cache/{KIMCHI_NFC}"
        assert local.local_path(normalize_key(key)) == os.path.join("cache", KIMCHI_NFC)


def test_layers_below_refuse_keys_that_skipped_normalize_key() -> None:
    # Refused, not normalised: a caller that forgot normalize_key fails loudly everywhere.
    for check in (validate_key, parse_location("s3://bucket/").object_key, parse_location("cache").local_path):
        with pytest.raises(InvalidKey, match="not in Unicode NFC") as caught:
            check(KIMCHI_NFD)
        assert repr(KIMCHI_NFD) in str(caught.value)


def test_s3_prefixes_are_nfc_but_local_folders_are_kept_as_given() -> None:
    assert parse_location(f"s3://bucket/{KIMCHI_NFD}/").prefix == f"{KIMCHI_NFC}/"
    assert parse_location(f"s3://bucket/{KIMCHI_NFD}/") == parse_location(f"s3://bucket/{KIMCHI_NFC}")
    # A folder path names something that already exists on disk, byte for byte.
    assert parse_location(KIMCHI_NFD).root == KIMCHI_NFD


def test_split_path_normalises_keys_not_folders() -> None:
    location, key = split_path(f"s3://b12/{KIMCHI_NFD}/x.pkl", parse_location(f"s3://b12/{KIMCHI_NFD}/"))
    assert (location.url, key) == (f"s3://b12/{KIMCHI_NFC}/", "x.pkl")
    location, key = split_path(f"s3://b12/{KIMCHI_NFD}/x.pkl", parse_location("s3://b12/"))
    assert (location.url, key) == ("s3://b12/", f"{KIMCHI_NFC}/x.pkl")
    location, key = split_path(f"{KIMCHI_NFD}/{KIMCHI_NFD}.pkl")
    assert (location.root, key) == (KIMCHI_NFD, f"{KIMCHI_NFC}.pkl")
    location, key = split_path("file://localhost/tmp/x.pkl")
    assert (location.root, key) == ("/tmp", "x.pkl")


WINDOWS_DEVICE = "device name Windows reserves"
WINDOWS_CHARACTER = "Windows names cannot hold"
WINDOWS_TRAILING = "ends in a dot or a space"


@pytest.mark.parametrize(
    ("key", "segment", "why"),
    [
        ("nul.pkl", "nul.pkl", WINDOWS_DEVICE),
        ("Com1.txt", "Com1.txt", WINDOWS_DEVICE),
        ("CON", "CON", WINDOWS_DEVICE),
        ("aux", "aux", WINDOWS_DEVICE),
        ("prn.tar.gz", "prn.tar.gz", WINDOWS_DEVICE),
        ("lpt9.pkl", "lpt9.pkl", WINDOWS_DEVICE),
        ("com¹.pkl", "com¹.pkl", WINDOWS_DEVICE),
        ("LPT³", "LPT³", WINDOWS_DEVICE),
        ("cache/nul/x.pkl", "nul", WINDOWS_DEVICE),
        ("x:y", "x:y", WINDOWS_CHARACTER),
        ("C:x.pkl", "C:x.pkl", WINDOWS_CHARACTER),
        ("a<b", "a<b", WINDOWS_CHARACTER),
        ("a>b", "a>b", WINDOWS_CHARACTER),
        ('say"hi"', 'say"hi"', WINDOWS_CHARACTER),
        ("a|b", "a|b", WINDOWS_CHARACTER),
        ("why?.pkl", "why?.pkl", WINDOWS_CHARACTER),
        ("dir/*.pkl", "*.pkl", WINDOWS_CHARACTER),
        ("name.", "name.", WINDOWS_TRAILING),
        ("name ", "name ", WINDOWS_TRAILING),
        ("dir./x.pkl", "dir.", WINDOWS_TRAILING),
        ("...", "...", WINDOWS_TRAILING),
    ],
)
def test_names_windows_cannot_hold_are_refused_on_every_backend(key: str, segment: str, why: str) -> None:
    messages = set()
    for check in (normalize_key, parse_location("cache").path, parse_location("s3://bucket/cache/").path):
        with pytest.raises(InvalidKey) as caught:
            check(key)
        messages.add(str(caught.value))
    assert len(messages) == 1  # one message, whichever backend the key is meant for
    (message,) = messages
    assert repr(key) in message and f"segment {segment!r}" in message and why in message


@pytest.mark.parametrize("key", ["console.pkl", "com10.pkl", "nul_data.pkl", "lpt.pkl", "a.b.c", ".hidden", "x .pkl"])
def test_names_that_only_resemble_windows_devices_are_fine(key: str) -> None:
    assert normalize_key(key) == key
    assert parse_location("s3://bucket/").object_key(key) == key


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("s3:/bucket/x", "s3://bucket/x"),
        ("s3:bucket/x", "s3://bucket/x"),
        ("s3//bucket/x", "s3://bucket/x"),
        ("s3:\\\\bucket", "s3://bucket"),
        ("s3:\\bucket\\x", "s3://bucket/x"),
        ("S3:/bucket/x", "s3://bucket/x"),
        ("S3:bucket", "s3://bucket"),
        ("s3:", "s3://bucket/prefix/"),
    ],
)
def test_mistyped_s3_urls_are_refused_with_a_hint(text: str, meant: str) -> None:
    with pytest.raises(InvalidLocation) as caught:
        parse_location(text)
    assert str(caught.value) == f"cache location {text!r} looks like a mistyped S3 URL; did you mean {meant!r}?"
    with pytest.raises(InvalidLocation) as caught:
        split_path(text + "/x.pkl")
    assert "looks like a mistyped S3 URL" in str(caught.value)


def test_split_path_hint_names_the_whole_path() -> None:
    with pytest.raises(InvalidLocation, match="did you mean 's3://bucket/cache/x.pkl'"):
        split_path("s3:/bucket/cache/x.pkl")


PASSWORD = "SuperSecretPassw0rd123"


@pytest.mark.parametrize(("text", "says"), [
    (f"s3://user:{PASSWORD}@bucket/cache/", "'s3://****d123@bucket/cache/' holds a user name or password"),
    (f"s3://{PASSWORD}@bucket", "'s3://****d123@bucket' holds a user name or password"),
    (f"s3:user:{PASSWORD}@bucket", "did you mean 's3://****d123@bucket'?"),
    (f"file://me:{PASSWORD}@localhost/cache", "'file://****d123@localhost/cache' holds a user name or password"),
    (f"https://me:{PASSWORD}@s3.example.com/b/", "'https://****d123@s3.example.com/b/' uses the unsupported"),
])
def test_a_location_holding_a_password_is_refused_without_showing_it(text: str, says: str) -> None:
    for refuse in (parse_location, lambda text: split_path(text + "x.pkl"), Cache):
        with pytest.raises(InvalidLocation) as caught:
            refuse(text)
        assert PASSWORD[:-4] not in str(caught.value), str(caught.value)
    assert says in str(pytest.raises(InvalidLocation, parse_location, text).value)


@pytest.mark.parametrize("root", ["s3://", "S3://", "s3:///x"])
def test_join_refuses_an_s3_url_without_a_bucket(root: str) -> None:
    with pytest.raises(InvalidLocation, match="no bucket"):
        join(root, "x")
    assert join("s3://bucket", "x") == "s3://bucket/x"
