"""Camera roll (gpumosaic.roll), its training option and the expected-pose decoding, against independent
references: OpenCV's projection of a rolled camera, OpenCV's image rotation, a plain loop."""

import cv2
import numpy as np
import pytest
import torch

from gpumosaic.camera import render_views, view_angles
from gpumosaic.classes import PoseClasses
from gpumosaic.dataset import OnlineMosaicDataset
from gpumosaic.realcrops import real_crops
from gpumosaic.roll import has_roll, roll_affine, roll_views, view_rolls
from gpumosaic.settings import MosaicSettings, ViewSettings
from gpumosaic.skeleton import LSP14
from gpumosaic.sources import load_demo_mocap, load_demo_pool
from gpumosaic.sources.base import Pool2D
from gpumosaic.sources.select import select_mocap, select_pool
from gpumosaic.train import class_training_poses, preset, prepare_data, real_batch


def test_roll_settings_validated():
    assert not has_roll(ViewSettings()) and has_roll(ViewSettings(roll_range=(-30, 30)))
    for bad in ((10, -10), (-200, 0), (0, float("nan")), "ab"):
        with pytest.raises(ValueError, match="roll_range"):
            ViewSettings(roll_range=bad)


def test_roll_views_match_opencv_projection_of_rolled_camera():
    mocap = load_demo_mocap()
    poses = mocap.poses[:3].double()
    az = torch.tensor([[10.0, 200.0], [95.0, 300.0], [0.0, 45.0]], dtype=torch.float64)
    el = torch.tensor([[5.0, -30.0], [40.0, 0.0], [-10.0, 20.0]], dtype=torch.float64)
    level = render_views(poses, mocap.skeleton, az, el)
    roll = torch.tensor([[25.0, -40.0], [170.0, 3.0], [0.0, -90.0]], dtype=torch.float64)
    rolled = roll_views(level, roll)
    for m in range(3):
        for v in range(2):
            r = np.deg2rad(float(roll[m, v]))
            # the rolled camera's axes, written independently: x' = cos r x + sin r y, y' = -sin r x + cos r y
            q = np.array([[np.cos(r), np.sin(r), 0], [-np.sin(r), np.cos(r), 0], [0, 0, 1.0]])
            R = q @ level.cameras.cam_from_world_R[m, v].numpy()
            t = q @ level.cameras.cam_from_world_t[m, v].numpy()
            f = float(level.cameras.focal[m, v])
            k = np.array([[f, 0, 0], [0, f, 0], [0, 0, 1.0]])
            uv, _ = cv2.projectPoints(poses[m].numpy(), cv2.Rodrigues(R)[0], t, k, None)
            np.testing.assert_allclose(rolled.pose2d[m, v].numpy(), uv[:, 0], atol=1e-6)
            cam = poses[m].numpy() @ R.T + t
            centre = cam[[LSP14.names.index(n) for n in ("r_shoulder", "l_shoulder", "r_hip", "l_hip")]].mean(0)
            np.testing.assert_allclose(rolled.pose3d[m, v].numpy(), cam - centre, atol=1e-9)
    assert torch.equal(rolled.occluded, level.occluded)
    # rolling by 0 changes nothing, and a roll then its opposite comes back
    torch.testing.assert_close(roll_views(level, torch.zeros_like(roll)).pose2d, level.pose2d)
    torch.testing.assert_close(roll_views(rolled, -roll).pose3d, level.pose3d)


def test_view_rolls_are_hashed_uniform_and_independent_of_angles():
    s = ViewSettings(roll_range=(-30.0, 30.0))
    m = torch.arange(400)[:, None].expand(400, 5)
    v = torch.arange(5)[None].expand(400, 5)
    r = view_rolls(m, v, 7, s)
    assert r.min() >= -30 and r.max() <= 30 and abs(float(r.mean())) < 1.5
    assert torch.equal(r, view_rolls(m, v, 7, s)) and not torch.equal(r, view_rolls(m, v, 8, s))
    az, el = view_angles(m, v, 7, s)
    assert abs(float(torch.corrcoef(torch.stack([r.flatten(), el.flatten()]))[0, 1])) < 0.1
    assert torch.equal(view_rolls(m, v, 7, ViewSettings()), torch.zeros(400, 5))


