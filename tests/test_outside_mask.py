"""The out-of-image mask (issue 13, beyond the paper): source_inside, index_map(valid=), mask_weights, and the
engine's mask_outside option, against plain loops, OpenCV and hand-made cases."""

import cv2
import numpy as np
import pytest
import torch

from gpumosaic import MosaicEngine
from gpumosaic.blend import (
    index_map,
    index_map_reference,
    mask_weights,
    mask_weights_reference,
    window_half_width,
    window_weights,
)
from gpumosaic.sources.base import Pool2D
from gpumosaic.warp import source_inside, source_inside_reference, warp_images


def _maps(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 6.28
    scale = 0.5 + torch.rand(n, generator=g) * 1.5
    c, s = torch.cos(angle) * scale, torch.sin(angle) * scale
    t = torch.rand(n, 2, generator=g) * 10 - 2
    return torch.stack([torch.stack([c, -s, t[:, 0]], -1), torch.stack([s, c, t[:, 1]], -1)], -2)


def test_source_inside_matches_plain_loop(device):
    maps = _maps(6).view(2, 3, 2, 3)
    out = source_inside(maps.to(device), (5, 7), (9, 11))
    assert out.shape == (2, 3, 9, 11) and out.dtype == torch.bool
    ref = source_inside_reference(maps.double(), (5, 7), (9, 11))
    # float32 against float64: only pixels within 1e-4 px of the boundary may differ
    assert (out.cpu() != ref).float().mean() < 0.01
    exact = source_inside(maps.double().to(device), (5, 7), (9, 11), dtype=torch.float64)
    assert torch.equal(exact.cpu(), ref)


def test_source_inside_agrees_with_opencv_zero_padding():
    """OpenCV BORDER_CONSTANT (an independent resampler) of a constant image: inside the mask the warp keeps at
    least a quarter of the constant (a corner half a pixel out at worst); a full pixel outside it, exactly 0."""
    maps = _maps(4, seed=3).double()
    src = np.ones((6, 8, 3), np.float32)
    inside = source_inside(maps, (6, 8), (12, 12), dtype=torch.float64)
    # the image grown by one pixel on every side: grown pixel (x + 1, y + 1) is pixel (x, y)
    grown_maps = maps.clone()
    grown_maps[:, :, 2] -= grown_maps[:, :, :2].sum(-1)
    far = ~source_inside(grown_maps, (8, 10), (12, 12), dtype=torch.float64)
    assert inside.any() and far.any()
    for k in range(4):
        warped = cv2.warpAffine(src, maps[k].numpy(), (12, 12), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., 0]
        assert (warped[inside[k].numpy()] >= 0.25 - 1e-3).all()
        assert (warped[far[k].numpy()] == 0).all()
    # warp_images with zero padding agrees on both regions too
    ours = warp_images(torch.ones(4, 3, 6, 8), maps.float(), (12, 12), "zeros")[:, 0]
    assert (ours[inside] >= 0.25 - 1e-4).all() and (ours[far] == 0).all()


def test_index_map_valid_is_lexicographic(device):
    g = torch.Generator().manual_seed(2)
    bsz, joints, h, w = 3, 5, 6, 7
    prob = (torch.randint(0, 4, (bsz, joints, h, w), generator=g) / 3.0)
    valid = torch.rand(bsz, joints, h, w, generator=g) < 0.5
    valid[0, :, 0, 0] = False  # no valid map at a pixel: plain argmax there
    searched = torch.rand(bsz, joints, generator=g) < 0.7
    out = index_map(prob.to(device), searched.to(device), valid.to(device))
    ref = index_map_reference(prob, searched, valid)
    assert torch.equal(out.cpu(), ref)
    assert torch.equal(index_map(prob, None, torch.ones_like(valid)), index_map(prob))
    # a huge but invalid probability never beats a small valid one
    p2 = torch.zeros(1, 2, 1, 1)
    p2[0, 0] = 5.0
    p2[0, 1] = -3.0
    v2 = torch.tensor([False, True]).view(1, 2, 1, 1)
    assert int(index_map(p2, None, v2)) == 1


def test_mask_weights_matches_plain_loop(device):
    g = torch.Generator().manual_seed(4)
    index = torch.randint(0, 4, (2, 9, 8), generator=g)
    half = window_half_width(torch.rand(2, 9, 8, generator=g) * 20, 2.0, 0.5)
    w = window_weights(index, 4, half)
    valid = torch.rand(2, 4, 9, 8, generator=g) < 0.6
    valid[0, :, 0, 0] = False
    out = mask_weights(w.to(device), valid.to(device))
    ref = mask_weights_reference(w, valid)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 9, 8, device=out.device))
    assert torch.equal(out[0, :, 0, 0].cpu(), w[0, :, 0, 0])  # nothing valid: unchanged
    some = ((w * valid).sum(1, keepdim=True) > 0).expand_as(valid)
    assert some.any() and (out.cpu()[~valid & some] == 0).all()  # invalid matches drop out where any is valid


