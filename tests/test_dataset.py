"""OnlineMosaicDataset: cameras per (pose, view) pair, epochs, sharding over ranks and DataLoader workers,
labels, real-batch alternation, against independent references (numpy geometry, brute force, OpenCV)."""

import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader

from gpumosaic import MosaicEngine, Mocap3D, load_demo_mocap, load_demo_pool
from gpumosaic.camera import render_views, view_angles, view_angles_reference
from gpumosaic.dataset import EpochRepeatWarning, OnlineMosaicDataset
from gpumosaic.occlusion import self_occlusion_reference
from gpumosaic.settings import ViewSettings
from gpumosaic.sharding import epoch_permutation

M, V, B, SIZE = 3, 3, 2, 64  # 9 pairs: shards of 5 and 4 pairs, uneven on purpose
KEYS = {
    "image": ((B, 3, SIZE, SIZE), torch.float32),
    "pose2d": ((B, 14, 2), torch.float32),
    "pose3d": ((B, 14, 3), torch.float32),
    "label": ((B,), torch.int64),
    "is_real": ((B,), torch.bool),
    "pair_index": ((B,), torch.int64),
    "mocap_index": ((B,), torch.int64),
    "mocap_id": ((B,), torch.int64),
    "view_index": ((B,), torch.int64),
    "azimuth": ((B,), torch.float32),
    "elevation": ((B,), torch.float32),
    "occluded": ((B, 14), torch.bool),
    "matches": ((B, 14), torch.int64),
    "source_ids": ((B, 14), torch.int64),
    "mirrored": ((B, 14), torch.bool),
    "real_index": ((B,), torch.int64),
}


class NearestCentre:
    """A stand-in for PoseClasses: nearest centre over flattened poses (torch.cdist)."""

    def __init__(self, centres):
        self.centres = centres  # (K, J, 3)

    def encode(self, pose3d):
        flat = pose3d.reshape(-1, self.centres.shape[1] * 3)
        d = torch.cdist(flat, self.centres.reshape(len(self.centres), -1).to(flat))
        return d.argmin(dim=1).reshape(pose3d.shape[:-2])


@pytest.fixture(scope="module")
def data():
    demo_pool = load_demo_pool()
    pool = demo_pool.subset(slice(0, 20))
    real = demo_pool.subset(slice(20, 20 + B))
    mocap = load_demo_mocap()
    mocap = Mocap3D(mocap.poses[:M].clone(), mocap.skeleton, mocap.ids[:M].clone())
    return pool, mocap, real


@pytest.fixture(scope="module")
def engine(data):
    return MosaicEngine(data[0], size=SIZE)


def _dataset(data, engine, **kw):
    pool, mocap, real = data
    kw.setdefault("batch_size", B)
    kw.setdefault("views", ViewSettings(views_per_pose=V))
    return OnlineMosaicDataset(pool, mocap, engine=engine, **kw)


@pytest.fixture(scope="module")
def rank_streams(data, engine):
    """The full epoch-0 streams of ranks 0 and 1 of a simulated world of 2 (5 and 4 pairs: 3 and 2 batches)."""
    return [list(_dataset(data, engine, rank=r, world_size=2)) for r in range(2)]


def _pairs(batches):
    return [p for b in batches for p in b["pair_index"].tolist()]


# -- counter-based cameras and permutations ----------------------------------------------------------------


