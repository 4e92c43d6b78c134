"""Tests of the embedded demo data (gpumosaic.sources.demo): body model, renderer annotations, storage."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from gpumosaic._check import ShapeError
from gpumosaic.skeleton import LSP14
from gpumosaic.sources import demo
from gpumosaic.sources.base import Mocap3D, Pool2D

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
J = {n: i for i, n in enumerate(LSP14.names)}
MAX_BYTES = 4 * 1024 * 1024


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="module")
def shipped():
    return demo._read_npz(demo.demo_path())


def _limb_lengths(p: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pose distances (M,) between LSP14 joints that define each SHAPE_NAMES parameter (per side)."""
    d = lambda a, b: np.linalg.norm(p[:, J[a]] - p[:, J[b]], axis=-1)  # noqa: E731
    mid_hip = (p[:, J["r_hip"]] + p[:, J["l_hip"]]) / 2
    return {
        "thigh": (d("r_hip", "r_knee"), d("l_hip", "l_knee")),
        "shin": (d("r_knee", "r_ankle"), d("l_knee", "l_ankle")),
        "upper_arm": (d("r_shoulder", "r_elbow"), d("l_shoulder", "l_elbow")),
        "forearm": (d("r_elbow", "r_wrist"), d("l_elbow", "l_wrist")),
        "torso": (np.linalg.norm(p[:, J["neck"]] - mid_hip, axis=-1),) * 2,
        "shoulder_width": (d("r_shoulder", "l_shoulder"),) * 2,
        "hip_width": (d("r_hip", "l_hip"),) * 2,
        "head": (d("neck", "head_top"),) * 2,
    }


# ---------------------------------------------------------------------------------------------------------
# The shipped file
# ---------------------------------------------------------------------------------------------------------


def test_shipped_file_layout(shipped):
    path = demo.demo_path()
    assert path.stat().st_size <= MAX_BYTES
    with np.load(path, allow_pickle=False) as z:  # no object arrays
        assert all(z[k].dtype != object for k in z.files)
    meta = shipped["meta"]
    n, m = meta["n_images"], meta["n_mocap"]
    assert meta["skeleton"] == "lsp14" and meta["image_size"] == [160, 160]
    assert meta["generator_version"] == demo.GENERATOR_VERSION
    assert shipped["images_jpeg"].dtype == np.uint8
    assert shipped["images_offsets"].dtype == np.int64 and shipped["images_offsets"].shape == (n + 1,)
    assert shipped["images_offsets"][-1] == shipped["images_jpeg"].size
    assert shipped["joints"].dtype == np.float32 and shipped["joints"].shape == (n, 14, 2)
    assert shipped["mocap"].dtype == np.float32 and shipped["mocap"].shape == (m, 14, 3)
    assert shipped["pool_ids"].shape == (n,) and shipped["mocap_ids"].shape == (m,)


