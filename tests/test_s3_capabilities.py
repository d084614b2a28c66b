"""What an S3 server honours of conditional requests: probed the first time an operation needs
it, remembered per endpoint and bucket for the process, and *unknown* (never "no") while a probe
cannot run.

Against SeaweedFS and moto through the fault proxy, which loses answers for real or removes the
condition headers on the way: moto does not check signatures, so it then never sees them, as a
server that ignores them would not. Each test has its own proxy, so its own endpoint: no answer
learned by another test applies.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import BUCKET, s3_settings
from seaweed import SeaweedServer

from jangdok import Cache, parse_location
from jangdok.stores.s3 import S3Store, capabilities

PROBED = ["conditional_write", "conditional_delete", "conditional_batch_delete"]


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> Callable[[SeaweedServer], FaultProxy]:
    def start(server: SeaweedServer) -> FaultProxy:
        proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
        request.addfinalizer(proxy.close)
        return proxy

    return start


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The probes' clock, advanced by hand."""
    now = [1000.0]
    monkeypatch.setattr(capabilities, "_clock", lambda: now[0])
    return now


def _store(server: SeaweedServer, url: str, proxy: FaultProxy, **overrides: Any) -> S3Store:
    return S3Store(parse_location(url), s3_settings(server, url, endpoint_url=proxy.endpoint, **overrides))


def _probes(proxy: FaultProxy) -> list[str]:
    return [line for line in proxy.requests if ".jangdok-tmp-probe-" in line]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.fixture
def stores() -> Iterator[list[S3Store]]:
    made: list[S3Store] = []
    yield made
    for store in made:
        store.close()


@pytest.mark.parametrize("server_name", ["seaweed", "moto"])
def test_what_each_server_honours(server_name: str, request: pytest.FixtureRequest, s3_url: str,
                                  proxy_to: Callable[[SeaweedServer], FaultProxy],
                                  caplog: pytest.LogCaptureFixture) -> None:
    server = request.getfixturevalue(server_name)
    store = _store(server, s3_url, proxy_to(server))
    with caplog.at_level(logging.INFO, logger="jangdok"):
        assert store.capabilities.conditional_write is True  # both If-None-Match and If-Match on PUT
        assert store.capabilities.conditional_delete is True  # moto 5 enforces If-Match on DELETE too
        # moto before 5.2.6 deletes a batch's keys whatever ETag they are given: prune deletes one
        # at a time there. What the probe says must be what the server does when asked directly.
        honours_batch_pins = _batch_delete_honours_a_wrong_etag(server)
        assert store.capabilities.conditional_batch_delete is honours_batch_pins
    assert not _warnings(caplog), "a batch without pins is slower, not less safe: no warning"
    assert ("ignores ETag conditions in DeleteObjects" in caplog.text) is not honours_batch_pins
    store.close()


def _batch_delete_honours_a_wrong_etag(server: SeaweedServer) -> bool:
    """Ask the server itself, around jangdok: does DeleteObjects keep an object whose ETag differs?"""
    client = server.client()
    key = f"direct-experiment/{os.getpid()}-{threading.get_ident()}"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"kept if the pin is honoured")
    wrong_etag = '"' + "0" * 32 + '"'
    client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key, "ETag": wrong_etag}]})
    try:
        client.head_object(Bucket=BUCKET, Key=key)
    except client.exceptions.ClientError:
        return False
    client.delete_object(Bucket=BUCKET, Key=key)
    return True


@pytest.mark.parametrize("name", PROBED)
def test_a_probe_that_could_not_run_is_unknown_and_asked_again_later(
        name: str, seaweed: SeaweedServer, s3_url: str, proxy_to: Callable[[SeaweedServer], FaultProxy],
        clock: list[float], caplog: pytest.LogCaptureFixture, stores: list[S3Store]) -> None:
    proxy = proxy_to(seaweed)
    store = _store(seaweed, s3_url, proxy, max_attempts=1)
    stores.append(store)
    proxy.lose_answer_to(r"^PUT \S+\.jangdok-tmp-probe-")  # the blip: the probe's first request
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert getattr(store.capabilities, name) is None, "could not probe: unknown, not False"
        assert proxy.fired == [f"lost answer: {_probes(proxy)[0]}"]
        asked = len(_probes(proxy))
        clock[0] += capabilities.RETRY_SECONDS / 2
        assert getattr(store.capabilities, name) is None
        assert len(_probes(proxy)) == asked, "an unknown answer is asked again at most every RETRY_SECONDS"
        clock[0] += capabilities.RETRY_SECONDS
        assert getattr(store.capabilities, name) is True
        asked = len(_probes(proxy))
        assert getattr(store.capabilities, name) is True
        another = _store(seaweed, s3_url, proxy)
        stores.append(another)
        assert getattr(another.capabilities, name) is True
    assert len(_probes(proxy)) == asked, "a definite answer is kept for the endpoint and bucket"
    assert not _warnings(caplog), "nothing is claimed about a server that could not be asked"


