"""Correct values under every process model: fork, forkserver, spawn, threads, and all mixed.

The issue: a parent saved 8 same-sized entries under ``s3://bucket/prefix/``, called
``jangdok.exists`` once, then forked 8 children that each loaded their own key 100 times;
hundreds of loads returned another key's value, because the boto3 client and its kept-alive
connection crossed the fork and the children read each other's responses. Every test here
runs against a real SeaweedFS (and a local folder), without mocks, and counts wrong values,
errors and misses rather than stopping at the first, so a failure says how bad it is.

The cache also checks each entry's recorded key and reads again when a response belongs to
another key, so a crossed response can come out right on the second read. The children
therefore also count those re-reads (``crossed``, see ``workers.LogWatch``): with one client
per process there are none, so any is a failure even when every value returned was right.

What the children run lives in tests/workers.py (importable by spawn and forkserver children).
Waits are bounded: a child that hangs or dies fails the test with its name and exit code.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import pytest
import workers
from seaweed import credentials_env

import jangdok
import jangdok.paths
import s3_utils
from jangdok import Cache

CHILDREN = 8
LOADS = 100
START_METHODS = ["fork", "forkserver", "spawn"]
RESULT_TIMEOUT = 120.0  # seconds for all children to report; a normal run needs a few


@dataclass
class Child:
    label: str
    process: Any
    reader: Connection


def start_child(context: Any, label: str, target: Callable[..., None], *args: Any) -> Child:
    """Start ``target(writer, *args)`` in a new process; its report arrives on the reader."""
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(writer, *args), name=label, daemon=True)
    process.start()
    writer.close()  # the child holds the only write end: its death reads as EOF
    return Child(label, process, reader)


def collect(children: list[Child], timeout: float = RESULT_TIMEOUT) -> list[dict[str, Any]]:
    """Every child's report, after checking that each one exited with code 0 in time."""
    deadline = time.monotonic() + timeout
    results: dict[str, dict[str, Any]] = {}
    try:
        pending = {child.reader: child for child in children}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = ", ".join(child.label for child in pending.values())
                pytest.fail(f"no report within {timeout:.0f} s from: {late}")
            for reader in wait(list(pending), timeout=remaining):
                child = pending.pop(reader)
                try:
                    results[child.label] = child.reader.recv()
                except EOFError:
                    child.process.join(timeout=5)
                    pytest.fail(f"{child.label} ended without a report (exit code {child.process.exitcode})")
        for child in children:
            child.process.join(timeout=max(5.0, deadline - time.monotonic()))
            if child.process.is_alive():
                pytest.fail(f"{child.label} reported but did not exit")
            assert child.process.exitcode == 0, f"{child.label} exited with code {child.process.exitcode}"
    finally:
        for child in children:
            if child.process.is_alive():
                child.process.terminate()
                child.process.join(timeout=5)
                if child.process.is_alive():
                    child.process.kill()
                    child.process.join(timeout=5)
            child.reader.close()
    fatal = {label: result["fatal"] for label, result in results.items() if "fatal" in result}
    assert not fatal, "children failed:\n" + "\n".join(f"--- {label}:\n{text}" for label, text in fatal.items())
    return [results[child.label] for child in children]


def total(results: list[dict[str, Any]], name: str) -> int:
    return sum(result[name] for result in results)


def problems(results: list[dict[str, Any]]) -> list[str]:
    """The children's sample failures and warnings, for assertion messages."""
    return [f"pid {result['pid']}: {text}" for result in results
            for text in [*result.get("samples", []), *result.get("warnings", [])]]


def isolated_env() -> dict[str, str]:
    """The variables a child needs to see this test's configuration (set with monkeypatch)."""
    return {name: value for name, value in os.environ.items()
            if name.startswith(workers.ISOLATED_PREFIXES) or name in workers.ISOLATED_NAMES}


