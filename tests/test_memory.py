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
import json, resource, torch
from gpumosaic import MosaicEngine, load_demo_mocap, load_demo_pool
from gpumosaic.allocator import allocator_state

torch.set_num_threads(1)
engine = MosaicEngine(load_demo_pool())  # on the CPU: sets the malloc thresholds
query = load_demo_mocap().poses[:8, :, :2] * 100
for _ in range(2):
    engine(query)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    engine(query)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 2
print(json.dumps({"state": allocator_state(), "faults_per_batch": faults}))
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
    """Building an engine on the CPU sets glibc's thresholds: after a warm-up, a batch of 8 mosaics reuses the
    freed working memory (few page faults); with glibc's defaults (GPUMOSAIC_MALLOC=default opts out) freed
    blocks go back to the system and are faulted in again (measured: ~100,000 faults per batch vs ~200)."""
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        import pytest

        pytest.skip("not glibc")
    got = _run_faults({})
    opted_out = _run_faults({"GPUMOSAIC_MALLOC": "default"})
    assert got["state"] == "set" and opted_out["state"] == "opt-out"
    assert got["faults_per_batch"] * 10 < opted_out["faults_per_batch"]
    assert _run_faults({"MALLOC_TRIM_THRESHOLD_": "1000000"})["state"] == "user"
