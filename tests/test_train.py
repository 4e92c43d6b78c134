"""gpumosaic.train / gpumosaic.realcrops: labels, flips, schedule, presets, checkpoints, exact resume, CLI."""

import csv

import pytest
import torch

from gpumosaic.classes import PoseClasses
from gpumosaic.cli import main as cli_main
from gpumosaic.realcrops import _real_labels_reference, flip_crops, real_crops, real_labels
from gpumosaic.skeleton import LSP14
from gpumosaic.sources import load_demo_mocap, load_demo_pool
from gpumosaic.sources.base import Pool2D
from gpumosaic.sources.select import select_mocap, select_pool
from gpumosaic.train import (
    PRESETS,
    TrainConfig,
    batch_schedule,
    load_model,
    predict_logits,
    prepare_data,
    preset,
    real_batch,
    train,
)


def _random_classes(k=7, seed=0, empty=(2,)):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 9, (k,), generator=g)
    counts[list(empty)] = 0
    return PoseClasses(centres=torch.randn(k, 14, 3, generator=g), mean_pose3d=torch.randn(k, 14, 3, generator=g),
                       mean_pose2d=torch.rand(k, 14, 2, generator=g) * 300, counts=counts)


def test_real_labels_match_plain_loop():
    classes = _random_classes()
    g = torch.Generator().manual_seed(1)
    pose2d = torch.rand(12, 14, 2, generator=g) * 500 - 100
    pose3d = torch.randn(12, 14, 3, generator=g)
    has3d = torch.rand(12, generator=g) < 0.5
    for args in ((None, None), (pose3d, has3d), (pose3d, None)):
        got = real_labels(pose2d, classes, 64, None, *args)
        assert got.tolist() == _real_labels_reference(pose2d, classes, 64, None, *args).tolist()
    # the empty class is never chosen by the 2D rule, even for its own mean pose
    assert int(real_labels(classes.mean_pose2d[2:3], classes, 64)[0]) != 2
    # a class's own (fitted) mean pose, shifted and scaled, comes back as that class
    assert real_labels(classes.mean_pose2d[[0, 4]] * 0.5 + 17.0, classes, 64).tolist() == [0, 4]


def test_flip_by_hand():
    s = 5
    images = torch.arange(2 * 3 * s * s, dtype=torch.float32).reshape(2, 3, s, s)
    pose2d = torch.rand(2, 14, 2) * s
    pose3d = torch.randn(2, 14, 3)
    flip = torch.tensor([True, False])
    img, p2, p3 = flip_crops(images, pose2d, flip, LSP14, pose3d)
    assert torch.equal(img[0, :, :, 0], images[0, :, :, 4]) and torch.equal(img[0, :, 2, 1], images[0, :, 2, 3])
    assert torch.equal(img[1], images[1]) and torch.equal(p2[1], pose2d[1]) and torch.equal(p3[1], pose3d[1])
    # LSP14: r_ankle (0) <-> l_ankle (5), r_wrist (6) <-> l_wrist (11), neck (12) stays
    for k, src in ((0, 5), (5, 0), (6, 11), (12, 12), (13, 13)):
        torch.testing.assert_close(p2[0, k], torch.stack([4 - pose2d[0, src, 0], pose2d[0, src, 1]]))
        torch.testing.assert_close(p3[0, k], torch.stack([-pose3d[0, src, 0], pose3d[0, src, 1], pose3d[0, src, 2]]))
    again = flip_crops(img, p2, flip, LSP14, p3)
    torch.testing.assert_close(again[1], pose2d) and torch.testing.assert_close(again[2], pose3d)
    assert torch.equal(again[0], images) and torch.equal(images.flatten()[:3], torch.tensor([0.0, 1.0, 2.0]))


def test_flipped_crop_equals_crop_of_mirrored_image():
    pool = load_demo_pool().subset(torch.arange(3))
    w = pool.image_size[1]
    perm = LSP14.flip_tensor()
    mirrored_joints = pool.joints[:, perm] * torch.tensor([-1.0, 1.0]) + torch.tensor([w - 1.0, 0.0])
    mirrored = Pool2D(images=pool.images.flip(-1), joints=mirrored_joints, ids=pool.ids)
    idx = torch.arange(3)
    img, p2 = real_crops(pool, idx, 48)
    ref_img, ref_p2 = real_crops(mirrored, idx, 48)
    f_img, f_p2, _ = flip_crops(img, p2, torch.ones(3, dtype=torch.bool), LSP14)
    torch.testing.assert_close(f_p2, ref_p2, atol=1e-3, rtol=0)
    torch.testing.assert_close(f_img, ref_img, atol=2e-3, rtol=0)


