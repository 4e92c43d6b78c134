"""OpenPose JSON loader (one ``*_keypoints.json`` per frame; BODY_25 or COCO-18 body keypoints).

Each file holds ``{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...]}, ...]}``; a keypoint that
was not detected has ``c = 0``. The layout is told by the length: 75 numbers = BODY_25, 54 = COCO-18.
Per frame the most confident person (largest sum of confidences) is kept; the frame is dropped, and
counted, when that person lacks a used keypoint (no fallback to a less confident person). Files named
``*.json.old`` (OpenPose's backups) are ignored.

Mapping to LSP14: the 12 limb joints one to one, LSP ``neck`` = OpenPose ``Neck`` (OpenPose's neck is
trained on COCO's mid-shoulder point), ``head_top`` extrapolated from the neck and the nose, eyes and ears
by :func:`gpumosaic.sources.coco.extrapolate_head_top`. OpenPose gives no visibility: all joints count
as visible. Provenance ids: the file's index in sorted name order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..skeleton import LSP14, Skeleton
from .build import Annotations2D, PathLike, make_annotations
from .coco import HEAD_TOP_FACTOR, face_layout_to_lsp

__all__ = ["load_openpose", "OPENPOSE_LAYOUTS"]

# name: (number of keypoints, LSP14 limb indices, neck index, face indices (nose, l_eye, r_eye, l_ear, r_ear))
OPENPOSE_LAYOUTS = {
    "BODY_25": (25, (11, 10, 9, 12, 13, 14, 4, 3, 2, 5, 6, 7), 1, (0, 16, 15, 18, 17)),
    "COCO_18": (18, (10, 9, 8, 11, 12, 13, 4, 3, 2, 5, 6, 7), 1, (0, 15, 14, 17, 16)),
}
"""OpenPose body layouts: keypoint count, and the indices used for LSP14's limbs, neck and face."""

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def _files(path: Path) -> tuple[list[Path], int]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(".json") and p.is_file())
        ignored = sum(1 for p in path.iterdir() if p.name.endswith(".json.old"))
        return files, ignored
    if path.name.endswith(".json.old"):
        raise ValueError(f"{path}: OpenPose backup files (*.json.old) are not read")
    return [path], 0


def _image_for(json_path: Path, folder: Path) -> Path | None:
    stem = json_path.name[: -len(".json")]
    stem = stem[: -len("_keypoints")] if stem.endswith("_keypoints") else stem
    for ext in _IMAGE_EXTS:
        if (folder / (stem + ext)).exists():
            return folder / (stem + ext)
    return None


def load_openpose(path: PathLike, *, skeleton: Skeleton | str = LSP14, image_dir: PathLike | None = None,
                  min_confidence: float = 0.0) -> Annotations2D:
    """Read a folder of OpenPose JSON files (or one file): the most confident person of every frame.

    Args:
        path: a folder of ``*.json`` files (sorted by name = frame order) or one JSON file.
        skeleton: output layout (LSP14 by default).
        image_dir: folder of the frames, matched by name (``X_keypoints.json`` -> ``X.png`` / ``.jpg`` /
            ``.jpeg`` / ``.bmp``); default the JSON folder. Frames with no image found get no path.
        min_confidence: a keypoint is present when its confidence exceeds this.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in the frames' pixels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No OpenPose JSON file or folder at {path}")
    files, ignored = _files(path)
    if not files:
        raise ValueError(f"{path}: no *.json files")
    folder = Path(image_dir) if image_dir is not None else (path if path.is_dir() else path.parent)
    layout = None
    kps, paths = [], []
    reasons = {"no person": 0, "incomplete (most confident person lacks a used keypoint)": 0}
    keep = np.zeros(len(files), bool)
    for k, file in enumerate(files):
        try:
            with open(file) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        people = data.get("people") if isinstance(data, dict) else None
        if not isinstance(people, list):
            raise ValueError(f"{file}: expected an object with a 'people' list (OpenPose JSON)")
        best, best_score = None, -np.inf
        for p, person in enumerate(people):
            values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
            if not isinstance(values, list):
                raise ValueError(f"{file}: people[{p}] has no 'pose_keypoints_2d' list")
            if not values:
                continue
            name = next((n for n, spec in OPENPOSE_LAYOUTS.items() if 3 * spec[0] == len(values)), None)
            if name is None:
                raise ValueError(f"{file}: people[{p}].pose_keypoints_2d has {len(values)} numbers; expected 75 "
                                 f"(BODY_25) or 54 (COCO-18)")
            if layout is not None and name != layout:
                raise ValueError(f"{file}: people[{p}] is {name} but earlier files are {layout}")
            layout = name
            try:
                arr = np.asarray(values, dtype=np.float64).reshape(-1, 3)
            except (TypeError, ValueError):
                raise ValueError(f"{file}: people[{p}].pose_keypoints_2d holds non-numbers") from None
            score = arr[:, 2].sum()
            if score > best_score:
                best, best_score = arr, score
        kps.append(best)
        paths.append(_image_for(file, folder))
        if best is None:
            reasons["no person"] += 1
    if layout is None:
        raise ValueError(f"{path}: no person in any of {len(files)} files")
    count, limbs, neck, face = OPENPOSE_LAYOUTS[layout]
    kp = np.stack([np.zeros((count, 3)) if a is None else a for a in kps])
    present = kp[..., 2] > min_confidence
    joints, limbs_ok, face_ok, vis = face_layout_to_lsp(kp[..., :2], present, np.ones_like(present), limbs, neck,
                                                         face)
    has_person = np.array([a is not None for a in kps])
    complete = limbs_ok & face_ok & np.isfinite(kp[..., :2]).all((1, 2))
    keep = has_person & complete
    reasons["incomplete (most confident person lacks a used keypoint)"] = int((has_person & ~complete).sum())
    notes = [f"{layout}; neck = OpenPose Neck; head_top = neck + {HEAD_TOP_FACTOR}·(ears' midpoint or face mean "
             f"- neck)."]
    if ignored:
        notes.append(f"Ignored {ignored} *.json.old files.")
    return make_annotations("openpose", path, joints, vis, keep, paths, np.arange(len(files)), LSP14, skeleton, reasons,
                        notes)
