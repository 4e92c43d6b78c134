"""The gpumosaic command: generate and preview on the embedded demo data."""

import json

import cv2
import numpy as np
import pytest
import torch

from gpumosaic.cli import main
from gpumosaic.geometry import fit_to_box
from gpumosaic.sources.demo import load_demo_mocap

# The tests pin the embedded demo data: the default source is the real data when its cache exists.
DEMO = ["--pool", "demo", "--mocap", "demo"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    assert main(["generate", "--n", "3", "--out", str(out), "--device", "cpu", *DEMO, "--seed", "7",
                 "--batch-size", "2", "--quiet"]) == 0
    return out


def _records(out):
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


def test_generate_writes_images_and_labels(generated):
    recs = _records(generated)
    assert len(recs) == 3
    mocap = load_demo_mocap()
    for rec in recs:
        img = cv2.imread(str(generated / rec["image"]))
        assert img.shape == (220, 220, 3)
        assert len(rec["matches"]) == 14 and len(rec["source_ids"]) == 14
        # Labels against an independent recomputation: world pose -> camera -> pinhole -> box.
        world = mocap.poses[rec["mocap_index"]].double().numpy()
        cam = rec["camera"]
        r, t = np.array(cam["cam_from_world_R"]), np.array(cam["cam_from_world_t"])
        xc = world @ r.T + t
        uv = cam["focal_px"] * xc[:, :2] / xc[:, 2:]
        box, _ = fit_to_box(torch.from_numpy(uv), 220)
        np.testing.assert_allclose(np.array(rec["pose2d"]), box.numpy(), atol=1e-2)
        centre = xc[[8, 9, 2, 3]].mean(0)  # LSP14 torso: shoulders and hips
        np.testing.assert_allclose(np.array(rec["pose3d"]), xc - centre, atol=1e-4)
        occ = np.array(rec["occluded"])
        assert all((m == -1) == o for m, o in zip(rec["matches"], occ))


def test_generate_same_seed_same_output(generated, tmp_path):
    assert main(["generate", "--n", "3", "--out", str(tmp_path), "--device", "cpu", *DEMO, "--seed", "7",
                 "--batch-size", "2", "--quiet"]) == 0
    assert _records(tmp_path) == _records(generated)
    for rec in _records(generated):
        assert (tmp_path / rec["image"]).read_bytes() == (generated / rec["image"]).read_bytes()


def test_generate_no_blend_and_bad_args(tmp_path):
    assert main(["generate", "--n", "1", "--out", str(tmp_path), "--device", "cpu", *DEMO, "--no-blend", "--quiet"]) == 0
    assert len(_records(tmp_path)) == 1
    with pytest.raises(SystemExit):
        main(["generate", "--n", "0", "--out", str(tmp_path), "--device", "cpu"])


def test_preview_writes_figure(tmp_path):
    path = tmp_path / "fig.png"
    assert main(["preview", "--out", str(path), "--device", "cpu", *DEMO, "--seed", "2"]) == 0
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 500 and img.shape[1] > 800
    assert img.std() > 10  # a drawn figure, not a blank canvas
