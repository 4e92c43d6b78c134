"""Camera roll: cameras turned about their optical axis (an option; the paper's cameras are level).

The paper's virtual cameras (DESIGN.md step 2) look at the torso centre with a level horizon: world up
always projects to image up. Real cameras are often rolled (a phone held askew, a tilted tripod head), so a
network trained on level views only has never seen a person whose vertical axis is turned in the image.
``ViewSettings(roll_range=(lo, hi))`` adds a roll ``ρ ~ U[lo, hi]`` degrees per (pose, view) pair, drawn by
the same counter-based hash as the view angles (stream 2 of :func:`gpumosaic.camera.hashed_uniform`), so a
pair's roll depends only on ``(seed, pose, view)``. The default ``(0, 0)`` is the paper's (no roll, and the
hash is not even evaluated: outputs are bit-identical to the level cameras).

Convention (camera ``x`` right, ``y`` down, ``z`` forward): a roll ``ρ`` replaces the camera axes by
``x' = cos ρ·x + sin ρ·y``, ``y' = -sin ρ·x + cos ρ·y``, ``z' = z``, i.e. ``p' = Q(ρ) p`` with
``Q = [[c, s, 0], [-s, c, 0], [0, 0, 1]]``. Because the projection divides ``x`` and ``y`` by the same
``z``, the 2D joints (relative to the principal point) turn by the same 2×2 block ``Q₂ = [[c, s], [-s, c]]``.
As displayed (``y`` down), a positive roll turns the image content counter-clockwise.

:func:`roll_affine` is the image-space twin used for real crops (:func:`gpumosaic.realcrops.real_crops`):
the same ``Q₂`` about a given centre, so real and synthetic samples see one distribution of rolls.

Shape glossary: M poses, V views, B batch, J joints.
"""

from __future__ import annotations

import torch

from .camera import Cameras, ViewBatch, hashed_uniform
from .settings import ViewSettings

__all__ = ["STREAM_ROLL", "roll_matrix", "roll_views", "view_rolls", "roll_affine", "has_roll"]

STREAM_ROLL = 2
"""Hash stream of the roll angle (0 and 1 are azimuth and elevation)."""


def has_roll(settings: ViewSettings) -> bool:
    """Whether ``settings`` roll the cameras at all (``roll_range != (0, 0)``)."""
    return tuple(settings.roll_range) != (0.0, 0.0)


def view_rolls(pose_index: torch.Tensor, view_index: torch.Tensor, seed: int, settings: ViewSettings,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Roll angles of (pose, view) pairs: ``lo + u·(hi - lo)`` with ``u = hashed_uniform(seed, 2, m, v)``.

    Args:
        pose_index, view_index: int64 (...) broadcastable indices (as for :func:`~gpumosaic.camera.view_angles`).
        seed: the dataset's seed.
        settings: gives ``roll_range`` in degrees.
        dtype: floating dtype of the output.

    Returns:
        float (...) degrees on the indices' device (the constant ``lo`` where ``lo == hi``, without hashing).
    """
    lo, hi = settings.roll_range
    m, v = torch.broadcast_tensors(pose_index, view_index)
    if lo == hi:
        return torch.full(m.shape, lo, dtype=dtype, device=m.device)
    u = hashed_uniform(seed, STREAM_ROLL, m, v)
    return (lo + u * (hi - lo)).to(dtype)


def roll_matrix(roll_deg: torch.Tensor) -> torch.Tensor:
    """``Q(ρ)`` of the module docstring: float (..., 3, 3) for float (...) degrees."""
    r = torch.deg2rad(roll_deg)
    c, s = torch.cos(r), torch.sin(r)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([c, s, z], -1), torch.stack([-s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def roll_views(views: ViewBatch, roll_deg: torch.Tensor) -> ViewBatch:
    """Roll every camera of ``views`` about its optical axis.

    Args:
        views: a :class:`~gpumosaic.camera.ViewBatch` with (...) leading dims (e.g. (M, V) or (B,)).
        roll_deg: float (...) degrees, the views' leading shape.

    Returns:
        A new :class:`~gpumosaic.camera.ViewBatch`: ``pose2d`` and ``pose3d`` turned by ``Q₂`` / ``Q``,
        ``cam_from_world`` ``(Q R, Q t)``; ``occluded`` unchanged (a roll moves no joint in front of another);
        ``cameras.azimuth`` and ``elevation`` still describe the level camera before the roll.
    """
    if tuple(roll_deg.shape) != tuple(views.pose2d.shape[:-2]):
        raise ValueError(f"Expected roll_deg of shape {tuple(views.pose2d.shape[:-2])}, got {tuple(roll_deg.shape)}")
    q = roll_matrix(roll_deg.to(views.pose3d.dtype))  # (..., 3, 3)
    pose3d = torch.einsum("...ij,...kj->...ki", q, views.pose3d)
    pose2d = torch.einsum("...ij,...kj->...ki", q[..., :2, :2].to(views.pose2d.dtype), views.pose2d)
    cam = views.cameras
    cameras = Cameras(azimuth=cam.azimuth, elevation=cam.elevation, distance=cam.distance, focal=cam.focal,
                      cam_from_world_R=q @ cam.cam_from_world_R,
                      cam_from_world_t=torch.einsum("...ij,...j->...i", q, cam.cam_from_world_t))
    return ViewBatch(pose2d=pose2d, pose3d=pose3d, occluded=views.occluded, cameras=cameras)


def roll_affine(roll_deg: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Image-space roll: the (..., 2, 3) affine map ``p -> centre + Q₂ (p - centre)`` (pixels, ``y`` down).

    Args:
        roll_deg: float (...) degrees.
        centre: float (..., 2) pixel centres of the rotation.
    """
    r = torch.deg2rad(roll_deg.to(centre.dtype))
    c, s = torch.cos(r), torch.sin(r)
    q = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (..., 2, 2)
    t = centre - torch.einsum("...ij,...j->...i", q, centre)
    return torch.cat([q, t[..., None]], -1)
