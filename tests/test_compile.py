"""The hard engine as one graph: ``torch.compile(engine.synthesise, fullgraph=True)`` against the eager engine.

The default test traces with the ``aot_eager`` backend: the same Dynamo capture and AOT functionalisation as
inductor (a graph break, ``.item()`` or a data-dependent shape fails it), without generating C++ (seconds,
not minutes, on a 2-core CPU). The inductor build of the retrieval kernel is the ``slow`` test
(``pytest -m slow``).
"""

import pytest
import torch

from gpumosaic import MosaicEngine, Pool2D, load_demo_pool
from gpumosaic._check import unchecked
from gpumosaic.retrieval import RetrievalIndex
from gpumosaic.skeleton import LSP14


def _small_engine(**kw):
    demo = load_demo_pool()
    pool = Pool2D(demo.images[:24], demo.joints[:24], ids=demo.ids[:24])
    return MosaicEngine(pool, size=28, **kw)


def _queries():
    g = torch.Generator().manual_seed(3)
    q = torch.rand(2, 14, 2, generator=g) * 90 + 20
    searched = torch.ones(2, 14, dtype=torch.bool)
    searched[1, [2, 7]] = False
    return q, searched


def _assert_same(got, ref):
    torch.testing.assert_close(got.matches, ref.matches, rtol=0, atol=0)
    torch.testing.assert_close(got.query_from_stored, ref.query_from_stored)
    torch.testing.assert_close(got.probability, ref.probability)
    assert (got.index_map == ref.index_map).float().mean() > 0.999
    torch.testing.assert_close(got.images, ref.images, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.mosaic_unblended, ref.mosaic_unblended, rtol=0, atol=1e-4)


def test_engine_step_is_one_graph_and_equals_eager():
    eng = _small_engine()
    q, searched = _queries()
    with unchecked():
        ref = eng.synthesise(q, searched)  # eager: sparse warps on the CPU
        dense = _small_engine(warps="dense").synthesise(q, searched)
        compiled = torch.compile(eng.synthesise, fullgraph=True, dynamic=False, backend="aot_eager")
        got = compiled(q, searched)
    assert got.warped is not None  # dense warps inside a graph
    _assert_same(got, ref)
    _assert_same(got, dense)


def test_exact_retrieval_traced_in_chunks_equals_eager():
    g = torch.Generator().manual_seed(5)
    pool = torch.rand(300, 14, 2, generator=g) * 200
    pool = torch.cat([pool, pool[:50]], 0)  # exact duplicates: ties must go to the lower index
    q = torch.cat([pool[[3, 10]], torch.rand(2, 14, 2, generator=g) * 200], 0)
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    budget = 4 * 14 * 4 * 97  # traced chunks of 97 rows: 8 chunks, the last one shorter
    with unchecked():
        got = torch.compile(lambda x: idx.best(x, budget_bytes=budget), fullgraph=True, backend="aot_eager")(q)
    ref = idx.best(q)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1])


def test_compile_setting_rejects_sparse_warps():
    with pytest.raises(ValueError, match="sparse"):
        _small_engine(compile=True, warps="sparse")


def test_compile_engine_on_cpu_is_refused_with_the_reason():
    """Inductor's C++ build of the whole step aborts on an index bounds check inside the fused raster kernel
    (torch 2.14.1, docs/performance.md): refused on the CPU with a clear error instead of a crash."""
    with pytest.raises(ValueError, match="compile='retrieval'"):
        _small_engine(compile=True)


def test_compile_setting_values():
    with pytest.raises(ValueError, match="compile"):
        _small_engine(compile="fast")
    assert _small_engine(compile="retrieval", warps="sparse").settings.compile == "retrieval"


@pytest.mark.slow
def test_compiled_retrieval_kernel_equals_eager():
    """``best(compiled=True)``: chunks through one inductor kernel, the last chunk overlapping; ties included."""
    g = torch.Generator().manual_seed(6)
    pool = torch.rand(250, 14, 2, generator=g) * 200
    pool = torch.cat([pool, pool[:60]], 0)
    q = torch.cat([pool[[4, 20]], torch.rand(3, 14, 2, generator=g) * 200], 0)
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    got = idx.best(q, budget_bytes=5 * 14 * 4 * 150, compiled=True)  # chunks of 150 rows over 620
    ref = idx.best(q)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1])
