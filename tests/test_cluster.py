"""``main.py`` on many cores and on a cluster: ``--workers N`` (a process pool under fork, spawn
and forkserver) and ``--scheduler ADDRESS`` (Dask clusters, each in a process of its own:
tests/dask_cluster.py), on a local folder and on SeaweedFS. Each label is saved once, with the
right value, and the main process prints its line wherever it was computed; several clusters
and a plain run on one prefix still compute each label once; Ctrl-C stops a pool cleanly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import BUCKET, open_fifo_writer
from seaweed import SeaweedServer, credentials_env

import engines
import main as chapter_main
from chapter_generator import cache_file_name, generate_sample_dataset, label_rng, load_labels, process_label
from jangdok import Cache

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CHAPTER = "인사"
LABELS = ["안녕하세요", "감사합니다", "미안합니다", "사랑합니다"]
LABEL_LINE = re.compile(r"^(💾|📂) (\S+) 라벨 데이터 캐시 (?:저장|로드) \((.+?)\): ")


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset cut to one chapter of 4 labels of 3 videos each (30 samples a label):
    the pipeline as it is, at a quarter of a label's computing."""
    folder = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(folder)
    videos = load_labels(folder)
    rows = [f"{path.relative_to(folder).as_posix()},{label}" for label in LABELS for path in videos[label][:3]]
    (folder / "labels.csv").write_text("\n".join(["file,label", *rows]) + "\n", encoding="utf-8")
    (folder / "chapters.json").write_text(json.dumps({CHAPTER: LABELS}, ensure_ascii=False), encoding="utf-8")
    return folder


def python_path() -> str:
    """main.py's folder first (a Dask worker imports main), then what this process was given."""
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


class Clusters:
    """Dask clusters of 2 worker processes, started when a test first needs them (side by side),
    shared by the module's tests. Their workers see the SeaweedFS credentials, nothing of the
    developer's setup."""

    def __init__(self, seaweed: SeaweedServer, logs: Path) -> None:
        self.logs = logs
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith(("AWS_", "JANGDOK_", "CACHE_", "DASK_"))}
        self.env.update(credentials_env(seaweed), PYTHONPATH=python_path(), AWS_EC2_METADATA_DISABLED="true",
                        AWS_CONFIG_FILE=str(logs / "none"), AWS_SHARED_CREDENTIALS_FILE=str(logs / "none"))
        self.started: list[subprocess.Popen[str]] = []
        self.addresses: list[str] = []

    def __call__(self, count: int) -> list[str]:
        """The addresses of ``count`` clusters."""
        for number in range(len(self.started), count):
            with open(self.logs / f"cluster{number}.log", "w") as log:
                self.started.append(subprocess.Popen([sys.executable, str(TESTS / "dask_cluster.py"), "2"],
                                                     env=self.env, cwd=self.logs, stdin=subprocess.PIPE,
                                                     stdout=subprocess.PIPE, stderr=log, text=True))
        for number in range(len(self.addresses), count):
            self.addresses.append(self.started[number].stdout.readline().strip())  # type: ignore[union-attr]
            assert self.addresses[-1].startswith("tcp://127.0.0.1:"), (self.logs / f"cluster{number}.log").read_text()
        return self.addresses[:count]

    def stop(self) -> None:
        for process in self.started:
            process.stdin.close()  # type: ignore[union-attr]
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def clusters(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    started = Clusters(seaweed, tmp_path_factory.mktemp("dask"))
    try:
        yield started
    finally:
        started.stop()


def main_py(sample_data: Path, output: Path, *extra: str, env: dict[str, str] | None = None,
            **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--chapter", CHAPTER, "--data-dir",
                             str(sample_data), "--output-dir", str(output), *extra],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)  # type: ignore[call-overload]


def finished(process: subprocess.Popen[str]) -> str:
    stdout, stderr = process.communicate(timeout=150)
    assert process.returncode == 0, f"main.py exited {process.returncode}:\n{stdout}\n{stderr}"
    return stdout


def label_lines(output: str) -> list[tuple[str, str, str]]:
    """Each label's line: (💾 or 📂, label, store)."""
    return [match.groups() for line in output.splitlines() if (match := LABEL_LINE.match(line))]  # type: ignore[misc]


def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """A cache location on the backend and the environment main.py reaches it with."""
    if backend == "local":
        return str(tmp_path / "cache"), {}
    return request.getfixturevalue("s3_url"), credentials_env(request.getfixturevalue("seaweed"))


