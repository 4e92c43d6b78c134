"""Test sets for ``gpumosaic evaluate``: real images with 2D ground truth, and 3D ground truth where known.

Kinds (:data:`TEST_KINDS`, ``--test KIND:PATH``):

* every 2D loader of :data:`gpumosaic.sources.build.POOL_KINDS` (``lsp``, ``coco``, ``mpii``, ``openpose``,
  ``h36m2d``): the loader's :class:`~gpumosaic.sources.build.Annotations2D` (its options pass through);
  no 3D ground truth;
* ``jsonl``: images plus a JSON Lines file in the format ``gpumosaic generate`` writes
  (``annotations.jsonl``: one record per image with ``image`` (path relative to the file's folder),
  ``pose2d`` (J×2 pixels of that image), optionally ``pose3d`` (J×3 oriented metres), ``occluded`` or
  ``visible`` (J booleans), ``skeleton``, ``mocap_index``); a hand-written file with those fields works too;
* ``h36m``: Human3.6M under protocol P1 or P2 (:data:`gpumosaic.evaluate.H36M_PROTOCOLS`) from the flat
  ``.npz`` files of :mod:`gpumosaic.sources.h36m`: PATH is the 2D file, option ``mocap=`` the 3D file.
  The 3D ground truth of each frame is expressed in its camera's frame by a camera fitted to the sequence's
  own 2D/3D correspondences (:func:`fit_camera`, direct linear transform: the flat files carry no camera
  parameters), then centred on the torso centre (the oriented pose of :func:`gpumosaic.camera.oriented_pose`).

``groups`` number the test *instants*: entries of one group are not independent (one moment seen by several
cameras, one mocap pose rendered from several views) and are resampled together by the bootstrap.

Selection (``--test KIND:PATH:SELECTOR``, ``load_test_set(..., selection=)``, :func:`select_test_set`): the
grammar of pools and mocap (:mod:`gpumosaic.sources.select`) with keys ``id`` (``annotations.ids``: the loader's
provenance id; ``jsonl``: the record's ``index``, else its 0-based line number; ``h36m``: the frame number),
``row`` (position in the loaded test set), and ``seq`` / ``frame`` (``id // 100000`` / ``id % 100000``, so for
ids below 100000 ``frame`` is the id itself and ``seq`` is 0).

Convention:
    2D ground truth in pixels of the original image (``x`` right, ``y`` down, pixel centres at integers);
    3D ground truth in metres, camera frame (``x`` right, ``y`` down, ``z`` forward), torso-centred.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .camera import torso_centre
from .skeleton import LSP14, Skeleton, get_skeleton
from .sources.build import POOL_KINDS, Annotations2D, LoadReport, load_annotations
from .sources.select import Selection, parse_selection

__all__ = ["TEST_KINDS", "TestSet", "load_test_set", "select_test_set", "load_jsonl_test_set", "load_h36m_test_set",
           "fit_camera"]

TEST_KINDS = tuple(sorted(POOL_KINDS)) + ("jsonl", "h36m")
"""Test set kinds accepted by :func:`load_test_set`."""


@dataclass(frozen=True)
class TestSet:
    """N test entries: a person in an image with its ground truth.

    Attributes:
        annotations: 2D ground truth in image pixels, image paths, ids, skeleton (a loader's output).
        pose3d: (N, J, 3) float oriented 3D ground truth (metres), or ``None`` when unknown.
        groups: (N,) int64 test instant of each entry (see the module docstring).
        name: a label for reports, e.g. ``"lsp:/data/lsp"``.
    """

    __test__ = False  # not a pytest class

    annotations: Annotations2D
    pose3d: torch.Tensor | None
    groups: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        n, j = self.annotations.joints.shape[:2]
        if self.pose3d is not None and tuple(self.pose3d.shape) != (n, j, 3):
            raise ValueError(f"Expected pose3d of shape {(n, j, 3)}, got {tuple(self.pose3d.shape)}")
        if tuple(self.groups.shape) != (n,):
            raise ValueError(f"Expected groups of shape ({n},), got {tuple(self.groups.shape)}")

    def __len__(self) -> int:
        return len(self.annotations)

    @property
    def skeleton(self) -> Skeleton:
        return self.annotations.skeleton

    def subset(self, index: Sequence[int] | torch.Tensor) -> "TestSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, annotations=self.annotations.subset(index), groups=self.groups[index],
                       pose3d=None if self.pose3d is None else self.pose3d[index])


def load_test_set(kind: str, path: str | os.PathLike, *, group_by: str = "default",
                  selection: Selection | str | None = None, **options) -> TestSet:
    """Read a test set of kind ``kind`` (:data:`TEST_KINDS`) at ``path``.

    Args:
        kind: ``jsonl``, ``h36m`` or a 2D loader kind.
        path: the file or folder the loader reads.
        group_by: ``"default"`` (the kind's instants: H36M frames across cameras, ``jsonl`` mocap poses,
            else every entry alone), ``"entry"`` (every entry alone) or ``"id"`` (entries sharing a
            provenance id, e.g. the frame number of several cameras' OpenPose files).
        selection: keep only these entries (:func:`select_test_set`; a
            :class:`~gpumosaic.sources.select.Selection` or selector text such as ``"frame=0-49"``);
            ``None`` keeps all.
        **options: the loader's keywords (see :func:`load_jsonl_test_set`, :func:`load_h36m_test_set` and
            the 2D loaders).
    """
    kind = kind.lower()
    if group_by not in ("default", "entry", "id"):
        raise ValueError(f"Expected group_by 'default', 'entry' or 'id', got {group_by!r}")
    if kind == "jsonl":
        test = load_jsonl_test_set(path, **options)
    elif kind == "h36m":
        test = load_h36m_test_set(path, **options)
    elif kind in POOL_KINDS:
        ann = load_annotations(kind, path, **options)
        test = TestSet(ann, None, torch.arange(len(ann)), f"{kind}:{path}")
    else:
        raise ValueError(f"Unknown test set kind {kind!r}; expected one of {list(TEST_KINDS)}")
    if group_by == "entry":
        test = replace(test, groups=torch.arange(len(test)))
    elif group_by == "id":
        test = replace(test, groups=torch.unique(test.annotations.ids, return_inverse=True)[1])
    return test if selection is None else select_test_set(test, selection)


def select_test_set(test: TestSet, selection: Selection | str) -> TestSet:
    """The entries of ``test`` that ``selection`` keeps, in their order (see the module docstring for the keys).

    Groups are renumbered 0..G-1 over the kept entries (an instant keeps its entries that are selected);
    ``name`` gains the selector.

    Args:
        test: the test set.
        selection: a :class:`~gpumosaic.sources.select.Selection` or selector text (``"id=3-7|frame=20-"``).

    Raises:
        ValueError: the selector does not parse, or keeps no entry (naming the selector and the test set).
    """
    if isinstance(selection, str):
        selection = parse_selection(selection)
    elif not isinstance(selection, Selection):
        raise TypeError(f"Expected selection as a Selection or a selector string, got {type(selection).__name__}")
    keep = selection.mask(test.annotations.ids)
    index = torch.nonzero(keep).reshape(-1)
    if index.numel() == 0:
        ids = test.annotations.ids
        span = f"ids {int(ids.min())}..{int(ids.max())}" if len(ids) else "no ids"
        raise ValueError(f"Selection {selection.text!r} keeps none of the {len(test)} entries of test set "
                         f"{test.name} ({span}; id, row, seq = id // 100000 and frame = id % 100000 are tested)")
    sub = test.subset(index)
    return replace(sub, groups=torch.unique(sub.groups, return_inverse=True)[1],
                   name=f"{test.name}:{selection.text}")


def _field(record: dict, name: str, shape: tuple, where: str) -> np.ndarray:
    try:
        arr = np.asarray(record[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"{where}: missing field {name!r}") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} holds non-numbers") from None
    if arr.shape != shape:
        raise ValueError(f"{where}: field {name!r} must be {'×'.join(map(str, shape))}, got shape {arr.shape}")
    return arr


def load_jsonl_test_set(path: str | os.PathLike, *, image_dir: str | os.PathLike | None = None,
                        skeleton: Skeleton | str | None = None) -> TestSet:
    """Read images + a JSON Lines file in ``gpumosaic generate``'s format (see the module docstring).

    Args:
        path: the ``.jsonl`` file, or a folder holding ``annotations.jsonl``.
        image_dir: folder the records' ``image`` paths are relative to (default: the file's folder).
        skeleton: the layout (default: the records' ``skeleton`` field, else LSP14).

    Returns:
        :class:`TestSet`; ``pose3d`` when every record has one; groups = ``mocap_index`` when every record
        has one (views of one mocap pose form one instant), else one per record; ids = ``index`` when
        present, else the line number.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "annotations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No JSON Lines file at {path}")
    folder = Path(image_dir) if image_dir is not None else path.parent
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object per line")
            records.append((line_no, rec))
    if not records:
        raise ValueError(f"{path}: no records")
    names = {rec.get("skeleton") for _, rec in records} - {None}
    if len(names) > 1:
        raise ValueError(f"{path}: records mix skeletons {sorted(names)}")
    skel = get_skeleton(skeleton if skeleton is not None else (names.pop() if names else LSP14))
    j = len(skel)
    joints, visible, pose3d, paths, ids, groups = [], [], [], [], [], []
    for line_no, rec in records:
        where = f"{path}:{line_no}"
        if rec.get("skeleton") not in (None, skel.name):
            raise ValueError(f"{where}: skeleton {rec['skeleton']!r} differs from {skel.name!r}")
        joints.append(_field(rec, "pose2d", (j, 2), where))
        if "visible" in rec:
            visible.append(np.asarray(rec["visible"], dtype=bool))
        else:
            visible.append(~np.asarray(rec.get("occluded", [False] * j), dtype=bool))
        if visible[-1].shape != (j,):
            raise ValueError(f"{where}: 'visible'/'occluded' must hold {j} booleans")
        pose3d.append(_field(rec, "pose3d", (j, 3), where) if "pose3d" in rec else None)
        if "image" not in rec:
            raise ValueError(f"{where}: missing field 'image'")
        paths.append(folder / rec["image"])
        ids.append(int(rec.get("index", line_no - 1)))
        groups.append(rec.get("mocap_index"))
    n = len(records)
    report = LoadReport(source=str(path), kind="jsonl", total=n, kept=n)
    ann = Annotations2D(joints=torch.from_numpy(np.stack(joints)).float(), visible=torch.from_numpy(np.stack(visible)),
                        image_paths=tuple(paths), skeleton=skel, ids=torch.tensor(ids, dtype=torch.long),
                        report=report)
    p3 = torch.from_numpy(np.stack(pose3d)).float() if all(p is not None for p in pose3d) else None
    g = (torch.unique(torch.tensor(groups), return_inverse=True)[1] if all(x is not None for x in groups)
         else torch.arange(n))
    return TestSet(ann, p3, g, f"jsonl:{path}")


