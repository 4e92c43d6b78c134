"""Tests for gpumosaic.warp against OpenCV, SciPy and NumPy references (DESIGN.md step 5)."""

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from gpumosaic._check import ShapeError
from gpumosaic.warp import (
    compose_affine,
    invert_affine,
    warp_gather,
    warp_images,
    warp_images_reference,
    warp_points,
    warp_points_reference,
)

CV2_BORDER = {"border": cv2.BORDER_REPLICATE, "zeros": cv2.BORDER_CONSTANT, "reflection": cv2.BORDER_REFLECT}
SCIPY_MODE = {"border": "nearest", "zeros": "grid-constant", "reflection": "reflect"}  # order-1 equivalents of the two borders
# OpenCV < 5 quantises warpAffine's source coordinates to 1/32 px (INTER_BITS = 5), so each bilinear
# weight may be off by up to 1/64 per axis: <= 2/64 on a [0, 1] image with arbitrary maps. OpenCV 5's
# float32 path measured <= 4e-6 against an exact float64 bilinear reference.
CV2_GENERAL_ATOL = 1e-4 if int(cv2.__version__.split(".")[0]) >= 5 else 2.0 / 64 + 1e-3


def similarity(scale, angle, tx, ty):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def cv2_warp(img_chw, dst_from_src, size, mode):
    """cv2.warpAffine on one (C, Hs, Ws) float image, returned as (C, H, W)."""
    h, w = size
    out = cv2.warpAffine(
        np.ascontiguousarray(img_chw.transpose(1, 2, 0)),
        np.asarray(dst_from_src, dtype=np.float64),
        dsize=(w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=CV2_BORDER[mode],
        borderValue=0,
    )
    if out.ndim == 2:
        out = out[:, :, None]
    return out.transpose(2, 0, 1)


def scipy_warp(img_chw, dst_from_src, size, mode):
    """Exact float64 bilinear reference: sample the source at src_from_dst @ (u, v, 1)."""
    h, w = size
    m3 = np.vstack([dst_from_src, [0, 0, 1]])
    src_from_dst = np.linalg.inv(m3)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    xs = src_from_dst[0, 0] * u + src_from_dst[0, 1] * v + src_from_dst[0, 2]
    ys = src_from_dst[1, 0] * u + src_from_dst[1, 1] * v + src_from_dst[1, 2]
    return np.stack(
        [
            ndimage.map_coordinates(c.astype(np.float64), [ys, xs], order=1, mode=SCIPY_MODE[mode], cval=0.0)
            for c in img_chw
        ]
    )


# Source and destination sizes: odd, even, non-square, and a 1-pixel-wide source.
SIZES = [((37, 51), (45, 60)), ((32, 48), (40, 30)), ((20, 20), (17, 33))]
MAPS = [
    similarity(1.3, 0.4, 5.3, -7.1),  # rotation + scale + translation
    similarity(0.7, -2.2, 30.0, 25.5),  # shrink, rotate past 90 degrees
    np.array([[1.2, 0.3, -4.0], [-0.1, 0.8, 6.25]]),  # general affine (shear)
]


@pytest.mark.parametrize("mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize("src_size,dst_size", SIZES)
def test_matches_opencv_dyadic(device, mode, src_size, dst_size):
    # src_from_dst with entries on the 1/32 grid: every sampled source coordinate is exactly representable
    # in OpenCV's fixed point too, so OpenCV is exact whatever its version: compare at 1e-4.
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 3, *src_size, generator=g)
    src_from_dst = np.array(
        [[[0.75, -0.5, 3.25], [0.375, 1.25, -2.5]], [[-1.125, 0.25, 40.5], [0.5, 0.8125, -6.0]]]
    )
    dst_from_src = np.stack([cv2.invertAffineTransform(m) for m in src_from_dst])
    out = warp_images(imgs.to(device), torch.tensor(dst_from_src, dtype=torch.float32, device=device),
                      dst_size, mode)
    assert out.shape == (2, 3, *dst_size) and out.dtype == torch.float32 and out.device.type == device.type
    assert torch.isfinite(out).all()
    for b in range(2):
        ref = cv2_warp(imgs[b].numpy(), dst_from_src[b], dst_size, mode)
        np.testing.assert_allclose(out[b].cpu().numpy(), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize("src_size,dst_size", SIZES)
def test_matches_opencv_and_scipy_general(device, mode, src_size, dst_size):
    g = torch.Generator().manual_seed(2)
    imgs = torch.rand(len(MAPS), 3, *src_size, generator=g)
    maps = np.stack(MAPS)
    out = warp_images(imgs.to(device), torch.tensor(maps, dtype=torch.float32, device=device), dst_size, mode)
    out = out.cpu().numpy()
    for b in range(len(MAPS)):
        img = imgs[b].numpy()
        np.testing.assert_allclose(out[b], cv2_warp(img, maps[b], dst_size, mode), atol=CV2_GENERAL_ATOL, rtol=0)
        np.testing.assert_allclose(out[b], scipy_warp(img, maps[b], dst_size, mode), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize("src_w", [1, 16])  # includes a 1-pixel-wide source
def test_float64_matches_scipy_exactly(device, mode, src_w):
    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(3, 2, 23, src_w, generator=g, dtype=torch.float64)
    maps = np.stack([similarity(2.0, 0.3, 4.0, 1.5), similarity(0.9, 1.0, 8.0, -3.0), MAPS[2]])
    out = warp_images(imgs.to(device), torch.tensor(maps, device=device), (19, 11), mode)
    assert out.dtype == torch.float64
    for b in range(3):
        np.testing.assert_allclose(out[b].cpu().numpy(), scipy_warp(imgs[b].numpy(), maps[b], (19, 11), mode),
                                   atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["border", "zeros", "reflection"])
def test_reference_twin(mode):
    g = torch.Generator().manual_seed(4)
    imgs = torch.rand(2, 2, 9, 7, generator=g)
    maps = torch.tensor(np.stack([MAPS[0], MAPS[2]]), dtype=torch.float32)
    torch.testing.assert_close(warp_images(imgs, maps, (8, 10), mode),
                               warp_images_reference(imgs, maps, (8, 10), mode), atol=1e-5, rtol=0)


def test_uint8_converted_after_sampling(device):
    g = torch.Generator().manual_seed(5)
    imgs = torch.randint(0, 256, (2, 3, 37, 51), generator=g, dtype=torch.uint8)
    maps = np.stack(MAPS[:2])
    out = warp_images(imgs.to(device), torch.tensor(maps, dtype=torch.float32, device=device), (45, 60))
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    for b in range(2):
        ref = scipy_warp(imgs[b].numpy().astype(np.float64) / 255.0, maps[b], (45, 60), "border")
        np.testing.assert_allclose(out[b].cpu().numpy(), ref, atol=1e-4, rtol=0)
    out64 = warp_images(imgs.to(device), torch.tensor(maps, device=device), (45, 60), dtype=torch.float64)
    assert out64.dtype == torch.float64


def test_identity_and_translation_are_exact(device):
    g = torch.Generator().manual_seed(6)
    imgs = torch.rand(1, 3, 11, 14, generator=g, device="cpu").to(device)
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device)
    torch.testing.assert_close(warp_images(imgs, eye, (11, 14)), imgs, atol=1e-5, rtol=0)
    shift = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]], device=device)  # dst = src + (3, -2)
    out = warp_images(imgs, shift, (11, 14), "zeros")
    torch.testing.assert_close(out[..., 0:9, 3:14], imgs[..., 2:11, 0:11], atol=1e-5, rtol=0)
    # zeros padding: nothing maps there (up to float32 rounding of the normalised sampling grid)
    assert float(out[..., :, 0:3].abs().max()) < 1e-5 and float(out[..., 9:, :].abs().max()) < 1e-5


