"""Commands that remove entries: rm and prune. Both show what would go and ask first."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import asdict

from ..bulk import SortedListing, remove
from ..cache import PruneReport
from ..console import human_size
from ..stores import ObjectInfo
from .context import (
    EXIT_MISSING,
    EXIT_OK,
    EXIT_USAGE,
    MANY_KEYS,
    Context,
    Failure,
    confirmed,
    listed,
    plural,
)


def cmd_rm(ctx: Context) -> int:
    cache, args = ctx.cache, ctx.args
    if bool(args.keys) == (args.prefix is not None):
        raise Failure("name keys to remove, or --prefix P (not both)", EXIT_USAGE)
    if args.prefix is not None:
        return _rm_prefix(ctx, args.prefix)
    keys = list(args.keys)
    removed: list[str] = []
    missing: list[str] = []
    if confirmed(ctx, f"Remove {plural(len(keys), 'entry', 'entries')} from {cache.location.url}?"):
        for key in keys:
            (removed if cache.delete(key) else missing).append(key)
    if args.json:
        ctx.emit({"removed": removed, "missing": missing})
    else:
        for key in removed:
            ctx.console.line(f"removed {key}")
        for key in missing:
            ctx.console.problem(f"jangdok: no entry {key!r}")
        if not removed and not missing:
            ctx.console.problem("nothing removed")
    return EXIT_MISSING if missing else EXIT_OK


def _rm_prefix(ctx: Context, prefix: str) -> int:
    """Every entry under a prefix, in the version listed: one listing request and one batch
    delete per 1000 entries (where the store has batches; else ``concurrency`` versioned
    deletes at a time), so an entry rewritten since the listing is kept. The listing is kept
    sorted in bounded memory between the question and the removal, so exactly what was asked
    about is removed, and the keys are written as they go."""
    cache = ctx.cache
    size = 0

    def sized(items: Iterable[ObjectInfo]) -> Iterator[ObjectInfo]:
        nonlocal size
        for item in items:
            size += item.size
            yield item

    with SortedListing(lambda item: item.key) as found:
        found.extend(sized(listed(cache, prefix)))
        if not found.count:
            raise Failure(f"no entries under prefix {prefix!r} in {cache.location.url}", EXIT_MISSING)
        question = (f"Remove {plural(found.count, 'entry', 'entries')} ({human_size(size)}) under {prefix!r} "
                    f"from {cache.location.url}?")
        agreed = confirmed(ctx, question)
        kept: list[str] = []

        def removed() -> Iterator[str]:
            if not agreed:
                return
            with closing(remove(cache.store, found, cache.settings.concurrency)) as outcomes:
                for item, gone in outcomes:
                    if gone:
                        yield item.key
                    else:
                        kept.append(item.key)

        if ctx.args.json:
            # "kept" is written after "removed" has run to its end, so it is complete by then.
            ctx.emit({"removed": removed(), "missing": [], "kept": kept})
            return EXIT_OK
        count = 0
        for key in removed():
            ctx.console.line(f"removed {key}")
            count += 1
    for key in kept:
        ctx.console.problem(f"kept {key}: rewritten or removed by another process since it was listed")
    if not count:
        ctx.console.problem("nothing removed")
    return EXIT_OK


def cmd_prune(ctx: Context) -> int:
    """Asks first, as rm does: what would go is examined (a dry run), and once confirmed the
    same rule runs for real. Crash leftovers are removed by the real run only, and counted apart."""
    args, cache = ctx.args, ctx.cache

    def prune(dry_run: bool) -> PruneReport:
        with ctx.console.progress("examining", None, "entries", MANY_KEYS) as bar:  # a count: the listing streams
            return cache.prune(older_than=args.older_than, max_bytes=args.max_size, dry_run=dry_run,
                               progress=bar.to)

    plan = None if args.yes and not args.dry_run else prune(dry_run=True)
    declined = False
    if plan is None:
        report = prune(dry_run=False)
    elif args.dry_run:
        report = plan
    elif not plan.removed:  # no entry to ask about: only the leftovers, which are never asked about
        report = PruneReport((), 0, cache.cleanup(), False)
    elif confirmed(ctx, f"Remove {plural(len(plan.removed), 'entry', 'entries')} ({human_size(plan.bytes_freed)}) "
                         f"from {cache.location.url}?"):
        report = prune(dry_run=False)
    else:
        report, declined = PruneReport((), 0, 0, False), True
    # Between the question and the real run the cache may change (a rewrite, a new entry):
    # the real run applies the same rule again, and any difference is said, never silent.
    shown = plan.removed if plan is not None and plan is not report and not declined else None
    added = sorted(set(report.removed) - set(shown)) if shown is not None else []
    kept = sorted(set(shown) - set(report.removed)) if shown is not None else []
    if args.json:
        ctx.emit({**asdict(report), "declined": declined, "not_shown_before": added, "kept_since_shown": kept})
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    for key in report.removed:
        ctx.console.line(f"{verb} {key}")
    if report.dry_run:
        leftovers = "; the real run also removes crash leftovers older than an hour, and counts them apart"
    else:
        leftovers = f", and {plural(report.leftovers, 'crash leftover', 'crash leftovers')}"
    ctx.console.line(f"{verb} {plural(len(report.removed), 'entry', 'entries')} ({human_size(report.bytes_freed)})"
                     f"{leftovers}")
    if added:
        ctx.console.problem(f"also removed, as the cache changed after it was examined: {', '.join(added)}")
    if kept:
        ctx.console.problem(f"kept, as they changed after the cache was examined: {', '.join(kept)}")
    if declined:
        ctx.console.problem("nothing removed")
    return EXIT_OK


