"""2D geometry: ``fit_to_box``, rotations aligning one direction onto another, canonical joint frames.

Convention:
    2D points are ``(x, y)`` pixels, ``x`` to the right (column), ``y`` down (row); pixel (row v, column u)
    has its centre at ``(x, y) = (u, v)``, so the centre of an S×S image is ``((S-1)/2, (S-1)/2)``.
    Affine maps are (..., 2, 3) matrices named by frame, ``dst_from_src``: ``x_dst = A[:, :2] @ x_src + A[:, 2]``.
    Angles in radians, counter-clockwise in the (x, y) axes (i.e. clockwise on screen, y being down).
"""

from __future__ import annotations

import torch

from ._check import check_shape

__all__ = [
    "fit_to_box",
    "default_margin",
    "rotation_2d",
    "angle_of",
    "align_rotation",
    "rigid_alignment",
    "unit_vector",
    "canonical_frame",
    "apply_affine",
    "compose_affine",
    "invert_affine",
    "mirror_affine",
    "rotation_x",
    "rotation_y",
    "rotation_z",
]


def default_margin(size: int) -> float:
    """The default margin of :func:`fit_to_box`: 10 % of the box side (22 px at S = 220)."""
    return 0.1 * size


def fit_to_box(
    joints: torch.Tensor, size: int = 220, margin: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise poses into the S×S box: uniform scale + translation (DESIGN.md step 2).

    The joints' bounding box is centred on the box centre ``((S-1)/2, (S-1)/2)`` and its longer side becomes
    ``S - 2·margin``. Both query poses and pool poses go through this one function.

    Args:
        joints: (..., J, 2) float, pixels of any frame.
        size: S, the side of the box in pixels.
        margin: pixels left free on each side of the longer extent; ``None`` means :func:`default_margin`.

    Returns:
        ``(box_joints (..., J, 2), box_from_src (..., 2, 3))``, same dtype/device as ``joints``.

    Degenerate input: if all joints coincide (zero extent) the scale is 1 and the point is centred.
    """
    check_shape(joints, ["*", "J", "2"], name="joints")
    margin = default_margin(size) if margin is None else float(margin)
    if not 0 <= 2 * margin < size:
        raise ValueError(f"Expected 0 <= 2*margin < size, got margin={margin}, size={size}")
    lo = joints.amin(dim=-2)
    hi = joints.amax(dim=-2)
    extent = (hi - lo).amax(dim=-1)  # (...)
    scale = torch.where(extent > 0, (size - 2 * margin) / extent.clamp_min(1e-12), torch.ones_like(extent))
    centre = 0.5 * (lo + hi)  # (..., 2)
    box_centre = (size - 1) / 2.0
    trans = box_centre - scale[..., None] * centre
    zero = torch.zeros_like(scale)
    box_from_src = torch.stack(
        [torch.stack([scale, zero, trans[..., 0]], -1), torch.stack([zero, scale, trans[..., 1]], -1)], -2
    )
    return apply_affine(box_from_src, joints), box_from_src


def rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 2, 2) for angles (...) in radians: ``[[c, -s], [s, c]]``."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def angle_of(v: torch.Tensor) -> torch.Tensor:
    """Angle (...) of vectors (..., 2); 0 for the zero vector (``atan2(0, 0) = 0``)."""
    return torch.atan2(v[..., 1], v[..., 0])


def unit_vector(v: torch.Tensor) -> torch.Tensor:
    """``v / |v|`` over the last dimension, ``(1, 0)`` for a zero vector; the square root only sees positive
    arguments, so the gradient is finite (zero) at ``v = 0`` instead of NaN."""
    n2 = (v * v).sum(-1, keepdim=True)
    ok = n2 > torch.finfo(v.dtype).tiny
    unit = v / torch.sqrt(torch.where(ok, n2, torch.ones_like(n2)))
    ex = torch.zeros_like(v)
    ex[..., 0] = 1.0
    return torch.where(ok, unit, ex)


def align_rotation(src_dir: torch.Tensor, dst_dir: torch.Tensor) -> torch.Tensor:
    """Rotation (..., 2, 2) turning direction ``src_dir`` (..., 2) onto ``dst_dir`` (..., 2).

    ``cos θ = û·v̂``, ``sin θ = û × v̂`` (no ``atan2``, whose gradient at ``(0, 0)`` is NaN). A zero vector
    has angle 0 (documented degenerate case: coincident joints give a defined rotation).
    """
    u, w = unit_vector(src_dir), unit_vector(dst_dir)
    c = (u * w).sum(-1)
    s = u[..., 0] * w[..., 1] - u[..., 1] * w[..., 0]
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def rigid_alignment(
    query: torch.Tensor, matched: torch.Tensor, neighbour: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rigid map ``T`` of Eq. 2 for each joint's match: ``q'_k = R (q_k - q_j) + p_j``.

    For joint ``j`` with reference neighbour ``i``, ``R`` turns the match's direction ``q_i - q_j`` onto the
    query's ``p_i - p_j`` (:func:`align_rotation`: no ``atan2``, so coincident joints give a finite
    gradient) and the translation puts ``q_j`` on ``p_j``; no scale.

    Args:
        query: float (B, J, 2) query joints ``p``.
        matched: float (B, J, J, 2): ``matched[b, j]`` holds the J joints ``q`` of joint ``j``'s match, in
            the query's frame before alignment.
        neighbour: int64 (B, J) reference neighbour ``i`` of each joint ``j`` (e.g.
            :func:`gpumosaic.retrieval.reference_neighbours`).

    Returns:
        ``(query_from_match (B, J, 2, 3), aligned (B, J, J, 2))``: each match's map ``T`` and its joints
        ``q' = T(q)``, in the dtype of ``query`` and ``matched``; differentiable w.r.t. both.

    Convention:
        ``(x, y)`` pixels; ``[R | t]`` sends a column point ``q`` to ``R @ q + t``.
    """
    dims = check_shape(query, ["B", "J", "2"], name="query")
    check_shape(matched, ["B", "J", "J", "2"], name="matched", dims=dims)
    check_shape(neighbour, ["B", "J"], name="neighbour", dims=dims)
    num_j = query.shape[1]
    jj = torch.arange(num_j, device=query.device)
    q_j = matched[:, jj, jj]  # (B, J, 2): joint j of j's own match
    q_i = torch.gather(matched, 2, neighbour[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    p_i = torch.gather(query, 1, neighbour[..., None].expand(-1, -1, 2))
    rot = align_rotation(q_i - q_j, p_i - query)  # (B, J, 2, 2)
    trans = query - (rot @ q_j[..., None])[..., 0]
    query_from_match = torch.cat([rot, trans[..., None]], -1)  # (B, J, 2, 3)
    return query_from_match, apply_affine(query_from_match, matched)


def rigid_alignment_reference(
    query: torch.Tensor, matched: torch.Tensor, neighbour: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-loop twin of :func:`rigid_alignment` (``atan2`` angles, float64, one (b, j) at a time; tests
    only)."""
    import math

    bsz, num_j = query.shape[:2]
    p = query.detach().cpu().double()
    q = matched.detach().cpu().double()
    maps = torch.zeros(bsz, num_j, 2, 3, dtype=torch.float64)
    aligned = torch.zeros(bsz, num_j, num_j, 2, dtype=torch.float64)
    for b in range(bsz):
        for j in range(num_j):
            i = int(neighbour[b, j])
            dq = q[b, j, i] - q[b, j, j]
            dp = p[b, i] - p[b, j]
            ang = math.atan2(float(dp[1]), float(dp[0])) - math.atan2(float(dq[1]), float(dq[0]))
            c, s = math.cos(ang), math.sin(ang)
            rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
            t = p[b, j] - rot @ q[b, j, j]
            maps[b, j, :, :2], maps[b, j, :, 2] = rot, t
            for k in range(num_j):
                aligned[b, j, k] = rot @ (q[b, j, k] - q[b, j, j]) + p[b, j]
    return maps.to(query.dtype), aligned.to(query.dtype)


def canonical_frame(points: torch.Tensor, j: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Canonical coordinates ``c^{j,i}(x)``: ``x`` translated so ``x_j = 0``, rotated so ``x_i - x_j`` is on ``+x``.

    Args:
        points: (..., J, 2).
        j, i: int64 index tensors broadcastable to ``points.shape[:-2]``.

    Returns:
        (..., J, 2). Rotation invariance of Eq. 3 (DESIGN.md step 4) gives
        ``||p_k - q'_k|| = ||c_k(p) - c_k(q)||``.
    """
    lead = torch.broadcast_shapes(points.shape[:-2], j.shape, i.shape)
    points = points.expand(*lead, *points.shape[-2:])
    j = j.expand(lead)
    i = i.expand(lead)
    pj = torch.gather(points, -2, j[..., None, None].expand(*lead, 1, 2))
    pi = torch.gather(points, -2, i[..., None, None].expand(*lead, 1, 2))
    rel = points - pj
    d = (pi - pj)[..., 0, :]
    rot = rotation_2d(-angle_of(d))  # (..., 2, 2)
    return torch.einsum("...ab,...kb->...ka", rot, rel)


def apply_affine(dst_from_src: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply affine maps (..., 2, 3) to points (..., P, 2) -> (..., P, 2)."""
    return torch.einsum("...ab,...pb->...pa", dst_from_src[..., :2], points) + dst_from_src[..., None, :, 2]


def compose_affine(a_from_b: torch.Tensor, b_from_c: torch.Tensor) -> torch.Tensor:
    """Compose two affine maps: ``a_from_c = a_from_b ∘ b_from_c``.

    Args:
        a_from_b: ``(..., 2, 3)`` float affine map from frame ``b`` to frame ``a``.
        b_from_c: ``(..., 2, 3)`` float affine map from frame ``c`` to frame ``b``; leading dimensions
            broadcast against ``a_from_b``'s.

    Returns:
        ``(..., 2, 3)`` map from ``c`` to ``a``: ``[A_ab A_bc | A_ab t_bc + t_ab]`` (the 3×3 product
        ``[a_from_b; 0 0 1] @ [b_from_c; 0 0 1]`` without its last row). Dtype follows type promotion.

    Convention:
        ``[A | t]`` sends a column point ``p`` to ``A @ p + t`` (pixels, ``(x, y)`` order).
    """
    check_shape(a_from_b, ["*", "2", "3"], name="a_from_b")
    check_shape(b_from_c, ["*", "2", "3"], name="b_from_c")
    a_ab, t_ab = a_from_b[..., :2], a_from_b[..., 2:]
    a_bc, t_bc = b_from_c[..., :2], b_from_c[..., 2:]
    return torch.cat([a_ab @ a_bc, a_ab @ t_bc + t_ab], dim=-1)


def invert_affine(b_from_a: torch.Tensor) -> torch.Tensor:
    """Invert affine maps: ``a_from_b = b_from_a⁻¹``.

    Args:
        b_from_a: ``(..., 2, 3)`` float affine maps with invertible linear part.

    Returns:
        ``(..., 2, 3)`` inverse maps ``[A⁻¹ | −A⁻¹ t]``, same dtype and device. The 2×2 inverse is the
        closed-form adjugate over the determinant (no LAPACK call, no host sync); a singular ``A`` gives
        infinite or NaN entries, which the public warp functions reject at their entry.

    Convention:
        ``[A | t]`` sends a column point ``p`` to ``A @ p + t`` (pixels, ``(x, y)`` order).
    """
    check_shape(b_from_a, ["*", "2", "3"], name="b_from_a")
    a, b, tx = b_from_a[..., 0, 0], b_from_a[..., 0, 1], b_from_a[..., 0, 2]
    c, d, ty = b_from_a[..., 1, 0], b_from_a[..., 1, 1], b_from_a[..., 1, 2]
    det = a * d - b * c
    # [[a, b], [c, d]]^-1 = [[d, -b], [-c, a]] / det ;  translation  -A^-1 t.
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    row0 = torch.stack([ia, ib, itx], dim=-1)
    row1 = torch.stack([ic, id_, ity], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def mirror_affine(width: int, like: torch.Tensor) -> torch.Tensor:
    """The horizontal flip ``x -> (W - 1) - x`` of a W-wide image as a (2, 3) affine (pixel centres)."""
    return torch.tensor([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]], dtype=like.dtype, device=like.device)


def rotation_x(angle: torch.Tensor) -> torch.Tensor:
    """3D rotations (..., 3, 3) by ``angle`` (...) radians about ``+x`` (right-handed, counter-clockwise)."""
    c, s, o, z = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([o, z, z, z, c, -s, z, s, c], -1).unflatten(-1, (3, 3))


def rotation_y(angle: torch.Tensor) -> torch.Tensor:
    """3D rotations (..., 3, 3) by ``angle`` (...) radians about ``+y`` (right-handed, counter-clockwise)."""
    c, s, o, z = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).unflatten(-1, (3, 3))


def rotation_z(angle: torch.Tensor) -> torch.Tensor:
    """3D rotations (..., 3, 3) by ``angle`` (...) radians about ``+z`` (right-handed, counter-clockwise)."""
    c, s, o, z = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).unflatten(-1, (3, 3))
