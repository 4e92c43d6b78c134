"""Loaders on fixture files written here in each real format: round trips, mappings, drops, malformed files.

References are independent of the loaders: hand-computed positions, SciPy rotations in plain loops, and the
datasets' documented index lists written out by name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch
from scipy.spatial.transform import Rotation

from gpumosaic.skeleton import H36M17, LSP14, MPII16
from gpumosaic.sources.build import Annotations2D, DroppedEntriesWarning, LoadedMocap

LSP_NAMES = LSP14.names


def y_to_z(p):
    p = np.asarray(p, dtype=np.float64)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], -1)


def assert_close(actual, expected, atol=1e-5):
    actual = actual.numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert np.isfinite(actual).all()
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), atol=atol, rtol=1e-6)  # float32 output


# --------------------------------------------------------------------------------------------------------
# LSP / LSPET
# --------------------------------------------------------------------------------------------------------


def _lsp_xy(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(5, 200, size=(n, 14, 2))


def test_lsp_original_layout_visibility_and_drop(tmp_path):
    xy = _lsp_xy(4)
    xy[2, 5] = (-1.0, 40.0)  # a missing (non-positive) joint -> entry dropped
    flag = np.zeros((4, 14))
    flag[1, 3] = 1  # LSP: 1 = occluded
    joints = np.concatenate([xy.transpose(2, 1, 0), flag.T[None]], 0)  # 3 x 14 x N
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    from gpumosaic.sources.lsp import load_lsp

    with pytest.warns(DroppedEntriesWarning, match="kept 3 of 4"):
        ann = load_lsp(tmp_path)
    assert isinstance(ann, Annotations2D) and ann.skeleton is LSP14
    assert ann.ids.tolist() == [0, 1, 3]
    assert_close(ann.joints, xy[[0, 1, 3]])
    assert ann.visible.dtype == torch.bool
    assert not bool(ann.visible[1, 3]) and int(ann.visible.sum()) == 3 * 14 - 1
    assert [p.name for p in ann.image_paths] == ["im0001.jpg", "im0002.jpg", "im0004.jpg"]
    assert ann.report.dropped == {"incomplete (joint missing: non-finite or non-positive coordinate)": 1}


def test_lspet_layout_png_and_drop_occluded(tmp_path):
    xy = _lsp_xy(3, seed=1)
    flag = np.ones((3, 14))
    flag[0, 13] = 0  # LSPET: 0 = not visible
    joints = np.concatenate([xy.transpose(1, 2, 0), flag.T[:, None]], 1)  # 14 x 3 x N
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "im00001.png").write_bytes(b"")
    from gpumosaic.sources.lsp import load_lsp

    ann = load_lsp(tmp_path / "joints.mat")
    assert_close(ann.joints, xy)
    assert not bool(ann.visible[0, 13]) and bool(ann.visible[1:].all())
    assert ann.image_paths[2].name == "im00003.png"
    with pytest.warns(DroppedEntriesWarning, match="occluded"):
        assert load_lsp(tmp_path, drop_occluded=True).ids.tolist() == [1, 2]


def test_lsp_to_mpii16_mapping(tmp_path):
    xy = _lsp_xy(2, seed=2)
    joints = np.concatenate([xy.transpose(2, 1, 0), np.zeros((1, 14, 2))], 0)
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    from gpumosaic.sources.lsp import load_lsp

    ann = load_lsp(tmp_path, skeleton="mpii16")
    assert ann.skeleton is MPII16
    j = {n: xy[:, LSP_NAMES.index(n)] for n in LSP_NAMES}
    assert_close(ann.joints[:, MPII16.index("pelvis")], (j["r_hip"] + j["l_hip"]) / 2)
    assert_close(ann.joints[:, MPII16.index("thorax")], (j["r_shoulder"] + j["l_shoulder"]) / 2)
    assert_close(ann.joints[:, MPII16.index("upper_neck")], j["neck"])
    assert_close(ann.joints[:, MPII16.index("l_wrist")], j["l_wrist"])


def test_lsp_malformed(tmp_path):
    from gpumosaic.sources.lsp import load_lsp

    scipy.io.savemat(tmp_path / "joints.mat", {"joints": np.zeros((5, 14, 3))})
    with pytest.raises(ValueError, match=r"joints.mat: field 'joints' must be 3×14×N"):
        load_lsp(tmp_path)
    scipy.io.savemat(tmp_path / "joints.mat", {"points": np.zeros((3, 14, 3))})
    with pytest.raises(ValueError, match="no variable 'joints'"):
        load_lsp(tmp_path)
    (tmp_path / "joints.mat").write_text("not a mat file")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        load_lsp(tmp_path)


# --------------------------------------------------------------------------------------------------------
# MPII
# --------------------------------------------------------------------------------------------------------


def _struct_array(items):
    """A MATLAB struct array (savemat writes numpy structured arrays as struct arrays)."""
    keys = list(items[0])
    arr = np.zeros((1, len(items)), dtype=[(k, object) for k in keys])
    for i, item in enumerate(items):
        for k in keys:
            arr[0, i][k] = item[k]
    return arr


def _mpii_points(xy, vis, ids):
    return _struct_array([{"id": int(i), "x": float(xy[i, 0]), "y": float(xy[i, 1]), "is_visible": vis[i]}
                          for i in ids])


def _write_mpii(path, xy):
    rng = np.random.default_rng(3)
    order = rng.permutation(16)  # points need not be in id order
    vis = [1] * 16
    vis[4] = "0"  # strings, as in the release
    vis[7] = np.zeros((0, 0))  # empty: counts as visible
    person_full = {"annopoints": {"point": _mpii_points(xy, vis, order)}}
    person_15 = {"annopoints": {"point": _mpii_points(xy + 1, vis, [i for i in order if i != 9])}}
    person_none = {"annopoints": np.zeros((0, 0))}
    annolist = _struct_array([
        {"image": {"name": "a.jpg"}, "annorect": _struct_array([person_full, person_15, person_none])},
        {"image": {"name": "b.jpg"}, "annorect": _struct_array([person_full])},
    ])
    scipy.io.savemat(path, {"RELEASE": {"annolist": annolist, "img_train": np.array([[1, 0]])}})


def test_mpii_release_struct(tmp_path):
    from gpumosaic.sources.mpii import load_mpii

    xy = np.random.default_rng(4).uniform(10, 300, size=(16, 2))
    _write_mpii(tmp_path / "mpii.mat", xy)
    with pytest.warns(DroppedEntriesWarning, match="kept 1 of 4"):
        ann = load_mpii(tmp_path / "mpii.mat", image_dir=tmp_path / "imgs")
    assert ann.report.dropped == {"test split": 1, "no annopoints": 1, "incomplete (< 16 points)": 1}
    assert ann.ids.tolist() == [0]
    assert ann.image_paths[0] == tmp_path / "imgs" / "a.jpg"
    # MPII ids: 0 r_ankle .. 5 l_ankle, 8 upper neck, 9 head top, 10 r_wrist .. 15 l_wrist.
    mpii_id = {"r_ankle": 0, "r_knee": 1, "r_hip": 2, "l_hip": 3, "l_knee": 4, "l_ankle": 5, "r_wrist": 10,
               "r_elbow": 11, "r_shoulder": 12, "l_shoulder": 13, "l_elbow": 14, "l_wrist": 15, "neck": 8,
               "head_top": 9}
    assert_close(ann.joints[0], xy[[mpii_id[n] for n in LSP_NAMES]])
    assert not bool(ann.visible[0, LSP_NAMES.index("l_knee")])  # is_visible '0' on id 4
    assert int(ann.visible.sum()) == 13
    with pytest.warns(DroppedEntriesWarning, match="kept 2 of 4"):
        native = load_mpii(tmp_path / "mpii.mat", skeleton="mpii16", split="all")
    assert native.skeleton is MPII16 and len(native) == 2
    assert_close(native.joints[0], xy)


def test_mpii_malformed(tmp_path):
    from gpumosaic.sources.mpii import load_mpii

    bad = {"annopoints": {"point": _struct_array([{"id": 17, "x": 1.0, "y": 2.0, "is_visible": 1}])}}
    annolist = _struct_array([{"image": {"name": "a.jpg"}, "annorect": _struct_array([bad])}])
    scipy.io.savemat(tmp_path / "bad.mat", {"RELEASE": {"annolist": annolist}})
    with pytest.raises(ValueError, match=r"bad.mat: annolist\(1\).annorect\(1\).annopoints.point\(1\): field id"):
        load_mpii(tmp_path / "bad.mat")
    scipy.io.savemat(tmp_path / "none.mat", {"OTHER": 1})
    with pytest.raises(ValueError, match="no 'RELEASE' struct"):
        load_mpii(tmp_path / "none.mat")


# --------------------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------------------

COCO = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
        "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")


def _coco_kp(rng, v=2):
    xy = rng.uniform(10, 400, size=(17, 2))
    return xy, np.concatenate([xy, np.full((17, 1), v)], 1)


def test_coco_mapping_drops_and_head_top(tmp_path):
    from gpumosaic.sources.coco import HEAD_TOP_FACTOR, load_coco

    rng = np.random.default_rng(5)
    xy0, kp0 = _coco_kp(rng)
    xy1, kp1 = _coco_kp(rng)
    kp1[COCO.index("r_ear"), 2] = 0  # one ear missing: head centre = mean of nose, eyes, left ear
    kp1[COCO.index("l_wrist"), 2] = 1  # labelled, occluded
    _, kp_crowd = _coco_kp(rng)
    _, kp_inc = _coco_kp(rng)
    kp_inc[COCO.index("r_ankle")] = 0
    data = {
        "images": [{"id": 7, "file_name": "x.jpg"}, {"id": 8, "file_name": "y.jpg"}],
        "annotations": [
            {"id": 100, "image_id": 7, "keypoints": kp0.ravel().tolist(), "iscrowd": 0},
            {"id": 101, "image_id": 7, "keypoints": kp_crowd.ravel().tolist(), "iscrowd": 1},
            {"id": 102, "image_id": 8, "keypoints": kp_inc.ravel().tolist(), "iscrowd": 0},
            {"id": 103, "image_id": 8, "keypoints": kp1.ravel().tolist(), "iscrowd": 0},
            {"id": 104, "image_id": 8, "keypoints": [0] * 51, "iscrowd": 0},
        ],
    }
    path = tmp_path / "annotations" / "person_keypoints_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    (tmp_path / "val2017").mkdir()
    with pytest.warns(DroppedEntriesWarning):
        ann = load_coco(path)
    assert ann.ids.tolist() == [100, 103]
    assert ann.report.dropped == {"crowd": 1, "no keypoints": 1,
                                  "incomplete (a limb joint or the whole face unlabelled)": 1}
    assert ann.image_paths == (tmp_path / "val2017" / "x.jpg", tmp_path / "val2017" / "y.jpg")
    for row, xy, face in ((0, xy0, ("l_ear", "r_ear")), (1, xy1, ("nose", "l_eye", "r_eye", "l_ear"))):
        c = {n: xy[COCO.index(n)] for n in COCO}
        expected = [c[n] for n in LSP_NAMES[:12]]
        neck = (c["l_shoulder"] + c["r_shoulder"]) / 2
        centre = np.mean([c[n] for n in face], 0)
        expected += [neck, neck + HEAD_TOP_FACTOR * (centre - neck)]
        assert_close(ann.joints[row], np.array(expected), atol=1e-4)
    assert not bool(ann.visible[1, LSP_NAMES.index("l_wrist")]) and bool(ann.visible[0].all())
    with pytest.warns(DroppedEntriesWarning):
        assert load_coco(path, drop_occluded=True).ids.tolist() == [100]


def test_coco_malformed(tmp_path):
    from gpumosaic.sources.coco import load_coco

    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "keypoints": [0] * 50}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1\): field 'keypoints' must be a list of 17×3"):
        load_coco(path)
    path.write_text('{"annotations": [\n  {"id": 1,, }]}')
    with pytest.raises(ValueError, match="invalid JSON at line 2"):
        load_coco(path)


# --------------------------------------------------------------------------------------------------------
# OpenPose
# --------------------------------------------------------------------------------------------------------

BODY25 = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
          "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe",
          "LHeel", "RBigToe", "RSmallToe", "RHeel")
COCO18 = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee",
          "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar")
# BODY_25B (OpenPose's experimental model, Pose2Sim's skeletons.BODY_25B): COCO's 17 first, then its own
# "Neck" (the upper neck, named UpperNeck here to keep it apart from BODY_25's mid-shoulder Neck), Head top, feet.
BODY25B = ("Nose", "LEye", "REye", "LEar", "REar", "LShoulder", "RShoulder", "LElbow", "RElbow", "LWrist", "RWrist",
           "LHip", "RHip", "LKnee", "RKnee", "LAnkle", "RAnkle", "UpperNeck", "Head", "LBigToe", "LSmallToe", "LHeel",
           "RBigToe", "RSmallToe", "RHeel")
OP_FOR_LSP = ("RAnkle", "RKnee", "RHip", "LHip", "LKnee", "LAnkle", "RWrist", "RElbow", "RShoulder", "LShoulder",
              "LElbow", "LWrist", "Neck")

# A person facing the camera, upright, in pixels (its right side on the image's left). BODY_25's Neck and
# MidHip are the midpoints of the shoulders and of the hips, as OpenPose trains them.
OP_TEMPLATE = {
    "Head": (200, 50), "Nose": (200, 80), "LEye": (206, 74), "REye": (194, 74), "LEar": (214, 78),
    "REar": (186, 78), "UpperNeck": (200, 100), "Neck": (200, 112), "LShoulder": (230, 112),
    "RShoulder": (170, 112), "LElbow": (240, 160), "RElbow": (160, 160), "LWrist": (245, 205),
    "RWrist": (155, 205), "LHip": (218, 200), "RHip": (182, 200), "MidHip": (200, 200), "LKnee": (220, 270),
    "RKnee": (180, 270), "LAnkle": (222, 340), "RAnkle": (178, 340), "LBigToe": (230, 350),
    "LSmallToe": (235, 348), "LHeel": (218, 345), "RBigToe": (170, 350), "RSmallToe": (165, 348),
    "RHeel": (182, 345)}


def _op_person(rng, names, conf=0.8, scale=1.0, offset=None, jitter=2.0):
    """The template person in layout ``names``, jittered by up to ``jitter`` px, scaled, shifted by ``offset``
    (default: random in [0, 200)^2); returns ``(xy (K, 2), keypoints (K, 3))``."""
    offset = rng.uniform(0, 200, size=2) if offset is None else np.asarray(offset, float)
    xy = np.array([OP_TEMPLATE[n] for n in names], float) + rng.uniform(-jitter, jitter, size=(len(names), 2))
    xy = xy * scale + offset
    return xy, np.concatenate([xy, np.full((len(names), 1), conf)], 1)


def _write_op(path, people):
    path.write_text(json.dumps({"version": 1.3, "people": [
        {"person_id": [-1], "pose_keypoints_2d": np.asarray(p).ravel().tolist()} for p in people]}))


@pytest.mark.parametrize("names", [BODY25, COCO18], ids=["body25", "coco18"])
def test_openpose_most_confident_person(tmp_path, names):
    from gpumosaic.sources.coco import HEAD_TOP_FACTOR
    from gpumosaic.sources.openpose import load_openpose

    rng = np.random.default_rng(6)
    xy_a, a = _op_person(rng, names, 0.3)
    xy_b, b = _op_person(rng, names, 0.9)
    _, c = _op_person(rng, names, 0.9)
    c[names.index("RKnee"), 2] = 0.0
    assert np.abs(xy_a - xy_b).min() > 1  # the two people are told apart

    _write_op(tmp_path / "v_000000000000_keypoints.json", [a, b])
    _write_op(tmp_path / "v_000000000001_keypoints.json", [])
    _write_op(tmp_path / "v_000000000002_keypoints.json", [c])
    _write_op(tmp_path / "v_000000000003_keypoints.json.old", [c[:5]])  # a backup in a bad layout: must be ignored
    (tmp_path / "v_000000000000.png").write_bytes(b"")
    with pytest.warns(DroppedEntriesWarning, match="kept 1 of 3"):
        ann = load_openpose(tmp_path)
    assert ann.report.dropped == {"no person": 1, "incomplete (most confident person lacks a used keypoint)": 1}
    assert ann.image_paths == (tmp_path / "v_000000000000.png",)
    k = {n: xy_b[names.index(n)] for n in names}
    centre = (k["LEar"] + k["REar"]) / 2
    expected = [k[n] for n in OP_FOR_LSP] + [k["Neck"] + HEAD_TOP_FACTOR * (centre - k["Neck"])]
    assert_close(ann.joints[0], np.array(expected), atol=1e-4)


# LSP14 joints of OP_TEMPLATE, by hand: limbs r_ankle ... l_wrist; then neck and head top.
_LSP_LIMBS = [(178, 340), (180, 270), (182, 200), (218, 200), (220, 270), (222, 340), (155, 205), (160, 160),
              (170, 112), (230, 112), (240, 160), (245, 205)]
# BODY_25 / COCO-18: neck = mid-shoulder Neck (200, 112); ears' midpoint (200, 78);
# head_top = neck + 1.7 * (78 - 112) in y = (200, 112 - 57.8) = (200, 54.2).
_EXPECTED_FACE_LAYOUT = np.array(_LSP_LIMBS + [(200, 112), (200, 54.2)])
# BODY_25B: neck = its upper Neck (200, 100), head_top = its Head (200, 50), taken as they are.
_EXPECTED_BODY25B = np.array(_LSP_LIMBS + [(200, 100), (200, 50)])


@pytest.mark.parametrize("names, layout, expected, read_as", [
    (BODY25, "auto", _EXPECTED_FACE_LAYOUT, "BODY_25"), (BODY25, "BODY_25", _EXPECTED_FACE_LAYOUT, "BODY_25"),
    (COCO18, "auto", _EXPECTED_FACE_LAYOUT, "COCO_18"), (COCO18, "coco_18", _EXPECTED_FACE_LAYOUT, "COCO_18"),
    (BODY25B, "BODY_25B", _EXPECTED_BODY25B, "BODY_25B"), (BODY25B, "body_25b", _EXPECTED_BODY25B, "BODY_25B")],
    ids=["body25-auto", "body25", "coco18-auto", "coco18", "body25b", "body25b-lower"])
def test_openpose_layouts_hand_computed(tmp_path, names, layout, expected, read_as):
    from gpumosaic.sources.openpose import load_openpose

    rng = np.random.default_rng(0)
    shift = np.array([10.0, 5.0])
    for f in range(2):  # frame f is the template shifted by f * (10, 5)
        _, kp = _op_person(rng, names, offset=f * shift, jitter=0.0)
        _write_op(tmp_path / f"v_{f:012d}_keypoints.json", [kp])
    ann = load_openpose(tmp_path, layout=layout)
    assert ann.ids.tolist() == [0, 1]
    assert_close(ann.joints, np.stack([expected, expected + shift]), atol=1e-4)
    assert ann.visible.all()
    assert ann.report.notes[0].startswith(read_as + ";")


def test_openpose_body25_evidence_hand_computed():
    from gpumosaic.sources.openpose import body25_evidence

    b25 = np.array([OP_TEMPLATE[n] for n in BODY25], float)[None]
    b25b = np.array([OP_TEMPLATE[n] for n in BODY25B], float)[None]
    ev = body25_evidence(b25, np.ones((1, 25), bool))
    # BODY_25: MidHip (200, 200) is the hips' midpoint: 0. Keypoint 17 is REar (186, 78) against the midpoint
    # of LShoulder (230, 112) and LElbow (240, 160) = (235, 136): |(49, 58)| = 75.93; size = 350 - 74 = 276.
    assert ev["body25"] == pytest.approx(0.0, abs=1e-12) and ev["body25_frames"] == 1
    assert ev["body25b"] == pytest.approx(np.hypot(49, 58) / 276, rel=1e-9)
    ev = body25_evidence(b25b, np.ones((1, 25), bool))
    # BODY_25B: keypoint 8 is RElbow (160, 160) against the midpoint of LWrist (245, 205) and RHip (182, 200)
    # = (213.5, 202.5): |(53.5, 42.5)| = 68.33; size = 350 - 50 = 300. Keypoint 17, the upper neck (200, 100),
    # against the shoulders' midpoint (200, 112): 12 / 300 = 0.04.
    assert ev["body25"] == pytest.approx(np.hypot(53.5, 42.5) / 300, rel=1e-9)
    assert ev["body25b"] == pytest.approx(0.04, rel=1e-9)
    present = np.ones((1, 25), bool)
    present[0, 8] = False
    assert body25_evidence(b25b, present)["body25"] is None


def test_openpose_auto_refuses_body25b_and_ambiguous(tmp_path):
    from gpumosaic.sources.openpose import load_openpose

    rng = np.random.default_rng(1)
    _, kp = _op_person(rng, BODY25B, offset=(0, 0), jitter=0.0)
    _write_op(tmp_path / "a_keypoints.json", [kp])
    with pytest.raises(ValueError,
                       match=r"look like BODY_25B \(keypoint 8 lies 0\.228 .* keypoint 17 lies 0\.040") as err:
        load_openpose(tmp_path)
    assert "layout='BODY_25B'" in str(err.value) and "--pool-option layout=BODY_25B" in str(err.value)
    assert "--test-option layout=BODY_25B" in str(err.value)

    # BODY_25 with MidHip 60 px below the hips' midpoint: neither test holds (60 / 276 = 0.217 and 0.275).
    amb = tmp_path / "amb"
    amb.mkdir()
    _, kp = _op_person(rng, BODY25, offset=(0, 0), jitter=0.0)
    kp[BODY25.index("MidHip"), 1] += 60
    _write_op(amb / "a_keypoints.json", [kp])
    with pytest.raises(ValueError, match=r"cannot be told apart \(keypoint 8 lies 0\.217 .* 17 lies 0\.275"):
        load_openpose(amb)
    # ... and MidHip undetected: not measurable, still refused; read as BODY_25 when told so.
    kp[BODY25.index("MidHip"), 2] = 0.0
    _write_op(amb / "a_keypoints.json", [kp])
    with pytest.raises(ValueError, match="cannot be told apart .*not measurable"):
        load_openpose(amb)
    assert_close(load_openpose(amb, layout="BODY_25").joints[0], _EXPECTED_FACE_LAYOUT, atol=1e-4)


def test_openpose_layout_errors(tmp_path):
    from gpumosaic.sources.openpose import load_openpose

    rng = np.random.default_rng(2)
    _write_op(tmp_path / "a_keypoints.json", [_op_person(rng, COCO18)[1]])
    with pytest.raises(ValueError, match=r"has 54 numbers; layout='BODY_25B' expects 75"):
        load_openpose(tmp_path, layout="BODY_25B")
    with pytest.raises(ValueError,
                       match=r"Expected layout among \('auto', 'BODY_25', 'BODY_25B', 'COCO_18'\), got 'BODY25'"):
        load_openpose(tmp_path, layout="BODY25")


def test_openpose_malformed(tmp_path):
    from gpumosaic.sources.openpose import load_openpose

    (tmp_path / "f_keypoints.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": [0.0] * 60}]}))
    with pytest.raises(ValueError, match=r"f_keypoints.json: people\[0\].pose_keypoints_2d has 60 numbers"):
        load_openpose(tmp_path)


# --------------------------------------------------------------------------------------------------------
# Human3.6M
# --------------------------------------------------------------------------------------------------------

# VideoPose3D's 32-joint indices, by name.
H36M32 = {"pelvis": 0, "r_hip": 1, "r_knee": 2, "r_ankle": 3, "l_hip": 6, "l_knee": 7, "l_ankle": 8, "spine": 12,
          "thorax": 13, "neck_nose": 14, "head": 15, "l_shoulder": 17, "l_elbow": 18, "l_wrist": 19,
          "r_shoulder": 25, "r_elbow": 26, "r_wrist": 27}
H36M_FOR_LSP = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow", "r_shoulder",
                "l_shoulder", "l_elbow", "l_wrist", "thorax", "head")


def test_h36m_3d_flat_npz(tmp_path):
    from gpumosaic.sources.h36m import load_h36m_3d

    rng = np.random.default_rng(7)
    walk = rng.normal(size=(6, 32, 3))
    walk[4, 13] = np.nan  # a non-finite frame is dropped
    sit17 = rng.normal(size=(3, 17, 3))
    np.savez(tmp_path / "h36m.npz", **{"S1/Walking 1": walk.astype(np.float32), "S5/Sitting": sit17})
    with pytest.warns(DroppedEntriesWarning, match="non-finite"):
        loaded = load_h36m_3d(tmp_path / "h36m.npz")
    assert isinstance(loaded, LoadedMocap) and loaded.mocap.skeleton is LSP14
    assert loaded.sequences == ("S1/Walking 1", "S5/Sitting") and len(loaded.mocap) == 8
    assert loaded.frame.tolist() == [0, 1, 2, 3, 5, 0, 1, 2]
    assert_close(loaded.mocap.poses[:4], walk[:4][:, [H36M32[n] for n in H36M_FOR_LSP]])
    assert_close(loaded.mocap.poses[5:], sit17[:, [H36M17.index(n) for n in H36M_FOR_LSP]])
    with pytest.warns(DroppedEntriesWarning):
        native = load_h36m_3d(tmp_path / "h36m.npz", skeleton="h36m17", subjects=["S1"], stride=2)
    assert native.mocap.skeleton is H36M17 and native.frame.tolist() == [0, 2]
    assert_close(native.mocap.poses, walk[[0, 2]][:, [H36M32[n] for n in H36M17.names]])


def test_h36m_pickled_layout_is_refused(tmp_path):
    from gpumosaic.sources.h36m import load_h36m_3d

    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d=np.array({"S1": {"Walking": np.zeros((2, 32, 3))}}))
    with pytest.raises(ValueError, match="pickled object array.*never unpickles"):
        load_h36m_3d(tmp_path / "data_3d_h36m.npz")
    np.savez(tmp_path / "bad.npz", **{"S1/Walking": np.zeros((2, 31, 3))})
    with pytest.raises(ValueError, match=r"field 'S1/Walking' must be \(F, 32, 3\) or \(F, 17, 3\)"):
        load_h36m_3d(tmp_path / "bad.npz")


def test_h36m_2d_flat_npz_and_image_pattern(tmp_path):
    from gpumosaic.sources.h36m import load_h36m_2d

    rng = np.random.default_rng(8)
    cam0 = rng.uniform(0, 1000, size=(4, 32, 2))
    cam3 = rng.uniform(0, 1000, size=(2, 32, 2))
    np.savez(tmp_path / "h36m2d.npz", **{"S9/Eating/0": cam0, "S9/Eating/60457274": cam3})
    ann = load_h36m_2d(tmp_path / "h36m2d.npz", image_root=tmp_path / "frames",
                       image_pattern="{subject}/{action}.{camera}/{frame1:06d}.jpg", stride=2)
    assert len(ann) == 3
    assert ann.image_paths[1] == tmp_path / "frames" / "S9" / "Eating.54138969" / "000003.jpg"
    assert ann.image_paths[2] == tmp_path / "frames" / "S9" / "Eating.60457274" / "000001.jpg"
    assert_close(ann.joints[:2], cam0[[0, 2]][:, [H36M32[n] for n in H36M_FOR_LSP]], atol=1e-4)
    assert load_h36m_2d(tmp_path / "h36m2d.npz", cameras=[3]).image_paths == (None, None)


# --------------------------------------------------------------------------------------------------------
# BVH
# --------------------------------------------------------------------------------------------------------


def test_bvh_one_rotated_joint_by_hand(tmp_path):
    from gpumosaic.sources.bvh import bvh_forward_kinematics, read_bvh

    text = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 5 0
    }
  }
}
MOTION
Frames: 1
Frame Time: 0.0333333
1 2 3 0 0 0 90 0 0
"""
    (tmp_path / "a.bvh").write_text(text)
    bvh = read_bvh(tmp_path / "a.bvh")
    assert bvh.names == ("Hips", "Chest", "Chest_End")
    pos = bvh_forward_kinematics(bvh)[0]
    # Chest rotated 90° about z: its end site offset (0, 5, 0) becomes (-5, 0, 0).
    assert_close(pos, [[1, 2, 3], [1, 12, 3], [-4, 12, 3]], atol=1e-9)


