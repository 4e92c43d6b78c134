"""``gpumosaic predict``: crop, top-k, mapping back to image pixels (hand-computed), errors, JSON and overlay."""

import json

import cv2
import numpy as np
import pytest
import torch

from gpumosaic import cli
from gpumosaic.checkpoint import load_inference_checkpoint
from gpumosaic.predict import (box_from_person_box, box_to_box, crop_image, predict_crops, predict_image,
                               read_image)
from gpumosaic.warp import warp_images_reference

from test_protocols import tiny_backbone, tiny_checkpoint  # noqa: F401  (fixture and helper)


def test_box_to_box_hand_computed():
    # 220 box (margin 22, centre 109.5, half extent 88) -> 64 box (margin 6.4, centre 31.5, half extent 25.6)
    pts = torch.tensor([[[109.5, 109.5], [197.5, 109.5], [109.5, 21.5]]], dtype=torch.float64)
    out = box_to_box(pts, 220, 64)
    torch.testing.assert_close(out, torch.tensor([[[31.5, 31.5], [57.1, 31.5], [31.5, 5.9]]], dtype=torch.float64))
    torch.testing.assert_close(box_to_box(out, 64, 220), pts)


def test_box_from_person_box_hand_computed():
    m = box_from_person_box(torch.tensor([[100.0, 50.0, 200.0, 250.0]], dtype=torch.float64), 64)
    # longer side 200 -> 64 - 2·6.4 = 51.2: scale 0.256; centre (150, 150) -> (31.5, 31.5)
    expect = torch.tensor([[[0.256, 0.0, 31.5 - 0.256 * 150], [0.0, 0.256, 31.5 - 0.256 * 150]]], dtype=torch.float64)
    torch.testing.assert_close(m, expect)
    with pytest.raises(ValueError, match="x1 > x0"):
        box_from_person_box(torch.tensor([[5.0, 5.0, 5.0, 5.0]]), 64)


def test_crop_image_matches_reference_warp():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 30, 40), generator=g, dtype=torch.uint8)
    m = box_from_person_box(torch.tensor([[5.0, 4.0, 30.0, 25.0]], dtype=torch.float64), 24)[0]
    out = crop_image(image, m, 24)  # enlarges: no area reduction
    ref = warp_images_reference(image[None].double() / 255, m[None], (24, 24))[0]
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    # a crop that shrinks 4×: equal to area-reducing first (a 4×4 mean) then warping
    big = torch.kron(image.double(), torch.ones(4, 4, dtype=torch.float64)).round().to(torch.uint8)  # (3, 120, 160)
    m4 = box_from_person_box(torch.tensor([[22.0, 18.0, 102.0, 98.0]], dtype=torch.float64), 24)[0]
    assert 0.2 < float(m4[0, 0]) <= 0.25  # scale 0.24: area reduction by k = 4
    out4 = crop_image(big, m4, 24)
    # reduced pixel u' covers big pixels 4u'..4u'+3 and equals image pixel u': big x = 4 x' + 1.5
    small_from_big = torch.tensor([[0.25, 0.0, -0.375], [0.0, 0.25, -0.375]], dtype=torch.float64)
    from gpumosaic.geometry import compose_affine, invert_affine

    m_small = compose_affine(m4, invert_affine(small_from_big))
    ref4 = warp_images_reference(image[None].double() / 255, m_small[None], (24, 24))[0]
    torch.testing.assert_close(out4.double(), ref4, atol=2e-3, rtol=0)


def test_predict_image_maps_back_to_pixels_hand_computed(tmp_path, tiny_backbone):
    ckpt = load_inference_checkpoint(tiny_checkpoint(tmp_path / "c.pt", k=3, size=64, winner=2))
    model = ckpt.build_model()
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    res = predict_image(model, ckpt, image, (100, 50, 200, 250), k=2)
    p = res.prediction
    assert p.classes.tolist()[0][0] == 2 and p.pose2d.shape == (1, 2, 14, 2) and p.pose3d.shape == (1, 2, 14, 3)
    assert float(p.scores[0, 0]) > float(p.scores[0, 1])
    # Class 2's mean 2D pose is in a 220 box (centre 109.5, half extent 88); the person box's centre is
    # (150, 150) and its half extent 100 px, so a class point (109.5 + a, 109.5 + b) lands at
    # (150 + a·100/88, 150 + b·100/88) in the photo.
    mean = ckpt.classes.mean_pose2d[2].double()
    expect = 150 + (mean - 109.5) * (100 / 88)
    torch.testing.assert_close(p.pose2d[0, 0].double(), expect, atol=1e-4, rtol=0)
    torch.testing.assert_close(p.pose3d[0, 0], ckpt.classes.mean_pose3d[2])
    # whole image by default: box (0, 0, 399, 299)
    res = predict_image(model, ckpt, image, None, k=1)
    assert res.box.tolist() == [0.0, 0.0, 399.0, 299.0] and res.image_size == (400, 300)
    with pytest.raises(ValueError, match="outside the image"):
        predict_image(model, ckpt, image, (500, 10, 600, 100))
    with pytest.raises(ValueError, match="x1 > x0"):
        predict_image(model, ckpt, image, (100, 10, 50, 100))
    # partly outside is allowed (edge pixels replicated)
    assert predict_image(model, ckpt, image, (-50, -20, 100, 200)).prediction.pose2d.shape == (1, 3, 14, 2)
    with pytest.raises(ValueError, match="crops"):
        predict_crops(model, ckpt, torch.rand(1, 3, 32, 32))


