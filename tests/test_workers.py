"""A cache and its memoized functions travel to worker processes and mean the same there.

A ``Cache`` pickles (pickle and cloudpickle, any protocol) as its settings, without secrets
unless asked; the receiver opens its own store and finds its own credentials. Memoized
functions pickle by reference (plain pickle) or by value (cloudpickle, as Dask sends them) and
give the same keys in the parent and in fork, forkserver and spawn workers, also for functions
and argument types defined in the main script, however it was started. Workers' stats come
back and add up. Everything runs against SeaweedFS and a local folder; what the pool workers
run lives in tests/travellers.py.
"""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import travellers
from faultproxy import FaultProxy
from helpers import s3_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from seaweed import SeaweedServer, credentials_env

import jangdok
from jangdok import Cache, CredentialsError, Settings, Stats, TierStats, stable_hash
from jangdok.errors import ConfigError

PICKLERS: list[tuple[str, Callable[[Any], bytes]]] = [
    *((f"pickle-{protocol}", functools.partial(pickle.dumps, protocol=protocol))
      for protocol in range(pickle.HIGHEST_PROTOCOL + 1)),
    ("cloudpickle", cloudpickle.dumps),
]
POOLS = ["fork", "forkserver", "spawn", "multiprocessing.Pool"]
SRC = str(Path(jangdok.__file__).resolve().parent.parent)


def _s3_env(seaweed: SeaweedServer) -> dict[str, str]:
    return {**credentials_env(seaweed), "JANGDOK_FALLBACK": "0"}


@contextmanager
def _pool(kind: str, env: dict[str, str], workers: int = 2) -> Iterator[Callable[..., list[Any]]]:
    """``map(fn, items)`` on a pool of ``kind`` whose workers see exactly ``env`` (a forkserver's
    workers would otherwise inherit the environment of whichever test started the server)."""
    if kind == "multiprocessing.Pool":
        with multiprocessing.Pool(workers, initializer=travellers.use_environment, initargs=(env,)) as pool:
            yield lambda fn, items: pool.map(fn, items, chunksize=1)
        return
    context = multiprocessing.get_context(kind)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=travellers.use_environment,
                             initargs=(env,)) as executor:
        yield lambda fn, items: list(executor.map(fn, items))


# -- a Cache pickles, and opens anew where it arrives ---------------------------------------------


@pytest.mark.parametrize("name, dumps", PICKLERS, ids=[name for name, _ in PICKLERS])
def test_a_used_cache_pickles_and_reopens(name: str, dumps: Callable[[Any], bytes], backend: str, cache_url: str,
                                          make_settings: Any) -> None:
    """A used cache (store open, locks and counters made) and its bound methods pickle with
    every protocol; in this process the copy is an independent working cache."""
    settings = make_settings(cache_url, send_secrets=True)  # unpickled here, where no credentials are set
    with Cache.from_settings(settings) as cache:
        cache.put("a.pkl", {"n": 1})
        assert cache.get("a.pkl") == {"n": 1}
        copied = pickle.loads(dumps(cache))
        get = pickle.loads(dumps(cache.get))
        assert copied.settings == settings and copied is not cache
        assert copied.get("a.pkl") == {"n": 1} and get("a.pkl") == {"n": 1}
        assert copied.store is not cache.store and get.__self__.store is copied.store  # arrived: one opening
        copied.put("b.pkl", 2)
        copied.close()  # closing the copy leaves the original, and the other arrival, working
        assert cache.get("b.pkl") == 2 and get("b.pkl") == 2
        label = cache.store_label
        assert cache.stats()[label].hits == 2 and copied.stats()[label].hits == 1 and copied.stats()[label].puts == 1


