"""CMU motion capture ASF/AMC loader (Acclaim skeleton + motion), forward kinematics, metres, ``z`` up.

ASF (skeleton): ``:units`` (``length L``, ``angle deg|rad``), ``:root`` (``order`` of the AMC root values,
``axis`` rotation order, ``orientation``), ``:bonedata`` blocks (``name``, unit ``direction``, ``length``,
``axis a b c XYZ`` = the bone frame's orientation, ``dof rx ry rz`` = the AMC values' order) and
``:hierarchy`` (``parent child child ...``). AMC (motion): per frame a frame number, then one line per bone,
``name v1 v2 ...`` in the bone's ``dof`` order (the root: its ``order``).

Forward kinematics (Acclaim's rule, column vectors): rotations listed first are applied first, so
``axis 0 0 -20 XYZ`` is ``C = Rz(-20)·Ry(0)·Rx(0)`` and ``dof rx ry rz`` with values ``(a, b, c)`` is
``M = Rz(c)·Ry(b)·Rx(a)``. A bone's world rotation is ``R = R(parent) · C · M · C⁻¹`` and its end point is
``end(parent) + length · R · direction``; the root starts at the AMC ``TX TY TZ`` with rotation
``C_root · M_root · C_root⁻¹``.

Units: CMU's ASF says ``length 0.45``: lengths are in inches × 0.45, i.e. one unit is 1/0.45 inch, and
metres = value × (1/0.45) × 0.0254 (generally ``0.0254 / L``). The ASF frame is ``y`` up; poses are rotated
to the package's ``z``-up world by ``(x, y, z) -> (x, -z, y)``.

LSP14 from bone end points (:data:`CMU_JOINTS`): ankles = ``*tibia`` ends, knees = ``*femur`` ends, hips =
``*hipjoint`` ends, wrists = ``*radius`` ends, elbows = ``*humerus`` ends, shoulders = ``*clavicle`` ends,
``neck`` = ``lowerneck`` end (mid-neck), ``head_top`` = ``head`` end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..skeleton import LSP14, Skeleton
from .build import (LoadedMocap, PathLike, apply_weights, check_stride, make_loaded_mocap, name_weights,
                    source_files, to_z_up)
from ..geometry import rotation_x, rotation_y, rotation_z

__all__ = ["CMU_JOINTS", "ASFSkeleton", "read_asf", "read_amc", "cmu_forward_kinematics", "load_cmu"]

CMU_JOINTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "r_ankle": (("rtibia",),), "r_knee": (("rfemur",),), "r_hip": (("rhipjoint",),),
    "l_hip": (("lhipjoint",),), "l_knee": (("lfemur",),), "l_ankle": (("ltibia",),),
    "r_wrist": (("rradius",),), "r_elbow": (("rhumerus",),), "r_shoulder": (("rclavicle",),),
    "l_shoulder": (("lclavicle",),), "l_elbow": (("lhumerus",),), "l_wrist": (("lradius",),),
    "neck": (("lowerneck",),), "head_top": (("head",),),
}
"""LSP14 joint -> CMU bone whose end point it is."""

_AXIS = {"x": rotation_x, "y": rotation_y, "z": rotation_z}


@dataclass(frozen=True)
class ASFSkeleton:
    """A parsed ASF file (lengths in file units, angles in radians).

    Attributes:
        names: ``"root"`` then the bones, parents before children.
        parents: parent index of each (-1 for the root).
        directions: float64 (P, 3) unit directions (root: zeros).
        lengths: float64 (P,) bone lengths (root: 0).
        axes: float64 (P, 3, 3) the bone frames ``C`` (root: from ``orientation``).
        dofs: per bone, its AMC value names (``rx``, ``ry``, ``rz``, ``tx``, ...); the root: its ``order``.
        root_axis: the root's rotation order, e.g. ``"xyz"``.
        length_unit: ``L`` of ``:units length L``.
        degrees: whether ASF angles were degrees.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    directions: np.ndarray
    lengths: np.ndarray
    axes: np.ndarray
    dofs: tuple[tuple[str, ...], ...]
    root_axis: str
    length_unit: float
    degrees: bool


def _euler(angles: torch.Tensor, order: str) -> torch.Tensor:
    """Rotation applying ``order[0]`` first: ``R = R_{order[-1]} ··· R_{order[0]}`` (angles (..., k) radians)."""
    r = torch.eye(3, dtype=torch.float64).expand(*angles.shape[:-1], 3, 3)
    for k, axis in enumerate(order):
        r = _AXIS[axis](angles[..., k]) @ r
    return r


