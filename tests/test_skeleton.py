import pytest
import torch

from gpumosaic.skeleton import H36M17, LSP14, MPII16, Skeleton, convert, get_skeleton, mapping


@pytest.mark.parametrize("skel", [LSP14, MPII16, H36M17])
def test_tree_and_flip(skel):
    j = len(skel)
    assert len(skel.bones) == j - 1
    flip = list(skel.flip)
    assert [flip[f] for f in flip] == list(range(j))  # an involution
    for k, name in enumerate(skel.names):
        other = skel.names[flip[k]]
        if name.startswith("r_"):
            assert other == "l_" + name[2:]
        elif name.startswith("l_"):
            assert other == "r_" + name[2:]
        else:
            assert other == name
    # Flip maps bones to bones.
    bones = {frozenset(b) for b in skel.bones}
    assert {frozenset((flip[a], flip[b])) for a, b in skel.bones} == bones
    for a, b in skel.bones:
        assert b in skel.neighbours[a] and a in skel.neighbours[b]


@pytest.mark.parametrize("src", [LSP14, MPII16, H36M17])
@pytest.mark.parametrize("dst", [LSP14, MPII16, H36M17])
def test_mappings_rows_sum_to_one(src, dst):
    m = mapping(src, dst)
    assert m.shape == (len(dst), len(src))
    torch.testing.assert_close(m.sum(1), torch.ones(len(dst)))


def test_mapping_semantics():
    x = torch.randn(5, len(LSP14), 3)
    mp = convert(x, LSP14, MPII16)
    torch.testing.assert_close(mp[:, MPII16.index("pelvis")], 0.5 * (x[:, 2] + x[:, 3]))
    torch.testing.assert_close(mp[:, MPII16.index("thorax")], 0.5 * (x[:, 8] + x[:, 9]))
    back = convert(mp, MPII16, LSP14)
    torch.testing.assert_close(back, x)  # LSP joints survive the round trip
    h = convert(x, LSP14, H36M17)
    torch.testing.assert_close(convert(h, H36M17, LSP14)[:, :12], x[:, :12])


def test_bad_skeletons():
    with pytest.raises(ValueError, match="permutation"):
        Skeleton("x", ("a", "b"), ((0, 1),), (0, 0), (0, 1, 0, 1))
    with pytest.raises(ValueError, match="J-1"):
        Skeleton("x", ("a", "b", "c"), ((0, 1),), (0, 1, 2), (0, 1, 0, 1))
    with pytest.raises(ValueError, match="Unknown skeleton"):
        get_skeleton("coco99")
