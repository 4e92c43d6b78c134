"""The ``gpumosaic`` command.

``gpumosaic generate --n N --out DIR``: N mosaics from the embedded demo data (or a user pool/mocap source
in a later release) with their annotations; ``gpumosaic preview --out FIG.png``: the paper's Figure 2 for one
query.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is available")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpumosaic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write N mosaics and one annotations file")
    gen.add_argument("--n", type=int, required=True, help="number of mosaics")
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    gen.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (same seed, same device: same output)")
    gen.add_argument("--batch-size", type=int, default=16, help="mosaics per engine call")
    gen.add_argument("--no-blend", action="store_true", help="write the copy-paste mosaics (no Eq. 7-9)")
    gen.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    pre = sub.add_parser("preview", help="draw the paper's Figure 2 for one query")
    pre.add_argument("--out", type=Path, required=True, help="figure path (.png)")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--seed", type=int, default=0)
    return parser


def _query_batch(mocap, n: int, generator: torch.Generator, device: torch.device):
    """Draw n (pose, view) pairs: mocap poses uniformly, views as in the paper (DESIGN.md step 2)."""
    from .camera import render_views, sample_views

    pose_idx = torch.randint(len(mocap), (n,), generator=generator, device=device)
    azimuth, elevation = sample_views(n, 1, generator=generator, device=device)
    views = render_views(mocap.poses[pose_idx], mocap.skeleton, azimuth, elevation)
    return pose_idx, views


def generate(args) -> int:
    import cv2
    from tqdm import tqdm

    from .engine import MosaicEngine
    from .sources.demo import load_demo_mocap, load_demo_pool

    if args.n <= 0 or args.batch_size <= 0:
        raise SystemExit(f"error: --n and --batch-size must be positive, got {args.n} and {args.batch_size}")
    device = _device(args.device)
    pool = load_demo_pool(device=device)
    mocap = load_demo_mocap(device=device)
    engine = MosaicEngine(pool, skeleton=pool.skeleton, blend=not args.no_blend, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "annotations.jsonl", "w") as ann, tqdm(
        total=args.n, unit="mosaic", disable=args.quiet, file=sys.stderr
    ) as bar:
        done = 0
        while done < args.n:
            b = min(args.batch_size, args.n - done)
            pose_idx, views = _query_batch(mocap, b, generator, device)
            res = engine(views.pose2d[:, 0], views.occluded[:, 0])
            images = (res.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            cams = views.cameras
            for k in range(b):
                name = f"images/{done + k:07d}.{args.format}"
                cv2.imwrite(str(out / name), cv2.cvtColor(images[k], cv2.COLOR_RGB2BGR))
                record = {
                    "image": name,
                    "skeleton": mocap.skeleton.name,
                    "pose2d": res.query[k].tolist(),
                    "pose3d": views.pose3d[k, 0].tolist(),
                    "occluded": views.occluded[k, 0].tolist(),
                    "mocap_index": int(pose_idx[k]),
                    "mocap_id": int(mocap.ids[pose_idx[k]]),
                    "camera": {
                        "azimuth_deg": float(cams.azimuth[k, 0]),
                        "elevation_deg": float(cams.elevation[k, 0]),
                        "distance_m": float(cams.distance[k, 0]) if cams.distance.dim() else float(cams.distance),
                        "focal_px": float(cams.focal[k, 0]) if cams.focal.dim() else float(cams.focal),
                        "cam_from_world_R": cams.cam_from_world_R[k, 0].tolist(),
                        "cam_from_world_t": cams.cam_from_world_t[k, 0].tolist(),
                    },
                    "matches": res.matches[k].tolist(),
                    "source_rows": res.source[k].tolist(),
                    "source_ids": res.source_ids[k].tolist(),
                    "mirrored": res.mirrored[k].tolist(),
                }
                ann.write(json.dumps(record) + "\n")
            done += b
            bar.update(b)
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} mosaics to {out} in {elapsed:.1f} s ({args.n / elapsed:.1f} mosaics/s on {device})")
    return 0


def preview(args) -> int:
    from .engine import MosaicEngine
    from .sources.demo import load_demo_mocap, load_demo_pool
    from .viz import pipeline_figure

    device = _device(args.device)
    pool = load_demo_pool(device=device)
    mocap = load_demo_mocap(device=device)
    engine = MosaicEngine(pool, skeleton=pool.skeleton, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    _, views = _query_batch(mocap, 1, generator, device)
    res = engine(views.pose2d[:, 0], views.occluded[:, 0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pipeline_figure(res, engine, 0, args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    return preview(args)


if __name__ == "__main__":
    raise SystemExit(main())
