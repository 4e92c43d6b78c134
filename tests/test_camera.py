import json
import math

import cv2
import numpy as np
import pytest
import torch

from gpumosaic._check import ShapeError
from gpumosaic.camera import (
    Cameras,
    ViewBatch,
    look_at,
    oriented_pose,
    project,
    render_views,
    sample_views,
    self_occlusion,
    torso_centre,
)
from gpumosaic.occlusion import ray_segment_closest_reference, self_occlusion_reference
from gpumosaic.settings import ViewSettings
from gpumosaic.skeleton import H36M17, LSP14

J = {n: i for i, n in enumerate(LSP14.names)}


# ----------------------------------------------------------------------------------------------- helpers


def _pose(coords: dict) -> torch.Tensor:
    """LSP14 pose (14, 3) float64 from a {name: (x, y, z)} dict covering every joint."""
    assert set(coords) == set(LSP14.names)
    return torch.tensor([coords[n] for n in LSP14.names], dtype=torch.float64)


def _frontal_tpose(z: float = 5.0) -> dict:
    """Planar T-pose in the camera frame, facing the camera: the person's right is image-left (x < 0)."""
    return {
        "head_top": (0.0, -0.75, z), "neck": (0.0, -0.5, z),
        "r_shoulder": (-0.2, -0.5, z), "l_shoulder": (0.2, -0.5, z),
        "r_elbow": (-0.5, -0.5, z), "l_elbow": (0.5, -0.5, z),
        "r_wrist": (-0.8, -0.5, z), "l_wrist": (0.8, -0.5, z),
        "r_hip": (-0.15, 0.0, z), "l_hip": (0.15, 0.0, z),
        "r_knee": (-0.15, 0.45, z), "l_knee": (0.15, 0.45, z),
        "r_ankle": (-0.15, 0.9, z), "l_ankle": (0.15, 0.9, z),
    }


def _occluded_names(mask: torch.Tensor) -> set:
    return {LSP14.names[j] for j in range(14) if bool(mask[j])}


def _random_world_poses(n: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Rough human-like LSP14 poses (metres, z up) around the origin, with random limbs."""
    base = _frontal_tpose(0.0)
    # frontal pose in the camera frame (x right, y down) -> world (x, -z?) : use (x, 0, -y) + noise
    p = torch.tensor([[base[n][0], 0.0, -base[n][1]] for n in LSP14.names], dtype=dtype)
    return p + 0.25 * torch.randn(n, 14, 3, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------- torso


def test_torso_centre_against_numpy(device):
    g = torch.Generator().manual_seed(0)
    for skel, d in ((LSP14, 3), (H36M17, 2)):
        x = torch.randn(4, 5, len(skel), d, generator=g).to(device)
        got = torso_centre(x, skel)
        names = ("r_shoulder", "l_shoulder", "r_hip", "l_hip")
        xn = x.cpu().numpy()
        expect = np.mean([xn[..., skel.index(n), :] for n in names], axis=0)
        assert got.shape == (4, 5, d) and got.device.type == device.type
        np.testing.assert_allclose(got.cpu().numpy(), expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(ShapeError, match="J=14"):
        torso_centre(torch.zeros(2, 13, 3), LSP14)
    with pytest.raises(ValueError, match="finite"):
        torso_centre(torch.full((14, 3), float("nan")), LSP14)


# ----------------------------------------------------------------------------------------------- look_at


def _look_at_numpy(target, a_deg, e_deg, d):
    """The spec's cross-product definition, in float64 numpy."""
    a, e = math.radians(a_deg), math.radians(e_deg)
    c = np.asarray(target) + d * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    f = np.asarray(target) - c
    f /= np.linalg.norm(f)
    x = np.cross(f, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    R = np.stack([x, y, f])
    return R, -R @ c


def test_look_at_hand_computation_a0_e0(device):
    target = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, device=device)
    R, t = look_at(target, 0.0, 0.0, 4.0)
    # Camera at target + (4, 0, 0), looking along world -x. Right = forward × up = (-1,0,0)×(0,0,1) = (0,1,0);
    # down = -z_world. Rows: x_cam, y_cam, z_cam.
    R_hand = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    centre = np.array([5.0, 2.0, 0.5])
    np.testing.assert_allclose(R.cpu().numpy(), R_hand, atol=1e-12)
    np.testing.assert_allclose(t.cpu().numpy(), -R_hand @ centre, atol=1e-12)
    # a world point 1 m towards +y (the camera's right) maps to x_cam > 0
    p = R @ (target + torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64, device=device)) + t
    assert p[0] > 0 and abs(float(p[1])) < 1e-12


