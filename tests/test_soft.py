"""Soft (differentiable) mode: stages against plain-loop twins, gradcheck, finite differences, τ → 0 limit.

References are independent of the code under test: plain Python/NumPy loops (``*_reference``),
``torch.autograd.gradcheck`` (finite differences in float64), the hard engine and
:func:`gpumosaic.blend.window_weights` (int32 summed-area tables) for the τ → 0 limit.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gpumosaic import LSP14, MosaicEngine, MosaicSettings, Pool2D, load_demo_mocap
from gpumosaic.blend import blend, index_map, window_weights
from gpumosaic.camera import render_views
from gpumosaic.raster import skeleton_distance_reference
from gpumosaic.retrieval import mirror_poses
from gpumosaic.soft import (
    soft_assignment,
    soft_assignment_reference,
    soft_mosaic,
    soft_skeleton_distance,
    soft_skeleton_distance_reference,
    soft_window_weights,
    soft_window_weights_reference,
)



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small kernels: thread contention on a 2-core machine slows them a lot; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pool(n=3, h=24, w=20, seed=0, dtype=torch.float64):
    """Smooth random images (bilinear resampling well conditioned) and random in-image joints."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, h // 6 + 1, w // 6 + 1, generator=g, dtype=torch.float64)
    imgs = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=True)
    joints = torch.rand(n, 14, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7]) + torch.tensor([w * 0.15, h * 0.15])
    if dtype == torch.uint8:
        imgs = (imgs * 255).round().to(torch.uint8)
    else:
        imgs = imgs.to(dtype)
    return Pool2D(imgs, joints.float())


def _query(pool, k=1, seed=1, noise=1.5, scale=1.3, dtype=torch.float64):
    """A pool pose moved and perturbed: a realistic query (its matches are not all far away)."""
    g = torch.Generator().manual_seed(seed)
    q = pool.joints[k].to(dtype) * scale + torch.randn(14, 2, generator=g, dtype=dtype) * noise + 3.0
    return q[None]


# ---------------------------------------------------------------------------------------------------------
# Stages against their plain-loop twins
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.05, 1.0, 3.0])
def test_soft_assignment_reference(device, dtype, tau):
    g = torch.Generator().manual_seed(0)
    prob = torch.rand(3, 4, 5, 6, generator=g, dtype=dtype)
    prob[0, 1, :2] = 0.0  # underflow: clamped, never NaN
    searched = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])
    out = soft_assignment(prob.to(device), searched.to(device), tau)
    ref = soft_assignment_reference(prob, searched, tau)
    assert out.dtype == dtype and out.device.type == device.type and torch.isfinite(out).all()
    torch.testing.assert_close(out.cpu(), ref)
    assert (out[0, 1] == 0).all()  # unsearched map never shares a pixel
    torch.testing.assert_close(out.sum(1).cpu(), torch.ones(3, 5, 6, dtype=dtype))


