"""Credentials: one source each, an endpoint trusted only as far as its credentials, .env files
that hold secrets kept private, and secrets that never show in a repr."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import s3_settings
from seaweed import SeaweedServer

from jangdok import Cache, ConfigError, CredentialsError, Settings, redact
from jangdok.settings import Secret, reveal

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDSESSIONTOKENTEXT"


def write_env(folder: Path, mode: int = 0o600, **values: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    path.chmod(mode)
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder distinct from the current one: the running script lives there."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(folder / "app.py"), raising=False)
    return folder


def set_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY0000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")


# -- one source for all the credentials ---------------------------------------------------------


def test_an_explicit_secret_is_not_replaced_by_the_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env_keys(monkeypatch)
    settings = Settings.resolve(secret_access_key="explicit-secret")
    assert settings.secret_access_key == Secret("explicit-secret") and settings.access_key_id is None
    assert settings.sources["credentials"] == "argument"
    assert settings.credentials_source == "a secret access key without an access key id, from argument"
    # The store then says what is missing instead of signing with the environment's pair.
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID is missing"):
        Cache("s3://bucket/cache/", secret_access_key="explicit-secret", fallback=False).get("k")


def test_an_explicit_session_token_is_not_paired_with_the_environments_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env_keys(monkeypatch)
    settings = Settings.resolve(session_token=TOKEN)
    assert reveal(settings.session_token) == TOKEN
    assert settings.access_key_id is None and settings.secret_access_key is None
    assert settings.sources["credentials"] == "argument"


def test_an_explicit_key_without_secret_stays_incomplete(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env_keys(monkeypatch)
    settings = Settings.resolve(access_key_id="ARGKEY0000000001")
    assert reveal(settings.access_key_id) == "ARGKEY0000000001" and settings.secret_access_key is None
    with pytest.raises(CredentialsError, match=r"AWS_ACCESS_KEY_ID is set \(in argument\)"):
        Cache("s3://bucket/cache/", access_key_id="ARGKEY0000000001", fallback=False).get("k")


def test_a_secret_alone_in_the_environment_is_not_topped_up_from_dotenv(isolated_env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated_env, AWS_ACCESS_KEY_ID="DOTENVKEY0000001", AWS_SECRET_ACCESS_KEY="dotenv-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    settings = Settings.resolve()
    assert settings.access_key_id is None and reveal(settings.secret_access_key) == "env-secret"
    assert settings.sources["credentials"] == "environment"


def test_two_dotenv_files_are_two_sources(project: Path, isolated_env: Path) -> None:
    project_env = write_env(project, AWS_ACCESS_KEY_ID="PROJECTKEY000001")
    write_env(isolated_env, AWS_ACCESS_KEY_ID="CWDKEY0000000001", AWS_SECRET_ACCESS_KEY="cwd-secret")
    settings = Settings.resolve()
    assert reveal(settings.access_key_id) == "PROJECTKEY000001" and settings.secret_access_key is None
    assert settings.sources["credentials"] == f".env file {project_env}"


# -- the endpoint is trusted as far as the credentials it receives -------------------------------


def refused(match: str = "") -> AbstractContextManager[pytest.ExceptionInfo[ConfigError]]:
    return pytest.raises(ConfigError, match=match or "not trusted with credentials from elsewhere")


def test_a_current_folder_endpoint_gets_no_credentials_from_the_environment(
        project: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_env(isolated_env, AWS_ENDPOINT_URL="http://attacker.example:8333")
    set_env_keys(monkeypatch)
    with refused() as caught:
        Settings.resolve()
    message = str(caught.value)
    assert f"AWS_ENDPOINT_URL is set in {path}" in message
    assert "the credentials come from the access keys in the environment" in message
    assert "set AWS_ENDPOINT_URL in the environment" in message
    assert f"put AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in {path} as well" in message
    assert "env-secret" not in message


def test_a_current_folder_endpoint_gets_no_credentials_from_arguments(project: Path, isolated_env: Path) -> None:
    write_env(isolated_env, AWS_ENDPOINT_URL_S3="http://attacker.example:8333")
    with refused("AWS_ENDPOINT_URL_S3 is set in .*the access keys in the arguments"):
        Settings.resolve(access_key_id="ARGKEY0000000001", secret_access_key="arg-secret")


def test_a_current_folder_endpoint_gets_no_profile(project: Path, isolated_env: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated_env, AWS_ENDPOINT_URL="http://attacker.example:8333")
    monkeypatch.setenv("AWS_PROFILE", "team")
    with refused("AWS profile 'team' named in the environment"):
        Settings.resolve()
    # Naming the profile in the same file does not make the keys it points to that file's.
    write_env(isolated_env, AWS_ENDPOINT_URL="http://attacker.example:8333", AWS_PROFILE="default")
    monkeypatch.delenv("AWS_PROFILE")
    with refused("AWS profile 'default' named in .env file"):
        Settings.resolve()


def test_a_current_folder_endpoint_gets_nothing_from_the_default_chain(project: Path, isolated_env: Path) -> None:
    write_env(isolated_env, AWS_ENDPOINT_URL="http://attacker.example:8333")
    with refused("credentials come from boto3's default chain"):
        Settings.resolve()
    with refused():
        Cache("s3://bucket/cache/").get("k")  # fallback does not hide it: it is a configuration error


def test_a_current_folder_endpoint_gets_no_keys_from_the_project_dotenv(project: Path, isolated_env: Path) -> None:
    project_env = write_env(project, AWS_ACCESS_KEY_ID="PROJECTKEY000001", AWS_SECRET_ACCESS_KEY="project-secret")
    write_env(isolated_env, AWS_ENDPOINT_URL="http://attacker.example:8333")
    with refused(f"the access keys in .env file {project_env}"):
        Settings.resolve()


def test_a_current_folder_endpoint_with_its_own_keys_is_used(project: Path, isolated_env: Path) -> None:
    path = write_env(isolated_env, AWS_ENDPOINT_URL="http://127.0.0.1:8333",
                     AWS_ACCESS_KEY_ID="CWDKEY0000000001", AWS_SECRET_ACCESS_KEY="cwd-secret")
    settings = Settings.resolve()
    assert settings.endpoint_url == "http://127.0.0.1:8333"
    assert settings.sources["endpoint_url"] == settings.sources["credentials"] == f".env file {path}"


@pytest.mark.parametrize("endpoint_from", ["environment", "argument", "project .env"])
def test_a_trusted_endpoint_is_used_with_any_credentials(project: Path, isolated_env: Path,
                                                         monkeypatch: pytest.MonkeyPatch, endpoint_from: str) -> None:
    # The current folder's .env names another endpoint and holds the keys; the trusted endpoint outranks it.
    write_env(isolated_env, AWS_ENDPOINT_URL="http://elsewhere.example:1",
              AWS_ACCESS_KEY_ID="CWDKEY0000000001", AWS_SECRET_ACCESS_KEY="cwd-secret")
    trusted = "http://127.0.0.1:8333"
    if endpoint_from == "environment":
        monkeypatch.setenv("AWS_ENDPOINT_URL", trusted)
    elif endpoint_from == "project .env":
        write_env(project, AWS_ENDPOINT_URL=trusted)
    settings = Settings.resolve(endpoint_url=trusted if endpoint_from == "argument" else None)
    assert settings.endpoint_url == trusted and reveal(settings.access_key_id) == "CWDKEY0000000001"
    monkeypatch.setenv("AWS_PROFILE", "team")
    assert Settings.resolve(endpoint_url=trusted if endpoint_from == "argument" else None).profile == "team"


def test_the_current_folder_is_trusted_when_it_is_the_project_folder(isolated_env: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_env(isolated_env, AWS_ENDPOINT_URL="http://127.0.0.1:8333")
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(isolated_env / "app.py"), raising=False)
    set_env_keys(monkeypatch)
    assert Settings.resolve().endpoint_url == "http://127.0.0.1:8333"


def test_the_trust_rule_in_a_real_script(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    script = project / "app.py"
    write_env(project, S3_BUCKET_NAME="project-bucket")
    write_env(elsewhere, AWS_ENDPOINT_URL="http://attacker.example:8333")
    script.write_text(
        "import json\nfrom jangdok import ConfigError, Settings\n"
        "try:\n    s = Settings.resolve()\n    print(json.dumps([s.bucket, s.endpoint_url]))\n"
        "except ConfigError as exc:\n    print(json.dumps(['refused', str(exc)]))\n"
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "ENVKEY0000000001", "AWS_SECRET_ACCESS_KEY": "env-secret"}

    def run(cwd: Path) -> list[str]:
        result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        return json.loads(result.stdout)

    verdict, message = run(elsewhere)
    assert verdict == "refused" and str(elsewhere / ".env") in message
    (project / ".env").write_text("AWS_ENDPOINT_URL=http://127.0.0.1:8333\n")
    assert run(elsewhere) == [None, "http://127.0.0.1:8333"], "the project's endpoint outranks the folder's"


# -- .env files holding secrets stay private -------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_readable_dotenv_with_a_secret_is_warned_about(isolated_env: Path, caplog: pytest.LogCaptureFixture,
                                                         capsys: pytest.CaptureFixture[str], variable: str,
                                                         mode: int) -> None:
    path = write_env(isolated_env, mode=mode, AWS_ACCESS_KEY_ID="DOTENVKEY0000001", **{variable: SECRET})
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        Settings.resolve()
    warnings = [r for r in caplog.records if r.name == "jangdok" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message and variable in message and f"chmod 600 {path}" in message
    assert SECRET not in message
    assert capsys.readouterr() == ("", ""), "the library never prints"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_private_or_secretless_dotenv_files_are_not_warned_about(isolated_env: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    write_env(isolated_env, mode=0o600, AWS_ACCESS_KEY_ID="DOTENVKEY0000001", AWS_SECRET_ACCESS_KEY=SECRET)
    with caplog.at_level(logging.WARNING, logger="jangdok"):
        Settings.resolve()
        write_env(isolated_env, mode=0o644, CACHE_DIR="cache", AWS_ACCESS_KEY_ID="DOTENVKEY0000001")
        Settings.resolve()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- secrets never in plain text -------------------------------------------------------------


def assert_hidden(settings: Settings, *secrets: str) -> None:
    shown = [repr(settings), str(settings), repr(settings.sources), str(dict(settings.sources)),
             settings.credentials_source]
    for secret in secrets:
        for text in shown:
            assert secret not in text and secret[:8] not in text


def test_secrets_are_not_in_reprs_when_built_directly() -> None:
    settings = Settings(access_key_id="AKIAIOSFODNN7EXAMPLE", secret_access_key=SECRET, session_token=TOKEN)
    assert_hidden(settings, "AKIAIOSFODNN7EXAMPLE", SECRET, TOKEN)
    assert reveal(settings.secret_access_key) == SECRET and reveal(settings.session_token) == TOKEN
    short = Settings(access_key_id="AKIA", secret_access_key="tiny")
    assert "tiny" not in repr(short) and "AKIA" not in repr(short)


def test_secrets_are_not_in_reprs_when_resolved(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    assert_hidden(Settings.resolve(), "AKIAIOSFODNN7EXAMPLE", SECRET, TOKEN)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    write_env(isolated_env, AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY=SECRET,
              AWS_SESSION_TOKEN=TOKEN)
    assert_hidden(Settings.resolve(), "AKIAIOSFODNN7EXAMPLE", SECRET, TOKEN)
    assert_hidden(Settings.resolve(secret_access_key=SECRET, access_key_id="AKIAIOSFODNN7EXAMPLE"), SECRET)


# -- no credential in any log record ---------------------------------------------------------

ACCESS_KEY = "AKIAJANGDOKDEBUGKEY7"


def _credentials_in(text: str) -> list[str]:
    """The credentials ``text`` shows: the secret or token whole or in part, or the access key
    beyond its last 4 characters."""
    shown = [name for name, part in (("secret", SECRET[:-4]), ("secret", SECRET[4:]), ("token", TOKEN[:-4]),
                                     ("token", TOKEN[4:]), ("access key", ACCESS_KEY[:-4])) if part in text]
    return sorted(set(shown))


class _Records(logging.Handler):
    """An app's own handler, formatting as apps do (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record))


