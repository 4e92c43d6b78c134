import pytest
import torch

from gpumosaic.retrieval import (
    RetrievalIndex,
    best_matches,
    joint_distances,
    joint_distances_reference,
    mirror_poses,
)
from gpumosaic.skeleton import LSP14, MPII16


def _poses(n, j, seed, scale=200.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, j, 2, generator=g) * scale


@pytest.mark.parametrize("skel", [LSP14, MPII16])
def test_joint_distances_against_loop(skel, device):
    q = _poses(3, len(skel), 0).to(device)
    p = _poses(9, len(skel), 1).to(device)
    d = joint_distances(q, p, skel)
    assert d.shape == (3, len(skel), 9) and d.device.type == device.type
    ref = joint_distances_reference(q, p, skel)
    torch.testing.assert_close(d.cpu().double(), ref, rtol=1e-5, atol=1e-3)


def test_joint_distances_coincident_joints_eps():
    """Coincident joints: weights use max(dist, 1 px); result stays finite and equals the loop."""
    q = _poses(2, 14, 2)
    q[0, 5] = q[0, 4]  # coincident
    q[1, :] = q[1, 0]  # all joints on one point
    p = _poses(4, 14, 3)
    p[2, 7] = p[2, 8]
    d = joint_distances(q, p, LSP14)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d.double(), joint_distances_reference(q, p, LSP14), rtol=1e-5, atol=1e-3)


def test_best_matches_brute_force(device):
    q = _poses(5, 14, 4).to(device)
    p = _poses(300, 14, 5).to(device)
    ref = joint_distances_reference(q, p, LSP14).argmin(-1)
    # Tiny memory budget forces many chunks: the chunked reduction must agree.
    idx = RetrievalIndex.build(p, LSP14)
    got, dist = idx.best(q, budget_bytes=64 << 10)
    torch.testing.assert_close(got.cpu(), ref)
    torch.testing.assert_close(best_matches(q, p, LSP14).cpu(), ref)
    assert torch.isfinite(dist).all()


def test_best_matches_ties_lowest_index():
    p = _poses(4, 14, 6)
    pool = torch.cat([p, p, p], 0)  # every pose three times
    got = best_matches(p, pool, LSP14)
    expect = torch.arange(4)[:, None].expand(4, 14)
    torch.testing.assert_close(got, expect)


def test_query_in_pool_retrieves_itself():
    pool = _poses(50, 14, 7)
    # Rotated + translated copies of pool poses: Eq. 2 aligns them exactly.
    a = torch.tensor(0.7)
    rot = torch.tensor([[a.cos(), -a.sin()], [a.sin(), a.cos()]])
    q = pool[[3, 17, 42]] @ rot.T + torch.tensor([13.0, -4.0])
    got = best_matches(q, pool, LSP14)
    torch.testing.assert_close(got, torch.tensor([3, 17, 42])[:, None].expand(3, 14))


def test_searched_mask_and_mirror():
    pool = _poses(20, 14, 8)
    q = mirror_poses(pool[[2, 9]], LSP14, width=220)
    searched = torch.ones(2, 14, dtype=torch.bool)
    searched[0, 3] = False
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    assert len(idx) == 40
    got, dist = idx.best(q, searched)
    expect = torch.tensor([22, 29])[:, None].expand(2, 14).clone()
    expect[0, 3] = -1
    torch.testing.assert_close(got, expect)
    assert torch.isinf(dist[0, 3])


