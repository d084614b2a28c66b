"""The link section's figures as text and markdown, and its targets."""

from __future__ import annotations

import math

from .linkbench import LinkSection
from .registry import LINK_COMPARISONS, LINK_PEERS
from .report import Target, fmt_ms, markdown_table, table_rows, text_table
from .values import MB

LINK_NOTE = (
    "The link is a loopback TCP proxy (jangdok.bench.link) in a process of its own, between every "
    "client and the same SeaweedFS: each byte waits half the round-trip time in each direction "
    "(so a request and its answer pay one RTT, and the first bytes of a new connection one more, "
    "for its handshake), then leaves as two token buckets allow, the connection's own and the "
    "link's total (each direction), in slices of about 2 ms. TLS is not modelled. Every request "
    "crossing it is counted there, whichever client sent it. The ceilings are plain boto3 with no "
    "library work: ranged GETs of part_size into one preallocated buffer on up to concurrency "
    "connections, and a multipart upload of part_size parts (one PUT when the bytes fit a part). "
    "The peers get jangdok's concurrency and part_size: boto3's transfer manager "
    "(download_fileobj/upload_fileobj with a TransferConfig), s3fs (cat_file, pipe_file: "
    "concurrent ranges and parts) and obstore (after a HEAD, get_range for every range at once on "
    "threads: its get_ranges merges adjacent ranges into one request, and get_range_async gathered "
    "in asyncio was many times slower here; put, multipart)."
)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else float("nan")


def link_targets(section: LinkSection) -> list[Target]:
    found: list[Target] = []
    get = section.result

    for name, seed_id, op_id, minimum in (
        ("link: BIG load vs the seed's HEAD + one GET", "seed|S3|load", "jangdok|S3|load", 4.0),
        ("link: BIG save vs the seed's one PUT", "seed|S3|save", "jangdok|S3|save", 3.0),
    ):
        mine, seed = get(op_id), get(seed_id)
        if mine is None or seed is None:
            found.append(Target(name, False, "not measured"))
            continue
        speedup = seed.median / mine.median
        found.append(Target(name, speedup >= minimum,
                            f"{speedup:.2f}x the seed's speed ({fmt_ms(mine.median)} vs {fmt_ms(seed.median)} ms, "
                            f"{mine.median_requests} vs {seed.median_requests} requests; target >= {minimum}x)"))

    giant = section.giant
    if giant is not None and "bytes" not in giant:
        found.append(Target("link: 1 GB load and save", False, "not measured (see the notes)"))
    elif giant is not None:
        size = giant["bytes"]
        for op, ceiling, rss_max in (("load", "ceiling GET", 1.1), ("save", "ceiling PUT", 0.05)):
            measured = giant[op]
            to_ceiling = _ratio(measured["seconds"], giant[ceiling])
            rss = measured["rss_increase"] / size
            found.append(Target(f"link: 1 GB {op}", measured["ok"] and to_ceiling <= 1.5 and rss <= rss_max,
                                f"{measured['seconds']:.2f} s = {to_ceiling:.2f}x the link's ceiling "
                                f"({giant[ceiling]:.2f} s; target <= 1.5x); peak RSS increase {rss:.2f}x the "
                                f"payload (target <= {rss_max}x)"))

    small, raw = get("jangdok|S3|load", "SMALL"), get("ceiling|S3|parallel GET", "SMALL")
    if small is None or raw is None:
        found.append(Target("link: SMALL hit", False, "not measured (see the notes)"))
    else:
        to_raw = small.median / raw.median
        found.append(Target("link: SMALL hit", small.median_requests == 1 and to_raw <= 1.2,
                            f"{small.median_requests} request(s) (target 1), {fmt_ms(small.median)} ms = "
                            f"{to_raw:.2f}x one raw GET ({fmt_ms(raw.median)} ms; target <= 1.2x)"))

    name = f"link: {section.batch_keys:,} SMALL hits, get_many vs one get at a time"
    one, many = section.batch.get("one by one"), section.batch.get("get_many")
    if one is None or many is None:
        found.append(Target(name, False, "Cache.get_many is not available: not measured"))
    else:
        found.append(Target(name, one.median / many.median >= 8,
                            f"{one.median / many.median:.1f}x ({one.median:.2f} s, {one.median_requests} requests vs "
                            f"{many.median:.2f} s, {many.median_requests} requests; target >= 8x)"))

    if section.app == {}:
        found.append(Target("link: main.py warm run on S3", False, "not measured (see the notes)"))
    elif section.app is not None:
        app = section.app
        bound = 1.5 * (app["local"] + app["read_mb"] / section.total_mbps)
        found.append(Target("link: main.py warm run on S3", app["S3"] <= bound,
                            f"{app['S3']:.2f} s; target <= 1.5 x ({app['local']:.2f} s local warm + "
                            f"{app['read_mb']:.1f} MB / {section.total_mbps:.0f} MB/s measured total) = {bound:.2f} s"))

    mine = get("jangdok|S3|load")
    peers = [r for r in (get(p) for p in LINK_PEERS["load"]) if r is not None]
    if mine is None or not peers:
        found.append(Target("link: BIG load vs the best of boto3's transfer manager, s3fs, obstore", False,
                            "not measured (see the notes)"))
    else:
        best = min(peers, key=lambda r: r.median)
        found.append(Target("link: BIG load vs the best of boto3's transfer manager, s3fs, obstore",
                            mine.median <= best.median,
                            f"{mine.median / best.median:.2f}x the time of {best.op.tool} {best.op.name} "
                            f"({fmt_ms(mine.median)} vs {fmt_ms(best.median)} ms; target <= 1.0x)"))
    return found


