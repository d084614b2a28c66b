"""Raw landmarks -> fixed-length feature sequences, plus augmentation and the None class.

A feature sequence has shape (target_len, 675): 225 shoulder-relative
coordinates (75 keypoints x 3), then their velocity and acceleration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import LEFT_HAND, LEFT_SHOULDER, N_KEYPOINTS, N_POSE, POSE, RIGHT_HAND, RIGHT_SHOULDER, load_landmarks
from .params import PipelineParams

N_COORDS = N_KEYPOINTS * 3
N_FEATURES = 3 * N_COORDS

# The format stores no frame rate; phone and webcam recordings are ~30 fps.
FRAME_RATE = 30.0

_PARTS = (POSE, LEFT_HAND, RIGHT_HAND)
# Elbows, wrists, the pose model's hand points and both hands: what moves
# when the signer's reach or signing position changes.
_ARMS = np.r_[13:23, N_POSE:N_KEYPOINTS]

# Below this (in image units) the shoulders are unusable as a ruler.
_MIN_SHOULDER_WIDTH = 1e-3
# Coordinates are in shoulder widths; anything beyond this is a tracking
# glitch, and bounding it keeps one bad frame from dominating the features.
_CLIP = 10.0

# Hampel filter: a coordinate further than _OUTLIER_MADS robust standard
# deviations (and at least _MIN_OUTLIER_JUMP shoulder widths) from the median
# of the frames around it is a tracker glitch, e.g. a hand jumping for a frame.
_OUTLIER_WINDOW = 7
_OUTLIER_MADS = 3.0
_MIN_OUTLIER_JUMP = 0.2

# One Euro filter (Casiez et al., CHI 2012), the smoother MediaPipe itself
# applies to landmarks: it removes jitter when a hand is still and raises its
# cutoff when the hand moves fast, so quick sign motion is not blurred.
# Cutoffs in Hz, beta in 1/shoulder width.
_MIN_CUTOFF = 2.0
_BETA = 0.5
_DERIVATIVE_CUTOFF = 1.0


def mark_missing(landmarks: np.ndarray) -> np.ndarray:
    """A float64 copy in which every lost part (pose or one hand) of a frame is all NaN.

    Trackers report a lost hand as zeros or NaN; a single convention lets
    every later step treat it the same way.
    """
    marked = np.array(landmarks, dtype=np.float64)
    for part in _PARTS:
        block = marked[:, part]
        lost = ~np.isfinite(block).all(axis=(1, 2)) | (block == 0).all(axis=(1, 2))
        block[lost] = np.nan
    return marked


def _lerp_frames(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``x`` linearly interpolated along axis 0 at fractional frame ``positions``."""
    positions = np.clip(positions, 0, len(x) - 1)
    lower = np.floor(positions).astype(np.intp)
    upper = np.minimum(lower + 1, len(x) - 1)
    weight = (positions - lower).reshape(-1, *([1] * (x.ndim - 1)))
    return x[lower] * (1 - weight) + x[upper] * weight


def _fill_gaps(marked: np.ndarray) -> None:
    """Interpolate lost parts in place from the nearest frames where they were tracked.

    Frames before the first (after the last) sighting hold the first (last)
    tracked position; a part never tracked stays NaN.
    """
    frames = np.arange(len(marked))
    for part in _PARTS:
        block = marked[:, part]
        # mark_missing made each part of a frame all NaN or all finite, so one value tells.
        present = np.flatnonzero(np.isfinite(block[:, 0, 0]))
        if 0 < len(present) < len(block):
            block[:] = _lerp_frames(block[present], np.interp(frames, present, np.arange(len(present))))


