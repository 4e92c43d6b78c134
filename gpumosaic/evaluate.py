"""Evaluation protocols of the paper's §4 on real test images: pure, batched functions (issue 10, item 3).

What is measured (every function takes plain tensors; :mod:`gpumosaic.testsets` reads test sets,
:func:`gpumosaic.predict.predict_crops` runs a checkpoint, ``gpumosaic evaluate`` ties them together):

* **2D, LSP protocol** (the paper's Table on LSP): the mean 2D joint error in pixels *on the normalised
  220×220 box*: ground truth and prediction both expressed in the box of
  :func:`~gpumosaic.geometry.fit_to_box` of the ground-truth joints (S = 220, margin 22 px), so that every
  person has the same scale whatever its size in the photo. Reported over the paper's 13 joints
  (:func:`paper_joints`) and over all J (14 for LSP14), with per-joint tables.
* **PCK@0.2 (torso)**: a joint is correct when it lies within 0.2 × the torso diameter of the ground truth,
  the torso diameter being the distance from the left shoulder to the right hip (Toshev & Szegedy's PDJ,
  the usual LSP convention). **PCKh@0.5**: within 0.5 × the head segment (neck → head top); only for
  layouts that have both joints (LSP14: ``neck``/``head_top``; MPII16: ``upper_neck``/``head_top``; not
  H36M17, whose ``head`` is not the head top). :func:`pck_reference` returns ``None`` where it does not apply.
* **3D, Human3.6M protocols** (:data:`H36M_PROTOCOLS`): MPJPE in mm over the 13 joints, absolute (both
  poses oriented and centred on the torso centre, :func:`gpumosaic.camera.oriented_pose`) and after rigid
  Procrustes alignment (rotation + translation, no scale: :func:`gpumosaic.metrics.pa_mpjpe`).
* **Class lower bound** (the paper's Figure 8): the error of the class nearest to the ground truth, i.e.
  the best any classifier over these K classes can do: :func:`class_lower_bound`, in 2D (class mean 2D poses
  vs. the box ground truth) and in 3D (class mean 3D poses vs. the oriented ground truth).
* **Uncertainty**: :func:`bootstrap_ci` (percentile bootstrap of a mean, optionally resampling *groups*,
  e.g. test instants seen by several cameras) and :func:`paired_bootstrap` (two predictors on the same
  test entries: the interval of the difference of their means, resampling the same entries for both).

The paper's 13 joints (:func:`paper_joints`): its 3D pose model has 13 joints, the 12 limb joints
(shoulders, elbows, wrists, hips, knees, ankles) and one head joint, with no neck (the same 13 joints as
its Human3.6M protocols). From LSP14 we therefore drop ``neck`` and keep ``head_top`` as the head: the LSP
neck is a point between the shoulders, fixed by them to a few pixels, so keeping it would dilute the error
with a nearly free joint. From H36M17 the trunk joints (pelvis, spine, thorax, neck/nose) are dropped and
``head`` kept; from MPII16 pelvis, thorax and upper neck are dropped. Both 13- and all-joint figures are
reported.

Convention:
    2D joints (..., J, 2) ``(x, y)`` pixels, ``x`` right, ``y`` down, pixel centres at integers; "box"
    pixels are those of the S×S normalised box. 3D joints (..., J, 3) metres in the camera frame (``x``
    right, ``y`` down, ``z`` forward), torso-centred; errors reported in mm (``× 1000``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ._check import check_shape
from .metrics import MM_PER_M, procrustes_align
from .skeleton import Skeleton, get_skeleton

__all__ = [
    "H36M_PROTOCOLS",
    "H36MProtocol",
    "Interval",
    "PairedComparison",
    "LowerBound",
    "paper_joints",
    "joint_errors",
    "mean_error",
    "pck",
    "pck_reference",
    "torso_diameter",
    "head_segment",
    "errors_3d",
    "class_lower_bound",
    "bootstrap_ci",
    "paired_bootstrap",
    "per_joint_table",
]

# Joints of the paper's 13-joint model, per layout: the 12 limb joints and the head.
_LIMBS = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
          "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist")
_HEAD = {"lsp14": "head_top", "mpii16": "head_top", "h36m17": "head"}
_NECK = {"lsp14": "neck", "mpii16": "upper_neck"}  # layouts with a neck AND a head top (PCKh)


@dataclass(frozen=True)
class H36MProtocol:
    """A Human3.6M evaluation protocol.

    Attributes:
        name: ``"p1"`` or ``"p2"``.
        train_subjects: subjects a model may be trained on (mocap and images).
        test_subjects: subjects evaluated.
        frame_step: every ``frame_step``-th frame of each test sequence is evaluated (1 = all).
        aligned: the protocol's headline error is after rigid Procrustes alignment (the absolute error is
            reported as well).
    """

    name: str
    train_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]
    frame_step: int
    aligned: bool


H36M_PROTOCOLS = {
    "p1": H36MProtocol("p1", ("S1", "S5", "S6", "S7", "S8", "S9"), ("S11",), 64, True),
    "p2": H36MProtocol("p2", ("S1", "S5", "S6", "S7", "S8"), ("S9", "S11"), 1, False),
}
"""The paper's two Human3.6M protocols: P1 trains on S1, S5–S9 and tests every 64th frame of S11, error
after rigid alignment (and absolute); P2 trains on S1, S5–S8 and tests all frames of S9 and S11, absolute
error. Both over the 13 joints of :func:`paper_joints`."""


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap confidence interval.

    Attributes:
        mean: the statistic on the full sample.
        low, high: the percentile bootstrap interval at ``level``.
        level: e.g. 0.95.
        n: number of resampled units (entries, or groups when resampling groups).
        n_boot: number of bootstrap resamples.
    """

    mean: float
    low: float
    high: float
    level: float
    n: int
    n_boot: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Two predictors on the same test entries (:func:`paired_bootstrap`).

    Attributes:
        mean_a, mean_b: the two means on the full sample.
        difference: :class:`Interval` of ``mean_a - mean_b``.
        p_value: two-sided bootstrap p-value of "no difference": ``2 · min(P(d ≤ 0), P(d ≥ 0))`` over the
            resampled differences ``d`` (clipped to 1).
    """

    mean_a: float
    mean_b: float
    difference: Interval
    p_value: float

    def as_dict(self) -> dict:
        return {"mean_a": self.mean_a, "mean_b": self.mean_b, "difference": self.difference.as_dict(),
                "p_value": self.p_value}


@dataclass(frozen=True)
class LowerBound:
    """Output of :func:`class_lower_bound`.

    Attributes:
        error: (N,) float, the error of the nearest class to each ground truth (input unit × ``factor``).
        index: (N,) int64, that class (ties: lowest index).
    """

    error: torch.Tensor
    index: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Joints
# ----------------------------------------------------------------------------------------------------------


def paper_joints(skeleton: Skeleton | str) -> tuple[int, ...]:
    """Indices of the paper's 13 joints (12 limb joints + head) in ``skeleton``, in skeleton order.

    LSP14 drops ``neck``; MPII16 drops pelvis, thorax, upper neck; H36M17 drops pelvis, spine, thorax,
    neck/nose (see the module docstring for why).
    """
    skel = get_skeleton(skeleton)
    names = set(_LIMBS) | {_HEAD[skel.name]}
    return tuple(k for k, n in enumerate(skel.names) if n in names)


def _pair(pred: torch.Tensor, gt: torch.Tensor, coords: str) -> None:
    dims = check_shape(pred, ["N", "J", coords], name="pred")
    check_shape(gt, ["N", "J", coords], name="gt", dims=dims)
    if not (pred.is_floating_point() and gt.is_floating_point()):
        raise TypeError(f"Expected floating-point pred and gt, got {pred.dtype} and {gt.dtype}")


def joint_errors(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each joint ``||pred_j - gt_j||``.

    Args:
        pred: (N, J, D) float (D = 2 pixels or 3 metres).
        gt: (N, J, D) float, same shape.

    Returns:
        (N, J) float distances in the input unit.
    """
    _pair(pred, gt, "D")
    return torch.linalg.vector_norm(pred - gt, dim=-1)


