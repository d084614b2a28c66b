"""The entry format: how a value becomes bytes in a store and is verified on the way back.

- :mod:`.format`: the header, the payload layout, encoding and verified decoding;
- :mod:`.codec`: optional per-buffer compression (zstd, byte shuffling);
- :mod:`.safe`: the pickle-free serializer;
- :mod:`.signing`: signing keys and the MAC that proves who wrote an entry.

Stores below move bytes only; the cache above calls :func:`encode` and :func:`decode`.
"""

from .format import *  # noqa: F403 - the format's public names, as listed in format.__all__
from .format import __all__ as _format_names
from .signing import Trust

__all__ = [*_format_names, "Trust"]
