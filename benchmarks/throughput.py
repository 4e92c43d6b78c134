"""Throughput of MosaicEngine per stage, on CPU and CUDA, against the per-image CPU ReferenceEngine.

For every pool size N, joint layout J (LSP14 = 14, MPII16 = 16 through the skeleton mapping of the demo
data), output size S, device and batch size B, it measures:

* end to end: ``MosaicEngine(query, occluded)`` (retrieval to blending) and the views stage before it;
  mosaics/s = B / median time;
* each stage, by calling the public stage functions in the engine's order on the same inputs (the engine's
  own result fields provide them): views (``sample_views`` + ``render_views``), retrieval (``fit_to_box`` +
  ``RetrievalIndex.best``), warps (``warp_gather``), probability maps (``interpolate_triangulated``),
  index map (``index_map`` + ``mosaic_from_index``), blending (``skeleton_distance``, ``window_half_width``,
  ``window_weights``, ``blend``). Their sum can exceed the engine's own time when the engine fuses or skips
  work (e.g. warps restricted to pixels with non-zero weight);
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA (pool included), process ``ru_maxrss`` on CPU
  (peak of the whole run so far);
* the :class:`~gpumosaic.reference.ReferenceEngine` (NumPy / OpenCV / SciPy, one image at a time) on a
  few of the same queries, and the ratio of mosaics/s, gpumosaic / reference.

Timing: CUDA stages with ``torch.cuda.Event`` pairs (device time), CPU with ``time.perf_counter``; warm-up
calls first, then the median over ``--repeats``. Larger pools are synthesised from the 480-image demo pool:
images repeated (materialised copies, so that gathers see realistic memory traffic: 80k uint8 160×160 RGB
images are 6.1 GB), joints jittered by N(0, 2 px) beyond the first copy so that retrieval has no ties.

    python benchmarks/throughput.py --quick                 # < 2 min on a 2-core CPU
    python benchmarks/throughput.py --devices cuda          # N ∈ {1k, 10k, 80k}, B ∈ {16, 64, 256}, ...
    python benchmarks/throughput.py --devices cpu --pool-sizes 1000 10000 --batch-sizes 8 32
    python benchmarks/throughput.py --side-by-side          # vs the per-image reference, in alternation

Writes ``benchmarks/results/throughput_<device>_<date>.json`` (one file per device) with the device name,
torch version, git commit, date, settings and every figure, and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpumosaic.threads import configure_threads, prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP (gpumosaic.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpumosaic import LSP14, MPII16, MosaicEngine, MosaicSettings, Pool2D, load_demo_mocap, load_demo_pool  # noqa: E402,E501
from gpumosaic.blend import blend, index_map, mosaic_from_index, window_half_width, window_weights  # noqa: E402
from gpumosaic.camera import render_views, sample_views  # noqa: E402
from gpumosaic.geometry import fit_to_box  # noqa: E402
from gpumosaic.raster import interpolate_triangulated, skeleton_distance  # noqa: E402
from gpumosaic.reference import ReferenceEngine  # noqa: E402
from gpumosaic.retrieval import RetrievalIndex, mirror_poses  # noqa: E402
from gpumosaic.skeleton import convert  # noqa: E402
from gpumosaic.warp import warp_gather  # noqa: E402

try:  # the engine validates at its entry only; stage functions called directly should not sync either
    from gpumosaic._check import unchecked
except ImportError:  # pragma: no cover
    unchecked = contextlib.nullcontext

STAGES = ("views", "retrieval", "warps", "probability", "index_map", "blending")
SKELETONS = {14: LSP14, 16: MPII16}


# ----------------------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else _cpu_name()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def demo_sources(num_joints: int):
    """Demo pool and mocap in the layout with ``num_joints`` joints (MPII16 through the skeleton mapping)."""
    pool, mocap = load_demo_pool(), load_demo_mocap()
    skeleton = SKELETONS[num_joints]
    if skeleton is LSP14:
        return pool, mocap.poses, skeleton
    pool = Pool2D(pool.images, convert(pool.joints, LSP14, skeleton), skeleton=skeleton, ids=pool.ids)
    return pool, convert(mocap.poses, LSP14, skeleton), skeleton


def synthetic_pool(base: Pool2D, n: int, seed: int = 0) -> Pool2D:
    """N entries from the demo pool: images repeated (copied), joints jittered by N(0, 2 px) after the first
    ``len(base)`` entries (which stay exact)."""
    rows = torch.arange(n) % len(base)
    g = torch.Generator().manual_seed(seed)
    jitter = torch.randn(n, base.joints.shape[1], 2, generator=g) * 2.0
    jitter[: min(n, len(base))] = 0
    return Pool2D(base.images[rows], base.joints[rows] + jitter, skeleton=base.skeleton,
                  ids=torch.arange(n, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


def timed(fn, device: str, repeats: int, warmup: int):
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs, and its last output."""
    out = None
    for _ in range(warmup):
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def retrieval_index(engine: MosaicEngine, pool: Pool2D) -> RetrievalIndex:
    """The retrieval index over the virtual pool, rebuilt with the public functions (not engine internals)."""
    s = engine.settings
    joints = pool.joints.to(engine.device).float()
    box, _ = fit_to_box(joints, s.size, s.margin)
    if s.mirror:
        box_m, _ = fit_to_box(mirror_poses(joints, pool.skeleton, width=pool.image_size[1]), s.size, s.margin)
        box = torch.cat([box, box_m], 0)
    return RetrievalIndex.build(box, pool.skeleton)


