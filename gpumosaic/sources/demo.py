"""Embedded demo data: synthetic clothed figures and synthetic motion capture, shipped with the package.

**This is demo data, not a dataset.** Nothing here comes from real people or real recordings. It exists so
that the pipeline (retrieval, warps, mosaics, blending, training loops) runs out of the box with no
download: ``load_demo_pool()`` returns a :class:`~gpumosaic.sources.base.Pool2D` of 160×160 images of
stylised, textured, differently clothed figures on varied backgrounds, and ``load_demo_mocap()`` a
:class:`~gpumosaic.sources.base.Mocap3D` of 3D poses in metres. Figures are drawn so that stitching parts of
different images leaves visible seams (clothing colours/textures, skin tones, backgrounds all differ), which
pose-aware blending then visibly softens. Results measured on it say nothing about real images.

Three parts:

1. A kinematic body model in the LSP14 layout (:data:`gpumosaic.skeleton.LSP14`): per-person limb lengths
   (:data:`SHAPE_NAMES`, :data:`SHAPE_RANGES`) and 21 joint angles (:data:`ANGLE_NAMES`,
   :data:`ANGLE_RANGES_DEG`); :func:`sample_body_shapes`, :func:`sample_poses`, :func:`forward_kinematics`.
2. An offline OpenCV renderer (per-image loops; never in a hot path) of figures built from capsules, convex
   hulls and ellipses in painter's order, with the exact projection of the 14 joints as annotation.
3. Storage in one ``.npz`` (JPEG bytes + offsets, joints, mocap poses, ids, a JSON ``meta`` string) written by
   ``python -m gpumosaic.sources.demo --out gpumosaic/data/demo.npz``; loaders read it with
   ``allow_pickle=False``.

Convention:
    World frame (3D): metres, right-handed, ``z`` up, feet near ``z = 0``. In the body's rest pose the person
    faces ``+x`` and their left is ``+y`` (their right is ``-y``); ``r_*`` joints are the person's right.
    Camera frame: ``x`` right, ``y`` down, ``z`` forward. Image (2D): pixels, ``x`` to the right (column),
    ``y`` down (row); pixel (row v, column u) has its centre at ``(x, y) = (u, v)``. Angles are radians in
    tensors (degrees only in :data:`ANGLE_RANGES_DEG`).
"""

from __future__ import annotations

import argparse
import colorsys
import importlib.resources
import io
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .._check import check_shape
from ..geometry import rotation_x, rotation_y, rotation_z
from ..skeleton import LSP14
from .base import Mocap3D, Pool2D

__all__ = [
    "SHAPE_NAMES",
    "SHAPE_RANGES",
    "ANGLE_NAMES",
    "ANGLE_RANGES_DEG",
    "ANKLE_HEIGHT",
    "SHOULDER_DROP",
    "DEMO_IMAGE_SIZE",
    "sample_body_shapes",
    "sample_poses",
    "forward_kinematics",
    "generate_demo",
    "write_demo",
    "load_demo_pool",
    "load_demo_mocap",
    "demo_path",
]

GENERATOR_VERSION = 1
DEMO_IMAGE_SIZE = 160
"""Side of the stored square demo images, in pixels."""
JPEG_QUALITY = 85

# --------------------------------------------------------------------------------------------------------
# Body model
# --------------------------------------------------------------------------------------------------------

SHAPE_NAMES = ("thigh", "shin", "upper_arm", "forearm", "torso", "shoulder_width", "hip_width", "head")
"""Body-shape parameters (metres), in column order of a shapes tensor (B, 8).

``thigh`` hip→knee, ``shin`` knee→ankle, ``upper_arm`` shoulder→elbow, ``forearm`` elbow→wrist, ``torso``
mid-hip→neck, ``shoulder_width`` between the two shoulder joints, ``hip_width`` between the two hip joints,
``head`` neck→head top. Each is the exact distance between the corresponding LSP14 joints of every pose.
"""

SHAPE_RANGES = {
    "thigh": (0.38, 0.50),
    "shin": (0.36, 0.48),
    "upper_arm": (0.26, 0.34),
    "forearm": (0.22, 0.29),
    "torso": (0.45, 0.60),
    "shoulder_width": (0.30, 0.42),
    "hip_width": (0.18, 0.28),
    "head": (0.22, 0.30),
}
"""Plausible adult ranges (metres) from which :func:`sample_body_shapes` draws."""

ANKLE_HEIGHT = 0.09
"""Height (m) of the lower ankle above the floor ``z = 0`` after :func:`forward_kinematics`."""
SHOULDER_DROP = 0.05
"""The shoulder joints lie this far (m) below the neck along the torso axis."""

ANGLE_NAMES = (
    "torso_lean", "torso_side", "torso_twist", "head_nod", "head_tilt",
    "r_hip_flex", "r_hip_abd", "r_hip_rot", "r_knee",
    "l_hip_flex", "l_hip_abd", "l_hip_rot", "l_knee",
    "r_shoulder_flex", "r_shoulder_abd", "r_shoulder_rot", "r_elbow",
    "l_shoulder_flex", "l_shoulder_abd", "l_shoulder_rot", "l_elbow",
)
"""Joint angles, in column order of an angles tensor (B, 21), radians.

Signs: ``torso_lean`` > 0 bends forward; ``torso_side`` > 0 leans to the person's right; ``torso_twist`` > 0
turns the upper body to the left (counter-clockwise seen from above); ``head_nod`` > 0 forward;
``head_tilt`` > 0 to the right. ``*_flex`` > 0 swings the limb forward (180° shoulder flexion = arm
overhead); ``*_abd`` > 0 moves it outward, away from the body's midline; ``*_rot`` > 0 is internal rotation
about the limb's own axis; ``*_knee`` > 0 bends the shin backward; ``*_elbow`` > 0 bends the forearm forward.
"""

ANGLE_RANGES_DEG = {
    "torso_lean": (-30.0, 60.0),
    "torso_side": (-30.0, 30.0),
    "torso_twist": (-40.0, 40.0),
    "head_nod": (-40.0, 50.0),
    "head_tilt": (-30.0, 30.0),
    "hip_flex": (-30.0, 120.0),
    "hip_abd": (-20.0, 45.0),
    "hip_rot": (-35.0, 45.0),
    "knee": (0.0, 150.0),
    "shoulder_flex": (-50.0, 180.0),
    "shoulder_abd": (-10.0, 180.0),
    "shoulder_rot": (-70.0, 90.0),
    "elbow": (0.0, 150.0),
}
"""Anatomical ranges (degrees). Left and right limbs share a range; keys drop the ``r_``/``l_`` prefix."""


def _angle_bounds_deg() -> tuple[list[float], list[float]]:
    lo, hi = [], []
    for name in ANGLE_NAMES:
        key = name[2:] if name[:2] in ("r_", "l_") else name
        lo.append(ANGLE_RANGES_DEG[key][0])
        hi.append(ANGLE_RANGES_DEG[key][1])
    return lo, hi


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        raise ValueError("Expected an explicit torch.Generator (randomness only via an explicit generator)")
    return generator