def test_caches_arriving_in_a_process_share_one_opening(seaweed: SeaweedServer, s3_url: str,
                                                        proxy: FaultProxy) -> None:
    """A pool's or a cluster's tasks each carry the cache they use (``pool.map(cache.get, keys)``
    unpickles one per task): those arriving in one process with the same settings open one
    store between them, as a cache made there would (each opening costs a client, ~0.2 s of
    CPU, a connection and a request), and each counts its own stats. Closing one leaves it."""
    cache = Cache.from_settings(s3_settings(seaweed, s3_url, endpoint_url=proxy.endpoint, send_secrets=True))
    cache.put("k.pkl", 1)
    blob = pickle.dumps(cache.get)
    proxy.requests.clear()
    connections = proxy.connections
    gets = [pickle.loads(blob) for _ in range(4)]
    assert [get("k.pkl") for get in gets] == [1] * 4
    assert len(proxy.requests) == 1 + 4 and proxy.connections == connections + 1, proxy.requests
    assert all(get.__self__.stats()["S3"].hits == 1 for get in gets)
    gets[0].__self__.close()
    assert [get("k.pkl") for get in gets] == [1] * 4 and len(proxy.requests) == 1 + 8
    assert cache.store not in {get.__self__.store for get in gets}  # the sender's own stays its own


def test_copies_are_independent_and_keep_secrets(tmp_path: Path) -> None:
    """copy and deepcopy stay in this process: the copy keeps the secrets and its own state."""
    cache = Cache(tmp_path / "c", signing_keys="s" * 24)
    cache.put("a.pkl", 1)
    for copied in (copy.copy(cache), copy.deepcopy(cache)):
        assert copied is not cache and copied.settings.signing_keys == cache.settings.signing_keys
        assert copied.get("a.pkl") == 1 and copied.store is not cache.store
        copied.close()
    assert cache.get("a.pkl") == 1


def test_a_subclass_travels_with_its_own_attributes(tmp_path: Path) -> None:
    """A subclass of Cache whose __init__ takes arguments of its own arrives as itself, with
    its attributes, and its __init__ is not called again (without those arguments)."""
    cache = travellers.ProjectCache("chapter", str(tmp_path))
    cache.put("a.pkl", 1)
    for arrived in (pickle.loads(pickle.dumps(cache)), cloudpickle.loads(cloudpickle.dumps(cache)), copy.copy(cache)):
        assert type(arrived) is travellers.ProjectCache and arrived.project == "chapter"
        assert arrived.settings == cache.settings and arrived.get("a.pkl") == 1


def test_what_travels_is_the_settings_as_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver takes the sender's values (not its own environment's), folders absolute;
    the sender's default fallback folder is left for the receiver to make."""
    monkeypatch.delenv("JANGDOK_FALLBACK_DIR")
    monkeypatch.setenv("JANGDOK_CONCURRENCY", "3")
    cache = Cache("relative", local_dir="tier", read_timeout=4)
    blob = pickle.dumps(cache)
    monkeypatch.setenv("JANGDOK_CONCURRENCY", "7")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    arrived = pickle.loads(blob).settings
    assert arrived.concurrency == 3 and arrived.read_timeout == 4
    assert arrived.cache_dir == os.path.abspath("relative") and arrived.local_dir == os.path.abspath("tier")
    assert arrived.fallback_dir == str(tmp_path / "elsewhere" / "jangdok" / "fallback")


def test_settings_from_another_version_are_checked_on_arrival(tmp_path: Path) -> None:
    """A worker running another jangdok: a setting it does not know, or a value it refuses, is
    a ConfigError saying so (not a setting silently dropped, nor a failure deep in a read);
    one the sender did not know yet takes this version's default."""
    arrive, (state,) = Settings(cache_dir=str(tmp_path / "c")).__reduce__()
    with pytest.raises(ConfigError, match=r"unknown to this jangdok \(.*\).* same version") as raised:
        arrive({**state, "placement": "elsewhere"})
    assert "placement" in str(raised.value)
    with pytest.raises(ConfigError, match="compression .* must be one of"):
        arrive({**state, "compression": "lz9"})
    older = {name: value for name, value in state.items() if name != "part_size"}
    assert arrive(older).part_size == Settings().part_size and arrive(older).received