@pytest.mark.parametrize("ignored", [("If-None-Match",), ("If-Match",), ("If-None-Match", "If-Match")])
def test_a_server_ignoring_a_condition_on_put_is_told_once(ignored: tuple[str, ...], moto: SeaweedServer, s3_url: str,
                                                           proxy_to: Callable[[SeaweedServer], FaultProxy],
                                                           caplog: pytest.LogCaptureFixture,
                                                           stores: list[S3Store]) -> None:
    proxy = proxy_to(moto)
    proxy.drop_headers("PUT", *ignored)
    stores += [_store(moto, s3_url, proxy), _store(moto, s3_url, proxy)]
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert stores[0].capabilities.conditional_write is False
        asked = len(_probes(proxy))
        assert stores[1].capabilities.conditional_write is False
        assert stores[0].capabilities.conditional_write is False
    assert [fired.split(":")[0] for fired in proxy.fired] == [f"dropped {header}" for header in ignored]
    assert len(_probes(proxy)) == asked, "asked once per endpoint and bucket"
    (warning,) = _warnings(caplog)
    assert f"ignores {' and '.join(ignored)} on PutObject" in warning and "best effort" in warning


def test_a_server_ignoring_if_match_on_delete_is_told_once_and_deletes_still_check(
        moto: SeaweedServer, s3_url: str, proxy_to: Callable[[SeaweedServer], FaultProxy],
        caplog: pytest.LogCaptureFixture) -> None:
    proxy = proxy_to(moto)
    proxy.drop_headers("DELETE", "If-Match")
    store = _store(moto, s3_url, proxy)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert store.capabilities.conditional_delete is False
        assert store.capabilities.conditional_delete is False
    assert proxy.fired and all(fired.startswith("dropped If-Match: DELETE") for fired in proxy.fired)
    (warning,) = _warnings(caplog)
    assert "ignores If-Match on DeleteObject" in warning
    store.write("label.pkl", b"first")
    first = store.stat("label.pkl").version
    store.write("label.pkl", b"second")
    assert store.delete("label.pkl", version=first) is False, "checked before deleting"
    with store.read("label.pkl") as reader:
        assert reader.read() == b"second"
    assert store.delete("label.pkl", version=store.stat("label.pkl").version) is True
    assert [found.key for found in store.list()] == [], "and the probe object was never listed nor left"
    store.close()


def test_an_unknown_conditional_delete_checks_and_still_sends_the_condition(
        seaweed: SeaweedServer, s3_url: str, proxy_to: Callable[[SeaweedServer], FaultProxy]) -> None:
    """While the answer is unknown, a versioned delete checks the version, then deletes with
    If-Match: a good entry written between the check and the delete survives where the server
    honours the condition (a bare check-then-delete would remove it)."""
    proxy = proxy_to(seaweed)
    store, writer = _store(seaweed, s3_url, proxy, max_attempts=1), _store(seaweed, s3_url, proxy)
    store.write("label.pkl", b"damaged entry")
    damaged = store.stat("label.pkl").version
    proxy.lose_answer_to(r"^PUT \S+\.jangdok-tmp-probe-")

    def good_entry_lands_now(**_: Any) -> None:
        store.client.meta.events.unregister("before-call.s3.DeleteObject", good_entry_lands_now)
        writer.write("label.pkl", b"a good entry")

    store.client.meta.events.register("before-call.s3.DeleteObject", good_entry_lands_now)
    assert store.delete("label.pkl", version=damaged) is False
    assert store.capabilities.conditional_delete is None and proxy.fired[0].startswith("lost answer")
    with writer.read("label.pkl") as reader:
        assert reader.read() == b"a good entry"
    store.close()
    writer.close()