def _bvh_skeleton():
    """(name, parent, offset cm, channel order) for a CMU-like BVH rig, ~170 cm tall."""
    zxy, xyz = "Zrotation Xrotation Yrotation", "Xrotation Yrotation Zrotation"
    return [
        ("Hips", None, (0, 0, 0), "Xposition Yposition Zposition " + zxy),
        ("RightUpLeg", "Hips", (-10, -5, 0), zxy), ("RightLeg", "RightUpLeg", (0, -42, 0), "Xrotation"),
        ("RightFoot", "RightLeg", (0, -40, 0), zxy),
        ("LeftUpLeg", "Hips", (10, -5, 0), zxy), ("LeftLeg", "LeftUpLeg", (0, -42, 0), "Xrotation"),
        ("LeftFoot", "LeftLeg", (0, -40, 0), zxy),
        ("Spine", "Hips", (0, 10, 0), zxy), ("Neck", "Spine", (0, 40, 0), zxy), ("Neck1", "Neck", (0, 6, 0), zxy),
        ("Head", "Neck1", (0, 6, 0), zxy),
        ("RightArm", "Spine", (-18, 36, 0), xyz), ("RightForeArm", "RightArm", (-28, 0, 0), xyz),
        ("RightHand", "RightForeArm", (-25, 0, 0), xyz),
        ("LeftArm", "Spine", (18, 36, 0), xyz), ("LeftForeArm", "LeftArm", (28, 0, 0), xyz),
        ("LeftHand", "LeftForeArm", (25, 0, 0), xyz),
    ]


