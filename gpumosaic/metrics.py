"""Evaluation metrics of the paper's §4 (DESIGN.md step 10), batched and differentiable.

* :func:`mpjpe`: mean per-joint position error (Euclidean, averaged over joints).
* :func:`pa_mpjpe` / :func:`procrustes_align`: the same after rigid Procrustes alignment (rotation +
  translation, reflections excluded; optionally a similarity with ``scale=True``), batched SVD.
* :func:`error_2d`: mean 2D joint error in pixels (the paper measures it on the 220×220 box).
* :func:`classification_rate`, :func:`topk_rate`: pose-class recognition rates.
* :func:`topk_oracle`: the best MPJPE among the decoded poses of the top-k scored classes.
* :func:`metrics_table`: a plain-text table of results.

Units: every distance is returned in the unit of its inputs, multiplied by ``factor``. The paper reports
3D errors in **millimetres**; gpumosaic's 3D poses are metres, so pass ``factor=MM_PER_M`` (1000.0) to get
the paper's numbers. Errors are not root-aligned: compare poses in one frame (oriented poses are already
centred on the torso, see :func:`gpumosaic.camera.oriented_pose`).

Convention:
    3D joints (..., J, 3) in any Cartesian frame (metres for gpumosaic); 2D joints (..., J, 2) ``(x, y)``
    pixels, ``x`` right, ``y`` down. Poses are row vectors: a rotation acts as ``p @ R.T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ._check import ShapeError, check_shape

__all__ = [
    "MM_PER_M",
    "mpjpe",
    "pa_mpjpe",
    "procrustes_align",
    "error_2d",
    "classification_rate",
    "topk_rate",
    "topk_oracle",
    "metrics_table",
]

MM_PER_M = 1000.0
"""Millimetres per metre: ``mpjpe(pred_m, gt_m, factor=MM_PER_M)`` is in mm, as the paper reports."""


def _check_pair(pred: torch.Tensor, gt: torch.Tensor, coords: str) -> torch.Size:
    """Check (..., J, coords) pairs with broadcastable leading dims; return the broadcast leading shape."""
    dims = check_shape(pred, ["*", "J", coords], name="pred")
    check_shape(gt, ["*", "J", coords], name="gt", dims=dims)
    try:
        lead = torch.broadcast_shapes(pred.shape[:-2], gt.shape[:-2])
    except RuntimeError:
        raise ShapeError(
            f"Expected pred and gt with broadcastable leading dimensions, got {tuple(pred.shape)} and "
            f"{tuple(gt.shape)}"
        ) from None
    if not (pred.is_floating_point() and gt.is_floating_point()):
        raise TypeError(f"Expected floating-point pred and gt, got {pred.dtype} and {gt.dtype}")
    if pred.device != gt.device:
        raise ValueError(f"Expected pred and gt on one device, got {pred.device} and {gt.device}")
    return lead


def _joint_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    # vector_norm has a zero subgradient at 0 (sqrt(sum(x²)) would give NaN gradients for exact matches).
    return torch.linalg.vector_norm(pred - gt, dim=-1).mean(-1)


def mpjpe(pred: torch.Tensor, gt: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """Mean per-joint position error ``(1/J) Σ_j ||pred_j - gt_j||``.

    Args:
        pred: (..., J, 3) float predicted joints.
        gt: (..., J, 3) float ground truth (leading dimensions broadcast with ``pred``'s).
        factor: multiplier of the result: 1.0 keeps the input unit, :data:`MM_PER_M` turns metres into the
            millimetres the paper reports.

    Returns:
        (...) float errors (the broadcast leading shape), differentiable.
    """
    _check_pair(pred, gt, "3")
    return _joint_error(pred, gt) * factor


def _procrustes(pred: torch.Tensor, gt: torch.Tensor, scale: bool) -> torch.Tensor:
    """Batched Kabsch / Umeyama alignment of ``pred`` onto ``gt`` (..., J, D); trusts its inputs.

    With centred ``P = pred - mean(pred)`` and ``G = gt - mean(gt)``, ``H = Pᵀ G = U S Vᵀ`` (D×D). The
    rotation minimising ``Σ_j ||R p_j - g_j||²`` is ``R = V E Uᵀ`` with ``E = diag(1, …, 1, sign det(V Uᵀ))``
    (the sign excludes reflections); the optimal scale is ``s = tr(S E) / ||P||²`` (Umeyama 1991).
    In row-vector form the aligned points are ``s · P Rᵀ + mean(gt) = s · P U E Vᵀ + mean(gt)``.
    """
    pred, gt = torch.broadcast_tensors(pred, gt)
    mu_p = pred.mean(-2, keepdim=True)
    mu_g = gt.mean(-2, keepdim=True)
    p = pred - mu_p
    g = gt - mu_g
    h = p.transpose(-1, -2) @ g  # (..., D, D)
    u, s, vh = torch.linalg.svd(h)
    # det(V Uᵀ) = det(U) det(Vᵀ) = ±1 for orthogonal factors.
    d = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    e = torch.ones_like(s)
    e = torch.cat([e[..., :-1], d[..., None]], dim=-1)  # (..., D)
    rot_t = (u * e[..., None, :]) @ vh  # Rᵀ = U E Vᵀ
    aligned = p @ rot_t
    if scale:
        # ||P||² guarded by the smallest normal float: a degenerate (single-point) pose gets s = 0.
        var = (p * p).sum(dim=(-1, -2))
        sc = (s * e).sum(-1) / var.clamp_min(torch.finfo(var.dtype).tiny)
        aligned = aligned * sc[..., None, None]
    return aligned + mu_g


def procrustes_align(pred: torch.Tensor, gt: torch.Tensor, scale: bool = False) -> torch.Tensor:
    """``pred`` moved onto ``gt`` by the best rigid (or, with ``scale``, similarity) transform.

    Minimises ``Σ_j ||s R pred_j + t - gt_j||²`` over proper rotations ``R`` (det +1; reflections are
    excluded, unlike ``scipy.linalg.orthogonal_procrustes``), translations ``t`` and, when ``scale``, a
    scale ``s > 0`` (else ``s = 1``). Batched SVD of D×D cross-covariances.

    Args:
        pred: (..., J, D) float joints to move (D = 3 for poses; any D ≥ 2 works).
        gt: (..., J, D) float targets (leading dimensions broadcast with ``pred``'s).
        scale: also fit a uniform scale (similarity Procrustes).

    Returns:
        (..., J, D) aligned ``pred``. Differentiable where the singular values of ``Pᵀ G`` are distinct
        (degenerate poses, e.g. collinear joints, can give infinite gradients through the SVD).
    """
    dims = check_shape(pred, ["*", "J", "D"], name="pred")
    check_shape(gt, ["*", "J", "D"], name="gt", dims=dims)
    _check_pair(pred, gt, str(pred.shape[-1]))
    if pred.shape[-1] < 2:
        raise ShapeError(f"Expected pred with D >= 2 coordinates, got {tuple(pred.shape)}")
    return _procrustes(pred, gt, scale)


def _procrustes_align_reference(pred: torch.Tensor, gt: torch.Tensor, scale: bool = False) -> torch.Tensor:
    """Loop twin of :func:`procrustes_align` over flattened leading dims (float64, one pose at a time)."""
    pred, gt = torch.broadcast_tensors(pred.double(), gt.double())
    lead = pred.shape[:-2]
    ps, gs = pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])
    out = []
    for p, g in zip(ps, gs):
        mp, mg = p.mean(0), g.mean(0)
        pc, gc = p - mp, g - mg
        u, s, vh = torch.linalg.svd(pc.T @ gc)
        r = vh.T @ u.T  # R = V Uᵀ
        if torch.linalg.det(r) < 0:  # reflection: flip the axis of the smallest singular value
            vh = vh.clone()
            vh[-1] = -vh[-1]
            s = s.clone()
            s[-1] = -s[-1]
            r = vh.T @ u.T
        sc = s.sum() / (pc ** 2).sum() if scale else 1.0
        out.append(sc * pc @ r.T + mg)
    return torch.stack(out).reshape(*lead, *pred.shape[-2:]) if out else pred.clone()


def pa_mpjpe(pred: torch.Tensor, gt: torch.Tensor, scale: bool = False, factor: float = 1.0) -> torch.Tensor:
    """MPJPE after Procrustes alignment of ``pred`` onto ``gt`` (rigid; similarity with ``scale=True``).

    Args:
        pred: (..., J, 3) float predicted joints.
        gt: (..., J, 3) float ground truth (leading dimensions broadcast).
        scale: include a uniform scale in the alignment.
        factor: result multiplier (:data:`MM_PER_M` for metres → mm).

    Returns:
        (...) float errors, differentiable (see :func:`procrustes_align`).
    """
    _check_pair(pred, gt, "3")
    return _joint_error(_procrustes(pred, gt, scale), gt) * factor


def error_2d(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean 2D joint error ``(1/J) Σ_j ||pred_j - gt_j||`` in pixels.

    Args:
        pred: (..., J, 2) float pixels (the paper: 2D poses in the 220×220 box).
        gt: (..., J, 2) float pixels (leading dimensions broadcast).

    Returns:
        (...) float mean pixel errors, differentiable.
    """
    _check_pair(pred, gt, "2")
    return _joint_error(pred, gt)


def _check_target(target: torch.Tensor, b: int) -> None:
    check_shape(target, [str(b)], name="target")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"Expected integer target labels, got {target.dtype}")
    if b == 0:
        raise ValueError("Expected a non-empty batch: a rate over zero samples is undefined")


def _check_logits(logits: torch.Tensor) -> dict:
    dims = check_shape(logits, ["B", "K"], name="logits")
    if not logits.is_floating_point():
        raise TypeError(f"Expected floating-point logits, got {logits.dtype}")
    return dims


def classification_rate(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose predicted class is the target (the paper's top-1 classification rate).

    Args:
        pred: (B, K) float scores/logits (prediction = argmax, ties to the lowest class), or (B,) integer
            predicted labels.
        target: (B,) integer true labels.

    Returns:
        0-d float in [0, 1] (the logits' dtype, float32 for labels). Raises for B = 0.
    """
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"Expected pred to be a torch.Tensor, got {type(pred).__name__}")
    if pred.dim() == 2:
        _check_logits(pred)
        labels, out_dtype = pred.argmax(dim=1), pred.dtype
    elif pred.dim() == 1:
        if pred.dtype.is_floating_point or pred.dtype == torch.bool:
            raise TypeError(f"Expected pred labels of an integer dtype (or (B, K) logits), got {pred.dtype}")
        labels, out_dtype = pred, torch.float32
    else:
        raise ShapeError(f"Expected pred of shape (B, K) logits or (B,) labels, got {tuple(pred.shape)}")
    _check_target(target, pred.shape[0])
    return (labels == target.to(labels.device)).to(out_dtype).mean()


def topk_rate(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of samples whose target class is among the ``k`` highest-scored classes.

    A sample counts when fewer than ``k`` classes score *strictly* higher than the target (ties are counted
    in the target's favour, so the result does not depend on ``topk``'s tie order).

    Args:
        logits: (B, K) float scores.
        target: (B,) integer true labels in [0, K).
        k: 1 ≤ k ≤ K.

    Returns:
        0-d float in [0, 1], logits' dtype. Raises for B = 0.
    """
    dims = _check_logits(logits)
    _check_target(target, dims["B"])
    _check_topk(k, dims["K"])
    t = target.to(logits.device).long()
    score = logits.gather(1, t[:, None])  # (B, 1)
    higher = (logits > score).sum(dim=1)  # (B,)
    return (higher < k).to(logits.dtype).mean()


def _check_topk(k: int, num_classes: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_classes:
        raise ValueError(f"Expected k to be an int in [1, K={num_classes}], got {k!r}")


def topk_oracle(
    logits: torch.Tensor,
    gt_pose3d: torch.Tensor,
    classes,
    k: int,
    factor: float = 1.0,
) -> torch.Tensor:
    """The paper's top-k "oracle": the lowest MPJPE among the decoded poses of the k best-scored classes.

    Args:
        logits: (B, K) float class scores.
        gt_pose3d: (B, J, 3) float ground-truth oriented 3D poses.
        classes: a :class:`gpumosaic.classes.PoseClasses` (its members' mean 3D poses are the decoded
            poses) or a (K, J, 3) float tensor of class poses.
        k: number of top classes, 1 ≤ k ≤ K (ties in the scores: ``torch.topk``'s choice).
        factor: result multiplier (:data:`MM_PER_M` for metres → mm).

    Returns:
        (B,) float: ``min_{c ∈ top-k(logits_b)} MPJPE(pose_c, gt_b)``, differentiable w.r.t. ``gt_pose3d``
        and the class poses. ``k = 1`` is the MPJPE of the top-1 class's pose.
    """
    poses = classes if isinstance(classes, torch.Tensor) else getattr(classes, "mean_pose3d", None)
    if poses is None:
        raise TypeError(f"Expected classes to be PoseClasses or a (K, J, 3) tensor, got {type(classes).__name__}")
    dims = _check_logits(logits)
    check_shape(gt_pose3d, ["B", "J", "3"], name="gt_pose3d", dims=dims)
    check_shape(poses, ["K", "J", "3"], name="classes", dims=dims)
    _check_topk(k, dims["K"])
    if not gt_pose3d.is_floating_point():
        raise TypeError(f"Expected floating-point gt_pose3d, got {gt_pose3d.dtype}")
    poses = poses.to(device=gt_pose3d.device, dtype=gt_pose3d.dtype)
    top = logits.to(gt_pose3d.device).topk(k, dim=1).indices  # (B, k)
    cand = poses[top]  # (B, k, J, 3)
    err = _joint_error(cand, gt_pose3d[:, None])  # (B, k)
    return err.amin(dim=1) * factor


def _topk_oracle_reference(logits, gt_pose3d, poses, k, factor=1.0) -> torch.Tensor:
    """Plain-loop twin of :func:`topk_oracle` (float64; ``poses`` a (K, J, 3) tensor)."""
    out = []
    for b in range(logits.shape[0]):
        order = sorted(range(logits.shape[1]), key=lambda c: -float(logits[b, c]))[:k]
        best = math.inf
        for c in order:
            e = sum(float((poses[c, j].double() - gt_pose3d[b, j].double()).norm()) for j in range(poses.shape[1]))
            best = min(best, e / poses.shape[1])
        out.append(best * factor)
    return torch.tensor(out, dtype=torch.float64)


def _scalar(v) -> float | int | str:
    if isinstance(v, torch.Tensor):
        v = v.detach()
        if v.numel() == 0:
            return float("nan")
        if v.numel() == 1:
            v = v.reshape(())
            return int(v) if not (v.is_floating_point() or v.is_complex()) else float(v)
        return float(v.double().mean())
    if isinstance(v, (bool, int)):
        return int(v)
    if isinstance(v, float):
        return v
    if isinstance(v, str):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"Expected a number or tensor in metrics_table, got {type(v).__name__}") from None


def _fmt(v, precision: int) -> str:
    v = _scalar(v)
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return f"{v:.{precision}f}"


def metrics_table(metrics: Mapping, precision: int = 2, title: str | None = None) -> str:
    """A plain-text table of results.

    Args:
        metrics: either ``{metric: value}`` (two columns) or ``{row: {metric: value}}`` (one row per entry,
            one column per metric in order of first appearance; ``-`` where a row lacks a metric). Values are
            numbers, strings or tensors (0-d, or the mean of a multi-element tensor).
        precision: digits after the decimal point for floats.
        title: optional first line.

    Returns:
        The table as a string (no trailing newline), numbers right-aligned.

    Example:
        >>> print(metrics_table({"MPJPE (mm)": 121.234, "top-1 rate": 0.5}))
        metric       value
        ----------  ------
        MPJPE (mm)  121.23
        top-1 rate    0.50
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"Expected metrics to be a mapping, got {type(metrics).__name__}")
    nested = bool(metrics) and all(isinstance(v, Mapping) for v in metrics.values())
    if nested:
        columns: list[str] = []
        for row in metrics.values():
            for name in row:
                if str(name) not in columns:
                    columns.append(str(name))
        header = [""] + columns
        body = [
            [str(r)] + [_fmt(vals[c], precision) if c in vals else "-" for c in columns]
            for r, vals in ((r, {str(n): v for n, v in row.items()}) for r, row in metrics.items())
        ]
    else:
        if any(isinstance(v, Mapping) for v in metrics.values()):
            raise TypeError("Expected metrics to be all values or all mappings, got a mix")
        header = ["metric", "value"]
        body = [[str(name), _fmt(v, precision)] for name, v in metrics.items()]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest).rstrip()

    lines = ([title] if title else []) + [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in body]
    return "\n".join(lines)