def test_soft_assignment_tends_to_index_map():
    g = torch.Generator().manual_seed(1)
    prob = torch.rand(2, 5, 7, 8, generator=g, dtype=torch.float64)
    searched = torch.rand(2, 5, generator=g) > 0.3
    onehot = F.one_hot(index_map(prob, searched), 5).permute(0, 3, 1, 2).double()
    # Pixels whose best searched map leads the runner-up by a log-ratio > 0.05 (away from ties).
    top2 = prob.masked_fill(~searched[:, :, None, None], 0).topk(2, dim=1).values.log()
    clear = (top2[:, 0] - top2[:, 1] > 0.05)[:, None].expand_as(prob)
    assert clear.float().mean() > 0.5
    errs = [(soft_assignment(prob, searched, t) - onehot)[clear].abs().max().item() for t in (0.3, 0.03, 1e-3)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-6


@pytest.mark.parametrize("tau", [0.2, 1.0, 4.0])
def test_soft_skeleton_distance_reference(device, tau):
    g = torch.Generator().manual_seed(2)
    pose = torch.rand(2, 14, 2, generator=g, dtype=torch.float64) * torch.tensor([20.0, 16.0])
    pose[1, 6] = pose[1, 7]  # a zero-length bone
    out = soft_skeleton_distance(pose.to(device), LSP14, (16, 20), tau)
    ref = soft_skeleton_distance_reference(pose, LSP14, (16, 20), tau)
    torch.testing.assert_close(out.cpu(), ref)
    # Bounds against the exact distance (an independent NumPy twin): the safe sqrt lowers each bone's
    # distance by at most eps = 0.1 tau, the soft-min weighted mean adds at most (n_bones - 1) tau / e.
    exact = skeleton_distance_reference(pose, LSP14, (16, 20))
    assert (out.cpu() >= exact - 0.1 * tau - 1e-9).all()
    assert (out.cpu() <= exact + (len(LSP14.bones) - 1) * tau / math.e + 1e-9).all()


def test_soft_skeleton_distance_tends_to_exact():
    pose = torch.rand(2, 14, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 30
    exact = skeleton_distance_reference(pose, LSP14, (24, 30))
    errs = [(soft_skeleton_distance(pose, LSP14, (24, 30), t) - exact).abs().max().item() for t in (1, 0.1, 1e-3)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_soft_window_weights_reference(device, tau):
    g = torch.Generator().manual_seed(4)
    a = torch.softmax(torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64), 1)
    d = torch.rand(2, 9, 11, generator=g, dtype=torch.float64) * 20
    out = soft_window_weights(a.to(device), d.to(device), 2.0, 0.5, tau)
    ref = soft_window_weights_reference(a, d, 2.0, 0.5, tau)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(out.sum(1).cpu(), torch.ones(2, 9, 11, dtype=torch.float64))


def test_soft_window_weights_hard_limit_and_continuity():
    """One-hot assignment, tiny τ: the paper's integer windows (blend.window_weights, int32 tables)."""
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 4, (2, 12, 13), generator=g)
    onehot = F.one_hot(idx, 4).permute(0, 3, 1, 2).double()
    d = torch.rand(2, 12, 13, generator=g, dtype=torch.float64) * 30
    half = torch.floor((6.0 + 0.25 * d) / 2).long()
    ref = window_weights(idx, 4, half, dtype=torch.float64)
    torch.testing.assert_close(soft_window_weights(onehot, d, 6.0, 0.25, 1e-4), ref, atol=1e-6, rtol=0)
    # Continuous in d across an integer half-width (the floor's jump is interpolated away).
    for tau in (0.2, 1.0):
        k = torch.full((2, 12, 13), 5.0, dtype=torch.float64)  # R / 2 = 5 at d = (10 - 6) / 0.25 = 16
        lo = soft_window_weights(onehot, (2 * k - 6.0) / 0.25 - 1e-9, 6.0, 0.25, tau)
        hi = soft_window_weights(onehot, (2 * k - 6.0) / 0.25 + 1e-9, 6.0, 0.25, tau)
        torch.testing.assert_close(lo, hi, atol=1e-7, rtol=0)


def test_exceptions():
    prob = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="temperature"):
        soft_assignment(prob, None, 0.0)
    with pytest.raises(TypeError, match="temperature"):
        soft_assignment(prob, None, torch.tensor(1.0))
    with pytest.raises(ValueError, match="dimensions"):
        soft_assignment(prob[0])
    with pytest.raises(TypeError, match="bool"):
        soft_assignment(prob, torch.ones(1, 3))
    with pytest.raises(ValueError, match="pose"):
        soft_skeleton_distance(torch.rand(1, 13, 2), LSP14, (4, 4))
    with pytest.raises(ValueError, match="size"):
        soft_skeleton_distance(torch.rand(1, 14, 2), LSP14, (0, 4))
    with pytest.raises(ValueError, match="distance"):
        soft_window_weights(prob, torch.rand(1, 5, 4))
    with pytest.raises(ValueError, match="alpha"):
        soft_window_weights(prob, torch.rand(1, 4, 4), alpha=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        MosaicSettings(soft=True, temperature=-1.0)
    eng = MosaicEngine(_pool(), size=16)
    with pytest.raises(ValueError, match="J=14"):
        soft_mosaic(eng, torch.rand(1, 13, 2))
    with pytest.raises(ValueError, match="finite"):
        soft_mosaic(eng, torch.full((1, 14, 2), float("nan")))
    with pytest.raises(TypeError, match="bool"):
        soft_mosaic(eng, torch.rand(1, 14, 2), torch.zeros(1, 14))


# ---------------------------------------------------------------------------------------------------------
# Gradients: gradcheck (float64 finite differences) per stage and end to end
# ---------------------------------------------------------------------------------------------------------


def test_stage_gradcheck():
    g = torch.Generator().manual_seed(6)
    prob = torch.rand(1, 3, 4, 5, generator=g, dtype=torch.float64).add(0.05).requires_grad_()
    searched = torch.tensor([[True, False, True]])
    assert torch.autograd.gradcheck(lambda p: soft_assignment(p, searched, 0.4), (prob,))
    pose = (torch.rand(1, 14, 2, generator=g, dtype=torch.float64) * 12).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: soft_skeleton_distance(x, LSP14, (12, 13), 0.7), (pose,))
    a = torch.softmax(torch.randn(1, 3, 7, 8, generator=g, dtype=torch.float64), 1).requires_grad_()
    # Distances whose half-widths R/2 = 1 + d/4 keep clear of integers (where w has a kink).
    d = (torch.randint(0, 6, (1, 7, 8), generator=g) * 4 + 0.4 + 2.8 * torch.rand(1, 7, 8, generator=g))
    d = d.double().requires_grad_()
    for tau in (0.5, 1.5):
        assert torch.autograd.gradcheck(lambda x, y: soft_window_weights(x, y, 2.0, 0.25, tau), (a, d))


