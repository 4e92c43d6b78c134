"""Test sets in each format, the protocol runner and ``gpumosaic evaluate``, on tiny fixture files."""

import json

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from scipy.spatial.transform import Rotation
from torch import nn

import gpumosaic.models as models
from gpumosaic import cli
from gpumosaic.camera import torso_centre
from gpumosaic.checkpoint import (InferenceCheckpoint, load_inference_checkpoint, save_inference_checkpoint)
from gpumosaic.classes import PoseClasses
from gpumosaic.evaluate import paper_joints
from gpumosaic.protocols import (TestPredictions, evaluate_predictions, load_predictions, predict_test_set,
                                 save_predictions)
from gpumosaic.skeleton import H36M17, LSP14, convert
from gpumosaic.testsets import fit_camera, load_test_set


def _pose(shift=(0.0, 0.0), scale=1.0):
    """Upright LSP14 pose whose joints span exactly 50 px wide × 100 px high (before ``scale``)."""
    p = np.array([[30, 100], [32, 80], [35, 60], [45, 60], [48, 80], [50, 100],
                  [10, 55], [15, 45], [25, 30], [55, 30], [60, 45], [60, 55],
                  [40, 27], [40, 0]], dtype=np.float64)
    return p * scale + np.asarray(shift)


def _image(path, h=160, w=120, seed=0):
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _lsp_fixture(tmp_path):
    root = tmp_path / "lsp"
    (root / "images").mkdir(parents=True)
    poses = [_pose((20, 30)), _pose((10, 20), 1.2), _pose((5, 5), 0.5)]
    joints = np.zeros((3, 14, 3))
    for i, p in enumerate(poses):
        joints[:, :, i] = np.c_[p, np.zeros(14)].T  # flag 0 = visible in LSP
        _image(root / "images" / f"im{i + 1:04d}.jpg", seed=i)
    scipy.io.savemat(root / "joints.mat", {"joints": joints})
    return root, poses


def test_lsp_protocol_hand_computed(tmp_path):
    root, poses = _lsp_fixture(tmp_path)
    test = load_test_set("lsp", root)
    assert len(test) == 3 and test.pose3d is None and test.groups.tolist() == [0, 1, 2]
    # Every joint predicted 4 px (image) to the right: on the 220 box that is 4 · 176 / extent px, the joints'
    # longer extent being 100 · scale px (fit_to_box: longer side -> 220 - 2·22).
    pred = TestPredictions(test.annotations.joints + torch.tensor([4.0, 0.0]))
    report = evaluate_predictions(test, pred, n_boot=200)
    expect = np.array([4 * 176 / 100, 4 * 176 / 120, 4 * 176 / 50])
    np.testing.assert_allclose(report.per_entry["error2d_px_13"].numpy(), expect, rtol=1e-5)
    np.testing.assert_allclose(report.per_entry["error2d_px_all"].numpy(), expect, rtol=1e-5)
    assert report.summary["error2d_px_13"].mean == pytest.approx(expect.mean(), rel=1e-5)
    # PCK torso@0.2: torso ||l_shoulder - r_hip|| = ||(55,30)-(35,60)|| = sqrt(20² + 30²) image px (× scale),
    # threshold 0.2 × 36.06 = 7.2 image px (× scale): 4 px off is correct at scale 1 and 1.2, wrong at 0.5
    # (threshold 3.6 px).
    np.testing.assert_allclose(report.per_entry["pck_torso@0.2_all"].numpy(), [1, 1, 0])
    # PCKh@0.5: head segment 27 px (× scale), threshold 13.5 / 16.2 / 6.75 px: all correct
    np.testing.assert_allclose(report.per_entry["pckh@0.5_13"].numpy(), [1, 1, 1])
    assert set(report.per_joint["error2d_px"]) == set(LSP14.names)
    d = report.as_dict()
    json.dumps(d)
    assert d["info"]["joints_13"] == [LSP14.names[k] for k in paper_joints(LSP14)] and "neck" not in d["info"]["joints_13"]
    assert "error2d_px_13" in report.table()
    joints = report.joint_table().splitlines()
    assert len(joints) == 3 + 14 and joints[3].startswith("r_ankle") and "pckh@0.5" in joints[1]