def _write_bvh(path, joints, motion):
    children = {}
    for name, parent, _, _ in joints:
        children.setdefault(parent, []).append(name)
    info = {j[0]: j for j in joints}
    out = ["HIERARCHY"]

    def emit(name, depth):
        _, parent, off, chans = info[name]
        pad = "  " * depth
        out.append(f"{pad}{'ROOT' if parent is None else 'JOINT'} {name}")
        out.append(pad + "{")
        out.append(f"{pad}  OFFSET {off[0]} {off[1]} {off[2]}")
        out.append(f"{pad}  CHANNELS {len(chans.split())} {chans}")
        for child in children.get(name, []):
            emit(child, depth + 1)
        if name not in children:
            end = (0, 18, 0) if name == "Head" else (0, -5, 3)
            out.extend([pad + "  End Site", pad + "  {", f"{pad}    OFFSET {end[0]} {end[1]} {end[2]}", pad + "  }"])
        out.append(pad + "}")

    emit(joints[0][0], 0)
    out += ["MOTION", f"Frames: {len(motion)}", "Frame Time: 0.0083333"]
    out += [" ".join(f"{v:.6f}" for v in row) for row in motion]
    path.write_text("\n".join(out) + "\n")


def _bvh_reference(joints, motion):
    """Plain per-frame loop with SciPy: intrinsic Euler in channel order (uppercase sequence)."""
    result = []
    for row in motion:
        col, world = 0, {}
        for name, parent, off, chans in joints:
            chans = chans.split()
            vals = row[col:col + len(chans)]
            col += len(chans)
            t = np.array(off, dtype=np.float64)
            rot_axes, rot_vals = "", []
            for c, v in zip(chans, vals):
                if c.endswith("position"):
                    t["XYZ".index(c[0])] = v
                else:
                    rot_axes += c[0]
                    rot_vals.append(v)
            r = Rotation.from_euler(rot_axes, rot_vals, degrees=True) if rot_axes else Rotation.identity()
            if parent is None:
                world[name] = (r, t)
            else:
                pr, pp = world[parent]
                world[name] = (pr * r, pp + pr.apply(t))
        head_r, head_p = world["Head"]
        world["Head_End"] = (head_r, head_p + head_r.apply([0, 18, 0]))
        result.append({n: p for n, (_, p) in world.items()})
    return result