@pytest.mark.parametrize("tau, blend_on, occluded", [(0.3, True, False), (1.0, True, True), (2.0, False, False)])
def test_soft_engine_gradcheck_wrt_query(tau, blend_on, occluded):
    pool = _pool()
    eng = MosaicEngine(pool, size=16, blend=blend_on)
    q = _query(pool, k=1).requires_grad_()
    occ = None
    if occluded:
        occ = torch.zeros(1, 14, dtype=torch.bool)
        occ[0, [3, 10]] = True
    r = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def images(x):
        return soft_mosaic(eng, x, occ, temperature=tau).images

    assert torch.autograd.gradcheck(images, (q,), fast_mode=True)
    # Full Jacobian of a random projection (every input direction by finite differences).
    assert torch.autograd.gradcheck(lambda x: (images(x) * r).sum(), (q,))
    (grad,) = torch.autograd.grad((images(q) * r).sum(), q)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_soft_engine_gradcheck_uint8_pool_and_mirror():
    pool = _pool(n=3, seed=2, dtype=torch.uint8)
    eng = MosaicEngine(pool, size=14)
    g = torch.Generator().manual_seed(3)
    q = mirror_poses(pool.joints[2:3].double(), LSP14, width=20.0) + torch.randn(1, 14, 2, generator=g) * 0.5
    q = q.requires_grad_()  # the mirrored pose of pool entry 2: matches mirrored entries
    res = soft_mosaic(eng, q, temperature=0.5)
    assert res.images.dtype == torch.float64 and res.mirrored.any()
    assert torch.autograd.gradcheck(lambda x: soft_mosaic(eng, x, temperature=0.5).images, (q,), fast_mode=True)


