"""Affine warps of pool images into the query frame (DESIGN.md step 5, Eq. 2 of Rogez & Schmid 2018).

The synthesis engine resamples pool image ``m_j`` into the S×S query frame with the composition of its
``fit_to_box`` map and the rigid alignment ``T`` of Eq. 2. This module does that resampling, batched, in
one bilinear pass from the stored image, and applies the same affine maps to keypoints.

Convention:
    - coordinates are pixels ``(x, y)``: ``x`` to the right (column ``u``), ``y`` down (row ``v``);
      pixel (row ``v``, column ``u``) has its centre at ``(x, y) = (u, v)``, origin at the centre of the
      top-left pixel.
    - an affine map ``b_from_a`` is a ``(..., 2, 3)`` tensor ``[A | t]`` sending a point ``p`` of frame
      ``a`` to ``A @ p + t`` in frame ``b`` (the same matrix ``cv2.warpAffine`` takes as ``M``).
    - ``dst_from_src`` maps source pixel coordinates to destination pixel coordinates; the output pixel
      ``(v, u)`` takes the bilinear sample of the source at ``src_from_dst @ (u, v, 1)``.

Glossary: B batch, N pool images, C channels, Hs×Ws source size, H×W destination size, P points.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from gpumosaic._check import ShapeError, check_finite, check_shape, checks_enabled
from gpumosaic.geometry import apply_affine, compose_affine, invert_affine

__all__ = [
    "warp_images",
    "warp_gather",
    "warp_points",
    "source_inside",
    "compose_affine",
    "invert_affine",
]

_PADDING_MODES = ("border", "zeros", "reflection")


# ---------------------------------------------------------------------------------------------------------
# Keypoints (the affine helpers compose_affine / invert_affine live in gpumosaic.geometry)
# ---------------------------------------------------------------------------------------------------------


def warp_points(points: torch.Tensor, dst_from_src: torch.Tensor) -> torch.Tensor:
    """Apply affine maps to keypoints: ``dst = A @ p + t`` for every point.

    Args:
        points: ``(..., P, 2)`` float points ``(x, y)`` in source pixels.
        dst_from_src: ``(..., 2, 3)`` float affine maps; leading dimensions broadcast against
            ``points``' leading dimensions (one map per set of P points).

    Returns:
        ``(..., P, 2)`` points in destination pixels (type promotion of the two inputs). Differentiable
        with respect to both inputs.

    Convention:
        pixels, ``(x, y)`` = (column, row), pixel centres at integers, the same map as
        :func:`warp_images` uses for images, so a keypoint lands where its pixel lands.
    """
    check_shape(points, ["*", "P", "2"], name="points")
    check_shape(dst_from_src, ["*", "2", "3"], name="dst_from_src")
    return apply_affine(dst_from_src, points)


def warp_points_reference(points: torch.Tensor, dst_from_src: torch.Tensor) -> torch.Tensor:
    """Plain-loop twin of :func:`warp_points` for equal leading shapes (tests only)."""
    out = torch.empty_like(points)
    flat_p = points.reshape(-1, points.shape[-2], 2)
    flat_m = dst_from_src.reshape(-1, 2, 3)
    flat_o = out.view(-1, points.shape[-2], 2)
    for b in range(flat_p.shape[0]):
        m = flat_m[b]
        for p in range(flat_p.shape[1]):
            x, y = float(flat_p[b, p, 0]), float(flat_p[b, p, 1])
            flat_o[b, p, 0] = float(m[0, 0]) * x + float(m[0, 1]) * y + float(m[0, 2])
            flat_o[b, p, 1] = float(m[1, 0]) * x + float(m[1, 1]) * y + float(m[1, 2])
    return out


def source_inside(
    dst_from_src: torch.Tensor, src_size: Sequence[int], size: Sequence[int], *, box: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Which destination pixels sample *inside* the source image (not its padding).

    Destination pixel ``(v, u)`` samples the source at ``(x, y) = src_from_dst @ (u, v, 1)``; it is inside
    when ``-0.5 <= x <= Ws - 0.5`` and ``-0.5 <= y <= Hs - 0.5``, i.e. within the area of the source's pixels
    (a bilinear sample there is made of the image's own pixels, with at most the half-pixel edge replicated).
    Outside, the value is pure padding (a replicated border streak or zeros). With ``box``, the area is
    ``x0 <= x <= x1`` and ``y0 <= y <= y1`` instead: the part of a stored crop filled from its photo
    (:attr:`gpumosaic.sources.Pool2D.content_box`).

    Args:
        dst_from_src: ``(..., 2, 3)`` float affine maps from source pixels to destination pixels.
        src_size: the source ``(Hs, Ws)``.
        size: the destination ``(H, W)``.
        box: optional ``(..., 4)`` float ``(x0, y0, x1, y1)`` per map, in source pixels.
        dtype: the dtype in which the source positions are computed.

    Returns:
        ``(..., H, W)`` bool.

    Convention:
        as :func:`warp_images`: pixels ``(x, y)`` = (column, row), centres at integers, ``dst = A @ src + t``.
    """
    check_shape(dst_from_src, ["*", "2", "3"], name="dst_from_src")
    src_h, src_w = _validate_size(src_size)
    height, width = _validate_size(size)
    lead = dst_from_src.shape[:-2]
    src_from_dst = invert_affine(dst_from_src.detach().reshape(-1, 2, 3).to(dtype))  # a bool mask: no gradient
    u = torch.arange(width, device=dst_from_src.device, dtype=dtype).view(1, 1, width)
    v = torch.arange(height, device=dst_from_src.device, dtype=dtype).view(1, height, 1)
    if box is None:
        bounds = ((-0.5, src_w - 0.5), (-0.5, src_h - 0.5))
    else:
        if tuple(box.shape) != (*lead, 4):
            raise ShapeError(f"Expected box of shape {(*lead, 4)} (one (x0, y0, x1, y1) per map), got {tuple(box.shape)}")
        flat = box.detach().reshape(-1, 4).to(dtype)[:, :, None, None]  # (n, 4, 1, 1)
        bounds = ((flat[:, 0], flat[:, 2]), (flat[:, 1], flat[:, 3]))
    inside = coord = ok = None  # (n, H, W) buffers, reused for the second axis
    for row, (low, high) in enumerate(bounds):
        a, b, c = (src_from_dst[:, row, k, None, None] for k in range(3))
        coord = torch.addcmul(torch.addcmul(c, a, u), b, v, out=coord)  # (n, H, W)
        if inside is None:
            inside = torch.ge(coord, low)
        else:
            ok = torch.ge(coord, low, out=ok)
            inside &= ok
        ok = torch.le(coord, high, out=ok)
        inside &= ok
    return inside.reshape(*lead, height, width)