def test_bvh_load_fk_mapping_units_and_up_axis(tmp_path):
    from gpumosaic.sources.bvh import load_bvh

    joints = _bvh_skeleton()
    n_ch = sum(len(j[3].split()) for j in joints)
    rng = np.random.default_rng(9)
    motion = rng.uniform(-60, 60, size=(5, n_ch))
    motion[:, :3] = rng.uniform(-50, 50, size=(5, 3))
    _write_bvh(tmp_path / "take.bvh", joints, motion)
    with pytest.warns(UserWarning, match="Unit guessed as 'cm'"):
        loaded = load_bvh(tmp_path / "take.bvh")
    assert any("guessed" in n for n in loaded.report.notes)
    ref = _bvh_reference(joints, motion)
    bvh_for_lsp = {"r_ankle": "RightFoot", "r_knee": "RightLeg", "r_hip": "RightUpLeg", "l_hip": "LeftUpLeg",
                   "l_knee": "LeftLeg", "l_ankle": "LeftFoot", "r_wrist": "RightHand", "r_elbow": "RightForeArm",
                   "r_shoulder": "RightArm", "l_shoulder": "LeftArm", "l_elbow": "LeftForeArm",
                   "l_wrist": "LeftHand", "neck": "Neck1", "head_top": "Head_End"}
    expected = np.array([[f[bvh_for_lsp[n]] for n in LSP_NAMES] for f in ref]) * 0.01
    assert_close(loaded.mocap.poses, y_to_z(expected), atol=1e-5)
    explicit = load_bvh(tmp_path / "take.bvh", scale=0.01, up="z", joint_map={"neck": ["Neck", "Head"]})
    expected_neck = (np.array([f["Neck"] for f in ref]) + np.array([f["Head"] for f in ref])) / 2 * 0.01
    assert_close(explicit.mocap.poses[:, LSP_NAMES.index("neck")], expected_neck, atol=1e-5)