def test_batch_schedule_and_presets():
    assert [batch_schedule("M+R", s) for s in range(5)] == [("M", 0), ("R", 0), ("M", 1), ("R", 1), ("M", 2)]
    assert [batch_schedule("M", s) for s in range(3)] == [("M", 0), ("M", 1), ("M", 2)]
    assert [batch_schedule("R", s) for s in range(3)] == [("R", 0), ("R", 1), ("R", 2)]
    paper = PRESETS["paper"]
    assert (paper.backbone, paper.size, paper.classes, paper.views, paper.batch_size, paper.steps, paper.mode,
            paper.task) == ("alexnet", 220, 5000, 180, 256, 80000, "M+R", "classifier")
    cpu = PRESETS["cpu"]
    assert cpu.backbone == "resnet18" and 96 <= cpu.size <= 128 and cpu.mosaic_cache == 0
    assert preset("cpu", mode="R").mode == "R" and preset("cpu", mode="R").size == cpu.size
    with pytest.raises(ValueError, match="mode"):
        preset("cpu", mode="X")
    with pytest.raises(ValueError, match="size >= 63"):
        TrainConfig(backbone="alexnet", size=32)


def _tiny(**changes) -> TrainConfig:
    base = dict(size=32, classes=4, views=2, class_views=2, batch_size=4, steps=4, checkpoint_every=2, log_every=1)
    base.update(changes)
    return preset("cpu", **base)


def _sources():
    return select_pool(load_demo_pool(), "row=0-11"), select_mocap(load_demo_mocap(), "subject=0,frame=0-5")


def test_real_batches_labels_and_flips():
    pool, mocap = _sources()
    cfg = _tiny(mode="R", batch_size=5)
    data = prepare_data(cfg, pool, mocap)
    a, b = real_batch(data, 3), real_batch(data, 3)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # pure in (seed, index)
    want = _real_labels_reference(a["pose2d"], data.classes, 32)
    assert a["label"].tolist() == want.tolist() and not a["has3d"].any()
    # batches 0..1 cover 10 of the 12 images once; batch 2 crosses into the next epoch without a gap
    rows = [real_batch(data, i)["pose2d"] for i in range(3)]
    assert all(r.shape == (5, 14, 2) for r in rows)


def test_blend_option_trains_on_copy_paste_mosaics():
    """TrainConfig(blend=False): the same stream (poses, cameras, labels) with the engine's copy-paste mosaics,
    which equal the blended engine's mosaic_unblended for the same queries."""
    from gpumosaic import MosaicEngine
    from gpumosaic.train import mosaic_batch

    pool, mocap = _sources()
    blended = prepare_data(_tiny(mode="M"), pool, mocap)
    pasted = prepare_data(_tiny(mode="M", blend=False), pool, mocap, classes=blended.classes)
    assert pasted.mosaics.engine.settings.blend is False and blended.mosaics.engine.settings.blend is True
    a, b = mosaic_batch(blended, 1), mosaic_batch(pasted, 1)
    assert torch.equal(a["pose2d"], b["pose2d"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], b["image"])
    engine = MosaicEngine(pool, size=32)
    ref = engine(b["pose2d"])  # the batch's 2D labels are the queries fitted into the box: the same mosaics
    # (up to the stream's self-occlusion flags, which the batch does not carry: a few joints not searched there)
    same = ((b["image"] - ref.mosaic_unblended).abs() < 1e-5).all(1)
    assert float(same.float().mean()) > 0.99
    assert float(((a["image"] - ref.images).abs() < 1e-5).all(1).float().mean()) > 0.95
    assert float(((a["image"] - b["image"]).abs() > 1e-3).any(1).float().mean()) > 0.05  # blending changed them
    multi = prepare_data(_tiny(mode="M", multiband_levels=2), pool, mocap, classes=blended.classes)
    assert multi.mosaics.engine.settings.multiband_levels == 2
    c = mosaic_batch(multi, 1)
    assert torch.equal(c["label"], a["label"])
    ref = MosaicEngine(pool, size=32, multiband_levels=2)(c["pose2d"]).images  # up to the occlusion flags again
    assert float((c["image"] - ref).abs().mean()) < 0.25 * float((c["image"] - a["image"]).abs().mean())


