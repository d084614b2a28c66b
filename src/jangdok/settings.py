"""Configuration: where the cache lives, how to reach S3, and how hard to try.

Every setting is resolved in one order, documented in the README:

1. explicit arguments (``Cache(..., endpoint_url=...)``, ``Settings.resolve(...)``);
2. environment variables;
3. ``.env`` files: the project folder (the running script's folder), then the current folder.
   They never override variables already set, and are read only when a cache is first used.
   Values are taken literally (``${VAR}`` is not expanded, so a file cannot copy a secret from
   the environment into another setting), and a line that cannot be parsed is an error naming
   the file and line rather than a setting silently left out;
4. for credentials only: the AWS shared config/credentials files and the rest of boto3's chain.

Credentials come whole from *one* source: the first of those that holds any of access key,
secret, session token or profile. An incomplete source is not topped up from the next one, so a
key from the environment is never paired with a secret from a ``.env`` file or an argument
(the S3 store then reports what is missing).

The endpoint is trusted only as far as the credentials it receives. An endpoint named in the
current folder's ``.env`` (when that folder is not the project folder) comes from wherever you
happen to run a command, such as a cloned repository; it is refused unless that same file also
holds the access keys, so your own credentials (from the environment, arguments, a profile,
another file or boto3's chain) are never sent to a server it chose. An endpoint from the
arguments, the environment or the project ``.env`` is used with any credentials.

Settings travel to other processes (a pickled :class:`~jangdok.cache.Cache`) as the values
resolved here, which the receiver checks but does not read again from its own environment; the secrets
(keys, token, signing keys) only with ``send_secrets=True``. Otherwise the receiver finds its
own by the order above, from its environment on (:meth:`Settings.completed`), and an endpoint
that came from a ``.env`` file with that file's keys is used there only with keys from that
same file.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, CredentialsError
from .secret import Secret, came_without, mask_secret, mask_url, reveal
from .sources import (
    CREDENTIAL_NAMES,
    ENV_NAMES,
    KEY_NAMES,
    Layer,
    check_endpoint,
    check_endpoint_trust,
    credential_layer,
    credentials_from,
    dotenv_layers,
    environment_variables,
)

__all__ = [
    "Settings",
    "Secret",
    "mask_secret",
    "mask_url",
    "reveal",
    "came_without",
    "parse_size",
    "environment_variables",
    "MAX_LEASE_SECONDS",
    "MIN_PART_SIZE",
]

log = logging.getLogger("jangdok")

_SECRET_FIELDS = (*KEY_NAMES, "signing_keys")
_RECEIVED_FIELDS = ("received", "withheld", "signing_key_ids")
_SENT = " in the process that sent this cache"
"""Added to the origins in :attr:`Settings.sources` of settings that travelled, so that a
message in the receiver says whose environment or ``.env`` file a value came from."""
_TIMEOUTS = ("connect_timeout", "read_timeout", "total_timeout")
_FLAGS = ("fallback", "durable", "mmap", "allow_legacy", "delete_untrusted")
COMPRESSIONS = ("none", "zstd")
SERIALIZERS = ("pickle", "safe")
MIN_SIGNING_KEY_LENGTH = 16
_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_BYTE_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


MAX_LEASE_SECONDS = 3600.0
"""The longest compute lease: renewed every 20 minutes, and a dead owner's key waits an hour. A
lease recording a longer lifetime was not written by jangdok, and is not honoured."""
MIN_PART_SIZE = 5 * 2**20
"""S3's floor for every multipart part but the last."""
MAX_CONCURRENCY = 256


def parse_size(value: int | str) -> int:
    """Bytes in ``123``, ``500MB``, ``10GB``, ``2GiB`` (decimal units, and binary with ``i``)."""
    number: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        match = _BYTE_SIZE.match(value.lower())
        if match and match.group(2) in _BYTE_UNITS:
            number = float(match.group(1)) * _BYTE_UNITS[match.group(2)]
    if number is None or number < 0:
        raise ValueError(f"{value!r} is not a size; use a number of bytes or e.g. 500MB, 10GB, 2GiB")
    return int(number)


def _default_fallback_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "jangdok", "fallback")


