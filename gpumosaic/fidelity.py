"""Fidelity of mosaics to an independent 2D pose detector (issue 13): detection, PCK, errors, swaps.

How real does a mosaic look? An independent detector (MediaPipe Pose 0.10.21, never trained on these
mosaics) is run on the images and its 2D joints are compared with the mosaic's own label, the query pose.
gpumosaic does **not** depend on MediaPipe: the detector lives in its own virtual environment (it pins
``numpy < 2``) and runs as a subprocess, :mod:`gpumosaic.detector_worker`, through the Python named by the
environment variable ``GPUMOSAIC_DETECTOR_PYTHON`` (or a ``python=`` argument)::

    python3 -m venv /work/mpvenv
    /work/mpvenv/bin/pip install --no-deps mediapipe==0.10.21
    /work/mpvenv/bin/pip install "numpy<2" opencv-python-headless "protobuf>=4.25.3,<5" absl-py attrs \\
        flatbuffers matplotlib
    export GPUMOSAIC_DETECTOR_PYTHON=/work/mpvenv/bin/python

Without it, :func:`detect_poses` raises :class:`DetectorUnavailable` with these instructions and
:func:`detector_available` returns ``False``; the scoring functions below are plain NumPy and need nothing.

Scores (all on LSP14; the default scored joints are the 12 limb joints, :data:`LIMBS12`, because MediaPipe
has no neck or head-top landmark: its neck is the shoulders' midpoint and its head top an extrapolation, see
:func:`mediapipe_to_lsp14`):

- **detection rate**: share of images where the detector finds a person;
- **PCK@0.2**: share of (image, joint) pairs whose detected joint lies within ``0.2 ·`` torso of the label,
  the torso being the label's left-shoulder-to-right-hip distance (the LSP convention); an image without a
  detection counts as all joints missed (``pck``) or is left out (``pck_detected``);
- **median joint error**: over the joints of detected images, in torso units and in pixels;
- **left/right swaps**: share of left/right joint pairs (of detected images) where exchanging the two labels
  turns a miss into a hit: both joints correct at the threshold with the labels swapped, not both without;
- **intervals**: percentile bootstrap over images (the same resampled images for every statistic).

Convention:
    2D joints in pixels of the scored image, ``x`` right (column), ``y`` down (row); NumPy arrays
    (N, J, 2). Undetected images have NaN joints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .skeleton import LSP14, Skeleton

__all__ = [
    "DETECTOR_PYTHON_ENV",
    "LIMBS12",
    "DetectorUnavailable",
    "Detections",
    "detector_python",
    "detector_available",
    "detect_poses",
    "mediapipe_to_lsp14",
    "torso_size",
    "joint_errors",
    "correct_joints",
    "lr_swapped",
    "bootstrap_interval",
    "fidelity_score",
    "paired_difference",
]

DETECTOR_PYTHON_ENV = "GPUMOSAIC_DETECTOR_PYTHON"
"""Environment variable naming the Python of the detector's virtual environment."""

LIMBS12 = tuple(range(12))
"""LSP14 indices of the 12 limb joints (ankles, knees, hips, wrists, elbows, shoulders): the scored joints."""

# MediaPipe Pose's 33 landmarks for the LSP14 limb joints (r_ankle ... l_wrist), shoulders, face.
_MP_LIMBS = (28, 26, 24, 23, 25, 27, 16, 14, 12, 11, 13, 15)
_MP_SHOULDERS = (11, 12)
_MP_FACE = (0, 2, 5, 7, 8)  # nose, l_eye, r_eye, l_ear, r_ear (extrapolate_head_top's order)

_SETUP = (
    "python3 -m venv /work/mpvenv && /work/mpvenv/bin/pip install --no-deps mediapipe==0.10.21 && "
    '/work/mpvenv/bin/pip install "numpy<2" opencv-python-headless "protobuf>=4.25.3,<5" absl-py attrs '
    "flatbuffers matplotlib; then export GPUMOSAIC_DETECTOR_PYTHON=/work/mpvenv/bin/python"
)


class DetectorUnavailable(RuntimeError):
    """The independent detector (MediaPipe in its own environment) is not set up; the message says how."""


# ---------------------------------------------------------------------------------------------------------
# The detector, as a subprocess
# ---------------------------------------------------------------------------------------------------------


