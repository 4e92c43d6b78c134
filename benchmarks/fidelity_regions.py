"""Where does blending cost detections? Hybrid mosaics scored by the independent detector (issue 13, session 5).

For the same queries as ``benchmarks/fidelity.py sets`` (held-out real poses and mocap mosaics), each hybrid takes
the blended mosaic (Eq. 7-9) in one region and the copy-paste mosaic (Eq. 6) elsewhere:

- ``body<R>``: blended within R px of the query skeleton (the distance ``d`` of Eq. 7), copy-paste beyond;
- ``bg<R>``: the reverse (blended beyond R px only);
- ``head<R>``: copy-paste within R px of the head bone (neck - head top), blended elsewhere;
- ``linear``: Eq. 9 evaluated on linearised sRGB values, then encoded back (a colour-space choice, not a region).

Blended and copy-paste come from one engine call (dense warps, so that ``warped`` is at hand), hybrids are
composed per pixel, and all variants go to the detector together. Paired differences against the blended and the
copy-paste mosaics of the same queries, with bootstrap intervals over images (seeds pooled)::

    python benchmarks/fidelity_regions.py --n 128 --seeds 0 1 --mocap 'clip=1|clip=2|clip=13+14+17+18+19+21+22+23+24'
    python benchmarks/fidelity_regions.py --report benchmarks/results/fidelity_regions_*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity as bench  # noqa: E402

from gpumosaic import MosaicEngine  # noqa: E402
from gpumosaic.fidelity import bootstrap_interval, detect_poses, fidelity_score  # noqa: E402

RADII = (8, 16, 24, 32)
HEAD_RADII = (10, 20)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0) ** (1 / 2.4) - 0.055)


def segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, P) distance of P points (P, 2) to each segment a (B, 2) - b (B, 2)."""
    ab = (b - a)[:, None]
    ap = points[None] - a[:, None]
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (ap - t[..., None] * ab).norm(dim=-1)


def variants(res, skeleton) -> dict[str, torch.Tensor]:
    """The blended, copy-paste and hybrid mosaics (B, 3, S, S) of one engine result."""
    blended, pasted, d = res.images, res.mosaic_unblended, res.distance
    out = {"blended": blended, "copy_paste": pasted}
    for r in RADII:
        near = (d < r)[:, None]
        out[f"body{r}"] = torch.where(near, blended, pasted)
        out[f"bg{r}"] = torch.where(near, pasted, blended)
    size = d.shape[-1]
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    pixels = torch.stack([u, v], -1).view(-1, 2)
    neck, head = skeleton.names.index("neck"), skeleton.names.index("head_top")
    dh = segment_distance(pixels, res.pose2d[:, neck].float(), res.pose2d[:, head].float()).view(-1, 1, size, size)
    for r in HEAD_RADII:
        out[f"head{r}"] = torch.where(dh < r, pasted, blended)
    lin = torch.einsum("bjhw,bjchw->bchw", res.weights, srgb_to_linear(res.warped.clamp(0, 1)))
    out["linear"] = linear_to_srgb(lin).clamp(0, 1)
    return out


def run(kind: str, pool, mocap, n: int, seed: int, python: str | None) -> dict:
    query, occluded, engine_pool, info = bench.make_queries(kind, pool, mocap, n, seed)
    engine = MosaicEngine(engine_pool, warps="dense")
    parts: dict[str, list[torch.Tensor]] = {}
    labels = []
    for i in range(0, len(query), 8):
        res = engine(query[i:i + 8], None if occluded is None else occluded[i:i + 8])
        for name, img in variants(res, engine_pool.skeleton).items():
            parts.setdefault(name, []).append(img)
        labels.append(res.pose2d)
    images = {k: torch.cat(v) for k, v in parts.items()}
    labels = torch.cat(labels).double().numpy()
    names = list(images)
    det = detect_poses(torch.cat([images[k] for k in names]), python)
    out = {"set": kind, "seed": seed, "n": len(labels), "info": info, "detector": det.version, "variants": {}}
    for k, name in enumerate(names):
        sl = slice(k * len(labels), (k + 1) * len(labels))
        score = fidelity_score(det.joints[sl], det.detected[sl], labels, seed=seed)
        out["variants"][name] = {"detected": score["per_image"]["detected"], "pck": score["per_image"]["pck"]}
    return out


def report(rows: list[dict]) -> str:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["set"], []).append(r)
    lines = ["| set | seeds | n | variant | detected | Δ detected vs blended | Δ detected vs copy-paste | PCK@0.2 |"
             " Δ PCK vs blended |", "|---|---|---:|---|---|---|---|---|---|"]

    def ci(values: np.ndarray, signed: bool = False) -> str:
        lo, hi = bootstrap_interval(lambda idx: values[idx].mean(1), len(values))
        f = "+.2f" if signed else ".2f"
        return f"{values.mean():{f}} [{lo:{f}}, {hi:{f}}]"

    for kind, rs in groups.items():
        get = lambda name, key: np.concatenate([np.asarray(r["variants"][name][key], np.float64) for r in rs])
        seeds = ",".join(str(r["seed"]) for r in rs)
        n = sum(r["n"] for r in rs)
        for name in rs[0]["variants"]:
            det, pck = get(name, "detected"), get(name, "pck")
            lines.append(f"| {kind} | {seeds} | {n} | {name} | {ci(det)} | {ci(det - get('blended', 'detected'), True)} |"
                         f" {ci(det - get('copy_paste', 'detected'), True)} | {ci(pck)} | {ci(pck - get('blended', 'pck'), True)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_query_arguments(ap)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--report", nargs="+", default=None, metavar="FILE", help="print the table of saved results")
    args = ap.parse_args(argv)
    if args.report:
        rows = [r for f in args.report for r in json.loads(Path(f).read_text())["rows"]]
        print(report(rows))
        return 0
    torch.set_num_threads(1)
    from gpumosaic.sources.real import POOL_MARGIN, POOL_SIZE, load_real_mocap

    mocap = load_real_mocap()
    if args.mocap:
        from gpumosaic.sources.select import select_mocap

        mocap = select_mocap(mocap, args.mocap)
    pool = bench.load_pool(POOL_SIZE, POOL_MARGIN * POOL_SIZE)
    rows = []
    for kind in args.sets:
        for seed in args.seeds:
            rows.append(run(kind, pool, mocap, args.n, seed, args.detector))
            print(report(rows[-1:]), flush=True)
    path = bench.RESULTS / f"fidelity_regions_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "mocap_selector": args.mocap, "rows": rows}))
    print(report(rows))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