def gaussian_dot(h, w, x0, y0, sigma=1.5):
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-((u - x0) ** 2 + (v - y0) ** 2) / (2 * sigma**2))


def peak(img):
    """Argmax pixel (x, y) and intensity centroid within 4 px of it."""
    v, u = np.unravel_index(np.argmax(img), img.shape)
    lo_v, lo_u = max(v - 4, 0), max(u - 4, 0)
    win = img[lo_v: v + 5, lo_u: u + 5]
    vv, uu = np.mgrid[lo_v: lo_v + win.shape[0], lo_u: lo_u + win.shape[1]]
    return np.array([u, v], float), np.array([(win * uu).sum(), (win * vv).sum()]) / win.sum()


@pytest.mark.parametrize("dst_size", [(50, 70), (64, 41)])
def test_points_land_on_warped_dot(device, dst_size):
    # Odd-sized source with a bright dot at a non-integer location: warp_points must send the dot's centre
    # where the image warp sends the dot.
    h, w = 37, 51
    dots = [(20.3, 14.6), (9.0, 25.25), (40.7, 6.4)]
    maps = np.stack([similarity(1.3, 0.5, 4.0, 2.0), similarity(1.1, 2.6, 50.0, 30.0),
                     similarity(1.5, -1.2, -2.0, 62.0)])
    imgs, pts = [], []
    for x0, y0 in dots:
        imgs.append(gaussian_dot(h, w, x0, y0)[None])
        pts.append([[x0, y0]])
    imgs = torch.tensor(np.stack(imgs), dtype=torch.float32, device=device)
    pts = torch.tensor(pts, dtype=torch.float32, device=device)  # (3, 1, 2)
    affine = torch.tensor(maps, dtype=torch.float32, device=device)
    out = warp_images(imgs, affine, dst_size, "zeros").cpu().numpy()
    mapped = warp_points(pts, affine).cpu().numpy()
    for b in range(3):
        expect = maps[b, :, :2] @ np.array(dots[b]) + maps[b, :, 2]
        np.testing.assert_allclose(mapped[b, 0], expect, atol=1e-4)
        # well inside the frame, so the centroid window is not cut by the border
        assert 6 <= expect[0] < dst_size[1] - 6 and 6 <= expect[1] < dst_size[0] - 6
        argmax_xy, centroid = peak(out[b, 0])
        assert np.abs(argmax_xy - mapped[b, 0]).max() <= 1.0
        assert np.linalg.norm(centroid - mapped[b, 0]) < 0.5


