"""Human3.6M loaders for the widely used VideoPose3D arrays, re-saved without pickle.

VideoPose3D's ``data_3d_h36m.npz`` stores ``positions_3d`` as a pickled dict (subject -> action -> (F, 32, 3)
metres, world frame, ``z`` up) inside an object array, and ``data_2d_h36m_gt.npz`` stores
``positions_2d`` (subject -> action -> list of 4 cameras' (F, 32, 2) pixels) and ``metadata`` the same way.
Loading those needs ``allow_pickle=True``, which can run arbitrary code from the file: gpumosaic never
unpickles. Re-save them once, in an environment you trust, as flat ``.npz`` files of plain float arrays
(:data:`H36M_CONVERTER_NOTE`), then load those here with ``np.load(allow_pickle=False)``:

- 3D: keys ``"{subject}/{action}"`` -> float (F, 32, 3) or (F, 17, 3), metres, world ``z`` up;
- 2D: keys ``"{subject}/{action}/{camera}"`` (camera = index 0..3 or its id, e.g. ``54138969``) -> float
  (F, 32, 2) or (F, 17, 2), pixels of the 1000×1002 / 1000×1000 frames.

32 joints are reduced to H36M17 with VideoPose3D's index list :data:`H36M32_TO_17`; H36M17 maps to LSP14
by :func:`gpumosaic.skeleton.mapping` (LSP ``neck`` = H36M ``thorax``, ``head_top`` = H36M ``head``, the
nearest H36M markers to LSP's definitions; both approximations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..skeleton import H36M17, LSP14, Skeleton
from .build import Annotations2D, LoadedMocap, PathLike, make_annotations, check_stride, make_loaded_mocap

__all__ = ["H36M32_TO_17", "H36M_CAMERAS", "H36M_CONVERTER_NOTE", "load_h36m_3d", "load_h36m_2d"]

H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
"""Indices of the 32 Human3.6M joints kept as H36M17 (VideoPose3D's list): pelvis, right hip/knee/ankle,
left hip/knee/ankle, spine, thorax, neck/nose, head, left shoulder/elbow/wrist, right shoulder/elbow/wrist."""

H36M_CAMERAS = ("54138969", "55011271", "58860488", "60457274")
"""Human3.6M camera ids in VideoPose3D's camera order (index 0..3)."""

H36M_CONVERTER_NOTE = '''\
# Run once, in an environment you trust (this unpickles VideoPose3D's files):
import numpy as np
d3 = np.load("data_3d_h36m.npz", allow_pickle=True)["positions_3d"].item()
np.savez("h36m_3d_flat.npz", **{f"{s}/{a}": np.asarray(p, np.float32)
                                for s, acts in d3.items() for a, p in acts.items()})
d2 = np.load("data_2d_h36m_gt.npz", allow_pickle=True)["positions_2d"].item()
np.savez("h36m_2d_flat.npz", **{f"{s}/{a}/{c}": np.asarray(p, np.float32)
                                for s, acts in d2.items() for a, cams in acts.items()
                                for c, p in enumerate(cams)})
'''
"""The one-off conversion of VideoPose3D's pickled ``.npz`` files into the flat files these loaders read."""


def _open(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc


def _read(npz, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(
                f"{path}: field {key!r} is a pickled object array (VideoPose3D's layout). gpumosaic never "
                f"unpickles: re-save it as flat float arrays keyed 'subject/action' (3D) or "
                f"'subject/action/camera' (2D), e.g.:\n{H36M_CONVERTER_NOTE}"
            ) from None
        raise ValueError(f"{path}: cannot read field {key!r} ({exc})") from exc


def _to_h36m17(arr: np.ndarray, dim: int, key: str, path: Path) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[1] not in (32, 17) or arr.shape[2] != dim:
        raise ValueError(f"{path}: field {key!r} must be (F, 32, {dim}) or (F, 17, {dim}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: field {key!r} must be numeric, got {arr.dtype}")
    arr = arr.astype(np.float64)
    return arr[:, list(H36M32_TO_17)] if arr.shape[1] == 32 else arr


def _selected(value: str, wanted: Sequence[str] | None) -> bool:
    return wanted is None or value in wanted


def _keys(npz, path: Path, parts: int) -> list[tuple[str, list[str]]]:
    out = []
    for key in sorted(npz.files):
        fields = key.split("/")
        if len(fields) != parts:
            layout = "subject/action" if parts == 2 else "subject/action/camera"
            if key in ("positions_3d", "positions_2d", "metadata"):
                _read(npz, key, path)  # raises the pickle explanation
            raise ValueError(f"{path}: field {key!r} is not keyed {layout!r}")
        out.append((key, fields))
    if not out:
        raise ValueError(f"{path}: no arrays")
    return out


def load_h36m_3d(path: PathLike, *, skeleton: Skeleton | str = LSP14, subjects: Sequence[str] | None = None,
                 actions: Sequence[str] | None = None, stride: int = 1) -> LoadedMocap:
    """Read flat Human3.6M 3D poses (``"{subject}/{action}"`` -> (F, 32|17, 3) metres, world ``z`` up).

    Args:
        path: the flat ``.npz`` (see :data:`H36M_CONVERTER_NOTE`).
        skeleton: output layout (LSP14 by default; ``"h36m17"`` keeps H36M17).
        subjects: keep these subjects only (e.g. the training subjects ``S1 S5 S6 S7 S8``); ``None``: all.
        actions: keep these action keys only; ``None``: all.
        stride: keep every ``stride``-th frame (the videos run at 50 fps).

    Returns:
        :class:`~gpumosaic.sources.build.LoadedMocap`; frames with non-finite values are dropped and counted.
    """
    path = Path(path)
    check_stride(stride)
    npz = _open(path)
    sequences = []
    for key, (subject, action) in _keys(npz, path, 2):
        if not (_selected(subject, subjects) and _selected(action, actions)):
            continue
        sequences.append((key, _to_h36m17(_read(npz, key, path), 3, key, path)[::stride]))
    if not sequences:
        raise ValueError(f"{path}: no sequence matches subjects={subjects} actions={actions}")
    return make_loaded_mocap("h36m", path, sequences, stride, H36M17, skeleton, "non-finite values")


def load_h36m_2d(path: PathLike, *, skeleton: Skeleton | str = LSP14, image_root: PathLike | None = None,
                 image_pattern: str | None = None, subjects: Sequence[str] | None = None,
                 actions: Sequence[str] | None = None, cameras: Sequence[int] | None = None,
                 stride: int = 1) -> Annotations2D:
    """Read flat Human3.6M 2D ground truth (``"{subject}/{action}/{camera}"`` -> (F, 32|17, 2) pixels).

    Args:
        path: the flat ``.npz`` (see :data:`H36M_CONVERTER_NOTE`).
        skeleton: output layout (LSP14 by default).
        image_root, image_pattern: frame ``f`` of a sequence is ``image_root / image_pattern.format(
            subject=, action=, camera=<id>, camera_index=, frame=f, frame1=f + 1)``, e.g.
            ``"{subject}/{action}.{camera}/{frame1:06d}.jpg"``; frames have no path without a pattern.
        subjects, actions: keep these only (``None``: all).
        cameras: camera indices 0..3 to keep (``None``: all).
        stride: keep every ``stride``-th frame.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` (all joints visible: motion capture has no
        occlusion flags); ids number the frames read, in key order.
    """
    path = Path(path)
    check_stride(stride)
    root = Path(image_root) if image_root is not None else path.parent
    npz = _open(path)
    joints, paths, keep = [], [], []
    for key, (subject, action, cam) in _keys(npz, path, 3):
        if cam in H36M_CAMERAS:
            cam_index = H36M_CAMERAS.index(cam)
        elif cam.isdigit() and int(cam) < len(H36M_CAMERAS):
            cam_index = int(cam)
        else:
            raise ValueError(f"{path}: field {key!r}: camera must be 0..3 or one of {H36M_CAMERAS}, got {cam!r}")
        if not (_selected(subject, subjects) and _selected(action, actions) and _selected(cam_index, cameras)):
            continue
        arr = _to_h36m17(_read(npz, key, path), 2, key, path)[::stride]
        joints.append(arr)
        keep.append(np.isfinite(arr).all((1, 2)))
        for f in range(0, len(arr) * stride, stride):
            paths.append(None if image_pattern is None else root / image_pattern.format(
                subject=subject, action=action, camera=H36M_CAMERAS[cam_index], camera_index=cam_index,
                frame=f, frame1=f + 1))
    if not joints:
        raise ValueError(f"{path}: no sequence matches subjects={subjects} actions={actions} cameras={cameras}")
    joints, keep = np.concatenate(joints), np.concatenate(keep)
    return make_annotations("h36m2d", path, np.nan_to_num(joints), np.ones(joints.shape[:2], bool), keep, paths,
                        np.arange(len(keep)), H36M17, skeleton, {"non-finite values": int((~keep).sum())})
