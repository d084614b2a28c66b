"""Secrets: credentials and signing keys kept out of ``repr``, logs, messages and pickles.

:class:`Secret` shows only its last 4 characters and is never pickled; :func:`mask_url` masks
what a URL carries of a password. Every message that quotes a credential or a URL goes through
these.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

__all__ = ["Secret", "reveal", "mask_secret", "mask_url", "came_without"]


def mask_secret(secret: str | None) -> str:
    """Show only the last 4 characters of a secret (nothing at all of a short one)."""
    if not secret:
        return "(none)"
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


# The user information of a URL (``http://user:password@host``), and of the forms a URL takes
# when mistyped (``s3:user:password@bucket``): from the scheme to the last '@' before any '/'
# (a password may hold an '@' of its own).
_USER_INFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:/*)([^/\\]+)@")


def mask_url(url: str) -> str:
    """A URL for a message, with any user name and password in it masked as one secret
    (``http://me:hunter2secret@host`` -> ``http://****cret@host``): every message that quotes
    a URL quotes it through this."""
    return _USER_INFO.sub(lambda match: f"{match.group(1)}{mask_secret(match.group(2))}@", url, count=1)


class Secret:
    """A credential that shows only its last 4 characters in ``repr``, ``str`` and tracebacks.

    The text itself is handed over only by :meth:`reveal`, at the one place that needs it
    (signing requests), so printing a settings object or a frame's locals never leaks it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"a secret must be a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({mask_secret(self._value)!r})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickle holds its text in the clear and goes wherever it is sent (a Dask scheduler,
        # a file); settings send their secrets only when told to (send_secrets).
        raise TypeError("a Secret is not pickled (its text would be written in the clear); a cache "
                        "created with send_secrets=True sends its secrets with it")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


def reveal(secret: Secret | None) -> str | None:
    """The text of an optional secret, for the client library that signs with it."""
    return None if secret is None else secret.reveal()


def came_without(secrets: str, remedy: str) -> str:
    """The message for a cache that came from another process without ``secrets`` that this
    process cannot find either; ``remedy`` says where to set them here."""
    return (f"this cache came from another process (pickled: a process pool, Dask) without its {secrets}, "
            f"which are never written into a pickle unless asked, and this process has none: {remedy}; or "
            "create the cache with send_secrets=True to send them with it (they are then written, in the "
            "clear, into every pickle of it)")
