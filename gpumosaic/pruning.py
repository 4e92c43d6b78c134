"""Exact retrieval with a lower bound that skips pool rows (Eq. 4, the same matches as the full scan).

Bound. For query ``p``, pool pose ``q`` and joint ``j``, with canonical coordinates ``c_k`` (``x_k - x_j``
rotated, :mod:`gpumosaic.retrieval`), the triangle inequality gives ``||c_k(p) - c_k(q)|| >= | |c_k(p)| -
|c_k(q)| | = |r_k(p) - r_k(q)|`` with ``r_k(x) = ||x_k - x_j||``, which no rotation changes. Hence

    ``L_j(p, q) = Σ_k (w_k^j(q) + w_k^j(p)) · |r_k^j(p) - r_k^j(q)|  <=  D_j(p, q)``   (Eq. 3),

with no angle and no choice of neighbour ``i``: a table of the pool's radial distances and weights, pool rows
innermost, built once (:func:`radial_table`, ``8·Nv·J²`` bytes: 250 MB for N = 80,000 mirrored).

Search (:class:`PrunedSearch`). The pool is scanned in the chunks of the full scan. In each chunk the bound is
computed for every (query, joint) row and pool row; only the pairs whose bound does not exceed the best ``D``
found so far (plus a rounding margin) get the exact ``D`` of Eq. 3, gathered from the same tables and computed
with the same operations in the same order as :class:`~gpumosaic.retrieval.ExactSearch`. A skipped pool row has
``D >= L > best``, so it can neither be the minimum nor tie with it: the result is the full scan's (smallest
``D``, ties to the lowest index; tests compare with the brute-force definition, ties included).

Rounding. ``L`` and ``D`` are computed in float; a row is skipped only when ``L > best · (1 + 1e-4) + 1e-5 ·
M`` (``M`` the largest coordinate magnitude of the index and the queries), far above the few ulps by which the
computed ``L`` may exceed the computed ``D`` of the same row.

Cost. The bound costs about half of the exact ``D`` per row (no gather, no ``hypot``); the exact ``D`` runs
only on the survivors, a few per cent of the rows (docs/performance.md). The survivors are found with
``nonzero`` (a data-dependent size, a host sync on CUDA): the engine uses this search on the CPU and the full
scan on CUDA and inside compiled graphs.
"""

from __future__ import annotations

import torch

__all__ = ["radial_table", "PrunedSearch", "REL_MARGIN", "ABS_MARGIN"]

REL_MARGIN = 1e-4
"""Relative slack of the skip test (the bound must exceed the best D by more than this fraction)."""
ABS_MARGIN = 1e-5
"""Absolute slack of the skip test, in units of the largest coordinate magnitude."""
SAMPLE = 2048
"""Pool rows (evenly spaced) whose exact D gives the first upper bound of the skip test."""
GROUP = 8
"""Chunks whose survivors get their exact D together (fewer, larger gathers; the skip test of a chunk uses the
best D of the earlier groups)."""


