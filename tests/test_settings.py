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

from jangdok import Cache, ConfigError, CredentialsError, NoCredentials, Settings, mask_secret
from jangdok.settings import Secret, mask_url, reveal


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
    assert (settings.access_key_id, settings.secret_access_key) == (Secret("ENVKEY0000000001"), Secret("env-secret"))
    assert settings.credentials_source == "access key ****0001 from environment"

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_PROFILE", "team")  # a profile in the environment outranks .env keys
    settings = Settings.resolve()
    assert settings.profile == "team" and settings.access_key_id is None and settings.secret_access_key is None

    monkeypatch.delenv("AWS_PROFILE")
    settings = Settings.resolve()
    assert reveal(settings.access_key_id) == "DOTENVKEY0000001" and ".env file" in settings.credentials_source


def test_session_token_travels_with_its_keys(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated_env, AWS_SESSION_TOKEN="dotenv-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY0000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert Settings.resolve().session_token is None, "a token from another source is not mixed in"
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    assert reveal(Settings.resolve().session_token) == "env-token"


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


def test_an_unknown_profile_is_a_mistake_to_fix_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in AWS_PROFILE must not quietly cache in the fallback folder, as missing
    credentials do: it is refused like a rejected secret, naming where the profile was set."""
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    for fallback in (False, True):
        with pytest.raises(CredentialsError) as caught:
            Cache("s3://bucket/cache/", fallback=fallback).get("k")
        assert not isinstance(caught.value, NoCredentials)
        assert "AWS profile 'nobody' (from environment) not found" in str(caught.value)
        assert "AWS_PROFILE" in str(caught.value) and str(caught.value).count("nobody") == 2


def test_key_without_its_secret_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY0000000001")
    with pytest.raises(CredentialsError, match="AWS_SECRET_ACCESS_KEY is missing") as caught:
        Cache("s3://bucket/cache/", fallback=False).get("k")
    assert "AWS_ACCESS_KEY_ID is set (in environment)" in str(caught.value)


# -- numbers: finite, and a deadline that leaves room for the retries it promises ----------------


@pytest.mark.parametrize(("name", "value"), [("JANGDOK_READ_TIMEOUT", "nan"), ("JANGDOK_CONNECT_TIMEOUT", "inf"),
                                              ("JANGDOK_TOTAL_TIMEOUT", "NaN"), ("JANGDOK_TOTAL_TIMEOUT", "-inf"),
                                              ("JANGDOK_MAX_ATTEMPTS", "inf"), ("JANGDOK_MAX_ATTEMPTS", "nan"),
                                              ("JANGDOK_MAX_ATTEMPTS", "2.5")])
def test_nan_and_infinity_are_refused_from_the_environment(monkeypatch: pytest.MonkeyPatch, name: str,
                                                          value: str) -> None:
    monkeypatch.setenv(name, value)
    setting = name.removeprefix("JANGDOK_").lower()
    with pytest.raises(ConfigError, match=rf"setting {setting} \({name}\) = '{value}' \(from environment\)"):
        Settings.resolve()


@pytest.mark.parametrize(("name", "value"), [("read_timeout", float("nan")), ("connect_timeout", float("inf")),
                                              ("total_timeout", float("nan")), ("max_attempts", float("inf")),
                                              ("max_attempts", float("nan")), ("max_attempts", 2.5)])
def test_nan_and_infinity_are_refused_as_arguments(name: str, value: float) -> None:
    env = f"JANGDOK_{name.upper()}"
    with pytest.raises(ConfigError, match=rf"setting {name} \({env}\) = {value!r} \(from argument\)"):
        Settings(**{name: value})
    with pytest.raises(ConfigError, match=env):
        Settings.resolve(**{name: value})


def test_a_deadline_without_room_for_a_retry_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANGDOK_TOTAL_TIMEOUT", "30")  # the defaults' attempt is 5 + 15 = 20 s
    with pytest.raises(ConfigError) as caught:
        Settings.resolve()
    message = str(caught.value)
    assert "max_attempts (JANGDOK_MAX_ATTEMPTS) = 4 would silently mean 1" in message
    assert "5 + 15 = 20 s" in message
    assert "raise JANGDOK_TOTAL_TIMEOUT to at least 40" in message
    assert "lower JANGDOK_CONNECT_TIMEOUT and JANGDOK_READ_TIMEOUT" in message

    monkeypatch.setenv("JANGDOK_TOTAL_TIMEOUT", "40")  # exactly one stalled attempt, then one more
    assert Settings.resolve().total_timeout == 40.0
    monkeypatch.setenv("JANGDOK_TOTAL_TIMEOUT", "30")
    monkeypatch.setenv("JANGDOK_READ_TIMEOUT", "10")  # the other fix: shorter attempts
    assert Settings.resolve().read_timeout == 10.0
    monkeypatch.setenv("JANGDOK_TOTAL_TIMEOUT", "1")
    monkeypatch.setenv("JANGDOK_MAX_ATTEMPTS", "1")  # one attempt on purpose: no retry to protect
    assert Settings.resolve().max_attempts == 1


def test_the_retry_budget_is_checked_on_direct_construction() -> None:
    with pytest.raises(ConfigError, match="at least 0.6"):
        Settings(connect_timeout=0.1, read_timeout=0.2, total_timeout=0.5)
    assert Settings(connect_timeout=0.1, read_timeout=0.2, total_timeout=0.6).total_timeout == 0.6
    # The values the test helpers use against the S3 test server (tests/helpers.py).
    assert Settings(connect_timeout=2.0, read_timeout=10.0, total_timeout=30.0, max_attempts=5).max_attempts == 5
    assert Settings().total_timeout == 60.0


# -- durable ---------------------------------------------------------------------------------


def test_durable_is_off_by_default_and_switched_like_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.resolve().durable is False and Settings().durable is False
    monkeypatch.setenv("JANGDOK_DURABLE", "yes")
    settings = Settings.resolve()
    assert settings.durable is True and settings.sources["durable"] == "environment"
    assert Settings.resolve(durable=False).durable is False
    monkeypatch.setenv("JANGDOK_DURABLE", "sometimes")
    with pytest.raises(ConfigError, match=r"durable \(JANGDOK_DURABLE\) = 'sometimes'.*yes/no"):
        Settings.resolve()


# -- .env files: literal values, syntax errors -------------------------------------------------


def test_dotenv_values_are_literal(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-that-must-stay-put")
    (isolated_env / ".env").write_text("CACHE_DIR=${AWS_SECRET_ACCESS_KEY}\nS3_BUCKET_NAME='b-${CACHE_DIR}'\n")
    settings = Settings.resolve()
    assert settings.cache_dir == "${AWS_SECRET_ACCESS_KEY}"
    assert settings.bucket == "b-${CACHE_DIR}"


@pytest.mark.parametrize(("text", "line"), [
    ("CACHE_DIR=ok\n\nthis is not a setting\n", 3),
    ("# comment\nS3_BUCKET_NAME=bucket\nAWS_SECRET_ACCESS_KEY='unterminated-secret-value\n", 3),
    ("\n\n\nCACHE_DIR=\"never closed\nAWS_REGION=eu-west-1\n", 4),
])
def test_a_dotenv_syntax_error_names_the_file_and_line(isolated_env: Path, text: str, line: int) -> None:
    path = isolated_env / ".env"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Settings.resolve()
    message = str(caught.value)
    assert f".env file {path}: cannot parse line {line};" in message and "NAME=value" in message
    assert "unterminated-secret-value" not in message, "a broken line may hold a secret: never quoted"


def test_a_valid_dotenv_parses_without_error(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text(
        "\ufeff# comment\n\nexport CACHE_DIR=cache # trailing comment\nS3_BUCKET_NAME=\"quoted # not a comment\"\n"
        "AWS_REGION\n"
    )
    settings = Settings.resolve()
    assert (settings.cache_dir, settings.bucket, settings.region) == ("cache", "quoted # not a comment", None)


# -- endpoint URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "advice"), [
    ("AWS_ENDPOINT_URL", "127.0.0.1:8333", "has no scheme; use http://127.0.0.1:8333"),
    ("AWS_ENDPOINT_URL_S3", "localhost:9000", "has no scheme; use http://localhost:9000"),
    ("AWS_ENDPOINT_URL", "ftp://127.0.0.1:8333", "uses the scheme 'ftp'"),
    ("AWS_ENDPOINT_URL", "http://", "has no host"),
    ("AWS_ENDPOINT_URL", "http://:8333", "has no host"),
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:notaport", "is not a valid URL"),
    ("AWS_ENDPOINT_URL", "http://user:pw@127.0.0.1:8333", "holds a user name or password"),
])
def test_a_malformed_endpoint_names_its_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                             value: str, advice: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        Settings.resolve()
    assert f"({variable} in environment)" in str(caught.value) and advice in str(caught.value)


def test_a_malformed_endpoint_is_refused_from_every_source(isolated_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"\(argument endpoint_url\) has no scheme; use http://127.0.0.1:8333"):
        Settings.resolve(endpoint_url="127.0.0.1:8333")
    with pytest.raises(ConfigError, match="setting endpoint_url.*has no scheme; use http://127.0.0.1:8333"):
        Settings(endpoint_url="127.0.0.1:8333")
    path = write_env(isolated_env, AWS_ENDPOINT_URL="127.0.0.1:8333", AWS_ACCESS_KEY_ID="K", AWS_SECRET_ACCESS_KEY="S")
    with pytest.raises(ConfigError, match=f"AWS_ENDPOINT_URL in .env file {path}"):
        Settings.resolve()


PASSWORD = "SuperSecretPassw0rd123"


@pytest.mark.parametrize("url", [
    f"http://me:{PASSWORD}@127.0.0.1:9", f"http://{PASSWORD}@127.0.0.1:9", f"http://me:p@ss{PASSWORD}@127.0.0.1:9",
    f"http://me:{PASSWORD}@127.0.0.1:notaport", f"me:{PASSWORD}@127.0.0.1:9",
])
def test_an_endpoint_holding_a_password_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch,
                                                                       url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    for resolve in (Settings.resolve, lambda: Settings(endpoint_url=url)):
        with pytest.raises(ConfigError) as caught:
            resolve()
        message = str(caught.value)
        assert "****" in message and PASSWORD[:-4] not in message and "p@ss" not in message, message
        assert "has no scheme" in message or "holds a user name or password" in message


def test_the_command_refuses_an_endpoint_holding_a_password_without_showing_it(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env.update(AWS_ENDPOINT_URL=f"http://me:{PASSWORD}@127.0.0.1:9", CACHE_DIR="s3://b/c/",
               AWS_EC2_METADATA_DISABLED="true")
    result = subprocess.run([sys.executable, "-m", "jangdok", "ls"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "endpoint 'http://****d123@127.0.0.1:9'" in result.stderr, result.stderr
    assert PASSWORD[:-4] not in result.stdout + result.stderr


def test_mask_url_masks_only_user_information() -> None:
    assert mask_url(f"http://me:{PASSWORD}@h:9/x@y") == "http://****d123@h:9/x@y"
    for url in ("http://h:9", "s3://bucket/pre@fix/", "cache@v2", "/data/me@host", "C:\\Users\\me@corp"):
        assert mask_url(url) == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8333", "https://s3.example.com", "https://s3.example.com/base/",
                                 "HTTP://LOCALHOST:9000", "http://[::1]:9000"])
def test_well_formed_endpoints_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    assert Settings.resolve().endpoint_url == url