def stage_times(engine, pool, index, poses, skeleton, batch, device, repeats, warmup, seed):
    """Per-stage medians (seconds) with the public stage functions in the engine's order, and the views."""
    s = engine.settings
    size = (s.size, s.size)
    times = {}
    gen = torch.Generator(device=device).manual_seed(seed)

    def views():
        az, el = sample_views(batch, 1, generator=gen)
        return render_views(poses, skeleton, az, el)

    with unchecked():
        times["views"], vb = timed(views, device, repeats, warmup)
    query, occluded = vb.pose2d[:, 0].contiguous(), vb.occluded[:, 0].contiguous()
    res = engine(query, occluded)  # the engine's own intermediate results feed the stages below
    searched = res.searched
    images = engine.pool.images

    with unchecked():
        def retrieval():
            p, _ = fit_to_box(query, s.size, s.margin)
            return index.best(p, searched, budget_bytes=engine.retrieval_budget)[0]

        times["retrieval"], matches = timed(retrieval, device, repeats, warmup)
        mask = searched[..., None, None, None].to(torch.float32)

        def warps():
            return warp_gather(images, res.source.clamp_min(0), res.query_from_stored, size,
                               padding_mode=s.padding_mode, chunk=s.warp_chunk) * mask

        times["warps"], warped = timed(warps, device, repeats, warmup)
        b, num_j = query.shape[:2]

        def probability():
            values = torch.exp(-(res.query[:, None] - res.aligned).square().sum(-1) / s.sigma**2)
            prob = interpolate_triangulated(res.aligned.reshape(b * num_j, num_j, 2),
                                            values.reshape(b * num_j, num_j), size)
            return prob.view(b, num_j, *size) * mask[:, :, 0]

        times["probability"], prob = timed(probability, device, repeats, warmup)

        def stitch():
            index = index_map(prob, searched)
            return index, mosaic_from_index(warped, index)

        times["index_map"], (index, _) = timed(stitch, device, repeats, warmup)

        def blending():
            distance = skeleton_distance(res.query, skeleton, size)
            weights = window_weights(index, num_j, window_half_width(distance, s.alpha, s.beta))
            return blend(warped, weights)

        times["blending"], _ = timed(blending, device, repeats, warmup)
    agree = {
        "matches_equal_engine": bool((matches == res.matches).all()),
        "index_map_equal_engine": float((index == res.index_map).float().mean()),
    }
    return times, (query, occluded), agree


