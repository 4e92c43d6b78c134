"""Tests for gpumosaic.blend against direct counts and plain NumPy loops (DESIGN.md steps 7-8, Eq. 5-9)."""

import numpy as np
import pytest
import torch

from gpumosaic._check import ShapeError
from gpumosaic.blend import (
    blend,
    blend_reference,
    index_map,
    mask_weights,
    index_map_reference,
    mosaic_from_index,
    mosaic_from_index_reference,
    window_half_width,
    window_weights,
    window_weights_reference,
)


def direct_window_count(index, n, half_width, b, v, u):
    """NumPy: label histogram of the clipped window around (v, u), divided by its pixel count."""
    h, w = index.shape[1:]
    r = int(half_width[b, v, u])
    win = index[b, max(v - r, 0): min(v + r, h - 1) + 1, max(u - r, 0): min(u + r, w - 1) + 1]
    return np.bincount(win.ravel(), minlength=n) / win.size


def numpy_index_map(prob, searched):
    """NumPy loop: first maximal j among the searched ones (all of them if none is searched)."""
    bsz, joints, h, w = prob.shape
    out = np.zeros((bsz, h, w), dtype=np.int64)
    for b in range(bsz):
        allowed = np.arange(joints) if searched is None else np.flatnonzero(searched[b])
        if allowed.size == 0:
            allowed = np.arange(joints)
        sub = prob[b, allowed]  # (k, H, W)
        out[b] = allowed[np.argmax(sub, axis=0)]  # np.argmax returns the first maximum
    return out