def test_constant_predictions(tmp_path):
    root, poses = _lsp_fixture(tmp_path)
    test = load_test_set("lsp", root)
    from gpumosaic.geometry import fit_to_box
    from gpumosaic.protocols import constant_predictions

    gt_box, _ = fit_to_box(test.annotations.joints.double(), 220)
    # a 110-px box pose (margin 11): on the 220 box it is doubled about the centre
    pose = torch.full((14, 2), 54.5, dtype=torch.float64)
    pose[0] = torch.tensor([60.5, 54.5])
    pred = constant_predictions(test, pose, (110, None), torch.zeros(14, 3))
    report = evaluate_predictions(test, pred, n_boot=20)
    expect = torch.full((14, 2), 109.5, dtype=torch.float64)
    expect[0] = torch.tensor([121.5, 109.5])
    np.testing.assert_allclose(report.per_entry["error2d_px_all"].numpy(),
                               (gt_box - expect).norm(dim=-1).mean(1).numpy(), rtol=1e-5)
    assert pred.pose3d.shape == (3, 14, 3)
    with pytest.raises(ValueError, match="pose2d"):
        constant_predictions(test, torch.zeros(13, 2))


def test_coco_protocol(tmp_path):
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "a.jpg", 200, 200)
    p = _pose((50, 60))
    # COCO keypoints of the same person: 12 limb joints, face around the head; mapped neck/head_top
    coco = np.zeros((17, 3))
    order = (16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9)
    for lsp_j, c in enumerate(order):
        coco[c] = [*p[lsp_j], 2]
    coco[0] = [90, 70, 2]
    coco[3] = [85, 70, 2]
    coco[4] = [95, 70, 2]
    data = {"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"id": 7, "image_id": 1, "iscrowd": 0, "keypoints": coco.ravel().tolist()}]}
    (tmp_path / "person_keypoints_test.json").write_text(json.dumps(data))
    test = load_test_set("coco", tmp_path / "person_keypoints_test.json")
    assert len(test) == 1 and test.annotations.ids.tolist() == [7]
    gt = test.annotations.joints
    report = evaluate_predictions(test, TestPredictions(gt.clone()), n_boot=50)
    assert report.summary["error2d_px_13"].mean == 0.0 and report.summary["pck_torso@0.2_13"].mean == 1.0


def _jsonl_fixture(tmp_path, n=4):
    (tmp_path / "images").mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(n):
        _image(tmp_path / "images" / f"{i:07d}.png", 220, 220, seed=i)
        p2 = _pose((60 + i, 60), 1.0)
        p3 = torch.randn(14, 3, generator=g, dtype=torch.float64) * 0.3
        lines.append({"image": f"images/{i:07d}.png", "skeleton": "lsp14", "pose2d": p2.tolist(),
                      "pose3d": p3.tolist(), "occluded": [False] * 14, "mocap_index": i // 2})
    (tmp_path / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return lines


def test_jsonl_protocol_3d_hand_computed(tmp_path):
    lines = _jsonl_fixture(tmp_path)
    test = load_test_set("jsonl", tmp_path / "annotations.jsonl")
    assert test.groups.tolist() == [0, 0, 1, 1] and test.pose3d.shape == (4, 14, 3)
    gt3 = test.pose3d.double()
    # 3D prediction = rotated ground truth + 1 cm on z: absolute error hand-computed, rigid-aligned error 0
    rot = torch.from_numpy(Rotation.from_euler("y", 30, degrees=True).as_matrix())
    pred3 = gt3 @ rot.T + torch.tensor([0.0, 0.0, 0.01], dtype=torch.float64)
    report = evaluate_predictions(test, TestPredictions(test.annotations.joints.clone(), pred3.float()), n_boot=100)
    sel = list(paper_joints(LSP14))
    expect = ((pred3 - gt3).norm(dim=-1)[:, sel].mean(1) * 1000).numpy()
    np.testing.assert_allclose(report.per_entry["mpjpe_mm_13"].numpy(), expect, rtol=1e-5)
    assert report.summary["pa_mpjpe_mm_13"].mean == pytest.approx(0.0, abs=1e-2)
    assert report.summary["error2d_px_all"].mean == 0.0
    assert report.summary["mpjpe_mm_13"].n == 2  # two instants (mocap poses)
    # class lower bound: classes = the ground truths themselves -> 0 in 3D; 2D means hand-placed in a 220 box
    j = 14
    classes = PoseClasses(centres=gt3.float(), mean_pose3d=gt3.float(),
                          mean_pose2d=torch.zeros(4, j, 2), counts=torch.ones(4, dtype=torch.long))
    report = evaluate_predictions(test, TestPredictions(test.annotations.joints.clone()), classes, n_boot=50)
    assert report.summary["lower_bound3d_mm_13"].mean == pytest.approx(0.0, abs=1e-3)
    assert "mpjpe_mm_13" not in report.summary  # no 3D prediction
    # all class 2D means at the box origin: lower bound = mean distance of the box ground truth to (0, 0)
    from gpumosaic.geometry import fit_to_box

    gt_box, _ = fit_to_box(test.annotations.joints.double(), 220)
    expect2 = gt_box.norm(dim=-1)[:, sel].mean(1).numpy()
    np.testing.assert_allclose(report.per_entry["lower_bound2d_px_13"].numpy(), expect2, rtol=1e-6)


def test_h36m_protocols(tmp_path):
    g = np.random.default_rng(0)
    k_true = np.array([[1145.0, 0, 512.5], [0, 1143.8, 515.4], [0, 0, 1]])
    rot = Rotation.from_euler("xyz", [100, 10, 30], degrees=True).as_matrix()
    t = np.array([0.1, 0.5, 5.0])
    d3, d2 = {}, {}
    for subject in ("S9", "S11"):
        for action in ("Walk", "Sit"):
            frames = 130
            base = g.normal(size=(17, 3)) * 0.3
            world = base + 0.05 * g.normal(size=(frames, 17, 3)) + np.array([0, 0, 1.0])
            d3[f"{subject}/{action}"] = world.astype(np.float32)
            for cam in (0, 1):
                r = rot if cam == 0 else Rotation.from_euler("z", 90, degrees=True).as_matrix() @ rot
                cam_pts = world @ r.T + t
                uv = cam_pts @ k_true.T
                d2[f"{subject}/{action}/{cam}"] = (uv[..., :2] / uv[..., 2:]).astype(np.float32)
    np.savez(tmp_path / "h3d.npz", **d3)
    np.savez(tmp_path / "h2d.npz", **d2)
    p1 = load_test_set("h36m", tmp_path / "h2d.npz", mocap=tmp_path / "h3d.npz", protocol="p1")
    # S11 only, frames 0, 64, 128 of 2 actions × 2 cameras; one instant per (action, frame)
    assert len(p1) == 12 and sorted(set(p1.annotations.ids.tolist())) == [0, 64, 128]
    assert int(torch.unique(p1.groups).numel()) == 6
    # oriented ground truth = camera-frame pose (known R, t) minus its torso centre, in LSP14
    world = convert(torch.from_numpy(d3["S11/Sit"][[0, 64, 128]]).double(), H36M17, LSP14).numpy()
    cam = torch.from_numpy(world @ rot.T + t)
    expect = cam - torso_centre(cam, LSP14)[:, None]
    first = [i for i, p in enumerate(p1.annotations.image_paths)][:3]  # keys sorted: S11/Sit/0 first
    torch.testing.assert_close(p1.pose3d[first].double(), expect, atol=2e-5, rtol=0)
    p2 = load_test_set("h36m", tmp_path / "h2d.npz", mocap=tmp_path / "h3d.npz", protocol="p2")
    assert len(p2) == 2 * 2 * 2 * 130
    report = evaluate_predictions(p1, TestPredictions(p1.annotations.joints.clone(), p1.pose3d.clone()), n_boot=50)
    assert report.summary["mpjpe_mm_13"].mean == pytest.approx(0.0, abs=1e-3)
    assert "pckh@0.5_13" in report.summary  # LSP14 layout (from H36M17: neck = thorax, head_top = head)


def test_fit_camera_recovers_a_known_camera():
    g = np.random.default_rng(1)
    world = g.normal(size=(40, 3))
    k = np.array([[800.0, 0.5, 320], [0, 790, 240], [0, 0, 1]])
    r = Rotation.random(random_state=3).as_matrix()
    t = np.array([0.2, -0.1, 8.0])
    uv = (world @ r.T + t) @ k.T
    k2, r2, t2 = fit_camera(world, uv[:, :2] / uv[:, 2:])
    np.testing.assert_allclose(k2, k, atol=1e-6 * 800)
    np.testing.assert_allclose(r2, r, atol=1e-8)
    np.testing.assert_allclose(t2, t, atol=1e-7)
    with pytest.raises(ValueError, match="M >= 6"):
        fit_camera(world[:5], uv[:5, :2])


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


class _Tiny(nn.Module):
    """A few-kB stand-in for AlexNet with the same ``classifier[6]`` head slot."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), *[nn.Identity() for _ in range(5)], nn.Linear(16, 1000))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture
def tiny_backbone(monkeypatch):
    monkeypatch.setitem(models.BACKBONES, "tiny", _Tiny)
    for table, value in (("_LAST", "classifier.6"), ("MIN_SIZE", 16)):  # per-backbone tables, where present
        if isinstance(getattr(models, table, None), dict):
            monkeypatch.setitem(getattr(models, table), "tiny", value)
    return "tiny"


def tiny_checkpoint(path, k=3, size=64, winner=None, seed=0):
    """A random tiny classifier over k classes (LSP14), saved at ``path``; ``winner`` forces the top class."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = models.PoseClassifier(k, "tiny")
    if winner is not None:
        head = net.net.classifier[6]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.arange(k, dtype=torch.float32) == winner)
    p3 = torch.randn(k, 14, 3, generator=g) * 0.3
    p2 = torch.stack([torch.from_numpy(_pose((85, 10), 2.0)).float() + i for i in range(k)])
    classes = PoseClasses(centres=p3, mean_pose3d=p3, mean_pose2d=p2, counts=torch.ones(k, dtype=torch.long))
    ckpt = InferenceCheckpoint("classifier", "tiny", size, net.state_dict(), classes, class_box=(220, None),
                               settings={"test": True})
    return save_inference_checkpoint(path, ckpt)


def test_checkpoint_round_trip_and_errors(tmp_path, tiny_backbone):
    path = tiny_checkpoint(tmp_path / "c.pt")
    ckpt = load_inference_checkpoint(path)
    assert ckpt.input_size == 64 and ckpt.num_outputs == 3 and ckpt.settings == {"test": True}
    net = ckpt.build_model()
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    assert path.stat().st_size < 200_000
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a gpumosaic inference checkpoint"):
        load_inference_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_inference_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="needs its pose classes"):
        InferenceCheckpoint("classifier", "tiny", 64, {}, None)


def test_other_checkpoint_formats(tmp_path, tiny_backbone):
    ref = load_inference_checkpoint(tiny_checkpoint(tmp_path / "c.pt", k=3, size=64))
    cs = {"centres": ref.classes.centres, "mean_pose3d": ref.classes.mean_pose3d,
          "mean_pose2d": ref.classes.mean_pose2d, "counts": ref.classes.counts, "skeleton": "lsp14"}
    # gpumosaic train's model.pt
    torch.save({"format": "gpumosaic.model", "version": 1, "task": "classifier", "model": ref.state_dict,
                "settings": {"backbone": "tiny", "size": 64, "margin": None, "box_margin": 6.4, "skeleton": "lsp14",
                             "extent_m": 1.0, "num_joints": 14, "steps": 5}, "classes": cs}, tmp_path / "m.pt")
    got = load_inference_checkpoint(tmp_path / "m.pt")
    assert (got.model, got.backbone, got.input_size, got.class_box, got.settings["steps"]) == (
        "classifier", "tiny", 64, (64, 6.4), 5)
    torch.testing.assert_close(got.build_model()(torch.ones(1, 3, 64, 64)), ref.build_model()(torch.ones(1, 3, 64, 64)))
    # examples/train_classifier.py's training checkpoint
    torch.save({"format": "gpumosaic.examples.train_classifier", "version": 1, "step": 7,
                "config": {"backbone": "tiny", "size": 64}, "model": ref.state_dict, "optimizer": {},
                "classes": cs}, tmp_path / "e.pt")
    got = load_inference_checkpoint(tmp_path / "e.pt")
    assert (got.backbone, got.input_size, got.class_box, got.settings["step"]) == ("tiny", 64, (64, None), 7)
    # re-saved as an inference checkpoint
    again = load_inference_checkpoint(save_inference_checkpoint(tmp_path / "i.pt", got))
    assert again.input_size == 64 and again.classes.num_classes == 3


def test_predict_test_set_and_cli(tmp_path, tiny_backbone, capsys):
    _jsonl_fixture(tmp_path)
    ckpt_path = tiny_checkpoint(tmp_path / "c.pt", winner=1)
    ckpt = load_inference_checkpoint(ckpt_path)
    test = load_test_set("jsonl", tmp_path)
    preds = predict_test_set(ckpt, test, batch_size=3, k=2, progress=False)
    reads = []

    def reader(path):
        reads.append(path.name)
        return cv2.imread(str(path))[:, :, ::-1].copy()

    again = predict_test_set(ckpt, test, batch_size=4, progress=False, read_image=reader)
    assert sorted(reads) == [f"{i:07d}.png" for i in range(4)]
    torch.testing.assert_close(again.pose2d, preds.pose2d)
    assert preds.pose2d.shape == (4, 14, 2) and preds.classes[:, 0].tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(preds.pose3d, ckpt.classes.mean_pose3d[1].expand(4, 14, 3))
    # The top-1 2D pose in image pixels, mapped back through the protocol's box, is class 1's mean 2D pose
    # moved from its 220 box into each test person's box: on the 220 box of the ground truth it *is* the mean.
    from gpumosaic.geometry import apply_affine, fit_to_box

    _, box_from_image = fit_to_box(test.annotations.joints.double(), 220)
    torch.testing.assert_close(apply_affine(box_from_image, preds.pose2d.double()).float(),
                               ckpt.classes.mean_pose2d[1].expand(4, 14, 2), atol=1e-3, rtol=0)
    save_predictions(tmp_path / "p.jsonl", preds)
    back = load_predictions(tmp_path / "p.jsonl", test)
    torch.testing.assert_close(back.pose2d, preds.pose2d, atol=1e-3, rtol=0)
    out = tmp_path / "report.json"
    assert cli.main(["evaluate", "--test", f"jsonl:{tmp_path / 'annotations.jsonl'}", "--checkpoint", str(ckpt_path),
                     "--out", str(out), "--n-boot", "100", "--device", "cpu", "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert {"error2d_px_13", "mpjpe_mm_13", "pa_mpjpe_mm_13", "lower_bound2d_px_13", "lower_bound3d_mm_13"} <= set(
        report["summary"])
    assert report["summary"]["lower_bound3d_mm_13"]["mean"] <= report["summary"]["mpjpe_mm_13"]["mean"] + 1e-6
    assert cli.main(["evaluate", "--test", f"jsonl:{tmp_path}", "--predictions", str(tmp_path / "p.jsonl"),
                     "--n-boot", "50"]) == 0
    assert "error2d_px_13" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="predictions for a test set"):
        (tmp_path / "short.jsonl").write_text((tmp_path / "p.jsonl").read_text().splitlines()[0] + "\n")
        cli.main(["evaluate", "--test", f"jsonl:{tmp_path}", "--predictions", str(tmp_path / "short.jsonl")])


# --------------------------------------------------------------------------------------------------------
# Selecting part of a test set (KIND:PATH:SELECTOR)
# --------------------------------------------------------------------------------------------------------


def test_select_test_set_hand_computed(tmp_path):
    from gpumosaic.sources.select import Selection
    from gpumosaic.testsets import select_test_set

    root, poses = _lsp_fixture(tmp_path)  # LSP ids: the 0-based image numbers 0, 1, 2
    full = load_test_set("lsp", root)
    for selector, ids in (("id=0+2", [0, 2]), ("row=1-", [1, 2]), ("frame=1", [1]), ("seq=0,id=2|id=0", [0, 2])):
        test = load_test_set("lsp", root, selection=selector)
        assert test.annotations.ids.tolist() == ids, selector
        np.testing.assert_allclose(test.annotations.joints.numpy(), np.stack([poses[i] for i in ids]), atol=1e-4)
        assert test.groups.tolist() == list(range(len(ids))) and test.name == f"lsp:{root}:{selector}"
        assert [p.name for p in test.annotations.image_paths] == [f"im{i + 1:04d}.jpg" for i in ids]
    test = select_test_set(full, Selection.where(id=range(1, 3)))
    assert test.annotations.ids.tolist() == [1, 2]

    # jsonl: ids = line numbers 0..3, groups = mocap_index [0, 0, 1, 1], renumbered over the kept entries
    (tmp_path / "j").mkdir()
    _jsonl_fixture(tmp_path / "j", n=4)
    full = load_test_set("jsonl", tmp_path / "j")
    test = load_test_set("jsonl", tmp_path / "j", selection="id=1-2")
    assert test.annotations.ids.tolist() == [1, 2] and test.groups.tolist() == [0, 1]
    torch.testing.assert_close(test.pose3d, full.pose3d[1:3])
    test = load_test_set("jsonl", tmp_path / "j", selection="id=2-3")
    assert test.groups.tolist() == [0, 0]  # one mocap pose seen twice: still one instant

    with pytest.raises(ValueError,
                       match=r"Selection 'id=50-60' keeps none of the 3 entries of test set lsp:.*ids 0\.\.2"):
        load_test_set("lsp", root, selection="id=50-60")
    with pytest.raises(ValueError, match="KEY=RANGES"):
        load_test_set("lsp", root, selection="image=1")


# BODY_25B index of each LSP14 joint, from the names of OpenPose's BODY_25B model (0 Nose, 1 LEye, 2 REye,
# 3 LEar, 4 REar, 5 LShoulder, 6 RShoulder, 7 LElbow, 8 RElbow, 9 LWrist, 10 RWrist, 11 LHip, 12 RHip, 13 LKnee,
# 14 RKnee, 15 LAnkle, 16 RAnkle, 17 Neck (upper neck), 18 Head (top)).
_B25B_OF_LSP = (16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9, 17, 18)


def test_evaluate_cli_selects_test_entries(tmp_path, capsys):
    """``--test openpose:DIR:frame=1-2 --test-option layout=BODY_25B``: frames 1 and 2 of three, read as BODY_25B;
    predictions equal to those frames' ground truth score 0, to the others' would not."""
    folder = tmp_path / "op"
    folder.mkdir()
    poses = [_pose((20 + 7 * f, 30 + 3 * f), 1.0 + 0.1 * f) for f in range(3)]
    for f, p in enumerate(poses):
        kp = np.zeros((25, 3))
        kp[:, :2] = 1.0  # face and feet: present, unused
        kp[:, 2] = 0.9
        kp[list(_B25B_OF_LSP), :2] = p
        (folder / f"v_{f:012d}_keypoints.json").write_text(json.dumps({"people": [
            {"pose_keypoints_2d": kp.ravel().tolist()}]}))
        _image(folder / f"v_{f:012d}.png", 160, 160, seed=f)
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"index": i, "pose2d": poses[f].tolist()}) + "\n"
                             for i, f in enumerate((1, 2))))
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", "--test", f"openpose:{folder}:frame=1-2", "--test-option", "layout=BODY_25B",
                     "--predictions", str(preds), "--n-boot", "20", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["info"]["n"] == 2 and report["info"]["test_set"].endswith(":frame=1-2")
    assert report["summary"]["error2d_px_all"]["mean"] == pytest.approx(0.0, abs=1e-4)
    # the same predictions against frames 0 and 1 are off
    assert cli.main(["evaluate", "--test", f"openpose:{folder}:frame=0-1", "--test-option", "layout=BODY_25B",
                     "--predictions", str(preds), "--n-boot", "20", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["error2d_px_all"]["mean"] > 1.0
    with pytest.raises(SystemExit, match="keeps none of the 3 entries"):
        cli.main(["evaluate", "--test", f"openpose:{folder}:frame=5-", "--test-option", "layout=BODY_25B",
                  "--predictions", str(preds)])
    with pytest.raises(SystemExit, match="look like BODY_25B.*--test-option layout=BODY_25B"):
        cli.main(["evaluate", "--test", f"openpose:{folder}", "--predictions", str(preds)])
