"""The s3_utils drop-in: the original module's names and return conventions, on both backends."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from seaweed import READ_ONLY, SeaweedServer, credentials_env

import s3_utils


@pytest.fixture
def cache_root(cache_url: str, backend: str, request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> str:
    """CACHE_DIR on the parametrised backend, with the environment set up as a user would."""
    if backend == "s3":
        for name, value in credentials_env(request.getfixturevalue("seaweed")).items():
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("JANGDOK_FALLBACK", "0")
    monkeypatch.setattr(s3_utils, "_manager", None)
    return cache_url


def test_round_trip_with_the_original_names(cache_root: str) -> None:
    s3_utils.cache_makedirs(cache_root)
    path = s3_utils.cache_join(cache_root, "label_data.pkl")
    assert s3_utils.is_s3_path(path) == cache_root.startswith("s3://")
    assert s3_utils.cache_load_pickle(path) is None
    assert s3_utils.cache_exists(path) is False
    data = {"X": [np.ones((30, 675), np.float32)] * 3, "params": {"seq": 30}}
    assert s3_utils.cache_save_pickle(path, data) is True
    assert s3_utils.cache_exists(path) is True
    loaded = s3_utils.cache_load_pickle(path)
    assert loaded["params"] == {"seq": 30} and np.array_equal(loaded["X"][2], data["X"][2])
    assert s3_utils.cache_remove(path) is True
    assert s3_utils.cache_remove(path) is False
    assert s3_utils.cache_load_pickle(path) is None


def test_joins_like_the_original() -> None:
    assert s3_utils.cache_join("s3://b12/cache/", "x.pkl") == "s3://b12/cache/x.pkl"
    assert s3_utils.cache_join("s3://b12/cache", "x.pkl") == "s3://b12/cache/x.pkl"
    assert s3_utils.cache_join("cache", "x.pkl") == os.path.join("cache", "x.pkl")


def test_makedirs_is_a_no_op_on_s3_and_creates_local_folders(tmp_path: Path) -> None:
    s3_utils.cache_makedirs("s3://b12/cache/")
    s3_utils.cache_makedirs(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


def test_caches_written_by_the_original_module_load(cache_root: str) -> None:
    from jangdok import Cache

    arrays = [np.arange(20_250, dtype=np.float32).reshape(30, 675)]
    Cache(cache_root).store.write("old.pkl", pickle.dumps({"data": arrays}, pickle.HIGHEST_PROTOCOL))
    loaded = s3_utils.cache_load_pickle(s3_utils.cache_join(cache_root, "old.pkl"))
    assert np.array_equal(loaded["data"][0], arrays[0])


def test_corrupt_entry_is_deleted_and_loads_as_none(cache_root: str) -> None:
    from jangdok import Cache

    path = s3_utils.cache_join(cache_root, "bad.pkl")
    Cache(cache_root).store.write("bad.pkl", b"\x80\x05truncated")
    assert s3_utils.cache_load_pickle(path) is None
    assert s3_utils.cache_exists(path) is False


def test_store_errors_become_false_and_none_never_exceptions(seaweed: SeaweedServer, s3_url: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    for name, value in credentials_env(seaweed, READ_ONLY).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JANGDOK_FALLBACK", "0")
    path = s3_utils.cache_join(s3_url, "label_data.pkl")
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert s3_utils.cache_save_pickle(path, [1, 2, 3]) is False
    assert "Access Denied" in caplog.text and path in caplog.text
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("JANGDOK_MAX_ATTEMPTS", "1")
    monkeypatch.setattr("jangdok.paths._caches", {})
    monkeypatch.setattr("jangdok.paths._settings", None)
    assert s3_utils.cache_load_pickle(path) is None
    assert s3_utils.cache_exists(path) is False
    assert s3_utils.cache_remove(path) is False


def test_cache_manager_is_shared_and_exposes_a_boto3_client(seaweed: SeaweedServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in credentials_env(seaweed).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("S3_BUCKET_NAME", "jangdok-test")
    monkeypatch.setattr(s3_utils, "_manager", None)
    manager = s3_utils.get_cache_manager()
    assert manager is s3_utils.get_cache_manager()
    assert manager.bucket_name == "jangdok-test"
    assert "Buckets" in manager.s3_client.list_buckets()


def test_cache_manager_without_credentials_has_no_client(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(s3_utils, "_manager", None)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert s3_utils.get_cache_manager().s3_client is None
    assert "S3 client initialization failed: Unable to locate credentials" in caplog.text


def test_importing_prints_nothing() -> None:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", "import s3_utils"], cwd=root, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout == "" and result.stderr == ""


def test_unpicklable_values_are_refused_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert s3_utils.cache_save_pickle(str(tmp_path / "lock.pkl"), threading.Lock()) is False
    assert "cache_save_pickle" in caplog.text and not (tmp_path / "lock.pkl").exists()


def test_cache_manager_survives_a_malformed_setting(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("JANGDOK_MAX_ATTEMPTS", "many")
    monkeypatch.setattr(s3_utils, "_manager", None)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        assert s3_utils.get_cache_manager().s3_client is None
    assert "JANGDOK_MAX_ATTEMPTS" in caplog.text


def test_malformed_paths_are_answered_and_logged_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        s3_utils.cache_makedirs(str(blocker / "cache"))
        path = s3_utils.cache_join("s3://", "x.pkl")
        assert s3_utils.cache_load_pickle(path) is None
        assert s3_utils.cache_save_pickle(path, [1]) is False
        assert s3_utils.cache_exists("s3:/bucket/x.pkl") is False
    assert "cache_makedirs" in caplog.text and "cache_join(s3://) failed" in caplog.text
    assert "did you mean 's3://bucket/x.pkl'" in caplog.text
