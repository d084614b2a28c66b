"""Where a cache lives: one parser for local folders and ``s3://bucket/prefix/`` URLs.

A *location* is the root of a cache; a *key* is a relative, ``/``-separated name under it.
Keys keep their names in storage: key ``label_data.pkl`` under ``s3://b/cache/`` is the object
``cache/label_data.pkl``, and under folder ``cache`` the file ``cache/label_data.pkl``, so any
S3 tool or file browser shows the cache as the user named it. The same key rules apply to both
kinds, so a cache can move between a folder and a bucket unchanged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidKey, InvalidLocation

__all__ = ["Location", "parse_location", "split_path", "join", "is_s3_path", "validate_key"]

S3_MAX_KEY_BYTES = 1024
# Longest file or folder name on common local file systems (ext4, APFS, NTFS).
LOCAL_MAX_NAME_BYTES = 255
# Local writes stage data under this name before renaming; keys may not collide with it.
TEMP_MARKER = ".jangdok-tmp-"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_s3_path(path: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URLs (any case of the scheme), False for everything else."""
    return isinstance(path, str) and path[:5].lower() == "s3://"


def _segments(text: str, what: str, error: type[InvalidKey] | type[InvalidLocation]) -> list[str]:
    """Split a ``/``-separated name, rejecting anything that could escape or confuse a root."""
    if _CONTROL.search(text):
        raise error(f"{what} {text!r} contains a NUL or control character; use printable names")
    if "\\" in text:
        raise error(f"{what} {text!r} contains a backslash; separate folders with '/'")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} {text!r} is not valid Unicode text ({exc.reason})") from exc
    parts = text.split("/")
    for part in parts:
        if part == "":
            raise error(f"{what} {text!r} has an empty segment (a leading, trailing or double '/')")
        if part in (".", ".."):
            raise error(f"{what} {text!r} has a {part!r} segment; keys must stay inside the cache root")
        if part.startswith(TEMP_MARKER):
            raise error(f"{what} {text!r}: names starting with {TEMP_MARKER!r} are reserved for temporary files")
    return parts


def validate_key(key: str) -> list[str]:
    """Check a cache key and return its segments. Raises :class:`InvalidKey` naming the key."""
    if not isinstance(key, str):
        raise InvalidKey(f"cache key must be a str, got {type(key).__name__}: {key!r}")
    if key == "":
        raise InvalidKey("cache key '' is empty; give the entry a name such as 'label_data.pkl'")
    return _segments(key, "cache key", InvalidKey)


def _check_bucket(bucket: str, text: str) -> None:
    if not bucket:
        raise InvalidLocation(f"S3 location {text!r} has no bucket name; use s3://bucket/prefix/")
    problem = None
    if not _BUCKET.match(bucket):
        problem = ("3-63 characters of lowercase letters, digits, '.' and '-', "
                   "starting and ending with a letter or digit")
    elif ".." in bucket or ".-" in bucket or "-." in bucket:
        problem = "no adjacent '.'/'-' pairs such as '..', '.-' or '-.'"
    elif _IP_ADDRESS.match(bucket):
        problem = "not formatted like an IP address"
    if problem:
        raise InvalidLocation(f"S3 location {text!r}: invalid bucket name {bucket!r}; bucket names are {problem}")


