"""Retrieval with a pairwise image-compatibility term (beyond the paper: its stated future work; issue 13).

The paper matches every joint on its own (Eq. 4: ``m_j = argmin_q D_j(p, q)``), so neighbouring joints often
take different images and the mosaic has many seams. This option adds a Potts term on the bones of the
kinematic tree, so that neighbouring joints prefer the same source image:

    E(m) = Σ_j D_j(p, m_j) + λ · Σ_{(j, k) ∈ bones} [m_j ≠ m_k]

over the labels ``m_j ∈ {0 .. Nv − 1}`` (virtual pool entries: a mirrored entry is another label). The bones
form a tree, so ``E`` is minimised **exactly** by dynamic programming (min-sum on the tree, Viterbi): with the
subtree cost ``S_c(x) = D_c(x) + Σ_{children g of c} μ_g(x)``, the message of a child ``c`` to its parent is

    μ_c(x) = min(S_c(x), min_y S_c(y) + λ)

(the child keeps the parent's label, or pays λ for its own best), which costs O(Nv) per joint for the Potts
term instead of O(Nv²). Backtracking from the root: the root takes ``argmin S_root``; a child takes its
parent's label when ``S_c(x_parent) <= min S_c + λ`` (ties keep the parent's label: fewer seams), else
``argmin S_c`` (ties: lowest index). With λ = 0 this is the paper's per-joint argmin exactly.

Joints that are not searched (self-occluded) have no data term: they take part with ``D = 0`` (they may
relay a shared label between their neighbours) and are returned as −1, like the engine's unsearched joints.

Batched over queries and labels; the only Python loop is over the J joints in a fixed tree order.

Glossary: B queries, J joints, N labels (virtual pool entries).
"""

from __future__ import annotations

import itertools

import torch

from ._check import check_shape
from .skeleton import Skeleton

__all__ = ["tree_order", "tree_potts_matches", "tree_potts_energy"]


def tree_order(skeleton: Skeleton, root: int | None = None) -> tuple[list[int], list[int]]:
    """A breadth-first order of the skeleton's bone tree and each joint's parent.

    Args:
        skeleton: its ``bones`` must form a spanning tree of the J joints (J − 1 bones, connected).
        root: the root joint; ``None`` takes the joint with the most bones (lowest index on ties).

    Returns:
        ``(order, parent)``: ``order`` lists the J joints root first, every joint after its parent;
        ``parent[j]`` is ``j``'s parent (−1 for the root).
    """
    num_j = len(skeleton)
    bones = [tuple(b) for b in skeleton.bones]
    if len(bones) != num_j - 1:
        raise ValueError(f"Expected the bones of {skeleton.name} to form a tree ({num_j - 1} bones), got {len(bones)}")
    adjacent: list[list[int]] = [[] for _ in range(num_j)]
    for a, b in bones:
        adjacent[a].append(b)
        adjacent[b].append(a)
    if root is None:
        root = max(range(num_j), key=lambda j: (len(adjacent[j]), -j))
    parent = [-2] * num_j
    parent[root] = -1
    order, frontier = [root], [root]
    while frontier:
        nxt = []
        for j in frontier:
            for k in sorted(adjacent[j]):
                if parent[k] == -2:
                    parent[k] = j
                    order.append(k)
                    nxt.append(k)
        frontier = nxt
    if len(order) != num_j:
        raise ValueError(f"Expected the bones of {skeleton.name} to connect all {num_j} joints")
    return order, parent


