"""``gpumosaic train``: the command-line face of :mod:`gpumosaic.train` (``docs/training.md``).

A preset (``--preset cpu`` or ``paper``) gives every setting; flags override single ones. Sources follow the
other commands (``--pool`` / ``--mocap KIND:PATH[:SELECTOR]``, default the prepared real data, else the demo);
``--real`` picks the real images of the real batches (default: the pool). Outputs under ``--out``:
``model.pt`` (inference: weights, pose classes, settings), ``train_state.pt`` (exact resume) and ``log.csv``.
Running the same command again continues an interrupted run (``--no-resume`` starts afresh).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

# flag -> TrainConfig field (flags named like the fields, with dashes)
_FIELDS = ("mode", "task", "backbone", "size", "classes", "views", "class_views", "batch_size", "steps",
           "optimizer", "lr", "lr_schedule", "momentum", "weight_decay", "roll", "extent_m", "margin", "mosaic_cache",
           "multiband_levels", "seed", "checkpoint_every", "log_every")


def add_train_parser(sub) -> argparse.ArgumentParser:
    from .models import MIN_SIZE
    from .train import MODES, PRESETS, TASKS, TrainConfig

    types = {f.name: f.type for f in fields(TrainConfig)}
    p = sub.add_parser("train", help="train the pose classifier or regressor on mosaics and/or real crops")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="recipe: cpu (ResNet-18, 96 px, minutes on a CPU) or paper (AlexNet, 220 px, K=5000, "
                        "batch 256, 80k steps)")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.pt, train_state.pt, log.csv)")
    choices = {"mode": MODES, "task": TASKS, "backbone": sorted(MIN_SIZE), "optimizer": ("sgd", "adam"),
               "lr_schedule": ("constant", "cosine")}
    for name in _FIELDS:
        kind = types[name]
        conv = int if "int" in str(kind) else (float if "float" in str(kind) else str)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=conv, default=None, choices=choices.get(name),
                       help=f"override the preset's {name}")
    p.add_argument("--no-flip", action="store_true", help="no left/right flips of the real crops")
    p.add_argument("--no-blend", action="store_true",
                   help="train on copy-paste mosaics (Eq. 6, no Eq. 7-9 blending; an option, docs/fidelity.md)")
    p.add_argument("--real", metavar="KIND:PATH[:SELECTOR]", default=None,
                   help="real images of the real batches (default: the pool)")
    p.add_argument("--real-option", metavar="KEY=VALUE", action="append", default=[],
                   help="keyword for the --real loader (repeatable)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing train_state.pt")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args):
    """The :class:`~gpumosaic.train.TrainConfig` of parsed ``gpumosaic train`` arguments."""
    from .train import preset

    changes = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    if args.no_flip:
        changes["flip"] = False
    if args.no_blend:
        changes["blend"] = False
    try:
        return preset(args.preset, **changes)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def run_train(args) -> int:
    from .cli import load_pool_source, load_sources, parse_device, parse_options
    from .train import prepare_data, train

    config = config_from_args(args)
    device = parse_device(args.device)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    pool, mocap = load_sources(args.pool, args.mocap, device, parse_options(args.pool_option, "--pool-option"),
                               parse_options(args.mocap_option, "--mocap-option"))
    real = None
    if args.real is not None:
        real = load_pool_source(args.real, device, parse_options(args.real_option, "--real-option"), flag="--real")
    say(f"train {config.task} ({config.backbone}, {config.size} px, mode {config.mode}) on pool {len(pool)} images, "
        f"mocap {len(mocap)} poses" + (f", real {len(real)} images" if real is not None else ""))
    try:
        data = prepare_data(config, pool, mocap, real=real, device=device, progress=not args.quiet)
        result = train(config, data, args.out, resume=not args.no_resume, progress=not args.quiet, log=say)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    last = result.history[-1] if result.history else None
    print(f"trained {result.step} steps" + (f" (last loss {last[2]:.4f}, {last[3]:.0f} s)" if last else "")
          + f"; wrote {result.model_path}")
    return 0


__all__ = ["add_train_parser", "config_from_args", "run_train"]
