import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

import gpumosaic.metrics as metrics_mod
from gpumosaic._check import ShapeError
from gpumosaic.classes import PoseClasses
from gpumosaic.metrics import (
    MM_PER_M,
    classification_rate,
    error_2d,
    metrics_table,
    mpjpe,
    pa_mpjpe,
    procrustes_align,
    topk_oracle,
    topk_rate,
)


def _poses(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _rotations(n, seed):
    return torch.from_numpy(Rotation.random(n, random_state=seed).as_matrix())


def _scipy_align(pred, gt, scale=False):
    """Reference alignment with scipy's orthogonal_procrustes (allows reflections); also returns det(R)."""
    p, g = pred.numpy(), gt.numpy()
    mp, mg = p.mean(0), g.mean(0)
    r, ssum = orthogonal_procrustes(p - mp, g - mg)  # minimises ||(p - mp) R - (g - mg)||
    s = ssum / ((p - mp) ** 2).sum() if scale else 1.0
    return s * (p - mp) @ r + mg, np.linalg.det(r)


# ---------------------------------------------------------------------------------------------------------
# MPJPE / 2D error
# ---------------------------------------------------------------------------------------------------------


def test_mpjpe_hand_made(device):
    gt = torch.zeros(14, 3, device=device)
    pred = gt.clone()
    pred[5] = torch.tensor([3.0, 4.0, 0.0], device=device)  # one joint off by 5
    assert float(mpjpe(pred, gt)) == pytest.approx(5.0 / 14)
    assert float(mpjpe(pred, gt, factor=MM_PER_M)) == pytest.approx(5000.0 / 14)
    out = mpjpe(pred[None].expand(4, 14, 3), gt)  # broadcast leading dims
    assert out.shape == (4,) and out.device.type == device.type
    p2 = torch.zeros(2, 3, 14, 2, device=device)
    g2 = p2.clone()
    g2[1, 2, 0] = torch.tensor([6.0, 8.0], device=device)  # 10 px
    e = error_2d(p2, g2)
    assert e.shape == (2, 3)
    expect = torch.zeros(2, 3, device=device)
    expect[1, 2] = 10.0 / 14
    torch.testing.assert_close(e, expect)


def test_mpjpe_against_numpy_and_shapes(device):
    pred, gt = _poses((2, 5, 17, 3), 0), _poses((2, 5, 17, 3), 1)
    ref = np.linalg.norm(pred.numpy() - gt.numpy(), axis=-1).mean(-1)
    got = mpjpe(pred.to(device), gt.to(device))
    assert got.shape == (2, 5) and got.dtype == torch.float64
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-12)
    assert mpjpe(torch.zeros(0, 14, 3), torch.zeros(0, 14, 3)).shape == (0,)
    assert pa_mpjpe(torch.zeros(0, 14, 3), torch.ones(0, 14, 3)).shape == (0,)