def reference_times(pool: Pool2D, skeleton, size: int, queries, occluded, count: int):
    """Median seconds per image of the ReferenceEngine and its per-stage medians."""
    ref = ReferenceEngine(pool, skeleton, MosaicSettings(size=size))
    q, o = queries[:count].cpu().double().numpy(), occluded[:count].cpu().numpy()
    ref(q[0], o[0])  # warm-up (first Qhull / OpenCV calls)
    totals, stages = [], {k: [] for k in STAGES if k != "views"}
    for qi, oi in zip(q, o):
        t0 = time.perf_counter()
        r = ref(qi, oi)
        totals.append(time.perf_counter() - t0)
        for k in stages:
            stages[k].append(r.timings[k])
    return statistics.median(totals), {k: statistics.median(v) for k, v in stages.items()}


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def run_device(device, args, ref_cache, log):
    rows = []
    for num_joints in args.joints:
        base, mocap_poses, skeleton = demo_sources(num_joints)
        for n in args.pool_sizes:
            cpu_pool = synthetic_pool(base, n, seed=args.seed)
            pool = cpu_pool if device == "cpu" else cpu_pool.to(device)
            for size in args.sizes:
                t0 = time.perf_counter()
                engine = MosaicEngine(pool, skeleton, size=size, device=device, compile=args.compile or False)
                if device == "cuda":
                    torch.cuda.synchronize()
                build_s = time.perf_counter() - t0
                index = retrieval_index(engine, pool)
                for batch in args.batch_sizes:
                    key = dict(device=device, pool_size=n, joints=num_joints, size=size, batch=batch)
                    log(f"  {key} ...")
                    try:
                        g = torch.Generator().manual_seed(args.seed + batch)
                        pick = torch.randint(len(mocap_poses), (batch,), generator=g)
                        poses = mocap_poses[pick].to(device)
                        stages, (query, occluded), agree = stage_times(
                            engine, pool, index, poses, skeleton, batch, device, args.repeats,
                            args.warmup if device == "cuda" else 0, args.seed)
                        if device == "cuda":
                            torch.cuda.synchronize()
                            torch.cuda.reset_peak_memory_stats()
                        engine_s, _ = timed(lambda: engine(query, occluded), device, args.repeats, args.warmup)
                        peak = (torch.cuda.max_memory_allocated() if device == "cuda" else None)
                    except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - device dependent
                        rows.append({**key, "error": f"out of memory: {err}".splitlines()[0]})
                        torch.cuda.empty_cache()
                        continue
                    rkey = (n, num_joints, size)
                    if rkey not in ref_cache and args.reference_images > 0:
                        ref_cache[rkey] = reference_times(cpu_pool, skeleton, size, query, occluded,
                                                          args.reference_images)
                    ref_s, ref_stages = ref_cache.get(rkey, (None, None))
                    engine_rate = batch / engine_s
                    row = {
                        **key,
                        "engine_s": engine_s,
                        "engine_mosaics_per_s": engine_rate,
                        "end_to_end_mosaics_per_s": batch / (engine_s + stages["views"]),
                        "stage_s": stages,
                        "stage_sum_s": sum(stages.values()),
                        "engine_build_s": build_s,
                        "engine_settings": dataclasses.asdict(engine.settings),
                        "pool_image_bytes": cpu_pool.images.numel() * cpu_pool.images.element_size(),
                        "peak_cuda_bytes": peak,
                        "maxrss_mb": _maxrss_mb(),
                        "reference_s_per_image": ref_s,
                        "reference_stage_s": ref_stages,
                        "speedup_vs_reference": (engine_rate * ref_s) if ref_s else None,
                        "stage_check": agree,
                    }
                    rows.append(row)
                    log("    " + _row_text(row))
                del engine, index
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            del pool, cpu_pool
            gc.collect()
    return rows


def _fmt(x, scale=1.0, digits=1):
    return "-" if x is None else f"{x * scale:.{digits}f}"


def _row_text(r: dict) -> str:
    if "error" in r:
        return f"{r['device']:>4} N={r['pool_size']} J={r['joints']} S={r['size']} B={r['batch']}: {r['error']}"
    st = r["stage_s"]
    mem = (f"{r['peak_cuda_bytes'] / 2**30:.2f} GiB cuda" if r["peak_cuda_bytes"] is not None
           else f"{r['maxrss_mb'] / 1024:.2f} GiB rss")
    return (f"{r['engine_mosaics_per_s']:.1f} mosaics/s (engine {r['engine_s'] * 1e3:.0f} ms), "
            + ", ".join(f"{k} {st[k] * 1e3:.0f}" for k in STAGES)
            + f" ms; {mem}; reference {_fmt(r['reference_s_per_image'], 1e3, 0)} ms/img; "
            f"x{_fmt(r['speedup_vs_reference'])}")


