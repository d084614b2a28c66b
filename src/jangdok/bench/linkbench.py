"""The link section: jangdok, the seed's approach and the peers through a shaped link
(:mod:`.link`, in a process of its own) in front of the same SeaweedFS, each figure a ratio to
the link's own ceiling measured in the same run, by the same method as the loopback section
(tools alternating within rounds, the heap brought to the same state before each timed
operation, medians, fresh processes for peak RSS)."""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .apprun import SCRIPT, warm_runs
from .fresh import in_fresh_process
from .jangdok_tools import JangdokS3
from .link import UNSHAPED, LinkProcess, Shape
from .link_tools import LinkCeiling
from .measure import Result, measure
from .registry import LINK_TOOLS, build_ops, make_tool
from .tools import BUCKET, Context, Counter
from .values import BIG_ARRAYS, MB, Case, same_value

QUICK_ARRAYS = 100  # 16.2 MB: four parts of the smallest size, so --quick still loads in parallel
BATCH_KEYS, QUICK_BATCH_KEYS = 1000, 100
CLIENT_GETS = 100


@dataclass
class Timed:
    """One measured action: seconds and requests of each timed round."""

    times: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def median_requests(self) -> int:
        return int(statistics.median(self.requests))


@dataclass
class LinkSection:
    shape: Shape
    concurrency: int
    part_size: int
    cases: list[Case]
    reps: dict[str, int]
    results: dict[tuple[str, str], Result] = field(default_factory=dict)
    capacity: dict[str, float] = field(default_factory=dict)
    """MB/s of BIG fetched in parallel ranges as the ceiling does: straight, and through the link
    with its shaping off (the proxy's own speed)."""
    batch_keys: int = 0
    batch: dict[str, Timed] = field(default_factory=dict)
    clients: dict[str, Timed] = field(default_factory=dict)
    app: dict[str, Any] | None = None
    giant: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    """How long each part of the section took."""
    notes: list[str] = field(default_factory=list)
    """What could not be measured, and why."""

    def result(self, op_id: str, case: str = "BIG") -> Result | None:
        return self.results.get((op_id, case))

    @property
    def total_mbps(self) -> float:
        """The link's total bandwidth, as measured: BIG in as many ranges as connections."""
        spread = self.result("ceiling|S3|GET, all connections")
        return spread.size / MB / spread.median if spread else float("nan")


def run_timed(actions: dict[str, Callable[[], Any]], rounds: int, counter: Counter,
              check: Callable[[str, Any], None], warm_up: list[str] | None = None) -> dict[str, Timed]:
    """Each action once per round, alternating which goes first, after a warm-up round (of the
    actions named in ``warm_up``, default all) that checks what each returns; the previous
    result dropped (and collected) before each."""
    timed = {name: Timed() for name in actions}
    for round_ in range(rounds + 1):
        names = list(actions) if round_ % 2 == 0 else list(reversed(actions))
        for name in names if round_ else (list(actions) if warm_up is None else warm_up):
            gc.collect()
            before = counter.count
            started = time.perf_counter()
            result = actions[name]()
            seconds = time.perf_counter() - started
            requests = counter.count - before
            if round_ == 0:
                check(name, result)
            else:
                timed[name].times.append(seconds)
                timed[name].requests.append(requests)
            del result
    return timed


def proxy_capacity(direct: Context, case: Case, rounds: int = 3) -> dict[str, float]:
    """The proxy's own speed, shaping off, beside the server's reached straight."""
    with LinkProcess(direct.endpoint, UNSHAPED) as unshaped:
        tools = {"direct": LinkCeiling(direct), "through the unshaped link":
                 LinkCeiling(replace(direct, endpoint=unshaped.endpoint))}
        tools["direct"].put(case)
        for tool in tools.values():
            tool.allocate(case)
        def fetch(tool: LinkCeiling) -> Callable[[], Any]:
            return lambda: tool.get_into(tool.key(case), tool.buffers[case.name])

        timed = run_timed({name: fetch(tool) for name, tool in tools.items()}, rounds, unshaped,
                          lambda name, got: None)
    return {name: len(case.pickled) / MB / t.median for name, t in timed.items()}


