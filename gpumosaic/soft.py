"""Soft (differentiable) synthesis: the engine with gradients w.r.t. the query pose and the camera.

The paper's engine (DESIGN.md steps 4–8) is differentiable with respect to the pool images and the blending
weights, but not with respect to the query pose: the index map is an argmax (Eq. 5–6), the window of Eq. 8
has an integer half-width ``floor(R/2)`` and the skeleton distance of Eq. 7 is a minimum over bones. Soft
mode (``MosaicEngine(pool, soft=True, temperature=τ)``, or :func:`soft_mosaic`) replaces those three
steps by smooth versions that tend to them as ``τ → 0``:

1. **Soft index map** (:func:`soft_assignment`): ``a_j = softmax_j(log prob_j / τ)``, i.e.
   ``a_j = prob_j^{1/τ} / Σ_k prob_k^{1/τ}`` over the searched joints. ``τ = 1`` mixes the warps in
   proportion to their probabilities (Eq. 5 read literally as probabilities); ``τ → 0`` is the argmax. The
   logits are log-probabilities rather than the probabilities themselves so that ``τ`` is scale-free:
   two maps at 1e-3 and 1e-4 are as distinct as two at 0.5 and 0.05.
2. **Smooth skeleton distance** (:func:`soft_skeleton_distance`): per bone ``d_b = sqrt(|p - c_b|² + ε²) - ε``
   (``c_b`` the closest point of the bone, ``ε = 0.1·τ_d``: a safe square root, smooth at 0 and for
   zero-length bones), combined by the soft-min *weighted mean* ``d = Σ_b d_b · softmax_b(-d_b / τ_d)``,
   ``τ_d = τ`` px. Unlike ``-τ_d·logsumexp(-d_b/τ_d)`` it never goes below ``min_b d_b`` (so never below 0)
   and equals it exactly where bones tie (at joints), so windows never shrink and ``τ → 0`` converges
   everywhere.
3. **Smooth windows** (:func:`soft_window_weights`): with ``r = max(R/2, 0)``, ``R = α + β·d`` (Eq. 7),
   ``r0 = floor(r)`` and ``f = r - r0``, ``w_j = (1 - g)·box_j(r0)/|win(r0)| + g·box_j(r0 + 1)/|win(r0 + 1)|``
   where ``box_j(r)`` sums ``a_j`` over the clipped window of half-width ``r`` and ``g = f^{1/min(τ, 1)}``.
   ``w`` is continuous in ``d`` (at an integer ``r``, ``g → 1`` from below equals ``g = 0`` from above) and
   differentiable almost everywhere; ``τ >= 1`` interpolates linearly, ``τ → 0`` tends to the paper's
   ``floor``. Box sums use a float64 summed-area table of ``a`` (four gathers per window).

Everything else is the paper's engine, written so that gradients flow: ``fit_to_box`` of the query, the rigid
alignment ``T`` (rotation from normalised vectors with a safe norm instead of ``atan2``, so coincident
joints give a zero, not NaN, gradient), the aligned joints ``q'`` and the vertex values of Eq. 5, the
barycentric interpolation w.r.t. the triangle vertices (:func:`gpumosaic.raster.interpolate_triangulated`),
the warps (``grid_sample`` w.r.t. its grid), the distance and the windows. **Retrieval stays discrete**:
the matches ``m_j = argmin_q D_j`` (Eq. 4), the reference neighbour ``i``, the Delaunay triangulation and the
integer ``r0`` are piecewise constant in the query, so there is no gradient through the *choice* of match
(it is the gradient of the mosaic with those choices held fixed, which is the true gradient wherever they do
not change). Self-occlusion flags are discrete too.

Convention:
    as the engine: images NCHW in [0, 1]; 2D joints are ``(x, y)`` pixels, ``x`` right (column ``u``),
    ``y`` down (row ``v``); pixel ``(v, u)`` has its centre at ``(x, y) = (u, v)``. Windows are inclusive
    squares ``[u - r, u + r] × [v - r, v + r]`` clipped to the image.

Glossary: B batch, J joints (one warped image per joint), H, W image size, S output side.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ._check import check_finite, check_shape, unchecked
from .blend import blend, index_map
from .skeleton import Skeleton, get_skeleton
from .synthesis import (
    MosaicResult,
    MosaicSettings,
    PreparedPool,
    match_and_map,
    mosaic_result,
    validate_query,
    warp_matched,
)

__all__ = [
    "soft_assignment",
    "soft_skeleton_distance",
    "soft_window_weights",
    "soft_mosaic",
    "synthesise_soft",
    "DISTANCE_TEMPERATURE_PX",
]

DISTANCE_TEMPERATURE_PX = 1.0
"""Soft-min temperature of the skeleton distance per unit of ``τ``, in px: ``τ_d = τ · 1 px``."""

# Safe square root of the per-bone distance: sqrt(x + ε²) - ε with ε = _SQRT_EPS · τ_d.
_SQRT_EPS = 0.1


def _check_temperature(temperature: float, name: str = "temperature") -> float:
    if isinstance(temperature, torch.Tensor) or not isinstance(temperature, (int, float)):
        raise TypeError(f"Expected {name} as a Python float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"Expected a finite {name} > 0, got {temperature}")
    return float(temperature)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"Expected size as (H, W) with two positive ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"Expected size as (H, W) with two positive ints, got {tuple(size)}")
    return h, w


# ---------------------------------------------------------------------------------------------------------
# Soft index map (replaces argmax of Eq. 5-6)
# ---------------------------------------------------------------------------------------------------------


def soft_assignment(
    prob: torch.Tensor, searched: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Soft index map: ``a_j = prob_j^{1/τ} / Σ_k prob_k^{1/τ}`` over the searched joints.

    ``softmax_j(log prob_j / τ)``; probabilities are clamped to the dtype's smallest normal number before
    the log (a pixel where every map underflows gets equal shares). As ``τ → 0`` it tends to the one-hot of
    :func:`gpumosaic.blend.index_map` wherever the maximum is unique.

    Args:
        prob: ``(B, J, H, W)`` float probability maps, ``>= 0`` (Eq. 5).
        searched: ``(B, J)`` bool or ``None`` (all). Unsearched maps get 0; a row with no searched joint is
            treated as fully searched (as :func:`~gpumosaic.blend.index_map`).
        temperature: ``τ > 0``.

    Returns:
        ``(B, J, H, W)`` weights in [0, 1] summing to 1 over J, dtype of ``prob``; differentiable w.r.t.
        ``prob`` (zero gradient where a probability is below the clamp).

    Convention:
        ``a[b, j, v, u]`` is for pixel row ``v``, column ``u``.
    """
    dims = check_shape(prob, ["B", "J", "H", "W"], name="prob")
    if not prob.is_floating_point():
        raise TypeError(f"Expected prob as a float tensor, got {prob.dtype}")
    if searched is not None:
        check_shape(searched, ["B", "J"], name="searched", dims=dims)
        if searched.dtype != torch.bool:
            raise TypeError(f"Expected searched as a bool tensor, got {searched.dtype}")
    tau = _check_temperature(temperature)
    check_finite(prob, "prob")
    return _soft_assignment(prob, searched, tau)


