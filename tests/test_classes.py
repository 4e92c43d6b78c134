import json

import numpy as np
import pytest
import scipy.cluster.vq as vq
import torch
from scipy.spatial.distance import cdist

import gpumosaic.classes as classes_mod
from gpumosaic._check import ShapeError
from gpumosaic.classes import PoseClasses, assign, kmeans, kmeans_plusplus
from gpumosaic.skeleton import LSP14


def _gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


def _blobs(n_per, k, dim, seed, spread=0.05, sep=10.0):
    """Well-separated Gaussian blobs (float64, CPU) and their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * sep
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.normal(size=(k * n_per, dim)) * spread
    perm = rng.permutation(len(x))
    return torch.from_numpy(x[perm]), truth[perm]


def _same_partition(a, b):
    """True when labels a and b define the same partition (equal up to a permutation of label values)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _inertia_np(x, centres):
    d = cdist(x, centres, "sqeuclidean")
    return d.min(1).sum()


# ---------------------------------------------------------------------------------------------------------
# k-means against scipy
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kmeans_matches_scipy_same_init(dtype, device):
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(1500, 6, generator=g, dtype=torch.float64)
    init, _ = kmeans_plusplus(x64, 12, torch.Generator().manual_seed(4))
    res = kmeans(x64.to(device, dtype), 12, init=init.to(dtype), iters=25, tol=0.0)
    ref_c, _ = vq.kmeans2(x64.numpy(), init.numpy(), iter=25, minit="matrix", missing="raise")
    assert res.centres.shape == (12, 6) and res.labels.shape == (1500,) and res.labels.dtype == torch.long
    assert res.centres.dtype == dtype and res.centres.device.type == device.type
    assert res.iters == 25
    assert torch.isfinite(res.centres).all() and torch.isfinite(res.inertia)
    ref_inertia = _inertia_np(x64.numpy(), ref_c)
    ours = float(res.inertia)
    assert abs(ours - ref_inertia) <= 0.02 * ref_inertia
    if dtype == torch.float64:
        # Same algorithm, same init, float64: identical centres. (kmeans2 returns the labels of the
        # assignment *before* its last update; ours are the nearest final centres, i.e. vq's.)
        np.testing.assert_allclose(res.centres.cpu().numpy(), ref_c, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(res.labels.cpu().numpy(), vq.vq(x64.numpy(), ref_c)[0])
    # Reported inertia is that of the returned labels and centres.
    xn = x64.numpy()
    own = ((xn - res.centres.double().cpu().numpy()[res.labels.cpu().numpy()]) ** 2).sum()
    assert ours == pytest.approx(own, rel=1e-4)


def test_kmeans_blobs_same_partition_as_scipy(device):
    x, truth = _blobs(60, 8, 5, seed=1)
    init, _ = kmeans_plusplus(x.to(device), 8, _gen(device, 7))
    res = kmeans(x.to(device).float(), 8, init=init.float(), iters=30, tol=1e-6)
    ref_c, ref_l = vq.kmeans2(x.numpy(), init.cpu().numpy(), iter=30, minit="matrix", missing="raise")
    assert _same_partition(res.labels.cpu().numpy(), ref_l)
    assert _same_partition(res.labels.cpu().numpy(), truth)
    assert res.iters < 30  # converged (relative inertia change below tol) well before the cap


def test_kmeans_reference_twin_with_empty_cluster():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    init = x[:4].clone()
    init[3] = 1e3  # far away: empty after the first assignment, re-seeded with the farthest point
    res = kmeans(x, 4, init=init, iters=6, tol=0.0)
    ref_c, ref_l = classes_mod._kmeans_reference(x, init, 6)
    torch.testing.assert_close(res.centres, ref_c)
    torch.testing.assert_close(res.labels, ref_l)


def test_kmeans_default_init_and_determinism(device):
    x, _ = _blobs(30, 5, 4, seed=2)
    x = x.to(device).float()
    a = kmeans(x, 5, _gen(device, 11))
    b = kmeans(x, 5, _gen(device, 11))
    torch.testing.assert_close(a.centres, b.centres)
    torch.testing.assert_close(a.labels, b.labels)
    assert torch.isfinite(a.centres).all()


def test_kmeans_chunking_does_not_change_result(device):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, 7, generator=g, dtype=torch.float64).to(device)
    init = x[torch.randperm(300, generator=g)[:9].to(device)]
    a = kmeans(x, 9, init=init, iters=5, tol=0.0)
    b = kmeans(x, 9, init=init, iters=5, tol=0.0, chunk=70)
    torch.testing.assert_close(a.centres, b.centres)
    torch.testing.assert_close(a.labels, b.labels)


