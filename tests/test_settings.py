"""Configuration order: explicit arguments > environment > .env (project, then current folder)
> AWS shared files; credentials come whole from one source; importing has no side effects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from seaweed import READ_WRITE

from jangdok import Cache, ConfigError, CredentialsError, Settings, mask_secret


def write_env(folder: Path, **values: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def test_explicit_beats_environment_beats_dotenv(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = write_env(isolated_env, CACHE_DIR="from-dotenv", S3_BUCKET_NAME="dotenv-bucket", AWS_REGION="eu-west-1")
    monkeypatch.setenv("CACHE_DIR", "from-env")
    settings = Settings.resolve()
    assert settings.cache_dir == "from-env" and settings.sources["cache_dir"] == "environment"
    assert settings.bucket == "dotenv-bucket" and settings.sources["bucket"] == f".env file {dotenv}"
    assert settings.region == "eu-west-1"
    assert Settings.resolve(cache_dir="explicit").cache_dir == "explicit"
    assert "CACHE_DIR" not in os.environ or os.environ["CACHE_DIR"] == "from-env"
    assert "S3_BUCKET_NAME" not in os.environ, "reading .env must not change the environment"


def test_defaults_without_any_configuration() -> None:
    settings = Settings.resolve()
    assert (settings.cache_dir, settings.fallback, settings.endpoint_url) == ("cache", True, None)
    assert settings.fallback_dir == os.environ["JANGDOK_FALLBACK_DIR"]
    assert "default chain" in settings.credentials_source


def test_credentials_come_whole_from_the_first_source(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated_env, AWS_ACCESS_KEY_ID="DOTENVKEY0000001", AWS_SECRET_ACCESS_KEY="dotenv-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY0000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    settings = Settings.resolve()
    assert (settings.access_key_id, settings.secret_access_key) == ("ENVKEY0000000001", "env-secret")
    assert settings.credentials_source == "access key ****0001 from environment"

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_PROFILE", "team")  # a profile in the environment outranks .env keys
    settings = Settings.resolve()
    assert settings.profile == "team" and settings.access_key_id is None and settings.secret_access_key is None

    monkeypatch.delenv("AWS_PROFILE")
    settings = Settings.resolve()
    assert settings.access_key_id == "DOTENVKEY0000001" and ".env file" in settings.credentials_source


def test_session_token_travels_with_its_keys(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated_env, AWS_SESSION_TOKEN="dotenv-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY0000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert Settings.resolve().session_token is None, "a token from another source is not mixed in"
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    assert Settings.resolve().session_token == "env-token"


def test_s3_specific_endpoint_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1111")
    assert Settings.resolve().endpoint_url == "http://127.0.0.1:1111"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2222")
    assert Settings.resolve().endpoint_url == "http://127.0.0.1:2222"


@pytest.mark.parametrize(("name", "value"), [("JANGDOK_READ_TIMEOUT", "soon"), ("JANGDOK_MAX_ATTEMPTS", "0"),
                                              ("JANGDOK_FALLBACK", "maybe")])
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Settings.resolve()


def test_fallback_switch_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANGDOK_FALLBACK", "0")
    assert Settings.resolve().fallback is False


def test_secrets_are_masked_everywhere() -> None:
    assert mask_secret("AKIAIOSFODNN7EXAMPLE") == "****MPLE"
    assert mask_secret("short") == "****" and mask_secret(None) == "(none)"
    settings = Settings(access_key_id="AKIAIOSFODNN7EXAMPLE", secret_access_key="wJalrXUtnFEMI/K7MDENG")
    assert "wJalr" not in repr(settings) and "K7MDENG" not in repr(settings)
    assert "AKIAIOSFODNN7" not in repr(settings)


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=True)


def test_import_has_no_side_effects(isolated_env: Path) -> None:
    write_env(isolated_env, CACHE_DIR="from-dotenv")
    result = run_python(
        "import os, sys, jangdok; from jangdok import Cache; Cache('s3://bucket/x/');"
        "print(sorted(m for m in ('boto3', 'botocore', 'dotenv') if m in sys.modules), 'CACHE_DIR' in os.environ)",
        cwd=isolated_env,
    )
    assert result.stdout == "[] False\n" and result.stderr == ""


def test_project_dotenv_wins_over_current_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_env(project, CACHE_DIR="project-cache", S3_BUCKET_NAME="project-bucket")
    elsewhere = tmp_path / "elsewhere"
    write_env(elsewhere, CACHE_DIR="cwd-cache", AWS_REGION="ap-northeast-2")
    (project / "app.py").write_text(
        "import json\nfrom jangdok import Settings\ns = Settings.resolve()\n"
        "print(json.dumps([s.cache_dir, s.bucket, s.region]))\n"
    )
    result = subprocess.run([sys.executable, str(project / "app.py")], cwd=elsewhere, capture_output=True,
                            text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == ["project-cache", "project-bucket", "ap-northeast-2"]


def test_dotenv_credentials_reach_s3(seaweed, s3_url: str, isolated_env: Path) -> None:
    write_env(isolated_env, AWS_ACCESS_KEY_ID=READ_WRITE[0], AWS_SECRET_ACCESS_KEY=READ_WRITE[1],
              AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=seaweed.endpoint, CACHE_DIR=s3_url)
    with Cache(fallback=False) as cache:
        cache.put("from-dotenv.pkl", "hello")
        assert cache.get("from-dotenv.pkl") == "hello"
        assert cache.store_label == "S3"


def test_aws_profile_from_shared_credentials_reaches_s3(seaweed, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[jangdok-team]\naws_access_key_id = {READ_WRITE[0]}\naws_secret_access_key = {READ_WRITE[1]}\n"
    )
    Path(os.environ["AWS_CONFIG_FILE"]).write_text("[profile jangdok-team]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_PROFILE", "jangdok-team")
    with Cache(s3_url, endpoint_url=seaweed.endpoint, fallback=False) as cache:
        cache.put("from-profile.pkl", [1, 2])
        assert cache.get("from-profile.pkl") == [1, 2]
        assert cache.settings.credentials_source.startswith("AWS profile 'jangdok-team'")


def test_unknown_profile_means_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(CredentialsError, match="AWS profile 'nobody' not found"):
        Cache("s3://bucket/cache/", fallback=False).get("k")
    assert Cache("s3://bucket/cache/").get("k", "fell back") == "fell back"


def test_key_without_its_secret_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY0000000001")
    with pytest.raises(CredentialsError, match="AWS_SECRET_ACCESS_KEY is missing") as caught:
        Cache("s3://bucket/cache/", fallback=False).get("k")
    assert "AWS_ACCESS_KEY_ID is set (in environment)" in str(caught.value)
