"""The ``gpumosaic`` command.

``gpumosaic generate --n N --out DIR``: N mosaics from the embedded demo data (or a user pool/mocap source
in a later release) with their annotations; ``gpumosaic preview --out FIG.png``: the paper's Figure 2 for one
query; ``gpumosaic export --n N --out DIR --shard-size S``: N mosaics as resumable WebDataset-style tar shards
(also under ``torchrun``; see :mod:`gpumosaic.export`).
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

    exp = sub.add_parser("export", help="write N mosaics as resumable tar shards (torchrun: one process per GPU)")
    # "--num-samples": torchrun's own parser rejects "--n" as an ambiguous abbreviation of its options.
    exp.add_argument("--n", "--num-samples", dest="n", type=int, required=True,
                     help="number of mosaics in the whole export (under torchrun write --num-samples)")
    exp.add_argument("--out", type=Path, required=True, help="output folder (rerun the same command to resume)")
    exp.add_argument("--shard-size", type=int, default=1000, help="mosaics per tar shard (default 1000)")
    exp.add_argument("--device", default="auto",
                     help="cpu, cuda or auto (default: cuda when available; under torchrun cuda:LOCAL_RANK)")
    exp.add_argument("--seed", type=int, default=0, help="random seed: sample i depends on (seed, i) only")
    exp.add_argument("--batch-size", type=int, default=16, help="mosaics per engine call")
    exp.add_argument("--no-blend", action="store_true", help="write the copy-paste mosaics (no Eq. 7-9)")
    exp.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    exp.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100 (--format jpg)")
    exp.add_argument("--views-per-pose", type=int, default=180, help="cameras per mocap pose (paper: 180)")
    exp.add_argument("--size", type=int, default=220,
                     help="image side in px (paper: 220; smaller sizes are for tests and previews only)")
    exp.add_argument("--quiet", action="store_true", help="no progress bar")
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


def export(args) -> int:
    """``gpumosaic export``: one process, or one rank of a ``torchrun`` launch (process group set up here)."""
    import os

    import torch.distributed as dist

    from .engine import MosaicEngine
    from .export import export_shards
    from .sources.demo import load_demo_mocap, load_demo_pool

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = _device(args.device)
    if launched and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = launched and dist.is_available() and not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        pool = load_demo_pool(device=device)
        mocap = load_demo_mocap(device=device)
        try:
            engine = MosaicEngine(pool, skeleton=pool.skeleton, size=args.size, blend=not args.no_blend,
                                  device=device)
            report = export_shards(
                args.out, args.n, args.shard_size, engine, mocap, args.seed, batch_size=args.batch_size,
                image_format=args.format, jpeg_quality=args.jpeg_quality, views_per_pose=args.views_per_pose,
                progress=not args.quiet,
                rank=int(os.environ["RANK"]) if launched else None,
                world_size=int(os.environ["WORLD_SIZE"]) if launched else None,
            )
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    finally:
        if created:
            dist.destroy_process_group()
    rate = report.samples_written / max(report.seconds, 1e-9)
    print(
        f"rank {report.rank}/{report.world_size}: wrote {len(report.written)} shards "
        f"({report.samples_written} mosaics, {rate:.1f} mosaics/s on {device}), kept {len(report.skipped)} "
        f"complete shards, removed {len(report.removed)} partial or invalid files; {report.num_shards} shards in {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    if args.command == "export":
        return export(args)
    return preview(args)


if __name__ == "__main__":
    raise SystemExit(main())
