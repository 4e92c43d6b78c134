"""TRC loader (OpenSim marker / joint-centre trajectories): header units, ``y`` up -> ``z`` up, LSP14 by name.

Layout (tab separated)::

    PathFileType  4  (X/Y/Z)  walk.trc
    DataRate  CameraRate  NumFrames  NumMarkers  Units  OrigDataRate  OrigDataStartFrame  OrigNumFrames
    60  60  100  20  mm  60  1  100
    Frame#  Time  RHip          RKnee  ...
                  X1  Y1  Z1    X2  Y2  Z2  ...
    1  0.000  ...

A marker's empty fields (a gap) read as NaN; a frame where a used marker is a gap is dropped and counted.

Truncated files: the header's ``NumFrames`` is honoured. More data rows than ``NumFrames`` is an error.
Fewer rows means the file was cut: the missing frames are counted as dropped under ``"missing: file has R of
NumFrames rows"`` in the load report (a :class:`~gpumosaic.sources.build.DroppedEntriesWarning` names the
counts), and when the file does not end with a line break its last row may be cut inside a number
(``-0.99`` read as ``-0``), so that row is dropped too, under ``"last row cut short"``. A file whose header has
no ``NumFrames`` is read without this check (a note says so). Not detectable: a file cut inside its very last
number that still has ``NumFrames`` rows and no final line break reads like a file without a final line
break.
Units come from the header's ``Units`` (``mm``, ``cm``, ``m``); OpenSim's frame is ``y`` up and is rotated to
the package's ``z``-up world by ``(x, y, z) -> (x, -z, y)``.

LSP14 from marker names (case-insensitive; :data:`TRC_JOINT_CANDIDATES`, written for joint-centre files
such as Pose2Sim's and OpenCap's, ``RHip``/``RKnee``/...; ``joint_map`` overrides any joint; surface markers
such as ``R.ASIS`` need an explicit ``joint_map``). ``neck`` is a ``Neck`` marker or the shoulders'
midpoint; ``head_top`` is a ``Head``/``HeadTop`` marker, else extrapolated from the neck and the
nose/eye/ear markers by :func:`gpumosaic.sources.coco.extrapolate_head_top` (an approximation).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..skeleton import LSP14, Skeleton
from .build import (DroppedEntriesWarning, LoadedMocap, PathLike, apply_weights, check_stride, make_loaded_mocap, name_weights,
                    source_files, to_z_up)
from .coco import HEAD_TOP_FACTOR, extrapolate_head_top

__all__ = ["TRC_JOINT_CANDIDATES", "TRC_UNITS", "read_trc", "load_trc"]

TRC_UNITS = {"mm": 0.001, "millimeters": 0.001, "cm": 0.01, "centimeters": 0.01, "m": 1.0, "meters": 1.0,
             "metres": 1.0}
"""Metres per unit for the header's ``Units`` field (lower-cased)."""


def _side(name: str) -> tuple[tuple[str, ...], ...]:
    part = name[2:].capitalize()  # r_knee -> Knee
    side = "R" if name[0] == "r" else "L"
    full = "Right" if side == "R" else "Left"
    return ((f"{side}{part}",), (f"{side}_{part}",), (f"{full}{part}",), (name,))


TRC_JOINT_CANDIDATES: dict[str, tuple[tuple[str, ...], ...]] = {
    **{n: _side(n) for n in LSP14.names[:12]},
    "neck": (("Neck",), ("RShoulder", "LShoulder")),
    "head_top": (("Head",), ("HeadTop",), ("Head_Top",), ("Top_Head",), ("head_top",)),
}
"""LSP14 joint -> alternatives of marker names (first found wins), each a tuple averaged."""

_FACE = ("Nose", "LEye", "REye", "LEar", "REar")  # extrapolate_head_top's order (ears at 3, 4)


