"""Sharpness of the mosaics on the body by stored size (issue 13, docs/fidelity.md "Stored size at α = 6").

No detector: the same queries as ``benchmarks/fidelity.py sets`` (its ``make_queries``), the engine's defaults,
and per mosaic the mean gradient magnitude of the grey image (central differences, 0-1 intensity per px) over
the pixels within ``--radius`` px of the query skeleton (the engine's Eq. 7 distance map), blended and
copy-paste. Usage::

    python benchmarks/fidelity_sharpness.py --configs 's256m20:{"pool_size":256,"pool_margin":51.2}' ... \
        [--sets heldout mocap] [--seed 0] [--n 128]      # -> benchmarks/results/fidelity_sharpness_*.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from gpumosaic import MosaicEngine

_spec = importlib.util.spec_from_file_location("fidelity_bench", Path(__file__).with_name("fidelity.py"))
bench = importlib.util.module_from_spec(_spec)
sys.modules["fidelity_bench"] = bench
_spec.loader.exec_module(bench)


def body_gradient(images: torch.Tensor, distance: torch.Tensor, radius: float) -> torch.Tensor:
    """(B,) mean gradient magnitude of the grey ``images (B, 3, S, S)`` where ``distance (B, S, S) < radius``."""
    grey = images.mean(1)
    gy = torch.zeros_like(grey)
    gx = torch.zeros_like(grey)
    gy[:, 1:-1] = (grey[:, 2:] - grey[:, :-2]) / 2
    gx[:, :, 1:-1] = (grey[:, :, 2:] - grey[:, :, :-2]) / 2
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    inside = (distance < radius).float()
    inside[:, [0, -1]] = 0
    inside[:, :, [0, -1]] = 0
    return (mag * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--sets", nargs="+", default=["heldout", "mocap"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--radius", type=float, default=12.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from gpumosaic.sources.real import load_real_mocap

    from gpumosaic.fidelity import bootstrap_interval

    mocap = load_real_mocap()
    out = []
    print("| config | set | seed | n | body gradient blended | body gradient copy-paste | blended / copy-paste |\n"
          "|---|---|---:|---:|---|---|---|")
    for spec in args.configs:
        config = bench.parse_config(spec)
        pool = bench.load_pool(config.size, config.margin)
        for kind in args.sets:
            query, occluded, engine_pool, _ = bench.make_queries(kind, pool, mocap, args.n, args.seed)
            engine = MosaicEngine(engine_pool, **config.engine)
            gb, gc = [], []
            for i in range(0, len(query), 16):
                res = engine(query[i:i + 16], None if occluded is None else occluded[i:i + 16])
                gb.append(body_gradient(res.images, res.distance, args.radius))
                gc.append(body_gradient(res.mosaic_unblended, res.distance, args.radius))
            b, c = torch.cat(gb).double().numpy(), torch.cat(gc).double().numpy()
            ci = lambda v: bootstrap_interval(lambda idx: v[idx].mean(1), len(v))
            ratio = lambda idx: b[idx].mean(1) / c[idx].mean(1)
            row = {"config": config.name, "set": kind, "seed": args.seed, "n": len(b),
                   "blended": [b.mean(), *ci(b)], "copy_paste": [c.mean(), *ci(c)],
                   "ratio": [b.mean() / c.mean(), *bootstrap_interval(ratio, len(b))]}
            out.append(row)
            f = lambda v, d=4: f"{v[0]:.{d}f} [{v[1]:.{d}f}, {v[2]:.{d}f}]"
            print(f"| {config.name} | {kind} | {args.seed} | {len(b)} | {f(row['blended'])} | {f(row['copy_paste'])} |"
                  f" {f(row['ratio'], 2)} |", flush=True)
    path = bench.save_results({"argv": sys.argv[1:], "radius": args.radius, "rows": out}, "sharpness")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
