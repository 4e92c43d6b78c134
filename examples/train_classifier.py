"""Train the K-way pose classifier of Rogez & Schmid (IJCV 2018, §3–4) on on-the-fly mosaics.

The training stream is :class:`gpumosaic.OnlineMosaicDataset` over the ``--pool`` / ``--mocap`` sources
(default: the prepared real data, else the shipped demo data; the log names them): every batch is
synthesised on ``--device`` from (training pose, view) pairs and labelled with its pose class. Evaluation
uses views of **held-out** 3D poses (whole demo subjects the model never saw) and prints the paper's
metrics: classification rate, top-k rate and top-k oracle, MPJPE and PA-MPJPE (mm) of the decoded class mean
pose against the ground-truth oriented pose, and the 2D error (px in the S×S box) of the class mean 2D pose.

Pose classes (§3): k-means over the oriented 3D poses of the training poses seen from views
``0..class_views-1`` of the dataset's own camera scheme (:func:`gpumosaic.dataset.view_angles`), i.e. over
exactly the 3D labels of those training pairs. The paper uses K = 5000; the CPU demo default is K = 20.

The CPU demo defaults (``--train-poses 16 --views 4 --classes 20``) make a small stream of 64 (pose, view)
pairs that repeats every 4 steps, so that the loss visibly falls within 60 steps on 2 CPU cores: a network
trained from scratch needs many thousands of steps before it learns from a never-repeating stream.
``--train-poses 0 --views 180 --classes 5000 --size 220`` are the paper's scale (a GPU job).

Examples (see docs/training.md)::

    # CPU demo, 2-4 minutes on 2 cores
    python examples/train_classifier.py --steps 60 --batch-size 16 --size 128 --workers 1
    # one GPU, the paper's scale
    python examples/train_classifier.py --device cuda --amp --train-poses 0 --views 180 --classes 5000 \
        --batch-size 128 --steps 20000 --checkpoint ckpt.pt --checkpoint-every 1000
    # DDP: each rank draws its own disjoint stream; rank 0 logs, evaluates and saves
    torchrun --standalone --nproc_per_node 2 examples/train_classifier.py --steps 60 --size 128

Checkpoints (``--checkpoint PATH``, ``{step}`` in PATH is replaced by the step) hold the model, optimiser,
AMP scaler, step, epoch, position in the epoch, every rank's RNG state, the pose classes and the loss
history; ``--resume PATH`` continues from them (loaded with ``torch.load(weights_only=True)``): the resumed
run draws the same batches and reaches the same state as an uninterrupted one.

Outputs under ``--out`` (rank 0): ``log.csv`` (step, epoch, loss, elapsed time), ``metrics.json`` (settings,
loss history, evaluations, final metrics) and, with ``--plot``, a training-curve figure.

The demo data is synthetic (rendered figures, synthetic mocap): numbers measured on it only show that the
pipeline trains, not how well the method works on real images.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gpumosaic import Mocap3D, MosaicSettings, ViewSettings
from gpumosaic.classes import PoseClasses
from gpumosaic.dataset import OnlineMosaicDataset
from gpumosaic.metrics import (
    MM_PER_M,
    classification_rate,
    error_2d,
    metrics_table,
    mpjpe,
    pa_mpjpe,
    topk_oracle,
    topk_rate,
)
from gpumosaic.models import PoseClassifier
from gpumosaic.train import class_training_poses

CHECKPOINT_FORMAT = "gpumosaic.examples.train_classifier"
CHECKPOINT_VERSION = 1

# Demo mocap ids are ``subject * 100000 + frame`` (gpumosaic.sources.demo).
SUBJECT_STRIDE = 100000

# Smallest input each backbone accepts (AlexNet's strided convolutions and pools; VGG-16's five pools).
MIN_SIZE = {"alexnet": 63, "vgg16": 32}

# Settings a resumed run must share with its checkpoint (they fix the data stream or the model).
_RESUME_KEYS = ("pool", "mocap", "backbone", "classes", "size", "views", "class_views", "seed", "batch_size", "world_size",
                "workers", "heldout_subjects", "train_poses", "optimizer", "lr", "weight_decay", "amp")


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_classifier.py",
        description="Train the pose classifier (Rogez & Schmid §3-4) on on-the-fly mosaics of the demo data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=60, help="optimiser steps (in total, counting resumed ones)")
    g.add_argument("--batch-size", type=int, default=16, help="samples per step and rank")
    g.add_argument("--lr", type=float, default=3e-4, help="learning rate")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="adam, or sgd with momentum 0.9 (the paper's Caffe solver)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--backbone", choices=sorted(MIN_SIZE), default="alexnet")
    g.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--amp", action="store_true",
                   help="torch.autocast: float16 + GradScaler on CUDA, bfloat16 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers generating batches (CPU only; each draws its own stream)")
    g.add_argument("--pool", default=None,
                   help="KIND:PATH as for `gpumosaic generate`; default: the prepared real data, else the demo")
    g.add_argument("--mocap", default=None,
                   help="KIND:PATH; default: the prepared real data, else the demo (held-out split by ids // 100000)")
    g.add_argument("--seed", type=int, default=0, help="fixes cameras, epoch orders, k-means, init, dropout")
    g.add_argument("--log-every", type=int, default=5, help="print and log the loss every n steps")

    g = p.add_argument_group("data and classes")
    g.add_argument("--size", "--image-size", dest="size", type=int, default=220,
                   help="S, mosaic side in px (paper 220; smaller is faster: >= 63 for alexnet)")
    g.add_argument("--views", type=int, default=4,
                   help="V cameras per training pose (paper 180; demo default 4, see --train-poses)")
    g.add_argument("--classes", type=int, default=20, help="K pose classes (paper 5000)")
    g.add_argument("--class-views", type=int, default=None,
                   help="views 0..n-1 of each training pose whose oriented poses k-means clusters "
                        "(<= --views; default min(16, --views))")
    g.add_argument("--heldout-subjects", type=int, default=2,
                   help="the last n demo subjects (by mocap id) are held out for evaluation")
    g.add_argument("--train-poses", type=int, default=16,
                   help="use only the first n training poses, 0 for all of them (paper scale). The CPU demo "
                        "default, 16 poses x 4 views = 64 pairs, repeats every 4 steps of 16 so that the loss "
                        "visibly falls within 60 steps; AlexNet from scratch needs far more steps to learn "
                        "from a never-repeating stream")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-samples", type=int, default=256, help="held-out (pose, view) pairs evaluated")
    g.add_argument("--eval-views", type=int, default=180, help="views per held-out pose to draw pairs from")
    g.add_argument("--eval-every", type=int, default=0, help="also evaluate every n steps (0: only at the end)")
    g.add_argument("--topk", type=int, default=5, help="k of the top-k rate and top-k oracle")

    g = p.add_argument_group("checkpoints and outputs")
    g.add_argument("--checkpoint", default=None,
                   help="save a checkpoint here every --checkpoint-every steps and at the end ({step} expands)")
    g.add_argument("--checkpoint-every", type=int, default=20)
    g.add_argument("--resume", default=None, help="continue from this checkpoint")
    g.add_argument("--out", default="out/train_classifier", help="directory for log.csv and metrics.json")
    g.add_argument("--plot", default=None, help="write the training curve (PNG) here")
    g.add_argument("--quiet", action="store_true", help="print only the final metrics table")
    return p


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    positive = ("steps", "batch_size", "views", "classes", "class_views", "eval_samples", "eval_views",
                "log_every", "checkpoint_every", "topk", "heldout_subjects")
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"expected --{name.replace('_', '-')} > 0, got {getattr(args, name)}")
    for name in ("workers", "eval_every", "seed"):
        if getattr(args, name) < 0:
            parser.error(f"expected --{name.replace('_', '-')} >= 0, got {getattr(args, name)}")
    if args.train_poses < 0:
        parser.error(f"expected --train-poses >= 0, got {args.train_poses}")
    if args.class_views is None:
        args.class_views = min(16, args.views)
    if args.class_views > args.views:
        parser.error(f"expected --class-views <= --views, got {args.class_views} > {args.views}")
    if args.size < MIN_SIZE[args.backbone]:
        parser.error(f"expected --size >= {MIN_SIZE[args.backbone]} for {args.backbone}, got {args.size}")
    if not args.lr > 0:
        parser.error(f"expected --lr > 0, got {args.lr}")


# --------------------------------------------------------------------------------------------------------
# Distributed setup (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE)
# --------------------------------------------------------------------------------------------------------


def _setup(device_arg: str) -> tuple[torch.device, int, int, bool]:
    """Device, rank, world size, and whether this call initialised the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device_arg)
    if world <= 1:
        if dist.is_available() and dist.is_initialized():
            return device, dist.get_rank(), dist.get_world_size(), False
        return device, 0, 1, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return device, dist.get_rank(), dist.get_world_size(), created


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------------------------------------
# Data: held-out split and pose classes
# --------------------------------------------------------------------------------------------------------


