"""Pose classes (paper §3, DESIGN.md step 9): GPU k-means over flattened oriented 3D poses.

The paper turns 3D pose estimation into K-way classification: K-means (K = 5000, k-means++ initialisation)
over the training set's *oriented* 3D poses (camera frame, translated to the torso centre, see
:func:`gpumosaic.camera.oriented_pose`), each pose flattened to a ``J·3`` vector. A sample's class is its
nearest centre; decoding a class returns the mean 3D (and 2D) pose of its members.

* :func:`kmeans` is the batched functional core: k-means++ seeding (:func:`kmeans_plusplus`) then Lloyd
  iterations whose squared distances ``||x||² - 2 x·c + ||c||²`` are matrix products chunked over N, so
  N = 10⁶ poses and k = 5000 centres fit in a few GB (one (chunk, k) distance block at a time).
* :class:`PoseClasses` holds the centres and the members' mean poses; :meth:`PoseClasses.fit`,
  :meth:`~PoseClasses.encode`, :meth:`~PoseClasses.decode`, :meth:`~PoseClasses.save` /
  :meth:`~PoseClasses.load` (``.npz`` with plain arrays and a JSON string: no pickle anywhere).

Convention:
    3D poses are metres in the camera frame (``x`` right, ``y`` down, ``z`` forward), translated to the
    torso centre; 2D poses are ``(x, y)`` pixels of the S×S box. Flattening is row-major: feature
    ``3·j + c`` is coordinate ``c`` of joint ``j``.

K-means is not differentiable: every result here is computed under ``torch.no_grad()`` (inputs that
require gradients are accepted; centres and means come back detached).

Host syncs: the Lloyd loop checks its relative-inertia stopping rule once per iteration (one scalar read);
``tol <= 0`` skips the check and runs exactly ``iters`` iterations without any sync. Seeding, assignment,
update and empty-cluster re-seeding are sync-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ._check import check_finite, check_shape, checks_enabled
from .skeleton import LSP14, Skeleton, get_skeleton

__all__ = ["KMeansResult", "kmeans", "kmeans_plusplus", "assign", "PoseClasses", "DEFAULT_K"]

DEFAULT_K = 5000
"""The paper's number of pose classes K."""

_FORMAT = "gpumosaic.PoseClasses"
_VERSION = 1

# torch.multinomial accepts at most 2**24 categories; beyond, D² sampling falls back to an inverse-CDF draw.
_MULTINOMIAL_MAX = 2**24

# Elements of one (chunk, k) squared-distance block when ``chunk=None``: 2**26 floats = 256 MB in float32.
_BLOCK_ELEMENTS = 2**26


@dataclass(frozen=True)
class KMeansResult:
    """Output of :func:`kmeans`.

    Attributes:
        centres: (k, D) float, the final centres (dtype/device of the data).
        labels: (N,) int64, index of each point's nearest final centre (ties: lowest index).
        inertia: 0-d float tensor, ``Σ_n ||x_n - centres[labels_n]||²`` for these labels and centres.
        iters: number of Lloyd updates performed (≤ ``iters`` of the call).
    """

    centres: torch.Tensor
    labels: torch.Tensor
    inertia: torch.Tensor
    iters: int

    def to(self, device=None) -> "KMeansResult":
        return replace(self, centres=self.centres.to(device), labels=self.labels.to(device),
                       inertia=self.inertia.to(device))


# ----------------------------------------------------------------------------------------------------------
# Functional core
# ----------------------------------------------------------------------------------------------------------


def _check_generator(generator, x: torch.Tensor) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected generator to be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"Expected generator on the data's device type {x.device.type!r}, got {generator.device.type!r}"
        )


def _default_chunk(k: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(k, 1))