def source_inside_reference(dst_from_src: torch.Tensor, src_size: Sequence[int], size: Sequence[int],
                            box: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-loop twin of :func:`source_inside` in float64 (tests only)."""
    src_h, src_w = src_size
    height, width = size
    flat = dst_from_src.reshape(-1, 2, 3).double().cpu()
    boxes = None if box is None else box.reshape(-1, 4).double().cpu().tolist()
    out = torch.zeros(flat.shape[0], height, width, dtype=torch.bool)
    for n in range(flat.shape[0]):
        x0, y0, x1, y1 = (-0.5, -0.5, src_w - 0.5, src_h - 0.5) if boxes is None else boxes[n]
        inv = torch.linalg.inv(torch.cat([flat[n], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]))
        for v in range(height):
            for u in range(width):
                x, y, _ = (inv @ torch.tensor([u, v, 1.0], dtype=torch.float64)).tolist()
                out[n, v, u] = x0 <= x <= x1 and y0 <= y <= y1
    return out.reshape(*dst_from_src.shape[:-2], height, width)


# ---------------------------------------------------------------------------------------------------------
# Image warps
# ---------------------------------------------------------------------------------------------------------


def _sampling_grid(
    dst_from_src: torch.Tensor, src_size: tuple[int, int], dst_size: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """``grid_sample`` grid ``(n, H, W, 2)``: normalised source position of every destination pixel centre.

    ``grid_sample(align_corners=False)`` puts the normalised range [-1, 1] on the outer edges of the border
    pixels, so source pixel centre ``x`` sits at ``x_n = (2x + 1) / Ws - 1`` (defined for ``Ws = 1`` too,
    unlike ``align_corners=True``'s ``2x / (Ws - 1) - 1``). That normalisation is folded into the rows of
    ``src_from_dst`` with Python scalars (no host-to-device copy), and the result is evaluated at the
    destination pixel centres ``(u, v)`` with two broadcast multiply-adds per coordinate (several times
    faster on CPU than ``F.affine_grid``, which also needs a destination normalisation round trip).
    """
    height, width = dst_size
    src_h, src_w = src_size
    src_from_dst = invert_affine(dst_from_src).to(dtype)  # (n, 2, 3)
    u = torch.arange(width, device=dst_from_src.device, dtype=dtype).view(1, 1, width)
    v = torch.arange(height, device=dst_from_src.device, dtype=dtype).view(1, height, 1)
    coords = []
    for row, extent in ((0, src_w), (1, src_h)):
        # x_n = (2 / Ws) * (a u + b v + c) + (1 / Ws - 1), per sample coefficients (n,) -> (n, 1, 1)
        a, b, c = (src_from_dst[:, row, k, None, None] * (2.0 / extent) for k in range(3))
        c = c + (1.0 / extent - 1.0)
        coords.append(torch.addcmul(torch.addcmul(c, a, u), b, v))  # (n, H, W)
    return torch.stack(coords, dim=-1)


def _validate_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"Expected size as (H, W) with two positive ints, got {size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"Expected size as (H, W) with two positive ints, got {tuple(size)}")
    return height, width


def _validate_affine(dst_from_src: torch.Tensor) -> None:
    if not dst_from_src.is_floating_point():
        raise TypeError(f"Expected dst_from_src to be a float tensor, got {dst_from_src.dtype}")
    if checks_enabled() and dst_from_src.numel() > 0:
        check_finite(dst_from_src, name="dst_from_src")
        det = dst_from_src[..., 0, 0] * dst_from_src[..., 1, 1] - dst_from_src[..., 0, 1] * dst_from_src[..., 1, 0]
        if bool((det == 0).any()):
            raise ValueError("Expected dst_from_src with invertible linear parts, got a zero determinant")


def _check_warp_args(dst_from_src: torch.Tensor, size: Sequence[int], padding_mode: str, chunk: int) -> tuple[int, int]:
    """The one validation of the warp functions' common arguments; returns ``(H, W)``."""
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"Expected padding_mode in {_PADDING_MODES}, got {padding_mode!r}")
    if chunk <= 0:
        raise ValueError(f"Expected chunk > 0, got {chunk}")
    height_width = _validate_size(size)
    _validate_affine(dst_from_src)
    return height_width


def _out_dtype(images: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if not dtype.is_floating_point:
            raise TypeError(f"Expected a floating dtype, got dtype={dtype}")
        return dtype
    return images.dtype if images.is_floating_point() else torch.float32


def _warp_gathered(
    pool_images: torch.Tensor,
    index: torch.Tensor | None,
    dst_from_src: torch.Tensor,
    size: tuple[int, int],
    padding_mode: str,
    chunk: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Core: ``out[b] = warp(pool_images[index[b]], dst_from_src[b])``, chunked over b (no validation).

    ``index=None`` means the identity (``pool_images`` is the batch itself). Integer images are converted
    to ``dtype`` and scaled by 1/255 only after gathering each chunk, so a uint8 pool is never copied to
    float as a whole.
    """
    n = dst_from_src.shape[0]
    channels, src_h, src_w = pool_images.shape[1:]
    height, width = size
    scale = None if pool_images.is_floating_point() else 1.0 / 255.0

    def warp_chunk(start: int, stop: int) -> torch.Tensor:
        src = pool_images[start:stop] if index is None else pool_images[index[start:stop]]
        src = src.to(dtype)  # integer sources become float only now, one gathered chunk at a time
        grid = _sampling_grid(dst_from_src[start:stop], (src_h, src_w), size, dtype)
        warped = F.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
        # grid_sample saves its inputs, not its output, for backward: scaling in place is autograd-safe.
        return warped if scale is None else warped.mul_(scale)  # [0, 255] -> [0, 1]

    if 0 < n <= chunk:
        return warp_chunk(0, n)  # one chunk: no copy into a preallocated output
    out = torch.empty((n, channels, height, width), dtype=dtype, device=pool_images.device)
    # Fixed-size loop over chunks: the count depends on the batch shape only, never on data.
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        out[start:stop] = warp_chunk(start, stop)
    return out


def warp_images(
    images: torch.Tensor,
    dst_from_src: torch.Tensor,
    size: Sequence[int],
    padding_mode: str = "border",
    *,
    chunk: int = 256,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Bilinearly resample each source image into an H×W destination frame.

    Equals ``cv2.warpAffine(src, M=dst_from_src[b], dsize=(W, H), flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_REPLICATE)`` for ``padding_mode="border"``, ``cv2.BORDER_CONSTANT`` with
    value 0 for ``padding_mode="zeros"`` (samples straddling the border interpolate with the zeros) and
    ``cv2.BORDER_REFLECT`` (``dcba|abcd``: mirrored about the image's edge) for ``"reflection"``.

    Args:
        images: ``(B, C, Hs, Ws)`` float images (any float dtype), or uint8 images in [0, 255].
        dst_from_src: ``(B, 2, 3)`` float affine maps from source pixels to destination pixels.
        size: destination ``(H, W)``.
        padding_mode: ``"border"`` (replicate the edge pixels), ``"zeros"`` or ``"reflection"`` (mirror the
            image about its edges: real content, no streaks).
        chunk: number of warps computed at a time (bounds the temporary sampling grid).
        dtype: output dtype; ``None`` keeps a float input's dtype and gives float32 for uint8.

    Returns:
        ``(B, C, H, W)`` warped images. uint8 input is converted to float one chunk at a time (never
        the whole batch) and scaled to [0, 1] (÷255) after sampling. Differentiable with respect to float ``images`` and ``dst_from_src``
        (bilinear: almost everywhere).

    Convention:
        pixels ``(x, y)`` = (column, row), pixel centres at integers, origin at the top-left pixel's
        centre. ``dst_from_src`` is ``[A | t]`` with ``dst = A @ src + t``; output pixel ``(v, u)``
        samples the source at ``src_from_dst @ (u, v, 1)``.
    """
    dims = check_shape(images, ["B", "C", "Hs", "Ws"], name="images")
    check_shape(dst_from_src, ["B", "2", "3"], name="dst_from_src", dims=dims)
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"Expected images as uint8 or float, got {images.dtype}")
    height_width = _check_warp_args(dst_from_src, size, padding_mode, chunk)
    return _warp_gathered(
        images, None, dst_from_src, height_width, padding_mode, chunk, _out_dtype(images, dtype)
    )


def warp_gather(
    pool_images: torch.Tensor,
    index: torch.Tensor,
    dst_from_src: torch.Tensor,
    size: Sequence[int],
    padding_mode: str = "border",
    *,
    chunk: int = 256,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Warp ``pool_images[index]`` into H×W frames: one resampling straight from the stored images.

    Args:
        pool_images: ``(N, C, Hs, Ws)`` uint8 (in [0, 255]) or float pool images.
        index: ``(...)`` int64 indices into the pool, each in ``[0, N)`` (e.g. ``(B, J)`` matches).
        dst_from_src: ``(..., 2, 3)`` float maps from pool-image pixels to destination pixels, with the
            same leading shape as ``index``.
        size: destination ``(H, W)``.
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"``, as in :func:`warp_images`.
        chunk: number of warps at a time; the flattened batch is processed in chunks of this size so that
            only ``chunk`` source images are ever gathered (and converted to float) at once.
        dtype: output dtype; ``None`` keeps a float pool's dtype and gives float32 for uint8.

    Returns:
        ``(..., C, H, W)`` warped images, [0, 1] for a uint8 pool. Differentiable with respect to a float
        ``pool_images`` and ``dst_from_src``.

    Convention:
        as :func:`warp_images`: pixels ``(x, y)`` = (column, row), centres at integers,
        ``dst = A @ src + t``.
    """
    check_shape(pool_images, ["N", "C", "Hs", "Ws"], name="pool_images")
    if pool_images.dtype != torch.uint8 and not pool_images.is_floating_point():
        raise TypeError(f"Expected pool_images as uint8 or float, got {pool_images.dtype}")
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"Expected index as an int64 tensor, got {getattr(index, 'dtype', type(index))}")
    if checks_enabled():
        check_shape(dst_from_src, ["*", "2", "3"], name="dst_from_src")
        if tuple(dst_from_src.shape[:-2]) != tuple(index.shape):
            raise ShapeError(
                f"Expected dst_from_src of shape (*index.shape, 2, 3) = {(*index.shape, 2, 3)}, "
                f"got {tuple(dst_from_src.shape)}"
            )
        if index.numel() > 0:
            if bool(((index < 0) | (index >= pool_images.shape[0])).any()):
                raise IndexError(
                    f"Expected index values in [0, {pool_images.shape[0]}), got "
                    f"min {int(index.min())}, max {int(index.max())}"
                )
    height_width = _check_warp_args(dst_from_src, size, padding_mode, chunk)
    lead = tuple(index.shape)
    flat = _warp_gathered(
        pool_images,
        index.reshape(-1).long(),
        dst_from_src.reshape(-1, 2, 3),
        height_width,
        padding_mode,
        chunk,
        _out_dtype(pool_images, dtype),
    )
    return flat.reshape(*lead, *flat.shape[1:])


def warp_images_reference(
    images: torch.Tensor,
    dst_from_src: torch.Tensor,
    size: Sequence[int],
    padding_mode: str = "border",
) -> torch.Tensor:
    """Plain-loop twin of :func:`warp_images` (float64 per-pixel bilinear; tiny sizes, tests only).

    For each output pixel ``(v, u)``: ``(x, y) = src_from_dst @ (u, v, 1)``; the four neighbours
    ``(floor(x) + {0, 1}, floor(y) + {0, 1})`` are read with clamping ("border") or as 0 outside the
    image ("zeros") and mixed with weights ``(1 - fx)(1 - fy)``, ``fx (1 - fy)``, ``(1 - fx) fy``, ``fx fy``.
    """
    import math

    height, width = _validate_size(size)
    bsz, channels, src_h, src_w = images.shape
    scale = 1.0 if images.is_floating_point() else 1.0 / 255.0
    out = torch.zeros((bsz, channels, height, width), dtype=_out_dtype(images, None))
    src_all = images.detach().cpu().double()
    for b in range(bsz):
        m = [[float(v) for v in row] for row in dst_from_src[b].detach().cpu().double()]
        det = m[0][0] * m[1][1] - m[0][1] * m[1][0]
        inv = [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]]
        tx = -(inv[0][0] * m[0][2] + inv[0][1] * m[1][2])
        ty = -(inv[1][0] * m[0][2] + inv[1][1] * m[1][2])

        def mirror(k: int, n: int) -> int:  # dcba|abcd: pixel -1 is pixel 0, pixel n is pixel n - 1
            k = k % (2 * n)
            return 2 * n - 1 - k if k >= n else k

        def read(c: int, yy: int, xx: int) -> float:
            if padding_mode == "reflection":
                yy, xx = mirror(yy, src_h), mirror(xx, src_w)
            elif padding_mode == "border":
                yy, xx = min(max(yy, 0), src_h - 1), min(max(xx, 0), src_w - 1)
            elif not (0 <= yy < src_h and 0 <= xx < src_w):
                return 0.0
            return float(src_all[b, c, yy, xx])

        for v in range(height):
            for u in range(width):
                x = inv[0][0] * u + inv[0][1] * v + tx
                y = inv[1][0] * u + inv[1][1] * v + ty
                x0, y0 = math.floor(x), math.floor(y)
                fx, fy = x - x0, y - y0
                for c in range(channels):
                    val = (
                        (1 - fx) * (1 - fy) * read(c, y0, x0)
                        + fx * (1 - fy) * read(c, y0, x0 + 1)
                        + (1 - fx) * fy * read(c, y0 + 1, x0)
                        + fx * fy * read(c, y0 + 1, x0 + 1)
                    )
                    out[b, c, v, u] = val * scale
    return out.to(images.device)


# ---------------------------------------------------------------------------------------------------------
# Sparse warp-and-blend: sample each pixel only from the images whose weight there is non-zero
# ---------------------------------------------------------------------------------------------------------


def _reflect(x: torch.Tensor, size: int) -> torch.Tensor:
    """``grid_sample``'s reflection (align_corners=False): ``x`` mirrored into ``[-0.5, size - 0.5]``."""
    y = torch.remainder((x + 0.5).abs(), 2 * size)
    return torch.where(y > size, 2 * size - y, y) - 0.5


def _bilinear_taps(
    pool_images: torch.Tensor, image: torch.Tensor, x: torch.Tensor, y: torch.Tensor, padding_mode: str
) -> torch.Tensor:
    """Bilinear samples ``(K, C)`` of ``pool_images[image[k]]`` at source pixel coords ``(x[k], y[k])``.

    The same arithmetic as ``grid_sample(align_corners=False)`` on the unnormalised coordinate: "border"
    clamps the coordinate into ``[0, size - 1]`` first; "reflection" reflects it about ``-0.5`` and
    ``size - 0.5`` (period ``2·size``) and then clamps it; "zeros" drops taps outside the image.

    With "border" or "reflection" (and sources of at least 2×2 pixels) the top-left tap is kept at most at
    ``size - 2``, so that the four taps are one base offset plus ``0, 1, Ws, Ws + 1`` with no clamp per tap:
    a coordinate on the last column (row) then has ``fx = 1`` (``fy = 1``) instead of 0, which puts the same
    weight on the same pixel and an exact zero weight on its neighbour: bit-identical samples.
    """
    _, channels, src_h, src_w = pool_images.shape
    if padding_mode == "reflection":
        x, y = _reflect(x, src_w), _reflect(y, src_h)
    if padding_mode in ("border", "reflection"):
        x = x.clamp(0, src_w - 1)
        y = y.clamp(0, src_h - 1)
    x0f, y0f = torch.floor(x), torch.floor(y)
    # Addressed through the tensor's own strides: a channels-last or otherwise strided pool is read in place
    # (``reshape(-1)`` would copy the whole pool on every call).
    s_n, s_c, s_h, s_w = pool_images.stride()
    if pool_images.is_contiguous():
        flat = pool_images.view(-1)
    else:
        span = 1 + sum((size - 1) * stride for size, stride in zip(pool_images.shape, pool_images.stride()))
        flat = pool_images.as_strided((span,), (1,), pool_images.storage_offset())
    chan = torch.arange(channels, device=x.device) * s_c
    base = image * s_n
    if padding_mode != "zeros" and src_h >= 2 and src_w >= 2:
        x0f.clamp_(max=src_w - 2)
        y0f.clamp_(max=src_h - 2)
        fx, fy = x - x0f, y - y0f
        # Top-left taps (K, C); the other three taps read the same indices from the storage shifted by a
        # constant (a free view), so no index tensor is built per tap. int32 indices where they fit (a
        # shape-only choice): half the index traffic.
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        first = (base + y0f.long() * s_h + x0f.long() * s_w)[:, None] + chan
        first = first.to(index_dtype)
        gx, gy = 1 - fx, 1 - fy
        out = None
        for offset, w in ((0, gx * gy), (s_w, fx * gy), (s_h, gx * fy), (s_h + s_w, fx * fy)):
            term = flat[offset:].index_select(0, first.view(-1)).view(first.shape)
            term = term.to(w.dtype).mul_(w[:, None])
            out = term if out is None else out.add_(term)
        return out
    fx, fy = x - x0f, y - y0f
    x0, y0 = x0f.long(), y0f.long()
    out = None
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            w = wx * wy
            if padding_mode == "zeros":
                w = w * ((xi >= 0) & (xi < src_w) & (yi >= 0) & (yi < src_h)).to(w.dtype)
            xi, yi = xi.clamp(0, src_w - 1), yi.clamp(0, src_h - 1)
            vals = flat[(base + yi * s_h + xi * s_w)[:, None] + chan].to(w.dtype)  # (K, C)
            term = vals * w[:, None]
            out = term if out is None else out + term
    return out


def warp_blend_sparse(
    pool_images: torch.Tensor,
    index: torch.Tensor,
    dst_from_src: torch.Tensor,
    weights: torch.Tensor,
    padding_mode: str = "border",
    index_map: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``Σ_j weights[b, j] · warp(pool_images[index[b, j]], dst_from_src[b, j])`` without dense warps.

    Equal to ``blend(warp_gather(pool_images, index, dst_from_src, (H, W)), weights)`` (Eq. 9) up to float
    rounding, but each pixel is sampled only from the images whose weight there is non-zero (one gather of
    their affine-mapped coordinates), instead of warping every image over the whole frame: in a mosaic most
    pixels have one or two non-zero weights out of J. The non-zero pairs are found with ``nonzero``, which
    on CUDA waits for the device (a host sync); the engine uses this path on the CPU only.

    Args:
        pool_images: ``(N, C, Hs, Ws)`` uint8 (in [0, 255]) or float pool images.
        index: ``(B, J)`` int64 pool rows, in ``[0, N)`` wherever the weight is non-zero.
        dst_from_src: ``(B, J, 2, 3)`` float maps from pool-image pixels to destination pixels.
        weights: ``(B, J, H, W)`` float weights (e.g. :func:`gpumosaic.blend.window_weights`, or a one-hot
            index map for the copy-paste mosaic).
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"``, as in :func:`warp_images`.
        index_map: optional ``(B, H, W)`` int64 index map whose pixel ``(v, u)`` has a non-zero weight for
            ``j = index_map[b, v, u]`` (true of window weights, whose window holds the pixel itself): the
            copy-paste mosaic (Eq. 6) is then returned too, from the same samples.

    Returns:
        ``(B, C, H, W)`` in ``weights``' dtype, promoted with a float pool's ([0, 1] scale for a uint8 pool);
        differentiable with respect to ``weights`` and a float ``pool_images``. With ``index_map``: the
        tuple ``(blended, copy_paste)``.

    Convention:
        as :func:`warp_images`: pixels ``(x, y)`` = (column, row), centres at integers, ``dst = A @ src + t``.
    """
    bsz, num_j, height, width = weights.shape
    hw = height * width
    if pool_images.is_floating_point():  # as dense warps + blend: the promoted dtype of images and weights
        weights = weights.to(torch.promote_types(weights.dtype, pool_images.dtype))
    src_from_dst = invert_affine(dst_from_src.to(weights.dtype)).reshape(bsz * num_j, 6)
    rows = index.reshape(-1)
    flat_w = weights.reshape(bsz, num_j, hw)

    def sample(bj: torch.Tensor, pixel_in: torch.Tensor) -> torch.Tensor:
        """(K, C) samples of match bj (row of the flattened (B * J) matches) at destination pixel pixel_in."""
        aff = src_from_dst.index_select(0, bj)
        uf = (pixel_in % width).to(weights.dtype)
        vf = torch.div(pixel_in, width, rounding_mode="floor").to(weights.dtype)
        x = aff[:, 0] * uf + aff[:, 1] * vf + aff[:, 2]
        y = aff[:, 3] * uf + aff[:, 4] * vf + aff[:, 5]
        out = _bilinear_taps(pool_images, rows.index_select(0, bj), x, y, padding_mode)
        return out if pool_images.is_floating_point() else out / 255.0

    def add_weighted(mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (B * HW, C) plus weight × sample for every (b, j, pixel) of the bool ``mask`` (B, J, ...)."""
        bj, pixel_in = mask.reshape(bsz * num_j, hw).nonzero().unbind(1)
        weight = flat_w.reshape(-1).index_select(0, bj * hw + pixel_in)
        pixel = torch.div(bj, num_j, rounding_mode="floor") * hw + pixel_in
        return out.index_add_(0, pixel, sample(bj, pixel_in) * weight[:, None])

    def as_image(t: torch.Tensor) -> torch.Tensor:
        return t.view(bsz, height, width, -1).permute(0, 3, 1, 2)

    if index_map is None:
        channels = pool_images.shape[1]
        return as_image(add_weighted(weights != 0, weights.new_zeros(bsz * hw, channels)))

    # Every pixel's own match (the index map's) has a non-zero weight: sample it at every pixel (this is
    # the copy-paste mosaic, Eq. 6, in pixel order: no search, no scatter); then add the other matches only
    # where they have a non-zero weight (pixels near a seam).
    own_j = index_map.reshape(bsz, 1, hw)
    batch = torch.arange(bsz, device=weights.device)
    own = sample((batch[:, None] * num_j + own_j[:, 0]).reshape(-1),
                 torch.arange(hw, device=weights.device).repeat(bsz))  # (B * HW, C)
    others = (weights != 0).reshape(bsz, num_j, hw).scatter_(1, own_j, False)
    blended = add_weighted(others, own * flat_w.gather(1, own_j).reshape(-1, 1))
    return as_image(blended), as_image(own)