def read_asf(path: PathLike) -> ASFSkeleton:
    """Parse an ASF file; ``ValueError`` naming the file and line on malformed input."""
    path = Path(path)
    lines = [(i + 1, ln.split("#")[0].strip()) for i, ln in enumerate(path.read_text().splitlines())]
    lines = [(i, ln) for i, ln in lines if ln]
    section = None
    length_unit, degrees = 1.0, True
    root = {"order": ("tx", "ty", "tz", "rx", "ry", "rz"), "axis": "xyz", "orientation": (0.0, 0.0, 0.0)}
    bones: dict[str, dict] = {}
    children: dict[str, list[str]] = {}
    current: dict | None = None

    def floats(values: list[str], count: int, line: int, what: str) -> list[float]:
        if len(values) < count:
            raise ValueError(f"{path}, line {line}: {what} needs {count} numbers, got {len(values)}")
        try:
            return [float(v) for v in values[:count]]
        except ValueError:
            raise ValueError(f"{path}, line {line}: {what} holds a non-number: {' '.join(values)}") from None

    for line, text in lines:
        words = text.split()
        if words[0].startswith(":"):
            section = words[0][1:].lower()
            if section == "name" or section == "version":
                section = None
            continue
        key = words[0].lower()
        if section == "units":
            if key == "length":
                length_unit = floats(words[1:], 1, line, "length")[0]
            elif key == "angle":
                degrees = words[1].lower().startswith("deg") if len(words) > 1 else True
        elif section == "root":
            if key == "order":
                root["order"] = tuple(w.lower() for w in words[1:])
            elif key == "axis":
                root["axis"] = words[1].lower() if len(words) > 1 else "xyz"
            elif key == "orientation":
                root["orientation"] = tuple(floats(words[1:], 3, line, "orientation"))
        elif section == "bonedata":
            if key == "begin":
                current = {"line": line, "dof": ()}
            elif key == "end":
                if current is None or "name" not in current:
                    raise ValueError(f"{path}, line {line}: bone block without a name")
                for field in ("direction", "length", "axis"):
                    if field not in current:
                        raise ValueError(f"{path}, line {current['line']}: bone {current['name']!r} has no {field}")
                bones[current["name"]] = current
                current = None
            elif current is not None:
                if key == "name":
                    current["name"] = words[1]
                elif key == "direction":
                    current["direction"] = floats(words[1:], 3, line, "direction")
                elif key == "length":
                    current["length"] = floats(words[1:], 1, line, "length")[0]
                elif key == "axis":
                    current["axis"] = floats(words[1:], 3, line, "axis")
                    current["axis_order"] = words[4].lower() if len(words) > 4 else "xyz"
                elif key == "dof":
                    current["dof"] = tuple(w.lower() for w in words[1:])
        elif section == "hierarchy":
            if key in ("begin", "end"):
                continue
            children.setdefault(words[0], []).extend(words[1:])
    if not bones:
        raise ValueError(f"{path}: no :bonedata bones")
    order = ["root"]
    parents = [-1]
    for name in order:  # breadth-first: parents before children
        for child in children.get(name, []):
            if child not in bones:
                raise ValueError(f"{path}: :hierarchy names unknown bone {child!r}")
            if child in order:
                raise ValueError(f"{path}: :hierarchy lists bone {child!r} twice")
            order.append(child)
            parents.append(order.index(name))
    unplaced = sorted(set(bones) - set(order))
    if unplaced:
        raise ValueError(f"{path}: bones not reachable from root in :hierarchy: {unplaced}")
    to_rad = np.pi / 180 if degrees else 1.0
    axes = [_euler(torch.tensor(root["orientation"], dtype=torch.float64) * to_rad, root["axis"]).numpy()]
    directions, lengths, dofs = [np.zeros(3)], [0.0], [root["order"]]
    for name in order[1:]:
        b = bones[name]
        axes.append(_euler(torch.tensor(b["axis"], dtype=torch.float64) * to_rad, b["axis_order"]).numpy())
        d = np.asarray(b["direction"], dtype=np.float64)
        norm = np.linalg.norm(d)
        directions.append(d / norm if norm > 0 else d)
        lengths.append(b["length"])
        dofs.append(b["dof"])
    return ASFSkeleton(names=tuple(order), parents=tuple(parents), directions=np.array(directions),
                       lengths=np.array(lengths), axes=np.array(axes), dofs=tuple(dofs), root_axis=root["axis"],
                       length_unit=length_unit, degrees=degrees)


def read_amc(path: PathLike, asf: ASFSkeleton) -> np.ndarray:
    """Parse an AMC file against its skeleton: float64 (F, P, 6) per bone ``(tx, ty, tz, rx, ry, rz)``.

    Rotations in radians, translations in file units; a bone without a line in a frame is NaN (the frame
    is then dropped by :func:`load_cmu`). ``ValueError`` naming the file and line on malformed input.
    """
    path = Path(path)
    index = {n: i for i, n in enumerate(asf.names)}
    frames: list[np.ndarray] = []
    degrees = True
    current = None
    for line, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.split("#")[0].strip()
        if not text:
            continue
        if text.startswith(":"):
            if text.upper().startswith(":RADIANS"):
                degrees = False
            elif text.upper().startswith(":DEGREES"):
                degrees = True
            continue
        words = text.split()
        if len(words) == 1 and words[0].isdigit():
            current = np.full((len(asf.names), 6), np.nan)
            current[:, :3] = 0.0  # bones have no translation unless a dof says so
            frames.append(current)
            continue
        if current is None:
            raise ValueError(f"{path}, line {line}: bone values before the first frame number")
        name = words[0]
        if name not in index:
            raise ValueError(f"{path}, line {line}: unknown bone {name!r} (not in the ASF)")
        k = index[name]
        dof = asf.dofs[k]
        if len(words) - 1 != len(dof):
            raise ValueError(f"{path}, line {line}: bone {name!r} expects {len(dof)} values ({' '.join(dof)}), "
                             f"got {len(words) - 1}")
        try:
            values = [float(v) for v in words[1:]]
        except ValueError:
            raise ValueError(f"{path}, line {line}: non-numeric value for bone {name!r}") from None
        current[k, 3:] = 0.0
        for d, v in zip(dof, values):
            if d in ("tx", "ty", "tz"):
                current[k, "xyz".index(d[1])] = v
            elif d in ("rx", "ry", "rz"):
                current[k, 3 + "xyz".index(d[1])] = v * (np.pi / 180 if degrees else 1.0)
            # 'l' (bone stretch) is ignored
    if not frames:
        raise ValueError(f"{path}: no frames")
    out = np.stack(frames)
    for k, dof in enumerate(asf.dofs):  # bones without dofs never appear in the AMC
        if not dof:
            out[:, k, 3:] = 0.0
    return out