def test_warp_gather_matches_opencv(device):
    g = torch.Generator().manual_seed(7)
    pool = torch.randint(0, 256, (4, 3, 37, 51), generator=g, dtype=torch.uint8)
    index = torch.tensor([[2, 0, 3], [3, 3, 1]])
    rng = np.random.default_rng(0)
    maps = np.stack([[similarity(rng.uniform(0.6, 1.5), rng.uniform(-3, 3), *rng.uniform(-5, 30, 2))
                      for _ in range(3)] for _ in range(2)])  # (2, 3, 2, 3)
    affine = torch.tensor(maps, dtype=torch.float32, device=device)
    for chunk in (256, 2):  # one chunk, and several chunks with a ragged last one
        out = warp_gather(pool.to(device), index.to(device), affine, (40, 44), "zeros", chunk=chunk)
        assert out.shape == (2, 3, 3, 40, 44) and out.dtype == torch.float32
        for b in range(2):
            for j in range(3):
                src = pool[index[b, j]].numpy().astype(np.float32) / 255.0
                np.testing.assert_allclose(out[b, j].cpu().numpy(), cv2_warp(src, maps[b, j], (40, 44), "zeros"),
                                           atol=CV2_GENERAL_ATOL, rtol=0)
    one = warp_gather(pool.to(device), torch.tensor(1, device=device), affine[0, 0], (40, 44))  # 0-d index
    assert one.shape == (3, 40, 44)