def mean_error(errors: torch.Tensor, joints: tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean over the selected joints of per-joint errors: (N, J) -> (N,).

    Args:
        errors: (N, J) float, e.g. :func:`joint_errors`.
        joints: joint indices to average (``None``: all J).
    """
    check_shape(errors, ["N", "J"], name="errors")
    return (errors if joints is None else errors[:, list(joints)]).mean(-1)


def _distance(gt: torch.Tensor, skel: Skeleton, a: str, b: str) -> torch.Tensor:
    return torch.linalg.vector_norm(gt[..., skel.index(a), :] - gt[..., skel.index(b), :], dim=-1)


def torso_diameter(gt: torch.Tensor, skeleton: Skeleton | str) -> torch.Tensor:
    """PCK's torso reference: ``||l_shoulder - r_hip||`` of the ground truth, (N, J, 2) -> (N,)."""
    skel = get_skeleton(skeleton)
    check_shape(gt, ["N", str(len(skel)), "D"], name="gt")
    return _distance(gt, skel, "l_shoulder", "r_hip")


def head_segment(gt: torch.Tensor, skeleton: Skeleton | str) -> torch.Tensor | None:
    """PCKh's reference: ``||head_top - neck||`` of the ground truth (N,), or ``None`` for layouts without
    a neck and a head top (H36M17)."""
    skel = get_skeleton(skeleton)
    check_shape(gt, ["N", str(len(skel)), "D"], name="gt")
    if skel.name not in _NECK:
        return None
    return _distance(gt, skel, _NECK[skel.name], "head_top")


def pck(errors: torch.Tensor, reference: torch.Tensor, threshold: float) -> torch.Tensor:
    """Correct-keypoint mask: ``errors[n, j] <= threshold · reference[n]``.

    Args:
        errors: (N, J) float joint distances (:func:`joint_errors`).
        reference: (N,) float per-sample reference length (:func:`torso_diameter`, :func:`head_segment`).
        threshold: e.g. 0.2 (PCK torso) or 0.5 (PCKh).

    Returns:
        (N, J) bool; its mean over entries and joints is the PCK rate.
    """
    dims = check_shape(errors, ["N", "J"], name="errors")
    check_shape(reference, ["N"], name="reference", dims=dims)
    if not threshold > 0:
        raise ValueError(f"Expected threshold > 0, got {threshold}")
    return errors <= threshold * reference[:, None]


def pck_reference(kind: str, gt: torch.Tensor, skeleton: Skeleton | str) -> torch.Tensor | None:
    """Reference length for ``kind`` ``"torso"`` (:func:`torso_diameter`) or ``"head"``
    (:func:`head_segment`; ``None`` where the layout has no neck and head top)."""
    if kind == "torso":
        return torso_diameter(gt, skeleton)
    if kind == "head":
        return head_segment(gt, skeleton)
    raise ValueError(f"Expected kind 'torso' or 'head', got {kind!r}")


def errors_3d(pred: torch.Tensor, gt: torch.Tensor, joints: tuple[int, ...] | None = None,
              aligned: bool = False) -> torch.Tensor:
    """Per-joint 3D errors in mm, absolute or after rigid Procrustes alignment on the selected joints.

    Args:
        pred: (N, J, 3) float predicted oriented poses, metres.
        gt: (N, J, 3) float ground-truth oriented poses, metres (both torso-centred for the absolute error).
        joints: the joints used (alignment is fitted on these only); ``None``: all.
        aligned: rotate and translate ``pred`` onto ``gt`` first (no scale, no reflection).

    Returns:
        (N, J') float per-joint errors in millimetres, J' = ``len(joints)``.
    """
    _pair(pred, gt, "3")
    if joints is not None:
        pred, gt = pred[:, list(joints)], gt[:, list(joints)]
    if aligned and pred.shape[0]:
        pred = procrustes_align(pred, gt)
    return torch.linalg.vector_norm(pred - gt, dim=-1) * MM_PER_M


# ----------------------------------------------------------------------------------------------------------
# Class lower bound (Figure 8)
# ----------------------------------------------------------------------------------------------------------


def class_lower_bound(gt: torch.Tensor, class_poses: torch.Tensor, joints: tuple[int, ...] | None = None,
                      factor: float = 1.0, chunk: int | None = None) -> LowerBound:
    """Error of the class nearest to each ground truth: ``min_k (1/J) Σ_j ||class_k,j - gt_n,j||``.

    The best a K-way classifier decoding the class's mean pose can reach (the paper's Figure 8 lower
    bound); "nearest" is by the reported metric itself (mean joint distance over ``joints``), so the result
    is exactly the lowest achievable error.

    Args:
        gt: (N, J, D) float ground truth (D = 2: box pixels; D = 3: oriented metres).
        class_poses: (K, J, D) float class poses (``PoseClasses.mean_pose2d`` mapped to the same box, or
            ``mean_pose3d``).
        joints: the joints averaged (``None``: all).
        factor: result multiplier (:data:`~gpumosaic.metrics.MM_PER_M` for metres → mm).
        chunk: ground truths per (chunk, K, J) distance block (``None``: about 2**24 elements per block).

    Returns:
        :class:`LowerBound` with (N,) errors and (N,) int64 nearest classes.
    """
    dims = check_shape(gt, ["N", "J", "D"], name="gt")
    check_shape(class_poses, ["K", "J", "D"], name="class_poses", dims=dims)
    if dims["K"] == 0:
        raise ValueError("Expected at least one class, got K=0")
    sel = list(range(dims["J"])) if joints is None else list(joints)
    g = gt[:, sel]
    c = class_poses[:, sel].to(device=gt.device, dtype=gt.dtype)
    n, k = dims["N"], dims["K"]
    chunk = max(1, (1 << 24) // max(1, k * len(sel))) if chunk is None else int(chunk)
    errs, idxs = [], []
    for start in range(0, n, chunk):
        d = torch.linalg.vector_norm(g[start:start + chunk, None] - c[None], dim=-1).mean(-1)  # (chunk, K)
        e, i = d.min(dim=1)
        errs.append(e)
        idxs.append(i)
    if not errs:
        return LowerBound(gt.new_zeros(0), torch.zeros(0, dtype=torch.long, device=gt.device))
    return LowerBound(torch.cat(errs) * factor, torch.cat(idxs))


def _class_lower_bound_reference(gt, class_poses, joints=None, factor=1.0) -> LowerBound:
    """Plain-loop twin of :func:`class_lower_bound` (float64)."""
    sel = list(range(gt.shape[1])) if joints is None else list(joints)
    errs, idxs = [], []
    for p in gt.double():
        best, arg = math.inf, -1
        for k, c in enumerate(class_poses.double()):
            e = sum(float((c[j] - p[j]).norm()) for j in sel) / len(sel)
            if e < best:
                best, arg = e, k
        errs.append(best * factor)
        idxs.append(arg)
    return LowerBound(torch.tensor(errs, dtype=torch.float64), torch.tensor(idxs, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------


def _group_sums(values: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums and counts (G,), float64; without groups every entry is its own group."""
    v = values.detach().double()
    if groups is None:
        return v, torch.ones_like(v)
    _, inverse = torch.unique(groups, return_inverse=True)
    g = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(g, dtype=torch.float64, device=v.device).index_add_(0, inverse, v)
    counts = torch.zeros(g, dtype=torch.float64, device=v.device).index_add_(0, inverse, torch.ones_like(v))
    return sums, counts


def _draws(num_groups: int, n_boot: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """Resampled group indices, as (rows, G) int64 blocks of at most about 2**24 entries (n_boot rows)."""
    rows = max(1, (1 << 24) // max(1, num_groups))
    return [torch.randint(num_groups, (min(rows, n_boot - s), num_groups), generator=generator, device=device)
            for s in range(0, n_boot, rows)]


def _check_values(values: torch.Tensor, groups: torch.Tensor | None, name: str) -> None:
    dims = check_shape(values, ["N"], name=name)
    if not values.is_floating_point():
        raise TypeError(f"Expected floating-point {name}, got {values.dtype}")
    if dims["N"] == 0:
        raise ValueError(f"Expected non-empty {name}: a mean over zero entries is undefined")
    if groups is not None:
        check_shape(groups, ["N"], name="groups", dims=dims)
        if groups.dtype.is_floating_point:
            raise TypeError(f"Expected integer groups, got {groups.dtype}")


def _check_boot(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"Expected n_boot to be a positive int, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"Expected level in (0, 1), got {level}")


def _interval(full: float, stats: torch.Tensor, level: float, n: int) -> Interval:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64, device=stats.device)
    low, high = torch.quantile(stats, q).tolist()  # linear interpolation, as numpy.percentile's default
    return Interval(mean=full, low=low, high=high, level=level, n=n, n_boot=stats.numel())


def _generator(generator: torch.Generator | None, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0) if generator is None else generator


def bootstrap_ci(values: torch.Tensor, groups: torch.Tensor | None = None, n_boot: int = 2000,
                 level: float = 0.95, generator: torch.Generator | None = None) -> Interval:
    """Percentile bootstrap confidence interval of a mean.

    Each resample draws G units with replacement, where a unit is an entry or, with ``groups``, a group of
    entries (e.g. the crops of one test instant seen by several cameras, which are not independent); the
    resampled statistic is the mean over all entries of the drawn units (``Σ sums / Σ counts``).

    Args:
        values: (N,) float per-entry values (e.g. per-image errors, or 0/1 correct flags).
        groups: (N,) integer unit of each entry, or ``None`` (each entry is a unit).
        n_boot: number of resamples.
        level: confidence level, e.g. 0.95.
        generator: ``torch.Generator`` on ``values``' device (default: seeded with 0, so reports are
            reproducible).

    Returns:
        :class:`Interval` (Python floats).
    """
    _check_values(values, groups, "values")
    _check_boot(n_boot, level)
    sums, counts = _group_sums(values, groups)
    gen = _generator(generator, values.device)
    stats = torch.cat([sums[i].sum(1) / counts[i].sum(1) for i in _draws(sums.numel(), n_boot, gen, values.device)])
    return _interval(float(sums.sum() / counts.sum()), stats, level, sums.numel())


def _bootstrap_ci_reference(values, groups=None, n_boot=2000, level=0.95, generator=None) -> Interval:
    """Loop twin of :func:`bootstrap_ci` (same draws, statistic recomputed from the raw entries)."""
    v = values.double().tolist()
    keys = list(range(len(v))) if groups is None else groups.tolist()
    units = sorted(set(keys))
    members = {u: [x for x, k in zip(v, keys) if k == u] for u in units}
    gen = _generator(generator, values.device)
    stats = []
    for block in _draws(len(units), n_boot, gen, values.device):
        for row in block.tolist():
            picked = [x for u in row for x in members[units[u]]]
            stats.append(sum(picked) / len(picked))
    return _interval(sum(v) / len(v), torch.tensor(stats, dtype=torch.float64), level, len(units))


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor | None = None, n_boot: int = 2000,
                     level: float = 0.95, generator: torch.Generator | None = None) -> PairedComparison:
    """Compare two predictors evaluated on the same entries: bootstrap of ``mean(a) - mean(b)``.

    Both are resampled with the *same* draws (the pairing removes the between-entry variance shared by the
    two predictors), by entry or by ``groups`` as in :func:`bootstrap_ci`.

    Args:
        a, b: (N,) float per-entry values of the two predictors on the same entries, in the same order.
        groups: (N,) integer unit of each entry (e.g. test instant), or ``None``.
        n_boot, level, generator: as in :func:`bootstrap_ci`.

    Returns:
        :class:`PairedComparison`; a difference interval clear of zero means the predictors differ at
        ``level``.
    """
    _check_values(a, groups, "a")
    _check_values(b, groups, "b")
    if a.shape != b.shape:
        raise ValueError(f"Expected a and b of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    sa, counts = _group_sums(a, groups)
    sb, _ = _group_sums(b, groups)
    sd = sa - sb
    gen = _generator(generator, a.device)
    stats = torch.cat([sd[i].sum(1) / counts[i].sum(1) for i in _draws(sd.numel(), n_boot, gen, a.device)])
    full = float(sd.sum() / counts.sum())
    p = min(1.0, 2.0 * min(float((stats <= 0).double().mean()), float((stats >= 0).double().mean())))
    return PairedComparison(mean_a=float(sa.sum() / counts.sum()), mean_b=float(sb.sum() / counts.sum()),
                            difference=_interval(full, stats, level, sd.numel()), p_value=p)


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


def per_joint_table(values: torch.Tensor, skeleton: Skeleton | str, joints: tuple[int, ...] | None = None) -> dict:
    """Mean of (N, J) per-joint values (errors, or PCK flags) per joint name: ``{name: float}``.

    Args:
        values: (N, J) float or bool, J = the skeleton's joints (or ``len(joints)`` when given).
        skeleton: names the columns.
        joints: the skeleton indices the columns stand for (``None``: all, in order).
    """
    skel = get_skeleton(skeleton)
    sel = list(range(len(skel))) if joints is None else list(joints)
    check_shape(values, ["N", str(len(sel))], name="values")
    means = values.double().mean(0).tolist() if values.shape[0] else [float("nan")] * len(sel)
    return {skel.names[j]: m for j, m in zip(sel, means)}
