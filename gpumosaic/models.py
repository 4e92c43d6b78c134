"""Networks of the paper's §3–4 (DESIGN.md step 10): the K-way pose classifier and the holistic regressor.

Both wrap a torchvision backbone (AlexNet, as in the paper, VGG-16, or ResNet-18 with batch normalisation)
whose last fully connected layer is replaced: by a K-way linear layer for :class:`PoseClassifier` (K = 5000 pose classes from k-means over
oriented 3D poses, :mod:`gpumosaic.classes`), by a ``J·5``-way linear layer followed by ``tanh`` for
:class:`PoseRegressor` (2D and 3D coordinates normalised to [-1, 1] by :func:`normalise_targets`).

Both take the 220×220 mosaics of :class:`~gpumosaic.dataset.OnlineMosaicDataset`: torchvision's adaptive
average pooling (``(6, 6)`` for AlexNet, ``(7, 7)`` for VGG-16, ``(1, 1)`` for ResNet-18) makes the fully connected head independent of
the input size, so 220×220 (the paper's size; AlexNet's features are 256×5×5 there, VGG-16's 512×6×6) needs
no resizing.

Weights are never downloaded: the backbones are built with ``weights=None``. ``pretrained`` takes the path
of a torchvision state dict you downloaded yourself (e.g. ``alexnet-owt-7be5be79.pth``); its last layer is
dropped and replaced.

Shape glossary: B batch, J joints, K classes, S = 220 box side.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from ._check import check_shape

__all__ = [
    "BACKBONES",
    "MIN_SIZE",
    "PoseClassifier",
    "PoseRegressor",
    "build_backbone",
    "normalise_targets",
    "denormalise",
]

# ImageNet statistics used by torchvision's pretrained weights (applied when ``normalise_input``).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _alexnet() -> nn.Module:
    from torchvision.models import alexnet

    return alexnet(weights=None)


def _vgg16() -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(weights=None)


def _resnet18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None)


BACKBONES: dict[str, Callable[[], nn.Module]] = {"alexnet": _alexnet, "vgg16": _vgg16, "resnet18": _resnet18}
"""Backbone name -> constructor of the torchvision model (``weights=None``: no download). ``resnet18`` is a
small modern network with batch normalisation (11.7 M parameters against AlexNet's 61 M) that learns from
random initialisation within minutes on a CPU at 96–128 px (``docs/training.md``)."""

MIN_SIZE = {"alexnet": 63, "vgg16": 32, "resnet18": 32}
"""Smallest input side (px) each backbone accepts (strided convolutions and pools before adaptive pooling)."""


def _last_name(net: nn.Module) -> str:
    """State-dict prefix of the last linear layer that is replaced: ResNet's ``fc``, else ``classifier.6``
    (AlexNet, VGG-16 and any backbone built like them)."""
    return "fc" if isinstance(getattr(net, "fc", None), nn.Linear) and not hasattr(net, "classifier") \
        else "classifier.6"


def _get_last(net: nn.Module) -> nn.Linear:
    return net.fc if _last_name(net) == "fc" else net.classifier[6]


def _set_last(net: nn.Module, layer: nn.Linear) -> None:
    if _last_name(net) == "fc":
        net.fc = layer
    else:
        net.classifier[6] = layer


def build_backbone(backbone: str, num_outputs: int, pretrained: bool | str | os.PathLike = False) -> nn.Module:
    """A torchvision AlexNet / VGG-16 / ResNet-18 whose last linear layer (``classifier[6]``, ResNet's ``fc``)
    outputs ``num_outputs``.

    Args:
        backbone: ``"alexnet"`` (the paper's), ``"vgg16"`` or ``"resnet18"``.
        num_outputs: width of the new last layer (> 0).
        pretrained: ``False`` for random initialisation (torchvision's), or the path of a local torchvision
            state dict for the same architecture (the original 1000-way last layer is skipped). ``True`` is
            rejected: this library never downloads weights.

    Returns:
        the ``nn.Module`` mapping float (B, 3, H, W) to (B, num_outputs).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"Expected backbone in {sorted(BACKBONES)}, got {backbone!r}")
    if int(num_outputs) != num_outputs or num_outputs <= 0:
        raise ValueError(f"Expected num_outputs to be a positive integer, got {num_outputs}")
    if pretrained is True:
        raise ValueError(
            "Expected pretrained=False or the path of a local torchvision state dict; gpumosaic never "
            "downloads weights (download them yourself and pass the file path)"
        )
    net = BACKBONES[backbone]()
    if pretrained:
        state = torch.load(os.fspath(pretrained), map_location="cpu", weights_only=True)
        prefix = _last_name(net) + "."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(prefix)]
        if missing or unexpected:
            raise ValueError(
                f"Expected a torchvision {backbone} state dict in pretrained={os.fspath(pretrained)!r}, "
                f"got missing keys {missing[:4]} and unexpected keys {unexpected[:4]}"
            )
    last = _get_last(net)
    _set_last(net, nn.Linear(last.in_features, int(num_outputs)))
    return net


class _Backbone(nn.Module):
    """Shared wrapper: optional ImageNet normalisation of [0, 1] images, then the torchvision network."""

    def __init__(self, backbone: str, num_outputs: int, pretrained, normalise_input: bool) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.net = build_backbone(backbone, num_outputs, pretrained)
        self.normalise_input = bool(normalise_input)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        check_shape(images, ["B", "3", "H", "W"], name="images")
        if not images.is_floating_point():
            raise TypeError(f"Expected float images in [0, 1], got {images.dtype}")
        x = images
        if self.normalise_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.net(x)


class PoseClassifier(_Backbone):
    """K-way 3D pose classifier (the paper's §3): AlexNet (or VGG-16) with a K-way last layer.

    Args:
        num_classes: K (paper: 5000), the number of pose classes of :class:`gpumosaic.classes.PoseClasses`.
        backbone: ``"alexnet"`` (paper), ``"vgg16"`` or ``"resnet18"``.
        pretrained: ``False`` or the path of a local torchvision state dict (see :func:`build_backbone`).
        normalise_input: subtract the ImageNet mean and divide by its std inside the model, so that it takes
            the dataset's [0, 1] images directly.

    Shape:
        - Input: float (B, 3, H, W) in [0, 1], H = W = 220 in the paper (any size ≥ 63 px for AlexNet,
          ≥ 32 px for VGG-16 works).
        - Output: float (B, K) logits (train with ``nn.CrossEntropyLoss`` on the dataset's ``label``).

    Example:
        >>> net = PoseClassifier(num_classes=10)
        >>> net(torch.rand(2, 3, 220, 220)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 5000,
        backbone: str = "alexnet",
        pretrained: bool | str | os.PathLike = False,
        normalise_input: bool = True,
    ) -> None:
        super().__init__(backbone, num_classes, pretrained, normalise_input)
        self.num_classes = int(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(images)


class PoseRegressor(_Backbone):
    """Holistic 2D + 3D pose regressor (the paper's §4 baseline): backbone, ``J·5`` outputs, ``tanh``.

    The output row is ``[x_0, y_0, …, x_{J-1}, y_{J-1}, X_0, Y_0, Z_0, …]``: J normalised 2D joints then J
    normalised 3D joints, each in (-1, 1) (see :func:`normalise_targets` / :func:`denormalise`).

    Args:
        num_joints: J (14 for LSP14).
        backbone: ``"alexnet"`` or ``"vgg16"``.
        pretrained: ``False`` or the path of a local torchvision state dict (see :func:`build_backbone`).
        normalise_input: as in :class:`PoseClassifier`.

    Shape:
        - Input: float (B, 3, H, W) in [0, 1] (H = W = 220).
        - Output: float (B, J·5) in (-1, 1).

    Example:
        >>> net = PoseRegressor(num_joints=14)
        >>> pose2d, pose3d = denormalise(net(torch.rand(2, 3, 220, 220)), num_joints=14)
        >>> pose2d.shape, pose3d.shape
        (torch.Size([2, 14, 2]), torch.Size([2, 14, 3]))
    """

    def __init__(
        self,
        num_joints: int = 14,
        backbone: str = "alexnet",
        pretrained: bool | str | os.PathLike = False,
        normalise_input: bool = True,
    ) -> None:
        if int(num_joints) != num_joints or num_joints <= 0:
            raise ValueError(f"Expected num_joints to be a positive integer, got {num_joints}")
        super().__init__(backbone, 5 * int(num_joints), pretrained, normalise_input)
        self.num_joints = int(num_joints)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self._features(images))

    def predict(
        self, images: torch.Tensor, size: int = 220, extent_m: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pose2d (B, J, 2) box pixels, pose3d (B, J, 3) metres)`` = :func:`denormalise` of the output."""
        return denormalise(self(images), self.num_joints, size=size, extent_m=extent_m)


def normalise_targets(
    pose2d: torch.Tensor, pose3d: torch.Tensor, size: int = 220, extent_m: float = 1.0
) -> torch.Tensor:
    """Regression targets of :class:`PoseRegressor`: 2D and 3D joints scaled to [-1, 1] and flattened.

    ``x_n = (2x - (S - 1)) / S`` for each 2D coordinate (the box's outer pixel edges ``-0.5`` and
    ``S - 0.5`` map to -1 and 1, its centre ``(S - 1)/2`` to 0) and ``X_n = X / extent_m`` for each 3D
    coordinate. Values are not clipped: a joint outside the box or farther than ``extent_m`` from the torso
    centre gives a target outside [-1, 1], which ``tanh`` can only approach (choose ``extent_m`` to bound the
    data: on the demo mocap, joints lie up to 1.25 m from the torso centre).

    Args:
        pose2d: float (B, J, 2) joints in the S×S box, pixels (the dataset's ``pose2d``).
        pose3d: float (B, J, 3) oriented 3D joints, metres, torso-centred (the dataset's ``pose3d``).
        size: S, the box side in pixels.
        extent_m: metres mapped to 1 (> 0).

    Returns:
        float (B, J·5): ``[pose2d_n.flatten(1), pose3d_n.flatten(1)]``, dtype of ``pose2d``/``pose3d``
        promoted, device of the inputs.

    Convention:
        2D: pixels ``(x, y)`` = (column, row), pixel centres at integers; 3D: camera axes (``x`` right,
        ``y`` down, ``z`` forward), metres, origin at the torso centre.
    """
    dims = check_shape(pose2d, ["B", "J", "2"], name="pose2d")
    check_shape(pose3d, ["B", "J", "3"], name="pose3d", dims=dims)
    _check_scales(size, extent_m)
    p2 = (2.0 * pose2d - (size - 1)) / size
    p3 = pose3d / float(extent_m)
    return torch.cat([p2.flatten(1), p3.flatten(1)], dim=1)


def denormalise(
    targets: torch.Tensor, num_joints: int, size: int = 220, extent_m: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`normalise_targets`: (B, J·5) -> ``(pose2d (B, J, 2) px, pose3d (B, J, 3) m)``.

    ``x = (x_n·S + (S - 1)) / 2`` and ``X = X_n·extent_m``. Differentiable.

    Args:
        targets: float (B, J·5), e.g. a :class:`PoseRegressor` output.
        num_joints: J.
        size: S, the box side in pixels.
        extent_m: metres mapped to 1.
    """
    check_shape(targets, ["B", "F"], name="targets")
    if targets.shape[1] != 5 * num_joints:
        raise ValueError(
            f"Expected targets with J·5 = {5 * num_joints} columns for num_joints={num_joints}, "
            f"got shape {tuple(targets.shape)}"
        )
    _check_scales(size, extent_m)
    b, j = targets.shape[0], int(num_joints)
    p2 = targets[:, : 2 * j].reshape(b, j, 2)
    p3 = targets[:, 2 * j:].reshape(b, j, 3)
    return (p2 * size + (size - 1)) / 2.0, p3 * float(extent_m)


def _check_scales(size: int, extent_m: float) -> None:
    if not size > 0:
        raise ValueError(f"Expected size > 0, got {size}")
    if not extent_m > 0:
        raise ValueError(f"Expected extent_m > 0, got {extent_m}")
