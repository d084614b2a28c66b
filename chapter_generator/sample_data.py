"""A small synthetic sign-language dataset in the format ``dataset`` reads.

Every label gets its own motion: each hand follows a Lissajous-like path
around a label-specific place relative to the shoulders, with a
label-specific wrist roll and handshape, and some labels are one-handed or
mirror-symmetric. Each video then varies it the way real recordings vary:
signing speed and timing, framing (position and distance to the camera),
how big and where exactly the signer moves, tracker jitter and one-frame
glitches, and hands the tracker loses (stored as zeros, or as NaN in some
videos).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .dataset import (
    CHAPTERS_FILE,
    LABELS_FILE,
    LANDMARKS_KEY,
    LEFT_HAND,
    N_HAND,
    N_KEYPOINTS,
    N_POSE,
    RIGHT_HAND,
    write_npz,
)

CHAPTERS: dict[str, list[str]] = {
    # 먹다 is in two chapters on purpose: chapters may share labels.
    "음식": ["김치", "김밥", "버거", "치킨", "라면", "떡볶이", "비빔밥", "불고기", "먹다"],
    "과일": ["사과", "바나나", "포도", "딸기", "먹다", "마시다"],
    "장소": ["학교", "병원", "은행", "시장", "가다", "오다"],
    "인사": ["안녕하세요", "감사합니다", "미안합니다", "사랑합니다"],
}
VIDEOS_PER_LABEL = 10
MIN_FRAMES, MAX_FRAMES = 40, 90

# Resting pose in shoulder widths from the shoulder midpoint (x right, y down
# in the image), for MediaPipe's 33 pose keypoints. Arms and the pose model's
# hand points (13-22) stay zero here: they are computed per frame.
_POSE_TEMPLATE = np.zeros((N_POSE, 2))
_POSE_TEMPLATE[:11] = [  # nose, eyes (inner, centre, outer; left then right), ears, mouth
    (0.0, -0.75), (0.08, -0.85), (0.13, -0.85), (0.18, -0.85), (-0.08, -0.85), (-0.13, -0.85),
    (-0.18, -0.85), (0.25, -0.8), (-0.25, -0.8), (0.08, -0.6), (-0.08, -0.6),
]  # fmt: skip
_POSE_TEMPLATE[11:13] = [(0.5, 0.0), (-0.5, 0.0)]  # shoulders
_POSE_TEMPLATE[23:] = [  # hips, knees, ankles, heels, foot tips
    (0.35, 1.5), (-0.35, 1.5), (0.4, 2.5), (-0.4, 2.5), (0.4, 3.5),
    (-0.4, 3.5), (0.4, 3.65), (-0.4, 3.65), (0.45, 3.75), (-0.45, 3.75),
]  # fmt: skip
# Per side, left then right (the signer's left is the image's right).
_HANDS = (LEFT_HAND, RIGHT_HAND)
_SHOULDERS = (11, 12)
_REST = np.array([[0.45, 1.5, 0.0], [-0.45, 1.5, 0.0]])  # hands hanging by the hips
# Pose wrist, pinky, index and thumb points per side, and the hand keypoints they track.
_POSE_HAND_POINTS = ((15, 17, 19, 21), (16, 18, 20, 22))
_HAND_POINTS_TRACKED = (0, 17, 5, 2)
_ELBOWS = (13, 14)
_IMAGE_SHOULDER_WIDTH = 0.2


def _hand_shape(curl: np.ndarray, roll: np.ndarray, side: int) -> np.ndarray:
    """Hand keypoints relative to the wrist, shape (frames, 21, 3).

    ``curl`` (frames, 5) bends each finger from 0 (straight) to 1 (fist),
    ``roll`` (frames,) turns the hand in the image plane; ``side`` is +1 for
    the left hand, -1 for the right (mirror images).
    """
    frames = len(curl)
    hand = np.zeros((frames, N_HAND, 3))
    bases = [(-0.05, -0.05), (-0.07, -0.22), (-0.02, -0.23), (0.02, -0.22), (0.06, -0.2)]
    lengths = [(0.06, 0.05, 0.04), (0.1, 0.06, 0.05), (0.11, 0.07, 0.05), (0.1, 0.06, 0.05), (0.08, 0.05, 0.04)]
    spread = [-0.7, -0.12, 0.0, 0.12, 0.25]
    for finger in range(5):
        joint = np.tile([bases[finger][0], bases[finger][1], 0.0], (frames, 1))
        hand[:, 1 + 4 * finger] = joint
        bend = np.zeros(frames)
        for segment, length in enumerate(lengths[finger]):
            bend = bend + curl[:, finger] * 1.4
            direction = np.stack(
                [np.sin(spread[finger]) * np.cos(bend), -np.cos(spread[finger]) * np.cos(bend), -np.sin(bend)], axis=1
            )
            joint = joint + length * direction
            hand[:, 2 + 4 * finger + segment] = joint
    hand[..., 0] *= -side
    cos, sin = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x, y = hand[..., 0].copy(), hand[..., 1].copy()
    hand[..., 0], hand[..., 1] = cos * x - sin * y, sin * x + cos * y
    return hand


def _label_motion(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], bool]:
    """The characteristic motion of one label (per hand: left, right), and whether it is one-handed."""
    centre = np.stack(
        [[rng.uniform(-0.3, 0.9), rng.uniform(-0.9, 0.9)], [rng.uniform(-0.9, 0.3), rng.uniform(-0.9, 0.9)]]
    )
    motion = {
        "centre": np.concatenate([centre, rng.uniform(-0.3, 0.3, (2, 1))], axis=1),
        "amplitude": rng.uniform(0.05, 0.45, (2, 3)),
        "frequency": rng.uniform(0.5, 2.5, (2, 3)),
        "phase": rng.uniform(0, 2 * np.pi, (2, 3)),
        "roll": np.stack([rng.uniform(-0.6, 0.6, 2), rng.uniform(0, 0.8, 2), rng.uniform(0.5, 2.0, 2)], axis=1),
        "curl": rng.uniform(0, 1, (2, 5)),
        "curl_change": rng.uniform(0, 0.5, (2, 2)),  # amplitude, frequency of opening/closing
    }
    style = rng.uniform()
    if style < 0.35:  # two-handed sign, the hands mirroring each other
        for key in motion:
            motion[key][0] = motion[key][1]
        motion["centre"][0, 0] *= -1
        motion["amplitude"][0, 0] *= -1
    return motion, style > 0.75


def _render_video(motion: dict[str, np.ndarray], one_handed: bool, rng: np.random.Generator) -> np.ndarray:
    """One recording of a label's motion as (frames, 75, 3) float32 landmarks."""
    frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    t = np.linspace(0, 1, frames)
    start, end = rng.uniform(0.05, 0.2), rng.uniform(0.8, 0.95)
    # Hands rise from rest, sign, and drop back: a smoothstep in and out.
    ramp = np.clip(np.minimum((t - start) / 0.1, (end - t) / 0.1), 0, 1)
    envelope = ramp * ramp * (3 - 2 * ramp)

    body = np.zeros((frames, N_KEYPOINTS, 3))
    body[:, :N_POSE, :2] = _POSE_TEMPLATE
    for side in range(2):  # 0: left, 1: right
        centre = motion["centre"][side] + rng.normal(0, 0.12, 3)
        amplitude = motion["amplitude"][side] * rng.uniform(0.75, 1.25)
        angle = (
            2 * np.pi * motion["frequency"][side] * rng.uniform(0.9, 1.1) * t[:, None]
            + motion["phase"][side]
            + rng.normal(0, 0.35, 3)
        )
        target = centre + amplitude * np.sin(angle)
        active = 0.0 if one_handed and side == 0 else 1.0
        wrist = _REST[side] + active * envelope[:, None] * (target - _REST[side])
        roll_base, roll_amplitude, roll_frequency = motion["roll"][side]
        roll = active * envelope * (roll_base + roll_amplitude * np.sin(2 * np.pi * roll_frequency * t))
        curl_amplitude, curl_frequency = motion["curl_change"][side]
        curl = np.clip(motion["curl"][side] + curl_amplitude * np.sin(2 * np.pi * curl_frequency * t)[:, None], 0, 1)
        hand = wrist[:, None] + _hand_shape(curl, roll, 1 if side == 0 else -1)
        body[:, _HANDS[side]] = hand
        body[:, _POSE_HAND_POINTS[side]] = hand[:, _HAND_POINTS_TRACKED]
        shoulder = body[:, _SHOULDERS[side]]
        body[:, _ELBOWS[side]] = (shoulder + wrist) / 2 + [0.2 if side == 0 else -0.2, 0.3, 0.0]

    sway = 0.05 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * np.pi))
    origin = np.array([0.5 + rng.uniform(-0.08, 0.08), 0.45 + rng.uniform(-0.06, 0.06), 0.0])
    width = _IMAGE_SHOULDER_WIDTH * rng.uniform(0.8, 1.2)
    landmarks = origin + width * (body + np.outer(sway, [1.0, 0.3, 0.0])[:, None])
    landmarks += rng.normal(0, 0.003, landmarks.shape)
    for side in range(2):  # trackers now and then put a hand somewhere else for a frame
        for frame in rng.integers(0, frames, rng.integers(0, 3)):
            landmarks[frame, _HANDS[side], :2] += rng.normal(0, 0.5 * width, 2)

    lost = np.zeros((frames, 2), dtype=bool)
    for side in range(2):
        for _ in range(rng.integers(0, 4)):
            gap_start = rng.integers(0, frames)
            lost[gap_start : gap_start + rng.integers(2, 11), side] = True
        if rng.uniform() < 0.5:  # hands by the hips are often out of frame
            lost[envelope < 0.2, side] = True
    if one_handed and rng.uniform() < 0.5:
        lost[:, 0] = True
    missing_value = np.nan if rng.uniform() < 0.2 else 0.0
    for side in range(2):
        landmarks[lost[:, side], _HANDS[side]] = missing_value
    # A thousandth of the frame is about a pixel, finer than tracker jitter, and
    # rounding makes the files compress to half the size.
    return np.round(landmarks, 3).astype(np.float32)


