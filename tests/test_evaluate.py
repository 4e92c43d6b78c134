import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import gpumosaic.evaluate as ev
from gpumosaic._check import ShapeError
from gpumosaic.skeleton import H36M17, LSP14, MPII16


def _lsp_pose():
    """A hand-made upright LSP14 pose (box pixels)."""
    return torch.tensor([
        [90., 200.], [92., 160.], [95., 120.], [125., 120.], [128., 160.], [130., 200.],  # legs
        [70., 110.], [75., 90.], [85., 60.], [135., 60.], [145., 90.], [150., 110.],    # arms
        [110., 55.], [110., 20.],                                                        # neck, head top
    ], dtype=torch.float64)


def test_paper_joints():
    lsp = ev.paper_joints(LSP14)
    assert len(lsp) == 13 and LSP14.index("neck") not in lsp and LSP14.index("head_top") in lsp
    h36 = ev.paper_joints("h36m17")
    assert [H36M17.names[k] for k in h36] == [
        "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "head",
        "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"]
    mp = ev.paper_joints(MPII16)
    assert len(mp) == 13 and {MPII16.names[k] for k in mp} == {LSP14.names[k] for k in lsp}


def test_joint_errors_and_means_hand_made():
    gt = _lsp_pose()[None]
    pred = gt.clone()
    pred[0, 12] += torch.tensor([3.0, 4.0])  # neck off by 5 px
    pred[0, 0] += torch.tensor([6.0, 8.0])  # right ankle off by 10 px
    e = ev.joint_errors(pred, gt)
    assert e.shape == (1, 14)
    assert float(ev.mean_error(e)) == pytest.approx(15 / 14)
    assert float(ev.mean_error(e, ev.paper_joints(LSP14))) == pytest.approx(10 / 13)  # the neck is not counted
    with pytest.raises(ShapeError, match="pred"):
        ev.joint_errors(torch.zeros(2, 14), gt)
    with pytest.raises(ShapeError, match="gt"):
        ev.joint_errors(pred[:, :3], gt[:, :4])


def test_pck_hand_made():
    gt = _lsp_pose()[None]
    # torso diameter: l_shoulder (135, 60) to r_hip (95, 120): sqrt(40² + 60²)
    torso = math.hypot(40, 60)
    assert float(ev.torso_diameter(gt, LSP14)) == pytest.approx(torso)
    head = float(ev.head_segment(gt, LSP14))
    assert head == pytest.approx(35.0)  # neck (110, 55) to head top (110, 20)
    assert ev.head_segment(torch.zeros(1, 17, 2), H36M17) is None
    assert ev.pck_reference("head", torch.zeros(1, 17, 2), "h36m17") is None
    thr = 0.2 * torso
    errors = torch.tensor([[thr - 0.01, thr, thr + 0.01] + [0.0] * 11], dtype=torch.float64)
    ok = ev.pck(errors, ev.pck_reference("torso", gt, LSP14), 0.2)
    assert ok[0, :3].tolist() == [True, True, False] and bool(ok[0, 3:].all())
    okh = ev.pck(torch.tensor([[17.4, 17.6] + [0.0] * 12], dtype=torch.float64), ev.head_segment(gt, LSP14), 0.5)
    assert okh[0, :2].tolist() == [True, False]  # 0.5 × 35 = 17.5 px
    with pytest.raises(ValueError, match="threshold"):
        ev.pck(errors, torch.ones(1), 0.0)
    with pytest.raises(ValueError, match="kind"):
        ev.pck_reference("knee", gt, LSP14)


