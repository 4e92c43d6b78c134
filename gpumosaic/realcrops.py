"""Real training crops (paper §4.1): pool images fitted into the network's S×S box, flipped, labelled.

The paper trains on mosaics and real images alternately. A real batch is made of pool images, each cropped
into the S×S box by the same :func:`~gpumosaic.geometry.fit_to_box` as the mosaics' poses (joints' bounding
box centred, longer side ``S - 2·margin``) and resampled once from the stored image. Half of them (drawn per
sample) are mirrored: the image is flipped left/right about the box's vertical centre line, ``x -> S-1-x``,
and the joints are swapped left/right (``skeleton.flip``); a known 3D pose is mirrored the same way
(``X -> -X`` in camera axes, joints swapped).

**Class of a real crop** (:func:`real_labels`):

1. where the crop has a known 3D pose (oriented, camera axes, torso-centred): the class of that pose,
   ``classes.encode(pose3d)``, the same rule as for mosaics;
2. otherwise: the class whose members' mean 2D pose is nearest to the crop's 2D pose, both brought into the
   S×S box by ``fit_to_box`` (same size and margin), by the squared Euclidean distance between the
   flattened ``J·2`` poses (the k-means metric, in 2D). Classes without members are never chosen; ties go to
   the lowest class index. A 2D pose does not tell a person seen from the front from one seen from the back
   mirrored, so rule 2 may pick either; its 2D error is what it minimises.

Convention:
    2D ``(x, y)`` pixels of the S×S box, ``x`` right, ``y`` down, pixel centres at integers (box centre
    ``((S-1)/2, (S-1)/2)``); 3D camera axes (``x`` right, ``y`` down, ``z`` forward), metres.

Shape glossary: B batch, N pool images, J joints, K classes, S box side.
"""

from __future__ import annotations

import torch

from ._check import check_shape
from .geometry import apply_affine, compose_affine, default_margin, fit_to_box
from .roll import roll_affine
from .skeleton import Skeleton
from .sources.base import Pool2D
from .warp import warp_gather

__all__ = ["real_crops", "flip_crops", "class_box_poses", "real_labels", "mean_pose_baseline"]


