"""Tests of the chapter generator's numpy data pipeline."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chapter_generator import (
    ChapterDataset,
    ChapterModel,
    PipelineParams,
    augment_landmarks,
    build_chapter_dataset,
    cache_file_name,
    ensure_sample_dataset,
    extract_sequence,
    generate_sample_dataset,
    label_rng,
    load_chapters,
    load_labels,
    load_landmarks,
    load_model,
    make_none_class,
    params_fingerprint,
    predict,
    predict_proba,
    process_label,
    save_model,
    save_model_info,
    train_chapter,
)
from chapter_generator.dataset import LEFT_HAND, N_KEYPOINTS, N_POSE, RIGHT_HAND, write_npz
from chapter_generator.features import N_COORDS, N_FEATURES

T = 30


def hand_columns(hand: slice) -> np.ndarray:
    """Feature columns of a hand's coordinates in the position, velocity and acceleration blocks."""
    return np.concatenate([np.arange(3 * hand.start, 3 * hand.stop) + block * N_COORDS for block in range(3)])


LEFT_HAND_COLUMNS = hand_columns(LEFT_HAND)
RIGHT_HAND_COLUMNS = hand_columns(RIGHT_HAND)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(data_dir, seed=0)
    return data_dir


def moving_landmarks(frames: int = 60) -> np.ndarray:
    """A signer with every part tracked, the hands moving at constant speed."""
    t = np.arange(frames, dtype=np.float64)[:, None]
    landmarks = np.zeros((frames, N_KEYPOINTS, 3))
    landmarks[:, :, 0] = np.linspace(0.3, 0.7, N_KEYPOINTS)
    landmarks[:, :, 1] = 0.5 + 0.1 * np.sin(np.arange(N_KEYPOINTS))
    landmarks[:, :, 2] = 0.01 * np.cos(np.arange(N_KEYPOINTS))
    landmarks[:, 11, :2] = (0.6, 0.45)
    landmarks[:, 12, :2] = (0.4, 0.45)
    landmarks[:, LEFT_HAND, 0] += 0.003 * t
    landmarks[:, RIGHT_HAND, 1] -= 0.002 * t
    return landmarks.astype(np.float32)


def small_params(**changes: object) -> PipelineParams:
    return dataclasses.replace(PipelineParams(augmentations_per_video=2, min_samples_per_class=1), **changes)


# --- sample data ---------------------------------------------------------------------------