def test_look_at_properties_and_numpy(device):
    g = torch.Generator().manual_seed(1)
    n = 64
    target = torch.randn(n, 3, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) * 360
    e = torch.rand(n, generator=g, dtype=torch.float64) * 170 - 85
    d = torch.rand(n, generator=g, dtype=torch.float64) * 5 + 1
    R, t = look_at(target.to(device), a.to(device), e.to(device), d.to(device))
    assert R.shape == (n, 3, 3) and t.shape == (n, 3) and R.device.type == device.type
    Rn, tn = R.cpu().numpy(), t.cpu().numpy()
    for i in range(n):
        R_ref, t_ref = _look_at_numpy(target[i].numpy(), float(a[i]), float(e[i]), float(d[i]))
        np.testing.assert_allclose(Rn[i], R_ref, atol=1e-10)
        np.testing.assert_allclose(tn[i], t_ref, atol=1e-10)
    eye = np.broadcast_to(np.eye(3), (n, 3, 3))
    np.testing.assert_allclose(Rn @ Rn.transpose(0, 2, 1), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(Rn), 1.0, atol=1e-12)
    # target -> (0, 0, d); a point above the target has negative y_cam (image up)
    tgt_cam = np.einsum("nij,nj->ni", Rn, target.numpy()) + tn
    np.testing.assert_allclose(tgt_cam, np.stack([0 * d.numpy(), 0 * d.numpy(), d.numpy()], 1), atol=1e-12)
    above = np.einsum("nij,nj->ni", Rn, target.numpy() + [0, 0, 0.3]) + tn
    assert (above[:, 1] < 0).all()


