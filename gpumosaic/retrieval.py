"""Retrieval (Eq. 1–4): for every joint of each query pose, the best-matching pose of the pool.

For query ``p``, pool pose ``q`` and joint ``j`` (paper Eq. 1–3, DESIGN.md step 4):

* ``i`` = the bone-graph neighbour of ``j`` farthest from ``p_j`` *in the query* (ties: lowest index);
* the rigid map ``T`` (rotation + translation, no scale) ``q'_k = R (q_k - q_j) + p_j`` turns ``q_i - q_j``
  onto the direction of ``p_i - p_j`` (Eq. 2);
* ``D_j(p, q) = Σ_k (w_k^j(p) + w_k^j(q)) · ||p_k - q'_k||`` with
  ``w_k^j(x) = (1 / max(||x_k - x_j||, ε)) / Σ_{k'≠j} (1 / max(||x_k' - x_j||, ε))`` for ``k ≠ j``,
  ``w_j^j = 0`` and ε = 1 px (Eq. 3);
* ``m_j = argmin_q D_j(p, q)`` (Eq. 4; ties: lowest pool index).

GPU form: rotation invariance gives ``||p_k - q'_k|| = ||c^{j,i}_k(p) - c^{j,i}_k(q)||`` where ``c^{j,i}(x)``
is ``x`` translated so ``x_j = 0`` and rotated so ``x_i - x_j`` lies on ``+x``. :class:`RetrievalIndex`
precomputes the pool's canonical coordinates for every ordered bone pair ``(j, i)`` and its weights once;
a query batch is then one batched distance reduction over the pool, chunked over N to bound memory.

Mirroring doubles the pool virtually: entries ``N..2N-1`` of an index built with ``mirror=True`` are the
horizontally flipped poses of ``0..N-1`` with the left/right permutation applied (only their 2D
coordinates are stored, never the images).

Convention:
    Query and pool joints are ``(x, y)`` pixels in one common frame (normally the S×S box of
    :func:`gpumosaic.geometry.fit_to_box`); ε = 1 px assumes that frame's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._check import check_finite, check_shape
from .geometry import canonical_frame
from .pruning import PrunedSearch, radial_table
from .skeleton import Skeleton

__all__ = [
    "RetrievalIndex",
    "joint_distances",
    "best_matches",
    "joint_weights",
    "reference_neighbours",
    "mirror_poses",
]

EPS_PX = 1.0

DEFAULT_BUDGET = 4 << 20
"""Bytes of the exact search's work buffers (``B·J·n·(2J + 1)·4``): a few MB keeps a chunk in the CPU's
caches, and the working memory of a batch independent of N (measured in docs/performance.md)."""


def joint_weights(x: torch.Tensor, eps: float = EPS_PX) -> torch.Tensor:
    """Weights ``w_k^j(x)`` of Eq. 3: (..., J, 2) -> (..., J_j, J_k), zero on the diagonal, rows sum to 1."""
    num_j = x.shape[-2]
    inv = 1.0 / torch.cdist(x, x).clamp_min(eps)
    eye = torch.eye(num_j, dtype=torch.bool, device=x.device)
    inv = inv.masked_fill(eye, 0.0)
    return inv / inv.sum(-1, keepdim=True)


def _pair_tables(skeleton: Skeleton, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ordered bone pairs ``(j, i)`` (Q = 2(J-1)), and per joint its neighbours and their pair ids.

    Returns ``pair_j (Q,)``, ``pair_i (Q,)``, ``nbr (J, D)`` and ``nbr_pair (J, D)`` padded with -1.
    """
    pairs = [(j, i) for j in range(len(skeleton)) for i in skeleton.neighbours[j]]
    deg = max(len(n) for n in skeleton.neighbours)
    nbr = torch.full((len(skeleton), deg), -1, dtype=torch.long)
    nbr_pair = torch.full((len(skeleton), deg), -1, dtype=torch.long)
    for q, (j, i) in enumerate(pairs):
        slot = skeleton.neighbours[j].index(i)
        nbr[j, slot] = i
        nbr_pair[j, slot] = q
    pair_j = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    pair_i = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return pair_j.to(device), pair_i.to(device), nbr.to(device), nbr_pair.to(device)


