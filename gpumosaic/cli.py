"""The ``gpumosaic`` command.

``gpumosaic generate --n N --out DIR``: N mosaics with their annotations; ``gpumosaic preview --out FIG.png``:
the paper's Figure 2 for one query; ``gpumosaic export --n N --out DIR --shard-size S``: N mosaics as resumable
WebDataset-style tar shards (also under ``torchrun``; see :mod:`gpumosaic.export`); ``gpumosaic data prepare``:
fetch and build the real default data (:mod:`gpumosaic.sources.real`); ``gpumosaic train --out DIR``: train
the pose classifier or regressor on mosaics and/or real crops (:mod:`gpumosaic.train`); ``gpumosaic evaluate
--test KIND:PATH --checkpoint C``: the paper's protocols on real test images (:mod:`gpumosaic.protocols`);
``gpumosaic predict IMAGE --checkpoint C``: top-k poses of the person in a photo (:mod:`gpumosaic.predict`).

Sources: ``--pool KIND:PATH[:SELECTOR]`` and ``--mocap KIND:PATH[:SELECTOR]`` pick the 2D pool and the 3D
mocap and optionally part of it (:mod:`gpumosaic.sources.select`, e.g. ``real::camera=1-3,frame=0-49``; KIND one of
:data:`~gpumosaic.sources.build.POOL_KINDS` / :data:`~gpumosaic.sources.build.MOCAP_KINDS`, or ``demo`` /
``real``, whose PATH is optional: ``demo`` reads the embedded demo ``.npz`` or PATH, ``real`` the prepared
cache or the cache folder PATH); ``--pool-option`` / ``--mocap-option KEY=VALUE`` pass loader keywords. Without
them the prepared real data is used when its cache is ready, else the embedded synthetic demo data (with a
one-line notice).
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


SPECIAL_KINDS = ("demo", "real")
"""Source kinds that are not loaders: the embedded demo data and the prepared real data."""


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    from .sources.build import MOCAP_KINDS, POOL_KINDS

    parser.add_argument("--pool", metavar="KIND:PATH[:SELECTOR]", default=None,
                        help=f"2D pool source, KIND one of {', '.join(sorted(POOL_KINDS) + list(SPECIAL_KINDS))} "
                             f"(default: real data if prepared, else demo); SELECTOR keeps part of it, e.g. "
                             f"real::camera=1-3,frame=0-49 (docs/data.md)")
    parser.add_argument("--mocap", metavar="KIND:PATH[:SELECTOR]", default=None,
                        help=f"3D mocap source, KIND one of {', '.join(sorted(MOCAP_KINDS) + list(SPECIAL_KINDS))} "
                             f"(default: real data if prepared, else demo); SELECTOR e.g. real::clip=10-24")
    parser.add_argument("--pool-option", metavar="KEY=VALUE", action="append", default=[],
                        help="keyword for the pool loader (repeatable; VALUE read as JSON when it parses, "
                             "e.g. image_dir=/data/frames or stride=2)")
    parser.add_argument("--mocap-option", metavar="KEY=VALUE", action="append", default=[],
                        help="keyword for the mocap loader (repeatable), e.g. stride=4 or scale=cm")


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
    _add_source_options(gen)

    pre = sub.add_parser("preview", help="draw the paper's Figure 2 for one query")
    pre.add_argument("--out", type=Path, required=True, help="figure path (.png)")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--seed", type=int, default=0)
    _add_source_options(pre)

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
    _add_source_options(exp)

    from .cli_train import add_train_parser

    _add_source_options(add_train_parser(sub))

    data = sub.add_parser("data", help="manage the real default data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="fetch the pinned packages, verify them and build the real pool "
                                               "and mocap (idempotent)")
    prep.add_argument("--cache", type=Path, default=None,
                      help="cache folder (default $GPUMOSAIC_CACHE or ~/.cache/gpumosaic/real)")
    prep.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    prep.add_argument("--offline-ok", action="store_true",
                      help="when a download fails (e.g. no network), print a notice and exit 0: the commands then "
                           "fall back to the embedded demo data")
    prep.add_argument("--device", default="cpu", help="device for the pool crops (default cpu)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser("evaluate", help="score a checkpoint or a predictions file on real test images")
    ev.add_argument("--test", metavar="KIND:PATH", required=True,
                    help="test set: jsonl:FILE (gpumosaic generate's format), h36m:2D.npz (with --test-option "
                         "mocap=3D.npz protocol=p1|p2) or a 2D loader kind (lsp, coco, mpii, openpose, h36m2d)")
    ev.add_argument("--test-option", metavar="KEY=VALUE", action="append", default=[],
                    help="keyword for the test set loader (repeatable), e.g. image_dir=/data/val2017")
    ev.add_argument("--group-by", choices=("default", "entry", "id"), default="default",
                    help="bootstrap unit: the kind's test instants (default), each entry, or shared ids")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="inference checkpoint (gpumosaic.checkpoint format)")
    src.add_argument("--predictions", type=Path, help="predictions file (JSON Lines, one record per test entry)")
    ev.add_argument("--classes", type=Path, default=None,
                    help="pose classes (.npz of PoseClasses.save) for the class lower bound with --predictions")
    ev.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    ev.add_argument("--save-predictions", type=Path, default=None, help="write the checkpoint's predictions here")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int, default=64, help="test people per network call")
    ev.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    ev.add_argument("--level", type=float, default=0.95, help="confidence level")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    pr = sub.add_parser("predict", help="top-k poses of the person in a photo, as JSON and an overlay picture")
    pr.add_argument("image", type=Path, help="the photo (any format OpenCV reads)")
    pr.add_argument("--checkpoint", type=Path, required=True, help="inference checkpoint")
    pr.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=None,
                    help="person box in image pixels around the joints (default: the whole image)")
    pr.add_argument("--k", type=int, default=5, help="number of classes returned")
    pr.add_argument("--json", type=Path, default=None, help="write the JSON here (default: print it)")
    pr.add_argument("--overlay", type=Path, default=None, help="write the overlay picture here (.png)")
    pr.add_argument("--device", default="auto")
    return parser


def _options(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"error: {flag} expects KEY=VALUE with KEY a Python identifier, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _split_source(spec: str, flag: str):
    """``KIND[:PATH][:SELECTOR]`` -> :class:`~gpumosaic.sources.select.SourceSpec`; ``demo`` / ``real`` may omit
    the path (``real``, ``real:``, ``real::camera=1-3``)."""
    from .sources.select import parse_source_spec

    try:
        return parse_source_spec(spec, optional_path=SPECIAL_KINDS)
    except ValueError as err:
        raise SystemExit(f"error: {flag}: {err}") from None


def default_source() -> str:
    """``"real"`` when the prepared real data is ready (:func:`gpumosaic.sources.real.cache_ready`), else ``"demo"``."""
    from .sources.real import cache_ready

    return "real" if cache_ready() else "demo"


def load_pool_source(spec: str, device: torch.device, options: dict | None = None, flag: str = "--pool"):
    """One ``KIND[:PATH][:SELECTOR]`` pool spec -> :class:`~gpumosaic.sources.base.Pool2D` on ``device``."""
    from .sources.build import POOL_KINDS, load_pool
    from .sources.demo import load_demo_pool
    from .sources.real import load_real_pool
    from .sources.select import select_pool

    src = _split_source(spec, flag)
    if src.kind not in POOL_KINDS and src.kind not in SPECIAL_KINDS:
        raise SystemExit(f"error: {flag}: unknown kind {src.kind!r}; expected one of "
                         f"{sorted(POOL_KINDS) + list(SPECIAL_KINDS)}")
    try:
        if src.kind == "demo":
            data = load_demo_pool(device=device, path=src.path)
        elif src.kind == "real":
            data = load_real_pool(device=device, cache=src.path)
        else:  # selected before cropping
            return load_pool(src.kind, src.path, device=device, selection=src.selection, **(options or {}))
        return data if src.selection is None else select_pool(data, src.selection)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {flag}: {err}") from None


def load_mocap_source(spec: str, device: torch.device, options: dict | None = None, flag: str = "--mocap"):
    """One ``KIND[:PATH][:SELECTOR]`` mocap spec -> :class:`~gpumosaic.sources.base.Mocap3D` on ``device``."""
    from .sources.build import MOCAP_KINDS, load_mocap
    from .sources.demo import load_demo_mocap
    from .sources.real import load_real_mocap
    from .sources.select import select_mocap

    src = _split_source(spec, flag)
    if src.kind not in MOCAP_KINDS and src.kind not in SPECIAL_KINDS:
        raise SystemExit(f"error: {flag}: unknown kind {src.kind!r}; expected one of "
                         f"{sorted(MOCAP_KINDS) + list(SPECIAL_KINDS)}")
    try:
        if src.kind == "demo":
            data = load_demo_mocap(device=device, path=src.path)
        elif src.kind == "real":
            data = load_real_mocap(device=device, cache=src.path)
        else:  # the loader's own sequence and frame numbers
            return load_mocap(src.kind, src.path, device=device, selection=src.selection, **(options or {}))
        return data if src.selection is None else select_mocap(data, src.selection)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {flag}: {err}") from None


def load_sources(pool: str | None, mocap: str | None, device: torch.device, pool_options: dict | None = None,
                 mocap_options: dict | None = None, notice=None):
    """Resolve ``--pool`` / ``--mocap`` specs (``KIND[:PATH][:SELECTOR]``, see
    :func:`gpumosaic.sources.select.parse_source_spec`) into ``(Pool2D, Mocap3D)`` on ``device``.

    A missing spec takes the default source (:func:`default_source`); falling back to the demo data prints a
    one-line notice through ``notice`` (default: stderr).
    """
    notice = notice or (lambda text: print(text, file=sys.stderr))
    if pool is None or mocap is None:
        default = default_source()
        if default == "demo":
            notice("notice: no prepared real data (run `gpumosaic data prepare`); using the embedded synthetic "
                   "demo data")
        pool = pool or default
        mocap = mocap or default
    _split_source(pool, "--pool"), _split_source(mocap, "--mocap")  # both specs checked before any loading
    return load_pool_source(pool, device, pool_options), load_mocap_source(mocap, device, mocap_options)


def _sources(args, device: torch.device):
    return load_sources(args.pool, args.mocap, device, _options(args.pool_option, "--pool-option"),
                        _options(args.mocap_option, "--mocap-option"))


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

    if args.n <= 0 or args.batch_size <= 0:
        raise SystemExit(f"error: --n and --batch-size must be positive, got {args.n} and {args.batch_size}")
    device = _device(args.device)
    pool, mocap = _sources(args, device)
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
    from .viz import pipeline_figure

    device = _device(args.device)
    pool, mocap = _sources(args, device)
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
        pool, mocap = _sources(args, device)
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


def data(args) -> int:
    """``gpumosaic data prepare``: see :func:`gpumosaic.sources.real.prepare`."""
    from .sources.real import HashMismatchError, prepare

    try:
        report = prepare(args.cache, force=args.force, quiet=args.quiet, device=_device(args.device))
    except RuntimeError as err:
        if args.offline_ok:
            print(f"notice: could not fetch the real data ({str(err).splitlines()[0]}); gpumosaic will use the "
                  f"embedded synthetic demo data", file=sys.stderr)
            return 0
        raise SystemExit(f"error: {err}\n(use --offline-ok to continue with the embedded demo data)") from None
    except HashMismatchError as err:
        raise SystemExit(f"error: {err}") from None
    print(report.message())
    return 0


def evaluate(args) -> int:
    """``gpumosaic evaluate``: see :mod:`gpumosaic.protocols`."""
    from .checkpoint import load_inference_checkpoint
    from .classes import PoseClasses
    from .protocols import evaluate_predictions, load_predictions, predict_test_set, save_predictions
    from .testsets import load_test_set

    src = _split_source(args.test, "--test")
    if src.selection is not None:
        raise SystemExit(f"error: --test: selectors are not supported for test sets yet, got {src.selection.text!r}")
    kind, path = src.kind, src.path
    try:
        test = load_test_set(kind, path, group_by=args.group_by, **_options(args.test_option, "--test-option"))
        classes, box = None, (220, None)
        if args.checkpoint is not None:
            device = _device(args.device)
            ckpt = load_inference_checkpoint(args.checkpoint)
            preds = predict_test_set(ckpt, test, device, batch_size=args.batch_size, progress=not args.quiet)
            classes, box = ckpt.classes, ckpt.class_box
            if args.save_predictions:
                save_predictions(args.save_predictions, preds)
        else:
            preds = load_predictions(args.predictions, test)
        if args.classes is not None:
            classes = PoseClasses.load(args.classes)
        report = evaluate_predictions(test, preds, classes, box, n_boot=args.n_boot, level=args.level)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from None
    print(report.table())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.as_dict(), indent=1))
        print(f"wrote {args.out}")
    return 0


def predict(args) -> int:
    """``gpumosaic predict``: see :mod:`gpumosaic.predict`."""
    from .checkpoint import load_inference_checkpoint
    from .predict import draw_prediction, predict_image, prediction_record, read_image, write_json

    try:
        image = read_image(args.image)
        ckpt = load_inference_checkpoint(args.checkpoint)
        model = ckpt.build_model(_device(args.device))
        result = predict_image(model, ckpt, image, args.box, k=args.k)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    record = prediction_record(result, ckpt, str(args.image))
    if args.json:
        write_json(record, args.json)
        print(f"wrote {args.json}")
    else:
        print(json.dumps(record, indent=1))
    if args.overlay:
        draw_prediction(image, result, ckpt, args.overlay)
        print(f"wrote {args.overlay}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return evaluate(args)
    if args.command == "predict":
        return predict(args)
    if args.command == "data":
        return data(args)
    if args.command == "generate":
        return generate(args)
    if args.command == "export":
        return export(args)
    if args.command == "train":
        from .cli_train import run_train

        return run_train(args)
    return preview(args)


if __name__ == "__main__":
    raise SystemExit(main())