def test_shipped_loaders(shipped, device):
    pool = demo.load_demo_pool(device=device)
    mocap = demo.load_demo_mocap(device=device)
    n, m = shipped["meta"]["n_images"], shipped["meta"]["n_mocap"]
    assert isinstance(pool, Pool2D) and isinstance(mocap, Mocap3D)
    assert pool.images.shape == (n, 3, 160, 160) and pool.images.dtype == torch.uint8
    assert pool.joints.shape == (n, 14, 2) and pool.joints.dtype == torch.float32
    assert mocap.poses.shape == (m, 14, 3) and mocap.poses.dtype == torch.float32
    assert pool.images.device.type == device.type and mocap.poses.device.type == device.type
    assert pool.skeleton is LSP14 and mocap.skeleton is LSP14
    assert torch.isfinite(pool.joints).all() and torch.isfinite(mocap.poses).all()
    # The first image, decoded here by hand (BGR -> RGB by channel reversal).
    o = shipped["images_offsets"]
    first = cv2.imdecode(shipped["images_jpeg"][o[0]:o[1]], cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(pool.images[0].cpu().permute(1, 2, 0).numpy(), first)
    # Images are not blank: figures on varied backgrounds.
    assert pool.images.float().std() > 20


def test_shipped_joints_inside_image(shipped):
    j = shipped["joints"]
    assert np.isfinite(j).all()
    assert (j >= 0).all() and (j <= 159).all()
    # The person fills most of the frame: the joints' bounding box spans a good part of the image.
    extent = (j.max(1) - j.min(1)).max(-1)
    assert extent.min() > 80


def test_shipped_mocap_limbs(shipped):
    poses = shipped["mocap"].astype(np.float64)
    subject = shipped["mocap_ids"] // 100000
    for name, (right, left) in _limb_lengths(poses).items():
        lo, hi = demo.SHAPE_RANGES[name]
        assert right.min() >= lo - 1e-4 and right.max() <= hi + 1e-4, name
        np.testing.assert_allclose(right, left, atol=1e-4, err_msg=name)  # symmetric per person
        for s in np.unique(subject):  # one rigid body per subject
            assert np.ptp(right[subject == s]) < 1e-4, (name, s)
    # Feet on the floor, z up: the lower ankle at ANKLE_HEIGHT, the head above the hips.
    np.testing.assert_allclose(np.minimum(poses[:, 0, 2], poses[:, 5, 2]), demo.ANKLE_HEIGHT, atol=1e-4)
    assert (poses[:, J["head_top"], 2] > poses[:, J["r_hip"], 2]).mean() > 0.99
    # Mocap subjects differ from each other and from the pool's people (varied data).
    assert len(np.unique(subject)) > 1


def test_shipped_matches_generator(shipped):
    """The shipped pool is what the current generator produces for its seed (first images)."""
    meta = shipped["meta"]
    pool, _ = demo.generate_demo(2, 1, seed=meta["seed"])
    np.testing.assert_allclose(pool.joints.numpy(), shipped["joints"][:2], atol=1e-3)
    o = shipped["images_offsets"]
    for i in range(2):
        img = cv2.imdecode(shipped["images_jpeg"][o[i]:o[i + 1]], cv2.IMREAD_COLOR)[..., ::-1].astype(float)
        assert np.abs(pool.images[i].permute(1, 2, 0).numpy() - img).mean() < 1.0


# ---------------------------------------------------------------------------------------------------------
# Body model
# ---------------------------------------------------------------------------------------------------------


def _shape(**kw) -> torch.Tensor:
    vals = {"thigh": 0.44, "shin": 0.41, "upper_arm": 0.3, "forearm": 0.25, "torso": 0.52,
            "shoulder_width": 0.36, "hip_width": 0.22, "head": 0.26}
    vals.update(kw)
    return torch.tensor([[vals[k] for k in demo.SHAPE_NAMES]], dtype=torch.float64)


def _angles(**deg) -> torch.Tensor:
    a = torch.zeros(1, len(demo.ANGLE_NAMES), dtype=torch.float64)
    for k, v in deg.items():
        a[0, demo.ANGLE_NAMES.index(k)] = math.radians(v)
    return a


def test_fk_zero_pose_by_hand():
    th, sh, ua, fa, to, sw, hw, hd = 0.44, 0.41, 0.3, 0.25, 0.52, 0.36, 0.22, 0.26
    p = demo.forward_kinematics(_shape(), _angles())[0].numpy()
    hz = demo.ANKLE_HEIGHT + sh + th  # mid-hip height
    nz = hz + to
    sz = nz - demo.SHOULDER_DROP
    expected = {
        "r_ankle": (0, -hw / 2, demo.ANKLE_HEIGHT), "r_knee": (0, -hw / 2, hz - th), "r_hip": (0, -hw / 2, hz),
        "l_hip": (0, hw / 2, hz), "l_knee": (0, hw / 2, hz - th), "l_ankle": (0, hw / 2, demo.ANKLE_HEIGHT),
        "r_wrist": (0, -sw / 2, sz - ua - fa), "r_elbow": (0, -sw / 2, sz - ua), "r_shoulder": (0, -sw / 2, sz),
        "l_shoulder": (0, sw / 2, sz), "l_elbow": (0, sw / 2, sz - ua), "l_wrist": (0, sw / 2, sz - ua - fa),
        "neck": (0, 0, nz), "head_top": (0, 0, nz + hd),
    }
    np.testing.assert_allclose(p, np.array([expected[n] for n in LSP14.names]), atol=1e-12)


def test_fk_single_joint_rotations():
    shape = _shape()
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    # Right elbow flexed 90°: forearm ⟂ upper arm, pointing forward (+x); upper arm unchanged.
    p = demo.forward_kinematics(shape, _angles(r_elbow=90))[0].numpy()
    upper = p[J["r_elbow"]] - p[J["r_shoulder"]]
    fore = p[J["r_wrist"]] - p[J["r_elbow"]]
    assert abs(upper @ fore) < 1e-12
    np.testing.assert_allclose(unit(upper), [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(fore, [0.25, 0, 0], atol=1e-12)
    # Left knee 90°: shin backward (-x).
    p = demo.forward_kinematics(shape, _angles(l_knee=90))[0].numpy()
    np.testing.assert_allclose(p[J["l_ankle"]] - p[J["l_knee"]], [-0.41, 0, 0], atol=1e-12)
    # Right shoulder abducted 90°: arm horizontal, outward (the right side is -y).
    p = demo.forward_kinematics(shape, _angles(r_shoulder_abd=90))[0].numpy()
    np.testing.assert_allclose(p[J["r_wrist"]] - p[J["r_shoulder"]], [0, -0.55, 0], atol=1e-12)
    # Left hip and knee flexed 90° (sitting leg): thigh forward (+x), shin hanging down from the knee.
    p = demo.forward_kinematics(shape, _angles(l_hip_flex=90, l_knee=90))[0].numpy()
    np.testing.assert_allclose(p[J["l_knee"]] - p[J["l_hip"]], [0.44, 0, 0], atol=1e-12)
    np.testing.assert_allclose(p[J["l_ankle"]] - p[J["l_knee"]], [0, 0, -0.41], atol=1e-12)
    # Torso lean 90° forward: neck in front of the mid-hip at hip height.
    p = demo.forward_kinematics(shape, _angles(torso_lean=90))[0].numpy()
    mid_hip = (p[J["r_hip"]] + p[J["l_hip"]]) / 2
    np.testing.assert_allclose(p[J["neck"]] - mid_hip, [0.52, 0, 0], atol=1e-12)


def test_fk_matches_reference(device):
    g = torch.Generator().manual_seed(0)
    shapes = demo.sample_body_shapes(64, g).double()
    angles = demo.sample_poses(64, g).double()
    # Include the extremes of every anatomical range.
    lo, hi = (torch.tensor(b, dtype=torch.float64) for b in demo._angle_bounds_deg())
    angles = torch.cat([angles, torch.deg2rad(lo)[None], torch.deg2rad(hi)[None]])
    shapes = torch.cat([shapes, shapes[:2]])
    fast = demo.forward_kinematics(shapes.to(device), angles.to(device))
    assert fast.device.type == device.type and fast.dtype == torch.float64 and fast.shape == (66, 14, 3)
    assert torch.isfinite(fast).all()
    ref = demo._forward_kinematics_reference(shapes, angles)
    torch.testing.assert_close(fast.cpu(), ref, atol=1e-10, rtol=0)
    # Limb lengths are exactly the shape parameters (rigid body), every pose.
    lengths = _limb_lengths(fast.cpu().numpy())
    for k, name in enumerate(demo.SHAPE_NAMES):
        for side in lengths[name]:
            np.testing.assert_allclose(side, shapes[:, k].numpy(), atol=1e-10)


def test_fk_does_not_mutate_and_checks_shapes():
    shapes, angles = _shape(), _angles(r_knee=30)
    s0, a0 = shapes.clone(), angles.clone()
    demo.forward_kinematics(shapes, angles)
    assert torch.equal(shapes, s0) and torch.equal(angles, a0)
    assert demo.forward_kinematics(shapes.float(), angles.float()).dtype == torch.float32
    with pytest.raises(ShapeError, match="angles"):
        demo.forward_kinematics(shapes, angles[:, :20])
    with pytest.raises(ShapeError, match="shapes"):
        demo.forward_kinematics(shapes[0], angles)
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        demo.sample_poses(3, None)


def test_samplers_in_ranges_and_deterministic(device):
    gen = lambda: torch.Generator(device=device).manual_seed(3)  # noqa: E731
    shapes = demo.sample_body_shapes(500, gen())
    angles = demo.sample_poses(500, gen())
    assert shapes.shape == (500, 8) and angles.shape == (500, 21) and shapes.device.type == device.type
    assert torch.isfinite(shapes).all() and torch.isfinite(angles).all()
    lo = torch.tensor([demo.SHAPE_RANGES[k][0] for k in demo.SHAPE_NAMES], device=device)
    hi = torch.tensor([demo.SHAPE_RANGES[k][1] for k in demo.SHAPE_NAMES], device=device)
    assert ((shapes >= lo) & (shapes <= hi)).all()
    alo, ahi = (torch.deg2rad(torch.tensor(b, device=device)) for b in demo._angle_bounds_deg())
    assert ((angles >= alo - 1e-6) & (angles <= ahi + 1e-6)).all()
    # Varied: every angle moves, knees and elbows use much of their range.
    assert (angles.std(0) > math.radians(3)).all()
    assert torch.rad2deg(angles[:, demo.ANGLE_NAMES.index("r_knee")]).max() > 90
    torch.testing.assert_close(demo.sample_poses(500, gen()), angles, atol=0, rtol=0)
    torch.testing.assert_close(demo.sample_body_shapes(500, gen()), shapes, atol=0, rtol=0)
    assert demo.sample_poses(0, gen()).shape == (0, 21)


# ---------------------------------------------------------------------------------------------------------
# Renderer: exact annotations
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(6))
def test_annotations_are_exact_projections(index):
    item = demo._render_pool_item(seed=7, index=index)
    obj = item["joints3d"].reshape(-1, 1, 3).astype(np.float64)
    rvec, _ = cv2.Rodrigues(item["R"])
    proj, _ = cv2.projectPoints(obj, rvec, item["t"].astype(np.float64), item["K"], None)
    np.testing.assert_allclose(item["joints2d"], proj.reshape(-1, 2), atol=1e-6)
    assert item["image"].shape == (160, 160, 3) and item["image"].dtype == np.uint8


@pytest.mark.parametrize("background", ["plain", "random"])
def test_joint_pixels_belong_to_the_figure(background):
    """Rendered twice with one seed (figure / no figure): each annotated joint's pixel differs."""
    for index in range(8):
        with_fig = demo._render_pool_item(11, index, background=background, figure=True)
        without = demo._render_pool_item(11, index, background=background, figure=False)
        np.testing.assert_array_equal(with_fig["joints2d"], without["joints2d"])
        u, v = np.round(with_fig["joints2d"]).astype(int).T
        assert (u >= 0).all() and (u < 160).all() and (v >= 0).all() and (v < 160).all()
        diff = np.abs(with_fig["image"].astype(int) - without["image"].astype(int)).max(-1)
        assert (diff[v, u] > 0).all(), (index, np.nonzero(diff[v, u] == 0))
        # The same pixels are inside the figure's silhouette; the silhouette is a good part of the frame.
        assert (with_fig["coverage"][v, u] > 0.5).all()
        assert 0.05 < with_fig["coverage"].mean() < 0.7
        # Far from the figure, nothing changed (the background is the same).
        assert (diff[with_fig["coverage"] == 0] == 0).mean() > 0.7


# ---------------------------------------------------------------------------------------------------------
# Generation and storage
# ---------------------------------------------------------------------------------------------------------


def test_generate_demo_deterministic():
    p1, m1 = demo.generate_demo(3, 40, seed=5)
    p2, m2 = demo.generate_demo(3, 40, seed=5)
    assert torch.equal(p1.images, p2.images) and torch.equal(p1.joints, p2.joints)
    assert torch.equal(m1.poses, m2.poses) and torch.equal(m1.ids, m2.ids)
    p3, m3 = demo.generate_demo(3, 40, seed=6)
    assert not torch.equal(p1.images, p3.images) and not torch.equal(m1.poses, m3.poses)
    # Prefix-stable: the first images do not depend on how many are generated.
    p4, _ = demo.generate_demo(2, 5, seed=5)
    assert torch.equal(p4.images, p1.images[:2]) and torch.equal(p4.joints, p1.joints[:2])
    assert p1.images.shape == (3, 3, 160, 160) and m1.poses.shape == (40, 14, 3)


def test_regenerated_file_round_trip(tmp_path):
    path = tmp_path / "small.npz"
    demo.main(["--out", str(path), "--n-images", "3", "--n-mocap", "30", "--seed", "2"])
    assert path.exists() and path.stat().st_size < MAX_BYTES
    arrays = demo._read_npz(path)  # the loaders' own reader
    assert arrays["meta"]["seed"] == 2 and arrays["meta"]["n_images"] == 3
    assert arrays["joints"].shape == (3, 14, 2) and arrays["mocap"].shape == (30, 14, 3)
    pool, mocap = demo.load_demo_pool(path=path), demo.load_demo_mocap(path=path)
    ref_pool, ref_mocap = demo.generate_demo(3, 30, seed=2)
    assert torch.equal(pool.images, ref_pool.images) and torch.equal(pool.joints, ref_pool.joints)
    assert torch.equal(mocap.poses, ref_mocap.poses) and torch.equal(mocap.ids, ref_mocap.ids)
    assert torch.equal(pool.ids, torch.arange(3))