def test_view_angles_against_reference_and_uniform():
    g = torch.Generator().manual_seed(0)
    m = torch.cat([torch.randint(0, 1 << 40, (200,), generator=g), torch.arange(50)])
    v = torch.randint(0, 1 << 31, (250,), generator=g)
    for seed in (0, 1, 2**63 + 5):
        az, el = view_angles(m, v, seed=seed)
        raz, rel = view_angles_reference(m, v, seed=seed)
        assert torch.equal(az, raz) and torch.equal(el, rel)
    # Uniform on the paper's ranges (Kolmogorov-Smirnov), and independent of each other.
    m = torch.arange(3000).repeat_interleave(10)
    v = torch.arange(10).repeat(3000)
    az, el = view_angles(m, v, seed=7, dtype=torch.float64)
    assert az.min() >= 0 and az.max() < 360 and el.min() >= -45 and el.max() < 45
    assert stats.kstest(az.numpy() / 360, "uniform").pvalue > 1e-3
    assert stats.kstest((el.numpy() + 45) / 90, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(az.numpy(), el.numpy())[0, 1]) < 0.05
    # Another seed gives other angles; custom ranges are honoured.
    az2, _ = view_angles(m, v, seed=8, dtype=torch.float64)
    assert (az2 != az).float().mean() > 0.99
    az3, el3 = view_angles(m, v, seed=7, settings=ViewSettings(azimuth_range=(10, 20), elevation_range=(0, 5)))
    assert az3.min() >= 10 and az3.max() < 20 and el3.min() >= 0 and el3.max() < 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_view_angles_cuda_matches_cpu():
    m, v = torch.arange(1000).repeat_interleave(5), torch.arange(5).repeat(1000)
    az, el = view_angles(m, v, seed=3)
    azc, elc = view_angles(m.cuda(), v.cuda(), seed=3)
    assert torch.equal(azc.cpu(), az) and torch.equal(elc.cpu(), el)


def test_epoch_permutation():
    p0 = epoch_permutation(100, seed=1, epoch=0)
    assert torch.equal(torch.sort(p0).values, torch.arange(100))
    assert torch.equal(p0, epoch_permutation(100, seed=1, epoch=0))
    assert not torch.equal(p0, epoch_permutation(100, seed=1, epoch=1))
    assert not torch.equal(p0, epoch_permutation(100, seed=2, epoch=0))
    assert epoch_permutation(0).numel() == 0


# -- one batch: shapes, geometry, labels ------------------------------------------------------------------


