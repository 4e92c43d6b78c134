"""MosaicEngine against the per-image NumPy / OpenCV / SciPy ReferenceEngine on the demo data.

The reference shares no pipeline code with the engine: retrieval is NumPy Eq. 3, warps are cv2.warpAffine,
probability maps scipy Delaunay + find_simplex, d the EDT of a cv2.line raster, windows an integral image.
Expected agreement (measured on this data, see the final report of issue 5): identical matches, index maps
equal except where probabilities tie to float precision, unblended mosaics equal to float rounding there,
blended mosaics within a small mean difference (EDT of a line raster vs exact point-to-bone distance moves
some window half-widths by one pixel).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from gpumosaic import LSP14, MosaicEngine, MosaicSettings, load_demo_mocap, load_demo_pool
from gpumosaic.camera import render_views, sample_views
from gpumosaic.raster import skeleton_distance_reference
from gpumosaic.reference import ReferenceEngine

N_POOL, N_QUERY = 40, 6


def _assert_close_to_reference(res, refs):
    """Engine result against the twin's per-query results: same matches, index maps equal on >= 99 % of the
    pixels, copy-paste mosaics equal to 2e-3 there, blended mosaics within 1e-2 on average."""
    for b, r in enumerate(refs):
        np.testing.assert_array_equal(res.matches[b].numpy(), r.matches)
        same = res.index_map[b].numpy() == r.index_map
        assert same.mean() >= 0.99
        assert np.abs(res.mosaic_unblended[b].numpy() - r.mosaic_unblended)[:, same].max() <= 2e-3
        assert np.abs(res.images[b].numpy() - r.images).mean() < 1e-2


@pytest.fixture(scope="module")
def data():
    pool = load_demo_pool().subset(slice(0, N_POOL))
    mocap = load_demo_mocap()
    g = torch.Generator().manual_seed(7)
    pick = torch.randperm(len(mocap), generator=g)[:N_QUERY]
    az, el = sample_views(N_QUERY, 1, generator=g)
    views = render_views(mocap.poses[pick], LSP14, az, el)
    query, occluded = views.pose2d[:, 0], views.occluded[:, 0]
    occluded[0] = False  # one query fully visible, the others with their self-occlusions
    return pool, query, occluded


@pytest.fixture(scope="module")
def reference(data):
    pool, query, occluded = data
    return ReferenceEngine(pool, LSP14).batch(query.numpy(), occluded.numpy())


@pytest.fixture(scope="module", params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def engine_result(request, data):
    pool, query, occluded = data
    res = MosaicEngine(pool, LSP14, device=request.param)(query.to(request.param), occluded.to(request.param))
    return res.detach().to("cpu")


def test_reference_outputs_are_finite(reference):
    assert any(int((r.matches < 0).sum()) > 0 for r in reference)  # some joints occluded, not searched
    for r in reference:
        assert r.images.shape == (3, 220, 220) and r.images.dtype == np.float32
        assert r.index_map.shape == (220, 220) and r.index_map.dtype == np.int64
        assert np.isfinite(r.images).all() and np.isfinite(r.mosaic_unblended).all()
        assert r.images.min() >= 0 and r.images.max() <= 1
        assert set(np.unique(r.index_map)) <= set(np.flatnonzero(r.matches >= 0))


def test_matches_identical(engine_result, reference):
    ref = np.stack([r.matches for r in reference])
    np.testing.assert_array_equal(engine_result.matches.numpy(), ref)


def test_affines_and_query_close(engine_result, reference):
    for b, r in enumerate(reference):
        np.testing.assert_allclose(engine_result.query[b].double().numpy(), r.query, atol=1e-3, rtol=0)
        s = r.matches >= 0
        np.testing.assert_allclose(engine_result.query_from_stored[b].double().numpy()[s],
                                   r.query_from_stored[s], atol=2e-3, rtol=0)


def test_index_map_and_unblended_mosaic(engine_result, reference):
    assert torch.isfinite(engine_result.mosaic_unblended).all()
    for b, r in enumerate(reference):
        same = engine_result.index_map[b].numpy() == r.index_map
        assert same.mean() >= 0.99, f"query {b}: index maps agree on {same.mean():.4%} of pixels"
        diff = np.abs(engine_result.mosaic_unblended[b].numpy() - r.mosaic_unblended)[:, same]
        assert diff.max() <= 2e-3, f"query {b}: unblended max abs difference {diff.max():.3g}"


def test_blended_mosaic(engine_result, reference):
    assert torch.isfinite(engine_result.images).all()
    for b, r in enumerate(reference):
        diff = np.abs(engine_result.images[b].numpy() - r.images)
        assert diff.mean() < 1e-2, f"query {b}: blended mean abs difference {diff.mean():.3g}"


def test_reference_distance_within_a_pixel_of_exact(data, reference):
    """The EDT of the cv2.line raster stays within ~1 px of the exact point-to-bone distance (SciPy-free
    plain loop), so window half-widths differ by at most one pixel."""
    exact = skeleton_distance_reference(torch.from_numpy(np.stack([r.query for r in reference])), LSP14,
                                        (220, 220)).numpy()
    for b, r in enumerate(reference):
        assert np.abs(r.distance - exact[b]).max() <= 1.5
        half = lambda d: np.floor((6.0 + 0.25 * d) / 2.0)  # noqa: E731
        assert np.abs(half(r.distance) - half(exact[b])).max() <= 1


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_zeros_padding_without_mirror_small_box(data, padding_mode):
    pool, query, _ = data
    settings = MosaicSettings(size=96, mirror=False, padding_mode=padding_mode, alpha=4.0, beta=0.5)
    res = MosaicEngine(pool.subset(slice(0, 12)), LSP14, settings)(query[:2])
    refs = ReferenceEngine(pool.subset(slice(0, 12)), LSP14, settings).batch(query[:2].numpy())
    _assert_close_to_reference(res, refs)
    assert all((r.matches < 12).all() for r in refs)


def test_reference_rejects_bad_input(data):
    pool = data[0]
    with pytest.raises(ValueError, match="padding_mode"):
        ReferenceEngine(pool, LSP14, MosaicSettings(padding_mode="reflect"))
    with pytest.raises(ValueError, match="query of shape"):
        ReferenceEngine(pool, LSP14)(np.zeros((13, 2)))


def test_mask_outside_and_reflection_against_reference(data):
    """The out-of-image mask (issue 13) and reflection padding, engine against the NumPy/OpenCV twin."""
    pool, query, occluded = data
    settings = MosaicSettings(size=96, alpha=1.0, padding_mode="reflection", mask_outside=True)
    res = MosaicEngine(pool, LSP14, settings)(query[:3], occluded[:3])
    refs = ReferenceEngine(pool, LSP14, settings).batch(query[:3].numpy(), occluded[:3].numpy())
    _assert_close_to_reference(res, refs)
    plain = ReferenceEngine(pool, LSP14, MosaicSettings(size=96, alpha=1.0, padding_mode="reflection",
                                                        mask_outside=False)).batch(query[:3].numpy(),
                                                                                   occluded[:3].numpy())
    assert any((p.index_map != r.index_map).any() for p, r in zip(plain, refs))  # the mask changed something
    with pytest.raises(ValueError, match="compat_weight"):
        ReferenceEngine(pool, LSP14, MosaicSettings(compat_weight=1.0))


def test_content_box_against_reference(data):
    """Crops whose content covers part of the stored image (Pool2D.content_box) under mask_outside, engine
    against the twin (which masks with a nearest-neighbour OpenCV warp of the box's pixels)."""
    pool, query, occluded = data
    g = torch.Generator().manual_seed(3)
    h, w = pool.image_size
    cut = torch.randint(0, h // 4, (len(pool), 4), generator=g).float()
    box = torch.stack([cut[:, 0] - 0.5, cut[:, 1] - 0.5, w - 0.5 - cut[:, 2], h - 0.5 - cut[:, 3]], -1)
    boxed = replace(pool, content_box=box)
    settings = MosaicSettings(size=96, padding_mode="reflection", mask_outside=True)
    res = MosaicEngine(boxed, LSP14, settings)(query[:3], occluded[:3])
    refs = ReferenceEngine(boxed, LSP14, settings).batch(query[:3].numpy(), occluded[:3].numpy())
    whole = ReferenceEngine(pool, LSP14, settings).batch(query[:3].numpy(), occluded[:3].numpy())
    _assert_close_to_reference(res, refs)
    assert any((p.index_map != r.index_map).any() for p, r in zip(whole, refs))  # the boxes changed something


def test_paper_settings_against_reference(data):
    """The paper's blending (settings.PAPER: α = 6, border replication, no mask) against the twin."""
    from gpumosaic.settings import PAPER

    pool, query, occluded = data
    settings = MosaicSettings(size=96, **PAPER)
    res = MosaicEngine(pool, LSP14, settings)(query[:2], occluded[:2])
    refs = ReferenceEngine(pool, LSP14, settings).batch(query[:2].numpy(), occluded[:2].numpy())
    _assert_close_to_reference(res, refs)