def sample_body_shapes(n: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``n`` adult body shapes.

    Every parameter lies in its :data:`SHAPE_RANGES` interval; parameters are positively correlated through
    a shared overall size (tall people have long thighs *and* long arms).

    Args:
        n: number of people.
        generator: the source of randomness; the output lives on its device.

    Returns:
        float32 (B, 8) limb lengths in metres, columns in :data:`SHAPE_NAMES` order.
    """
    generator = _default_generator(generator)
    if n < 0:
        raise ValueError(f"Expected n >= 0 body shapes, got {n}")
    dev = generator.device
    size = torch.rand(n, 1, generator=generator, device=dev)
    own = torch.rand(n, len(SHAPE_NAMES), generator=generator, device=dev)
    t = 0.65 * size + 0.35 * own  # in [0, 1]: shared size plus individual variation
    lo = torch.tensor([SHAPE_RANGES[k][0] for k in SHAPE_NAMES], device=dev)
    hi = torch.tensor([SHAPE_RANGES[k][1] for k in SHAPE_NAMES], device=dev)
    return lo + t * (hi - lo)


def sample_poses(n: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``n`` joint-angle vectors: random poses mixed with parametric motions.

    Kinds (probabilities): random poses inside comfortable sub-ranges (35 %), a walking cycle at a random
    phase (20 %), arm raises, frontal or lateral, one or both arms (12 %), squats at a random depth (11 %),
    reaching with one arm (11 %), kicking (11 %). Each gets ±4° of jitter; the result is clamped to
    :data:`ANGLE_RANGES_DEG`. Fully batched (no per-sample loop).

    Args:
        n: number of poses.
        generator: the source of randomness; the output lives on its device.

    Returns:
        float32 (B, 21) angles in radians, columns in :data:`ANGLE_NAMES` order.
    """
    generator = _default_generator(generator)
    if n < 0:
        raise ValueError(f"Expected n >= 0 poses, got {n}")
    dev = generator.device
    kinds = _pose_kinds(n, generator)  # (B,) long in 0..5
    u = torch.rand(6, n, 32, generator=generator, device=dev)
    sides = torch.rand(6, n, generator=generator, device=dev) < 0.5
    jitter = (torch.rand(n, len(ANGLE_NAMES), generator=generator, device=dev) * 2 - 1) * 4.0
    builders = (_pose_random, _pose_walk, _pose_arm_raise, _pose_squat, _pose_reach, _pose_kick)
    candidates = torch.stack([b(_Draw(u[i]), sides[i]) for i, b in enumerate(builders)])  # (6, B, 21) deg
    deg = candidates.gather(0, kinds.view(1, n, 1).expand(1, n, len(ANGLE_NAMES)))[0] + jitter
    lo, hi = _angle_bounds_deg()
    deg = torch.minimum(torch.maximum(deg, torch.tensor(lo, device=dev)), torch.tensor(hi, device=dev))
    return torch.deg2rad(deg)


_KIND_PROBS = (0.35, 0.20, 0.12, 0.11, 0.11, 0.11)


def _pose_kinds(n: int, generator: torch.Generator) -> torch.Tensor:
    r = torch.rand(n, generator=generator, device=generator.device)
    edges = torch.tensor(np.cumsum(_KIND_PROBS)[:-1].tolist(), device=generator.device)
    return torch.bucketize(r, edges, right=True)


class _Draw:
    """Hands out consecutive uniform columns of a (B, C) block: ``d(lo, hi)`` -> (B,) in [lo, hi)."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u, self.k = u, 0

    def __call__(self, lo: float, hi: float) -> torch.Tensor:
        col = self.u[:, self.k]
        self.k += 1
        return lo + (hi - lo) * col


def _assemble(torso, head, r_leg, l_leg, r_arm, l_arm) -> torch.Tensor:
    return torch.stack([*torso, *head, *r_leg, *l_leg, *r_arm, *l_arm], 1)  # (B, 21) degrees


def _by_side(side: torch.Tensor, dom: list, oth: list) -> tuple[list, list]:
    """Assign a dominant and another limb to (right, left): dominant is the right one where ``side``."""
    right = [torch.where(side, a, b) for a, b in zip(dom, oth)]
    left = [torch.where(side, b, a) for a, b in zip(dom, oth)]
    return right, left


def _pose_random(d: _Draw, side: torch.Tensor) -> torch.Tensor:
    torso = [d(-10, 35), d(-15, 15), d(-30, 30)]
    head = [d(-20, 35), d(-15, 15)]
    support = [d(-15, 30), d(-5, 20), d(-15, 25), d(0, 40)]
    free = [d(-25, 90), d(-10, 40), d(-25, 35), d(0, 120)]
    r_leg, l_leg = _by_side(side, free, support)
    r_arm = [d(-40, 170), d(0, 110), d(-40, 80), d(0, 140)]
    l_arm = [d(-40, 170), d(0, 110), d(-40, 80), d(0, 140)]
    return _assemble(torso, head, r_leg, l_leg, r_arm, l_arm)


def _pose_walk(d: _Draw, side: torch.Tensor) -> torch.Tensor:
    phase = d(0, 2 * math.pi)
    amp = d(0.7, 1.3)
    zero = torch.zeros_like(phase)

    def leg(ph):
        flex = 10 + 25 * amp * torch.sin(ph)
        knee = 5 + 55 * amp * torch.clamp(torch.cos(ph + 0.3), min=0) ** 1.5
        return [flex, zero + 3, zero + 5, knee]

    def arm(ph):
        return [-20 * amp * torch.sin(ph), d(5, 15), d(0, 20), 15 + 15 * amp * (1 - torch.sin(ph)) / 2]

    torso = [d(0, 12), d(-4, 4), 8 * amp * torch.sin(phase)]
    head = [d(-5, 15), d(-5, 5)]
    # The right arm swings forward with the left leg.
    return _assemble(torso, head, leg(phase), leg(phase + math.pi), arm(phase), arm(phase + math.pi))


def _pose_arm_raise(d: _Draw, side: torch.Tensor) -> torch.Tensor:
    t = d(0, 1)
    lateral = d(0, 1) < 0.5
    both = d(0, 1) < 0.4
    raised = [torch.where(lateral, d(0, 20), t * 175), torch.where(lateral, t * 170, d(5, 20)), d(-20, 40),
              d(0, 30)]
    rest = [d(-10, 20), d(5, 20), d(0, 30), d(5, 40)]
    mirror = [torch.where(both, a, b) for a, b in zip(raised, rest)]
    r_arm, l_arm = _by_side(side, raised, mirror)
    torso = [d(-8, 8), d(-6, 6), d(-10, 10)]
    head = [torch.where(lateral, d(-10, 10), -t * 20), d(-8, 8)]
    r_leg = [d(-5, 10), d(0, 10), d(-5, 15), d(0, 10)]
    l_leg = [d(-5, 10), d(0, 10), d(-5, 15), d(0, 10)]
    return _assemble(torso, head, r_leg, l_leg, r_arm, l_arm)


def _pose_squat(d: _Draw, side: torch.Tensor) -> torch.Tensor:
    t = d(0, 1)
    flex, knee = t * 105, t * 135
    r_leg = [flex + d(-5, 5), d(5, 25), d(-15, 5), knee + d(-5, 5)]
    l_leg = [flex + d(-5, 5), d(5, 25), d(-15, 5), knee + d(-5, 5)]
    reach = d(40, 95)
    r_arm = [t * reach + d(-10, 10), d(0, 25), d(-10, 30), d(0, 60)]
    l_arm = [t * reach + d(-10, 10), d(0, 25), d(-10, 30), d(0, 60)]
    torso = [t * 40 + d(-5, 5), d(-5, 5), d(-10, 10)]
    head = [-t * 20 + d(-5, 10), d(-5, 5)]
    return _assemble(torso, head, r_leg, l_leg, r_arm, l_arm)


def _pose_reach(d: _Draw, side: torch.Tensor) -> torch.Tensor:
    reach = [d(60, 130), d(0, 60), d(-20, 40), d(0, 30)]
    other = [d(-30, 40), d(5, 45), d(0, 40), d(10, 90)]
    r_arm, l_arm = _by_side(side, reach, other)
    sgn = torch.where(side, 1.0, -1.0)  # lean and twist toward the reaching arm
    torso = [d(10, 45), sgn * d(0, 20), -sgn * d(0, 30)]
    head = [d(-10, 30), sgn * d(0, 15)]
    step = [d(0, 40), d(0, 20), d(-10, 20), d(0, 50)]
    back = [d(-15, 5), d(0, 15), d(-10, 15), d(0, 25)]
    r_leg, l_leg = _by_side(side, step, back)
    return _assemble(torso, head, r_leg, l_leg, r_arm, l_arm)


def _pose_kick(d: _Draw, side: torch.Tensor) -> torch.Tensor:
    kick = [d(40, 100), d(-5, 20), d(-10, 20), d(0, 60)]
    support = [d(0, 20), d(0, 10), d(-10, 15), d(5, 30)]
    r_leg, l_leg = _by_side(side, kick, support)
    r_arm = [d(-30, 60), d(30, 90), d(-20, 40), d(10, 60)]
    l_arm = [d(-30, 60), d(30, 90), d(-20, 40), d(10, 60)]
    torso = [d(-25, 5), d(-10, 10), d(-20, 20)]
    head = [d(0, 30), d(-10, 10)]
    return _assemble(torso, head, r_leg, l_leg, r_arm, l_arm)


def _fk(shapes: torch.Tensor, angles: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward kinematics returning the joints (B, 14, 3) and segment frames (B, 3, 3) (world_from_segment)."""
    thigh, shin, upper, fore, torso_h, sw, hw, head = shapes.unbind(-1)
    a = angles.unbind(-1)
    zero = torch.zeros_like(thigh)

    def vec(x, y, z):
        return torch.stack(torch.broadcast_tensors(x, y, z), -1)

    def apply(r, v):
        return (r @ v.unsqueeze(-1)).squeeze(-1)

    # Rest pose: mid-hip at the origin, z up, facing +x, left = +y. Torso rotates about the mid-hip.
    r_torso = rotation_y(a[0]) @ rotation_x(a[1]) @ rotation_z(a[2])
    r_head = r_torso @ rotation_y(a[3]) @ rotation_x(a[4])
    neck = apply(r_torso, vec(zero, zero, torso_h))
    head_top = neck + apply(r_head, vec(zero, zero, head))
    frames = {"torso": r_torso, "head": r_head}
    joints = {"neck": neck, "head_top": head_top}
    for side, sgn, base in (("r", -1.0, 5), ("l", 1.0, 9)):
        # Leg: flexion about -y (forward), abduction about x (outward: -y for the right leg), internal
        # rotation about the thigh axis; the knee bends the shin backward (about +y).
        hip = vec(zero, sgn * hw / 2, zero)
        r_thigh = rotation_y(-a[base]) @ rotation_x(sgn * a[base + 1]) @ rotation_z(-sgn * a[base + 2])
        knee = hip + apply(r_thigh, vec(zero, zero, -thigh))
        r_shin = r_thigh @ rotation_y(a[base + 3])
        ankle = knee + apply(r_shin, vec(zero, zero, -shin))
        joints.update({f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle})
        frames.update({f"{side}_thigh": r_thigh, f"{side}_shin": r_shin})
    for side, sgn, base in (("r", -1.0, 13), ("l", 1.0, 17)):
        # Arm: same convention in the torso frame; the elbow bends the forearm forward (about -y).
        shoulder = neck + apply(r_torso, vec(zero, sgn * sw / 2, zero - SHOULDER_DROP))
        r_upper = r_torso @ rotation_y(-a[base]) @ rotation_x(sgn * a[base + 1]) @ rotation_z(-sgn * a[base + 2])
        elbow = shoulder + apply(r_upper, vec(zero, zero, -upper))
        r_fore = r_upper @ rotation_y(-a[base + 3])
        wrist = elbow + apply(r_fore, vec(zero, zero, -fore))
        joints.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist})
        frames.update({f"{side}_upper": r_upper, f"{side}_fore": r_fore})
    out = torch.stack([joints[n] for n in LSP14.names], -2)  # (B, 14, 3)
    # Stand on the floor: the lower ankle at ANKLE_HEIGHT.
    lowest = torch.minimum(out[..., 0, 2], out[..., 5, 2])
    lift = torch.stack([zero, zero, ANKLE_HEIGHT - lowest], -1)
    return out + lift.unsqueeze(-2), frames