def print_table(rows: list[dict]) -> None:
    head = ["dev", "N", "J", "S", "B", "mosaic/s", "e2e/s", "engine ms"] + [f"{k} ms" for k in STAGES] + [
        "peak mem", "ref ms/img", "speedup"]
    table = [head]
    for r in rows:
        if "error" in r:
            table.append([r["device"], str(r["pool_size"]), str(r["joints"]), str(r["size"]), str(r["batch"]),
                          r["error"][:20]] + [""] * (len(head) - 6))
            continue
        mem = (f"{r['peak_cuda_bytes'] / 2**30:.2f}G gpu" if r["peak_cuda_bytes"] is not None
               else f"{r['maxrss_mb'] / 1024:.2f}G rss")
        table.append([
            r["device"], str(r["pool_size"]), str(r["joints"]), str(r["size"]), str(r["batch"]),
            f"{r['engine_mosaics_per_s']:.1f}", f"{r['end_to_end_mosaics_per_s']:.1f}",
            f"{r['engine_s'] * 1e3:.0f}",
            *[f"{r['stage_s'][k] * 1e3:.1f}" for k in STAGES],
            mem, _fmt(r["reference_s_per_image"], 1e3, 0), _fmt(r["speedup_vs_reference"], 1.0, 1),
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small run (N=1000, B=8, J=14 and 16, S=220, 3 repeats): < 2 min on a 2-core CPU")
    ap.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                    help="default: cpu, and cuda where present")
    ap.add_argument("--pool-sizes", type=int, nargs="+", default=None, help="default 1000 10000 80000")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="default 16 64 256 on CUDA, 8 32 on CPU")
    ap.add_argument("--joints", type=int, nargs="+", choices=[14, 16], default=None, help="default 14 16")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="default 220 256")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per figure (median); default 5")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first; default 2")
    ap.add_argument("--reference-images", type=int, default=None,
                    help="images timed with the ReferenceEngine per (N, J, S); default 4, 0 to skip")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (gpumosaic.threads.configure_threads); default: the free cores (allowed "
                         "less busy, at start-up), with OMP_WAIT_POLICY=PASSIVE (1 with --quick, as the documented "
                         "figures)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--consumers", action="store_true",
                    help="also time AlexNet and ResNet-50 training steps at 220x220 (images/s) on each device")
    ap.add_argument("--consumer-batch", type=int, default=None, help="default 256 on CUDA, 16 on CPU")
    ap.add_argument("--amp", action="store_true", help="consumers under torch.autocast (bfloat16)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    sbs = ap.add_argument_group("side by side (benchmarks/side_by_side.py)")
    sbs.add_argument("--side-by-side", action="store_true",
                     help="time gpumosaic and the per-image ReferenceEngine in alternation, one process, one CPU "
                          "thread, at N = --pool-sizes (default 1000 10000 80000), B = --batch, S = 220, J = 14")
    sbs.add_argument("--batch", type=int, default=8, help="side by side: the engine's batch (default 8)")
    sbs.add_argument("--rounds", type=int, default=5, help="side by side: alternating rounds per N (default 5)")
    sbs.add_argument("--fill-images", choices=["auto", "all", "base"], default="auto",
                     help="side by side: materialise every pool image (all) or only the 480 demo images (base)")
    sbs.add_argument("--batch-curve", type=int, nargs="*", default=[1, 4, 8, 16, 32],
                     help="side by side: batch sizes of the cost-per-mosaic curve (engine only); none to skip")
    sbs.add_argument("--curve-repeats", type=int, default=2)
    sbs.add_argument("--compile", choices=["engine", "retrieval"], default=None,
                     help="MosaicEngine(compile=...) (both modes): the whole step, or the retrieval kernel only")
    args = ap.parse_args(argv)
    if args.side_by_side:
        args.pool_sizes = args.pool_sizes or [1000, 10000, 80000]
        args.size = (args.sizes or [220])[0]
        if args.reference_images is None:
            args.reference_images = args.batch
        return args
    quick = dict(pool_sizes=[1000], batch_sizes=[8], joints=[14, 16], sizes=[220], repeats=3, warmup=1,
                 reference_images=2, threads=1)
    full = dict(pool_sizes=[1000, 10000, 80000], batch_sizes=None, joints=[14, 16], sizes=[220, 256],
                repeats=5, warmup=2, reference_images=4, threads=None)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        ap.error("--devices cuda requested but torch.cuda.is_available() is False")
    return args


def consumer_rates(device: str, batch: int, size: int, repeats: int, warmup: int, log, amp: bool = False) -> dict:
    """Images/s of one training step (forward, backward, SGD) of AlexNet and ResNet-50 on pre-made tensors.

    The consumer side of the comparison: mosaics must arrive at least this fast. torchvision models with
    ``weights=None`` (no download); AlexNet with a 1000-way head, as the classifier's cost does not depend
    on K much.
    """
    import torchvision

    out = {}
    for name, ctor in (("alexnet", torchvision.models.alexnet), ("resnet50", torchvision.models.resnet50)):
        model = ctor(weights=None).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.rand(batch, 3, size, size, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):  # bf16: no loss scaling
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        seconds, _ = timed(step, device, repeats, warmup)
        out[name] = {"batch": batch, "size": size, "amp": "bf16" if amp else None, "step_s": seconds,
                     "images_per_s": batch / seconds}
        log(f"  consumer {name}{' (AMP bf16)' if amp else ''}: batch {batch} at {size}x{size}: "
            f"{batch / seconds:.1f} images/s")
        del model, opt
    return out


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    if args.side_by_side:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from side_by_side import run as run_side_by_side

        return [run_side_by_side(args, REPO, _git("rev-parse", "HEAD"),
                                 bool(_git("status", "--porcelain", "--untracked-files=no")),
                                 lambda msg: print(msg, flush=True))]
    configure_threads(args.threads)
    t_start = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    ref_cache: dict = {}
    written = []
    all_rows = []
    for device in args.devices:
        batches = args.batch_sizes or ([16, 64, 256] if device == "cuda" else [8, 32])
        dev_args = argparse.Namespace(**{**vars(args), "batch_sizes": batches})
        log(f"[{device}] {device_name(device)}")
        t0 = time.perf_counter()
        rows = run_device(device, dev_args, ref_cache, log)
        consumers = None
        if args.consumers:
            cbatch = args.consumer_batch or (256 if device == "cuda" else 16)
            consumers = consumer_rates(device, cbatch, 220, args.repeats, max(1, args.warmup), log, amp=args.amp)
        now = _dt.datetime.now(_dt.timezone.utc).astimezone()
        result = {
            "benchmark": "throughput",
            "device": device,
            "device_name": device_name(device),
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda if device == "cuda" else None,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "git_commit": commit,
            "git_dirty": dirty,
            "date": now.isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - t0,
            "settings": {
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(dev_args).items()},
                "engine_defaults": dataclasses.asdict(MosaicSettings()),
                "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                                   "OPENBLAS_NUM_THREADS",
                                                   "MALLOC_MMAP_MAX_", "CUDA_VISIBLE_DEVICES") if k in os.environ},
            },
            "notes": {
                "engine_s": "median seconds of MosaicEngine(query, occluded) for one batch (retrieval..blending)",
                "end_to_end_mosaics_per_s": "B / (engine_s + views stage)",
                "stage_s": "median seconds of the public stage functions called in the engine's order",
                "peak_cuda_bytes": "torch.cuda.max_memory_allocated during the timed engine calls (pool included)",
                "maxrss_mb": "process peak resident memory so far (ru_maxrss), CPU runs",
                "reference_s_per_image": "median seconds per mosaic of ReferenceEngine (NumPy/OpenCV/SciPy, CPU)",
                "speedup_vs_reference": "engine_mosaics_per_s * reference_s_per_image",
            },
            "results": rows,
            "consumers": consumers,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"throughput_{_slug(device if device == 'cpu' else device_name(device))}_" \
                          f"{now.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=1))
        written.append(path)
        all_rows += rows
    print()
    print_table(all_rows)
    print(f"\nwrote {', '.join(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in written)}"
          f" in {time.perf_counter() - t_start:.0f} s (git {commit[:10] if commit else '?'}"
          f"{' + local changes' if dirty else ''})")
    return written


if __name__ == "__main__":
    main()
