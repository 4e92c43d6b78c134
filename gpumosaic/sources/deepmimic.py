"""DeepMimic clip loader (``humanoid3d_*.txt``): quaternion forward kinematics of the humanoid, ``y`` up -> ``z`` up.

A clip is JSON with ``"Frames"``: each row has 44 numbers (:data:`DEEPMIMIC_COLUMNS`): the frame duration,
the root position (3, metres), the root rotation quaternion ``(w, x, y, z)``, then per joint its local
rotation relative to its parent: chest (4), neck (4), right hip (4), right knee (1), right ankle (4), right
shoulder (4), right elbow (1), left hip (4), left knee (1), left ankle (4), left shoulder (4), left elbow (1).
Spherical joints are quaternions ``(w, x, y, z)``; knees and elbows are revolute angles (radians) about the
joint's local ``z`` axis (the URDF's ``axis 0 0 1``).

Forward kinematics with the joint origins of pybullet's ``pybullet_data/humanoid/humanoid.urdf`` (the
character DeepMimic's clips drive; pybullet loads it with ``globalScaling=0.25``, so metres = URDF × 0.25,
equal to DeepMimic's own ``humanoid3d.txt`` character offsets): ``R_world = R_world(parent) · R_local``,
``p = p(parent) + R_world(parent) · offset``; the root joint is at the root position with the root rotation.
:data:`DEFAULT_OFFSETS` embeds them; ``urdf=`` reads them from a URDF instead and ``offsets=`` overrides any.

The clip frame is ``y`` up, the character faces ``+x`` with its right side at ``+z``; poses are rotated to the
package's ``z``-up world by ``(x, y, z) -> (x, -z, y)`` (right side at ``-y``).

LSP14: the hips, knees, ankles, shoulders, elbows and wrists are the URDF joints of those names (wrists
are fixed joints at the end of the forearms); ``neck`` is the URDF ``neck`` joint (base of the head link);
``head_top`` is the top of the head link's collision sphere, :data:`HEAD_TOP_OFFSET` in the neck frame
(sphere centre 0.175 m + radius 0.1025 m above the neck joint: an approximation of the skull's vertex).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..skeleton import LSP14, Skeleton
from .build import LoadedMocap, PathLike, check_stride, make_loaded_mocap, source_files, to_z_up

__all__ = ["DEEPMIMIC_COLUMNS", "DEFAULT_OFFSETS", "HEAD_TOP_OFFSET", "URDF_SCALE", "PARENTS",
           "read_urdf_offsets", "deepmimic_forward_kinematics", "load_deepmimic"]

DEEPMIMIC_COLUMNS: tuple[tuple[str, int], ...] = (
    ("duration", 1), ("root_position", 3), ("root_rotation", 4), ("chest", 4), ("neck", 4), ("right_hip", 4),
    ("right_knee", 1), ("right_ankle", 4), ("right_shoulder", 4), ("right_elbow", 1), ("left_hip", 4),
    ("left_knee", 1), ("left_ankle", 4), ("left_shoulder", 4), ("left_elbow", 1),
)
"""Columns of a frame row, in order: (name, width); 44 numbers in all."""

PARENTS: dict[str, str] = {
    "chest": "root", "neck": "chest",
    "right_hip": "root", "right_knee": "right_hip", "right_ankle": "right_knee",
    "right_shoulder": "chest", "right_elbow": "right_shoulder", "right_wrist": "right_elbow",
    "left_hip": "root", "left_knee": "left_hip", "left_ankle": "left_knee",
    "left_shoulder": "chest", "left_elbow": "left_shoulder", "left_wrist": "left_elbow",
}
"""Parent of every humanoid joint (URDF links), parents listed before children."""

URDF_SCALE = 0.25
"""pybullet's ``globalScaling`` for the DeepMimic humanoid: metres per URDF unit."""

