"""Prediction with a trained network: on network-box crops, and on a user's photo (issue 10, item 4).

* :func:`predict_crops`: (B, 3, S, S) crops -> top-k classes, their mean 2D poses (network-box pixels) and
  oriented 3D poses (a regressor gives one pose, k = 1).
* :func:`box_from_person_box`: the map from image pixels to the network box for a person box
  ``(x0, y0, x1, y1)``: the box plays the role of the joints' bounding box of training, i.e. it is centred in
  the S×S input and its longer side becomes ``S - 2·margin`` (:func:`~gpumosaic.geometry.fit_to_box`).
* :func:`crop_image`: one bilinear resampling through that map (after an exact area reduction when the
  crop shrinks the photo by 2× or more, so that it does not alias).
* :func:`predict_image`: the three above plus the mapping of the 2D poses back into the photo's pixels.
* :func:`read_image`, :func:`prediction_record`, :func:`draw_prediction`: I/O for ``gpumosaic predict``.

Convention:
    pixels ``(x, y)`` = (column, row), pixel centres at integers, origin at the top-left pixel's centre; a
    box ``(x0, y0, x1, y1)`` gives the extreme joint positions in those coordinates (head top to feet, hand
    to hand), ``x0 < x1``, ``y0 < y1``. 3D poses: metres, camera frame (``x`` right, ``y`` down, ``z``
    forward), torso-centred. Maps are (2, 3) affine ``dst_from_src`` (:mod:`gpumosaic.geometry`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ._check import check_shape
from .checkpoint import InferenceCheckpoint
from .geometry import apply_affine, compose_affine, default_margin, invert_affine
from .skeleton import get_skeleton
from .warp import warp_images

__all__ = ["PosePrediction", "ImagePrediction", "box_to_box", "box_from_person_box", "crop_image",
           "predict_crops", "predict_image", "read_image", "prediction_record", "draw_prediction", "dumps", "write_json"]


@dataclass(frozen=True)
class PosePrediction:
    """Top-k poses of a batch of crops.

    Attributes:
        classes: (B, k) int64 top-k classes, best first (classifier), or ``None`` (regressor).
        scores: (B, k) float softmax probabilities of those classes, or ``None`` (regressor).
        pose2d: (B, k, J, 2) float 2D poses (the class mean 2D pose, or the regressed pose) in the frame
            named by the producing function (network box or image pixels).
        pose3d: (B, k, J, 3) float oriented 3D poses, metres.
        expected2d: (B, J, 2) float probability-weighted mean of every class's mean 2D pose (same frame as
            ``pose2d``; :meth:`~gpumosaic.classes.PoseClasses.decode_expected`), or ``None`` (regressor).
        expected3d: (B, J, 3) float, likewise in 3D, or ``None``.
    """

    classes: torch.Tensor | None
    scores: torch.Tensor | None
    pose2d: torch.Tensor
    pose3d: torch.Tensor
    expected2d: torch.Tensor | None = None
    expected3d: torch.Tensor | None = None

    def to(self, device=None) -> "PosePrediction":
        return PosePrediction(*(None if t is None else t.to(device)
                                for t in (self.classes, self.scores, self.pose2d, self.pose3d,
                                          self.expected2d, self.expected3d)))


@dataclass(frozen=True)
class ImagePrediction:
    """:func:`predict_image`'s output.

    Attributes:
        prediction: :class:`PosePrediction` of the one crop (B = 1), 2D poses in the **image's pixels**.
        box: (4,) float the person box used ``(x0, y0, x1, y1)``.
        box_from_image: (2, 3) float the map from image pixels to the network box.
        crop: (3, S, S) float the network's input in [0, 1].
        image_size: ``(W, H)`` of the photo.
    """

    prediction: PosePrediction
    box: torch.Tensor
    box_from_image: torch.Tensor
    crop: torch.Tensor
    image_size: tuple[int, int]


def _margin(size: int, margin: float | None) -> float:
    return default_margin(size) if margin is None else float(margin)


def box_to_box(points: torch.Tensor, src_size: int, dst_size: int, src_margin: float | None = None,
               dst_margin: float | None = None) -> torch.Tensor:
    """Move points between two normalised boxes of one crop (e.g. the classes' 220 box and a 128 input).

    Both boxes hold the same person extent centred, scaled to ``S - 2·margin``, so
    ``x_dst = c_dst + (x_src - c_src) · (S_dst - 2 m_dst) / (S_src - 2 m_src)`` with ``c = (S - 1)/2``.

    Args:
        points: (..., J, 2) float box pixels of the source box.
        src_size, dst_size: the two box sides.
        src_margin, dst_margin: their margins (``None``: 10 % of the side).

    Returns:
        (..., J, 2) float destination-box pixels.
    """
    check_shape(points, ["*", "J", "2"], name="points")
    scale = (dst_size - 2 * _margin(dst_size, dst_margin)) / (src_size - 2 * _margin(src_size, src_margin))
    return (dst_size - 1) / 2 + (points - (src_size - 1) / 2) * scale


def box_from_person_box(box: torch.Tensor, size: int, margin: float | None = None) -> torch.Tensor:
    """Map from image pixels to the S×S network box for person boxes.

    Args:
        box: (B, 4) float ``(x0, y0, x1, y1)`` with ``x1 > x0`` and ``y1 > y0``.
        size: S.
        margin: the input's margin (``None``: 10 % of S).

    Returns:
        (B, 2, 3) float ``box_from_image``: the box centre goes to ``((S-1)/2, (S-1)/2)`` and its longer side
        to ``S - 2·margin`` (what :func:`~gpumosaic.geometry.fit_to_box` does to joints spanning the box).
    """
    check_shape(box, ["B", "4"], name="box")
    extent = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    if bool((extent <= 0).any()) or bool((box[:, 2] < box[:, 0]).any()) or bool((box[:, 3] < box[:, 1]).any()):
        raise ValueError(f"Expected boxes with x1 > x0 and y1 > y0, got {box.tolist()}")
    scale = (size - 2 * _margin(size, margin)) / extent
    centre = torch.stack([box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]], -1) / 2
    trans = (size - 1) / 2 - scale[:, None] * centre
    zero = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, zero, trans[:, 0]], -1), torch.stack([zero, scale, trans[:, 1]], -1)], -2)


def crop_image(image: torch.Tensor, box_from_image: torch.Tensor, size: int) -> torch.Tensor:
    """Resample one image into the S×S network box (edge pixels replicated outside the image).

    When the map shrinks by 2× or more, the image is first reduced by an integer factor k = floor(1/scale)
    with area averaging (OpenCV ``INTER_AREA``), so that the bilinear step shrinks by less than 2×.

    Args:
        image: (3, H, W) uint8 or float in [0, 1].
        box_from_image: (2, 3) float map from image pixels to box pixels (uniform scale).
        size: S.

    Returns:
        (3, S, S) float32 in [0, 1].
    """
    check_shape(image, ["3", "H", "W"], name="image")
    check_shape(box_from_image, ["2", "3"], name="box_from_image")
    scale = float(box_from_image[0, 0])
    src, m = image, box_from_image.double()
    k = math.floor(1.0 / scale) if scale <= 0.5 else 1
    if k > 1:
        import cv2

        h, w = image.shape[-2:]
        hr, wr = max(1, round(h / k)), max(1, round(w / k))
        arr = image.permute(1, 2, 0).cpu().numpy()
        arr = arr.astype(np.float32) / 255.0 if image.dtype == torch.uint8 else arr.astype(np.float32)
        src = torch.from_numpy(cv2.resize(arr, (wr, hr), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
        # cv2.resize maps pixel centres by x_r = (x + 0.5)·(w_r / w) - 0.5 (and likewise y).
        sx, sy = wr / w, hr / h
        reduced_from_image = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], dtype=torch.float64)
        m = compose_affine(m, invert_affine(reduced_from_image))
    out = warp_images(src[None].to(box_from_image.device), m[None].float(), (size, size), "border")
    return out[0].float().clamp(0, 1)


@torch.no_grad()
def predict_crops(model: torch.nn.Module, checkpoint: InferenceCheckpoint, crops: torch.Tensor,
                  k: int = 5) -> PosePrediction:
    """Run the network on crops; poses in the network box (S = ``checkpoint.input_size``).

    Args:
        model: ``checkpoint.build_model()`` (in eval mode).
        checkpoint: gives the model kind, the classes and the boxes.
        crops: (B, 3, S, S) float in [0, 1] or uint8.
        k: number of classes returned (clipped to K; a regressor returns k = 1).

    Returns:
        :class:`PosePrediction` with 2D poses in network-box pixels.
    """
    s = checkpoint.input_size
    check_shape(crops, ["B", "3", str(s), str(s)], name="crops")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Expected k to be a positive int, got {k!r}")
    device = next(model.parameters()).device
    x = crops.to(device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    out = model(x)
    if checkpoint.model == "regressor":
        from .models import denormalise

        p2, p3 = denormalise(out, checkpoint.num_outputs, size=s, extent_m=checkpoint.extent_m)
        # The regressor's 2D targets are box pixels of its input, whose margin is the checkpoint's.
        return PosePrediction(None, None, p2[:, None], p3[:, None])
    classes = checkpoint.classes.to(device)
    if classes.mean_pose2d is None:
        raise ValueError("The checkpoint's classes have no mean 2D poses (fitted without 2D poses)")
    prob = torch.softmax(out.float(), dim=1)
    scores, top = prob.topk(min(k, prob.shape[1]), dim=1)
    p3, p2 = classes.decode(top)
    e3, e2 = classes.decode_expected(prob)
    size, margin = checkpoint.class_box
    p2 = box_to_box(p2, size, s, margin, checkpoint.margin)
    e2 = box_to_box(e2, size, s, margin, checkpoint.margin)
    return PosePrediction(top, scores, p2, p3, e2, e3)


def predict_image(model: torch.nn.Module, checkpoint: InferenceCheckpoint, image: torch.Tensor,
                  box: tuple[float, float, float, float] | torch.Tensor | None = None, k: int = 5) -> ImagePrediction:
    """Top-k poses of the person in ``box`` of one photo, 2D poses in the photo's pixels.

    Args:
        model: ``checkpoint.build_model()``.
        checkpoint: the inference checkpoint.
        image: (3, H, W) uint8 or float in [0, 1].
        box: ``(x0, y0, x1, y1)`` around the person's joints (see the module's convention); ``None``: the
            whole image ``(0, 0, W - 1, H - 1)``. A box may leave the image partly (edge pixels are
            replicated) but must overlap it.
        k: number of classes.

    Returns:
        :class:`ImagePrediction`.

    Raises:
        ValueError: a degenerate box or one that does not overlap the image, naming the box and image size.
    """
    check_shape(image, ["3", "H", "W"], name="image")
    h, w = image.shape[-2:]
    b = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0] if box is None else [float(v) for v in box], dtype=torch.float64)
    if b.shape != (4,) or not bool(torch.isfinite(b).all()):
        raise ValueError(f"Expected box as 4 finite numbers x0 y0 x1 y1, got {box}")
    if not (b[2] > b[0] and b[3] > b[1]):
        raise ValueError(f"Expected box with x1 > x0 and y1 > y0, got {b.tolist()}")
    # Pixel (row v, column u) covers [u - 0.5, u + 0.5] × [v - 0.5, v + 0.5]: the image spans
    # [-0.5, W - 0.5] × [-0.5, H - 0.5].
    if b[0] >= w - 0.5 or b[2] <= -0.5 or b[1] >= h - 0.5 or b[3] <= -0.5:
        raise ValueError(f"Box {b.tolist()} lies outside the image of {w}×{h} pixels "
                         f"(x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}])")
    s = checkpoint.input_size
    box_from_image = box_from_person_box(b[None], s, checkpoint.margin)[0]
    crop = crop_image(image, box_from_image, s)
    pred = predict_crops(model, checkpoint, crop[None], k)
    image_from_box = invert_affine(box_from_image).to(pred.pose2d)
    pred = replace(pred, pose2d=apply_affine(image_from_box, pred.pose2d))
    return ImagePrediction(prediction=pred.to("cpu"), box=b, box_from_image=box_from_image, crop=crop.cpu(),
                           image_size=(int(w), int(h)))


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) uint8 RGB of an image file; ``FileNotFoundError`` / ``ValueError`` naming the path."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"Cannot read {path} as an image (not an image file, or a format OpenCV cannot decode)")
    return torch.from_numpy(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))).permute(2, 0, 1)


def prediction_record(result: ImagePrediction, checkpoint: InferenceCheckpoint, image_path: str | None = None) -> dict:
    """A JSON-ready dict of :func:`predict_image`'s output (the format of ``gpumosaic predict --json``).

    Fields: ``image``, ``image_size`` ``[W, H]``, ``box`` ``[x0, y0, x1, y1]``, ``skeleton``, ``joints`` (names),
    ``box_from_image`` (2×3), ``model``, and ``predictions``: a list (best first) of ``{rank, class, score,
    pose2d (J×2 image pixels), pose3d (J×3 metres, oriented camera frame)}`` (``class``/``score`` ``null``
    for a regressor).
    """
    p = result.prediction
    skel = get_skeleton(checkpoint.skeleton)
    preds = []
    for r in range(p.pose2d.shape[1]):
        preds.append({
            "rank": r + 1,
            "class": None if p.classes is None else int(p.classes[0, r]),
            "score": None if p.scores is None else float(p.scores[0, r]),
            "pose2d": [[round(float(v), 3) for v in xy] for xy in p.pose2d[0, r]],
            "pose3d": [[round(float(v), 5) for v in xyz] for xyz in p.pose3d[0, r]],
        })
    return {
        "image": image_path,
        "image_size": list(result.image_size),
        "box": [float(v) for v in result.box],
        "skeleton": skel.name,
        "joints": list(skel.names),
        "box_from_image": result.box_from_image.tolist(),
        "model": {"kind": checkpoint.model, "backbone": checkpoint.backbone, "input_size": checkpoint.input_size},
        "predictions": preds,
    }


def draw_prediction(image: torch.Tensor, result: ImagePrediction, checkpoint: InferenceCheckpoint,
                    path: str | os.PathLike, rank: int = 0) -> Path:
    """Save a figure: the photo with the box and the rank-``rank`` 2D pose drawn, the network's crop, and the
    oriented 3D pose seen from the camera and from the side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import draw_skeleton

    skel = get_skeleton(checkpoint.skeleton)
    p = result.prediction
    fig, axes = plt.subplots(1, 4, figsize=(14, 4), gridspec_kw={"width_ratios": [2, 1, 1, 1]})
    ax = axes[0]
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    x0, y0, x1, y1 = result.box.tolist()
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.5, ls="--"))
    draw_skeleton(ax, p.pose2d[0, rank], skel, lw=2.5)
    label = "regressed pose" if p.classes is None else (
        f"class {int(p.classes[0, rank])} (p = {float(p.scores[0, rank]):.2f})")
    ax.set_title(f"image + 2D pose, rank {rank + 1}: {label}", fontsize=9)
    axes[1].imshow(result.crop.permute(1, 2, 0).numpy())
    axes[1].set_title(f"network input {checkpoint.input_size}×{checkpoint.input_size}", fontsize=9)
    pose3d = p.pose3d[0, rank]
    for ax, (u, v, name) in zip(axes[2:], ((0, 1, "3D pose, camera view (x, y)"), (2, 1, "3D pose, side view (z, y)"))):
        draw_skeleton(ax, pose3d[:, [u, v]], skel)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_title(name + ", m", fontsize=9)
    for ax in axes[:2]:
        ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dumps(record: dict) -> str:
    """Indented JSON with every innermost list (a joint's coordinates, the joint names) on one line."""
    return re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", json.dumps(record, indent=1))


def write_json(record: dict, path: str | os.PathLike) -> Path:
    """Write ``record`` with :func:`dumps`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(record) + "\n")
    return path
