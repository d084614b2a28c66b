"""The results as a table (text and markdown), the targets, the machine, the report file."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fresh import RSS_NOTE
from .measure import Result
from .registry import COMPARISONS
from .values import MB


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


@dataclass
class Comparison:
    seed: Result
    ceiling: Result
    best_peer: Result | None

    def speedup(self, result: Result) -> float:
        return self.seed.median / result.median


def comparison(results: dict[tuple[str, str], Result], result: Result,
               comparisons: dict[str, tuple[str, str, tuple[str, ...]]] = COMPARISONS) -> Comparison | None:
    if result.op.id not in comparisons:
        return None
    seed, ceiling, peers = comparisons[result.op.id]
    candidates = [results[p, result.case] for p in peers if (p, result.case) in results]
    best = min(candidates, key=lambda r: r.median) if candidates else None
    return Comparison(results[seed, result.case], results[ceiling, result.case], best)


COLUMNS = ("case", "store", "tool", "operation", "median ms", "min ms", "MB/s", "S3 req", "faults", "RSS Δ / payload",
           "fresh ms", "vs seed", "vs ceiling", "vs best peer")


def table_rows(results: dict[tuple[str, str], Result],
               comparisons: dict[str, tuple[str, str, tuple[str, ...]]] = COMPARISONS) -> Iterator[tuple[str, ...]]:
    for result in results.values():
        op = result.op
        row = dict.fromkeys(COLUMNS, "")
        row.update({"case": result.case, "store": op.store, "tool": op.tool, "operation": op.name,
                    "median ms": fmt_ms(result.median), "min ms": fmt_ms(min(result.times)),
                    "faults": str(int(statistics.median(result.faults))),
                    "fresh ms": fmt_ms(result.fresh_seconds)})
        if result.case != "SMALL":
            row["MB/s"] = f"{result.size / MB / result.median:.0f}"
        if result.median_requests is not None:
            row["S3 req"] = str(result.median_requests)
        if result.rss_increase is not None:
            row["RSS Δ / payload"] = f"{result.rss_increase / result.size:.2f}x ({result.rss_increase / MB:.0f} MB)"
        found = comparison(results, result, comparisons)
        if found:
            row["vs seed"] = f"{found.speedup(result):.2f}x faster"
            row["vs ceiling"] = f"{result.median / found.ceiling.median:.2f}x time"
            if found.best_peer:
                row["vs best peer"] = f"{result.median / found.best_peer.median:.2f}x ({found.best_peer.op.tool})"
        yield tuple(row.values())


def text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:  # text columns left-aligned, figures right-aligned
        return "  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(COLUMNS), line(tuple("-" * w for w in widths)), *map(line, rows)])


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    rule = "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|"
    out = ["| " + " | ".join(COLUMNS) + " |", rule]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


@dataclass
class Target:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS'}  {self.name}: {self.detail}"


def targets(results: dict[tuple[str, str], Result], giant: dict[str, dict[str, Any]] | None) -> list[Target]:
    def get(op_id: str, case: str = "BIG") -> Result:
        return results[op_id, case]

    def rss(result: Result) -> float:
        return float("nan") if result.rss_increase is None else result.rss_increase / result.size

    def speed(op_id: str, case: str = "BIG") -> tuple[Result, float]:
        result = get(op_id, case)
        return result, comparison(results, result).speedup(result)  # type: ignore[union-attr]

    found: list[Target] = []
    for op_id, label, minimum, rss_max in (
        ("jangdok|local|load", "local BIG load (checksum verified)", 1.0, 1.1),
        ("jangdok|local|load mmap", "local BIG load, mmap=True", 3.0, None),
        ("jangdok|local|save", "local BIG save over an existing entry", 1.5, 0.05),
        ("jangdok|S3|load", "S3 BIG load", 1.5, 1.1),
        ("jangdok|S3|save", "S3 BIG save", 1.15, 0.05),
    ):
        result, speedup = speed(op_id)
        passed = speedup >= minimum
        detail = f"{speedup:.2f}x the seed's speed (target >= {minimum}x)"
        if rss_max is not None:
            passed = passed and rss(result) <= rss_max
            detail += f"; RSS increase {rss(result):.2f}x payload (target <= {rss_max}x)"
            if result.op.kind == "save" and result.first_rss_increase is not None:
                detail += f"; a process's first save: +{result.first_rss_increase / MB:.1f} MB"
        found.append(Target(label, passed, detail))
    small, seed_small = get("jangdok|S3|load", "SMALL"), get("seed|S3|exists+load", "SMALL")
    speedup = seed_small.median / small.median
    found.append(Target("S3 SMALL hit", small.median_requests == 1 and speedup >= 2.0,
                        f"{small.median_requests} request(s) (target 1), {speedup:.2f}x the speed of the seed's "
                        f"exists+load ({seed_small.median_requests} requests; target >= 2x)"))
    if giant is not None:
        worst = max(m["rss_increase"] for m in giant.values())
        detail = ", ".join(f"{op} {m['seconds']:.1f} s, RSS +{m['rss_increase'] / 1e9:.2f} GB"
                           for op, m in giant.items())
        ok = all(m["ok"] for m in giant.values())
        found.append(Target("1 GB value, S3 save + load", ok and worst <= 1.2e9, f"{detail} (target <= 1.2 GB)"))
    for result in results.values():
        cmp_ = comparison(results, result)
        if cmp_ is None:
            continue
        to_ceiling = result.median / cmp_.ceiling.median
        to_peer = result.median / cmp_.best_peer.median if cmp_.best_peer else float("inf")
        which = (f"ceiling ({cmp_.ceiling.op.name})" if to_ceiling <= to_peer
                 else f"best peer ({cmp_.best_peer.op.tool} {cmp_.best_peer.op.name})")  # type: ignore[union-attr]
        found.append(Target(f"{result.case} {result.op.store} {result.op.name} within 1.3x",
                            min(to_ceiling, to_peer) <= 1.3,
                            f"{min(to_ceiling, to_peer):.2f}x the time of its {which}"))
    return found


def machine_info() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    from ..server import weed_binary

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    ram = ""
    if Path("/proc/meminfo").exists():
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        ram = f"{kb / 1024 ** 2:.1f} GiB"
    weed = subprocess.run([weed_binary(), "version"], capture_output=True, text=True).stdout.split()
    weed_version = f"{weed[2]} ({weed[1]} build)" if len(weed) > 2 else "?"

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    source = Path(__file__).resolve().parent.parent  # the jangdok package
    git = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    if git.returncode == 0:
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True).stdout.strip()
        source_note = f"{source}, commit {git.stdout.strip()[:70]}{' + uncommitted changes' if dirty else ''}"
    else:
        source_note = str(source)
    return [("CPU", f"{cpu}, {os.cpu_count()} cores"), ("RAM", ram), ("OS", platform.platform()),
            ("Python", platform.python_version()), ("numpy", ver("numpy")), ("boto3", ver("boto3")),
            ("SeaweedFS", weed_version), ("jangdok", f"{ver('jangdok')} from {source_note}"),
            ("peers", ", ".join(f"{n} {ver(n)}" for n in ("joblib", "diskcache", "s3fs", "obstore")))]


def write_markdown(path: Path, command: str, info: list[tuple[str, str]], rows: list[tuple[str, ...]],
                   found: list[Target], giant: dict[str, dict[str, Any]] | None, settings: str,
                   heap_note: str, elapsed: float, link: list[str]) -> None:
    lines = [
        "# Performance", "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} ({elapsed:.0f} s); "
        "re-run it to refresh this file. Compare ratios, not absolute times across machines.", "",
        "## Machine", "", *[f"- {k}: {v}" for k, v in info], "",
        "## Method", "", settings, "", heap_note, "", RSS_NOTE, "",
        "S3 is SeaweedFS on 127.0.0.1 (started by `jangdok.server`), so S3 figures show client-side "
        "costs without a network's latency or bandwidth limits. Local files are read from the page cache "
        "(written just before). S3 requests are counted with botocore `before-send` hooks (jangdok's "
        "through `cache.store.client`); s3fs and obstore, which have their own HTTP clients, through a "
        "loopback TCP proxy that counts request heads, in a separate untimed pass. 'vs seed' is the seed's median time "
        "divided by jangdok's; 'vs ceiling' and 'vs best peer' are jangdok's time divided by theirs. "
        "jangdok verifies each entry's length and xxh3-128 checksum on every load.", "",
        "## Results", "", markdown_table(rows), "",
    ]
    if giant is not None:
        lines += ["1 GB value (125 arrays of 1000x1000 float64) on S3, each operation once in a fresh process:", "",
                  *[f"- {op}: {m['seconds']:.1f} s ({1e3 / m['seconds']:.0f} MB/s), peak RSS increase "
                    f"{m['rss_increase'] / 1e9:.2f} GB" for op, m in giant.items()], ""]
    lines += [*link, "## Targets", "", *[f"- {t.line()}" for t in found], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