def test_engine_mask_outside_streaks_never_win():
    """Two pool images: a small one whose warps leave it (padding) and a large one covering the frame. With the
    mask, no pixel where the large image has content is filled with the small one's padding."""
    g = torch.Generator().manual_seed(0)
    joints = torch.tensor([[30.0, 60.0], [30.0, 45.0], [30.0, 30.0], [40.0, 30.0], [40.0, 45.0], [40.0, 60.0],
                           [20.0, 35.0], [25.0, 25.0], [30.0, 15.0], [40.0, 15.0], [45.0, 25.0], [50.0, 35.0],
                           [35.0, 12.0], [35.0, 2.0]])
    images = torch.randint(0, 256, (3, 3, 64, 64), generator=g, dtype=torch.uint8)
    pool = Pool2D(images=images, joints=torch.stack([joints, joints + 1.0, joints - 1.0]))
    query = joints[None] + torch.randn(2, 14, 2, generator=g) * 6
    plain = MosaicEngine(pool, size=48, mirror=False, mask_outside=False)(query)
    masked = MosaicEngine(pool, size=48, mirror=False, mask_outside=True)(query)
    valid = source_inside(masked.query_from_stored, (64, 64), (48, 48))
    chosen = torch.gather(valid, 1, masked.index_map[:, None])[:, 0]
    any_valid = valid.any(1)
    assert bool((chosen | ~any_valid).all())
    # the option changes only pixels whose plain winner sampled padding while another match had content
    plain_chosen = torch.gather(valid, 1, plain.index_map[:, None])[:, 0]
    changed = masked.index_map != plain.index_map
    assert bool((~changed | (~plain_chosen & any_valid)).all())


def _boxes(n, size, seed):
    """Random content boxes on half-pixel edges inside a (size[0], size[1]) image."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    x = torch.sort(torch.randint(0, w, (n, 2), generator=g), -1).values.float()
    y = torch.sort(torch.randint(0, h, (n, 2), generator=g), -1).values.float()
    return torch.stack([x[:, 0] - 0.5, y[:, 0] - 0.5, x[:, 1] + 0.5, y[:, 1] + 0.5], -1)


def test_source_inside_box_matches_plain_loop(device):
    """With a content box per map, inside means within the box (plain loop in float64), and the whole-image box
    gives the plain image test."""
    maps = _maps(6, seed=5).view(2, 3, 2, 3)
    box = _boxes(6, (5, 7), seed=1).view(2, 3, 4)
    out = source_inside(maps.double().to(device), (5, 7), (9, 11), box=box.to(device), dtype=torch.float64)
    ref = source_inside_reference(maps.double(), (5, 7), (9, 11), box=box)
    assert torch.equal(out.cpu(), ref)
    assert ref.any() and (~ref).any()
    whole = torch.tensor([-0.5, -0.5, 6.5, 4.5]).expand(2, 3, 4)
    assert torch.equal(source_inside(maps, (5, 7), (9, 11), box=whole), source_inside(maps, (5, 7), (9, 11)))
    with pytest.raises(ValueError, match="box of shape"):
        source_inside(maps, (5, 7), (9, 11), box=box.view(6, 4))


@pytest.mark.parametrize("mirror", [False, True])
def test_engine_content_box_padding_never_wins(mirror):
    """Pool crops whose content covers only part of the stored image (Pool2D.content_box): with the mask, no
    pixel where some match has content is filled from another match's padding, and the masked pixels are
    exactly those of source_inside with the matches' boxes."""
    g = torch.Generator().manual_seed(1)
    joints = torch.tensor([[30.0, 60.0], [30.0, 45.0], [30.0, 30.0], [40.0, 30.0], [40.0, 45.0], [40.0, 60.0],
                           [20.0, 35.0], [25.0, 25.0], [30.0, 15.0], [40.0, 15.0], [45.0, 25.0], [50.0, 35.0],
                           [35.0, 12.0], [35.0, 2.0]])
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    box = torch.tensor([[-0.5, -0.5, 63.5, 63.5], [9.5, -0.5, 53.5, 63.5], [-0.5, 5.5, 63.5, 50.5],
                        [14.5, 0.5, 47.5, 62.5]])
    pool = Pool2D(images=images, joints=torch.stack([joints, joints + 1.0, joints - 1.0, joints + 0.5]),
                  content_box=box)
    query = joints[None] + torch.randn(3, 14, 2, generator=g) * 6
    masked = MosaicEngine(pool, size=48, mirror=mirror)(query)
    plain = MosaicEngine(pool, size=48, mirror=mirror, mask_outside=False)(query)
    assert not mirror or bool(masked.mirrored.any())  # some matches are mirrored copies (flip in the affine)
    valid = source_inside(masked.query_from_stored, (64, 64), (48, 48), box=box[masked.source])
    chosen = torch.gather(valid, 1, masked.index_map[:, None])[:, 0]
    any_valid = valid.any(1)
    assert bool((chosen | ~any_valid).all())
    assert bool((masked.index_map != plain.index_map).any())  # the boxes mattered for these queries
    # without the boxes the same pool gives the whole-image mask: some pixels then differ
    no_box = MosaicEngine(Pool2D(images=images, joints=pool.joints), size=48, mirror=mirror)(query)
    assert bool((no_box.index_map != masked.index_map).any())
