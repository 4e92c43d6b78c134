"""MPII Human Pose loader (``mpii_human_pose_v1_u12_1.mat``, the ``RELEASE`` struct).

The file is read with ``scipy.io.loadmat(struct_as_record=False, squeeze_me=True)``:
``RELEASE.annolist(i).image.name`` names image i, ``RELEASE.annolist(i).annorect(r)`` is person r, and
``annorect(r).annopoints.point(k)`` has ``id`` (0..15), ``x``, ``y`` and ``is_visible`` (0/1, ``'0'``/``'1'``
or empty). ``RELEASE.img_train(i)`` is 1 for training images (test images carry no points).

MPII ids are MPII16's joint order (right ankle, right knee, right hip, left hip, left knee, left ankle,
pelvis, thorax, upper neck, head top, right wrist, right elbow, right shoulder, left shoulder, left elbow,
left wrist). To LSP14: the 12 limb joints one to one, LSP ``neck`` = MPII ``upper_neck``, ``head_top`` =
``head_top`` (:func:`gpumosaic.skeleton.mapping`); pelvis and thorax are dropped.

People without ``annopoints`` or with fewer than the 16 points are dropped and counted; an empty
``is_visible`` counts as visible. Provenance ids: ``1000·i + r`` (0-based annolist and annorect indices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..skeleton import LSP14, MPII16, Skeleton
from .build import Annotations2D, PathLike, make_annotations

__all__ = ["load_mpii"]


def _items(x) -> list:
    """squeeze_me gives a struct, an array of structs, or an empty array: always a list."""
    if isinstance(x, np.ndarray):
        return list(x.ravel()) if x.size else []
    return [x]


def _scalar(value, what: str, where: str) -> float:
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {what} is not a number ({value!r})") from None
    if arr.size != 1:
        raise ValueError(f"{where}: field {what} must hold one number, got {arr.size}")
    return float(arr[0])


def _visible_flag(value) -> bool:
    arr = np.asarray(value).ravel()
    if arr.size == 0:
        return True
    v = arr[0]
    if isinstance(v, str):
        return v.strip() != "0"
    return bool(float(v) != 0)


def load_mpii(path: PathLike, *, skeleton: Skeleton | str = LSP14, image_dir: PathLike | None = None,
              split: str = "train", drop_occluded: bool = False) -> Annotations2D:
    """Read the MPII ``RELEASE`` annotations: one entry per person with all 16 points.

    Args:
        path: ``mpii_human_pose_v1_u12_1.mat`` (or a file with the same ``RELEASE`` struct).
        skeleton: output layout (default LSP14; ``"mpii16"`` keeps MPII's own).
        image_dir: folder of the images; default the first existing of ``images/`` beside the file and
            ``images/`` beside its folder (the official archives' layout).
        split: ``"train"`` (images with ``img_train = 1``) or ``"all"``; ignored if the file has no
            ``img_train``.
        drop_occluded: also drop people with any point flagged ``is_visible = 0``.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in original-image pixels.
    """
    import scipy.io

    path = Path(path)
    if split not in ("train", "all"):
        raise ValueError(f"Expected split 'train' or 'all', got {split!r}")
    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable MATLAB file ({exc})") from exc
    if "RELEASE" not in mat:
        raise ValueError(f"{path}: no 'RELEASE' struct (found {sorted(k for k in mat if not k.startswith('__'))})")
    release = mat["RELEASE"]
    annolist = getattr(release, "annolist", None)
    if annolist is None:
        raise ValueError(f"{path}: RELEASE has no field 'annolist'")
    annolist = _items(annolist)
    train = getattr(release, "img_train", None)
    train = None if train is None else np.atleast_1d(np.asarray(train)).astype(bool)
    if train is not None and train.shape[0] != len(annolist):
        raise ValueError(f"{path}: RELEASE.img_train has {train.shape[0]} entries for {len(annolist)} images")

    if image_dir is None:
        folders = [path.parent / "images", path.parent.parent / "images"]
        folder = next((f for f in folders if f.is_dir()), folders[0])
    else:
        folder = Path(image_dir)

    joints, visible, keep, paths, ids = [], [], [], [], []
    reasons = {"test split": 0, "no annopoints": 0, "incomplete (< 16 points)": 0, "occluded point": 0}
    for i, anno in enumerate(annolist):
        where = f"{path}: annolist({i + 1})"
        image = getattr(anno, "image", None)
        name = getattr(image, "name", None)
        if not isinstance(name, str):
            raise ValueError(f"{where}.image.name is missing or not a string")
        for r, rect in enumerate(_items(getattr(anno, "annorect", np.empty(0)))):
            xy = np.zeros((16, 2))
            vis = np.ones(16, bool)
            seen = np.zeros(16, bool)
            points = getattr(rect, "annopoints", None)
            points = _items(getattr(points, "point", np.empty(0))) if points is not None else []
            for k, point in enumerate(points):
                pw = f"{where}.annorect({r + 1}).annopoints.point({k + 1})"
                jid = _scalar(getattr(point, "id", None), "id", pw)
                if jid != int(jid) or not 0 <= jid < 16:
                    raise ValueError(f"{pw}: field id must be an integer in 0..15, got {jid}")
                jid = int(jid)
                xy[jid] = (_scalar(getattr(point, "x", None), "x", pw), _scalar(getattr(point, "y", None), "y", pw))
                vis[jid] = _visible_flag(getattr(point, "is_visible", np.empty(0)))
                seen[jid] = True
            if train is not None and split == "train" and not train[i]:
                reason = "test split"
            elif not points:
                reason = "no annopoints"
            elif not (seen.all() and np.isfinite(xy).all()):
                reason = "incomplete (< 16 points)"
            elif drop_occluded and not vis.all():
                reason = "occluded point"
            else:
                reason = None
            if reason is not None:
                reasons[reason] += 1
            joints.append(xy)
            visible.append(vis)
            keep.append(reason is None)
            paths.append(folder / name)
            ids.append(1000 * i + r)
    n = len(keep)
    return make_annotations(
        "mpii", path, np.array(joints).reshape(n, 16, 2), np.array(visible).reshape(n, 16), np.array(keep, bool),
        paths, np.array(ids, np.int64), MPII16, skeleton, reasons,
        notes=("LSP neck = MPII upper_neck.",) if MPII16.name != getattr(skeleton, "name", skeleton) else (),
    )