def test_bad_input():
    pool = _poses(5, 14, 9)
    with pytest.raises(ValueError, match="non-empty"):
        best_matches(_poses(1, 14, 0), pool[:0], LSP14)
    with pytest.raises(ValueError, match="J=14"):
        best_matches(_poses(1, 16, 0), pool, LSP14)
    with pytest.raises(TypeError, match="dtype"):
        best_matches(_poses(1, 14, 0).double(), pool, LSP14)
    bad = _poses(1, 14, 0)
    bad[0, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        best_matches(bad, pool, LSP14)
    bad[0, 2, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        joint_distances(bad, pool, LSP14)
    with pytest.raises(TypeError, match="bool"):
        best_matches(_poses(1, 14, 0), pool, LSP14, searched=torch.ones(1, 14))


def test_inputs_not_mutated():
    q, p = _poses(2, 14, 1), _poses(6, 14, 2)
    q0, p0 = q.clone(), p.clone()
    best_matches(q, p, LSP14)
    torch.testing.assert_close(q, q0)
    torch.testing.assert_close(p, p0)


def test_queries_that_require_grad():
    """Retrieval ignores the autograd graph (an argmin): same results, no error, detached outputs."""
    pool = _poses(6, 14, 11)
    q = _poses(2, 14, 12).requires_grad_(True)
    torch.testing.assert_close(best_matches(q, pool, LSP14), best_matches(q.detach(), pool, LSP14))
    d = joint_distances(q, pool, LSP14)
    assert not d.requires_grad
    torch.testing.assert_close(d, joint_distances(q.detach(), pool, LSP14))


def test_shortlist_rerank_is_exact_when_it_covers_the_pool():
    pool = _poses(40, 14, 13)
    q = _poses(3, 14, 14)
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    exact_i, exact_d = idx.best(q)
    got_i, got_d = idx.best(q, shortlist=len(idx), budget_bytes=1 << 14)  # several chunks
    torch.testing.assert_close(got_i, exact_i)
    torch.testing.assert_close(got_d, exact_d)


def test_shortlist_proxy_against_a_loop():
    """The proxy ranks by Σ_k w_k^j(p) ||c_k(p) - c_k(q)||² (a plain loop over the reference canonical frames)."""
    from gpumosaic.geometry import canonical_frame
    from gpumosaic.retrieval import joint_weights, reference_neighbours

    pool = _poses(30, 14, 15).double()
    q = _poses(2, 14, 16).double()
    idx = RetrievalIndex.build(pool, LSP14)
    cand = idx.shortlist(q, size=5)
    nb = reference_neighbours(q, LSP14)
    wp = joint_weights(q)
    for b in range(2):
        for j in range(14):
            cp = canonical_frame(q[b], torch.tensor(j), nb[b, j])
            cq = canonical_frame(pool, torch.tensor(j), nb[b, j])
            proxy = (wp[b, j] * (cp - cq).square().sum(-1)).sum(-1)  # (N,)
            expect = set(proxy.argsort()[:5].tolist())
            assert set(cand[b, j].tolist()) == expect


def test_shortlist_recall_on_demo_pool():
    """Measured, not assumed: recall@1 of a 64-candidate shortlist against the exact search."""
    from gpumosaic.geometry import fit_to_box
    from gpumosaic.sources.demo import load_demo_pool

    pool = load_demo_pool()
    box, _ = fit_to_box(pool.joints.float(), 220)
    idx = RetrievalIndex.build(box[:400], LSP14, mirror=True)
    queries, _ = fit_to_box(box[400:464], 220)
    exact, _ = idx.best(queries)
    short, _ = idx.best(queries, shortlist=64)
    recall = (short == exact).float().mean().item()
    assert recall >= 0.95, recall


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 64, 10_000])
def test_exact_search_equals_brute_force_definition(rows_per_chunk):
    """Eq. 4 with reused work buffers equals the argmin of the float64 loop of Eq. 1-3, whatever the chunking,
    and its D are the functional chunk's D bit for bit."""
    pool = _poses(53, 14, 21)
    q = _poses(4, 14, 22)
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    budget = rows_per_chunk * 4 * 14 * 14 * 4 * 2
    got_i, got_d = idx.best(q, budget_bytes=budget)
    ref = joint_distances_reference(q, idx.joints, LSP14)
    torch.testing.assert_close(got_i, ref.argmin(-1))
    torch.testing.assert_close(got_d.double(), ref.amin(-1), rtol=1e-5, atol=1e-4)
    pair, cp, wp = idx._query_side(q)
    full = idx._chunk_distances(pair, cp, wp, 0, len(idx))  # functional form, one chunk
    assert torch.equal(got_d, full.amin(-1))