def split_mocap(mocap: Mocap3D, heldout_subjects: int, train_poses: int | None = None) -> tuple[Mocap3D, Mocap3D]:
    """Split mocap by subject: the last ``heldout_subjects`` subjects form the held-out set.

    Subjects are ``ids // 100000``: the demo's subjects, or the real data's sequences (TRC files, DeepMimic
    clips). Returns ``(train, heldout)``; ``train_poses``
    keeps only the first n training poses.
    """
    subject = mocap.ids // SUBJECT_STRIDE
    subjects = torch.unique(subject).tolist()
    if heldout_subjects >= len(subjects):
        raise ValueError(f"Expected heldout_subjects < {len(subjects)} demo subjects, got {heldout_subjects}")
    held = torch.isin(subject, torch.tensor(subjects[-heldout_subjects:], device=subject.device))
    train_idx = torch.nonzero(~held).reshape(-1)
    if train_poses is not None:
        train_idx = train_idx[:train_poses]
    test_idx = torch.nonzero(held).reshape(-1)

    def subset(idx):
        return replace(mocap, poses=mocap.poses[idx], ids=mocap.ids[idx])

    return subset(train_idx), subset(test_idx)


# class_training_poses is gpumosaic.train's; classes serialise with PoseClasses.state()/from_state (one implementation).