def generate_sample_dataset(data_dir: Path, seed: int = 0) -> None:
    """Write the sample dataset to ``data_dir``; the same seed gives identical files.

    ``labels.csv`` and ``chapters.json`` are written last, so their presence
    means the dataset is complete.
    """
    data_dir = Path(data_dir)
    labels = list(dict.fromkeys(label for chapter in CHAPTERS.values() for label in chapter))
    rows = []
    for label_index, label in enumerate(labels):
        motion, one_handed = _label_motion(np.random.default_rng([seed, label_index]))
        for video in range(VIDEOS_PER_LABEL):
            file = f"videos/{label_index:02d}_{video:02d}.npz"
            landmarks = _render_video(motion, one_handed, np.random.default_rng([seed, label_index, 1 + video]))
            write_npz(data_dir / file, {LANDMARKS_KEY: landmarks})
            rows.append((file, label))
    with (data_dir / LABELS_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("file", "label"))
        writer.writerows(rows)
    (data_dir / CHAPTERS_FILE).write_text(json.dumps(CHAPTERS, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def ensure_sample_dataset(data_dir: Path, seed: int = 0) -> bool:
    """Generate the sample dataset unless ``data_dir`` already has one; True if it generated."""
    data_dir = Path(data_dir)
    if (data_dir / LABELS_FILE).is_file() and (data_dir / CHAPTERS_FILE).is_file():
        return False
    generate_sample_dataset(data_dir, seed)
    return True
