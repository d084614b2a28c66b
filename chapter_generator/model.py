"""Per-chapter classifier: a one-hidden-layer numpy MLP on time-pooled features."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .dataset import write_npz
from .features import N_COORDS, make_none_class
from .params import PipelineParams

# Thirds of the sequence: enough to tell "up then down" from "down then up",
# which whole-sequence statistics cannot.
_SEGMENTS = 3
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPSILON = 1e-8
_WEIGHT_NAMES = ("w_hidden", "b_hidden", "w_out", "b_out")


class ChapterDataset(NamedTuple):
    X: np.ndarray  # (samples, T, 675) float32
    y: np.ndarray  # (samples,) class indices into class_names
    groups: np.ndarray  # (samples,) source id: samples sharing one are never split
    class_names: list[str]


@dataclasses.dataclass(frozen=True, eq=False)
class ChapterModel:
    class_names: tuple[str, ...]
    input_shape: tuple[int, int]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    weights: tuple[np.ndarray, ...]  # in _WEIGHT_NAMES order
    params: dict[str, Any]  # the PipelineParams it was trained with


def build_chapter_dataset(
    sequences_by_label: Mapping[str, Sequence[np.ndarray]],
    videos_per_label: Mapping[str, int],
    params: PipelineParams,
    rng: np.random.Generator,
) -> ChapterDataset:
    """Stack a chapter's label sequences and add a None class of the average class size.

    ``sequences_by_label`` holds process_label outputs; ``videos_per_label``
    the number of videos each came from, which (given process_label's
    round-robin order) tells which sequences are copies of the same video, so
    the held-out split can keep all copies of a video on one side.
    """
    if params.none_class_name in sequences_by_label:
        raise ValueError(f"label {params.none_class_name!r} clashes with the None class name")
    if not sequences_by_label or not all(len(label_sequences) for label_sequences in sequences_by_label.values()):
        raise ValueError("every label of a chapter needs at least one sequence")
    sequences: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    next_group = 0
    for index, (label, label_sequences) in enumerate(sequences_by_label.items()):
        sequences.extend(label_sequences)
        labels.append(np.full(len(label_sequences), index))
        groups.append(next_group + np.arange(len(label_sequences)) % videos_per_label[label])
        next_group += videos_per_label[label]
    none_count = round(len(sequences) / len(sequences_by_label))
    sequences.extend(make_none_class(sequences, none_count, params, rng))
    labels.append(np.full(none_count, len(sequences_by_label)))
    groups.append(next_group + np.arange(none_count) // params.none_class_augmentations_per_frame)
    return ChapterDataset(
        np.stack(sequences).astype(np.float32, copy=False),
        np.concatenate(labels),
        np.concatenate(groups),
        [*sequences_by_label, params.none_class_name],
    )


def pooled_features(X: np.ndarray) -> np.ndarray:
    """(samples, T, 675) sequences -> (samples, 2025) time-pooled features.

    Mean and standard deviation over time of every feature, plus the mean
    position in each third of the sequence.
    """
    mean = X.mean(axis=1)
    # E[x^2] - E[x]^2 via einsum: X.std would allocate temporaries as big as X.
    std = np.sqrt(np.maximum(np.einsum("ntf,ntf->nf", X, X) / X.shape[1] - mean * mean, 0))
    thirds = [part.mean(axis=1) for part in np.array_split(X[:, :, :N_COORDS], _SEGMENTS, axis=1)]
    return np.concatenate([mean, std, *thirds], axis=1)


def _forward(weights: Sequence[np.ndarray], features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden activations and class probabilities."""
    w_hidden, b_hidden, w_out, b_out = weights
    hidden = np.maximum(features @ w_hidden + b_hidden, 0)
    logits = hidden @ w_out + b_out
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return hidden, exp / exp.sum(axis=1, keepdims=True)


