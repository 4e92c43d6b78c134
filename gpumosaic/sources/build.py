"""Pool building and the shared pieces of every loader (load reports, 2D annotations, loaded mocap).

Loaders of 2D datasets (:mod:`.lsp`, :mod:`.mpii`, :mod:`.coco`, :mod:`.openpose`, :func:`.h36m.load_h36m_2d`)
return :class:`Annotations2D`: joints in the pixels of the original images plus the image paths. A pool for
the engine is then built by :func:`build_pool`: each annotated person is cropped into a square around the
joints' bounding box (with a margin) and resized to the stored resolution, uint8, in batches with
:func:`~gpumosaic.warp.warp_gather` (one bilinear resampling, on ``device``), chunked so that only ``chunk``
decoded images are held at a time. Loaders of 3D sources return :class:`LoadedMocap`.

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
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .._check import check_shape
from ..geometry import compose_affine, fit_to_box
from ..skeleton import LSP14, Skeleton, convert, get_skeleton, mapping
from ..warp import warp_gather, warp_images
from .base import Mocap3D, Pool2D

__all__ = [
    "LoadReport",
    "DroppedEntriesWarning",
    "Annotations2D",
    "LoadedMocap",
    "Crops",
    "crop_people",
    "build_pool",
    "pool_memory_bytes",
    "POOL_KINDS",
    "MOCAP_KINDS",
    "parse_source",
    "load_annotations",
    "load_pool",
    "load_mocap",
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


def _annotations(kind: str, source: PathLike, joints: np.ndarray, visible: np.ndarray, keep: np.ndarray,
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


def _loaded_mocap(kind: str, source: PathLike, sequences: Sequence[tuple[str, np.ndarray]], stride: int,
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


def _check_stride(stride: int) -> None:
    if int(stride) != stride or stride < 1:
        raise ValueError(f"Expected stride as an integer >= 1, got {stride}")


def _source_files(path: PathLike, suffix: str) -> list[Path]:
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


def _up_axis(points: np.ndarray, up: str, source: PathLike) -> np.ndarray:
    if up == "y":
        return _y_up_to_z_up(points)
    if up == "z":
        return points
    raise ValueError(f"{source}: expected up='y' or up='z', got {up!r}")


def _name_weights(available: Sequence[str], candidates: Mapping[str, Sequence[Sequence[str]]],
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


def _apply_weights(weights: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``weights (J, P) @ points (F, P, D) -> (F, J, D)`` reading only the points used (so that a NaN in an
    unused point, e.g. a finger, does not spoil the frame)."""
    used = np.flatnonzero(np.abs(weights).sum(0) > 0)
    return np.einsum("jp,fpc->fjc", weights[:, used], points[:, used])


# --------------------------------------------------------------------------------------------------------
# Cropping people into the stored resolution
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crops:
    """People cropped into S×S stored images.

    Attributes:
        images: (B, 3, S, S), uint8 for uint8 input (rounded), else the input's float dtype.
        joints: float (B, J, 2) joints in stored-image pixels (``fit_to_box`` of the input joints).
        box_from_image: float (B, 2, 3) the map from original-image pixels to stored-image pixels.
    """

    images: torch.Tensor
    joints: torch.Tensor
    box_from_image: torch.Tensor


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def crop_people(images: torch.Tensor, joints: torch.Tensor, size: int = 160, margin: float | None = None,
                padding_mode: str = "border", *, chunk: int = 256) -> Crops:
    """Crop each person into an S×S image: square around the joints' bounding box, one bilinear resampling.

    The square is that of :func:`~gpumosaic.geometry.fit_to_box` (the engine's own normalisation): the
    joints' bounding box is centred and its longer side becomes ``S - 2·margin``, so the stored joints are
    exactly ``fit_to_box(joints, size, margin)``.

    Args:
        images: (B, 3, H, W) uint8 or float in [0, 1], one image per person (equal sizes; images of different
            sizes go through :func:`build_pool`).
        joints: float (B, J, 2) pixels of ``images``.
        size: S, the stored side in pixels.
        margin: pixels kept free around the longer extent; ``None`` means 10 % of S.
        padding_mode: ``"border"`` (replicate edge pixels where the square leaves the image) or ``"zeros"``.
        chunk: warps computed at a time.

    Returns:
        :class:`Crops`. Bilinear resampling does not low-pass: shrinking by more than 2× aliases (use
        :func:`build_pool` with ``antialias=True`` for large images).

    Convention:
        pixels ``(x, y)`` = (column, row), pixel centres at integers; ``box_from_image`` maps image pixels to
        stored pixels (``cv2.warpAffine``'s ``M``).
    """
    dims = check_shape(images, ["B", "3", "H", "W"], name="images")
    check_shape(joints, ["B", "J", "2"], name="joints", dims=dims)
    if not joints.is_floating_point():
        raise TypeError(f"Expected floating-point joints, got {joints.dtype}")
    box_joints, box_from_image = fit_to_box(joints, size, margin)
    out = warp_images(images, box_from_image.to(torch.float32), (size, size), padding_mode, chunk=chunk)
    out = _to_uint8(out) if images.dtype == torch.uint8 else out.to(images.dtype)
    return Crops(images=out, joints=box_joints, box_from_image=box_from_image)