def _seconds(value: float, round_up: bool = False) -> str:
    """A duration for a message, to the millisecond; rounded up when it is a lower bound to meet."""
    if round_up:
        value = math.ceil(value * 1000 - 1e-6) / 1000
    return f"{value:.3f}".rstrip("0").rstrip(".")


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :meth:`resolve`; it never reads files itself.

    Values are checked on construction too, so settings built directly fail as early.
    """

    cache_dir: str = "cache"
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_attempts: int = 4
    total_timeout: float = 60.0
    """No new attempt starts unless it could finish within this many seconds of the first."""
    fallback: bool = True
    """Use a local folder when S3 has no credentials or cannot be reached; False raises instead."""
    fallback_dir: str = field(default_factory=_default_fallback_dir)
    durable: bool = False
    """fsync each written file and its folder, so an entry survives power loss; off by default for a
    cache, where a lost entry is recomputed."""
    mmap: bool = False
    """Load local entries by mapping their files instead of reading them: several times faster
    for large arrays, which then share pages with the file (copy-on-write). Opt-in, because a
    program that truncates the file in place (not jangdok, which replaces files) makes later
    access to those arrays crash the process with SIGBUS. With signing keys entries are read,
    never mapped: a map shows later writes to the file, so the bytes unpickled could differ
    from the bytes whose signature was checked."""
    compression: str = "none"
    """``zstd`` compresses entries as they are written (numeric arrays byte-shuffled first),
    skipping a buffer when a sample of it shrinks by less than 10%; ``none`` stores them as is.
    Readers follow what each entry's header says, whatever this setting."""
    ttl: float | None = None
    """Seconds an entry stays a hit after it is written, unless ``put`` says otherwise;
    ``None``: entries never expire."""
    local_dir: str | None = None
    """A folder for a read-through local tier in front of an S3 cache (copies of the entries
    read or written, revalidated by ETag); ``None``: every read goes to S3."""
    local_max_bytes: int = 10 * 10**9
    """The local tier's size bound; the least recently used copies are evicted past it.
    Accepts a count of bytes or a size such as ``500MB`` or ``10GiB``."""
    local_max_entry_bytes: int | None = None
    """Entries larger than this are not copied to the local tier and are read from S3 each
    time ("small caches local, large caches on S3"). ``None``: an eighth of ``local_max_bytes``,
    so one entry cannot evict much of the tier."""
    local_trust_seconds: float = 5.0
    """How long a local copy is served without asking S3 whether it changed; 0 revalidates on
    every read (one request without a body when nothing changed)."""
    lease_seconds: float = 30.0
    """How long a compute lease lives without renewal; its owner renews it every third of
    that, and a lease not renewed for this long is taken over (its owner died)."""
    wait_timeout: float = 3600.0
    """How long ``get_or_compute`` waits for another process's computation before raising."""
    signing_keys: tuple[Secret, ...] = ()
    """Keys to sign entries with (the first) and to verify them with (any). With keys, entries
    that are unsigned, signed with another key, or tampered with are refused before unpickling.
    The environment variable takes several, separated by commas or spaces."""
    allow_legacy: bool = False
    """With signing keys: still load the original program's plain pickles, which carry no
    signature (and so run whatever code their writer chose)."""
    delete_untrusted: bool = False
    """Delete refused (untrusted) entries instead of keeping them for the keys that made them."""
    serializer: str = "pickle"
    """``safe`` stores plain data (numbers, strings, bytes, lists, tuples, dicts with str keys,
    numpy arrays) without pickle, so loading it can never run code; other values are refused
    at ``put``. ``pickle`` stores any picklable value. Readers follow each entry's header."""
    concurrency: int = 16
    """Requests one call keeps in flight at once: the ranges of a large load, the parts of a
    large save, the entries of a batch (``get_many``, ``put_many``), the entries a command
    inspects. On a link with 10-30 ms round trips this, not bandwidth, bounds a batch's speed."""
    part_size: int = 8 * 2**20
    """Entries larger than this travel in parallel ranged GETs (loads) and multipart parts
    (saves) of this size; smaller ones in one request. At least 5 MiB (S3's smallest part).
    Accepts a count of bytes or a size such as ``16MiB``."""
    send_secrets: bool = False
    """Write the credentials and signing keys into the pickle when the cache travels to another
    process (a process pool, Dask, ``pickle.dumps``). Off: they are left out, and the receiving
    process finds its own (environment, ``.env`` files, AWS profile or role), or raises an error
    saying the cache came without them. Taken from the arguments only: neither the environment
    nor a ``.env`` file can make secrets travel."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each setting came from: ``argument``, ``environment``, ``.env file <path>``."""
    received: bool = field(default=False, compare=False, repr=False)
    """Set by unpickling: these settings came from another process, and this one has not yet
    looked for the secrets that did not travel (:meth:`completed` does)."""
    withheld: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Set by unpickling: the secrets the sending process held but did not send
    (``"credentials"``, ``"signing keys"``), and that this process has not found. (Credentials
    boto3's chain found for the sender are named by :meth:`with_chain_credentials`.)"""
    signing_key_ids: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Set by unpickling: the public ids of the signing keys that stayed behind (the ids every
    signed entry carries), which the keys this process finds must match."""

    def __post_init__(self) -> None:
        if not isinstance(self.send_secrets, bool):
            raise ConfigError(f"setting send_secrets must be True or False, got {self.send_secrets!r}")
        self._set("withheld", tuple(self.withheld))
        self._set("signing_key_ids", tuple(self.signing_key_ids))
        for name in KEY_NAMES:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                self._set(name, Secret(value))
        for name in ("cache_dir", "fallback_dir"):
            self._set(name, os.fspath(getattr(self, name)))
        if self.local_dir is not None:
            self._set("local_dir", os.fspath(self.local_dir) or None)
        self._set("local_max_bytes", self._byte_size("local_max_bytes"))
        if self.local_max_entry_bytes is None:
            self._set("local_max_entry_bytes", self.local_max_bytes // 8)
        else:
            self._set("local_max_entry_bytes", self._byte_size("local_max_entry_bytes"))
        self._set("local_trust_seconds", self._number("local_trust_seconds", float, minimum=0))
        self._set("lease_seconds", self._number("lease_seconds", float, minimum=0.1, maximum=MAX_LEASE_SECONDS))
        self._set("wait_timeout", self._number("wait_timeout", float, minimum=0))
        self._set("signing_keys", self._signing_keys())
        self._set("serializer", self._choice("serializer", SERIALIZERS))
        for name in _FLAGS:
            self._set(name, self._flag(name))
        for name in _TIMEOUTS:
            self._set(name, self._number(name, float, minimum=0.001))
        self._set("max_attempts", self._number("max_attempts", int, minimum=1))
        self._set("concurrency", self._number("concurrency", int, minimum=1, maximum=MAX_CONCURRENCY))
        self._set("part_size", self._byte_size("part_size"))
        if self.part_size < MIN_PART_SIZE:
            raise ConfigError(f"setting part_size (JANGDOK_PART_SIZE) = {self.part_size} (from "
                              f"{self.sources.get('part_size', 'argument')}) must be at least {MIN_PART_SIZE} "
                              "bytes (5 MiB), the smallest part S3 accepts")
        if self.ttl is not None:
            self._set("ttl", self._number("ttl", float, minimum=0.001))
        self._set("compression", self._choice("compression", COMPRESSIONS))
        if self.endpoint_url == "":
            self._set("endpoint_url", None)
        if self.endpoint_url is not None:
            check_endpoint(self.endpoint_url, self._where("endpoint_url"))
        self._check_retry_budget()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only normalised here, before anyone sees it

    def _where(self, name: str) -> str:
        return f"setting {name}, {' or '.join(ENV_NAMES[name])}, from {self.sources.get(name, 'argument')}"

    def _flag(self, name: str) -> bool:
        value = getattr(self, name)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _TRUE | _FALSE:
            raise ConfigError(
                f"setting {name} ({ENV_NAMES[name][0]}) = {value!r} (from {self.sources.get(name, 'argument')}) "
                "is not a yes/no value; use 1/0, true/false, yes/no or on/off"
            )
        return text in _TRUE

    def _number(self, name: str, kind: type, minimum: float, maximum: float = math.inf) -> Any:
        value = getattr(self, name)
        try:
            # A fractional attempt count would be truncated silently; NaN and inf would disable the checks.
            number = None if kind is int and isinstance(value, float) and not value.is_integer() else kind(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or not math.isfinite(number) or not minimum <= number <= maximum:
            what = "a whole number" if kind is int else "a finite number of seconds"
            bounds = f">= {minimum:g}" + (f" and <= {maximum:g}" if maximum < math.inf else "")
            raise ConfigError(
                f"setting {name} ({ENV_NAMES[name][0]}) = {value!r} (from {self.sources.get(name, 'argument')}) "
                f"must be {what} {bounds}"
            )
        return number

    def _choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = str(getattr(self, name)).strip().lower()
        if value not in choices:
            raise ConfigError(f"setting {name} ({ENV_NAMES[name][0]}) = {getattr(self, name)!r} "
                              f"(from {self.sources.get(name, 'argument')}) must be one of {', '.join(choices)}")
        return value

    def _signing_keys(self) -> tuple[Secret, ...]:
        value: Any = self.signing_keys
        if isinstance(value, (str, Secret)):
            text = value.reveal() if isinstance(value, Secret) else value
            value = text.replace(",", " ").split()
        keys = tuple(Secret(key) for key in value)
        short = [index for index, key in enumerate(keys, 1) if len(key.reveal()) < MIN_SIGNING_KEY_LENGTH]
        if short:
            raise ConfigError(
                f"setting signing_keys (JANGDOK_SIGNING_KEY, from {self.sources.get('signing_keys', 'argument')}): "
                f"key {', '.join(map(str, short))} is shorter than {MIN_SIGNING_KEY_LENGTH} characters, too easy "
                "to guess; make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""
            )
        return keys

    def _byte_size(self, name: str) -> int:
        value = getattr(self, name)
        try:
            return parse_size(value)
        except ValueError:
            raise ConfigError(
                f"setting {name} ({ENV_NAMES[name][0]}) = {value!r} (from {self.sources.get(name, 'argument')}) "
                "must be a number of bytes, or a size such as 500MB, 10GB or 2GiB"
            ) from None

    def _check_retry_budget(self) -> None:
        """Refuse a deadline that leaves no room for the retries ``max_attempts`` promises.

        The retry policy starts a new attempt only if it could still finish (connect + read
        timeout) before ``total_timeout``, so after one stalled attempt a retry needs twice that.
        """
        attempt = self.connect_timeout + self.read_timeout
        needed = 2 * attempt
        if self.max_attempts <= 1 or self.total_timeout >= needed - 1e-9:
            return
        raise ConfigError(
            f"total_timeout (JANGDOK_TOTAL_TIMEOUT) = {_seconds(self.total_timeout)} s leaves no time for a retry, "
            f"so max_attempts (JANGDOK_MAX_ATTEMPTS) = {self.max_attempts} would silently mean 1: after one "
            "stalled attempt of up to connect_timeout + read_timeout = "
            f"{_seconds(self.connect_timeout)} + {_seconds(self.read_timeout)} = {_seconds(attempt)} s, another "
            "would overrun the deadline, so none starts. Either raise JANGDOK_TOTAL_TIMEOUT to at least "
            f"{_seconds(needed, round_up=True)}, or lower JANGDOK_CONNECT_TIMEOUT and JANGDOK_READ_TIMEOUT so "
            f"that twice their sum is at most {_seconds(self.total_timeout)} (or set JANGDOK_MAX_ATTEMPTS=1 to "
            "make a single attempt on purpose)."
        )

    @classmethod
    def resolve(cls, **explicit: Any) -> Settings:
        """Merge explicit arguments, the environment and ``.env`` files (in that order)."""
        names = {f.name for f in fields(cls)} - {"sources", *_RECEIVED_FIELDS}
        unknown = set(explicit) - names
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        send_secrets = explicit.pop("send_secrets", None)  # an argument only, never from a file
        variables = {**{name: env[0] for name, env in ENV_NAMES.items()}, **CREDENTIAL_NAMES}
        arguments = {variables[name]: value for name, value in explicit.items() if value is not None}
        layers = [Layer("argument", arguments), Layer("environment", os.environ), *dotenv_layers()]

        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        endpoint: tuple[Layer, str] | None = None
        for name, env_names in ENV_NAMES.items():
            for layer in layers:
                variable = layer.find(env_names)
                if variable:
                    values[name], sources[name] = layer.values[variable], layer.origin
                    if name == "endpoint_url":
                        endpoint = (layer, variable)
                    break

        credentials = credential_layer(layers)
        if credentials is not None:
            values.update(credentials_from(credentials))
            sources["credentials"] = credentials.origin
        if endpoint is not None:
            layer, variable = endpoint
            check_endpoint(values["endpoint_url"], layer.where(variable, "endpoint_url"))
            check_endpoint_trust(layer, variable, credentials)
        return cls(**values, send_secrets=False if send_secrets is None else send_secrets, sources=sources)

    @property
    def credentials_source(self) -> str:
        """Human-readable origin of the credentials boto3 will use (keys are masked)."""
        origin = self.sources.get("credentials", "argument")
        if self.access_key_id:
            return f"access key {mask_secret(reveal(self.access_key_id))} from {origin}"
        if self.secret_access_key or self.session_token:
            held = "secret access key" if self.secret_access_key else "session token"
            return f"a {held} without an access key id, from {origin}"
        if self.profile:
            return f"AWS profile {self.profile!r} (from {origin})"
        return "boto3's default chain (shared credentials/config files, container or instance role)"

    # -- travelling to other processes --------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the values checked here, which the receiving process checks again but does
        not read from its own environment; without the secrets unless ``send_secrets`` (see
        :meth:`completed`). Folders are sent absolute, as this process's working folder names
        them; a default that depends on the machine (``fallback_dir``) is left for the receiver
        to make."""
        state = {item.name: getattr(self, item.name) for item in fields(self) if item.name not in _SECRET_FIELDS}
        state["sources"] = {name: origin if origin.endswith(_SENT) else origin + _SENT
                            for name, origin in self.sources.items()}
        state["received"] = True
        held = [name for name, present in (("credentials", any(getattr(self, key) for key in KEY_NAMES)),
                                           ("signing keys", bool(self.signing_keys))) if present]
        if self.send_secrets:
            state.update({name: reveal(getattr(self, name)) for name in KEY_NAMES})
            state["signing_keys"] = tuple(key.reveal() for key in self.signing_keys)
        else:
            state["withheld"] = tuple(dict.fromkeys((*self.withheld, *held)))
            state["signing_key_ids"] = _key_ids(self.signing_keys) or self.signing_key_ids
        from .location import parse_location  # location imports this module

        location = parse_location(self.cache_dir)
        if location.kind == "local":
            state["cache_dir"] = os.path.abspath(location.root)
        if self.local_dir is not None:
            state["local_dir"] = os.path.abspath(self.local_dir)
        if self.fallback_dir == _default_fallback_dir():
            del state["fallback_dir"]
        else:
            state["fallback_dir"] = os.path.abspath(self.fallback_dir)
        return _arrived, (state,)

    def with_chain_credentials(self) -> Settings:
        """These settings, from a process whose S3 store opened with credentials that boto3's
        chain found (the AWS files, a role) and the settings do not hold: those never travel,
        even with ``send_secrets``, so a receiver that finds none of its own raises
        :class:`~jangdok.errors.CredentialsError` rather than falling back (see :meth:`completed`)."""
        if self.profile or any(getattr(self, key) for key in KEY_NAMES) or "credentials" in self.withheld:
            return self
        return replace(self, withheld=(*self.withheld, "credentials"))

    def __copy__(self) -> Settings:
        return self  # frozen: a copy in this process keeps its secrets

    def __deepcopy__(self, memo: dict[int, Any]) -> Settings:
        return self

    def completed(self) -> Settings:
        """These settings, if they arrived from another process, with what did not travel
        found in this one by the rules of :meth:`resolve` (the environment, then ``.env``
        files; arguments were the sender's): the signing keys the sender held (none here is
        an error), and for an S3 cache the credentials, when none travelled (the sender's
        were withheld, or it had none; an AWS profile it used travels, and is used). Withheld
        credentials found nowhere here stay named in :attr:`withheld`, for the S3 client to
        try boto3's chain (a profile, a role) and then raise
        :class:`~jangdok.errors.CredentialsError` rather than fall back. Settings made in this
        process are returned as they are."""
        if not self.received:
            return self
        from .location import is_s3_path  # location imports this module

        layers = [Layer("environment", os.environ), *dotenv_layers()]
        done = object.__new__(Settings)
        done.__dict__.update(self.__dict__)
        sources = dict(self.sources)
        done._set("sources", sources)
        missing = []
        if "signing keys" in self.withheld:
            variables = ENV_NAMES["signing_keys"]
            layer = next((layer for layer in layers if layer.find(variables)), None)
            if layer is None:
                raise CredentialsError(came_without("signing keys", f"set {variables[0]} (the same keys) in its "
                                                                    "environment or a .env file"))
            done._set("signing_keys", layer.values[variables[0]])
            sources["signing_keys"] = layer.origin
            done._set("signing_keys", done._signing_keys())
            if self.signing_key_ids and _key_ids(done.signing_keys) != self.signing_key_ids:
                # This process would sign with a key the sender's readers refuse, and refuse theirs.
                raise CredentialsError(
                    f"this cache came from another process without its signing keys, and the ones found here "
                    f"({variables[0]} in {layer.origin}: key ids {', '.join(_key_ids(done.signing_keys))}) are "
                    f"not the ones the process that sent it holds (key ids {', '.join(self.signing_key_ids)}); "
                    f"set {variables[0]} to the same keys, in the same order, or create the cache with "
                    "send_secrets=True to send them with it")
            done._set("signing_key_ids", ())
        if is_s3_path(self.cache_dir) and not (self.profile or any(getattr(self, key) for key in KEY_NAMES)):
            sent_from = self.sources.get("credentials")
            sources.pop("credentials", None)
            layer = credential_layer(layers)
            if layer is not None:
                self._check_endpoint_bound(sent_from, layer)
                for name, value in credentials_from(layer).items():
                    done._set(name, Secret(value) if name in KEY_NAMES else value)
                sources["credentials"] = layer.origin
            elif "credentials" in self.withheld:
                missing.append("credentials")
        done._set("received", False)
        done._set("withheld", tuple(missing))
        return done

    def _check_endpoint_bound(self, sent_from: str | None, layer: Layer) -> None:
        """Refuse this process's credentials for an endpoint that a ``.env`` file gave the
        sender together with its own keys: such a file may be the current folder's, trusted
        only with the keys it brings (see the module's notes), and the sender cannot say."""
        origin = self.sources.get("endpoint_url", "")
        if not origin.startswith(".env file ") or origin != sent_from or layer.origin + _SENT == origin:
            return
        raise ConfigError(
            f"the endpoint {mask_url(self.endpoint_url or '')} came from {origin} together with the access keys "
            f"there, which that process did not send; it is not used with this process's credentials (from "
            f"{layer.origin}), which would go to a server that file chose. Pass "
            "endpoint_url=... or set AWS_ENDPOINT_URL in the environment, or create the cache with "
            "send_secrets=True"
        )


def _key_ids(keys: tuple[Secret, ...]) -> tuple[str, ...]:
    if not keys:
        return ()
    from .entry.signing import key_id  # the entry layer imports this module

    return tuple(key_id(key.reveal().encode("utf-8")) for key in keys)


def _arrived(state: Mapping[str, Any]) -> Settings:
    """Settings unpickled: the sender's values, not read again here (a setting read from this
    process's environment would make another cache) but checked again, as a process running
    another jangdok may refuse them or not know a setting; what the state lacks (a setting the
    sender did not know, the default ``fallback_dir``) is the default, made here."""
    unknown = sorted(set(state) - {item.name for item in fields(Settings)})
    if unknown:
        from . import __version__  # the package imports this module

        raise ConfigError(
            f"this cache came from another process with the setting(s) {', '.join(unknown)}, unknown to this "
            f"jangdok ({__version__}): that process runs another version; install the same version of jangdok "
            "in every process the cache is sent to")
    return Settings(**state)