def test_alternation_checkpoints_and_exact_resume(tmp_path):
    pool, mocap = _sources()
    cfg = _tiny(mode="M+R", task="classifier")
    data = prepare_data(cfg, pool, mocap)
    full = train(cfg, data, tmp_path / "full", progress=False)
    assert [h[1] for h in full.history] == ["M", "R", "M", "R"]
    part = train(cfg, prepare_data(cfg, pool, mocap), tmp_path / "resumed", progress=False, stop_after=3)
    assert part.step == 3 and part.model_path is None
    done = train(cfg, prepare_data(cfg, pool, mocap), tmp_path / "resumed", progress=False)
    assert done.step == 4
    assert [h[2] for h in done.history] == [h[2] for h in full.history]
    for (k, v), (_, w) in zip(full.model.state_dict().items(), done.model.state_dict().items()):
        assert torch.equal(v, w), k
    with open(tmp_path / "full" / "log.csv") as f:
        assert [r["kind"] for r in csv.DictReader(f)] == ["M", "R", "M", "R"]
    # inference checkpoint: weights + classes + settings, no optimiser; smaller than the training state
    model_bytes = (tmp_path / "full" / "model.pt").stat().st_size
    params = sum(t.numel() * t.element_size() for t in full.model.state_dict().values())
    assert params < model_bytes < params + 200_000
    assert (tmp_path / "full" / "train_state.pt").stat().st_size > 2 * params  # Adam moments too
    state = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    assert "optimizer" not in state and state["settings"]["mode"] == "M+R" and state["format"] == "gpumosaic.inference"
    loaded = load_model(tmp_path / "full" / "model.pt")
    assert loaded.config == cfg and torch.equal(loaded.classes.centres, full.classes.centres.cpu())
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(predict_logits(loaded.model, x), predict_logits(full.model, x))
    with pytest.raises(ValueError, match="not a gpumosaic inference checkpoint"):
        load_model(tmp_path / "full" / "train_state.pt")
    with pytest.raises(ValueError, match="settings differ"):
        train(_tiny(mode="M+R", lr=0.5), prepare_data(_tiny(mode="M+R", lr=0.5), pool, mocap),
              tmp_path / "full", progress=False)


def test_regressor_trains_and_masks_missing_3d(tmp_path):
    pool, mocap = _sources()
    cfg = _tiny(mode="M+R", task="regressor", steps=2)
    res = train(cfg, prepare_data(cfg, pool, mocap), tmp_path, progress=False)
    assert res.classes is None and all(torch.isfinite(torch.tensor(h[2])) for h in res.history)
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.classes is None and loaded.model.num_joints == 14 and loaded.config == cfg


def test_cli_train(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path), "--pool", "demo::row=0-11", "--mocap", "demo::subject=0,frame=0-5",
            "--size", "32", "--classes", "4", "--views", "2", "--class-views", "2", "--batch-size", "4",
            "--steps", "2", "--mode", "R", "--device", "cpu", "--quiet"]
    assert cli_main(args) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert load_model(tmp_path / "model.pt").config.mode == "R"
    with pytest.raises(SystemExit, match="size >= 63"):
        cli_main(args[:-1] + ["--backbone", "alexnet"])
    blend_off = [a if a != "R" else "M" for a in args] + ["--no-blend", "--no-resume"]
    blend_off[2] = str(tmp_path / "pasted")
    assert cli_main(blend_off) == 0
    config = load_model(tmp_path / "pasted" / "model.pt").config
    assert config.mode == "M" and config.blend is False


def test_resnet18_backbone_has_batch_norm():
    from gpumosaic.models import PoseClassifier, PoseRegressor

    net = PoseClassifier(num_classes=5, backbone="resnet18")
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.net.fc.out_features == 5
    assert PoseRegressor(num_joints=14, backbone="resnet18")(torch.rand(2, 3, 40, 40)).shape == (2, 70)
