"""``gpumosaic evaluate`` and ``gpumosaic predict``: the command-line face of :mod:`gpumosaic.protocols` and
:mod:`gpumosaic.predict` (``docs/evaluation.md``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import parse_device, parse_options, split_source


def add_eval_parsers(sub) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Add the ``evaluate`` and ``predict`` subcommands to ``sub``; returns their parsers."""
    ev = sub.add_parser("evaluate", help="score a checkpoint or a predictions file on real test images")
    ev.add_argument("--test", metavar="KIND:PATH[:SELECTOR]", required=True,
                    help="test set: jsonl:FILE (gpumosaic generate's format), h36m:2D.npz (with --test-option "
                         "mocap=3D.npz protocol=p1|p2) or a 2D loader kind (lsp, coco, mpii, openpose, h36m2d); "
                         "a selector keeps part of it by id, row, seq or frame, e.g. lsp:/data/lsp:row=0-999")
    ev.add_argument("--test-option", metavar="KEY=VALUE", action="append", default=[],
                    help="keyword for the test set loader (repeatable), e.g. image_dir=/data/val2017")
    ev.add_argument("--group-by", choices=("default", "entry", "id"), default="default",
                    help="bootstrap unit: the kind's test instants (default), each entry, or shared ids")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="inference checkpoint (gpumosaic.checkpoint format)")
    src.add_argument("--predictions", type=Path, help="predictions file (JSON Lines, one record per test entry)")
    ev.add_argument("--classes", type=Path, default=None,
                    help="pose classes (.npz of PoseClasses.save) for the class lower bound with --predictions")
    ev.add_argument("--classes-box", type=int, default=220,
                    help="side of the box the --classes mean 2D poses are in (margin 10 %%; default 220)")
    ev.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    ev.add_argument("--save-predictions", type=Path, default=None, help="write the checkpoint's predictions here")
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ev.add_argument("--batch-size", type=int, default=64, help="test people per network call")
    ev.add_argument("--decode", choices=("top1", "expected"), default="top1",
                    help="a classifier's pose: the top class's mean pose (the paper's, default) or the "
                         "softmax-weighted mean of all classes' mean poses")
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
    pr.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    return ev, pr


def run_evaluate(args) -> int:
    """``gpumosaic evaluate``: see :mod:`gpumosaic.protocols`."""
    from .checkpoint import load_inference_checkpoint
    from .classes import PoseClasses
    from .protocols import evaluate_predictions, load_predictions, predict_test_set, save_predictions
    from .testsets import load_test_set

    src = split_source(args.test, "--test")
    kind, path = src.kind, src.path
    try:
        test = load_test_set(kind, path, group_by=args.group_by, selection=src.selection,
                             **parse_options(args.test_option, "--test-option"))
        classes, box = None, (220, None)
        if args.checkpoint is not None:
            device = parse_device(args.device)
            ckpt = load_inference_checkpoint(args.checkpoint)
            preds = predict_test_set(ckpt, test, device, batch_size=args.batch_size, progress=not args.quiet,
                                     decode=args.decode)
            classes, box = ckpt.classes, ckpt.class_box
            if args.save_predictions:
                save_predictions(args.save_predictions, preds)
        else:
            preds = load_predictions(args.predictions, test)
        if args.classes is not None:
            classes, box = PoseClasses.load(args.classes), (args.classes_box, None)
        report = evaluate_predictions(test, preds, classes, box, n_boot=args.n_boot, level=args.level)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from None
    print(report.table())
    print(report.joint_table())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.as_dict(), indent=1))
        print(f"wrote {args.out}")
    return 0


def run_predict(args) -> int:
    """``gpumosaic predict``: see :mod:`gpumosaic.predict`."""
    from .checkpoint import load_inference_checkpoint
    from .predict import draw_prediction, dumps, predict_image, prediction_record, read_image, write_json

    try:
        image = read_image(args.image)
        ckpt = load_inference_checkpoint(args.checkpoint)
        model = ckpt.build_model(parse_device(args.device))
        result = predict_image(model, ckpt, image, args.box, k=args.k)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    record = prediction_record(result, ckpt, str(args.image))
    if args.json:
        write_json(record, args.json)
        print(f"wrote {args.json}")
    else:
        print(dumps(record))
    if args.overlay:
        draw_prediction(image, result, ckpt, args.overlay)
        print(f"wrote {args.overlay}")
    return 0
