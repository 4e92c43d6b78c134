"""The shared pieces of every loader (load reports, 2D annotations, loaded mocap) and the loader registry.

Loaders parse; they do not warp. Loaders of 2D datasets (:mod:`.lsp`, :mod:`.mpii`, :mod:`.coco`,
:mod:`.openpose`, :func:`.h36m.load_h36m_2d`) return :class:`Annotations2D`: joints in the pixels of the
original images plus the image paths; :func:`gpumosaic.pools.build_pool` then crops them into a pool for the
engine (:func:`gpumosaic.pools.load_pool` does both). Loaders of 3D sources return :class:`LoadedMocap`.

Every loader reports what it drops (:class:`LoadReport`: counts per reason) through the
``gpumosaic.sources`` logger and, when anything was dropped, a :class:`DroppedEntriesWarning`; malformed
files raise ``ValueError`` naming the file and the line or field.

Convention:
    2D joints are ``(x, y)`` pixels, ``x`` to the right (column), ``y`` down (row); pixel (row v, column u)
    has its centre at ``(x, y) = (u, v)``. Affine maps are ``(..., 2, 3)`` named by frame:
    ``box_from_image`` maps original-image pixels to stored-image pixels. 3D poses are metres in a world
    frame with ``z`` up.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .._check import check_shape
from ..skeleton import LSP14, Skeleton, convert, get_skeleton, mapping
from .base import Mocap3D

__all__ = [
    "LoadReport",
    "DroppedEntriesWarning",
    "Annotations2D",
    "LoadedMocap",
    "POOL_KINDS",
    "MOCAP_KINDS",
    "parse_source",
    "load_annotations",
    "load_mocap",
    "make_annotations",
    "make_loaded_mocap",
    "check_stride",
    "source_files",
    "to_z_up",
    "name_weights",
    "apply_weights",
]

log = logging.getLogger("gpumosaic.sources")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------------
# Reports and loader outputs
# --------------------------------------------------------------------------------------------------------


class DroppedEntriesWarning(UserWarning):
    """A loader dropped entries (incomplete annotations, gaps, ...); the message gives the counts."""


@dataclass(frozen=True)
class LoadReport:
    """What a loader kept and dropped.

    Attributes:
        source: the file or folder read.
        kind: the loader (``"lsp"``, ``"mpii"``, ``"bvh"``, ...).
        total: entries seen (people for 2D sources, frames for 3D sources).
        kept: entries returned.
        dropped: reason -> number of entries dropped for it (every dropped entry counted once, under the
            first reason that applies).
        notes: approximations and assumptions that applied (e.g. a guessed unit).
    """

    source: str
    kind: str
    total: int
    kept: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def num_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    def message(self) -> str:
        text = f"{self.kind} loader, {self.source}: kept {self.kept} of {self.total}"
        if self.num_dropped:
            text += "; dropped " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.items() if n)
        if self.notes:
            text += "; notes: " + " ".join(self.notes)
        return text


def _report(kind: str, source: PathLike, total: int, kept: int, dropped: Mapping[str, int],
            notes: Sequence[str] = ()) -> LoadReport:
    """Build the report, log it, warn when anything was dropped, and fail when nothing is left."""
    report = LoadReport(source=str(source), kind=kind, total=int(total), kept=int(kept),
                        dropped={k: int(v) for k, v in dropped.items() if v}, notes=tuple(notes))
    log.info(report.message())
    if report.num_dropped:
        warnings.warn(report.message(), DroppedEntriesWarning, stacklevel=4)  # -> the loader's caller
    if report.kept == 0:
        raise ValueError(f"{source}: no usable entries ({report.message()})")
    return report


@dataclass(frozen=True)
class Annotations2D:
    """Complete 2D annotations of N people in their original images (before cropping into a pool).

    Attributes:
        joints: float32 (N, J, 2) pixels of the original image.
        visible: bool (N, J) the dataset's visibility flags (True where the source says nothing).
        image_paths: N paths of the images (``None`` where the source names no image, e.g. no image folder
            was given; :func:`build_pool` then refuses the entry).
        skeleton: the layout of ``joints``.
        ids: int64 (N,) provenance ids; each loader documents its numbering.
        report: what the loader kept and dropped.
    """

    joints: torch.Tensor
    visible: torch.Tensor
    image_paths: tuple[Path | None, ...]
    skeleton: Skeleton
    ids: torch.Tensor
    report: LoadReport

    def __post_init__(self) -> None:
        dims = check_shape(self.joints, ["N", "J", "2"], name="joints")
        check_shape(self.visible, ["N", "J"], name="visible", dims=dims)
        if len(self.image_paths) != dims["N"] or self.ids.shape != (dims["N"],):
            raise ValueError(f"Expected {dims['N']} image paths and ids, got {len(self.image_paths)} and "
                             f"{tuple(self.ids.shape)}")

    def __len__(self) -> int:
        return self.joints.shape[0]

    def subset(self, index: Sequence[int] | torch.Tensor) -> "Annotations2D":
        """The entries ``index`` (int64 indices), e.g. to build a pool from part of a dataset."""
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, joints=self.joints[index], visible=self.visible[index], ids=self.ids[index],
                       image_paths=tuple(self.image_paths[int(i)] for i in index))


@dataclass(frozen=True)
class LoadedMocap:
    """3D poses read from a motion file or data set.

    Attributes:
        mocap: the poses, metres, world ``z`` up (:class:`~gpumosaic.sources.base.Mocap3D`; ``ids`` number
            the kept frames in reading order).
        report: what the loader kept and dropped.
        sequences: names of the sequences read (files, or ``subject/action`` keys).
        sequence: int64 (M,) index into ``sequences`` of every pose.
        frame: int64 (M,) frame number of every pose in its sequence (0-based, before any stride).
    """

    mocap: Mocap3D
    report: LoadReport
    sequences: tuple[str, ...]
    sequence: torch.Tensor
    frame: torch.Tensor


def _convert_visibility(visible: np.ndarray, src: Skeleton, dst: Skeleton) -> np.ndarray:
    """A mapped joint is visible when every source joint it is made of is visible."""
    uses = (mapping(src, dst).numpy() > 0).astype(np.float64)  # (J_dst, J_src)
    return (np.einsum("ds,ns->nd", uses, (~visible).astype(np.float64)) == 0)


def make_annotations(kind: str, source: PathLike, joints: np.ndarray, visible: np.ndarray, keep: np.ndarray,
                     paths: Sequence[Path | None], ids: np.ndarray, src: Skeleton, dst: Skeleton | str,
                     dropped: Mapping[str, int], notes: Sequence[str] = ()) -> Annotations2D:
    """Common tail of the 2D loaders: select ``keep``, convert the layout, report."""
    dst = get_skeleton(dst)
    keep = np.asarray(keep, dtype=bool)
    report = _report(kind, source, len(keep), int(keep.sum()), dropped, notes)
    j = torch.from_numpy(np.ascontiguousarray(joints[keep], dtype=np.float64))
    vis = np.asarray(visible, dtype=bool)[keep]
    if dst.name != src.name:
        j = convert(j, src, dst)
        vis = _convert_visibility(vis, src, dst)
    return Annotations2D(joints=j.float(), visible=torch.from_numpy(np.ascontiguousarray(vis)),
                         image_paths=tuple(p for p, k in zip(paths, keep) if k), skeleton=dst,
                         ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)[keep]), report=report)


def make_loaded_mocap(kind: str, source: PathLike, sequences: Sequence[tuple[str, np.ndarray]], stride: int,
                      src: Skeleton, dst: Skeleton | str, reason: str, notes: Sequence[str] = (),
                      dropped_before: Mapping[str, int] | None = None) -> LoadedMocap:
    """Common tail of the 3D loaders: concatenate the sequences' poses (F_s, J, 3) (already strided), drop the
    frames with non-finite values under ``reason``, convert the layout, report. ``dropped_before``: frames the
    files announce but that could not be read (reason -> count, e.g. a truncated file), counted in the
    report's total and dropped entries."""
    dst = get_skeleton(dst)
    poses = np.concatenate([p for _, p in sequences])
    keep = np.isfinite(poses).all((1, 2))
    before = dict(dropped_before or {})
    report = _report(kind, source, len(keep) + sum(before.values()), int(keep.sum()),
                     {**before, reason: int((~keep).sum())}, notes)
    p = torch.from_numpy(np.ascontiguousarray(poses[keep], dtype=np.float64))
    if dst.name != src.name:
        p = convert(p, src, dst)
    sequence = np.concatenate([np.full(len(p_s), i) for i, (_, p_s) in enumerate(sequences)])
    frame = np.concatenate([np.arange(len(p_s)) * stride for _, p_s in sequences])
    return LoadedMocap(mocap=Mocap3D(poses=p.float(), skeleton=dst), report=report,
                       sequences=tuple(name for name, _ in sequences),
                       sequence=torch.from_numpy(sequence.astype(np.int64)[keep]),
                       frame=torch.from_numpy(frame.astype(np.int64)[keep]))


