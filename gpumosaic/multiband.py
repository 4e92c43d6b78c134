"""Multi-band blending over the index map (beyond the paper; ``MosaicSettings(multiband_levels=n)``, default off).

The paper blends with windows whose side grows with the distance to the skeleton (Eq. 7–9,
:mod:`gpumosaic.blend`). The fidelity benchmark found that those cross-fades of misaligned sources leave blended
mosaics detected less often by an independent detector than copy-paste ones, whatever α, β or σ
(docs/fidelity.md, "Session 5"). This module offers the classic alternative (Burt & Adelson, 1983): each
match's warp is split into a Laplacian pyramid, each band is blended with the Gaussian pyramid of that match's
one-hot index-map mask, and the bands are summed back. Fine detail (edges, texture) switches sources within a
pixel or two, coarse colour blends over a wide area, so seams disappear without ghosted limbs.

Pyramid operations (``cv2.pyrDown`` / ``cv2.pyrUp`` conventions): the 5-tap binomial kernel
``[1, 4, 6, 4, 1] / 16`` applied separably with reflect-101 borders; down = blur then keep every second
pixel (side ``ceil(n / 2)``); up = insert zeros to twice the side, blur with 4× the kernel, crop to the finer
level's side. One pyramid of ``levels`` bands needs the coarsest side ``ceil(S / 2^levels) >= 3``.

Exact by construction: with one source everywhere the result is that source (the pyramid collapses back to
its image), and since the masks of all matches sum to 1 at every level, a constant colour stays constant.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gpumosaic._check import check_shape

__all__ = ["multiband_blend", "multiband_blend_reference", "max_levels"]

_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def max_levels(size: int) -> int:
    """The most bands a pyramid of an S-pixel side allows (coarsest side ``ceil(S / 2^levels) >= 3``)."""
    levels = 0
    while math.ceil(size / 2 ** (levels + 1)) >= 3:
        levels += 1
    return levels


def _down_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Blur with [1, 4, 6, 4, 1] / 16 along ``dim`` (reflect-101) and keep every second sample, evaluated only
    there: five strided slices of the padded signal (side ``ceil(n / 2)``)."""
    n = x.shape[dim]
    xp = F.pad(x, (2, 2, 0, 0) if dim == -1 else (0, 0, 2, 2), mode="reflect")
    m = (n + 1) // 2
    take = lambda start: xp.narrow(dim, start, 2 * m - 1).unfold(dim, 1, 2).squeeze(-1)  # samples start, start+2, ...
    return (take(0) + take(4) + 4.0 * (take(1) + take(3)) + 6.0 * take(2)) * (1.0 / 16.0)


