"""Batched Delaunay triangulation and the regions of the plane its interpolant is affine on (DESIGN.md step 6).

* :func:`delaunay` triangulates up to 17 points per batch element by brute force: every one of the C(P, 3)
  triples is tested against every point with the in-circle predicate (no loop over the batch).
* :func:`triangulation_regions` cuts the plane into convex regions (the triangles, plus the Voronoi regions of
  the hull edges and hull vertices outside) with the affine map of the interpolated values on each; the
  rasteriser :func:`gpumosaic.raster.interpolate_triangulated` scan-converts them.

:func:`delaunay_reference` is the plain twin (SciPy). Convention: 2D points are pixels, ``x`` to the right
(column ``u``), ``y`` down (row ``v``); pixel ``(v, u)`` has its centre at ``(x, y) = (u, v)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ._check import check_finite, check_shape

__all__ = [
    "Triangulation",
    "TriangulationCache",
    "candidate_triples",
    "delaunay",
    "delaunay_core",
    "triangulation_regions",
    "check_points",
]

# Relative tolerance of the geometric predicates, in units of float64's machine epsilon (they are evaluated in
# float64 whatever the input dtype): how close to degenerate (collinear, cocircular) a configuration must be,
# relative to its own scale, to count as degenerate. It only has to exceed the predicates' rounding error;
# exact ties (duplicates, cocircular or collinear points on a grid) are then caught and resolved consistently.
_TOL_ULPS = 16.0
# Largest P accepted: C(17, 3) = 680 triples x 17 test points is still cheap.
_MAX_POINTS = 17


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


class TriangulationCache:
    """Delaunay triangulations of a fixed set of point sets, each computed once, on first use.

    The Delaunay triangulation (as triples of point indices) does not change under a similarity map of the
    points (rotation, reflection, uniform scale, translation: circles stay circles). The engine's aligned
    joints ``q'`` of a match (Eq. 2) are its pool pose's box joints under a rotation and translation, so the
    triangulation of Eq. 5 can be the pool pose's own, computed once per pool entry instead of once per match.
    In floating point a nearly cocircular or nearly collinear set can be decided differently in the two
    frames (both then being Delaunay triangulations up to rounding); measured on the demo queries: 0 of
    2,240 maps differ.

    Storage: the valid triples' indices, int16, ``2P - 5`` per set (46 bytes for P = 14: 7.4 MB for 160,000
    pool entries), the way :func:`triangulation_regions` reads them (valid triples in index order, at most
    ``2P - 5``). Filling uses ``nonzero``/``unique`` (data-dependent sizes): a CPU-only helper.

    Args:
        points: (M, P, 2) float point sets (e.g. the retrieval index's box poses).
    """

    def __init__(self, points: torch.Tensor) -> None:
        check_points(points)
        self.points = points
        p_ = points.shape[1]
        self.triangles = _triples(p_, points.device)
        self.slots = max(2 * p_ - 5, 0)
        self._ids = torch.full((points.shape[0], self.slots), len(self.triangles), dtype=torch.int16,
                               device=points.device)
        self._done = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)

    def valid(self, rows: torch.Tensor) -> torch.Tensor:
        """``delaunay(points[rows]).valid`` (up to the caveat above), (len(rows), T) bool, T = C(P, 3)."""
        new = torch.unique(rows[~self._done[rows]])
        t_ = len(self.triangles)
        if len(new) > 0:
            valid = delaunay_core(self.points[new]).valid
            ids = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, : self.slots]
            ids = torch.where(torch.gather(valid, 1, ids), ids, t_)
            self._ids[new] = ids.to(torch.int16)
            self._done[new] = True
        out = torch.zeros(len(rows), t_ + 1, dtype=torch.bool, device=rows.device)
        return out.scatter_(1, self._ids[rows].long(), True)[:, :t_]


def check_points(points: torch.Tensor, name: str = "points") -> dict:
    """Validate a public call's point sets (B, P, 2): float, 1 <= P <= 17, finite; returns the bound sizes."""
    dims = check_shape(points, ["B", "P", "2"], name=name)
    if not points.is_floating_point():
        raise TypeError(f"Expected {name} to be a floating-point tensor, got {points.dtype}")
    p = points.shape[1]
    if not 1 <= p <= _MAX_POINTS:
        raise ValueError(f"Expected 1 <= P <= {_MAX_POINTS} points in {name}, got {tuple(points.shape)}")
    check_finite(points, name)
    return dims


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


def candidate_triples(p: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, 3) int64 every triple ``i < j < k`` of ``p`` point indices in lexicographic order, T = C(p, 3):
    the ``triangles`` of every :class:`Triangulation` of ``p`` points."""
    return _triples(p, torch.device(device))


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z component of the 2D cross product u x v over the last dimension."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _tolerance_scale(q: torch.Tensor) -> torch.Tensor:
    """Squared extent of each point set (B,), the unit of the orientation tolerance (at least 1e-300)."""
    ext = (q.amax(dim=1) - q.amin(dim=1)).amax(dim=-1)
    return ext.square().clamp_min(1e-300)


def _sos_inside(dp, bp, cp, k0, sgn, ia, ib, ic, idx_d, tol, big: int) -> torch.Tensor:
    """Simulation of simplicity for tied in-circle tests (see :func:`_delaunay_valid`): the sub-orientations
    g_a, g_b, g_c and the lowest-index non-zero one decides (d inside iff it is negative). Broadcasting
    arguments: dp, bp, cp (..., 2); k0, sgn (...) with k0 already oriented; ia, ib, ic, idx_d (...) int64
    point indices; tol (...) the orientation tolerance."""
    gb = _cross(dp, cp) * sgn  # orient(a, d, c) = orient(d, c, a)
    gc = _cross(bp, dp) * sgn  # orient(a, b, d) = orient(d, a, b)
    ga = k0 - gb - gc  # orient(d, b, c) = orient(a, b, c) - orient(a, d, c) - orient(a, b, d)
    ka = torch.where(ga.abs() > tol, ia, big)
    kb = torch.where(gb.abs() > tol, ib, big)
    kc = torch.where(gc.abs() > tol, ic, big)
    first = torch.minimum(torch.minimum(ka, kb), torch.minimum(kc, idx_d))
    g_first = torch.where(first == ka, ga, torch.where(first == kb, gb, torch.where(first == kc, gc, -1.0)))
    return g_first < 0


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
        inside = det > 0
        tol = tol_o[..., None]
        if q.device.type == "cpu" and not torch.compiler.is_compiling():
            # Ties are rare: decide only those (data-dependent counts, free on the CPU), with the same
            # arithmetic per pair as the dense form below, so the decisions are identical. Candidates first:
            # perm <= (ex^2 + ey^2) p0 + ex p1 + ey p2 with (ex, ey) the set's extent (|d' | <= extent), so
            # a pair whose |det| exceeds the tolerance of that bound (with slack for rounding) is no tie.
            ext = qc.amax(1) - qc.amin(1)  # (b, 2), exact differences of the float64 coordinates
            ex, ey = ext[:, 0, None], ext[:, 1, None]
            bound = (ex * ex + ey * ey) * p0 + ex * p1 + ey * p2  # (b, T)
            cand = det.abs() <= ((_TOL_ULPS * eps) * (1 + 1e-6)) * bound[..., None]
            cand &= ~member  # a triangle's own vertices (det = 0) are excluded below anyway
            pair = cand.view(-1).nonzero()[:, 0]  # flat (b, T, P) index of each candidate
            bt, pi = torch.div(pair, p_, rounding_mode="floor"), pair % p_
            ti, bi = bt % t_, torch.div(bt, t_, rounding_mode="floor")
            dxy = dp.reshape(-1, 2).index_select(0, pair)
            dx_c, dy_c = dxy[:, 0], dxy[:, 1]
            p0_c, p1_c, p2_c = (t.reshape(-1).index_select(0, bt) for t in (p0, p1, p2))
            perm = ld.reshape(-1).index_select(0, pair) * p0_c + dx_c.abs() * p1_c + dy_c.abs() * p2_c
            det_c = det.reshape(-1).index_select(0, pair)
            tie = det_c.abs() <= (_TOL_ULPS * eps) * perm
            sos = _sos_inside(
                dxy, bp.reshape(-1, 2).index_select(0, bt),
                cp.reshape(-1, 2).index_select(0, bt), k0.reshape(-1).index_select(0, bt),
                sgn.reshape(-1).index_select(0, bt), ia.view(-1).index_select(0, ti), ib.view(-1).index_select(0, ti),
                ic.view(-1).index_select(0, ti), pi, tol.view(-1).index_select(0, bi), p_ + 1)
            inside.masked_scatter_(cand, torch.where(tie, sos, det_c > 0))  # in the mask's order, as nonzero's
        else:  # one graph, no host sync: decide every pair and keep the tied ones
            perm = ld * p0[..., None] + dx.abs() * p1[..., None] + dy.abs() * p2[..., None]
            tie = det.abs() <= (_TOL_ULPS * eps) * perm
            sos = _sos_inside(dp, bp[:, :, None], cp[:, :, None], k0[..., None], sgn[..., None], ia, ib, ic,
                              ar.expand(t_, p_), tol, p_ + 1)
            inside = torch.where(tie, sos, inside)
        inside &= ~member
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
    check_points(points)
    return delaunay_core(points)


def delaunay_core(points: torch.Tensor) -> Triangulation:
    """:func:`delaunay` without validation (callers that checked ``points``, e.g. the rasteriser)."""
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
# Regions of the plane on which the interpolant is affine
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


def triangulation_regions(points: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, tri: torch.Tensor):
    """Region tables for :func:`gpumosaic.raster.interpolate_triangulated` (no validation).

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