def test_a_fallen_back_cache_travels_as_configured(seaweed: SeaweedServer, s3_url: str, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A cache that fell back to its folder here (no credentials) is sent as the S3 cache it
    was asked to be: a worker that has credentials opens S3."""
    cache = Cache(s3_url, endpoint_url=seaweed.endpoint, region="us-east-1")
    cache.put("here.pkl", 1)
    assert cache.fallback_reason is not None and "fallback" in caplog.text
    with _pool("spawn", {**os.environ, **credentials_env(seaweed)}, workers=1) as pool_map:
        [(label, source)] = pool_map(travellers.store_label, [cache])
    assert label == "S3" and "from environment" in source
    assert Cache(s3_url, endpoint_url=seaweed.endpoint, fallback=False, **_keys(seaweed)).exists("probe.pkl")


def _keys(seaweed: SeaweedServer) -> dict[str, str]:
    env = credentials_env(seaweed)
    return {"access_key_id": env["AWS_ACCESS_KEY_ID"], "secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}


# -- secrets stay behind -----------------------------------------------------------------------------


SECRETS = {
    "access_key_id": "AKIAQWERTYUIOPASDFGH",
    "secret_access_key": "wJalrXUtnFEMIxK7MDENGxbPxRfiCYzEXAMPLEKEY",
    "session_token": "FwoGZXIvYXdzEJr//////////wEaDMxNjU0NTY3ODkwIiBBYWZmZQ",
    "signing_keys": "signing-key-number-one-0123456789,signing-key-number-two-9876543210",
}


def _secret_texts() -> list[str]:
    return [text for value in SECRETS.values() for text in value.split(",")]


def _leaks(blob: bytes) -> list[str]:
    """The secrets (or any 8 characters of one, in the encodings pickle writes text in) in ``blob``."""
    found = []
    for text in _secret_texts():
        for start in range(len(text) - 7):
            piece = text[start:start + 8]
            if any(piece.encode(encoding) in blob for encoding in ("utf-8", "utf-16-le", "raw_unicode_escape")):
                found.append(piece)
    return found


@pytest.mark.parametrize("name, dumps", PICKLERS, ids=[name for name, _ in PICKLERS])
def test_no_secret_is_pickled_unless_asked(name: str, dumps: Callable[[Any], bytes], tmp_path: Path) -> None:
    cache = Cache("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:9", **SECRETS)
    sent = [cache, cache.settings, cache.get]
    if name == "cloudpickle":  # by value (plain pickle sends a function by its name)
        sent.append(cache.memoize(travellers.area.__wrapped__, name="area"))
    for value in sent:
        blob = dumps(value)
        assert _leaks(blob) == [], (type(value), _leaks(blob))
        assert b"****" not in blob  # nor their masked forms: nothing of a secret travels
    arrived = pickle.loads(dumps(cache.settings))
    assert arrived.withheld == ("credentials", "signing keys")
    assert not (arrived.access_key_id or arrived.secret_access_key or arrived.session_token or arrived.signing_keys)
    with pytest.raises(TypeError, match="not pickled"):
        dumps(cache.settings.secret_access_key)

    opted = Cache("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:9", send_secrets=True, **SECRETS)
    arrived = pickle.loads(dumps(opted.settings))
    assert _leaks(dumps(opted)) != [] and arrived.withheld == ()
    assert arrived == opted.settings and arrived.completed().signing_keys == opted.settings.signing_keys


def test_send_secrets_is_an_argument_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the environment nor a .env file can make secrets travel."""
    (tmp_path / "work" / ".env").write_text("JANGDOK_SEND_SECRETS=1\n")
    monkeypatch.setenv("JANGDOK_SEND_SECRETS", "1")
    assert Settings.resolve().send_secrets is False
    assert Settings.resolve(send_secrets=True).send_secrets is True
    with pytest.raises(ConfigError, match="send_secrets must be True or False"):
        Settings(send_secrets="yes")  # type: ignore[arg-type]


def test_a_worker_without_credentials_is_told_so(seaweed: SeaweedServer, s3_url: str) -> None:
    """A spawned worker with a clean environment gets the credentials-less cache and raises an
    error saying so (not a fallback); one with its own credentials uses them; with
    send_secrets the worker needs none."""
    given = dict(endpoint_url=seaweed.endpoint, region="us-east-1", **_keys(seaweed))
    cache = Cache(s3_url, **given)  # fallback on: the error must not become a fallback
    cache.put("k.pkl", "value")
    clean = dict(os.environ)  # the isolated environment: no AWS_ keys, empty AWS config files
    with _pool("spawn", clean, workers=1) as pool_map:
        with pytest.raises(CredentialsError, match="came from another process .* without its credentials") as raised:
            pool_map(cache.get, ["k.pkl"])
        assert "send_secrets=True" in str(raised.value) and "AWS_ACCESS_KEY_ID" in str(raised.value)
        assert pool_map(Cache(s3_url, send_secrets=True, **given).get, ["k.pkl"]) == ["value"]
    with _pool("spawn", {**clean, **credentials_env(seaweed)}, workers=1) as pool_map:
        assert pool_map(cache.get, ["k.pkl"]) == ["value"]


def test_credentials_from_the_aws_files_stay_behind_and_are_missed(seaweed: SeaweedServer, s3_url: str,
                                                                    isolated_env: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender whose S3 cache opened with credentials boto3 found itself (the AWS files, a
    role: never in the settings, never sent, even with send_secrets) sends a cache that a
    worker without credentials refuses to use, rather than falling back to a folder of its own."""
    files = isolated_env.parent / "aws-home"
    keys = credentials_env(seaweed)
    (files / "credentials").write_text(f"[default]\naws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}\n"
                                       f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}\n")
    blobs = []
    for send_secrets in (False, True):
        cache = Cache(s3_url, endpoint_url=seaweed.endpoint, region="us-east-1", send_secrets=send_secrets)
        cache.put("k.pkl", 1)
        assert cache.store_label == "S3"
        blobs.append(pickle.dumps(cache))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files / "elsewhere"))
    for blob in blobs:
        with pytest.raises(CredentialsError, match="without its credentials"):
            pickle.loads(blob).get("k.pkl")


def test_a_worker_without_the_signing_keys_is_told_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed = Cache(tmp_path / "signed", signing_keys="k" * 32)
    signed.put("k.pkl", 1)
    arrived = pickle.loads(pickle.dumps(signed))
    with pytest.raises(CredentialsError, match="without its signing keys.*JANGDOK_SIGNING_KEY"):
        arrived.get("k.pkl")
    monkeypatch.setenv("JANGDOK_SIGNING_KEY", "x" * 32)  # not the sender's: its entries would be refused there
    with pytest.raises(CredentialsError, match="not the ones the process that sent it holds.*JANGDOK_SIGNING_KEY"):
        pickle.loads(pickle.dumps(signed)).get("k.pkl")
    monkeypatch.setenv("JANGDOK_SIGNING_KEY", "k" * 32)
    assert arrived.get("k.pkl") == 1 and arrived.settings.sources["signing_keys"] == "environment"
    forwarded = pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(signed))))  # on to a third process
    monkeypatch.setenv("JANGDOK_SIGNING_KEY", "x" * 32)
    with pytest.raises(CredentialsError, match="not the ones"):
        forwarded.get("k.pkl")


def test_errors_in_a_worker_say_which_process_a_setting_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting the sender read from its environment is not this process's: an error about it
    in a worker says where it came from, not "the environment" (which here holds no such thing)."""
    monkeypatch.setenv("AWS_PROFILE", "sender-only")
    blob = pickle.dumps(Cache("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:9"))
    monkeypatch.delenv("AWS_PROFILE")
    with pytest.raises(CredentialsError, match=r"'sender-only' \(from environment in the process that sent this cache"):
        pickle.loads(blob).get("k.pkl")


def test_an_endpoint_from_a_dotenv_with_its_keys_stays_with_them(monkeypatch: pytest.MonkeyPatch,
                                                                  isolated_env: Path) -> None:
    """A current-folder .env may name an endpoint only for its own keys; the keys stay behind,
    so the receiver uses the endpoint only if it finds its keys in that same file."""
    (isolated_env / ".env").write_text("AWS_ENDPOINT_URL=http://127.0.0.1:9\nAWS_ACCESS_KEY_ID=AKIAFROMDOTENV0000\n"
                                       "AWS_SECRET_ACCESS_KEY=fromdotenvfromdotenvfromdotenv\n")
    blob = pickle.dumps(Settings.resolve(cache_dir="s3://bucket/prefix/"))
    completed = pickle.loads(blob).completed()
    assert completed.access_key_id is not None and completed.access_key_id.reveal() == "AKIAFROMDOTENV0000"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMYOWNKEY00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "myownsecretmyownsecretmyownsecret")
    with pytest.raises(ConfigError, match="not used with this process's credentials"):
        pickle.loads(blob).completed()


def test_the_receivers_endpoint_variables_do_not_redirect_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache sent for AWS (no endpoint) stays on AWS in a worker whose environment names
    another server: boto3 would read AWS_ENDPOINT_URL itself, sending the sender's keys
    (send_secrets) or the worker's to a server the sender never chose, another cache."""
    from jangdok.stores.s3.client import make_client

    blob = pickle.dumps(Cache("s3://bucket/prefix/", region="us-east-1", send_secrets=True,
                              access_key_id=SECRETS["access_key_id"], secret_access_key=SECRETS["secret_access_key"]))
    sender_endpoint = make_client(pickle.loads(blob).settings)[0].meta.endpoint_url
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
        arrived = pickle.loads(blob)
        assert arrived.settings.endpoint_url is None
        assert make_client(arrived.settings)[0].meta.endpoint_url == sender_endpoint, variable
        monkeypatch.delenv(variable)


# -- pools: keys equal to the parent's, each computed once ----------------------------------------


@pytest.mark.parametrize("kind", POOLS)
def test_pool_workers_compute_each_key_once(kind: str, backend: str, cache_url: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    """A memoized function sent by reference and a cache sent by value: the workers' keys are
    the parent's, each key is computed once by all of them (every call is made twice,
    at once), the values are right, and the workers' stats add up in the parent. (Each task
    unpickles its own cache, which counts that task's stats and shares its worker's store.)"""
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "CACHE_DIR": cache_url, "TRAVEL_MARKERS": str(markers)}
    if backend == "s3":
        env.update(_s3_env(request.getfixturevalue("seaweed")))
    cache = Cache(cache_url, **(_keys(request.getfixturevalue("seaweed")) if backend == "s3" else {}),
                  endpoint_url=env.get("AWS_ENDPOINT_URL"), fallback=False)
    points = [travellers.Point(index, index + 1) for index in range(3)] * 2
    keys = [f"filled/{index}.pkl" for index in range(3)] * 2
    with _pool(kind, env) as pool_map:
        worker_keys = pool_map(travellers.key_of, points)
        values = pool_map(travellers.area, points)
        filled = pool_map(functools.partial(travellers.fill, cache), keys)

    assert worker_keys == [travellers.area.key(point) for point in points]
    assert values == [point.x * point.y for point in points]
    assert [value for value, _ in filled] == keys
    computed = sorted(name.rsplit("-", 1)[0] for name in os.listdir(markers))
    assert computed == sorted({f"area-{p.x}-{p.y}" for p in points} | {key.replace("/", "-") for key in keys})
    total = sum(stats for _, stats in filled)
    assert isinstance(total, Stats) and total[cache.store_label].computed == 3
    assert all(cache.get(travellers.area.key(point)) == point.x * point.y for point in points)


def test_a_workers_stats_of_one_task_add_up(tmp_path: Path) -> None:
    """A worker's module-level cache counts all the tasks the worker ran; the difference of its
    stats around one task is that task's, and those add up to the pool's total."""
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "CACHE_DIR": str(tmp_path / "cache"), "TRAVEL_MARKERS": str(markers)}
    points = [travellers.Point(index, 2) for index in range(3)]
    chunks = [points[:2], points[:2], points, points[2:]]  # one worker runs them all
    with _pool("spawn", env, workers=1) as pool_map:
        done = pool_map(travellers.areas, chunks)
    total = sum(stats for _, stats in done)
    assert [values for values, _ in done] == [[point.x * 2 for point in chunk] for chunk in chunks]
    assert total["local"].computed == 3 == len(os.listdir(markers)) and total["local"].hits == 2 + 2 + 1
    assert total["local"].puts == 3 and (done[1][1] - done[1][1])["local"] == TierStats()