def fit_camera(world: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pinhole camera from 3D-2D correspondences: normalised direct linear transform + RQ decomposition.

    Solves ``x ~ P X`` for the 3×4 matrix ``P`` (Hartley & Zisserman, Alg. 7.1: both point sets centred and
    scaled to mean distance √2 / √3 first), then ``P = λ K [R | t]`` with ``K`` upper triangular with a positive
    diagonal and ``R`` a rotation (``det R = +1``; the sign of ``P`` is chosen so that λ > 0, i.e. the points lie
    in front of the camera). Lens distortion is not modelled.

    Args:
        world: (M, 3) float points, M ≥ 6, not all coplanar.
        image: (M, 2) float pixels of their projections.

    Returns:
        ``(K (3, 3), R (3, 3), t (3,))`` float64 with ``x ~ K (R X + t)``.
    """
    import scipy.linalg

    world, image = np.asarray(world, np.float64), np.asarray(image, np.float64)
    if world.ndim != 2 or world.shape[1] != 3 or image.shape != (world.shape[0], 2) or world.shape[0] < 6:
        raise ValueError(f"Expected world (M, 3) and image (M, 2) with M >= 6, got {world.shape} and {image.shape}")

    def normaliser(p: np.ndarray) -> np.ndarray:
        d = p.shape[1]
        c = p.mean(0)
        s = np.sqrt(d) / max(np.linalg.norm(p - c, axis=1).mean(), 1e-12)
        t = np.eye(d + 1)
        t[:d, :d] *= s
        t[:d, d] = -s * c
        return t

    t2, t3 = normaliser(image), normaliser(world)
    xw = np.c_[world, np.ones(len(world))] @ t3.T  # (M, 4)
    xi = np.c_[image, np.ones(len(image))] @ t2.T  # (M, 3)
    zero = np.zeros_like(xw)
    a = np.concatenate([np.concatenate([xw, zero, -xi[:, :1] * xw], 1),
                        np.concatenate([zero, xw, -xi[:, 1:2] * xw], 1)])
    p = np.linalg.svd(a, full_matrices=False)[2][-1].reshape(3, 4)  # (2M, 12): U never formed in full
    p = np.linalg.inv(t2) @ p @ t3
    if np.linalg.det(p[:, :3]) < 0:
        p = -p
    k, r = scipy.linalg.rq(p[:, :3])
    d = np.diag(np.sign(np.diag(k)))
    k, r = k @ d, d @ r  # D·D = I: K keeps a positive diagonal
    t = np.linalg.solve(k, p[:, 3])  # P[:, 3] = λ K t and k = λ K here
    return k / k[2, 2], r, t


def load_h36m_test_set(path: str | os.PathLike, *, mocap: str | os.PathLike, protocol: str = "p1",
                       image_root: str | os.PathLike | None = None, image_pattern: str | None = None,
                       actions: Sequence[str] | None = None, cameras: Sequence[int] | None = None,
                       skeleton: Skeleton | str = LSP14) -> TestSet:
    """Human3.6M test frames of protocol ``protocol`` with 2D and oriented 3D ground truth.

    Args:
        path: the flat 2D ``.npz`` (``"subject/action/camera"`` keys, see :mod:`gpumosaic.sources.h36m`).
        mocap: the flat 3D ``.npz`` (``"subject/action"`` keys).
        protocol: ``"p1"`` (every 64th frame of S11) or ``"p2"`` (all frames of S9 and S11).
        image_root, image_pattern: where the frames are (see :func:`~gpumosaic.sources.h36m.load_h36m_2d`);
            needed to run a checkpoint, not to score a predictions file.
        actions, cameras: restrict further (``None``: all).
        skeleton: layout of the ground truth (LSP14 default, as the classes).

    Returns:
        :class:`TestSet`; groups = (sequence, frame) instants across cameras; ids = frame numbers. Frames
        without a 3D pose of the same number are dropped.
    """
    from .evaluate import H36M_PROTOCOLS
    from .sources.h36m import H36M_CAMERAS, load_h36m_2d, load_h36m_3d

    if protocol not in H36M_PROTOCOLS:
        raise ValueError(f"Expected protocol in {sorted(H36M_PROTOCOLS)}, got {protocol!r}")
    proto = H36M_PROTOCOLS[protocol]
    skel = get_skeleton(skeleton)
    step = proto.frame_step
    loaded = load_h36m_3d(mocap, skeleton=skel, subjects=proto.test_subjects, actions=actions, stride=step)
    rows = {(loaded.sequences[int(s)], int(f)): i
            for i, (s, f) in enumerate(zip(loaded.sequence.tolist(), loaded.frame.tolist()))}
    poses = loaded.mocap.poses.double().numpy()
    with np.load(Path(path), allow_pickle=False) as npz:
        keys = sorted(npz.files)
    parts, pose3d, instants, dropped = [], [], [], 0
    instant_ids: dict[tuple[str, int], int] = {}
    for key in keys:
        fields = key.split("/")
        if len(fields) != 3 or fields[0] not in proto.test_subjects:
            continue
        subject, action, cam = fields
        cam_index = H36M_CAMERAS.index(cam) if cam in H36M_CAMERAS else int(cam)
        if (actions is not None and action not in actions) or (cameras is not None and cam_index not in cameras):
            continue
        ann = load_h36m_2d(path, skeleton=skel, image_root=image_root, image_pattern=image_pattern,
                           subjects=[subject], actions=[action], cameras=[cam_index], stride=step)
        frames = (ann.ids * step).tolist()
        match = [rows.get((f"{subject}/{action}", f)) for f in frames]
        keep = [i for i, m in enumerate(match) if m is not None]
        dropped += len(frames) - len(keep)
        if not keep:
            continue
        ann = ann.subset(keep)
        world = poses[[match[i] for i in keep]]  # (F, J, 3)
        k_, r, t = fit_camera(world.reshape(-1, 3), ann.joints.double().numpy().reshape(-1, 2))
        cam_pts = torch.from_numpy(world @ r.T + t)
        pose3d.append(cam_pts - torso_centre(cam_pts, skel)[:, None])
        parts.append(ann)
        for i in keep:
            instants.append(instant_ids.setdefault((f"{subject}/{action}", frames[i]), len(instant_ids)))
    if not parts:
        raise ValueError(f"{path}: no {protocol} test frame (subjects {proto.test_subjects}) with a 3D pose in {mocap}")
    n = sum(len(a) for a in parts)
    report = LoadReport(source=str(path), kind=f"h36m-{protocol}", total=n + dropped, kept=n,
                        dropped={"no 3D pose of that frame": dropped} if dropped else {},
                        notes=(f"protocol {protocol}: subjects {', '.join(proto.test_subjects)}, every {step}. frame; "
                               "3D in each camera's frame by a DLT camera fitted per sequence",))
    ann = Annotations2D(joints=torch.cat([a.joints for a in parts]), visible=torch.cat([a.visible for a in parts]),
                        image_paths=tuple(p for a in parts for p in a.image_paths), skeleton=skel,
                        ids=torch.cat([a.ids * step for a in parts]), report=report)
    return TestSet(ann, torch.cat(pose3d).float(), torch.tensor(instants, dtype=torch.long), f"h36m-{protocol}:{path}")