def _split(
    y: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, holding out ``fraction`` of each class's groups.

    Every class with at least two groups has at least one on each side.
    """
    test = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        in_class = y == cls
        class_groups = np.unique(groups[in_class])
        n_test = min(max(round(fraction * len(class_groups)), 1), len(class_groups) - 1)
        test |= in_class & np.isin(groups, rng.choice(class_groups, n_test, replace=False))
    return np.flatnonzero(~test), np.flatnonzero(test)


def _accuracy(correct: np.ndarray) -> float | None:
    return float(correct.mean()) if len(correct) else None


def train_chapter(
    X: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    params: PipelineParams,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[ChapterModel, dict[str, Any]]:
    """Train on a stratified split; metrics include train and held-out accuracy.

    ``groups`` (e.g. from build_chapter_dataset) keeps augmented copies of a
    video out of the test set when the video is in the training set, without
    which the held-out accuracy is inflated; without ``groups`` every sample
    is its own group.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim != 3 or len(X) != len(y):
        raise ValueError(f"expected X of shape (samples, T, features) and matching y, got {X.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= len(class_names):
        raise ValueError(f"class indices must lie in [0, {len(class_names)})")
    train, test = _split(y, np.arange(len(y)) if groups is None else np.asarray(groups), params.test_fraction, rng)

    features = pooled_features(X)
    mean = features[train].mean(axis=0)
    # Constant features (e.g. a hand never seen in this chapter) must not divide by zero.
    scale = np.maximum(features[train].std(axis=0), 1e-6)
    features = (features - mean) / scale

    n_inputs, n_hidden, n_classes = features.shape[1], params.hidden_units, len(class_names)
    weights = [
        (rng.standard_normal((n_inputs, n_hidden)) * np.sqrt(2 / n_inputs)).astype(np.float32),
        np.zeros(n_hidden, dtype=np.float32),
        (rng.standard_normal((n_hidden, n_classes)) * np.sqrt(1 / n_hidden)).astype(np.float32),
        np.zeros(n_classes, dtype=np.float32),
    ]
    first_moments = [np.zeros_like(w) for w in weights]
    second_moments = [np.zeros_like(w) for w in weights]
    beta1, beta2 = _ADAM_BETAS
    step = 0
    for _ in range(params.epochs):
        order = rng.permutation(train)
        for start in range(0, len(order), params.batch_size):
            batch = order[start : start + params.batch_size]
            batch_features = features[batch]
            hidden, probs = _forward(weights, batch_features)
            # Softmax cross-entropy gradient with respect to the logits.
            probs[np.arange(len(batch)), y[batch]] -= 1
            probs /= len(batch)
            grad_hidden = (probs @ weights[2].T) * (hidden > 0)
            grads = [batch_features.T @ grad_hidden, grad_hidden.sum(axis=0), hidden.T @ probs, probs.sum(axis=0)]
            step += 1
            step_size = params.learning_rate * np.sqrt(1 - beta2**step) / (1 - beta1**step)
            for w, g, m, v in zip(weights, grads, first_moments, second_moments, strict=True):
                m += (1 - beta1) * (g - m)
                v += (1 - beta2) * (g * g - v)
                # Decoupled weight decay (AdamW), on weight matrices only.
                if w.ndim == 2:
                    w -= params.learning_rate * params.weight_decay * w
                w -= step_size * m / (np.sqrt(v) + _ADAM_EPSILON)

    model = ChapterModel(
        class_names=tuple(class_names),
        input_shape=(X.shape[1], X.shape[2]),
        feature_mean=mean,
        feature_scale=scale,
        weights=tuple(weights),
        params=dataclasses.asdict(params),
    )
    correct = _forward(weights, features)[1].argmax(axis=1) == y
    metrics = {
        "train_accuracy": _accuracy(correct[train]),
        # None when no class had two groups (e.g. one video per label) to split.
        "test_accuracy": _accuracy(correct[test]),
        "n_train": len(train),
        "n_test": len(test),
        "per_class_test_accuracy": {
            name: _accuracy(correct[test][y[test] == index]) for index, name in enumerate(class_names)
        },
    }
    return model, metrics


def predict_proba(model: ChapterModel, X: np.ndarray) -> np.ndarray:
    """(samples, classes) probabilities for (samples, T, 675) sequences."""
    X = np.asarray(X, dtype=np.float32)
    if X.shape[1:] != model.input_shape:
        raise ValueError(f"expected sequences of shape {model.input_shape}, got {X.shape[1:]}")
    features = (pooled_features(X) - model.feature_mean) / model.feature_scale
    return _forward(model.weights, features)[1]


def predict(model: ChapterModel, X: np.ndarray) -> list[str]:
    """The most likely class name for each sequence."""
    return [model.class_names[index] for index in predict_proba(model, X).argmax(axis=1)]


def save_model(model: ChapterModel, path: Path) -> None:
    """Write the model as an ``.npz`` that load_model reads back."""
    write_npz(
        Path(path),
        {
            **dict(zip(_WEIGHT_NAMES, model.weights, strict=True)),
            "feature_mean": model.feature_mean,
            "feature_scale": model.feature_scale,
            "class_names": np.array(model.class_names),
            "input_shape": np.array(model.input_shape),
            "params": np.array(json.dumps(model.params, ensure_ascii=False)),
        },
    )


def load_model(path: Path) -> ChapterModel:
    """Read a model written by save_model."""
    with np.load(path, allow_pickle=False) as archive:
        return ChapterModel(
            class_names=tuple(str(name) for name in archive["class_names"]),
            input_shape=tuple(int(size) for size in archive["input_shape"]),
            feature_mean=archive["feature_mean"],
            feature_scale=archive["feature_scale"],
            weights=tuple(archive[name] for name in _WEIGHT_NAMES),
            params=json.loads(str(archive["params"])),
        )


def save_model_info(model: ChapterModel, metrics: Mapping[str, Any], path: Path) -> None:
    """Write a human-readable JSON summary: classes, input shape, parameters, metrics."""
    info = {
        "class_names": list(model.class_names),
        "input_shape": list(model.input_shape),
        "params": model.params,
        "metrics": dict(metrics),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