DEFAULT_OFFSETS: dict[str, tuple[float, float, float]] = {
    name: tuple(URDF_SCALE * v for v in xyz) for name, xyz in {
        "chest": (0.0, 0.944604, 0.0),
        "neck": (0.0, 0.895576, 0.0),
        "right_hip": (0.0, 0.0, 0.339548),
        "right_knee": (0.0, -1.686184, 0.0),
        "right_ankle": (0.0, -1.639480, 0.0),
        "right_shoulder": (-0.096200, 0.974000, 0.732440),
        "right_elbow": (0.0, -1.099152, 0.0),
        "right_wrist": (0.0, -1.035788, 0.0),
        "left_hip": (0.0, 0.0, -0.339548),
        "left_knee": (0.0, -1.686184, 0.0),
        "left_ankle": (0.0, -1.639480, 0.0),
        "left_shoulder": (-0.096200, 0.974000, -0.732440),
        "left_elbow": (0.0, -1.099152, 0.0),
        "left_wrist": (0.0, -1.035788, 0.0),
    }.items()
}
"""Joint origins in the parent frame, metres (``humanoid.urdf`` ``<joint><origin xyz>`` × :data:`URDF_SCALE`)."""

HEAD_TOP_OFFSET = (0.0, URDF_SCALE * (0.700000 + 0.410000), 0.0)
"""Head top in the neck frame, metres: the neck link's sphere centre (y = 0.70) plus its radius (0.41), × 0.25."""

_LSP_FROM = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
             "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck", "head_top")
_REVOLUTE = ("right_knee", "right_elbow", "left_knee", "left_elbow")


def read_urdf_offsets(urdf: PathLike, scale: float = URDF_SCALE) -> tuple[dict[str, tuple[float, float, float]],
                                                                           tuple[float, float, float] | None]:
    """Joint origins (metres) of the humanoid joints in a URDF, and the head top from its ``neck`` link sphere.

    Returns:
        ``(offsets, head_top)``: ``offsets[name]`` for each joint of :data:`PARENTS` found (``<joint name>``
        ``<origin xyz>`` × ``scale``); ``head_top`` the neck link's collision sphere top, or ``None``.
    """
    urdf = Path(urdf)
    try:
        # pybullet's humanoid.urdf ends with NUL bytes after </robot>, which XML parsers reject.
        root = ET.fromstring(urdf.read_bytes().rstrip(b"\x00"))
    except ET.ParseError as exc:
        raise ValueError(f"{urdf}: invalid XML at line {exc.position[0]}: {exc}") from None
    offsets = {}
    for joint in root.iter("joint"):
        name = joint.get("name")
        origin = joint.find("origin")
        if name in PARENTS and origin is not None:
            try:
                xyz = [float(v) for v in origin.get("xyz", "0 0 0").split()]
            except ValueError:
                raise ValueError(f"{urdf}: joint {name!r} has a non-numeric origin xyz") from None
            if len(xyz) != 3:
                raise ValueError(f"{urdf}: joint {name!r} origin xyz needs 3 numbers, got {len(xyz)}")
            offsets[name] = tuple(scale * v for v in xyz)
    head_top = None
    for link in root.iter("link"):
        if link.get("name") != "neck":
            continue
        for col in link.iter("collision"):
            origin, sphere = col.find("origin"), col.find("geometry/sphere")
            if sphere is not None:
                y = float(origin.get("xyz", "0 0 0").split()[1]) if origin is not None else 0.0
                head_top = (0.0, scale * (y + float(sphere.get("radius"))), 0.0)
    return offsets, head_top


def _quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) ``(w, x, y, z)`` (normalised here) -> rotation matrices (..., 3, 3)."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).unflatten(-1, (3, 3))


def _about_z(angle: torch.Tensor) -> torch.Tensor:
    c, s, o, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, o], -1).unflatten(-1, (3, 3))