def _aws_signature_error() -> tuple[object, ...]:
    """AWS's answer to a request signed with a wrong secret: it repeats the access key id, and
    the canonical request with the session token in it."""
    return ("status", 403, "SignatureDoesNotMatch", {
        "AWSAccessKeyId": ACCESS_KEY, "StringToSign": "AWS4-HMAC-SHA256 20261205T061203Z",
        "CanonicalRequest": f"GET /jangdok-test host:127.0.0.1 x-amz-security-token:{TOKEN}"})


def test_no_log_record_of_a_whole_s3_session_at_debug_shows_a_credential(moto: SeaweedServer, s3_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """As an app that calls logging.basicConfig(level=logging.DEBUG), with botocore, boto3 and
    urllib3 included, a session token sent with every request (moto accepts any), and a
    handler of its own on botocore."""
    for name in (None, "botocore", "boto3", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    on_botocore = _Records()
    logging.getLogger("botocore").addHandler(on_botocore)
    proxy, refusing = (FaultProxy(int(moto.endpoint.rsplit(":", 1)[1])) for _ in range(2))
    settings = s3_settings(moto, s3_url, identity=(ACCESS_KEY, SECRET), session_token=TOKEN,
                           endpoint_url=proxy.endpoint, max_attempts=1)
    refusing_settings = dataclasses.replace(settings, endpoint_url=refusing.endpoint)
    try:
        with Cache.from_settings(settings) as cache:
            cache.put("a.pkl", list(range(100)))
            assert cache.get("a.pkl") == list(range(100))
            assert cache.stat("a.pkl").store == "S3" and cache.fallback_reason is None, "S3 served the session"
            assert list(cache.keys()) == ["a.pkl"]
            assert cache.get_or_compute("b.pkl", lambda: "b") == "b"  # a lease: conditional writes, a delete
            assert cache.delete("a.pkl")
            assert len(cache.prune(older_than=0).removed) == 1
        # A proxy of its own, whose first connection is the fresh cache's opening (the first
        # cache's pool may still reach the other proxy while it shuts down).
        refusing.faults.append(_aws_signature_error())
        with Cache.from_settings(refusing_settings) as refused, pytest.raises(CredentialsError):
            refused.get("a.pkl")
        assert refusing.fired == ["status 403 SignatureDoesNotMatch"]
    finally:
        logging.getLogger("botocore").removeHandler(on_botocore)
        proxy.close()
        refusing.close()
    records = caplog.records + on_botocore.records
    sources = {record.name.partition(".")[0] for record in records}
    assert {"botocore", "urllib3", "jangdok"} <= sources, sources
    assert any("SignatureDoesNotMatch" in record.getMessage() for record in on_botocore.records), \
        "botocore logged the error document"
    assert any(f"****{TOKEN[-4:]}" in record.getMessage() for record in records), "the token header, masked"
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in records:
        for text in (record.getMessage(), repr(record.__dict__), str(record.args), formatter.format(record)):
            assert not _credentials_in(text), (_credentials_in(text), record.name, text[:300])
    for text in on_botocore.texts + [caplog.text]:
        assert not _credentials_in(text)


def test_jangdok_debug_shows_no_credential(moto: SeaweedServer, s3_url: str, tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "JANGDOK_", "CACHE_"))}
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto.endpoint, "CACHE_DIR": s3_url,
                "AWS_EC2_METADATA_DISABLED": "true"})
    with Cache.from_settings(s3_settings(moto, s3_url, identity=(ACCESS_KEY, SECRET), session_token=TOKEN)) as cache:
        cache.put("a.pkl", [1, 2])
    for command in (["ls", "--long"], ["stat", "a.pkl"], ["get", "a.pkl", "-o", str(tmp_path / "a")],
                    ["prune", "--dry-run"], ["rm", "a.pkl", "--yes"]):
        result = subprocess.run([sys.executable, "-m", "jangdok", "--debug", *command], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "botocore" in result.stderr, "the debug log includes botocore's records"
        for text in (result.stdout, result.stderr):
            assert not _credentials_in(text), (command, _credentials_in(text))


def test_a_short_credential_does_not_mask_ordinary_words(caplog: pytest.LogCaptureFixture) -> None:
    """A value under 8 characters ("test", as moto's examples use) is masked only where
    credentials go, not wherever the word appears in a path or message."""
    redact.protect("test", "AKIAJANGDOKSHORTKEY1")
    with caplog.at_level(logging.INFO, logger="jangdok"):
        logging.getLogger("jangdok").info("loaded s3://jangdok-test/%s", "test_cache/x.pkl")
        logging.getLogger("jangdok").info("Credential=test/20261205/us-east-1/s3/aws4_request")
        logging.getLogger("jangdok").info("signing as AKIAJANGDOKSHORTKEY1")
    assert [record.getMessage() for record in caplog.records] == [
        "loaded s3://jangdok-test/test_cache/x.pkl", "Credential=****/20261205/us-east-1/s3/aws4_request",
        "signing as ****KEY1"]


class _OneLine(logging.Formatter):
    """An app's formatter that prints tracebacks its own way."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return f"[{ei[0].__name__}: {ei[1]}]"


def test_tracebacks_are_left_to_the_apps_formatter_unless_they_hold_a_credential() -> None:
    """Once jangdok made a client, an app's formatException still formats the tracebacks of
    jangdok's, botocore's and urllib3's records; only one that shows a credential is replaced
    by a masked one."""
    redact.protect("AKIAJANGDOKTRACEBACK1")  # as making an S3 client does
    handler = _Records()
    handler.setFormatter(_OneLine("%(name)s %(message)s"))
    names = ("jangdok.stores.test", "botocore.test", "urllib3.test")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        for name in names:
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                logging.getLogger(name).error("failed", exc_info=True)
        try:
            raise PermissionError("signed as AKIAJANGDOKTRACEBACK1")
        except PermissionError:
            logging.getLogger(names[0]).error("refused", exc_info=True)
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
    assert handler.texts[:3] == [f"{name} failed\n[ZeroDivisionError: division by zero]" for name in names]
    refused = handler.texts[3]
    assert refused.startswith("jangdok.stores.test refused\nTraceback (most recent call last):"), refused
    assert "PermissionError: signed as ****ACK1" in refused and "AKIAJANGDOKTRACEBACK1" not in refused