def _look_at_numpy(az_deg, el_deg):
    """Rows = camera right, down, forward for a camera on the sphere at (az, el) looking at the target."""
    a, e = math.radians(az_deg), math.radians(el_deg)
    w = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])  # target -> camera
    f = -w
    x = np.cross(f, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    return np.stack([x, y, f])


def _fit_to_box_numpy(p, size, margin):
    lo, hi = p.min(0), p.max(0)
    scale = (size - 2 * margin) / (hi - lo).max()
    return (p - (lo + hi) / 2) * scale + (size - 1) / 2


def test_batch_shapes_geometry_labels(data, engine, device):
    pool, mocap, _ = data
    # K = 5 class centres: oriented poses of other demo poses.
    other = load_demo_mocap().poses[100:105]
    centres = render_views(other, mocap.skeleton, torch.zeros(5, 1), torch.zeros(5, 1)).pose3d[:, 0]
    try:  # the library's PoseClasses when present, else a stand-in with the same encode contract
        from gpumosaic.classes import PoseClasses

        classes = PoseClasses(centres=centres, mean_pose3d=centres, mean_pose2d=None,
                              counts=torch.ones(5, dtype=torch.int64)).to(device)
    except ImportError:
        classes = NearestCentre(centres.to(device))
    poses_before = mocap.poses.clone()
    ds = _dataset(data, engine, classes=classes, device=device, seed=5, batches_per_epoch=1)
    (batch,) = list(ds)
    for key, (shape, dtype) in KEYS.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
        assert batch[key].device.type == device.type, key
        if batch[key].is_floating_point():
            assert torch.isfinite(batch[key]).all(), key
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1 + 1e-5  # blending sums weights in float32
    assert not batch["is_real"].any() and (batch["real_index"] == -1).all()
    pair = batch["pair_index"].cpu()
    m, v = batch["mocap_index"].cpu(), batch["view_index"].cpu()
    assert torch.equal(m * V + v, pair)
    assert torch.equal(batch["mocap_id"].cpu(), mocap.ids[m])
    raz, rel = view_angles_reference(m, v, seed=5)
    assert torch.equal(batch["azimuth"].cpu(), raz) and torch.equal(batch["elevation"].cpu(), rel)

    # Geometry against numpy: oriented pose R (P - c), projection f xy / (z + d), then fit_to_box.
    for k in range(B):
        P = mocap.poses[m[k]].double().numpy()
        c = P[[8, 9, 2, 3]].mean(0)  # LSP14 shoulders and hips
        R = _look_at_numpy(float(raz[k]), float(rel[k]))
        pose3d = (P - c) @ R.T
        np.testing.assert_allclose(batch["pose3d"][k].cpu().numpy(), pose3d, atol=2e-5)
        cam = pose3d + [0.0, 0.0, 5.0]
        raw = 1000.0 * cam[:, :2] / cam[:, 2:]
        np.testing.assert_allclose(batch["pose2d"][k].cpu().numpy(), _fit_to_box_numpy(raw, SIZE, 0.1 * SIZE),
                                   atol=2e-3)
        occ = self_occlusion_reference(torch.from_numpy(cam), mocap.skeleton)
        assert torch.equal(batch["occluded"][k].cpu(), occ)
        # Label: brute-force nearest class centre.
        dist = [float(((pose3d - centres[i].double().numpy()) ** 2).sum()) for i in range(5)]
        assert batch["label"][k].item() == int(np.argmin(dist))

    # Images: the public pipeline (render_views + engine) on the same pairs gives the same mosaics.
    views = render_views(mocap.poses[m].to(device), mocap.skeleton, raz[:, None].to(device),
                         rel[:, None].to(device))
    res = (engine if device.type == "cpu" else engine.to(device))(views.pose2d[:, 0], views.occluded[:, 0])
    torch.testing.assert_close(batch["image"], res.images, atol=1e-4, rtol=0)
    assert torch.equal(batch["matches"], res.matches) and torch.equal(batch["source_ids"], res.source_ids)
    assert torch.equal(mocap.poses, poses_before)  # inputs untouched


# -- determinism, epochs, sharding -----------------------------------------------------------------------


def test_determinism_same_seed_and_epoch(data, engine, rank_streams):
    """A fresh dataset with the same seed and epoch yields bit-identical batches."""
    (again,) = list(_dataset(data, engine, rank=0, world_size=2, batches_per_epoch=1))
    first = rank_streams[0][0]
    assert again.keys() == first.keys()
    for key in first:
        assert torch.equal(again[key], first[key]), key


def test_set_epoch_changes_order(data, engine):
    ds = _dataset(data, engine, seed=3, batches_per_epoch=1)
    shard = ds.shard()
    order0 = torch.cat(ds.pair_batches(shard))
    ds.set_epoch(1)
    order1 = torch.cat(ds.pair_batches(shard))
    ds.batches_per_epoch = None
    ds.set_epoch(0)
    full0 = torch.cat(ds.pair_batches(shard))
    ds.set_epoch(1)
    full1 = torch.cat(ds.pair_batches(shard))
    for full in (full0, full1):  # every epoch is a permutation of the M·V pairs
        assert torch.equal(torch.sort(full).values, torch.arange(M * V))
    assert not torch.equal(full0, full1)
    assert torch.equal(order0, full0[:B]) and torch.equal(order1, full1[:B])
    ds.batches_per_epoch = 1
    (batch,) = list(ds)  # the iterator follows the chosen epoch
    assert torch.equal(batch["pair_index"], order1)


def test_ranks_disjoint_and_cover(rank_streams):
    pairs = [_pairs(s) for s in rank_streams]
    assert [len(s) for s in rank_streams] == [3, 2]
    assert [len(b["pair_index"]) for b in rank_streams[0]] == [B, B, 1]
    assert not set(pairs[0]) & set(pairs[1])
    assert sorted(pairs[0] + pairs[1]) == list(range(M * V))
    # Strided slices of the epoch permutation.
    perm = epoch_permutation(M * V, seed=0, epoch=0).tolist()
    assert pairs[0] == perm[0::2] and pairs[1] == perm[1::2]


def test_camera_of_a_pair_independent_of_drawer(data, engine, rank_streams):
    """A pair drawn by another rank, in another batch, gives the same camera, labels and mosaic."""
    per_pair = {}
    for stream in rank_streams:
        for b in stream:
            for k, p in enumerate(b["pair_index"].tolist()):
                per_pair[p] = {key: b[key][k] for key in ("azimuth", "elevation", "pose3d", "pose2d", "image")}
    ds = _dataset(data, engine)  # single process, another grouping of pairs
    chosen = torch.tensor([M * V - 1, 0])
    batch = ds.synthesise(chosen)
    m, v = chosen // V, chosen % V
    raz, rel = view_angles_reference(m, v, seed=0)
    for k, p in enumerate(chosen.tolist()):
        assert batch["azimuth"][k] == per_pair[p]["azimuth"] == raz[k]
        assert batch["elevation"][k] == per_pair[p]["elevation"] == rel[k]
        for key in ("pose3d", "pose2d", "image"):
            torch.testing.assert_close(batch[key][k], per_pair[p][key], atol=1e-4, rtol=0)


def test_dataloader_workers_disjoint_streams(data, engine, rank_streams):
    """Two CPU workers: disjoint streams covering the epoch; worker w's stream is rank w's of a 2-world."""
    ds = _dataset(data, engine, num_workers=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 5 == ds.num_batches(num_workers=2)
    worker_pairs = [_pairs(batches[0::2]), _pairs(batches[1::2])]  # DataLoader alternates workers
    assert not set(worker_pairs[0]) & set(worker_pairs[1])
    assert sorted(worker_pairs[0] + worker_pairs[1]) == list(range(M * V))
    for w in range(2):
        assert worker_pairs[w] == _pairs(rank_streams[w])
        for got, want in zip(batches[w::2], rank_streams[w]):
            assert torch.equal(got["azimuth"], want["azimuth"]) and torch.equal(got["view_index"], want["view_index"])
            torch.testing.assert_close(got["pose3d"], want["pose3d"])
            torch.testing.assert_close(got["image"], want["image"], atol=1e-4, rtol=0)


def test_persistent_workers_follow_set_epoch(data, engine):
    """persistent_workers=True: each epoch's stream is the one set_epoch chose (the workers read the shared
    epoch), not a replay of epoch 0; len(loader) is the number of batches."""
    ds = _dataset(data, engine, num_workers=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="fork")
    assert len(loader) == len(ds) == 5
    got = []
    for epoch in (0, 1, 5):
        ds.set_epoch(epoch)
        got.append([b["pair_index"].tolist() for b in loader])
    for epoch, batches in zip((0, 1, 5), got):
        ds.set_epoch(epoch)  # the expected streams, computed in this process: worker w's batches interleaved
        streams = [[b.tolist() for b in ds.pair_batches(ds.shard(w, 2))] for w in range(2)]
        expected = [x for pair in zip(streams[0], streams[1]) for x in pair] + streams[0][len(streams[1]):]
        assert batches == expected
        ref = epoch_permutation(M * V, 0, epoch).tolist()  # worker w holds perm[w::2]
        assert sorted(p for b in batches for p in b) == sorted(ref)
    assert got[0] != got[1] and got[1] != got[2]


def test_epoch_repeat_warns_and_loader_batching_refused(data, engine):
    ds = _dataset(data, engine, batches_per_epoch=1)
    first = list(ds)
    with pytest.warns(EpochRepeatWarning, match=r"epoch 0 is iterated again.*call set_epoch"):
        again = list(ds)
    assert torch.equal(first[0]["pair_index"], again[0]["pair_index"])
    ds.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EpochRepeatWarning)
        list(ds)
    ds.set_epoch(2)
    with pytest.raises(TypeError, match=r"create the DataLoader with batch_size=None .* default batch_size=1"):
        next(iter(DataLoader(ds)))  # the default batch_size=1 would give (1, B, ...) tensors
    with pytest.warns(RuntimeWarning, match=r"built with num_workers=3 but is loaded with 0: len\(\) assumed"):
        list(_dataset(data, engine, batches_per_epoch=1, num_workers=3))
    with pytest.raises(ValueError, match="Expected num_workers to be a non-negative integer"):
        _dataset(data, engine, num_workers=-1)


def test_ranks_times_workers_and_batch_counts(data, engine):
    real = data[2]
    """Shards of 2 ranks x 2 workers partition the epoch; batch counts follow the documented split."""
    seen = []
    for r in range(2):
        ds = _dataset(data, engine, rank=r, world_size=2)
        for w in range(2):
            seen += torch.cat(ds.pair_batches(ds.shard(w, 2))).tolist()
    assert sorted(seen) == list(range(M * V))
    ds = _dataset(data, engine)
    assert ds.num_batches() == 5  # 9 pairs in batches of 2: 2 + 2 + 2 + 2 + 1
    assert _dataset(data, engine, batch_size=5).num_batches() == 2  # 5 + 4
    assert _dataset(data, engine, batch_size=5, drop_last=True).num_batches() == 1
    capped = _dataset(data, engine, batches_per_epoch=3)  # workers hold 3 and 2 batches; cap 3 -> 2 + 1
    assert [len(capped.pair_batches(capped.shard(w, 2))) for w in range(2)] == [2, 1]
    with_real = _dataset(data, engine, real=real, real_every=2)  # (3 + 1 real) + (2 + 1 real)
    assert with_real.num_batches(num_workers=2) == 7


# -- real batches -------------------------------------------------------------------------------------------


def test_real_alternation(data, engine):
    pool, mocap, real = data
    ds = _dataset(data, engine, real=real, real_every=2, batches_per_epoch=2, seed=1)
    batches = list(ds)
    assert [bool(b["is_real"].all()) for b in batches] == [False, False, True]
    assert all(bool(b["is_real"].all()) == bool(b["is_real"].any()) for b in batches)
    reals = [b for b in batches if b["is_real"][0]]
    # One stream: its real batch visits the B real images once (the epoch's real permutation).
    rows = torch.cat([b["real_index"] for b in reals])
    assert sorted(rows.tolist()) == list(range(len(real)))
    for b in reals:
        assert set(b.keys()) == set(KEYS)
        for key, (shape, dtype) in KEYS.items():
            assert b[key].shape == shape and b[key].dtype == dtype, key
            if b[key].is_floating_point():
                assert torch.isfinite(b[key]).all(), key
        assert (b["pose3d"] == 0).all() and (b["label"] == -1).all() and (b["mocap_index"] == -1).all()
        for k, row in enumerate(b["real_index"].tolist()):
            joints = real.joints[row].double().numpy()
            box = _fit_to_box_numpy(joints, SIZE, 0.1 * SIZE)
            np.testing.assert_allclose(b["pose2d"][k].numpy(), box, atol=1e-3)
            assert (b["source_ids"][k] == real.ids[row]).all()
            # Image: OpenCV's bilinear warp (replicated border) with the same box_from_stored affine.
            scale = (SIZE - 2 * 0.1 * SIZE) / (joints.max(0) - joints.min(0)).max()
            trans = (SIZE - 1) / 2 - scale * (joints.max(0) + joints.min(0)) / 2
            affine = np.array([[scale, 0, trans[0]], [0, scale, trans[1]]])
            src = real.images[row].permute(1, 2, 0).numpy().astype(np.float32) / 255
            want = cv2.warpAffine(src, affine, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            err = np.abs(b["image"][k].permute(1, 2, 0).numpy() - want)
            assert err.mean() < 2e-3 and err.max() < 0.05


# -- errors ---------------------------------------------------------------------------------------------------


def test_exceptions(data, engine):
    pool, mocap, real = data
    with pytest.raises(ValueError, match="batch_size"):
        OnlineMosaicDataset(pool, mocap, 0)
    with pytest.raises(ValueError, match="real_every"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, real_every=2)
    with pytest.raises(TypeError, match="encode"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, classes=object())
    with pytest.raises(ValueError, match="distance"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, views=ViewSettings(distance=0.5))
    with pytest.raises(ValueError, match="rank"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, rank=1)
    with pytest.raises(ValueError, match="rank"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, seed=-1)
    with pytest.raises(TypeError, match="mocap"):
        OnlineMosaicDataset(pool, mocap.poses, 4, engine=engine)
    with pytest.raises(ValueError, match="elevation_range"):
        OnlineMosaicDataset(pool, mocap, 4, engine=engine, views=ViewSettings(elevation_range=(-100, 0)))
    with pytest.raises(TypeError, match="pool"):
        OnlineMosaicDataset(None, mocap, 4)
    assert OnlineMosaicDataset(None, mocap, 4, engine=engine).engine is engine
    with pytest.raises(ValueError, match="pose_index"):
        view_angles(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="view_index"):
        view_angles(torch.tensor([1]), torch.tensor([0.5]))