def check_stride(stride: int) -> None:
    """Raise ``ValueError`` unless ``stride`` (a loader's frame step) is an integer >= 1."""
    if int(stride) != stride or stride < 1:
        raise ValueError(f"Expected stride as an integer >= 1, got {stride}")


def source_files(path: PathLike, suffix: str) -> list[Path]:
    """``path`` itself, or the ``*suffix`` files of the folder ``path`` sorted by name (one sequence each)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == suffix and p.is_file())
        if not files:
            raise ValueError(f"{path}: no *{suffix} files")
        return files
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    return [path]


def _y_up_to_z_up(points: np.ndarray) -> np.ndarray:
    """Rotate a ``y``-up right-handed frame into the package's ``z``-up world: ``(x, y, z) -> (x, -z, y)``.

    A +90° rotation about ``x`` (det +1, handedness kept): old ``y`` (up) becomes ``z``, old ``z`` becomes
    ``-y``. A person facing ``+x`` with their right side at ``+z`` (DeepMimic) ends with their right at ``-y``,
    as in the demo data.
    """
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


def to_z_up(points: np.ndarray, up: str, source: PathLike) -> np.ndarray:
    """``points (..., 3)`` with up axis ``up`` (``"y"`` or ``"z"``) in the world's ``z``-up frame (``ValueError``
    naming ``source`` for another axis)."""
    if up == "y":
        return _y_up_to_z_up(points)
    if up == "z":
        return points
    raise ValueError(f"{source}: expected up='y' or up='z', got {up!r}")


def name_weights(available: Sequence[str], candidates: Mapping[str, Sequence[Sequence[str]]],
                 joint_map: Mapping[str, str | Sequence[str]] | None, source: PathLike,
                 optional: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """LSP14 joints as means of named source points (BVH joints, TRC markers).

    For each LSP14 joint, ``joint_map[name]`` (a point name or a list of names to average) when given,
    else the first alternative of ``candidates[name]`` whose names all exist (case-insensitive, ignoring a
    ``namespace:`` prefix such as ``mixamorig:``).

    Returns:
        ``(weights (14, len(available)), missing)``: rows sum to 1; ``missing`` lists the LSP14 joints in
        ``optional`` that were not found (their rows are zero). A missing non-optional joint raises.
    """
    def key(n: str) -> str:
        return n.split(":")[-1].lower()  # case-insensitive, without a 'namespace:' prefix

    lower = {key(n): i for i, n in enumerate(available)}
    weights = np.zeros((len(LSP14), len(available)))
    missing = []
    for row, name in enumerate(LSP14.names):
        if joint_map is not None and name in joint_map:
            choice = joint_map[name]
            alternatives = [[choice] if isinstance(choice, str) else list(choice)]
        else:
            alternatives = [list(a) for a in candidates.get(name, ())]
        for alt in alternatives:
            if alt and all(key(n) in lower for n in alt):
                for n in alt:
                    weights[row, lower[key(n)]] += 1.0 / len(alt)
                break
        else:
            if name in optional and (joint_map is None or name not in joint_map):
                missing.append(name)
                continue
            tried = " or ".join("+".join(a) for a in alternatives) or "nothing"
            raise ValueError(
                f"{source}: no point for LSP14 joint {name!r} (tried {tried}); available: "
                f"{', '.join(available)}. Pass joint_map={{{name!r}: NAME}}"
            )
    if joint_map is not None:
        unknown = sorted(set(joint_map) - set(LSP14.names))
        if unknown:
            raise ValueError(f"joint_map keys must be LSP14 joint names {LSP14.names}, got {unknown}")
    return weights, missing


def apply_weights(weights: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``weights (J, P) @ points (F, P, D) -> (F, J, D)`` reading only the points used (so that a NaN in an
    unused point, e.g. a finger, does not spoil the frame)."""
    used = np.flatnonzero(np.abs(weights).sum(0) > 0)
    return np.einsum("jp,fpc->fjc", weights[:, used], points[:, used])


