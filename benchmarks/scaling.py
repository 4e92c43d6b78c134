"""How the engine's cost grows with pool size N, batch B, joints J and output size S (measured, plotted).

One factor varies at a time around a base point (N=1000, B=8, J=14, S=220); each point is the median of
``--repeats`` engine calls on fixed queries. Writes ``benchmarks/results/scaling_<device>_<date>.json`` and
``docs/figures/scaling_<device>.png``.

    python benchmarks/scaling.py [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from gpumosaic.threads import configure_threads, prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP (gpumosaic.threads)

import torch  # noqa: E402

from throughput import demo_sources, device_name, synthetic_pool, timed  # noqa: E402

from gpumosaic import MosaicEngine  # noqa: E402
from gpumosaic.camera import render_views, sample_views  # noqa: E402

BASE = {"N": 1000, "B": 8, "J": 14, "S": 220}
SWEEPS = {"N": [250, 1000, 4000, 16000], "B": [2, 4, 8, 16], "J": [14, 16], "S": [96, 160, 220, 256]}
CUDA_SWEEPS = {"N": [1000, 10000, 80000], "B": [16, 64, 256], "J": [14, 16], "S": [160, 220, 256]}


def measure(device: str, n: int, b: int, j: int, s: int, repeats: int) -> float:
    pool, poses, skeleton = demo_sources(j)
    pool = synthetic_pool(pool, n).to(device)
    engine = MosaicEngine(pool, skeleton=skeleton, size=s, device=device)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(poses), (b,), generator=g)
    az, el = sample_views(b, 1, generator=g)
    views = render_views(poses[idx], skeleton, az, el)
    q, occ = views.pose2d[:, 0].to(device), views.occluded[:, 0].to(device)
    seconds, _ = timed(lambda: engine(q, occ), device, repeats, 1)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, as the documented figures; see gpumosaic.threads)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    configure_threads(args.threads)
    sweeps = CUDA_SWEEPS if args.device == "cuda" else SWEEPS
    base = dict(BASE, B=64, N=10000) if args.device == "cuda" else BASE
    results = {}
    for factor, values in sweeps.items():
        results[factor] = []
        for v in values:
            point = dict(base, **{factor: v})
            sec = measure(args.device, point["N"], point["B"], point["J"], point["S"], args.repeats)
            results[factor].append({**point, "seconds": sec, "ms_per_mosaic": 1e3 * sec / point["B"]})
            print(f"{factor}={v:6d}: {1e3 * sec / point['B']:8.1f} ms/mosaic ({point})", flush=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    tag = f"{args.device}_{now.strftime('%Y%m%d-%H%M%S')}"
    out = REPO / "benchmarks" / "results" / f"scaling_{tag}.json"
    out.write_text(json.dumps({"device": device_name(args.device), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "date": now.isoformat(timespec="seconds"),
                               "base": base, "results": results}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (factor, rows) in zip(axes, results.items()):
        xs = [r[factor] for r in rows]
        ax.plot(xs, [r["ms_per_mosaic"] for r in rows], "o-")
        ax.set_xlabel(factor)
        ax.set_ylabel("ms per mosaic")
        if factor == "N":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.set_title(f"vary {factor} (others: {', '.join(f'{k}={v}' for k, v in base.items() if k != factor)})",
                     fontsize=8)
    fig.suptitle(f"MosaicEngine cost, {device_name(args.device)}, {torch.get_num_threads()} thread(s)", fontsize=10)
    fig.tight_layout()
    fig_path = REPO / "docs" / "figures" / f"scaling_{args.device}.png"
    fig.savefig(fig_path, dpi=90)
    print(f"wrote {out.relative_to(REPO)} and {fig_path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
