"""Exact retrieval with a lower bound that skips pool rows (Eq. 4, the same matches as the full scan).

Bound. For query ``p``, pool pose ``q`` and joint ``j``, with canonical coordinates ``c_k`` (``x_k - x_j``
rotated, :mod:`gpumosaic.retrieval`), the triangle inequality gives ``||c_k(p) - c_k(q)|| >= | |c_k(p)| -
|c_k(q)| | = |r_k(p) - r_k(q)|`` with ``r_k(x) = ||x_k - x_j||``, which no rotation changes. Hence

    ``L_j(p, q) = Σ_k (w_k^j(q) + w_k^j(p)) · |r_k^j(p) - r_k^j(q)|  <=  D_j(p, q)``   (Eq. 3),

with no angle and no choice of neighbour ``i``: a table of the pool's radial distances and weights, pool rows
innermost, built once (:func:`radial_table`, ``8·Nv·J²`` bytes: 250 MB for N = 80,000 mirrored).

Search (:class:`PrunedSearch`). Joint by joint, the pool is scanned in chunks of ``n`` rows (from the memory
budget: 4,681 rows at B = 8 with the CPU's 4 MiB). In each chunk the bound of the ``B`` rows of joint ``j`` is a
``(B, J, n)`` block whose innermost loops run over the pool rows; only the pairs whose bound does not exceed
the best ``D`` found so far (plus a rounding margin) are kept, and the kept pairs get the exact ``D`` of Eq. 3
in pieces of :data:`EXACT_BATCH` (after the first chunk of each joint, so that the rest of that joint is
tested against a best ``D`` from its own rows, and whenever a piece is full), gathered from the index tables and
computed with the same operations in the same order as :class:`~gpumosaic.retrieval.ExactSearch` (the same
``D`` bit for bit). A skipped pool row has ``D >= L > best``, so it can neither be the minimum nor tie with
it; each row's kept pairs come in pool order, the first minimum within a piece and a strict ``<`` across
pieces: the result is the full scan's (smallest ``D``, ties to the lowest index; tests compare with the
brute-force definition, ties included).

Buffers. Every buffer of the search is allocated once per call (``out=`` and in-place operations, nothing per
chunk): the two ``(B, J, n)`` blocks, the ``(B, n)`` bound and mask, the kept pairs (``16·(EXACT_BATCH + B·n)``
bytes) and the exact ``D``'s gathers for EXACT_BATCH pairs (``20·J + 33`` bytes each): 10 MiB in all at B = 8
(the bound blocks fill the 4 MiB budget), whatever N is. Only ``nonzero``'s small per-chunk result is
allocated.

Rounding. ``L`` and ``D`` are computed in float; a row is skipped only when ``L > best · (1 + 1e-4) + 1e-5 ·
M`` (``M`` the largest coordinate magnitude of the index and the queries), far above the few ulps by which the
computed ``L`` may exceed the computed ``D`` of the same row.

Cost. The bound costs about a third of the exact ``D`` per row (no gather, no ``hypot``); the exact ``D`` runs
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
SAMPLE = 512
"""Pool rows (evenly spaced) whose exact D gives the first upper bound of the skip test (512: 0.92 of the time
of 2,048 at N = 80,000, B = 8, alternating; 128 the same as 512)."""
EXACT_BATCH = 1 << 14
"""Survivors collected (over chunks) before their exact D is computed together (fewer, larger gathers; the skip
test of a chunk uses the best D of the survivors merged before it)."""


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

    Chunks are (joint ``j``, ``step`` pool rows): the bound of the ``B`` rows of joint ``j`` against ``step``
    pool rows is a ``(B, J, step)`` block whose innermost loops run over the long pool axis. Work buffers,
    allocated once per search (nothing per chunk): two ``(B, J, step)`` blocks, the ``(B, step)`` bound and its
    mask, and the survivors' exact-D buffers for up to :data:`EXACT_BATCH` ``+ B·step`` pairs (``12·J + 48``
    bytes each).
    """

    def __init__(self, index, radial, pair, cp, wp, rp, scale, step: int) -> None:
        b, num_j = pair.shape
        rows = b * num_j
        dev, dt = cp.device, cp.dtype
        self.index, self.radial, self.step, self.shape = index, radial, step, (b, num_j)
        num_v = len(index)
        # Per row: where its pair's plane rows and its joint's weight rows start in the flattened tables.
        self.pair_off = pair.reshape(rows) * num_v
        self.joint_off = torch.arange(num_j, device=dev).repeat(b) * num_v
        # Per row: c(p) x, c(p) y and w(p), (3, B·J, J) (gathered per survivor into contiguous rows).
        self.query_rows = torch.stack((cp[..., 0].reshape(rows, num_j), cp[..., 1].reshape(rows, num_j),
                                       wp.reshape(rows, num_j)))
        self.rp = rp.transpose(0, 1)[..., None]  # (J, B, J_k, 1): joint j's rows
        self.wp = wp.transpose(0, 1)[..., None]  # (J, B, J_k, 1)
        self.margin = ABS_MARGIN * scale
        self.gap = torch.empty((b, num_j, step), dtype=dt, device=dev)
        self.tmp = torch.empty((b, num_j, step), dtype=dt, device=dev)
        self.bound = torch.empty((b, step), dtype=dt, device=dev)
        self.mask = torch.empty((b, step), dtype=torch.bool, device=dev)
        self.acc = torch.empty((2, EXACT_BATCH + b * step), dtype=torch.long, device=dev)  # survivors: row, pool row
        cap = EXACT_BATCH
        self.at = torch.empty((2, cap), dtype=torch.long, device=dev)  # their plane and weight table rows
        self.q = torch.empty((3, cap, num_j), dtype=dt, device=dev)
        self.dx = torch.empty((cap, num_j), dtype=dt, device=dev)
        self.dy = torch.empty((cap, num_j), dtype=dt, device=dev)
        self.d = torch.empty((cap,), dtype=dt, device=dev)
        self.d_at = torch.empty((cap,), dtype=dt, device=dev)
        self.eq = torch.empty((cap,), dtype=torch.bool, device=dev)
        self.cand = torch.empty((cap,), dtype=torch.long, device=dev)
        self.cd = torch.empty((rows,), dtype=dt, device=dev)
        self.ci = torch.empty((rows,), dtype=torch.long, device=dev)
        self.better = torch.empty((rows,), dtype=torch.bool, device=dev)
        self.best_d = torch.full((rows,), float("inf"), dtype=dt, device=dev)
        self.best_i = torch.zeros(rows, dtype=torch.long, device=dev)
        self.big = torch.tensor(torch.iinfo(torch.long).max, device=dev)
        self.survivors = 0  # pairs that got the exact D (a measurement; read after run())

    def _exact(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for the pairs (row, pool row col), into the work buffers: the operations of ExactSearch, in
        its order (so the same D bit for bit)."""
        index = self.index
        num_j = self.shape[1]
        s = row.numel()
        at_p, at_w = self.at[0, :s], self.at[1, :s]
        torch.index_select(self.pair_off, 0, row, out=at_p).add_(col)  # rows of the plane tables
        torch.index_select(self.joint_off, 0, row, out=at_w).add_(col)  # rows of the weight table
        qx, qy, qw = (torch.index_select(self.query_rows[i], 0, row, out=self.q[i, :s]) for i in range(3))
        planes = index.canonical.view(2, -1, num_j)  # (2, Q·Nv, J)
        dx = torch.index_select(planes[0], 0, at_p, out=self.dx[:s]).sub_(qx)
        dy = torch.index_select(planes[1], 0, at_p, out=self.dy[:s]).sub_(qy)
        torch.hypot(dx, dy, out=dx)
        torch.index_select(index.weights.view(-1, num_j), 0, at_w, out=dy).add_(qw)
        return torch.sum(dx.mul_(dy), -1, out=self.d[:s])

    def _merge(self, count: int) -> None:
        """Exact D of the first ``count`` collected survivors, in pieces of EXACT_BATCH pairs."""
        self.survivors += count
        for s in range(0, count, EXACT_BATCH):  # pieces in collection order (pool order within each row)
            self._merge_piece(self.acc[0, s:min(count, s + EXACT_BATCH)], self.acc[1, s:min(count, s + EXACT_BATCH)])

    def _merge_piece(self, row: torch.Tensor, col: torch.Tensor) -> None:
        """The update of every row's best by the survivors (row, col): the smallest D, then the lowest pool row
        among equal D (the survivors of one row come in pool order, after those merged before: a strict ``<``
        keeps the earlier row on ties)."""
        count = row.numel()
        d = self._exact(row, col)
        big = self.big
        cd = self.cd.fill_(float("inf")).scatter_reduce_(0, row, d, "amin")
        at_min = torch.eq(d, torch.index_select(cd, 0, row, out=self.d_at[:count]), out=self.eq[:count])
        cand = torch.where(at_min, col, big, out=self.cand[:count])
        ci = self.ci.fill_(big).scatter_reduce_(0, row, cand, "amin")
        torch.lt(cd, self.best_d, out=self.better)  # strict: earlier pool rows win ties
        torch.where(self.better, cd, self.best_d, out=self.best_d)
        torch.where(self.better, ci, self.best_i, out=self.best_i)

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        total = len(self.index)
        b, num_j = self.shape
        rows = b * num_j
        dev = self.best_d.device
        radial = self.radial
        # A first upper bound: the exact D of an evenly spaced sample of the pool (SAMPLE rows), in pieces of
        # EXACT_BATCH pairs. Only the skip test uses it (it is the D of a real row, so the minimum is <= it);
        # the minimum and its tie-breaking come from the scan below alone.
        sample = torch.arange(0, total, max(1, total // SAMPLE), device=dev)
        pairs_r = torch.arange(rows, device=dev).repeat_interleave(len(sample))
        pairs_c = sample.repeat(rows)
        upper = torch.full((rows,), float("inf"), dtype=self.best_d.dtype, device=dev)
        for s in range(0, pairs_r.numel(), EXACT_BATCH):  # fixed count: SAMPLE and the batch
            r, c = pairs_r[s:s + EXACT_BATCH], pairs_c[s:s + EXACT_BATCH]
            upper.scatter_reduce_(0, r, self._exact(r, c), "amin")
        upper = (upper + (upper * REL_MARGIN + self.margin)).view(b, num_j)
        best_d = self.best_d.view(b, num_j)
        count = 0
        for j in range(num_j):  # fixed count: the joints, then N and the budget
            rp, wp = self.rp[j], self.wp[j]  # (B, J_k, 1) each
            for start in range(0, total, self.step):
                n = min(self.step, total - start)
                gap, tmp, bound, mask = self.gap[..., :n], self.tmp[..., :n], self.bound[:, :n], self.mask[:, :n]
                # L = Σ_k (w_k(q) + w_k(p))·|r_k(q) - r_k(p)| for joint j's rows.
                torch.sub(radial[0, j, None, :, start:start + n], rp, out=gap).abs_()
                torch.add(radial[1, j, None, :, start:start + n], wp, out=tmp)
                torch.sum(tmp.mul_(gap), 1, out=bound)
                best = best_d[:, j]
                limit = torch.minimum(best + (best * REL_MARGIN + self.margin), upper[:, j])
                hit = torch.le(bound, limit[:, None], out=mask).nonzero()  # (k, 2): query, pool row in chunk
                k = hit.shape[0]
                torch.mul(hit[:, 0], num_j, out=self.acc[0, count:count + k]).add_(j)
                torch.add(hit[:, 1], start, out=self.acc[1, count:count + k])
                count += k
                # The first chunk of each joint at once: the skip test of the others uses its best D.
                if count >= EXACT_BATCH or start == 0:
                    self._merge(count)
                    count = 0
        self._merge(count)
        return self.best_i.view(b, num_j), self.best_d.view(b, num_j)
