"""OpenPose JSON loader (one ``*_keypoints.json`` per frame; BODY_25, BODY_25B or COCO-18 body keypoints).

Each file holds ``{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...]}, ...]}``; a keypoint that
was not detected has ``c = 0``. Per frame the most confident person (largest sum of confidences) is kept; the
frame is dropped, and counted, when that person lacks a used keypoint (no fallback to a less confident
person). Files named ``*.json.old`` (OpenPose's backups) are ignored.

Layouts (``layout=``): 54 numbers are COCO-18. 75 numbers are either BODY_25 (OpenPose's default model) or
BODY_25B (OpenPose's experimental model, used by Pose2Sim), whose keypoint orders differ (BODY_25B puts
COCO's 17 keypoints first, then its upper ``Neck`` 17 and ``Head`` top 18, then the feet). The length cannot
tell them apart, so ``layout="auto"`` checks the geometry (:func:`body25_evidence`) and reads 75-number files
as BODY_25 only when it agrees; when the files look like BODY_25B, or the check is inconclusive, it raises
a ``ValueError`` asking for ``layout="BODY_25"`` or ``layout="BODY_25B"`` instead of guessing.

Mapping to LSP14:

- BODY_25 and COCO-18: the 12 limb joints one to one, LSP ``neck`` = OpenPose ``Neck`` (trained on COCO's
  mid-shoulder point), ``head_top`` extrapolated from the neck and the nose, eyes and ears by
  :func:`gpumosaic.sources.coco.extrapolate_head_top`;
- BODY_25B: the 14 joints directly (:data:`BODY25B_FOR_LSP14`): ``neck`` = BODY_25B ``Neck`` (upper neck),
  ``head_top`` = BODY_25B ``Head`` (head top); no extrapolation.

OpenPose gives no visibility: all joints count as visible. Provenance ids: the file's index in sorted name
order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..skeleton import LSP14, Skeleton
from .build import Annotations2D, PathLike, make_annotations
from .coco import HEAD_TOP_FACTOR, face_layout_to_lsp

__all__ = ["load_openpose", "OPENPOSE_LAYOUTS", "BODY25B_FOR_LSP14", "LAYOUTS", "LAYOUT_TOLERANCE",
           "body25_evidence"]

# name: (number of keypoints, LSP14 limb indices, neck index, face indices (nose, l_eye, r_eye, l_ear, r_ear))
OPENPOSE_LAYOUTS = {
    "BODY_25": (25, (11, 10, 9, 12, 13, 14, 4, 3, 2, 5, 6, 7), 1, (0, 16, 15, 18, 17)),
    "COCO_18": (18, (10, 9, 8, 11, 12, 13, 4, 3, 2, 5, 6, 7), 1, (0, 15, 14, 17, 16)),
}
"""OpenPose layouts without a head top: keypoint count, and the indices used for LSP14's limbs, neck and face."""

BODY25B_FOR_LSP14 = (16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9, 17, 18)
"""OpenPose BODY_25B index of each LSP14 joint (r_ankle ... l_wrist, neck = BODY_25B ``Neck`` (17, the upper
neck), head_top = BODY_25B ``Head`` (18, the head top)); Pose2Sim's ``skeletons.BODY_25B`` ids."""

LAYOUTS = ("auto", "BODY_25", "BODY_25B", "COCO_18")
"""Values of ``load_openpose(layout=...)``."""

_COUNTS = {"BODY_25": 25, "BODY_25B": 25, "COCO_18": 18}

LAYOUT_TOLERANCE = 0.1
"""``layout="auto"``: a geometric test holds when its median residual is at most this fraction of the person's
size (see :func:`body25_evidence`). On Pose2Sim's BODY_25B files (4 cameras × 100 frames) the BODY_25 test's
per-camera median residual is 0.418–0.499 and the BODY_25B test's 0.018–0.055; a true BODY_25 ``MidHip`` is
trained on the hips' midpoint (residual ≈ 0)."""

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


