"""jangdok (장독): a cache for expensive Python results in a local folder or any S3 bucket.

    from jangdok import Cache
    cache = Cache("s3://my-bucket/cache/")      # or Cache("cache"), or Cache() for $CACHE_DIR
    value = cache.get("label_data.pkl")
    if value is None:
        value = compute()
        cache.put("label_data.pkl", value, metadata={"seq": 30})

Everything public is exported here. Importing has no side effects: no network, no file reads,
no output; logging goes to ``logging.getLogger("jangdok")``.
"""

from . import errors
from .cache import Cache, Entry, EntryInfo, PruneReport, Stats, TierStats, Verdict
from .canonical import stable_hash
from .entry import Progress
from .errors import *  # noqa: F403 - the hierarchy is public, as listed in errors.__all__
from .location import Location, is_s3_path, join, parse_location
from .memoize import Memoized
from .paths import exists, load, remove, save, stat
from .settings import Secret, Settings, mask_secret

__version__ = "0.2.0"

__all__ = [
    "Cache",
    "Entry",
    "EntryInfo",
    "TierStats",
    "Stats",
    "PruneReport",
    "Verdict",
    "Progress",
    "Memoized",
    "stable_hash",
    "Settings",
    "Secret",
    "Location",
    "parse_location",
    "is_s3_path",
    "join",
    "load",
    "save",
    "exists",
    "remove",
    "stat",
    "mask_secret",
    *errors.__all__,
]
