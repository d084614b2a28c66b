"""Where a cache lives: one parser for local folders and ``s3://bucket/prefix/`` URLs.

A *location* is the root of a cache; a *key* is a relative, ``/``-separated name under it.
Keys keep their names in storage: key ``label_data.pkl`` under ``s3://b/cache/`` is the object
``cache/label_data.pkl``, and under folder ``cache`` the file ``cache/label_data.pkl``, so any
S3 tool or file browser shows the cache as the user named it. The same key rules apply to both
kinds, so a cache can move between a folder and a bucket unchanged: keys are Unicode NFC (one
name whether typed on macOS or Linux) and avoid names Windows cannot hold, on every backend.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from .errors import InvalidKey, InvalidLocation
from .settings import mask_url

__all__ = [
    "Location",
    "parse_location",
    "split_path",
    "join",
    "is_s3_path",
    "normalize_key",
    "validate_key",
    "is_reserved",
    "RESERVED_FOLDER",
]

S3_MAX_KEY_BYTES = 1024
# Longest file or folder name on common local file systems (ext4, APFS, NTFS), and the longest
# name segment SeaweedFS stores: the limit of a key's segments on every backend.
LOCAL_MAX_NAME_BYTES = 255
# Local writes stage data under this name before renaming; keys may not collide with it.
TEMP_MARKER = ".jangdok-tmp-"
# jangdok's own objects (compute leases, lock files, the local tier's validators) live under
# this top-level folder of a cache; user keys may not start with it, and listings skip it.
RESERVED_FOLDER = ".jangdok"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# 's3:/b', 's3:b', 's3//b', 's3:\\b': each is a legal relative folder name on some system, so
# without this check a typo would silently cache on the local disk instead of in the bucket.
_S3_TYPO = re.compile(r"^s3(?::|//)", re.IGNORECASE)
# file:///C:/cache names the Windows folder C:/cache, not '/C:/cache'.
_URL_DRIVE = re.compile(r"^/[A-Za-z]:")
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')
# Windows opens these devices whatever the extension ('nul.pkl' is NUL), in any case; it also
# reserves COM and LPT with the superscript digits ¹²³.
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789¹²³"]
)


def _shown(text: str, limit: int = 100) -> str:
    """A name for a message: whole if short, else its start and end, so a line stays readable."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit - 30]) + f" ... ({len(text)} characters) ... " + repr(text[-20:])


