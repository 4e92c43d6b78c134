"""Index map, copy-paste mosaic and pose-aware blending (DESIGN.md steps 7–8, Eq. 5–9 of Rogez & Schmid 2018).

For a query pose with J matched and warped pool images ``I'_j`` and their probability maps ``prob_j``
(Eq. 5), the engine builds

- the index map ``index[v, u] = argmax_j prob_j[v, u]`` over the searched joints (Eq. 5–6),
- the copy-paste mosaic ``M[v, u] = I'_{index[v, u]}[v, u]`` (Eq. 6),
- the blended mosaic ``M[v, u] = Σ_j w_j[v, u] · I'_j[v, u]`` (Eq. 9), whose weight ``w_j[v, u]`` is the
  share of pixels with index ``j`` in a square window centred on ``(v, u)`` (Eq. 8), the window growing with
  the distance ``d`` from the pixel to the query skeleton: side ``R = α + β·d`` (Eq. 7).

Convention:
    image tensors are NCHW; pixel (row ``v``, column ``u``) has its centre at ``(x, y) = (u, v)``, origin
    at the top-left pixel's centre. Windows are axis-aligned squares ``[u − r, u + r] × [v − r, v + r]``
    (inclusive, in whole pixels) clipped to the image.

Glossary: B batch, J joints (one warped image per joint), C channels, H, W image size.
"""

from __future__ import annotations

import math

import torch

from gpumosaic._check import ShapeError, check_finite, check_shape, checks_enabled

__all__ = [
    "index_map",
    "mosaic_from_index",
    "window_half_width",
    "window_weights",
    "blend",
    "mask_weights",
]


# ---------------------------------------------------------------------------------------------------------
# Index map (Eq. 5-6)
# ---------------------------------------------------------------------------------------------------------


def _searched_or_all(searched: torch.Tensor) -> torch.Tensor:
    """Rows with no searched joint are treated as fully searched (every map competes)."""
    return searched | ~searched.any(dim=1, keepdim=True)