def _median_midpoint_residual(xy: np.ndarray, present: np.ndarray, size: np.ndarray, point: int, a: int,
                              b: int) -> tuple[float | None, int]:
    """Median over the frames where all three are present of ``|xy[point] - (xy[a] + xy[b]) / 2| / size``."""
    ok = present[:, [point, a, b]].all(1) & (size > 0)
    if not ok.any():
        return None, 0
    r = np.linalg.norm(xy[ok, point] - (xy[ok, a] + xy[ok, b]) / 2, axis=-1) / size[ok]
    return float(np.median(r)), int(ok.sum())


def body25_evidence(kp: np.ndarray, present: np.ndarray) -> dict:
    """Geometric evidence for BODY_25 against BODY_25B in 75-number OpenPose keypoints.

    - BODY_25 test: keypoint 8 (BODY_25 ``MidHip``) lies at the midpoint of 9 (``RHip``) and 12 (``LHip``);
      in BODY_25B these are the right elbow, the left wrist and the right hip.
    - BODY_25B test: keypoint 17 (BODY_25B ``Neck``, the upper neck) lies near the midpoint of 5 and 6 (the
      shoulders); in BODY_25 these are the right ear, the left shoulder and the left elbow.

    Residuals are in units of the person's size (longer side of the bounding box of its present keypoints),
    medians over the frames where the three keypoints are present.

    Args:
        kp: float (N, 25, 2) keypoints of one person per frame.
        present: bool (N, 25) which keypoints were detected.

    Returns:
        ``{"body25": residual or None, "body25_frames": int, "body25b": residual or None,
        "body25b_frames": int}``.
    """
    kp = np.asarray(kp, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if kp.ndim != 3 or kp.shape[1:] != (25, 2) or present.shape != kp.shape[:2]:
        raise ValueError(f"Expected kp (N, 25, 2) and present (N, 25), got {kp.shape} and {present.shape}")
    present = present & np.isfinite(kp).all(-1)
    hi = np.where(present[..., None], kp, -np.inf).max(1)  # (N, 2)
    lo = np.where(present[..., None], kp, np.inf).min(1)
    size = np.where(present.any(1), (hi - lo).max(-1), 0.0)  # (N,)
    m25, n25 = _median_midpoint_residual(kp, present, size, 8, 9, 12)
    m25b, n25b = _median_midpoint_residual(kp, present, size, 17, 5, 6)
    return {"body25": m25, "body25_frames": n25, "body25b": m25b, "body25b_frames": n25b}


def _check_body25(path: Path, kp: np.ndarray, present: np.ndarray) -> str:
    """``layout="auto"`` with 75 numbers: a note when BODY_25 is confirmed, else a ValueError."""
    ev = body25_evidence(kp, present)
    is25 = ev["body25"] is not None and ev["body25"] <= LAYOUT_TOLERANCE
    is25b = ev["body25b"] is not None and ev["body25b"] <= LAYOUT_TOLERANCE
    fmt = lambda v: "not measurable (keypoints missing)" if v is None else f"{v:.3f}"  # noqa: E731
    measured = (f"keypoint 8 lies {fmt(ev['body25'])} (person's size = 1; median over {ev['body25_frames']} "
                f"frames) from the midpoint of 9 and 12, where BODY_25's MidHip lies; keypoint 17 lies "
                f"{fmt(ev['body25b'])} (over {ev['body25b_frames']} frames) from the midpoint of 5 and 6, where "
                f"BODY_25B's upper neck lies; tolerance {LAYOUT_TOLERANCE}")
    if is25 and not is25b:
        return f"BODY_25 by layout='auto' ({measured})."
    verdict = "look like BODY_25B" if is25b and not is25 else "cannot be told apart"
    raise ValueError(f"{path}: 75-number OpenPose keypoints are BODY_25 or BODY_25B (e.g. Pose2Sim's), whose "
                     f"keypoint orders differ, and these files {verdict} ({measured}). Say which with "
                     f"layout='BODY_25B' or layout='BODY_25' (on the command line: --pool-option layout=BODY_25B "
                     f"or --test-option layout=BODY_25B).")


def load_openpose(path: PathLike, *, skeleton: Skeleton | str = LSP14, image_dir: PathLike | None = None,
                  min_confidence: float = 0.0, layout: str = "auto") -> Annotations2D:
    """Read a folder of OpenPose JSON files (or one file): the most confident person of every frame.

    Args:
        path: a folder of ``*.json`` files (sorted by name = frame order) or one JSON file.
        skeleton: output layout (LSP14 by default).
        image_dir: folder of the frames, matched by name (``X_keypoints.json`` -> ``X.png`` / ``.jpg`` /
            ``.jpeg`` / ``.bmp``); default the JSON folder. Frames with no image found get no path.
        min_confidence: a keypoint is present when its confidence exceeds this.
        layout: ``"auto"`` (54 numbers: COCO-18; 75 numbers: BODY_25 when the geometric check of
            :func:`body25_evidence` confirms it, else a ``ValueError``), ``"BODY_25"``, ``"BODY_25B"`` or
            ``"COCO_18"`` (case-insensitive).

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in the frames' pixels.
    """
    path = Path(path)
    if not isinstance(layout, str) or layout.upper() not in {name.upper() for name in LAYOUTS}:
        raise ValueError(f"Expected layout among {LAYOUTS}, got {layout!r}")
    layout = "auto" if layout.lower() == "auto" else layout.upper()
    if not path.exists():
        raise FileNotFoundError(f"No OpenPose JSON file or folder at {path}")
    files, ignored = _files(path)
    if not files:
        raise ValueError(f"{path}: no *.json files")
    folder = Path(image_dir) if image_dir is not None else (path if path.is_dir() else path.parent)
    count = None if layout == "auto" else _COUNTS[layout]
    kps, paths = [], []
    reasons = {"no person": 0, "incomplete (most confident person lacks a used keypoint)": 0}
    for file in files:
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
            if layout != "auto" and len(values) != 3 * _COUNTS[layout]:
                raise ValueError(f"{file}: people[{p}].pose_keypoints_2d has {len(values)} numbers; layout="
                                 f"{layout!r} expects {3 * _COUNTS[layout]}")
            if len(values) not in (75, 54):
                raise ValueError(f"{file}: people[{p}].pose_keypoints_2d has {len(values)} numbers; expected 75 "
                                 f"(BODY_25 or BODY_25B) or 54 (COCO-18)")
            if count is not None and len(values) != 3 * count:
                raise ValueError(f"{file}: people[{p}] has {len(values) // 3} keypoints but earlier files have "
                                 f"{count}")
            count = len(values) // 3
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
    has_person = np.array([a is not None for a in kps])
    if not has_person.any():
        raise ValueError(f"{path}: no person in any of {len(files)} files")
    kp = np.stack([np.zeros((count, 3)) if a is None else a for a in kps])
    present = kp[..., 2] > min_confidence
    notes = []
    if layout == "auto":
        if count == 18:
            layout = "COCO_18"
        else:
            notes.append(_check_body25(path, kp[has_person, :, :2], present[has_person]))
            layout = "BODY_25"
    if layout == "BODY_25B":
        used = list(BODY25B_FOR_LSP14)
        joints = np.nan_to_num(kp[:, used, :2])
        complete = present[:, used].all(1) & np.isfinite(kp[:, used, :2]).all((1, 2))
        vis = np.ones(joints.shape[:2], bool)
        notes.insert(0, "BODY_25B; neck = BODY_25B Neck (upper neck); head_top = BODY_25B Head (head top).")
    else:
        _, limbs, neck, face = OPENPOSE_LAYOUTS[layout]
        joints, limbs_ok, face_ok, vis = face_layout_to_lsp(kp[..., :2], present, np.ones_like(present), limbs,
                                                             neck, face)
        complete = limbs_ok & face_ok & np.isfinite(kp[..., :2]).all((1, 2))
        notes.insert(0, f"{layout}; neck = OpenPose Neck; head_top = neck + {HEAD_TOP_FACTOR}·(ears' midpoint or "
                        f"face mean - neck).")
    keep = has_person & complete
    reasons["incomplete (most confident person lacks a used keypoint)"] = int((has_person & ~complete).sum())
    if ignored:
        notes.append(f"Ignored {ignored} *.json.old files.")
    return make_annotations("openpose", path, joints, vis, keep, paths, np.arange(len(files)), LSP14, skeleton, reasons,
                            notes)
