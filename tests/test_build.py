"""Pool building (crops against OpenCV), the memory figure, the source registry, and the diversity subset
against a plain greedy loop."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from gpumosaic.skeleton import LSP14
from gpumosaic.sources.base import Mocap3D, Pool2D
from gpumosaic.pools import build_pool, crop_people, crop_people_reference, load_pool, pool_memory_bytes
from gpumosaic.sources.build import Annotations2D, LoadReport, load_mocap, parse_source
from gpumosaic.sources.subset import diversity_subset, diversity_subset_reference, subset_mocap


def smooth_image(h, w, seed, channels=3):
    """Low-frequency RGB in [0, 1] (small gradients: OpenCV's 1/32 px sample quantisation stays negligible)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for _ in range(channels):
        fx, fy, ph = rng.uniform(0.01, 0.03), rng.uniform(0.01, 0.03), rng.uniform(0, 6)
        chans.append(0.5 + 0.4 * np.sin(fx * x + ph) * np.cos(fy * y - ph))
    return np.stack(chans, -1)


def random_joints(rng, n, h, w, inside=0.8):
    lo = np.array([w, h]) * (1 - inside) / 2
    return rng.uniform(lo, np.array([w, h]) - lo, size=(n, 14, 2))


# --------------------------------------------------------------------------------------------------------
# crop_people
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", ["reflection", "border", "zeros"])
def test_crop_people_matches_opencv(device, padding_mode):
    rng = np.random.default_rng(0)
    imgs = np.stack([smooth_image(90, 120, s) for s in range(4)]).transpose(0, 3, 1, 2)
    images = torch.from_numpy(imgs).float().to(device)
    joints = torch.from_numpy(random_joints(rng, 4, 90, 120, inside=1.2)).float().to(device)  # crops leave the image
    before = (images._version, joints._version, images.clone(), joints.clone())
    out = crop_people(images, joints, size=48, padding_mode=padding_mode)
    ref = crop_people_reference(images.cpu(), joints.cpu(), size=48, padding_mode=padding_mode)
    assert out.images.shape == (4, 3, 48, 48) and out.images.device.type == device.type
    assert out.images.dtype == torch.float32 and bool(torch.isfinite(out.images).all())
    torch.testing.assert_close(out.images.cpu(), ref.images, atol=2e-3, rtol=0)
    torch.testing.assert_close(out.joints.cpu(), ref.joints, atol=1e-3, rtol=0)
    assert images._version == before[0] and joints._version == before[1]
    assert torch.equal(images, before[2]) and torch.equal(joints, before[3])
    # The square: longer side of the joints' box = S - 2·margin, centred on ((S-1)/2, (S-1)/2).
    lo, hi = out.joints.amin(1), out.joints.amax(1)
    torch.testing.assert_close((hi - lo).amax(-1).cpu(), torch.full((4,), 48 - 2 * 4.8), atol=1e-3, rtol=0)
    torch.testing.assert_close(((lo + hi) / 2).cpu(), torch.full((4, 2), 23.5), atol=1e-3, rtol=0)


def test_crop_people_uint8(device):
    rng = np.random.default_rng(1)
    imgs = np.stack([smooth_image(64, 64, s) for s in range(2)]).transpose(0, 3, 1, 2)
    u8 = torch.from_numpy(np.rint(imgs * 255).astype(np.uint8)).to(device)
    joints = torch.from_numpy(random_joints(rng, 2, 64, 64)).float().to(device)
    out = crop_people(u8, joints, size=32)
    ref = crop_people_reference(u8.cpu(), joints.cpu(), size=32)
    assert out.images.dtype == torch.uint8
    assert int((out.images.cpu().int() - ref.images.int()).abs().max()) <= 1


def test_crop_people_exceptions():
    with pytest.raises(ValueError, match="Expected images of shape"):
        crop_people(torch.zeros(2, 4, 8, 8), torch.zeros(2, 14, 2))
    with pytest.raises(ValueError, match="Expected joints of shape"):
        crop_people(torch.zeros(2, 3, 8, 8), torch.zeros(3, 14, 2))


# --------------------------------------------------------------------------------------------------------
# build_pool
# --------------------------------------------------------------------------------------------------------


def _report(n):
    return LoadReport(source="test", kind="test", total=n, kept=n)


def _annotations(joints, paths):
    joints = torch.as_tensor(np.asarray(joints), dtype=torch.float32)
    n = joints.shape[0]
    return Annotations2D(joints=joints, visible=torch.ones(n, 14, dtype=torch.bool), image_paths=tuple(paths),
                         skeleton=LSP14, ids=torch.arange(10, 10 + n), report=_report(n))


def _write_png(path, rgb01):
    u8 = np.rint(rgb01 * 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))
    return u8


