"""Mocap diversity subset (DESIGN.md step 1): greedily keep a pose only if it differs from every kept pose.

Both poses are first aligned on their torso centre (mean of shoulders and hips: translation only). Two rules:

- ``rule="max"`` (the paper's): a pose differs from a kept pose when at least one joint is at least
  ``threshold`` away, i.e. ``max_j ||p_j - q_j|| >= threshold`` (default 5 cm);
- ``rule="mean"`` (the Human3.6M variant): when the average joint distance
  ``mean_j ||p_j - q_j|| >= threshold`` (default 15 mm).

Greedy selection is sequential by nature (whether pose i is kept depends on the poses kept before it). The
fast path processes the candidates in blocks of ``block``: a block is compared with all kept poses in one
batched op (per-joint ``cdist``, chunked over the kept poses), then conflicts inside the block are resolved
by a fixed-point iteration of ``keep_i = ok_i and no earlier kept j in the block is closer than threshold``
(the greedy choice is its unique solution, reached in at most ``block`` rounds, usually a few). Each block
costs a few host syncs (the number of kept poses, the convergence test): one selection is a data-dependent
result, not a hot path.
"""

from __future__ import annotations

import numpy as np
import torch

from .._check import check_finite, check_shape
from ..skeleton import LSP14, Skeleton, get_skeleton
from .base import Mocap3D

__all__ = ["DEFAULT_THRESHOLDS", "diversity_subset", "subset_mocap"]

DEFAULT_THRESHOLDS = {"max": 0.05, "mean": 0.015}
"""Default thresholds in metres: the paper's 5 cm (any joint) and the Human3.6M variant's 15 mm (mean)."""


def _pairwise(a: torch.Tensor, b: torch.Tensor, rule: str) -> torch.Tensor:
    """Pose distances (A, B) between aligned poses a (A, J, 3) and b (B, J, 3)."""
    # Per-joint Euclidean distance matrices (J, A, B), computed directly (not via the |x|²+|y|²-2xy expansion).
    d = torch.cdist(a.transpose(0, 1), b.transpose(0, 1), compute_mode="donot_use_mm_for_euclid_dist")
    return d.amax(0) if rule == "max" else d.mean(0)


def _validate(poses: torch.Tensor, skeleton, threshold, rule: str, block: int, chunk: int) -> tuple[Skeleton, float]:
    check_shape(poses, ["M", "J", "3"], name="poses")
    skeleton = get_skeleton(skeleton)
    if poses.shape[1] != len(skeleton):
        raise ValueError(f"Expected poses with J={len(skeleton)} joints ({skeleton.name}), got {tuple(poses.shape)}")
    if not poses.is_floating_point():
        raise TypeError(f"Expected floating-point poses, got {poses.dtype}")
    if rule not in DEFAULT_THRESHOLDS:
        raise ValueError(f"Expected rule in {sorted(DEFAULT_THRESHOLDS)}, got {rule!r}")
    threshold = DEFAULT_THRESHOLDS[rule] if threshold is None else float(threshold)
    if not threshold >= 0:
        raise ValueError(f"Expected threshold >= 0 metres, got {threshold}")
    if block <= 0 or chunk <= 0:
        raise ValueError(f"Expected block > 0 and chunk > 0, got block={block}, chunk={chunk}")
    check_finite(poses, "poses")
    return skeleton, threshold


def diversity_subset(poses: torch.Tensor, skeleton: Skeleton | str = LSP14, threshold: float | None = None,
                     rule: str = "max", *, block: int = 256, chunk: int = 4096) -> torch.Tensor:
    """Indices of the greedy diversity subset, in input order.

    Pose ``i`` (in order) is kept iff its distance to every previously kept pose is ``>= threshold``, the
    distance being ``max_j`` (``rule="max"``) or ``mean_j`` (``rule="mean"``) of ``||p_j - q_j||`` after both
    poses are translated so their torso centres coincide. Pose 0 is always kept.

    Args:
        poses: float (M, J, 3) metres.
        skeleton: the layout (its ``torso`` joints define the centre).
        threshold: metres; ``None`` means :data:`DEFAULT_THRESHOLDS` ``[rule]``.
        rule: ``"max"`` (the paper's any-joint rule) or ``"mean"`` (the Human3.6M variant).
        block: candidates compared with the kept set at once.
        chunk: kept poses per batched distance op (bounds the (J, block, chunk) temporary).

    Returns:
        int64 (K,) ascending indices into ``poses``, on ``poses.device``.
    """
    skeleton, threshold = _validate(poses, skeleton, threshold, rule, block, chunk)
    m = poses.shape[0]
    aligned = poses - skeleton.torso_centre(poses)[:, None]
    kept = torch.empty_like(aligned)  # kept poses, packed at the front
    count = 0
    chosen = []
    for start in range(0, m, block):  # sequential over blocks: greedy order
        cand = aligned[start:start + block]
        b = cand.shape[0]
        ok = torch.ones(b, dtype=torch.bool, device=poses.device)
        for k0 in range(0, count, chunk):
            ok &= (_pairwise(cand, kept[k0:min(k0 + chunk, count)], rule) >= threshold).all(1)
        # Within the block: conflict[i, j] = candidate j comes before i and is closer than the threshold.
        conflict = (_pairwise(cand, cand, rule) < threshold).tril_(-1)
        keep = ok
        for _ in range(b):  # fixed point: the first t entries are final after t rounds
            new = ok & ~(conflict & keep[None, :]).any(1)
            if torch.equal(new, keep):
                break
            keep = new
        idx = torch.nonzero(keep).squeeze(1)
        n_new = idx.numel()
        kept[count:count + n_new] = cand[idx]
        count += n_new
        chosen.append(idx + start)
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long, device=poses.device)


def diversity_subset_reference(poses: torch.Tensor, skeleton: Skeleton | str = LSP14,
                               threshold: float | None = None, rule: str = "max") -> torch.Tensor:
    """Plain greedy loop twin of :func:`diversity_subset` (tests only): one candidate, one kept pose at a time."""
    skeleton, threshold = _validate(poses, skeleton, threshold, rule, 1, 1)
    p = poses.detach().cpu().double().numpy()
    torso = list(skeleton.torso)
    kept: list[int] = []
    for i in range(p.shape[0]):
        a = p[i] - p[i, torso].mean(0)
        different = True
        for k in kept:
            b = p[k] - p[k, torso].mean(0)
            dists = np.sqrt(((a - b) ** 2).sum(-1))  # (J,) per-joint distances
            dist = dists.max() if rule == "max" else dists.mean()
            if dist < threshold:
                different = False
                break
        if different:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=poses.device)


def subset_mocap(mocap: Mocap3D, threshold: float | None = None, rule: str = "max", *, block: int = 256,
                 chunk: int = 4096) -> Mocap3D:
    """The :func:`diversity_subset` of a :class:`~gpumosaic.sources.base.Mocap3D` (ids kept)."""
    index = diversity_subset(mocap.poses, mocap.skeleton, threshold, rule, block=block, chunk=chunk)
    return Mocap3D(poses=mocap.poses[index], skeleton=mocap.skeleton, ids=mocap.ids[index])
