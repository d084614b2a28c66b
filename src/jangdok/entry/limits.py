"""What reading an entry may cost: every entry is read as if a stranger wrote it.

Anyone who can write the folder or the bucket can write an entry's bytes, and without signing
keys nothing tells theirs from ours. So each count and size a header declares is bounded by the
bytes that hold it, and what it makes a reader allocate by what the machine can give:

- :data:`MAX_EXPANSION`: compressed buffers may declare at most this many times the entry's
  payload in all (zstd itself reaches ~32000:1 on runs of one byte, so a 33 kB entry could
  otherwise make a reader allocate a gigabyte). Writers keep to it: see
  :func:`jangdok.entry.format.encode`.
- :func:`memory_limit`: no entry may need more memory than this process can have at all;
  more is refused before anything is allocated, naming the sizes.
- :func:`json_problem`: what a writer puts in JSON (metadata, the safe serializer's skeleton)
  must be text every reader can parse: no lone surrogates, no integer of more digits than
  Python reads from text.
- :data:`BYTES_PER_LIST`, :data:`BYTES_PER_OBJECT`: JSON read from an entry (a header, the
  safe serializer's skeleton) spends at least this many bytes on each list and object beyond
  its first 64 KiB, counted before it is parsed. An empty list costs JSON 3 bytes and Python 80, so 8 MB of them made a
  reader take 400 MB; writers pad what spends less with spaces, which JSON ignores.
- :func:`shown`: what a message quotes of a field read from an entry is cut short, since a
  hostile field may hold megabytes and messages end up in logs.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any

from ..errors import UnsupportedEntry

__all__ = ["MAX_EXPANSION", "MAX_INT_DIGITS", "MAX_NESTING", "BYTES_PER_LIST", "BYTES_PER_OBJECT", "memory_limit",
           "check_memory", "json_problem", "container_padding", "check_containers", "shown", "cut"]

MAX_EXPANSION = 1024
"""Most bytes a reader may decompress, in all, per byte of an entry's payload. Far above what
real data compresses to (float arrays 1.1-1.3x, integer labels tens of times), and reached only
by runs of one value (an all-zero array), which writers then pad: 0.1% of the array's size."""

MAX_INT_DIGITS = 4300
"""Most decimal digits of an integer in JSON: Python 3.11+ refuses to parse longer ones (its
``sys.get_int_max_str_digits()`` default), so a longer one would make an entry unreadable."""
MAX_NESTING = 100
"""Most lists, tuples and dicts a writer nests (in a safe value, or in metadata): JSON twice as
deep at most, which every supported Python parses back whatever its recursion limit leaves. How
deep a Python can go depends on its version (3.10 reads with two frames a level, 3.13 writes
with one), and an entry must be readable by every version."""
BYTES_PER_LIST = 8
"""Fewest bytes of JSON per list ("[", counted in strings too: cheap to count, and writers count
the same way). A list costs Python about 80 bytes, a small object (``{``) about 200, and a
2-character string in 5 bytes 59: so parsed, such JSON takes at most about 12 times its bytes,
against 27 for runs of ``[],`` and 60 for runs of ``{},``."""
BYTES_PER_OBJECT = 24
"""Fewest bytes of JSON per object ("{"), likewise."""
# The lists and objects of JSON this short cost a few MB at most, however they are spent: free,
# so that no small entry an older version wrote is refused.
_FREE_JSON_BYTES = 64 << 10
# 2**_SHORT_INT_BITS < 10**MAX_INT_DIGITS: integers with fewer bits need no counting of digits.
_SHORT_INT_BITS = 14284


@functools.cache
def memory_limit() -> int | None:
    """The most memory this process can have: physical memory, bounded by its address-space
    limit (``ulimit -v``) and its cgroup's memory limit (containers); ``None`` where unknown."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # Windows, or a system without these names
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    cgroup = _cgroup_limit()
    if cgroup is not None:
        limits.append(cgroup)
    return min(limits) if limits else None


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2), where Linux says; ``None`` otherwise."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as file:
            path = next((line.strip()[3:] for line in file if line.startswith("0::")), None)
        if path is None:
            return None
        with open(f"/sys/fs/cgroup{path.rstrip('/')}/memory.max", encoding="utf-8") as file:
            text = file.read().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def check_memory(needed: int, what: str) -> None:
    """Refuse, as an entry this machine cannot load, one that needs more than it can have."""
    limit = memory_limit()
    if limit is not None and needed > limit:
        raise UnsupportedEntry(f"{what} needs {needed:,} bytes of memory, more than this process can have "
                               f"({limit:,} bytes); it was not loaded")


def json_problem(value: Any) -> str | None:
    """Why a str or an int cannot travel through JSON to every reader; ``None`` if it can (and
    for any other value)."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"a lone surrogate ({value[exc.start]!a} at index {exc.start}), which UTF-8 cannot encode; "
                    "it usually comes from decoding bytes with errors='surrogateescape'")
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _SHORT_INT_BITS:
        try:
            digits = len(str(abs(value)))
        except ValueError:  # beyond this Python's own limit: count them another way
            digits = int(math.log10(abs(value))) + 1
        if digits > MAX_INT_DIGITS:
            return (f"an integer of {digits} digits; readers parse at most {MAX_INT_DIGITS} from text, so "
                    "store it as a str or bytes")
    return None


def _spent(text: bytes) -> int:
    """The bytes JSON ``text`` must have for the lists and objects it holds (``_FREE_JSON_BYTES``
    of them come free)."""
    return BYTES_PER_LIST * text.count(b"[") + BYTES_PER_OBJECT * text.count(b"{")


# JSON this short cannot hold more lists and objects than its free bytes pay for: not counted.
_SURELY_FREE = _FREE_JSON_BYTES // max(BYTES_PER_LIST, BYTES_PER_OBJECT)


def container_padding(text: bytes) -> bytes:
    """The spaces that give JSON ``text`` the bytes its lists and objects must have."""
    if len(text) <= _SURELY_FREE:
        return b""
    return b" " * max(0, _spent(text) - _FREE_JSON_BYTES - len(text))


def check_containers(text: bytes, what: str) -> None:
    """Before JSON ``text`` is parsed: refuse it, as an entry no jangdok writer makes (a forgery,
    or what a version before the padding wrote), if it holds more lists and objects than its
    bytes allow."""
    if len(text) > _SURELY_FREE and _spent(text) > len(text) + _FREE_JSON_BYTES:
        raise UnsupportedEntry(f"{what} holds {text.count(b'['):,} lists and {text.count(b'{'):,} objects in "
                               f"{len(text):,} bytes, more than one per {BYTES_PER_LIST} and {BYTES_PER_OBJECT} "
                               "bytes (beyond the first 64 KiB) allow: no jangdok writer makes that (a forged "
                               "entry, or one of many small containers an older jangdok wrote); it was not loaded")


def shown(value: Any, limit: int = 80) -> str:
    """A value read from an entry, for a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 24]}... ({len(text):,} characters)"


def cut(text: str, limit: int = 300) -> str:
    """A message that may quote an entry (an exception's text), cut short."""
    return text if len(text) <= limit else f"{text[: limit - 24]}... ({len(text):,} characters)"
