"""End-to-end invariants of MosaicEngine against independent references (OpenCV, brute force)."""

import cv2
import numpy as np
import pytest
import torch

from gpumosaic import LSP14, MosaicEngine, Pool2D
from gpumosaic.retrieval import joint_distances_reference


def _random_pool(n=6, h=64, w=48, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    # Smooth random images so that bilinear resampling is well conditioned.
    small = torch.rand(n, 3, h // 8 + 1, w // 8 + 1, generator=g)
    imgs = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=True)
    joints = torch.rand(n, 14, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7]) + torch.tensor([w * 0.15, h * 0.15])
    if dtype == torch.uint8:
        imgs = (imgs * 255).round().to(torch.uint8)
    return Pool2D(imgs, joints)


def _similarity(src, dst):
    """Least-squares similarity dst ≈ s R src + t (Umeyama), numpy float64, as a 2x3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean()
    return np.hstack([s * r, (md - s * r @ ms)[:, None]])


def test_smoke_shapes(device):
    pool = _random_pool()
    eng = MosaicEngine(pool, size=40, device=device)
    q = torch.rand(3, 14, 2) * 100
    res = eng(q)
    assert res.images.shape == (3, 3, 40, 40)
    assert res.mosaic_unblended.shape == (3, 3, 40, 40)
    assert res.index_map.shape == (3, 40, 40) and res.index_map.dtype == torch.long
    assert res.matches.shape == (3, 14) and eng.warp_matches(res).shape == (3, 14, 3, 40, 40)
    assert res.probability.shape == (3, 14, 40, 40)
    assert torch.isfinite(res.images).all() and res.images.min() >= 0 and res.images.max() <= 1
    assert (res.matches >= 0).all() and (res.matches < 2 * len(pool)).all()
    torch.testing.assert_close(res.source, res.matches % len(pool))
    torch.testing.assert_close(res.weights.sum(1), torch.ones(3, 40, 40, device=device))


@pytest.mark.parametrize("padding_mode, border", [("border", cv2.BORDER_REPLICATE), ("reflection", cv2.BORDER_REFLECT)])
def test_one_image_pool_equals_warped_image(padding_mode, border):
    """A one-image pool queried with its own pose (moved by a similarity) gives that image, warped."""
    pool = _random_pool(n=1, h=70, w=54, seed=3, dtype=torch.float32)
    eng = MosaicEngine(pool, size=64, mirror=False, padding_mode=padding_mode)
    # A quarter turn keeps the longer bounding-box side, so fit_to_box gives the query the pool pose's
    # scale and every joint's rigid map T (no scale, Eq. 2) is the same quarter turn.
    a = np.pi / 2
    rot = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=torch.float32)
    query = (pool.joints[0] @ rot.T * 1.7 + torch.tensor([5.0, 9.0]))[None]
    res = eng(query)
    assert (res.matches == 0).all()
    m = _similarity(pool.joints[0].numpy(), res.query[0].numpy())
    src = pool.images[0].permute(1, 2, 0).numpy()
    ref = cv2.warpAffine(src, m, (64, 64), flags=cv2.INTER_LINEAR, borderMode=border)
    ref = torch.from_numpy(ref).permute(2, 0, 1)
    torch.testing.assert_close(res.mosaic_unblended[0], ref, atol=2e-3, rtol=0)
    torch.testing.assert_close(res.images[0], ref, atol=2e-3, rtol=0)


def test_query_equal_to_pool_pose_retrieves_it():
    pool = _random_pool(n=8, seed=4)
    eng = MosaicEngine(pool, size=48)
    res = eng(pool.joints[[2, 5]] * 2.0 + 7.0)
    expect = torch.tensor([2, 5])[:, None].expand(2, 14)
    torch.testing.assert_close(res.matches, expect)
    assert not res.mirrored.any()


def test_matches_are_brute_force_argmin_over_virtual_pool():
    pool = _random_pool(n=10, seed=5)
    eng = MosaicEngine(pool, size=48)
    q = torch.rand(4, 14, 2, generator=torch.Generator().manual_seed(1)) * 80
    res = eng(q)
    ref = joint_distances_reference(res.query, eng.index.joints, LSP14).argmin(-1)
    torch.testing.assert_close(res.matches, ref)


def test_occluded_joints_not_searched_and_excluded():
    pool = _random_pool(n=5, seed=6)
    eng = MosaicEngine(pool, size=40)
    q = torch.rand(2, 14, 2, generator=torch.Generator().manual_seed(2)) * 80
    occ = torch.zeros(2, 14, dtype=torch.bool)
    occ[0, [0, 6, 13]] = True
    occ[1] = True  # all occluded: documented fallback searches every joint
    res = eng(q, occ)
    assert (res.matches[0, [0, 6, 13]] == -1).all() and (res.source_ids[0, [0, 6, 13]] == -1).all()
    assert (res.matches[1] >= 0).all()
    assert not torch.isin(res.index_map[0], torch.tensor([0, 6, 13])).any()
    assert (eng.warp_matches(res)[0, [0, 6, 13]] == 0).all()


def test_gradient_wrt_pool_images_is_the_adjoint():
    """The mosaic is linear in the pool images: <grad_x <f(x), r>, y> must equal <f(y), r>."""
    pool = _random_pool(n=4, seed=7, dtype=torch.float32)
    q = torch.rand(2, 14, 2, generator=torch.Generator().manual_seed(3)) * 60
    x = pool.images.clone().requires_grad_(True)
    eng = MosaicEngine(Pool2D(x, pool.joints), size=32)
    g = torch.Generator().manual_seed(4)
    r = torch.rand(2, 3, 32, 32, generator=g)
    for field in ("images", "mosaic_unblended"):
        (grad,) = torch.autograd.grad((getattr(eng(q), field) * r).sum(), x)
        y = torch.rand(pool.images.shape, generator=g)
        fy = getattr(MosaicEngine(Pool2D(y, pool.joints), size=32)(q), field)
        torch.testing.assert_close((grad * y).sum(), (fy * r).sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["collinear", "coincident", "two_points"])
def test_degenerate_queries_give_finite_mosaics(case):
    pool = _random_pool(n=5, seed=8)
    eng = MosaicEngine(pool, size=36)
    t = torch.linspace(0, 1, 14)
    if case == "collinear":
        q = torch.stack([10 + 50 * t, 5 + 20 * t], -1)[None]
    elif case == "coincident":
        q = torch.full((1, 14, 2), 12.0)
    else:
        q = torch.where(t[:, None] < 0.5, torch.tensor([0.0, 0.0]), torch.tensor([30.0, 40.0]))[None]
    res = eng(q)
    for f in ("images", "mosaic_unblended", "probability"):
        assert torch.isfinite(getattr(res, f)).all(), f
    assert torch.isfinite(eng.warp_matches(res)).all()


def test_odd_sized_pool_images():
    pool = _random_pool(n=3, h=37, w=51, seed=9)
    res = MosaicEngine(pool, size=33)(torch.rand(2, 14, 2) * 50)
    assert res.images.shape == (2, 3, 33, 33) and torch.isfinite(res.images).all()


def test_bad_input():
    pool = _random_pool(n=3, seed=10)
    eng = MosaicEngine(pool, size=32)
    bad = torch.rand(1, 14, 2)
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        eng(bad)
    bad[0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        eng(bad)
    with pytest.raises(ValueError, match="J=14"):
        eng(torch.rand(1, 16, 2))
    with pytest.raises(TypeError, match="floating"):
        eng(torch.ones(1, 14, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="bool"):
        eng(torch.rand(1, 14, 2), torch.zeros(1, 14))
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\) \(grayscale"):
        Pool2D(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 14, 2))
    with pytest.raises(ValueError, match="empty"):
        Pool2D(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, 14, 2))
    with pytest.raises(ValueError, match="J=16"):
        Pool2D(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 16, 2))
    with pytest.raises(ValueError, match="NaN"):
        Pool2D(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.full((1, 14, 2), float("nan")))


def test_bad_input_edge_cases():
    """Issue 12: huge finite queries, empty batches, float pool ranges, NaN pixels, ids, RGBA/HWC, far joints."""
    pool = _random_pool(n=3, seed=10)
    eng = MosaicEngine(pool, size=32)
    q = torch.rand(1, 14, 2, generator=torch.Generator().manual_seed(0))
    huge = q.clone()
    huge[0, 0, 0], huge[0, 1, 0] = -3e38, 3e38
    with pytest.raises(ValueError, match=r"extent .* fits in torch.float32"):
        eng(huge)  # finite in float32, but max - min overflows
    huge[0, :, 0] = 2e38
    with pytest.raises(ValueError, match=r"extent .* fits in torch.float32"):
        eng(huge)  # max + min overflows
    with pytest.raises(ValueError, match=r"within the range of torch.float32 .* max \|x\| = 9.53e\+38"):
        eng(q.double() * 1e39)  # finite in float64, inf once cast
    out = eng(q.double() * 1e30)  # huge but representable: a normal mosaic
    assert torch.isfinite(out.images).all()
    with pytest.raises(ValueError, match=r"at least one query pose \(B >= 1\), got an empty batch"):
        eng(torch.zeros(0, 14, 2))
    joints = pool.joints
    images = pool.images.float() / 255
    assert len(Pool2D(images, joints)) == 3  # float in [0, 1] accepted
    with pytest.raises(ValueError, match=r"float pool images in \[0, 1\].*divide by 255"):
        Pool2D(images * 255, joints)
    nan = images.clone()
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite pixels"):
        Pool2D(nan, joints)
    with pytest.raises(ValueError, match=r"pool ids as an integer tensor of shape \(3,\).*got \(2,\)"):
        Pool2D(pool.images, joints, ids=torch.arange(2))
    with pytest.raises(ValueError, match=r"RGBA: drop the alpha channel"):
        Pool2D(torch.zeros(3, 4, 64, 48, dtype=torch.uint8), joints)
    with pytest.raises(ValueError, match=r"channels-last \(N, H, W, C\) images: use images.permute\(0, 3, 1, 2\)"):
        Pool2D(pool.images.permute(0, 2, 3, 1), joints)
    far = joints.clone()
    far[1, 4] = torch.tensor([48 * 2.0, 10.0])  # 49 px right of a 48-px-wide image
    with pytest.warns(UserWarning, match=r"1 of 3 pool entries have joints more than 25% .* \(rows \[1\]\)"):
        Pool2D(pool.images, far)


def test_deterministic():
    pool = _random_pool(n=6, seed=11)
    eng = MosaicEngine(pool, size=40)
    q = torch.rand(3, 14, 2, generator=torch.Generator().manual_seed(5)) * 90
    a, b = eng(q), eng(q.clone())
    assert torch.equal(a.images, b.images) and torch.equal(a.index_map, b.index_map)


@pytest.mark.parametrize("blend,warps", [(True, "auto"), (False, "auto"), (True, "dense")])
def test_pixel_chunk_does_not_change_results(blend, warps):
    # The per-pixel stages run on sub-batches of pixel_chunk mosaics: every field of the result is the same
    # as one pass over the whole batch (chunks of 1, 3 with a remainder, and more than the batch), and each
    # mosaic is the one a batch of its own gives.
    pool = _random_pool(n=6, seed=13)
    g = torch.Generator().manual_seed(6)
    q = torch.rand(7, 14, 2, generator=g) * 90
    occ = torch.rand(7, 14, generator=g) < 0.2
    fields = ("images", "mosaic_unblended", "index_map", "probability", "weights", "distance", "warped",
              "matches", "source_rows", "source_ids", "mirrored", "searched", "pose2d", "aligned")
    results = [MosaicEngine(pool, size=36, blend=blend, warps=warps, pixel_chunk=c)(q, occ) for c in (1, 3, 64)]
    for r in results[:2]:
        for f in fields:
            a, b = getattr(r, f), getattr(results[2], f)
            assert (a is None and b is None) or torch.equal(a, b), f
    single = MosaicEngine(pool, size=36, blend=blend, warps=warps)(q[4:5], occ[4:5])
    assert torch.equal(single.images, results[1].images[4:5])
    assert torch.equal(single.index_map, results[1].index_map[4:5])
    with pytest.raises(ValueError, match="pixel_chunk"):
        MosaicEngine(pool, pixel_chunk=0)


def test_probability_maps_skip_unsearched_joints_on_the_cpu(monkeypatch):
    # On the CPU only searched joints' maps are rasterised; the one-graph form rasterises all and multiplies
    # by ``searched``. Same maps both ways, zero for unsearched joints.
    import gpumosaic.synthesis as syn
    from gpumosaic.raster import interpolate_triangulated

    pool = _random_pool(n=6, seed=14)
    eng = MosaicEngine(pool, size=33)
    g = torch.Generator().manual_seed(7)
    q = torch.rand(5, 14, 2, generator=g) * 90
    searched = torch.rand(5, 14, generator=g) > 0.3
    mt = syn.match_and_map(q, searched, eng.settings, eng.prepared, maps=False)
    fast = syn.probability_maps(mt.pose2d, mt.aligned, searched, eng.settings)
    with monkeypatch.context() as m:
        m.setattr(syn.torch.compiler, "is_compiling", lambda: True)
        dense = syn.probability_maps(mt.pose2d, mt.aligned, searched, eng.settings)
    assert torch.equal(fast, dense)
    assert float(fast[~searched].abs().max()) == 0.0 and float(fast[searched].amax()) > 0
    b, j = map(int, torch.nonzero(searched)[3])
    values = torch.exp(-(mt.pose2d[b] - mt.aligned[b, j]).square().sum(-1) / eng.settings.sigma**2)
    assert torch.equal(fast[b, j], interpolate_triangulated(mt.aligned[b, j][None], values[None], (33, 33))[0])


def test_input_not_mutated():
    pool = _random_pool(n=4, seed=12)
    images0, joints0 = pool.images.clone(), pool.joints.clone()
    eng = MosaicEngine(pool, size=32)
    q = torch.rand(2, 14, 2) * 50
    q0 = q.clone()
    eng(q)
    assert torch.equal(q, q0) and torch.equal(pool.images, images0) and torch.equal(pool.joints, joints0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    pool = _random_pool(n=6, seed=13)
    q = torch.rand(3, 14, 2) * 90
    a = MosaicEngine(pool, size=40)(q)
    b = MosaicEngine(pool, size=40, device="cuda")(q.cuda())
    torch.testing.assert_close(a.matches, b.matches.cpu())
    torch.testing.assert_close(a.images, b.images.cpu(), atol=1e-4, rtol=0)


def test_checks_disabled_still_binds_shapes(monkeypatch):
    """With GPUMOSAIC_CHECKS=0 the public functions skip validation but keep working."""
    from gpumosaic._check import check_shape

    monkeypatch.setenv("GPUMOSAIC_CHECKS", "0")
    assert check_shape(torch.zeros(2, 5, 3), ["*", "J", "3"], name="x") == {"J": 5}
    from gpumosaic.camera import render_views, sample_views

    poses = torch.randn(2, 14, 3) * 0.3
    az, el = sample_views(2, 3, generator=torch.Generator().manual_seed(0))
    views = render_views(poses, LSP14, az, el)
    assert views.pose2d.shape == (2, 3, 14, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_hot_path_makes_no_host_sync():
    """Once inputs are validated, the engine never waits for the device (sync debug mode raises)."""
    pool = _random_pool(n=6, seed=14)
    eng = MosaicEngine(pool, size=40, device="cuda")
    q = (torch.rand(3, 14, 2) * 90).cuda()
    occ = torch.zeros(3, 14, dtype=torch.bool, device="cuda")
    eng.synthesise(q, ~occ)  # warm-up (lazy CUDA initialisation may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        from gpumosaic._check import unchecked

        with unchecked():
            eng.synthesise(q, ~occ)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_hard_mode_accepts_a_query_that_requires_grad():
    pool = _random_pool(n=4, seed=15)
    q = (torch.rand(2, 14, 2) * 60).requires_grad_(True)
    res = MosaicEngine(pool, size=24)(q)
    assert torch.isfinite(res.images).all()


@pytest.mark.parametrize("blend", [True, False])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_sparse_warps_equal_dense_warps(padding_mode, blend, device):
    """Sampling only where a weight is non-zero gives the dense engine's mosaics (Eq. 6 and Eq. 9)."""
    pool = _random_pool(n=6, seed=16)
    q = (torch.rand(3, 14, 2, generator=torch.Generator().manual_seed(6)) * 90).to(device)
    occ = torch.zeros(3, 14, dtype=torch.bool, device=device)
    occ[1, [2, 7]] = True
    dense_engine = MosaicEngine(pool, size=40, warps="dense", padding_mode=padding_mode, blend=blend, device=device)
    sparse_engine = MosaicEngine(pool, size=40, warps="sparse", padding_mode=padding_mode, blend=blend,
                                 device=device)
    dense, sparse = dense_engine(q, occ), sparse_engine(q, occ)
    assert sparse.warped is None and dense.warped is not None
    torch.testing.assert_close(sparse.mosaic_unblended, dense.mosaic_unblended, atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse.images, dense.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse_engine.warp_matches(sparse), dense.warped)