def assert_values(url: str, env: dict[str, str], sample_data: Path, labels: list[str]) -> None:
    """The entries hold what the pipeline computes for the labels, and nothing else is stored."""
    params = chapter_main.params_from_config()
    settings = {} if not url.startswith("s3://") else {
        "endpoint_url": env["AWS_ENDPOINT_URL"], "access_key_id": env["AWS_ACCESS_KEY_ID"],
        "secret_access_key": env["AWS_SECRET_ACCESS_KEY"], "region": "us-east-1"}
    with Cache(url, fallback=False, **settings) as cache:
        assert sorted(cache.keys()) == sorted(cache_file_name(label, params) for label in LABELS)
        for label in labels:
            expected = process_label(load_labels(sample_data)[label], params, label_rng(label, params))
            stored = cache.get(cache_file_name(label, params))
            assert len(stored) == len(expected) and all(map(np.array_equal, stored, expected))


# -- a process pool ------------------------------------------------------------------------------


def test_workers_compute_each_missing_label_once(backend: str, sample_data: Path, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    url, env = location(backend, tmp_path, request)
    store = "로컬" if backend == "local" else "S3"
    cold = finished(main_py(sample_data, tmp_path / "out", "--cache-dir", url, "--workers", "2", env=env))
    assert "🧮 라벨 4개를 프로세스 2개에서 계산합니다" in cold
    assert sorted(label_lines(cold)) == sorted(("💾", label, store) for label in LABELS), cold
    assert f"🗄️ cache ({'local' if backend == 'local' else 'S3'}): 0 hits, 4 misses" in cold
    assert f"wrote {stored_bytes(url, request) / 1e6:.1f} MB" in cold, "the workers' writes count in the summary"
    assert_values(url, env, sample_data, LABELS[:1])

    if backend == "local":
        warm = finished(main_py(sample_data, tmp_path / "out", "--cache-dir", url, "--workers", "2", env=env))
        assert "🧮" not in warm, "nothing to compute: no pool"
        assert label_lines(warm) == [("📂", label, store) for label in LABELS], warm


@pytest.mark.parametrize(("method", "backend"), [("spawn", "s3"), ("forkserver", "local")])
def test_workers_started_by_spawn_and_forkserver(method: str, backend: str, sample_data: Path, tmp_path: Path,
                                                 request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The workers import main.py anew and receive the cache pickled; they find the credentials
    in their environment, as the main process did."""
    url, env = location(backend, tmp_path, request)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(engines, "START_METHOD", method)
    monkeypatch.setattr(chapter_main, "QUIET", False)
    assert chapter_main.main(["--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir",
                              str(tmp_path / "out"), "--cache-dir", url, "--workers", "2"]) == 0
    output = capsys.readouterr().out
    assert sorted(label_lines(output)) == sorted(("💾", label, "로컬" if backend == "local" else "S3")
                                                 for label in LABELS), output
    assert_values(url, env, sample_data, LABELS[1:2])


@pytest.mark.usefixtures("ctrl_c_handled")
def test_ctrl_c_stops_the_workers_cleanly(backend: str, sample_data: Path, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    """Both workers blocked inside a label (reading a video that is a FIFO), each holding the
    label's lease: Ctrl-C to main.py unwinds them (leases released, nothing half written) and
    ends them, then main.py says one line and exits 130."""
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    fifos = []
    for label in LABELS[:2]:
        video = load_labels(data)[label][0]
        video.unlink()
        os.mkfifo(video)
        fifos.append(video)
    url, env = location(backend, tmp_path, request)
    process = main_py(data, tmp_path / "out", "--cache-dir", url, "--workers", "2", env=env)
    writers = []
    try:
        for fifo in fifos:  # each worker has opened its label's first video and waits for bytes
            writer = open_fifo_writer(fifo, process)
            assert writer is not None, process.communicate()
            writers.append(writer)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        for writer in writers:
            os.close(writer)
    assert process.returncode == 130, stderr
    assert stderr == "⛔ interrupted (중단됨)\n"
    if backend == "local":  # no lock file, no temporary file: nothing but the folder
        assert [path for path in Path(url).rglob("*") if path.is_file()] == []
    else:  # no lease object left behind, no entry
        prefix = url.removeprefix(f"s3://{BUCKET}/")
        assert seaweed_keys(request.getfixturevalue("seaweed"), prefix) == []


def seaweed_listing(server: SeaweedServer, prefix: str) -> list[dict[str, Any]]:
    return server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])


def seaweed_keys(server: SeaweedServer, prefix: str) -> list[str]:
    return sorted(item["Key"].removeprefix(prefix) for item in seaweed_listing(server, prefix))


def stored_bytes(url: str, request: pytest.FixtureRequest) -> int:
    """The size of everything stored at a location, as a listing shows it."""
    if not url.startswith("s3://"):
        return sum(path.stat().st_size for path in Path(url).rglob("*") if path.is_file())
    listing = seaweed_listing(request.getfixturevalue("seaweed"), url.removeprefix(f"s3://{BUCKET}/"))
    return sum(item["Size"] for item in listing)


# -- Dask ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_dask_cluster_extracts_the_labels(backend: str, clusters: Clusters, sample_data: Path, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    """On S3 the cluster is named by --scheduler; on a local folder by Dask's own variable."""
    address = clusters(1)[0]
    url, env = location(backend, tmp_path, request)
    store = "로컬" if backend == "local" else "S3"
    where = ["--scheduler", address] if backend == "s3" else []
    if backend == "local":
        env = {**env, "DASK_SCHEDULER_ADDRESS": address}
    cold = finished(main_py(sample_data, tmp_path / "out", "--cache-dir", url, *where, env=env))
    assert f"🌐 라벨 4개를 Dask 클러스터 {address}에서 계산합니다 (workers 2, threads 2)" in cold
    assert sorted(label_lines(cold)) == sorted(("💾", label, store) for label in LABELS), cold
    assert f"cache ({'local' if backend == 'local' else 'S3'}): 0 hits, 4 misses" in cold
    assert f"wrote {stored_bytes(url, request) / 1e6:.1f} MB" in cold, "the workers' writes count in the summary"
    assert_values(url, env, sample_data, LABELS[2:3])

    if backend == "s3":
        warm = finished(main_py(sample_data, tmp_path / "out", "--cache-dir", url, *where, env=env))
        assert "🌐" not in warm, "nothing to compute: the cluster is not asked"
        assert label_lines(warm) == [("📂", label, store) for label in LABELS], warm


def test_two_clusters_and_a_plain_run_save_each_label_once(clusters: Clusters, seaweed: SeaweedServer,
                                                           s3_url: str, s3_prefix: str, sample_data: Path,
                                                           tmp_path: Path) -> None:
    """Three runs started together on one empty prefix: two on Dask clusters, one on this
    machine's processes. Each label is saved once in all, and every run has it."""
    first, second = clusters(2)
    env = credentials_env(seaweed)
    runs = [main_py(sample_data, tmp_path / f"out{n}", "--cache-dir", s3_url, *where, env=env)
            for n, where in enumerate([["--scheduler", first], ["--scheduler", second], []])]
    outputs = [finished(run) for run in runs]
    saves = Counter(label for output in outputs for kind, label, _ in label_lines(output) if kind == "💾")
    assert saves == Counter(LABELS), outputs
    for output in outputs:
        assert sorted(label for _, label, _ in label_lines(output)) == sorted(LABELS), output
    params = chapter_main.params_from_config()
    assert seaweed_keys(seaweed, s3_prefix) == sorted(cache_file_name(label, params) for label in LABELS)


def test_scheduler_errors_name_the_cause(sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Without Dask, the extra to install; with a scheduler nobody serves, its address."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an interpreter without Dask finds
    argv = ["--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache")]
    assert chapter_main.main([*argv, "--scheduler", "tcp://127.0.0.1:9"]) == 1
    assert "pip install 'jangdok[cluster]'" in capsys.readouterr().err
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")
    assert chapter_main.main(argv) == 1
    assert "DASK_SCHEDULER_ADDRESS needs Dask" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists(), "nothing was done"

    unreachable = main_py(sample_data, tmp_path / "out", "--cache-dir", str(tmp_path / "cache"), "--scheduler",
                          "tcp://127.0.0.1:9", env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    stdout, stderr = unreachable.communicate(timeout=120)
    assert unreachable.returncode == 1, stderr
    assert "❌ cannot reach the Dask scheduler at tcp://127.0.0.1:9" in stderr and "Traceback" not in stderr
