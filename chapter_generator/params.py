"""Pipeline parameters and the names/fingerprints a per-label cache keys on."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bump whenever extraction or augmentation changes its output, so that entries
# cached by an older version stop matching the fingerprint.
FEATURE_VERSION = 1

# Labels come from user data; bounding the stem keeps a Korean label (3 bytes a
# character in UTF-8) well under the usual 255-byte file-name limit.
_MAX_LABEL_CHARS = 60

# The fields that change what process_label returns; training fields are left
# out so that retuning the model never invalidates cached label sequences.
_PROCESSING_FIELDS = (
    "target_seq_length",
    "augmentations_per_video",
    "augmentation_noise_level",
    "augmentation_scale_range",
    "augmentation_rotation_range",
    "augmentation_shift_range",
    "augmentation_time_warp_range",
    "label_max_samples_per_class",
    "min_samples_per_class",
    "seed",
)


@dataclass(frozen=True)
class PipelineParams:
    """Everything that shapes processing and training.

    Augmentation magnitudes are in shoulder widths (rotation in radians), so
    they mean the same thing however the signer was framed by the camera.
    """

    target_seq_length: int = 30
    augmentations_per_video: int = 9
    augmentation_noise_level: float = 0.05
    augmentation_scale_range: float = 0.2
    augmentation_rotation_range: float = 0.1
    augmentation_shift_range: float = 0.1
    augmentation_time_warp_range: float = 0.2
    label_max_samples_per_class: int | None = None
    min_samples_per_class: int = 10
    none_class_name: str = "None"
    none_class_noise_level: float = 0.01
    none_class_augmentations_per_frame: int = 3
    seed: int = 0
    hidden_units: int = 32
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-3
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.target_seq_length < 3:
            # Acceleration needs two differences, so shorter makes no sense.
            raise ValueError(f"target_seq_length must be >= 3, got {self.target_seq_length}")
        for name in ("augmentations_per_video", "min_samples_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("none_class_augmentations_per_frame", "hidden_units", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        maximum = self.label_max_samples_per_class
        if maximum is not None and not self.min_samples_per_class <= maximum:
            raise ValueError(
                f"label_max_samples_per_class ({maximum}) must be >= "
                f"min_samples_per_class ({self.min_samples_per_class})"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def params_fingerprint(params: PipelineParams) -> dict[str, Any]:
    """The settings a cached process_label result must have been built with to be reused.

    Assumes the result came from ``process_label(paths, params,
    label_rng(label, params))``, hence the seed. It does not cover the label's
    video files: a cache should also key on those (paths, sizes or hashes).
    """
    fingerprint: dict[str, Any] = {name: getattr(params, name) for name in _PROCESSING_FIELDS}
    fingerprint["feature_version"] = FEATURE_VERSION
    return fingerprint


def safe_label(label: str) -> str:
    """A file-name-safe stand-in for ``label`` that differs for different labels.

    Letters (Hangul included), digits, ``-`` and ``_`` are kept; anything else
    becomes ``_``. Because that mapping is lossy ("a b" and "a/b" would both
    give "a_b"), a short hash of the original is appended whenever the label
    had to be changed, so two labels never share a cache file.
    """
    kept = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
    if kept == label and 0 < len(label) <= _MAX_LABEL_CHARS:
        return label
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:8]
    return f"{kept[:_MAX_LABEL_CHARS]}-{digest}" if kept else digest


def cache_file_name(label: str, params: PipelineParams) -> str:
    """``{safe_label}_seq{T}_aug{A}_max{M}_min{m}.pkl`` for one label's sequences."""
    return (
        f"{safe_label(label)}_seq{params.target_seq_length}"
        f"_aug{params.augmentations_per_video}"
        f"_max{params.label_max_samples_per_class}"
        f"_min{params.min_samples_per_class}.pkl"
    )


def label_rng(label: str, params: PipelineParams) -> np.random.Generator:
    """A generator that depends only on the seed and the label.

    Seeding per label (instead of sharing one generator across labels) makes a
    label's sequences independent of which other labels were processed before
    it, which is what lets them be cached and reused individually.
    """
    return np.random.default_rng([params.seed, zlib.crc32(label.encode("utf-8"))])