def test_kmeans_empty_clusters_keep_k_finite_centres(device):
    # Only 3 distinct points but k = 5: k-means++ must fall back to uniform draws, and the duplicated /
    # empty clusters are re-seeded; nothing may become NaN.
    base = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]], device=device)
    x = base.repeat(10, 1)
    res = kmeans(x, 5, _gen(device, 0), iters=10)
    assert res.centres.shape == (5, 2)
    assert torch.isfinite(res.centres).all() and torch.isfinite(res.inertia)
    assert float(res.inertia) == pytest.approx(0.0, abs=1e-6)
    # An init centre far from all data: re-seeded with a data point, all clusters end up used.
    g = torch.Generator().manual_seed(1)
    y = torch.randn(200, 2, generator=g).to(device)
    init = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1e4, 1e4], [-1e4, 1e4]], device=device)
    res = kmeans(y, 4, init=init, iters=5, tol=0.0)
    assert torch.isfinite(res.centres).all()
    assert (res.centres.abs() < 100).all()
    assert torch.bincount(res.labels, minlength=4).min() > 0


def test_kmeans_does_not_mutate_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(100, 3, generator=g)
    init = x[:4].clone()
    xv, iv, xc, ic = x._version, init._version, x.clone(), init.clone()
    kmeans(x, 4, init=init, iters=3)
    assert x._version == xv and init._version == iv
    torch.testing.assert_close(x, xc)
    torch.testing.assert_close(init, ic)


def test_kmeans_exceptions():
    x = torch.randn(10, 3)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ShapeError, match="x"):
        kmeans(x[0], 2, g)
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(x, 11, g)
    with pytest.raises(ValueError, match="positive int"):
        kmeans(x, 0, g)
    with pytest.raises(ShapeError, match="init"):
        kmeans(x, 2, init=torch.zeros(3, 3))
    with pytest.raises(TypeError, match="generator"):
        kmeans(x, 2, None)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, g, init="random")
    with pytest.raises(ValueError, match="finite"):
        kmeans(torch.full((10, 3), float("nan")), 2, g)
    with pytest.raises(TypeError, match="floating-point"):
        kmeans(torch.ones(10, 3, dtype=torch.long), 2, g)


# ---------------------------------------------------------------------------------------------------------
# k-means++
# ---------------------------------------------------------------------------------------------------------


def test_kmeans_plusplus_distinct_and_deterministic(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g).to(device)
    c1, i1 = kmeans_plusplus(x, 50, _gen(device, 5))
    c2, i2 = kmeans_plusplus(x, 50, _gen(device, 5))
    _, i3 = kmeans_plusplus(x, 50, _gen(device, 6))
    assert i1.dtype == torch.long and i1.shape == (50,)
    assert len(set(i1.tolist())) == 50  # distinct points
    torch.testing.assert_close(c1, x[i1])
    torch.testing.assert_close(i1, i2)
    torch.testing.assert_close(c1, c2)
    assert not torch.equal(i1, i3)


def _d2_pair_probabilities(points):
    """Exact probability of each ordered seed pair (first uniform, second ∝ squared distance)."""
    n = len(points)
    d2 = cdist(points, points, "sqeuclidean")
    return {(a, b): (1.0 / n) * d2[a, b] / d2[a].sum() for a in range(n) for b in range(n) if a != b}


@pytest.mark.parametrize("fallback", [False, True])
def test_kmeans_plusplus_d2_distribution(fallback, monkeypatch):
    """Empirical seed-pair frequencies match D² sampling (multinomial path and inverse-CDF fallback)."""
    if fallback:
        monkeypatch.setattr(classes_mod, "_MULTINOMIAL_MAX", 2)
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    x = torch.from_numpy(pts)
    expected = _d2_pair_probabilities(pts)
    g = torch.Generator().manual_seed(0)
    draws = 3000
    counts = {}
    for _ in range(draws):
        _, idx = kmeans_plusplus(x, 2, g)
        key = tuple(idx.tolist())
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(expected)
    for key, p in expected.items():
        freq = counts.get(key, 0) / draws
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-3, (key, freq, p)