def test_errors_3d_absolute_and_aligned():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(5, 14, 3, generator=g, dtype=torch.float64) * 0.3
    rot = torch.from_numpy(Rotation.random(5, random_state=1).as_matrix())
    pred = gt @ rot.transpose(1, 2) + torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    sel = ev.paper_joints(LSP14)
    aligned = ev.errors_3d(pred, gt, sel, aligned=True)
    assert aligned.shape == (5, 13)
    torch.testing.assert_close(aligned, torch.zeros_like(aligned), atol=1e-9, rtol=0)
    absolute = ev.errors_3d(pred, gt, sel)
    expect = np.linalg.norm((pred - gt).numpy()[:, list(sel)], axis=-1) * 1000.0
    np.testing.assert_allclose(absolute.numpy(), expect, rtol=1e-12)
    # hand case: one joint 3 cm off -> 30 mm on that joint
    p = torch.zeros(1, 14, 3, dtype=torch.float64)
    q = p.clone()
    q[0, 13, 2] = 0.03
    assert float(ev.errors_3d(q, p)[0, 13]) == pytest.approx(30.0)


def test_class_lower_bound_hand_made_and_reference():
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])  # (1, 2, 2)
    classes = torch.tensor([[[1.0, 0.0], [10.0, 2.0]],    # errors 1 and 2 -> 1.5
                            [[0.0, 3.0], [10.0, 0.0]],    # 3 and 0 -> 1.5 (tie: lowest index)
                            [[0.0, 0.0], [12.0, 0.0]]])   # 0 and 2 -> 1.0
    lb = ev.class_lower_bound(gt, classes)
    assert lb.index.tolist() == [2] and float(lb.error[0]) == pytest.approx(1.0)
    lb = ev.class_lower_bound(gt, classes[:2], factor=10.0)
    assert lb.index.tolist() == [0] and float(lb.error[0]) == pytest.approx(15.0)
    g = torch.Generator().manual_seed(3)
    gt = torch.randn(23, 14, 3, generator=g, dtype=torch.float64)
    cls = torch.randn(9, 14, 3, generator=g, dtype=torch.float64)
    sel = ev.paper_joints(LSP14)
    fast = ev.class_lower_bound(gt, cls, sel, factor=1000.0, chunk=4)
    ref = ev._class_lower_bound_reference(gt, cls, sel, factor=1000.0)
    torch.testing.assert_close(fast.error, ref.error)
    assert fast.index.tolist() == ref.index.tolist()
    with pytest.raises(ShapeError, match="class_poses"):
        ev.class_lower_bound(gt, cls[:, :3])


def test_bootstrap_constant_and_reference():
    ci = ev.bootstrap_ci(torch.full((7,), 2.5, dtype=torch.float64), n_boot=50)
    assert (ci.mean, ci.low, ci.high, ci.n, ci.n_boot) == (2.5, 2.5, 2.5, 7, 50)
    g = torch.Generator().manual_seed(1)
    v = torch.rand(31, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 9, (31,), generator=g) * 5  # arbitrary integer labels
    for gr in (None, groups):
        fast = ev.bootstrap_ci(v, gr, n_boot=300, generator=torch.Generator().manual_seed(7))
        ref = ev._bootstrap_ci_reference(v, gr, n_boot=300, generator=torch.Generator().manual_seed(7))
        assert fast.mean == pytest.approx(float(v.mean()))
        assert fast.low == pytest.approx(ref.low) and fast.high == pytest.approx(ref.high)
        assert fast.n == ref.n and fast.low < fast.mean < fast.high


def test_bootstrap_matches_exact_resampling_distribution():
    # Two entries 0 and 1: resample means are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5 % / 97.5 % percentiles of a large bootstrap are 0 and 1 and its 50 % interval is [0.5, 0.5].
    v = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ci = ev.bootstrap_ci(v, n_boot=4000, level=0.95)
    assert (ci.low, ci.high) == (0.0, 1.0)
    ci = ev.bootstrap_ci(v, n_boot=4000, level=0.4)
    assert (ci.low, ci.high) == (0.5, 0.5)


def test_bootstrap_groups_resample_whole_groups():
    # Two groups with constant values inside: a group resample mean is a count-weighted mean of group values.
    v = torch.tensor([1.0, 1.0, 1.0, 4.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1])
    ci = ev.bootstrap_ci(v, groups, n_boot=4000, level=0.95)
    assert ci.n == 2 and ci.mean == pytest.approx(1.75)
    # possible resamples: {0,0} -> 1, {0,1} -> (3+4)/4 = 1.75, {1,1} -> 4
    assert (ci.low, ci.high) == (1.0, 4.0)