def measure_batch(section: LinkSection, direct: Context, ctx: Context, link: LinkProcess, rounds: int) -> None:
    """``section.batch_keys`` SMALL hits, one ``get`` at a time and with ``get_many``."""
    from jangdok import Cache

    url, small = f"s3://{BUCKET}/batch/", Case("SMALL").value
    keys = [f"k{i:04d}.pkl" for i in range(section.batch_keys)]
    with Cache.from_settings(direct.jangdok_settings(url)) as writer, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda key: writer.put(key, small), keys))  # straight to the server: not measured
    with Cache.from_settings(ctx.jangdok_settings(url)) as cache:
        actions: dict[str, Callable[[], Any]] = {"one by one": lambda: {key: cache.get(key) for key in keys}}
        if hasattr(cache, "get_many"):
            actions["get_many"] = lambda: cache.get_many(keys)  # type: ignore[attr-defined, unused-ignore]
        else:
            section.notes.append("Cache.get_many is not in this tree: the batch target cannot be measured")
        cache.get(keys[0])  # the store opened, its capabilities probed: not part of either

        def check(name: str, got: Any) -> None:
            if set(got) != set(keys) or not all(same_value(value, small) for value in got.values()):
                raise AssertionError(f"{name} returned other values than the {len(keys)} saved")

        # The warm-up (connections opened) is get_many's: one by one it would take as long as
        # its timed round, and the one connection it needs is open.
        warm_up = [name for name in actions if name != "one by one"]
        section.batch = run_timed(actions, rounds, link, check, warm_up)


def compare_clients(section: LinkSection, ctx: Context, link: LinkProcess, rounds: int) -> None:
    """boto3 and obstore on small GETs through the link: one, and ``CLIENT_GETS`` with
    ``concurrency`` in flight (on threads for both; obstore also as asyncio tasks)."""
    keys = [f"batch/k{i:04d}.pkl" for i in range(min(CLIENT_GETS, section.batch_keys))]
    client = ctx.boto3_client(max_pool_connections=section.concurrency)
    gets: dict[str, Callable[[str], bytes]] = {
        "boto3": lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read()}
    obstore_tool = make_tool("obstore", ctx)
    if obstore_tool is not None:
        obstore, store = obstore_tool.obstore, obstore_tool.store_  # type: ignore[attr-defined]
        gets["obstore"] = lambda key: bytes(obstore.get(store, key).bytes())
    else:
        section.notes.append("obstore is not installed: the clients are not compared")

    def one(get: Callable[[str], bytes]) -> Callable[[], list[bytes]]:
        return lambda: [get(keys[0])]

    def on_threads(get: Callable[[str], bytes]) -> Callable[[], list[bytes]]:
        def run() -> list[bytes]:
            with ThreadPoolExecutor(section.concurrency) as pool:
                return list(pool.map(get, keys))
        return run

    actions: dict[str, Callable[[], Any]] = {}
    for name, get in gets.items():
        actions[f"{name}, one GET"] = one(get)
        actions[f"{name}, {len(keys)} GETs on threads"] = on_threads(get)
    if obstore_tool is not None:
        async def gather() -> list[bytes]:
            gate = asyncio.Semaphore(section.concurrency)

            async def fetch(key: str) -> bytes:
                async with gate:
                    return bytes(await (await obstore.get_async(store, key)).bytes_async())

            return await asyncio.gather(*(fetch(key) for key in keys))

        actions[f"obstore, {len(keys)} GETs as asyncio tasks"] = lambda: asyncio.run(gather())

    def check(name: str, got: Any) -> None:
        if not all(isinstance(body, bytes) and body for body in got):
            raise AssertionError(f"{name}: an empty answer")

    section.clients = run_timed(actions, rounds, link, check)


