"""The user's workflow end to end: ``python main.py`` cold then warm on a local folder and on
SeaweedFS, invalidation, corruption, the seed's plain pickles, and ``python test_s3_cache.py``
for each credential case."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BUCKET
from seaweed import READ_ONLY, READ_WRITE, SeaweedServer, credentials_env, free_ports

import config
import main as chapter_main
from chapter_generator import (
    cache_file_name,
    generate_sample_dataset,
    label_rng,
    load_labels,
    params_fingerprint,
    process_label,
)
from jangdok import Cache

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "인사"
LABELS = ["안녕하세요", "감사합니다", "미안합니다", "사랑합니다"]


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(folder)
    return folder


def run_script(script: str, *args: str, env: dict[str, str] | None = None, check: bool = True,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or Path.cwd(),
                            env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_main(sample_data: Path, output: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    return run_script("main.py", "--chapter", CHAPTER, "--data-dir", str(sample_data),
                      "--output-dir", str(output), *extra, env=env).stdout


def lines(output: str, marker: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(marker)]


def test_cold_then_warm_on_a_local_folder(sample_data: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cold = run_main(sample_data, tmp_path / "out", "--cache-dir", str(cache_dir))
    assert len(lines(cold, "💾")) == len(LABELS) and not lines(cold, "📂")
    assert all("(로컬)" in line for line in lines(cold, "💾"))
    names = sorted(os.listdir(cache_dir))
    assert names == sorted(f"{label}_seq30_aug9_maxNone_min10.pkl" for label in LABELS)

    warm = run_main(sample_data, tmp_path / "out", "--cache-dir", str(cache_dir))
    loaded = lines(warm, "📂")
    assert len(loaded) == len(LABELS) and not lines(warm, "💾"), warm
    assert loaded[0] == (f"📂 {LABELS[0]} 라벨 데이터 캐시 로드 (로컬): "
                         f"{cache_dir / f'{LABELS[0]}_seq30_aug9_maxNone_min10.pkl'} (100개 샘플)")
    assert f"cache (local): {len(LABELS)} hits, 0 misses" in warm

    result = json.loads((tmp_path / "out" / CHAPTER / "chapter_result.json").read_text(encoding="utf-8"))
    assert result["classes"] == [*LABELS, "None"] and result["test_accuracy"] > 0.5
    assert (tmp_path / "out" / CHAPTER / "model.npz").is_file()
    assert json.loads((tmp_path / "out" / CHAPTER / "model-info.json").read_text())["class_names"][-1] == "None"


def test_cold_then_warm_on_s3(seaweed: SeaweedServer, s3_url: str, s3_prefix: str, sample_data: Path,
                              tmp_path: Path) -> None:
    env = {**credentials_env(seaweed), "CACHE_DIR": s3_url}
    cold = run_main(sample_data, tmp_path / "out", env=env)
    saved = lines(cold, "💾")
    assert len(saved) == len(LABELS) and all("(S3): s3://" in line for line in saved), cold

    warm = run_main(sample_data, tmp_path / "out", env=env)
    loaded = lines(warm, "📂")
    assert len(loaded) == len(LABELS) and not lines(warm, "💾"), warm
    assert loaded[0].startswith(f"📂 {LABELS[0]} 라벨 데이터 캐시 로드 (S3): {s3_url}{LABELS[0]}_seq30")
    # What `aws s3 ls` shows: the .pkl keys under the prefix, exactly as named.
    listing = seaweed.client().list_objects_v2(Bucket=BUCKET, Prefix=s3_prefix)["Contents"]
    assert sorted(item["Key"] for item in listing) == sorted(
        f"{s3_prefix}{label}_seq30_aug9_maxNone_min10.pkl" for label in LABELS)


@pytest.fixture
def workflow_cache(cache_url: str, backend: str, request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Cache]:
    """The cache main.py will use on the parametrised backend, configured as a user would
    (environment variables), for reading and damaging its entries around the program."""
    if backend == "s3":
        for name, value in credentials_env(request.getfixturevalue("seaweed")).items():
            monkeypatch.setenv(name, value)
    with Cache(cache_url, fallback=False) as cache:
        yield cache


def run_in_process(sample_data: Path, tmp_path: Path, cache: Cache, capsys: pytest.CaptureFixture[str]) -> str:
    assert chapter_main.main(["--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir",
                              str(tmp_path / "out"), "--cache-dir", cache.location.url]) == 0
    return capsys.readouterr().out


def test_changed_parameters_invalidate_the_entry(sample_data: Path, tmp_path: Path, workflow_cache: Cache,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    # Noise is not in the file name, so the same entry is found and its parameters differ.
    monkeypatch.setattr(config, "AUGMENTATION_NOISE_LEVEL", config.AUGMENTATION_NOISE_LEVEL * 2)
    output = run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    assert lines(output, "⚠️") == [f"⚠️ {label} 캐시 파라미터가 다릅니다. 캐시 무효화." for label in LABELS]
    assert len(lines(output, "💾")) == len(LABELS)
    again = run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    assert len(lines(again, "📂")) == len(LABELS)


def test_changed_videos_invalidate_the_entry(tmp_path: Path, workflow_cache: Cache,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    generate_sample_dataset(data)
    run_in_process(data, tmp_path, workflow_cache, capsys)
    video = load_labels(data)[LABELS[1]][0]
    video.write_bytes(video.read_bytes())  # rewritten with the same content: still valid
    assert len(lines(run_in_process(data, tmp_path, workflow_cache, capsys), "📂")) == len(LABELS)
    with open(video, "ab") as handle:  # different size: the source changed
        handle.write(b"\0")
    output = run_in_process(data, tmp_path, workflow_cache, capsys)
    assert lines(output, "⚠️") == [f"⚠️ {LABELS[1]} 캐시 파라미터가 다릅니다. 캐시 무효화."]


def test_corrupt_entry_is_deleted_and_recomputed(sample_data: Path, tmp_path: Path, workflow_cache: Cache,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    key = f"{LABELS[2]}_seq30_aug9_maxNone_min10.pkl"
    with workflow_cache.store.read(key) as reader:
        data = bytearray(reader.read())
    data[len(data) // 2] ^= 0xFF
    workflow_cache.store.write(key, bytes(data))
    output = run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    assert lines(output, "🗑️") == [f"🗑️ 손상된 캐시 파일 삭제: {workflow_cache.store.path(key)}"]
    assert [line.split()[1] for line in lines(output, "💾")] == [LABELS[2]]
    assert len(lines(output, "📂")) == len(LABELS) - 1


def test_plain_pickles_with_matching_parameters_load(sample_data: Path, tmp_path: Path, workflow_cache: Cache,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    params = chapter_main.params_from_config()
    label = LABELS[0]
    sequences = process_label(load_labels(sample_data)[label], params, label_rng(label, params))
    key = cache_file_name(label, params)
    legacy = {"data": sequences, "params": params_fingerprint(params)}
    workflow_cache.store.write(key, pickle.dumps(legacy, pickle.HIGHEST_PROTOCOL))
    output = run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    where = "S3" if workflow_cache.location.is_s3 else "로컬"
    assert lines(output, "📂") == [f"📂 {label} 라벨 데이터 캐시 로드 ({where}): "
                                    f"{workflow_cache.store.path(key)} (100개 샘플)"]


def test_no_cache_flag_reads_and_writes_nothing(sample_data: Path, tmp_path: Path) -> None:
    output = run_main(sample_data, tmp_path / "out", "--no-cache", "--cache-dir", str(tmp_path / "cache"))
    assert not lines(output, "💾") and not lines(output, "📂")
    assert not (tmp_path / "cache").exists()


def test_default_run_generates_the_sample_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "sample")
    assert chapter_main.main(["--chapter", CHAPTER, "--output-dir", str(tmp_path / "out"),
                              "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    output = capsys.readouterr().out
    assert (tmp_path / "sample" / "labels.csv").is_file()
    assert not lines(output, "💾") and "=== 요약" in output, "-q hides progress lines, not the summary"


def test_without_credentials_the_run_falls_back_or_fails_cleanly(sample_data: Path, tmp_path: Path,
                                                                 s3_url: str) -> None:
    env = {"CACHE_DIR": s3_url, "JANGDOK_FALLBACK_DIR": str(tmp_path / "fallback")}
    output = run_main(sample_data, tmp_path / "out", env=env)
    assert "⚠️ S3 cache s3://" in output and "Unable to locate credentials" in output
    saved = lines(output, "💾")
    assert len(saved) == len(LABELS) and all("(로컬 대체)" in line for line in saved)
    result = run_script("main.py", "--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir",
                        str(tmp_path / "out"), env={**env, "JANGDOK_FALLBACK": "0"}, check=False)
    assert result.returncode == 1
    assert "❌ S3 client initialization failed: Unable to locate credentials" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_setting_is_reported_without_a_traceback(sample_data: Path, tmp_path: Path) -> None:
    env = {"JANGDOK_READ_TIMEOUT": "soon"}
    assert "usage:" in run_script("main.py", "--help", env=env).stdout
    result = run_script("main.py", "--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir",
                        str(tmp_path / "out"), env=env, check=False)
    assert result.returncode == 1
    assert "❌ setting read_timeout (JANGDOK_READ_TIMEOUT) = 'soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_rejected_secret_is_said_once_and_the_run_fails(seaweed: SeaweedServer, s3_url: str, sample_data: Path,
                                                          tmp_path: Path) -> None:
    env = {**credentials_env(seaweed, (READ_WRITE[0], "wrong-secret-0000000000")), "CACHE_DIR": s3_url}
    result = run_script("main.py", "--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir",
                        str(tmp_path / "out"), env=env, check=False)
    assert result.returncode == 1
    assert result.stderr.count("Access Denied (SignatureDoesNotMatch)") == 1, result.stderr
    assert "⚠️" not in result.stdout and not lines(result.stdout, "💾"), "nothing computed against a bad secret"
    assert "wrong-secret" not in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("script", ["main.py", "test_s3_cache.py"])
def test_an_endpoint_without_a_scheme_is_named_with_its_fix(script: str, s3_url: str, sample_data: Path,
                                                            tmp_path: Path) -> None:
    env = {"CACHE_DIR": s3_url, "AWS_ENDPOINT_URL": "127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY00001",
           "AWS_SECRET_ACCESS_KEY": "example-secret-key"}
    args = ["--chapter", CHAPTER, "--data-dir", str(sample_data), "--output-dir", str(tmp_path / "out")]
    result = run_script(script, *(args if script == "main.py" else []), env=env, check=False)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "AWS_ENDPOINT_URL" in output and "http://127.0.0.1:8333" in output
    assert "Traceback" not in output and len(output.splitlines()) < 15


# -- test_s3_cache.py: the credential and permission self-test -------------------------------


def self_test(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_script("test_s3_cache.py", env=env, check=False)


def test_self_test_passes_with_good_credentials(seaweed: SeaweedServer, s3_url: str) -> None:
    result = self_test({**credentials_env(seaweed), "CACHE_DIR": s3_url})
    assert result.returncode == 0, result.stdout
    for step in ("list (s3:ListBucket)", "put (s3:PutObject)", "head (s3:GetObject)", "get (s3:GetObject)",
                 "delete (s3:DeleteObject)"):
        assert f"✅ {step}" in result.stdout
    assert f"access key ****{READ_WRITE[0][-4:]} from environment" in result.stdout
    assert f"signing as access key ****{READ_WRITE[0][-4:]}" in result.stdout
    assert READ_WRITE[0] not in result.stdout and READ_WRITE[1] not in result.stdout
    assert "❌" not in result.stdout


def test_self_test_checks_only_the_local_cache_without_s3() -> None:
    result = self_test({})
    assert result.returncode == 0
    assert "S3 is not configured" in result.stdout and "✅ local cache read" in result.stdout


def test_self_test_without_credentials(s3_url: str) -> None:
    result = self_test({"CACHE_DIR": s3_url, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert "S3 client initialization failed: Unable to locate credentials" in result.stdout


def test_self_test_with_a_wrong_secret(seaweed: SeaweedServer, s3_url: str) -> None:
    env = {**credentials_env(seaweed, (READ_WRITE[0], "wrong-secret-0000000000")), "CACHE_DIR": s3_url}
    result = self_test(env)
    assert result.returncode == 1
    assert re.search(r"S3 error opening s3://\S+: Access Denied \(SignatureDoesNotMatch\)", result.stdout)
    assert "wrong-secret" not in result.stdout


def test_self_test_with_a_read_only_identity(seaweed: SeaweedServer, s3_url: str) -> None:
    result = self_test({**credentials_env(seaweed, READ_ONLY), "CACHE_DIR": s3_url})
    assert result.returncode == 1
    assert "✅ list (s3:ListBucket)" in result.stdout
    assert re.search(r"S3 error saving s3://\S+\.probe: Access Denied", result.stdout)
    assert "s3:PutObject" in result.stdout


def test_self_test_with_an_unreachable_endpoint(s3_url: str) -> None:
    (port,) = free_ports(1)
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY00001", "AWS_SECRET_ACCESS_KEY": "example-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "CACHE_DIR": s3_url, "JANGDOK_MAX_ATTEMPTS": "2"}
    result = self_test(env)
    assert result.returncode == 1
    assert re.search(r"S3 error opening s3://\S+: Connection timeout", result.stdout)


def test_self_test_names_credentials_from_the_shared_credentials_file(seaweed: SeaweedServer, s3_url: str) -> None:
    Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[default]\naws_access_key_id = {READ_WRITE[0]}\naws_secret_access_key = {READ_WRITE[1]}\n")
    result = self_test({"CACHE_DIR": s3_url, "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_DEFAULT_REGION": "us-east-1"})
    assert result.returncode == 0, result.stdout
    assert "boto3's default chain" in result.stdout
    assert f"signing as access key ****{READ_WRITE[0][-4:]}" in result.stdout


def test_the_original_programs_label_caches_are_reused_when_their_parameters_match(
        sample_data: Path, tmp_path: Path, workflow_cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    params = chapter_main.params_from_config()
    matching, different, bare = LABELS[0], LABELS[1], LABELS[2]
    for label in (matching, different, bare):
        sequences = process_label(load_labels(sample_data)[label], params, label_rng(label, params))
        original = chapter_main.original_parameters(params)
        if label == different:
            original["AUGMENTATION_NOISE_LEVEL"] = 0.5
        layout = sequences if label == bare else {"data": sequences, "parameters": original}
        workflow_cache.store.write(cache_file_name(label, params), pickle.dumps(layout, pickle.HIGHEST_PROTOCOL))
    output = run_in_process(sample_data, tmp_path, workflow_cache, capsys)
    loaded = " ".join(lines(output, "📂"))
    saved = " ".join(lines(output, "💾"))
    assert matching in loaded and matching not in saved
    assert different in saved and f"⚠️ {different} 캐시 파라미터가 다릅니다" in output
    assert f"⚠️ {bare} 캐시는 파라미터 기록이 없는 옛 형식입니다" in output and bare not in saved


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_three_concurrent_runs_save_each_label_once_in_total(backend: str, request: pytest.FixtureRequest,
                                                             sample_data: Path, tmp_path: Path) -> None:
    """Three machines start the pipeline together on one CACHE_DIR (on S3 each with its own
    local tier): each label is computed and saved by exactly one of them."""
    runs = []
    for machine in range(3):
        if backend == "s3":  # S3 or nothing: a fallback folder would pass for it
            env = {**credentials_env(request.getfixturevalue("seaweed")),
                   "CACHE_DIR": request.getfixturevalue("s3_url"),
                   "CACHE_LOCAL_DIR": str(tmp_path / f"machine{machine}"), "JANGDOK_FALLBACK": "0"}
        else:
            env = {"CACHE_DIR": str(tmp_path / "cache")}
        runs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--chapter", CHAPTER, "--data-dir", str(sample_data),
             "--output-dir", str(tmp_path / f"out{machine}")],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"{out}\n{err}"
        outputs.append(out)
    saved = [line.split()[1] for out in outputs for line in lines(out, "💾")]
    assert sorted(saved) == sorted(LABELS), outputs  # each label once, in total
    where = "(S3): s3://" if backend == "s3" else "(로컬): "
    assert all(where in line for out in outputs for line in lines(out, "💾")), outputs
    for out in outputs:  # and every run has every label, computed or loaded
        assert len(lines(out, "💾")) + len(lines(out, "📂")) == len(LABELS), out


def test_a_stale_entry_met_by_two_runs_at_once_is_recomputed_once(sample_data: Path, tmp_path: Path) -> None:
    """Both runs find an entry computed with other parameters; one recomputes it, the other
    waits and loads the new entry (no run fails, none computes twice)."""
    import threading

    params = chapter_main.params_from_config()
    label = LABELS[0]
    videos = load_labels(sample_data)[label]
    folder = str(tmp_path / "cache")
    Cache(folder).put(cache_file_name(label, params), [], metadata={"label": label, "params": "older parameters"})
    tallies = [chapter_main.RunTally(), chapter_main.RunTally()]
    results: list[object] = []

    def run(tally: chapter_main.RunTally) -> None:
        try:
            results.append(len(chapter_main.load_or_build(label, videos, params, sample_data, Cache(folder), tally)))
        except Exception as exc:  # noqa: BLE001 - the failure is the finding
            results.append(exc)

    threads = [threading.Thread(target=run, args=(tally,)) for tally in tallies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [100, 100]
    assert sum(tally.seconds_computing > 0 for tally in tallies) == 1
    assert sum(tally.invalidated for tally in tallies) == 1


def test_a_warm_local_tier_serves_every_label_while_s3_is_down(seaweed: SeaweedServer, s3_url: str,
                                                               sample_data: Path, tmp_path: Path) -> None:
    """Every label in CACHE_LOCAL_DIR, and the endpoint down when main.py starts: all of them
    load from the local tier, none is computed (and the fallback folder is not used)."""
    labels = load_labels(sample_data)
    env = {**credentials_env(seaweed), "CACHE_DIR": s3_url, "CACHE_LOCAL_DIR": str(tmp_path / "tier")}
    run_script("main.py", "--data-dir", str(sample_data), "--output-dir", str(tmp_path / "out"), "-q", env=env)
    (down,) = free_ports(1)  # nothing listens there: every connection is refused
    env.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{down}", "JANGDOK_MAX_ATTEMPTS": "1",
                "JANGDOK_CONNECT_TIMEOUT": "1", "JANGDOK_READ_TIMEOUT": "1", "JANGDOK_TOTAL_TIMEOUT": "4"})
    result = run_script("main.py", "--data-dir", str(sample_data), "--output-dir", str(tmp_path / "out"), env=env)
    warm = result.stdout + result.stderr
    loaded = lines(warm, "📂")
    assert len(loaded) == len(labels) == 24 and all("(로컬 사본)" in line for line in loaded), warm
    assert not lines(warm, "💾") and "⚙️ computing label data: 0.00 s" in warm, warm
    assert "is unreachable" in warm and "fallback" not in warm


def test_a_readable_dotenv_is_warned_about_once(sample_data: Path, tmp_path: Path) -> None:
    """config.py and the cache each read the settings: one warning per file and process, shown
    as the program's own line."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    dotenv = work / ".env"
    dotenv.write_text("AWS_ACCESS_KEY_ID=DOTENVKEY0000001\nAWS_SECRET_ACCESS_KEY=dotenv-secret-00000000001\n")
    dotenv.chmod(0o644)
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--chapter", CHAPTER, "--data-dir",
                             str(sample_data), "--output-dir", str(tmp_path / "out"), "--cache-dir",
                             str(tmp_path / "cache")], cwd=work, capture_output=True, text=True, timeout=300,
                            env={name: value for name, value in os.environ.items() if not name.startswith("AWS_")})
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert shown.count("can be read by other users") == 1, shown
    assert f"⚠️ {dotenv} holds AWS_SECRET_ACCESS_KEY" in result.stdout
    assert "dotenv-secret" not in shown