def detector_python(python: str | os.PathLike | None = None) -> str | None:
    """The detector's Python: ``python`` when given, else ``$GPUMOSAIC_DETECTOR_PYTHON``, else ``None``."""
    value = python if python is not None else os.environ.get(DETECTOR_PYTHON_ENV)
    return str(value) if value else None


_PROBED: dict[str, str | None] = {}


def _worker() -> Path:
    return Path(__file__).with_name("detector_worker.py")


def _probe(python: str) -> str | None:
    """The mediapipe version reported by ``python``, or ``None`` when it cannot run the worker (cached)."""
    if python not in _PROBED:
        try:
            done = subprocess.run([python, str(_worker()), "--version"], capture_output=True, text=True,
                                  timeout=120)
            _PROBED[python] = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout else None
        except (OSError, subprocess.SubprocessError):
            _PROBED[python] = None
    return _PROBED[python]


def detector_available(python: str | os.PathLike | None = None) -> bool:
    """Whether the detector can run: a Python is named (argument or environment) and it imports mediapipe."""
    exe = detector_python(python)
    return exe is not None and _probe(exe) is not None


def _require(python: str | os.PathLike | None) -> str:
    exe = detector_python(python)
    if exe is None:
        raise DetectorUnavailable(f"No detector Python: set {DETECTOR_PYTHON_ENV} (or pass python=) to a Python "
                                  f"with mediapipe 0.10.21. Set-up: {_SETUP}")
    if _probe(exe) is None:
        raise DetectorUnavailable(f"{exe} cannot import mediapipe (from {DETECTOR_PYTHON_ENV} or python=). "
                                  f"Set-up: {_SETUP}")
    return exe


@dataclass(frozen=True)
class Detections:
    """The detector's output for N images.

    Attributes:
        joints: float64 (N, 14, 2) LSP14 joints in pixels of the images (NaN where nothing was detected).
        visibility: float64 (N, 14) MediaPipe's visibility of each mapped joint (NaN where not detected).
        detected: bool (N,) a person was found.
        landmarks: float32 (N, 33, 3) the raw MediaPipe landmarks ``[x_px, y_px, visibility]``.
        version: the detector's version string.
    """

    joints: np.ndarray
    visibility: np.ndarray
    detected: np.ndarray
    landmarks: np.ndarray
    version: str


def _as_uint8_hwc(images) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB from a torch (N, 3, H, W) float in [0, 1] / uint8 or a NumPy (N, H, W, 3) uint8."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images as (N, 3, H, W), got {tuple(images.shape)}")
        x = images.detach().cpu()
        if x.is_floating_point():
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        elif x.dtype != torch.uint8:
            raise TypeError(f"Expected float or uint8 images, got {x.dtype}")
        return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"Expected images as uint8 (N, H, W, 3), got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)


