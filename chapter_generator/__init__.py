"""Data pipeline of the sign-language chapter generator, in plain numpy.

Raw hand and pose landmarks per video -> fixed-length feature sequences per
label (with augmented copies) -> one small classifier per chapter of labels,
with an extra "None" class for not signing. Caching is left to the caller:
``process_label`` is the expensive, cacheable step, keyed by
``cache_file_name`` and validated with ``params_fingerprint``.
"""

from .dataset import load_chapters, load_labels, load_landmarks
from .features import augment_landmarks, extract_sequence, make_none_class, process_label
from .model import (
    ChapterDataset,
    ChapterModel,
    build_chapter_dataset,
    load_model,
    predict,
    predict_proba,
    save_model,
    save_model_info,
    train_chapter,
)
from .params import PipelineParams, cache_file_name, label_rng, params_fingerprint, safe_label
from .sample_data import ensure_sample_dataset, generate_sample_dataset

__all__ = [
    "ChapterDataset",
    "ChapterModel",
    "PipelineParams",
    "augment_landmarks",
    "build_chapter_dataset",
    "cache_file_name",
    "ensure_sample_dataset",
    "extract_sequence",
    "generate_sample_dataset",
    "label_rng",
    "load_chapters",
    "load_labels",
    "load_landmarks",
    "load_model",
    "make_none_class",
    "params_fingerprint",
    "predict",
    "predict_proba",
    "process_label",
    "safe_label",
    "save_model",
    "save_model_info",
    "train_chapter",
]