def index_map(
    prob: torch.Tensor, searched: torch.Tensor | None = None, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel argmax of the probability maps over the searched joints (Eq. 5–6).

    Args:
        prob: ``(B, J, H, W)`` float probability maps (finite), ``prob[b, j]`` for joint ``j``'s match.
        searched: ``(B, J)`` bool, ``True`` where joint ``j`` was searched (not self-occluded), or ``None``
            for all. Unsearched maps never win a pixel. A row with no searched joint at all is treated as
            fully searched (documented fallback: the mosaic then still has an image everywhere).
        valid: optional ``(B, J, H, W)`` bool, ``True`` where match ``j``'s warp samples inside its stored
            image (:func:`gpumosaic.warp.source_inside`); an option beyond the paper. At each pixel the argmax
            is then taken over the valid maps when there is one (lexicographic: validity first, then
            probability), so padding (border streaks) never wins a pixel that real content could fill.

    Returns:
        ``(B, H, W)`` int64 index in ``[0, J)``. Ties go to the lowest ``j``.

    Convention:
        ``index[b, v, u]`` is for pixel row ``v``, column ``u``.
    """
    dims = check_shape(prob, ["B", "J", "H", "W"], name="prob")
    if not prob.is_floating_point():
        raise TypeError(f"Expected prob as a float tensor, got {prob.dtype}")
    if prob.shape[1] == 0:
        raise ShapeError(f"Expected prob with at least one map (J >= 1), got {tuple(prob.shape)}")
    if searched is not None:
        check_shape(searched, ["B", "J"], name="searched", dims=dims)
        if searched.dtype != torch.bool:
            raise TypeError(f"Expected searched as a bool tensor, got {searched.dtype}")
    check_finite(prob, name="prob")
    if valid is not None:
        check_shape(valid, ["B", "J", "H", "W"], name="valid", dims=dims)
        if valid.dtype != torch.bool:
            raise TypeError(f"Expected valid as a bool tensor, got {valid.dtype}")
        # Shift invalid maps below every value at the pixel, keeping their order: an exact lexicographic key.
        prob = prob.detach()  # the index is discrete: no gradient, so the key can be built in place
        offset = prob.amax(dim=1, keepdim=True) - prob.amin(dim=1, keepdim=True) + 1
        key = prob - offset
        key = torch.where(valid, prob, key, out=key)  # in place: one (B, J, H, W) buffer for the key
    else:
        key = None
    # ``max(dim=1).indices`` is the first maximal index (ties go to the lowest j), like ``argmax``, and
    # several times faster than ``argmax`` over a non-innermost dimension on the CPU (12 vs 60 ms for
    # (8, 14, 220, 220), one thread).
    if searched is None:
        return (prob if key is None else key).max(dim=1).indices
    # Excluded maps are set to -inf so they lose against any finite value.
    keep = _searched_or_all(searched)[:, :, None, None]
    key = prob.detach().masked_fill(~keep, float("-inf")) if key is None else key.masked_fill_(~keep, float("-inf"))
    return key.max(dim=1).indices


def index_map_reference(
    prob: torch.Tensor, searched: torch.Tensor | None = None, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain-loop twin of :func:`index_map` (tests only)."""
    bsz, joints, height, width = prob.shape
    out = torch.zeros((bsz, height, width), dtype=torch.int64, device=prob.device)
    for b in range(bsz):
        allowed = list(range(joints))
        if searched is not None:
            allowed = [j for j in range(joints) if bool(searched[b, j])] or list(range(joints))
        for v in range(height):
            for u in range(width):
                here = allowed
                if valid is not None:
                    here = [j for j in allowed if bool(valid[b, j, v, u])] or allowed
                best_j, best = here[0], float(prob[b, here[0], v, u])
                for j in here[1:]:
                    value = float(prob[b, j, v, u])
                    if value > best:  # strict: ties keep the lowest j
                        best_j, best = j, value
                out[b, v, u] = best_j
    return out


def mosaic_from_index(warped: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Copy-paste mosaic: every pixel taken from the warped image its index names (Eq. 6).

    Args:
        warped: ``(B, J, C, H, W)`` float warped pool images ``I'_j``.
        index: ``(B, H, W)`` int64 in ``[0, J)``, e.g. from :func:`index_map`.

    Returns:
        ``(B, C, H, W)`` mosaic ``M[b, :, v, u] = warped[b, index[b, v, u], :, v, u]``, same dtype as
        ``warped``; a gather, differentiable with respect to ``warped``.
    """
    dims = check_shape(warped, ["B", "J", "C", "H", "W"], name="warped")
    check_shape(index, ["B", "H", "W"], name="index", dims=dims)
    _check_index(index, warped.shape[1], name="index")
    bsz, _, channels, height, width = warped.shape
    gather_index = index[:, None, None].expand(bsz, 1, channels, height, width)
    return torch.gather(warped, 1, gather_index).squeeze(1)


def mosaic_from_index_reference(warped: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Plain-loop twin of :func:`mosaic_from_index` (tests only)."""
    bsz, _, channels, height, width = warped.shape
    out = warped.new_zeros((bsz, channels, height, width))
    for b in range(bsz):
        for v in range(height):
            for u in range(width):
                out[b, :, v, u] = warped[b, int(index[b, v, u]), :, v, u]
    return out


def _check_index(index: torch.Tensor, n: int, name: str) -> None:
    if index.dtype != torch.int64:
        raise TypeError(f"Expected {name} as an int64 tensor, got {index.dtype}")
    if checks_enabled() and index.numel() > 0:
        if bool(((index < 0) | (index >= n)).any()):
            raise IndexError(
                f"Expected {name} values in [0, {n}), got min {int(index.min())}, max {int(index.max())}"
            )


# ---------------------------------------------------------------------------------------------------------
# Pose-aware windows (Eq. 7-8)
# ---------------------------------------------------------------------------------------------------------


def window_half_width(distance: torch.Tensor, alpha: float = 6.0, beta: float = 0.25) -> torch.Tensor:
    """Half-width of the blending window at every pixel (Eq. 7).

    The window's side is ``R = α + β·d`` pixels, ``d`` the distance from the pixel to the query skeleton:
    pixels on the skeleton get small windows (sharp seams between body parts), pixels far away get large
    ones (smooth background transitions). The window ``[u − r, u + r] × [v − r, v + r]`` uses the
    half-width ``r = floor(R / 2)``.

    Args:
        distance: ``(B, H, W)`` float distances in pixels (finite, normally ``>= 0``).
        alpha: ``α >= 0``, the side on the skeleton (paper: 6 px).
        beta: ``β >= 0``, the growth per pixel of distance (paper: 0.25).

    Returns:
        ``(B, H, W)`` int64 half-widths, ``>= 0`` (a negative ``R`` clamps to ``r = 0``, a 1-pixel window).
    """
    check_shape(distance, ["B", "H", "W"], name="distance")
    if not distance.is_floating_point():
        raise TypeError(f"Expected distance as a float tensor, got {distance.dtype}")
    if not (math.isfinite(alpha) and alpha >= 0 and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"Expected finite alpha >= 0 and beta >= 0, got alpha={alpha}, beta={beta}")
    check_finite(distance, name="distance")
    side = alpha + beta * distance  # Eq. 7: R = alpha + beta * d
    return torch.floor(side / 2).clamp_min(0).to(torch.int64)


def window_weights(
    index: torch.Tensor,
    n: int,
    half_width: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    chunk: int = 4,
) -> torch.Tensor:
    """Share of each index inside every pixel's window: the blending weights ``w_j`` (Eq. 8).

    ``w_j[v, u] = |{(v', u') ∈ win(v, u) : index[v', u'] = j}| / |win(v, u)|`` with
    ``win(v, u) = [u − r, u + r] × [v − r, v + r] ∩ image`` and ``r = half_width[v, u]``.

    Implementation: a summed-area table ``S`` of the one-hot index map (inclusive 2D cumulative sum,
    with a zero row and column in front so that ``S[y, x]`` counts pixels with row ``< y`` and column
    ``< x``). Every window count is then four gathers, O(1) per window whatever its size:
    ``count = S[y1 + 1, x1 + 1] − S[y0, x1 + 1] − S[y1 + 1, x0] + S[y0, x0]``. The table is int32, so
    counts are exact (a float32 table loses integers above 2^24 and its differences cancel badly).

    Args:
        index: ``(B, H, W)`` int64 index map, values in ``[0, n)``.
        n: number of indices (the J of the warped stack).
        half_width: ``(B, H, W)`` int64 ``r >= 0`` per pixel, e.g. from :func:`window_half_width`.
        valid: optional ``(B, n, H, W)`` bool: then the weights are ``mask_weights(w, valid)`` (an option
            beyond Eq. 9, :func:`mask_weights`), computed in the same pass (on the CPU only where a window
            holds several indices: a one-label window's weights are one-hot, which the mask leaves as is).
        dtype: floating dtype of the weights (float32 by default).
        chunk: batch entries per summed-area table; bounds memory to about
            ``5 · chunk · n · (H + 1) · (W + 1) · 4`` bytes besides the output.

    Returns:
        ``(B, n, H, W)`` weights in [0, 1] that sum to 1 over ``n`` at every pixel.

    Convention:
        ``index[b, v, u]`` and ``half_width[b, v, u]`` are for pixel row ``v``, column ``u``; windows are
        inclusive and clipped to the image (border pixels get smaller windows, not padding).
    """
    dims = check_shape(index, ["B", "H", "W"], name="index")
    check_shape(half_width, ["B", "H", "W"], name="half_width", dims=dims)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"Expected n as an int >= 1, got {n!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"Expected a floating dtype, got dtype={dtype}")
    if chunk <= 0:
        raise ValueError(f"Expected chunk > 0, got {chunk}")
    if half_width.dtype != torch.int64:
        raise TypeError(f"Expected half_width as an int64 tensor, got {half_width.dtype}")
    _check_index(index, n, name="index")
    if valid is not None:
        check_shape(valid, ["B", "N", "H", "W"], name="valid", dims={"B": dims["B"], "N": n, "H": dims["H"],
                                                                     "W": dims["W"]})
        if valid.dtype != torch.bool:
            raise TypeError(f"Expected valid as a bool tensor, got {valid.dtype}")
    if checks_enabled() and half_width.numel() > 0 and bool((half_width < 0).any()):
        raise ValueError(f"Expected half_width >= 0, got min {int(half_width.min())}")
    if (half_width.shape[1] + 1) * (half_width.shape[2] + 1) * n > 2**31 - 1:
        raise ValueError(f"Expected n * (H + 1) * (W + 1) < 2**31 for int32 tables, got {index.shape}, n={n}")
    return _window_weights(index, n, half_width, dtype, chunk, valid)


def _window_weights(
    index: torch.Tensor, n: int, half_width: torch.Tensor, dtype: torch.dtype, chunk: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    bsz, height, width = index.shape
    device = index.device
    out = torch.empty((bsz, n, height, width), dtype=dtype, device=device)
    if bsz == 0:
        return out
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    # One table reused for every chunk, labels innermost: a corner of every label is one contiguous row of n
    # int32, read with one ``index_select`` (several times faster than a strided gather per label). Its zero
    # row and column (index 0) are never written.
    size = (height + 1) * (width + 1)
    table = torch.zeros((min(chunk, bsz), height + 1, width + 1, n), dtype=torch.int32, device=device)
    # Fixed-size loop over batch chunks (depends on the shape only).
    for start in range(0, bsz, chunk):
        stop = min(start + chunk, bsz)
        m = stop - start
        sat = table[:m]
        inner = sat[:, 1:, 1:]
        inner.zero_().scatter_(3, index[start:stop, :, :, None], 1)  # one-hot histogram, (m, H, W, n)
        inner.cumsum_(1)  # inclusive prefix sums down the rows ...
        inner.cumsum_(2)  # ... then along the columns: a summed-area table, exact in int32

        r = half_width[start:stop]
        # Clipped inclusive window [y0, y1] x [x0, x1], in pixel indices.
        y0 = (rows - r).clamp_min(0)
        y1 = (rows + r).clamp_max(height - 1)
        x0 = (cols - r).clamp_min(0)
        x1 = (cols + r).clamp_max(width - 1)
        area = ((y1 - y0 + 1) * (x1 - x0 + 1)).to(dtype)  # |win(v, u)|, >= 1

        # Row of each window corner, for every pixel, in the flattened (m * (H + 1) * (W + 1), n) table.
        stride = width + 1
        flat = sat.view(m * size, n)
        first = (torch.arange(m, device=device) * size).view(m, 1, 1)
        corners = [(yy * stride + xx + first).reshape(-1)
                   for yy, xx in ((y1 + 1, x1 + 1), (y0, x1 + 1), (y1 + 1, x0), (y0, x0))]
        ok = None if valid is None else valid[start:stop]
        if device.type == "cpu" and not torch.compiler.is_compiling():
            _window_shares_where_mixed(out[start:stop], flat, corners, index[start:stop], area, ok)
        else:  # one graph, no host sync: every label of every window
            count = _window_sum(flat, corners)  # (m * H * W, n)
            share = count.view(m, height, width, n).to(dtype).div_(area[..., None]).permute(0, 3, 1, 2)
            out[start:stop] = share if ok is None else mask_weights(share, ok)
    return out


def _window_sum(table: torch.Tensor, corners: list[torch.Tensor]) -> torch.Tensor:
    """Inclusion-exclusion on a summed-area table: rows ``corners`` = (y1 + 1, x1 + 1), (y0, x1 + 1),
    (y1 + 1, x0), (y0, x0) of ``table`` give the count inside each window."""
    count = table.index_select(0, corners[0])
    count -= table.index_select(0, corners[1])
    count -= table.index_select(0, corners[2])
    count += table.index_select(0, corners[3])
    return count


def _window_shares_where_mixed(out, flat, corners, index, area, valid=None) -> None:
    """:func:`_window_weights`'s shares written into ``out`` (m, n, H, W), computed label by label only where
    a window holds more than one label (CPU: a data-dependent count). Elsewhere the pixel's own label fills
    its window: count = area, share exactly 1, the others exactly 0, as the dense formula gives."""
    m, n = out.shape[:2]
    hw = out.shape[2] * out.shape[3]
    own = index.reshape(-1)
    own_count = _window_sum(flat.view(-1), [c * n + own for c in corners])  # the own label's column
    area = area.reshape(-1)
    pure = own_count == area.to(own_count.dtype)
    shares = out.view(m, n, hw)
    shares.zero_().scatter_(1, own.view(m, 1, hw), pure.view(m, 1, hw).to(out.dtype))
    mixed = (~pure).nonzero()[:, 0]
    count = _window_sum(flat, [c.index_select(0, mixed) for c in corners])
    mixed_share = count.to(out.dtype).div_(area.index_select(0, mixed)[:, None])
    if valid is not None:  # mask_weights on the mixed windows (a one-label window is left one-hot by it)
        ok = valid.permute(0, 2, 3, 1).reshape(-1, n).index_select(0, mixed)
        mixed_share = _masked_shares(mixed_share, ok, dim=1)
    shares.permute(0, 2, 1).index_put_((torch.div(mixed, hw, rounding_mode="floor"), mixed % hw), mixed_share)


def window_weights_reference(
    index: torch.Tensor, n: int, half_width: torch.Tensor, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Plain-loop twin of :func:`window_weights`: count the window's pixels directly (tests only)."""
    bsz, height, width = index.shape
    out = torch.zeros((bsz, n, height, width), dtype=dtype)
    idx = index.cpu()
    for b in range(bsz):
        for v in range(height):
            for u in range(width):
                r = int(half_width[b, v, u])
                counts = [0] * n
                total = 0
                for vv in range(max(v - r, 0), min(v + r, height - 1) + 1):
                    for uu in range(max(u - r, 0), min(u + r, width - 1) + 1):
                        counts[int(idx[b, vv, uu])] += 1
                        total += 1
                for j in range(n):
                    out[b, j, v, u] = counts[j] / total
    return out.to(index.device)


# ---------------------------------------------------------------------------------------------------------
# Blending (Eq. 9)
# ---------------------------------------------------------------------------------------------------------


def blend(warped: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mosaic ``M = Σ_j w_j · I'_j`` (Eq. 9).

    Args:
        warped: ``(B, J, C, H, W)`` float warped images ``I'_j``.
        weights: ``(B, J, H, W)`` float weights ``w_j`` (from :func:`window_weights`; any weights work).

    Returns:
        ``(B, C, H, W)`` blended mosaic in the promoted dtype of the inputs. Differentiable with respect to
        both ``warped`` and ``weights``. Accumulates one joint at a time (a fixed loop over J), so no
        ``(B, J, C, H, W)`` temporary is formed.
    """
    dims = check_shape(warped, ["B", "J", "C", "H", "W"], name="warped")
    check_shape(weights, ["B", "J", "H", "W"], name="weights", dims=dims)
    if not (warped.is_floating_point() and weights.is_floating_point()):
        raise TypeError(f"Expected float warped and weights, got {warped.dtype} and {weights.dtype}")
    bsz, joints, channels, height, width = warped.shape
    dtype = torch.promote_types(warped.dtype, weights.dtype)
    out = torch.zeros((bsz, channels, height, width), dtype=dtype, device=warped.device)
    for j in range(joints):
        # Eq. 9: M[v, u] += w_j[v, u] * I'_j[v, u], the weight broadcast over channels.
        out = torch.addcmul(out, warped[:, j].to(dtype), weights[:, j, None].to(dtype))
    return out


def blend_reference(warped: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Plain-loop twin of :func:`blend` (tests only)."""
    bsz, joints, channels, height, width = warped.shape
    dtype = torch.promote_types(warped.dtype, weights.dtype)
    out = torch.zeros((bsz, channels, height, width), dtype=dtype, device=warped.device)
    for b in range(bsz):
        for c in range(channels):
            for v in range(height):
                for u in range(width):
                    total = 0.0
                    for j in range(joints):
                        total += float(weights[b, j, v, u]) * float(warped[b, j, c, v, u])
                    out[b, c, v, u] = total
    return out


def mask_weights(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Blending weights restricted to matches that sample inside their stored image (an option beyond Eq. 9).

    ``w'_j = w_j · valid_j / Σ_k w_k · valid_k`` where that sum is positive; elsewhere (no valid match in
    the window) the weights are left as they are. With the index map of :func:`index_map` given ``valid``,
    a pixel's own index is valid whenever any match is, so the sum is positive there.

    Args:
        weights: ``(B, J, H, W)`` float weights (e.g. :func:`window_weights`), summing to 1 over ``J``.
        valid: ``(B, J, H, W)`` bool (:func:`gpumosaic.warp.source_inside`).

    Returns:
        ``(B, J, H, W)`` weights, same dtype, summing to 1 over ``J``; differentiable w.r.t. ``weights``.
    """
    dims = check_shape(weights, ["B", "J", "H", "W"], name="weights")
    check_shape(valid, ["B", "J", "H", "W"], name="valid", dims=dims)
    if valid.dtype != torch.bool:
        raise TypeError(f"Expected valid as a bool tensor, got {valid.dtype}")
    return _masked_shares(weights, valid, dim=1)


def _masked_shares(weights: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`mask_weights`' formula with the labels along ``dim``."""
    kept = weights * valid.to(weights.dtype)
    total = kept.sum(dim=dim, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(weights.dtype).tiny), weights)


def mask_weights_reference(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Plain-loop twin of :func:`mask_weights` (tests only)."""
    out = weights.clone()
    bsz, joints, height, width = weights.shape
    for b in range(bsz):
        for v in range(height):
            for u in range(width):
                total = sum(float(weights[b, j, v, u]) for j in range(joints) if bool(valid[b, j, v, u]))
                if total > 0:
                    for j in range(joints):
                        out[b, j, v, u] = float(weights[b, j, v, u]) / total if bool(valid[b, j, v, u]) else 0.0
    return out