def real_crops(pool: Pool2D, index: torch.Tensor, size: int, margin: float | None = None,
               chunk: int = 256, roll: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool entries ``index`` cropped into the S×S box (no flip).

    Args:
        pool: the real images (uint8 or float, any stored size).
        index: int64 (B,) rows of ``pool``.
        size: S, the box side in pixels.
        margin: pixels left on each side of the longer extent; ``None``: :func:`default_margin`.
        chunk: warps at a time (bounds memory).
        roll: float (B,) degrees or ``None``: turn each image about its joints' mean by
            :func:`gpumosaic.roll.roll_affine` (the image-space twin of a rolled camera) before
            ``fit_to_box`` of the turned joints, still one resampling from the stored image.

    Returns:
        ``(images (B, 3, S, S) float32 in [0, 1], pose2d (B, J, 2) float32 box pixels)`` on the pool's device.
    """
    index = index.to(device=pool.images.device, dtype=torch.int64)
    margin = default_margin(size) if margin is None else float(margin)
    joints = pool.joints[index].float()
    turn = None
    if roll is not None:
        check_shape(roll, [str(index.shape[0])], name="roll")
        turn = roll_affine(roll.to(joints.device, joints.dtype), joints.mean(-2))  # (B, 2, 3) stored -> turned
        joints = apply_affine(turn, joints)
    box, box_from_stored = fit_to_box(joints, size, margin)
    if turn is not None:
        box_from_stored = compose_affine(box_from_stored, turn)
    images = warp_gather(pool.images, index, box_from_stored, (size, size), chunk=chunk, dtype=torch.float32)
    return images, box


def flip_crops(images: torch.Tensor, pose2d: torch.Tensor, flip: torch.Tensor, skeleton: Skeleton,
               pose3d: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mirror the crops where ``flip`` is True: image flipped left/right, joints swapped left/right.

    Args:
        images: float (B, C, S, S) box crops.
        pose2d: float (B, J, 2) box pixels.
        flip: bool (B,) which samples to mirror.
        skeleton: the joint layout (its ``flip`` permutation: mirrored joint ``k`` is original joint
            ``flip[k]``).
        pose3d: float (B, J, 3) oriented 3D poses (camera axes) or ``None``.

    Returns:
        ``(images, pose2d, pose3d)`` new tensors (inputs are not modified): where flipped,
        ``image[..., u] = old[..., S-1-u]``, ``pose2d[:, k] = (S-1-x, y)`` of old joint ``flip[k]`` and
        ``pose3d[:, k] = (-X, Y, Z)`` of old joint ``flip[k]``.
    """
    b = check_shape(images, ["B", "C", "S", "S"], name="images")
    check_shape(pose2d, ["B", "J", "2"], name="pose2d", dims=b)
    check_shape(flip, ["B"], name="flip", dims=b)
    s = images.shape[-1]
    perm = skeleton.flip_tensor(device=pose2d.device)
    f = flip.to(device=images.device, dtype=torch.bool)
    out_images = torch.where(f[:, None, None, None], images.flip(-1), images)
    mirrored2d = pose2d[:, perm] * pose2d.new_tensor([-1.0, 1.0]) + pose2d.new_tensor([s - 1.0, 0.0])
    out2d = torch.where(f[:, None, None], mirrored2d, pose2d)
    out3d = None
    if pose3d is not None:
        check_shape(pose3d, ["B", "J", "3"], name="pose3d", dims=b)
        mirrored3d = pose3d[:, perm] * pose3d.new_tensor([-1.0, 1.0, 1.0])
        out3d = torch.where(f[:, None, None], mirrored3d, pose3d)
    return out_images, out2d, out3d


def class_box_poses(classes, size: int, margin: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes' mean 2D poses brought into the S×S box by ``fit_to_box``, and which classes have members.

    Returns:
        ``(poses (K, J, 2) float box pixels, valid (K,) bool)``.
    """
    if classes.mean_pose2d is None:
        raise ValueError("Expected pose classes fitted with 2D poses (mean_pose2d), got mean_pose2d=None")
    box, _ = fit_to_box(classes.mean_pose2d.float(), size, default_margin(size) if margin is None else margin)
    return box, classes.counts > 0


def real_labels(pose2d: torch.Tensor, classes, size: int, margin: float | None = None,
                pose3d: torch.Tensor | None = None, has3d: torch.Tensor | None = None,
                box_poses: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Class of each real crop (module docstring: 3D class where known, else nearest mean 2D pose).

    Args:
        pose2d: float (B, J, 2) the crops' 2D poses (any frame: they are fitted into the box again).
        classes: :class:`~gpumosaic.classes.PoseClasses` fitted with 2D poses at box side ``size``.
        size, margin: the box of the classes' mean 2D poses.
        pose3d: float (B, J, 3) oriented 3D poses, or ``None`` (no 3D anywhere).
        has3d: bool (B,) where ``pose3d`` is known; ``None`` with ``pose3d``: everywhere.
        box_poses: the result of :func:`class_box_poses` (computed when ``None``).

    Returns:
        int64 (B,) class indices on ``pose2d``'s device.
    """
    check_shape(pose2d, ["B", "J", "2"], name="pose2d")
    boxes, valid = class_box_poses(classes, size, margin) if box_poses is None else box_poses
    q, _ = fit_to_box(pose2d.float(), size, default_margin(size) if margin is None else margin)
    qf = q.reshape(q.shape[0], -1)
    cf = boxes.to(qf.device).reshape(boxes.shape[0], -1)
    # ||q - c||² = ||q||² - 2 q·c + ||c||²; the argmin only needs ||c||² - 2 q·c. Empty classes: +inf.
    d = (cf * cf).sum(-1)[None] - 2.0 * qf @ cf.T
    d = d.masked_fill(~valid.to(qf.device)[None], float("inf"))
    labels = d.argmin(-1)
    if pose3d is not None:
        check_shape(pose3d, ["B", "J", "3"], name="pose3d")
        from3d = classes.encode(pose3d.float()).to(labels.device)
        known = torch.ones_like(labels, dtype=torch.bool) if has3d is None else has3d.to(labels.device).bool()
        labels = torch.where(known, from3d, labels)
    return labels


def _real_labels_reference(pose2d, classes, size, margin=None, pose3d=None, has3d=None) -> torch.Tensor:
    """Plain-loop twin of :func:`real_labels` (tests only): float64, one crop and one class at a time."""
    m = default_margin(size) if margin is None else margin
    out = []
    for b in range(pose2d.shape[0]):
        if pose3d is not None and (has3d is None or bool(has3d[b])):
            best, arg = float("inf"), -1
            for k in range(classes.num_classes):
                d = float(((pose3d[b].double() - classes.centres[k].double()) ** 2).sum())
                if d < best:
                    best, arg = d, k
            out.append(arg)
            continue
        q, _ = fit_to_box(pose2d[b].double(), size, m)
        best, arg = float("inf"), -1
        for k in range(classes.num_classes):
            if int(classes.counts[k]) == 0:
                continue
            c, _ = fit_to_box(classes.mean_pose2d[k].double(), size, m)
            d = float(((q - c) ** 2).sum())
            if d < best:
                best, arg = d, k
        out.append(arg)
    return torch.tensor(out, dtype=torch.long)


def mean_pose_baseline(pose2d: torch.Tensor) -> torch.Tensor:
    """The mean 2D pose (J, 2) of training box poses (B, J, 2): the "mean 2D pose" trivial baseline."""
    check_shape(pose2d, ["B", "J", "2"], name="pose2d")
    return pose2d.float().mean(0)
