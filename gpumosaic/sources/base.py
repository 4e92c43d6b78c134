"""Data sources: :class:`Pool2D` (annotated images) and :class:`Mocap3D` (3D poses in metres)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

from .._check import check_shape, checks_enabled
from ..skeleton import LSP14, Skeleton

__all__ = ["Pool2D", "Mocap3D", "FAR_OUTSIDE"]

FAR_OUTSIDE = 0.25
"""Pool joints farther outside their image than this fraction of the image side are flagged (a warning)."""


@dataclass(frozen=True)
class Pool2D:
    """N annotated images of people, all of one stored size.

    Attributes:
        images: uint8 (N, 3, H, W) at rest (or float in [0, 1], e.g. to take gradients w.r.t. the pool).
        joints: float32 (N, J, 2) complete 2D annotations in stored-image pixels.
        skeleton: the joint layout of ``joints``.
        ids: int64 (N,) provenance ids (e.g. the frame number in the source dataset).
        content_box: float (N, 4) ``(x0, y0, x1, y1)``, the part of each stored image filled from its photo:
            stored pixels whose centres lie within ``[x0, x1] × [y0, y1]`` hold the photo's own content, the
            rest is padding where the person's crop left the photo (:func:`gpumosaic.pools.build_pool`
            records it; edges on half pixels). ``None``: every stored pixel is content. With the engine's
            ``mask_outside`` (default) padding never wins the index map over content.

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
    content_box: torch.Tensor | None = None

    def __post_init__(self) -> None:
        dims = check_shape(self.images, ["N", "C", "H", "W"], name="pool images")
        check_shape(self.joints, ["N", "J", "2"], name="pool joints", dims=dims)
        if dims["N"] == 0:
            raise ValueError("Pool2D needs at least one image, got an empty pool")
        if dims["C"] != 3:
            shape = tuple(self.images.shape)
            if dims["W"] in (1, 3, 4) and dims["C"] > 4:
                hint = f"channels-last (N, H, W, C) images: use images.permute(0, 3, 1, 2)"
            elif dims["C"] == 4:
                hint = "RGBA: drop the alpha channel with images[:, :3] (or composite it onto a background)"
            elif dims["C"] == 1:
                hint = "grayscale: convert with images.expand(-1, 3, -1, -1)"
            else:
                hint = "expected (N, 3, H, W) RGB images"
            raise ValueError(f"Expected RGB pool images of shape (N, 3, H, W), got {shape} ({hint})")
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
        elif not isinstance(self.ids, torch.Tensor) or self.ids.shape != (dims["N"],) or self.ids.is_floating_point():
            got = tuple(self.ids.shape) if isinstance(self.ids, torch.Tensor) else type(self.ids).__name__
            raise ValueError(f"Expected pool ids as an integer tensor of shape ({dims['N']},) (one per image), "
                             f"got {got}" + (f" {self.ids.dtype}" if isinstance(self.ids, torch.Tensor) else ""))
        if self.content_box is not None:
            box = self.content_box
            if not isinstance(box, torch.Tensor) or box.shape != (dims["N"], 4) or not box.is_floating_point():
                got = (f"{tuple(box.shape)} {box.dtype}" if isinstance(box, torch.Tensor) else type(box).__name__)
                raise ValueError(f"Expected content_box as a float tensor of shape ({dims['N']}, 4) "
                                 f"(x0, y0, x1, y1 per image), got {got}")
            if box.device != self.joints.device:
                raise ValueError(f"content_box is on {box.device}, pool joints on {self.joints.device}")
            if checks_enabled() and not bool(torch.isfinite(box).all()):
                raise ValueError("content_box holds NaN or infinite values")
        if checks_enabled():
            self._check_values(dims)

    def _check_values(self, dims: dict) -> None:
        """Float images in [0, 1] without NaN; joints far outside their image flagged (one pass, no grad)."""
        with torch.no_grad():
            if self.images.is_floating_point():
                lo, hi = torch.aminmax(self.images.detach())
                if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):  # NaN propagates into aminmax
                    raise ValueError("Expected finite float pool images, got NaN or infinite pixels")
                if float(lo) < 0 or float(hi) > 1:
                    raise ValueError(f"Expected float pool images in [0, 1] (or uint8 in [0, 255]), got values in "
                                     f"[{float(lo):.3g}, {float(hi):.3g}]" +
                                     ("; divide by 255" if float(hi) <= 255 and float(lo) >= 0 else ""))
            h, w = dims["H"], dims["W"]
            x, y = self.joints[..., 0], self.joints[..., 1]
            far = ((x < -FAR_OUTSIDE * w) | (x > (w - 1) + FAR_OUTSIDE * w) |
                   (y < -FAR_OUTSIDE * h) | (y > (h - 1) + FAR_OUTSIDE * h)).any(1)
            count = int(far.sum())
        if count:
            rows = far.nonzero().flatten()[:5].tolist()
            warnings.warn(f"{count} of {dims['N']} pool entries have joints more than {FAR_OUTSIDE:.0%} of the image "
                          f"side outside their {h}x{w} image (rows {rows}{'...' if count > 5 else ''}): mosaics "
                          f"built from them copy border pixels; check the annotations' pixel frame", UserWarning,
                          stacklevel=3)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored images."""
        return (self.images.shape[-2], self.images.shape[-1])

    def to(self, device=None) -> "Pool2D":
        box = None if self.content_box is None else self.content_box.to(device)
        return replace(self, images=self.images.to(device), joints=self.joints.to(device),
                       ids=self.ids.to(device), content_box=box)

    def subset(self, index: torch.Tensor | slice) -> "Pool2D":
        box = None if self.content_box is None else self.content_box[index]
        return replace(self, images=self.images[index], joints=self.joints[index], ids=self.ids[index],
                       content_box=box)


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
