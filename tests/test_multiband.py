"""Multi-band blending (beyond the paper, ``multiband_levels``): the pyramid steps against OpenCV, the blend
against a plain NumPy loop, its exactness properties, and the engine option (plain loop, one traced graph)."""

import cv2
import numpy as np
import pytest
import torch

from gpumosaic import MosaicEngine, MosaicSettings, Pool2D, load_demo_pool
from gpumosaic._check import unchecked
from gpumosaic.multiband import _down, _up, max_levels, multiband_blend, multiband_blend_reference


@pytest.mark.parametrize("shape", [(13, 11), (220, 220), (7, 6), (4, 3), (55, 28), (5, 9)])
def test_pyramid_steps_equal_opencv(shape):
    h, w = shape
    x = torch.rand(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * w))
    d = _down(x)
    assert d.shape[-2:] == ((h + 1) // 2, (w + 1) // 2)
    u = _up(d, (h, w))
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(d[n, c].numpy(), cv2.pyrDown(x[n, c].numpy()), rtol=0, atol=1e-12)
            ref_up = cv2.pyrUp(np.ascontiguousarray(d[n, c].numpy()), dstsize=(w, h))
            np.testing.assert_allclose(u[n, c].numpy(), ref_up, rtol=0, atol=1e-12)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_multiband_blend_matches_plain_loop(device, levels):
    g = torch.Generator().manual_seed(levels)
    warped = torch.rand(2, 4, 3, 26, 29, generator=g, dtype=torch.float64)
    index = torch.randint(0, 4, (2, 26, 29), generator=g)
    index[1] = 2  # one source everywhere in the second mosaic
    ref = multiband_blend_reference(warped, index, levels)
    out = multiband_blend(warped.to(device), index.to(device), levels)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-12)
    single = multiband_blend(warped.float().to(device), index.to(device), levels)
    torch.testing.assert_close(single.cpu().double(), ref, rtol=0, atol=2e-6)


def test_multiband_blend_is_exact_for_one_source_and_constant_colours():
    g = torch.Generator().manual_seed(5)
    warped = torch.rand(3, 5, 3, 40, 36, generator=g, dtype=torch.float64)
    for j in range(5):  # the pyramid collapses back to the one source's image
        out = multiband_blend(warped, torch.full((3, 40, 36), j), max_levels(36))
        torch.testing.assert_close(out, warped[:, j], rtol=0, atol=1e-12)
    index = torch.randint(0, 5, (3, 40, 36), generator=g)
    flat = torch.full_like(warped, 0.37)  # the masks of all sources sum to 1 at every level
    torch.testing.assert_close(multiband_blend(flat, index, 4), torch.full((3, 3, 40, 36), 0.37, dtype=torch.float64))
    # a seam between two flat sources becomes a ramp: monotone, within the two values, wider than one pixel
    two = torch.zeros(1, 2, 1, 64, 64, dtype=torch.float64)
    two[:, 1] = 1.0
    seam = torch.zeros(1, 64, 64, dtype=torch.long)
    seam[..., 32:] = 1
    row = multiband_blend(two, seam, 4)[0, 0, 32]
    assert bool((row[1:] >= row[:-1] - 1e-12).all()) and float(row.min()) >= -1e-12 and float(row.max()) <= 1 + 1e-12
    assert int(((row > 0.02) & (row < 0.98)).sum()) > 8


def test_multiband_blend_rejects_bad_levels():
    warped, index = torch.rand(1, 2, 3, 20, 20), torch.zeros(1, 20, 20, dtype=torch.long)
    assert max_levels(20) == 3 and max_levels(220) == 6  # 20 -> 10 -> 5 -> 3; 220 -> ... -> 7 -> 4
    with pytest.raises(ValueError, match="levels"):
        multiband_blend(warped, index, 4)
    with pytest.raises(ValueError, match="levels"):
        multiband_blend(warped, index, 0)


def _pool():
    demo = load_demo_pool()
    return Pool2D(demo.images[:24], demo.joints[:24], ids=demo.ids[:24])


def test_engine_multiband_option():
    pool = _pool()
    q = pool.joints[:3] + torch.randn(3, 14, 2, generator=torch.Generator().manual_seed(1)) * 4
    res = MosaicEngine(pool, size=48, multiband_levels=3)(q)
    paper = MosaicEngine(pool, size=48)(q)
    assert res.weights is None and res.distance is None and res.warped is not None
    ref = multiband_blend_reference(res.warped, res.index_map, 3)
    torch.testing.assert_close(res.images.double(), ref, rtol=0, atol=1e-5)
    assert torch.equal(res.index_map, paper.index_map)  # the same index map: only the blend differs
    torch.testing.assert_close(res.mosaic_unblended, paper.mosaic_unblended, rtol=0, atol=1e-5)
    assert float((res.images - paper.images).abs().mean()) > 1e-3
    with pytest.raises(ValueError, match="multiband_levels"):
        MosaicSettings(size=48, multiband_levels=5)
    with pytest.raises(ValueError, match="soft mode"):
        MosaicSettings(size=48, multiband_levels=2, soft=True)
    assert MosaicSettings(multiband_levels=5).multiband_levels == 5 and MosaicSettings().multiband_levels == 0


def test_engine_multiband_is_one_graph():
    pool = _pool()
    eng = MosaicEngine(pool, size=28, multiband_levels=2)
    q = torch.rand(2, 14, 2, generator=torch.Generator().manual_seed(3)) * 90 + 20
    searched = torch.ones(2, 14, dtype=torch.bool)
    searched[1, [2, 7]] = False
    with unchecked():
        ref = eng.synthesise(q, searched)
        got = torch.compile(eng.synthesise, fullgraph=True, dynamic=False, backend="aot_eager")(q, searched)
    torch.testing.assert_close(got.images, ref.images, rtol=0, atol=1e-4)
