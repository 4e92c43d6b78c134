"""torchvision bridge: mosaics as ``tv_tensors`` so that ``transforms.v2`` pipelines keep the labels exact.

:func:`to_tv` turns a sample (or a batch) of :class:`~gpumosaic.OnlineMosaicDataset` / the engine into
``{"image": tv_tensors.Image, "keypoints": PoseKeyPoints, "pose3d": Pose3D, "occluded": JointFlags}``; any
``torchvision.transforms.v2`` pipeline then moves the image and the labels together, and :func:`from_tv`
returns gpumosaic's convention with a ``visible`` flag per joint::

    from torchvision.transforms import v2
    from gpumosaic.tvbridge import from_tv, to_tv
    augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(30), v2.Resize(256)])
    out = from_tv(augment(to_tv(batch)))
    out["image"], out["pose2d"], out["pose3d"], out["visible"]   # (B,3,256,256), (B,J,2), (B,J,3), (B,J)

What the bridge adds over plain ``tv_tensors.KeyPoints``:

* **Half-pixel shift.** gpumosaic puts pixel centres at integer coordinates (pixel ``(row v, column u)`` has
  its centre at ``(u, v)``). torchvision's resize, rotation and affine kernels for key points treat a
  coordinate as a position on the continuous canvas whose pixel centres are at ``u + 0.5`` (the convention of
  its image kernels), so :func:`to_tv` adds 0.5 and :func:`from_tv` subtracts it: a 2× resize then maps
  ``x -> 2x + 0.5`` and a 90° rotation about the image centre maps column ``u`` to row ``W - 1 - u``, exactly
  as the image's pixels move. (Converting by hand without the shift is off by 0.5 px after a 2× resize and by
  1 px after a 90° rotation.)
* **Flips.** torchvision's own key-point flip uses ``x -> W - 1 - x`` (the integer convention, inconsistent
  with its resize) and cannot know which joints are left and right. :class:`PoseKeyPoints`,
  :class:`Pose3D` and :class:`JointFlags` register their own flip kernels: the mirrored coordinates
  (``x -> W - x`` on the shifted canvas; ``x -> -x`` in 3D) *and* the skeleton's left/right permutation
  (:attr:`gpumosaic.skeleton.Skeleton.flip`), so that "left wrist" still names the left wrist. Vertical
  flips mirror too and swap likewise.
* **3D pose.** :class:`Pose3D` (camera frame, ``x`` right, ``y`` down, ``z`` forward) is rotated about the
  optical axis by in-plane rotations (``rotate``, the angle of ``affine``): the camera-frame pose stays
  consistent with the rotated image. Resizing, cropping and padding leave it unchanged (they change the
  camera's intrinsics, not the pose). Sheared affines, perspective and elastic warps have no 3D counterpart
  and raise ``ValueError`` rather than leave the 3D pose silently wrong.
* **Visibility.** :func:`from_tv` gives ``inside`` (the joint's pixel centre is on the canvas after the
  transforms) and ``visible = inside & ~occluded``.

Joints are never dropped or clamped (torchvision's ``SanitizeKeyPoints`` / clamping would change the label
layout); joints that leave the canvas keep their coordinates and are flagged by ``inside``.

Convention:
    gpumosaic side: ``(x, y)`` pixels, ``x`` right, ``y`` down, pixel centres at integers, origin at the
    centre of the top-left pixel. torchvision side (inside ``PoseKeyPoints``): the same axes with the origin
    at the top-left *corner* of the top-left pixel (pixel centres at ``+0.5``). ``canvas_size`` is
    ``(H, W)``. 3D: metres, camera frame.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .skeleton import LSP14, Skeleton, get_skeleton

__all__ = ["PoseKeyPoints", "Pose3D", "JointFlags", "to_tv", "from_tv", "PIXEL_SHIFT"]

PIXEL_SHIFT = 0.5
"""torchvision coordinate = gpumosaic coordinate + ``PIXEL_SHIFT``."""


def _skeleton_name(skeleton: Skeleton | str) -> str:
    return get_skeleton(skeleton).name


class PoseKeyPoints(tv_tensors.KeyPoints):
    """(..., J, 2) joints on torchvision's canvas (pixel centres at ``+0.5``) with their ``skeleton`` name.

    A ``tv_tensors.KeyPoints`` (resize, crop, pad, rotate, affine, perspective use torchvision's kernels)
    whose flips also swap left and right joints. Build it with :func:`to_tv`.
    """

    skeleton: str

    @classmethod
    def _wrap(cls, tensor: torch.Tensor, *, canvas_size: tuple[int, int], skeleton: str = LSP14.name,
              check_dims: bool = True) -> "PoseKeyPoints":
        points = super()._wrap(tensor, canvas_size=canvas_size, check_dims=check_dims)
        points.skeleton = skeleton
        return points

    @classmethod
    def wrap(cls, tensor: torch.Tensor, like: "PoseKeyPoints", **kwargs: Any) -> "PoseKeyPoints":
        return cls._wrap(tensor, canvas_size=kwargs.get("canvas_size", like.canvas_size),
                         skeleton=kwargs.get("skeleton", like.skeleton))

    def __new__(cls, data: Any, *, canvas_size: tuple[int, int], skeleton: Skeleton | str = LSP14,
                dtype: torch.dtype | None = None, device: torch.device | str | int | None = None,
                requires_grad: bool | None = None) -> "PoseKeyPoints":
        tensor = cls._to_tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        name = _skeleton_name(skeleton)
        if tensor.dim() < 2 or tensor.shape[-1] != 2 or tensor.shape[-2] != len(get_skeleton(name)):
            raise ValueError(f"Expected keypoints of shape (..., {len(get_skeleton(name))}, 2) for skeleton {name}, "
                             f"got {tuple(tensor.shape)}")
        return cls._wrap(tensor, canvas_size=tuple(canvas_size), skeleton=name)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return self._make_repr(canvas_size=self.canvas_size, skeleton=self.skeleton)


class _JointTensor(tv_tensors.TVTensor):
    """A per-joint tensor whose joint axis is ``_joint_dim`` and whose flips swap left and right."""

    skeleton: str
    _joint_dim = -1

    @classmethod
    def _wrap(cls, tensor: torch.Tensor, *, skeleton: str):
        out = tensor.as_subclass(cls)
        out.skeleton = skeleton
        return out

    @classmethod
    def wrap(cls, tensor: torch.Tensor, like: "_JointTensor", **kwargs: Any):
        return cls._wrap(tensor, skeleton=kwargs.get("skeleton", like.skeleton))

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return self._make_repr(skeleton=self.skeleton)


class Pose3D(_JointTensor):
    """(..., J, 3) 3D pose in the camera frame (metres, ``x`` right, ``y`` down, ``z`` forward).

    Flips mirror it (``x -> -x`` or ``y -> -y``) and swap left/right joints; ``rotate`` and ``affine`` rotate it
    about the optical axis by the image's angle; sheared affines, perspective and elastic raise.
    """

    _joint_dim = -2

    def __new__(cls, data: Any, *, skeleton: Skeleton | str = LSP14) -> "Pose3D":
        tensor = cls._to_tensor(data, dtype=None, device=None, requires_grad=None)
        name = _skeleton_name(skeleton)
        if tensor.dim() < 2 or tensor.shape[-1] != 3 or tensor.shape[-2] != len(get_skeleton(name)):
            raise ValueError(f"Expected pose3d of shape (..., {len(get_skeleton(name))}, 3) for skeleton {name}, "
                             f"got {tuple(tensor.shape)}")
        return cls._wrap(tensor, skeleton=name)


class JointFlags(_JointTensor):
    """(..., J) per-joint flags (e.g. ``occluded``): unchanged by warps, left/right swapped by flips."""

    def __new__(cls, data: Any, *, skeleton: Skeleton | str = LSP14) -> "JointFlags":
        tensor = cls._to_tensor(data, dtype=None, device=None, requires_grad=None)
        name = _skeleton_name(skeleton)
        if tensor.dim() < 1 or tensor.shape[-1] != len(get_skeleton(name)):
            raise ValueError(f"Expected joint flags of shape (..., {len(get_skeleton(name))}) for skeleton {name}, "
                             f"got {tuple(tensor.shape)}")
        return cls._wrap(tensor, skeleton=name)


# ----------------------------------------------------------------------------------------------------------
# Kernels (plain tensors + metadata), registered for the bridge's types
# ----------------------------------------------------------------------------------------------------------


def _swap_left_right(x: torch.Tensor, skeleton: str, dim: int) -> torch.Tensor:
    """The mirrored pose's joint k is the original's joint ``flip[k]``."""
    return x.index_select(dim, get_skeleton(skeleton).flip_tensor(x.device))


def flip_keypoints(keypoints: torch.Tensor, canvas_size: tuple[int, int], skeleton: str,
                   axis: int) -> torch.Tensor:
    """Mirror (..., J, 2) points on torchvision's canvas (``x -> W - x`` for ``axis=0``, ``y -> H - y`` for 1)
    and swap left/right joints. Plain tensors; returns a new tensor."""
    out = keypoints.clone()
    extent = canvas_size[1] if axis == 0 else canvas_size[0]
    out[..., axis] = extent - keypoints[..., axis]  # pixel u (centre u + 0.5) -> pixel extent - 1 - u
    return _swap_left_right(out, skeleton, -2)


def flip_pose3d(pose3d: torch.Tensor, skeleton: str, axis: int) -> torch.Tensor:
    """Mirror a (..., J, 3) camera-frame pose (``x -> -x`` for ``axis=0``, ``y -> -y`` for 1), swap left/right."""
    out = pose3d.clone()
    out[..., axis] = -pose3d[..., axis]
    return _swap_left_right(out, skeleton, -2)


def rotate_pose3d(pose3d: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a (..., J, 3) camera-frame pose about the optical axis as ``F.rotate(image, angle)`` turns the
    image: ``angle`` degrees counter-clockwise on screen. With ``y`` down, a counter-clockwise turn by ``a``
    maps ``(x, y) -> (x cos a + y sin a, -x sin a + y cos a)``; ``z`` is kept."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    x, y = pose3d[..., 0], pose3d[..., 1]
    return torch.stack([c * x + s * y, -s * x + c * y, pose3d[..., 2]], dim=-1)


@F.register_kernel(F.horizontal_flip, PoseKeyPoints)
def _hflip_keypoints(inpt: PoseKeyPoints, **kwargs) -> PoseKeyPoints:
    out = flip_keypoints(inpt.as_subclass(torch.Tensor), inpt.canvas_size, inpt.skeleton, 0)
    return tv_tensors.wrap(out, like=inpt)


@F.register_kernel(F.vertical_flip, PoseKeyPoints)
def _vflip_keypoints(inpt: PoseKeyPoints, **kwargs) -> PoseKeyPoints:
    out = flip_keypoints(inpt.as_subclass(torch.Tensor), inpt.canvas_size, inpt.skeleton, 1)
    return tv_tensors.wrap(out, like=inpt)


@F.register_kernel(F.horizontal_flip, Pose3D)
def _hflip_pose3d(inpt: Pose3D, **kwargs) -> Pose3D:
    return tv_tensors.wrap(flip_pose3d(inpt.as_subclass(torch.Tensor), inpt.skeleton, 0), like=inpt)


@F.register_kernel(F.vertical_flip, Pose3D)
def _vflip_pose3d(inpt: Pose3D, **kwargs) -> Pose3D:
    return tv_tensors.wrap(flip_pose3d(inpt.as_subclass(torch.Tensor), inpt.skeleton, 1), like=inpt)


@F.register_kernel(F.horizontal_flip, JointFlags)
@F.register_kernel(F.vertical_flip, JointFlags)
def _flip_flags(inpt: JointFlags, **kwargs) -> JointFlags:
    return tv_tensors.wrap(_swap_left_right(inpt.as_subclass(torch.Tensor), inpt.skeleton, -1), like=inpt)


@F.register_kernel(F.rotate, Pose3D)
def _rotate_pose3d(inpt: Pose3D, angle: float, *args, **kwargs) -> Pose3D:
    return tv_tensors.wrap(rotate_pose3d(inpt.as_subclass(torch.Tensor), angle), like=inpt)


@F.register_kernel(F.affine, Pose3D)
def _affine_pose3d(inpt: Pose3D, angle: float, translate=None, scale: float = 1.0, shear=None,
                   *args, **kwargs) -> Pose3D:
    shear = [0.0, 0.0] if shear is None else ([float(shear)] * 2 if isinstance(shear, (int, float)) else shear)
    if any(abs(float(s)) > 0 for s in shear):
        raise ValueError(f"Pose3D: a sheared affine (shear={list(shear)}) has no 3D counterpart; use rotations, "
                         f"translations and scaling only, or drop pose3d from the sample")
    # Translation and scaling move/zoom the image (the camera's intrinsics); the pose turns with the image.
    return tv_tensors.wrap(rotate_pose3d(inpt.as_subclass(torch.Tensor), angle), like=inpt)


def _refuse(name: str):
    def kernel(inpt, *args, **kwargs):
        raise ValueError(f"Pose3D: {name} has no 3D counterpart; drop pose3d from the sample to use it")
    return kernel


for _functional in (F.perspective, F.elastic):
    F.register_kernel(_functional, Pose3D)(_refuse(_functional.__name__))


# ----------------------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------------------


def to_tv(sample: Mapping[str, torch.Tensor], skeleton: Skeleton | str = LSP14) -> dict[str, Any]:
    """Wrap a sample or batch for ``torchvision.transforms.v2``.

    Args:
        sample: a mapping with ``image`` float (..., 3, H, W) and ``pose2d`` (..., J, 2) (gpumosaic pixels),
            optionally ``pose3d`` (..., J, 3) camera frame and ``occluded`` (..., J) bool (the keys of
            :class:`~gpumosaic.OnlineMosaicDataset` batches); other keys are passed through unchanged.
        skeleton: the joints' layout (for the left/right swap of flips).

    Returns:
        A new dict: ``image`` ``tv_tensors.Image``, ``keypoints`` :class:`PoseKeyPoints` (``pose2d + 0.5``,
        ``canvas_size=(H, W)``), ``pose3d`` :class:`Pose3D` and ``occluded`` :class:`JointFlags` when given, and
        the other keys. ``pose2d`` is replaced by ``keypoints``. Inputs are not modified.
    """
    for key in ("image", "pose2d"):
        if key not in sample:
            raise KeyError(f"Expected sample to have {key!r}, got keys {sorted(sample)}")
    image, pose2d = sample["image"], sample["pose2d"]
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"Expected image of shape (..., 3, H, W), got {tuple(image.shape)}")
    name = _skeleton_name(skeleton)
    out = {k: v for k, v in sample.items() if k not in ("image", "pose2d", "pose3d", "occluded")}
    out["image"] = tv_tensors.Image(image)
    out["keypoints"] = PoseKeyPoints(pose2d + PIXEL_SHIFT, canvas_size=tuple(image.shape[-2:]), skeleton=name)
    if "pose3d" in sample:
        out["pose3d"] = Pose3D(sample["pose3d"], skeleton=name)
    if "occluded" in sample:
        out["occluded"] = JointFlags(sample["occluded"], skeleton=name)
    return out


def from_tv(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Back to plain tensors in gpumosaic's convention after the transforms.

    Returns:
        A new dict: ``image`` (..., 3, H', W'), ``pose2d`` (..., J, 2) = keypoints ``- 0.5``, ``inside`` bool
        (..., J) (the joint's pixel centre lies on the new canvas: ``0 <= x + 0.5 < W'``, same for ``y``),
        ``visible`` = ``inside & ~occluded`` (``inside`` without ``occluded``), ``pose3d`` and ``occluded``
        as plain tensors when present, and the other keys unchanged.
    """
    keypoints = sample.get("keypoints")
    if not isinstance(keypoints, PoseKeyPoints):
        raise TypeError(f"Expected sample['keypoints'] to be a PoseKeyPoints (made by to_tv), got "
                        f"{type(keypoints).__name__}")
    height, width = keypoints.canvas_size
    points = keypoints.as_subclass(torch.Tensor)
    out = {k: v for k, v in sample.items() if k not in ("image", "keypoints", "pose3d", "occluded")}
    out["image"] = sample["image"].as_subclass(torch.Tensor)
    out["pose2d"] = points - PIXEL_SHIFT
    inside = ((points[..., 0] >= 0) & (points[..., 0] < width) & (points[..., 1] >= 0) & (points[..., 1] < height))
    out["inside"] = inside
    visible = inside
    if "occluded" in sample:
        out["occluded"] = sample["occluded"].as_subclass(torch.Tensor)
        visible = inside & ~out["occluded"].bool()
    out["visible"] = visible
    if "pose3d" in sample:
        out["pose3d"] = sample["pose3d"].as_subclass(torch.Tensor)
    return out