def test_gradients_wrt_camera_match_finite_differences():
    """render_views -> soft engine: d(loss)/d(azimuth, elevation, distance, focal, 3D pose) by FD."""
    pool = _pool(n=3, seed=4)
    eng = MosaicEngine(pool, size=16)
    pose3d = load_demo_mocap().poses[:1].double()
    r = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def loss(az, el, dist, focal, pose):
        views = render_views(pose, LSP14, az, el, dist, focal)
        return (soft_mosaic(eng, views.pose2d[:, 0], temperature=0.5).images * r).sum()

    params = [torch.tensor([[v]], dtype=torch.float64, requires_grad=True) for v in (30.0, 10.0, 4.0, 900.0)]
    pose = pose3d.clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (*params, pose), atol=1e-5, rtol=1e-3)
    grads = torch.autograd.grad(loss(*params, pose), params)
    assert grads[0].abs() > 0 and grads[1].abs() > 0  # views move the mosaic
    # fit_to_box removes the image scale: the focal length has no effect (FD agrees: zero up to rounding).
    assert grads[3].abs() < 1e-8


@pytest.mark.parametrize("case", ["coincident_pair", "coincident_limb", "collinear", "integer_grid", "all_same"])
def test_no_nan_gradients_at_degenerate_joints(case):
    pool = _pool(n=3, seed=5)
    eng = MosaicEngine(pool, size=16)
    q = _query(pool, k=0, seed=6)
    if case == "coincident_pair":
        q[0, 6] = q[0, 7]  # wrist on elbow: zero-length bone, zero reference direction for the wrist
    elif case == "coincident_limb":
        q[0, 6:9] = q[0, 8]  # wrist, elbow, shoulder on one point
    elif case == "collinear":
        t = torch.linspace(0, 1, 14, dtype=torch.float64)
        q = torch.stack([4 + 20 * t, 2 + 10 * t], -1)[None]
    elif case == "integer_grid":
        q = q.round()  # pixel centres exactly on joints and bones
    else:
        q = torch.full((1, 14, 2), 7.0, dtype=torch.float64)
    q = q.requires_grad_()
    for tau in (0.1, 1.0):
        res = soft_mosaic(eng, q, temperature=tau)
        for name in ("images", "mosaic_unblended", "weights", "distance", "probability"):
            assert torch.isfinite(getattr(res, name)).all(), name
        (grad,) = torch.autograd.grad(res.images.sum() + res.distance.sum(), q)
        assert torch.isfinite(grad).all(), (case, tau)


# ---------------------------------------------------------------------------------------------------------
# Engine integration, τ → 0 limit, hard mode
# ---------------------------------------------------------------------------------------------------------


def test_engine_soft_flag_runs_the_functional_core(device):
    pool = _pool(n=4, h=30, w=26, seed=7, dtype=torch.uint8)
    q = torch.cat([_query(pool, k, seed=k, dtype=torch.float32) for k in range(3)]).to(device)
    res = MosaicEngine(pool, size=24, soft=True, temperature=0.4, device=device)(q)
    ref = soft_mosaic(MosaicEngine(pool, size=24, device=device), q, temperature=0.4)
    for name in ("images", "mosaic_unblended", "weights", "distance", "probability", "warped"):
        torch.testing.assert_close(getattr(res, name), getattr(ref, name))
    torch.testing.assert_close(res.matches, ref.matches)
    # soft mode ignores the hard-mode-only out-of-image mask: compare with the plain argmax of Eq. 5
    hard = MosaicEngine(pool, size=24, device=device, mask_outside=False)(q)
    torch.testing.assert_close(res.matches, hard.matches)  # retrieval is the hard engine's
    torch.testing.assert_close(res.index_map, hard.index_map)
    torch.testing.assert_close(res.weights.sum(1), torch.ones_like(res.weights[:, 0]))
    assert res.images.min() >= 0 and res.images.max() <= 1


