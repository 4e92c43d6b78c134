"""Memory contracts of issue 11: the engine keeps the caller's pool tensor, the index's size is its formula,
and the exact search's work buffers do not grow with the pool."""

import torch

from gpumosaic import MosaicEngine, load_demo_pool
from gpumosaic.retrieval import RetrievalIndex, ExactSearch
from gpumosaic.skeleton import LSP14


def test_engine_keeps_the_callers_uint8_images():
    pool = load_demo_pool()
    for device in (None, "cpu"):
        eng = MosaicEngine(pool, size=32, device=device)
        assert eng.pool.images.dtype == torch.uint8
        assert eng.pool.images.data_ptr() == pool.images.data_ptr()  # no copy at build


def test_index_size_formula():
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(37, 14, 2, generator=g) * 100
    idx = RetrievalIndex.build(pool, LSP14, mirror=True)
    nv, j, q = 74, 14, 2 * (len(LSP14.bones))
    assert idx.canonical.shape == (2, q, nv, j) and idx.weights.shape == (j, nv, j)
    assert idx.nbytes() == 4 * nv * j * (2 * q + j + 2)


def test_exact_search_buffers_do_not_grow_with_the_pool():
    g = torch.Generator().manual_seed(1)
    q = torch.rand(3, 14, 2, generator=g) * 100
    sizes = []
    for n in (500, 5000):
        idx = RetrievalIndex.build(torch.rand(n, 14, 2, generator=g) * 100, LSP14, mirror=True)
        pair, cp, wp = idx._query_side(q)
        search = ExactSearch(idx, pair, cp, wp, idx._chunk_size(3, 14, 1 << 18))
        sizes.append(sum(t.numel() * t.element_size() for t in vars(search).values()
                         if isinstance(t, torch.Tensor) and t.dim() > 0 and t.numel() > 14 * 3 * 14))
    assert sizes[0] == sizes[1] <= 1 << 18


_FAULTS = """
import json, resource, sys, torch
from gpumosaic import MosaicEngine, load_demo_pool
from gpumosaic.allocator import allocator_state

def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # three 16 MiB blocks written and freed together, like a batch's working memory
        blocks = [torch.ones(4 << 20) for _ in range(3)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
MosaicEngine(load_demo_pool(), size=32)  # on the CPU: sets the malloc thresholds
faults()
print(json.dumps({"state": allocator_state(), "before": before, "after": faults()}))
"""


def _run_faults(extra_env):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GPUMOSAIC_MALLOC"}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_keeps_freed_working_memory_between_batches():
    """Building an engine on the CPU sets glibc's thresholds: freed 16 MiB blocks are reused without page
    faults; with glibc's defaults (GPUMOSAIC_MALLOC=default opts out) the heap is trimmed after each round and
    every round faults its 3 x 4,096 pages in again."""
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        import pytest

        pytest.skip("not glibc")
    got = _run_faults({})
    assert got["state"] == "set"
    assert got["after"] < 1000
    opted_out = _run_faults({"GPUMOSAIC_MALLOC": "default"})
    assert opted_out["state"] == "opt-out" and opted_out["after"] > 5 * 3 * 4096
    user = _run_faults({"MALLOC_TRIM_THRESHOLD_": "1000000"})
    assert user["state"] == "user"
