"""Side-by-side mode of ``benchmarks/throughput.py``: gpumosaic and the per-image reference in one process.

For each pool size N (default 1,000, 10,000 and 80,000 stored images, mirrored ×2), on one CPU thread:

* the same pool (demo images, joints jittered by N(0, 2 px) beyond the first 480) and the same queries
  (views of demo mocap poses) go to :class:`~gpumosaic.MosaicEngine` (B = 8, S = 220, J = 14, blended: the
  defaults) and to :class:`~gpumosaic.reference.ReferenceEngine` (NumPy / OpenCV / SciPy, one image at a time);
* they are timed **in alternation**, round by round (one engine batch, the engine's retrieval alone, then B
  reference images), so that both see the same machine load; the ratio is taken per round and its median and
  range are reported, with wall and process CPU time (``time.process_time``, which a loaded machine perturbs
  less than the wall clock) and the 1-minute load average before and after;
* memory from ``/proc/self/status``: resident set after the pool is made, after the engine is built (the
  index and tables; the pool is not copied), and a batch's working memory (peak resident ``VmHWM`` during one
  engine call, reset through ``/proc/self/clear_refs``, minus the resident set before it), each after
  ``malloc_trim`` so that memory freed by an earlier step does not hide a new allocation;
* the cost per mosaic against B (engine only, CPU time) at each N.

Pool images: ``--fill-images all`` materialises every image (80,000 × 3 × 160² uint8 = 6.1 GB);
``--fill-images base`` copies the 480 demo images into the first rows of an untouched ``torch.empty`` tensor
and leaves the other rows as never-written pages (read as zeros, no resident memory): the same shapes and the
same arithmetic, less realistic cache traffic for the warps (≈ 9 MB per batch either way). ``auto`` (default)
picks ``all`` when it needs less than a third of ``MemAvailable``.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gpumosaic import LSP14, MosaicEngine, Pool2D, load_demo_mocap, load_demo_pool
from gpumosaic.camera import render_views, sample_views
from gpumosaic.geometry import fit_to_box
from gpumosaic.reference import ReferenceEngine

try:  # the engine validates at its entry only; the retrieval called directly should not check either
    from gpumosaic._check import unchecked
except ImportError:  # pragma: no cover
    import contextlib

    unchecked = contextlib.nullcontext

try:  # the exact retrieval's mode (issue 11: scan or pruned) and the allocator setting, where present
    from gpumosaic.allocator import allocator_state
    from gpumosaic.settings import resolved_pruning
except ImportError:  # pragma: no cover
    allocator_state = resolved_pruning = None


# ----------------------------------------------------------------------------------------------------------
# Memory (Linux /proc)
# ----------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current resident set (``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``), so that resident-set deltas measure
    what a step keeps or allocates rather than what an earlier step freed."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def make_pool(base: Pool2D, n: int, fill: str, seed: int) -> tuple[Pool2D, str]:
    """N entries: joints of ``base`` repeated, jittered by N(0, 2 px) beyond the first ``len(base)``; images
    copied into every row (``fill == "all"``) or only into the first ``len(base)`` rows (``"base"``)."""
    rows = torch.arange(n) % len(base)
    g = torch.Generator().manual_seed(seed)
    jitter = torch.randn(n, base.joints.shape[1], 2, generator=g) * 2.0
    jitter[: min(n, len(base))] = 0
    image_bytes = n * base.images[0].numel()
    if fill == "auto":
        avail = mem_available_mb()
        fill = "all" if avail is None or image_bytes / 2**20 < avail / 3 else "base"
    images = torch.empty((n, *base.images.shape[1:]), dtype=torch.uint8)
    if fill == "all":
        for s in range(0, n, len(base)):  # copies, so that gathers see realistic memory traffic
            e = min(s + len(base), n)
            images[s:e] = base.images[: e - s]
    else:
        k = min(n, len(base))
        images[:k] = base.images[:k]
    return Pool2D(images, base.joints[rows] + jitter, skeleton=base.skeleton,
                  ids=torch.arange(n, dtype=torch.long)), fill


def make_queries(mocap_poses: torch.Tensor, rounds: int, batch: int, seed: int):
    """``rounds`` batches of ``batch`` views of mocap poses: list of (query (B, J, 2), occluded (B, J))."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in range(rounds):
        pick = torch.randint(len(mocap_poses), (batch,), generator=g)
        az, el = sample_views(batch, 1, generator=torch.Generator().manual_seed(seed + 1 + r))
        vb = render_views(mocap_poses[pick], LSP14, az, el)
        out.append((vb.pose2d[:, 0].contiguous(), vb.occluded[:, 0].contiguous()))
    return out


