"""The settings path (MosaicSettings, ViewSettings), the typed batch and the one annotation-record builder."""

import json

import pytest
import torch

from gpumosaic import MosaicBatch, MosaicEngine, MosaicSettings, ViewSettings, load_demo_mocap, load_demo_pool
from gpumosaic.batch import BATCH_KEYS, annotation_records, synthetic_batch
from gpumosaic.camera import render_views, sample_views
from gpumosaic.geometry import default_margin


@pytest.fixture(scope="module")
def sources():
    return load_demo_pool(), load_demo_mocap()


def test_settings_resolve_every_default_once():
    s = MosaicSettings(size=64)
    assert s.sigma == 7.5 * 64 / 220 and s.margin == default_margin(64) == 6.4
    assert MosaicSettings(margin=3.0).margin == 3.0
    with pytest.raises(ValueError, match="margin"):
        MosaicSettings(size=20, margin=10)
    with pytest.raises(ValueError, match="warp_chunk"):
        MosaicSettings(warp_chunk=0)
    v = ViewSettings()
    assert (v.views_per_pose, v.azimuth_range, v.elevation_range) == (180, (0.0, 360.0), (-45.0, 45.0))
    with pytest.raises(ValueError, match="occlusion_margin"):
        ViewSettings(occlusion_margin=-1.0)
    with pytest.raises(ValueError, match="views_per_pose"):
        ViewSettings(views_per_pose=0)


def test_engine_keywords_are_a_shorthand_for_settings(sources):
    pool, _ = sources
    a = MosaicEngine(pool, size=48, warp_chunk=7, retrieval_budget=1 << 20)
    assert a.settings == MosaicSettings(size=48, warp_chunk=7, retrieval_budget=1 << 20)
    assert MosaicEngine(pool, settings=MosaicSettings(size=48)).settings == MosaicEngine(pool, size=48).settings
    with pytest.raises(TypeError, match="not both"):
        MosaicEngine(pool, settings=MosaicSettings(size=48), size=48)
    q = torch.rand(2, 14, 2) * 100
    torch.testing.assert_close(a(q).images, MosaicEngine(pool, settings=a.settings)(q).images, atol=0, rtol=0)


def test_batch_and_records_against_hand_built(sources):
    """annotation_records writes each field of the batch, in the documented order, with its plain value."""
    pool, mocap = sources
    engine = MosaicEngine(pool, size=40)
    g = torch.Generator().manual_seed(4)
    idx = torch.tensor([3, 17, 5])
    az, el = sample_views(3, 1, generator=g)
    views = render_views(mocap.poses[idx], mocap.skeleton, az, el).select_view(0)
    res = engine(views.pose2d, views.occluded)
    batch = synthetic_batch(res, views, idx, mocap.ids[idx])
    assert isinstance(batch, MosaicBatch) and len(batch) == 3
    assert tuple(batch.keys()) == BATCH_KEYS and [k for k in batch] == list(BATCH_KEYS)
    assert torch.equal(batch["azimuth"], az[:, 0]) and torch.equal(batch["image"], res.images)
    assert torch.equal(batch.source_rows, res.source_rows) and (batch.pair_index == -1).all()
    with pytest.raises(KeyError):
        batch["cameras_typo"]
    names = ["a.png", "b.png", "c.png"]
    records = annotation_records(batch, "lsp14", names)
    for k, rec in enumerate(records):
        expect = {
            "image": names[k], "skeleton": "lsp14",
            "pose2d": res.pose2d[k].tolist(), "pose3d": views.pose3d[k].tolist(),
            "occluded": views.occluded[k].tolist(), "mocap_index": int(idx[k]), "mocap_id": int(mocap.ids[idx[k]]),
            "camera": {"azimuth_deg": float(az[k, 0]), "elevation_deg": float(el[k, 0]), "distance_m": 5.0,
                       "focal_px": 1000.0, "cam_from_world_R": views.cameras.cam_from_world_R[k].tolist(),
                       "cam_from_world_t": views.cameras.cam_from_world_t[k].tolist()},
            "matches": res.matches[k].tolist(), "source_rows": res.source_rows[k].tolist(),
            "source_ids": res.source_ids[k].tolist(), "mirrored": res.mirrored[k].tolist(),
        }
        assert json.dumps(rec) == json.dumps(expect)  # same keys in the same order, same values
    # With keys and pair numbers (export): key and index first, pair_index / view_index after mocap_id.
    numbered = synthetic_batch(res, views, idx, mocap.ids[idx], pair_index=torch.tensor([30, 31, 32]),
                               view_index=torch.tensor([0, 1, 2]))
    rec = annotation_records(numbered, "lsp14", names, keys=["k0", "k1", "k2"], indices=[7, 8, 9])[1]
    assert list(rec)[:2] == ["key", "index"] and (rec["key"], rec["index"]) == ("k1", 8)
    keys = list(rec)
    assert keys[keys.index("mocap_id") + 1: keys.index("camera")] == ["pair_index", "view_index"]
    assert (rec["pair_index"], rec["view_index"]) == (31, 1)