@dataclass(frozen=True)
class Location:
    """The root of a cache: a local folder, or a bucket plus a key prefix ending in ``/``."""

    kind: Literal["local", "s3"]
    root: str
    """The local folder as given (relative paths stay relative), or the bucket name."""
    prefix: str = ""
    """For S3: the key prefix, empty or ending in ``/``. Always empty for local folders."""

    @property
    def is_s3(self) -> bool:
        return self.kind == "s3"

    @property
    def url(self) -> str:
        """The location as a user would write it: ``cache`` or ``s3://bucket/cache/``."""
        return f"s3://{self.root}/{self.prefix}" if self.is_s3 else self.root

    def object_key(self, key: str) -> str:
        """The S3 object key of a cache key, checked against S3's 1024-byte limit."""
        validate_key(key)
        full = self.prefix + key
        size = len(full.encode("utf-8"))
        if size > S3_MAX_KEY_BYTES:
            raise InvalidKey(
                f"cache key {key!r} makes the S3 key {size} bytes long under {self.url}; "
                f"S3 allows at most {S3_MAX_KEY_BYTES} bytes (UTF-8)"
            )
        return full

    def local_path(self, key: str) -> str:
        """The file path of a cache key, guaranteed to lie inside the root folder."""
        parts = validate_key(key)
        for part in parts:
            if len(part.encode("utf-8")) > LOCAL_MAX_NAME_BYTES:
                raise InvalidKey(
                    f"cache key {key!r} has a segment longer than {LOCAL_MAX_NAME_BYTES} bytes, "
                    "which local file systems cannot store; shorten it"
                )
        path = os.path.join(self.root, *parts)
        # Belt and braces for platform quirks the segment rules cannot see (drive-relative
        # names like 'C:x' on Windows): the joined path must still be under the root.
        root = os.path.abspath(self.root)
        try:
            inside = os.path.commonpath([root, os.path.abspath(path)]) == root
        except ValueError:  # Windows: the key named another drive
            inside = False
        if not inside:
            raise InvalidKey(f"cache key {key!r} would escape the cache folder {self.root!r}")
        return path

    def path(self, key: str) -> str:
        """The full path of a key as users see it in logs and listings."""
        if self.is_s3:
            return f"s3://{self.root}/{self.object_key(key)}"
        return self.local_path(key)


def parse_location(text: str | os.PathLike[str]) -> Location:
    """Parse a cache location: ``s3://bucket[/prefix]`` or a local folder (``file://`` allowed)."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str) or not text.strip():
        raise InvalidLocation(f"cache location must be a non-empty folder or s3:// URL, got {text!r}")
    if is_s3_path(text):
        rest = text[5:]
        bucket, _, prefix = rest.partition("/")
        _check_bucket(bucket, text)
        prefix = prefix.removesuffix("/")
        if prefix:
            _segments(prefix, f"S3 location {text!r}: prefix", InvalidLocation)
            prefix += "/"
        return Location("s3", bucket, prefix)
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme.group(1).lower() != "file":
            raise InvalidLocation(
                f"cache location {text!r} uses the unsupported scheme {scheme.group(1)!r}; "
                "use a local folder or s3://bucket/prefix/"
            )
        text = text[len("file://") :]
        if not text:
            raise InvalidLocation("cache location 'file://' names no folder")
    if _CONTROL.search(text):
        raise InvalidLocation(f"cache location {text!r} contains a NUL or control character")
    return Location("local", text)


def split_path(path: str | os.PathLike[str]) -> tuple[Location, str]:
    """Split a full entry path into the location that holds it and its key.

    ``s3://b/cache/x.pkl`` -> (``s3://b/``, ``cache/x.pkl``): S3 entries are keyed from the
    bucket root, so one client serves every path in a bucket. ``cache/x.pkl`` ->
    (``cache``, ``x.pkl``).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if is_s3_path(path):
        bucket, _, key = path[5:].partition("/")
        location = parse_location(f"s3://{bucket}/")
        location.object_key(key)
        return location, key
    if not isinstance(path, str) or not path:
        raise InvalidLocation(f"cache path must be a non-empty string, got {path!r}")
    folder, name = os.path.split(path)
    if not name:
        raise InvalidKey(f"cache path {path!r} names a folder, not an entry")
    location = parse_location(folder or ".")
    validate_key(name)
    return location, name


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts: with ``/`` for S3 URLs, with :func:`os.path.join` for folders."""
    if isinstance(root, os.PathLike):
        root = os.fspath(root)
    if is_s3_path(root):
        pieces = [root.rstrip("/")] + [part.strip("/") for part in parts if part]
        return "/".join(pieces)
    return os.path.join(root, *parts)