def test_bvh_malformed(tmp_path):
    from gpumosaic.sources.bvh import load_bvh

    joints = _bvh_skeleton()
    n_ch = sum(len(j[3].split()) for j in joints)
    _write_bvh(tmp_path / "t.bvh", joints, np.zeros((2, n_ch)))
    lines = (tmp_path / "t.bvh").read_text().splitlines()
    lines[-1] = " ".join(["0"] * (n_ch - 1))
    (tmp_path / "t.bvh").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"t.bvh, line {len(lines)}: expected {n_ch} channel values, got {n_ch - 1}"):
        load_bvh(tmp_path / "t.bvh", scale="cm")
    (tmp_path / "t.bvh").write_text("HIERARCHY\nROOT Hips\n{\n  OFFSET 0 0\n  CHANNELS 1 Xposition\n}\n")
    with pytest.raises(ValueError, match="line 5: expected a number for OFFSET"):
        load_bvh(tmp_path / "t.bvh", scale="cm")
    _write_bvh(tmp_path / "t.bvh", [j for j in joints if j[0] != "LeftHand"], np.zeros((1, n_ch - 3)))
    with pytest.raises(ValueError, match="no point for LSP14 joint 'l_wrist'"):
        load_bvh(tmp_path / "t.bvh", scale="cm")


# --------------------------------------------------------------------------------------------------------
# CMU ASF/AMC
# --------------------------------------------------------------------------------------------------------