def read_trc(path: PathLike) -> tuple[list[str], np.ndarray, str, np.ndarray]:
    """Parse a TRC file: ``(marker names, positions (F, M, 3) in file units, units, frame numbers (F,))``.

    Gaps are NaN. ``ValueError`` naming the file and line on malformed input, including more data rows than
    the header's ``NumFrames``. A truncated file (fewer rows than ``NumFrames``) is read as far as it is
    complete, with a :class:`~gpumosaic.sources.build.DroppedEntriesWarning` giving the counts; a last row
    that may be cut inside a number is left out (see the module docstring). :func:`load_trc` reports the same
    counts in its :class:`~gpumosaic.sources.build.LoadReport`.
    """
    parsed = _parse_trc(path)
    dropped = parsed.dropped(1)
    if dropped:
        warnings.warn(f"{path}: " + ", ".join(f"dropped {n} ({why})" for why, n in dropped.items()),
                      DroppedEntriesWarning, stacklevel=2)
    return parsed.names, parsed.xyz, parsed.units, parsed.frames


@dataclass(frozen=True)
class _ParsedTRC:
    names: list[str]
    xyz: np.ndarray  # (F, M, 3) file units, NaN gaps
    units: str
    frames: np.ndarray  # (F,) int64
    num_frames: int | None  # the header's NumFrames
    cut: bool  # a last row without its line break was left out (truncated file)
    notes: tuple[str, ...]

    def dropped(self, stride: int) -> dict[str, int]:
        """Frames announced by the header but not read, among those ``stride`` keeps: reason -> count."""
        if self.num_frames is None:
            return {}
        read = len(self.xyz)
        found = read + self.cut
        out = {}
        if self.cut:
            out["last row cut short (no line break; file truncated)"] = int(read % stride == 0)
        missing = len(range(found, self.num_frames)[(-found) % stride::stride])
        out[f"missing: file has {found} of NumFrames = {self.num_frames} rows (truncated)"] = missing
        return {k: v for k, v in out.items() if v}


def _parse_trc(path: PathLike) -> _ParsedTRC:
    path = Path(path)
    raw = path.read_text()
    lines = raw.splitlines()
    if len(lines) < 5 or not lines[0].startswith("PathFileType"):
        raise ValueError(f"{path}, line 1: not a TRC file (expected 'PathFileType' and 5 header lines)")
    keys = lines[1].split("\t")
    values = lines[2].split("\t")
    header = {k.strip(): v.strip() for k, v in zip(keys, values)}
    for field in ("NumMarkers", "Units"):
        if field not in header:
            raise ValueError(f"{path}, line 2: header has no {field!r} field (found {', '.join(keys)})")
    try:
        n_markers = int(header["NumMarkers"])
    except ValueError:
        raise ValueError(f"{path}, line 3: NumMarkers is not an integer: {header['NumMarkers']!r}") from None
    n_frames = None
    if "NumFrames" in header:
        try:
            n_frames = int(header["NumFrames"])
        except ValueError:
            raise ValueError(f"{path}, line 3: NumFrames is not an integer: {header['NumFrames']!r}") from None
    cols = lines[3].split("\t")
    if len(cols) < 2 or cols[0].strip() != "Frame#":
        raise ValueError(f"{path}, line 4: expected 'Frame#<TAB>Time<TAB>names...', got {lines[3][:40]!r}")
    names = [c.strip() for c in cols[2:] if c.strip()]
    if len(names) != n_markers:
        raise ValueError(f"{path}, line 4: {len(names)} marker names but NumMarkers = {n_markers}")
    width = 2 + 3 * n_markers
    data = [(line_no, text) for line_no, text in enumerate(lines[5:], start=6) if text.strip()]
    cut = False
    if n_frames is not None and 0 < len(data) < n_frames and not raw.endswith(("\n", "\r")):
        # Cut short: a last line without its line break may end inside a number (-0.99 -> -0); not trusted.
        data.pop()
        cut = True
    rows, frames = [], []
    for line_no, text in data:
        fields = text.rstrip("\r\n").split("\t")
        if len(fields) > width and any(f.strip() for f in fields[width:]):
            raise ValueError(f"{path}, line {line_no}: {len(fields)} fields, expected at most {width}")
        fields = (fields + [""] * width)[:width]
        try:
            frames.append(int(float(fields[0])))
            float(fields[1])  # Time: checked, unused
            rows.append([float(f) if f.strip() else np.nan for f in fields[2:]])
        except ValueError:
            raise ValueError(f"{path}, line {line_no}: non-numeric field") from None
    notes: tuple[str, ...] = ()
    if n_frames is None:
        notes = (f"{path.name}: the header has no NumFrames; truncation not checked.",)
    elif len(rows) > n_frames:
        raise ValueError(f"{path}: {len(rows)} data rows but the header's NumFrames = {n_frames}")
    if not rows:
        raise ValueError(f"{path}: no complete data rows" + (f" (header NumFrames = {n_frames})" if n_frames else ""))
    return _ParsedTRC(names, np.array(rows).reshape(len(rows), n_markers, 3), header["Units"],
                      np.array(frames, dtype=np.int64), n_frames, cut, notes)