def reference_neighbours(query: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """For each query joint ``j``, the neighbour ``i`` farthest from ``p_j`` (ties: lowest index).

    Args:
        query: (B, J, 2). Returns: int64 (B, J).
    """
    _, _, nbr, _ = _pair_tables(skeleton, query.device)
    slot = _farthest_slot(query, nbr)
    return torch.gather(nbr[None].expand(query.shape[0], -1, -1), 2, slot[..., None])[..., 0]


def _farthest_slot(query: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """(B, J) slot in ``nbr`` of the farthest neighbour of each joint (first slot on ties)."""
    b = query.shape[0]
    idx = nbr.clamp_min(0)  # (J, D)
    pn = query[:, idx]  # (B, J, D, 2)
    d = (pn - query[:, :, None]).norm(dim=-1)
    d = d.masked_fill((nbr < 0)[None].expand(b, -1, -1), -1.0)
    # argmax returns the first maximal value: ties go to the lowest slot = lowest neighbour index.
    return d.argmax(dim=-1)


def mirror_poses(poses: torch.Tensor, skeleton: Skeleton, width: float = 0.0) -> torch.Tensor:
    """Horizontally mirrored poses: ``x -> (width - 1) - x`` then the left/right permutation.

    Args:
        poses: (..., J, 2). width: image width the flip is about (irrelevant to retrieval distances).
    """
    flipped = poses.clone()
    flipped[..., 0] = (width - 1.0) - poses[..., 0]
    return flipped[..., skeleton.flip_tensor(poses.device), :]


@dataclass(frozen=True)
class RetrievalIndex:
    """Precomputed pool side of Eq. 3 (DESIGN.md step 4, GPU form).

    Attributes:
        joints: (Nv, J, 2) pool poses (Nv = 2N with mirroring: rows N.. are mirrored copies).
        canonical: (2, Q, Nv, J) ``c^{j,i}(q)`` for each ordered bone pair ``(j, i)`` (Q = 2(J-1)), stored as
            separate x and y planes (a reduction over a trailing size-2 axis is several times slower).
        weights: (J, Nv, J) ``w_k^j(q)`` indexed ``[j, n, k]`` (joint-major, so that a pool chunk
            ``weights[:, a:b]`` lines up with the ``(B, J, n, J)`` distance block of the exact search).
        num_real: N, the number of stored (non-mirrored) entries.
        skeleton: the joint layout.

    Memory: ``4·Nv·J·(2Q + J + 2)`` bytes, 0.6 GB for N = 80,000 mirrored (Nv = 160,000, J = 14); the
    exact search adds a working set of ``B·J·n·(2J + 1)·4`` bytes (``n`` rows per chunk, from the
    budget) whatever N is (docs/performance.md, "Memory").
    """

    joints: torch.Tensor
    canonical: torch.Tensor
    weights: torch.Tensor
    num_real: int
    skeleton: Skeleton
    pair_tables: tuple
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # lazily built pruning tables

    @classmethod
    def build(cls, pool: torch.Tensor, skeleton: Skeleton, mirror: bool = False) -> "RetrievalIndex":
        """Build the index from pool poses (N, J, 2) already in the query frame (the S×S box)."""
        dims = check_shape(pool, ["N", "J", "2"], name="pool")
        if dims["N"] == 0:
            raise ValueError("Expected a non-empty pool, got N=0")
        if dims["J"] != len(skeleton):
            raise ValueError(f"Expected pool with J={len(skeleton)} joints of {skeleton.name}, got {dims['J']}")
        if not pool.is_floating_point():
            raise TypeError(f"Expected floating-point pool joints, got {pool.dtype}")
        check_finite(pool, "pool")
        joints = torch.cat([pool, mirror_poses(pool, skeleton)], 0) if mirror else pool
        tables = _pair_tables(skeleton, pool.device)
        pair_j, pair_i = tables[0], tables[1]
        num_v, num_j = joints.shape[:2]
        planes = torch.empty((2, len(pair_j), num_v, num_j), dtype=joints.dtype, device=joints.device)
        # One ordered pair at a time straight into the planes: the build's peak is the index itself plus
        # one (Nv, J, 2) frame, not a second (Q, Nv, J, 2) copy (fixed count: the skeleton's pairs).
        for q in range(len(pair_j)):
            c = canonical_frame(joints, pair_j[q], pair_i[q])  # (Nv, J, 2)
            planes[0, q] = c[..., 0]
            planes[1, q] = c[..., 1]
        weights = joint_weights(joints).transpose(0, 1).contiguous()  # (J, Nv, J)
        return cls(joints, planes, weights, pool.shape[0], skeleton, tables)

    def __len__(self) -> int:
        return self.joints.shape[0]

    def nbytes(self) -> int:
        """Bytes held by the index tables (joints, canonical planes, weights)."""
        return sum(t.numel() * t.element_size() for t in (self.joints, self.canonical, self.weights))

    def radial(self) -> torch.Tensor:
        """(2, J, J, Nv) radial distances ``||q_k - q_j||`` and weights of the pruned search's bound
        (:func:`gpumosaic.pruning.radial_table`), built on first use and kept: ``8·Nv·J²`` bytes (250 MB for
        N = 80,000 mirrored), not counted by :meth:`nbytes`."""
        if "radial" not in self.cache:
            self.cache["radial"] = radial_table(self.joints, self.weights)
            self.cache["scale"] = self.joints.abs().amax()
        return self.cache["radial"]

    def _pruned(self, query, pair, cp, wp, budget_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 through :class:`~gpumosaic.pruning.PrunedSearch`: the full scan's result, fewer exact D."""
        radial = self.radial()
        scale = torch.maximum(self.cache["scale"], query.abs().amax())
        rp = torch.cdist(query, query)  # (B, J, J) ||p_k - p_j||
        b, num_j = pair.shape
        step = max(1, min(len(self), budget_bytes // (b * num_j * 4 * 2)))  # PrunedSearch's (B, J, step) pair
        search = PrunedSearch(self, radial, pair, cp, wp, rp, scale, step)
        out = search.run()
        self.cache["last_survivors"] = search.survivors
        return out

    def _query_side(self, query: torch.Tensor):
        _, _, nbr, nbr_pair = self.pair_tables
        b = query.shape[0]
        slot = _farthest_slot(query, nbr)  # (B, J)
        pair = torch.gather(nbr_pair[None].expand(b, -1, -1), 2, slot[..., None])[..., 0]  # (B, J)
        nb = torch.gather(nbr[None].expand(b, -1, -1), 2, slot[..., None])[..., 0]
        j = torch.arange(query.shape[1], device=query.device).expand(b, -1)
        cp = canonical_frame(query[:, None].expand(-1, query.shape[1], -1, -1), j, nb)  # (B, J, J, 2)
        wp = joint_weights(query)  # (B, J, J)
        return pair, cp, wp

    def _chunk_distances(self, pair, cp, wp, start: int, stop: int) -> torch.Tensor:
        """D_j for pool rows ``start:stop``: (B, J, n), functional form (no buffers; the compiled paths and
        :meth:`distances`). Same arithmetic, in the same order, as :class:`ExactSearch`."""
        sl = slice(start, stop)
        return _eq3_chunk(self.canonical[0, :, sl], self.canonical[1, :, sl], self.weights[:, sl], pair, cp, wp)

    def _chunk_size(self, b: int, j: int, budget_bytes: int) -> int:
        per_entry = max(b * j * (2 * j + 1) * 4, 1)  # two (B, J, ·, J) work buffers and the (B, J, ·) D
        return max(1, min(len(self), budget_bytes // per_entry))

    def distances(self, query: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET) -> torch.Tensor:
        """Eq. 3 for every query joint against every index entry: (B, J, 2) -> (B, J, Nv)."""
        query = _check_query(query, self.skeleton, self.joints)
        pair, cp, wp = self._query_side(query.detach())  # retrieval carries no gradient (Eq. 4 is an argmin)
        step = self._chunk_size(*query.shape[:2], budget_bytes)
        out = [self._chunk_distances(pair, cp, wp, s, min(s + step, len(self))) for s in range(0, len(self), step)]
        return torch.cat(out, -1)

    def _exact(self, pair, cp, wp, budget_bytes: int, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 over the whole index: ``(best index (B, J), best D (B, J))``, ties to the lowest index.

        Three forms of one computation: eager with reused buffers (:class:`ExactSearch`, the default);
        traced inside a caller's ``torch.compile`` graph; or ``compiled=True``: each chunk through one
        ``torch.compile``'d kernel (:func:`_eq3_chunk_min`, built once per batch shape). In both compiled
        forms the compiler fuses gather, hypot and the weighted sum into one loop with no (B, J, n, J)
        intermediate, so only the (B, J, n) distances count against the budget.
        """
        b, num_j = pair.shape
        tracing = torch.compiler.is_compiling()
        if not (tracing or compiled):
            return ExactSearch(self, pair, cp, wp, self._chunk_size(b, num_j, budget_bytes)).run()
        total = len(self)
        step = max(1, min(total, budget_bytes // max(b * num_j * 4, 1)))
        kernel = _eq3_chunk_min if tracing else _compiled_chunk_min()
        best_d = torch.full((b, num_j), float("inf"), dtype=cp.dtype, device=cp.device)
        best_i = torch.zeros((b, num_j), dtype=torch.long, device=cp.device)
        x_planes, y_planes = self.canonical[0], self.canonical[1]
        for s in range(0, total, step):  # fixed count: N and the budget (unrolled when traced)
            # Every chunk has ``step`` rows (one compiled shape): the last one starts earlier and overlaps
            # rows already seen, whose D cannot pass the strict ``<`` again, so ties still go to the lowest.
            s = min(s, total - step)
            sl = slice(s, s + step)
            cd, ci = kernel(x_planes[:, sl], y_planes[:, sl], self.weights[:, sl], pair, cp, wp)
            better = cd < best_d  # strict: earlier chunks win ties
            best_d = torch.where(better, cd, best_d)
            best_i = torch.where(better, ci + s, best_i)
        return best_i, best_d


    def _rerank(self, pair, cp, wp, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Eq. 3 on candidates (B, J, L); the smallest D, ties to the lowest index."""
        num_j = pair.shape[1]
        q_sel = pair[..., None].expand_as(cand)
        dx = self.canonical[0][q_sel, cand].sub_(cp[:, :, None, :, 0])  # (B, J, L, J)
        dy = self.canonical[1][q_sel, cand].sub_(cp[:, :, None, :, 1])
        dist = torch.hypot(dx, dy, out=dx)
        jj = torch.arange(num_j, device=cand.device)[None, :, None].expand_as(cand)
        w = self.weights[jj, cand] + wp[:, :, None, :]  # (B, J, L, J)
        d = (dist * w).sum(-1)  # (B, J, L)
        dmin = d.amin(-1, keepdim=True)
        big = torch.iinfo(torch.long).max
        best_i = torch.where(d == dmin, cand, big).amin(-1)
        return best_i, dmin[..., 0]

    def shortlist(self, query: torch.Tensor, size: int, budget_bytes: int = DEFAULT_BUDGET) -> torch.Tensor:
        """Candidates for Eq. 4 from a squared-distance proxy that decomposes into matrix products.

        Proxy: ``Σ_k w_k^j(p) ||c_k(p) - c_k(q)||²`` (query weights only, squared distances), which is
        ``Σ_k w_k |c_k(q)|² - 2 Σ_k w_k c_k(p)·c_k(q)`` + a constant: one ``(B, 3J) @ (3J, N)`` product per
        ordered bone pair (tensor cores on a GPU). It is not Eq. 3, so the exact minimiser may be missed;
        :meth:`best` with ``shortlist=L`` re-ranks the ``L`` candidates exactly, and its recall@1 against the
        exact search is measured (``benchmarks/shortlist_recall.py``), never assumed.

        Returns:
            int64 (B, J, L) index rows of the L smallest proxy values (L clipped to the index size).
        """
        query = _check_query(query, self.skeleton, self.joints)
        pair, cp, wp = self._query_side(query.detach())
        return self._shortlist(pair, cp, wp, size, budget_bytes)

    def _shortlist(self, pair, cp, wp, size: int, budget_bytes: int) -> torch.Tensor:
        b, num_j = pair.shape
        size = max(1, min(int(size), len(self)))
        # The pair -> joint table on the host (built from the skeleton: no device read on CUDA).
        pair_j = [j for j in range(num_j) for _ in self.skeleton.neighbours[j]]
        coeff = torch.cat([wp, -2 * wp * cp[..., 0], -2 * wp * cp[..., 1]], -1)  # (B, J, 3J)
        best_s = torch.full((b, num_j, 0), float("inf"), dtype=cp.dtype, device=cp.device)
        best_i = torch.zeros((b, num_j, 0), dtype=torch.long, device=cp.device)
        step = max(1, min(len(self), budget_bytes // max(b * num_j * 4 * 3 + 3 * num_j * 4 * len(pair_j), 1)))
        for s in range(0, len(self), step):  # fixed count: pool chunks
            x, y = self.canonical[0, :, s:s + step], self.canonical[1, :, s:s + step]  # (Q, n, J)
            feats = torch.cat([x * x + y * y, x, y], -1)  # (Q, n, 3J)
            scores = torch.empty((b, num_j, feats.shape[1]), dtype=cp.dtype, device=cp.device)
            for q, jq in enumerate(pair_j):  # fixed count: ordered bone pairs
                sq = coeff[:, jq] @ feats[q].T  # (B, n)
                use = (pair[:, jq] == q)[:, None]
                scores[:, jq] = torch.where(use, sq, scores[:, jq]) if q else sq
            idx = torch.arange(s, s + feats.shape[1], device=cp.device).expand(b, num_j, -1)
            merged_s = torch.cat([best_s, scores], -1)
            merged_i = torch.cat([best_i, idx], -1)
            k = min(size, merged_s.shape[-1])
            best_s, pos = merged_s.topk(k, dim=-1, largest=False, sorted=False)
            best_i = torch.gather(merged_i, -1, pos)
        return best_i

    def best(
        self,
        query: torch.Tensor,
        searched: torch.Tensor | None = None,
        budget_bytes: int = DEFAULT_BUDGET,
        shortlist: int | None = None,
        compiled: bool = False,
        pruned: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best matches (Eq. 4): returns ``(matches (B, J) int64, distance (B, J))``.

        ``matches`` is -1 (and ``distance`` +inf) where ``searched`` is False. Ties go to the lowest index.
        The loop is over pool chunks (a count fixed by N and the memory budget), never over queries.
        ``shortlist=L`` (an option, not the default): exact Eq. 3 only on the L candidates of
        :meth:`shortlist`; equal to the exact search when L >= the index size, otherwise measured by its
        recall@1. ``compiled=True``: the exact search's chunks run through one ``torch.compile``'d kernel (the
        same matches; the first call per batch shape compiles, about a minute on a CPU). ``pruned=True``: the
        exact search skips pool rows by a lower bound (:mod:`gpumosaic.pruning`; the same matches; ``nonzero``
        inside, so a host sync on CUDA; ignored when ``compiled`` or while tracing).
        """
        query = _check_query(query, self.skeleton, self.joints)
        b, j = query.shape[:2]
        if searched is not None:
            check_shape(searched, ["B", "J"], name="searched", dims={"B": b, "J": j})
            if searched.dtype != torch.bool:
                raise TypeError(f"Expected searched to be a bool tensor, got {searched.dtype}")
        pair, cp, wp = self._query_side(query.detach())  # an argmin has no gradient
        if shortlist is not None:
            best_i, best_d = self._rerank(pair, cp, wp, self._shortlist(pair, cp, wp, shortlist, budget_bytes))
            if searched is not None:
                best_i = best_i.masked_fill(~searched, -1)
                best_d = best_d.masked_fill(~searched, float("inf"))
            return best_i, best_d
        if pruned and not compiled and not torch.compiler.is_compiling():
            best_i, best_d = self._pruned(query.detach(), pair, cp, wp, budget_bytes)
        else:
            best_i, best_d = self._exact(pair, cp, wp, budget_bytes, compiled=compiled)
        if searched is not None:
            best_i = best_i.masked_fill(~searched, -1)
            best_d = best_d.masked_fill(~searched, float("inf"))
        return best_i, best_d


def _eq3_chunk(x, y, w, pair, cp, wp) -> torch.Tensor:
    """Eq. 3 for one pool chunk: planes ``x, y`` (Q, n, J), weights ``w`` (J, n, J), query side ``pair`` (B, J),
    ``cp`` (B, J, J, 2), ``wp`` (B, J, J) -> D (B, J, n): ``Σ_k hypot(c_k(q) - c_k(p)) · (w_k(q) + w_k(p))``."""
    dx = x[pair] - cp[:, :, None, :, 0]  # (B, J, n, J)
    dy = y[pair] - cp[:, :, None, :, 1]
    ww = w[None] + wp[:, :, None, :]  # (B, J, n, J): w_k^j(q) + w_k^j(p)
    return (torch.hypot(dx, dy) * ww).sum(-1)


def _eq3_chunk_min(x, y, w, pair, cp, wp) -> tuple[torch.Tensor, torch.Tensor]:
    """The first minimum of :func:`_eq3_chunk` over the chunk: ``(D (B, J), row in the chunk (B, J))``."""
    return _eq3_chunk(x, y, w, pair, cp, wp).min(dim=-1)


_COMPILED_CHUNK_MIN = []


def _compiled_chunk_min():
    """:func:`_eq3_chunk_min` through ``torch.compile`` (built on first use, shared by every index)."""
    if not _COMPILED_CHUNK_MIN:
        _COMPILED_CHUNK_MIN.append(torch.compile(_eq3_chunk_min, fullgraph=True, dynamic=False))
    return _COMPILED_CHUNK_MIN[0]


class ExactSearch:
    """The exact search's eager loop (Eq. 4) over pool chunks with two preallocated work buffers.

    Every chunk reuses the same ``(B·J, n, J)`` buffers (``out=`` / in-place ops): no allocation per chunk,
    a working set of ``B·J·n·(2J + 1)·4`` bytes whatever N is. The arithmetic and its order are those of
    :meth:`RetrievalIndex._chunk_distances` (``hypot(c(q) - c(p)) · (w(q) + w(p))`` summed over k), so both
    give the same D bit for bit; ``min`` keeps the first minimum in a chunk and a strict ``<`` keeps the
    earlier chunk on ties: the lowest index wins, as in the brute-force definition.
    """

    def __init__(self, index: "RetrievalIndex", pair, cp, wp, step: int) -> None:
        b, num_j = pair.shape
        self.index, self.step, self.shape = index, step, (b, num_j)
        rows = b * num_j
        dev, dt = cp.device, cp.dtype
        self.pair = pair.reshape(rows)
        self.cpx = cp[..., 0].reshape(rows, 1, num_j).contiguous()
        self.cpy = cp[..., 1].reshape(rows, 1, num_j).contiguous()
        self.wp = wp[:, :, None, :]  # (B, J, 1, J)
        self.dx = torch.empty((rows, step, num_j), dtype=dt, device=dev)
        self.dy = torch.empty((rows, step, num_j), dtype=dt, device=dev)
        self.d = torch.empty((rows, step), dtype=dt, device=dev)
        self.cd = torch.empty(rows, dtype=dt, device=dev)
        self.ci = torch.empty(rows, dtype=torch.long, device=dev)
        self.better = torch.empty(rows, dtype=torch.bool, device=dev)
        self.best_d = torch.full((rows,), float("inf"), dtype=dt, device=dev)
        self.best_i = torch.zeros(rows, dtype=torch.long, device=dev)

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        x_planes, y_planes = self.index.canonical[0], self.index.canonical[1]  # (Q, Nv, J)
        total = len(self.index)
        b, num_j = self.shape
        for start in range(0, total, self.step):  # fixed count: N and the budget, never data
            n = min(self.step, total - start)
            dx, dy, d = self.dx[:, :n], self.dy[:, :n], self.d[:, :n]
            torch.index_select(x_planes[:, start:start + n], 0, self.pair, out=dx)  # c(q) for each row's pair
            torch.index_select(y_planes[:, start:start + n], 0, self.pair, out=dy)
            dx.sub_(self.cpx)
            dy.sub_(self.cpy)
            torch.hypot(dx, dy, out=dx)  # ||c_k(q) - c_k(p)||
            torch.add(self.index.weights[None, :, start:start + n], self.wp, out=dy.view(b, num_j, n, num_j))
            torch.sum(dx.mul_(dy), -1, out=d)  # D_j, (B·J, n)
            torch.min(d, -1, out=(self.cd, self.ci))  # first minimum within the chunk
            torch.lt(self.cd, self.best_d, out=self.better)  # strict: earlier chunks win ties
            torch.where(self.better, self.cd, self.best_d, out=self.best_d)
            torch.where(self.better, self.ci.add_(start), self.best_i, out=self.best_i)
        return self.best_i.view(b, num_j), self.best_d.view(b, num_j)


def _check_query(query: torch.Tensor, skeleton: Skeleton, pool: torch.Tensor) -> torch.Tensor:
    check_shape(query, ["B", "J", "2"], name="query")
    if query.shape[1] != len(skeleton):
        raise ValueError(
            f"Expected query with J={len(skeleton)} joints of {skeleton.name}, got {query.shape[1]}"
        )
    if query.dtype != pool.dtype:
        raise TypeError(f"Expected query dtype {pool.dtype} (the pool's), got {query.dtype}")
    if query.device != pool.device:
        raise ValueError(f"Expected query on {pool.device} (the pool's device), got {query.device}")
    check_finite(query, "query")
    return query


def joint_distances(query: torch.Tensor, pool: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Eq. 3: ``D_j(p, q)`` for every query joint and pool pose.

    Args:
        query: (B, J, 2) float query poses ``p``.
        pool: (N, J, 2) float pool poses ``q`` in the same frame, same dtype and device.
        skeleton: joint layout (bones define the neighbour ``i`` of each ``j``).

    Returns:
        (B, J, N) distances, ``out[b, j, n] = D_j(query[b], pool[n])``, detached: retrieval carries no
        gradient (the soft engine differentiates through alignment, warps and maps, not the choice of match).
    """
    return RetrievalIndex.build(pool, skeleton).distances(query)


def best_matches(
    query: torch.Tensor, pool: torch.Tensor, skeleton: Skeleton, searched: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4: ``m_j = argmin_q D_j(p, q)`` per query joint.

    Args:
        query: (B, J, 2). pool: (N, J, 2). searched: (B, J) bool or None (all searched); occluded joints are
            not searched.

    Returns:
        int64 (B, J) pool indices, -1 where a joint is not searched; ties go to the lowest index.
    """
    return RetrievalIndex.build(pool, skeleton).best(query, searched)[0]


def joint_distances_reference(query: torch.Tensor, pool: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Plain per-pair loop of Eq. 1–3 in float64 (tests only): builds ``R`` and ``q'`` explicitly."""
    import math

    q64 = query.double().cpu()
    p64 = pool.double().cpu()
    b, num_j = q64.shape[:2]
    out = torch.zeros(b, num_j, p64.shape[0], dtype=torch.float64)
    for bi in range(b):
        p = q64[bi]
        for j in range(num_j):
            nbrs = skeleton.neighbours[j]
            dists = [float((p[i] - p[j]).norm()) for i in nbrs]
            i = nbrs[dists.index(max(dists))]
            for n in range(p64.shape[0]):
                q = p64[n]
                a = math.atan2(float(p[i, 1] - p[j, 1]), float(p[i, 0] - p[j, 0])) - math.atan2(
                    float(q[i, 1] - q[j, 1]), float(q[i, 0] - q[j, 0])
                )
                rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
                total = 0.0
                inv_p = [0.0 if k == j else 1.0 / max(float((p[k] - p[j]).norm()), EPS_PX) for k in range(num_j)]
                inv_q = [0.0 if k == j else 1.0 / max(float((q[k] - q[j]).norm()), EPS_PX) for k in range(num_j)]
                for k in range(num_j):
                    if k == j:
                        continue
                    qk = rot @ (q[k] - q[j]) + p[j]
                    w = inv_p[k] / sum(inv_p) + inv_q[k] / sum(inv_q)
                    total += w * float((p[k] - qk).norm())
                out[bi, j, n] = total
    return out
