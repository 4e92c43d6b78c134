"""COCO keypoints loader (``person_keypoints_*.json``) and the head-top extrapolation shared by face layouts.

COCO's 17 keypoints (nose, left/right eye, left/right ear, left/right shoulder, elbow, wrist, hip, knee,
ankle) carry a flag ``v``: 0 not labelled, 1 labelled but occluded, 2 labelled and visible. Mapping to LSP14:

- the 12 limb joints one to one (COCO is ``l_`` before ``r_``; LSP is the person's right first);
- ``neck`` = midpoint of the two shoulders (COCO has no neck);
- ``head_top`` extrapolated by :func:`extrapolate_head_top` from the neck and the face keypoints.

A person is kept when it is not a crowd region and all 12 limb joints plus at least one face keypoint are
labelled (``v > 0``). A mapped joint is visible when all the keypoints it is made of have ``v = 2``.
Provenance ids: the COCO annotation ``id``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..skeleton import LSP14, Skeleton
from .build import Annotations2D, PathLike, make_annotations

__all__ = ["HEAD_TOP_FACTOR", "extrapolate_head_top", "load_coco", "COCO17_NAMES"]

HEAD_TOP_FACTOR = 1.7
"""``head_top = neck + HEAD_TOP_FACTOR · (head_centre - neck)``.

Anthropometric ratio for an upright adult: the shoulder line is ≈ 0.19 m below ear/eye/nose level and
≈ 0.32 m below the top of the head (e.g. stature 1.75 m: acromion ≈ 1.43 m, tragion ≈ 1.62 m), so
0.32 / 0.19 ≈ 1.7. An approximation: a head turned or bent away from the neck axis moves the estimate.
"""

COCO17_NAMES = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
                "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")
"""COCO's keypoint order."""

# LSP14 limb joints (indices 0..11) as COCO indices.
_COCO_LIMBS = (16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9)
_COCO_FACE = (0, 1, 2, 3, 4)  # nose, l_eye, r_eye, l_ear, r_ear


def extrapolate_head_top(neck: np.ndarray, face: np.ndarray, face_ok: np.ndarray, ears: tuple[int, int] = (3, 4),
                         factor: float = HEAD_TOP_FACTOR) -> np.ndarray:
    """Head top from the neck and face keypoints (layouts without a head-top joint: COCO, OpenPose, markers).

    The head centre is the midpoint of the ears when both are present (they straddle the head's axis
    whichever way it faces), else the mean of the present face keypoints; the head top is
    ``neck + factor · (head_centre - neck)`` (:data:`HEAD_TOP_FACTOR`).

    Args:
        neck: (..., D) neck positions (any D: 2D pixels or 3D metres).
        face: (..., K, D) face keypoints.
        face_ok: bool (..., K) which face keypoints are present.
        ears: indices of the two ears in the K face keypoints.
        factor: the extrapolation ratio.

    Returns:
        (..., D) head tops; NaN where no face keypoint is present.
    """
    face_ok = np.asarray(face_ok, dtype=bool)
    both_ears = face_ok[..., ears[0]] & face_ok[..., ears[1]]
    use = face_ok.copy()
    ear_only = np.zeros(face_ok.shape[-1], bool)
    ear_only[list(ears)] = True
    use = np.where(both_ears[..., None], ear_only & face_ok, use)
    count = use.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.where(use[..., None], face, 0.0).sum(-2) / count[..., None]
    return np.where((count > 0)[..., None], neck + factor * (centre - neck), np.nan)


