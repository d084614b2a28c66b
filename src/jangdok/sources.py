"""Where settings come from: the layers :meth:`Settings.resolve
<jangdok.settings.Settings.resolve>` reads (arguments, the environment, ``.env`` files), the
one source credentials come from, and the checks on an endpoint and on whom it may receive
credentials from. The rules themselves are described in :mod:`jangdok.settings`.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .secret import mask_url

__all__ = ["Layer", "ENV_NAMES", "KEY_NAMES", "CREDENTIAL_NAMES", "environment_variables", "dotenv_layers",
           "credential_layer", "credentials_from", "check_endpoint", "check_endpoint_trust"]

log = logging.getLogger("jangdok")

# Setting name -> environment variables consulted, first match wins.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "cache_dir": ("CACHE_DIR",),
    "bucket": ("S3_BUCKET_NAME",),
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "connect_timeout": ("JANGDOK_CONNECT_TIMEOUT",),
    "read_timeout": ("JANGDOK_READ_TIMEOUT",),
    "max_attempts": ("JANGDOK_MAX_ATTEMPTS",),
    "total_timeout": ("JANGDOK_TOTAL_TIMEOUT",),
    "fallback": ("JANGDOK_FALLBACK",),
    "fallback_dir": ("JANGDOK_FALLBACK_DIR",),
    "durable": ("JANGDOK_DURABLE",),
    "mmap": ("JANGDOK_MMAP",),
    "compression": ("JANGDOK_COMPRESSION",),
    "ttl": ("JANGDOK_TTL",),
    "local_dir": ("CACHE_LOCAL_DIR",),
    "local_max_bytes": ("CACHE_LOCAL_MAX_BYTES",),
    "local_max_entry_bytes": ("CACHE_LOCAL_MAX_ENTRY_BYTES",),
    "local_trust_seconds": ("CACHE_LOCAL_TRUST_SECONDS",),
    "lease_seconds": ("JANGDOK_LEASE_SECONDS",),
    "wait_timeout": ("JANGDOK_WAIT_TIMEOUT",),
    "signing_keys": ("JANGDOK_SIGNING_KEY",),
    "allow_legacy": ("JANGDOK_ALLOW_LEGACY",),
    "delete_untrusted": ("JANGDOK_DELETE_UNTRUSTED",),
    "serializer": ("JANGDOK_SERIALIZER",),
    "concurrency": ("JANGDOK_CONCURRENCY",),
    "part_size": ("JANGDOK_PART_SIZE",),
}
KEY_NAMES = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}
CREDENTIAL_NAMES = {**KEY_NAMES, "profile": "AWS_PROFILE"}
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "JANGDOK_SIGNING_KEY")


def environment_variables() -> tuple[str, ...]:
    """Every environment variable a setting is read from, credentials included."""
    return (*(name for names in ENV_NAMES.values() for name in names), *CREDENTIAL_NAMES.values())


@dataclass(frozen=True)
class Layer:
    """One source of settings, keyed by environment variable name (arguments included)."""

    origin: str
    """As recorded in :attr:`Settings.sources`: ``argument``, ``environment``, ``.env file <path>``."""
    values: Mapping[str, Any]
    trusted: bool = True
    """False for a current-folder ``.env``: its endpoint may only receive its own credentials."""

    def find(self, variables: Iterable[str]) -> str | None:
        """The first of ``variables`` this layer sets (an empty value counts as unset)."""
        return next((name for name in variables if self.values.get(name) not in (None, "")), None)

    def where(self, variable: str, setting: str) -> str:
        return f"argument {setting}" if self.origin == "argument" else f"{variable} in {self.origin}"


def _dotenv_files() -> tuple[Path | None, Path | None]:
    """The project folder's ``.env`` (the running script's folder) and the current folder's,
    each None when absent; one file that is both counts as the project's."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    project: Path | None = Path(main_file).resolve().parent / ".env" if main_file else None
    if project is not None and not project.is_file():
        project = None
    current = Path.cwd() / ".env"
    if not current.is_file() or (project is not None and current.resolve() == project):
        return project, None
    return project, current


def dotenv_layers() -> list[Layer]:
    project, current = _dotenv_files()
    layers = []
    if project is not None:
        layers.append(Layer(f".env file {project}", _read_dotenv(project)))
    if current is not None:
        layers.append(Layer(f".env file {current}", _read_dotenv(current), trusted=False))
    return layers