def is_s3_path(path: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URLs (any case of the scheme), False for everything else."""
    return isinstance(path, str) and path[:5].lower() == "s3://"


def _check_windows_name(part: str, text: str, what: str, error: type[InvalidKey] | type[InvalidLocation]) -> None:
    """Refuse a segment Windows cannot hold, so a cache written anywhere can be copied anywhere."""
    problem = None
    forbidden = _WINDOWS_FORBIDDEN.search(part)
    if part.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        problem = "is a device name Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9, with any extension)"
    elif forbidden:
        problem = f"contains {forbidden.group()!r}; Windows names cannot hold any of < > : \" | ? *"
    elif part.endswith((".", " ")):
        problem = "ends in a dot or a space, which Windows drops from names"
    if problem:
        raise error(f"{what} {text!r} has the segment {part!r}, which {problem}; rename it")


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
    if text.startswith("/"):
        raise error(f"{what} {text!r} is an absolute path; keys are relative to the cache root "
                    f"(use {text.lstrip('/')!r})")
    parts = text.split("/")
    for part in parts:
        if part == "":
            raise error(f"{what} {text!r} has an empty segment (a leading, trailing or double '/')")
        if part in (".", ".."):
            raise error(f"{what} {text!r} has a {part!r} segment; keys must stay inside the cache root")
        if part.startswith(TEMP_MARKER):
            raise error(f"{what} {text!r}: names starting with {TEMP_MARKER!r} are reserved for temporary files")
        _check_windows_name(part, text, what, error)
    return parts


def _check_key_type(key: object) -> None:
    if not isinstance(key, str):
        raise InvalidKey(f"cache key must be a str, got {type(key).__name__}: {key!r}")
    if key == "":
        raise InvalidKey("cache key '' is empty; give the entry a name such as 'label_data.pkl'")


def normalize_key(key: str) -> str:
    """Check a cache key as given by a user and return it in Unicode NFC.

    This is the one place a key enters jangdok: :class:`~jangdok.cache.Cache` and the
    path-level functions call it, and the layers below (stores, :class:`Location`) trust the
    result. NFC makes the same name one key however it was typed: macOS delivers Korean as
    decomposed jamo (NFD), Linux and Windows as composed syllables. Raises :class:`InvalidKey`
    naming the key.
    """
    _check_key_type(key)
    normalized = _normalized(key)
    if is_reserved(normalized):
        raise InvalidKey(f"cache key {key!r}: the folder {RESERVED_FOLDER!r} is reserved for jangdok's own "
                         "objects (leases, locks); choose another name")
    return normalized


def is_reserved(key: str) -> bool:
    """Whether a stored key is one of jangdok's own objects rather than a cache entry."""
    return key == RESERVED_FOLDER or key.startswith(RESERVED_FOLDER + "/")


@functools.lru_cache(maxsize=4096)  # a pure function of the key, called on every operation
def _normalized(key: str) -> str:
    # Normalise first so the rules judge the name that is actually stored.
    normalized = unicodedata.normalize("NFC", key)
    validate_key(normalized)
    return normalized


def validate_key(key: str) -> list[str]:
    """Check an already normalised cache key and return its segments.

    For keys that come from below (listings) or were passed through :func:`normalize_key`.
    A key not in NFC is refused rather than normalised: it means a caller skipped
    :func:`normalize_key`, and quietly mapping it would let two spellings name one entry in
    one place and two in another. Raises :class:`InvalidKey` naming the key.
    """
    _check_key_type(key)
    parts = _segments(key, "cache key", InvalidKey)
    if not unicodedata.is_normalized("NFC", key):
        raise InvalidKey(
            f"cache key {key!r} is not in Unicode NFC form; pass it through normalize_key() "
            "so names typed on macOS and elsewhere are one key"
        )
    # One rule for folders and buckets alike, so a cache moves between them unchanged.
    longest = max(len(part.encode("utf-8")) for part in parts)
    if longest > LOCAL_MAX_NAME_BYTES:
        raise InvalidKey(
            f"cache key {_shown(key)} has a segment of {longest} bytes, longer than {LOCAL_MAX_NAME_BYTES} bytes "
            "(UTF-8), which local file systems and some S3 servers cannot store; shorten it"
        )
    return parts


def _no_bucket(text: str) -> InvalidLocation:
    return InvalidLocation(f"S3 location {mask_url(text)!r} has no bucket name; use s3://bucket/prefix/")


def _check_bucket(bucket: str, text: str) -> None:
    if not bucket:
        raise _no_bucket(text)
    problem = None
    if not _BUCKET.match(bucket):
        problem = ("3-63 characters of lowercase letters, digits, '.' and '-', "
                   "starting and ending with a letter or digit")
    elif ".." in bucket or ".-" in bucket or "-." in bucket:
        problem = "no adjacent '.'/'-' pairs such as '..', '.-' or '-.'"
    elif _IP_ADDRESS.match(bucket):
        problem = "not formatted like an IP address"
    if problem:
        meant = bucket.lower().replace("_", "-")
        hint = f" (did you mean {meant!r}?)" if meant != bucket and _BUCKET.match(meant) else ""
        raise InvalidLocation(f"S3 location {mask_url(text)!r}: invalid bucket name {bucket!r}{hint}; "
                              f"bucket names are {problem}")


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

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - see local_path
    def object_key(self, key: str) -> str:
        """The S3 object key of a cache key, checked against S3's 1024-byte limit.

        ``key`` must already be normalised (:func:`normalize_key`); a non-NFC key is refused.
        """
        validate_key(key)
        full = self.prefix + key
        size = len(full.encode("utf-8"))
        if size > S3_MAX_KEY_BYTES:
            raise InvalidKey(
                f"cache key {_shown(key)} makes the S3 key {size} bytes long under {self.url}; "
                f"S3 allows at most {S3_MAX_KEY_BYTES} bytes (UTF-8)"
            )
        return full

    def local_path(self, key: str) -> str:
        """The file path of a cache key, guaranteed to lie inside the root folder.

        ``key`` must already be normalised (:func:`normalize_key`); a non-NFC key is refused.
        """
        return _local_path(self.root, key)

    def path(self, key: str) -> str:
        """The full path of a key as users see it in logs and listings."""
        if self.is_s3:
            return f"s3://{self.root}/{self.object_key(key)}"
        return _local_path(self.root, key)


# Every operation checks its key's path (the store, and the cache for its logs); a hot key is
# checked once. Keyed by the root, not the Location: hashing a dataclass runs Python code, and
# this is looked up several times per load. Refusals are raised again, never cached.
@functools.lru_cache(maxsize=4096)
def _local_path(root: str, key: str) -> str:
    path = os.path.join(root, *validate_key(key))
    # Belt and braces for platform quirks the segment rules cannot see (':' already keeps
    # out drive-relative names like 'C:x'): the joined path must still be under the root.
    absolute = os.path.abspath(root)
    try:
        inside = os.path.commonpath([absolute, os.path.abspath(path)]) == absolute
    except ValueError:  # Windows: the key named another drive
        inside = False
    if not inside:
        raise InvalidKey(f"cache key {key!r} would escape the cache folder {root!r}")
    return path


def _refuse_mistyped_s3(text: str, what: str) -> None:
    """Refuse text that starts like a broken ``s3://`` URL instead of using it as a folder."""
    if _S3_TYPO.match(text):
        rest = text[3:].lstrip(":/\\").replace("\\", "/")
        meant = f"s3://{rest}" if rest else "s3://bucket/prefix/"
        raise InvalidLocation(f"{what} {mask_url(text)!r} looks like a mistyped S3 URL; did you mean "
                              f"{mask_url(meant)!r}?")


def _refuse_user_info(text: str, authority: str, what: str) -> None:
    """Refuse a URL naming a user (and password): it would show in every message and log."""
    if "@" in authority:
        raise InvalidLocation(f"cache location {mask_url(text)!r} holds a user name or password; {what}")


def _parse_s3(text: str) -> Location:
    bucket, _, prefix = text[5:].partition("/")
    _refuse_user_info(text, bucket, "S3 credentials are access keys (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
                                    "never part of the URL: use s3://bucket/prefix/")
    _check_bucket(bucket, text)
    # The prefix is part of every object key, so it follows the key rules, NFC included.
    prefix = unicodedata.normalize("NFC", prefix.removesuffix("/"))
    if prefix:
        _segments(prefix, f"S3 location {mask_url(text)!r}: prefix", InvalidLocation)
        prefix += "/"
    return Location("s3", bucket, prefix)


def _file_url_path(text: str) -> str:
    """The local path of a ``file://`` URL: ``file:///p`` and ``file://localhost/p`` are ``/p``."""
    host, slash, path = text[len("file://") :].partition("/")
    _refuse_user_info(text, host, "a file:// URL names a folder on this machine: file:///path")
    if host and host.lower() != "localhost":
        raise InvalidLocation(
            f"cache location {text!r} names the host {host!r}; a file:// URL must be on this "
            "machine (file:///path or file://localhost/path)"
        )
    # URLs made by Path.as_uri() percent-encode spaces and non-ASCII names.
    path = unquote(slash + path)
    if _URL_DRIVE.match(path):
        path = path[1:]
    if not path:
        raise InvalidLocation(f"cache location {mask_url(text)!r} names no folder")
    return path


def parse_location(text: str | os.PathLike[str]) -> Location:
    """Parse a cache location: ``s3://bucket[/prefix]`` or a local folder (``file://`` allowed).

    A local folder is kept as given (it names a folder that may already exist on disk); only
    an S3 prefix is normalised to NFC, like the keys under it.
    """
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str) or not text.strip():
        raise InvalidLocation(f"cache location must be a non-empty folder or s3:// URL, got {text!r}")
    if is_s3_path(text):
        return _parse_s3(text)
    _refuse_mistyped_s3(text, "cache location")
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme.group(1).lower() != "file":
            raise InvalidLocation(
                f"cache location {mask_url(text)!r} uses the unsupported scheme {scheme.group(1)!r}; "
                "use a local folder or s3://bucket/prefix/"
            )
        text = _file_url_path(text)
    if _CONTROL.search(text):
        raise InvalidLocation(f"cache location {mask_url(text)!r} contains a NUL or control character")
    return Location("local", text)