def test_empty_batches(device):
    pool = torch.rand(3, 3, 8, 9, device=device)
    out = warp_images(pool[:0], torch.zeros(0, 2, 3, device=device), (5, 6))
    assert out.shape == (0, 3, 5, 6)
    out = warp_gather(pool, torch.zeros(2, 0, dtype=torch.long, device=device),
                      torch.zeros(2, 0, 2, 3, device=device), (5, 6))
    assert out.shape == (2, 0, 3, 5, 6)
    assert warp_points(torch.zeros(0, 4, 2, device=device), torch.zeros(0, 2, 3, device=device)).shape == (0, 4, 2)


def test_inputs_not_mutated(device):
    g = torch.Generator().manual_seed(8)
    pool = torch.rand(3, 2, 8, 9, generator=g).to(device)
    index = torch.tensor([2, 0], device=device)
    affine = torch.tensor(np.stack(MAPS[:2]), dtype=torch.float32, device=device)
    pts = torch.rand(2, 5, 2, generator=g).to(device)
    copies = [t.clone() for t in (pool, index, affine, pts)]
    versions = [t._version for t in (pool, index, affine, pts)]
    warp_gather(pool, index, affine, (6, 7))
    warp_images(pool[:2], affine, (6, 7), "zeros")
    warp_points(pts, affine)
    invert_affine(affine)
    compose_affine(affine, affine)
    for t, c, ver in zip((pool, index, affine, pts), copies, versions):
        assert t._version == ver
        torch.testing.assert_close(t, c, atol=0, rtol=0)


def test_compose_invert_against_numpy():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(4, 3, 2, 3))
    b = rng.normal(size=(3, 2, 3))  # broadcasts against a's leading (4, 3)
    ta, tb = torch.tensor(a), torch.tensor(b)

    def h(m):  # (..., 2, 3) -> (..., 3, 3)
        bottom = np.broadcast_to(np.array([0.0, 0.0, 1.0]), m.shape[:-2] + (1, 3))
        return np.concatenate([m, bottom], axis=-2)

    np.testing.assert_allclose(compose_affine(ta, tb).numpy(), (h(a) @ h(b))[..., :2, :], atol=1e-12)
    np.testing.assert_allclose(invert_affine(ta).numpy(), np.linalg.inv(h(a))[..., :2, :], rtol=1e-9, atol=1e-9)
    eye = np.broadcast_to(np.eye(3)[:2], a.shape)
    np.testing.assert_allclose(compose_affine(ta, invert_affine(ta)).numpy(), eye, atol=1e-9)
    assert compose_affine(ta.float(), tb.float()).dtype == torch.float32


def test_warp_points_against_numpy(device):
    rng = np.random.default_rng(10)
    pts = rng.normal(size=(2, 3, 5, 2)) * 50
    maps = rng.normal(size=(2, 3, 2, 3))
    out = warp_points(torch.tensor(pts, device=device), torch.tensor(maps, device=device)).cpu().numpy()
    expect = np.einsum("bjik,bjpk->bjpi", maps[..., :2], pts) + maps[..., None, :, 2]
    np.testing.assert_allclose(out, expect, atol=1e-10)
    ref = warp_points_reference(torch.tensor(pts), torch.tensor(maps)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-10)
    # one map shared by every leading entry (broadcast)
    shared = warp_points(torch.tensor(pts), torch.tensor(maps[0, 0])).numpy()
    np.testing.assert_allclose(shared, pts @ maps[0, 0, :, :2].T + maps[0, 0, :, 2], atol=1e-10)


