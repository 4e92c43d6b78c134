"""Inference checkpoints: the weights, the pose classes and the settings a trained network needs, nothing else.

A training checkpoint for exact resumption also holds the optimiser, the scaler, random states and the
history (hundreds of MB for AlexNet); an inference checkpoint holds only what ``gpumosaic evaluate`` and
``gpumosaic predict`` read. It is a plain ``dict`` of tensors and JSON-like values written by ``torch.save``
and read back with ``torch.load(weights_only=True)`` (no pickle of arbitrary objects):

======================  =====================================================================================
key                     value
======================  =====================================================================================
``format``              ``"gpumosaic.inference"``
``version``             ``1``
``model``               ``"classifier"`` (K-way, :class:`~gpumosaic.models.PoseClassifier`) or ``"regressor"``
                        (:class:`~gpumosaic.models.PoseRegressor`)
``backbone``            a key of :data:`gpumosaic.models.BACKBONES`, e.g. ``"alexnet"``
``input_size``          side S of the square network input in pixels (the paper: 220)
``margin``              pixels kept free on each side of the joints' extent in that input (``fit_to_box``'s
                        margin; ``None`` = 10 % of S)
``normalise_input``     bool, the model's own ImageNet normalisation of [0, 1] inputs
``num_outputs``         K (classifier) or J (regressor: J·5 outputs)
``skeleton``            joint layout name, e.g. ``"lsp14"``
``extent_m``            regressor only: metres mapped to 1 by :func:`~gpumosaic.models.normalise_targets`
``state_dict``          the model's ``state_dict()`` (tensors)
``classes``             ``None`` or a dict of the :class:`~gpumosaic.classes.PoseClasses` tensors:
                        ``centres`` (K, J, 3), ``mean_pose3d`` (K, J, 3), ``mean_pose2d`` (K, J, 2) or
                        ``None``, ``counts`` (K,), ``skeleton`` str, ``box_size`` int and ``box_margin``
                        (float or ``None``): the S×S box the class mean 2D poses are expressed in
``settings``            a JSON-like dict of the training settings (free form, reported as is)
======================  =====================================================================================

Convention:
    The network sees a person cropped by :func:`~gpumosaic.geometry.fit_to_box`: the joints' bounding box
    centred in the S×S input, its longer side ``S - 2·margin``. Class mean 2D poses are ``(x, y)`` pixels
    of their own box; class mean 3D poses are metres in the camera frame, torso-centred.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .classes import PoseClasses
from .skeleton import get_skeleton

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "InferenceCheckpoint", "save_inference_checkpoint",
           "load_inference_checkpoint"]

CHECKPOINT_FORMAT = "gpumosaic.inference"
CHECKPOINT_VERSION = 1
_EXAMPLE_FORMAT = "gpumosaic.examples.train_classifier"  # examples/train_classifier.py's training checkpoints
_TRAIN_FORMAT = "gpumosaic.model"  # gpumosaic.train's model.pt (weights, classes, TrainConfig settings)
_MODELS = ("classifier", "regressor")


@dataclass(frozen=True)
class InferenceCheckpoint:
    """What a trained network needs at inference (see the module docstring for the file layout).

    Attributes:
        model: ``"classifier"`` or ``"regressor"``.
        backbone: a key of :data:`gpumosaic.models.BACKBONES`.
        input_size: S, the network's square input side in pixels.
        state_dict: the model's weights.
        classes: the pose classes (required for a classifier; optional for a regressor, where it only
            serves the class lower bound).
        class_box: ``(size, margin)`` of the box the classes' mean 2D poses are in (``margin`` ``None`` =
            10 % of size).
        skeleton: joint layout name.
        margin: the input crop's margin (``None`` = 10 % of ``input_size``).
        normalise_input: the model normalises its [0, 1] input with ImageNet statistics.
        extent_m: the regressor's 3D scale (metres mapped to 1).
        settings: free-form JSON-like training settings.
    """

    model: str
    backbone: str
    input_size: int
    state_dict: dict
    classes: PoseClasses | None = None
    class_box: tuple[int, float | None] = (220, None)
    skeleton: str = "lsp14"
    margin: float | None = None
    normalise_input: bool = True
    extent_m: float = 1.0
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in _MODELS:
            raise ValueError(f"Expected model in {_MODELS}, got {self.model!r}")
        if self.model == "classifier" and self.classes is None:
            raise ValueError("A classifier checkpoint needs its pose classes (classes=None)")
        if int(self.input_size) != self.input_size or self.input_size < 1:
            raise ValueError(f"Expected a positive integer input_size, got {self.input_size!r}")
        skel = get_skeleton(self.skeleton)
        object.__setattr__(self, "skeleton", skel.name)
        if self.classes is not None and self.classes.skeleton != skel.name:
            raise ValueError(f"classes are {self.classes.skeleton} but the checkpoint says {skel.name}")

    @property
    def num_outputs(self) -> int:
        """K for a classifier, J for a regressor."""
        if self.model == "classifier":
            return self.classes.num_classes
        return len(get_skeleton(self.skeleton))

    def build_model(self, device: torch.device | str | None = None) -> nn.Module:
        """The network with its weights, in ``eval()`` mode on ``device``."""
        from .models import BACKBONES, PoseClassifier, PoseRegressor

        if self.backbone not in BACKBONES:
            raise ValueError(f"Checkpoint backbone {self.backbone!r} is not one of {sorted(BACKBONES)} in this "
                             f"gpumosaic version")
        if self.model == "classifier":
            net = PoseClassifier(self.num_outputs, self.backbone, normalise_input=self.normalise_input)
        else:
            net = PoseRegressor(self.num_outputs, self.backbone, normalise_input=self.normalise_input)
        try:
            net.load_state_dict(self.state_dict)
        except RuntimeError as err:
            raise ValueError(f"Checkpoint weights do not fit a {self.backbone} {self.model}: "
                             f"{str(err).splitlines()[0]}") from None
        return net.to(device).eval()

    def to(self, device=None) -> "InferenceCheckpoint":
        return replace(self, classes=None if self.classes is None else self.classes.to(device))


def _classes_state(classes: PoseClasses | None, box: tuple[int, float | None]) -> dict | None:
    if classes is None:
        return None
    return {**classes.state(), "box_size": int(box[0]), "box_margin": None if box[1] is None else float(box[1])}


def save_inference_checkpoint(path: str | os.PathLike, checkpoint: InferenceCheckpoint) -> Path:
    """Write ``checkpoint`` as a plain dict with ``torch.save`` (through a temporary file, then renamed)."""
    path = Path(path)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": checkpoint.model,
        "backbone": checkpoint.backbone,
        "input_size": int(checkpoint.input_size),
        "margin": None if checkpoint.margin is None else float(checkpoint.margin),
        "normalise_input": bool(checkpoint.normalise_input),
        "num_outputs": int(checkpoint.num_outputs),
        "skeleton": checkpoint.skeleton,
        "extent_m": float(checkpoint.extent_m),
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()},
        "classes": _classes_state(checkpoint.classes, checkpoint.class_box),
        "settings": dict(checkpoint.settings),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_inference_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None
                              ) -> InferenceCheckpoint:
    """Read a file written by :func:`save_inference_checkpoint` (``torch.load(weights_only=True)``).

    Also read: ``gpumosaic train``'s ``model.pt`` (format ``"gpumosaic.model"``: weights, classes and its
    training settings) and a training checkpoint of ``examples/train_classifier.py`` (its weights, pose
    classes and settings; input size = mosaic size, default margin; the optimiser state is ignored).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: neither an inference checkpoint nor a training checkpoint of the example, or an
            unsupported version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or pickled files
        raise ValueError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    if isinstance(state, dict) and state.get("format") == _EXAMPLE_FORMAT:
        return _from_example(state, device)
    if isinstance(state, dict) and state.get("format") == _TRAIN_FORMAT and state.get("version") == 1:
        return _from_train(state, device)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a gpumosaic inference checkpoint (format {found!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported inference checkpoint version {state.get('version')!r}")
    cs = state.get("classes")
    classes, box = None, (220, None)
    if cs is not None:
        classes = PoseClasses.from_state(cs, device)
        box = (int(cs["box_size"]), cs["box_margin"])
    return InferenceCheckpoint(
        model=state["model"], backbone=state["backbone"], input_size=int(state["input_size"]),
        state_dict=state["state_dict"], classes=classes, class_box=box, skeleton=state["skeleton"],
        margin=state["margin"], normalise_input=bool(state["normalise_input"]),
        extent_m=float(state.get("extent_m", 1.0)), settings=dict(state.get("settings") or {}),
    )


def _from_example(state: dict, device) -> InferenceCheckpoint:
    """The inference part of an ``examples/train_classifier.py`` training checkpoint."""
    config, cs = state["config"], state["classes"]
    classes = PoseClasses.from_state(cs, device)
    size = int(config["size"])
    return InferenceCheckpoint(
        model="classifier", backbone=config["backbone"], input_size=size, state_dict=state["model"],
        classes=classes, class_box=(size, None), skeleton=classes.skeleton, margin=None,
        settings={"source": _EXAMPLE_FORMAT, "step": int(state.get("step", 0)), **config},
    )


def _from_train(state: dict, device) -> InferenceCheckpoint:
    """``gpumosaic train``'s inference file: ``{task, settings (TrainConfig fields, skeleton, num_joints,
    box_margin), model (state dict), classes}``; its classes' 2D means are in the S×S training box."""
    settings, cs = dict(state["settings"]), state.get("classes")
    classes = None if cs is None else PoseClasses.from_state(cs, device)
    size = int(settings["size"])
    margin = settings.get("margin")
    return InferenceCheckpoint(
        model=state["task"], backbone=settings["backbone"], input_size=size, state_dict=state["model"],
        classes=classes, class_box=(size, settings.get("box_margin", margin)),
        skeleton=settings.get("skeleton", "lsp14"), margin=margin, extent_m=float(settings.get("extent_m", 1.0)),
        settings={"source": _TRAIN_FORMAT, **settings},
    )
