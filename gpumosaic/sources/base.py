"""Data sources: :class:`Pool2D` (annotated images) and :class:`Mocap3D` (3D poses in metres)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .._check import check_shape
from ..skeleton import LSP14, Skeleton

__all__ = ["Pool2D", "Mocap3D"]


@dataclass(frozen=True)
class Pool2D:
    """N annotated images of people, all of one stored size.

    Attributes:
        images: uint8 (N, 3, H, W) at rest (or float in [0, 1], e.g. to take gradients w.r.t. the pool).
        joints: float32 (N, J, 2) complete 2D annotations in stored-image pixels.
        skeleton: the joint layout of ``joints``.
        ids: int64 (N,) provenance ids (e.g. the frame number in the source dataset).

    Convention:
        Joints are ``(x, y)`` in pixels, ``x`` to the right (column), ``y`` down (row); pixel (row v,
        column u) has its centre at ``(x, y) = (u, v)``. Any H and W (even or odd) are valid.
        Mirroring (flip flag + left/right permutation) doubles the pool virtually in the engine: entries
        ``N..2N-1`` are the mirrored copies of ``0..N-1``; no copy is stored.
    """

    images: torch.Tensor
    joints: torch.Tensor
    skeleton: Skeleton = LSP14
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        dims = check_shape(self.images, ["N", "C", "H", "W"], name="pool images")
        check_shape(self.joints, ["N", "J", "2"], name="pool joints", dims=dims)
        if dims["N"] == 0:
            raise ValueError("Pool2D needs at least one image, got an empty pool")
        if dims["C"] != 3:
            raise ValueError(
                f"Expected RGB pool images with 3 channels, got {dims['C']} (convert grayscale with "
                f"images.expand(-1, 3, -1, -1))"
            )
        if dims["J"] != len(self.skeleton):
            raise ValueError(
                f"Pool joints have J={dims['J']} but skeleton {self.skeleton.name} has {len(self.skeleton)}"
            )
        if not (self.images.dtype == torch.uint8 or self.images.is_floating_point()):
            raise TypeError(f"Expected uint8 or float pool images, got {self.images.dtype}")
        if not self.joints.is_floating_point():
            raise TypeError(f"Expected floating-point pool joints, got {self.joints.dtype}")
        if not bool(torch.isfinite(self.joints).all()):
            raise ValueError("Pool joints hold NaN or infinite values; drop incomplete annotations first")
        if self.ids is None:
            object.__setattr__(self, "ids", torch.arange(dims["N"], device=self.joints.device))

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored images."""
        return (self.images.shape[-2], self.images.shape[-1])

    def to(self, device=None) -> "Pool2D":
        return replace(self, images=self.images.to(device), joints=self.joints.to(device),
                       ids=self.ids.to(device))

    def subset(self, index: torch.Tensor | slice) -> "Pool2D":
        return replace(self, images=self.images[index], joints=self.joints[index], ids=self.ids[index])


@dataclass(frozen=True)
class Mocap3D:
    """M 3D poses in metres.

    Attributes:
        poses: float32 (M, J, 3) joints in a world frame with ``z`` up (Human3.6M convention), metres.
        skeleton: the joint layout.
        ids: int64 (M,) provenance ids (e.g. frame numbers).
    """

    poses: torch.Tensor
    skeleton: Skeleton = LSP14
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        dims = check_shape(self.poses, ["M", "J", "3"], name="mocap poses")
        if dims["M"] == 0:
            raise ValueError("Mocap3D needs at least one pose, got none")
        if dims["J"] != len(self.skeleton):
            raise ValueError(
                f"Mocap poses have J={dims['J']} but skeleton {self.skeleton.name} has {len(self.skeleton)}"
            )
        if not self.poses.is_floating_point():
            raise TypeError(f"Expected floating-point mocap poses, got {self.poses.dtype}")
        if not bool(torch.isfinite(self.poses).all()):
            raise ValueError("Mocap poses hold NaN or infinite values")
        if self.ids is None:
            object.__setattr__(self, "ids", torch.arange(dims["M"], device=self.poses.device))

    def __len__(self) -> int:
        return self.poses.shape[0]

    def to(self, device=None) -> "Mocap3D":
        return replace(self, poses=self.poses.to(device), ids=self.ids.to(device))