# (name, parent, direction, length, axis angles (deg, XYZ), dofs)
CMU_BONES = [
    ("lhipjoint", "root", (0.57, -0.75, 0.35), 2.4, (0, 0, -20), ""),
    ("lfemur", "lhipjoint", (0.34, -0.94, 0), 7.2, (0, 0, 20), "rx ry rz"),
    ("ltibia", "lfemur", (0.34, -0.94, 0), 7.4, (0, 0, 20), "rx"),
    ("rhipjoint", "root", (-0.57, -0.75, 0.35), 2.4, (0, 0, 20), ""),
    ("rfemur", "rhipjoint", (-0.34, -0.94, 0), 7.2, (0, 0, -20), "rx ry rz"),
    ("rtibia", "rfemur", (-0.34, -0.94, 0), 7.4, (0, 0, -20), "rx"),
    ("lowerback", "root", (0, 1, 0), 2.0, (0, 0, 0), "rx ry rz"),
    ("upperback", "lowerback", (0, 1, 0), 2.0, (0, 0, 0), "rx ry rz"),
    ("thorax", "upperback", (0, 1, 0), 2.0, (0, 0, 0), "rx ry rz"),
    ("lowerneck", "thorax", (0, 1, 0.1), 1.6, (0, 0, 0), "rx ry rz"),
    ("upperneck", "lowerneck", (0, 1, 0), 1.6, (0, 0, 0), "rx ry rz"),
    ("head", "upperneck", (0, 1, 0), 1.6, (0, 0, 0), "rx ry rz"),
    ("lclavicle", "thorax", (0.9, 0.4, 0), 3.5, (0, 0, -20), "ry rz"),
    ("lhumerus", "lclavicle", (1, 0, 0), 5.0, (0, 0, 90), "rx ry rz"),
    ("lradius", "lhumerus", (1, 0, 0), 3.4, (0, 0, 90), "rx"),
    ("rclavicle", "thorax", (-0.9, 0.4, 0), 3.5, (0, 0, 20), "ry rz"),
    ("rhumerus", "rclavicle", (-1, 0, 0), 5.0, (0, 0, -90), "rx ry rz"),
    ("rradius", "rhumerus", (-1, 0, 0), 3.4, (0, 0, -90), "rx"),
]


def _write_asf(path, bones):
    out = [":version 1.10", ":name VICON", ":units", "  mass 1.0", "  length 0.45", "  angle deg",
           ":documentation", "   test skeleton", ":root", "   order TX TY TZ RX RY RZ", "   axis XYZ",
           "   position 0 0 0", "   orientation 0 0 0", ":bonedata"]
    for i, (name, _, d, length, axis, dof) in enumerate(bones, start=1):
        out += ["  begin", f"     id {i}", f"     name {name}", f"     direction {d[0]} {d[1]} {d[2]}",
                f"     length {length}", f"     axis {axis[0]} {axis[1]} {axis[2]} XYZ"]
        if dof:
            out.append(f"    dof {dof}")
            out += ["    limits " + " ".join("(-180.0 180.0)" for _ in dof.split())]
        out.append("  end")
    out += [":hierarchy", "  begin"]
    parents = {}
    for name, parent, *_ in bones:
        parents.setdefault(parent, []).append(name)
    out += [f"    {p} {' '.join(c)}" for p, c in parents.items()]
    out.append("  end")
    path.write_text("\n".join(out) + "\n")


def _write_amc(path, bones, root, values):
    out = ["#!OML:ASF test.asf", ":FULLY-SPECIFIED", ":DEGREES"]
    for f in range(len(root)):
        out.append(str(f + 1))
        out.append("root " + " ".join(f"{v:.5f}" for v in root[f]))
        for (name, *_, dof), vals in zip(bones, values[f]):
            if dof:
                out.append(name + " " + " ".join(f"{v:.5f}" for v in vals[:len(dof.split())]))
    path.write_text("\n".join(out) + "\n")


def _cmu_reference(bones, root, values):
    """Acclaim FK per frame with SciPy: 'xyz' (extrinsic = x applied first) for axes and dofs."""
    out = []
    for f in range(len(root)):
        rot = {"root": Rotation.from_euler("xyz", root[f][3:], degrees=True)}
        pos = {"root": np.array(root[f][:3], dtype=np.float64)}
        for (name, parent, d, length, axis, dof), vals in zip(bones, values[f]):
            c = Rotation.from_euler("xyz", axis, degrees=True)
            full = [0.0, 0.0, 0.0]
            for k, dname in enumerate(dof.split()):
                full["xyz".index(dname[1])] = vals[k]
            m = Rotation.from_euler("xyz", full, degrees=True)
            rot[name] = rot[parent] * c * m * c.inv()
            unit = np.array(d, dtype=np.float64) / np.linalg.norm(d)
            pos[name] = pos[parent] + length * rot[name].apply(unit)
        out.append(pos)
    return out


def test_cmu_one_rotated_bone_by_hand(tmp_path):
    from gpumosaic.sources.cmu import cmu_forward_kinematics, read_amc, read_asf

    _write_asf(tmp_path / "s.asf", [("a", "root", (1, 0, 0), 2.0, (0, 0, 90), "rx")])
    _write_amc(tmp_path / "s_01.amc", [("a", "root", None, None, None, "rx")], [[0, 0, 0, 0, 0, 0]], [[[90.0]]])
    asf = read_asf(tmp_path / "s.asf")
    pos = cmu_forward_kinematics(asf, read_amc(tmp_path / "s_01.amc", asf))[0]
    # C = Rz(90) turns the bone's x axis onto world y, so rx = 90° turns about world y: (1,0,0) -> (0,0,-1).
    assert_close(pos, [[0, 0, 0], [0, 0, -2]], atol=1e-9)


def test_cmu_load_fk_units_mapping(tmp_path):
    from gpumosaic.sources.cmu import load_cmu

    rng = np.random.default_rng(10)
    n = 4
    root = np.concatenate([rng.uniform(-20, 20, (n, 3)), rng.uniform(-40, 40, (n, 3))], 1)
    values = rng.uniform(-50, 50, size=(n, len(CMU_BONES), 3))
    _write_asf(tmp_path / "07.asf", CMU_BONES)
    _write_amc(tmp_path / "07_03.amc", CMU_BONES, root, values)
    loaded = load_cmu(tmp_path / "07_03.amc")
    ref = _cmu_reference(CMU_BONES, root, values)
    cmu_for_lsp = {"r_ankle": "rtibia", "r_knee": "rfemur", "r_hip": "rhipjoint", "l_hip": "lhipjoint",
                   "l_knee": "lfemur", "l_ankle": "ltibia", "r_wrist": "rradius", "r_elbow": "rhumerus",
                   "r_shoulder": "rclavicle", "l_shoulder": "lclavicle", "l_elbow": "lhumerus",
                   "l_wrist": "lradius", "neck": "lowerneck", "head_top": "head"}
    metres = (1 / 0.45) * 2.54 / 100
    expected = np.array([[f[cmu_for_lsp[j]] for j in LSP_NAMES] for f in ref]) * metres
    assert_close(loaded.mocap.poses, y_to_z(expected), atol=1e-5)
    assert loaded.sequences == (str(tmp_path / "07_03.amc"),)