def measure_giant(giant: dict[str, Any], ctx: Context, ops: dict[str, Any], arrays: int) -> None:
    """The 1 GB value saved and loaded by jangdok, each in a fresh process, then the same bytes
    moved by the link's ceiling (its ranged GETs, its multipart PUT), into ``giant``."""
    for name in ("save", "load"):
        try:
            giant[name] = in_fresh_process(ctx, "jangdok S3", ops[name], "GIANT", arrays)
        except Exception as exc:  # reported as missing, the rest still measured
            print(f"warning: {exc}", file=sys.stderr, flush=True)
            giant[name] = {"rss_increase": float("nan"), "seconds": float("nan"), "ok": False}
    ceiling = LinkCeiling(ctx)
    key = JangdokS3.prefix + Case("GIANT").key
    buffer = ceiling.buffer_for(key)
    gc.collect()
    started = time.perf_counter()
    ceiling.get_into(key, buffer)
    giant["ceiling GET"] = time.perf_counter() - started
    started = time.perf_counter()
    ceiling.put_bytes(memoryview(buffer), "link-raw/giant.pkl")
    giant["ceiling PUT"] = time.perf_counter() - started
    giant["bytes"] = len(buffer)
    del buffer


def run_link_section(server_endpoint: str, access: tuple[str, str], workdir: str, shape: Shape, *, quick: bool,
                     reps: int, giant: bool) -> LinkSection:
    from jangdok.settings import MIN_PART_SIZE

    arrays = QUICK_ARRAYS if quick else BIG_ARRAYS
    direct = Context(workdir, server_endpoint, *access, part_size=MIN_PART_SIZE if quick else None)
    concurrency, part_size = direct.transfer()
    cases = [Case("BIG", arrays), Case("SMALL")]
    case_reps = {"BIG": 1 if quick else reps, "SMALL": 2 if quick else 3 * reps}
    section = LinkSection(shape, concurrency, part_size, cases, case_reps,
                          batch_keys=QUICK_BATCH_KEYS if quick else BATCH_KEYS)

    def part(name: str, action: Callable[[], Any]) -> Any:
        print(f"link: {name} ...", flush=True)
        started = time.perf_counter()
        try:
            return action()
        except Exception as exc:  # the other parts are still measured; this one's targets show as missing
            traceback.print_exc()
            section.notes.append(f"{name}: failed ({type(exc).__name__}: {str(exc)[:300]})")
            return None
        finally:
            section.seconds[name] = time.perf_counter() - started

    if not quick:
        section.capacity = part("the proxy's own speed, shaping off", lambda: proxy_capacity(direct, cases[0])) or {}
    with LinkProcess(server_endpoint, shape) as link:
        ctx = replace(direct, endpoint=link.endpoint)
        ops = [op for op in build_ops(ctx, tools=LINK_TOOLS) if op.id != "seed|S3|exists+load"]
        if quick:  # what the targets compare, and no more: of the peers, BIG loads (their saves not timed)
            for op in ops:
                if op.role == "peer" and op.kind == "save":
                    op.run(cases[0])
                op.only = "BIG" if op.role == "peer" else op.only
            ops = [op for op in ops if op.role != "peer" or op.kind == "load"]
        for op in ops:
            op.counter = link  # every request crossing the link, whichever client sent it
        section.results = part("BIG and SMALL, rounds", lambda: measure(ops, cases, case_reps)) or {}
        if not quick:
            part("peak RSS and first-run time, fresh processes", lambda: _fresh(section, ctx, ops, arrays))
        if giant:
            giant_figures: dict[str, Any] = {}  # filled as they are measured
            section.giant = giant_figures
            jangdok_ops = {op.name: op for op in ops if op.tool == "jangdok"}
            part("1 GB value", lambda: measure_giant(giant_figures, ctx, jangdok_ops, arrays))
        part(f"{section.batch_keys} SMALL hits", lambda: measure_batch(section, direct, ctx, link, 1))
        part("clients, small GETs", lambda: compare_clients(section, ctx, link, 1 if quick else 7))
        if SCRIPT.is_file():
            section.app = part("main.py warm runs", lambda: warm_runs(direct, ctx, workdir, quick, 1 if quick else 3))
            section.app = section.app or {}
        else:
            section.notes.append(f"{SCRIPT} is not there (not a source checkout): main.py not run")
    return section


def _fresh(section: LinkSection, ctx: Context, ops: list[Any], arrays: int) -> None:
    for op in ops:
        if not op.applies(Case("BIG")):
            continue
        try:
            measured = in_fresh_process(ctx, op.maker, op, "BIG", arrays)
        except Exception as exc:  # reported as missing, the rest still measured
            print(f"warning: {exc}", file=sys.stderr, flush=True)
            continue
        record = section.results[op.id, "BIG"]
        record.take_fresh(measured)