@pytest.mark.parametrize("rows_per_chunk", [1, 3, 1000])
def test_exact_search_ties_go_to_lowest_index_across_chunks(rows_per_chunk):
    """Exact duplicates at rows r, r + 5, r + 10, ... : the lowest row wins whether the copies share a chunk."""
    base = _poses(5, 14, 23)
    pool = torch.cat([base[[2, 0, 1, 4, 3]], base, base[[4, 3, 2, 1, 0]]], 0)  # 15 rows, each pose 3 times
    q = torch.cat([base, _poses(3, 14, 24)], 0)
    idx = RetrievalIndex.build(pool, LSP14)
    got, _ = idx.best(q, budget_bytes=rows_per_chunk * 8 * 14 * 14 * 4 * 2)
    d = joint_distances_reference(q, pool, LSP14)
    dmin = d.amin(-1, keepdim=True)
    # Brute-force definition with ties to the lowest index (float64 D of copies are exactly equal).
    expect = torch.where(d == dmin, torch.arange(15), 99).amin(-1)
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got[:5], torch.tensor([1, 2, 0, 4, 3])[:, None].expand(5, 14))


# ----------------------------------------------------------------------------------------------------------
# Pruned exact search (gpumosaic/pruning.py): the scan's result bit for bit, fewer exact D
# ----------------------------------------------------------------------------------------------------------


def _rotate(poses, angle, about):
    c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
    rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    centre = poses[:, about:about + 1]
    return (poses - centre) @ rot.T + centre


@pytest.fixture(scope="module")
def pruning_case():
    pool = _poses(80, 14, 31)
    q = _poses(5, 14, 32)
    q[1] = pool[17] + 0.5  # a query close to a pool row: a small best D, most rows skipped
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    return q, idx, joint_distances_reference(q, idx.joints, LSP14).argmin(-1)


def _pruned_budget(rows_per_chunk, batch):
    """The budget that gives the pruned search chunks of ``rows_per_chunk`` pool rows (its two (B, J, n) work
    blocks of float32); the scan run with it gets chunks of 1 row (fewer when the budget allows more)."""
    return rows_per_chunk * batch * 14 * 4 * 2


@pytest.mark.parametrize("sample", [1, 7, 2048])
@pytest.mark.parametrize("rows_per_chunk", [1, 13, 10_000])
@pytest.mark.parametrize("exact_batch", [29, 1 << 14])
def test_pruned_search_equals_scan_and_brute_force(sample, rows_per_chunk, exact_batch, monkeypatch,
                                                   pruning_case):
    """Random pool (mirrored): the pruned search returns the scan's matches and D bit for bit, and the argmin
    of the float64 loop of Eq. 1-3, for any first upper bound (sample size), chunking and number of survivors
    whose exact D is taken together (the survivors of one row split over several pieces)."""
    import gpumosaic.pruning as pruning

    monkeypatch.setattr(pruning, "SAMPLE", sample)
    monkeypatch.setattr(pruning, "EXACT_BATCH", exact_batch)
    q, idx, reference = pruning_case
    budget = _pruned_budget(rows_per_chunk, len(q))
    scan_i, scan_d = idx.best(q, budget_bytes=budget)
    got_i, got_d = idx.best(q, budget_bytes=budget, pruned=True)
    assert torch.equal(got_i, scan_i) and torch.equal(got_d, scan_d)
    torch.testing.assert_close(got_i, reference)
    assert idx.cache["last_survivors"] < 5 * 14 * len(idx) + 5 * 14 * min(sample, len(idx))