def _sample_d2(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index (1,) int64 drawn with probability ∝ ``weights`` (N,) ≥ 0, not all zero."""
    n = weights.shape[0]
    if n <= _MULTINOMIAL_MAX:
        return torch.multinomial(weights, 1, generator=generator)
    # Inverse CDF in float64 (torch.multinomial refuses more than 2**24 categories).
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    u = torch.rand(1, generator=generator, device=weights.device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_max(n - 1)


@torch.no_grad()
def _kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (k,) int64 of the k-means++ seeds (Arthur & Vassilvitskii 2007); trusts its inputs."""
    n = x.shape[0]
    acc = torch.promote_types(x.dtype, torch.float32)
    xa = x.to(acc)
    x2 = (xa * xa).sum(-1)  # (N,)
    index = torch.empty(k, dtype=torch.long, device=x.device)
    # First seed: uniform over the points.
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    index[0:1] = first
    # d2[n] = squared distance from x_n to its nearest chosen seed, by ||x||² - 2 x·c + ||c||² (a matvec:
    # no (N, D) temporary). Cancellation can leave a tiny positive value at a chosen point itself, so chosen
    # points are zeroed explicitly: they are never drawn again, hence the seeds are distinct points whenever
    # the data has at least k distinct points.
    c = xa.index_select(0, first)[0]
    d2 = (x2 - 2.0 * (xa @ c) + x2.index_select(0, first)).clamp_min(0.0)
    d2 = d2.index_fill(0, first, 0.0)
    for t in range(1, k):
        total = d2.sum()
        # All remaining mass zero (fewer than k distinct points): fall back to uniform weights, without a sync.
        weights = torch.where(total > 0, d2, torch.ones_like(d2))
        pick = _sample_d2(weights, generator)  # (1,)
        index[t:t + 1] = pick
        c = xa.index_select(0, pick)[0]
        d_new = (x2 - 2.0 * (xa @ c) + x2.index_select(0, pick)).clamp_min(0.0)
        d2 = torch.minimum(d2, d_new).index_fill(0, pick, 0.0)
    return index


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding ("D² sampling").

    The first seed is uniform over the points; each next seed is drawn with probability proportional to the
    squared distance to its nearest chosen seed (``torch.multinomial`` with ``generator``). Chosen points get
    weight 0, so the seeds are distinct points of ``x`` when it has at least ``k`` distinct points; with
    fewer, the remaining seeds are drawn uniformly (duplicates then follow, and :func:`kmeans` re-seeds the
    empty clusters). Deterministic for a given generator state on a given device.

    Args:
        x: (N, D) float points, N ≥ k.
        k: number of seeds.
        generator: explicit ``torch.Generator`` on ``x``'s device type.

    Returns:
        ``(centres (k, D) in x's dtype/device, index (k,) int64)`` with ``centres = x[index]``.
    """
    check_shape(x, ["N", "D"], name="x")
    _check_k(x, k)
    _check_generator(generator, x)
    index = _kmeans_plusplus(x, int(k), generator)
    return x.index_select(0, index), index


def _check_k(x: torch.Tensor, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"Expected k to be a positive int, got {k!r}")
    if k > x.shape[0]:
        raise ValueError(f"Expected k <= N, got k={k} for x of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"Expected floating-point x, got {x.dtype}")


def _workspace(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """The reusable (chunk, k) distance block (fresh large buffers cost page faults on every chunk)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    return torch.empty(max(min(chunk, x.shape[0]), 1), k, dtype=acc, device=x.device)


@torch.no_grad()
def _assign(
    x: torch.Tensor,
    centres: torch.Tensor,
    chunk: int,
    accumulate: bool = False,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Nearest centre of every point, chunked over N (trusts its inputs).

    Returns ``labels (N,) int64``, ``min_d2 (N,)`` (accumulation dtype), and when ``accumulate`` also the
    per-centre coordinate sums ``(k, D)`` and member counts ``(k,)`` int64 (the Lloyd update's statistics,
    gathered in the same pass over ``x``). ``workspace`` is a :func:`_workspace` block reused across calls.
    """
    n, dim = x.shape
    k = centres.shape[0]
    acc = torch.promote_types(x.dtype, torch.float32)
    c = centres.to(x.dtype)
    c2 = (c.to(acc) ** 2).sum(-1)  # (k,)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    min_d2 = torch.empty(n, dtype=acc, device=x.device)
    sums = torch.zeros(k, dim, dtype=acc, device=x.device) if accumulate else None
    if workspace is None:
        workspace = _workspace(x, k, chunk)
    for s in range(0, n, chunk):
        xc = x[s:s + chunk]
        # ||x - c||² = ||x||² - 2 x·c + ||c||²: one fused matmul per chunk (tensor cores on CUDA), one
        # (chunk, k) block alive at a time. ||x||² is constant along a row, so the argmin only needs
        # ||c||² - 2 x·c and ||x||² is added to the row minimum. Cancellation can make the result slightly
        # negative, hence the clamp; near-ties may differ from an exact cdist (accepted).
        if x.dtype == acc:
            part = torch.addmm(c2[None], xc, c.T, beta=1.0, alpha=-2.0, out=workspace[: xc.shape[0]])
        else:
            part = (xc @ c.T).to(acc).mul_(-2.0).add_(c2)
        m, lab = part.min(dim=1)  # first minimal index on ties
        labels[s:s + chunk] = lab
        min_d2[s:s + chunk] = (m + (xc.to(acc) ** 2).sum(-1)).clamp_min(0.0)
        if accumulate:
            sums.index_add_(0, lab, xc.to(acc))
    counts = torch.bincount(labels, minlength=k) if accumulate else None
    return labels, min_d2, sums, counts


def assign(x: torch.Tensor, centres: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of each point by chunked matrix products.

    Args:
        x: (N, D) float points.
        centres: (k, D) float centres (same device).
        chunk: rows of ``x`` per (chunk, k) distance block; ``None`` means a block of about 2**26 elements.

    Returns:
        ``(labels (N,) int64, min_d2 (N,) float)``: nearest centre (ties: lowest index) and its squared
        distance (float32 at least).
    """
    dims = check_shape(x, ["N", "D"], name="x")
    check_shape(centres, ["K", "D"], name="centres", dims=dims)
    if centres.device != x.device:
        raise ValueError(f"Expected centres on {x.device}, got {centres.device}")
    chunk = _default_chunk(centres.shape[0]) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"Expected chunk >= 1, got {chunk}")
    labels, min_d2, _, _ = _assign(x, centres, chunk)
    return labels, min_d2


def _assign_reference(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain loop twin of :func:`assign` (exact distances, float64)."""
    xs, cs = x.double().cpu(), centres.double().cpu()
    labels, mins = [], []
    for p in xs:
        d = [float(((p - c) ** 2).sum()) for c in cs]
        best = min(range(len(d)), key=lambda i: (d[i], i))
        labels.append(best)
        mins.append(d[best])
    return torch.tensor(labels, dtype=torch.long), torch.tensor(mins, dtype=torch.float64)


@torch.no_grad()
def _lloyd_update(
    x: torch.Tensor, centres: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, min_d2: torch.Tensor
) -> torch.Tensor:
    """New centres = members' means; empty clusters re-seeded with the farthest points (sync-free).

    The r-th empty cluster (in index order) takes the point with the r-th largest distance to its own
    centre (as in scikit-learn). Those points leave their old clusters at the next assignment.
    """
    k = centres.shape[0]
    means = (sums / counts.clamp_min(1)[:, None].to(sums.dtype)).to(x.dtype)
    empty = counts == 0  # (k,)
    far = torch.topk(min_d2, min(k, x.shape[0]), largest=True, sorted=True).indices  # (k,)
    rank = (torch.cumsum(empty.long(), 0) - 1).clamp_min(0)  # r for the r-th empty cluster
    reseed = x.index_select(0, far.index_select(0, rank))  # (k, D), only used where empty
    return torch.where(empty[:, None], reseed, means)


def kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    iters: int = 50,
    tol: float = 1e-4,
    chunk: int | None = None,
    init: str | torch.Tensor = "k-means++",
    progress: bool = False,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding, batched and chunked (CPU or CUDA).

    Each iteration assigns every point to its nearest centre (squared distances by matmul, in chunks of
    ``chunk`` rows) and moves each centre to its members' mean. **Empty clusters** are re-seeded with the
    points farthest from their current centres (the r-th empty cluster takes the r-th farthest point), so
    all k centres stay finite (never NaN). Iterations stop once the relative inertia change
    ``|I_prev - I| / I_prev`` falls below ``tol`` (``tol <= 0``: exactly ``iters`` updates, no host sync).
    The returned labels and inertia are those of the returned centres (a final assignment follows the
    last update). With ``init`` given as a tensor and ``tol=0`` this is the same algorithm as
    ``scipy.cluster.vq.kmeans2(x, init, iter=iters, minit="matrix")`` (as long as no cluster empties).

    Args:
        x: (N, D) float points (not modified).
        k: number of clusters, 1 ≤ k ≤ N.
        generator: explicit ``torch.Generator`` on ``x``'s device type; required for ``"k-means++"``.
        iters: maximum number of Lloyd updates.
        tol: relative inertia change below which iterations stop.
        chunk: rows per (chunk, k) distance block; ``None`` means about 2**26 elements per block
            (256 MB in float32; N = 10⁶, k = 5000, D = 51 then needs ≈ 0.3 GB besides ``x``'s 0.2 GB).
        init: ``"k-means++"`` or a (k, D) tensor of initial centres.
        progress: show a tqdm bar over iterations (its inertia read is one extra sync per iteration).

    Returns:
        :class:`KMeansResult` with centres (k, D) in ``x``'s dtype/device, labels (N,) int64, inertia (0-d,
        float32 at least) and the number of updates.
    """
    check_shape(x, ["N", "D"], name="x")
    _check_k(x, k)
    k = int(k)
    if not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"Expected iters to be an int >= 0, got {iters!r}")
    chunk = _default_chunk(k) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"Expected chunk >= 1, got {chunk}")
    check_finite(x, "x")
    x = x.detach()  # k-means is not differentiable (see the module docstring)
    if isinstance(init, str):
        if init != "k-means++":
            raise ValueError(f"Expected init to be 'k-means++' or a (k, D) tensor, got {init!r}")
        _check_generator(generator, x)
        centres = x.index_select(0, _kmeans_plusplus(x, k, generator))
    elif isinstance(init, torch.Tensor):
        check_shape(init, [str(k), str(x.shape[1])], name="init")
        check_finite(init, "init")
        centres = init.detach().to(device=x.device, dtype=x.dtype).clone()
    else:
        raise TypeError(f"Expected init to be a str or a torch.Tensor, got {type(init).__name__}")

    from tqdm.auto import tqdm

    workspace = _workspace(x, k, chunk)
    prev = None
    done = 0
    labels = min_d2 = None
    bar = tqdm(range(int(iters)), desc="k-means", unit="it", disable=not progress, leave=False)
    for _ in bar:
        labels, min_d2, sums, counts = _assign(x, centres, chunk, accumulate=True, workspace=workspace)
        inertia = min_d2.sum()
        if progress:
            bar.set_postfix(inertia=f"{float(inertia):.6g}")
        if tol > 0 and prev is not None:
            # One scalar read per iteration: the stopping rule is data-dependent by nature.
            rel = (prev - inertia).abs() / prev.clamp_min(torch.finfo(prev.dtype).tiny)
            if float(rel) < tol:
                break  # labels / min_d2 are those of the current centres
        centres = _lloyd_update(x, centres, sums, counts, min_d2)
        done += 1
        prev = inertia
        labels = None
    bar.close()
    if labels is None:  # the last update moved the centres: assign once more
        labels, min_d2, _, _ = _assign(x, centres, chunk, workspace=workspace)
    return KMeansResult(centres=centres, labels=labels, inertia=min_d2.sum(), iters=done)


def _kmeans_reference(x: torch.Tensor, init: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-loop Lloyd twin of :func:`kmeans` with ``tol=0`` (float64, CPU; small inputs only)."""
    xs = x.double().cpu()
    cs = init.double().cpu().clone()
    for _ in range(iters):
        labels, mins = _assign_reference(xs, cs)
        order = sorted(range(len(xs)), key=lambda n: -float(mins[n]))
        r = 0
        new = cs.clone()
        for c in range(len(cs)):
            members = [n for n in range(len(xs)) if int(labels[n]) == c]
            if members:
                new[c] = xs[members].mean(0)
            else:
                new[c] = xs[order[r]]
                r += 1
        cs = new
    labels, _ = _assign_reference(xs, cs)
    return cs, labels


# ----------------------------------------------------------------------------------------------------------
# Pose classes
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _member_means(values: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``values`` (N, F) per label (k, F); zeros for labels without members."""
    acc = torch.promote_types(values.dtype, torch.float32)
    sums = torch.zeros(k, values.shape[1], dtype=acc, device=values.device).index_add_(0, labels, values.to(acc))
    return (sums / counts.clamp_min(1)[:, None].to(acc)).to(values.dtype)


@dataclass(frozen=True)
class PoseClasses:
    """K pose classes: k-means centres of oriented 3D poses and their members' mean poses (paper §3).

    Attributes:
        centres: (K, J, 3) float, k-means centres (metres, oriented camera frame).
        mean_pose3d: (K, J, 3) float, mean 3D pose of each class's members (the centre if it has none).
        mean_pose2d: (K, J, 2) float, mean 2D pose (px) of the members (zeros if it has none), or ``None``
            when fitted without 2D poses.
        counts: (K,) int64, number of training poses in each class.
        skeleton: name of the joint layout (e.g. ``"lsp14"``).
    """

    centres: torch.Tensor
    mean_pose3d: torch.Tensor
    mean_pose2d: torch.Tensor | None
    counts: torch.Tensor
    skeleton: str = LSP14.name

    def __post_init__(self) -> None:
        dims = check_shape(self.centres, ["K", "J", "3"], name="centres")
        check_shape(self.mean_pose3d, ["K", "J", "3"], name="mean_pose3d", dims=dims)
        if self.mean_pose2d is not None:
            check_shape(self.mean_pose2d, ["K", "J", "2"], name="mean_pose2d", dims=dims)
        check_shape(self.counts, ["K"], name="counts", dims=dims)
        if dims.get("K", 1) < 1:
            raise ValueError("Expected at least one class, got K=0")
        skel = get_skeleton(self.skeleton)
        object.__setattr__(self, "skeleton", skel.name)
        if "J" in dims and dims["J"] != len(skel):
            raise ValueError(f"centres have J={dims['J']} but skeleton {skel.name} has {len(skel)} joints")

    @property
    def num_classes(self) -> int:
        """K."""
        return self.centres.shape[0]

    def __len__(self) -> int:
        return self.centres.shape[0]

    @property
    def device(self) -> torch.device:
        return self.centres.device

    def to(self, device=None) -> "PoseClasses":
        return replace(
            self,
            centres=self.centres.to(device),
            mean_pose3d=self.mean_pose3d.to(device),
            mean_pose2d=None if self.mean_pose2d is None else self.mean_pose2d.to(device),
            counts=self.counts.to(device),
        )

    def state(self) -> dict:
        """Plain CPU tensors and the skeleton name, safe for ``torch.load(weights_only=True)`` checkpoints:
        ``centres``, ``mean_pose3d``, ``mean_pose2d`` (``None`` when absent), ``counts``, ``skeleton``."""
        return {
            "centres": self.centres.detach().cpu(),
            "mean_pose3d": self.mean_pose3d.detach().cpu(),
            "mean_pose2d": None if self.mean_pose2d is None else self.mean_pose2d.detach().cpu(),
            "counts": self.counts.detach().cpu(),
            "skeleton": self.skeleton,
        }

    @classmethod
    def from_state(cls, state: dict, device=None) -> "PoseClasses":
        """The classes of a :meth:`state` dict (other keys are ignored), on ``device``."""
        return cls(centres=state["centres"], mean_pose3d=state["mean_pose3d"], mean_pose2d=state["mean_pose2d"],
                   counts=state["counts"], skeleton=state["skeleton"]).to(device)

    # -- fitting -----------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        pose3d: torch.Tensor,
        pose2d: torch.Tensor | None = None,
        k: int = DEFAULT_K,
        generator: torch.Generator | None = None,
        skeleton: Skeleton | str = LSP14,
        iters: int = 50,
        tol: float = 1e-4,
        chunk: int | None = None,
        init: str | torch.Tensor = "k-means++",
        progress: bool = True,
    ) -> "PoseClasses":
        """K-means over flattened oriented 3D poses (DESIGN.md step 9).

        Args:
            pose3d: (N, J, 3) float oriented 3D poses, metres (not modified).
            pose2d: (N, J, 2) float 2D poses of the same samples (px), or ``None``.
            k: number of classes K (the paper's 5000 by default), ≤ N.
            generator: explicit ``torch.Generator`` on ``pose3d``'s device type (required for k-means++).
            skeleton: joint layout of the poses (J must match).
            iters, tol, chunk, init, progress: see :func:`kmeans` (``init`` tensor: (K, J, 3) or (K, J·3)).

        Returns:
            :class:`PoseClasses` on ``pose3d``'s device. Members are the training poses whose nearest final
            centre is the class (the k-means labels).
        """
        dims = check_shape(pose3d, ["N", "J", "3"], name="pose3d")
        if pose2d is not None:
            check_shape(pose2d, ["N", "J", "2"], name="pose2d", dims=dims)
            if pose2d.device != pose3d.device:
                raise ValueError(f"Expected pose2d on {pose3d.device}, got {pose2d.device}")
            check_finite(pose2d, "pose2d")
        skel = get_skeleton(skeleton)
        if dims["J"] != len(skel):
            raise ValueError(f"pose3d has J={dims['J']} but skeleton {skel.name} has {len(skel)} joints")
        n, j = dims["N"], dims["J"]
        if isinstance(init, torch.Tensor) and init.dim() == 3:
            check_shape(init, [str(k), str(j), "3"], name="init")
            init = init.reshape(init.shape[0], j * 3)
        flat = pose3d.detach().reshape(n, j * 3)
        res = kmeans(flat, k, generator=generator, iters=iters, tol=tol, chunk=chunk, init=init,
                     progress=progress)
        k = res.centres.shape[0]
        counts = torch.bincount(res.labels, minlength=k)
        centres = res.centres.reshape(k, j, 3)
        mean3 = _member_means(flat, res.labels, counts, k).reshape(k, j, 3)
        mean3 = torch.where((counts > 0)[:, None, None], mean3, centres)
        mean2 = None
        if pose2d is not None:
            mean2 = _member_means(pose2d.detach().reshape(n, j * 2), res.labels, counts, k).reshape(k, j, 2)
        return cls(centres=centres, mean_pose3d=mean3, mean_pose2d=mean2, counts=counts, skeleton=skel.name)

    # -- encode / decode ---------------------------------------------------------------------------------

    def encode(self, pose3d: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Class of each pose: its nearest centre (squared Euclidean over the flattened pose).

        Args:
            pose3d: (..., J, 3) float oriented 3D poses, metres.
            chunk: rows per distance block (see :func:`assign`).

        Returns:
            (...) int64 labels in [0, K), on ``pose3d``'s device (ties: lowest index).
        """
        j = self.centres.shape[1]
        check_shape(pose3d, ["*", str(j), "3"], name="pose3d")
        if not pose3d.is_floating_point():
            raise TypeError(f"Expected floating-point pose3d, got {pose3d.dtype}")
        lead = pose3d.shape[:-2]
        flat = pose3d.reshape(-1, j * 3)
        dtype = torch.promote_types(pose3d.dtype, self.centres.dtype)
        centres = self.centres.reshape(-1, j * 3).to(device=pose3d.device, dtype=dtype)
        k = centres.shape[0]
        chunk = _default_chunk(k) if chunk is None else int(chunk)
        if chunk < 1:
            raise ValueError(f"Expected chunk >= 1, got {chunk}")
        labels, _, _, _ = _assign(flat.to(dtype), centres, chunk)
        return labels.reshape(lead)

    def decode(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Members' mean poses of the given classes.

        Args:
            labels: (...) integer class indices in [0, K).

        Returns:
            ``(pose3d (..., J, 3), pose2d (..., J, 2) or None)`` on ``labels``'s device (``pose2d`` is
            ``None`` when the classes were fitted without 2D poses).
        """
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"Expected labels to be a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"Expected integer labels, got {labels.dtype}")
        k = self.num_classes
        if checks_enabled() and labels.numel() and bool(((labels < 0) | (labels >= k)).any()):
            raise ValueError(f"Expected labels in [0, {k}), got values outside that range")
        idx = labels.long().reshape(-1)
        p3 = self.mean_pose3d.to(labels.device).index_select(0, idx).reshape(*labels.shape, -1, 3)
        p2 = None
        if self.mean_pose2d is not None:
            p2 = self.mean_pose2d.to(labels.device).index_select(0, idx).reshape(*labels.shape, -1, 2)
        return p3, p2

    def decode_expected(self, prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probability-weighted mean of the classes' mean poses, ``Σ_k prob_k · mean_k`` (an option beside
        the paper's top-1 decoding: it hedges between likely classes instead of committing to one).

        Classes without members (their "mean" is a placeholder zero pose) get no weight; the others'
        probabilities are renormalised to sum to 1.

        Args:
            prob: float (..., K) class probabilities (e.g. a softmax; rows need not be normalised exactly).

        Returns:
            ``(pose3d (..., J, 3), pose2d (..., J, 2) or None)`` on ``prob``'s device.
        """
        if not isinstance(prob, torch.Tensor) or not prob.is_floating_point():
            raise TypeError(f"Expected floating class probabilities, got {getattr(prob, 'dtype', type(prob).__name__)}")
        if prob.shape[-1] != self.num_classes:
            raise ValueError(f"Expected prob (..., {self.num_classes}), got {tuple(prob.shape)}")
        w = prob * (self.counts > 0).to(prob.device, prob.dtype)
        w = w / w.sum(-1, keepdim=True)
        p3 = torch.einsum("...k,kjc->...jc", w, self.mean_pose3d.to(prob.device, prob.dtype))
        p2 = None
        if self.mean_pose2d is not None:
            p2 = torch.einsum("...k,kjc->...jc", w, self.mean_pose2d.to(prob.device, prob.dtype))
        return p3, p2

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` of plain arrays (no pickle) at exactly ``path``; return it.

        Arrays: ``centres``, ``mean_pose3d``, ``counts``, ``mean_pose2d`` (when present) and ``meta``, a
        0-d unicode array holding JSON (format, version, skeleton, K, J, dtype).
        """
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "skeleton": self.skeleton,
            "K": self.num_classes,
            "J": int(self.centres.shape[1]),
            "has_pose2d": self.mean_pose2d is not None,
        }
        arrays = {
            "centres": self.centres.detach().cpu().numpy(),
            "mean_pose3d": self.mean_pose3d.detach().cpu().numpy(),
            "counts": self.counts.detach().cpu().numpy().astype(np.int64),
            "meta": np.array(json.dumps(meta, sort_keys=True)),
        }
        if self.mean_pose2d is not None:
            arrays["mean_pose2d"] = self.mean_pose2d.detach().cpu().numpy()
        with open(path, "wb") as f:  # a file object: numpy does not append ".npz"
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "PoseClasses":
        """Read a file written by :meth:`save` (``np.load(allow_pickle=False)``: object arrays are refused).

        Args:
            path: the ``.npz`` file.
            device: where the tensors go (default CPU).

        Raises:
            ValueError: the file holds object arrays (pickles), lacks arrays, or is not a PoseClasses file.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise ValueError(f"Refusing to load {path}: it holds pickled object arrays ({err})") from None
        missing = {"centres", "mean_pose3d", "counts", "meta"} - set(arrays)
        if missing:
            raise ValueError(f"{path} is not a PoseClasses file: it lacks arrays {sorted(missing)}")
        meta = arrays["meta"]
        if meta.dtype.kind != "U" or meta.shape != ():
            raise ValueError(f"{path}: expected 'meta' to be a JSON string, got dtype {meta.dtype}")
        meta = json.loads(str(meta))
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"{path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
        if meta.get("has_pose2d") and "mean_pose2d" not in arrays:
            raise ValueError(f"{path}: meta says mean_pose2d is present but the array is missing")

        def tensor(name):
            return torch.from_numpy(arrays[name]).to(device)

        return cls(
            centres=tensor("centres"),
            mean_pose3d=tensor("mean_pose3d"),
            mean_pose2d=tensor("mean_pose2d") if meta.get("has_pose2d") else None,
            counts=tensor("counts").long(),
            skeleton=meta["skeleton"],
        )