# --------------------------------------------------------------------------------------------------------
# A dataset that can start mid-epoch (for exact resumption without regenerating skipped batches)
# --------------------------------------------------------------------------------------------------------


class ResumableMosaicDataset(OnlineMosaicDataset):
    """:class:`OnlineMosaicDataset` whose next iterator starts at batch ``start_batch`` of the epoch.

    ``start_batch`` counts this rank's batches in the order a DataLoader yields them: round-robin over its
    ``W`` workers, batch ``i`` coming from worker ``i mod W``. A fresh DataLoader iterator starts again at
    worker 0, so worker ``w`` of the resumed iterator takes over the stream of worker
    ``(w + start_batch) mod W`` and drops the batches that stream already produced; nothing is synthesised
    for skipped batches. Needs all workers to yield equally many batches per epoch (``batches_per_epoch``
    a multiple of ``W`` and ``drop_last``).
    """

    start_batch: int = 0

    def pair_batches(self, shard):
        w = shard.num_workers
        stream = replace(shard, worker=(shard.worker + self.start_batch) % w)
        return super().pair_batches(stream)[len(range(stream.worker, self.start_batch, w)):]


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------


def evaluate(model: torch.nn.Module, loader, classes: PoseClasses, topk: int, autocast) -> dict[str, dict]:
    """Metrics of the classifier on the held-out stream, with two reference rows.

    Rows: ``classifier`` (decoded top-1 class); ``true class`` (decoding each sample's ground-truth class:
    the quantisation floor of K classes, what a perfect classifier reaches); ``most frequent class`` (always
    the largest class: what a classifier that ignores the image reaches).

    Returns:
        ``{row: {metric: float}}`` (3D errors in mm, 2D error in box px).
    """
    was_training = model.training
    model.eval()
    logits, labels, gt3, gt2 = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            with autocast():
                out = model(batch["image"])
            logits.append(out.float())
            labels.append(batch["label"])
            gt3.append(batch["pose3d"])
            gt2.append(batch["pose2d"])
    model.train(was_training)
    logits, labels, gt3, gt2 = (torch.cat(x) for x in (logits, labels, gt3, gt2))
    k = min(topk, classes.num_classes)
    pred = logits.argmax(dim=1)
    rows = {}
    p3, p2 = classes.decode(pred)
    rows["classifier"] = {
        "class rate": classification_rate(logits, labels),
        f"top-{k} rate": topk_rate(logits, labels, k),
        f"top-{k} oracle (mm)": topk_oracle(logits, gt3, classes, k, factor=MM_PER_M).mean(),
        "MPJPE (mm)": mpjpe(p3, gt3, factor=MM_PER_M).mean(),
        "PA-MPJPE (mm)": pa_mpjpe(p3, gt3, factor=MM_PER_M).mean(),
        "2D error (px)": error_2d(p2, gt2).mean(),
    }
    for name, choice in (("true class", labels), ("most frequent class",
                                                  torch.full_like(labels, int(classes.counts.argmax())))):
        p3, p2 = classes.decode(choice)
        rows[name] = {
            "class rate": classification_rate(choice, labels),
            "MPJPE (mm)": mpjpe(p3, gt3, factor=MM_PER_M).mean(),
            "PA-MPJPE (mm)": pa_mpjpe(p3, gt3, factor=MM_PER_M).mean(),
            "2D error (px)": error_2d(p2, gt2).mean(),
        }
    return {r: {m: float(v) for m, v in row.items()} for r, row in rows.items()}


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather_rng(device: torch.device) -> list[dict]:
    """Every rank's RNG state (dropout draws from the global generators), rank order."""
    mine = _rng_state(device)
    if not _distributed():
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, {k: v.cpu() for k, v in mine.items()})
    return states