def _clock(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ----------------------------------------------------------------------------------------------------------
# One pool size
# ----------------------------------------------------------------------------------------------------------


def measure_pool_size(n: int, args, base: Pool2D, mocap_poses: torch.Tensor, log) -> dict:
    load_before = os.getloadavg()
    trim_heap()
    rss0 = rss_mb()
    pool, fill = make_pool(base, n, args.fill_images, args.seed)
    trim_heap()
    rss_pool = rss_mb()
    t_build, c_build, engine = _clock(lambda: MosaicEngine(pool, LSP14, size=args.size, compile=args.compile)
                                      if args.compile else MosaicEngine(pool, LSP14, size=args.size))
    trim_heap()
    rss_engine = rss_mb()
    index_bytes = engine.index.nbytes()
    t_ref_build, _, ref = _clock(lambda: ReferenceEngine(pool, LSP14, engine.settings))  # the same settings
    rss_ref = rss_mb()
    queries = make_queries(mocap_poses, args.rounds + 1, args.batch, args.seed)
    s = engine.settings

    def run_engine(q, o):
        return engine(q, o)

    retrieval_mode = {}  # the engine's own choice (scan or pruned), where this checkout has one
    if resolved_pruning is not None:
        retrieval_mode["pruned"] = resolved_pruning(s, engine.device, len(engine.index))

    def run_retrieval(q, o):
        with unchecked():
            p, _ = fit_to_box(q, s.size, s.margin)
            searched = ~o
            searched = searched | ~searched.any(dim=1, keepdim=True)
            return engine.index.best(p, searched, budget_bytes=engine.retrieval_budget, **retrieval_mode)

    def run_reference(q, o, count):
        qn, on = q.double().numpy(), o.numpy()
        ret = 0.0
        for i in range(count):
            ret += ref(qn[i], on[i]).timings["retrieval"]
        return ret

    # Warm-up (first OpenCV / Qhull calls, allocator, compilation when asked for).
    t_first, _, _ = _clock(lambda: run_engine(*queries[0]))
    trim_heap()
    rss_first = rss_mb()  # after the first call: includes tables built lazily (the pruned search's bound table)
    run_reference(*queries[0], 1)
    ref_count = min(args.batch, args.reference_images) if args.reference_images else args.batch

    # Batch working memory: peak resident during one engine call above the resident set before it.
    trim_heap()
    rss_before_call = rss_mb()
    peak_ok = reset_peak()
    run_engine(*queries[0])
    batch_peak = (peak_mb() - rss_before_call) if peak_ok else None

    rounds = []
    for r in range(args.rounds):
        q, o = queries[r + 1]
        ew, ec, _ = _clock(lambda: run_engine(q, o))
        rw, rc, _ = _clock(lambda: run_retrieval(q, o))
        fw, fc, fret = _clock(lambda: run_reference(q, o, ref_count))
        rounds.append({
            "engine_wall_s": ew, "engine_cpu_s": ec, "retrieval_wall_s": rw, "retrieval_cpu_s": rc,
            "reference_wall_s": fw, "reference_cpu_s": fc, "reference_images": ref_count,
            "reference_retrieval_s": fret, "loadavg_1min": os.getloadavg()[0],
        })
        log(f"    round {r}: engine {args.batch / ew:.1f} mosaics/s wall ({args.batch / ec:.1f} cpu), "
            f"reference {ref_count / fw:.2f} img/s wall ({ref_count / fc:.2f} cpu), "
            f"ratio {(args.batch / ew) / (ref_count / fw):.1f} wall / {(args.batch / ec) / (ref_count / fc):.1f} "
            f"cpu, load {os.getloadavg()[0]:.1f}")

    def rate(key, count):
        return [count / x[key] for x in rounds]

    b = args.batch
    res = {
        "pool_size": n, "virtual_pool_rows": len(engine.index), "batch": b, "size": args.size, "joints": 14,
        "fill_images": fill, "compile": args.compile or False,
        "retrieval": ("pruned" if retrieval_mode.get("pruned") else "scan"),
        "allocator": allocator_state() if allocator_state is not None else None,
        "engine_build_wall_s": t_build, "engine_build_cpu_s": c_build, "engine_first_call_wall_s": t_first,
        "reference_build_wall_s": t_ref_build,
        "engine_mosaics_per_s_wall": _summary(rate("engine_wall_s", b)),
        "engine_mosaics_per_s_cpu": _summary(rate("engine_cpu_s", b)),
        "engine_ms_per_mosaic_cpu": _summary([1e3 * x["engine_cpu_s"] / b for x in rounds]),
        "retrieval_ms_per_mosaic_cpu": _summary([1e3 * x["retrieval_cpu_s"] / b for x in rounds]),
        "retrieval_share_cpu": _summary([x["retrieval_cpu_s"] / x["engine_cpu_s"] for x in rounds]),
        "reference_images_per_s_wall": _summary([x["reference_images"] / x["reference_wall_s"] for x in rounds]),
        "reference_images_per_s_cpu": _summary([x["reference_images"] / x["reference_cpu_s"] for x in rounds]),
        "reference_retrieval_share": _summary([x["reference_retrieval_s"] / x["reference_wall_s"] for x in rounds]),
        "ratio_wall": _summary([(b / x["engine_wall_s"]) / (x["reference_images"] / x["reference_wall_s"])
                                for x in rounds]),
        "ratio_cpu": _summary([(b / x["engine_cpu_s"]) / (x["reference_images"] / x["reference_cpu_s"])
                               for x in rounds]),
        "memory_mb": {
            "rss_start": rss0, "rss_after_pool": rss_pool, "rss_after_engine": rss_engine,
            "rss_after_reference": rss_ref, "rss_after_first_call": rss_first,
            "first_call_delta": None if rss_first is None else rss_first - rss_ref,
            "pool_images": pool.images.numel() / 2**20,
            "pool_images_resident": None if rss_pool is None else rss_pool - rss0,
            "engine_build_delta": None if rss_engine is None else rss_engine - rss_pool,
            "index_tables": index_bytes / 2**20,
            "batch_working_peak": batch_peak,
        },
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "rounds": rounds,
    }
    if args.batch_curve:
        curve = {}
        for bb in args.batch_curve:
            qs = make_queries(mocap_poses, 1, bb, args.seed + 100)[0]
            engine(*qs)  # warm
            cpu = [_clock(lambda: engine(*qs))[1] * 1e3 / bb for _ in range(args.curve_repeats)]
            curve[str(bb)] = {"ms_per_mosaic_cpu": min(cpu), "all": cpu, "loadavg_1min": os.getloadavg()[0]}
            log(f"    B={bb}: {min(cpu):.1f} ms/mosaic (cpu, best of {args.curve_repeats})")
        res["batch_curve"] = curve
    del engine, ref, pool
    gc.collect()
    return res


def run(args, repo: Path, commit: str | None, dirty: bool, log) -> Path:
    """Run the side-by-side comparison and write ``benchmarks/results/side_by_side_cpu_<date>.json``."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    base, mocap = load_demo_pool(), load_demo_mocap()
    t0 = time.perf_counter()
    rows = []
    for n in args.pool_sizes:
        log(f"  N = {n} (load {os.getloadavg()[0]:.1f}) ...")
        r = measure_pool_size(n, args, base, mocap.poses, log)
        m = r["memory_mb"]
        log(f"  N = {n}: engine {r['engine_mosaics_per_s_wall']['median']:.1f} mosaics/s wall, "
            f"{r['engine_mosaics_per_s_cpu']['median']:.1f} cpu; x{r['ratio_wall']['median']:.1f} wall / "
            f"x{r['ratio_cpu']['median']:.1f} cpu vs reference; retrieval "
            f"{r['retrieval_ms_per_mosaic_cpu']['median']:.1f} ms/mosaic; index {m['index_tables']:.0f} MB, "
            f"build +{m['engine_build_delta']:.0f} MB rss, batch peak +{m['batch_working_peak']:.0f} MB")
        rows.append(r)
    now = _dt.datetime.now(_dt.timezone.utc).astimezone()
    out = {
        "benchmark": "side_by_side",
        "device": "cpu",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": dirty,
        "date": now.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "cpu_count": os.cpu_count(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": {
            "ratio_wall": "per round: engine mosaics/s over reference images/s, both on the wall clock",
            "ratio_cpu": "the same on process CPU time (less sensitive to other processes on the machine)",
            "memory_mb": "VmRSS / VmHWM of this process (MiB); batch_working_peak = peak during one engine "
                         "call minus the resident set before it",
            "loadavg": "os.getloadavg() (1, 5, 15 min) of the whole machine",
        },
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"side_by_side_cpu_{now.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    log(f"wrote {path.relative_to(repo) if path.is_relative_to(repo) else path}")
    return path
