"""Pool building: 2D annotations -> a :class:`~gpumosaic.sources.Pool2D` of cropped people, and its footprint.

The loaders in :mod:`gpumosaic.sources` only parse (:class:`~gpumosaic.sources.build.Annotations2D`: joints in
the pixels of the original images plus the image paths). :func:`build_pool` crops each annotated person into
a square around the joints' bounding box (with a margin) and resizes it to the stored resolution, uint8, in
batches with :func:`~gpumosaic.warp.warp_gather` (one bilinear resampling, on ``device``), chunked so that
only ``chunk`` decoded images are held at a time. :func:`crop_people` does the same for images already in
memory; :func:`pool_memory_bytes` is the footprint of a pool.

Convention:
    2D joints are ``(x, y)`` pixels, ``x`` to the right (column), ``y`` down (row); pixel (row v, column u)
    has its centre at ``(x, y) = (u, v)``. Affine maps are ``(..., 2, 3)`` named by frame:
    ``box_from_image`` maps original-image pixels to stored-image pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ._check import check_shape
from .geometry import apply_affine, compose_affine, fit_to_box, invert_affine
from .sources.base import Pool2D
from .sources.build import Annotations2D, PathLike, load_annotations
from .warp import warp_gather, warp_images

__all__ = ["Crops", "content_box", "crop_people", "build_pool", "load_pool", "pool_memory_bytes"]

_PADDING = {"border": "edge", "zeros": "constant", "reflection": "symmetric"}
"""np.pad mode of each padding mode (``"symmetric"`` repeats the edge pixel, as ``grid_sample``'s reflection)."""


@dataclass(frozen=True)
class Crops:
    """People cropped into S×S stored images.

    Attributes:
        images: (B, 3, S, S), uint8 for uint8 input (rounded), else the input's float dtype.
        joints: float (B, J, 2) joints in stored-image pixels (``fit_to_box`` of the input joints).
        box_from_image: float (B, 2, 3) the map from original-image pixels to stored-image pixels.
        content_box: float (B, 4) the stored pixels filled from the image itself (:func:`content_box`).
    """

    images: torch.Tensor
    joints: torch.Tensor
    box_from_image: torch.Tensor
    content_box: torch.Tensor | None = None


def content_box(box_from_image: torch.Tensor, image_size: torch.Tensor, size: int) -> torch.Tensor:
    """The stored pixels of each crop that sample the photo itself rather than its padding.

    Stored pixel ``(u, v)`` is content when its centre maps into the photo's area ``[-0.5, W - 0.5] ×
    [-0.5, H - 0.5]`` (a bilinear sample there is made of the photo's own pixels). For the axis-aligned maps
    of :func:`~gpumosaic.geometry.fit_to_box` those pixels form a rectangle; it is returned by its outer
    pixel edges, clipped to the stored image (whole stored image: ``(-0.5, -0.5, S - 0.5, S - 0.5)``).

    Args:
        box_from_image: float (B, 2, 3) maps from photo pixels to stored pixels (scale and translation).
        image_size: (B, 2) or (2,) photo ``(H, W)``.
        size: S, the stored side.

    Returns:
        float32 (B, 4) ``(x0, y0, x1, y1)`` on half-pixel edges; ``x0 > x1`` (empty) when no stored pixel
        is content.
    """
    check_shape(box_from_image, ["B", "2", "3"], name="box_from_image")
    m = box_from_image.double()
    hi = torch.as_tensor(image_size, dtype=torch.float64, device=m.device).expand(m.shape[0], 2).flip(-1) - 0.5
    lo = torch.full_like(hi, -0.5)  # the photo's area: [-0.5, W - 0.5] x [-0.5, H - 0.5], (x, y) per row
    corners = torch.stack([lo, torch.stack([hi[:, 0], lo[:, 1]], -1), torch.stack([lo[:, 0], hi[:, 1]], -1), hi], 1)
    mapped = apply_affine(m, corners)  # (B, 4, 2) stored pixels
    eps = 1e-6  # a pixel centre exactly on the photo's edge is content
    first = torch.ceil(mapped.amin(1) - eps).clamp_min(0)  # first content pixel centre per axis
    last = torch.floor(mapped.amax(1) + eps).clamp_max(size - 1)
    return torch.cat([first - 0.5, last + 0.5], -1).float()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def crop_people(images: torch.Tensor, joints: torch.Tensor, size: int = 160, margin: float | None = None,
                padding_mode: str = "reflection", *, chunk: int = 256) -> Crops:
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
        padding_mode: where the square leaves the image: ``"reflection"`` (mirror the image at its edge,
            the default: no streaks), ``"border"`` (replicate edge pixels) or ``"zeros"``.
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
    box = content_box(box_from_image, images.shape[-2:], size).to(images.device)
    return Crops(images=out, joints=box_joints, box_from_image=box_from_image, content_box=box)


def crop_people_reference(images: torch.Tensor, joints: torch.Tensor, size: int = 160,
                          margin: float | None = None, padding_mode: str = "reflection") -> Crops:
    """Plain-loop twin of :func:`crop_people`: per person, its box by hand and ``cv2.warpAffine`` (tests only).

    OpenCV quantises sampling positions to 1/32 px, so values agree to about ``|gradient|/64``.
    """
    import cv2

    margin = 0.1 * size if margin is None else float(margin)
    outs, js, maps, boxes = [], [], [], []
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
        border = {"border": cv2.BORDER_REPLICATE, "zeros": cv2.BORDER_CONSTANT,
                  "reflection": cv2.BORDER_REFLECT}[padding_mode]
        dst = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
        outs.append(torch.from_numpy(np.ascontiguousarray(dst.transpose(2, 0, 1))))
        js.append(torch.from_numpy(pts * scale + t))
        maps.append(torch.from_numpy(m))
        # content: stored pixels whose centre maps back into [-0.5, W - 0.5] x [-0.5, H - 0.5], one by one
        h, w = src.shape[:2]
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
        cols = [u for u in range(size) if -0.5 - 1e-6 <= inv[0, 0] * u + inv[0, 2] <= w - 0.5 + 1e-6]
        rows = [v for v in range(size) if -0.5 - 1e-6 <= inv[1, 1] * v + inv[1, 2] <= h - 0.5 + 1e-6]
        boxes.append([min(cols) - 0.5, min(rows) - 0.5, max(cols) + 0.5, max(rows) + 0.5])
    out = torch.stack(outs)
    out = _to_uint8(out) if images.dtype == torch.uint8 else out.to(images.dtype)
    return Crops(images=out.to(images.device), joints=torch.stack(js).to(joints), box_from_image=torch.stack(maps),
                 content_box=torch.tensor(boxes, dtype=torch.float32))


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
               padding_mode: str = "reflection",
               read_image: Callable[[Path], np.ndarray] | None = None) -> Pool2D:
    """Crop every annotated person into the stored resolution: a :class:`~gpumosaic.sources.base.Pool2D`.

    Per chunk of ``chunk`` people, the distinct images are decoded once (host), padded far enough for every
    person's square and to one size (mirrored for ``"reflection"``, edge-replicated for ``"border"``, zeros
    for ``"zeros"``: the padding is each image's own border rule), moved to ``device`` and resampled in one
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
        padding_mode: where the square leaves the image: ``"reflection"`` (default: the image mirrored at its
            edge, no streaks), ``"border"`` (edge pixels replicated, the behaviour before issue 13) or ``"zeros"``.
            Either way the pool records which stored pixels are content (``Pool2D.content_box``), and the
            engine's ``mask_outside`` keeps padding from winning the index map where a match has content.
        read_image: ``path -> (H, W, 3) uint8 RGB`` (default: OpenCV).

    Returns:
        :class:`~gpumosaic.sources.base.Pool2D` of N uint8 (N, 3, S, S) images, joints (N, J, 2) in stored
        pixels, the annotations' skeleton and ids, and each crop's ``content_box`` (N, 4).
    """
    if chunk <= 0:
        raise ValueError(f"Expected chunk > 0, got {chunk}")
    if padding_mode not in _PADDING:
        raise ValueError(f"Expected padding_mode 'reflection', 'border' or 'zeros', got {padding_mode!r}")
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
    photo_size = torch.empty((n, 2), dtype=torch.float64)  # (H, W) of each person's photo
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
        decoded, factors, sizes = [], [], []
        for p in slot:
            img = read_image(p)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"Expected image {p} as (H, W, 3) uint8, got {img.shape} {img.dtype}")
            sizes.append(img.shape[:2])
            k = max(1, math.floor(1.0 / best[p])) if antialias and best[p] <= 0.5 else 1
            decoded.append(_box_reduce(img, k) if k > 1 else img)
            factors.append(k)
        index = torch.tensor([slot[p] for p in paths], dtype=torch.long)
        photo_size[start:stop] = torch.tensor(sizes, dtype=torch.float64)[index]
        k = torch.tensor(factors, dtype=torch.float64)[index]
        zero = torch.zeros_like(k)
        # image_from_reduced: x = k·x' + (k - 1)/2 (see _box_reduce).
        image_from_reduced = torch.stack([torch.stack([k, zero, (k - 1) / 2], -1),
                                          torch.stack([zero, k, (k - 1) / 2], -1)], -2)
        box_from_reduced = compose_affine(box_from_image[start:stop], image_from_reduced)
        # Every image of the chunk gets the same left / top padding and one common size, enough for each
        # person's square (one pixel beyond, for bilinear): the warp then samples only padded pixels, so the
        # padding follows padding_mode exactly for every image, whatever its size.
        corners = torch.tensor([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]], dtype=torch.float64)
        reach = apply_affine(invert_affine(box_from_reduced), corners).reshape(-1, 2)  # reduced pixels
        left, top = (int(v) for v in (-torch.floor(reach.amin(0))).clamp_min(0))
        far_x, far_y = (int(v) + 1 for v in torch.ceil(reach.amax(0)))
        width = left + max(far_x, max(d.shape[1] for d in decoded))
        height = top + max(far_y, max(d.shape[0] for d in decoded))
        batch = np.stack([np.pad(d, ((top, height - top - d.shape[0]), (left, width - left - d.shape[1]), (0, 0)),
                                 mode=_PADDING[padding_mode]) for d in decoded])
        pool_images = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
        reduced_from_padded = torch.tensor([[1.0, 0.0, -left], [0.0, 1.0, -top]], dtype=torch.float64)
        box_from_padded = compose_affine(box_from_reduced, reduced_from_padded.expand_as(box_from_reduced))
        warped = warp_gather(pool_images, index.to(device), box_from_padded.to(device, torch.float32),
                             (size, size), "border")
        out[start:stop] = _to_uint8(warped)
    box = content_box(box_from_image, photo_size, size)
    return Pool2D(images=out, joints=box_joints.float().to(device), skeleton=annotations.skeleton,
                  ids=annotations.ids.to(device), content_box=box.to(device))


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


def load_pool(kind: str, path: PathLike, *, size: int = 160, margin: float | None = None,
              device: torch.device | str | None = None, chunk: int = 64, antialias: bool = True,
              padding_mode: str = "reflection", selection=None, **options) -> Pool2D:
    """Load 2D annotations with :func:`load_annotations` (loader ``options``), keep the entries that
    ``selection`` (a :class:`~gpumosaic.sources.select.Selection` or selector text, by the annotations' ids)
    keeps, and crop them into a pool with :func:`build_pool` (the other arguments)."""
    annotations = load_annotations(kind, path, **options)
    if selection is not None:
        from .sources.select import parse_selection

        sel = parse_selection(selection) if isinstance(selection, str) else selection
        index = torch.nonzero(sel.mask(annotations.ids)).reshape(-1)
        if index.numel() == 0:
            raise ValueError(f"Selection {sel.text!r} keeps none of the {len(annotations)} annotations of {path}")
        annotations = annotations.subset(index)
    return build_pool(annotations, size, margin, device=device, chunk=chunk, antialias=antialias,
                      padding_mode=padding_mode)