def test_dataset_with_roll_turns_query_poses_and_level_default_unchanged():
    pool = select_pool(load_demo_pool(), "row=0-11")
    mocap = select_mocap(load_demo_mocap(), "subject=0,frame=0-5")
    kw = dict(device="cpu", seed=3, engine=MosaicSettings(size=48), drop_last=True, rank=0, world_size=1)
    level = OnlineMosaicDataset(pool, mocap, 4, views=ViewSettings(views_per_pose=2), **kw)
    rolled = OnlineMosaicDataset(pool, mocap, 4, views=ViewSettings(views_per_pose=2, roll_range=(-45, 45)), **kw)
    idx = torch.arange(4)
    a, b = level.synthesise(idx), rolled.synthesise(idx)
    # the torso's direction (mid-hip -> mid-shoulder) turns by the pair's roll, as displayed counter-clockwise
    roll = view_rolls(idx // 2, idx % 2, 3, rolled.views)

    def axis_angle(p):
        n = LSP14.names
        hip = (p[:, n.index("r_hip")] + p[:, n.index("l_hip")]) / 2
        sh = (p[:, n.index("r_shoulder")] + p[:, n.index("l_shoulder")]) / 2
        d = sh - hip
        return torch.rad2deg(torch.atan2(-d[:, 1], d[:, 0]))  # y down: counter-clockwise positive

    turn = (axis_angle(b.pose2d) - axis_angle(a.pose2d) + 180) % 360 - 180
    torch.testing.assert_close(turn, roll, atol=1e-3, rtol=0)
    # class-fitting poses follow the same cameras as the stream
    p3, _ = class_training_poses(rolled, 2)
    torch.testing.assert_close(p3[:4], b.pose3d, atol=1e-5, rtol=0)


def test_real_crops_roll_matches_opencv_rotation():
    pool = load_demo_pool().subset(torch.arange(2))
    idx = torch.arange(2)
    roll = torch.tensor([30.0, -75.0])
    img, p2 = real_crops(pool, idx, 64, roll=roll)
    # reference: rotate the stored image with OpenCV about the joints' mean, then crop without roll
    rot_images, rot_joints = [], []
    for i in range(2):
        arr = pool.images[i].permute(1, 2, 0).numpy()
        c = pool.joints[i].double().mean(0).numpy()
        # cv2's angle is counter-clockwise as displayed, like a positive roll here
        m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), float(roll[i]), 1.0)
        rot_images.append(torch.from_numpy(cv2.warpAffine(arr, m, arr.shape[1::-1], flags=cv2.INTER_LINEAR,
                                                          borderMode=cv2.BORDER_REPLICATE)).permute(2, 0, 1))
        rot_joints.append(torch.from_numpy(pool.joints[i].double().numpy() @ m[:, :2].T + m[:, 2]).float())
        np.testing.assert_allclose(roll_affine(roll[i].double(), torch.from_numpy(c)).numpy(), m, atol=1e-9)
    ref = Pool2D(images=torch.stack(rot_images), joints=torch.stack(rot_joints), ids=pool.ids)
    ref_img, ref_p2 = real_crops(ref, idx, 64)
    torch.testing.assert_close(p2, ref_p2, atol=1e-3, rtol=0)
    # two resamplings (OpenCV, then the crop) against one: compare away from the stored image's border
    inner = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert float((img[inner] - ref_img[inner]).abs().mean()) < 0.03


def test_train_roll_option_draws_rolls_after_flips():
    pool = select_pool(load_demo_pool(), "row=0-11")
    mocap = select_mocap(load_demo_mocap(), "subject=0,frame=0-5")
    base = preset("cpu", mode="R", size=32, classes=4, views=2, class_views=2, batch_size=5, steps=2)
    level = prepare_data(base, pool, mocap)
    rolled = prepare_data(preset("cpu", mode="R", size=32, classes=4, views=2, class_views=2, batch_size=5,
                                 steps=2, roll=30.0), pool, mocap, classes=level.classes)
    a, b = real_batch(level, 1), real_batch(rolled, 1)
    assert not torch.allclose(a["pose2d"], b["pose2d"])
    # undo each sample's roll: the rolled crop's joints are the level crop's, turned about their mean
    # and fitted to the box again: pairwise distances keep their ratios
    da = torch.cdist(a["pose2d"], a["pose2d"])
    db = torch.cdist(b["pose2d"], b["pose2d"])
    ratio = db.flatten(1).sum(-1) / da.flatten(1).sum(-1)
    torch.testing.assert_close(db, da * ratio[:, None, None], atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="roll"):
        preset("cpu", roll=-1.0)