def mediapipe_to_lsp14(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LSP14 joints from MediaPipe's 33 landmarks, as for the shipped Sports2D labels (docs/data.md).

    Limbs map one to one; ``neck`` is the shoulders' midpoint; ``head_top`` is extrapolated from the neck and
    the ears' midpoint by :func:`gpumosaic.sources.coco.extrapolate_head_top` (an approximation).

    Args:
        landmarks: (..., 33, 3) ``[x, y, visibility]``.

    Returns:
        ``(joints (..., 14, 2), visibility (..., 14))`` float64; neck and head top take the mean visibility
        of the landmarks they are made of.
    """
    from .sources.coco import extrapolate_head_top

    lm = np.asarray(landmarks, dtype=np.float64)
    xy, vis = lm[..., :2], lm[..., 2]
    neck = xy[..., list(_MP_SHOULDERS), :].mean(-2)
    face = xy[..., list(_MP_FACE), :]
    head = extrapolate_head_top(neck, face, np.ones(face.shape[:-1], bool))
    joints = np.concatenate([xy[..., list(_MP_LIMBS), :], neck[..., None, :], head[..., None, :]], -2)
    visibility = np.concatenate([vis[..., list(_MP_LIMBS)], vis[..., list(_MP_SHOULDERS)].mean(-1, keepdims=True),
                                 vis[..., list(_MP_FACE)].mean(-1, keepdims=True)], -1)
    return joints, visibility


def detect_poses(images, python: str | os.PathLike | None = None, *, timeout: float | None = None) -> Detections:
    """Run the independent detector on N images (one subprocess for the whole batch).

    Args:
        images: torch (N, 3, H, W) float in [0, 1] or uint8, or NumPy uint8 (N, H, W, 3) RGB.
        python: the detector's Python; ``None`` reads ``$GPUMOSAIC_DETECTOR_PYTHON``.
        timeout: seconds before the subprocess is stopped (``None``: no limit).

    Returns:
        :class:`Detections`, joints in pixels of the given images.

    Raises:
        DetectorUnavailable: no detector Python, or it cannot import mediapipe (the message says how to set
            it up).
        RuntimeError: the worker failed (its stderr is quoted).
    """
    exe = _require(python)
    arr = _as_uint8_hwc(images)
    with tempfile.TemporaryDirectory(prefix="gpumosaic-detect-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, images=arr)
        done = subprocess.run([exe, str(_worker()), str(src), str(dst)], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0 or not dst.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"detector worker failed (exit {done.returncode}) under {exe}:\n{tail}")
        with np.load(dst, allow_pickle=False) as out:
            landmarks, detected, version = out["landmarks"], out["detected"].astype(bool), str(out["version"])
    joints, visibility = mediapipe_to_lsp14(landmarks)
    return Detections(joints=joints, visibility=visibility, detected=detected, landmarks=landmarks,
                      version=version)


# ---------------------------------------------------------------------------------------------------------
# Scoring (plain NumPy, batched over images)
# ---------------------------------------------------------------------------------------------------------


def torso_size(labels: np.ndarray, skeleton: Skeleton = LSP14) -> np.ndarray:
    """(N,) the label's left-shoulder-to-right-hip distance (LSP's torso diameter), pixels."""
    labels = np.asarray(labels, dtype=np.float64)
    ls, rh = skeleton.names.index("l_shoulder"), skeleton.names.index("r_hip")
    return np.linalg.norm(labels[..., ls, :] - labels[..., rh, :], axis=-1)


def joint_errors(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, J) Euclidean distance between detected and labelled joints (NaN where ``pred`` is NaN)."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(labels, np.float64), axis=-1)


def correct_joints(pred: np.ndarray, detected: np.ndarray, labels: np.ndarray, threshold: float = 0.2,
                   skeleton: Skeleton = LSP14) -> np.ndarray:
    """(N, J) bool: joint within ``threshold ·`` torso of its label; ``False`` for undetected images."""
    err = joint_errors(pred, labels)
    ok = err <= threshold * torso_size(labels, skeleton)[:, None]
    return ok & np.asarray(detected, bool)[:, None]


def _pairs(skeleton: Skeleton, joints: tuple[int, ...]) -> np.ndarray:
    """(P, 2) left/right pairs ``(j, flip[j])`` with ``j < flip[j]``, both in ``joints``."""
    flip = list(skeleton.flip)
    keep = set(joints)
    return np.array([(j, flip[j]) for j in range(len(flip)) if j < flip[j] and j in keep and flip[j] in keep],
                    dtype=np.int64).reshape(-1, 2)


def lr_swapped(pred: np.ndarray, detected: np.ndarray, labels: np.ndarray, threshold: float = 0.2,
               skeleton: Skeleton = LSP14, joints: tuple[int, ...] = LIMBS12) -> np.ndarray:
    """(N, P) bool: left/right pair ``p`` is swapped (see the module docstring); ``False`` if undetected.

    Pair ``(a, b)`` is swapped when ``pred_a`` is within the threshold of ``label_b`` and ``pred_b`` of
    ``label_a``, but ``pred_a``, ``pred_b`` are not both within it of their own labels.
    """
    pairs = _pairs(skeleton, joints)
    pred = np.asarray(pred, np.float64)
    labels = np.asarray(labels, np.float64)
    limit = threshold * torso_size(labels, skeleton)[:, None]
    a, b = pairs[:, 0], pairs[:, 1]
    direct = (joint_errors(pred[:, a], labels[:, a]) <= limit) & (joint_errors(pred[:, b], labels[:, b]) <= limit)
    crossed = (joint_errors(pred[:, a], labels[:, b]) <= limit) & (joint_errors(pred[:, b], labels[:, a]) <= limit)
    return crossed & ~direct & np.asarray(detected, bool)[:, None]


def bootstrap_interval(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, n_boot: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of N images.

    Args:
        statistic: ``index (R, N) int64 -> (R,)`` the statistic of each resample (rows of image indices drawn
            with replacement); NaN values (e.g. no detection in a resample) are ignored.
        n: number of images.
        n_boot: R, number of resamples.
        level: coverage of the interval.
        seed: the resampling seed (the same seed gives the same resamples for every statistic).

    Returns:
        ``(lo, hi)``, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (NaN, NaN if all are NaN).
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(n_boot, n))
    values = np.asarray(statistic(index), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def _ratio(num: np.ndarray, den: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def stat(index: np.ndarray) -> np.ndarray:
        d = den[index].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, num[index].sum(-1) / np.maximum(d, 1e-300), np.nan)
    return stat


def _nanmedian(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def stat(index: np.ndarray) -> np.ndarray:
        flat = values[index].reshape(index.shape[0], -1)
        out = np.full(index.shape[0], np.nan)
        some = np.isfinite(flat).any(1)
        if some.any():
            out[some] = np.nanmedian(flat[some], axis=1)
        return out
    return stat


def fidelity_score(pred: np.ndarray, detected: np.ndarray, labels: np.ndarray, *, threshold: float = 0.2,
                   skeleton: Skeleton = LSP14, joints: tuple[int, ...] = LIMBS12, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict:
    """All fidelity statistics of N images with bootstrap intervals (see the module docstring).

    Args:
        pred: (N, J, 2) detected joints (NaN rows where nothing was detected).
        detected: bool (N,).
        labels: (N, J, 2) the images' own 2D labels.
        threshold: PCK threshold in torso units (0.2).
        skeleton: layout of ``pred`` and ``labels``.
        joints: the scored joints (default the 12 limb joints).
        n_boot, level, seed: the bootstrap.

    Returns:
        ``{"n", "threshold", "joints", "per_image": {"detected", "pck"}, "detection_rate", "pck",
        "pck_detected", "median_error", "median_error_px", "swap_rate"}``, each statistic a dict
        ``{"value", "ci": [lo, hi]}``; ``median_error`` in torso units, ``per_image`` lists for paired
        comparisons (:func:`paired_difference`).
    """
    pred = np.asarray(pred, np.float64)
    labels = np.asarray(labels, np.float64)
    detected = np.asarray(detected, bool)
    n = labels.shape[0]
    if pred.shape != labels.shape or detected.shape != (n,):
        raise ValueError(f"Expected pred and labels (N, J, 2) and detected (N,), got {pred.shape}, {labels.shape}, "
                         f"{detected.shape}")
    cols = list(joints)
    correct = correct_joints(pred, detected, labels, threshold, skeleton)[:, cols].astype(np.float64)
    per_image = correct.mean(1)  # (N,) PCK of each image, 0 when undetected
    torso = torso_size(labels, skeleton)
    err_px = np.where(detected[:, None], joint_errors(pred, labels)[:, cols], np.nan)
    err = err_px / torso[:, None]
    swapped = lr_swapped(pred, detected, labels, threshold, skeleton, joints).astype(np.float64)
    pairs = np.full(n, float(swapped.shape[1])) * detected
    det = detected.astype(np.float64)
    ones = np.ones(n)
    stats = {
        "detection_rate": _ratio(det, ones),
        "pck": _ratio(per_image, ones),
        "pck_detected": _ratio(per_image, det),
        "median_error": _nanmedian(err),
        "median_error_px": _nanmedian(err_px),
        "swap_rate": _ratio(swapped.sum(1), pairs),
    }
    full = np.arange(n)[None]
    out = {"n": int(n), "threshold": float(threshold), "joints": [skeleton.names[j] for j in cols],
           "per_image": {"detected": detected.tolist(), "pck": per_image.tolist()}}
    for name, stat in stats.items():
        value = float(stat(full)[0]) if n else float("nan")
        out[name] = {"value": value, "ci": list(bootstrap_interval(stat, n, n_boot=n_boot, level=level, seed=seed))}
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Mean of ``a - b`` over the same N images (e.g. per-image PCK blended vs copy-paste) with a paired
    bootstrap interval: ``{"value", "ci": [lo, hi]}``."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if diff.ndim != 1:
        raise ValueError(f"Expected two (N,) arrays, got {np.shape(a)} and {np.shape(b)}")
    stat = _ratio(diff, np.ones_like(diff))
    value = float(diff.mean()) if diff.size else float("nan")
    return {"value": value, "ci": list(bootstrap_interval(stat, diff.size, n_boot=n_boot, level=level, seed=seed))}


def _main(argv: list[str]) -> int:  # pragma: no cover - a manual probe
    exe = detector_python()
    print(f"{DETECTOR_PYTHON_ENV}={exe!r}; available: {detector_available()}"
          + ("" if detector_available() else f"\nset-up: {_SETUP}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
