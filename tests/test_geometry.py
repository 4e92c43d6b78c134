import numpy as np
import pytest
import torch

from gpumosaic.geometry import (
    align_rotation,
    apply_affine,
    canonical_frame,
    compose_affine,
    fit_to_box,
    invert_affine,
)


def test_fit_to_box_against_numpy(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 14, 2, generator=g) * torch.tensor([300.0, 90.0]) + 40).to(device)
    box, box_from_src = fit_to_box(x, size=220, margin=10)
    for b in range(6):
        pts = x[b].cpu().numpy().astype(np.float64)
        lo, hi = pts.min(0), pts.max(0)
        s = (220 - 20) / (hi - lo).max()
        expect = (pts - (lo + hi) / 2) * s + 109.5
        np.testing.assert_allclose(box[b].cpu().numpy(), expect, atol=1e-3)
        e = box[b].cpu().numpy()
        assert abs((e.max(0) - e.min(0)).max() - 200) < 1e-3
    torch.testing.assert_close(apply_affine(box_from_src, x), box)


def test_fit_to_box_degenerate_and_errors():
    box, aff = fit_to_box(torch.full((1, 3, 2), 5.0), size=20)
    assert torch.isfinite(box).all() and torch.isfinite(aff).all()
    torch.testing.assert_close(box, torch.full((1, 3, 2), 9.5))
    with pytest.raises(ValueError, match="margin"):
        fit_to_box(torch.zeros(1, 3, 2), size=20, margin=10)
    with pytest.raises(ValueError, match="shape"):
        fit_to_box(torch.zeros(3), size=20)


def test_affine_compose_invert_numpy():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 2, 3, generator=g, dtype=torch.float64) + torch.eye(2, 3, dtype=torch.float64)
    b = torch.randn(4, 2, 3, generator=g, dtype=torch.float64) + torch.eye(2, 3, dtype=torch.float64)

    def h(m):
        return np.vstack([m, [0, 0, 1]])

    for k in range(4):
        np.testing.assert_allclose(h(compose_affine(a, b)[k].numpy()), h(a[k].numpy()) @ h(b[k].numpy()), atol=1e-12)
        np.testing.assert_allclose(h(invert_affine(a)[k].numpy()), np.linalg.inv(h(a[k].numpy())), atol=1e-9)


def test_align_rotation_and_canonical():
    g = torch.Generator().manual_seed(2)
    src = torch.randn(10, 2, generator=g, dtype=torch.float64)
    dst = torch.randn(10, 2, generator=g, dtype=torch.float64)
    r = align_rotation(src, dst)
    out = (r @ src[..., None])[..., 0]
    cos = (out * dst).sum(-1) / (out.norm(dim=-1) * dst.norm(dim=-1))
    torch.testing.assert_close(cos, torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(10, dtype=torch.float64))
    pts = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    c = canonical_frame(pts, torch.tensor(1), torch.tensor(3))
    torch.testing.assert_close(c[:, 1], torch.zeros(3, 2, dtype=torch.float64))
    torch.testing.assert_close(c[:, 3, 1], torch.zeros(3, dtype=torch.float64))
    assert (c[:, 3, 0] > 0).all()
    # Distances are preserved.
    torch.testing.assert_close(torch.cdist(c, c), torch.cdist(pts, pts))


def test_rigid_alignment_reference(device, dtype, tol):
    """Eq. 2 against its atan2 loop twin: T maps q_j onto p_j and turns q_i - q_j onto p_i - p_j."""
    from gpumosaic.geometry import rigid_alignment, rigid_alignment_reference

    g = torch.Generator().manual_seed(3)
    b, j = 3, 5
    query = (torch.rand(b, j, 2, generator=g, dtype=torch.float64) * 200).to(device, dtype)
    matched = (torch.rand(b, j, j, 2, generator=g, dtype=torch.float64) * 200).to(device, dtype)
    neighbour = torch.randint(0, j, (b, j), generator=g)
    neighbour = torch.where(neighbour == torch.arange(j), (neighbour + 1) % j, neighbour).to(device)
    version = (query._version, matched._version)
    maps, aligned = rigid_alignment(query, matched, neighbour)
    assert maps.shape == (b, j, 2, 3) and aligned.shape == (b, j, j, 2)
    assert maps.dtype == dtype and aligned.device.type == device.type
    assert (query._version, matched._version) == version
    ref_maps, ref_aligned = rigid_alignment_reference(query, matched, neighbour)
    torch.testing.assert_close(maps.cpu(), ref_maps, **tol)
    torch.testing.assert_close(aligned.cpu(), ref_aligned, atol=tol["atol"] * 300, rtol=tol["rtol"])
    # T(q_j) = p_j exactly where the construction says so.
    jj = torch.arange(j)
    torch.testing.assert_close(aligned[:, jj, jj].cpu(), query.cpu(), atol=tol["atol"] * 300, rtol=tol["rtol"])
    with pytest.raises(ValueError, match="matched"):
        rigid_alignment(query, matched[:, :, :-1], neighbour)
