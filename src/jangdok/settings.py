"""Configuration: where the cache lives, how to reach S3, and how hard to try.

Every setting is resolved in one order, documented in the README:

1. explicit arguments (``Cache(..., endpoint_url=...)``, ``Settings.resolve(...)``);
2. environment variables;
3. ``.env`` files: the project folder (the running script's folder), then the current folder.
   They never override variables already set, and are read only when a cache is first used;
4. for credentials only: the AWS shared config/credentials files and the rest of boto3's chain.

Access key, secret and session token always come from the *same* source, so a key from the
environment is never paired with a secret from a ``.env`` file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Settings", "mask_secret"]

# Setting name -> environment variables consulted, first match wins.
_ENV_NAMES: dict[str, tuple[str, ...]] = {
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
}
_KEY_NAMES = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}
_CREDENTIAL_NAMES = {**_KEY_NAMES, "profile": "AWS_PROFILE"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def mask_secret(secret: str | None) -> str:
    """Show only the last 4 characters of a secret (nothing at all of a short one)."""
    if not secret:
        return "(none)"
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def _default_fallback_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "jangdok", "fallback")


def _dotenv_paths() -> list[Path]:
    """The project folder's ``.env`` (the running script's folder), then the current folder's."""
    candidates = []
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file:
        candidates.append(Path(main_file).resolve().parent / ".env")
    candidates.append(Path.cwd() / ".env")
    unique: list[Path] = []
    for path in candidates:
        if path.is_file() and path not in unique:
            unique.append(path)
    return unique


def _read_dotenv(paths: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
    """Values from the ``.env`` files (earlier files win) and which file each came from."""
    if not paths:
        return {}, {}
    from dotenv import dotenv_values  # only imported when a .env file exists

    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for name, value in dotenv_values(path).items():
            if value is not None and name not in values:
                values[name] = value
                origin[name] = f".env file {path}"
    return values, origin


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :meth:`resolve`; it never reads files itself."""

    cache_dir: str = "cache"
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_attempts: int = 4
    total_timeout: float = 60.0
    """No new attempt starts unless it could finish within this many seconds of the first."""
    fallback: bool = True
    """Use a local folder when S3 has no credentials or cannot be reached; False raises instead."""
    fallback_dir: str = field(default_factory=_default_fallback_dir)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each setting came from: ``argument``, ``environment``, ``.env file <path>``."""

    @classmethod
    def resolve(cls, **explicit: Any) -> Settings:
        """Merge explicit arguments, the environment and ``.env`` files (in that order)."""
        names = {f.name for f in fields(cls)} - {"sources"}
        unknown = set(explicit) - names
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        explicit = {name: value for name, value in explicit.items() if value is not None}
        dotenv_values, dotenv_origin = _read_dotenv(_dotenv_paths())

        layers: list[tuple[Mapping[str, str], Mapping[str, str] | str]] = [
            (os.environ, "environment"),
            (dotenv_values, dotenv_origin),
        ]

        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, env_names in _ENV_NAMES.items():
            if name in explicit:
                values[name], sources[name] = explicit[name], "argument"
                continue
            for layer, origin in layers:
                found = next((env for env in env_names if layer.get(env)), None)
                if found:
                    values[name] = layer[found]
                    sources[name] = origin if isinstance(origin, str) else origin[found]
                    break

        # Credentials come whole from the first source that has any: keys, or else a profile.
        explicit_layer = {env: explicit[name] for name, env in _CREDENTIAL_NAMES.items() if name in explicit}
        for layer, origin in [(explicit_layer, "argument"), *layers]:
            found = next((env for env in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE") if layer.get(env)), None)
            if found:
                names = _KEY_NAMES if found == "AWS_ACCESS_KEY_ID" else {"profile": "AWS_PROFILE"}
                values.update({name: layer[env] for name, env in names.items() if layer.get(env)})
                sources["credentials"] = origin if isinstance(origin, str) else origin[found]
                break
        return cls(**_coerce(values), sources=sources)

    @property
    def credentials_source(self) -> str:
        """Human-readable origin of the credentials boto3 will use (keys are masked)."""
        if self.access_key_id:
            origin = self.sources.get("credentials", "argument")
            return f"access key {mask_secret(self.access_key_id)} from {origin}"
        if self.profile:
            return f"AWS profile {self.profile!r} (from {self.sources.get('credentials', 'argument')})"
        return "boto3's default chain (shared credentials/config files, container or instance role)"


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Turn environment strings into typed values, naming the variable on failure."""
    out = dict(values)
    for name in ("connect_timeout", "read_timeout", "total_timeout"):
        if name in out:
            out[name] = _number(float, name, out[name], minimum=0.001)
    if "max_attempts" in out:
        out["max_attempts"] = _number(int, "max_attempts", out["max_attempts"], minimum=1)
    if "fallback" in out and isinstance(out["fallback"], str):
        text = out["fallback"].strip().lower()
        if text not in _TRUE | _FALSE:
            raise ConfigError(f"JANGDOK_FALLBACK={out['fallback']!r} is not a yes/no value; use 1 or 0")
        out["fallback"] = text in _TRUE
    for name in ("cache_dir", "fallback_dir"):
        if name in out:
            out[name] = os.fspath(out[name])
    return out


def _number(kind: type, name: str, value: Any, minimum: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        env = _ENV_NAMES[name][0]
        raise ConfigError(f"setting {name} ({env}) = {value!r} must be a number >= {minimum}")
    return number