def load_trc(path: PathLike, *, skeleton: Skeleton | str = LSP14, scale: float | None = None, up: str = "y",
             joint_map: Mapping[str, str | Sequence[str]] | None = None, stride: int = 1) -> LoadedMocap:
    """Read a TRC file (or a folder of ``*.trc``) as 3D poses in metres, world ``z`` up.

    Args:
        path: a ``.trc`` file or a folder of them (sorted; one sequence each).
        skeleton: output layout (LSP14 by default).
        scale: metres per file unit; default from the header's ``Units`` (:data:`TRC_UNITS`).
        up: the file's up axis: ``"y"`` (OpenSim) or ``"z"``.
        joint_map: LSP14 joint -> marker name (or names to average), overriding :data:`TRC_JOINT_CANDIDATES`.
        stride: keep every ``stride``-th frame.

    Returns:
        :class:`~gpumosaic.sources.build.LoadedMocap`; frames with a gap in a used marker are dropped, and the
        frames a truncated file lacks are counted as dropped (see the module docstring).
    """
    check_stride(stride)
    sequences, notes, before = [], [], {}
    for file in source_files(path, ".trc"):
        parsed = _parse_trc(file)
        markers, xyz, units = parsed.names, parsed.xyz, parsed.units
        for why, n in parsed.dropped(stride).items():
            before[f"{file.name}: {why}"] = n
        notes.extend(parsed.notes)
        xyz = xyz[::stride]
        if scale is None:
            if units.lower() not in TRC_UNITS:
                raise ValueError(f"{file}, line 3: unknown Units {units!r}; expected one of {sorted(TRC_UNITS)} "
                                 f"or pass scale=")
            metres = TRC_UNITS[units.lower()]
        else:
            metres = float(scale)
        weights, missing = name_weights(markers, TRC_JOINT_CANDIDATES, joint_map, file, optional=("head_top",))
        lsp = apply_weights(weights, xyz)
        if missing:
            lower = {m.lower(): i for i, m in enumerate(markers)}
            face_idx = [lower.get(n.lower()) for n in _FACE]
            if all(i is None for i in face_idx):
                raise ValueError(f"{file}: no head-top marker ({', '.join(a[0] for a in TRC_JOINT_CANDIDATES['head_top'])})"
                                 f" and no face marker ({', '.join(_FACE)}) to extrapolate it; pass joint_map=")
            face = np.stack([xyz[:, i] if i is not None else np.full_like(xyz[:, 0], np.nan) for i in face_idx], 1)
            lsp[:, 13] = extrapolate_head_top(lsp[:, 12], np.nan_to_num(face), np.isfinite(face).all(-1))
            notes.append(f"{file.name}: head_top = neck + {HEAD_TOP_FACTOR}·(ears' midpoint or face mean - neck).")
        sequences.append((str(file), to_z_up(lsp * metres, up, file)))
    return make_loaded_mocap("trc", path, sequences, stride, LSP14, skeleton, "gap in a used marker", notes,
                         dropped_before=before)
