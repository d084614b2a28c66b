"""The on-disk dataset format: reading it, validating it, writing npz files.

A data directory holds ``labels.csv`` (header ``file,label``, files relative to
the directory), ``chapters.json`` (chapter name -> list of labels) and one
``.npz`` per video with a ``landmarks`` array of shape (frames, 75, 3): 33 pose
keypoints, then 21 left-hand and 21 right-hand keypoints, x/y/z in image
coordinates. A hand the tracker lost in a frame is all zeros or all NaN.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

N_POSE = 33
N_HAND = 21
N_KEYPOINTS = N_POSE + 2 * N_HAND
POSE = slice(0, N_POSE)
LEFT_HAND = slice(N_POSE, N_POSE + N_HAND)
RIGHT_HAND = slice(N_POSE + N_HAND, N_KEYPOINTS)
LEFT_SHOULDER = 11
RIGHT_SHOULDER = 12

LABELS_FILE = "labels.csv"
CHAPTERS_FILE = "chapters.json"
LANDMARKS_KEY = "landmarks"


def load_labels(data_dir: Path) -> dict[str, list[Path]]:
    """Video paths per label, in ``labels.csv`` order."""
    path = Path(data_dir) / LABELS_FILE
    # utf-8-sig: spreadsheet programs save Korean CSVs with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected header 'file,label'")
        labels: dict[str, list[Path]] = {}
        for row in reader:
            file, label = (row["file"] or "").strip(), (row["label"] or "").strip()
            if not file or not label:
                raise ValueError(f"{path}, line {reader.line_num}: empty 'file' or 'label'")
            labels.setdefault(label, []).append(Path(data_dir) / file)
    return labels


def load_chapters(data_dir: Path) -> dict[str, list[str]]:
    """Labels per chapter from ``chapters.json``."""
    path = Path(data_dir) / CHAPTERS_FILE
    try:
        chapters = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(chapters, dict) or not all(
        isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)
        for labels in chapters.values()
    ):
        raise ValueError(f"{path}: expected an object mapping chapter name to a non-empty list of labels")
    return chapters


def load_landmarks(path: Path) -> np.ndarray:
    """The (frames, 75, 3) float32 landmarks of one video."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("found a bare array, expected an .npz archive")
        with archive:
            landmarks = archive[LANDMARKS_KEY]
    except KeyError:
        raise ValueError(f"{path}: no '{LANDMARKS_KEY}' array in the archive") from None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable .npz file: {exc}") from exc
    if landmarks.ndim != 3 or landmarks.shape[0] == 0 or landmarks.shape[1:] != (N_KEYPOINTS, 3):
        raise ValueError(f"{path}: landmarks have shape {landmarks.shape}, expected (frames>0, {N_KEYPOINTS}, 3)")
    if not np.issubdtype(landmarks.dtype, np.floating):
        raise ValueError(f"{path}: landmarks have dtype {landmarks.dtype}, expected floating point")
    return landmarks.astype(np.float32, copy=False)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a compressed ``.npz`` whose bytes depend only on ``arrays``.

    ``np.savez_compressed`` stamps the current time into the zip, so the same
    data would give different bytes (and content hashes) on every write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