@pytest.mark.parametrize("padding_mode", ["reflection", "border", "zeros"])
def test_build_pool_images_of_different_sizes(tmp_path, device, padding_mode):
    """Several people per image, images of different sizes in one chunk, crops reaching far out of their
    image: each crop equals OpenCV's crop with the same border rule, and its content box the plain loop's."""
    rng = np.random.default_rng(2)
    sizes = [(70, 100), (110, 60), (90, 90)]
    files, decoded = [], []
    for k, (h, w) in enumerate(sizes):
        files.append(tmp_path / f"img{k}.png")
        decoded.append(_write_png(files[-1], smooth_image(h, w, 10 + k)))
    owner = [0, 0, 1, 2, 1, 2, 0]
    joints = np.stack([random_joints(rng, 1, *sizes[i], inside=1.1)[0] for i in owner])
    joints[3] = joints[3] * 0.3 + 60  # a small person near the bottom right of a large image: small margins
    joints[4] = joints[4] * 0.25  # a small person in the top left corner: its square leaves the image by far
    ann = _annotations(joints, [files[i] for i in owner])
    pool = build_pool(ann, size=40, device=device, chunk=4, antialias=False, padding_mode=padding_mode)
    assert isinstance(pool, Pool2D) and pool.images.dtype == torch.uint8 and pool.images.shape == (7, 3, 40, 40)
    assert pool.images.device.type == device.type and pool.ids.tolist() == list(range(10, 17))
    assert pool.content_box.shape == (7, 4) and pool.content_box.device.type == device.type
    partial = 0
    for e, i in enumerate(owner):
        img = torch.from_numpy(decoded[i]).permute(2, 0, 1)[None]
        ref = crop_people_reference(img, torch.from_numpy(joints[e : e + 1]).float(), size=40,
                                    padding_mode=padding_mode)
        assert int((pool.images[e].cpu().int() - ref.images[0].int()).abs().max()) <= 1
        torch.testing.assert_close(pool.joints[e].cpu(), ref.joints[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(pool.content_box[e].cpu(), ref.content_box[0], atol=0, rtol=0)
        partial += bool((ref.content_box[0] != torch.tensor([-0.5, -0.5, 39.5, 39.5])).any())
    assert partial >= 3  # several squares do leave their image


def test_content_box_marks_the_pixels_that_sample_the_image():
    """A constant image warped with zero padding: content pixels keep the constant (bilinear within the image's
    area, at most the half-pixel edge), every pixel outside the box is at least half a pixel out."""
    rng = np.random.default_rng(5)
    images = torch.ones(5, 3, 30, 50)
    joints = torch.from_numpy(random_joints(rng, 5, 30, 50, inside=1.2)).float()
    crops = crop_people(images, joints, size=24, padding_mode="zeros")
    box = crops.content_box
    cols, rows = torch.arange(24.0), torch.arange(24.0)
    for b in range(5):
        x0, y0, x1, y1 = box[b].tolist()
        assert all(v % 1 == 0.5 for v in (x0, y0, x1, y1))  # whole stored pixels
        inside = ((cols >= x0) & (cols <= x1))[None, :] & ((rows >= y0) & (rows <= y1))[:, None]
        value = crops.images[b, 0]
        assert (value[inside] >= 0.5 - 1e-5).all()  # within [-0.5, W - 0.5]: at least half the constant
        assert (value[~inside] <= 0.5 + 1e-5).all()  # beyond it: more than half a pixel out, below half
    assert (box != torch.tensor([-0.5, -0.5, 23.5, 23.5])).any(1).sum() >= 3  # most squares leave the image
    joints = torch.from_numpy(random_joints(rng, 2, 30, 50, inside=0.2)).float()
    whole = crop_people(images[:2], joints, size=24)
    torch.testing.assert_close(whole.content_box, torch.tensor([[-0.5, -0.5, 23.5, 23.5]] * 2))


def test_build_pool_antialias_is_a_box_filter_then_the_warp(tmp_path):
    """A crop shrinking by > 2x first averages k×k blocks (k = floor(1/scale)): OpenCV INTER_AREA + warpAffine."""
    rng = np.random.default_rng(3)
    h, w = 240, 200  # multiples of k below, so INTER_AREA needs no border handling
    img = _write_png(tmp_path / "big.png", rng.uniform(0, 1, size=(h, w, 3)))  # noise: aliasing-prone
    joints = random_joints(rng, 1, h, w, inside=0.9)
    pool = build_pool(_annotations(joints, [tmp_path / "big.png"]), size=48, antialias=True)
    scale = (48 - 2 * 4.8) / float((joints[0].max(0) - joints[0].min(0)).max())
    k = int(np.floor(1 / scale))
    assert k >= 2 and h % k == 0 and w % k == 0
    small = cv2.resize(img.astype(np.float32), (w // k, h // k), interpolation=cv2.INTER_AREA)
    # reduced pixel u' has its centre at original x = k·u' + (k-1)/2
    lo, hi = joints[0].min(0), joints[0].max(0)
    t = (48 - 1) / 2 - scale * (lo + hi) / 2
    m = np.array([[scale * k, 0, scale * (k - 1) / 2 + t[0]], [0, scale * k, scale * (k - 1) / 2 + t[1]]])
    ref = cv2.warpAffine(small, m, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    diff = np.abs(pool.images[0].permute(1, 2, 0).numpy().astype(np.float64) - ref)
    assert diff.max() <= 3.0  # uint8 rounding of the reduced image and of the output, OpenCV's 1/32 px steps
    plain = build_pool(_annotations(joints, [tmp_path / "big.png"]), size=48, antialias=False)
    # Averaging k×k blocks of noise lowers the variance; bilinear sampling alone keeps most of it.
    assert pool.images.float().std() < 0.8 * plain.images.float().std()


def test_build_pool_errors(tmp_path):
    ann = _annotations(np.full((1, 14, 2), 5.0) + np.arange(14)[:, None], [None])
    with pytest.raises(ValueError, match="no image path"):
        build_pool(ann)
    ann = _annotations(np.full((1, 14, 2), 5.0) + np.arange(14)[:, None], [tmp_path / "missing.png"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        build_pool(ann)


def test_pool_memory_bytes():
    n, s = 80_000, 160
    assert pool_memory_bytes() == n * 3 * s * s + n * 14 * 2 * 4 + n * 8
    assert pool_memory_bytes(n, 160) - n * 14 * 8 - n * 8 == 6_144_000_000
    assert pool_memory_bytes(n, 220, joints=0) - n * 8 == 80_000 * 3 * 220 * 220
    with pytest.raises(ValueError, match="Expected n >= 0"):
        pool_memory_bytes(-1)


# --------------------------------------------------------------------------------------------------------
# Registry: KIND:PATH
# --------------------------------------------------------------------------------------------------------


def test_parse_source():
    assert parse_source("LSP:/data/lsp") == ("lsp", Path("/data/lsp"))
    assert parse_source("bvh:walk:1.bvh") == ("bvh", Path("walk:1.bvh"))
    with pytest.raises(ValueError, match="Expected a source as KIND:PATH"):
        parse_source("/data/lsp")


def test_load_pool_and_mocap_from_files(tmp_path, device):
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    xy = random_joints(rng, 3, 80, 60)
    for i in range(3):
        _write_png(tmp_path / "images" / f"im{i + 1:04d}.png", smooth_image(80, 60, i))
    joints = np.concatenate([xy.transpose(2, 1, 0), np.zeros((1, 14, 3))], 0)
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    pool = load_pool("lsp", tmp_path, size=32, device=device)
    assert pool.images.shape == (3, 3, 32, 32) and pool.skeleton is LSP14
    assert pool.images.device.type == device.type
    torch.testing.assert_close(pool.joints.cpu(), crop_people_reference(
        torch.zeros(3, 3, 80, 60), torch.from_numpy(xy).float(), size=32).joints, atol=1e-3, rtol=0)
    row = [0.03, 0, 0.9, 0, 1, 0, 0, 0] + [1, 0, 0, 0] * 2 + [1, 0, 0, 0, 0] + [1, 0, 0, 0] * 2 + [0] \
        + [1, 0, 0, 0, 0] + [1, 0, 0, 0] * 2 + [0]
    (tmp_path / "clip.txt").write_text(json.dumps({"Frames": [row, row]}))
    mocap = load_mocap("deepmimic", tmp_path / "clip.txt", device=device)
    assert isinstance(mocap, Mocap3D) and mocap.poses.shape == (2, 14, 3)
    assert mocap.poses.device.type == device.type
    with pytest.raises(ValueError, match="Unknown pool kind 'png'"):
        load_pool("png", tmp_path)
    with pytest.raises(ValueError, match="Unknown mocap kind 'fbx'"):
        load_mocap("fbx", tmp_path)


# --------------------------------------------------------------------------------------------------------
# Diversity subset
# --------------------------------------------------------------------------------------------------------


def clustered_poses(n, seed, noise=0.003, dtype=torch.float64):
    """Poses along three motions (pose A blending into pose B, as consecutive mocap frames do), slightly
    noisy, translated randomly: the subset keeps some and rejects many."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(3, 14, 3, generator=g, dtype=dtype) * 0.3
    end = start + torch.randn(3, 14, 3, generator=g, dtype=dtype) * 0.2
    pick = torch.randint(0, 3, (n,), generator=g)
    t = torch.rand(n, 1, 1, generator=g, dtype=dtype)
    poses = start[pick] + t * (end[pick] - start[pick]) + torch.randn(n, 14, 3, generator=g, dtype=dtype) * noise
    return poses + torch.randn(n, 1, 3, generator=g, dtype=dtype) * 2.0  # global translation: aligned away


@pytest.mark.parametrize("rule,threshold", [("max", None), ("mean", None), ("max", 0.09), ("mean", 0.03)])
@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_diversity_subset_matches_greedy_loop(device, rule, threshold, block):
    poses = clustered_poses(300, seed=5)
    ref = diversity_subset_reference(poses, LSP14, threshold, rule)
    assert 10 < len(ref) < 200  # the fixture exercises both keeping and rejecting
    fast = diversity_subset(poses.to(device), LSP14, threshold, rule, block=block, chunk=16)
    assert fast.device.type == device.type and fast.dtype == torch.long
    assert torch.equal(fast.cpu(), ref)


def test_diversity_subset_properties(device):
    poses = clustered_poses(200, seed=6).to(device)
    before = poses.clone()
    keep = diversity_subset(poses, LSP14)
    assert torch.equal(poses, before) and int(keep[0]) == 0
    # Kept poses pairwise differ by >= 5 cm at some joint after torso alignment; a rejected pose does not.
    torso = list(LSP14.torso)
    aligned = poses - poses[:, torso].mean(1, keepdim=True)
    d = (aligned[:, None] - aligned[None]).norm(dim=-1).amax(-1)  # (M, M)
    k = keep
    off = ~torch.eye(len(k), dtype=torch.bool, device=device)
    assert bool((d[k][:, k][off] >= 0.05).all())
    rejected = torch.ones(len(poses), dtype=torch.bool, device=device)
    rejected[k] = False
    assert bool((d[rejected][:, k] < 0.05).any(1).all())
    mocap = Mocap3D(poses=poses.float(), ids=torch.arange(100, 300, device=device))
    sub = subset_mocap(mocap)
    assert torch.equal(sub.ids, mocap.ids[diversity_subset(mocap.poses, LSP14)])


def test_diversity_subset_exceptions():
    with pytest.raises(ValueError, match="Expected rule in"):
        diversity_subset(torch.zeros(3, 14, 3), rule="median")
    with pytest.raises(ValueError, match="J=14"):
        diversity_subset(torch.zeros(3, 17, 3))
    with pytest.raises(ValueError, match="Expected finite values in poses"):
        diversity_subset(torch.full((3, 14, 3), float("nan")))