# -- the main script: one key however it is started, and in its workers ---------------------------

DEFINITIONS = '''
import dataclasses, enum, os, uuid
from typing import NamedTuple

from jangdok import Cache

cache = Cache()  # CACHE_DIR from the environment


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


class Pair(NamedTuple):
    a: int
    b: int


@cache.memoize
def area(point: Point, colour: Colour, pair: Pair) -> int:
    with open(os.path.join(os.environ["TRAVEL_MARKERS"], uuid.uuid4().hex), "x"):
        pass
    return point.x * point.y + pair.a * colour.value


CALLS = [(Point(i, i + 1), Colour.RED if i % 2 else Colour.BLUE, Pair(i, -i)) for i in range(4)]
EXTRA = (Point(9, 9), Colour.RED, Pair(9, 9))  # computed only by the foreign worker
'''

MAIN = '''
import json, multiprocessing, subprocess, sys
from concurrent.futures import ProcessPoolExecutor

# A Dask-like worker: another program is its __main__, and the function arrives by value.
FOREIGN = """
import cloudpickle, json, sys
area, calls = cloudpickle.loads(sys.stdin.buffer.read())
print(json.dumps({"keys": [area.key(*call) for call in calls], "values": [area(*call) for call in calls]}))
"""


def key_of(call):
    return area.key(*call)


def value_of(call):
    return area(*call)


def main(methods):
    report = {"parent": [key_of(call) for call in CALLS]}
    for method in methods:
        if method == "foreign":
            import cloudpickle

            calls = [*CALLS, EXTRA]
            done = subprocess.run([sys.executable, "-c", FOREIGN], input=cloudpickle.dumps((area, calls)),
                                  capture_output=True)
            if done.returncode:
                sys.exit(done.stderr.decode())
            report[method] = {**json.loads(done.stdout), "parent_value": value_of(EXTRA)}
            continue
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
            report[method] = {"keys": list(pool.map(key_of, CALLS)), "values": list(pool.map(value_of, CALLS * 2))}
    print(json.dumps(report))


if __name__ == "__main__":
    main(filter(None, sys.argv[1].split(",")))
'''