def deepmimic_forward_kinematics(frames: np.ndarray, offsets: Mapping[str, Sequence[float]] | None = None,
                                 head_top: Sequence[float] = HEAD_TOP_OFFSET) -> dict[str, np.ndarray]:
    """World positions of the humanoid's joints for DeepMimic frame rows, metres, the clip's ``y``-up frame.

    Args:
        frames: (F, 44) rows (:data:`DEEPMIMIC_COLUMNS`).
        offsets: joint origins in metres (default :data:`DEFAULT_OFFSETS`; missing names fall back to it).
        head_top: the head top in the neck frame.

    Returns:
        name -> (F, 3) for ``root``, every joint of :data:`PARENTS` and ``head_top``. Batched over frames
        (torch, float64); the loop runs over the 14 joints.
    """
    table = {**DEFAULT_OFFSETS, **(offsets or {})}
    f = torch.from_numpy(np.asarray(frames, dtype=np.float64))
    cols, start = {}, 0
    for name, width in DEEPMIMIC_COLUMNS:
        cols[name] = f[:, start:start + width]
        start += width
    rot = {"root": _quat_to_matrix(cols["root_rotation"])}
    pos = {"root": cols["root_position"]}
    for name, parent in PARENTS.items():
        if name in _REVOLUTE:
            local = _about_z(cols[name][:, 0])
        elif name in cols:
            local = _quat_to_matrix(cols[name])
        else:  # the wrists: fixed joints
            local = torch.eye(3, dtype=torch.float64).expand(f.shape[0], 3, 3)
        offset = torch.tensor(table[name], dtype=torch.float64)
        pos[name] = pos[parent] + rot[parent] @ offset
        rot[name] = rot[parent] @ local
    pos["head_top"] = pos["neck"] + rot["neck"] @ torch.tensor(tuple(head_top), dtype=torch.float64)
    return {k: v.numpy() for k, v in pos.items()}


def load_deepmimic(path: PathLike, *, skeleton: Skeleton | str = LSP14, urdf: PathLike | None = None,
                   offsets: Mapping[str, Sequence[float]] | None = None, up: str = "y",
                   stride: int = 1) -> LoadedMocap:
    """Read DeepMimic clips (one ``.txt`` or a folder of them) as 3D poses in metres, world ``z`` up.

    Args:
        path: a clip file or a folder of ``*.txt`` clips (sorted; one sequence each).
        skeleton: output layout (LSP14 by default).
        urdf: ``humanoid.urdf`` to read joint origins (× :data:`URDF_SCALE`) and the head top from; default
            the embedded :data:`DEFAULT_OFFSETS` and :data:`HEAD_TOP_OFFSET`.
        offsets: joint name -> origin in metres, overriding both.
        up: the clip's up axis, ``"y"`` (DeepMimic) or ``"z"``.
        stride: keep every ``stride``-th frame.

    Returns:
        :class:`~gpumosaic.sources.build.LoadedMocap`; rows with non-finite values are dropped.
    """
    check_stride(stride)
    table, head = dict(DEFAULT_OFFSETS), HEAD_TOP_OFFSET
    notes = []
    if urdf is not None:
        found, urdf_head = read_urdf_offsets(urdf)
        table.update(found)
        head = urdf_head if urdf_head is not None else head
        notes.append(f"Offsets from {urdf} ({len(found)} joints).")
    if offsets is not None:
        unknown = sorted(set(offsets) - set(PARENTS))
        if unknown:
            raise ValueError(f"offsets keys must be humanoid joints {sorted(PARENTS)}, got {unknown}")
        table.update({k: tuple(float(x) for x in v) for k, v in offsets.items()})
    width = sum(w for _, w in DEEPMIMIC_COLUMNS)
    sequences = []
    for file in source_files(path, ".txt"):
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        rows = data.get("Frames") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{file}: expected a JSON object with a non-empty 'Frames' list (DeepMimic clip)")
        for k, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                raise ValueError(f"{file}: Frames[{k}] must be a list of {width} numbers (duration, root position, "
                                 f"root quaternion, joint rotations), got {len(row) if isinstance(row, list) else row!r}")
        try:
            arr = np.asarray(rows, dtype=np.float64)[::stride]
        except (TypeError, ValueError):
            raise ValueError(f"{file}: Frames hold non-numbers") from None
        world = deepmimic_forward_kinematics(arr, table, head)
        lsp = np.stack([world[n] for n in _LSP_FROM], 1)
        sequences.append((str(file), to_z_up(lsp, up, file)))
    return make_loaded_mocap("deepmimic", path, sequences, stride, LSP14, skeleton, "non-finite values", notes)
