"""Scoring maths of gpumosaic.fidelity against hand computations (no MediaPipe needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gpumosaic import fidelity as fd
from gpumosaic.skeleton import LSP14

LS, RH = LSP14.names.index("l_shoulder"), LSP14.names.index("r_hip")
RW, LW = LSP14.names.index("r_wrist"), LSP14.names.index("l_wrist")


def _label() -> np.ndarray:
    """One LSP14 label: joints spread 10 px apart on a grid, l_shoulder - r_hip = (30, 40): torso 50 px."""
    lab = np.stack([np.arange(14) * 10.0, np.arange(14) % 3 * 10.0], -1)
    lab[LS] = [100.0, 100.0]
    lab[RH] = [130.0, 140.0]
    return lab


def test_torso_size_is_the_shoulder_hip_diagonal():
    labels = np.stack([_label(), _label() * 2])
    np.testing.assert_allclose(fd.torso_size(labels), [50.0, 100.0])


def test_correct_joints_threshold_and_undetected():
    lab = _label()
    pred = lab.copy()
    pred[0] += [9.9, 0.0]  # 9.9 <= 0.2 * 50 = 10: correct
    pred[1] += [6.0, 8.0]  # 10.0: on the threshold, correct
    pred[2] += [0.0, 10.1]  # 10.1: missed
    ok = fd.correct_joints(np.stack([pred, pred]), np.array([True, False]), np.stack([lab, lab]))
    assert ok[0].tolist() == [True, True, False] + [True] * 11
    assert not ok[1].any()  # an undetected image misses every joint


def test_lr_swapped_only_when_exchanging_labels_turns_a_miss_into_a_hit():
    lab = _label()
    lab[RW], lab[LW] = [0.0, 0.0], [40.0, 0.0]  # wrists 40 px apart (threshold 10 px)
    swapped = lab.copy()
    swapped[RW], swapped[LW] = lab[LW] + [1, 0], lab[RW] - [1, 0]
    close = lab.copy()
    close[RW] += [3.0, 0.0]  # correct, not swapped
    half = lab.copy()
    half[RW] = lab[LW]  # both predictions on the left wrist: no swap (l_wrist label is not hit by r_wrist's pred)
    preds = np.stack([swapped, close, half, swapped])
    out = fd.lr_swapped(preds, np.array([True, True, True, False]), np.stack([lab] * 4))
    pairs = fd._pairs(LSP14, fd.LIMBS12)
    assert pairs.shape == (6, 2)
    wrist = [k for k, (a, b) in enumerate(pairs.tolist()) if {a, b} == {RW, LW}][0]
    expected = np.zeros((4, 6), bool)
    expected[0, wrist] = True
    np.testing.assert_array_equal(out, expected)


def test_fidelity_score_hand_computed():
    lab = _label()
    labels = np.stack([lab, lab, lab, lab])
    pred = labels.copy()
    pred[1, :6] += [0.0, 20.0]  # image 1: 6 of 12 limb joints off by 20 px (0.4 torso)
    pred[2] = np.nan  # image 2: nothing detected
    labels[3, RW], labels[3, LW] = [0.0, 0.0], [40.0, 0.0]  # image 3: wrists 40 px apart ...
    pred[3, RW], pred[3, LW] = [40.0, 0.0], [0.0, 0.0]  # ... and exchanged by the detector
    detected = np.array([True, True, False, True])
    s = fd.fidelity_score(pred, detected, labels, n_boot=200)
    assert s["n"] == 4
    assert s["detection_rate"]["value"] == pytest.approx(0.75)
    # per-image PCK over 12 limbs: 1, 0.5, 0, 10/12
    np.testing.assert_allclose(s["per_image"]["pck"], [1.0, 0.5, 0.0, 10 / 12])
    assert s["pck"]["value"] == pytest.approx((1 + 0.5 + 0 + 10 / 12) / 4)
    assert s["pck_detected"]["value"] == pytest.approx((1 + 0.5 + 10 / 12) / 3)
    # errors of the 36 detected limb joints in torso units: 28 zeros, 6 of 0.4, 2 of 0.8 -> median 0
    assert s["median_error"]["value"] == pytest.approx(0.0)
    assert s["median_error_px"]["value"] == pytest.approx(0.0)
    # swaps: 1 of 3 detected images x 6 pairs
    assert s["swap_rate"]["value"] == pytest.approx(1 / 18)
    for key in ("detection_rate", "pck", "pck_detected", "median_error", "swap_rate"):
        lo, hi = s[key]["ci"]
        assert lo <= s[key]["value"] <= hi


def test_median_error_is_over_detected_joints():
    lab = _label()
    labels = np.stack([lab, lab])
    pred = labels.copy()
    pred[0, :12] += [0.0, 5.0]  # 5 px = 0.1 torso on every limb joint of image 0
    pred[1, :12] += [0.0, 15.0]  # 0.3 torso, but image 1 is undetected: left out
    s = fd.fidelity_score(pred, np.array([True, False]), labels, n_boot=50)
    assert s["median_error"]["value"] == pytest.approx(0.1)
    assert s["median_error_px"]["value"] == pytest.approx(5.0)


def test_bootstrap_interval_matches_a_plain_loop():
    values = np.array([0.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75])
    lo, hi = fd.bootstrap_interval(lambda idx: values[idx].mean(1), len(values), n_boot=500, seed=3)
    rng = np.random.default_rng(3)
    draws = rng.integers(0, len(values), size=(500, len(values)))
    means = []
    for row in draws:  # plain loop: the mean of each resample
        total = 0.0
        for i in row:
            total += values[i]
        means.append(total / len(row))
    ref = np.quantile(means, [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(ref))


def test_bootstrap_interval_constant_and_two_point():
    assert fd.bootstrap_interval(lambda idx: np.full(idx.shape[0], 0.3), 5) == pytest.approx((0.3, 0.3))
    # n = 2, values {0, 1}: resample means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 95 % interval [0, 1]
    values = np.array([0.0, 1.0])
    assert fd.bootstrap_interval(lambda idx: values[idx].mean(1), 2, n_boot=4000) == (0.0, 1.0)
    assert all(np.isnan(fd.bootstrap_interval(lambda idx: idx.mean(1), 0)))


def test_paired_difference():
    a, b = np.array([1.0, 0.5, 0.0, 1.0]), np.array([0.5, 0.5, 0.5, 0.0])
    d = fd.paired_difference(a, b, n_boot=300)
    assert d["value"] == pytest.approx(0.25)
    assert d["ci"][0] <= 0.25 <= d["ci"][1]
    with pytest.raises(ValueError, match="two"):
        fd.paired_difference(np.zeros((2, 2)), np.zeros((2, 2)))


def test_mediapipe_to_lsp14_mapping():
    lm = np.zeros((2, 33, 3))
    lm[..., 0] = np.arange(33) * 2.0
    lm[..., 1] = np.arange(33) * 3.0
    lm[..., 2] = 0.9
    joints, vis = fd.mediapipe_to_lsp14(lm)
    assert joints.shape == (2, 14, 2) and vis.shape == (2, 14)
    # r_ankle = landmark 28, l_wrist = 15
    np.testing.assert_allclose(joints[0, 0], [56.0, 84.0])
    np.testing.assert_allclose(joints[0, 11], [30.0, 45.0])
    neck = np.array([(22 + 24) / 2, (33 + 36) / 2])  # midpoint of landmarks 11 and 12
    ears = np.array([(14 + 16) / 2, (21 + 24) / 2])  # midpoint of landmarks 7 and 8
    np.testing.assert_allclose(joints[0, 12], neck)
    np.testing.assert_allclose(joints[0, 13], neck + 1.7 * (ears - neck))
    np.testing.assert_allclose(vis, 0.9)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="pred and labels"):
        fd.fidelity_score(np.zeros((2, 14, 2)), np.ones(3, bool), np.zeros((2, 14, 2)))


def test_detector_missing_says_how_to_set_it_up(monkeypatch):
    monkeypatch.delenv(fd.DETECTOR_PYTHON_ENV, raising=False)
    assert fd.detector_python() is None
    assert not fd.detector_available()
    with pytest.raises(fd.DetectorUnavailable, match="GPUMOSAIC_DETECTOR_PYTHON.*mediapipe==0.10.21"):
        fd.detect_poses(np.zeros((1, 8, 8, 3), np.uint8))


def test_detector_without_mediapipe_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv(fd.DETECTOR_PYTHON_ENV, str(fake))
    assert not fd.detector_available()
    with pytest.raises(fd.DetectorUnavailable, match="cannot import mediapipe"):
        fd.detect_poses(np.zeros((1, 8, 8, 3), np.uint8))


def test_images_are_converted_and_checked():
    import torch

    x = torch.zeros(2, 3, 4, 5)
    x[:, 0] = 1.0
    arr = fd._as_uint8_hwc(x)
    assert arr.shape == (2, 4, 5, 3) and arr.dtype == np.uint8 and arr[..., 0].min() == 255
    with pytest.raises(ValueError, match="N, 3, H, W"):
        fd._as_uint8_hwc(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        fd._as_uint8_hwc(np.zeros((1, 4, 4, 3), np.float32))


@pytest.mark.skipif(not fd.detector_available(), reason="no detector ($GPUMOSAIC_DETECTOR_PYTHON with mediapipe)")
def test_detector_finds_a_real_person():
    from gpumosaic.sources.real import cache_ready, load_real_pool

    if not cache_ready():
        pytest.skip("no prepared real data")
    pool = load_real_pool()
    det = fd.detect_poses(pool.images[:2])
    assert det.detected.all()
    s = fd.fidelity_score(det.joints, det.detected, pool.joints[:2].double().numpy(), n_boot=50)
    assert s["pck"]["value"] > 0.5


def test_preview_fidelity_is_optional_and_drawn(tmp_path, monkeypatch):
    """Without a detector the preview has no score (None); a given score is drawn into the figure."""
    import cv2
    import torch

    from gpumosaic import MosaicEngine
    from gpumosaic.sources.demo import load_demo_pool
    from gpumosaic.viz import pipeline_figure, preview_fidelity

    monkeypatch.delenv(fd.DETECTOR_PYTHON_ENV, raising=False)
    pool = load_demo_pool()
    engine = MosaicEngine(pool, size=64)
    res = engine(pool.joints[:1] + 1.0)
    assert preview_fidelity(res) is None
    plain, scored = tmp_path / "plain.png", tmp_path / "scored.png"
    pipeline_figure(res, engine, 0, plain)
    joints = res.query[0].double().numpy()
    fidelity = {"version": "test", "blended": {"detected": True, "pck": 0.5, "joints": joints},
                "copy_paste": {"detected": False, "pck": 0.0, "joints": np.full((14, 2), np.nan)}}
    pipeline_figure(res, engine, 0, scored, fidelity=fidelity)
    a, b = cv2.imread(str(plain)), cv2.imread(str(scored))
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).sum() > 0  # the extra panel is drawn


@pytest.mark.skipif(not fd.detector_available(), reason="no detector ($GPUMOSAIC_DETECTOR_PYTHON with mediapipe)")
def test_preview_fidelity_with_the_detector():
    from gpumosaic.sources.real import cache_ready, load_real_pool
    from gpumosaic import MosaicEngine
    from gpumosaic.viz import preview_fidelity

    if not cache_ready():
        pytest.skip("no prepared real data")
    pool = load_real_pool()
    res = MosaicEngine(pool)(pool.joints[:1])  # its own pose: the near-real ceiling
    out = preview_fidelity(res)
    assert out["blended"]["detected"] and out["blended"]["pck"] > 0.5


def _bench():
    """benchmarks/fidelity.py as a module (its reporting needs no detector)."""
    import importlib.util
    from pathlib import Path

    if "fidelity_bench" in sys.modules:
        return sys.modules["fidelity_bench"]
    spec = importlib.util.spec_from_file_location("fidelity_bench", Path(__file__).parents[1] / "benchmarks" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity_bench"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _row(config: str, seed: int, pck_b, pck_c, det_b, det_c, info=None) -> dict:
    return {"config": config, "set": "mocap", "seed": seed, "n": len(pck_b), "info": info or {"mocap_ids": [seed]},
            "blended": {"per_image": {"pck": list(pck_b), "detected": list(det_b)}},
            "copy_paste": {"per_image": {"pck": list(pck_c), "detected": list(det_c)}}}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_compare_table_pairs_configs_on_the_same_queries():
    bench = _bench()
    rows = [_row("base", 0, [0.5, 0.0], [1.0, 0.5], [1, 0], [1, 1]),
            _row("base", 1, [0.25, 1.0], [0.0, 0.0], [1, 1], [0, 0]),
            _row("big", 0, [1.0, 0.5], [1.0, 0.25], [1, 1], [1, 1]),
            _row("big", 1, [0.25, 0.0], [0.5, 0.0], [1, 0], [1, 0]),
            _row("big", 2, [1.0, 1.0], [1.0, 1.0], [1, 1], [1, 1])]  # no base row for seed 2: left out
    lines = bench.compare_table(rows, "base").splitlines()
    assert len(lines) == 3
    cells = _cells(lines[2])
    assert cells[:5] == ["big", "base", "mocap", "0,1", "4"]
    # blended PCK, big − base per image (seeds 0 then 1): +0.5, +0.5, 0, −1 -> mean 0
    d = [0.5, 0.5, 0.0, -1.0]
    rng = np.random.default_rng(0)  # the interval: a plain loop over bootstrap_interval's resamples
    means = sorted(sum(d[i] for i in row) / 4 for row in rng.integers(0, 4, size=(2000, 4)))
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert cells[5] == f"{0.0:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    # copy-paste: 0, −0.25, +0.5, 0 -> +0.0625; detected blended: 0, +1, 0, −1 -> 0; detected copy-paste: 0, 0, +1, 0
    assert [c.split(" ")[0] for c in cells[6:]] == ["+0.06", "+0.00", "+0.25"]


def test_compare_table_refuses_other_queries_duplicates_and_a_missing_base():
    bench = _bench()
    base = _row("base", 0, [0.5], [0.5], [1], [1], info={"mocap_ids": [3], "elevation": [0.1]})
    other = _row("big", 0, [0.5], [0.5], [1], [1], info={"mocap_ids": [4]})
    with pytest.raises(ValueError, match="not the same queries"):
        bench.compare_table([base, other], "base")
    longer = _row("big", 0, [0.5, 0.5], [0.5, 0.5], [1, 1], [1, 1], info={"mocap_ids": [3]})
    with pytest.raises(ValueError, match="not the same queries"):
        bench.compare_table([base, longer], "base")
    with pytest.raises(ValueError, match="two rows"):
        bench.compare_table([base, base], "base")
    with pytest.raises(ValueError, match="no rows of the base"):
        bench.compare_table([other], "base")


def test_body_gradient_matches_a_plain_loop():
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).parents[1] / "benchmarks" / "fidelity_sharpness.py"
    spec = importlib.util.spec_from_file_location("fidelity_sharpness", path)
    sharp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sharp)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 6, 7, generator=g)
    distance = torch.rand(2, 6, 7, generator=g) * 20
    got = sharp.body_gradient(images, distance, 12.0)
    for b in range(2):  # plain loop: central differences of the grey image, interior pixels with distance < 12
        total, count = 0.0, 0
        for y in range(1, 5):
            for x in range(1, 6):
                if distance[b, y, x] < 12.0:
                    grey = lambda yy, xx: float(images[b, :, yy, xx].mean())
                    gy = (grey(y + 1, x) - grey(y - 1, x)) / 2
                    gx = (grey(y, x + 1) - grey(y, x - 1)) / 2
                    total += (gx * gx + gy * gy) ** 0.5
                    count += 1
        assert float(got[b]) == pytest.approx(total / count, rel=1e-5)