def _up_axis(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``cv2.pyrUp`` along ``dim`` without the zeros: even outputs ``(x[i-1] + 6 x[i] + x[i+1]) / 8``, odd outputs
    ``(x[i] + x[i+1]) / 2`` (the zero-inserted signal's reflect-101 border gives ``x[-1] = x[1]`` and
    ``x[n] = x[n-1]``), interleaved and cropped to ``size``."""
    n = x.shape[dim]
    left = x.narrow(dim, 1 if n > 1 else 0, 1)
    right = x.narrow(dim, n - 1, 1)
    xp = torch.cat([left, x, right], dim)  # index i + 1 holds x[i]
    even = (xp.narrow(dim, 0, n) + xp.narrow(dim, 2, n) + 6.0 * xp.narrow(dim, 1, n)) * (1.0 / 8.0)
    odd = (xp.narrow(dim, 1, n) + xp.narrow(dim, 2, n)) * 0.5
    both = torch.stack([even, odd], dim)  # (..., n, 2) along W, or (..., n, 2, W) along H
    shape = list(x.shape)
    shape[dim] = 2 * n
    return both.reshape(shape).narrow(dim, 0, size)


def _down(x: torch.Tensor) -> torch.Tensor:
    """``cv2.pyrDown`` of (N, C, H, W): side ``ceil(n / 2)``."""
    return _down_axis(_down_axis(x, -1), -2)


def _up(x: torch.Tensor, size) -> torch.Tensor:
    """``cv2.pyrUp`` of (N, C, h, w) to ``size = (H, W)`` (H ≤ 2h, W ≤ 2w)."""
    return _up_axis(_up_axis(x, -1, int(size[1])), -2, int(size[0]))


def multiband_blend(warped: torch.Tensor, index: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Blend the warped matches band by band with the Gaussian pyramids of their index-map masks.

    Args:
        warped: float (B, J, C, H, W) every match warped into the query frame (zeros where not searched).
        index: long (B, H, W) the index map (Eq. 6): which match fills each pixel of the copy-paste mosaic.
        levels: Laplacian bands, 1 ≤ levels ≤ :func:`max_levels` of min(H, W).

    Returns:
        float (B, C, H, W); ``levels`` bands of detail plus the coarsest Gaussian level.
    """
    dims = check_shape(warped, ["B", "J", "C", "H", "W"], name="warped")
    check_shape(index, ["B", "H", "W"], name="index", dims=dims)
    b, j, c, h, w = warped.shape
    if not 1 <= levels <= max_levels(min(h, w)):
        raise ValueError(f"Expected 1 <= levels <= {max_levels(min(h, w))} for {h}x{w} images, got {levels}")
    masks = F.one_hot(index, j).permute(0, 3, 1, 2).to(warped.dtype).reshape(b * j, 1, h, w)
    image = warped.reshape(b * j, c, h, w)
    bands = []
    for _ in range(levels):
        coarse = _down(image)
        bands.append((image - _up(coarse, image.shape[-2:]), masks))
        image, masks = coarse, _down(masks)
    out = (image * masks).view(b, j, c, *image.shape[-2:]).sum(1)  # the coarsest Gaussian level
    for band, mask in reversed(bands):
        out = _up(out, band.shape[-2:]) + (band * mask).view(b, j, c, *band.shape[-2:]).sum(1)
    return out


# ---------------------------------------------------------------------------------------------------------
# Plain-loop twin (tests only): NumPy, one image and one row at a time
# ---------------------------------------------------------------------------------------------------------


def _blur_np(img: np.ndarray, gain: float = 1.0) -> np.ndarray:
    taps = np.array(_TAPS) / 16.0 * np.sqrt(gain)
    h, w = img.shape
    rows = np.pad(img, ((0, 0), (2, 2)), mode="reflect")
    tmp = np.zeros((h, w))
    for v in range(h):
        for u in range(w):
            tmp[v, u] = sum(taps[t] * rows[v, u + t] for t in range(5))
    cols = np.pad(tmp, ((2, 2), (0, 0)), mode="reflect")
    out = np.zeros((h, w))
    for v in range(h):
        for u in range(w):
            out[v, u] = sum(taps[t] * cols[v + t, u] for t in range(5))
    return out


def _down_np(img: np.ndarray) -> np.ndarray:
    return _blur_np(img)[::2, ::2]


def _up_np(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    big = np.zeros((2 * img.shape[0], 2 * img.shape[1]))
    big[::2, ::2] = img
    return _blur_np(big, 4.0)[: shape[0], : shape[1]]


def multiband_blend_reference(warped: torch.Tensor, index: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Plain-loop twin of :func:`multiband_blend` in float64 (tests only)."""
    b, j, c, h, w = warped.shape
    out = np.zeros((b, c, h, w))
    for n in range(b):
        idx = index[n].cpu().numpy()
        for ch in range(c):
            pyramids = []
            for k in range(j):
                image, mask = warped[n, k, ch].double().cpu().numpy(), (idx == k).astype(np.float64)
                bands = []
                for _ in range(levels):
                    coarse = _down_np(image)
                    bands.append((image - _up_np(coarse, image.shape), mask))
                    image, mask = coarse, _down_np(mask)
                pyramids.append((bands, image, mask))
            acc = sum(img * m for _, img, m in pyramids)
            for lev in reversed(range(levels)):
                acc = _up_np(acc, pyramids[0][0][lev][0].shape) + sum(p[0][lev][0] * p[0][lev][1] for p in pyramids)
            out[n, ch] = acc
    return torch.from_numpy(out)