def test_cmu_drops_and_malformed(tmp_path):
    from gpumosaic.sources.cmu import load_cmu

    _write_asf(tmp_path / "07.asf", CMU_BONES)
    values = np.zeros((2, len(CMU_BONES), 3))
    _write_amc(tmp_path / "07_01.amc", CMU_BONES, np.zeros((2, 6)), values)
    lines = (tmp_path / "07_01.amc").read_text().splitlines()
    del lines[next(i for i, line in enumerate(lines) if line.startswith("rtibia"))]  # frame 1 lacks rtibia
    (tmp_path / "07_01.amc").write_text("\n".join(lines) + "\n")
    with pytest.warns(DroppedEntriesWarning, match="incomplete frame"):
        assert len(load_cmu(tmp_path / "07_01.amc").mocap) == 1
    (tmp_path / "07_01.amc").write_text("1\nroot 0 0 0 0 0 0\nlfoot 1 2 3\n")
    with pytest.raises(ValueError, match=r"07_01.amc, line 3: unknown bone 'lfoot'"):
        load_cmu(tmp_path / "07_01.amc")
    (tmp_path / "07_01.amc").write_text("1\nroot 0 0 0 0 0 0\nlfemur 1 2\n")
    with pytest.raises(ValueError, match=r"line 3: bone 'lfemur' expects 3 values"):
        load_cmu(tmp_path / "07_01.amc")


# --------------------------------------------------------------------------------------------------------
# TRC
# --------------------------------------------------------------------------------------------------------

TRC_MARKERS = ("RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "RShoulder", "RElbow", "RWrist", "LShoulder",
               "LElbow", "LWrist", "Neck", "Nose", "LEar", "REar")


def _write_trc(path, xyz, names=TRC_MARKERS, units="mm", gaps=()):
    n, m = xyz.shape[:2]
    out = [f"PathFileType\t4\t(X/Y/Z)\t{path.name}",
           "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\tOrigDataStartFrame\tOrigNumFrames",
           f"60.00\t60.00\t{n}\t{len(names)}\t{units}\t60.00\t1\t{n}",
           "Frame#\tTime\t" + "\t\t\t".join(names),
           "\t\t" + "\t".join(f"X{k + 1}\tY{k + 1}\tZ{k + 1}" for k in range(m)), ""]
    for f in range(n):
        vals = [f"{v:.4f}" for v in xyz[f].ravel()]
        for gf, gm in gaps:
            if gf == f:
                vals[3 * gm:3 * gm + 3] = ["", "", ""]
        out.append(f"{f + 1}\t{f / 60:.4f}\t" + "\t".join(vals))
    path.write_text("\n".join(out) + "\n")


def test_trc_units_up_axis_head_extrapolation_and_gaps(tmp_path):
    from gpumosaic.sources.coco import HEAD_TOP_FACTOR
    from gpumosaic.sources.trc import load_trc

    rng = np.random.default_rng(11)
    xyz = rng.uniform(-900, 1700, size=(3, len(TRC_MARKERS), 3))
    _write_trc(tmp_path / "walk.trc", xyz, gaps=[(1, TRC_MARKERS.index("RKnee"))])
    with pytest.warns(DroppedEntriesWarning, match="gap"):
        loaded = load_trc(tmp_path / "walk.trc")
    assert loaded.frame.tolist() == [0, 2]
    m = {n: xyz[[0, 2], TRC_MARKERS.index(n)] / 1000 for n in TRC_MARKERS}
    neck = m["Neck"]
    head = neck + HEAD_TOP_FACTOR * ((m["LEar"] + m["REar"]) / 2 - neck)
    expected = np.stack([m[n] for n in TRC_MARKERS[:13]] + [head], 1)
    lsp_order = [TRC_MARKERS.index(n) for n in ("RAnkle", "RKnee", "RHip", "LHip", "LKnee", "LAnkle", "RWrist",
                                                 "RElbow", "RShoulder", "LShoulder", "LElbow", "LWrist", "Neck")]
    expected = np.concatenate([expected[:, lsp_order], expected[:, 13:]], 1)
    assert_close(loaded.mocap.poses, y_to_z(expected), atol=1e-5)


def test_trc_malformed(tmp_path):
    from gpumosaic.sources.trc import load_trc

    xyz = np.zeros((2, len(TRC_MARKERS), 3))
    _write_trc(tmp_path / "a.trc", xyz)
    text = (tmp_path / "a.trc").read_text().replace(f"\t{len(TRC_MARKERS)}\tmm", "\t99\tmm")
    (tmp_path / "a.trc").write_text(text)
    with pytest.raises(ValueError, match=r"a.trc, line 4: 16 marker names but NumMarkers = 99"):
        load_trc(tmp_path / "a.trc")
    _write_trc(tmp_path / "a.trc", xyz, units="furlongs")
    with pytest.raises(ValueError, match="unknown Units 'furlongs'"):
        load_trc(tmp_path / "a.trc")
    _write_trc(tmp_path / "a.trc", xyz)
    (tmp_path / "a.trc").write_text((tmp_path / "a.trc").read_text().replace("\t0.0000\t", "\tabc\t", 1))
    with pytest.raises(ValueError, match="line 7: non-numeric field"):
        load_trc(tmp_path / "a.trc")


def test_trc_truncated_file_is_reported_not_read_wrong(tmp_path):
    """A file cut inside a number (``-0.99...`` -> ``-0``) must not load that frame with a wrong value: the cut
    row and the frames the header's NumFrames announces but the file lacks are dropped and counted."""
    from gpumosaic.sources.trc import load_trc, read_trc

    rng = np.random.default_rng(5)
    xyz = rng.uniform(-900, 900, size=(6, len(TRC_MARKERS), 3))
    xyz[3, TRC_MARKERS.index("RHip"), 0] = -991.2345  # the cut falls inside this number
    _write_trc(tmp_path / "full.trc", xyz)
    full = load_trc(tmp_path / "full.trc")
    assert full.report.total == 6 and full.report.num_dropped == 0
    text = (tmp_path / "full.trc").read_text()
    cut = text.index("\t-991.2345") + len("\t-9")  # the file now ends "...\t-9"
    (tmp_path / "cut.trc").write_text(text[:cut])
    with pytest.warns(DroppedEntriesWarning) as record:
        loaded = load_trc(tmp_path / "cut.trc")
    message = str(record[0].message)
    assert "last row cut short" in message and "missing: file has 4 of NumFrames = 6 rows" in message
    assert loaded.report.total == 6 and loaded.report.kept == 3
    assert loaded.report.dropped == {"cut.trc: last row cut short (no line break; file truncated)": 1,
                                     "cut.trc: missing: file has 4 of NumFrames = 6 rows (truncated)": 2}
    assert loaded.frame.tolist() == [0, 1, 2]
    assert_close(loaded.mocap.poses, full.mocap.poses[:3])
    # Cut at a line boundary: every row read is complete and kept; the missing frames are still counted.
    (tmp_path / "half.trc").write_text(text[:text.index("\n4\t") + 1])
    with pytest.warns(DroppedEntriesWarning, match=r"dropped 3 \(missing: file has 3 of NumFrames = 6"):
        names, pos, _, frames = read_trc(tmp_path / "half.trc")
    assert frames.tolist() == [1, 2, 3] and pos.shape == (3, len(TRC_MARKERS), 3)
    with pytest.warns(DroppedEntriesWarning):
        strided = load_trc(tmp_path / "half.trc", stride=2)  # frames 0, 2 read; 4 missing
    assert strided.report.total == 3 and strided.report.kept == 2
    # More rows than NumFrames: inconsistent, refused.
    (tmp_path / "long.trc").write_text(text.replace("\t6\t16\tmm", "\t5\t16\tmm"))
    with pytest.raises(ValueError, match=r"long.trc: 6 data rows but the header's NumFrames = 5"):
        load_trc(tmp_path / "long.trc")
    # A file cut inside the frame number of its last row is a truncation, not a malformed file.
    (tmp_path / "minus.trc").write_text(text[:text.index("\n4\t") + 1] + "4\t0.05\t-")
    with pytest.warns(DroppedEntriesWarning, match="last row cut short"):
        assert load_trc(tmp_path / "minus.trc").report.kept == 3