@pytest.mark.parametrize("mode", ["border", "zeros", "reflection"])
def test_gradcheck(mode):
    g = torch.Generator().manual_seed(11)
    imgs = torch.rand(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    # maps chosen so that no sampled coordinate sits on an integer (bilinear kinks there)
    affine = torch.tensor(np.stack([similarity(1.1, 0.3, 0.4, -0.3), [[1.2, 0.3, -0.37], [-0.1, 0.8, 0.61]]]),
                          requires_grad=True)
    src_xy = warp_points(torch.cartesian_prod(torch.arange(7.0), torch.arange(4.0)).double()[None],
                         invert_affine(affine.detach()))
    assert float((src_xy - src_xy.round()).abs().min()) > 1e-3
    assert torch.autograd.gradcheck(lambda x: warp_images(x, affine.detach(), (4, 7), mode), (imgs,))
    assert torch.autograd.gradcheck(lambda m: warp_images(imgs.detach(), m, (4, 7), mode), (affine,))
    pool = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[2, 2], [0, 1]])
    aff2 = affine.detach()[None].expand(2, 2, 2, 3)
    assert torch.autograd.gradcheck(lambda p: warp_gather(p, idx, aff2, (3, 4), mode, chunk=3), (pool,))
    # uint8 pool: differentiable with respect to the maps (float64 output)
    pool8 = torch.randint(0, 256, (3, 1, 5, 6), generator=g, dtype=torch.uint8)
    aff3 = affine.detach()[None].expand(2, 2, 2, 3).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m: warp_gather(pool8, idx, m, (4, 7), mode, chunk=3, dtype=torch.float64), (aff3,))


