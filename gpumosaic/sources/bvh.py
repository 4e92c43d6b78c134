"""BVH loader: hierarchy + motion, forward kinematics, LSP14 by joint names, unit guess, ``y`` up -> ``z`` up.

Forward kinematics (the usual BVH reading, e.g. Blender's importer):

- a joint's local rotation is the product of its rotation channels *in the file's order*, intrinsic:
  ``CHANNELS 3 Zrotation Xrotation Yrotation`` gives ``R = Rz(z) · Rx(x) · Ry(y)`` (degrees);
- its local translation is its ``OFFSET``, with every component that has a position channel replaced by the
  channel's value (position channels are absolute, as written by exporters for the root);
- ``R_world = R_world(parent) · R``, ``p_world = p_world(parent) + R_world(parent) · t``. ``End Site``
  blocks are points named ``<parent>_End``.

LSP14 joints are read from named BVH joints (case-insensitive, ignoring a ``namespace:`` prefix such as
``mixamorig:``); :data:`BVH_JOINT_CANDIDATES` covers CMU's BVH conversions and Mixamo rigs; ``joint_map``
overrides any joint. BVH has no unit: ``scale`` is metres per file unit, or a unit name, or guessed from the
rest pose (:func:`guess_unit`, reported in the load report and warned about).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..skeleton import LSP14, Skeleton
from .build import (LoadedMocap, PathLike, apply_weights, check_stride, make_loaded_mocap, name_weights,
                    source_files, to_z_up)
from ..geometry import rotation_x, rotation_y, rotation_z

__all__ = ["BVH_JOINT_CANDIDATES", "UNITS", "guess_unit", "read_bvh", "BVHData", "bvh_forward_kinematics", "load_bvh"]

UNITS: dict[str, float] = {
    "m": 1.0,
    "cmu": 0.0254 / 0.45,
    "in": 0.0254,
    "cm": 0.01,
    "mm": 0.001,
}
"""Metres per file unit. ``"cmu"``: CMU mocap's ASF unit, 1/0.45 inch (CMU's BVH conversions use it too)."""

BVH_JOINT_CANDIDATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "r_ankle": (("RightFoot",), ("RightAnkle",), ("RAnkle",), ("R_Ankle",)),
    "r_knee": (("RightLeg",), ("RightKnee",), ("RKnee",), ("R_Knee",)),
    "r_hip": (("RightUpLeg",), ("RightHip",), ("RHip",), ("R_Hip",)),
    "l_hip": (("LeftUpLeg",), ("LeftHip",), ("LHip",), ("L_Hip",)),
    "l_knee": (("LeftLeg",), ("LeftKnee",), ("LKnee",), ("L_Knee",)),
    "l_ankle": (("LeftFoot",), ("LeftAnkle",), ("LAnkle",), ("L_Ankle",)),
    "r_wrist": (("RightHand",), ("RightWrist",), ("RWrist",), ("R_Wrist",)),
    "r_elbow": (("RightForeArm",), ("RightElbow",), ("RElbow",), ("R_Elbow",)),
    "r_shoulder": (("RightArm",), ("RightShoulder",), ("RShoulder",), ("R_Shoulder",)),
    "l_shoulder": (("LeftArm",), ("LeftShoulder",), ("LShoulder",), ("L_Shoulder",)),
    "l_elbow": (("LeftForeArm",), ("LeftElbow",), ("LElbow",), ("L_Elbow",)),
    "l_wrist": (("LeftHand",), ("LeftWrist",), ("LWrist",), ("L_Wrist",)),
    "neck": (("Neck1",), ("Neck", "Head"), ("Neck",)),
    "head_top": (("HeadTop_End",), ("Head_End",), ("HeadTop",), ("head_top",)),
}
"""LSP14 joint -> alternatives (first found wins), each a tuple of BVH point names averaged.

``*Arm`` (the gleno-humeral joint) comes before ``*Shoulder`` (CMU and Mixamo name the clavicle so);
``neck`` is CMU's mid-neck ``Neck1``, else the middle of ``Neck`` (neck base) and ``Head`` (head base);
``head_top`` is the head's end site."""


