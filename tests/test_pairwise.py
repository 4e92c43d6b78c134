"""Tree-Potts retrieval (gpumosaic.pairwise) against brute-force enumeration on tiny cases."""

import pytest
import torch

from gpumosaic.pairwise import tree_order, tree_potts_brute_force, tree_potts_energy, tree_potts_matches
from gpumosaic.skeleton import LSP14, Skeleton

# A 5-joint tree: a chain 0-1-2 with two leaves 3, 4 on joint 1.
TOY = Skeleton(name="toy5", names=("a", "b", "c", "d", "e"), bones=((0, 1), (1, 2), (1, 3), (1, 4)),
               flip=(0, 1, 2, 4, 3), torso=(0, 1, 2, 3))


def test_tree_order_parents_come_first():
    for skel in (TOY, LSP14):
        order, parent = tree_order(skel)
        assert sorted(order) == list(range(len(skel)))
        pos = {j: i for i, j in enumerate(order)}
        assert parent[order[0]] == -1
        for j in order[1:]:
            assert pos[parent[j]] < pos[j]
            assert (parent[j], j) in skel.bones or (j, parent[j]) in skel.bones
    assert tree_order(LSP14)[0][0] == LSP14.names.index("neck")  # the joint with the most bones


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0, 5.0])
def test_matches_brute_force_toy(weight):
    g = torch.Generator().manual_seed(int(weight * 10))
    unary = torch.rand(6, 5, 3, generator=g, dtype=torch.float64) * 2
    labels = tree_potts_matches(unary, TOY, weight)
    ref_labels, ref_energy = tree_potts_brute_force(unary, TOY, weight)
    assert torch.equal(labels, ref_labels)  # continuous random costs: the minimiser is unique
    torch.testing.assert_close(tree_potts_energy(unary, TOY, weight, labels), ref_energy)


def test_matches_brute_force_lsp14_two_labels():
    g = torch.Generator().manual_seed(1)
    unary = torch.rand(3, 14, 2, generator=g, dtype=torch.float64)
    for weight in (0.05, 0.2, 0.6):
        labels = tree_potts_matches(unary, LSP14, weight)
        ref_labels, ref_energy = tree_potts_brute_force(unary, LSP14, weight)
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(tree_potts_energy(unary, LSP14, weight, labels), ref_energy)


def test_unsearched_joints_relay_and_return_minus_one():
    g = torch.Generator().manual_seed(2)
    unary = torch.rand(5, 5, 3, generator=g, dtype=torch.float64)
    searched = torch.ones(5, 5, dtype=torch.bool)
    searched[0, 1] = False  # the hub: a free relay between all the others
    searched[1, [0, 3]] = False
    searched[2] = False  # nothing searched: everything is
    for weight in (0.2, 1.0):
        labels = tree_potts_matches(unary, TOY, weight, searched)
        ref_labels, ref_energy = tree_potts_brute_force(unary, TOY, weight, searched)
        assert torch.equal(labels, ref_labels)
        assert (labels[0, 1] == -1) and (labels[1, [0, 3]] == -1).all() and (labels[2] >= 0).all()
        torch.testing.assert_close(tree_potts_energy(unary, TOY, weight, labels, searched), ref_energy)


def test_zero_weight_is_the_per_joint_argmin_and_huge_weight_one_image():
    g = torch.Generator().manual_seed(3)
    unary = torch.rand(4, 14, 50, generator=g)
    assert torch.equal(tree_potts_matches(unary, LSP14, 0.0), unary.argmin(-1))
    one = tree_potts_matches(unary, LSP14, 1e6)
    assert (one == one[:, :1]).all()  # a single image for the whole body ...
    assert torch.equal(one[:, 0], unary.sum(1).argmin(-1))  # ... the one with the lowest total cost
    # ties between labels go to the lowest index (the paper's rule) at weight 0
    flat = torch.zeros(1, 14, 4)
    assert (tree_potts_matches(flat, LSP14, 0.0) == 0).all()


def test_exceptions():
    with pytest.raises(ValueError, match="J=14"):
        tree_potts_matches(torch.rand(1, 5, 3), LSP14, 1.0)
    with pytest.raises(ValueError, match="weight"):
        tree_potts_matches(torch.rand(1, 14, 3), LSP14, -1.0)
    with pytest.raises(TypeError, match="float"):
        tree_potts_matches(torch.ones(1, 14, 3, dtype=torch.long), LSP14, 1.0)
    with pytest.raises(TypeError, match="bool"):
        tree_potts_matches(torch.rand(1, 14, 3), LSP14, 1.0, torch.ones(1, 14))


def test_engine_compat_weight_is_the_tree_potts_minimiser_of_eq3():
    """The engine's compat_weight retrieval equals tree_potts_matches of RetrievalIndex.distances (Eq. 3 for
    every entry), lowers the number of distinct sources, and is the paper's argmin at weight 0."""
    from gpumosaic import MosaicEngine
    from gpumosaic.geometry import fit_to_box
    from gpumosaic.sources.demo import load_demo_pool

    pool = load_demo_pool()
    g = torch.Generator().manual_seed(0)
    query = pool.joints[:6] + torch.randn(6, 14, 2, generator=g) * 8
    occluded = torch.rand(6, 14, generator=g) < 0.15
    paper = MosaicEngine(pool, blend=False)(query, occluded)
    zero = MosaicEngine(pool, blend=False, compat_weight=0.0)(query, occluded)
    assert torch.equal(paper.matches, zero.matches)
    engine = MosaicEngine(pool, blend=False, compat_weight=20.0)
    res = engine(query, occluded)
    p, _ = fit_to_box(query, 220, None)
    unary = engine.index.distances(p)
    assert torch.equal(res.matches, tree_potts_matches(unary, LSP14, 20.0, ~occluded))
    def distinct(m):
        return sum(len(set(row[row >= 0].tolist())) for row in m)
    assert distinct(res.matches) < distinct(paper.matches)
    with pytest.raises(ValueError, match="compat_weight"):
        MosaicEngine(pool, compat_weight=-1.0)