# --------------------------------------------------------------------------------------------------------
# DeepMimic
# --------------------------------------------------------------------------------------------------------

URDF_ORIGINS = {  # pybullet_data/humanoid/humanoid.urdf joint origins (URDF units; pybullet scales by 0.25)
    "chest": (0, 0.944604, 0), "neck": (0, 0.895576, 0), "right_hip": (0, 0, 0.339548),
    "right_knee": (0, -1.686184, 0), "right_ankle": (0, -1.639480, 0), "right_shoulder": (-0.0962, 0.974, 0.73244),
    "right_elbow": (0, -1.099152, 0), "right_wrist": (0, -1.035788, 0), "left_hip": (0, 0, -0.339548),
    "left_knee": (0, -1.686184, 0), "left_ankle": (0, -1.639480, 0), "left_shoulder": (-0.0962, 0.974, -0.73244),
    "left_elbow": (0, -1.099152, 0), "left_wrist": (0, -1.035788, 0),
}
DM_PARENT = {"chest": "root", "neck": "chest", "right_hip": "root", "right_knee": "right_hip",
             "right_ankle": "right_knee", "right_shoulder": "chest", "right_elbow": "right_shoulder",
             "right_wrist": "right_elbow", "left_hip": "root", "left_knee": "left_hip", "left_ankle": "left_knee",
             "left_shoulder": "chest", "left_elbow": "left_shoulder", "left_wrist": "left_elbow"}
DM_FOR_LSP = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
              "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck", "head_top")
# Frame row layout: (name, width) after the duration.
DM_COLUMNS = [("root_pos", 3), ("root", 4), ("chest", 4), ("neck", 4), ("right_hip", 4), ("right_knee", 1),
              ("right_ankle", 4), ("right_shoulder", 4), ("right_elbow", 1), ("left_hip", 4), ("left_knee", 1),
              ("left_ankle", 4), ("left_shoulder", 4), ("left_elbow", 1)]


def _dm_reference(row):
    """Plain loop with SciPy quaternions (scalar last) and the URDF origins × 0.25."""
    cols, k = {}, 1
    for name, w in DM_COLUMNS:
        cols[name] = row[k:k + w]
        k += w
    rot = {"root": Rotation.from_quat(np.roll(cols["root"], -1))}
    pos = {"root": np.array(cols["root_pos"])}
    for name, parent in DM_PARENT.items():
        if name in ("right_knee", "left_knee", "right_elbow", "left_elbow"):
            local = Rotation.from_rotvec([0, 0, cols[name][0]])
        elif name in cols:
            local = Rotation.from_quat(np.roll(cols[name], -1))
        else:
            local = Rotation.identity()
        pos[name] = pos[parent] + rot[parent].apply(0.25 * np.array(URDF_ORIGINS[name]))
        rot[name] = rot[parent] * local
    pos["head_top"] = pos["neck"] + rot["neck"].apply([0, 0.25 * (0.7 + 0.41), 0])
    return np.array([pos[n] for n in DM_FOR_LSP])


def _dm_row(rng, identity=False):
    row = [0.0333]
    for name, w in DM_COLUMNS:
        if name == "root_pos":
            row += [0.1, 0.9, -0.2]
        elif w == 4:
            q = np.array([1.0, 0, 0, 0]) if identity else rng.normal(size=4)
            row += list(q / np.linalg.norm(q))
        else:
            row += [0.0 if identity else float(rng.uniform(-1.5, 0))]
    return row


def test_deepmimic_rest_pose_by_hand_and_random_frames(tmp_path):
    from gpumosaic.sources.deepmimic import load_deepmimic

    rng = np.random.default_rng(12)
    rows = [_dm_row(rng, identity=True)] + [_dm_row(rng) for _ in range(3)]
    (tmp_path / "humanoid3d_test.txt").write_text(json.dumps({"Loop": "wrap", "Frames": rows}))
    loaded = load_deepmimic(tmp_path / "humanoid3d_test.txt")
    # Rest pose by hand: right hip 0.25·0.339548 to the right (+z, y-up) of the root at (0.1, 0.9, -0.2);
    # knee 0.25·1.686184 below it; in z-up the right side is -y.
    hip = np.array([0.1, 0.9, -0.2 + 0.25 * 0.339548])
    knee = hip + [0, -0.25 * 1.686184, 0]
    assert_close(loaded.mocap.poses[0, LSP_NAMES.index("r_hip")], y_to_z(hip), atol=1e-6)
    assert_close(loaded.mocap.poses[0, LSP_NAMES.index("r_knee")], y_to_z(knee), atol=1e-6)
    expected = np.stack([_dm_reference(np.array(r)) for r in rows])
    assert_close(loaded.mocap.poses, y_to_z(expected), atol=1e-5)


def test_deepmimic_urdf_offsets_and_malformed(tmp_path):
    from gpumosaic.sources.deepmimic import load_deepmimic, read_urdf_offsets

    urdf = """<robot name="h">
  <link name="neck"><collision><origin rpy="0 0 0" xyz="0 0.8 0"/><geometry><sphere radius="0.4"/></geometry>
  </collision></link>
  <joint name="chest" type="spherical"><parent link="root"/><child link="chest"/>
    <origin rpy="0 0 0" xyz="0 2.0 0"/></joint>
</robot>"""
    (tmp_path / "h.urdf").write_text(urdf)
    offsets, head = read_urdf_offsets(tmp_path / "h.urdf")
    assert offsets == {"chest": (0.0, 0.5, 0.0)}
    # pybullet's shipped humanoid.urdf ends with NUL bytes after </robot>: they are tolerated.
    (tmp_path / "nul.urdf").write_bytes(urdf.encode() + b"\x00\x00")
    assert read_urdf_offsets(tmp_path / "nul.urdf") == (offsets, head)
    assert head == pytest.approx((0.0, 0.3, 0.0))
    rows = [_dm_row(np.random.default_rng(0), identity=True)]
    (tmp_path / "c.txt").write_text(json.dumps({"Frames": rows}))
    loaded = load_deepmimic(tmp_path / "c.txt", urdf=tmp_path / "h.urdf", up="z")
    neck = np.array([0.1, 0.9 + 0.5 + 0.25 * 0.895576, -0.2])
    assert_close(loaded.mocap.poses[0, 12], neck, atol=1e-6)
    assert_close(loaded.mocap.poses[0, 13], neck + [0, 0.3, 0], atol=1e-6)
    (tmp_path / "c.txt").write_text(json.dumps({"Frames": [rows[0][:43]]}))
    with pytest.raises(ValueError, match=r"c.txt: Frames\[0\] must be a list of 44 numbers"):
        load_deepmimic(tmp_path / "c.txt")