def _settings(section: LinkSection) -> str:
    big, small = (section.cases[0], section.cases[1])
    return (f"Link: {section.shape.describe()}. jangdok's concurrency {section.concurrency}, part_size "
            f"{section.part_size / 2**20:g} MiB (the same for the ceiling and the peers). BIG = {big.big_arrays} "
            f"arrays ({len(big.pickled) / MB:.1f} MB pickled), SMALL {len(small.pickled) / 1e3:.1f} KB. Median of "
            f"{section.reps['BIG']} timed rounds for BIG and {section.reps['SMALL']} for SMALL, after a warm-up round.")


def _facts(section: LinkSection) -> list[str]:
    """The section's figures besides its table, one sentence each."""
    get = section.result
    facts = []
    if section.capacity:
        facts.append("The proxy itself, shaping off: " + ", ".join(f"{mbps:.0f} MB/s {name}" for name, mbps in
                                                                  section.capacity.items())
                     + " (BIG in parallel ranges, as the ceiling fetches it).")
    ceilings = [(get("ceiling|S3|parallel GET"), "parallel ranged GETs"), (get("ceiling|S3|parallel PUT"),
                                                                          "parallel multipart PUT"),
                (get("ceiling|S3|GET, all connections"), "GETs on all connections (the link's total)")]
    parts = [f"{what} {fmt_ms(r.median)} ms ({r.size / MB / r.median:.0f} MB/s)" for r, what in ceilings if r]
    raw_small = get("ceiling|S3|parallel GET", "SMALL")
    if raw_small:
        parts.append(f"one small GET {fmt_ms(raw_small.median)} ms")
    if parts:
        facts.append("The link's ceiling, BIG: " + "; ".join(parts) + ".")
    one, many = section.batch.get("one by one"), section.batch.get("get_many")
    if one:
        facts.append(f"{section.batch_keys:,} SMALL hits: one get at a time {one.median:.2f} s "
                     f"({one.median_requests} requests)"
                     + (f", get_many {many.median:.2f} s ({many.median_requests} requests)" if many else "") + ".")
    if section.clients:
        facts.append("Clients, small GETs through the link: " + "; ".join(
            f"{name} {fmt_ms(t.median)} ms ({t.median_requests} requests)" for name, t in section.clients.items())
            + f" (at most {section.concurrency} in flight).")
    if section.app:
        app = section.app
        facts.append(f"main.py warm run ({app['chapter']} chapters, median of {app['runs']}): local folder "
                     f"{app['local']:.2f} s, S3 through the link {app['S3']:.2f} s ({app['read_mb']:.1f} MB read).")
    if section.giant and "bytes" in section.giant:
        giant = section.giant
        facts.append(f"1 GB value ({giant['bytes'] / 1e9:.2f} GB entry) through the link, jangdok in a fresh "
                     "process each: " + ", ".join(
                         f"{op} {giant[op]['seconds']:.2f} s (peak RSS +{giant[op]['rss_increase'] / 1e9:.2f} GB)"
                         for op in ("save", "load"))
                     + f"; the link's ceiling: GET {giant['ceiling GET']:.2f} s, PUT {giant['ceiling PUT']:.2f} s.")
    facts += [f"Note: {note}." for note in section.notes]
    facts.append("Time per part: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in section.seconds.items())
                 + ".")
    return facts


def link_text(section: LinkSection) -> str:
    rows = list(table_rows(section.results, LINK_COMPARISONS))
    return "\n".join(["== Through a shaped link ==", _settings(section), "", text_table(rows), "",
                      *_facts(section)])


def link_markdown(section: LinkSection, command: str) -> list[str]:
    rows = list(table_rows(section.results, LINK_COMPARISONS))
    return ["## Through a shaped link", "", _settings(section), "", LINK_NOTE, "",
            f"Reproduce: `{command}` (`--no-link` leaves this section out).", "",
            markdown_table(rows), "", *[f"- {fact}" for fact in _facts(section)], ""]
