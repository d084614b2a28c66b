"""Many workers, one bucket: compute once at fleet size, with owners killed mid-computation.

    python benchmarks/many_workers.py [--quick] [--workers 64] [--keys 128]
        [--compute-seconds 0.5] [--lease-seconds 3] [--kill-fraction 0.1] [--seed 1]

Worker processes, each standing for a machine (its own ``Cache`` and its own local tier
folder), call ``get_or_compute`` on every key, each in its own seeded shuffled order, against
one SeaweedFS server (started on 127.0.0.1 in a temporary folder; needs the test extra)
reached through one counting proxy (tests/faultproxy.py). A computation sleeps
``--compute-seconds`` and returns a small numpy value derived from its key; before sleeping it
appends ``key pid`` to a shared log opened with O_APPEND, so computations are counted across
processes, the killed ones' included. The controller picks a tenth of the workers and SIGKILLs
each the first time the log shows it computing (it then owns that key's lease), so a waiter
must take the lease over once the owner stops renewing it.

Reported: computations per key (expected: exactly 1, plus 1 for every owner killed computing
that key), the kills and the takeovers that followed (seconds from the kill to the takeover,
and each worker's ``TierStats.seconds_waiting`` and ``lease_takeovers``), S3 requests in total
and per key by method, and wall time against the ideal (keys x compute seconds / workers).
Workers start, import and open their stores first; the clock starts when all are ready.
``--quick``: 16 workers, 32 keys, 0.2 s computations. Exit status 1 if a check fails.

The jangdok measured is the one Python imports: to pin a commit while src/ changes, extract it
(``git archive COMMIT src | tar -x -C DIR``) and run with ``PYTHONPATH=DIR/src``; the workers
inherit it, and the report names where jangdok came from. ``--keep DIR`` keeps the workers'
outputs, logs and local tiers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "fleet"
PREFIX = "run/"
ISOLATED = ("AWS_", "JANGDOK_", "CACHE_")
METHODS = ("GET", "HEAD", "PUT", "DELETE", "POST")
RUN_TIMEOUT = 900.0  # seconds after the start before the controller gives up on the workers


def key_names(count: int) -> list[str]:
    return [f"item-{number:04d}" for number in range(count)]


def expected_array(key: str) -> Any:
    import numpy as np

    return np.arange(256, dtype=np.int64) * 7 + zlib.crc32(key.encode())


# -- worker -------------------------------------------------------------------------------------


def _totals(cache: Any) -> dict[str, float]:
    """This process's counters summed over the store labels ("S3", "local tier")."""
    summed: dict[str, float] = defaultdict(float)
    for tier in cache.stats().values():
        for name, amount in dataclasses.asdict(tier).items():
            summed[name] += amount
    return summed


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from jangdok import Cache

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(created).3f %(process)d %(levelname)s %(message)s")
    pid = os.getpid()
    cache = Cache(args.location, local_dir=args.local_dir, lease_seconds=args.lease_seconds,
                  endpoint_url=args.endpoint, fallback=False)
    cache.store.capabilities  # noqa: B018 - open the store and probe its conditions before the start
    order = key_names(args.keys)
    random.Random(f"{args.seed}/{args.index}").shuffle(order)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    started_log, finished_log, ready_log = (os.open(path, flags, 0o644)
                                            for path in (args.log, args.finished_log, args.ready_log))
    os.write(ready_log, f"{pid}\n".encode())
    if sys.stdin.readline().strip() != "go":
        return 3
    cpu_at_start = _cpu_seconds()
    compute_started: dict[str, float] = {}

    def computation(key: str) -> Any:
        def compute() -> dict[str, Any]:
            compute_started[key] = time.time()
            os.write(started_log, f"{key} {pid}\n".encode())  # one O_APPEND write: one whole line
            time.sleep(args.compute_seconds)
            value = {"key": key, "by": pid, "array": expected_array(key)}
            os.write(finished_log, f"{key} {pid}\n".encode())
            return value
        return compute

    records = []
    bad = []
    errors = []
    for key in order:
        before = _totals(cache)
        began = time.time()
        try:
            value = cache.get_or_compute(key, computation(key))
        except Exception as exc:  # reported, and the worker fails; the other keys still run
            errors.append(f"{key}: {type(exc).__name__}: {exc}")
            continue
        ended = time.time()
        after = _totals(cache)
        right = (isinstance(value, dict) and value.get("key") == key
                 and isinstance(value.get("array"), np.ndarray) and np.array_equal(value["array"], expected_array(key)))
        if not right:
            bad.append(key)
        records.append({
            "key": key, "began": began, "ended": ended, "compute_started": compute_started.get(key),
            "computed": after["computed"] - before["computed"],
            "waited": after["seconds_waiting"] - before["seconds_waiting"],
            "takeovers": after["lease_takeovers"] - before["lease_takeovers"],
            "by": value.get("by") if isinstance(value, dict) else None,
        })
    stats = {label: dataclasses.asdict(tier) for label, tier in cache.stats().items()}
    print(json.dumps({"pid": pid, "index": args.index, "records": records, "stats": stats, "bad": bad,
                      "errors": errors, "finished": time.time(), "cpu": _cpu_seconds() - cpu_at_start}))
    return 1 if errors or bad else 0