def test_kmeans_generator_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA to build a mismatched generator")
    x = torch.randn(10, 3, device="cuda")
    with pytest.raises(ValueError, match="generator"):
        kmeans_plusplus(x, 2, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------
# assign / PoseClasses
# ---------------------------------------------------------------------------------------------------------


def test_assign_against_loop(device):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    c = torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels, d2 = assign(x.to(device), c.to(device), chunk=11)
    ref_l, ref_d = classes_mod._assign_reference(x, c)
    torch.testing.assert_close(labels.cpu(), ref_l)
    torch.testing.assert_close(d2.cpu(), ref_d)
    np.testing.assert_array_equal(labels.cpu().numpy(), cdist(x.numpy(), c.numpy()).argmin(1))


def _pose_data(n, seed, j=14):
    g = torch.Generator().manual_seed(seed)
    # Four well-separated pose prototypes plus noise (metres), and matching 2D poses.
    protos = torch.randn(4, j, 3, generator=g)
    which = torch.randint(4, (n,), generator=g)
    p3 = protos[which] + 0.02 * torch.randn(n, j, 3, generator=g)
    p2 = 100 + 50 * torch.randn(n, j, 2, generator=g)
    return p3, p2


def test_pose_classes_fit_decode_member_means(device):
    p3, p2 = _pose_data(120, 0)
    pc = PoseClasses.fit(p3.to(device), p2.to(device), k=6, generator=_gen(device, 1), progress=False)
    assert pc.centres.shape == (6, 14, 3) and pc.mean_pose3d.shape == (6, 14, 3)
    assert pc.mean_pose2d.shape == (6, 14, 2) and pc.counts.shape == (6,) and pc.counts.dtype == torch.long
    assert pc.skeleton == "lsp14" and len(pc) == 6
    assert int(pc.counts.sum()) == 120
    labels = pc.encode(p3.to(device)).cpu()
    # Plain loop: mean of the members of each class.
    for c in range(6):
        members = [n for n in range(120) if int(labels[n]) == c]
        assert len(members) == int(pc.counts[c])
        if members:
            torch.testing.assert_close(pc.mean_pose3d[c].cpu(), torch.stack([p3[n] for n in members]).mean(0))
            torch.testing.assert_close(pc.mean_pose2d[c].cpu(), torch.stack([p2[n] for n in members]).mean(0))
        else:
            torch.testing.assert_close(pc.mean_pose3d[c], pc.centres[c])
            assert (pc.mean_pose2d[c] == 0).all()
    pose3d, pose2d = pc.decode(labels.to(device).reshape(12, 10))
    assert pose3d.shape == (12, 10, 14, 3) and pose2d.shape == (12, 10, 14, 2)
    torch.testing.assert_close(pose3d.reshape(120, 14, 3), pc.mean_pose3d[labels.to(device)])
    assert torch.isfinite(pose3d).all() and torch.isfinite(pose2d).all()


def test_pose_classes_empty_class_keeps_centre():
    # A hand-made PoseClasses-like fit: an init centre far from every pose stays / is re-seeded; with
    # iters=0 no update happens, so its class is empty and keeps its centre with a zero 2D mean.
    p3, p2 = _pose_data(30, 1)
    init = torch.cat([p3[:2], torch.full((1, 14, 3), 50.0)])
    pc = PoseClasses.fit(p3, p2, k=3, init=init, iters=0, progress=False)
    assert int(pc.counts[2]) == 0
    torch.testing.assert_close(pc.mean_pose3d[2], init[2])
    assert (pc.mean_pose2d[2] == 0).all()
    assert torch.isfinite(pc.mean_pose3d).all() and torch.isfinite(pc.mean_pose2d).all()


def test_pose_classes_encode_brute_force(device):
    p3, _ = _pose_data(80, 2)
    pc = PoseClasses.fit(p3.to(device), None, k=5, generator=_gen(device, 3), progress=False)
    assert pc.mean_pose2d is None
    g = torch.Generator().manual_seed(4)
    queries = torch.randn(3, 7, 14, 3, generator=g)
    got = pc.encode(queries.to(device), chunk=4)
    assert got.shape == (3, 7) and got.dtype == torch.long and got.device.type == device.type
    ref = cdist(queries.reshape(-1, 42).double().numpy(), pc.centres.reshape(5, 42).double().cpu().numpy())
    np.testing.assert_array_equal(got.cpu().numpy().reshape(-1), ref.argmin(1))
    single = pc.encode(queries[0, 0].to(device))
    assert single.shape == () and int(single) == int(ref.argmin(1)[0])
    assert pc.encode(torch.zeros(0, 14, 3, device=device)).shape == (0,)
    # Encoding predictions that require gradients works (labels are not differentiable).
    torch.testing.assert_close(pc.encode(queries.to(device).requires_grad_(True)), got)
    p, q = pc.decode(got)
    assert p.shape == (3, 7, 14, 3) and q is None


def test_pose_classes_save_load_round_trip(tmp_path, device):
    p3, p2 = _pose_data(50, 3)
    pc = PoseClasses.fit(p3.to(device), p2.to(device), k=4, generator=_gen(device, 0), progress=False)
    path = pc.save(tmp_path / "classes.npz")
    assert path == tmp_path / "classes.npz" and path.exists()
    back = PoseClasses.load(path, device=device)
    for name in ("centres", "mean_pose3d", "mean_pose2d", "counts"):
        a, b = getattr(pc, name), getattr(back, name)
        assert a.dtype == b.dtype and b.device.type == device.type
        assert torch.equal(a, b), name
    assert back.skeleton == pc.skeleton
    # Without 2D poses too; a path without ".npz" is written exactly there.
    pc3 = PoseClasses.fit(p3, None, k=3, generator=_gen("cpu", 0), progress=False)
    back3 = PoseClasses.load(pc3.save(tmp_path / "noext"))
    assert back3.mean_pose2d is None and torch.equal(back3.centres, pc3.centres)
    # Metadata is a JSON string array, never a pickle.
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["K"] == 4
        assert all(z[n].dtype != object for n in z.files)


def test_pose_classes_load_refuses_object_arrays(tmp_path):
    p3, _ = _pose_data(20, 4)
    pc = PoseClasses.fit(p3, None, k=2, generator=_gen("cpu", 0), progress=False)
    pc.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["evil"] = np.array([{"a": 1}, None], dtype=object)
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="object arrays"):
        PoseClasses.load(bad)
    arrays.pop("evil")
    arrays.pop("centres")
    with open(tmp_path / "short.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="centres"):
        PoseClasses.load(tmp_path / "short.npz")


def test_pose_classes_exceptions():
    p3, p2 = _pose_data(20, 5)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ShapeError, match="pose2d"):
        PoseClasses.fit(p3, p2[:, :5], k=2, generator=g, progress=False)
    with pytest.raises(ShapeError, match="pose3d"):
        PoseClasses.fit(p3[..., :2], None, k=2, generator=g, progress=False)
    with pytest.raises(ValueError, match="skeleton"):
        PoseClasses.fit(p3, None, k=2, generator=g, skeleton="h36m17", progress=False)
    pc = PoseClasses.fit(p3, p2, k=2, generator=g, progress=False)
    with pytest.raises(ShapeError, match="pose3d"):
        pc.encode(torch.zeros(3, 13, 3))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        pc.decode(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="integer"):
        pc.decode(torch.tensor([0.0]))


def test_pose_classes_on_demo_mocap():
    """Smoke test on the shipped mocap (torso-centred): classes are finite and encode is consistent."""
    from gpumosaic.camera import torso_centre
    from gpumosaic.sources import load_demo_mocap

    mocap = load_demo_mocap()
    poses = mocap.poses[:600]
    poses = poses - torso_centre(poses, LSP14)[:, None]
    pc = PoseClasses.fit(poses, None, k=20, generator=_gen("cpu", 0), progress=False, iters=20)
    assert torch.isfinite(pc.centres).all() and torch.isfinite(pc.mean_pose3d).all()
    labels = pc.encode(poses)
    assert torch.equal(torch.bincount(labels, minlength=20), pc.counts)
