"""How much of a mosaic comes from padding where a stored crop left its photo? (issue 13, session 5)

For the real pool (each crop's ``Pool2D.content_box``: the stored pixels filled from its video frame), counts
the mosaic pixels whose chosen match (index map) samples outside its content box, i.e. padding: replicated
edge rows (streaks) with the cache formats 1-2, mirrored frame content since format 3. Compares, on the same
queries, the pool built with edge replication and no box (the state before) against the mirrored pool with
its box (the default), both with the engine's defaults (``mask_outside`` on). No detector needed.

    python benchmarks/fidelity_padding.py --n 128 --seeds 0 1 --sets heldout mocap \
        --mocap 'clip=1|clip=2|clip=13+14+17+18+19+21+22+23+24'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity as bench  # noqa: E402  (the driver's pools and query sets)

from gpumosaic import MosaicEngine  # noqa: E402
from gpumosaic.fidelity import bootstrap_interval  # noqa: E402
from gpumosaic.warp import source_inside  # noqa: E402


def padding_share(result, box: torch.Tensor, image_size) -> torch.Tensor:
    """(B,) share of each mosaic's pixels whose index-map match samples outside its content box."""
    valid = source_inside(result.query_from_stored, image_size, result.index_map.shape[-2:],
                          box=box[result.source])  # (B, J, S, S)
    chosen = torch.gather(valid, 1, result.index_map[:, None])[:, 0]
    return (~chosen).flatten(1).float().mean(1)


def save_figure(images: dict[str, torch.Tensor], shares: dict[str, np.ndarray], path: Path, title: str,
                count: int = 3) -> None:
    """The ``count`` mosaics with the most padding before: copy-paste and blended, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-shares["border_nobox"])[:count]
    fig, axes = plt.subplots(count, 4, figsize=(12, 3.1 * count))
    for r, b in enumerate(order):
        panels = [("border_nobox", 0, "replicated edge, no box: copy-paste"), ("reflection_box", 0, "mirrored + box: copy-paste"),
                  ("border_nobox", 1, "replicated edge, no box: blended"), ("reflection_box", 1, "mirrored + box: blended")]
        for c, (name, mode, label) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(images[name][b, mode].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_title(f"{label}\npadding {100 * shares[name][b]:.1f} % of pixels", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"Mosaics with the most padding ({title}): edge rows replicated into streaks (left pair) vs "
                 f"mirrored frame and content box (right pair)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_query_arguments(ap)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--margin", type=float, default=76.8)
    ap.add_argument("--figure", default=None, help="PNG: the mosaics of the first set and seed with the most padding")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from gpumosaic.sources.real import load_real_mocap

    mocap = load_real_mocap()
    if args.mocap:
        from gpumosaic.sources.select import select_mocap

        mocap = select_mocap(mocap, args.mocap)
    # Both pools hold the same people with the same content boxes; the "before" engine does not see its box.
    new = bench.load_pool(args.size, args.margin, padding="reflection")
    old = bench.load_pool(args.size, args.margin, padding="border")
    rows = []
    figure_images: dict[str, torch.Tensor] = {}
    for kind in args.sets:
        for seed in args.seeds:
            shares = {}
            for name, pool in (("border_nobox", old), ("reflection_box", new)):
                query, occluded, engine_pool, info = bench.make_queries(kind, pool, mocap, args.n, seed)
                box = engine_pool.content_box  # the subset's own rows (held-out) or the whole pool's
                engine = MosaicEngine(engine_pool if name == "reflection_box" else replace(engine_pool, content_box=None))
                out, images = [], []
                for i in range(0, len(query), 16):
                    res = engine(query[i:i + 16], None if occluded is None else occluded[i:i + 16])
                    out.append(padding_share(res, box, engine_pool.image_size))
                    if args.figure and not rows:
                        images.append(torch.stack([res.mosaic_unblended, res.images], 1))
                shares[name] = torch.cat(out).double().numpy()
                if images:
                    figure_images[name] = torch.cat(images)
            row = {"set": kind, "seed": seed, "n": args.n}
            for name, v in shares.items():
                lo, hi = bootstrap_interval(lambda idx, v=v: v[idx].mean(1), len(v))
                row[name] = {"mean": float(v.mean()), "ci": [float(lo), float(hi)],
                             "mosaics_with_padding": float((v > 0).mean()), "max": float(v.max())}
            if args.figure and not rows:
                save_figure(figure_images, shares, Path(args.figure), f"{kind}, seed {seed}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    path = bench.RESULTS / f"fidelity_padding_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "mocap": args.mocap, "rows": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