def save_checkpoint(path: Path, state: dict) -> Path:
    """``torch.save`` to a temporary file, then rename (a crash never leaves a half-written checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {state.get('version')!r}")
    return state


# --------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------


def write_log(path: Path, history: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss", "elapsed_s"])
        w.writerows(history)


def plot_curve(path: Path, history: list[list], evals: list[dict], num_classes: int, title: str) -> Path:
    """Training loss per step, its mean over each complete epoch, chance level ln K; held-out class rates
    in a second panel when there were intermediate evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in history]
    loss = [h[2] for h in history]
    by_epoch: dict[int, list] = {}
    for s, e, v, _ in history:
        by_epoch.setdefault(e, []).append((s, v))
    size = max(len(v) for v in by_epoch.values())  # batches per epoch (the first/last may be partial)
    epochs = [(max(s for s, _ in v), sum(x for _, x in v) / len(v)) for v in by_epoch.values() if len(v) == size]
    panels = 2 if len(evals) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 if panels == 1 else 10.4, 3.9), squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, loss, color="0.65", lw=1, label="training loss, per step")
    if epochs:
        ax.plot(*zip(*epochs), "o-", color="C0", lw=2, ms=4, label=f"mean over each epoch ({size} steps)")
    ax.axhline(math.log(num_classes), color="C3", ls="--", lw=1, label=f"chance: ln K = {math.log(num_classes):.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("training loss on on-the-fly mosaics", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if panels == 2:
        ax = axes[0, 1]
        ax.plot([e["step"] for e in evals], [100 * e["metrics"]["classifier"]["class rate"] for e in evals],
                "o-", color="C2", label="classifier")
        base = 100 * evals[-1]["metrics"]["most frequent class"]["class rate"]
        ax.axhline(base, color="0.5", ls=":", label="most frequent class")
        ax.axhline(100 / num_classes, color="C3", ls="--", lw=1, label="chance 1/K")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out class rate (%)")
        ax.set_title("held-out subjects", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Run the example; returns (on every rank) a dict with ``history`` ([step, epoch, loss, elapsed_s]
    rows), ``evals`` (held-out evaluations), ``metrics`` (the final one; ``None`` off rank 0), ``step``,
    ``epoch``, ``batch_in_epoch`` and ``config``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    device, rank, world, created_group = _setup(args.device)
    try:
        return _run(args, device, rank, world)
    finally:
        if created_group:
            dist.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device, rank: int, world: int) -> dict:
    lead = rank == 0
    say = (lambda *a: print(*a, flush=True)) if (lead and not args.quiet) else (lambda *a: None)
    if device.type != "cpu" and args.workers:
        raise SystemExit(f"--workers must be 0 on {device}: batches are generated on the device")
    config = {k: getattr(args, k) for k in _RESUME_KEYS if k != "world_size"}
    config["world_size"] = world

    resume = load_checkpoint(args.resume) if args.resume else None
    if resume is not None:
        diff = {k: (resume["config"].get(k), config[k]) for k in _RESUME_KEYS if resume["config"].get(k) != config[k]}
        if diff:
            raise SystemExit(f"--resume {args.resume}: settings differ from the checkpoint's (saved, now): {diff}")

    # Data: the default sources of the `gpumosaic` command (the prepared real data, else the demo), mocap
    # split by subject (demo subjects; real-data sequences: both are ``ids // 100000``).
    from gpumosaic.cli import default_source, load_sources

    pool, mocap = load_sources(args.pool, args.mocap, device)
    train_mocap, test_mocap = split_mocap(mocap, args.heldout_subjects, args.train_poses or None)
    M = len(train_mocap)
    per_rank = M * args.views // world
    streams = max(args.workers, 1)
    per_epoch = per_rank // (streams * args.batch_size) * streams  # equal for every rank and worker
    if per_epoch == 0:
        raise SystemExit(f"Too few training pairs ({M} poses x {args.views} views) for {world} ranks x "
                         f"{streams} workers x batch {args.batch_size}")
    ds = ResumableMosaicDataset(pool, train_mocap, args.batch_size, views=ViewSettings(views_per_pose=args.views),
                                device=device, seed=args.seed, engine=MosaicSettings(size=args.size),
                                batches_per_epoch=per_epoch,
                                drop_last=True, rank=rank, world_size=world)
    sources = f"pool {args.pool or default_source()}, mocap {args.mocap or default_source()}"
    say(f"data ({sources}): {len(pool)} pool images; mocap {M} training poses, {len(test_mocap)} held-out poses "
        f"(last {args.heldout_subjects} subjects); {world} rank(s) x {per_epoch} batches of "
        f"{args.batch_size} per epoch; device {device}")

    # Pose classes: fitted on rank 0 (or restored from the checkpoint), then shared.
    t0 = time.perf_counter()
    if resume is not None:
        classes = PoseClasses.from_state(resume["classes"], device)
        say(f"pose classes: K={classes.num_classes} restored from {args.resume}")
    else:
        if args.classes > M * args.class_views:
            raise SystemExit(f"--classes {args.classes} > {M * args.class_views} class-fitting poses")
        state = None
        if lead:
            pose3d, pose2d = class_training_poses(ds, args.class_views)
            gen = torch.Generator(device=device).manual_seed(args.seed)
            fitted = PoseClasses.fit(pose3d, pose2d, k=args.classes, generator=gen, skeleton=ds.skeleton,
                                     progress=False)
            state = fitted.state()
        if _distributed():
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        classes = PoseClasses.from_state(state, device)
        say(f"pose classes: K={classes.num_classes} from {M} poses x {args.class_views} views "
            f"({time.perf_counter() - t0:.1f} s); largest class {int(classes.counts.max())}, "
            f"smallest {int(classes.counts.min())}")
    ds.classes = classes

    # Held-out stream (rank 0 only): a fixed random set of (held-out pose, view) pairs, own camera seed.
    eval_loader, n_eval = None, 0
    if lead:
        eval_bs = min(args.eval_samples, max(args.batch_size, 32))
        n_pairs = len(test_mocap) * args.eval_views
        n_eval = min(math.ceil(min(args.eval_samples, n_pairs) / eval_bs) * eval_bs, n_pairs)  # samples drawn
        eval_ds = OnlineMosaicDataset(None, test_mocap, eval_bs, views=ViewSettings(views_per_pose=args.eval_views),
                                      classes=classes,
                                      device=device, seed=args.seed + 1, engine=ds.engine,
                                      batches_per_epoch=math.ceil(n_eval / eval_bs), rank=0, world_size=1)
        # An own generator: creating a DataLoader iterator draws a seed from it (from the global RNG
        # otherwise, which would shift the dropout stream and break exact resumption).
        eval_loader = DataLoader(eval_ds, batch_size=None, num_workers=args.workers,
                                 generator=torch.Generator().manual_seed(args.seed))

    # Model, optimiser, AMP.
    torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model = PoseClassifier(num_classes=classes.num_classes, backbone=args.backbone).to(device)
    # fused=True: one kernel over all parameters (on this 2-core CPU, 0.03 s instead of 0.6 s per Adam step
    # over AlexNet's 57 M parameters).
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay,
                              fused=True)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)

    step, epoch, batch_in_epoch = 0, 0, 0
    history: list[list] = []
    evals: list[dict] = []
    elapsed0 = 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        step, epoch, batch_in_epoch = resume["step"], resume["epoch"], resume["batch_in_epoch"]
        history = [list(h) for h in resume["history"]]
        evals = list(resume["evals"])
        elapsed0 = history[-1][3] if history else 0.0
        _set_rng_state(resume["rng"][rank], device)
        say(f"resumed from {args.resume} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
    else:
        torch.manual_seed(args.seed + 1 + rank)  # dropout: a different stream per rank

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if args.compile:
        net = torch.compile(net)
    loader = DataLoader(ds, batch_size=None, num_workers=args.workers,
                        generator=torch.Generator().manual_seed(args.seed))
    out = Path(args.out)

    def checkpoint(final: bool) -> None:
        rng = _gather_rng(device)  # a collective: every rank calls it
        if not (lead and args.checkpoint):
            return
        e, b = (epoch + 1, 0) if batch_in_epoch >= per_epoch else (epoch, batch_in_epoch)
        path = Path(args.checkpoint.replace("{step}", str(step)))
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config,
            "step": step, "epoch": e, "batch_in_epoch": b,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng, "classes": classes.state(), "history": history, "evals": evals,
        })
        say(f"  saved {path}")

    def run_eval() -> dict:
        res = evaluate(model, eval_loader, classes, args.topk, autocast)
        evals.append({"step": step, "metrics": res})
        r = res["classifier"]
        say(f"  held-out @ step {step}: class rate {r['class rate']:.3f}, MPJPE {r['MPJPE (mm)']:.1f} mm")
        return res

    # Training.
    say(f"training {args.backbone} for {args.steps} steps (chance loss ln K = {math.log(classes.num_classes):.3f})")
    model.train()
    pending: list[tuple[int, int, torch.Tensor]] = []
    t_start = time.perf_counter()
    while step < args.steps:
        ds.set_epoch(epoch)
        ds.start_batch = batch_in_epoch
        for batch in loader:
            with autocast():
                logits = net(batch["image"])
            loss = F.cross_entropy(logits.float(), batch["label"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            batch_in_epoch += 1
            pending.append((step, epoch, loss.detach()))
            if step % args.log_every == 0 or step == args.steps:
                losses = torch.stack([p[2] for p in pending])  # one host sync per log interval, not per step
                if _distributed():
                    dist.all_reduce(losses)
                    losses /= world
                elapsed = elapsed0 + time.perf_counter() - t_start
                history += [[s, e, v, elapsed] for (s, e, _), v in zip(pending, losses.tolist())]
                pending = []
                say(f"step {step:5d}  epoch {epoch}  loss {history[-1][2]:.4f}  "
                    f"(mean of last {len(losses)}: {sum(losses.tolist()) / len(losses):.4f})  {elapsed:.0f} s")
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                if lead:
                    run_eval()
                if _distributed():
                    dist.barrier()
            if step % args.checkpoint_every == 0 and step < args.steps:
                checkpoint(final=False)
            if step >= args.steps:
                break
        else:
            epoch += 1
            batch_in_epoch = 0
    train_s = time.perf_counter() - t_start

    metrics = None
    if lead:
        metrics = run_eval() if not (evals and evals[-1]["step"] == step) else evals[-1]["metrics"]
    if _distributed():
        dist.barrier()
    checkpoint(final=True)

    if lead:
        title = (f"{args.backbone}, K={classes.num_classes}, S={args.size}, {M} poses x {args.views} views, "
                 f"batch {args.batch_size}x{world}, {args.optimizer} lr {args.lr:g}, {device.type}")
        table = metrics_table(metrics, title=f"held-out metrics after {step} steps ({title}); {n_eval} views of "
                                             f"held-out poses; 2D error in px of the {args.size}-px box")
        print(table, flush=True)
        write_log(out / "log.csv", history)
        (out / "metrics.json").write_text(json.dumps({
            "config": config, "args": vars(args), "device": str(device), "step": step,
            "train_seconds_this_run": train_s, "history": history, "evals": evals, "metrics": metrics,
        }, indent=1))
        if args.plot:
            plot_curve(Path(args.plot), history, evals, classes.num_classes, title)
            say(f"wrote {args.plot}")
    return {"history": history, "evals": evals, "metrics": metrics, "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "config": config, "model": model}


if __name__ == "__main__":
    main(sys.argv[1:])
