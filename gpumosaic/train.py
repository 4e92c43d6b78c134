"""Training (paper §3–4.1): the pose classifier or the holistic 2D+3D regressor on mosaics and real crops.

Functional core of ``gpumosaic train`` (``docs/training.md``):

- :class:`TrainConfig`: every setting of a run, with :data:`PRESETS` ``"paper"`` (the paper's recipe:
  AlexNet, 220 px, K = 5000, batch 256, 80,000 iterations, alternating mosaics and real images) and
  ``"cpu"`` (ResNet-18 at 96 px, learns within minutes on two CPU cores).
- Data modes: ``"M"`` mosaics only (:class:`~gpumosaic.dataset.OnlineMosaicDataset`), ``"R"`` real crops
  only (:mod:`gpumosaic.realcrops`), ``"M+R"`` one mosaic batch then one real batch, alternately, as in the
  paper (:func:`batch_schedule`). Every batch is a pure function of ``(seed, kind, index)``: the mosaic
  batch ``i`` is batch ``i mod E`` of epoch ``i // E`` of the dataset's permutation, the real batch ``i``
  likewise over the real images, with per-sample flips from a generator seeded by ``(seed, i)``. So a run
  resumed from a training checkpoint draws exactly the batches of an uninterrupted run.
- Pose classes: k-means (:class:`~gpumosaic.classes.PoseClasses`) over the oriented 3D poses of the motion
  source seen from views ``0..class_views-1`` of the dataset's camera scheme (:func:`class_training_poses`),
  with their mean 2D poses in the S×S box; real crops are labelled by :func:`~gpumosaic.realcrops.real_labels`.
- Checkpoints: ``train_state.pt`` (everything for an exact resume: weights, optimiser, step, RNG, classes,
  loss history) and ``model.pt`` (an inference checkpoint of :mod:`gpumosaic.checkpoint`: weights, pose
  classes, settings; no optimiser; read by ``gpumosaic evaluate`` and ``gpumosaic predict``), both written
  atomically (temporary file, then rename) and read with ``torch.load(weights_only=True)``.

Shape glossary: B batch, J joints, K classes, S box side, N real images, M mocap poses.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .camera import look_at, project, torso_centre, view_angles
from .checkpoint import InferenceCheckpoint, load_inference_checkpoint, save_inference_checkpoint
from .classes import PoseClasses
from .dataset import OnlineMosaicDataset
from .geometry import default_margin, fit_to_box
from .settings import MosaicSettings, ViewSettings
from .sharding import epoch_permutation
from .models import MIN_SIZE, PoseClassifier, PoseRegressor, normalise_targets
from .roll import has_roll, roll_matrix, view_rolls
from .realcrops import class_box_poses, flip_crops, real_crops, real_labels
from .sources.base import Mocap3D, Pool2D

__all__ = [
    "MODES", "TASKS", "TrainConfig", "PRESETS", "preset", "batch_schedule", "class_training_poses",
    "build_model", "TrainData", "prepare_data", "mosaic_batch", "real_batch", "train", "TrainResult",
    "TrainedModel", "load_model", "save_model", "predict_logits", "atomic_save",
]

MODES = ("M", "R", "M+R")
"""Data modes: mosaics only, real crops only, both alternating batch by batch (paper §4.1)."""
TASKS = ("classifier", "regressor")

STATE_FORMAT = "gpumosaic.train_state"
FORMAT_VERSION = 1
_PERM_REAL = 2  # epoch_permutation stream of the real images (the dataset uses 0 for pairs)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (defaults: the ``"cpu"`` preset's values except where noted).

    Attributes:
        mode: ``"M"``, ``"R"`` or ``"M+R"`` (see the module docstring).
        task: ``"classifier"`` (K-way pose classes, cross-entropy) or ``"regressor"`` (``J·5`` outputs,
            ``tanh``; mean squared error on the normalised 2D joints, and on the 3D joints where known).
        backbone: ``"alexnet"`` (the paper's), ``"vgg16"`` or ``"resnet18"`` (batch normalisation).
        size: S, the network's input side in pixels (paper 220).
        classes: K pose classes (paper 5000).
        views: V cameras per mocap pose for the mosaic stream (paper 180).
        class_views: views ``0..class_views-1`` of each mocap pose that k-means clusters (≤ ``views``).
        batch_size: samples per batch (paper 256); every batch (mosaic or real) has this size.
        steps: optimiser steps; in ``"M+R"`` each batch, mosaic or real, is one step.
        optimizer: ``"sgd"`` (momentum ``momentum``) or ``"adam"``.
        lr: learning rate; ``lr_schedule`` ``"constant"`` or ``"cosine"`` (to 0 at ``steps``).
        momentum, weight_decay: optimiser settings.
        flip: mirror each real crop with probability 1/2 (left/right joints swapped).
        roll: degrees; ``0`` (default, the paper's level cameras) or ``r > 0``: every sample's camera is
            rolled by ``U[-r, r]`` about its optical axis: the mosaic stream's cameras and the class-fitting
            poses through ``ViewSettings(roll_range=(-r, r))`` (:mod:`gpumosaic.roll`), the real crops by the
            same turn in the image (:func:`~gpumosaic.realcrops.real_crops`). An option, not the paper's.
        extent_m: metres mapped to 1 by the regressor's 3D normalisation.
        margin: ``fit_to_box`` margin in px; ``None``: 10 % of ``size``.
        blend: ``True`` (default, the paper's): mosaics blended by Eq. 7–9; ``False``: copy-paste mosaics
            (Eq. 6 only), an option for comparing the two (docs/fidelity.md).
        multiband_levels: 0 (default, the paper's blending) or n ≥ 1: multi-band blending of the mosaics
            (beyond the paper, :mod:`gpumosaic.multiband`; ``MosaicSettings.multiband_levels``).
        mosaic_cache: 0 (default, the paper's never-repeating stream) or n > 0: mosaic batches ``0..n-1`` are
            synthesised once, kept in memory and reused cyclically (a CPU economy: synthesis costs as much
            as a training step there; the stream then repeats every n mosaic batches).
        seed: fixes the classes, cameras, batch orders, flips, initial weights and dropout.
        checkpoint_every: steps between training checkpoints (and at the end).
        log_every: steps between loss reads (one host sync each) and log rows.
    """

    mode: str = "M+R"
    task: str = "classifier"
    backbone: str = "resnet18"
    size: int = 96
    classes: int = 50
    views: int = 16
    class_views: int = 16
    batch_size: int = 32
    steps: int = 600
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    flip: bool = True
    roll: float = 0.0
    extent_m: float = 1.0
    margin: float | None = None
    blend: bool = True
    multiband_levels: int = 0
    mosaic_cache: int = 0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Expected mode in {MODES}, got {self.mode!r}")
        if self.task not in TASKS:
            raise ValueError(f"Expected task in {TASKS}, got {self.task!r}")
        if self.backbone not in MIN_SIZE:
            raise ValueError(f"Expected backbone in {sorted(MIN_SIZE)}, got {self.backbone!r}")
        if self.size < MIN_SIZE[self.backbone]:
            raise ValueError(f"Expected size >= {MIN_SIZE[self.backbone]} for {self.backbone}, got {self.size}")
        for name in ("classes", "views", "class_views", "batch_size", "steps", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) <= 0:
                raise ValueError(f"Expected {name} to be a positive integer, got {getattr(self, name)!r}")
        if self.class_views > self.views:
            raise ValueError(f"Expected class_views <= views, got {self.class_views} > {self.views}")
        if not (0.0 <= float(self.roll) <= 180.0):
            raise ValueError(f"Expected roll in [0, 180] degrees, got {self.roll!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"Expected optimizer 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"Expected lr_schedule 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.extent_m > 0 or self.seed < 0:
            raise ValueError(f"Expected lr > 0, weight_decay >= 0, extent_m > 0, seed >= 0, got {self.lr}, "
                             f"{self.weight_decay}, {self.extent_m}, {self.seed}")

    @property
    def box_margin(self) -> float:
        return default_margin(self.size) if self.margin is None else float(self.margin)


PRESETS: dict[str, TrainConfig] = {
    # The paper's recipe (§4.1): AlexNet, 220x220, K = 5000, 180 views, batches of 256, 80k iterations,
    # synthetic and real batches alternating. Solver: Caffe's AlexNet reference values (SGD, lr 0.01,
    # momentum 0.9, weight decay 5e-4); a GPU job.
    "paper": TrainConfig(mode="M+R", task="classifier", backbone="alexnet", size=220, classes=5000, views=180,
                         class_views=16, batch_size=256, steps=80000, optimizer="sgd", lr=0.01,
                         lr_schedule="constant", momentum=0.9, weight_decay=5e-4, checkpoint_every=1000,
                         log_every=50),
    # Two CPU cores, a few minutes: ResNet-18 (batch norm) at 96 px, K = 50, batch 32, Adam with a cosine decay.
    "cpu": TrainConfig(),
}
"""Named recipes; :func:`preset` copies one with changes."""


def preset(name: str, **changes) -> TrainConfig:
    """``PRESETS[name]`` with ``changes`` applied (validated again)."""
    if name not in PRESETS:
        raise ValueError(f"Expected a preset in {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], **changes)


def batch_schedule(mode: str, step: int) -> tuple[str, int]:
    """Which batch step ``step`` (0-based) trains on: ``("M" or "R", index within that stream)``.

    ``"M"`` and ``"R"``: every step, index = step. ``"M+R"``: even steps take mosaic batch ``step // 2``,
    odd steps real batch ``step // 2`` (one synthetic batch, then one real batch, alternately).
    """
    if mode == "M+R":
        return ("M" if step % 2 == 0 else "R"), step // 2
    if mode in ("M", "R"):
        return mode, step
    raise ValueError(f"Expected mode in {MODES}, got {mode!r}")


def class_training_poses(ds: OnlineMosaicDataset, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented 3D poses and box 2D poses of every mocap pose of ``ds`` from views ``0..views-1``.

    Uses the dataset's camera scheme (hashed angles, look-at camera at ``ds.distance``, focal ``ds.focal``,
    ``fit_to_box`` with the engine's margin): exactly the labels of those (pose, view) pairs.

    Returns:
        ``(pose3d (M·views, J, 3) metres, pose2d (M·views, J, 2) box px)`` on the dataset's device.
    """
    poses = ds.poses  # (M, J, 3) world metres
    m = torch.arange(poses.shape[0], device=poses.device)[:, None]
    v = torch.arange(views, device=poses.device)[None, :]
    az, el = view_angles(m, v, ds.seed, ds.views)  # (M, V)
    target = torso_centre(poses, ds.skeleton)[:, None, :]
    R, t = look_at(target, az, el, ds.distance)  # cam_from_world (M, V, 3, 3), (M, V, 3)
    cam = torch.einsum("...ij,...kj->...ki", R, poses[:, None]) + t[..., None, :]  # (M, V, J, 3)
    if has_roll(ds.views):  # rolled cameras (gpumosaic.roll): p' = Q p in camera axes
        q = roll_matrix(view_rolls(m, v, ds.seed, ds.views, cam.dtype))  # (M, V, 3, 3)
        cam = torch.einsum("...ij,...kj->...ki", q, cam)
    pose3d = cam - torso_centre(cam, ds.skeleton)[..., None, :]
    settings = ds.engine.settings
    pose2d, _ = fit_to_box(project(cam, ds.focal), settings.size, settings.margin)
    j = poses.shape[1]
    return pose3d.reshape(-1, j, 3), pose2d.reshape(-1, j, 2)


def build_model(config: TrainConfig, num_outputs: int) -> torch.nn.Module:
    """The network of ``config`` (random initialisation from the current torch seed): a
    :class:`~gpumosaic.models.PoseClassifier` with ``num_outputs`` = K classes, or a
    :class:`~gpumosaic.models.PoseRegressor` with ``num_outputs`` = J joints."""
    if config.task == "classifier":
        return PoseClassifier(num_classes=num_outputs, backbone=config.backbone)
    return PoseRegressor(num_joints=num_outputs, backbone=config.backbone)


# --------------------------------------------------------------------------------------------------------
# Data streams
# --------------------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """Everything the batches are drawn from (built by :func:`prepare_data`).

    Attributes:
        config: the run's settings.
        mosaics: the mosaic stream (``None`` in mode ``"R"``).
        real: the real images (``None`` in mode ``"M"``).
        real_pose3d: float (N, J, 3) oriented 3D poses of the real images (camera axes), or ``None``.
        real_has3d: bool (N,) where ``real_pose3d`` is known, or ``None``.
        classes: the pose classes (``None`` for the regressor).
        box_poses: :func:`~gpumosaic.realcrops.class_box_poses` of ``classes`` (``None`` without classes).
        mosaic_batches: the current epoch's pair batches of the dataset.
        mosaic_store: mosaic batches kept for reuse (``config.mosaic_cache``), by index.
    """

    config: TrainConfig
    mosaics: OnlineMosaicDataset | None
    real: Pool2D | None
    real_pose3d: torch.Tensor | None
    real_has3d: torch.Tensor | None
    classes: PoseClasses | None
    box_poses: tuple[torch.Tensor, torch.Tensor] | None
    mosaic_batches: dict = field(default_factory=dict)
    mosaic_store: dict = field(default_factory=dict)

    @property
    def skeleton(self):
        return (self.mosaics.skeleton if self.mosaics is not None else self.real.skeleton)


def prepare_data(config: TrainConfig, pool: Pool2D | None, mocap: Mocap3D | None, real: Pool2D | None = None,
                 real_pose3d: torch.Tensor | None = None, classes: PoseClasses | None = None,
                 device: torch.device | str = "cpu", progress: bool = False) -> TrainData:
    """Build the streams of a run and, when not given, fit its pose classes.

    Args:
        config: the settings.
        pool: the annotated images the mosaics are made of (needed unless mode ``"R"``).
        mocap: the motion source: the mosaics' 3D poses and the pose classes (needed unless mode ``"R"``
            with given ``classes`` or the regressor).
        real: the real images of the real batches (mode ``"R"`` / ``"M+R"``); ``None``: ``pool``.
        real_pose3d: float (N, J, 3) oriented 3D poses of ``real`` (NaN rows: unknown), or ``None``.
        classes: fitted pose classes to reuse (e.g. the same classes for several conditions).
        device: where batches are made.
    """
    device = torch.device(device)
    real = (pool if real is None else real) if config.mode != "M" else None
    mosaics = None
    if config.mosaic_cache < 0:
        raise ValueError(f"Expected mosaic_cache >= 0, got {config.mosaic_cache}")
    if config.mode != "R" or (config.task == "classifier" and classes is None):
        if pool is None or mocap is None:
            raise ValueError(f"Expected a pool and a mocap for mode {config.mode!r} / fitting classes, got "
                             f"pool={type(pool).__name__}, mocap={type(mocap).__name__}")
        mosaics = OnlineMosaicDataset(pool, mocap, config.batch_size, views=ViewSettings(views_per_pose=config.views,
                                                                       roll_range=(-config.roll, config.roll)),
                                      device=device, seed=config.seed,
                                      engine=MosaicSettings(size=config.size, margin=config.margin,
                                                            blend=config.blend,
                                                            multiband_levels=config.multiband_levels),
                                      drop_last=True, rank=0, world_size=1)
        if mosaics.num_pairs < config.batch_size:
            raise ValueError(f"Expected at least batch_size={config.batch_size} (pose, view) pairs, got "
                             f"{len(mocap)} poses x {config.views} views")
    if config.task == "classifier" and classes is None:
        pose3d, pose2d = class_training_poses(mosaics, config.class_views)
        if config.classes > pose3d.shape[0]:
            raise ValueError(f"Expected classes <= {pose3d.shape[0]} class-fitting poses "
                             f"({len(mocap)} poses x {config.class_views} views), got {config.classes}")
        gen = torch.Generator(device=device).manual_seed(config.seed)
        classes = PoseClasses.fit(pose3d, pose2d, k=config.classes, generator=gen, skeleton=mosaics.skeleton,
                                  progress=progress)
    if classes is not None:
        classes = classes.to(device)
        if mosaics is not None:
            mosaics.classes = classes
    if config.mode == "R":
        mosaics = None
    has3d = None
    if real is not None:
        real = real.to(device)
        if real_pose3d is not None:
            real_pose3d = real_pose3d.to(device=device, dtype=torch.float32)
            has3d = torch.isfinite(real_pose3d).all(-1).all(-1)
            real_pose3d = torch.nan_to_num(real_pose3d)
    box = class_box_poses(classes, config.size, config.box_margin) if classes is not None else None
    return TrainData(config, mosaics, real, real_pose3d if real is not None else None, has3d, classes, box)


def mosaic_batch(data: TrainData, index: int) -> dict[str, torch.Tensor]:
    """Mosaic batch ``index`` of the stream: batch ``index mod E`` of epoch ``index // E`` (E full batches
    per epoch of the dataset's pair permutation; the incomplete last one is dropped). Keys: ``image``, ``pose2d``, ``pose3d``, ``has3d``, ``label``."""
    cache = data.config.mosaic_cache
    if cache:
        index = index % cache
        if index not in data.mosaic_store:
            data.mosaic_store[index] = _mosaic_batch(data, index)
        return data.mosaic_store[index]
    return _mosaic_batch(data, index)


def _mosaic_batch(data: TrainData, index: int) -> dict[str, torch.Tensor]:
    ds = data.mosaics
    epoch, i = divmod(index, len(ds.pair_batches(ds.shard(0, 1))) if not data.mosaic_batches else
                      len(next(iter(data.mosaic_batches.values()))))
    if epoch not in data.mosaic_batches:
        ds.set_epoch(epoch)
        data.mosaic_batches = {epoch: ds.pair_batches(ds.shard(0, 1))}
    out = ds.synthesise(data.mosaic_batches[epoch][i])
    return {"image": out.image, "pose2d": out.pose2d, "pose3d": out.pose3d, "label": out.label,
            "has3d": torch.ones_like(out.label, dtype=torch.bool)}


def real_batch(data: TrainData, index: int) -> dict[str, torch.Tensor]:
    """Real batch ``index``: B images in the order of the real epoch permutation (epochs follow one
    another without a gap, so every batch is full), cropped, flipped with probability 1/2 each (generator
    seeded by ``(seed, index)``) and labelled (:func:`~gpumosaic.realcrops.real_labels`). Same keys as
    :func:`mosaic_batch`."""
    cfg, real = data.config, data.real
    n, b = len(real), cfg.batch_size
    pos = torch.arange(index * b, (index + 1) * b)
    epochs = torch.unique(pos // n).tolist()
    perms = {e: epoch_permutation(n, cfg.seed, e, _PERM_REAL) for e in epochs}
    rows = torch.cat([perms[e] for e in epochs])[pos - epochs[0] * n].to(real.images.device)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    flip = (torch.rand(b, generator=gen) < 0.5).to(rows.device) if cfg.flip else None
    # Rolls come after the flips in the same stream, so a roll-free run draws exactly the flips it did before.
    roll = ((torch.rand(b, generator=gen) * 2 - 1) * cfg.roll).to(rows.device) if cfg.roll else None
    images, pose2d = real_crops(real, rows, cfg.size, cfg.box_margin, roll=roll)
    pose3d = data.real_pose3d[rows] if data.real_pose3d is not None else None
    has3d = data.real_has3d[rows] if data.real_has3d is not None else torch.zeros(b, dtype=torch.bool,
                                                                                    device=rows.device)
    if pose3d is not None and roll is not None:
        pose3d = torch.einsum("bij,bkj->bki", roll_matrix(roll.to(pose3d.dtype)), pose3d)
    if cfg.flip:
        images, pose2d, pose3d = flip_crops(images, pose2d, flip, real.skeleton, pose3d)
    if data.classes is not None:
        label = real_labels(pose2d, data.classes, cfg.size, cfg.box_margin, pose3d, has3d, data.box_poses)
    else:
        label = torch.full((b,), -1, dtype=torch.long, device=rows.device)
    if pose3d is None:
        pose3d = torch.zeros(b, pose2d.shape[1], 3, device=pose2d.device)
    return {"image": images, "pose2d": pose2d, "pose3d": pose3d, "label": label, "has3d": has3d}


def next_batch(data: TrainData, step: int) -> tuple[str, dict[str, torch.Tensor]]:
    """The batch of step ``step`` (0-based): ``(kind, batch)`` per :func:`batch_schedule`."""
    kind, index = batch_schedule(data.config.mode, step)
    return kind, (mosaic_batch(data, index) if kind == "M" else real_batch(data, index))


def batch_loss(model: torch.nn.Module, batch: dict, config: TrainConfig) -> torch.Tensor:
    """Cross-entropy on ``label`` (classifier) or mean squared error on the normalised joints (regressor;
    3D terms only where ``has3d``)."""
    out = model(batch["image"])
    if config.task == "classifier":
        return F.cross_entropy(out.float(), batch["label"])
    target = normalise_targets(batch["pose2d"], batch["pose3d"], config.size, config.extent_m)
    j = batch["pose2d"].shape[1]
    err = (out.float() - target) ** 2  # (B, J·5)
    w = torch.ones_like(err)
    w[:, 2 * j:] = batch["has3d"][:, None].float()
    return (err * w).sum() / w.sum()


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def save_model(path: str | os.PathLike, model: torch.nn.Module, config: TrainConfig,
               classes: PoseClasses | None, skeleton: str) -> Path:
    """Write an inference checkpoint (:mod:`gpumosaic.checkpoint`, read by ``gpumosaic evaluate`` and
    ``gpumosaic predict``): weights, pose classes (their mean 2D poses in the S×S input box) and the
    :class:`TrainConfig` as settings; no optimiser."""
    ckpt = InferenceCheckpoint(model=config.task, backbone=config.backbone, input_size=config.size,
                               state_dict=model.state_dict(), classes=classes, class_box=(config.size, config.margin),
                               skeleton=skeleton, margin=config.margin, extent_m=config.extent_m,
                               settings={"source": STATE_FORMAT, **asdict(config)})
    return save_inference_checkpoint(path, ckpt)


@dataclass(frozen=True)
class TrainedModel:
    """An inference checkpoint loaded by :func:`load_model`.

    Attributes:
        model: the network in eval mode (input float (B, 3, S, S) in [0, 1]).
        classes: the pose classes (classifier) or ``None`` (regressor).
        config: the :class:`TrainConfig` it was trained with (``None`` for a checkpoint written elsewhere).
        checkpoint: the :class:`~gpumosaic.checkpoint.InferenceCheckpoint` read.
    """

    model: torch.nn.Module
    classes: PoseClasses | None
    config: TrainConfig | None
    checkpoint: InferenceCheckpoint

    @property
    def size(self) -> int:
        """S, the input side in pixels."""
        return self.checkpoint.input_size


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> TrainedModel:
    """Read an inference checkpoint (:func:`gpumosaic.checkpoint.load_inference_checkpoint`,
    ``torch.load(weights_only=True)``) and build its network.

    Raises:
        ValueError: not an inference checkpoint (e.g. a ``train_state.pt``), or an unsupported version.
    """
    ckpt = load_inference_checkpoint(path, device)
    names = {f.name for f in fields(TrainConfig)}
    config = None
    if ckpt.settings.get("source") == STATE_FORMAT:
        config = TrainConfig(**{k: v for k, v in ckpt.settings.items() if k in names})
    return TrainedModel(ckpt.build_model(device), ckpt.classes, config, ckpt)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Network outputs (B, K or J·5) for float images (B, 3, S, S) in [0, 1], in eval mode, in chunks."""
    was = model.training
    model.eval()
    out = torch.cat([model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    model.train(was)
    return out


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained network (train mode).
        classes: the pose classes (``None`` for the regressor).
        history: rows ``[step, kind, loss, elapsed_s]`` (one per logged step, ``kind`` "M" or "R").
        step: steps done.
        model_path, state_path: the checkpoints written (``None`` without ``out``).
    """

    model: torch.nn.Module
    classes: PoseClasses | None
    history: list
    step: int
    model_path: Path | None
    state_path: Path | None


def _lr(config: TrainConfig, step: int) -> float:
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
    return config.lr


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def train(config: TrainConfig, data: TrainData, out: str | os.PathLike | None = None, *, resume: bool = True,
          progress: bool = True, log: Callable[[str], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train ``config`` on ``data`` (:func:`prepare_data`) for ``config.steps`` steps.

    Args:
        config: the settings (must equal ``data.config``).
        data: the batch streams and classes.
        out: folder for ``train_state.pt`` (every ``checkpoint_every`` steps and at the end), ``model.pt``
            (at the end) and ``log.csv``; ``None`` writes nothing.
        resume: continue from ``out/train_state.pt`` when it exists (its settings must equal ``config``).
        progress: a tqdm bar over the steps.
        log: receives one line per event (default: nothing).
        stop_after: stop (with a checkpoint) after this many steps of this call, e.g. to test resuming.

    Returns:
        :class:`TrainResult`.
    """
    from tqdm.auto import tqdm

    if data.config != config:
        raise ValueError("Expected data prepared with the same config (prepare_data(config, ...))")
    log = log or (lambda text: None)
    device = (data.mosaics.device if data.mosaics is not None else data.real.images.device)
    skeleton = data.skeleton
    num_out = data.classes.num_classes if config.task == "classifier" else len(skeleton)
    torch.manual_seed(config.seed)
    model = build_model(config, num_out).to(device)
    opt = _optimizer(config, model)
    step, history = 0, []
    out = None if out is None else Path(out)
    state_path = None if out is None else out / "train_state.pt"
    if resume and state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or state.get("version") != FORMAT_VERSION:
            raise ValueError(f"{state_path} is not a {STATE_FORMAT} v{FORMAT_VERSION} file")
        saved = TrainConfig(**state["config"])
        diff = {k: (getattr(saved, k), getattr(config, k)) for k in asdict(config)
                if getattr(saved, k) != getattr(config, k) and k not in ("steps", "checkpoint_every", "log_every")}
        if diff:
            raise ValueError(f"{state_path}: settings differ from the checkpoint's (saved, now): {diff}")
        if config.task == "classifier":
            restored = PoseClasses.from_state(state["classes"], device)
            if not torch.equal(restored.centres, data.classes.centres):
                raise ValueError(f"{state_path}: the pose classes differ from the data's")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, history = int(state["step"]), [list(h) for h in state["history"]]
        log(f"resumed from {state_path} at step {step}")
    else:
        torch.manual_seed(config.seed + 1)  # dropout stream

    def save_state() -> None:
        if state_path is None:
            return
        atomic_save({"format": STATE_FORMAT, "version": FORMAT_VERSION, "config": asdict(config), "step": step,
                     "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                     "classes": None if data.classes is None else data.classes.state(),
                     "history": history}, state_path)
        _write_log(out / "log.csv", history)

    model.train()
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    pending: list[tuple[int, str, torch.Tensor]] = []
    t0 = time.perf_counter() - (history[-1][3] if history else 0.0)
    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.mode}", unit="step", disable=not progress)
    while step < end:
        kind, batch = next_batch(data, step)
        for g in opt.param_groups:
            g["lr"] = _lr(config, step)
        loss = batch_loss(model, batch, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        pending.append((step, kind, loss.detach()))
        bar.update(1)
        if step % config.log_every == 0 or step == end:
            values = torch.stack([p[2] for p in pending]).tolist()  # one host sync per log interval
            elapsed = time.perf_counter() - t0
            history += [[s, k, v, elapsed] for (s, k, _), v in zip(pending, values)]
            pending = []
            bar.set_postfix(loss=f"{sum(values) / len(values):.3f}")
        if step % config.checkpoint_every == 0 or step == end:
            save_state()
    bar.close()
    model_path = None
    if out is not None and step == config.steps:
        model_path = save_model(out / "model.pt", model, config, data.classes, skeleton.name)
        log(f"wrote {model_path}")
    return TrainResult(model, data.classes, history, step, model_path, state_path)


def _write_log(path: Path, history: list) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "kind", "loss", "elapsed_s"])
        w.writerows(history)
    os.replace(tmp, path)
