"""Batched Delaunay triangulation, barycentric rasterisation and skeleton distance (DESIGN.md steps 6 and 8).

* :func:`delaunay` triangulates up to 17 points per batch element by brute force: every one of the C(P, 3)
  triples is tested against every point with the in-circle predicate (no loop over the batch).
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

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from ._check import check_finite, check_shape
from .skeleton import Skeleton, get_skeleton

__all__ = ["Triangulation", "delaunay", "interpolate_triangulated", "skeleton_distance"]

# Relative tolerance of the geometric predicates, in units of float64's machine epsilon (they are evaluated in
# float64 whatever the input dtype): how close to degenerate (collinear, cocircular) a configuration must be,
# relative to its own scale, to count as degenerate. It only has to exceed the predicates' rounding error;
# exact ties (duplicates, cocircular or collinear points on a grid) are then caught and resolved consistently.
_TOL_ULPS = 16.0
# Largest P accepted: C(17, 3) = 680 triples x 17 test points is still cheap.
_MAX_POINTS = 17
# Pixels processed per chunk by interpolate_triangulated (bounds peak memory to some tens of MB).
_CHUNK_PIXELS = 1 << 18


@dataclass(frozen=True)
class Triangulation:
    """Delaunay triangles of a batch of point sets, as a padded set of candidate triples.

    Attributes:
        triangles: int64 tensor of shape (T, 3), T = C(P, 3): every triple ``i < j < k`` of point indices in
            lexicographic order, the same for the whole batch.
        valid: bool tensor of shape (B, T): ``valid[b, t]`` is true when triple ``t`` is a Delaunay triangle
            of ``points[b]``. The valid triples of one element tile the convex hull of its points without
            overlap (a proper triangulation, at most 2P - 5 triangles); all false when the points are
            collinear or coincident (no triangle).
    """

    triangles: torch.Tensor
    valid: torch.Tensor

    @property
    def num_triangles(self) -> torch.Tensor:
        """int64 tensor of shape (B,): number of valid triangles per element."""
        return self.valid.sum(dim=1)

    def to(self, device: torch.device | str) -> "Triangulation":
        return Triangulation(self.triangles.to(device), self.valid.to(device))


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _check_points(points: torch.Tensor, name: str = "points") -> dict:
    dims = check_shape(points, ["B", "P", "2"], name=name)
    if not points.is_floating_point():
        raise TypeError(f"Expected {name} to be a floating-point tensor, got {points.dtype}")
    p = points.shape[1]
    if not 1 <= p <= _MAX_POINTS:
        raise ValueError(f"Expected 1 <= P <= {_MAX_POINTS} points in {name}, got {tuple(points.shape)}")
    check_finite(points, name)
    return dims


def _check_size(size: Sequence[int], name: str = "size") -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"Expected {name} to be a pair (H, W) of ints, got {size!r}") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(size):
        raise ValueError(f"Expected {name} to be a pair (H, W) of positive ints, got {size!r}")
    return h, w


# ----------------------------------------------------------------------------------------------------------
# Delaunay
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _triples_cpu(p: int) -> torch.Tensor:
    if p < 3:
        return torch.zeros(0, 3, dtype=torch.long)
    return torch.combinations(torch.arange(p), 3)


def _triples(p: int, device: torch.device) -> torch.Tensor:
    return _triples_cpu(p).to(device)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z component of the 2D cross product u x v over the last dimension."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _tolerance_scale(q: torch.Tensor) -> torch.Tensor:
    """Squared extent of each point set (B,), the unit of the orientation tolerance (at least 1e-300)."""
    ext = (q.amax(dim=1) - q.amin(dim=1)).amax(dim=-1)
    return ext.square().clamp_min(1e-300)


def _delaunay_valid(q: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Delaunay test of every triple against every point. q: (B, P, 2) float64; tri: (T, 3); -> bool (B, T).

    Triple (a, b, c) is a triangle iff it is not degenerate (|orient| > tol_o) and no other point d lies
    strictly inside its circumcircle. With a moved to the origin (b' = b - a, ...) and (a, b, c)
    counter-clockwise, d is inside iff the lifted orientation (points lifted onto z = x^2 + y^2)

        det = -| b'x  b'y  |b'|^2 |
               | c'x  c'y  |c'|^2 |  =  d'y K2 - d'x K1 - |d'|^2 K0  > 0,
               | d'x  d'y  |d'|^2 |

    with per-triangle K0 = b' x c', K1 = b'y |c'|^2 - c'y |b'|^2, K2 = b'x |c'|^2 - c'x |b'|^2, so each
    (triangle, point) pair costs a few multiply-adds. Its rounding error is bounded by eps times the
    permanent ``perm`` (the same expansion with absolute values), which sets the relative tie band.

    Ties (cocircular points, duplicates) are broken by simulation of simplicity: the lifted heights are
    perturbed to h_i = |p_i|^2 - eps^(i+1) (lower index = larger perturbation, downwards), which turns a tie
    into the sign of the first non-zero term of sum_i dh_i * d(det)/dh_i in index order. Those derivatives
    are the sub-orientations g_a = orient(d, b, c), g_b = orient(d, c, a), g_c = orient(d, a, b) and
    g_d = -orient(a, b, c); d is inside iff the first non-zero one is negative. The perturbed lifting is
    generic, so the result is a proper triangulation (the regular triangulation of the perturbed lifting):
    4 cocircular points give 2 triangles, not 4, and of coincident points only the lowest-index copy is a
    vertex.
    """
    b_, p_, _ = q.shape
    t_ = tri.shape[0]
    if t_ == 0 or b_ == 0:
        return torch.zeros(b_, t_, dtype=torch.bool, device=q.device)
    eps = torch.finfo(q.dtype).eps
    ar = torch.arange(p_, device=q.device)
    ia, ib, ic = (tri[:, k, None] for k in range(3))  # (T, 1)
    member = (ia == ar) | (ib == ar) | (ic == ar)  # (T, P): a vertex is not tested against its own triangle
    big = torch.full((t_, p_), p_ + 1, dtype=torch.long, device=q.device)
    chunk = max(1, (1 << 16) // (t_ * p_))  # keeps the (b, T, P) temporaries cache-sized
    out = []
    for s in range(0, b_, chunk):  # chunks over the batch: a count fixed by the shapes
        qc = q[s : s + chunk]
        tol_o = ((_TOL_ULPS * eps) * _tolerance_scale(qc))[:, None]  # (b, 1) orientation tolerance, px^2
        a = qc[:, tri[:, 0]]
        bp, cp = qc[:, tri[:, 1]] - a, qc[:, tri[:, 2]] - a  # (b, T, 2)
        k0 = _cross(bp, cp)  # orient(a, b, c): twice the signed area
        valid = k0.abs() > tol_o
        sgn = torch.where(k0 >= 0, 1.0, -1.0).to(q.dtype)  # makes every triple counter-clockwise
        lb, lc = (bp * bp).sum(-1), (cp * cp).sum(-1)
        bx, by, cx, cy = bp[..., 0], bp[..., 1], cp[..., 0], cp[..., 1]
        k1, k2 = (by * lc - cy * lb) * sgn, (bx * lc - cx * lb) * sgn
        p0 = (bx * cy).abs() + (by * cx).abs()
        p1 = by.abs() * lc + cy.abs() * lb
        p2 = bx.abs() * lc + cx.abs() * lb
        k0 = k0 * sgn
        dp = qc[:, None, :, :] - a[:, :, None, :]  # (b, T, P, 2): d' = d - a
        dx, dy = dp[..., 0], dp[..., 1]
        ld = dx * dx + dy * dy
        det = dy * k2[..., None] - dx * k1[..., None] - ld * k0[..., None]
        perm = ld * p0[..., None] + dx.abs() * p1[..., None] + dy.abs() * p2[..., None]
        tie = det.abs() <= (_TOL_ULPS * eps) * perm
        # Simulation of simplicity on ties: sub-orientations, then the lowest-index non-zero one decides.
        gb = _cross(dp, cp[:, :, None, :]) * sgn[..., None]  # orient(a, d, c) = orient(d, c, a)
        gc = _cross(bp[:, :, None, :], dp) * sgn[..., None]  # orient(a, b, d) = orient(d, a, b)
        ga = k0[..., None] - gb - gc  # orient(d, b, c) = orient(a, b, c) - orient(a, d, c) - orient(a, b, d)
        tol = tol_o[..., None]
        ka = torch.where(ga.abs() > tol, ia, big)
        kb = torch.where(gb.abs() > tol, ib, big)
        kc = torch.where(gc.abs() > tol, ic, big)
        first = torch.minimum(torch.minimum(ka, kb), torch.minimum(kc, ar.expand(t_, p_)))
        g_first = torch.where(first == ka, ga, torch.where(first == kb, gb, torch.where(first == kc, gc, -1.0)))
        inside = torch.where(tie, g_first < 0, det > 0) & ~member
        out.append(valid & ~inside.any(-1))
    return torch.cat(out, 0)


def delaunay(points: torch.Tensor) -> Triangulation:
    """Delaunay triangulation of a batch of small point sets, as a padded set of triples.

    Every triple of points is a candidate; it is valid when its signed area is not degenerate
    (``|2 * area| > 16 * eps * extent^2``, with ``eps`` float64's machine epsilon and ``extent`` the larger
    side of the points' bounding box) and no other point lies strictly inside its circumcircle (in-circle
    determinant evaluated in float64 whatever ``points.dtype``, with a relative tolerance of ``16 * eps``
    times its permanent, i.e. its rounding-error bound). Ties within that tolerance (cocircular points,
    coincident points) are broken by simulation of simplicity with lower indices taking precedence, so the
    valid triples form a proper triangulation of the convex hull (no overlap) and, of coincident points,
    only the lowest-index one is used. (Sets with 4 or more points collinear to within rounding can still get
    decisions that do not fit together; :func:`interpolate_triangulated` detects and handles that.)
    Cost: O(B * P^4), all batched; fine for P <= 17.

    Args:
        points: (B, P, 2) floating tensor, 1 <= P <= 17, finite. Not differentiable (combinatorial output).

    Returns:
        :class:`Triangulation` with ``triangles`` (T, 3) int64, T = C(P, 3), and ``valid`` (B, T) bool, on
        ``points.device``.

    Convention:
        coordinates ``(x, y)`` in pixels, x right, y down; the result does not depend on orientation
        (counter-clockwise and clockwise triples are both accepted).

    Example:
        >>> tri = delaunay(torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [4.0, 3.0]]]))
        >>> tri.triangles[tri.valid[0]].tolist()
        [[0, 1, 3], [0, 2, 3]]
    """
    _check_points(points)
    return _delaunay(points)


def _delaunay(points: torch.Tensor) -> Triangulation:
    # Predicates in float64 whatever the input dtype: differences and products of float32 coordinates are
    # then (nearly) exact, and the tolerances scale with float64's epsilon.
    tri = _triples(points.shape[1], points.device)
    return Triangulation(tri, _delaunay_valid(points.detach().to(torch.float64), tri))


def delaunay_reference(points: torch.Tensor) -> Triangulation:
    """Plain-loop twin of :func:`delaunay` using ``scipy.spatial.Delaunay`` (Qhull) per batch element.

    Only meaningful for points in general position (no four cocircular, no duplicates); collinear or
    coincident sets give no triangle. Same inputs and outputs as :func:`delaunay`.
    """
    from scipy.spatial import Delaunay, QhullError

    b_, p_, _ = points.shape
    tri = _triples(p_, points.device)
    lookup = {tuple(t): n for n, t in enumerate(tri.tolist())}
    valid = torch.zeros(b_, tri.shape[0], dtype=torch.bool)
    pts = points.detach().cpu().double().numpy()
    for b in range(b_):
        try:
            d = Delaunay(pts[b])
        except (QhullError, ValueError):
            continue
        for simplex in d.simplices:
            valid[b, lookup[tuple(sorted(int(s) for s in simplex))]] = True
    return Triangulation(tri, valid.to(points.device))


# ----------------------------------------------------------------------------------------------------------
# Piecewise-linear interpolation over the triangulation
# ----------------------------------------------------------------------------------------------------------
#
# The interpolant is affine on each cell of a partition of the plane into convex regions:
#   * every Delaunay triangle (barycentric interpolation);
#   * outside the hull, the Voronoi region of each hull edge (points whose nearest hull point lies inside
#     that edge: the half-strip bounded by the edge line and the two edge normals at its end points), where
#     the value is the linear interpolation along the edge at the orthogonal projection;
#   * the Voronoi region of each hull vertex (the wedge between the normals of its two hull edges), where the
#     value is the vertex's value.
# A region is an intersection of at most 3 half-planes f(p) = alpha*x + beta*y + gamma >= 0. On pixel row y a
# half-plane is x >= X (alpha > 0) or x < X (alpha < 0) with X = -(beta*y + gamma)/alpha, or the whole row or
# nothing (alpha = 0), so each region meets the row in an interval [lo, hi). The two regions that share a
# boundary line compute it from the same canonical end points (lower point index first) with the same float64
# operations, so they get bit-identical X and complementary tie rules (a pixel centre on the line goes to the
# region on its +x side; on a horizontal line, to the +y side): the intervals tile the row. Sorting a row's
# intervals and letting each run until the next one starts turns them into run lengths that sum to W;
# ``repeat_interleave`` expands the runs into a per-pixel run index (no per-pixel search, no loop over
# triangles), and each pixel evaluates its run's affine map (see _scan_regions for rounding).
#
# Degenerate sets (no valid triangle: all points collinear or coincident) use the 1D analogue: points sorted
# along the direction D of their farthest pair, consecutive points joined by segments; the region of segment
# k is the strip between the normals to D through its end points (value: linear interpolation along the
# segment), and the half-planes beyond the first and last points take those points' values. The same
# fallback serves a triangulation that fails the consistency checks in _build_regions (possible only when
# 4 or more points are collinear to within rounding, where the in-circle decisions cannot all be exact).


def _gather_points(q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """q (B, P, 2), idx (B, N) long -> (B, N, 2)."""
    return torch.gather(q, 1, idx.unsqueeze(-1).expand(*idx.shape, 2))


def _line_through(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """Coefficients (alpha, beta, gamma) of f(p) = (pb - pa) x (p - pa), shape (..., 3).

    Callers pass the lower-index end point as ``pa`` so that both regions sharing an edge get bit-identical
    coefficients."""
    dx, dy = pb[..., 0] - pa[..., 0], pb[..., 1] - pa[..., 1]
    return torch.stack((-dy, dx, dy * pa[..., 0] - dx * pa[..., 1]), dim=-1)


def _normal_through(direction: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Coefficients of f(p) = direction . (p - anchor): the line through ``anchor`` normal to ``direction``."""
    gamma = -(direction[..., 0] * anchor[..., 0] + direction[..., 1] * anchor[..., 1])
    return torch.stack((direction[..., 0], direction[..., 1], gamma), dim=-1)


def _eval_line(line: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return line[..., 0] * p[..., 0] + line[..., 1] * p[..., 1] + line[..., 2]


def _sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 else -1 (never 0), as x's dtype."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _affine_from_edge(pa, pb, va, vb, direction, denom):
    """Affine (A, B, C) of p -> va + t (vb - va), t = direction . (p - pa) / denom (denom > 0 where used)."""
    dv = vb - va
    a = direction[..., 0] * dv / denom
    b = direction[..., 1] * dv / denom
    return torch.stack((a, b, va - a * pa[..., 0] - b * pa[..., 1]), dim=-1)


def _build_regions(points: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, tri: torch.Tensor):
    """Region tables for :func:`interpolate_triangulated`.

    Returns (interior, exterior), each a tuple (lines (B, R, 3, 3) float64 constraint coefficients, each
    constraint meaning ``f >= 0``; enabled (B, R, 3) bool; ok (B, R) bool; affine (B, R, 3) float64 (A, B, C),
    differentiable w.r.t. points and values).
    """
    b_, p_, _ = points.shape
    dev = points.device
    f64 = torch.float64
    q = points.detach().to(f64)  # geometry: not differentiated (the region partition is piecewise constant)
    pg = points.to(f64)  # coefficients: differentiable
    v = values.to(f64)

    # ---- Interior: valid triangles compacted into K = 2P - 5 slots (the most a triangulation of P points can
    # have; the triangulation from _delaunay_valid is a proper one, so none is dropped).
    k_ = max(2 * p_ - 5, 0)
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :k_]  # valid first, by index
    tri_ok = torch.gather(valid, 1, order)  # (B, K)
    tvid = tri[order]  # (B, K, 3)
    tpts = [_gather_points(q, tvid[..., e]) for e in range(3)]
    cons_t, lo_e, hi_e, opp_e = [], [], [], []
    for e in range(3):  # edge (e, e+1), opposite vertex e+2
        i, j, k = tvid[..., e], tvid[..., (e + 1) % 3], tvid[..., (e + 2) % 3]
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        line = _line_through(_gather_points(q, lo), _gather_points(q, hi))
        side = _sign(_eval_line(line, tpts[(e + 2) % 3]))  # the triangle is on the side of its 3rd vertex
        cons_t.append(line * side.unsqueeze(-1))
        lo_e.append(lo), hi_e.append(hi), opp_e.append(k)
    int_lines = torch.stack(cons_t, dim=2)  # (B, K, 3, 3)
    int_en = tri_ok.unsqueeze(-1).expand(b_, k_, 3)
    # Barycentric interpolation as an affine map: with e1 = pj - pi, e2 = pk - pi, det = e1 x e2,
    # lambda_j = ((p - pi) x e2) / det, lambda_k = (e1 x (p - pi)) / det, value = vi + lambda_j dvj + lambda_k dvk.
    tg = [_gather_points(pg, tvid[..., e]) for e in range(3)]
    tv = [torch.gather(v, 1, tvid[..., e]) for e in range(3)]
    e1, e2 = tg[1] - tg[0], tg[2] - tg[0]
    det = _cross(e1, e2)
    det = torch.where(tri_ok, det, torch.ones_like(det))  # invalid slots: avoid 0/0 (also in backward)
    dvj, dvk = tv[1] - tv[0], tv[2] - tv[0]
    ta = (e2[..., 1] * dvj - e1[..., 1] * dvk) / det
    tb = (e1[..., 0] * dvk - e2[..., 0] * dvj) / det
    int_aff = torch.stack((ta, tb, tv[0] - ta * tg[0][..., 0] - tb * tg[0][..., 1]), dim=-1)
    int_aff = torch.where(tri_ok.unsqueeze(-1), int_aff, torch.zeros_like(int_aff))

    # ---- Hull edges: triangle edges used by exactly one valid triangle, compacted into P slots.
    lo_e, hi_e, opp_e = torch.cat(lo_e, 1), torch.cat(hi_e, 1), torch.cat(opp_e, 1)  # (B, 3K)
    ok_e = tri_ok.repeat(1, 3)
    pad = max(p_ - lo_e.shape[1], 0)
    if pad:
        z = torch.zeros(b_, pad, dtype=torch.long, device=dev)
        lo_e, hi_e, opp_e = torch.cat((lo_e, z), 1), torch.cat((hi_e, z), 1), torch.cat((opp_e, z), 1)
        ok_e = torch.cat((ok_e, torch.zeros(b_, pad, dtype=torch.bool, device=dev)), 1)
    key = lo_e * p_ + hi_e
    same = (key.unsqueeze(2) == key.unsqueeze(1)) & ok_e.unsqueeze(1)
    boundary = ok_e & (same.sum(-1) == 1)
    order = torch.sort((~boundary).to(torch.uint8), dim=1, stable=True).indices[:, :p_]
    ne_ok = torch.gather(boundary, 1, order)  # (B, P)
    ne_lo, ne_hi, ne_opp = (torch.gather(t, 1, order) for t in (lo_e, hi_e, opp_e))
    plo, phi = _gather_points(q, ne_lo), _gather_points(q, ne_hi)
    eline = _line_through(plo, phi)
    out_side = -_sign(_eval_line(eline, _gather_points(q, ne_opp)))  # away from the triangle
    ed = phi - plo
    hull_edge_lines = torch.stack(
        (
            eline * out_side.unsqueeze(-1),  # outside the hull
            _normal_through(ed, plo),  # beyond the normal at lo, towards hi
            -_normal_through(ed, phi),  # before the normal at hi, towards lo
        ),
        dim=2,
    )  # (B, P, 3, 3)
    glo, ghi = _gather_points(pg, ne_lo), _gather_points(pg, ne_hi)
    gd = ghi - glo
    den = (gd * gd).sum(-1)
    den = torch.where(ne_ok, den, torch.ones_like(den))
    hull_edge_aff = _affine_from_edge(glo, ghi, torch.gather(v, 1, ne_lo), torch.gather(v, 1, ne_hi), gd, den)

    # ---- Hull vertices: the wedge between the normals (at the vertex) of its two hull edges.
    nv = max(p_, 2)
    vid = torch.arange(nv, device=dev).clamp_max(p_ - 1)
    inc = ne_ok.unsqueeze(1) & ((ne_lo.unsqueeze(1) == vid[:, None]) | (ne_hi.unsqueeze(1) == vid[:, None]))
    cnt = inc.sum(-1)  # (B, NV): 2 for a hull vertex, 0 otherwise
    e_first = inc.to(torch.uint8).argmax(-1)
    e_last = p_ - 1 - inc.flip(-1).to(torch.uint8).argmax(-1)
    vpt = q[:, vid]  # (B, NV, 2)
    vcons = []
    for e in (e_first, e_last):
        lo, hi = torch.gather(ne_lo, 1, e), torch.gather(ne_hi, 1, e)
        d = _gather_points(q, hi) - _gather_points(q, lo)
        side = torch.where(lo == vid, -1.0, 1.0).to(f64)  # away from the edge's other end point
        vcons.append(_normal_through(d, vpt) * side.unsqueeze(-1))
    vcons.append(torch.zeros_like(vcons[0]))
    hull_vert_lines = torch.stack(vcons, dim=2)  # (B, NV, 3, 3)
    hull_vert_en = torch.tensor([True, True, False], device=dev).expand(b_, nv, 3)
    # A hull vertex between two collinear hull edges has an empty region (a ray): drop it, since its two
    # normals are the same line computed two ways and could otherwise leave a spurious sliver or row.
    nb = [torch.where(torch.gather(ne_lo, 1, e) == vid, torch.gather(ne_hi, 1, e), torch.gather(ne_lo, 1, e))
          for e in (e_first, e_last)]
    turn = _cross(vpt - _gather_points(q, nb[0]), _gather_points(q, nb[1]) - vpt)
    flat_tol = (_TOL_ULPS * torch.finfo(f64).eps) * _tolerance_scale(q)[:, None]
    hull_vert_ok = (cnt == 2) & (vid == torch.arange(nv, device=dev)) & (turn.abs() > flat_tol)
    zero = torch.zeros(b_, nv, dtype=f64, device=dev)
    hull_vert_aff = torch.stack((zero, zero, v[:, vid]), dim=-1)

    # ---- Degenerate sets: the chain of points sorted along the direction of their farthest pair.
    diff = q.unsqueeze(2) - q.unsqueeze(1)
    far = (diff * diff).sum(-1).flatten(1).argmax(1)  # (B,) flat index i * P + j of the farthest pair
    i0, j0 = far // p_, far % p_
    direc = q[torch.arange(b_, device=dev), j0] - q[torch.arange(b_, device=dev), i0]  # (B, 2)
    flat = (direc == 0).all(-1, keepdim=True)
    direc = torch.where(flat, torch.tensor([1.0, 0.0], dtype=f64, device=dev), direc)
    proj = ((q - q[torch.arange(b_, device=dev), i0].unsqueeze(1)) * direc.unsqueeze(1)).sum(-1)
    srt = torch.sort(proj, dim=1, stable=True).indices  # (B, P)
    # Coincident points take the value of their lowest-index copy.
    first_copy = (diff == 0).all(-1).to(torch.uint8).argmax(-1)  # (B, P)
    vd = torch.gather(v, 1, first_copy)
    dir_p = direc.unsqueeze(1).expand(b_, p_, 2)
    normals = _normal_through(dir_p, _gather_points(q, srt))  # (B, P, 3): normal to D through sorted point k
    seg_lines = torch.zeros(b_, p_, 3, 3, dtype=f64, device=dev)
    seg_en = torch.zeros(b_, p_, 3, dtype=torch.bool, device=dev)
    seg_aff = torch.zeros(b_, p_, 3, dtype=f64, device=dev)
    if p_ > 1:
        seg_lines[:, : p_ - 1, 0] = normals[:, :-1]  # beyond point k ...
        seg_lines[:, : p_ - 1, 1] = -normals[:, 1:]  # ... and before point k + 1
        seg_en[:, : p_ - 1, :2] = True
        ga_, gb_ = _gather_points(pg, srt[:, :-1]), _gather_points(pg, srt[:, 1:])
        dir_g = direc.unsqueeze(1).expand(b_, p_ - 1, 2)
        den = ((gb_ - ga_) * dir_g).sum(-1)
        seg_nonempty = den.detach() > 0
        den = torch.where(seg_nonempty, den, torch.ones_like(den))
        aff = _affine_from_edge(ga_, gb_, torch.gather(vd, 1, srt[:, :-1]), torch.gather(vd, 1, srt[:, 1:]),
                                dir_g, den)
        seg_aff = torch.cat((torch.where(seg_nonempty.unsqueeze(-1), aff, torch.zeros_like(aff)),
                             torch.zeros(b_, 1, 3, dtype=f64, device=dev)), 1)
    seg_ok = (torch.arange(p_, device=dev) < p_ - 1).expand(b_, p_)
    if p_ > 1:  # coincident consecutive points: an empty strip
        seg_ok = seg_ok & torch.cat((seg_nonempty, torch.zeros(b_, 1, dtype=torch.bool, device=dev)), 1)
    end_lines = torch.zeros(b_, nv, 3, 3, dtype=f64, device=dev)
    end_lines[:, 0, 0] = -normals[:, 0]  # before the first point
    end_lines[:, 1, 0] = normals[:, -1]  # at or beyond the last point
    end_en = torch.zeros(b_, nv, 3, dtype=torch.bool, device=dev)
    end_en[:, :2, 0] = True
    end_ok = (torch.arange(nv, device=dev) < 2).expand(b_, nv)
    end_val = torch.cat((torch.gather(vd, 1, srt[:, :1]), torch.gather(vd, 1, srt[:, -1:]),
                         torch.zeros(b_, nv - 2, dtype=f64, device=dev)), 1)  # (B, NV): constant values
    end_aff = torch.cat((torch.zeros(b_, nv, 2, dtype=f64, device=dev), end_val.unsqueeze(-1)), -1)

    # ---- Consistency of the triangulation. Near-degenerate sets (e.g. 4+ points collinear to within float
    # rounding) can give in-circle decisions that do not fit together; the result would then not tile the
    # hull. Checks: every vertex has 0 or 2 hull edges, at most P hull edges, no point outside a hull edge.
    tol_side = (_TOL_ULPS * torch.finfo(f64).eps) * _tolerance_scale(q)[:, None, None]
    outward = eline * out_side.unsqueeze(-1)  # (B, P, 3): f > 0 outside the hull
    outside = (_eval_line(outward.unsqueeze(2), q.unsqueeze(1)) > tol_side) & ne_ok.unsqueeze(-1)  # (B, P, P)
    # Euler: a triangulation of n_v vertices with n_b hull edges has 2 n_v - n_b - 2 triangles.
    n_b = boundary.sum(1)
    used = torch.zeros(b_, p_, dtype=torch.long, device=dev).scatter_add_(
        1, tvid.flatten(1), tri_ok.repeat_interleave(3, 1).long()) > 0
    euler = tri_ok.sum(1) == 2 * used.sum(1) - n_b - 2
    consistent = ((cnt == 0) | (cnt == 2)).all(1) & (n_b <= p_) & ~outside.flatten(1).any(1) & euler
    # ---- Exterior regions: hull edges + hull vertices, or the degenerate chain (no triangle, or an
    # inconsistent triangulation, whose points are then treated as nearly collinear).
    deg = ~(valid.any(dim=1) & consistent) if valid.shape[1] else torch.ones(b_, dtype=torch.bool, device=dev)
    tri_ok = tri_ok & ~deg[:, None]
    int_en = tri_ok.unsqueeze(-1).expand(b_, k_, 3)
    d1, d2, d3 = deg[:, None], deg[:, None, None], deg[:, None, None, None]
    ext_lines = torch.cat((torch.where(d3, seg_lines, hull_edge_lines), torch.where(d3, end_lines, hull_vert_lines)), 1)
    hull_edge_en = ne_ok.unsqueeze(-1).expand(b_, p_, 3)
    ext_en = torch.cat((torch.where(d2, seg_en, hull_edge_en), torch.where(d2, end_en, hull_vert_en)), 1)
    ext_ok = torch.cat((torch.where(d1, seg_ok, ne_ok), torch.where(d1, end_ok, hull_vert_ok)), 1)
    ext_aff = torch.cat((torch.where(d2, seg_aff, hull_edge_aff), torch.where(d2, end_aff, hull_vert_aff)), 1)
    ext_aff = torch.where(ext_ok.unsqueeze(-1), ext_aff, torch.zeros_like(ext_aff))
    return (int_lines, int_en, tri_ok, int_aff), (ext_lines, ext_en, ext_ok, ext_aff)


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


def _row_bounds(m, c, k, y):
    """X = k * (m*y + c) for every row, (b, H, R, 3); a separate product and sum (no fused multiply-add)."""
    x = m.unsqueeze(1) * y[None, :, None, None]
    return x.add_(c.unsqueeze(1)).mul_(k.unsqueeze(1))


def _scan_regions(cons, ok, aff, vrange, y, width):
    """Rasterise a piecewise-affine function given as convex regions, for a chunk of the batch.

    cons: the output of :func:`_prepare_constraints`, sliced to the chunk; ok (b, R) bool; aff (b, R, 3) float64
    affine maps (A, B, C), value = A x + B y + C; vrange: (min, max) of the values, each (b, 1, 1) float64;
    y (H,) float64 row coordinates. Returns the (b, H, W) values in float64.

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
    lo = _row_bounds(*cons[0], y).amax(-1)  # (b, H, R): region is x >= lo ...
    hi = _row_bounds(*cons[1], y).amin(-1)  # ... and x < hi
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
    slope = torch.gather(aff[..., 0].unsqueeze(1).expand(b_, h_, r_), 2, order).flatten()  # A of each run
    offset = torch.addcmul(aff[:, None, :, 2], aff[:, None, :, 1], y[None, :, None])  # B y + C, (b, H, R)
    offset = torch.gather(offset, 2, order).flatten()
    run = torch.repeat_interleave(length.flatten(), output_size=b_ * h_ * width)  # run index of each pixel
    x = torch.arange(width, dtype=y.dtype, device=y.device)
    value = torch.addcmul(offset.index_select(0, run).view(b_, h_, width),
                          slope.index_select(0, run).view(b_, h_, width), x)
    # Every value is a convex combination of the point values; clamping to (slightly more than) their range
    # is a safety net that only acts if a triangulation escaped the consistency checks.
    return value.clamp_(vrange[0], vrange[1])  # float64; the caller casts while copying into its output


def _interpolate(points: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b_, p_, _ = points.shape
    h_, w_ = size
    dev, dt = values.device, values.dtype
    tri = _delaunay(points)
    (il, ie, iok, iaff), (el, ee, eok, eaff) = _build_regions(points, values, tri.valid, tri.triangles)
    # One list of regions: triangles then outside regions; together they tile the plane.
    with torch.no_grad():
        cons = _prepare_constraints(torch.cat((il, el), 1), torch.cat((ie, ee), 1))
    ok = torch.cat((iok, eok), 1)
    aff = torch.cat((iaff, eaff), 1)  # (B, R, 3) float64 affine maps, differentiable
    y64 = torch.arange(h_, dtype=torch.float64, device=dev)
    v64 = values.detach().to(torch.float64)
    vmin, vmax = v64.amin(1)[:, None, None], v64.amax(1)[:, None, None]
    # Widened by far more than rounding, so the clamp never acts (nor cuts gradients) on a correct result.
    slack = 1e-6 * (vmax - vmin) + 1e-12 * (vmin.abs() + vmax.abs()) + 1e-300
    vmin, vmax = vmin - slack, vmax + slack
    chunk = max(1, _CHUNK_PIXELS // (h_ * w_))
    out = torch.empty(b_, h_, w_, dtype=dt, device=dev)
    for s in range(0, b_, chunk):  # chunks over the batch: a count fixed by the shapes
        sl = slice(s, min(s + chunk, b_))
        chunk_cons = tuple(tuple(t[sl] for t in group) for group in cons)
        out[sl] = _scan_regions(chunk_cons, ok[sl], aff[sl], (vmin[sl], vmax[sl]), y64, w_)
    return out


def interpolate_triangulated(points: torch.Tensor, values: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
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
    regions), memory bounded by processing about 2^18 pixels at a time (some tens of MB).

    Args:
        points: (B, P, 2) floating tensor of point positions in pixels, 1 <= P <= 17, finite.
        values: (B, P) floating tensor of values at the points, finite.
        size: output size (H, W).

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
    dims = _check_points(points)
    check_shape(values, ["B", "P"], name="values", dims=dims)
    if not values.is_floating_point():
        raise TypeError(f"Expected values to be a floating-point tensor, got {values.dtype}")
    if values.device != points.device:
        raise ValueError(f"Expected points and values on one device, got {points.device} and {values.device}")
    check_finite(values, "values")
    h_, w_ = _check_size(size)
    if points.shape[0] == 0:
        return values.new_zeros(0, h_, w_)
    return _interpolate(points, values, (h_, w_))


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