def configure_path_level(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a user of ``jangdok.load``/``s3_utils`` would set up."""
    if backend == "s3":
        for name, value in credentials_env(request.getfixturevalue("seaweed")).items():
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("JANGDOK_FALLBACK", "0")  # a misconfigured S3 must raise, not pass on a local folder
    # As helpers.s3_settings: a response lost on a shared connection fails in seconds, not minutes.
    monkeypatch.setenv("JANGDOK_READ_TIMEOUT", "10")
    monkeypatch.setenv("JANGDOK_TOTAL_TIMEOUT", "30")
    monkeypatch.setattr(s3_utils, "_manager", None)


# -- 1. the scenario ----------------------------------------------------------------------


@pytest.mark.parametrize("api", ["jangdok", "s3_utils"])
@pytest.mark.parametrize("start_method", START_METHODS)
def test_each_child_loads_its_own_value(backend: str, cache_url: str, start_method: str, api: str,
                                        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue, on every backend, start method and API: 8 children x 100 loads of their own
    same-sized entry, after the parent saved them and called exists once."""
    configure_path_level(backend, request, monkeypatch)
    paths = [jangdok.join(cache_url, f"entry-{index}.pkl") for index in range(CHILDREN)]
    values = [workers.own_value(path) for path in paths]
    for path, value in zip(paths, values, strict=True):
        if api == "jangdok":
            jangdok.save(path, value)
        else:
            assert s3_utils.cache_save_pickle(path, value) is True
    exists = jangdok.exists if api == "jangdok" else s3_utils.cache_exists
    assert exists(paths[0]) is True  # the parent's client now keeps a connection alive

    # The parent really went through the shared path-level cache, on the intended store.
    cache, _ = jangdok.paths.cache_for(paths[0])
    assert list(jangdok.paths._caches.values()) == [cache]
    assert cache.store_label == ("S3" if backend == "s3" else "local")
    # Same-sized values, as in the issue (the entries' headers differ only in their timestamps).
    assert len({len(pickle.dumps(value, protocol=5)) for value in values}) == 1

    context = multiprocessing.get_context(start_method)
    barrier = context.Barrier(CHILDREN)
    env = isolated_env()
    children = [start_child(context, f"{start_method} child {index}", workers.load_own_path,
                            api, path, LOADS, env, barrier) for index, path in enumerate(paths)]
    results = collect(children)

    counts = {name: total(results, name) for name in ("wrong", "errors", "misses", "crossed", "warning_count")}
    assert counts == dict.fromkeys(counts, 0), f"{counts} in {CHILDREN * LOADS} loads: {problems(results)}"
    # fork children use the parent's cache object; the others start without one.
    assert [result["inherited"] for result in results] == [1 if start_method == "fork" else 0] * CHILDREN
    assert jangdok.load(paths[0]) == values[0]  # the parent's own connection still works


BURST_ROUNDS = 10
BURST_LOADS = 5


def test_repeated_fork_bursts_on_a_kept_alive_connection(seaweed: Any, s3_url: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         request: pytest.FixtureRequest) -> None:
    """The issue's fork, many times over: the bug's first loads are its likeliest victims.

    Children that share a connection leave it as soon as one of them notices a response
    waiting on it (urllib3 drops a pooled connection that is readable), so a shared client
    shows mostly in the loads right after the fork. Each round the parent's client holds a
    fresh kept-alive connection, and 8 children fork and load at once.
    """
    configure_path_level("s3", request, monkeypatch)
    paths = [jangdok.join(s3_url, f"entry-{index}.pkl") for index in range(CHILDREN)]
    for path in paths:
        jangdok.save(path, workers.own_value(path))
    context = multiprocessing.get_context("fork")
    env = isolated_env()
    results = []
    for round_number in range(BURST_ROUNDS):
        assert jangdok.exists(paths[round_number % CHILDREN]) is True  # the parent's connection, kept alive
        barrier = context.Barrier(CHILDREN)
        children = [start_child(context, f"round {round_number} child {index}", workers.load_own_path,
                                "jangdok", path, BURST_LOADS, env, barrier) for index, path in enumerate(paths)]
        results += collect(children)
    counts = {name: total(results, name) for name in ("wrong", "errors", "misses", "crossed", "warning_count")}
    assert counts == dict.fromkeys(counts, 0), f"{counts} in {len(results) * BURST_LOADS} loads: {problems(results)}"
    assert all(result["inherited"] == 1 for result in results)


# -- 2. threads sharing one Cache -----------------------------------------------------------------


def run_threads(work: Callable[[int], dict[str, Any]], count: int = CHILDREN) -> list[dict[str, Any]]:
    """``work(index)`` in ``count`` threads started together; their results, in a bounded wait."""
    barrier = threading.Barrier(count)

    def started(index: int) -> dict[str, Any]:
        barrier.wait(timeout=60)
        return work(index)

    with workers.LogWatch() as watch, ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(started, index) for index in range(count)]
        results = [future.result(timeout=RESULT_TIMEOUT) for future in futures]
    assert watch.report()["crossed"] == 0, "a read returned another key's entry (and was read again)"
    assert watch.warnings == [], watch.warnings[:3]
    return results


