"""torchvision bridge: labels follow the image through transforms.v2, checked against numpy/OpenCV moves of
marker pixels (an independent computation), flips swap left/right, 3D poses turn with in-plane rotations."""

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from gpumosaic.skeleton import LSP14
from gpumosaic.tvbridge import JointFlags, Pose3D, PoseKeyPoints, from_tv, to_tv

J = len(LSP14)


def _marked(height, width, seed=0):
    """An image whose channel 0 is 0 except one marker pixel per joint (value (j + 1) / 16), and the joints'
    integer (x, y) positions (gpumosaic convention: pixel centres at integers)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(height * width, size=J, replace=False)
    xy = np.stack([flat % width, flat // width], 1).astype(np.float32)
    image = np.zeros((3, height, width), np.float32)
    image[0, xy[:, 1].astype(int), xy[:, 0].astype(int)] = (np.arange(J) + 1) / 16
    return image, xy


def _markers(channel):
    """Where each joint's marker pixel landed (mean position of the pixels holding its value)."""
    out = np.full((J, 2), np.nan)
    for j in range(J):
        rows, cols = np.nonzero(np.isclose(channel, (j + 1) / 16))
        out[j] = cols.mean(), rows.mean()
    return out


def _sample(image, xy, **extra):
    return {"image": torch.from_numpy(image), "pose2d": torch.from_numpy(xy), **extra}


def test_resize_2x_matches_opencv_nearest():
    image, xy = _marked(12, 17)
    out = from_tv(v2.Resize((24, 34), interpolation=v2.InterpolationMode.NEAREST)(to_tv(_sample(image, xy))))
    expected = _markers(cv2.resize(image[0], (34, 24), interpolation=cv2.INTER_NEAREST))  # pixel u -> 2u, 2u+1
    np.testing.assert_allclose(out["pose2d"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(expected, 2 * xy + 0.5)  # hand computation
    assert out["image"].shape == (3, 24, 34) and out["inside"].all()


def test_rotate_90_matches_numpy_rot90_and_turns_pose3d():
    image, xy = _marked(15, 15, seed=1)
    rng = np.random.default_rng(2)
    pose3d = np.concatenate([rng.uniform(-0.5, 0.5, (J, 2)), rng.uniform(3, 4, (J, 1))], 1).astype(np.float32)
    out = from_tv(v2.RandomRotation((90, 90))(to_tv(_sample(image, xy, pose3d=torch.from_numpy(pose3d)))))
    expected = _markers(np.rot90(image[0], k=1))  # counter-clockwise on screen
    np.testing.assert_allclose(out["pose2d"].numpy(), expected, atol=1e-4)
    # The 3D pose turned about the optical axis projects (pinhole, principal point at the image centre) where
    # the rotated image shows it: rotate the projection by hand with np.rot90's index map.
    c, f = 7.0, 50.0
    proj = lambda p: f * p[:, :2] / p[:, 2:] + c  # noqa: E731
    before, after = proj(pose3d), proj(out["pose3d"].numpy())
    np.testing.assert_allclose(after, np.stack([before[:, 1], 2 * c - before[:, 0]], 1), atol=1e-4)


def test_horizontal_flip_mirrors_and_swaps_left_right():
    image, xy = _marked(10, 13, seed=3)
    pose3d = torch.randn(J, 3)
    occluded = torch.zeros(J, dtype=torch.bool)
    occluded[LSP14.names.index("l_wrist")] = True
    out = from_tv(v2.RandomHorizontalFlip(p=1.0)(to_tv(_sample(image, xy, pose3d=pose3d, occluded=occluded))))
    moved = _markers(np.fliplr(image[0]))  # where the marker of original joint j is now
    flip = list(LSP14.flip)
    np.testing.assert_allclose(out["pose2d"].numpy(), moved[flip], atol=1e-5)  # joint k = mirrored flip[k]
    assert out["occluded"].nonzero().flatten().tolist() == [LSP14.names.index("r_wrist")]
    expected3d = pose3d[flip] * torch.tensor([-1.0, 1.0, 1.0])
    torch.testing.assert_close(out["pose3d"], expected3d)
    # the right wrist of the flipped image is the mirrored left wrist (names follow the person's sides)
    k = LSP14.names.index("r_wrist")
    assert out["pose2d"][k, 0] == 12 - xy[LSP14.names.index("l_wrist"), 0]
    back = from_tv(v2.RandomVerticalFlip(p=1.0)(v2.RandomVerticalFlip(p=1.0)(to_tv(_sample(image, xy)))))
    torch.testing.assert_close(back["pose2d"], torch.from_numpy(xy))


def test_visibility_after_crop_and_batch():
    image, xy = _marked(20, 20, seed=4)
    batch = {"image": torch.from_numpy(np.stack([image, image])), "pose2d": torch.from_numpy(np.stack([xy, xy])),
             "occluded": torch.zeros(2, J, dtype=torch.bool), "label": torch.tensor([3, 4])}
    tv = to_tv(batch)
    out = from_tv({k: F.crop(v, top=5, left=3, height=10, width=12) if k in ("image", "keypoints") else v
                   for k, v in tv.items()})
    inside = (xy[:, 0] >= 3) & (xy[:, 0] < 15) & (xy[:, 1] >= 5) & (xy[:, 1] < 15)
    assert out["inside"].tolist() == [inside.tolist()] * 2 and out["visible"].tolist() == [inside.tolist()] * 2
    np.testing.assert_allclose(out["pose2d"][0].numpy(), xy - [3, 5])
    assert out["label"].tolist() == [3, 4] and out["image"].shape == (2, 3, 10, 12)


def test_pose3d_refuses_what_has_no_3d_counterpart():
    pose3d = Pose3D(torch.randn(J, 3))
    with pytest.raises(ValueError, match="sheared affine"):
        F.affine(pose3d, angle=0.0, translate=[0, 0], scale=1.0, shear=[10.0, 0.0])
    with pytest.raises(ValueError, match="perspective has no 3D counterpart"):
        F.perspective(pose3d, startpoints=[[0, 0], [1, 0], [1, 1], [0, 1]], endpoints=[[0, 0], [1, 0], [1, 1], [0, 1]])
    rotated = F.affine(pose3d, angle=30.0, translate=[2, 1], scale=1.5, shear=[0.0, 0.0])
    torch.testing.assert_close(rotated.as_subclass(torch.Tensor), F.rotate(pose3d, 30.0).as_subclass(torch.Tensor))


def test_types_and_errors():
    image, xy = _marked(8, 8)
    tv = to_tv(_sample(image, xy))
    assert isinstance(tv["image"], tv_tensors.Image) and isinstance(tv["keypoints"], tv_tensors.KeyPoints)
    assert tv["keypoints"].canvas_size == (8, 8) and tv["keypoints"].skeleton == "lsp14"
    with pytest.raises(ValueError, match=r"Expected keypoints of shape \(..., 14, 2\)"):
        PoseKeyPoints(torch.zeros(3, 2), canvas_size=(8, 8))
    with pytest.raises(ValueError, match=r"Expected joint flags of shape"):
        JointFlags(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(KeyError, match="'pose2d'"):
        to_tv({"image": torch.zeros(3, 4, 4)})
    with pytest.raises(TypeError, match="made by to_tv"):
        from_tv({"image": torch.zeros(3, 4, 4), "keypoints": torch.zeros(J, 2)})
    before = torch.from_numpy(xy).clone()
    sample = _sample(image, xy)
    from_tv(v2.RandomHorizontalFlip(p=1.0)(to_tv(sample)))
    assert torch.equal(sample["pose2d"], before)  # inputs not modified