def test_sample_data_is_deterministic(sample_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_sample_dataset(again, seed=0)
    files = sorted(path.relative_to(sample_dir) for path in sample_dir.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    assert all((sample_dir / file).read_bytes() == (again / file).read_bytes() for file in files)


def test_sample_data_depends_on_seed(sample_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_sample_dataset(other, seed=1)
    first = load_labels(sample_dir)["김치"][0]
    assert not np.array_equal(
        load_landmarks(first), load_landmarks(other / first.relative_to(sample_dir)), equal_nan=True
    )


def test_sample_data_format(sample_dir: Path) -> None:
    with (sample_dir / "labels.csv").open(encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == ["file", "label"]
    labels = load_labels(sample_dir)
    chapters = load_chapters(sample_dir)
    assert 20 <= len(labels) <= 30 and 3 <= len(chapters) <= 5
    assert {label for chapter in chapters.values() for label in chapter} == set(labels)
    assert "김치" in labels and "안녕하세요" in labels
    lost_as_zero = lost_as_nan = 0
    for paths in labels.values():
        assert len(paths) == 10
        for path in paths:
            assert path.suffix == ".npz" and path.is_relative_to(sample_dir)
            landmarks = load_landmarks(path)
            assert landmarks.dtype == np.float32 and landmarks.shape[1:] == (75, 3)
            assert 40 <= len(landmarks) <= 90
            hands = landmarks[:, N_POSE:].reshape(len(landmarks), 2, -1)
            lost_as_zero += int((hands == 0).all(axis=2).sum())
            lost_as_nan += int(np.isnan(hands).all(axis=2).sum())
            assert np.isfinite(landmarks[:, :N_POSE]).all()
            tracked = landmarks[:, :N_POSE, :2]
            assert tracked.min() > -0.5 and tracked.max() < 1.5
    assert lost_as_zero > 0 and lost_as_nan > 0


def test_ensure_sample_dataset_generates_only_once(tmp_path: Path) -> None:
    labels_file = tmp_path / "data" / "labels.csv"
    assert ensure_sample_dataset(tmp_path / "data") is True
    labels_file.write_text("file,label\n", encoding="utf-8")
    assert ensure_sample_dataset(tmp_path / "data") is False
    assert labels_file.read_text(encoding="utf-8") == "file,label\n"


# --- extraction ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [0.0, np.nan])
def test_extract_sequence_shape_and_no_nan(missing: float) -> None:
    landmarks = moving_landmarks(47)
    landmarks[5:15, LEFT_HAND] = missing
    landmarks[:, RIGHT_HAND] = missing  # never tracked
    sequence = extract_sequence(landmarks, T)
    assert sequence.shape == (30, 675)
    assert sequence.dtype == np.float32
    assert np.isfinite(sequence).all()
    assert (sequence[:, RIGHT_HAND_COLUMNS] == 0).all()


@pytest.mark.parametrize("missing", [0.0, np.nan])
def test_lost_hand_is_interpolated(missing: float) -> None:
    full = moving_landmarks()
    gapped = full.copy()
    gapped[20:35, LEFT_HAND] = missing
    expected = extract_sequence(full, T)[:, LEFT_HAND_COLUMNS]
    assert np.allclose(extract_sequence(gapped, T)[:, LEFT_HAND_COLUMNS], expected, atol=1e-3)


def test_one_frame_tracking_glitch_is_removed() -> None:
    clean = moving_landmarks()
    glitched = clean.copy()
    glitched[30, RIGHT_HAND, :2] += 0.15  # the hand jumps most of a shoulder width for one frame
    expected = extract_sequence(clean, T)[:, RIGHT_HAND_COLUMNS]
    # Smoothing alone would leave an error of ~0.18 shoulder widths.
    assert np.allclose(extract_sequence(glitched, T)[:, RIGHT_HAND_COLUMNS], expected, atol=1e-2)


def test_shoulder_normalisation_is_translation_and_scale_invariant() -> None:
    landmarks = moving_landmarks()
    landmarks[10:18, RIGHT_HAND] = np.nan
    moved = landmarks * np.float32(2.5) + np.array([0.3, -0.2, 0.1], dtype=np.float32)
    assert np.allclose(extract_sequence(moved, T), extract_sequence(landmarks, T), atol=1e-4)


def test_augmentation_varies_the_sign_but_keeps_lost_parts_lost() -> None:
    landmarks = moving_landmarks()
    landmarks[:, LEFT_HAND] = 0.0
    params = PipelineParams()
    augmented = augment_landmarks(landmarks, np.random.default_rng(0), params)
    assert 40 <= len(augmented) <= 80
    assert np.isnan(augmented[:, LEFT_HAND]).all()
    assert np.isfinite(augmented[:, RIGHT_HAND]).all()
    original_features = extract_sequence(landmarks, T)
    augmented_features = extract_sequence(augmented, T)
    # Shoulder normalisation must not undo the augmentation.
    assert np.abs(augmented_features - original_features).max() > 0.05


# --- per-label processing ----------------------------------------------------------------------


def test_process_label_counts_and_order(sample_dir: Path) -> None:
    paths = load_labels(sample_dir)["김밥"][:3]
    params = small_params()
    sequences = process_label(paths, params, label_rng("김밥", params))
    assert len(sequences) == 3 * (1 + 2)
    assert all(sequence.shape == (T, N_FEATURES) and sequence.dtype == np.float32 for sequence in sequences)
    for index, path in enumerate(paths):
        assert np.array_equal(sequences[index], extract_sequence(load_landmarks(path), T))
    repeated = process_label(paths, params, label_rng("김밥", params))
    assert all(np.array_equal(a, b) for a, b in zip(sequences, repeated, strict=True))

    capped_params = small_params(label_max_samples_per_class=5)
    capped = process_label(paths, capped_params, label_rng("김밥", capped_params))
    assert len(capped) == 5
    assert all(np.array_equal(a, b) for a, b in zip(capped, sequences[:5], strict=True))

    assert len(process_label(paths, small_params(min_samples_per_class=13), np.random.default_rng(0))) == 13


def test_process_label_without_videos_fails() -> None:
    with pytest.raises(ValueError):
        process_label([], PipelineParams(), np.random.default_rng(0))


# --- cache keys ----------------------------------------------------------------------------------


def test_cache_file_name_format() -> None:
    assert cache_file_name("김치", PipelineParams()) == "김치_seq30_aug9_maxNone_min10.pkl"
    params = PipelineParams(target_seq_length=20, augmentations_per_video=3, label_max_samples_per_class=50)
    assert cache_file_name("hello-world_2", params) == "hello-world_2_seq20_aug3_max50_min10.pkl"


@pytest.mark.parametrize(
    "label", ["a b", "a/b", "a\\b", "..", "../../etc/passwd", "", ".", "김치 / 라면", "a:b*c?", "x" * 300]
)
def test_cache_file_name_is_safe(label: str) -> None:
    name = cache_file_name(label, PipelineParams())
    stem = name.removesuffix("_seq30_aug9_maxNone_min10.pkl")
    assert stem and stem != name
    assert "/" not in name and "\\" not in name and ".." not in name and " " not in name
    assert all(ch.isalnum() or ch in "-_" for ch in stem)
    assert len(name.encode("utf-8")) < 255


def test_cache_file_names_of_different_labels_differ() -> None:
    labels = ["a b", "a/b", "a_b", "a\\b", "a  b", "..", "__", "", "김치", "김치 "]
    assert len({cache_file_name(label, PipelineParams()) for label in labels}) == len(labels)


def test_params_fingerprint_tracks_processing_parameters_only() -> None:
    base = params_fingerprint(PipelineParams())
    json.dumps(base)
    assert params_fingerprint(PipelineParams(augmentation_noise_level=0.02)) != base
    assert params_fingerprint(PipelineParams(seed=1)) != base
    assert params_fingerprint(PipelineParams(epochs=3, hidden_units=8)) == base


def test_invalid_params_are_rejected() -> None:
    with pytest.raises(ValueError):
        PipelineParams(label_max_samples_per_class=5, min_samples_per_class=10)
    with pytest.raises(ValueError):
        PipelineParams(target_seq_length=2)


# --- None class and training -----------------------------------------------------------------------


def test_none_class_is_still_and_balanced() -> None:
    rng = np.random.default_rng(0)
    signs = [extract_sequence(moving_landmarks(), T) for _ in range(2)]
    params = PipelineParams()
    none = make_none_class(signs, 7, params, rng)
    assert len(none) == 7 and all(sample.shape == (T, N_FEATURES) for sample in none)

    def speed(sequence: np.ndarray) -> float:
        return float(np.abs(sequence[:, N_COORDS : 2 * N_COORDS]).mean())

    assert max(map(speed, none)) < speed(signs[0]) / 3

    dataset = build_chapter_dataset({"a": signs, "b": signs + signs}, {"a": 1, "b": 2}, params, rng)
    assert dataset.class_names == ["a", "b", "None"]
    assert np.bincount(dataset.y).tolist() == [2, 4, 3]
    assert dataset.groups[dataset.y == 1].tolist() == [1, 2, 1, 2]
    assert len(set(dataset.groups[dataset.y == 2]) & set(dataset.groups[dataset.y < 2])) == 0


Trained = tuple[ChapterDataset, ChapterModel, dict[str, Any]]


@pytest.fixture(scope="module")
def trained(sample_dir: Path) -> Trained:
    params = PipelineParams()
    labels = load_labels(sample_dir)
    chapter = load_chapters(sample_dir)["인사"]
    sequences = {label: process_label(labels[label], params, label_rng(label, params)) for label in chapter}
    dataset = build_chapter_dataset(
        sequences, {label: len(labels[label]) for label in chapter}, params, np.random.default_rng(0)
    )
    model, metrics = train_chapter(
        dataset.X, dataset.y, dataset.class_names, params, np.random.default_rng(0), dataset.groups
    )
    return dataset, model, metrics


def test_model_learns_a_chapter(trained: Trained) -> None:
    dataset, model, metrics = trained
    chance = 1 / len(dataset.class_names)
    assert metrics["test_accuracy"] >= max(0.6, 3 * chance)
    assert metrics["n_train"] + metrics["n_test"] == len(dataset.y)
    assert set(metrics["per_class_test_accuracy"]) == set(dataset.class_names)
    assert model.class_names == ("안녕하세요", "감사합니다", "미안합니다", "사랑합니다", "None")


def test_training_is_deterministic(trained: Trained) -> None:
    dataset, model, metrics = trained
    again, again_metrics = train_chapter(
        dataset.X, dataset.y, dataset.class_names, PipelineParams(), np.random.default_rng(0), dataset.groups
    )
    assert again_metrics == metrics
    assert all(np.array_equal(a, b) for a, b in zip(again.weights, model.weights, strict=True))


def test_model_round_trip(trained: Trained, tmp_path: Path) -> None:
    dataset, model, metrics = trained
    save_model(model, tmp_path / "models" / "greetings.npz")
    loaded = load_model(tmp_path / "models" / "greetings.npz")
    assert loaded.class_names == model.class_names and loaded.input_shape == (T, N_FEATURES)
    assert loaded.params == dataclasses.asdict(PipelineParams())
    assert np.array_equal(predict_proba(loaded, dataset.X[:50]), predict_proba(model, dataset.X[:50]))
    assert predict(loaded, dataset.X[:3]) == predict(model, dataset.X[:3])

    save_model_info(model, metrics, tmp_path / "greetings.json")
    info = json.loads((tmp_path / "greetings.json").read_text(encoding="utf-8"))
    assert info["class_names"] == list(model.class_names)
    assert info["input_shape"] == [T, N_FEATURES]
    assert info["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert info["params"]["target_seq_length"] == T
    with pytest.raises(ValueError, match="shape"):
        predict(model, dataset.X[:, :20])


# --- malformed input ----------------------------------------------------------------------------


def test_labels_csv_without_label_column_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,name\nvideos/a.npz,김치\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels\.csv.*label"):
        load_labels(tmp_path)


def test_labels_csv_with_an_empty_field_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,label\nvideos/a.npz,김치\nvideos/b.npz,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        load_labels(tmp_path)


def test_labels_csv_with_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,label\nvideos/a.npz,김치\n", encoding="utf-8-sig")
    assert load_labels(tmp_path) == {"김치": [tmp_path / "videos" / "a.npz"]}


@pytest.mark.parametrize("content", ['["김치"]', '{"food": "김치"}', '{"food": []}', "{not json"])
def test_malformed_chapters_json_names_the_path(tmp_path: Path, content: str) -> None:
    (tmp_path / "chapters.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"chapters\.json"):
        load_chapters(tmp_path)


@pytest.mark.parametrize(
    "arrays",
    [
        {"landmarks": np.zeros((10, 74, 3), dtype=np.float32)},
        {"landmarks": np.zeros((10, 75), dtype=np.float32)},
        {"landmarks": np.zeros((0, 75, 3), dtype=np.float32)},
        {"landmarks": np.zeros((10, 75, 3), dtype=np.int32)},
        {"points": np.zeros((10, 75, 3), dtype=np.float32)},
    ],
)
def test_malformed_video_names_the_path(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "videos" / "bad.npz"
    write_npz(path, arrays)
    with pytest.raises(ValueError, match=r"bad\.npz"):
        load_landmarks(path)


def test_unreadable_video_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"broken\.npz"):
        load_landmarks(path)