# --------------------------------------------------------------------------------------------------------
# Registry: ``--pool KIND:PATH`` / ``--mocap KIND:PATH``
# --------------------------------------------------------------------------------------------------------

POOL_KINDS: dict[str, str] = {
    "lsp": "gpumosaic.sources.lsp:load_lsp",
    "mpii": "gpumosaic.sources.mpii:load_mpii",
    "coco": "gpumosaic.sources.coco:load_coco",
    "openpose": "gpumosaic.sources.openpose:load_openpose",
    "h36m2d": "gpumosaic.sources.h36m:load_h36m_2d",
}
"""2D pool sources: kind -> ``module:function`` returning :class:`Annotations2D`."""

MOCAP_KINDS: dict[str, str] = {
    "h36m": "gpumosaic.sources.h36m:load_h36m_3d",
    "bvh": "gpumosaic.sources.bvh:load_bvh",
    "cmu": "gpumosaic.sources.cmu:load_cmu",
    "trc": "gpumosaic.sources.trc:load_trc",
    "deepmimic": "gpumosaic.sources.deepmimic:load_deepmimic",
}
"""3D mocap sources: kind -> ``module:function`` returning :class:`LoadedMocap`."""


def _resolve(kinds: Mapping[str, str], kind: str, what: str) -> Callable:
    target = kinds.get(kind.lower())
    if target is None:
        raise ValueError(f"Unknown {what} kind {kind!r}; expected one of {sorted(kinds)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def parse_source(spec: str) -> tuple[str, Path]:
    """Split ``"KIND:PATH"`` (e.g. ``"lsp:/data/lsp_dataset"``) into ``(kind, Path)``; kind lower-cased."""
    kind, sep, path = str(spec).partition(":")
    if not sep or not kind or not path:
        raise ValueError(f"Expected a source as KIND:PATH, got {spec!r}")
    return kind.lower(), Path(path)


def load_annotations(kind: str, path: PathLike, **options) -> Annotations2D:
    """Run the 2D loader ``kind`` (:data:`POOL_KINDS`) on ``path`` with its keyword ``options``."""
    return _resolve(POOL_KINDS, kind, "pool")(path, **options)


def load_mocap(kind: str, path: PathLike, *, device: torch.device | str | None = None, selection=None,
               **options) -> Mocap3D:
    """Run the 3D loader ``kind`` (:data:`MOCAP_KINDS`) on ``path``; its :class:`Mocap3D` on ``device``.

    ``selection`` (a :class:`~gpumosaic.sources.select.Selection` or selector text) keeps part of it; its
    ``seq`` and ``frame`` keys are the loader's sequence index and frame number (:class:`LoadedMocap`)."""
    loaded = _resolve(MOCAP_KINDS, kind, "mocap")(path, **options)
    mocap = loaded.mocap
    if selection is not None:
        from .select import select_mocap

        mocap = select_mocap(mocap, selection, loaded.sequence, loaded.frame)
    return mocap.to(device)