def test_threads_sharing_a_cache_load_their_own_values(cache: Cache) -> None:
    keys = [f"thread-{index}.pkl" for index in range(CHILDREN)]
    for key in keys:
        cache.put(key, workers.own_value(key))

    def work(index: int) -> dict[str, Any]:
        key, expected = keys[index], workers.own_value(keys[index])
        counts: dict[str, Any] = {"wrong": 0, "errors": 0, "misses": 0, "samples": []}
        for _ in range(LOADS):
            try:
                value = cache.get(key)
            except Exception as exc:
                counts["errors"] += 1
                counts["samples"].append(repr(exc))
                continue
            if value is None:
                counts["misses"] += 1
            elif value != expected:
                counts["wrong"] += 1
                counts["samples"].append(workers.describe(value))
        return counts

    results = run_threads(work)
    counts = {name: total(results, name) for name in ("wrong", "errors", "misses")}
    assert counts == {"wrong": 0, "errors": 0, "misses": 0}, [s for r in results for s in r["samples"]][:5]


def test_threads_sharing_a_cache_mixing_puts_and_loads(cache: Cache) -> None:
    keys = [f"thread-{index}.pkl" for index in range(CHILDREN)]
    for key in keys:
        value = workers.make_value(key, "parent", 0)
        cache.put(key, value, metadata=workers.make_metadata(value))

    def work(index: int) -> dict[str, Any]:
        key = keys[index]
        counts: dict[str, Any] = {"wrong": 0, "torn": 0, "errors": 0, "misses": 0, "samples": []}
        for n in range(1, LOADS + 1):
            try:
                if n % 4 == 0:
                    value = workers.make_value(key, f"thread-{index}", n)
                    cache.put(key, value, metadata=workers.make_metadata(value))
                    continue
                found = cache.get_entry(key)
            except Exception as exc:
                counts["errors"] += 1
                counts["samples"].append(repr(exc))
                continue
            if found is None:
                counts["misses"] += 1
                continue
            verdict = workers.check_value(key, found.value, found.info.metadata, with_metadata=True)
            if verdict != "ok":
                counts[verdict] += 1
                counts["samples"].append(f"{verdict}: {workers.describe(found.value)}")
        return counts

    results = run_threads(work)
    counts = {name: total(results, name) for name in ("wrong", "torn", "errors", "misses")}
    assert counts == {"wrong": 0, "torn": 0, "errors": 0, "misses": 0}, [s for r in results for s in r["samples"]][:5]


# -- 3. fork after first use of a Cache object ----------------------------------------------------

FORK_ROUNDS = 5
FORKED_OPERATIONS = 10  # per child and round: 9 gets, then a put


def test_fork_after_first_use_of_a_cache_object(cache_url: str, make_settings: Any) -> None:
    """A Cache opened and used by the parent, then forked (several times): every child uses
    the inherited object while the parent goes on using it too."""
    cache = Cache.from_settings(make_settings(cache_url))
    keys = [f"forked-{index}.pkl" for index in range(CHILDREN)]
    for key in keys:
        value = workers.make_value(key, "parent", 0)
        cache.put(key, value, metadata=workers.make_metadata(value))
    mine = "parent.pkl"
    cache.put(mine, workers.own_value(mine))
    context = multiprocessing.get_context("fork")
    results = []
    parent_wrong = 0
    for round_number in range(FORK_ROUNDS):
        assert cache.get(mine) == workers.own_value(mine)  # used right before the fork: a live connection
        barrier = context.Barrier(CHILDREN)
        children = [start_child(context, f"round {round_number} forked child {index}", workers.use_inherited_cache,
                                cache, key, FORKED_OPERATIONS, FORKED_OPERATIONS, barrier)
                    for index, key in enumerate(keys)]
        # The parent keeps using the same object while its children use their copies.
        parent_wrong += sum(cache.get(mine) != workers.own_value(mine) for _ in range(FORKED_OPERATIONS))
        results += collect(children)
    cache.close()

    counts = {name: total(results, name) for name in ("wrong", "torn", "errors", "crossed", "warning_count")}
    assert counts == dict.fromkeys(counts, 0), f"{counts}: {problems(results)}"
    assert parent_wrong == 0
    assert all(result["opened"] for result in results), "the children did not inherit an open store"
    assert total(results, "hits") == total(results, "gets"), "a child missed its own key"