def crop_people_reference(images: torch.Tensor, joints: torch.Tensor, size: int = 160,
                          margin: float | None = None, padding_mode: str = "border") -> Crops:
    """Plain-loop twin of :func:`crop_people`: per person, its box by hand and ``cv2.warpAffine`` (tests only).

    OpenCV quantises sampling positions to 1/32 px, so values agree to about ``|gradient|/64``.
    """
    import cv2

    margin = 0.1 * size if margin is None else float(margin)
    outs, js, maps = [], [], []
    for img, jt in zip(images, joints.double()):
        pts = jt.cpu().numpy()
        lo, hi = pts.min(0), pts.max(0)
        extent = float((hi - lo).max())
        scale = (size - 2 * margin) / extent if extent > 0 else 1.0
        centre = (lo + hi) / 2
        t = (size - 1) / 2 - scale * centre
        m = np.array([[scale, 0, t[0]], [0, scale, t[1]]])
        src = img.permute(1, 2, 0).cpu().numpy().astype(np.float32)
        src = src / 255.0 if images.dtype == torch.uint8 else src
        border = cv2.BORDER_REPLICATE if padding_mode == "border" else cv2.BORDER_CONSTANT
        dst = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
        outs.append(torch.from_numpy(np.ascontiguousarray(dst.transpose(2, 0, 1))))
        js.append(torch.from_numpy(pts * scale + t))
        maps.append(torch.from_numpy(m))
    out = torch.stack(outs)
    out = _to_uint8(out) if images.dtype == torch.uint8 else out.to(images.dtype)
    return Crops(images=out.to(images.device), joints=torch.stack(js).to(joints), box_from_image=torch.stack(maps))


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"Cannot read image {path} (missing or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _box_reduce(image: np.ndarray, k: int) -> np.ndarray:
    """Exact k×k box filter + decimation (the image is edge-padded to a multiple of k first).

    Reduced pixel ``u'`` covers original pixels ``k·u' .. k·u' + k - 1``: its centre is original
    ``x = k·u' + (k - 1)/2``.
    """
    h, w = image.shape[:2]
    hp, wp = -(-h // k) * k, -(-w // k) * k
    if (hp, wp) != (h, w):
        image = np.pad(image, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    sums = image.reshape(hp // k, k, wp // k, k, -1).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums + k * k // 2) // (k * k)).astype(np.uint8)  # rounded mean, no float copy of the image


def build_pool(annotations: Annotations2D, size: int = 160, margin: float | None = None, *,
               device: torch.device | str | None = None, chunk: int = 64, antialias: bool = True,
               padding_mode: str = "border",
               read_image: Callable[[Path], np.ndarray] | None = None) -> Pool2D:
    """Crop every annotated person into the stored resolution: a :class:`~gpumosaic.sources.base.Pool2D`.

    Per chunk of ``chunk`` people, the distinct images are decoded once (host), padded to the chunk's
    largest size (edge-replicated for ``"border"``, zeros for ``"zeros"``, so that the padding acts as the
    per-image border rule), moved to ``device`` and resampled in one
    :func:`~gpumosaic.warp.warp_gather` call through each person's ``fit_to_box`` square. The pool is
    assembled on ``device`` (uint8; see :func:`pool_memory_bytes` for the footprint).

    Args:
        annotations: people with complete joints and image paths (a 2D loader's output).
        size: S, the stored side (the demo pool uses 160; the engine's output is 220).
        margin: pixels free around the longer extent of the joints; ``None`` means 10 % of S.
        device: where the warps run and the pool lives (default CPU).
        chunk: people per batch (bounds the decoded images held at once).
        antialias: before the bilinear warp, shrink an image that the crop reduces by 2× or more with an exact
            k×k box filter (k = floor(1/scale) of its least-reduced person), so that the remaining bilinear
            step shrinks by less than 2× (bilinear alone aliases).
        padding_mode: ``"border"`` or ``"zeros"`` where the square leaves the image.
        read_image: ``path -> (H, W, 3) uint8 RGB`` (default: OpenCV).

    Returns:
        :class:`~gpumosaic.sources.base.Pool2D` of N uint8 (N, 3, S, S) images, joints (N, J, 2) in stored
        pixels, the annotations' skeleton and ids.
    """
    if chunk <= 0:
        raise ValueError(f"Expected chunk > 0, got {chunk}")
    if padding_mode not in ("border", "zeros"):
        raise ValueError(f"Expected padding_mode 'border' or 'zeros', got {padding_mode!r}")
    missing = [i for i, p in enumerate(annotations.image_paths) if p is None]
    if missing:
        raise ValueError(f"{annotations.report.source}: {len(missing)} entries have no image path (first: entry "
                         f"{missing[0]}); give the loader its image folder")
    read_image = _read_rgb if read_image is None else read_image
    device = torch.device("cpu") if device is None else torch.device(device)
    n = len(annotations)
    box_joints, box_from_image = fit_to_box(annotations.joints.double(), size, margin)
    scales = box_from_image[:, 0, 0].numpy()
    out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        paths = annotations.image_paths[start:stop]
        slot: dict[Path, int] = {}
        for p in paths:
            slot.setdefault(p, len(slot))
        # Least-reduced person of each image decides its box-filter factor.
        best = {}
        for p, s in zip(paths, scales[start:stop]):
            best[p] = max(best.get(p, 0.0), float(s))
        decoded, factors = [], []
        for p in slot:
            img = read_image(p)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"Expected image {p} as (H, W, 3) uint8, got {img.shape} {img.dtype}")
            k = max(1, math.floor(1.0 / best[p])) if antialias and best[p] <= 0.5 else 1
            decoded.append(_box_reduce(img, k) if k > 1 else img)
            factors.append(k)
        hm = max(d.shape[0] for d in decoded)
        wm = max(d.shape[1] for d in decoded)
        mode = "edge" if padding_mode == "border" else "constant"
        batch = np.stack([np.pad(d, ((0, hm - d.shape[0]), (0, wm - d.shape[1]), (0, 0)), mode=mode)
                          for d in decoded])
        pool_images = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
        index = torch.tensor([slot[p] for p in paths], dtype=torch.long)
        k = torch.tensor(factors, dtype=torch.float64)[index]
        zero = torch.zeros_like(k)
        # image_from_reduced: x = k·x' + (k - 1)/2 (see _box_reduce).
        image_from_reduced = torch.stack([torch.stack([k, zero, (k - 1) / 2], -1),
                                          torch.stack([zero, k, (k - 1) / 2], -1)], -2)
        box_from_reduced = compose_affine(box_from_image[start:stop], image_from_reduced)
        warped = warp_gather(pool_images, index.to(device), box_from_reduced.to(device, torch.float32),
                             (size, size), padding_mode)
        out[start:stop] = _to_uint8(warped)
    return Pool2D(images=out, joints=box_joints.float().to(device), skeleton=annotations.skeleton,
                  ids=annotations.ids.to(device))


def pool_memory_bytes(n: int = 80_000, size: int = 160, channels: int = 3, joints: int = 14) -> int:
    """Bytes of a uint8 pool of ``n`` S×S images with float32 joints and int64 ids.

    ``n·C·S²`` (images) ``+ n·J·2·4`` (joints) ``+ 8n`` (ids). For the paper-sized pool of 80,000 people:

    ======  ====================  ===========================================
    S       images                total (J = 14)
    ======  ====================  ===========================================
    160     6,144,000,000 B       6,153,600,000 B ≈ 6.15 GB (5.73 GiB)
    220     11,616,000,000 B      11,625,600,000 B ≈ 11.6 GB (10.8 GiB)
    ======  ====================  ===========================================

    The engine also keeps per-pool retrieval tables (canonical coordinates, weights) of a few hundred bytes
    per entry; float images would take 4× the image figure.
    """
    for value, name in ((n, "n"), (size, "size"), (channels, "channels"), (joints, "joints")):
        if int(value) < 0:
            raise ValueError(f"Expected {name} >= 0, got {value}")
    return int(n) * int(channels) * int(size) ** 2 + int(n) * int(joints) * 2 * 4 + int(n) * 8


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


def load_pool(kind: str, path: PathLike, *, size: int = 160, margin: float | None = None,
              device: torch.device | str | None = None, chunk: int = 64, antialias: bool = True,
              padding_mode: str = "border", selection=None, **options) -> Pool2D:
    """Load 2D annotations with :func:`load_annotations` (loader ``options``), keep the entries that
    ``selection`` (a :class:`~gpumosaic.sources.select.Selection` or selector text, by the annotations' ids)
    keeps, and crop them into a pool with :func:`build_pool` (the other arguments)."""
    annotations = load_annotations(kind, path, **options)
    if selection is not None:
        from .select import parse_selection

        sel = parse_selection(selection) if isinstance(selection, str) else selection
        index = torch.nonzero(sel.mask(annotations.ids)).reshape(-1)
        if index.numel() == 0:
            raise ValueError(f"Selection {sel.text!r} keeps none of the {len(annotations)} annotations of {path}")
        annotations = annotations.subset(index)
    return build_pool(annotations, size, margin, device=device, chunk=chunk, antialias=antialias,
                      padding_mode=padding_mode)


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