def test_shape_errors():
    with pytest.raises(ShapeError, match="gt"):
        mpjpe(torch.zeros(2, 14, 3), torch.zeros(2, 13, 3))
    with pytest.raises(ShapeError, match="pred"):
        mpjpe(torch.zeros(2, 14, 2), torch.zeros(2, 14, 2))
    with pytest.raises(ShapeError, match="broadcastable"):
        mpjpe(torch.zeros(2, 14, 3), torch.zeros(3, 14, 3))
    with pytest.raises(ShapeError, match="pred"):
        error_2d(torch.zeros(2, 14, 3), torch.zeros(2, 14, 3))
    with pytest.raises(ShapeError, match="gt"):
        pa_mpjpe(torch.zeros(14, 3), torch.zeros(14, 2))
    with pytest.raises(ShapeError, match="gt"):
        procrustes_align(torch.zeros(14, 3), torch.zeros(14, 2))
    with pytest.raises(TypeError, match="floating-point"):
        mpjpe(torch.zeros(14, 3, dtype=torch.long), torch.zeros(14, 3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# Procrustes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [False, True])
def test_procrustes_against_scipy(scale, device):
    n = 6
    gt = _poses((n, 14, 3), 2)
    rot = _rotations(n, 3)
    # Noisy rotated, scaled, translated copies: the optimum is a proper rotation (checked below).
    pred = 1.3 * gt @ rot.transpose(-1, -2) + _poses((n, 1, 3), 4) + 0.1 * _poses((n, 14, 3), 5)
    got = procrustes_align(pred.to(device), gt.to(device), scale=scale).cpu()
    pa = pa_mpjpe(pred.to(device), gt.to(device), scale=scale).cpu()
    assert got.shape == pred.shape and pa.shape == (n,)
    for b in range(n):
        ref, det = _scipy_align(pred[b], gt[b], scale)
        assert det > 0  # proper rotation: scipy's unconstrained optimum is admissible
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-9, atol=1e-9)
        assert float(pa[b]) == pytest.approx(np.linalg.norm(ref - gt[b].numpy(), axis=-1).mean(), rel=1e-9)
    torch.testing.assert_close(got, metrics_mod._procrustes_align_reference(pred, gt, scale))


def test_pa_mpjpe_zero_for_rigid_copy(device):
    gt = _poses((5, 14, 3), 6).to(device)
    rot = _rotations(5, 7).to(device)
    moved = gt @ rot.transpose(-1, -2) + torch.tensor([0.3, -1.0, 2.0], dtype=gt.dtype, device=device)
    assert float(mpjpe(moved, gt).min()) > 0.1
    torch.testing.assert_close(pa_mpjpe(moved, gt), torch.zeros(5, dtype=gt.dtype, device=device), atol=1e-10,
                               rtol=0)
    torch.testing.assert_close(procrustes_align(moved, gt), gt)
    # A scaled copy is only zero with the similarity alignment.
    scaled = 0.5 * moved
    assert float(pa_mpjpe(scaled, gt).min()) > 0.05
    torch.testing.assert_close(pa_mpjpe(scaled, gt, scale=True), torch.zeros(5, dtype=gt.dtype, device=device),
                               atol=1e-10, rtol=0)


def test_procrustes_excludes_reflections(device):
    gt = _poses((4, 14, 3), 8)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=gt.dtype))
    pred = gt @ mirror + 0.5  # a reflected copy: scipy (reflections allowed) aligns it perfectly
    for b in range(4):
        ref, det = _scipy_align(pred[b], gt[b])
        assert det < 0
        np.testing.assert_allclose(ref, gt[b].numpy(), atol=1e-9)
    got = procrustes_align(pred.to(device), gt.to(device)).cpu()
    pa = pa_mpjpe(pred.to(device), gt.to(device)).cpu()
    assert (pa > 0.1).all()  # no proper rotation undoes a mirror of a non-planar point set
    # The aligned pose is a proper rigid motion of pred: same pairwise distances, same handedness
    # (signed volumes of joint tetrahedra keep their sign).
    torch.testing.assert_close(torch.cdist(got, got), torch.cdist(pred, pred))

    def volumes(x):
        a, b, c, d = x[:, 0], x[:, 3], x[:, 8], x[:, 12]
        return torch.linalg.det(torch.stack([b - a, c - a, d - a], -2))

    assert (torch.sign(volumes(got)) == torch.sign(volumes(pred))).all()
    torch.testing.assert_close(got, metrics_mod._procrustes_align_reference(pred, gt))


def test_procrustes_float32_and_batch_shapes(device):
    gt = _poses((2, 3, 14, 3), 9, dtype=torch.float32).to(device)
    pred = gt + 0.05 * _poses((2, 3, 14, 3), 10, dtype=torch.float32).to(device)
    out = pa_mpjpe(pred, gt, factor=MM_PER_M)
    assert out.shape == (2, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = metrics_mod._procrustes_align_reference(pred.cpu(), gt.cpu())
    torch.testing.assert_close(procrustes_align(pred, gt).cpu().double(), ref, atol=1e-5, rtol=1e-5)
    # Broadcast: one prediction against a batch of ground truths.
    assert pa_mpjpe(pred[0, 0], gt).shape == (2, 3)


def test_inputs_not_mutated():
    pred, gt = _poses((3, 14, 3), 11), _poses((3, 14, 3), 12)
    pc, gc, pv, gv = pred.clone(), gt.clone(), pred._version, gt._version
    pa_mpjpe(pred, gt, scale=True)
    mpjpe(pred, gt)
    assert pred._version == pv and gt._version == gv
    assert torch.equal(pred, pc) and torch.equal(gt, gc)


def test_gradients_finite():
    pred = _poses((4, 14, 3), 13).requires_grad_(True)
    gt = _poses((4, 14, 3), 14)
    for fn in (lambda p: mpjpe(p, gt), lambda p: pa_mpjpe(p, gt), lambda p: pa_mpjpe(p, gt, scale=True)):
        (g,) = torch.autograd.grad(fn(pred).sum(), pred)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # Exact match: the norm's subgradient is 0, not NaN.
    same = gt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mpjpe(same, gt).sum(), same)
    assert torch.isfinite(g).all()
    (g,) = torch.autograd.grad(error_2d(same[..., :2], gt[..., :2]).sum(), same)
    assert torch.isfinite(g).all()


def test_gradcheck():
    pred = _poses((2, 6, 3), 15).requires_grad_(True)
    gt = _poses((2, 6, 3), 16)
    assert torch.autograd.gradcheck(lambda p: pa_mpjpe(p, gt), (pred,))
    assert torch.autograd.gradcheck(lambda p: procrustes_align(p, gt, scale=True), (pred,))
    assert torch.autograd.gradcheck(lambda p: mpjpe(p, gt), (pred,))


# ---------------------------------------------------------------------------------------------------------
# Rates and top-k oracle
# ---------------------------------------------------------------------------------------------------------


