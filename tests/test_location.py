"""Locations and keys: one parser for folders and s3:// URLs, and keys that keep their names."""

from __future__ import annotations

import os

import pytest

from jangdok import InvalidKey, InvalidLocation, is_s3_path, join, parse_location
from jangdok.location import split_path


@pytest.mark.parametrize(
    ("text", "kind", "root", "prefix"),
    [
        ("cache", "local", "cache", ""),
        ("/var/cache/jangdok", "local", "/var/cache/jangdok", ""),
        ("./relative/dir", "local", "./relative/dir", ""),
        ("C:\\cache", "local", "C:\\cache", ""),
        ("C:/cache", "local", "C:/cache", ""),
        ("file:///tmp/x", "local", "/tmp/x", ""),
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
        ("/etc/passwd", "empty segment"),
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
    room = 1024 - len("cache/")
    assert location.object_key("k" * room)
    with pytest.raises(InvalidKey, match="1025 bytes"):
        location.object_key("k" * (room + 1))
    # Korean syllables are three bytes each in UTF-8: 340 of them fit, 341 do not.
    assert location.object_key("김" * 339)
    with pytest.raises(InvalidKey, match="S3 allows at most 1024 bytes"):
        location.object_key("김" * 341)


def test_local_names_over_255_bytes_are_refused() -> None:
    with pytest.raises(InvalidKey, match="longer than 255 bytes"):
        parse_location("cache").local_path("김" * 86)


def test_is_s3_path_and_join() -> None:
    assert is_s3_path("s3://b/x") and is_s3_path("S3://b/x")
    assert not is_s3_path("cache/x") and not is_s3_path("C:\\s3")
    assert join("s3://b/cache/", "label.pkl") == "s3://b/cache/label.pkl"
    assert join("s3://b/cache", "sub", "label.pkl") == "s3://b/cache/sub/label.pkl"
    assert join("cache", "label.pkl") == os.path.join("cache", "label.pkl")


def test_split_path_keys_s3_entries_from_the_bucket_root() -> None:
    location, key = split_path("s3://b12/cache/김치.pkl")
    assert (location.url, key) == ("s3://b12/", "cache/김치.pkl")
    location, key = split_path(os.path.join("cache", "x.pkl"))
    assert (location.url, key) == ("cache", "x.pkl")
    location, key = split_path("x.pkl")
    assert (location.url, key) == (".", "x.pkl")
    with pytest.raises(InvalidKey):
        split_path("s3://b12/cache/../x")
    with pytest.raises(InvalidKey):
        split_path("cache/")