def _soft_assignment(prob: torch.Tensor, searched: torch.Tensor | None, tau: float) -> torch.Tensor:
    logits = torch.log(prob.clamp_min(torch.finfo(prob.dtype).tiny)) / tau
    if searched is not None:
        keep = (searched | ~searched.any(dim=1, keepdim=True))[:, :, None, None]
        logits = logits.masked_fill(~keep, float("-inf"))  # exp(-inf) = 0: never shares a pixel
    return torch.softmax(logits, dim=1)


def soft_assignment_reference(
    prob: torch.Tensor, searched: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Plain-loop twin of :func:`soft_assignment` (math.pow per pixel, float64; tests only)."""
    bsz, joints, height, width = prob.shape
    out = torch.zeros(prob.shape, dtype=torch.float64)
    p = prob.detach().cpu().double()
    tiny = torch.finfo(prob.dtype).tiny
    for b in range(bsz):
        allowed = list(range(joints))
        if searched is not None:
            allowed = [j for j in range(joints) if bool(searched[b, j])] or allowed
        for v in range(height):
            for u in range(width):
                logs = {j: math.log(max(float(p[b, j, v, u]), tiny)) / temperature for j in allowed}
                top = max(logs.values())
                total = sum(math.exp(x - top) for x in logs.values())
                for j in allowed:
                    out[b, j, v, u] = math.exp(logs[j] - top) / total
    return out.to(device=prob.device, dtype=prob.dtype)


# ---------------------------------------------------------------------------------------------------------
# Smooth skeleton distance (replaces the minimum of Eq. 7)
# ---------------------------------------------------------------------------------------------------------


def soft_skeleton_distance(
    pose: torch.Tensor, skeleton: Skeleton | str, size: Sequence[int], temperature: float = 1.0
) -> torch.Tensor:
    """Smooth distance from every pixel centre to a 2D skeleton: soft-min weighted mean over bones.

    Per bone ``(a, b)``: closest point ``c = a + t (b - a)``, ``t = clamp((p - a)·(b - a) / |b - a|², 0, 1)``
    (``t = 0`` for a zero-length bone), ``d_b = sqrt(|p - c|² + ε²) - ε`` with ``ε = 0.1·τ_d`` (smooth at
    ``d_b = 0``; never NaN). Then ``d = Σ_b d_b · softmax_b(-d_b / τ_d)`` with ``τ_d = τ ·``
    :data:`DISTANCE_TEMPERATURE_PX`: ``min_b d_b <= d <= min_b d_b + (n_bones - 1)·τ_d/e``, equal to the
    minimum where the nearest bones tie, and ``→`` :func:`gpumosaic.raster.skeleton_distance` as ``τ → 0``.

    Args:
        pose: ``(B, J, 2)`` float joints in pixels, finite; J = ``skeleton.num_joints``.
        skeleton: :class:`~gpumosaic.skeleton.Skeleton` (or its name) whose ``bones`` are used.
        size: output ``(H, W)``.
        temperature: ``τ > 0``.

    Returns:
        ``(B, H, W)`` distances in px, ``>= 0``, dtype and device of ``pose``; smooth in ``pose`` (no kink
        on the bones, no NaN gradient for coincident or collinear joints).

    Convention:
        joints are ``(x, y)`` pixels, ``x`` right (column ``u``), ``y`` down (row ``v``); pixel ``(v, u)``
        has its centre at ``(x, y) = (u, v)``.
    """
    skeleton = get_skeleton(skeleton)
    check_shape(pose, ["B", str(skeleton.num_joints), "2"], name="pose")
    if not pose.is_floating_point():
        raise TypeError(f"Expected pose as a float tensor, got {pose.dtype}")
    check_finite(pose, "pose")
    tau = _check_temperature(temperature)
    return _soft_skeleton_distance(pose, skeleton, _check_size(size), tau)


def _soft_skeleton_distance(pose: torch.Tensor, skeleton: Skeleton, size: tuple[int, int], tau: float):
    h_, w_ = size
    dt, dev = pose.dtype, pose.device
    tau_d = tau * DISTANCE_TEMPERATURE_PX
    eps = _SQRT_EPS * tau_d
    xs = torch.arange(w_, dtype=dt, device=dev).view(1, 1, w_)
    ys = torch.arange(h_, dtype=dt, device=dev).view(1, h_, 1)
    tiny = torch.finfo(dt).tiny
    per_bone = []
    for ia, ib in list(skeleton.bones) or [(0, 0)]:  # fixed count: the skeleton's bones
        a, b = pose[:, ia], pose[:, ib]  # (B, 2)
        d = b - a
        l2 = (d * d).sum(-1)
        ok = l2 > tiny
        inv = torch.where(ok, 1.0 / torch.where(ok, l2, torch.ones_like(l2)), torch.zeros_like(l2))  # 0 if a = b
        dx, dy = d[:, 0, None, None], d[:, 1, None, None]
        px = xs - a[:, 0, None, None]  # (B, 1, W)
        py = ys - a[:, 1, None, None]  # (B, H, 1)
        t = ((px * dx + py * dy) * inv[:, None, None]).clamp(0.0, 1.0)  # (B, H, W)
        ex, ey = px - t * dx, py - t * dy
        # Safe sqrt: smooth at 0 (sqrt' would be infinite), exact up to eps.
        per_bone.append(torch.sqrt(ex * ex + ey * ey + eps * eps) - eps)
    dist = torch.stack(per_bone, 1)  # (B, n_bones, H, W)
    share = torch.softmax(-dist / tau_d, dim=1)  # soft-min weights
    return (share * dist).sum(1)


def soft_skeleton_distance_reference(
    pose: torch.Tensor, skeleton: Skeleton | str, size: Sequence[int], temperature: float = 1.0
) -> torch.Tensor:
    """Plain-loop twin of :func:`soft_skeleton_distance` (NumPy float64 per bone, textbook closest point)."""
    import numpy as np

    skeleton = get_skeleton(skeleton)
    h_, w_ = _check_size(size)
    tau_d = temperature * DISTANCE_TEMPERATURE_PX
    eps = _SQRT_EPS * tau_d
    vv, uu = np.mgrid[0:h_, 0:w_].astype(np.float64)
    pose_np = pose.detach().cpu().double().numpy()
    out = np.zeros((pose_np.shape[0], h_, w_))
    for k in range(pose_np.shape[0]):
        ds = []
        for ia, ib in skeleton.bones or [(0, 0)]:
            a, b = pose_np[k, ia], pose_np[k, ib]
            d = b - a
            l2 = float(d @ d)
            t = 0.0 if l2 == 0 else np.clip(((uu - a[0]) * d[0] + (vv - a[1]) * d[1]) / l2, 0, 1)
            ds.append(np.sqrt(np.hypot(uu - (a[0] + t * d[0]), vv - (a[1] + t * d[1])) ** 2 + eps**2) - eps)
        ds = np.stack(ds)
        e = np.exp(-(ds - ds.min(0)) / tau_d)
        out[k] = (ds * e).sum(0) / e.sum(0)
    return torch.from_numpy(out).to(device=pose.device, dtype=pose.dtype)


# ---------------------------------------------------------------------------------------------------------
# Smooth windows (replaces the integer half-width of Eq. 8)
# ---------------------------------------------------------------------------------------------------------


def soft_window_weights(
    assignment: torch.Tensor,
    distance: torch.Tensor,
    alpha: float = 6.0,
    beta: float = 0.25,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Smooth blending weights: window means of the soft index map, the window size smooth in ``d``.

    ``r = max((α + β·d)/2, 0)`` (Eq. 7), ``r0 = floor(r)``, ``f = r - r0``, ``g = f^{1/min(τ, 1)}``;
    ``w_j = (1 - g)·box_j(r0)/|win(r0)| + g·box_j(r0 + 1)/|win(r0 + 1)|``, ``box_j(ρ)`` the sum of ``a_j`` over
    ``[u - ρ, u + ρ] × [v - ρ, v + ρ] ∩ image`` and ``|win(ρ)|`` its pixel count. Continuous in ``d`` (and
    in ``a``), differentiable except where ``r`` is an integer; with a one-hot ``a`` and ``g = 0`` it is
    :func:`gpumosaic.blend.window_weights` with ``half_width = floor(R/2)``.

    Box sums: a float64 summed-area table of ``a`` (differences of float32 prefix sums over a 220×220 image
    would lose about 1e-3), eight gathers per pixel (four corners at two half-widths).

    Args:
        assignment: ``(B, J, H, W)`` float soft index map ``a`` (e.g. :func:`soft_assignment`; any weights).
        distance: ``(B, H, W)`` float distance to the skeleton ``d`` in px (e.g.
            :func:`soft_skeleton_distance`).
        alpha, beta: ``α >= 0``, ``β >= 0`` of Eq. 7 (paper: 6 px, 0.25).
        temperature: ``τ > 0``; only ``min(τ, 1)`` matters here.

    Returns:
        ``(B, J, H, W)`` weights, dtype of ``assignment``; they sum over J to the window means of
        ``Σ_j a_j`` (to 1 for a soft index map). Differentiable w.r.t. both inputs.

    Convention:
        ``[b, j, v, u]`` is for pixel row ``v``, column ``u``; windows are inclusive and clipped to the image.
    """
    dims = check_shape(assignment, ["B", "J", "H", "W"], name="assignment")
    check_shape(distance, ["B", "H", "W"], name="distance", dims=dims)
    if not (assignment.is_floating_point() and distance.is_floating_point()):
        raise TypeError(f"Expected float assignment and distance, got {assignment.dtype} and {distance.dtype}")
    if not (math.isfinite(alpha) and alpha >= 0 and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"Expected finite alpha >= 0 and beta >= 0, got alpha={alpha}, beta={beta}")
    tau = _check_temperature(temperature)
    check_finite(assignment, "assignment")
    check_finite(distance, "distance")
    return _soft_window_weights(assignment, distance, float(alpha), float(beta), tau)


def _soft_window_weights(a: torch.Tensor, distance: torch.Tensor, alpha: float, beta: float, tau: float):
    bsz, n, height, width = a.shape
    dev = a.device
    r = ((alpha + beta * distance) * 0.5).clamp_min(0)  # real half-width R / 2 (Eq. 7)
    r0 = torch.floor(r.detach())
    frac = (r - r0).clamp(0.0, 1.0)
    g = frac.pow(1.0 / min(tau, 1.0))  # tau >= 1: linear; tau -> 0: 0 on [0, 1), i.e. floor
    r0 = r0.to(torch.int64)
    # Summed-area table with a zero row and column in front: sat[y, x] sums rows < y and columns < x.
    sat = torch.nn.functional.pad(a.to(torch.float64).cumsum(2).cumsum(3), (1, 0, 1, 0))
    stride = width + 1
    flat = sat.reshape(bsz, n, (height + 1) * stride)
    rows = torch.arange(height, device=dev).view(1, height, 1)
    cols = torch.arange(width, device=dev).view(1, 1, width)

    def corner(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        pos = (yy * stride + xx).reshape(bsz, 1, height * width).expand(bsz, n, height * width)
        return torch.gather(flat, 2, pos)

    def window_mean(half: torch.Tensor) -> torch.Tensor:
        y0, y1 = (rows - half).clamp_min(0), (rows + half).clamp_max(height - 1)
        x0, x1 = (cols - half).clamp_min(0), (cols + half).clamp_max(width - 1)
        area = ((y1 - y0 + 1) * (x1 - x0 + 1)).to(torch.float64).reshape(bsz, 1, height * width)
        count = corner(y1 + 1, x1 + 1) - corner(y0, x1 + 1) - corner(y1 + 1, x0) + corner(y0, x0)
        return (count / area).view(bsz, n, height, width)

    g64 = g.to(torch.float64)[:, None]
    out = (1.0 - g64) * window_mean(r0) + g64 * window_mean(r0 + 1)
    return out.to(a.dtype)


def soft_window_weights_reference(
    assignment: torch.Tensor,
    distance: torch.Tensor,
    alpha: float = 6.0,
    beta: float = 0.25,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Plain-loop twin of :func:`soft_window_weights`: windows summed pixel by pixel (tests only)."""
    bsz, n, height, width = assignment.shape
    a = assignment.detach().cpu().double()
    d = distance.detach().cpu().double()
    out = torch.zeros((bsz, n, height, width), dtype=torch.float64)

    def mean(b: int, v: int, u: int, half: int) -> list[float]:
        sums, count = [0.0] * n, 0
        for vv in range(max(v - half, 0), min(v + half, height - 1) + 1):
            for uu in range(max(u - half, 0), min(u + half, width - 1) + 1):
                count += 1
                for j in range(n):
                    sums[j] += float(a[b, j, vv, uu])
        return [s / count for s in sums]

    for b in range(bsz):
        for v in range(height):
            for u in range(width):
                r = max((alpha + beta * float(d[b, v, u])) / 2.0, 0.0)
                r0 = math.floor(r)
                g = (r - r0) ** (1.0 / min(temperature, 1.0))
                lo, hi = mean(b, v, u, r0), mean(b, v, u, r0 + 1)
                for j in range(n):
                    out[b, j, v, u] = (1 - g) * lo[j] + g * hi[j]
    return out.to(device=assignment.device, dtype=assignment.dtype)


# ---------------------------------------------------------------------------------------------------------
# The soft engine
# ---------------------------------------------------------------------------------------------------------


def synthesise_soft(
    query: torch.Tensor,
    searched: torch.Tensor,
    settings: MosaicSettings,
    prepared: PreparedPool,
    temperature: float | None = None,
    matches: torch.Tensor | None = None,
) -> MosaicResult:
    """Core of soft mode on validated inputs (no checks): what the engine runs when ``settings.soft``.

    Computes in ``query.dtype`` (float32 or float64). Retrieval runs on the detached query in the index's
    dtype, so the matches are the hard engine's (:func:`~gpumosaic.synthesis.match_and_map`, shared).

    Args:
        query: float ``(B, J, 2)`` query poses (any frame; fitted into the S×S box here), on ``prepared``'s
            device.
        searched: bool ``(B, J)``.
        settings: the engine's :class:`~gpumosaic.MosaicSettings`.
        prepared: the pool (:func:`~gpumosaic.synthesis.prepare_pool`).
        temperature: ``τ``; ``None`` means ``settings.temperature``.
        matches: int64 ``(B, J)`` virtual pool indices to use instead of retrieval, or ``None`` (Eq. 4).

    Returns:
        :class:`~gpumosaic.MosaicResult` whose ``images`` (blended), ``mosaic_unblended`` (``Σ_j a_j I'_j``),
        ``weights`` (soft window weights), ``distance`` (smooth), ``probability``, ``aligned``, ``pose2d`` and
        ``query_from_stored`` carry gradients w.r.t. ``query``; ``index_map`` is the hard argmax of the
        probability maps (for inspection), ``matches`` etc. are as in hard mode.
    """
    s = settings
    tau = s.temperature if temperature is None else temperature
    dt = query.dtype
    searched = searched | ~searched.any(dim=1, keepdim=True)  # all-occluded rows: search everything

    # Steps 1-4 as in hard mode (box, retrieval, rigid alignment, probability maps): differentiable
    # w.r.t. the query except for the discrete choice of matches.
    mt = match_and_map(query, searched, s, prepared, matches)
    p, prob, size = mt.pose2d, mt.probability, (s.size, s.size)
    # (B, J, 3, S, S), differentiable w.r.t. the affine (grid)
    warped = warp_matched(prepared, s, mt.source_rows, mt.query_from_stored, searched, dtype=dt)

    # 5. Soft index map and soft copy-paste mosaic.
    assign = _soft_assignment(prob, searched, tau)
    unblended = blend(warped, assign)

    # 6. Smooth pose-aware blending.
    weights = distance = None
    images = unblended
    if s.blend:
        distance = _soft_skeleton_distance(p, prepared.skeleton, size, tau)
        weights = _soft_window_weights(assign, distance, float(s.alpha), float(s.beta), tau)
        images = blend(warped, weights)

    return mosaic_result(prepared, mt, searched, images=images, mosaic_unblended=unblended,
                         index_map=index_map(prob.detach(), searched), warped=warped, weights=weights,
                         distance=distance)


def soft_mosaic(
    engine,
    query: torch.Tensor,
    occluded: torch.Tensor | None = None,
    temperature: float | None = None,
    matches: torch.Tensor | None = None,
):
    """Soft-mode mosaics of ``engine``'s pool, computed in the query's own dtype (float32 or float64).

    The functional entry point of soft mode: ``MosaicEngine(pool, soft=True)(query)`` runs the same code
    (:func:`synthesise_soft`) but, like every engine call, casts the query to the engine's float32 first;
    this function keeps a float64 query in float64 (``torch.autograd.gradcheck``) and works for any engine,
    soft or not.

    Args:
        engine: a :class:`~gpumosaic.MosaicEngine`.
        query: float ``(B, J, 2)`` query poses in pixels of any frame (fitted into the S×S box);
            gradients flow back to it (and through :func:`gpumosaic.camera.render_views` to 3D poses and
            cameras).
        occluded: bool ``(B, J)`` joints not searched, or ``None``.
        temperature: ``τ > 0``; ``None`` means ``engine.settings.temperature``.
        matches: int64 ``(B, J)`` virtual pool indices in ``[0, len(engine.index))`` to use instead of
            retrieval (e.g. ``result.matches`` of another call, to hold the composition fixed while fitting
            a pose: the mosaic is then piecewise smooth in the query), or ``None`` to retrieve (Eq. 4).
            Entries of unsearched joints are ignored.

    Returns:
        :class:`~gpumosaic.MosaicResult` (see :func:`synthesise_soft`).

    Example:
        >>> from gpumosaic import MosaicEngine, load_demo_pool
        >>> engine = MosaicEngine(load_demo_pool(), size=64)
        >>> q = (torch.rand(1, 14, 2) * 100).requires_grad_()
        >>> soft_mosaic(engine, q, temperature=0.5).images.sum().backward()
        >>> q.grad.shape
        torch.Size([1, 14, 2])
    """
    query, searched = validate_query(query, occluded, engine.skeleton, engine.device)
    dims = {"B": query.shape[0], "J": query.shape[1]}
    tau = engine.settings.temperature if temperature is None else _check_temperature(temperature)
    if matches is not None:
        check_shape(matches, ["B", "J"], name="matches", dims=dict(dims))
        if matches.dtype != torch.int64:
            raise TypeError(f"Expected matches as an int64 tensor, got {matches.dtype}")
        matches = matches.to(engine.device)
        searched = searched | ~searched.any(dim=1, keepdim=True)
        if bool(((matches < 0) | (matches >= len(engine.index)))[searched].any()):
            raise IndexError(f"Expected matches in [0, {len(engine.index)}) for the searched joints")
    with unchecked():
        return synthesise_soft(query, searched, engine.settings, engine.prepared, tau, matches)
