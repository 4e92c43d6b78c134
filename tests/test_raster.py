"""Tests of gpumosaic.raster: batched Delaunay, triangulated interpolation (step 6), skeleton distance (step 8).

Independent references: scipy.spatial.Delaunay / ConvexHull, scipy.interpolate.LinearNDInterpolator,
numpy.interp, scipy.ndimage.distance_transform_edt of cv2.line rasters, and the plain-loop ``*_reference``
twins (SciPy / NumPy, one element at a time).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.interpolate import LinearNDInterpolator
from scipy.ndimage import distance_transform_edt
from scipy.spatial import ConvexHull, Delaunay

from gpumosaic._check import ShapeError
from gpumosaic.delaunay import Triangulation, delaunay, delaunay_reference
from gpumosaic.raster import (
    interpolate_triangulated,
    interpolate_triangulated_reference,
    skeleton_distance,
    skeleton_distance_reference,
)
from gpumosaic.skeleton import LSP14, MPII16, Skeleton

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    # The tensors here are small; on a shared 2-core machine OpenMP's second thread mostly waits (runs were
    # 5x slower under load). Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_points(b, p, seed, dtype=torch.float64, lo=-20.0, hi=60.0):
    """Random points in general position (continuous distribution), partly outside a 40 x 40 image."""
    return torch.rand(b, p, 2, generator=_gen(seed), dtype=torch.float64).mul(hi - lo).add(lo).to(dtype)


def _grid_points(n=4, step=5.0, offset=2.0):
    """An n x n integer grid: many cocircular quadruples and collinear hull points (exact ties)."""
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    return (torch.stack((xs, ys), -1).reshape(1, n * n, 2) * step + offset)


def _triangle_sets(tri: Triangulation, b: int) -> set:
    return {tuple(t) for t in tri.triangles[tri.valid[b].cpu()].tolist()}


# ----------------------------------------------------------------------------------------------------------
# delaunay
# ----------------------------------------------------------------------------------------------------------


class TestDelaunay:
    @pytest.mark.parametrize("p", [3, 5, 14, 17])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_matches_scipy(self, p, dtype, device):
        pts = _random_points(20, p, seed=p, dtype=dtype).to(device)
        tri = delaunay(pts)
        ref = delaunay_reference(pts.cpu())
        assert tri.triangles.shape == (math.comb(p, 3), 3) and tri.triangles.dtype == torch.int64
        assert tri.valid.shape == (20, math.comb(p, 3)) and tri.valid.dtype == torch.bool
        assert tri.valid.device == pts.device
        torch.testing.assert_close(tri.valid.cpu(), ref.valid)

    def test_cocircular_grid_is_a_proper_triangulation(self):
        # 4 x 4 grid: every unit square is cocircular. A proper triangulation of n points with h of them on the
        # hull boundary has 2n - 2 - h triangles, areas summing to the hull's area, and no overlap.
        pts = _grid_points()
        tri = delaunay(pts)
        n, h = 16, 12
        assert int(tri.num_triangles[0]) == 2 * n - 2 - h
        corners = pts[0, tri.triangles[tri.valid[0]]].numpy()  # (T, 3, 2)
        e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        areas = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2
        assert areas.min() > 0
        np.testing.assert_allclose(areas.sum(), ConvexHull(pts[0].numpy()).volume)
        # No overlap: random points of the hull lie strictly inside exactly one triangle.
        q = np.random.default_rng(0).uniform(2, 17, size=(2000, 2))
        inside = np.zeros(len(q), int)
        for c in corners:
            m = np.linalg.solve(np.stack([c[1] - c[0], c[2] - c[0]], 1), (q - c[0]).T).T
            inside += (m[:, 0] > 1e-9) & (m[:, 1] > 1e-9) & (m.sum(1) < 1 - 1e-9)
        assert inside.max() == 1

    def test_every_valid_triangle_has_an_empty_circumcircle(self):
        # Direct check of the definition (float64, ties excluded): no point strictly inside by more than 1e-9.
        pts = _random_points(20, 9, seed=3)
        tri = delaunay(pts)
        for b in range(20):
            p = pts[b].numpy()
            for i, j, k in _triangle_sets(tri, b):
                a, bb, c = p[i], p[j], p[k]
                m = np.array([[2 * (bb - a)[0], 2 * (bb - a)[1]], [2 * (c - a)[0], 2 * (c - a)[1]]])
                centre = np.linalg.solve(m, [bb @ bb - a @ a, c @ c - a @ a])
                r = np.linalg.norm(a - centre)
                assert (np.linalg.norm(p - centre, axis=1) > r - 1e-9).all()

    def test_tie_only_path_equals_the_one_graph_path(self, monkeypatch):
        # On the CPU ties are decided only where they occur (nonzero); under torch.compile (and on CUDA) every
        # pair is decided densely. Tie-heavy sets (grids: cocircular squares, collinear hull points; duplicates;
        # integer points) must give identical triangulations both ways.
        import gpumosaic.delaunay as dl

        g = torch.Generator().manual_seed(5)
        sets = [_grid_points(4).expand(3, 16, 2).clone(), _grid_points(3, step=1.0).expand(2, 9, 2).clone(),
                torch.randint(0, 5, (40, 14, 2), generator=g).to(torch.float64),
                _random_points(20, 14, seed=7)]
        sets[-1][:, 9] = sets[-1][:, 3]  # duplicates among general points
        for pts in sets:
            ties_only = dl.delaunay(pts)
            with monkeypatch.context() as m:
                m.setattr(dl.torch.compiler, "is_compiling", lambda: True)
                dense = dl.delaunay(pts)
            assert torch.equal(ties_only.valid, dense.valid)
        assert int(ties_only.num_triangles.min()) > 0

    def test_cache_gives_the_triangulation_of_similar_point_sets(self):
        # TriangulationCache triangulates each stored set once; its triangulation is that of any similar copy
        # (rotation, reflection, uniform scale, translation: what the engine's alignment does to a pool pose).
        from gpumosaic.delaunay import TriangulationCache

        g = torch.Generator().manual_seed(12)
        pts = _random_points(30, 14, seed=13)
        cache = TriangulationCache(pts)
        rows = torch.tensor([3, 7, 3, 29, 0, 7])
        got = cache.valid(rows)  # fills rows 0, 3, 7, 29 (3 and 7 asked twice)
        assert got.shape == (6, math.comb(14, 3)) and got.dtype == torch.bool
        assert torch.equal(got, delaunay(pts[rows]).valid)
        ang = torch.rand(6, generator=g) * 6.28
        rot = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)
        scale = (0.5 + torch.rand(6, 1, 1, generator=g)) * torch.tensor([-1.0, 1.0])  # reflected copies
        moved = (pts[rows] @ rot.transpose(1, 2).double()) * scale.double() + 40.0
        assert torch.equal(cache.valid(rows), delaunay(moved).valid)
        assert torch.equal(cache.valid(torch.arange(30)), delaunay(pts).valid)  # the rest filled on demand
        assert int(cache._done.sum()) == 30

    def test_cache_keeps_the_first_2p_minus_5_valid_triples(self):
        # Stored as the valid triples' indices (2P - 5 slots, the most a triangulation has): grids (ties), a
        # collinear set (no triangle) and 3 points round-trip exactly.
        from gpumosaic.delaunay import TriangulationCache

        pts = torch.cat([_grid_points(4)[:, :14], torch.stack([torch.arange(14.0), torch.arange(14.0) * 2], -1)[None]
                         .double(), _random_points(1, 14, seed=14)])
        cache = TriangulationCache(pts)
        assert torch.equal(cache.valid(torch.arange(3)), delaunay(pts).valid)
        three = TriangulationCache(_random_points(4, 3, seed=15))
        assert torch.equal(three.valid(torch.arange(4)), delaunay(_random_points(4, 3, seed=15)).valid)

    def test_coincident_points_keep_the_lowest_index(self):
        pts = _random_points(5, 8, seed=4)
        pts[:, 6] = pts[:, 2]  # point 6 duplicates point 2
        tri = delaunay(pts)
        keep = [0, 1, 2, 3, 4, 5, 7]
        ref = delaunay_reference(pts[:, keep])
        for b in range(5):
            got = _triangle_sets(tri, b)
            assert all(6 not in t for t in got)
            expected = {tuple(sorted(keep[i] for i in t)) for t in _triangle_sets(ref, b)}
            assert got == expected

    def test_collinear_and_small_sets_have_no_triangle(self):
        line = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 6.0], [-2.0, -4.0]]])
        assert not delaunay(line).valid.any()
        assert delaunay(torch.zeros(3, 2, 2)).valid.shape == (3, 0)
        assert not delaunay(torch.ones(2, 5, 2)).valid.any()  # all coincident

    def test_exceptions(self):
        with pytest.raises(ShapeError, match="points"):
            delaunay(torch.zeros(2, 5, 3))
        with pytest.raises(ValueError, match="P <= 17"):
            delaunay(torch.zeros(1, 18, 2))
        with pytest.raises(ValueError, match="finite"):
            delaunay(torch.tensor([[[0.0, 0.0], [1.0, float("nan")], [0.0, 1.0]]]))


# ----------------------------------------------------------------------------------------------------------
# interpolate_triangulated
# ----------------------------------------------------------------------------------------------------------


def _inside_hull_mask(pts: np.ndarray, size, margin=1e-3) -> np.ndarray:
    """Pixels strictly inside a Delaunay triangle of pts, all barycentric coordinates > margin."""
    h, w = size
    vv, uu = np.mgrid[0:h, 0:w]
    xy = np.stack([uu.ravel(), vv.ravel()], 1).astype(np.float64)
    d = Delaunay(pts)
    s = d.find_simplex(xy)
    mask = s >= 0
    tr = d.transform[s[mask]]
    bary = np.einsum("nij,nj->ni", tr[:, :2], xy[mask] - tr[:, 2])
    bary = np.concatenate([bary, 1 - bary.sum(1, keepdims=True)], 1)
    good = np.zeros(h * w, bool)
    good[np.flatnonzero(mask)[bary.min(1) > margin]] = True
    return good.reshape(h, w)


class TestInterpolateTriangulated:
    def test_given_triangles_equal_its_own_triangulation(self):
        g = torch.Generator().manual_seed(16)
        pts = _random_points(5, 14, seed=17) + 25
        vals = torch.rand(5, 14, generator=g).double()
        own = interpolate_triangulated(pts, vals, (90, 95))
        given = interpolate_triangulated(pts, vals, (90, 95), triangles=delaunay(pts).valid)
        assert torch.equal(own, given)
        other = delaunay(torch.roll(pts, 1, 0)).valid  # someone else's triangulation: a different map
        assert not torch.equal(interpolate_triangulated(pts, vals, (90, 95), triangles=other), own)
        with pytest.raises(ShapeError, match="triangles"):
            interpolate_triangulated(pts, vals, (9, 9), triangles=other[:, :-1])
        with pytest.raises(TypeError, match="triangles"):
            interpolate_triangulated(pts, vals, (9, 9), triangles=other.float())

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_used_regions_only_equals_all_region_slots(self, monkeypatch, dtype):
        # On the CPU the rasteriser keeps only the region slots some point set uses; the one-graph form scans
        # all slots. Mixed batches (general, grid, collinear, coincident and 3-point sets, so the used counts
        # differ per element) must give bit-identical images.
        import gpumosaic.raster as ra

        g = torch.Generator().manual_seed(9)
        pts = _random_points(6, 14, seed=11, dtype=dtype)
        pts[1] = _grid_points(4)[0, :14].to(dtype)
        pts[2] = torch.stack([torch.linspace(0, 30, 14), torch.linspace(5, 20, 14)], -1).to(dtype)  # collinear
        pts[3, 5:] = pts[3, 4]  # coincident
        vals = torch.rand(6, 14, generator=g).to(dtype)
        pts = pts + 25  # every region (exterior ones included) crosses the image
        used = ra.interpolate_triangulated(pts, vals, (110, 104))
        small = ra.interpolate_triangulated(pts[:2, :3], vals[:2, :3], (110, 104))
        with monkeypatch.context() as m:
            m.setattr(ra.torch.compiler, "is_compiling", lambda: True)
            every = ra.interpolate_triangulated(pts, vals, (110, 104))
            small_every = ra.interpolate_triangulated(pts[:2, :3], vals[:2, :3], (110, 104))
        assert torch.equal(used, every) and torch.equal(small, small_every)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_reference(self, dtype, device):
        size = (40, 44)
        pts = _random_points(12, 14, seed=10, dtype=dtype).to(device)
        vals = torch.rand(12, 14, generator=_gen(11), dtype=torch.float64).to(dtype=dtype, device=device)
        out = interpolate_triangulated(pts, vals, size)
        assert out.shape == (12, *size) and out.dtype == dtype and out.device == pts.device
        assert torch.isfinite(out).all()
        ref = interpolate_triangulated_reference(pts.cpu(), vals.cpu(), size)
        torch.testing.assert_close(out.cpu(), ref, **TOL[dtype])

    def test_linear_nd_interpolator_inside_hull(self):
        size = (40, 40)
        pts = _random_points(8, 10, seed=12, lo=-5, hi=45)
        vals = torch.rand(8, 10, generator=_gen(13), dtype=torch.float64)
        out = interpolate_triangulated(pts, vals, size).numpy()
        vv, uu = np.mgrid[0 : size[0], 0 : size[1]]
        for b in range(8):
            mask = _inside_hull_mask(pts[b].numpy(), size)
            assert mask.sum() > 100
            lin = LinearNDInterpolator(pts[b].numpy(), vals[b].numpy())(uu[mask], vv[mask])
            np.testing.assert_allclose(out[b][mask], lin, atol=1e-10, rtol=0)

    def test_linear_precision_on_cocircular_grid(self):
        # Values of an affine function are reproduced exactly inside the hull whatever the (tied) triangulation;
        # outside, the value is the affine function at the nearest hull point (clamped to the grid's box).
        pts = _grid_points()
        f = lambda x, y: 0.3 * x - 0.2 * y + 1.0  # noqa: E731
        vals = f(pts[..., 0], pts[..., 1])
        out = interpolate_triangulated(pts, vals, (25, 25))[0].numpy()
        vv, uu = np.mgrid[0:25, 0:25].astype(np.float64)
        expected = f(np.clip(uu, 2, 17), np.clip(vv, 2, 17))
        np.testing.assert_allclose(out, expected, atol=1e-12, rtol=0)

    def test_outside_is_nearest_hull_point(self):
        # A triangle: outside pixels take the value of the nearest point of the triangle (brute force).
        pts = torch.tensor([[[5.0, 4.0], [20.5, 9.25], [9.0, 18.0]]], dtype=torch.float64)
        vals = torch.tensor([[0.2, 1.0, 0.5]], dtype=torch.float64)
        out = interpolate_triangulated(pts, vals, (24, 26))[0].numpy()
        p, v = pts[0].numpy(), vals[0].numpy()
        # Dense sampling of the triangle (barycentric grid) and nearest sample per pixel.
        s = np.linspace(0, 1, 201)
        l1, l2 = np.meshgrid(s, s)
        keep = l1 + l2 <= 1
        lam = np.stack([1 - l1[keep] - l2[keep], l1[keep], l2[keep]], 1)
        samples, svals = lam @ p, lam @ v
        vv, uu = np.mgrid[0:24, 0:26]
        xy = np.stack([uu.ravel(), vv.ravel()], 1)
        nearest = ((xy[:, None, :] - samples[None]) ** 2).sum(-1).argmin(1)
        np.testing.assert_allclose(out.ravel(), svals[nearest], atol=0.03)  # sampling step < 0.1 px

    def test_collinear_points(self):
        # All points on the line y = 3: the value is numpy.interp of the projection (clamped at the ends).
        xs = torch.tensor([[7.0, 1.5, 12.0, 4.0, 9.5]], dtype=torch.float64)
        pts = torch.stack((xs, torch.full_like(xs, 3.0)), -1)
        vals = torch.tensor([[0.1, 0.9, 0.4, 0.0, 0.7]], dtype=torch.float64)
        out = interpolate_triangulated(pts, vals, (6, 15))[0].numpy()
        order = np.argsort(xs[0].numpy())
        expected = np.interp(np.arange(15.0), xs[0].numpy()[order], vals[0].numpy()[order])
        np.testing.assert_allclose(out, np.broadcast_to(expected, (6, 15)), atol=1e-12, rtol=0)
        # A slanted line, and the reference.
        t = torch.tensor([[0.0, 3.0, 1.0, 7.5]], dtype=torch.float64)
        pts = torch.stack((2 + 2 * t, 1 + t), -1)
        vals = torch.rand(1, 4, generator=_gen(14), dtype=torch.float64)
        torch.testing.assert_close(interpolate_triangulated(pts, vals, (12, 20)),
                                   interpolate_triangulated_reference(pts, vals, (12, 20)))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_single_and_coincident_points(self, dtype):
        one = torch.tensor([[[3.3, 4.7]]], dtype=dtype)
        out = interpolate_triangulated(one, torch.tensor([[0.625]], dtype=dtype), (5, 6))
        torch.testing.assert_close(out, torch.full((1, 5, 6), 0.625, dtype=dtype))
        same = torch.tensor([[[3.0, 4.0]] * 4], dtype=dtype)  # one distinct point: the lowest index's value
        vals = torch.tensor([[0.25, 0.5, 0.75, 1.0]], dtype=dtype)
        torch.testing.assert_close(interpolate_triangulated(same, vals, (5, 6)),
                                   torch.full((1, 5, 6), 0.25, dtype=dtype))
        two = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [4.0, 1.0]]], dtype=dtype)  # coincident + one more
        vals = torch.tensor([[0.0, 1.0, 0.6]], dtype=dtype)
        out = interpolate_triangulated(two, vals, (3, 6))[0]
        expected = np.interp(np.arange(6.0), [1.0, 4.0], [0.0, 0.6])
        torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype).expand(3, 6))

    def test_duplicates_among_general_points(self):
        pts = _random_points(4, 9, seed=15)
        pts[:, 7] = pts[:, 1]
        vals = torch.rand(4, 9, generator=_gen(16), dtype=torch.float64)
        torch.testing.assert_close(interpolate_triangulated(pts, vals, (30, 30)),
                                   interpolate_triangulated_reference(pts, vals, (30, 30)))

    def test_integer_points_on_pixel_centres(self):
        # Vertices and horizontal / vertical edges exactly on pixel centres and rows (tie rules of the scan).
        pts = torch.tensor([[[2.0, 2.0], [10.0, 2.0], [10.0, 9.0], [2.0, 9.0], [6.0, 5.0], [14.0, 5.0]]])
        vals = torch.tensor([[0.1, 0.8, 0.3, 0.6, 1.0, 0.0]])
        out = interpolate_triangulated(pts, vals, (13, 17))
        torch.testing.assert_close(out, interpolate_triangulated_reference(pts, vals, (13, 17)), **TOL[torch.float32])

    def test_random_integer_points_affine_values(self):
        # Integer points: duplicates, collinear hull points, cocircular quadruples, horizontal and vertical edges,
        # vertices on pixel centres. Affine values make the result independent of how ties are triangulated,
        # so it must match the reference (SciPy) everywhere, inside and outside the hull.
        g = _gen(40)
        for p in (4, 9, 17):
            pts = torch.randint(-3, 20, (30, p, 2), generator=g).double()
            coef = torch.rand(30, 3, generator=g, dtype=torch.float64)
            vals = coef[:, :1] * pts[..., 0] + coef[:, 1:2] * pts[..., 1] + coef[:, 2:]
            out = interpolate_triangulated(pts, vals, (18, 21))
            torch.testing.assert_close(out, interpolate_triangulated_reference(pts, vals, (18, 21)))

    def test_thin_triangles_float32(self):
        # Nearly collinear points (noise 1e-7 px, below float32 resolution): slivers with huge slopes. Values
        # stay finite and within the range of the point values; where the triangulation is consistent
        # (float64 here) the result matches SciPy's.
        g = _gen(11)
        t = torch.rand(60, 14, 1, generator=g, dtype=torch.float64) * 20
        pts = torch.cat((t, 0.5 * t + 2), -1) + torch.randn(60, 14, 2, generator=g, dtype=torch.float64) * 1e-7
        vals = torch.rand(60, 14, generator=g, dtype=torch.float64)
        p32, v32 = pts.float(), vals.float()
        out = interpolate_triangulated(p32, v32, (18, 21))
        assert torch.isfinite(out).all()
        assert (out >= v32.amin(1)[:, None, None]).all() and (out <= v32.amax(1)[:, None, None]).all()
        torch.testing.assert_close(interpolate_triangulated(pts, vals, (18, 21)),
                                   interpolate_triangulated_reference(pts, vals, (18, 21)), atol=1e-6, rtol=0)
        # Some float32 sets get an inconsistent triangulation (white box: found with the internal helpers);
        # they fall back to the collinear rule: numpy.interp of the projection on the line.
        from gpumosaic.delaunay import delaunay_core, triangulation_regions

        tri = delaunay_core(p32)
        (_, _, tri_ok, _), _ = triangulation_regions(p32, v32, tri.valid, tri.triangles)
        fallback = (tri.valid.any(1) & ~tri_ok.any(1)).nonzero().flatten().tolist()
        assert fallback  # this seed has some
        direction = np.array([2.0, 1.0]) / math.sqrt(5.0)
        vv, uu = np.mgrid[0:18, 0:21]
        for b in fallback:
            proj = p32[b].double().numpy() @ direction
            order = np.argsort(proj)
            expected = np.interp(np.stack((uu, vv), -1) @ direction, proj[order], v32[b].double().numpy()[order])
            np.testing.assert_allclose(out[b].numpy(), expected, atol=1e-4, rtol=0)

    def test_batch_vs_single_and_empty(self):
        pts = _random_points(6, 7, seed=17, dtype=torch.float32)
        vals = torch.rand(6, 7, generator=_gen(18))
        out = interpolate_triangulated(pts, vals, (20, 24))
        for b in range(6):
            single = interpolate_triangulated(pts[b : b + 1], vals[b : b + 1], (20, 24))
            torch.testing.assert_close(out[b : b + 1], single, atol=0, rtol=0)
        empty = interpolate_triangulated(pts[:0], vals[:0], (20, 24))
        assert empty.shape == (0, 20, 24) and empty.dtype == torch.float32

    def test_chunking_does_not_change_results(self, monkeypatch):
        import gpumosaic.raster as raster

        pts = _random_points(9, 6, seed=19, dtype=torch.float32)
        vals = torch.rand(9, 6, generator=_gen(20))
        full = interpolate_triangulated(pts, vals, (16, 16))
        monkeypatch.setattr(raster, "_CHUNK_PIXELS", 2 * 16 * 16)  # two maps per chunk, last chunk partial
        torch.testing.assert_close(interpolate_triangulated(pts, vals, (16, 16)), full, atol=0, rtol=0)

    def test_gradcheck_values(self):
        pts = _random_points(2, 5, seed=21, lo=-1, hi=8)
        vals = torch.rand(2, 5, generator=_gen(22), dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v: interpolate_triangulated(pts, v, (6, 7)), (vals,))

    def test_gradcheck_points(self):
        # Away from region boundaries the map is smooth in the points (triangulation fixed for small moves).
        pts = _random_points(2, 5, seed=23, lo=-1, hi=8).requires_grad_(True)
        vals = torch.rand(2, 5, generator=_gen(24), dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda p: interpolate_triangulated(p, vals, (6, 7)), (pts,), eps=1e-7,
                                        atol=1e-5)

    def test_backward_finite_on_degenerate_inputs(self):
        pts = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [4.0, 1.0]], [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]],
                           dtype=torch.float64, requires_grad=True)
        vals = torch.rand(2, 3, generator=_gen(25), dtype=torch.float64, requires_grad=True)
        interpolate_triangulated(pts, vals, (5, 6)).square().sum().backward()
        assert torch.isfinite(pts.grad).all() and torch.isfinite(vals.grad).all()

    def test_inputs_not_mutated(self):
        pts = _random_points(3, 6, seed=26, dtype=torch.float32)
        vals = torch.rand(3, 6, generator=_gen(27))
        p0, v0, pv, vv = pts.clone(), vals.clone(), pts._version, vals._version
        interpolate_triangulated(pts, vals, (10, 12))
        assert pts._version == pv and vals._version == vv
        assert torch.equal(pts, p0) and torch.equal(vals, v0)

    def test_exceptions(self):
        pts, vals = torch.zeros(2, 5, 2), torch.zeros(2, 5)
        with pytest.raises(ShapeError, match="values"):
            interpolate_triangulated(pts, torch.zeros(2, 4), (4, 4))
        with pytest.raises(ShapeError, match="points"):
            interpolate_triangulated(torch.zeros(2, 5), vals, (4, 4))
        with pytest.raises(ValueError, match="size"):
            interpolate_triangulated(pts, vals, (4, 0))
        with pytest.raises(ValueError, match="finite values in points"):
            interpolate_triangulated(torch.full((2, 5, 2), float("inf")), vals, (4, 4))
        with pytest.raises(ValueError, match="finite values in values"):
            interpolate_triangulated(pts, torch.full((2, 5), float("nan")), (4, 4))
        with pytest.raises(TypeError, match="floating"):
            interpolate_triangulated(pts.long(), vals, (4, 4))


# ----------------------------------------------------------------------------------------------------------
# skeleton_distance
# ----------------------------------------------------------------------------------------------------------

# A hand-made standing LSP14 pose on a 64 x 48 canvas (integer joints).
_LSP_POSE = torch.tensor([[[17.0, 58], [18, 46], [19, 34], [28, 34], [29, 46], [31, 58], [9, 34], [12, 25],
                           [16, 15], [31, 15], [36, 25], [40, 33], [24, 12], [24, 3]]])


def _edt_of_raster(pose: np.ndarray, skeleton: Skeleton, size) -> np.ndarray:
    img = np.zeros(size, np.uint8)
    for i, j in skeleton.bones:
        a = tuple(int(round(float(c))) for c in pose[i])
        b = tuple(int(round(float(c))) for c in pose[j])
        cv2.line(img, a, b, 1, thickness=1, lineType=cv2.LINE_8)
    return distance_transform_edt(img == 0)


class TestSkeletonDistance:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_reference(self, dtype, device):
        pose = (torch.rand(5, 14, 2, generator=_gen(30), dtype=torch.float64) * 80 - 10).to(dtype=dtype,
                                                                                              device=device)
        out = skeleton_distance(pose, LSP14, (50, 60))
        assert out.shape == (5, 50, 60) and out.dtype == dtype and out.device == pose.device
        ref = skeleton_distance_reference(pose.cpu(), LSP14, (50, 60))
        torch.testing.assert_close(out.cpu(), ref, **TOL[dtype])

    def test_edt_integer_poses(self):
        # Joints on pixel centres: the 1-px raster lies within 0.5 px of the bones. Measured max 0.64 px.
        poses = (torch.rand(30, 14, 2, generator=_gen(31), dtype=torch.float64) * torch.tensor([59.0, 49.0])).round()
        out = skeleton_distance(poses, LSP14, (50, 60)).numpy()
        hand = skeleton_distance(_LSP_POSE, LSP14, (64, 48))[0].numpy()
        worst = max(np.abs(out[b] - _edt_of_raster(poses[b].numpy(), LSP14, (50, 60))).max() for b in range(len(poses)))
        worst = max(worst, np.abs(hand - _edt_of_raster(_LSP_POSE[0].numpy(), LSP14, (64, 48))).max())
        assert worst <= 1.0

    def test_edt_random_float_poses(self):
        # Rounding the end points for cv2.line moves them by up to sqrt(2)/2 px and the Bresenham raster adds up
        # to 0.5 px, so the raster's EDT can differ by a little more than 1 px (measured max 1.07 px over 200
        # poses, mean of per-pose maxima 0.97 px); the exact distance is checked to 1e-10 by test_reference.
        poses = torch.rand(30, 14, 2, generator=_gen(32), dtype=torch.float64) * torch.tensor([59.0, 49.0])
        out = skeleton_distance(poses, LSP14, (50, 60)).numpy()
        worst = max(np.abs(out[b] - _edt_of_raster(poses[b].numpy(), LSP14, (50, 60))).max() for b in range(30))
        assert worst <= 0.5 + math.sqrt(0.5)

    def test_zero_length_bones(self):
        pose = torch.full((1, 16, 2), 3.5)  # every bone has length 0: distance to the point
        out = skeleton_distance(pose, MPII16, (6, 8))
        vv, uu = np.mgrid[0:6, 0:8]
        torch.testing.assert_close(out[0], torch.tensor(np.hypot(uu - 3.5, vv - 3.5), dtype=torch.float32))
        pose = _LSP_POSE.clone()
        pose[0, 13] = pose[0, 12]  # neck-head bone of length 0 among normal bones
        out = skeleton_distance(pose, LSP14, (64, 48))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, skeleton_distance_reference(pose, LSP14, (64, 48)), **TOL[torch.float32])

    def test_batch_vs_single_empty_and_not_mutated(self):
        pose = torch.rand(4, 14, 2, generator=_gen(33)) * 40
        p0, ver = pose.clone(), pose._version
        out = skeleton_distance(pose, "lsp14", (30, 40))
        assert pose._version == ver and torch.equal(pose, p0)
        for b in range(4):
            torch.testing.assert_close(out[b : b + 1], skeleton_distance(pose[b : b + 1], LSP14, (30, 40)),
                                       atol=0, rtol=0)
        empty = skeleton_distance(pose[:0], LSP14, (30, 40))
        assert empty.shape == (0, 30, 40)

    def test_gradcheck(self):
        # Pixels off the bones (random float joints): the distance is smooth in the joints there.
        pose = (torch.rand(2, 14, 2, generator=_gen(34), dtype=torch.float64) * 9).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda p: skeleton_distance(p, LSP14, (6, 7)), (pose,))

    def test_exceptions(self):
        with pytest.raises(ShapeError, match="pose"):
            skeleton_distance(torch.zeros(2, 13, 2), LSP14, (8, 8))
        with pytest.raises(ValueError, match="finite"):
            skeleton_distance(torch.full((1, 14, 2), float("nan")), LSP14, (8, 8))
        with pytest.raises(ValueError, match="size"):
            skeleton_distance(torch.zeros(1, 14, 2), LSP14, (8,))
