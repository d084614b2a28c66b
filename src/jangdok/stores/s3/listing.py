"""Paging through S3 listings as if someone on the path wrote the answers.

A request is signed; its answer is not. Over an ``http://`` endpoint, anyone on the path can
rewrite a listing without holding any credential, and every operation that acts on a listing
(prune, cleanup, ``rm --prefix``) would then sign requests for whatever it names. So a listing
is believed only as far as it is checked:

- an item whose key lies outside the prefix asked for, or that lacks a field every item has,
  is never yielded (a WARNING, once per listing): nothing is ever read, aborted or deleted
  outside the cache because a listing said so;
- a page that hands back a continuation token (or marker) already followed ends the listing
  with :class:`~jangdok.errors.StoreUnavailable` naming the endpoint, instead of asking forever;
- so does a run of :data:`MOST_PAGES_WITHOUT_PROGRESS` pages in a row that bring no item past
  the furthest one yielded (S3 lists in key order, so an honest page always does, unless it is
  one of the rare empty pages S3 may send while it skips over deleted keys).

What the items say (times, sizes, ETags) cannot be checked without TLS; callers that delete
pin each delete to the listed ETag, so a forged ETag deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ...errors import StoreUnavailable
from .translate import quoted

__all__ = ["Paging", "OBJECTS", "UPLOADS", "MOST_PAGES_WITHOUT_PROGRESS", "pages"]

log = logging.getLogger("jangdok")

MOST_PAGES_WITHOUT_PROGRESS = 100
"""Pages in a row that may bring nothing new before a listing is taken for a loop: 1-3 s of
requests on a real link, and far more empty pages than S3 sends in a row."""


@dataclass(frozen=True)
class Paging:
    """How one kind of listing pages."""

    items: str
    """The answer's field holding the items (``Contents``, ``Uploads``)."""
    fields: tuple[str, ...]
    """The fields every item of an honest answer has, ``Key`` first."""
    position: Callable[[dict[str, Any]], tuple[str, ...]]
    """Where an item stands in the listing's order."""
    follow: dict[str, str]
    """Each field of an answer that says where the next page starts -> the request's field."""


OBJECTS = Paging("Contents", ("Key", "Size", "LastModified"), lambda item: (item["Key"],),
                 {"NextContinuationToken": "ContinuationToken"})
UPLOADS = Paging("Uploads", ("Key", "UploadId", "Initiated"), lambda item: (item["Key"], str(item["UploadId"])),
                 {"NextKeyMarker": "KeyMarker", "NextUploadIdMarker": "UploadIdMarker"})


def _refusal(item: Any, paging: Paging, prefix: str) -> str | None:
    """Why a listed item is not believed, if it is not."""
    key = item.get("Key") if isinstance(item, dict) else None
    if not isinstance(key, str):
        return f"an item without a key ({quoted(repr(item), 120)})"
    if not key.startswith(prefix):
        return f"{quoted(key, 120)!r}, outside the prefix {prefix!r} asked for"
    missing = [field for field in paging.fields if field not in item]
    if missing:
        return f"{quoted(key, 120)!r} without {' or '.join(missing)}"
    return None


def pages(fetch: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any], paging: Paging,
          prefix: str, where: str, endpoint: str) -> Iterator[dict[str, Any]]:
    """The items of a listing whose keys start with ``prefix``, page after page: ``fetch`` asks
    for one page (``request`` plus where it starts). ``where`` (the location listed) and
    ``endpoint`` name the listing in messages."""
    followed: set[tuple[Any, ...]] = set()
    furthest: tuple[str, ...] | None = None
    stalled = 0
    warned = False
    while True:
        page = fetch(request)
        advanced = False
        for item in page.get(paging.items) or ():
            refused = _refusal(item, paging, prefix)
            if refused is not None:
                if not warned:
                    warned = True
                    log.warning("S3 listing of %s from %s named %s; skipping it and any other such item (is "
                                "something between here and an http:// endpoint rewriting answers? use https)",
                                where, endpoint, refused)
                continue
            position = paging.position(item)
            if furthest is None or position > furthest:
                furthest, advanced = position, True
            yield item
        next_page = tuple(page.get(field) for field in paging.follow)
        if not page.get("IsTruncated") or not all(next_page):
            return
        if next_page in followed:
            raise StoreUnavailable(
                f"S3 error listing {where}: the endpoint {endpoint} sent a page that leads back to one already "
                "listed, so the listing would never end; is something between here and the endpoint rewriting "
                "answers? (over http:// anyone on the path can; use https)")
        followed.add(next_page)
        stalled = 0 if advanced else stalled + 1
        if stalled >= MOST_PAGES_WITHOUT_PROGRESS:
            raise StoreUnavailable(
                f"S3 error listing {where}: the endpoint {endpoint} sent {stalled} pages in a row without a key "
                "past those already listed, so the listing is not advancing; is something between here and the "
                "endpoint rewriting answers? (over http:// anyone on the path can; use https)")
        request = {**request, **dict(zip(paging.follow.values(), next_page, strict=True))}
