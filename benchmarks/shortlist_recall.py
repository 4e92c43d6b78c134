"""Recall@1 and time of the matmul shortlist + exact re-rank against the exact retrieval (DESIGN.md step 4).

    python benchmarks/shortlist_recall.py [--pool-size 20000] [--batch 32] [--sizes 16 64 256]

The pool is the prepared real pool when present, else the demo pool, repeated with 2-px joint jitter up to
``--pool-size`` entries (mirrored: twice as many rows); queries are views of mocap poses (render_views).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpumosaic.threads import configure_threads, prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP (gpumosaic.threads)

import torch  # noqa: E402

from gpumosaic.camera import render_views, sample_views  # noqa: E402
from gpumosaic.cli import load_sources  # noqa: E402
from gpumosaic.geometry import fit_to_box  # noqa: E402
from gpumosaic.retrieval import RetrievalIndex  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-size", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the cores this process may use; gpumosaic.threads)")
    args = ap.parse_args()
    print(configure_threads(args.threads).describe())
    device = torch.device(args.device)
    pool, mocap = load_sources(None, None, device)
    g = torch.Generator().manual_seed(args.seed)
    reps = -(-args.pool_size // len(pool))
    joints = pool.joints.float().repeat(reps, 1, 1)[: args.pool_size]
    joints = joints + torch.randn(joints.shape, generator=g).to(device) * 2.0
    box, _ = fit_to_box(joints, 220)
    index = RetrievalIndex.build(box, pool.skeleton, mirror=True)
    idx = torch.randint(len(mocap), (args.batch,), generator=g).to(device)
    az, el = sample_views(args.batch, 1, generator=torch.Generator(device=device).manual_seed(args.seed))
    views = render_views(mocap.poses[idx], mocap.skeleton, az, el)
    query, _ = fit_to_box(views.pose2d[:, 0], 220)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    exact, exact_d = index.best(query)
    sync()
    t_exact = time.perf_counter() - t
    print(f"pool {len(index)} rows (mirrored), batch {args.batch}, J {query.shape[1]}, {device}: "
          f"exact {t_exact * 1e3:.0f} ms")
    print(f"{'L':>5} {'recall@1':>9} {'D excess (mean, px)':>20} {'ms':>7}")
    for size in args.sizes:
        t = time.perf_counter()
        got, got_d = index.best(query, shortlist=size)
        sync()
        dt = time.perf_counter() - t
        recall = (got == exact).float().mean().item()
        excess = (got_d - exact_d).mean().item()
        print(f"{size:5d} {recall:9.4f} {excess:20.3f} {dt * 1e3:7.0f}")


if __name__ == "__main__":
    main()