# -- 4. stress: fork and spawn, mixed operations on a few shared keys -----------------------------

STRESS_PROCESSES = 8
STRESS_OPERATIONS = 200
STRESS_KEYS = [f"shared/key-{index}.pkl" for index in range(4)]


def test_stress_mixed_operations_forked_and_spawned(backend: str, cache_url: str, make_settings: Any) -> None:
    """8 processes x 200 random get/put/stat/delete on 4 keys; a third forked after the
    parent's first use of its Cache (and using that object), the rest spawned with their own."""
    settings = make_settings(cache_url, send_secrets=True)  # the spawned get them pickled, credentials too
    cache = Cache.from_settings(settings)
    for seq, key in enumerate(STRESS_KEYS):
        value = workers.make_value(key, os.getpid(), seq)
        cache.put(key, value, metadata=workers.make_metadata(value))
    found = cache.get_entry(STRESS_KEYS[0])  # first use before forking
    assert found is not None and workers.check_value(STRESS_KEYS[0], found.value, found.info.metadata, True) == "ok"

    fork, spawn = multiprocessing.get_context("fork"), multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(STRESS_PROCESSES)  # every child starts its operations at once
    children = []
    for index in range(STRESS_PROCESSES):
        forked = index % 3 == 0  # 0, 3, 6: a third of the processes, using the parent's object
        context, target = (fork, cache) if forked else (spawn, settings)
        children.append(start_child(context, f"{'forked' if forked else 'spawned'} stress child {index}",
                                    workers.stress, target, STRESS_KEYS, STRESS_OPERATIONS, 1000 + index, barrier))
    results = collect(children)
    cache.close()

    names = ("ops", "gets", "hits", "puts", "deletes", "stats", "stat_hits", "wrong", "torn", "errors",
             "crossed", "warning_count")
    counts = {name: total(results, name) for name in names}
    print(f"\nstress {backend}: {counts['ops']} ops ({counts['gets']} gets, {counts['hits']} hits, "
          f"{counts['puts']} puts, {counts['stats']} stats, {counts['deletes']} deletes), "
          f"wrong={counts['wrong']} torn={counts['torn']} errors={counts['errors']} "
          f"crossed={counts['crossed']} warnings={counts['warning_count']}")
    assert counts["ops"] == STRESS_PROCESSES * STRESS_OPERATIONS
    failures = {name: counts[name] for name in ("wrong", "torn", "errors", "crossed", "warning_count")}
    assert failures == dict.fromkeys(failures, 0), problems(results)
    assert [result["inherited"] for result in results] == [index % 3 == 0 for index in range(STRESS_PROCESSES)]
    # Deletes are rare and puts frequent: most reads must have found a value, not only misses.
    assert counts["hits"] >= counts["gets"] // 3, counts
    assert counts["stat_hits"] >= counts["stats"] // 3, counts


def test_threads_first_using_a_per_process_value_share_one() -> None:
    from jangdok.perprocess import PerProcess

    made: list[object] = []
    start = threading.Barrier(8)

    def make() -> object:
        time.sleep(0.05)  # long enough for every thread to arrive while the first is making it
        made.append(object())
        return made[-1]

    shared = PerProcess(make)

    def use(_: int) -> object:
        start.wait()
        return shared.get()

    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(use, range(8)))
    assert len(made) == 1 and all(value is made[0] for value in values)