def tree_potts_matches(unary: torch.Tensor, skeleton: Skeleton, weight: float,
                       searched: torch.Tensor | None = None) -> torch.Tensor:
    """Exact minimiser of ``Σ_j unary[b, j, m_j] + weight · Σ_bones [m_j ≠ m_k]`` for every query.

    Args:
        unary: float (B, J, N) data costs, e.g. ``RetrievalIndex.distances`` (Eq. 3 for every entry); finite
            where searched.
        skeleton: the joint layout (its bones form the tree of the Potts term).
        weight: λ >= 0, the cost of a bone whose two joints take different labels (in the units of ``unary``,
            px for Eq. 3). λ = 0 gives the per-joint argmin (Eq. 4).
        searched: bool (B, J) joints with a data term (others: zero cost, returned as −1); ``None``: all.
            A row with no searched joint is treated as fully searched.

    Returns:
        int64 (B, J) labels in ``[0, N)``, −1 where not searched.
    """
    dims = check_shape(unary, ["B", "J", "N"], name="unary")
    if dims["J"] != len(skeleton):
        raise ValueError(f"Expected unary with J={len(skeleton)} joints of {skeleton.name}, got {tuple(unary.shape)}")
    if not unary.is_floating_point():
        raise TypeError(f"Expected a float unary, got {unary.dtype}")
    if not (weight >= 0 and weight < float("inf")):
        raise ValueError(f"Expected a finite weight >= 0, got {weight}")
    bsz, num_j, n = unary.shape
    if searched is None:
        searched = torch.ones(bsz, num_j, dtype=torch.bool, device=unary.device)
    else:
        check_shape(searched, ["B", "J"], name="searched", dims=dims)
        if searched.dtype != torch.bool:
            raise TypeError(f"Expected searched as a bool tensor, got {searched.dtype}")
    searched = searched | ~searched.any(dim=1, keepdim=True)
    order, parent = tree_order(skeleton)
    cost = torch.where(searched[..., None], unary, torch.zeros((), dtype=unary.dtype, device=unary.device))
    subtree = cost.clone()  # S_j(x), (B, J, N)
    best_val = torch.empty(bsz, num_j, dtype=unary.dtype, device=unary.device)
    best_arg = torch.empty(bsz, num_j, dtype=torch.long, device=unary.device)
    for j in reversed(order):  # leaves first: children are complete before their parent
        best_val[:, j], best_arg[:, j] = subtree[:, j].min(dim=-1)  # first minimum: lowest index on ties
        if parent[j] >= 0:
            message = torch.minimum(subtree[:, j], best_val[:, j, None] + weight)
            subtree[:, parent[j]] += message
    labels = torch.empty(bsz, num_j, dtype=torch.long, device=unary.device)
    for j in order:  # root first
        if parent[j] < 0:
            labels[:, j] = best_arg[:, j]
            continue
        up = labels[:, parent[j]]
        keep = subtree[:, j].gather(1, up[:, None])[:, 0] <= best_val[:, j] + weight
        labels[:, j] = torch.where(keep, up, best_arg[:, j])
    return labels.masked_fill(~searched, -1)


def tree_potts_energy(unary: torch.Tensor, skeleton: Skeleton, weight: float, labels: torch.Tensor,
                      searched: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the objective of :func:`tree_potts_matches` for given labels (B, J); unsearched joints (−1) carry
    no data term and, as free relays, are given the label that is cheapest for their bones (exactly: the
    energy is minimised over them by brute force, so keep their number small)."""
    bsz, num_j, n = unary.shape
    searched = torch.ones(bsz, num_j, dtype=torch.bool) if searched is None else searched.cpu()
    searched = searched | ~searched.any(dim=1, keepdim=True)
    out = torch.empty(bsz, dtype=torch.float64)
    for b in range(bsz):
        free = [j for j in range(num_j) if not searched[b, j]]
        best = float("inf")
        for fill in itertools.product(range(n), repeat=len(free)):
            lab = labels[b].tolist()
            for j, x in zip(free, fill):
                lab[j] = x
            e = sum(float(unary[b, j, lab[j]]) for j in range(num_j) if searched[b, j])
            e += weight * sum(lab[a] != lab[c] for a, c in skeleton.bones)
            best = min(best, e)
        out[b] = best
    return out


def tree_potts_brute_force(unary: torch.Tensor, skeleton: Skeleton, weight: float,
                           searched: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Enumeration of all N^J labellings (tests only, tiny N and J): ``(labels (B, J), energy (B,))``, the
    first minimiser in lexicographic order; unsearched joints returned as −1. Every labelling's energy is
    summed directly (no dynamic programming), one query at a time."""
    bsz, num_j, n = unary.shape
    searched = torch.ones(bsz, num_j, dtype=torch.bool) if searched is None else searched.cpu()
    searched = searched | ~searched.any(dim=1, keepdim=True)
    every = torch.cartesian_prod(*[torch.arange(n)] * num_j).reshape(-1, num_j)  # (N^J, J), lexicographic
    bones = torch.tensor(skeleton.bones)
    cut = (every[:, bones[:, 0]] != every[:, bones[:, 1]]).sum(1).double()  # (N^J,) bones with two labels
    labels = torch.empty(bsz, num_j, dtype=torch.long)
    energy = torch.empty(bsz, dtype=torch.float64)
    for b in range(bsz):
        data = unary[b].double().cpu() * searched[b, :, None]  # (J, N)
        e = data.gather(1, every.T).sum(0) + weight * cut  # (N^J,)
        k = int(torch.argmin(e))  # first minimum
        labels[b], energy[b] = every[k], e[k]
    return labels.masked_fill(~searched, -1), energy