def test_a_fresh_cache_reads_without_probing_and_a_second_one_probes_nothing_again(
        seaweed: SeaweedServer, s3_url: str, s3_prefix: str, proxy_to: Callable[[SeaweedServer], FaultProxy]) -> None:
    proxy = proxy_to(seaweed)
    settings = s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint)
    with Cache.from_settings(s3_settings(seaweed, s3_url)) as direct:
        direct.put("present.pkl", "value")
    opening = f"GET /jangdok-test?list-type=2&prefix={s3_prefix.replace('/', '%2F')}&max-keys=1&encoding-type=url"
    for key, value in (("missing.pkl", None), ("present.pkl", "value")):
        proxy.requests.clear()
        with Cache.from_settings(settings) as cache:
            assert cache.get(key) == value
            assert cache.store_label == "S3"
        # The opening check (bucket and credentials), then the entry: no probe, nothing else.
        assert proxy.requests == [opening, f"GET /jangdok-test/{s3_prefix}{key}"]
    with Cache.from_settings(settings) as first:
        assert first.get_or_compute("computed.pkl", lambda: 1) == 1  # a lease: conditional write and delete
    assert len(_probes(proxy)) > 0
    proxy.requests.clear()
    with Cache.from_settings(settings) as second:
        assert second.get_or_compute("other.pkl", lambda: 2) == 2
        second.delete("computed.pkl")
    assert proxy.requests and _probes(proxy) == [], "the answers were kept for the endpoint and bucket"


def test_threads_asking_at_once_share_one_probe(seaweed: SeaweedServer, s3_url: str,
                                                 proxy_to: Callable[[SeaweedServer], FaultProxy]) -> None:
    proxy = proxy_to(seaweed)
    store = _store(seaweed, s3_url, proxy)
    start = threading.Barrier(8)
    answers: list[bool | None] = []

    def ask() -> None:
        start.wait()
        answers.append(store.capabilities.conditional_write)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 8
    # One probe: create, If-None-Match, If-Match, remove.
    assert [line.split()[0] for line in _probes(proxy)] == ["PUT", "PUT", "PUT", "DELETE"]
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_during_a_probe_probes_for_itself(seaweed: SeaweedServer, s3_url: str,
                                                         proxy_to: Callable[[SeaweedServer], FaultProxy]) -> None:
    """A thread is inside a probe (its request stalled) when the process forks: the child does
    not inherit the held probe lock and wait forever; it asks the server itself."""
    proxy = proxy_to(seaweed)
    store = _store(seaweed, s3_url, proxy, connect_timeout=1, read_timeout=2, max_attempts=1)
    proxy.faults.append(("stall",))
    probing = threading.Thread(target=lambda: store.capabilities.conditional_write)
    probing.start()
    while "stall" not in proxy.fired:
        assert probing.is_alive()
        threading.Event().wait(0.01)
    child = os.fork()
    if child == 0:  # the child: a fresh connection, a probe of its own
        try:
            os._exit(0 if store.capabilities.conditional_write is True else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60  # a child waiting on the inherited lock would wait forever
    while not (ended := os.waitpid(child, os.WNOHANG))[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ended[0]:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    probing.join()
    assert ended[0] and os.waitstatus_to_exitcode(ended[1]) == 0, "the child answered by probing itself"
    store.close()


def test_no_request_leaves_its_connection_confused(seaweed: SeaweedServer, s3_url: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """SeaweedFS answers an empty PutObject with a stray line that the next response on the
    kept-alive connection trips over; jangdok's own objects (probes, expiry markers) are never empty."""
    with caplog.at_level(logging.WARNING), Cache.from_settings(s3_settings(seaweed, s3_url)) as cache:
        cache.put("ttl.pkl", 1, ttl=60)
        assert cache.get_or_compute("computed.pkl", lambda: 2) == 2  # probes conditional writes
        cache.store.write(".jangdok/leases/dead.pkl", b'{"owner": "a dead process"}')  # for cleanup to judge
        cache.put("damaged.pkl", 3)
        assert cache.store.capabilities.conditional_delete is not None
        assert cache.get("ttl.pkl") == 1
        cache.cleanup()  # reads the server's clock from a marker, when there are leases to judge
    assert not [record for record in caplog.records if record.name.startswith("urllib3")], caplog.text