RUN_PATH = "import runpy, sys; runpy.run_path('script.py', run_name='__main__')"
RUN_MODULE = "import runpy; runpy.run_module('travelpkg.script', run_name='__main__', alter_sys=True)"
RUN_PATH_DEFAULT = ("import json, runpy; found = runpy.run_path('script.py'); "
                    "print(json.dumps({'parent': [found['key_of'](call) for call in found['CALLS']]}))")
LAUNCHES = {
    "script": (["script.py", "fork,forkserver,spawn,foreign"], True),
    "python -m": (["-m", "travelpkg.script", "spawn,foreign"], True),
    "runpy.run_path": (["-c", RUN_PATH, "spawn"], True),
    "runpy.run_module": (["-c", RUN_MODULE, "forkserver"], True),
    "runpy.run_path, its default name": (["-c", RUN_PATH_DEFAULT], False),
    # A notebook's __main__ has no file: spawn cannot import it again, fork and Dask can run it.
    "no file (a notebook)": (["-c", DEFINITIONS + MAIN, "fork,foreign"], True),
}


def _expected_keys() -> list[str]:
    """The keys of the script's calls as made in a __main__ of this process (its functions and
    types named __main__.*, as they always were): what every launch must give."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(DEFINITIONS, "<definitions>", "exec"), namespace)
    return [namespace["area"].key(*call) for call in namespace["CALLS"]]


@pytest.mark.parametrize("launch", LAUNCHES)
def test_main_script_keys_are_one_however_it_starts(launch: str, tmp_path: Path) -> None:
    arguments, runs = LAUNCHES[launch]
    package = tmp_path / "travelpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for script in (tmp_path / "script.py", package / "script.py"):
        script.write_text(DEFINITIONS + MAIN)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "CACHE_DIR": str(tmp_path / "cache"), "TRAVEL_MARKERS": str(markers),
           "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, *arguments], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().splitlines()[-1])

    expected = _expected_keys()
    assert report.pop("parent") == expected and expected[0].startswith("__main__.area/")
    methods = [method for method in report if method != "foreign"]
    assert bool(report) == runs
    for method, seen in report.items():
        assert seen["keys"][:len(expected)] == expected, method
    for method in methods:
        assert report[method]["values"] == [i * (i + 1) + i * (1 if i % 2 else 2) for i in range(4)] * 2, method
    foreign = report.get("foreign")
    if foreign is not None:
        assert foreign["values"][-1] == foreign["parent_value"] == 81 + 9
    assert len(os.listdir(markers)) == (len(expected) if runs else 0) + (foreign is not None)


# -- the key rule, for any name a main script runs under ------------------------------------------

MAIN_NAMES = ["__main__", "__mp_main__", "<run_path>"]


@hypothesis_settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers() | st.text(max_size=8), min_size=1, max_size=4),
       alias=st.sampled_from(MAIN_NAMES[1:]))
def test_types_of_the_main_script_key_alike_under_every_name(values: list[Any], alias: str) -> None:
    """A dataclass, enum or namedtuple of the main script hashes alike under each name the
    script runs under, and unlike the same class of an importable module."""
    fields = [f"f{index}" for index in range(len(values))]

    def made(module: str) -> list[Any]:
        import collections
        import dataclasses
        import enum

        members = {f"M{index}": value for index, value in enumerate(dict.fromkeys(map(repr, values)))}
        kinds = [dataclasses.make_dataclass("Row", fields, frozen=True), enum.Enum("Colour", members),
                 collections.namedtuple("Pair", fields)]
        for kind in kinds:
            kind.__module__ = module
        row, colour, pair = kinds
        return [row(*values), next(iter(colour)), pair(*values)]

    for main, renamed in zip(made("__main__"), made(alias), strict=True):
        assert stable_hash(main) == stable_hash(renamed)
    for main, other in zip(made("__main__"), made("mymodule"), strict=True):
        assert stable_hash(main) != stable_hash(other)


def test_functions_of_the_main_script_key_alike_under_every_name(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    keys = set()
    for module in MAIN_NAMES:
        def square(x: int) -> int:
            return x * x

        square.__module__ = module
        keys.add(cache.memoize(square).key(3))
    assert len(keys) == 1 and keys.pop().startswith("__main__.")


# -- memoized functions by reference and by value ------------------------------------------------


def test_a_memoized_function_pickles_by_reference(tmp_path: Path) -> None:
    blob = pickle.dumps(travellers.area)
    assert pickle.loads(blob) is travellers.area and len(blob) < 100


def test_a_memoized_function_by_value_carries_its_cache_options_and_keys(tmp_path: Path) -> None:
    """cloudpickle sends a function that cannot be imported by value: with its cache (as
    settings), options and the identity made at decoration, not made again where it lands."""
    cache = Cache(tmp_path / "c")

    def local(x: int, verbose: bool = False) -> int:
        return x + 1

    memoized = cache.memoize(local, version="3", ignore="verbose", ttl=60)
    arrived = cloudpickle.loads(cloudpickle.dumps(memoized))
    assert arrived is not memoized and arrived.key(1) == memoized.key(1) == memoized.key(1, verbose=True)
    assert arrived(1) == 2 and memoized.cache.get_entry(memoized.key(1)).info.metadata["version"] == "3"
    assert arrived.cache is not cache and arrived.cache.settings == cache.settings
    assert memoized.cache.stat(memoized.key(1)).expires_at is not None


# -- stats come back and add up -------------------------------------------------------------------


def _tier(**counts: Any) -> TierStats:
    return TierStats(**counts)


@hypothesis_settings(max_examples=50, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["S3", "local", "local tier"]),
                                st.tuples(st.integers(0, 1000), st.integers(0, 10**9)), max_size=3),
                max_size=5))
def test_stats_add_up(gathered: list[dict[str, tuple[int, int]]]) -> None:
    stats = [Stats({label: _tier(hits=hits, bytes_read=size) for label, (hits, size) in tiers.items()})
             for tiers in gathered]
    stats = [pickle.loads(pickle.dumps(one)) for one in stats]  # as they come back from workers
    total = sum(stats, Stats())
    assert isinstance(total, Stats) and (not stats or sum(stats) == total)
    for label in {label for tiers in gathered for label in tiers}:
        assert total[label].hits == sum(tiers[label][0] for tiers in gathered if label in tiers)
        assert total[label].bytes_read == sum(tiers[label][1] for tiers in gathered if label in tiers)
    if len(stats) >= 2:
        assert stats[0] + stats[1] == stats[1] + stats[0]
        before = copy.deepcopy(stats[:2])
        assert stats[0] + stats[1] + {} == {} + stats[0] + stats[1]
        assert stats[:2] == before  # adding changes neither side
