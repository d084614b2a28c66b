"""Settings of the chapter generator, as in the original program.

``CACHE_DIR`` is a local folder (``"cache"``) or an S3 URL (``"s3://bucket/cache/"``); the
environment variable ``CACHE_DIR`` or a ``.env`` file overrides the default below, and
``python main.py --cache-dir ...`` overrides both.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jangdok import ConfigError, Settings

PROJECT_DIR = Path(__file__).resolve().parent


@functools.cache
def _configured_cache_dir() -> str | None:
    """CACHE_DIR from the environment or .env, else "cache"; None while another setting is
    malformed, so that the program starts and reports that setting when it opens the cache."""
    try:
        return Settings.resolve().cache_dir
    except ConfigError:
        return None


def __getattr__(name: str) -> Any:
    # CACHE_DIR is read on first use, not on import: importing config reads no .env file, and
    # what reading one says (a warning) reaches the program's own log handler.
    if name == "CACHE_DIR":
        return _configured_cache_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Where label caches live: "cache" (local folder) or "s3://waterandfish-s3/cache/".
CACHE_DIR: str | None  # from the environment or .env (see __getattr__)

# Input: one .npz of landmarks per video, labels.csv and chapters.json. Without real data
# the program generates a deterministic sample dataset here on its first run.
DATA_DIR = PROJECT_DIR / "data" / "sample"
# Trained models, model-info JSON and chapter_result.json, one folder per chapter.
OUTPUT_DIR = PROJECT_DIR / "output"

# Sequences: every video becomes TARGET_SEQ_LENGTH frames x 675 features
# (75 keypoints x 3 coordinates, plus velocity and acceleration).
TARGET_SEQ_LENGTH = 30

# Augmentation: copies per video and their ranges (in shoulder widths; rotation in radians).
AUGMENTATIONS_PER_VIDEO = 9
AUGMENTATION_NOISE_LEVEL = 0.05
AUGMENTATION_SCALE_RANGE = 0.2
AUGMENTATION_ROTATION_RANGE = 0.1
AUGMENTATION_SHIFT_RANGE = 0.1

# Samples per class: an upper bound (None: no bound) and a floor topped up by augmentation.
LABEL_MAX_SAMPLES_PER_CLASS: int | None = None
MIN_SAMPLES_PER_CLASS = 10

# The "None" class (no sign being made), balanced against the sign classes.
NONE_CLASS_NAME = "None"
NONE_CLASS_NOISE_LEVEL = 0.01
NONE_CLASS_AUGMENTATIONS_PER_FRAME = 3