def face_layout_to_lsp(kp: np.ndarray, present: np.ndarray, visible: np.ndarray, limbs, neck, face,
                        ears=(3, 4)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints (N, K, 2) of a face layout (COCO, OpenPose) -> LSP14.

    ``neck`` is one index or a pair whose midpoint is the neck. Returns ``(joints (N, 14, 2), limbs_ok (N,),
    face_ok (N,), visible (N, 14))``.
    """
    neck = (neck,) if isinstance(neck, int) else tuple(neck)
    n = kp.shape[0]
    out = np.zeros((n, 14, 2))
    out[:, :12] = kp[:, list(limbs)]
    out[:, 12] = kp[:, list(neck)].mean(1)
    face_present = present[:, list(face)]
    out[:, 13] = extrapolate_head_top(out[:, 12], kp[:, list(face)], face_present, ears=ears)
    limbs_ok = present[:, list(limbs) + list(neck)].all(1)
    face_ok = face_present.any(1)
    vis = np.zeros((n, 14), bool)
    vis[:, :12] = visible[:, list(limbs)]
    vis[:, 12] = visible[:, list(neck)].all(1)
    vis[:, 13] = (~face_present | visible[:, list(face)]).all(1) & face_ok
    return np.nan_to_num(out), limbs_ok, face_ok, vis


def _default_image_dir(path: Path) -> Path | None:
    split = path.stem.split("_")[-1]  # person_keypoints_val2017 -> val2017
    for folder in (path.parent.parent / split, path.parent / split, path.parent / "images"):
        if folder.is_dir():
            return folder
    return None


def load_coco(path: PathLike, *, skeleton: Skeleton | str = LSP14, image_dir: PathLike | None = None,
              drop_occluded: bool = False) -> Annotations2D:
    """Read COCO person keypoints: one entry per complete, non-crowd person.

    Args:
        path: a COCO keypoints JSON (``annotations``, ``images``; ``categories`` unused).
        skeleton: output layout (LSP14 by default; others via :func:`gpumosaic.skeleton.convert`).
        image_dir: folder of the images named by ``images[*].file_name``; default the first existing of
            ``../<split>/``, ``./<split>/`` and ``./images/`` relative to the JSON (``<split>`` = the file
            name's last ``_`` part, e.g. ``val2017``); ``None`` found leaves the paths unset.
        drop_occluded: also drop people whose used keypoints include one with ``v = 1``.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in original-image pixels.
    """
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'annotations' list (COCO keypoints format)")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise ValueError(f"{path}: field 'images' must be a list")
    files = {}
    for k, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ValueError(f"{path}: images[{k}] needs 'id' and 'file_name'")
        files[im["id"]] = im["file_name"]
    folder = Path(image_dir) if image_dir is not None else _default_image_dir(path)

    anns = data["annotations"]
    kp = np.zeros((len(anns), 17, 3))
    crowd = np.zeros(len(anns), bool)
    ids = np.zeros(len(anns), np.int64)
    paths = []
    for k, ann in enumerate(anns):
        where = f"{path}: annotations[{k}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where} is not an object")
        values = ann.get("keypoints")
        if not isinstance(values, list) or len(values) != 51:
            raise ValueError(f"{where} (id {ann.get('id')}): field 'keypoints' must be a list of 17×3 = 51 numbers, "
                             f"got {type(values).__name__} of length {len(values) if isinstance(values, list) else '-'}")
        try:
            kp[k] = np.asarray(values, dtype=np.float64).reshape(17, 3)
        except (TypeError, ValueError):
            raise ValueError(f"{where} (id {ann.get('id')}): field 'keypoints' holds non-numbers") from None
        if ann.get("image_id") not in files and images:
            raise ValueError(f"{where} (id {ann.get('id')}): image_id {ann.get('image_id')!r} not in 'images'")
        crowd[k] = bool(ann.get("iscrowd", 0))
        ids[k] = int(ann.get("id", k))
        name = files.get(ann.get("image_id"))
        paths.append(folder / name if folder is not None and name is not None else None)

    present = kp[..., 2] > 0
    joints, limbs_ok, face_ok, vis = face_layout_to_lsp(kp[..., :2], present, kp[..., 2] >= 2, _COCO_LIMBS,
                                                         (6, 5), _COCO_FACE)
    labelled = present.any(1)
    reasons = {"crowd": crowd, "no keypoints": ~crowd & ~labelled}
    reasons["incomplete (a limb joint or the whole face unlabelled)"] = (
        ~crowd & labelled & ~(limbs_ok & face_ok))
    dropped_so_far = crowd | ~(limbs_ok & face_ok)
    reasons["occluded keypoint (drop_occluded=True)"] = (
        ~dropped_so_far & ~vis.all(1) if drop_occluded else np.zeros(len(anns), bool))
    keep = ~np.any(np.stack(list(reasons.values())), axis=0) if len(anns) else np.zeros(0, bool)
    return make_annotations(
        "coco", path, joints, vis, keep, paths, ids, LSP14, skeleton, {k: int(v.sum()) for k, v in reasons.items()},
        notes=(f"neck = mid-shoulders; head_top = neck + {HEAD_TOP_FACTOR}·(ears' midpoint or face mean - neck).",),
    )