def radial_table(joints: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The bound's pool side, pool rows innermost: (2, J, J, Nv) with ``[0, j, k, n] = ||q_k - q_j||`` of pool
    pose ``n`` and ``[1, j, k, n] = w_k^j(q)`` (the index's weights, (J, Nv, J), transposed).

    Pool rows innermost make every operation of the bound a long contiguous loop (with the joint ``k``
    innermost, as in the exact scan, the broadcasts over 14 values cost several times more)."""
    out = torch.empty((2, *weights.shape[::2], weights.shape[1]), dtype=weights.dtype, device=weights.device)
    out[0] = torch.cdist(joints, joints).permute(1, 2, 0)
    out[1] = weights.transpose(1, 2)
    return out


class PrunedSearch:
    """Eq. 4 over an index, skipping pool rows whose lower bound exceeds the best D so far (module docstring).

    Args:
        index: the :class:`~gpumosaic.retrieval.RetrievalIndex`.
        radial: its (2, J, J, Nv) bound table (:func:`radial_table`).
        pair: int64 (B, J) the ordered bone pair of each query joint; cp (B, J, J, 2) the query's canonical
            coordinates; wp (B, J, J) its weights (``RetrievalIndex._query_side``).
        rp: (B, J, J) the query's radial distances ``||p_k - p_j||``.
        scale: 0-dim tensor, the largest coordinate magnitude of the index and the queries.
        step: pool rows per chunk.

    Work buffers: two ``(B, J, J, n)`` blocks and the ``(B, J, n)`` bound, allocated once per search, plus the
    survivors' gathers, whose size depends on the data.
    """

    def __init__(self, index, radial, pair, cp, wp, rp, scale, step: int) -> None:
        b, num_j = pair.shape
        rows = b * num_j
        dev, dt = cp.device, cp.dtype
        self.index, self.radial, self.step, self.shape = index, radial, step, (b, num_j)
        num_v = len(index)
        # Per row: where its pair's plane rows and its joint's weight rows start in the flattened tables.
        joint = torch.arange(num_j, device=dev).repeat(b)
        self.offsets = torch.stack((pair.reshape(rows) * num_v, joint * num_v), 1)  # (B·J, 2)
        # Per row: c(p) x, c(p) y and w(p), side by side (one gather per survivor).
        self.query_rows = torch.cat((cp[..., 0].reshape(rows, num_j), cp[..., 1].reshape(rows, num_j),
                                     wp.reshape(rows, num_j)), 1)  # (B·J, 3J)
        self.wp_mat = wp.reshape(rows, 1, num_j)  # for the bound's Σ_k w_k(p)·gap_k as a batched product
        self.rp = rp[..., None]  # (B, J, J, 1)
        self.margin = ABS_MARGIN * scale
        self.gap = torch.empty((b, num_j, num_j, step), dtype=dt, device=dev)
        self.tmp = torch.empty((b, num_j, num_j, step), dtype=dt, device=dev)
        self.bound = torch.empty((b, num_j, step), dtype=dt, device=dev)
        self.best_d = torch.full((rows,), float("inf"), dtype=dt, device=dev)
        self.best_i = torch.zeros(rows, dtype=torch.long, device=dev)
        self.survivors = 0  # pairs that got the exact D (a measurement; read after run())

    def _exact(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for the pairs (row, pool row col): the operations of ExactSearch, in its order."""
        index = self.index
        num_j = self.shape[1]
        at = self.offsets.index_select(0, row).add_(col[:, None])  # (S, 2) rows of the plane and weight tables
        query = self.query_rows.index_select(0, row)  # (S, 3J)
        planes = index.canonical.view(2, -1, num_j)  # (2, Q·Nv, J)
        dx = planes[0].index_select(0, at[:, 0]).sub_(query[:, :num_j])
        dy = planes[1].index_select(0, at[:, 0]).sub_(query[:, num_j:2 * num_j])
        torch.hypot(dx, dy, out=dx)
        torch.add(index.weights.view(-1, num_j).index_select(0, at[:, 1]), query[:, 2 * num_j:], out=dy)
        return dx.mul_(dy).sum(-1)

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.index
        total = len(index)
        b, num_j = self.shape
        rows = b * num_j
        big = torch.iinfo(torch.long).max
        dev = self.best_d.device
        # A first upper bound: the exact D of an evenly spaced sample of the pool (SAMPLE rows). Only the skip
        # test uses it (it is the D of a real row, so the minimum is <= it); the minimum and its tie-breaking
        # come from the scan below alone.
        sample = torch.arange(0, total, max(1, total // SAMPLE), device=dev)
        row = torch.arange(rows, device=dev).repeat_interleave(len(sample))
        upper = self._exact(row, sample.repeat(rows)).view(rows, -1).amin(1)
        upper = upper + (upper * REL_MARGIN + self.margin)
        pending_rows, pending_cols = [], []
        chunks = range(0, total, self.step)
        for c, start in enumerate(chunks):  # fixed count: N and the budget
            n = min(self.step, total - start)
            gap, tmp, bound = self.gap[..., :n], self.tmp[..., :n], self.bound[..., :n]
            # L = Σ_k w_k(q)·|r_k(q) - r_k(p)| + Σ_k w_k(p)·|r_k(q) - r_k(p)| for every row of the chunk.
            torch.sub(self.radial[0, None, :, :, start:start + n], self.rp, out=gap).abs_()
            torch.mul(gap, self.radial[1, None, :, :, start:start + n], out=tmp)
            torch.sum(tmp, 2, out=bound)
            flat = bound.view(rows, 1, n)
            flat.baddbmm_(self.wp_mat, gap.view(rows, num_j, n))
            limit = torch.minimum(self.best_d + (self.best_d * REL_MARGIN + self.margin), upper)
            row, col = (flat[:, 0] <= limit[:, None]).nonzero().unbind(1)
            pending_rows.append(row)
            pending_cols.append(col + start)
            if (c + 1) % GROUP and c + 1 < len(chunks):
                continue
            # The exact D of the survivors of the last GROUP chunks (pool rows in increasing order).
            row, col = torch.cat(pending_rows), torch.cat(pending_cols)
            pending_rows, pending_cols = [], []
            if row.numel() == 0:
                continue
            self.survivors += row.numel()
            d = self._exact(row, col)
            # First minimum per row in these chunks: the smallest D, then the lowest pool row among equal D.
            cd = torch.full((rows,), float("inf"), dtype=d.dtype, device=dev).scatter_reduce_(0, row, d, "amin")
            cand = torch.where(d == cd.index_select(0, row), col, big)
            ci = torch.full((rows,), big, dtype=torch.long, device=dev).scatter_reduce_(0, row, cand, "amin")
            better = cd < self.best_d  # strict: earlier chunks (lower rows) win ties
            self.best_d = torch.where(better, cd, self.best_d)
            self.best_i = torch.where(better, ci, self.best_i)
        return self.best_i.view(b, num_j), self.best_d.view(b, num_j)