# -- controller ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Kill:
    index: int
    pid: int
    key: str
    at: float
    mid_compute: bool = True
    """No 'finished' line for this key and pid: the computation never returned."""


@dataclasses.dataclass
class Fleet:
    """One run's workers, and what the controller saw of them."""

    args: argparse.Namespace
    tmp: Path
    keys: list[str]
    victims: set[int]
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    start: float = 0.0
    setup_seconds: float = 0.0
    setup_requests: int = 0
    kills: dict[int, Kill] = dataclasses.field(default_factory=dict)
    computations: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    exit_times: dict[int, float] = dataclasses.field(default_factory=dict)
    results: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    requests: list[str] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    timed_out: bool = False
    stored: dict[str, int] = dataclasses.field(default_factory=dict)
    """What the bucket holds at the end (listed around the proxy): entries, leases."""

    @property
    def log(self) -> Path:
        return self.tmp / "computations.log"

    def file(self, index: int, suffix: str) -> Path:
        return self.tmp / f"worker-{index:03d}.{suffix}"

    def pid_index(self) -> dict[int, int]:
        return {proc.pid: index for index, proc in enumerate(self.procs)}


def fleet_env(server_env: dict[str, str], endpoint: str, tmp: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(ISOLATED)}
    env.update(server_env)
    env.update({
        "AWS_ENDPOINT_URL": endpoint,  # the proxy, so every request is counted
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "JANGDOK_FALLBACK": "0",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    })
    return env


def read_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Whole lines appended to ``path`` since ``offset``, and the new offset."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode().splitlines(), offset + end


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classify(request_line: str) -> tuple[str, str, str]:
    """(method, kind, key) of a proxied request: kind is entry, lease, probe, listing or other."""
    method, _, target = request_line.partition(" ")
    path = target.partition("?")[0]
    base = f"/{BUCKET}/{PREFIX}"
    if not path.startswith(base):
        return method, "listing" if path.rstrip("/") == f"/{BUCKET}" else "other", ""
    name = path[len(base):]
    if name.startswith(".jangdok/leases/"):
        return method, "lease", name[len(".jangdok/leases/"):]
    if name.startswith(".jangdok"):
        return method, "probe", ""
    return method, "entry", name


def spread(values: list[float], unit: str = " s", digits: int = 2) -> str:
    if not values:
        return "none"
    return (f"min {min(values):.{digits}f} / median {statistics.median(values):.{digits}f} / "
            f"max {max(values):.{digits}f}{unit}")


def code_version() -> str:
    """Where the jangdok under test comes from, and its commit if that is this repository."""
    import jangdok

    source = Path(jangdok.__file__).resolve().parent
    if not source.is_relative_to(ROOT):
        return f"from {source}"

    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--", str(source))
    return (f"from {source}, commit {git('rev-parse', '--short', 'HEAD')}"
            + (" with uncommitted changes in src/" if changed else ""))


def stored_objects(client: Any) -> dict[str, int]:
    """Entries and leases left under the prefix."""
    counts: Counter[str] = Counter()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        for item in page.get("Contents", []):
            counts[classify(f"GET /{BUCKET}/{item['Key']}")[1]] += 1
    return dict(counts)