def test_exceptions():
    imgs = torch.rand(2, 3, 8, 9)
    aff = torch.tensor(np.stack(MAPS[:2]), dtype=torch.float32)
    with pytest.raises(ShapeError, match="images"):
        warp_images(imgs[0], aff, (5, 5))
    with pytest.raises(ShapeError, match="dst_from_src"):
        warp_images(imgs, aff[:1], (5, 5))
    with pytest.raises(ShapeError, match="dst_from_src"):
        warp_images(imgs, torch.zeros(2, 3, 3), (5, 5))
    with pytest.raises(ValueError, match="padding_mode"):
        warp_images(imgs, aff, (5, 5), "reflect")
    with pytest.raises(ValueError, match="size"):
        warp_images(imgs, aff, (0, 5))
    with pytest.raises(ValueError, match="size"):
        warp_images(imgs, aff, 5)
    with pytest.raises(TypeError, match="images"):
        warp_images(imgs.to(torch.int32), aff, (5, 5))
    with pytest.raises(ValueError, match="determinant"):
        warp_images(imgs, torch.zeros(2, 2, 3), (5, 5))
    with pytest.raises(ValueError, match="dst_from_src"):
        warp_images(imgs, aff * float("nan"), (5, 5))
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        warp_gather(imgs, torch.tensor([0, 2]), aff, (5, 5))
    with pytest.raises(IndexError, match="index"):
        warp_gather(imgs, torch.tensor([-1, 0]), aff, (5, 5))
    with pytest.raises(ShapeError, match="dst_from_src"):
        warp_gather(imgs, torch.tensor([[0, 1]]), aff, (5, 5))
    with pytest.raises(TypeError, match="index"):
        warp_gather(imgs, torch.tensor([0.0, 1.0]), aff, (5, 5))
    with pytest.raises(ShapeError, match="points"):
        warp_points(torch.zeros(4, 3), aff)
    with pytest.raises(ShapeError, match="b_from_c"):
        compose_affine(aff, torch.zeros(2, 3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_vs_cpu():
    g = torch.Generator().manual_seed(12)
    pool = torch.randint(0, 256, (5, 3, 37, 51), generator=g, dtype=torch.uint8)
    index = torch.randint(0, 5, (4, 3), generator=g)
    aff = torch.tensor(np.stack([MAPS] * 4), dtype=torch.float32)
    cpu = warp_gather(pool, index, aff, (45, 60))
    gpu = warp_gather(pool.cuda(), index.cuda(), aff.cuda(), (45, 60))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def _sparse_case(seed, pool_dtype, device, b, j=4):
    """A small pool (5, 3, 23, 31) and (b, j) random rotation-scale-translation warps for the sparse-path tests."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.rand(5, 3, 23, 31, generator=g)
    if pool_dtype == torch.uint8:
        pool = (pool * 255).round().to(torch.uint8)
    index = torch.randint(0, 5, (b, j), generator=g).to(device)
    ang = torch.rand(b, j, generator=g) * 6.28
    scale = 0.7 + torch.rand(b, j, generator=g)
    lin = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)
    aff = torch.cat([lin * scale[..., None, None], (torch.rand(b, j, 2, 1, generator=g) * 20 - 5)], -1).to(device)
    return g, pool.to(device), index, aff


@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize("pool_dtype", [torch.uint8, torch.float32])
def test_warp_blend_sparse_equals_dense(padding_mode, pool_dtype, device):
    from gpumosaic.blend import blend
    from gpumosaic.warp import warp_blend_sparse

    b, j, h, w = 2, 4, 19, 17
    g, pool, index, aff = _sparse_case(21, pool_dtype, device, b, j)
    weights = torch.rand(b, j, h, w, generator=g)
    weights = torch.where(torch.rand(b, j, h, w, generator=g) < 0.6, 0.0, weights).to(device)
    dense = blend(warp_gather(pool, index, aff, (h, w), padding_mode=padding_mode), weights)
    sparse = warp_blend_sparse(pool, index, aff, weights, padding_mode=padding_mode)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize("pool_dtype", [torch.uint8, torch.float32])
def test_warp_blend_sparse_with_index_map_equals_dense(padding_mode, pool_dtype, device):
    """The index-map path (each pixel's own match sampled everywhere, the others only where their weight is
    non-zero) against dense warps: Eq. 9 blend and the Eq. 6 copy-paste mosaic."""
    from gpumosaic.blend import blend, mosaic_from_index
    from gpumosaic.warp import warp_blend_sparse

    b, j, h, w = 3, 4, 19, 17
    g, pool, index, aff = _sparse_case(22, pool_dtype, device, b, j)
    own = torch.randint(0, j, (b, h, w), generator=g)
    weights = torch.rand(b, j, h, w, generator=g)
    weights = torch.where(torch.rand(b, j, h, w, generator=g) < 0.6, 0.0, weights)
    weights.scatter_(1, own[:, None], 0.5 + torch.rand(b, 1, h, w, generator=g))  # own weight never zero
    weights[0, :, :4] = 0.0  # rows with one match only (weight 1: a copy-paste pixel)
    weights[0, :, :4].scatter_(0, own[0, :4][None], 1.0)
    weights, own = weights.to(device), own.to(device)
    warped = warp_gather(pool, index, aff, (h, w), padding_mode=padding_mode)
    blended, pasted = warp_blend_sparse(pool, index, aff, weights, padding_mode=padding_mode, index_map=own)
    torch.testing.assert_close(blended, blend(warped, weights), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pasted, mosaic_from_index(warped, own), atol=1e-5, rtol=0)
    # ... and equal to the path without the index map (every non-zero pair found by search)
    torch.testing.assert_close(blended, warp_blend_sparse(pool, index, aff, weights, padding_mode=padding_mode),
                               atol=1e-6, rtol=0)


def test_warp_blend_sparse_gradients_match_dense():
    from gpumosaic.blend import blend
    from gpumosaic.warp import warp_blend_sparse

    g = torch.Generator().manual_seed(22)
    pool = torch.rand(3, 3, 12, 10, generator=g, dtype=torch.float64)
    index = torch.tensor([[0, 2, 1]])
    aff = torch.tensor([[[1.1, 0.2, 1.0], [-0.1, 0.9, 2.0]]], dtype=torch.float64).expand(1, 3, 2, 3).clone()
    aff[0, 1, 0, 2] = -2.0
    weights = torch.rand(1, 3, 9, 11, generator=g, dtype=torch.float64)
    weights = torch.where(weights < 0.4, 0.0, weights)
    up = torch.rand(1, 3, 9, 11, generator=g, dtype=torch.float64)
    grads = []
    for fn in (lambda p, wt: blend(warp_gather(p, index, aff, (9, 11)), wt),
               lambda p, wt: warp_blend_sparse(p, index, aff, wt)):
        p, wt = pool.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        grads.append(torch.autograd.grad((fn(p, wt) * up).sum(), (p, wt)))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    # Where a weight is zero the sparse path has no sample, so compare weight gradients where non-zero.
    nz = weights != 0
    torch.testing.assert_close(grads[1][1][nz], grads[0][1][nz])


@pytest.mark.parametrize("padding_mode", ["border", "reflection", "zeros"])
@pytest.mark.parametrize("src_size", [(6, 7), (2, 2), (1, 5), (4, 1)])
def test_warp_blend_sparse_on_pixel_centres_and_edges(padding_mode, src_size):
    """Samples exactly on the last row / column (and beyond it) of the source, where the sparse path keeps the
    top-left tap at most at size - 2 (fx = 1 instead of 0): one-hot weights against the float64 plain loop,
    for integer translations (every sample on a pixel centre), a half-pixel shift and a mirror."""
    from gpumosaic.warp import warp_blend_sparse

    g = torch.Generator().manual_seed(23)
    hs, ws = src_size
    pool = torch.randint(0, 256, (2, 3, hs, ws), generator=g, dtype=torch.uint8)
    maps = [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, 0.0, -2.0], [0.0, 1.0, -1.0]],
            [[1.0, 0.0, 1.5], [0.0, 1.0, 0.5]], [[-1.0, 0.0, ws - 1.0], [0.0, 1.0, 0.0]]]
    aff = torch.tensor(maps, dtype=torch.float32)[None]  # (1, 4, 2, 3)
    index = torch.tensor([[0, 1, 1, 0]])
    h, w = hs + 3, ws + 3
    expected = warp_images_reference(pool[index[0]], aff[0], (h, w), padding_mode)  # (4, 3, h, w)
    for k in range(4):
        weights = torch.zeros(1, 4, h, w)
        weights[:, k] = 1.0
        out = warp_blend_sparse(pool, index, aff, weights, padding_mode=padding_mode)
        torch.testing.assert_close(out[0], expected[k], atol=1e-6, rtol=0)


def test_warp_blend_sparse_reads_strided_pools_in_place():
    """A channels-last pool, a sliced one and an expanded one (a single image repeated 10^6 times: 12 GB if it
    were copied) give the same samples as the contiguous pool, read through their own strides."""
    from gpumosaic.warp import warp_blend_sparse

    g = torch.Generator().manual_seed(24)
    pool = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    index = torch.tensor([[0, 3, 2], [1, 1, 0]])
    aff = torch.tensor([[1.1, 0.2, 3.0], [-0.1, 0.9, -2.0]]).expand(2, 3, 2, 3).clone()
    aff[:, 1, 0, 2] = 7.5
    weights = torch.rand(2, 3, 20, 21, generator=g)
    weights = torch.where(weights < 0.5, 0.0, weights)
    for mode in ("border", "reflection", "zeros"):
        expected = warp_blend_sparse(pool, index, aff, weights, padding_mode=mode)
        channels_last = pool.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        sliced = torch.cat([pool[:1], pool, pool[:1]])[1:5]
        for strided in (channels_last, sliced):
            assert not strided.is_contiguous() or strided.storage_offset() > 0
            assert torch.equal(warp_blend_sparse(strided, index, aff, weights, padding_mode=mode), expected)
        one = pool[:1].expand(1_000_000, 3, 64, 64)
        assert torch.equal(warp_blend_sparse(one, torch.full_like(index, 999_999), aff, weights, padding_mode=mode),
                           warp_blend_sparse(pool[:1], torch.zeros_like(index), aff, weights, padding_mode=mode))