def split_path(path: str | os.PathLike[str], root: Location | None = None) -> tuple[Location, str]:
    """Split a full entry path into the root of the cache that holds it and its key there.

    An entry records its key relative to the cache root it was written through, and is read
    back only under exactly that key; so a path is keyed as the user's cache keys it: from
    ``root`` (the configured cache, ``CACHE_DIR``) when the path lies under it. Any other S3
    path is keyed from its bucket (its whole object key: no two objects share a name there, so
    an entry copied elsewhere in the bucket is never taken for another's), and any other local
    path from its own folder (a folder outside the configured cache is a cache of its own).
    ``s3://b/cache/x.pkl`` -> (``s3://b/``, ``cache/x.pkl``), or under ``root`` ``s3://b/cache/``,
    (``s3://b/cache/``, ``x.pkl``). ``cache/x.pkl`` -> (``cache``, ``x.pkl``). The key is
    returned by :func:`normalize_key`; a local folder is kept as given (``root``'s own, when it
    holds the path).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if is_s3_path(path):
        bucket, _, object_key = path[5:].partition("/")
        parse_location(f"s3://{bucket}/")  # the bucket name's own error first
        object_key = normalize_key(object_key)
        if root is not None and root.is_s3 and root.root == bucket and object_key.startswith(root.prefix):
            location, key = root, object_key[len(root.prefix):]
        else:
            location, key = parse_location(f"s3://{bucket}/"), object_key
        location.object_key(key)
        return location, key
    if not isinstance(path, str) or not path:
        raise InvalidLocation(f"cache path must be a non-empty string, got {path!r}")
    _refuse_mistyped_s3(path, "cache path")
    scheme = _SCHEME.match(path)
    # Decoded whole before splitting: in 'file://localhost/x.pkl' the host is not a folder.
    local = _file_url_path(path) if scheme and scheme.group(1).lower() == "file" else path
    folder, name = os.path.split(local)
    if not name:
        raise InvalidKey(f"cache path {mask_url(path)!r} names a folder, not an entry")
    if root is not None and not root.is_s3:
        relative = _relative_to(local, root.root)
        if relative is not None:
            return root, normalize_key(relative)
    return parse_location(folder or "."), normalize_key(name)


def _relative_to(path: str, folder: str) -> str | None:
    """``path``'s name relative to ``folder`` with ``/`` separators, if it lies under it."""
    whole, base = os.path.abspath(path), os.path.abspath(folder)
    try:
        if os.path.commonpath([os.path.normcase(whole), os.path.normcase(base)]) != os.path.normcase(base):
            return None
    except ValueError:  # Windows: another drive
        return None
    relative = os.path.relpath(whole, base)
    return None if relative == os.curdir else relative.replace(os.sep, "/")


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts: with ``/`` for S3 URLs, with :func:`os.path.join` for folders."""
    if isinstance(root, os.PathLike):
        root = os.fspath(root)
    if is_s3_path(root):
        if not root[5:].partition("/")[0]:
            # Otherwise 's3://' + 'x' would quietly name the bucket 'x'.
            raise _no_bucket(root)
        pieces = [root.rstrip("/")] + [part.strip("/") for part in parts if part]
        return "/".join(pieces)
    return os.path.join(root, *parts)