@dataclass(frozen=True)
class BVHData:
    """A parsed BVH file.

    Attributes:
        names: point names: joints in file order, end sites as ``<parent>_End``.
        parents: parent index of every point (-1 for the root).
        offsets: float64 (P, 3) offsets in file units.
        channels: per point, its channel names (end sites: none).
        motion: float64 (F, C) channel values, C = total channel count.
        frame_time: seconds per frame.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]
    motion: np.ndarray
    frame_time: float


_CHANNELS = {f"{a}{kind}" for a in "xyz" for kind in ("position", "rotation")}


def read_bvh(path: PathLike) -> BVHData:
    """Parse a BVH file; ``ValueError`` naming the file and line on malformed input."""
    path = Path(path)
    lines = path.read_text().splitlines()
    tokens = [(tok, i + 1) for i, line in enumerate(lines) for tok in line.split()]
    pos = 0

    def take(expect: str | None = None) -> tuple[str, int]:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"{path}: unexpected end of file" + (f", expected {expect!r}" if expect else ""))
        tok, line = tokens[pos]
        pos += 1
        if expect is not None and tok.upper() != expect.upper():
            raise ValueError(f"{path}, line {line}: expected {expect!r}, got {tok!r}")
        return tok, line

    def number(what: str) -> float:
        tok, line = take()
        try:
            return float(tok)
        except ValueError:
            raise ValueError(f"{path}, line {line}: expected a number for {what}, got {tok!r}") from None

    names, parents, offsets, channels = [], [], [], []

    def joint(name: str, parent: int, end: bool) -> None:
        index = len(names)
        names.append(name)
        parents.append(parent)
        take("{")
        take("OFFSET")
        offsets.append([number("OFFSET") for _ in range(3)])
        chans: list[str] = []
        if not end:
            tok, line = take("CHANNELS")
            count_tok, line = take()
            if not count_tok.isdigit():
                raise ValueError(f"{path}, line {line}: expected a channel count, got {count_tok!r}")
            for _ in range(int(count_tok)):
                tok, line = take()
                if tok.lower() not in _CHANNELS:
                    raise ValueError(f"{path}, line {line}: unknown channel {tok!r}")
                chans.append(tok.lower())
        channels.append(tuple(chans))
        while True:
            tok, line = take()
            if tok == "}":
                return
            if end:
                raise ValueError(f"{path}, line {line}: End Site blocks hold only an OFFSET, got {tok!r}")
            if tok.upper() == "JOINT":
                child, _ = take()
                joint(child, index, False)
            elif tok.upper() == "END":
                take("Site")
                joint(f"{name}_End", index, True)
            else:
                raise ValueError(f"{path}, line {line}: expected JOINT, End Site or '}}', got {tok!r}")

    take("HIERARCHY")
    take("ROOT")
    root, _ = take()
    joint(root, -1, False)
    tok, line = take("MOTION")
    take("Frames:")
    frames_tok, line = take()
    if not frames_tok.isdigit():
        raise ValueError(f"{path}, line {line}: expected the frame count after 'Frames:', got {frames_tok!r}")
    take("Frame")
    take("Time:")
    frame_time = number("Frame Time")
    n_frames = int(frames_tok)
    n_channels = sum(len(c) for c in channels)
    data_start = tokens[pos - 1][1]  # the 'Frame Time' line; motion rows follow
    rows = [ln for ln in enumerate(lines[data_start:], start=data_start + 1) if ln[1].strip()]
    if len(rows) != n_frames:
        raise ValueError(f"{path}: 'Frames: {n_frames}' but {len(rows)} motion lines follow line {data_start}")
    motion = np.zeros((n_frames, n_channels))
    for f, (line_no, text) in enumerate(rows):
        values = text.split()
        if len(values) != n_channels:
            raise ValueError(f"{path}, line {line_no}: expected {n_channels} channel values, got {len(values)}")
        try:
            motion[f] = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"{path}, line {line_no}: non-numeric channel value") from None
    return BVHData(names=tuple(names), parents=tuple(parents), offsets=np.array(offsets, dtype=np.float64),
                   channels=tuple(channels), motion=motion, frame_time=frame_time)


_AXIS_ROTATION = {"x": rotation_x, "y": rotation_y, "z": rotation_z}


def bvh_forward_kinematics(bvh: BVHData, motion: np.ndarray | None = None, use_positions: bool = True) -> np.ndarray:
    """World positions (F, P, 3) of every point (joints and end sites), file units, the file's axes.

    Args:
        bvh: the parsed file.
        motion: (F, C) channel values (default ``bvh.motion``); zeros give the rest pose.
        use_positions: ``False`` ignores position channels (rest pose: offsets only).

    Batched over frames (torch, float64); the loop runs over the file's points (a fixed count).
    """
    motion = torch.from_numpy(np.asarray(bvh.motion if motion is None else motion, dtype=np.float64))
    n_frames = motion.shape[0]
    offsets = torch.from_numpy(bvh.offsets)
    rot_w: list[torch.Tensor] = []
    pos_w: list[torch.Tensor] = []
    col = 0
    eye = torch.eye(3, dtype=torch.float64).expand(n_frames, 3, 3)
    for k, (parent, chans) in enumerate(zip(bvh.parents, bvh.channels)):
        t = offsets[k].expand(n_frames, 3).clone()
        r = eye
        for name in chans:
            value = motion[:, col]
            col += 1
            axis = "xyz".index(name[0])
            if name.endswith("position"):
                if use_positions:
                    t[:, axis] = value
            else:
                r = r @ _AXIS_ROTATION[name[0]](torch.deg2rad(value))  # intrinsic, file order
        if parent < 0:
            rot_w.append(r)
            pos_w.append(t)
        else:
            rot_w.append(rot_w[parent] @ r)
            pos_w.append(pos_w[parent] + (rot_w[parent] @ t.unsqueeze(-1)).squeeze(-1))
    return torch.stack(pos_w, 1).numpy()


def guess_unit(rest_positions: np.ndarray) -> tuple[str, float, float]:
    """Guess a file's length unit from its rest pose.

    The rest pose's size ``h`` is the longest side of its bounding box (≈ stature, or arm span for a
    T-pose, both ≈ 1.7 m for an adult). The unit of :data:`UNITS` whose ``h·scale`` is nearest 1.7 m
    (in log ratio) wins.

    Returns:
        ``(unit name, metres per unit, h in file units)``.
    """
    pts = rest_positions.reshape(-1, 3)
    h = float((pts.max(0) - pts.min(0)).max())
    if not h > 0:
        return "m", 1.0, h
    name = min(UNITS, key=lambda u: abs(math.log(h * UNITS[u] / 1.7)))
    return name, UNITS[name], h


def _scale(scale: float | str | None, rest: np.ndarray, source: PathLike) -> tuple[float, str | None]:
    """``(metres per unit, note)``; guessing warns."""
    if scale is None:
        name, value, h = guess_unit(rest)
        note = f"Unit guessed as {name!r} ({value:g} m per unit) from a rest-pose size of {h:g} units."
        warnings.warn(f"{source}: {note} Pass scale= to set it.", stacklevel=3)
        return value, note
    if isinstance(scale, str):
        if scale not in UNITS:
            raise ValueError(f"Expected scale as metres per unit or one of {sorted(UNITS)}, got {scale!r}")
        return UNITS[scale], None
    if not float(scale) > 0:
        raise ValueError(f"Expected scale > 0 (metres per file unit), got {scale}")
    return float(scale), None


def load_bvh(path: PathLike, *, skeleton: Skeleton | str = LSP14, scale: float | str | None = None,
             up: str = "y", joint_map: Mapping[str, str | Sequence[str]] | None = None,
             stride: int = 1) -> LoadedMocap:
    """Read BVH motion (one file or a folder of ``*.bvh``) as 3D poses in metres, world ``z`` up.

    Args:
        path: a ``.bvh`` file or a folder of them (sorted by name; one sequence each).
        skeleton: output layout (LSP14 by default).
        scale: metres per file unit, or a unit name of :data:`UNITS`; ``None`` guesses per file
            (:func:`guess_unit`).
        up: the file's up axis: ``"y"`` (most BVH, converted by ``(x, y, z) -> (x, -z, y)``) or ``"z"``.
        joint_map: LSP14 joint name -> BVH point name (or names to average), overriding
            :data:`BVH_JOINT_CANDIDATES`.
        stride: keep every ``stride``-th frame.

    Returns:
        :class:`~gpumosaic.sources.build.LoadedMocap`; frames with non-finite values are dropped.
    """
    check_stride(stride)
    sequences, notes = [], []
    for file in source_files(path, ".bvh"):
        bvh = read_bvh(file)
        weights, _ = name_weights(bvh.names, BVH_JOINT_CANDIDATES, joint_map, file)
        rest = bvh_forward_kinematics(bvh, np.zeros((1, bvh.motion.shape[1])), use_positions=False)
        metres, note = _scale(scale, rest, file)
        if note:
            notes.append(f"{file.name}: {note}")
        world = bvh_forward_kinematics(bvh, bvh.motion[::stride])  # (F, P, 3)
        sequences.append((str(file), to_z_up(apply_weights(weights, world) * metres, up, file)))
    return make_loaded_mocap("bvh", path, sequences, stride, LSP14, skeleton, "non-finite values", notes)