def test_decode_expected_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    k = 6
    classes = PoseClasses(centres=torch.randn(k, 14, 3, generator=g), mean_pose3d=torch.randn(k, 14, 3, generator=g),
                          mean_pose2d=torch.rand(k, 14, 2, generator=g) * 200, counts=torch.ones(k, dtype=torch.long))
    prob = torch.softmax(torch.randn(4, k, generator=g), -1)
    p3, p2 = classes.decode_expected(prob)
    for b in range(4):
        want2 = sum(float(prob[b, c]) * classes.mean_pose2d[c] for c in range(k))
        want3 = sum(float(prob[b, c]) * classes.mean_pose3d[c] for c in range(k))
        torch.testing.assert_close(p2[b], want2, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(p3[b], want3, atol=1e-5, rtol=1e-5)
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 5]), k).float()
    torch.testing.assert_close(classes.decode_expected(one_hot)[1], classes.decode(torch.tensor([2, 5]))[1])
    with pytest.raises(ValueError, match="prob"):
        classes.decode_expected(prob[:, :3])
    # a class without members (zero placeholder means) gets no weight: the others are renormalised
    empty = PoseClasses(centres=classes.centres, mean_pose3d=classes.mean_pose3d.clone(),
                        mean_pose2d=classes.mean_pose2d.clone(), counts=torch.tensor([1, 1, 0, 1, 1, 1]))
    p3e, p2e = empty.decode_expected(prob)
    keep = prob * torch.tensor([1.0, 1, 0, 1, 1, 1])
    for b in range(4):
        w = keep[b] / keep[b].sum()
        want2 = sum(float(w[c]) * classes.mean_pose2d[c] for c in range(k) if c != 2)
        torch.testing.assert_close(p2e[b], want2, atol=1e-4, rtol=1e-5)


def test_cli_export_roll(tmp_path):
    import json

    from gpumosaic.cli import main

    demo = ["--pool", "demo", "--mocap", "demo"]
    common = ["--n", "4", "--shard-size", "4", "--batch-size", "4", "--device", "cpu", "--size", "48",
              "--views-per-pose", "2", "--quiet", *demo]
    with pytest.raises(SystemExit, match="roll_range"):
        main(["export", "--out", str(tmp_path / "bad"), *common, "--roll", "10", "-10"])
    main(["export", "--out", str(tmp_path / "level"), *common])
    main(["export", "--out", str(tmp_path / "rolled"), *common, "--roll", "-30", "30"])

    def cameras(folder):
        import tarfile

        shard = sorted(folder.glob("*.tar"))[0]
        with tarfile.open(shard) as tar:
            recs = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
        return [r for r in recs if "cameras" in r or "camera" in r]

    level, rolled = cameras(tmp_path / "level"), cameras(tmp_path / "rolled")
    assert len(level) == len(rolled) == 4 and level != rolled


def test_cli_generate_roll_turns_the_level_stream(tmp_path):
    """generate --roll: the same poses and views as the level run, each turned by its drawn roll."""
    import json

    from gpumosaic.cli import main

    common = ["--n", "3", "--batch-size", "3", "--device", "cpu", "--pool", "demo", "--mocap", "demo", "--quiet",
              "--seed", "5"]
    with pytest.raises(SystemExit, match="--roll"):
        main(["generate", "--out", str(tmp_path / "bad"), *common, "--roll", "5", "-5"])
    main(["generate", "--out", str(tmp_path / "level"), *common])
    main(["generate", "--out", str(tmp_path / "rolled"), *common, "--roll", "-40", "40"])
    read = lambda d: [json.loads(line) for line in (tmp_path / d / "annotations.jsonl").read_text().splitlines()]
    level, rolled = read("level"), read("rolled")
    key = next(k for k in ("pose3d", "joints3d") if k in level[0])
    for a, b in zip(level, rolled):
        p, q = torch.tensor(a[key]), torch.tensor(b[key])
        # a roll about the optical axis keeps z and the xy norms, and turns xy by one angle for every joint
        torch.testing.assert_close(q[:, 2], p[:, 2], atol=1e-4, rtol=0)
        torch.testing.assert_close(q[:, :2].norm(dim=-1), p[:, :2].norm(dim=-1), atol=1e-4, rtol=0)
        ang = torch.atan2(q[:, 1], q[:, 0]) - torch.atan2(p[:, 1], p[:, 0])
        ang = (ang + torch.pi) % (2 * torch.pi) - torch.pi
        far = p[:, :2].norm(dim=-1) > 0.1
        assert float(ang[far].max() - ang[far].min()) < 1e-3 and float(ang[far].abs().max()) <= 0.7