def _read_dotenv(path: Path) -> dict[str, str]:
    """The values of one ``.env`` file, literally (no ``${VAR}`` expansion)."""
    try:
        # utf-8-sig: editors on Windows may start the file with a BOM, which would join the first name.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f".env file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read .env file {path}: {exc.strerror}; fix its permissions or remove it") from exc
    # Imported only here, when a .env file exists: importing jangdok stays free of it.
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    bad_lines = [_error_line(binding) for binding in parse_stream(io.StringIO(text)) if binding.error]
    if bad_lines:
        # The lines themselves are not quoted: a broken line may hold a secret.
        raise ConfigError(
            f".env file {path}: cannot parse line {', '.join(map(str, bad_lines))}; write each setting as "
            "NAME=value, quote a value holding spaces or '#' and close every quote, or start the line with '#'"
        )
    parsed = dotenv_values(stream=io.StringIO(text), interpolate=False)
    values = {name: value for name, value in parsed.items() if value is not None}
    _warn_if_exposed(path, values)
    return values


def _error_line(binding: Any) -> int:
    """The line a parse error is on: python-dotenv marks it at the blank lines before it."""
    text = binding.original.string
    blank = text[: len(text) - len(text.lstrip())]
    return int(binding.original.line) + blank.count("\n")


_warned_exposed: set[Path] = set()
"""The exposed ``.env`` files already warned about: settings are resolved more than once in a
process (an app's config module, then its cache), and one warning per file says it all."""


def _warn_if_exposed(path: Path, values: Mapping[str, str]) -> None:
    """Warn when a file holding a secret can be read by other users (POSIX permissions only),
    once per file and process."""
    held = [name for name in _SECRET_VARIABLES if values.get(name)]
    if not held or os.name != "posix":
        return
    mode = path.stat().st_mode
    if mode & 0o044 and path.resolve() not in _warned_exposed:
        _warned_exposed.add(path.resolve())
        log.warning(
            "%s holds %s but can be read by other users of this machine (mode %04o); restrict it with: chmod 600 %s",
            path, " and ".join(held), mode & 0o777, path,
        )


def credential_layer(layers: list[Layer]) -> Layer | None:
    """The one source of credentials: the first layer holding any key, secret, token or profile."""
    return next((layer for layer in layers if layer.find(CREDENTIAL_NAMES.values())), None)


def credentials_from(layer: Layer) -> dict[str, Any]:
    """Keys if the layer has any (even an incomplete set, for the store to report), else its profile."""
    names = KEY_NAMES if layer.find(KEY_NAMES.values()) else {"profile": "AWS_PROFILE"}
    return {name: layer.values[env] for name, env in names.items() if layer.find([env])}


# -- checks ------------------------------------------------------------------------------------


def check_endpoint(url: Any, where: str) -> None:
    """Accept ``http(s)://host[:port][/path]``; boto3 would fail later with a bare 'Invalid endpoint'."""
    problem = _endpoint_problem(url)
    if problem:
        raise ConfigError(f"endpoint {mask_url(url) if isinstance(url, str) else url!r} ({where}) {problem}")


def _endpoint_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return f"must be a URL string, not {type(url).__name__}"
    if "://" not in url:
        shown = mask_url(f"http://{url}").removeprefix("http://")
        return f"has no scheme; use http://{shown} (or https://{shown} if the server uses TLS)"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc}); use http(s)://host[:port]"
    if "@" in parts.netloc:  # before the port is parsed: its error would quote the password
        # User info would be sent nowhere useful and would show in logs; credentials go elsewhere.
        return "holds a user name or password; remove it and set the credentials as access keys"
    try:
        parts.port  # noqa: B018 -- parsing the port is what raises on a bad one
    except ValueError as exc:
        return f"is not a valid URL ({exc}); use http(s)://host[:port]"
    if parts.scheme.lower() not in ("http", "https"):
        return f"uses the scheme {parts.scheme!r}; S3 endpoints are http:// or https://"
    if not parts.hostname:
        return "has no host; use http(s)://host[:port], e.g. http://127.0.0.1:8333"
    if parts.query or parts.fragment:
        return "has a query or fragment; use http(s)://host[:port][/path]"
    return None


def check_endpoint_trust(endpoint: Layer, variable: str, credentials: Layer | None) -> None:
    """Refuse an endpoint from a current-folder .env for credentials it did not bring itself."""
    if endpoint.trusted or (credentials is endpoint and endpoint.find(KEY_NAMES.values())):
        return
    path = endpoint.origin.removeprefix(".env file ")
    raise ConfigError(
        f"{variable} is set in {path}, a .env file in the current folder rather than the running script's "
        f"project folder, but the credentials come from {_describe_credentials(credentials)}. An endpoint from "
        "the folder you happen to work in is not trusted with credentials from elsewhere, since they would be "
        f"sent to whatever server it names. Either set {variable} in the environment (or pass endpoint_url=...), "
        f"or put AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in {path} as well."
    )


def _describe_credentials(layer: Layer | None) -> str:
    if layer is None:
        return "boto3's default chain (AWS shared credentials/config files, container or instance role)"
    where = {"argument": "the arguments", "environment": "the environment"}.get(layer.origin, layer.origin)
    if layer.find(KEY_NAMES.values()):
        return f"the access keys in {where}"
    return f"AWS profile {layer.values['AWS_PROFILE']!r} named in {where} (your own keys from the shared files)"