def _shoulder_frame(marked: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-frame shoulder midpoint, shape (frames, 1, 3), and the median shoulder width.

    The width is measured in the image plane (MediaPipe's z is far noisier)
    and taken over the whole video so frame-to-frame jitter does not rescale
    the signer.
    """
    left, right = marked[:, LEFT_SHOULDER], marked[:, RIGHT_SHOULDER]
    widths = np.linalg.norm((left - right)[:, :2], axis=1)
    widths = widths[np.isfinite(widths)]
    width = float(np.median(widths)) if len(widths) else 0.0
    return ((left + right) / 2)[:, None, :], width if width > _MIN_SHOULDER_WIDTH else 1.0


def _remove_outliers(x: np.ndarray) -> np.ndarray:
    """Hampel filter along axis 0 of a (frames, channels) array: glitches become the local median.

    The smoother after it would only spread a one-frame jump over its
    neighbours; replacing it first removes it.
    """
    middle = _OUTLIER_WINDOW // 2
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, ((middle, middle), (0, 0)), mode="edge"), _OUTLIER_WINDOW, axis=0
    )
    # The window is odd, so its median is its middle order statistic (np.median is 4x slower).
    median = np.partition(windows, middle, axis=-1)[..., middle]
    deviation = np.partition(np.abs(windows - median[..., None]), middle, axis=-1)[..., middle]
    # 1.4826 turns a median absolute deviation into a Gaussian standard deviation.
    spread = 1.4826 * deviation
    outlier = np.abs(x - median) > np.maximum(_OUTLIER_MADS * spread, _MIN_OUTLIER_JUMP)
    return np.where(outlier, median, x)


def _one_euro(x: np.ndarray) -> np.ndarray:
    """One Euro filter along axis 0 of a (frames, channels) array."""
    out = np.empty_like(x)
    out[0] = x[0]
    speed = np.zeros_like(x[0])
    speed_alpha = 1.0 / (1.0 + FRAME_RATE / (2 * np.pi * _DERIVATIVE_CUTOFF))
    for t in range(1, len(x)):
        speed += speed_alpha * ((x[t] - out[t - 1]) * FRAME_RATE - speed)
        cutoff = _MIN_CUTOFF + _BETA * np.abs(speed)
        alpha = 1.0 / (1.0 + FRAME_RATE / (2 * np.pi * cutoff))
        out[t] = out[t - 1] + alpha * (x[t] - out[t - 1])
    return out


def _with_derivatives(positions: np.ndarray) -> np.ndarray:
    """(T, 225) positions -> (T, 675) float32 positions, velocity, acceleration.

    Central differences (np.gradient) keep the length and avoid the spurious
    jump a padded np.diff puts at the start.
    """
    velocity = np.gradient(positions, axis=0)
    acceleration = np.gradient(velocity, axis=0)
    features = np.concatenate([positions, velocity, acceleration], axis=1)
    return np.clip(features, -_CLIP, _CLIP).astype(np.float32)


def extract_sequence(landmarks: np.ndarray, target_len: int) -> np.ndarray:
    """(frames, 75, 3) landmarks -> (target_len, 675) float32 features, never NaN.

    Lost hands are interpolated over time, coordinates are made relative to
    the shoulders (translation and scale invariant), cleared of one-frame
    tracking glitches and smoothed at the source frame rate (which also
    prevents aliasing when resampling), then resampled to ``target_len``
    frames. A part never tracked in the video is all zeros,
    and values are bounded to +-10 shoulder widths (per frame, for velocity
    and acceleration).
    """
    marked = mark_missing(landmarks)
    _fill_gaps(marked)
    centre, width = _shoulder_frame(marked)
    coords = ((marked - centre) / width).reshape(len(marked), N_COORDS)
    # Forward then backward: a causal filter lags the motion, a zero-phase one does not.
    cleaned = _remove_outliers(coords)
    smoothed = _one_euro(_one_euro(cleaned)[::-1])[::-1]
    positions = _lerp_frames(smoothed, np.linspace(0, len(smoothed) - 1, target_len))
    return _with_derivatives(np.nan_to_num(positions, nan=0.0))


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix for small angles about the x, y and z axes."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def augment_landmarks(landmarks: np.ndarray, rng: np.random.Generator, params: PipelineParams) -> np.ndarray:
    """A plausible re-recording of the same sign, as raw landmarks with lost parts NaN.

    Works on raw landmarks rather than on extracted features because
    extraction normalises away global scale and position: here the signer's
    timing is warped, the arms' reach and signing position vary relative to
    the body, the camera turns slightly and the tracker jitters, and the
    result then goes through the same extraction as a real video.
    """
    marked = mark_missing(landmarks)
    frames = len(marked)
    warp = params.augmentation_time_warp_range
    if frames > 1 and warp > 0:
        new_frames = max(2, round(frames / rng.uniform(1 - warp, 1 + warp)))
        # A smoothly varying signing speed: slower in some parts, faster in others.
        rate = np.interp(np.linspace(0, 1, new_frames), np.linspace(0, 1, 4), rng.uniform(1 - warp, 1 + warp, 4))
        positions = np.concatenate([[0.0], np.cumsum(rate[:-1])])
        marked = _lerp_frames(marked, positions * ((frames - 1) / positions[-1]))

    centre, width = _shoulder_frame(marked)
    scale = rng.uniform(1 - params.augmentation_scale_range, 1 + params.augmentation_scale_range)
    shift = np.append(rng.uniform(-1, 1, 2) * params.augmentation_shift_range * width, 0.0)
    marked[:, _ARMS] = centre + (marked[:, _ARMS] - centre) * scale + shift

    tracked = np.isfinite(centre[:, 0, 0])
    # A fixed pivot, so the rotation acts like the camera turning, not the body.
    pivot = centre[tracked].mean(axis=0) if tracked.any() else np.zeros((1, 3))
    rotation = _rotation(rng.uniform(-1, 1, 3) * params.augmentation_rotation_range)
    marked = (marked - pivot) @ rotation.T + pivot

    return marked + rng.normal(0.0, params.augmentation_noise_level * width, marked.shape)


def process_label(video_paths: Sequence[Path], params: PipelineParams, rng: np.random.Generator) -> list[np.ndarray]:
    """All training sequences of one label: each video plus augmented copies.

    Normally ``len(video_paths) * (1 + augmentations_per_video)`` sequences,
    raised to ``min_samples_per_class`` with extra augmentations and capped at
    ``label_max_samples_per_class``. They are ordered round-robin over the
    videos (sequence ``i`` comes from video ``i % len(video_paths)``, the first
    ``len(video_paths)`` being the unaugmented originals), so a cap keeps every
    video represented, and a capped list is a prefix of the uncapped one.
    """
    if not video_paths:
        raise ValueError("process_label needs at least one video")
    videos = [load_landmarks(path) for path in video_paths]
    count = len(videos)
    total = max(count * (1 + params.augmentations_per_video), params.min_samples_per_class)
    if params.label_max_samples_per_class is not None:
        total = min(total, params.label_max_samples_per_class)
    return [
        extract_sequence(
            videos[i % count] if i < count else augment_landmarks(videos[i % count], rng, params),
            params.target_seq_length,
        )
        for i in range(total)
    ]


def make_none_class(
    sequences: Sequence[np.ndarray], n_samples: int, params: PipelineParams, rng: np.random.Generator
) -> list[np.ndarray]:
    """``n_samples`` "not signing" sequences built from real postures.

    A random frame of a random sequence is held still for the whole sequence
    with a slow idle sway (a random walk reaching about
    ``none_class_noise_level`` shoulder widths). Holding real postures, rather
    than generating arbitrary noise, makes the model learn that motion, not
    hand position alone, makes a sign. Each posture yields
    ``none_class_augmentations_per_frame`` consecutive samples.
    """
    if not sequences:
        raise ValueError("make_none_class needs at least one source sequence")
    length = params.target_seq_length
    step = params.none_class_noise_level / np.sqrt(length)
    samples: list[np.ndarray] = []
    while len(samples) < n_samples:
        source = sequences[rng.integers(len(sequences))]
        posture = source[rng.integers(len(source)), :N_COORDS].astype(np.float64)
        for _ in range(params.none_class_augmentations_per_frame):
            sway = np.cumsum(rng.normal(0.0, step, (length, N_COORDS)), axis=0)
            samples.append(_with_derivatives(posture + sway))
    return samples[:n_samples]