def cmu_forward_kinematics(asf: ASFSkeleton, motion: np.ndarray) -> np.ndarray:
    """World positions (F, P, 3) of the root and every bone's end point, file units, ASF axes (``y`` up).

    Args:
        asf: the skeleton.
        motion: (F, P, 6) from :func:`read_amc`.

    Batched over frames (torch, float64); the loop runs over the skeleton's bones (a fixed count).
    """
    m = torch.from_numpy(np.asarray(motion, dtype=np.float64))
    axes = torch.from_numpy(asf.axes)
    rot_w, pos_w = [], []
    for k, parent in enumerate(asf.parents):
        order = asf.root_axis if parent < 0 else "".join(d[1] for d in asf.dofs[k] if d.startswith("r"))
        angles = torch.stack([m[:, k, 3 + "xyz".index(a)] for a in order], -1) if order else m[:, k, 3:3]
        local = axes[k] @ _euler(angles, order) @ axes[k].transpose(-1, -2)  # C · M · C^-1
        if parent < 0:
            rot_w.append(local)
            pos_w.append(m[:, k, :3])
        else:
            r = rot_w[parent] @ local
            rot_w.append(r)
            step = asf.lengths[k] * (r @ torch.from_numpy(asf.directions[k]))
            pos_w.append(pos_w[parent] + step)
    return torch.stack(pos_w, 1).numpy()


def _asf_for(amc: Path) -> Path:
    subject = amc.parent / (amc.stem.split("_")[0] + ".asf")  # 01_02.amc -> 01.asf
    if subject.exists():
        return subject
    found = sorted(amc.parent.glob("*.asf"))
    if len(found) == 1:
        return found[0]
    raise ValueError(f"{amc}: cannot tell its ASF skeleton ({len(found)} *.asf beside it); pass asf=")


def load_cmu(path: PathLike, *, skeleton: Skeleton | str = LSP14, asf: PathLike | None = None,
             scale: float | None = None, up: str = "y",
             joint_map: Mapping[str, str | Sequence[str]] | None = None, stride: int = 1) -> LoadedMocap:
    """Read CMU ASF/AMC motion as 3D poses in metres, world ``z`` up.

    Args:
        path: an ``.amc`` file or a folder of them (one sequence each).
        skeleton: output layout (LSP14 by default).
        asf: the skeleton file; default ``<subject>.asf`` beside each AMC (``01_02.amc`` -> ``01.asf``) or
            the only ``*.asf`` there.
        scale: metres per ASF unit; default ``0.0254 / L`` from ``:units length L`` (CMU: 1/0.45 inch).
        up: the ASF up axis (``"y"`` for CMU) or ``"z"``.
        joint_map: LSP14 joint -> bone name(s) whose end point(s) it is, overriding :data:`CMU_JOINTS`.
        stride: keep every ``stride``-th frame.

    Returns:
        :class:`~gpumosaic.sources.build.LoadedMocap`; frames where a bone has no values are dropped.
    """
    check_stride(stride)
    sequences, notes = [], []
    cache: dict[Path, ASFSkeleton] = {}
    for amc in source_files(path, ".amc"):
        asf_path = Path(asf) if asf is not None else _asf_for(amc)
        if asf_path not in cache:
            cache[asf_path] = read_asf(asf_path)
            if scale is None:
                notes.append(f"{asf_path.name}: length {cache[asf_path].length_unit:g} -> "
                             f"{0.0254 / cache[asf_path].length_unit:.6g} m per unit.")
        sk = cache[asf_path]
        weights, _ = name_weights(sk.names, CMU_JOINTS, joint_map, asf_path)
        metres = 0.0254 / sk.length_unit if scale is None else float(scale)
        world = cmu_forward_kinematics(sk, read_amc(amc, sk)[::stride])
        sequences.append((str(amc), to_z_up(apply_weights(weights, world) * metres, up, amc)))
    return make_loaded_mocap("cmu", path, sequences, stride, LSP14, skeleton, "incomplete frame (a bone without values)",
                         notes)