# ---------------------------------------------------------------------------------------------------------
# window_weights (Eq. 8)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_window_weights_direct_count(device, chunk):
    g = torch.Generator().manual_seed(0)
    bsz, n, h, w = 2, 5, 13, 17
    index = torch.randint(0, n, (bsz, h, w), generator=g)
    half = torch.randint(0, 7, (bsz, h, w), generator=g)  # 0..6: many windows clipped at the borders
    half[0, :2, :] = 20  # windows larger than the image
    out = window_weights(index.to(device), n, half.to(device), chunk=chunk)
    assert out.shape == (bsz, n, h, w) and out.dtype == torch.float32 and out.device.type == device.type
    assert torch.isfinite(out).all()
    out = out.cpu().numpy()
    idx, hw = index.numpy(), half.numpy()
    for b in range(bsz):
        for v in range(h):
            for u in range(w):
                np.testing.assert_allclose(out[b, :, v, u], direct_window_count(idx, n, hw, b, v, u),
                                           rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_weights_mixed_only_path_equals_one_graph_path(monkeypatch, dtype):
    # On the CPU only windows holding several labels are counted label by label (the others are one-hot);
    # under torch.compile (and on CUDA) every label of every window is counted. Bit-identical both ways.
    import gpumosaic.blend as bl

    g = torch.Generator().manual_seed(4)
    coarse = torch.randint(0, 9, (5, 6, 6), generator=g)
    index = coarse.repeat_interleave(7, 1).repeat_interleave(7, 2)[:, :40, :37].contiguous()
    half = torch.randint(0, 9, (5, 40, 37), generator=g)
    half[0] = 0  # every window one pixel: all pure
    half[1] = 50  # every window the whole image: all mixed
    mixed_only = window_weights(index, 9, half, dtype=dtype, chunk=2)
    with monkeypatch.context() as m:
        m.setattr(bl.torch.compiler, "is_compiling", lambda: True)
        dense = window_weights(index, 9, half, dtype=dtype, chunk=2)
    assert torch.equal(mixed_only, dense)
    assert 0 < float((mixed_only == 1).float().mean()) < 1  # both kinds of pixel occur


@pytest.mark.parametrize("mixed_only", [True, False])
def test_window_weights_with_valid_equals_mask_weights(monkeypatch, mixed_only):
    # window_weights(valid=) is mask_weights(window_weights(), valid) in one pass, on the CPU's mixed-window
    # path and on the one-graph path (up to the order of the sum over labels: 1 ulp).
    import gpumosaic.blend as bl

    g = torch.Generator().manual_seed(8)
    coarse = torch.randint(0, 6, (4, 5, 5), generator=g)
    index = coarse.repeat_interleave(6, 1).repeat_interleave(6, 2)[:, :27, :29].contiguous()
    half = torch.randint(0, 7, (4, 27, 29), generator=g)
    valid = torch.rand(4, 6, 27, 29, generator=g) < 0.7
    valid[:, :, :3] = False  # rows where no match is valid: weights left as they are
    with monkeypatch.context() as m:
        if not mixed_only:
            m.setattr(bl.torch.compiler, "is_compiling", lambda: True)
        got = window_weights(index, 6, half, valid=valid, chunk=3)
    expected = mask_weights(window_weights(index, 6, half), valid)
    torch.testing.assert_close(got, expected, atol=2e-7, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(4, 27, 29), atol=1e-6, rtol=0)
    with pytest.raises(ShapeError):
        window_weights(index, 6, half, valid=valid[:, :5])
    with pytest.raises(TypeError, match="valid"):
        window_weights(index, 6, half, valid=valid.float())


def test_window_weights_reference_twin():
    g = torch.Generator().manual_seed(1)
    index = torch.randint(0, 3, (2, 6, 9), generator=g)
    half = torch.randint(0, 5, (2, 6, 9), generator=g)
    torch.testing.assert_close(window_weights(index, 4, half), window_weights_reference(index, 4, half),
                               atol=1e-6, rtol=0)


def test_window_weights_sum_to_one_and_constant_map(device):
    g = torch.Generator().manual_seed(2)
    index = torch.randint(0, 6, (3, 11, 8), generator=g).to(device)
    half = torch.randint(0, 9, (3, 11, 8), generator=g).to(device)
    w = window_weights(index, 7, half, dtype=torch.float64)
    assert w.dtype == torch.float64
    torch.testing.assert_close(w.sum(1), torch.ones(3, 11, 8, dtype=torch.float64, device=device))
    assert float(w[:, 6].abs().max()) == 0.0  # label 6 never occurs
    const = torch.full((2, 11, 8), 3, dtype=torch.long, device=device)
    w = window_weights(const, 5, half[:2])
    expect = torch.nn.functional.one_hot(const, 5).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(w, expect, atol=0, rtol=0)
    # half-width 0: the pixel itself, i.e. the one-hot index map
    w0 = window_weights(index, 6, torch.zeros_like(index))
    torch.testing.assert_close(w0, torch.nn.functional.one_hot(index, 6).permute(0, 3, 1, 2).float(), atol=0, rtol=0)


def test_window_weights_full_size_spot_check():
    # The engine's size (B=64, n=14, 220 x 220, windows from the paper's alpha, beta): must run, and agree
    # with direct counts at random pixels (borders included).
    g = torch.Generator().manual_seed(3)
    bsz, n, s = 64, 14, 220
    # blocky index map (regions like a mosaic's) so windows mix several labels
    coarse = torch.randint(0, n, (bsz, 12, 12), generator=g)
    index = coarse.repeat_interleave(19, 1).repeat_interleave(19, 2)[:, :s, :s].contiguous()
    distance = torch.rand(bsz, s, s, generator=g) * 150
    half = window_half_width(distance)
    w = window_weights(index, n, half)
    assert w.shape == (bsz, n, s, s) and torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(1), torch.ones(bsz, s, s), atol=1e-5, rtol=0)
    picks = torch.randint(0, s, (40, 2), generator=g)
    picks[:4] = torch.tensor([[0, 0], [219, 219], [0, 219], [219, 3]])
    batch = torch.randint(0, bsz, (40,), generator=g)
    idx, hw = index.numpy(), half.numpy()
    for b, (v, u) in zip(batch.tolist(), picks.tolist()):
        np.testing.assert_allclose(w[b, :, v, u].numpy(), direct_window_count(idx, n, hw, b, v, u),
                                   rtol=0, atol=1e-6)


def test_window_half_width_formula(device):
    g = torch.Generator().manual_seed(4)
    d = torch.cat([torch.rand(2, 5, 7, generator=g) * 120, torch.tensor([0.0, 1.0, 2.0, 4.0, 7.9, 8.0, 12.0])
                   .expand(1, 5, 7)], 0).to(device)
    for alpha, beta in [(6.0, 0.25), (3.0, 1.0), (0.0, 0.5)]:
        r = window_half_width(d, alpha, beta)
        assert r.dtype == torch.int64 and r.device.type == device.type
        dn = d.cpu().numpy()
        expect = np.floor((np.float32(alpha) + np.float32(beta) * dn) / np.float32(2)).astype(np.int64)
        np.testing.assert_array_equal(r.cpu().numpy(), expect)
    assert window_half_width(torch.zeros(0, 3, 4)).shape == (0, 3, 4)