@pytest.mark.parametrize("rows_per_chunk", [1, 4, 1000])
@pytest.mark.parametrize("exact_batch", [1, 3, 1 << 14])
def test_pruned_search_ties_and_equal_bounds(rows_per_chunk, exact_batch, monkeypatch):
    """Adversarial cases for the bound and for ties: exact duplicates spread over the pool (ties: the lowest
    row wins, also when the duplicates' exact D are taken in different pieces), rigidly rotated copies (every
    radial distance and so every bound equal, D equal up to rounding) and mirrored copies (equal bounds,
    different D)."""
    import gpumosaic.pruning as pruning

    monkeypatch.setattr(pruning, "EXACT_BATCH", exact_batch)
    base = _poses(4, 14, 33)
    rotated = torch.cat([_rotate(base[:1], a, about=3) for a in (0.3, 1.1, 2.0, 2.9)])
    pool = torch.cat([base[[2, 0]], rotated, base, mirror_poses(base, LSP14), base[[3, 1, 0]], rotated[[2, 0]]])
    q = torch.cat([base, rotated[:2], _poses(2, 14, 34)], 0)
    idx = RetrievalIndex.build(pool, LSP14)
    budget = _pruned_budget(rows_per_chunk, len(q))
    scan_i, scan_d = idx.best(q, budget_bytes=budget)
    got_i, got_d = idx.best(q, budget_bytes=budget, pruned=True)
    assert torch.equal(got_i, scan_i) and torch.equal(got_d, scan_d)
    d = joint_distances_reference(q, pool, LSP14)
    exact_copies = torch.where(d == d.amin(-1, keepdim=True), torch.arange(len(pool)), 999).amin(-1)
    torch.testing.assert_close(got_i[:4], exact_copies[:4])  # duplicates: D bit-equal, lowest row
    assert got_i[:4].tolist() == [[1] * 14, [7] * 14, [0] * 14, [9] * 14]


@pytest.mark.parametrize("rows_per_chunk", [1, 50])
def test_pruned_search_tight_bound(rows_per_chunk):
    """Scaled and rotated copies of the queries make the bound tight: for a copy scaled by s, every
    ``||c_k(p) - c_k(q)|| = |1 - s|·r_k(p) = |r_k(p) - r_k(q)|``, so L = D up to rounding. The best rows (the copies
    scaled by 1.1, D = 0.1·Σ_k 2·w_k·r_k) must survive the skip tests: a bound inflated beyond the rounding
    margin loses them."""
    q = _poses(3, 14, 40, scale=100.0) + 50.0
    copies = [_rotate(q * s, a, about=5) for s, a in ((1.1, 0.7), (0.85, -1.9), (1.25, 2.5))]
    pool = torch.cat([_poses(40, 14, 41), copies[1], copies[0], _poses(40, 14, 42), copies[2]])
    idx = RetrievalIndex.build(pool, LSP14)
    budget = _pruned_budget(rows_per_chunk, len(q))
    scan_i, scan_d = idx.best(q, budget_bytes=budget)
    got_i, got_d = idx.best(q, budget_bytes=budget, pruned=True)
    assert torch.equal(got_i, scan_i) and torch.equal(got_d, scan_d)
    assert got_i.tolist() == [[43 + b] * 14 for b in range(3)]  # the copies scaled by 1.1


def test_pruned_search_skips_rows_on_a_clustered_pool():
    """Many jittered copies of few poses: the bound skips most pool rows (the exact D runs on the rest)."""
    g = torch.Generator().manual_seed(35)
    base = _poses(20, 14, 36)
    pool = base.repeat(100, 1, 1) + torch.randn(2000, 14, 2, generator=g)
    q = base[:6] + torch.randn(6, 14, 2, generator=g)
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    scan = idx.best(q)
    got = idx.best(q, pruned=True)
    assert torch.equal(got[0], scan[0]) and torch.equal(got[1], scan[1])
    assert idx.cache["last_survivors"] < 0.5 * 6 * 14 * len(idx)


def test_engine_retrieval_pruned_equals_scan():
    from gpumosaic import MosaicEngine, load_demo_pool

    pool = load_demo_pool()
    g = torch.Generator().manual_seed(37)
    q = pool.joints[:3] + torch.randn(3, 14, 2, generator=g) * 3
    occluded = torch.zeros(3, 14, dtype=torch.bool)
    occluded[1, 4:7] = True
    a = MosaicEngine(pool, size=64, retrieval="scan")(q, occluded)
    b = MosaicEngine(pool, size=64, retrieval="pruned")(q, occluded)
    assert torch.equal(a.matches, b.matches) and torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="retrieval"):
        MosaicEngine(pool, retrieval="fast")