def test_soft_tends_to_hard_as_temperature_falls():
    pool = _pool(n=5, h=48, w=40, seed=8, dtype=torch.uint8)
    q = torch.cat([_query(pool, k, seed=10 + k, dtype=torch.float64, noise=2.0) for k in range(3)])
    s = 40
    # soft mode ignores the hard-mode-only out-of-image mask: the limit is the hard engine without it
    hard = MosaicEngine(pool, settings=MosaicSettings(size=s, mask_outside=False)).__call__(q.float())
    eng = MosaicEngine(pool, size=s)
    taus = (1.0, 0.3, 0.1, 0.03, 1e-4)
    res = {t: soft_mosaic(eng, q.float(), temperature=t) for t in taus}
    errs = [(res[t].images - hard.images).abs().mean().item() for t in taus]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    # Away from ties of the probability maps (exact ties are split evenly by the softmax, given to the
    # lowest j by the argmax; e.g. two maps at exactly 1 far outside the body), tiny τ is the hard engine.
    top2 = hard.probability.topk(2, dim=1).values.clamp_min(1e-30).log()
    tie = (top2[:, 0] - top2[:, 1]) < 0.02  # (B, S, S): runner-up share < exp(-0.02 / 1e-4) elsewhere
    soft = res[1e-4]
    clear = ~tie[:, None]
    torch.testing.assert_close(soft.mosaic_unblended[clear.expand_as(soft.mosaic_unblended)],
                               hard.mosaic_unblended[clear.expand_as(hard.mosaic_unblended)], atol=1e-5, rtol=0)
    # Blended: pixels whose largest window (half-width r0 + 1) sees no tie pixel.
    reach = int(hard.distance.max().mul(0.25).add(6).div(2).floor().item()) + 1
    near_tie = F.max_pool2d(tie[:, None].float(), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0
    ok = (~near_tie)[:, None].expand_as(soft.images)
    assert ok.float().mean() > 0.1
    torch.testing.assert_close(soft.images[ok], hard.images[ok], atol=1e-3, rtol=0)


def test_hard_mode_gradcheck_wrt_pool_and_weights():
    """The paper's engine (default) is differentiable w.r.t. a float pool and the blending weights."""
    pool = _pool(n=3, h=10, w=9, seed=9)
    q = _query(pool, k=1, dtype=torch.float32)
    x = pool.images.clone().requires_grad_()

    def mosaic(images):
        return MosaicEngine(Pool2D(images, pool.joints), size=10)(q).images

    assert torch.autograd.gradcheck(mosaic, (x,), fast_mode=True)
    res = MosaicEngine(pool, size=10, warps="dense")(q)
    w = res.weights.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda ww: blend(res.warped.detach(), ww), (w,))


def test_inputs_not_mutated():
    pool = _pool(n=3, seed=10)
    eng = MosaicEngine(pool, size=16)
    q = _query(pool)
    prob = torch.rand(1, 14, 16, 16, dtype=torch.float64)
    q0, p0, versions = q.clone(), prob.clone(), (q._version, prob._version)
    res = soft_mosaic(eng, q, temperature=0.5)
    soft_assignment(prob, None, 0.5)
    soft_window_weights(prob, res.distance.detach())
    soft_skeleton_distance(q, LSP14, (8, 8))
    assert torch.equal(q, q0) and torch.equal(prob, p0) and (q._version, prob._version) == versions


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_vs_cpu():
    pool = _pool(n=3, seed=11)
    q = _query(pool)
    a = soft_mosaic(MosaicEngine(pool, size=16), q.clone().requires_grad_(), temperature=0.5)
    qc = q.cuda().requires_grad_()
    b = soft_mosaic(MosaicEngine(pool, size=16, device="cuda"), qc, temperature=0.5)
    torch.testing.assert_close(a.images, b.images.cpu())
    (gc,) = torch.autograd.grad(b.images.sum(), qc)
    qa = q.clone().requires_grad_()
    (ga,) = torch.autograd.grad(soft_mosaic(MosaicEngine(pool, size=16), qa, temperature=0.5).images.sum(), qa)
    torch.testing.assert_close(ga, gc.cpu())