# ---------------------------------------------------------------------------------------------------------
# index_map and mosaic_from_index (Eq. 5-6)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_index_map_ties_and_unsearched(device, dtype):
    g = torch.Generator().manual_seed(5)
    bsz, joints, h, w = 4, 6, 7, 9
    prob = (torch.randint(0, 3, (bsz, joints, h, w), generator=g) / 2).to(dtype)  # many exact ties
    searched = torch.rand(bsz, joints, generator=g) < 0.6
    searched[1] = False  # no searched joint: falls back to all
    searched[2] = True
    searched[3] = torch.tensor([False, False, True, False, False, True])
    out = index_map(prob.to(device), searched.to(device))
    assert out.dtype == torch.int64 and out.shape == (bsz, h, w)
    np.testing.assert_array_equal(out.cpu().numpy(), numpy_index_map(prob.numpy(), searched.numpy()))
    np.testing.assert_array_equal(out.cpu().numpy(), index_map_reference(prob, searched).numpy())
    everything = index_map(prob.to(device))
    np.testing.assert_array_equal(everything.cpu().numpy(), numpy_index_map(prob.numpy(), None))
    # unsearched maps never win, however large
    boosted = prob.clone()
    boosted[3, [0, 1, 3, 4]] = 100.0
    out = index_map(boosted.to(device), searched.to(device))
    assert set(np.unique(out[3].cpu().numpy())) <= {2, 5}


