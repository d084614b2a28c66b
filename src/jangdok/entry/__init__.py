"""The entry format: how a value becomes bytes in a store and is verified on the way back.

- :mod:`.header`: the header, how it is parsed and checked before the payload is read;
- :mod:`.sealing`: the header written: metadata as readers see it, its JSON, the bytes that seal it;
- :mod:`.format`: the payload, encoding and verified decoding;
- :mod:`.codec`: optional per-buffer compression (zstd, byte shuffling);
- :mod:`.safe`: the pickle-free serializer;
- :mod:`.signing`: signing keys and the MAC that proves who wrote an entry.

Stores below move bytes only; the cache above calls :func:`encode` and :func:`decode`.
"""

from .format import *  # noqa: F403 - the payload's public names, as listed in format.__all__
from .format import __all__ as _format_names
from .header import *  # noqa: F403 - the header's public names, as listed in header.__all__
from .header import __all__ as _header_names
from .signing import Trust

__all__ = [*_header_names, *_format_names, "Trust"]