def test_look_at_broadcast_and_errors():
    R, t = look_at(torch.zeros(3), torch.tensor([[0.0, 90.0]]), 10.0, torch.tensor([2.0]))
    assert R.shape == (1, 2, 3, 3) and t.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="elevation"):
        look_at(torch.zeros(3), 0.0, 91.0, 1.0)
    with pytest.raises(ValueError, match="distance"):
        look_at(torch.zeros(3), 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        look_at(torch.tensor([0.0, float("inf"), 0.0]), 0.0, 0.0, 1.0)
    with pytest.raises(ShapeError, match="broadcastable"):
        look_at(torch.zeros(4, 3), torch.zeros(5), 0.0, 1.0)


def test_look_at_gradcheck():
    target = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([10.0, 200.0], dtype=torch.float64, requires_grad=True)
    e = torch.tensor([-30.0, 40.0], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *x: look_at(*x), (target, a, e, d))


# ----------------------------------------------------------------------------------------------- views


def test_sample_views_determinism_and_ranges():
    az, el = sample_views(7, 180, torch.Generator().manual_seed(3))
    az2, el2 = sample_views(7, 180, generator=torch.Generator().manual_seed(3))
    az3, _ = sample_views(7, 180, torch.Generator().manual_seed(4))
    assert az.shape == el.shape == (7, 180) and az.dtype == torch.float32
    torch.testing.assert_close(az, az2, rtol=0, atol=0)
    torch.testing.assert_close(el, el2, rtol=0, atol=0)
    assert not torch.equal(az, az3)
    assert az.min() >= 0 and az.max() < 360 and el.min() >= -45 and el.max() < 45
    # uniformity: Kolmogorov–Smirnov against U[lo, hi)
    from scipy import stats

    assert stats.kstest(az.flatten().numpy(), "uniform", args=(0, 360)).pvalue > 1e-3
    assert stats.kstest(el.flatten().numpy(), "uniform", args=(-45, 90)).pvalue > 1e-3
    az, el = sample_views(3, 5, torch.Generator().manual_seed(0),
                          settings=ViewSettings(azimuth_range=(10, 20), elevation_range=(0, 5)), dtype=torch.float64)
    assert az.dtype == torch.float64 and az.min() >= 10 and az.max() < 20 and el.min() >= 0 and el.max() < 5
    assert sample_views(0, 180, torch.Generator())[0].shape == (0, 180)
    with pytest.raises(TypeError, match="generator"):
        sample_views(3, 5)
    with pytest.raises(ValueError, match="elevation_range"):
        sample_views(3, 5, torch.Generator(), settings=ViewSettings(elevation_range=(-100, 0)))
    with pytest.raises(ValueError, match="views"):
        sample_views(3, -1, torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_views_cuda_generator():
    g1 = torch.Generator(device="cuda").manual_seed(5)
    g2 = torch.Generator(device="cuda").manual_seed(5)
    a1, e1 = sample_views(4, 180, g1)
    a2, e2 = sample_views(4, 180, g2)
    assert a1.device.type == "cuda"
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- project


def test_project_against_opencv(device):
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(3, 4, 14, 3, generator=g, dtype=torch.float64)
    pts[..., 2] = pts[..., 2].abs() + 2.0
    focal = torch.rand(3, 4, generator=g, dtype=torch.float64) * 900 + 100
    principal = torch.rand(3, 4, 2, generator=g, dtype=torch.float64) * 200
    before = pts.clone()
    uv = project(pts.to(device), focal.to(device), principal.to(device))
    uv0 = project(pts.to(device), focal.to(device))
    assert uv.shape == (3, 4, 14, 2) and uv.device.type == device.type
    torch.testing.assert_close(pts, before)
    for i in range(3):
        for k in range(4):
            f, (cx, cy) = float(focal[i, k]), principal[i, k].tolist()
            K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
            ref, _ = cv2.projectPoints(pts[i, k].numpy(), np.zeros(3), np.zeros(3), K, np.zeros(5))
            np.testing.assert_allclose(uv[i, k].cpu().numpy(), ref[:, 0, :], rtol=1e-9, atol=1e-9)
            K[0, 2] = K[1, 2] = 0.0
            ref0, _ = cv2.projectPoints(pts[i, k].numpy(), np.zeros(3), np.zeros(3), K, np.zeros(5))
            np.testing.assert_allclose(uv0[i, k].cpu().numpy(), ref0[:, 0, :], rtol=1e-9, atol=1e-9)
    # scalar focal and tuple principal
    uv_s = project(pts[0, 0].to(device), 500.0, (10.0, 20.0))
    torch.testing.assert_close(uv_s, project(pts[0, 0].to(device), torch.tensor(500.0, dtype=torch.float64,
                                                                              device=device),
                                             torch.tensor([10.0, 20.0], dtype=torch.float64, device=device)))


def test_project_errors():
    with pytest.raises(ValueError, match="z > 0"):
        project(torch.tensor([[0.0, 0.0, -1.0]]), 100.0)
    with pytest.raises(ValueError, match="finite"):
        project(torch.tensor([[float("nan"), 0.0, 1.0]]), 100.0)
    with pytest.raises(ShapeError, match="points_cam"):
        project(torch.ones(4, 2), 100.0)
    with pytest.raises(ShapeError, match="broadcastable"):
        project(torch.ones(2, 4, 3), torch.ones(3))


def test_project_gradcheck():
    pts = torch.rand(2, 5, 3, dtype=torch.float64) + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    pts.requires_grad_(True)
    f = torch.tensor([500.0, 800.0], dtype=torch.float64, requires_grad=True)
    c = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(project, (pts, f, c))


# ----------------------------------------------------------------------------------------------- oriented


def test_oriented_pose_against_numpy(device):
    g = torch.Generator().manual_seed(6)
    poses = _random_world_poses(5, g)
    R, t = look_at(torch.zeros(5, 3, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64) * 360,
                   torch.rand(5, generator=g, dtype=torch.float64) * 90 - 45, 5.0)
    out = oriented_pose(poses.to(device), R.to(device), t.to(device), LSP14)
    assert out.shape == (5, 14, 3)
    torso = [J["r_shoulder"], J["l_shoulder"], J["r_hip"], J["l_hip"]]
    for i in range(5):
        cam = poses[i].numpy() @ R[i].numpy().T + t[i].numpy()
        expect = cam - cam[torso].mean(0)
        np.testing.assert_allclose(out[i].cpu().numpy(), expect, atol=1e-12)
    np.testing.assert_allclose(out[:, torso].mean(1).cpu().numpy(), 0.0, atol=1e-12)
    # rigid: pairwise distances preserved
    torch.testing.assert_close(torch.cdist(out, out).cpu(), torch.cdist(poses, poses))
    with pytest.raises(ShapeError):
        oriented_pose(poses, R[:, :2], t, LSP14)


# ----------------------------------------------------------------------------------------------- occlusion


def test_self_occlusion_frontal_tpose_nothing_hidden(device):
    p = _pose(_frontal_tpose()).to(device)
    assert _occluded_names(self_occlusion(p, LSP14)) == set()
    assert _occluded_names(self_occlusion_reference(p, LSP14)) == set()


def test_self_occlusion_wrist_behind_torso(device):
    c = _frontal_tpose()
    c["r_wrist"] = (-0.05, -0.25, 5.3)  # behind the chest, within the torso's silhouette
    p = _pose(c).to(device)
    assert _occluded_names(self_occlusion(p, LSP14)) == {"r_wrist"}
    assert _occluded_names(self_occlusion_reference(p, LSP14)) == {"r_wrist"}
    # torso triangles alone (no capsules) still hide it
    assert _occluded_names(self_occlusion(p, LSP14, limb_radius=0.0)) == {"r_wrist"}
    # the same wrist in front of the chest is visible
    c["r_wrist"] = (-0.05, -0.25, 4.7)
    assert _occluded_names(self_occlusion(_pose(c).to(device), LSP14)) == set()


def _side_view_pose() -> dict:
    """Person turned by 60° about the vertical: the right side is far from the camera; the right arm is
    folded behind the back (local z > 0 = behind), the left arm out sideways on the near side."""
    local = _frontal_tpose(0.0)
    local["l_elbow"], local["l_wrist"] = (0.45, -0.5, 0.0), (0.7, -0.5, 0.0)
    local["r_elbow"] = (-0.2, -0.3, 0.12)
    local["r_wrist"] = (-0.15, -0.15, 0.1)
    th = math.radians(60)
    out = {}
    for n, (x, y, z) in local.items():
        out[n] = (x * math.cos(th) + z * math.sin(th), y, 5.0 - x * math.sin(th) + z * math.cos(th))
    return out


def test_self_occlusion_side_view_far_arm_behind_torso(device):
    c = _side_view_pose()
    # construction check, independent of the library: the rays to the far elbow and wrist cross the (planar)
    # torso quad at least 10 cm in front of them; every other joint lies in the torso plane
    for name in ("r_elbow", "r_wrist"):
        P = np.array(c[name])
        crossed = False
        for tri in (("r_shoulder", "l_shoulder", "l_hip"), ("r_shoulder", "l_hip", "r_hip")):
            v0, v1, v2 = (np.array(c[k]) for k in tri)
            tau, al, be = np.linalg.solve(np.stack([P, v0 - v1, v0 - v2], 1), v0)  # tau P = v0 + al e1 + be e2
            crossed |= al >= 0 and be >= 0 and al + be <= 1 and (1 - tau) * np.linalg.norm(P) > 0.1
        assert crossed, name
    p = _pose(c).to(device)
    assert _occluded_names(self_occlusion(p, LSP14)) == {"r_elbow", "r_wrist"}
    assert _occluded_names(self_occlusion_reference(p, LSP14)) == {"r_elbow", "r_wrist"}
    assert _occluded_names(self_occlusion(p, LSP14, limb_radius=0.0)) == {"r_elbow", "r_wrist"}


def test_self_occlusion_forearm_in_front_of_face(device):
    c = _frontal_tpose()
    c["r_elbow"] = (-0.25, -0.7, 4.6)
    c["r_wrist"] = (0.15, -0.7, 4.6)  # forearm horizontal, 40 cm in front of the head
    p = _pose(c).to(device)
    assert _occluded_names(self_occlusion(p, LSP14)) == {"head_top"}
    assert _occluded_names(self_occlusion_reference(p, LSP14)) == {"head_top"}
    # thinner than the gap between the forearm and the head ray (1 cm): visible
    assert _occluded_names(self_occlusion(p, LSP14, limb_radius=0.005)) == set()


def test_self_occlusion_margin_and_incident_bones(device):
    c = _frontal_tpose()
    # wrist pulled just 1 cm behind the chest plane: within the margin, visible; 5 cm: hidden
    c["r_wrist"] = (-0.05, -0.25, 5.01)
    assert _occluded_names(self_occlusion(_pose(c).to(device), LSP14)) == set()
    c["r_wrist"] = (-0.05, -0.25, 5.05)
    assert _occluded_names(self_occlusion(_pose(c).to(device), LSP14)) == {"r_wrist"}
    # forearm pointing straight away from the camera: the elbow, end of the upper-arm capsule (a bone not
    # incident to the wrist), lies on the wrist's ray 40 cm in front -> the wrist is hidden
    c = _frontal_tpose()
    c["r_wrist"] = (-0.5 * 5.4 / 5.0, -0.5 * 5.4 / 5.0, 5.4)
    for fn in (self_occlusion, self_occlusion_reference):
        assert _occluded_names(fn(_pose(c).to(device), LSP14)) == {"r_wrist"}
    # forearm pointing straight at the camera: the wrist lies on the elbow's ray in front of it, but the
    # forearm is incident to the elbow and the wrist ends no other bone -> by the rule nothing is hidden
    c["r_wrist"] = (-0.5 * 4.6 / 5.0, -0.5 * 4.6 / 5.0, 4.6)
    for fn in (self_occlusion, self_occlusion_reference):
        assert _occluded_names(fn(_pose(c).to(device), LSP14)) == set()


def test_ray_segment_reference_against_grid():
    rng = np.random.default_rng(0)
    s_grid = np.linspace(0, 1, 801)
    for _ in range(20):
        P, A, B = (tuple(rng.normal(size=3)) for _ in range(3))
        dist, s = ray_segment_closest_reference(P, A, B)
        X = s_grid[:, None, None] * np.array(P) - (np.array(A) + s_grid[None, :, None] * (np.subtract(B, A)))
        brute = np.sqrt((X ** 2).sum(-1)).min()
        assert dist <= brute + 1e-12 and dist >= brute - 5e-3


def test_self_occlusion_against_reference_random(device):
    g = torch.Generator().manual_seed(7)
    world = _random_world_poses(12, g)
    az, el = sample_views(12, 8, torch.Generator().manual_seed(8), dtype=torch.float64)
    R, t = look_at(torso_centre(world, LSP14)[:, None].expand(12, 8, 3), az, el, 2.5)
    cam = torch.einsum("mvij,mkj->mvki", R, world) + t[:, :, None]
    ref = self_occlusion_reference(cam, LSP14)
    got = self_occlusion(cam.to(device), LSP14)
    assert got.shape == (12, 8, 14) and got.dtype == torch.bool and got.device.type == device.type
    assert 0.02 < ref.double().mean() < 0.9  # the random poses do exercise both outcomes
    assert torch.equal(got.cpu(), ref)
    # other radii/margins
    for r, m in ((0.1, 0.0), (0.0, 0.05)):
        assert torch.equal(self_occlusion(cam.to(device), LSP14, r, m).cpu(),
                           self_occlusion_reference(cam, LSP14, r, m))
    # float32: only threshold-borderline joints may flip
    got32 = self_occlusion(cam.float().to(device), LSP14).cpu()
    assert (got32 != ref).double().mean() < 0.01
    # H36M17 skeleton too
    w17 = torch.randn(3, 4, 17, 3, generator=g, dtype=torch.float64) * 0.4 + torch.tensor([0, 0, 3.0],
                                                                                          dtype=torch.float64)
    assert torch.equal(self_occlusion(w17.to(device), H36M17).cpu(), self_occlusion_reference(w17, H36M17))


def test_self_occlusion_batched_empty_and_no_mutation(device):
    g = torch.Generator().manual_seed(9)
    cam = (torch.randn(6, 14, 3, generator=g) * 0.4 + torch.tensor([0, 0, 3.0])).to(device)
    before = cam.clone()
    version = cam._version
    full = self_occlusion(cam, LSP14)
    assert cam._version == version
    torch.testing.assert_close(cam, before)
    for i in range(6):
        assert torch.equal(self_occlusion(cam[i], LSP14), full[i])
    assert self_occlusion(cam.reshape(2, 3, 14, 3), LSP14).shape == (2, 3, 14)
    # chunked path (a fixed number of view chunks) equals the one-chunk path
    import gpumosaic.occlusion as occlusion_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(occlusion_module, "_CHUNK", {})
        mp.setattr(occlusion_module, "_CHUNK_DEFAULT", 4)
        assert torch.equal(self_occlusion(cam.reshape(2, 3, 14, 3), LSP14), full.reshape(2, 3, 14))
    assert self_occlusion(cam[:0], LSP14).shape == (0, 14)
    with pytest.raises(ValueError, match="finite"):
        bad = cam.clone()
        bad[0, 0, 0] = float("nan")
        self_occlusion(bad, LSP14)
    with pytest.raises(ShapeError):
        self_occlusion(cam[..., :2], LSP14)
    with pytest.raises(ValueError, match="limb_radius"):
        self_occlusion(cam, LSP14, limb_radius=-1.0)


# ----------------------------------------------------------------------------------------------- render


def test_render_views_against_opencv(device):
    g = torch.Generator().manual_seed(10)
    M, V = 3, 6
    world = _random_world_poses(M, g) + torch.tensor([0.5, -1.0, 1.0], dtype=torch.float64)
    az, el = sample_views(M, V, torch.Generator().manual_seed(11), dtype=torch.float64)
    focal = torch.rand(M, V, generator=g, dtype=torch.float64) * 500 + 500
    vb = render_views(world.to(device), LSP14, az.to(device), el.to(device), distance=4.0, focal=focal.to(device))
    assert isinstance(vb, ViewBatch) and isinstance(vb.cameras, Cameras)
    assert vb.pose2d.shape == (M, V, 14, 2) and vb.pose3d.shape == (M, V, 14, 3)
    assert vb.occluded.shape == (M, V, 14) and vb.occluded.dtype == torch.bool
    for f in ("azimuth", "elevation", "distance", "focal"):
        assert getattr(vb.cameras, f).shape == (M, V)
    assert vb.cameras.cam_from_world_R.shape == (M, V, 3, 3) and vb.cameras.cam_from_world_t.shape == (M, V, 3)
    for x in (vb.pose2d, vb.pose3d):
        assert torch.isfinite(x).all() and x.device.type == device.type
    torso = [J["r_shoulder"], J["l_shoulder"], J["r_hip"], J["l_hip"]]
    R = vb.cameras.cam_from_world_R.cpu().numpy()
    t = vb.cameras.cam_from_world_t.cpu().numpy()
    for m in range(M):
        centre_w = world[m, torso].numpy().mean(0)
        for v in range(V):
            R_ref, t_ref = _look_at_numpy(centre_w, float(az[m, v]), float(el[m, v]), 4.0)
            np.testing.assert_allclose(R[m, v], R_ref, atol=1e-10)
            np.testing.assert_allclose(t[m, v], t_ref, atol=1e-10)
            f = float(focal[m, v])
            K = np.array([[f, 0, 0], [0, f, 0], [0, 0, 1.0]])
            rvec, _ = cv2.Rodrigues(R_ref)
            ref2d, _ = cv2.projectPoints(world[m].numpy(), rvec, t_ref, K, np.zeros(5))
            np.testing.assert_allclose(vb.pose2d[m, v].cpu().numpy(), ref2d[:, 0], atol=1e-6)
            cam = world[m].numpy() @ R_ref.T + t_ref
            np.testing.assert_allclose(vb.pose3d[m, v].cpu().numpy(), cam - cam[torso].mean(0), atol=1e-10)
            # the camera looks at the torso centre from `distance`
            np.testing.assert_allclose(cam[torso].mean(0), [0, 0, 4.0], atol=1e-10)
            np.testing.assert_allclose(vb.cameras.centre[m, v].cpu().numpy(),
                                       -R_ref.T @ t_ref, atol=1e-10)
    cam_all = torch.einsum("mvij,mkj->mvki", vb.cameras.cam_from_world_R.cpu(), world) \
        + vb.cameras.cam_from_world_t.cpu()[:, :, None]
    assert torch.equal(vb.occluded.cpu(), self_occlusion_reference(cam_all, LSP14))
    # JSON-friendly cameras, to(), detach()
    d = vb.cameras.as_dict()
    json.dumps(d)
    assert set(d) == {"azimuth", "elevation", "distance", "focal", "cam_from_world_R", "cam_from_world_t"}
    assert vb.to("cpu").pose2d.device.type == "cpu" and vb.detach().cameras.focal.shape == (M, V)


def test_render_views_dtype_defaults_and_errors():
    g = torch.Generator().manual_seed(12)
    world = _random_world_poses(2, g).float()
    az, el = sample_views(2, 180, torch.Generator().manual_seed(13))
    vb = render_views(world, LSP14, az, el)
    assert vb.pose2d.dtype == torch.float32 and torch.isfinite(vb.pose2d).all()
    assert torch.all(vb.cameras.distance == 5.0) and torch.all(vb.cameras.focal == 1000.0)
    # float32 agrees with a float64 run
    vb64 = render_views(world.double(), LSP14, az.double(), el.double())
    torch.testing.assert_close(vb.pose2d.double(), vb64.pose2d, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(vb.pose3d.double(), vb64.pose3d, atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeError):
        render_views(world, LSP14, az[:, :3], el)
    with pytest.raises(ValueError, match="behind"):
        render_views(world * 20, LSP14, az, el, distance=1.0)
    with pytest.raises(ValueError, match="finite"):
        render_views(world, LSP14, az, el * float("nan"))
    with pytest.raises(ValueError, match="elevation"):
        render_views(world, LSP14, az, el + 100)
    with pytest.raises(ShapeError, match="J=14"):
        render_views(world[:, :13], LSP14, az, el)


def test_cuda_vs_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(14)
    world = _random_world_poses(4, g).float()
    az, el = sample_views(4, 16, torch.Generator().manual_seed(15))
    a = render_views(world, LSP14, az, el)
    b = render_views(world.cuda(), LSP14, az.cuda(), el.cuda()).to("cpu")
    torch.testing.assert_close(a.pose2d, b.pose2d, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(a.pose3d, b.pose3d, atol=1e-5, rtol=1e-5)
    assert (a.occluded != b.occluded).double().mean() < 0.01


def test_self_occlusion_is_left_right_symmetric(device):
    """Mirroring the scene (x -> -x in the camera frame, left/right joints swapped) mirrors the flags."""
    g = torch.Generator().manual_seed(11)
    world = _random_world_poses(10, g)
    az, el = sample_views(10, 6, torch.Generator().manual_seed(12), dtype=torch.float64)
    R, t = look_at(torso_centre(world, LSP14)[:, None].expand(10, 6, 3), az, el, 2.5)
    cam = (torch.einsum("mvij,mkj->mvki", R, world) + t[:, :, None]).to(device)
    mirrored = cam * torch.tensor([-1.0, 1.0, 1.0], dtype=cam.dtype, device=device)
    flip = LSP14.flip_tensor(device)
    occ = self_occlusion(cam, LSP14)
    occ_m = self_occlusion(mirrored[..., flip, :], LSP14)
    assert occ.any()
    assert torch.equal(occ_m, occ[..., flip])