def test_mosaic_from_index(device):
    g = torch.Generator().manual_seed(6)
    warped = torch.rand(2, 4, 3, 5, 6, generator=g, dtype=torch.float64).to(device)
    index = torch.randint(0, 4, (2, 5, 6), generator=g).to(device)
    out = mosaic_from_index(warped, index)
    wn, inn = warped.cpu().numpy(), index.cpu().numpy()
    b, v, u = np.meshgrid(np.arange(2), np.arange(5), np.arange(6), indexing="ij")
    expect = wn[b, inn, :, v, u].transpose(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    np.testing.assert_array_equal(out.cpu().numpy(), expect)
    torch.testing.assert_close(out.cpu(), mosaic_from_index_reference(warped.cpu(), index.cpu()), atol=0, rtol=0)
    # gradient: each pixel's upstream gradient goes to the one image it was copied from
    wg = warped.clone().requires_grad_(True)
    up = torch.rand(out.shape, generator=g, dtype=torch.float64).to(device)
    (mosaic_from_index(wg, index) * up).sum().backward()
    expect_grad = np.zeros_like(wn)
    un = up.cpu().numpy()
    for bb in range(2):
        for vv in range(5):
            for uu in range(6):
                expect_grad[bb, inn[bb, vv, uu], :, vv, uu] = un[bb, :, vv, uu]
    np.testing.assert_array_equal(wg.grad.cpu().numpy(), expect_grad)


# ---------------------------------------------------------------------------------------------------------
# blend (Eq. 9)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blend_explicit_loop(device, dtype):
    g = torch.Generator().manual_seed(7)
    warped = torch.rand(2, 3, 3, 4, 5, generator=g, dtype=dtype)
    weights = torch.rand(2, 3, 4, 5, generator=g, dtype=dtype)
    out = blend(warped.to(device), weights.to(device))
    assert out.dtype == dtype and out.shape == (2, 3, 4, 5) and torch.isfinite(out).all()
    wn, ww = warped.double().numpy(), weights.double().numpy()
    expect = np.zeros((2, 3, 4, 5))
    for b in range(2):
        for j in range(3):
            expect[b] += ww[b, j][None] * wn[b, j]
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(out.cpu().numpy(), expect, atol=tol, rtol=0)
    torch.testing.assert_close(out.cpu(), blend_reference(warped, weights), atol=tol, rtol=0)


def test_blend_with_window_weights_of_constant_map_is_copy_paste(device):
    g = torch.Generator().manual_seed(8)
    warped = torch.rand(1, 4, 3, 9, 10, generator=g).to(device)
    index = torch.full((1, 9, 10), 2, dtype=torch.long, device=device)
    w = window_weights(index, 4, torch.full_like(index, 3))
    torch.testing.assert_close(blend(warped, w), warped[:, 2], atol=0, rtol=0)
    torch.testing.assert_close(mosaic_from_index(warped, index), warped[:, 2], atol=0, rtol=0)


def test_blend_gradcheck():
    g = torch.Generator().manual_seed(9)
    warped = torch.rand(2, 3, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blend, (warped, weights))
    assert torch.autograd.gradcheck(lambda x: mosaic_from_index(x, torch.randint(0, 3, (2, 3, 4), generator=
                                                                    torch.Generator().manual_seed(0))), (warped,))


# ---------------------------------------------------------------------------------------------------------
# Shared: empty batches, no mutation, errors, CUDA
# ---------------------------------------------------------------------------------------------------------


def test_empty_batch(device):
    prob = torch.zeros(0, 3, 4, 5, device=device)
    assert index_map(prob).shape == (0, 4, 5)
    assert index_map(prob, torch.zeros(0, 3, dtype=torch.bool, device=device)).shape == (0, 4, 5)
    index = torch.zeros(0, 4, 5, dtype=torch.long, device=device)
    w = window_weights(index, 3, index)
    assert w.shape == (0, 3, 4, 5) and w.device.type == device.type
    warped = torch.zeros(0, 3, 2, 4, 5, device=device)
    assert mosaic_from_index(warped, index).shape == (0, 2, 4, 5)
    assert blend(warped, w).shape == (0, 2, 4, 5)


def test_inputs_not_mutated(device):
    g = torch.Generator().manual_seed(10)
    prob = torch.rand(2, 3, 4, 5, generator=g).to(device)
    searched = torch.tensor([[True, False, True], [False, False, False]], device=device)
    index = torch.randint(0, 3, (2, 4, 5), generator=g).to(device)
    half = torch.randint(0, 3, (2, 4, 5), generator=g).to(device)
    warped = torch.rand(2, 3, 2, 4, 5, generator=g).to(device)
    weights = torch.rand(2, 3, 4, 5, generator=g).to(device)
    dist = torch.rand(2, 4, 5, generator=g).to(device) * 10
    tensors = (prob, searched, index, half, warped, weights, dist)
    copies = [t.clone() for t in tensors]
    versions = [t._version for t in tensors]
    index_map(prob, searched)
    window_weights(index, 3, half, chunk=1)
    mosaic_from_index(warped, index)
    blend(warped, weights)
    window_half_width(dist)
    for t, c, ver in zip(tensors, copies, versions):
        assert t._version == ver
        torch.testing.assert_close(t, c, atol=0, rtol=0)


def test_exceptions():
    prob = torch.rand(2, 3, 4, 5)
    index = torch.zeros(2, 4, 5, dtype=torch.long)
    warped = torch.rand(2, 3, 1, 4, 5)
    with pytest.raises(ShapeError, match="prob"):
        index_map(prob[0])
    with pytest.raises(ShapeError, match="searched"):
        index_map(prob, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="searched"):
        index_map(prob, torch.ones(2, 3))
    with pytest.raises(ShapeError, match="J >= 1"):
        index_map(prob[:, :0])
    with pytest.raises(ValueError, match="prob"):
        index_map(prob * float("nan"))
    with pytest.raises(ShapeError, match="half_width"):
        window_weights(index, 3, index[:, :3])
    with pytest.raises(ShapeError, match="index"):
        window_weights(index[0], 3, index[0])
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        window_weights(index + 3, 3, index)
    with pytest.raises(ValueError, match="half_width"):
        window_weights(index, 3, index - 1)
    with pytest.raises(TypeError, match="half_width"):
        window_weights(index, 3, index.int())
    with pytest.raises(ValueError, match="n as an int"):
        window_weights(index, 0, index)
    with pytest.raises(ShapeError, match="index"):
        mosaic_from_index(warped, index[:, :3])
    with pytest.raises(IndexError, match="index"):
        mosaic_from_index(warped, index - 1)
    with pytest.raises(ShapeError, match="weights"):
        blend(warped, prob[:, :2])
    with pytest.raises(ShapeError, match="warped"):
        blend(warped[0], prob)
    with pytest.raises(ValueError, match="alpha"):
        window_half_width(torch.zeros(1, 2, 2), alpha=-1.0)
    with pytest.raises(ShapeError, match="distance"):
        window_half_width(torch.zeros(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_vs_cpu():
    g = torch.Generator().manual_seed(11)
    prob = torch.rand(3, 5, 30, 40, generator=g)
    searched = torch.rand(3, 5, generator=g) < 0.7
    warped = torch.rand(3, 5, 3, 30, 40, generator=g)
    half = window_half_width(torch.rand(3, 30, 40, generator=g) * 60)

    def run(dev):
        idx = index_map(prob.to(dev), searched.to(dev))
        w = window_weights(idx, 5, half.to(dev))
        return idx.cpu(), w.cpu(), blend(warped.to(dev), w).cpu(), mosaic_from_index(warped.to(dev), idx).cpu()

    for a, b in zip(run("cpu"), run("cuda")):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