def test_predict_cli_json_overlay_and_errors(tmp_path, tiny_backbone, capsys):
    ckpt = tiny_checkpoint(tmp_path / "c.pt", k=4, size=64, winner=0)
    img = np.zeros((240, 320, 3), np.uint8)
    cv2.rectangle(img, (140, 40), (180, 220), (200, 180, 160), -1)
    cv2.imwrite(str(tmp_path / "photo.jpg"), img)
    out_json, overlay = tmp_path / "pose.json", tmp_path / "overlay.png"
    assert cli.main(["predict", str(tmp_path / "photo.jpg"), "--checkpoint", str(ckpt), "--box", "120", "30", "200",
                     "230", "--k", "3", "--json", str(out_json), "--overlay", str(overlay), "--device", "cpu"]) == 0
    rec = json.loads(out_json.read_text())
    assert rec["image_size"] == [320, 240] and rec["box"] == [120.0, 30.0, 200.0, 230.0]
    assert [p["rank"] for p in rec["predictions"]] == [1, 2, 3] and rec["predictions"][0]["class"] == 0
    assert np.asarray(rec["predictions"][0]["pose2d"]).shape == (14, 2) and len(rec["joints"]) == 14
    pic = cv2.imread(str(overlay))
    assert pic is not None and pic.shape[0] > 100
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "photo.jpg"), "--checkpoint", str(ckpt), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["box"] == [0.0, 0.0, 319.0, 239.0]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="Cannot read .*bad.jpg as an image"):
        cli.main(["predict", str(tmp_path / "bad.jpg"), "--checkpoint", str(ckpt)])
    with pytest.raises(SystemExit, match="No image file"):
        cli.main(["predict", str(tmp_path / "missing.jpg"), "--checkpoint", str(ckpt)])
    with pytest.raises(SystemExit, match="outside the image"):
        cli.main(["predict", str(tmp_path / "photo.jpg"), "--checkpoint", str(ckpt), "--box", "400", "0", "500", "100"])
    assert read_image(tmp_path / "photo.jpg").shape == (3, 240, 320)


def test_regressor_checkpoint_prediction_hand_computed(tmp_path, tiny_backbone):
    from gpumosaic.checkpoint import InferenceCheckpoint, save_inference_checkpoint
    from gpumosaic.models import PoseRegressor

    net = PoseRegressor(14, "tiny")
    head = net.net.classifier[6]
    with torch.no_grad():  # constant output: every 2D coordinate tanh(0.5), every 3D coordinate tanh(-0.2)
        head.weight.zero_()
        head.bias.copy_(torch.cat([torch.full((28,), 0.5), torch.full((42,), -0.2)]))
    path = save_inference_checkpoint(tmp_path / "r.pt", InferenceCheckpoint(
        "regressor", "tiny", 64, net.state_dict(), extent_m=2.0))
    ckpt = load_inference_checkpoint(path)
    res = predict_image(ckpt.build_model(), ckpt, torch.zeros(3, 300, 400, dtype=torch.uint8), (100, 50, 200, 250))
    p = res.prediction
    assert p.classes is None and p.pose2d.shape == (1, 1, 14, 2)
    # box pixel x = (tanh(0.5)·64 + 63) / 2 (models.denormalise); photo x = 150 + (x - 31.5) / 0.256
    box = (np.tanh(0.5) * 64 + 63) / 2
    torch.testing.assert_close(p.pose2d, torch.full((1, 1, 14, 2), 150 + (box - 31.5) / 0.256), atol=1e-3, rtol=0)
    torch.testing.assert_close(p.pose3d, torch.full((1, 1, 14, 3), float(np.tanh(-0.2) * 2.0)), atol=1e-6, rtol=0)