def controller(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(ROOT / "tests")]
    from faultproxy import FaultProxy

    from jangdok.server import credentials_env, start_seaweed

    checks: list[tuple[bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="many-workers-") as workdir:
        tmp = Path(workdir)
        if args.keep:  # the workers' outputs, logs and tiers stay there for a look afterwards
            tmp = Path(args.keep).resolve()
            tmp.mkdir(parents=True, exist_ok=False)
        keys = key_names(args.keys)
        victims = set(random.Random(f"{args.seed}/kills").sample(range(args.workers),
                                                                 round(args.workers * args.kill_fraction)))
        fleet = Fleet(args, tmp, keys, victims)
        print(f"{args.workers} workers x {args.keys} keys, compute {args.compute_seconds} s, lease "
              f"{args.lease_seconds} s, {len(victims)} worker(s) to kill mid-computation, seed {args.seed}, "
              f"{os.cpu_count()} CPU(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"jangdok {code_version()}")
        server = start_seaweed(tmp / "seaweed")
        try:
            server.client().create_bucket(Bucket=BUCKET)
            proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
            try:
                launch(fleet, fleet_env(credentials_env(server), proxy.endpoint, tmp), proxy.endpoint)
                try:
                    watch(fleet, proxy, server.pid)
                finally:
                    for proc in fleet.procs:
                        if proc.poll() is None:
                            proc.kill()
                        proc.wait()
                fleet.stored = stored_objects(server.client())
            finally:
                proxy.close()
        finally:
            server.stop()
        collect(fleet)
        report(fleet, checks)
    print()
    for passed, text in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    return 0 if checks and all(passed for passed, _ in checks) else 1


def launch(fleet: Fleet, env: dict[str, str], endpoint: str) -> None:
    args = fleet.args
    for index in range(args.workers):
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--index", str(index),
                   "--location", f"s3://{BUCKET}/{PREFIX}",
                   "--local-dir", str(fleet.tmp / "tiers" / f"machine-{index:03d}"), "--endpoint", endpoint,
                   "--log", str(fleet.log), "--finished-log", str(fleet.tmp / "finished.log"),
                   "--ready-log", str(fleet.tmp / "ready.log"), "--keys", str(args.keys),
                   "--compute-seconds", str(args.compute_seconds), "--lease-seconds", str(args.lease_seconds),
                   "--seed", str(args.seed)]
        with open(fleet.file(index, "out"), "wb") as stdout, open(fleet.file(index, "err"), "wb") as stderr:
            fleet.procs.append(subprocess.Popen(command, env=env, cwd=fleet.tmp, stdin=subprocess.PIPE,
                                                stdout=stdout, stderr=stderr))


def watch(fleet: Fleet, proxy: Any, server_pid: int) -> None:
    """Start the workers together, kill each chosen one at its first computation, wait for the rest."""
    launched = time.time()
    while True:  # everyone imports, opens its store and probes it; then all start at once
        ready, _ = read_lines(fleet.tmp / "ready.log", 0)
        if len(ready) == len(fleet.procs):
            break
        dead = [index for index, proc in enumerate(fleet.procs) if proc.poll() is not None]
        if dead:
            err = fleet.file(dead[0], "err").read_text(errors="replace")
            raise RuntimeError(f"worker {dead[0]} exited before the start:\n{err[-3000:]}")
        time.sleep(0.05)
    fleet.setup_seconds = time.time() - launched
    fleet.setup_requests = len(proxy.requests)
    setup_statuses = len(proxy.statuses)
    cpu_before = {"controller": process_cpu(os.getpid()), "server": process_cpu(server_pid)}
    fleet.start = time.time()
    for proc in fleet.procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()

    pid_index = fleet.pid_index()
    offset = 0
    while len(fleet.exit_times) < len(fleet.procs):
        lines, offset = read_lines(fleet.log, offset)
        for line in lines:
            key, pid_text = line.split()
            pid = int(pid_text)
            fleet.computations.append((key, pid))
            index = pid_index[pid]
            if index in fleet.victims and index not in fleet.kills:
                os.kill(pid, signal.SIGKILL)  # it logged before sleeping: it is inside compute, owning the lease
                fleet.kills[index] = Kill(index, pid, key, time.time())
        for index, proc in enumerate(fleet.procs):
            if index not in fleet.exit_times and proc.poll() is not None:
                fleet.exit_times[index] = time.time()
        if time.time() - fleet.start > RUN_TIMEOUT:
            fleet.timed_out = True
            break
        time.sleep(0.01)
    lines, offset = read_lines(fleet.log, offset)
    fleet.computations += [(line.split()[0], int(line.split()[1])) for line in lines]
    fleet.cpu = {"controller": process_cpu(os.getpid()) - cpu_before["controller"],
                 "server": process_cpu(server_pid) - cpu_before["server"]}
    fleet.requests = proxy.requests[fleet.setup_requests:]
    fleet.statuses = proxy.statuses[setup_statuses:]


def collect(fleet: Fleet) -> None:
    """Read what each worker printed, and whether each kill came before the computation returned."""
    finished_lines, _ = read_lines(fleet.tmp / "finished.log", 0)
    finished = {tuple(line.split()) for line in finished_lines}
    for kill in fleet.kills.values():
        kill.mid_compute = (kill.key, str(kill.pid)) not in finished
    for index, proc in enumerate(fleet.procs):
        if index in fleet.kills:
            continue
        text = fleet.file(index, "out").read_text(errors="replace").strip()
        try:
            fleet.results[index] = json.loads(text.splitlines()[-1])
        except (IndexError, ValueError):
            pass
        if proc.returncode != 0 or index not in fleet.results:
            err = fleet.file(index, "err").read_text(errors="replace").strip()
            fleet.failures.append(f"worker {index} (pid {proc.pid}) exit {proc.returncode}: {err[-1500:]}")
    fleet.cpu["workers"] = sum(result["cpu"] for result in fleet.results.values())


def report(fleet: Fleet, checks: list[tuple[bool, str]]) -> None:
    args, keys, results, kills = fleet.args, fleet.keys, fleet.results, fleet.kills
    workers, count = len(fleet.procs), len(keys)
    print(f"\nSet-up (start {workers} processes, import, open and probe the store): {fleet.setup_seconds:.1f} s, "
          f"{fleet.setup_requests} requests ({fleet.setup_requests / workers:.1f} per worker, not counted below)")

    # Computations per key.
    pid_index = fleet.pid_index()
    per_key = Counter(key for key, _ in fleet.computations)
    killed_owners = Counter(kill.key for kill in kills.values() if kill.mid_compute)
    expected = {key: 1 + killed_owners[key] for key in keys}
    wrong = {key: (per_key[key], expected[key]) for key in keys if per_key[key] != expected[key]}
    strays = sorted(set(per_key) - set(keys))
    print(f"\nComputations: {len(fleet.computations)} for {count} keys; keys by number of computations: "
          f"{dict(sorted(Counter(per_key[key] for key in keys).items()))}; expected "
          f"{dict(sorted(Counter(expected.values()).items()))}")
    for key, (got, want) in sorted(wrong.items()):
        by = [pid_index.get(pid, pid) for k, pid in fleet.computations if k == key]
        print(f"  {key}: computed {got} times, expected {want} (by workers {by})")

    # Kills and takeovers.
    takers: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for index, result in results.items():
        for record in result["records"]:
            if record["takeovers"]:
                takers[record["key"]].append((index, record))
    never = sorted(fleet.victims - set(kills))
    print(f"\nKills: {len(kills)} of {len(fleet.victims)} chosen workers "
          f"({sum(kill.mid_compute for kill in kills.values())} mid-computation). 'waiting': workers already "
          "waiting for the key at the kill; 'next arrival': the first to come to it after the kill")
    print("| worker | pid | key | killed at | mid-compute | waiting | next arrival | taken over by "
          "| kill -> takeover | taker waited |")
    print("|---:|---:|---|---:|---|---:|---:|---:|---:|---:|")
    kill_to_takeover: list[float] = []
    taker_waits: list[float] = []
    for kill in sorted(kills.values(), key=lambda kill: kill.at):
        later = [(index, record) for index, record in takers.get(kill.key, [])
                 if record["compute_started"] and record["compute_started"] > kill.at]
        if later:
            index, record = min(later, key=lambda item: item[1]["compute_started"])
            delay = record["compute_started"] - kill.at
            kill_to_takeover.append(delay)
            taker_waits.append(record["waited"])
            taker, delay_text, waited = str(index), f"{delay:.2f} s", f"{record['waited']:.2f} s"
        else:  # a later owner of the same key may itself have been killed: its takeover died with it
            next_kill = [other for other in kills.values() if other.key == kill.key and other.at > kill.at]
            taker = f"killed {next_kill[0].index}" if next_kill else "-"
            delay_text = waited = "-"
        visits = [record for result in results.values() for record in result["records"] if record["key"] == kill.key]
        waiting_then = sum(1 for record in visits if record["began"] < kill.at < record["ended"])
        arrivals = [record["began"] - kill.at for record in visits if record["began"] >= kill.at]
        arrival = f"+{min(arrivals):.2f} s" if arrivals else "-"
        print(f"| {kill.index} | {kill.pid} | {kill.key} | {kill.at - fleet.start:.2f} s | "
              f"{'yes' if kill.mid_compute else 'NO'} | {waiting_then} | {arrival} | {taker} | {delay_text} "
              f"| {waited} |")
    for index in never:
        print(f"  chosen worker {index} (pid {fleet.procs[index].pid}) never computed, so it was not killed")

    def summed(result: dict[str, Any], name: str) -> float:
        return sum(tier[name] for tier in result["stats"].values())

    takeovers = {index: summed(result, "lease_takeovers") for index, result in results.items()}
    waiting = [summed(result, "seconds_waiting") for result in results.values()]
    computed = [summed(result, "computed") for result in results.values()]
    print(f"\nLease takeovers (TierStats.lease_takeovers of the surviving workers): {int(sum(takeovers.values()))}, "
          f"by workers {sorted(index for index, n in takeovers.items() if n)}")
    print(f"Kill -> takeover (the taker's compute start): {spread(kill_to_takeover)}; "
          f"the taker's own wait for that key: {spread(taker_waits)}")
    print(f"TierStats.seconds_waiting per surviving worker: {spread(waiting)}; total {sum(waiting):.1f} s")
    print(f"TierStats.computed per surviving worker: {spread(computed, '', 0)}; "
          f"{sum(1 for n in computed if n == 0)} worker(s) computed nothing")

    # Requests.
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    per_key_requests: dict[str, Counter[str]] = {key: Counter() for key in keys}
    for line in fleet.requests:
        method, kind, key = classify(line)
        by_kind[kind][method] += 1
        by_kind["all"][method] += 1
        if key in per_key_requests:
            per_key_requests[key][method] += 1
            per_key_requests[key][kind] += 1
    total = len(fleet.requests)
    statuses = dict(sorted(Counter(fleet.statuses).items()))
    print(f"\nS3 requests after the start: {total} ({total / count:.1f} per key, "
          f"{total / (workers * count):.2f} per get_or_compute call); response statuses {statuses}")
    print("| requests | " + " | ".join(METHODS) + " | total |")
    print("|---|" + "---:|" * (len(METHODS) + 1))
    for kind in ("entry", "lease", "probe", "listing", "other", "all"):
        if by_kind.get(kind):
            row = by_kind[kind]
            print(f"| {kind} | " + " | ".join(str(row[m]) for m in METHODS) + f" | {sum(row.values())} |")
    print("\nPer key (its entry and its lease):")
    print("| method | mean | min | median | max |")
    print("|---|---:|---:|---:|---:|")
    for method in (*METHODS, "total"):
        values = [sum(per_key_requests[key][m] for m in METHODS) if method == "total"
                  else per_key_requests[key][method] for key in keys]
        print(f"| {method} | {statistics.mean(values):.1f} | {min(values)} | {statistics.median(values):g} "
              f"| {max(values)} |")
    key_totals = {key: sum(per_key_requests[key][m] for m in METHODS) for key in keys}
    if killed_owners:
        hit = [float(key_totals[key]) for key in keys if key in killed_owners]
        plain = [float(key_totals[key]) for key in keys if key not in killed_owners]
        print(f"Keys whose owner was killed: {spread(hit, ' requests', 0)}; "
              f"the others: {spread(plain, ' requests', 0)}")

    # Wall time, and where the CPU went.
    survivors = [index for index in range(workers) if index not in kills]
    finish = {index: fleet.exit_times.get(index, time.time()) - fleet.start for index in survivors}
    wall = max(finish.values()) if finish else float("nan")
    ideal = count * args.compute_seconds / workers
    print(f"\nWall time from the start to the last worker's exit: {wall:.1f} s; ideal {ideal:.2f} s "
          f"({count} keys x {args.compute_seconds} s / {workers} workers): {wall / ideal:.1f}x the ideal")
    if kills:
        bound = max(kill.at for kill in kills.values()) - fleet.start + args.lease_seconds + args.compute_seconds
        print(f"With kills, no run can end before the last kill + a lease lifetime + one computation: "
              f"{bound:.1f} s ({wall / bound:.1f}x that)")
    print(f"Workers' exits: {spread(list(finish.values()))} after the start")
    calls = [record["ended"] - record["began"] for result in results.values() for record in result["records"]]
    print(f"get_or_compute calls: {len(calls)}, {spread(calls, ' s', 3)}")
    cpu = fleet.cpu
    used = cpu["workers"] + cpu["controller"] + cpu["server"]
    capacity = (os.cpu_count() or 1) * wall
    print(f"CPU during the run: surviving workers {cpu['workers']:.1f} s ({cpu['workers'] / max(len(results), 1):.2f} "
          f"s each), controller + proxy {cpu['controller']:.1f} s, SeaweedFS {cpu['server']:.1f} s: "
          f"{used:.1f} s of {capacity:.1f} s ({os.cpu_count()} cores x wall time), {used / capacity:.0%}; "
          f"{used / max(len(calls), 1) * 1e3:.1f} ms per get_or_compute call")

    warnings: Counter[str] = Counter()
    for index in range(workers):
        for line in fleet.file(index, "err").read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                text = re.sub(r"s3://\S+", "<path>", parts[3])
                text = re.sub(r"\S+:\d+:[0-9a-f]{8}", "<owner>", text)
                warnings[f"{parts[2]} " + re.sub(r"\d+(\.\d+)?", "N", text)[:100]] += 1
    for text, n in warnings.most_common():
        print(f"Workers' log: {n} x {text}")

    print(f"Left in the bucket: {fleet.stored.get('entry', 0)} entries, {fleet.stored.get('lease', 0)} leases"
          + (f", {fleet.stored['probe']} probe objects" if fleet.stored.get("probe") else ""))

    bad = {index: result["bad"] for index, result in results.items() if result["bad"]}
    returned = sum(len(result["records"]) for result in results.values())
    if fleet.timed_out:
        checks.append((False, f"the workers finished within {RUN_TIMEOUT:.0f} s (the rest were killed)"))
    checks.append((not wrong and not strays,
                   f"computations per key == 1 + killed owners of that key, for all {count} keys"
                   + (f" ({len(wrong)} differ)" if wrong else "") + (f" (unknown keys {strays})" if strays else "")))
    checks.append((not bad and returned == len(survivors) * count,
                   f"every returned value was the right key's ({returned} values from {len(results)} workers"
                   + (f"; wrong: {bad}" if bad else "") + ")"))
    checks.append((not fleet.failures and len(results) == len(survivors),
                   f"no worker except the {len(kills)} killed ones failed"
                   + "".join(f"\n      {failure}" for failure in fleet.failures)))
    checks.append((all(kill.mid_compute for kill in kills.values()),
                   f"every kill landed mid-computation ({len(kills)} kill(s); {len(fleet.victims)} workers chosen"
                   + (f", of which {never} never computed and were not killed" if never else "") + ")"))
    checks.append((fleet.stored.get("entry") == count and not fleet.stored.get("lease"),
                   f"the bucket holds one entry per key and no lease ({fleet.stored.get('entry', 0)} entries, "
                   f"{fleet.stored.get('lease', 0)} leases)"))
    mid = [kill for kill in kills.values() if kill.mid_compute]
    # A chosen worker may first compute by taking over a killed owner's lease: that takeover
    # dies with it, so it is not in the surviving workers' statistics.
    by_victims = sum(1 for kill in mid if any(other.key == kill.key and other.at < kill.at for other in mid))
    total_takeovers = int(sum(takeovers.values()))
    checks.append((total_takeovers + by_victims == len(mid),
                   f"one lease takeover per owner killed mid-computation ({total_takeovers} by surviving workers"
                   + (f" + {by_victims} by workers killed afterwards" if by_victims else "")
                   + f", {len(mid)} such kills)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 workers, 32 keys, 0.2 s computations")
    parser.add_argument("--workers", type=int, help="worker processes (default 64; quick 16)")
    parser.add_argument("--keys", type=int, help="keys (default 128; quick 32)")
    parser.add_argument("--compute-seconds", type=float, help="seconds per computation (default 0.5; quick 0.2)")
    parser.add_argument("--lease-seconds", type=float, default=3.0, help="lease lifetime (default 3)")
    parser.add_argument("--kill-fraction", type=float, default=0.1, help="share of workers killed (default 0.1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the key orders and of the kill choice")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (new) and keep it: worker outputs, logs, tiers")
    # worker mode (the controller runs this same script)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--index", "--location", "--local-dir", "--endpoint", "--log", "--finished-log", "--ready-log"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workers = args.workers or (16 if args.quick else 64)
    args.keys = args.keys or (32 if args.quick else 128)
    if args.compute_seconds is None:
        args.compute_seconds = 0.2 if args.quick else 0.5
    if args.worker:
        args.index = int(args.index)
        return worker(args)
    return controller(args)


if __name__ == "__main__":
    sys.exit(main())