def test_paired_bootstrap():
    g = torch.Generator().manual_seed(2)
    b = torch.rand(40, generator=g, dtype=torch.float64) * 10
    cmp = ev.paired_bootstrap(b + 3.0, b, n_boot=200)
    assert cmp.difference.low == pytest.approx(3.0) and cmp.difference.high == pytest.approx(3.0)
    assert cmp.mean_a - cmp.mean_b == pytest.approx(3.0) and cmp.p_value == 0.0
    same = ev.paired_bootstrap(b, b.clone(), n_boot=200)
    assert same.difference.mean == 0.0 and same.p_value == 1.0
    # pairing: a noisy common component cancels; the unpaired intervals would overlap heavily
    a = b + 0.1 + 0.01 * torch.randn(40, generator=g, dtype=torch.float64)
    cmp = ev.paired_bootstrap(a, b, n_boot=500)
    assert cmp.difference.low > 0
    assert ev.bootstrap_ci(a).low < ev.bootstrap_ci(b).high
    with pytest.raises(ValueError, match="one shape"):
        ev.paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError, match="non-empty"):
        ev.bootstrap_ci(torch.zeros(0))
    with pytest.raises(ValueError, match="n_boot"):
        ev.bootstrap_ci(a, n_boot=0)


def test_per_joint_table():
    errors = torch.arange(28, dtype=torch.float64).reshape(2, 14)
    table = ev.per_joint_table(errors, LSP14)
    assert list(table) == list(LSP14.names) and table["r_ankle"] == 7.0 and table["head_top"] == 20.0
    sel = ev.paper_joints(LSP14)
    t13 = ev.per_joint_table(errors[:, list(sel)], LSP14, sel)
    assert "neck" not in t13 and t13["head_top"] == 20.0
    assert ev.H36M_PROTOCOLS["p1"].frame_step == 64 and ev.H36M_PROTOCOLS["p2"].test_subjects == ("S9", "S11")


def test_device_follows_input(device):
    """Every core function runs on the input's device and agrees with the CPU / loop references."""
    g = torch.Generator().manual_seed(5)
    gt = torch.randn(12, 14, 3, generator=g, dtype=torch.float64)
    pred = gt + 0.05 * torch.randn(12, 14, 3, generator=g, dtype=torch.float64)
    cls = torch.randn(6, 14, 3, generator=g, dtype=torch.float64)
    sel = ev.paper_joints(LSP14)
    for aligned in (False, True):
        out = ev.errors_3d(pred.to(device), gt.to(device), sel, aligned=aligned)
        assert out.device.type == device.type
        torch.testing.assert_close(out.cpu(), ev.errors_3d(pred, gt, sel, aligned=aligned))
    lb = ev.class_lower_bound(gt.to(device), cls.to(device), sel)
    ref = ev._class_lower_bound_reference(gt, cls, sel)
    torch.testing.assert_close(lb.error.cpu(), ref.error)
    assert lb.index.device.type == device.type and lb.index.cpu().tolist() == ref.index.tolist()
    v = torch.rand(20, generator=g, dtype=torch.float64).to(device)
    gen = lambda: torch.Generator(device=device).manual_seed(3)  # noqa: E731
    fast = ev.bootstrap_ci(v, n_boot=100, generator=gen())
    slow = ev._bootstrap_ci_reference(v, n_boot=100, generator=gen())
    assert fast.low == pytest.approx(slow.low) and fast.high == pytest.approx(slow.high)
    errors = ev.joint_errors(pred[..., :2].to(device), gt[..., :2].to(device))
    ok = ev.pck(errors, ev.torso_diameter(gt[..., :2].to(device), LSP14), 0.2)
    assert ok.device.type == device.type