def test_classification_and_topk_rates_against_numpy(device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 30, generator=g)
    target = torch.randint(30, (200,), generator=g)
    target[:40] = logits[:40].argmax(1)  # make some hits
    ln, tn = logits.numpy(), target.numpy()
    rate = classification_rate(logits.to(device), target.to(device))
    assert rate.shape == () and rate.dtype == torch.float32
    assert float(rate) == pytest.approx(np.mean(ln.argmax(1) == tn))
    assert float(classification_rate(logits.argmax(1).to(device), target.to(device))) == pytest.approx(
        np.mean(ln.argmax(1) == tn))
    order = np.argsort(-ln, axis=1)
    for k in (1, 5, 30):
        expect = np.mean([tn[b] in order[b, :k] for b in range(len(tn))])
        assert float(topk_rate(logits.to(device), target.to(device), k)) == pytest.approx(expect)
    assert float(topk_rate(logits, target, 30)) == 1.0


def test_rate_exceptions():
    logits = torch.randn(4, 5)
    with pytest.raises(ShapeError, match="target"):
        classification_rate(logits, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        classification_rate(logits, torch.zeros(4))
    with pytest.raises(TypeError, match="integer"):
        classification_rate(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match="pred"):
        classification_rate(torch.zeros(4, 5, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="k to be an int"):
        topk_rate(logits, torch.zeros(4, dtype=torch.long), 6)
    with pytest.raises(ValueError, match="non-empty"):
        topk_rate(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), 1)


def test_topk_oracle_against_loop(device):
    g = torch.Generator().manual_seed(1)
    k_classes, j = 12, 14
    class_poses = torch.randn(k_classes, j, 3, generator=g, dtype=torch.float64)
    logits = torch.randn(7, k_classes, generator=g, dtype=torch.float64)
    gt = torch.randn(7, j, 3, generator=g, dtype=torch.float64)
    for k in (1, 3, 12):
        got = topk_oracle(logits.to(device), gt.to(device), class_poses.to(device), k, factor=MM_PER_M)
        assert got.shape == (7,) and got.device.type == device.type
        ref = metrics_mod._topk_oracle_reference(logits, gt, class_poses, k, factor=MM_PER_M)
        torch.testing.assert_close(got.cpu(), ref)
    # k = 1 equals the MPJPE of the argmax class.
    torch.testing.assert_close(topk_oracle(logits, gt, class_poses, 1), mpjpe(class_poses[logits.argmax(1)], gt))
    # With PoseClasses: the decoded (members' mean) poses are used, not the centres.
    pc = PoseClasses(centres=class_poses + 1.0, mean_pose3d=class_poses, mean_pose2d=None,
                     counts=torch.ones(k_classes, dtype=torch.long))
    torch.testing.assert_close(topk_oracle(logits, gt, pc, 3), topk_oracle(logits, gt, class_poses, 3))
    # Gradient w.r.t. the ground truth is finite.
    gt_req = gt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(topk_oracle(logits, gt_req, class_poses, 3).sum(), gt_req)
    assert torch.isfinite(grad).all()


def test_topk_oracle_exceptions():
    logits = torch.randn(3, 5)
    with pytest.raises(ShapeError, match="classes"):
        topk_oracle(logits, torch.zeros(3, 14, 3), torch.zeros(4, 14, 3), 2)
    with pytest.raises(ShapeError, match="gt_pose3d"):
        topk_oracle(logits, torch.zeros(2, 14, 3), torch.zeros(5, 14, 3), 2)
    with pytest.raises(TypeError, match="PoseClasses"):
        topk_oracle(logits, torch.zeros(3, 14, 3), [1, 2], 2)
    with pytest.raises(ValueError, match="k to be an int"):
        topk_oracle(logits, torch.zeros(3, 14, 3), torch.zeros(5, 14, 3), 0)


# ---------------------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------------------


def test_metrics_table_flat_and_nested():
    flat = metrics_table({"MPJPE (mm)": torch.tensor(121.234), "top-1": 0.5, "n": 7}, precision=1)
    lines = flat.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["MPJPE", "(mm)", "121.2"]
    assert lines[3].split() == ["top-1", "0.5"] and lines[4].split() == ["n", "7"]
    assert len({len(line) for line in lines[1:3]}) == 1  # aligned columns
    nested = metrics_table({"ours": {"MPJPE": 1.0, "PA": torch.tensor([1.0, 3.0])}, "base": {"MPJPE": 2.0}},
                           title="Table 1")
    lines = nested.splitlines()
    assert lines[0] == "Table 1"
    assert lines[1].split() == ["MPJPE", "PA"]
    assert lines[3].split() == ["ours", "1.00", "2.00"]  # a multi-element tensor shows its mean
    assert lines[4].split() == ["base", "2.00", "-"]
    with pytest.raises(TypeError, match="mix"):
        metrics_table({"a": 1.0, "b": {"c": 2.0}})
    with pytest.raises(TypeError, match="mapping"):
        metrics_table([1, 2])