def forward_kinematics(shapes: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """3D joints of people with the given limb lengths and joint angles.

    Args:
        shapes: float (B, 8) limb lengths in metres, :data:`SHAPE_NAMES` order.
        angles: float (B, 21) joint angles in radians, :data:`ANGLE_NAMES` order.

    Returns:
        (B, J=14, 3) joints in the LSP14 order, same dtype and device as ``shapes``.

    Convention:
        World frame, metres, ``z`` up. The mid-hip point is at ``x = y = 0``; the body is lifted so that the
        lower ankle is at ``z =`` :data:`ANKLE_HEIGHT`. With all angles zero the person stands upright
        facing ``+x``, legs and arms hanging straight down, the right side at ``-y``; shoulders lie
        :data:`SHOULDER_DROP` below the neck, ``shoulder_width / 2`` to each side.
    """
    dims = check_shape(shapes, ["B", str(len(SHAPE_NAMES))], name="shapes")
    check_shape(angles, ["B", str(len(ANGLE_NAMES))], name="angles", dims=dims)
    if not shapes.is_floating_point():
        raise TypeError(f"Expected floating-point shapes, got {shapes.dtype}")
    angles = angles.to(device=shapes.device, dtype=shapes.dtype)
    return _fk(shapes, angles)[0]


def _forward_kinematics_reference(shapes: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Plain per-person loop with SciPy rotations; same signature and output as :func:`forward_kinematics`."""
    from scipy.spatial.transform import Rotation

    out = []
    for shape, ang in zip(shapes.double().cpu().numpy(), angles.double().cpu().numpy()):
        thigh, shin, upper, fore, torso_h, sw, hw, head = shape
        a = dict(zip(ANGLE_NAMES, ang))
        # Intrinsic "YXZ" = Ry @ Rx @ Rz.
        r_torso = Rotation.from_euler("YXZ", [a["torso_lean"], a["torso_side"], a["torso_twist"]])
        r_head = r_torso * Rotation.from_euler("YX", [a["head_nod"], a["head_tilt"]])
        j = {"neck": r_torso.apply([0, 0, torso_h])}
        j["head_top"] = j["neck"] + r_head.apply([0, 0, head])
        for s, sgn in (("r", -1.0), ("l", 1.0)):
            hip = np.array([0.0, sgn * hw / 2, 0.0])
            rt = Rotation.from_euler("YXZ", [-a[f"{s}_hip_flex"], sgn * a[f"{s}_hip_abd"], -sgn * a[f"{s}_hip_rot"]])
            knee = hip + rt.apply([0, 0, -thigh])
            rs = rt * Rotation.from_euler("Y", a[f"{s}_knee"])
            j[f"{s}_hip"], j[f"{s}_knee"], j[f"{s}_ankle"] = hip, knee, knee + rs.apply([0, 0, -shin])
            sh = j["neck"] + r_torso.apply([0, sgn * sw / 2, -SHOULDER_DROP])
            ru = r_torso * Rotation.from_euler(
                "YXZ", [-a[f"{s}_shoulder_flex"], sgn * a[f"{s}_shoulder_abd"], -sgn * a[f"{s}_shoulder_rot"]])
            el = sh + ru.apply([0, 0, -upper])
            rf = ru * Rotation.from_euler("Y", -a[f"{s}_elbow"])
            j[f"{s}_shoulder"], j[f"{s}_elbow"], j[f"{s}_wrist"] = sh, el, el + rf.apply([0, 0, -fore])
        p = np.stack([j[n] for n in LSP14.names])
        p[:, 2] += ANKLE_HEIGHT - min(p[0, 2], p[5, 2])
        out.append(p)
    return torch.tensor(np.array(out).reshape(-1, 14, 3), dtype=shapes.dtype, device=shapes.device)


# --------------------------------------------------------------------------------------------------------
# Renderer (offline, numpy + OpenCV, one image at a time)
# --------------------------------------------------------------------------------------------------------

_SKIN = np.array([(255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 97), (160, 105, 70),
                  (120, 76, 50), (88, 56, 38)], np.float64) / 255
_HAIR = np.array([(25, 20, 18), (55, 38, 28), (100, 68, 40), (200, 168, 100), (150, 62, 30), (165, 165, 160),
                  (12, 10, 10)], np.float64) / 255
_CLOTH = np.array([(20, 20, 24), (240, 240, 236), (128, 128, 130), (30, 40, 90), (60, 90, 150),
                   (190, 170, 120), (120, 20, 30), (30, 80, 40), (200, 60, 40), (240, 200, 40)], np.float64) / 255
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT


def _colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.4:
        c = _CLOTH[rng.integers(len(_CLOTH))] + rng.normal(0, 0.03, 3)
    else:
        c = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95)))
    return np.clip(c, 0, 1)


def _contrast(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    """A second colour that stands out against ``c``."""
    for _ in range(8):
        d = _colour(rng)
        if np.abs(d - c).sum() > 0.6:
            return d
    return 1.0 - c


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a cells×cells random grid upsampled with bicubic interpolation."""
    g = rng.random((cells + 3, cells + 3, channels)).astype(np.float32)
    big = cv2.resize(g, (w + 3 * w // cells, h + 3 * h // cells), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(big.shape[0], big.shape[1], channels)
    oy, ox = h // cells, w // cells
    return np.clip(big[oy:oy + h, ox:ox + w], 0, 1).astype(np.float64)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, kind: str, scale: float = 1.0,
             contrast: float = 1.0) -> np.ndarray:
    """A (H, W, 3) float texture in [0, 1] of the given kind, in image coordinates."""
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
    other = _contrast(rng, base)
    other = base + contrast * (other - base)
    theta = rng.uniform(0, math.pi)
    proj = uu * math.cos(theta) + vv * math.sin(theta)
    if kind == "solid":
        t = np.zeros((h, w))
    elif kind == "stripes":
        period = rng.uniform(5, 14) * scale
        duty = rng.uniform(0.3, 0.6)
        # Anti-aliased square wave: signed distance to the stripe edge, one pixel of ramp.
        ph = np.mod(proj / period + rng.random(), 1.0)
        inside = np.minimum(ph * period, (duty - ph) * period)  # > 0 inside a stripe (px to its edge)
        t = np.clip(np.maximum(inside, (ph - 1) * period) + 0.5, 0, 1)
    elif kind == "checks":
        period = rng.uniform(6, 16) * scale
        a = np.mod(proj / period, 1.0) < 0.5
        b = np.mod((-uu * math.sin(theta) + vv * math.cos(theta)) / period, 1.0) < 0.5
        t = cv2.GaussianBlur((a ^ b).astype(np.float64), (0, 0), 0.6)
        if rng.random() < 0.5:  # tartan-ish: add a thin line grid
            t = np.clip(t * 0.7 + 0.3 * (np.mod(proj / period, 1.0) < 0.12), 0, 1)
    elif kind == "dots":
        sp = rng.uniform(7, 14) * scale
        r = sp * rng.uniform(0.18, 0.32)
        pu = np.mod(proj, sp) - sp / 2
        pv = np.mod(-uu * math.sin(theta) + vv * math.cos(theta), sp) - sp / 2
        t = np.clip(r - np.hypot(pu, pv) + 0.5, 0, 1)
    elif kind == "noise":
        t = _smooth_noise(rng, h, w, int(rng.integers(5, 14) / scale) + 2)[..., 0]
        t = np.clip((t - 0.5) * 2.2 + 0.5, 0, 1)
    elif kind == "gradient":
        t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
    elif kind == "denim":
        t = _smooth_noise(rng, h, w, 40)[..., 0] * 0.35
        t = t + 0.25 * (np.mod(uu + vv, 3) == 0)
        base = np.clip(np.array([0.18, 0.27, 0.48]) + rng.normal(0, 0.05, 3), 0, 1)
        other = np.clip(base * 1.5, 0, 1)
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return base * (1 - t[..., None]) + other * t[..., None]


_CLOTH_KINDS = ("solid", "stripes", "checks", "dots", "noise", "gradient")
_CLOTH_P = (0.3, 0.2, 0.15, 0.12, 0.12, 0.11)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.choice(["gradient", "wall_floor", "noise", "texture", "shapes"], p=[0.2, 0.25, 0.15, 0.15, 0.25])
    if kind == "gradient":
        img = _texture(rng, h, w, _colour(rng), "gradient")
    elif kind == "wall_floor":
        horizon = rng.uniform(0.35, 0.75) * h
        wall_kind = rng.choice(["solid", "stripes", "noise", "gradient"])
        wall = _texture(rng, h, w, _colour(rng) * 0.8 + 0.2, wall_kind, scale=2.0, contrast=0.35)
        vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
        depth = 40.0 / np.maximum(vv - horizon, 0.5)
        fx = (uu - w * rng.uniform(0.3, 0.7)) * depth / 40.0
        tile = rng.uniform(0.5, 1.5)
        check = (np.floor(fx / tile) + np.floor(depth / tile)) % 2
        floor_a = _colour(rng)
        floor_b = floor_a + (rng.uniform(0.1, 0.3)) * (_contrast(rng, floor_a) - floor_a)
        floor = floor_a * (1 - check[..., None]) + floor_b * check[..., None]
        floor = cv2.GaussianBlur(floor, (0, 0), 0.7)
        below = np.clip(vv - horizon + 0.5, 0, 1)[..., None]
        img = wall * (1 - below) + floor * below
    elif kind == "noise":
        a, b = _colour(rng), _colour(rng)
        t = 0.6 * _smooth_noise(rng, h, w, int(rng.integers(3, 8)), 3)
        t = t + 0.4 * _smooth_noise(rng, h, w, int(rng.integers(10, 20)), 3)
        img = a * (1 - t) + b * t
    elif kind == "texture":
        img = _texture(rng, h, w, _colour(rng), rng.choice(["stripes", "checks", "dots", "noise"]),
                       scale=rng.uniform(1.5, 3.0), contrast=rng.uniform(0.2, 0.6))
    else:
        img = _texture(rng, h, w, _colour(rng), rng.choice(["solid", "gradient"]))
    if kind == "shapes" or rng.random() < 0.3:
        img = _random_shapes(rng, img, int(rng.integers(3, 12)))
    return np.clip(img, 0, 1)


def _random_shapes(rng: np.random.Generator, img: np.ndarray, count: int) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    for _ in range(count):
        mask = np.zeros((h, w), np.uint8)
        c = (rng.uniform(-10, w + 10) * _ONE, rng.uniform(-10, h + 10) * _ONE)
        c = (int(c[0]), int(c[1]))
        kind = rng.integers(4)
        if kind == 0:
            half = rng.uniform(8, 50, 2)
            ang = rng.uniform(0, 180)
            box = cv2.boxPoints(((c[0] / _ONE, c[1] / _ONE), tuple(2 * half), ang))
            cv2.fillConvexPoly(mask, np.round(box * _ONE).astype(np.int32), 255, cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            cv2.circle(mask, c, int(rng.uniform(6, 40) * _ONE), 255, -1, cv2.LINE_AA, _SHIFT)
        elif kind == 2:
            axes = (int(rng.uniform(6, 50) * _ONE), int(rng.uniform(4, 25) * _ONE))
            cv2.ellipse(mask, c, axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        else:
            d = (int(rng.uniform(-80, 80) * _ONE), int(rng.uniform(-80, 80) * _ONE))
            cv2.line(mask, c, (c[0] + d[0], c[1] + d[1]), 255, int(rng.integers(2, 8)), cv2.LINE_AA, _SHIFT)
        a = (mask.astype(np.float64) / 255)[..., None] * rng.uniform(0.5, 1.0)
        out = out * (1 - a) + _colour(rng) * a
    return out


class _Canvas:
    """Painter's-order compositing of anti-aliased, shaded parts onto an RGB float image."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.h, self.w = image.shape[:2]
        vv, uu = np.mgrid[0:self.h, 0:self.w].astype(np.float64)
        self.uu, self.vv = uu, vv
        self.coverage = np.zeros((self.h, self.w))  # union of the painted parts' alpha, in [0, 1]

    def new_mask(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    @staticmethod
    def capsule(mask, p0, p1, r0, r1) -> None:
        """Tapered capsule: convex hull of two discs (centres ``p0``/``p1`` px, radii ``r0``/``r1`` px)."""
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ring = np.stack([np.cos(t), np.sin(t)], 1)
        pts = np.concatenate([np.asarray(p0) + max(r0, 0.6) * ring, np.asarray(p1) + max(r1, 0.6) * ring])
        _Canvas.hull(mask, pts)

    @staticmethod
    def hull(mask, pts) -> None:
        fixed = np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32)
        h = cv2.convexHull(fixed.reshape(-1, 1, 2))
        cv2.fillConvexPoly(mask, h, 255, cv2.LINE_AA, _SHIFT)

    @staticmethod
    def ellipse(mask, centre, axes, angle_deg) -> None:
        c = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
        ax = (max(int(round(axes[0] * _ONE)), 1), max(int(round(axes[1] * _ONE)), 1))
        cv2.ellipse(mask, c, ax, float(angle_deg), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)

    def paint(self, mask: np.ndarray, colour, shade: bool = True, light=(0.0, 0.0)) -> None:
        """Composite ``colour`` (RGB or (H, W, 3) texture) through the anti-aliased ``mask``."""
        a = mask.astype(np.float64) / 255
        if not a.any():
            return
        layer = np.broadcast_to(np.asarray(colour, np.float64), self.image.shape)
        if shade:
            # Cylinder-like shading: brighter along the medial axis of the part.
            dt = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 5).astype(np.float64)
            s = np.sqrt(np.clip(dt / max(dt.max(), 1.0), 0, 1))
            k = 0.62 + 0.38 * s
            k = k * (1 + light[0] * (self.uu / self.w - 0.5) + light[1] * (self.vv / self.h - 0.5))
            layer = layer * k[..., None]
        self.image = self.image * (1 - a[..., None]) + np.clip(layer, 0, 1) * a[..., None]
        self.coverage = np.maximum(self.coverage, a)


def _look_at(target: np.ndarray, az: float, el: float, dist: float) -> tuple[np.ndarray, np.ndarray]:
    """cam_from_world rotation (3, 3) and translation (3,) of a camera looking at ``target``."""
    pos = target + dist * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    fwd = (target - pos) / dist
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r = np.stack([right, down, fwd])
    return r, -r @ pos


def _render_person(joints: np.ndarray, frames: dict, shape: np.ndarray, rng: np.random.Generator,
                   size: int = DEMO_IMAGE_SIZE, background: str = "random", figure: bool = True) -> dict:
    """Render one clothed figure and return its image and exact joint projections.

    Args:
        joints: (14, 3) world joints from :func:`_fk` (metres).
        frames: segment rotations (3, 3) from :func:`_fk`.
        shape: (8,) limb lengths.
        rng: numpy generator; the camera, then background, clothing and post-processing each use their own
            child stream, so ``figure=False`` renders the very same background.
        background: ``"random"`` or ``"plain"`` (one flat colour).
        figure: draw the figure (``False``: background only, for tests).

    Returns:
        dict with ``image`` uint8 (H, W, 3) RGB, ``joints2d`` (14, 2) float64 px, ``K`` (3, 3) intrinsics of
        the stored image, ``R`` (3, 3), ``t`` (3,) cam_from_world, ``coverage`` (H, W) float64 in [0, 1]: the
        figure's anti-aliased silhouette (before post-processing blur).
    """
    cam_rng, bg_rng, cloth_rng, post_rng = rng.spawn(4)
    # --- camera and the similarity that fits the figure into the stored square ---
    torso_centre = joints[[8, 9, 2, 3]].mean(0)
    az = cam_rng.uniform(0, 2 * math.pi)
    el = math.radians(cam_rng.uniform(-20, 30))
    dist = cam_rng.uniform(3.5, 6.5)
    r_cam, t_cam = _look_at(torso_centre + cam_rng.normal(0, 0.03, 3), az, el, dist)
    xc = joints @ r_cam.T + t_cam
    uv = xc[:, :2] / xc[:, 2:]
    lo, hi = uv.min(0), uv.max(0)
    margin = cam_rng.uniform(15, 23)
    scale = (size - 2 * margin) / max((hi - lo).max(), 1e-6)
    slack = (size - 2 * margin) - (hi - lo) * scale  # free room along each axis
    centre = (size - 1) / 2 + cam_rng.uniform(-0.5, 0.5, 2) * np.minimum(slack, 8.0)
    offset = centre - scale * (lo + hi) / 2
    k_img = np.array([[scale, 0, offset[0]], [0, scale, offset[1]], [0, 0, 1.0]])
    joints2d = scale * uv + offset

    def project(p):
        p = np.asarray(p, np.float64)
        c = p @ r_cam.T + t_cam
        return scale * c[..., :2] / c[..., 2:] + offset, c[..., 2]

    def radius_px(r_m, depth):
        return scale * r_m / depth

    # --- background ---
    if background == "plain":
        img = np.broadcast_to(_colour(bg_rng), (size, size, 3)).copy()
    elif background == "random":
        img = _background(bg_rng, size, size)
    else:
        raise ValueError(f"Expected background 'random' or 'plain', got {background!r}")
    canvas = _Canvas(img)
    if figure:
        _draw_figure(canvas, joints, frames, shape, cloth_rng, project, radius_px, r_cam, t_cam,
                     floor_shadow=background == "random")
    img = canvas.image
    # --- post-processing (independent of the figure) ---
    gain = post_rng.uniform(0.88, 1.12)
    blur = post_rng.uniform(0.3, 0.8) if post_rng.random() < 0.5 else 0.0
    noise = post_rng.uniform(0.003, 0.012) if post_rng.random() < 0.3 else 0.0
    noise_field = post_rng.normal(0, 1, img.shape)
    img = img * gain
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img + noise * noise_field
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return {"image": image, "joints2d": joints2d, "K": k_img, "R": r_cam, "t": t_cam,
            "coverage": canvas.coverage}


def _draw_figure(canvas: _Canvas, joints, frames, shape, rng, project, radius_px, r_cam, t_cam,
                 floor_shadow: bool) -> None:
    h, w = canvas.h, canvas.w
    J = {n: joints[i] for i, n in enumerate(LSP14.names)}
    thigh_len, shin_len, _, _, torso_h, sw, hw, head_len = shape
    girth = rng.uniform(0.85, 1.2)
    light = rng.uniform(-0.25, 0.25, 2)

    # --- appearance ---
    skin = np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 0.025, 3), 0, 1)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 0.02, 3), 0, 1)
    hair_style = rng.choice(["short", "long", "bald", "bun"], p=[0.5, 0.3, 0.07, 0.13])
    sleeves = rng.choice(["long", "short", "none"], p=[0.4, 0.45, 0.15])
    lower = rng.choice(["trousers", "shorts", "skirt"], p=[0.6, 0.25, 0.15])
    shirt = _texture(rng, h, w, _colour(rng), rng.choice(_CLOTH_KINDS, p=_CLOTH_P))
    if lower == "trousers" and rng.random() < 0.3:
        pants = _texture(rng, h, w, _colour(rng), "denim")
    else:
        pants = _texture(rng, h, w, _colour(rng), rng.choice(_CLOTH_KINDS, p=_CLOTH_P))
    legwear = skin if lower != "skirt" or rng.random() < 0.6 else np.clip(_colour(rng) * 0.5, 0, 1)
    shoes = _CLOTH[rng.integers(3)] if rng.random() < 0.6 else _colour(rng) * 0.7
    belt = rng.random() < 0.3 and lower != "skirt"
    belt_colour = _colour(rng) * 0.4

    parts: list[tuple[float, int, callable]] = []  # (depth, tie, draw)

    def add(depth, fn):
        parts.append((float(depth), len(parts), fn))

    def cap3(p0, p1, r0, r1, colour, frac=(0.0, 1.0), shade=True):
        """Capsule between 3D points ``p0``-``p1`` (optionally a fraction of it), radii in metres."""
        def fn():
            a = p0 + frac[0] * (p1 - p0)
            b = p0 + frac[1] * (p1 - p0)
            (pa, pb), (za, zb) = project(np.stack([a, b]))
            ra = r0 + frac[0] * (r1 - r0)
            rb = r0 + frac[1] * (r1 - r0)
            m = canvas.new_mask()
            canvas.capsule(m, pa, pb, radius_px(ra, za), radius_px(rb, zb))
            canvas.paint(m, colour, shade, light)
        return fn

    def hull3(points, colour, shade=True):
        def fn():
            m = canvas.new_mask()
            canvas.hull(m, project(points)[0])
            canvas.paint(m, colour, shade, light)
        return fn

    def depth(p):
        return project(np.asarray(p)[None])[1][0]

    def ring(origin, rot, z, half_depth, half_width, n=12):
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        local = np.stack([half_depth * np.cos(t), half_width * np.sin(t), np.full(n, z)], 1)
        return origin + local @ rot.T

    # --- floor shadow (drawn first, on the background) ---
    cam_pos = -r_cam.T @ t_cam
    if floor_shadow and cam_pos[2] > 0.3:
        mid = (J["r_ankle"] + J["l_ankle"]) / 2
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        pts = np.stack([mid[0] + 0.35 * np.cos(t), mid[1] + 0.28 * np.sin(t), np.zeros_like(t)], 1)
        (p2, z2) = project(pts)
        if (z2 > 0.1).all():
            m = canvas.new_mask()
            canvas.hull(m, p2)
            m = cv2.GaussianBlur(m, (0, 0), 2.0)
            canvas.image = canvas.image * (1 - 0.3 * m[..., None] / 255.0)

    # --- torso: upper (shirt) and lower (trousers) convex hulls ---
    midhip = (J["r_hip"] + J["l_hip"]) / 2
    r_t = frames["torso"]
    r_p = np.eye(3)
    g = girth
    shoulder_ring = ring(midhip, r_t, torso_h - SHOULDER_DROP + 0.02, 0.07 * g, sw / 2 + 0.035)
    chest_ring = ring(midhip, r_t, 0.72 * torso_h, 0.11 * g, 0.47 * sw)
    waist_ring = ring(midhip, r_t, 0.32 * torso_h, 0.095 * g, hw / 2 + 0.055 * g)
    hip_ring = ring(midhip, r_p, 0.0, 0.11 * g, hw / 2 + 0.075 * g)
    crotch_ring = ring(midhip, r_p, -0.09, 0.085 * g, hw / 2 + 0.04 * g)
    add(depth(midhip + r_t @ [0, 0, 0.6 * torso_h]),
        hull3(np.concatenate([shoulder_ring, chest_ring, waist_ring]), shirt))

    def lower_torso():
        hull3(np.concatenate([waist_ring, hip_ring, crotch_ring]), pants)()
        if belt:
            band = np.concatenate([ring(midhip, r_t, 0.32 * torso_h + dz, 0.1 * g, hw / 2 + 0.06 * g)
                                   for dz in (-0.03, 0.01)])
            hull3(band, belt_colour)()
    add(depth(midhip), lower_torso)

    # --- legs ---
    thigh_depths = []
    for s in ("r", "l"):
        hip, knee, ankle = J[f"{s}_hip"], J[f"{s}_knee"], J[f"{s}_ankle"]
        r_shin = frames[f"{s}_shin"]
        rt0, rt1, rs1 = 0.085 * g, 0.055 * g, 0.04 * g
        if lower == "trousers":
            thigh = [cap3(hip, knee, rt0, rt1, pants)]
            shin = [cap3(knee, ankle, rt1, rs1, pants)]
        elif lower == "shorts":
            thigh = [cap3(hip, knee, rt0 * 0.9, rt1, skin), cap3(hip, knee, rt0 + 0.01, rt1 + 0.012, pants,
                                                                    frac=(0.0, 0.55))]
            shin = [cap3(knee, ankle, rt1, rs1, skin)]
        else:  # skirt: legs in skin or tights, the skirt itself is a separate hull
            thigh = [cap3(hip, knee, rt0 * 0.9, rt1, legwear)]
            shin = [cap3(knee, ankle, rt1, rs1, legwear)]
        foot_scale = shin_len / 0.42
        heel = ankle + r_shin @ np.array([-0.03, 0, -0.045]) * foot_scale
        toe = ankle + r_shin @ np.array([0.16, 0, -0.05]) * foot_scale
        zt = depth((hip + knee) / 2)
        thigh_depths.append(zt)
        add(zt, lambda fs=thigh: [f() for f in fs])
        add(depth((knee + ankle) / 2), lambda fs=shin: [f() for f in fs])
        add(depth((heel + toe) / 2), cap3(heel, toe, 0.045 * g, 0.04 * g, shoes))
    if lower == "skirt":
        flare = rng.uniform(0.05, 0.15)
        hem_z = -rng.uniform(0.25, 0.45) * thigh_len - 0.05
        hem = ring(midhip, r_p, hem_z, 0.14 * g + flare, hw / 2 + 0.1 * g + flare)
        skirt = hull3(np.concatenate([waist_ring, hip_ring, hem]), pants)
        # Over the thighs (a skirt covers them); shins still sort by their own depth.
        add(min(min(thigh_depths), depth(midhip)) - 1e-3, skirt)

    # --- arms ---
    for s in ("r", "l"):
        sh, el, wr = J[f"{s}_shoulder"], J[f"{s}_elbow"], J[f"{s}_wrist"]
        r_fore = frames[f"{s}_fore"]
        ru0, ru1, rf1 = 0.05 * g, 0.042 * g, 0.033 * g
        if sleeves == "long":
            upper = [cap3(sh, el, ru0 + 0.005, ru1 + 0.005, shirt)]
            fore = [cap3(el, wr, ru1 + 0.005, rf1 + 0.006, shirt)]
        elif sleeves == "short":
            upper = [cap3(sh, el, ru0, ru1, skin), cap3(sh, el, ru0 + 0.012, ru1 + 0.014, shirt, frac=(0, 0.5))]
            fore = [cap3(el, wr, ru1, rf1, skin)]
        else:
            upper = [cap3(sh, el, ru0, ru1, skin)]
            fore = [cap3(el, wr, ru1, rf1, skin)]
        hand_end = wr + r_fore @ np.array([0.01, 0, -0.09]) * (shape[3] / 0.25)
        add(depth((sh + el) / 2), lambda fs=upper: [f() for f in fs])
        add(depth((el + wr) / 2), lambda fs=fore: [f() for f in fs])
        add(depth((wr + hand_end) / 2), cap3(wr, hand_end, 0.034 * g, 0.03 * g, skin))

    # --- neck and head (one group, neck under head) ---
    r_h = frames["head"]
    neck = J["neck"]
    rh = 0.38 * head_len + 0.005  # head half-width (m)
    rh_v = 1.12 * rh  # half-height along the head axis
    head_c = neck + r_h @ np.array([0.015, 0, head_len - 0.8 * rh_v])
    hair_c = head_c + r_h @ np.array([-0.03, 0, 0.035])

    def head_ellipse(c3, half_w, half_h):
        (pc, pt, pb), (zc, _, _) = project(np.stack([c3, c3 + r_h @ [0, 0, half_h], c3 - r_h @ [0, 0, half_h]]))
        minor = radius_px(half_w, zc)
        axis = pt - pb
        major = max(np.linalg.norm(axis) / 2, minor)
        ang = math.degrees(math.atan2(axis[1], axis[0])) if np.linalg.norm(axis) > 1e-6 else 90.0
        m = canvas.new_mask()
        canvas.ellipse(m, pc, (major, minor), ang)
        return m

    if hair_style == "long":
        top = head_c + r_h @ np.array([-0.05, 0, 0.0])
        bottom = head_c + r_h @ np.array([-0.08, 0, -0.24])
        add(depth((top + bottom) / 2), cap3(top, bottom, rh * 0.95, 0.07, hair))

    def head_group():
        cap3(neck - r_t @ [0, 0, 0.05], neck, 0.05 * g, 0.05 * g, skin)()
        cap3(neck, neck + r_h @ [0, 0, 0.07], 0.05 * g, 0.05 * g, skin)()
        hair_front = depth(hair_c) < depth(head_c)
        hair_mask = None if hair_style == "bald" else head_ellipse(hair_c, rh * 1.08, rh_v * 1.08)
        if hair_mask is not None and not hair_front:
            canvas.paint(hair_mask, hair, True, light)
        canvas.paint(head_ellipse(head_c, rh, rh_v), skin, True, light)
        if hair_mask is not None and hair_front:
            canvas.paint(hair_mask, hair, True, light)
        if hair_style == "bun":
            bun = head_c + r_h @ np.array([-0.06, 0, rh_v * 0.8])
            (pb,), (zb,) = project(bun[None])
            m = canvas.new_mask()
            cv2.circle(m, tuple(int(round(x * _ONE)) for x in pb), int(radius_px(0.045, zb) * _ONE), 255, -1,
                       cv2.LINE_AA, _SHIFT)
            canvas.paint(m, hair, True, light)
        face_dir = r_h @ np.array([1.0, 0, 0])
        to_cam = (cam_pos - head_c) / np.linalg.norm(cam_pos - head_c)
        if face_dir @ to_cam > 0.3 and not hair_front:
            eyes = [head_c + r_h @ np.array([rh * 0.88, side * 0.033, 0.015]) for side in (-1, 1)]
            m = canvas.new_mask()
            for e in eyes:
                (pe,), (ze,) = project(e[None])
                cv2.circle(m, tuple(int(round(x * _ONE)) for x in pe), max(int(radius_px(0.011, ze) * _ONE), 10),
                           255, -1, cv2.LINE_AA, _SHIFT)
            canvas.paint(m, np.array([0.1, 0.08, 0.08]), False)

    add(depth(head_c), head_group)

    # --- painter's order: farthest first ---
    for _, _, fn in sorted(parts, key=lambda p: (-p[0], p[1])):
        fn()


# --------------------------------------------------------------------------------------------------------
# Generation, storage, loading
# --------------------------------------------------------------------------------------------------------


def _item_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of ``stream``, independent of how many items are generated."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _render_pool_item(seed: int, index: int, background: str = "random", figure: bool = True) -> dict:
    """Render pool image ``index`` of the demo generated with ``seed`` (a person of its own)."""
    g = torch.Generator().manual_seed(_item_seed(seed, 1, index))
    shape = sample_body_shapes(1, g).double()
    angles = sample_poses(1, g).double()
    joints, frames = _fk(shape, angles)
    render_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    out = _render_person(joints[0].numpy(), {k: v[0].numpy() for k, v in frames.items()}, shape[0].numpy(),
                         np.random.default_rng(render_seed), background=background, figure=figure)
    out["joints3d"] = joints[0].numpy()
    return out


def _mocap_arrays(n_mocap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, 14, 3) float32 poses from a few synthetic subjects and (M,) int64 ids ``subject * 100000 + k``."""
    n_subjects = int(np.clip(n_mocap // 250, 1, 16))
    counts = np.full(n_subjects, n_mocap // n_subjects)
    counts[: n_mocap % n_subjects] += 1
    poses, ids = [], []
    for s, c in enumerate(counts):
        g = torch.Generator().manual_seed(_item_seed(seed, 2, s))
        shape = sample_body_shapes(1, g).double().expand(int(c), -1)
        poses.append(forward_kinematics(shape, sample_poses(int(c), g).double()))
        ids.append(s * 100000 + np.arange(c))
    return (torch.cat(poses).float().numpy().reshape(-1, 14, 3),
            np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64))


def _build_arrays(n_images: int, n_mocap: int, seed: int) -> dict[str, np.ndarray]:
    """Everything the demo ``.npz`` holds, as plain numpy arrays (no object arrays)."""
    if n_images < 1 or n_mocap < 1:
        raise ValueError(f"Expected n_images >= 1 and n_mocap >= 1, got {n_images} and {n_mocap}")
    blobs, joints = [], []
    for i in range(n_images):
        item = _render_pool_item(seed, i)
        bgr = cv2.cvtColor(item["image"], cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for demo image {i}")
        blobs.append(buf.reshape(-1))
        joints.append(item["joints2d"])
    offsets = np.zeros(n_images + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    mocap, mocap_ids = _mocap_arrays(n_mocap, seed)
    meta = {
        "format": "gpumosaic-demo",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "image_size": [DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE],
        "skeleton": LSP14.name,
        "n_images": int(n_images),
        "n_mocap": int(n_mocap),
        "jpeg_quality": JPEG_QUALITY,
        "note": "synthetic demo data (rendered figures and synthetic mocap), not real people",
    }
    return {
        "images_jpeg": np.concatenate(blobs).astype(np.uint8),
        "images_offsets": offsets,
        "joints": np.asarray(joints, np.float32).reshape(n_images, 14, 2),
        "pool_ids": np.arange(n_images, dtype=np.int64),
        "mocap": mocap,
        "mocap_ids": mocap_ids,
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }


def write_demo(path: str | os.PathLike, n_images: int = 480, n_mocap: int = 3000, seed: int = 0) -> Path:
    """Generate the demo data and write it to ``path`` (``np.savez_compressed``). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _build_arrays(n_images, n_mocap, seed)
    _write_npz(path, arrays)
    return path


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Write through a buffer so that the file name is exactly ``path`` (savez appends ".npz" to str paths).
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())


def demo_path() -> Path:
    """Path of the shipped ``gpumosaic/data/demo.npz`` (inside the installed package)."""
    ref = importlib.resources.files("gpumosaic").joinpath("data").joinpath("demo.npz")
    if isinstance(ref, Path):
        return ref
    return Path(__file__).resolve().parents[1] / "data" / "demo.npz"


def _read_shipped() -> dict[str, np.ndarray]:
    ref = importlib.resources.files("gpumosaic").joinpath("data").joinpath("demo.npz")
    with importlib.resources.as_file(ref) as path:  # a real file even from a zipped install
        return _read_npz(path)


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a demo ``.npz`` (no pickles) into a dict of arrays; ``meta`` becomes a dict."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    missing = {"images_jpeg", "images_offsets", "joints", "pool_ids", "mocap", "mocap_ids", "meta"} - set(out)
    if missing:
        raise ValueError(f"Demo file {path} lacks arrays {sorted(missing)}")
    out["meta"] = json.loads(str(out["meta"]))
    return out


def _decode_images(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """JPEG bytes + (N+1,) offsets -> uint8 (N, 3, H, W) RGB."""
    images = []
    for i in range(len(offsets) - 1):
        bgr = cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"Demo image {i} is not a valid JPEG")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
    return np.stack(images)


def _pool_from_arrays(arrays: dict, device=None) -> Pool2D:
    images = torch.from_numpy(_decode_images(arrays["images_jpeg"], arrays["images_offsets"]))
    return Pool2D(images=images.to(device), joints=torch.from_numpy(arrays["joints"].astype(np.float32)).to(device),
                  skeleton=LSP14, ids=torch.from_numpy(arrays["pool_ids"].astype(np.int64)).to(device))


def _mocap_from_arrays(arrays: dict, device=None) -> Mocap3D:
    return Mocap3D(poses=torch.from_numpy(arrays["mocap"].astype(np.float32)).to(device), skeleton=LSP14,
                   ids=torch.from_numpy(arrays["mocap_ids"].astype(np.int64)).to(device))


def load_demo_pool(device=None, path: str | os.PathLike | None = None) -> Pool2D:
    """The shipped demo pool: N = 480 synthetic images, uint8 (N, 3, 160, 160) RGB, LSP14 joints (N, 14, 2).

    Args:
        device: where the tensors go (default CPU).
        path: another demo ``.npz`` (default: the packaged ``gpumosaic/data/demo.npz``).
    """
    return _pool_from_arrays((_read_shipped() if path is None else _read_npz(path)), device)


def load_demo_mocap(device=None, path: str | os.PathLike | None = None) -> Mocap3D:
    """The shipped demo mocap: M = 3000 synthetic poses, float32 (M, 14, 3), metres, world ``z`` up.

    Poses come from 12 synthetic subjects (ids ``subject * 100000 + k``) whose body shapes differ from the
    pool's people.
    """
    return _mocap_from_arrays((_read_shipped() if path is None else _read_npz(path)), device)


def generate_demo(n_images: int, n_mocap: int, seed: int = 0) -> tuple[Pool2D, Mocap3D]:
    """Generate demo data in memory, exactly as :func:`write_demo` stores it (JPEG round trip included).

    Returns:
        ``(Pool2D, Mocap3D)`` on the CPU; the first ``k`` pool images of any ``n_images >= k`` are identical.
    """
    arrays = _build_arrays(n_images, n_mocap, seed)
    return _pool_from_arrays(arrays), _mocap_from_arrays(arrays)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpumosaic.sources.demo",
                                     description="Generate the embedded demo data (synthetic figures + mocap).")
    parser.add_argument("--out", required=True, help="output .npz path, e.g. gpumosaic/data/demo.npz")
    parser.add_argument("--n-images", type=int, default=480)
    parser.add_argument("--n-mocap", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_demo(args.out, args.n_images, args.n_mocap, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {args.n_images} images, {args.n_mocap} poses")


if __name__ == "__main__":
    main()
