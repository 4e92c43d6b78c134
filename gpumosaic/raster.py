"""Barycentric rasterisation over a Delaunay triangulation and skeleton distance (DESIGN.md steps 6 and 8).

* :func:`delaunay` (:mod:`gpumosaic.delaunay`, re-exported here) triangulates up to 17 points per batch
  element by brute force: every one of the C(P, 3) triples is tested against every point with the in-circle
  predicate (no loop over the batch).
* :func:`interpolate_triangulated` rasterises the piecewise-linear interpolant of per-point values over that
  triangulation, extended outside the convex hull by the value of the nearest hull point (Eq. 5 of Rogez &
  Schmid, IJCV 2018). It never loops over triangles per pixel: the plane is cut into convex regions (the
  triangles, plus the Voronoi regions of the hull edges and hull vertices outside), on each of which the
  function is affine, and every pixel row is scan-converted into region intervals.
* :func:`skeleton_distance` is the exact Euclidean distance from every pixel centre to the nearest bone
  (step 8's ``d``), closed form, one pass over the bones.

Each fast function has a plain-loop ``*_reference`` twin (SciPy / NumPy, one element at a time) used by the
tests and left out of ``__all__``.

Convention (whole module): 2D points are pixels, ``x`` to the right (column ``u``), ``y`` down (row ``v``);
pixel ``(v, u)`` has its centre at ``(x, y) = (u, v)``; the origin is the centre of the top-left pixel.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ._check import check_finite, check_shape
from .delaunay import Triangulation, candidate_triples, check_points, delaunay, delaunay_core, triangulation_regions
from .skeleton import Skeleton, get_skeleton

__all__ = ["Triangulation", "delaunay", "interpolate_triangulated", "skeleton_distance"]

# Pixels processed per chunk by interpolate_triangulated (bounds peak memory to some tens of MB).
_CHUNK_PIXELS = 1 << 20


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _check_size(size: Sequence[int], name: str = "size") -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"Expected {name} to be a pair (H, W) of ints, got {size!r}") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(size):
        raise ValueError(f"Expected {name} to be a pair (H, W) of positive ints, got {size!r}")
    return h, w


# A horizontal constraint beta*y + gamma >= 0 keeps or drops a whole row. It is folded into the same per-row
# bounds as the others: a left bound X = -_HUGE * (beta*y + gamma) (beta > 0) or a right bound
# X = _HUGE * (beta*y + gamma) (beta < 0), about -inf or +inf off the line and exactly 0 on it (the whole row,
# since columns are >= 0, for the left bound; nothing for the right bound): a row on the line goes to the +y
# side. beta*y + gamma is evaluated as a plain product then a sum (no fused multiply-add), so it is exactly 0
# on a row through the line's anchor point, and the two regions of a shared line get bit-identical bounds.
_HUGE = 1e200


def _prepare_constraints(lines: torch.Tensor, enabled: torch.Tensor):
    """Turn half-planes f = alpha*x + beta*y + gamma >= 0 (lines (B, R, 3, 3)) into per-row bounds.

    A constraint bounds row y at X(y) = k * (m*y + c): a non-horizontal one has m = -beta/alpha,
    c = -gamma/alpha, k = 1 (a line and its negation give bit-identical m and c), alpha > 0 giving x >= X (a
    left bound) and alpha < 0 giving x < X (a right bound); a horizontal one has m = beta, c = gamma,
    k = -/+_HUGE. Returns ((m, c, k) of the left bounds, (m, c, k) of the right bounds), each (B, R, 3),
    padded so that unused entries give X = -inf for a left bound and +inf for a right bound.
    """
    al, be, ga = lines.unbind(-1)
    horiz = al == 0
    left = enabled & ((al > 0) | (horiz & (be > 0)))
    right = enabled & ((al < 0) | (horiz & (be < 0)))
    safe = torch.where(horiz, torch.ones_like(al), al)
    m = torch.where(horiz, be, (-be) / safe)
    c = torch.where(horiz, ga, (-ga) / safe)
    huge = torch.full_like(al, _HUGE)
    k = torch.where(horiz, torch.where(be > 0, -huge, huge), torch.ones_like(al))
    zero, one, inf = torch.zeros_like(m), torch.ones_like(m), torch.full_like(m, float("inf"))
    return ((torch.where(left, m, zero), torch.where(left, c, -inf), torch.where(left, k, one)),
            (torch.where(right, m, zero), torch.where(right, c, inf), torch.where(right, k, one)))


def _row_bounds(m, c, k, y, reduce):
    """``reduce`` (``torch.maximum`` or ``torch.minimum``) over its 3 constraints of X = k * (m*y + c), for every
    row and region: (b, H, R). m, c, k are (b, R, 3); X is computed as a separate product and sum (no fused
    multiply-add), constraint-major (b, H, 3, R), so the reduction runs over contiguous slabs."""
    m, c, k = (t.transpose(1, 2).unsqueeze(1) for t in (m, c, k))  # (b, 1, 3, R)
    x = (m * y[None, :, None, None]).add_(c).mul_(k)  # (b, H, 3, R)
    return reduce(reduce(x[:, :, 0], x[:, :, 1]), x[:, :, 2])


def _scan_regions(cons, ok, aff, y, width, buffers=None):
    """Rasterise a piecewise-affine function given as convex regions, for a chunk of the batch.

    cons: the output of :func:`_prepare_constraints`, sliced to the chunk; ok (b, R) bool; aff (b, R, 3) float64
    affine maps (A, B, C), value = A x + B y + C; y (H,) float64 row coordinates. Returns the (b, H, W) values
    in float64.

    On every row each region is an interval [lo, hi) of x. In exact arithmetic the regions tile the row;
    with rounding, neighbours may overlap or leave a gap of the order of the rounding error. The intervals
    are sorted by ``lo``; one whose ``hi`` does not exceed every earlier ``hi`` is nested in an earlier one
    (only possible through rounding) and dropped; each remaining one then runs from ``ceil(lo)`` to the next
    one's start ("last start wins"), which tiles the row exactly with no per-pixel search. A pixel thus gets a
    region that contains it or, in a rounding gap, the region that ended just before it: the interpolant is
    continuous and an affine piece extrapolated by a rounding error stays exact to that error times its
    slope. Intervals that contain no pixel centre still take part, so a gap is never bridged by a region
    that ended far away. Pixels are evaluated in float64 (A x + (B y + C)) and only then cast to ``dtype``:
    a thin triangle's slope can be huge, and float32 would lose its value to cancellation.
    """
    b_, r_ = ok.shape
    h_ = y.shape[0]
    lo = _row_bounds(*cons[0], y, torch.maximum)  # (b, H, R): region is x >= lo ...
    hi = _row_bounds(*cons[1], y, torch.minimum)  # ... and x < hi
    keep = ok.unsqueeze(1) & (hi > lo)
    inf = torch.tensor(float("inf"), dtype=lo.dtype, device=lo.device)
    lo = torch.where(keep, lo, inf)
    hi = torch.where(keep, hi, -inf)
    lo, order = torch.sort(lo, dim=-1, stable=True)
    hi = torch.gather(hi, 2, order)
    before = torch.cat((torch.full_like(hi[..., :1], -float("inf")), torch.cummax(hi, dim=-1).values[..., :-1]), -1)
    lead = hi > before  # not nested in an earlier interval
    lead[..., 0] = True  # the row always has a first run (from column 0)
    start = torch.where(lead, torch.ceil(lo).clamp(0, width), inf)
    start[..., 0] = 0.0
    # Each leading run ends where the next leading run starts (reverse running minimum of the starts).
    nxt = torch.cat((start[..., 1:], torch.full_like(start[..., :1], float(width))), -1)
    nxt = torch.cummin(nxt.flip(-1), dim=-1).values.flip(-1)
    length = torch.where(lead, nxt - start, torch.zeros_like(start)).to(torch.long)
    offset = torch.addcmul(aff[:, None, :, 2], aff[:, None, :, 1], y[None, :, None])  # B y + C, (b, H, R)
    # (B y + C, A) of each run as one complex128 (real, imaginary) = (B y + C, A): one 16-byte element per
    # pixel gather reads both, about 2.5x faster on the CPU than gathering rows of two float64.
    pair = torch.complex(offset, aff[..., 0].unsqueeze(1).expand(b_, h_, r_))  # (b, H, R)
    pair = torch.gather(pair, 2, order).view(-1)
    run = torch.repeat_interleave(length.flatten(), output_size=b_ * h_ * width)  # run index of each pixel
    x = torch.arange(width, dtype=y.dtype, device=y.device)
    n = b_ * h_ * width
    if buffers is None or torch.is_grad_enabled() and pair.requires_grad:
        pixel = pair.index_select(0, run)
        value = None
    else:  # the caller's per-call buffers (complex gather, float64 values), reused chunk after chunk
        pixel = torch.index_select(pair, 0, run, out=buffers[0][:n])
        value = buffers[1][:n].view(b_, h_, width)
    pixel = torch.view_as_real(pixel).view(b_, h_, width, 2)
    value = torch.addcmul(pixel[..., 0], pixel[..., 1], x, out=value)
    return value  # float64; the caller casts while copying into its output, then clamps


def _interpolate(points: torch.Tensor, values: torch.Tensor, size: tuple[int, int],
                 triangles: torch.Tensor | None = None) -> torch.Tensor:
    b_, p_, _ = points.shape
    h_, w_ = size
    dev, dt = values.device, values.dtype
    tri = delaunay_core(points) if triangles is None else Triangulation(candidate_triples(p_, dev), triangles)
    (il, ie, iok, iaff), (el, ee, eok, eaff) = triangulation_regions(points, values, tri.valid, tri.triangles)
    # One list of regions: triangles then outside regions; together they tile the plane.
    with torch.no_grad():
        cons = _prepare_constraints(torch.cat((il, el), 1), torch.cat((ie, ee), 1))
    ok = torch.cat((iok, eok), 1)
    aff = torch.cat((iaff, eaff), 1)  # (B, R, 3) float64 affine maps, differentiable
    if dev.type == "cpu" and not torch.compiler.is_compiling() and ok.numel() > 0:
        # About a third of the R region slots are unused (padding for the largest possible triangulation and
        # hull); each pixel row pays for every slot, so keep the used ones, in their order, up to the most
        # any point set uses (a data-dependent size, free on the CPU). Unused regions never start a run, and
        # the row sort is stable, so the result is the same.
        used = int(ok.sum(1).max())
        order = torch.sort((~ok).to(torch.uint8), dim=1, stable=True).indices[:, :used]  # (B, R')
        pick = lambda t: torch.gather(t, 1, order.view(*order.shape, *([1] * (t.dim() - 2))).expand(  # noqa: E731
            *order.shape, *t.shape[2:]))
        cons = tuple(tuple(pick(t) for t in group) for group in cons)
        ok, aff = pick(ok), pick(aff)
    y64 = torch.arange(h_, dtype=torch.float64, device=dev)
    v64 = values.detach().to(torch.float64)
    vmin, vmax = v64.amin(1)[:, None, None], v64.amax(1)[:, None, None]
    # Widened by far more than rounding, so the clamp never acts (nor cuts gradients) on a correct result.
    slack = 1e-6 * (vmax - vmin) + 1e-12 * (vmin.abs() + vmax.abs()) + 1e-300
    vmin, vmax = vmin - slack, vmax + slack
    chunk = max(1, _CHUNK_PIXELS // (h_ * w_))
    out = torch.empty(b_, h_, w_, dtype=dt, device=dev)
    rows = min(chunk, b_) * h_ * w_
    buffers = (torch.empty(rows, dtype=torch.complex128, device=dev),
               torch.empty(rows, dtype=torch.float64, device=dev))
    for s in range(0, b_, chunk):  # chunks over the batch: a count fixed by the shapes
        sl = slice(s, min(s + chunk, b_))
        chunk_cons = tuple(tuple(t[sl] for t in group) for group in cons)
        out[sl] = _scan_regions(chunk_cons, ok[sl], aff[sl], y64, w_, buffers)
    # Every value is a convex combination of the point values; clamping to (slightly more than) their range
    # is a safety net that only acts if a triangulation escaped the consistency checks. Clamping after the
    # cast to ``dt`` with the bounds cast to ``dt`` gives the same result as clamping in float64 before it
    # (rounding is monotonic), on half (float32) the bytes.
    return out.clamp_(vmin.to(dt), vmax.to(dt))


def interpolate_triangulated(points: torch.Tensor, values: torch.Tensor, size: Sequence[int],
                             triangles: torch.Tensor | None = None) -> torch.Tensor:
    """Piecewise-linear interpolation of per-point values over their Delaunay triangulation (Eq. 5, step 6).

    Inside the convex hull of ``points[b]`` a pixel gets the barycentric interpolation of ``values[b]`` in the
    Delaunay triangle (:func:`delaunay`) that contains it (a pixel centre on an edge shared by two triangles
    goes to the one on its +x side, or +y side for a horizontal edge; both give the same value up to
    rounding). Outside the hull it gets the value of the nearest hull point, i.e. the linear
    interpolation along the nearest hull edge at the orthogonal projection, or a hull vertex's value: a
    continuous extension. Degenerate point sets:

    * all points collinear (no valid triangle): the points are sorted along their line and consecutive points
      are joined by segments; a pixel gets the value at its nearest point of those segments (the union of the
      segments joining all point pairs), interpolated linearly along the segment;
    * a single distinct point (P = 1, or all points coincident): its value everywhere;
    * coincident points: the lowest-index copy's value is used, the others are ignored;
    * near-degenerate sets whose triangulation is not consistent in floating point (4 or more points
      collinear to within rounding): treated as collinear, as above.

    The result is never NaN for finite inputs and lies within ``[values.min(), values.max()]`` of its element
    (up to 1e-6 of that range). It is differentiable w.r.t. ``values`` (linear in them) and, away from the
    measure-zero set where the triangulation or a pixel's region changes, w.r.t. ``points``. Pixels are
    evaluated in float64 and cast to ``values.dtype`` at the end. Cost: O(B * H * W) with a small constant
    (no per-triangle pass over the pixels: each pixel row is scan-converted into intervals of convex
    regions), memory bounded by processing about 2^20 pixels at a time (some tens of MB).

    Args:
        points: (B, P, 2) floating tensor of point positions in pixels, 1 <= P <= 17, finite.
        values: (B, P) floating tensor of values at the points, finite.
        size: output size (H, W).
        triangles: optional (B, T) bool, ``delaunay(points).valid`` computed beforehand (e.g. once per pool pose
            by :class:`~gpumosaic.delaunay.TriangulationCache`: the triangulation of a similar point set);
            ``None`` triangulates ``points`` here.

    Returns:
        (B, H, W) tensor of ``values.dtype`` on ``values.device``: ``out[b, v, u]`` is the interpolated value
        at pixel centre ``(x, y) = (u, v)``.

    Convention:
        points are ``(x, y)`` pixel coordinates, x right (column u), y down (row v); pixel ``(v, u)`` has its
        centre at ``(x, y) = (u, v)``, origin at the centre of the top-left pixel. Points may lie outside the
        image.

    Example:
        >>> pts = torch.tensor([[[1.0, 1.0], [8.0, 1.0], [1.0, 6.0]]])
        >>> interpolate_triangulated(pts, torch.tensor([[1.0, 0.0, 0.0]]), (8, 10)).shape
        torch.Size([1, 8, 10])
    """
    dims = check_points(points)
    check_shape(values, ["B", "P"], name="values", dims=dims)
    if not values.is_floating_point():
        raise TypeError(f"Expected values to be a floating-point tensor, got {values.dtype}")
    if values.device != points.device:
        raise ValueError(f"Expected points and values on one device, got {points.device} and {values.device}")
    check_finite(values, "values")
    h_, w_ = _check_size(size)
    if triangles is not None:
        check_shape(triangles, ["B", "T"], name="triangles", dims={"B": dims["B"], "T": math.comb(dims["P"], 3)})
        if triangles.dtype != torch.bool:
            raise TypeError(f"Expected triangles as a bool tensor, got {triangles.dtype}")
    if points.shape[0] == 0:
        return values.new_zeros(0, h_, w_)
    return _interpolate(points, values, (h_, w_), triangles)


def _nearest_on_segments(px, py, a, b, va, vb):
    """NumPy helper: for pixels (N,), segments a, b (S, 2) with values va, vb (S,), the distance to and value
    at the nearest point of every segment, (N, S) each."""
    import numpy as np

    d = b - a
    l2 = (d * d).sum(-1)
    t = ((px[:, None] - a[None, :, 0]) * d[None, :, 0] + (py[:, None] - a[None, :, 1]) * d[None, :, 1])
    t = np.clip(np.divide(t, l2[None], out=np.zeros_like(t), where=l2[None] > 0), 0.0, 1.0)
    cx, cy = a[None, :, 0] + t * d[None, :, 0], a[None, :, 1] + t * d[None, :, 1]
    return np.hypot(px[:, None] - cx, py[:, None] - cy), va[None] + t * (vb - va)[None]


def interpolate_triangulated_reference(points: torch.Tensor, values: torch.Tensor,
                                       size: Sequence[int]) -> torch.Tensor:
    """Plain-loop twin of :func:`interpolate_triangulated` (SciPy, float64, one batch element at a time).

    Per element: drop coincident copies (keep the lowest index); ``scipy.spatial.Delaunay`` +
    ``find_simplex`` + barycentric coordinates inside the hull; outside, the value at the nearest point of
    the hull edges (``Delaunay.convex_hull``). If Qhull finds the points degenerate, the segments joining
    consecutive points along their line (single point: its value). Meant for points in general position.
    """
    import numpy as np
    from scipy.spatial import Delaunay, QhullError

    h_, w_ = _check_size(size)
    pts_all = points.detach().cpu().double().numpy()
    val_all = values.detach().cpu().double().numpy()
    vv, uu = np.mgrid[0:h_, 0:w_]
    px, py = uu.ravel().astype(np.float64), vv.ravel().astype(np.float64)
    out = np.zeros((points.shape[0], h_ * w_))
    for b in range(points.shape[0]):
        keep = []
        for i in range(pts_all.shape[1]):
            if not any((pts_all[b, i] == pts_all[b, j]).all() for j in keep):
                keep.append(i)
        pts, val = pts_all[b, keep], val_all[b, keep]
        try:
            tri = Delaunay(pts) if len(keep) >= 3 else None
        except QhullError:
            tri = None
        if tri is not None:
            simplex = tri.find_simplex(np.stack([px, py], 1))
            res = np.empty(h_ * w_)
            inside = simplex >= 0
            tr = tri.transform[simplex[inside]]  # (n, 3, 2): barycentric affine maps
            bary = np.einsum("nij,nj->ni", tr[:, :2], np.stack([px, py], 1)[inside] - tr[:, 2])
            bary = np.concatenate([bary, 1 - bary.sum(1, keepdims=True)], 1)
            res[inside] = (bary * val[tri.simplices[simplex[inside]]]).sum(1)
            edges = tri.convex_hull  # (E, 2) point indices
            dist, vals = _nearest_on_segments(px[~inside], py[~inside], pts[edges[:, 0]], pts[edges[:, 1]],
                                              val[edges[:, 0]], val[edges[:, 1]])
            res[~inside] = vals[np.arange(len(dist)), dist.argmin(1)]
        elif len(keep) == 1:
            res = np.full(h_ * w_, val[0])
        else:
            ij = max(((i, j) for i in range(len(keep)) for j in range(len(keep))),
                     key=lambda ij: ((pts[ij[1]] - pts[ij[0]]) ** 2).sum())
            direction = pts[ij[1]] - pts[ij[0]]
            order = np.argsort((pts - pts[ij[0]]) @ direction, kind="stable")
            a, b_pts = pts[order[:-1]], pts[order[1:]]
            dist, vals = _nearest_on_segments(px, py, a, b_pts, val[order[:-1]], val[order[1:]])
            res = vals[np.arange(len(dist)), dist.argmin(1)]
        out[b] = res
    return torch.from_numpy(out.reshape(-1, h_, w_)).to(device=values.device, dtype=values.dtype)


# ----------------------------------------------------------------------------------------------------------
# Skeleton distance
# ----------------------------------------------------------------------------------------------------------


def skeleton_distance(pose: torch.Tensor, skeleton: Skeleton | str, size: Sequence[int]) -> torch.Tensor:
    """Exact Euclidean distance from every pixel centre to the nearest bone of a 2D skeleton (step 8's d).

    For a bone from a to b with unit direction n (any unit vector if a = b) and length L, a pixel p has an
    along-bone coordinate s = n . (p - a) and a signed perpendicular offset r = n x (p - a); its distance to
    the segment is sqrt(r^2 + e^2) with e = s - clamp(s, 0, L) the overshoot beyond the nearer end point.
    Both s and r are affine in (x, y), so each bone costs a handful of element-wise passes; the running
    minimum is over bones. A zero-length bone gives the distance to its point (no NaN).

    Args:
        pose: (B, J, 2) floating tensor of joint positions in pixels, finite; J = ``skeleton.num_joints``.
        skeleton: :class:`~gpumosaic.skeleton.Skeleton` (or its name) whose ``bones`` are used.
        size: output size (H, W).

    Returns:
        (B, H, W) tensor of ``pose.dtype`` on ``pose.device``, in pixels, >= 0. Not differentiable at pixels
        on a bone (the distance has a kink there); elsewhere differentiable w.r.t. ``pose``.

    Convention:
        joints are ``(x, y)`` pixel coordinates, x right (column u), y down (row v); pixel ``(v, u)`` has its
        centre at ``(x, y) = (u, v)``.

    Example:
        >>> from gpumosaic.skeleton import LSP14
        >>> skeleton_distance(torch.rand(2, 14, 2) * 50, LSP14, (64, 48)).shape
        torch.Size([2, 64, 48])
    """
    skeleton = get_skeleton(skeleton)
    check_shape(pose, ["B", str(skeleton.num_joints), "2"], name="pose")
    if not pose.is_floating_point():
        raise TypeError(f"Expected pose to be a floating-point tensor, got {pose.dtype}")
    check_finite(pose, "pose")
    h_, w_ = _check_size(size)
    b_ = pose.shape[0]
    dt, dev = pose.dtype, pose.device
    if b_ == 0:
        return pose.new_zeros(0, h_, w_)
    bones = list(skeleton.bones) or [(0, 0)]  # a one-joint skeleton: distance to the joint
    xs = torch.arange(w_, dtype=dt, device=dev)
    ys = torch.arange(h_, dtype=dt, device=dev)
    best = torch.full((b_, h_, w_), float("inf"), dtype=dt, device=dev)
    track = torch.is_grad_enabled() and pose.requires_grad  # static choice: out-of-place ops for autograd
    for ia, ib in bones:  # fixed count: the skeleton's bones
        a, b = pose[:, ia], pose[:, ib]  # (B, 2)
        d = b - a
        length = torch.linalg.vector_norm(d, dim=-1)  # (B,)
        degenerate = length <= torch.finfo(dt).tiny
        n = torch.where(degenerate[:, None], torch.tensor([1.0, 0.0], dtype=dt, device=dev),
                        d / torch.where(degenerate, torch.ones_like(length), length)[:, None])
        nx, ny = n[:, 0, None, None], n[:, 1, None, None]
        dx = xs[None, None, :] - a[:, 0, None, None]  # (B, 1, W)
        dy = ys[None, :, None] - a[:, 1, None, None]  # (B, H, 1)
        s = nx * dx + ny * dy  # along the bone, (B, H, W)
        r = nx * dy - ny * dx  # across the bone
        e = s - torch.minimum(s.clamp_min(0), length[:, None, None])  # overshoot beyond the nearer end
        if track:
            best = torch.minimum(best, r.square() + e.square())
        else:  # in place: no fresh (B, H, W) buffers per bone
            torch.minimum(best, r.square_().addcmul_(e, e), out=best)
    return best.sqrt() if track else best.sqrt_()


def skeleton_distance_reference(pose: torch.Tensor, skeleton: Skeleton | str,
                                 size: Sequence[int]) -> torch.Tensor:
    """Plain-loop twin of :func:`skeleton_distance` (NumPy float64; loops over batch and bones).

    Uses the textbook closest point a + t (b - a), t = clamp((p - a).(b - a) / |b - a|^2, 0, 1).
    """
    import numpy as np

    skeleton = get_skeleton(skeleton)
    h_, w_ = _check_size(size)
    vv, uu = np.mgrid[0:h_, 0:w_].astype(np.float64)
    pose_np = pose.detach().cpu().double().numpy()
    out = np.zeros((pose_np.shape[0], h_, w_))
    for k in range(pose_np.shape[0]):
        best = np.full((h_, w_), np.inf)
        for ia, ib in skeleton.bones or [(0, 0)]:
            a, b = pose_np[k, ia], pose_np[k, ib]
            d = b - a
            l2 = float(d @ d)
            t = 0.0 if l2 == 0 else np.clip(((uu - a[0]) * d[0] + (vv - a[1]) * d[1]) / l2, 0, 1)
            best = np.minimum(best, np.hypot(uu - (a[0] + t * d[0]), vv - (a[1] + t * d[1])))
        out[k] = best
    return torch.from_numpy(out).to(device=pose.device, dtype=pose.dtype)
