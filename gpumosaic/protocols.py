"""Run the evaluation protocols on a test set: predictions -> report (``gpumosaic evaluate``'s engine).

* :func:`predict_test_set`: crop every test person into the network box exactly as the protocol does (the
  :func:`~gpumosaic.geometry.fit_to_box` square of its ground-truth joints, :func:`~gpumosaic.pools.build_pool`)
  and run a checkpoint; poses mapped back to image pixels.
* :func:`evaluate_predictions`: every metric of :mod:`gpumosaic.evaluate` on those (or any) predictions,
  with bootstrap intervals over the test set's instants, per-joint tables and the class lower bounds:
  an :class:`EvaluationReport` (``.as_dict()`` is the JSON report, ``.table()`` the text summary).
* :func:`save_predictions` / :func:`load_predictions`: a predictions file (JSON Lines, one record per test
  entry in order: ``{"index", "pose2d" (J×2 image pixels), "pose3d" (J×3 oriented metres, optional)}``), so
  that another method's output can be scored, and two predictors compared with
  :func:`~gpumosaic.evaluate.paired_bootstrap` on :attr:`EvaluationReport.per_entry`.

Convention:
    predictions and ground truth 2D in the test image's pixels (scored in the normalised 220×220 box of the
    ground truth); 3D oriented poses in metres (scored in mm).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import evaluate as ev
from .checkpoint import InferenceCheckpoint
from .classes import PoseClasses
from .geometry import apply_affine, fit_to_box, invert_affine
from .metrics import MM_PER_M, metrics_table
from .predict import box_to_box, predict_crops
from .testsets import TestSet

__all__ = ["TestPredictions", "EvaluationReport", "predict_test_set", "evaluate_predictions",
           "constant_predictions", "save_predictions", "load_predictions", "BOX_SIZE"]

BOX_SIZE = 220
DECODES = ("top1", "expected")
"""How a classifier's scores become a pose: the paper's top-1 class, or the softmax-weighted mean of classes."""
"""The paper's normalised box side for 2D errors."""


@dataclass(frozen=True)
class TestPredictions:
    """Predictions for the N entries of a test set, in order.

    Attributes:
        pose2d: (N, J, 2) float image pixels.
        pose3d: (N, J, 3) float oriented metres, or ``None``.
        classes: (N, k) int64 top-k classes (classifier), or ``None``.
    """

    __test__ = False  # not a pytest class

    pose2d: torch.Tensor
    pose3d: torch.Tensor | None = None
    classes: torch.Tensor | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """Result of :func:`evaluate_predictions`.

    Attributes:
        summary: metric name -> :class:`~gpumosaic.evaluate.Interval` (mean and bootstrap interval).
        per_joint: table name -> {joint name: mean}.
        per_entry: metric name -> (N,) float64 per-entry values (for :func:`~gpumosaic.evaluate.paired_bootstrap`).
        groups: (N,) int64 the test instants used by the bootstrap.
        info: test set, counts, joints, box and protocol notes.
    """

    summary: dict
    per_joint: dict
    per_entry: dict
    groups: torch.Tensor
    info: dict

    def as_dict(self) -> dict:
        """JSON-ready: ``info``, ``summary`` (name -> interval dict), ``per_joint``."""
        return {"info": self.info, "summary": {k: v.as_dict() for k, v in self.summary.items()},
                "per_joint": self.per_joint}

    def joint_table(self) -> str:
        """Per-joint means as text: one row per joint, one column per table (2D px, PCK, PCKh, 3D mm)."""
        rows: dict = {}
        for table, values in self.per_joint.items():
            for joint, v in values.items():
                rows.setdefault(joint, {})[table] = v
        return metrics_table(rows, title="per joint")

    def table(self) -> str:
        rows = {name: {"mean": v.mean, f"{100 * v.level:.0f}% low": v.low, f"{100 * v.level:.0f}% high": v.high}
                for name, v in self.summary.items()}
        return metrics_table(rows, title=f"{self.info['test_set']}: {self.info['n']} entries, "
                                         f"{self.info['instants']} instants")


@torch.no_grad()
def predict_test_set(checkpoint: InferenceCheckpoint, test: TestSet, device: torch.device | str | None = None,
                     batch_size: int = 64, k: int = 1, progress: bool = True,
                     read_image=None, decode: str = "top1") -> TestPredictions:
    """Run ``checkpoint`` on every test person, cropped by the protocol's box (its ground-truth joints).

    Args:
        checkpoint: the network, its classes and input size.
        test: the test set (image paths needed).
        device: where the network runs (default CPU).
        batch_size: people cropped and predicted at a time.
        k: top-k classes kept in ``classes`` (the poses are the top-1's).
        progress: tqdm bar on stderr.
        read_image: ``path -> (H, W, 3) uint8 RGB`` for the test set's image paths (default: OpenCV's
            ``imread``; pass a reader for e.g. video-frame pseudo paths).
        decode: a classifier's pose: ``"top1"`` (the paper's: the best class's mean poses) or ``"expected"``
            (the softmax-weighted mean of every class's mean poses, :meth:`PoseClasses.decode_expected`).

    Returns:
        :class:`TestPredictions` with 2D poses in image pixels.
    """
    from tqdm import tqdm

    if decode not in DECODES:
        raise ValueError(f"Expected decode in {DECODES}, got {decode!r}")

    from .pools import build_pool

    if test.skeleton.name != checkpoint.skeleton:
        raise ValueError(f"Test set skeleton {test.skeleton.name} differs from the checkpoint's {checkpoint.skeleton}")
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}")
    device = torch.device("cpu") if device is None else torch.device(device)
    model = checkpoint.build_model(device)
    s = checkpoint.input_size
    pose2d, pose3d, classes = [], [], []
    for start in tqdm(range(0, len(test), batch_size), disable=not progress, file=sys.stderr, unit="batch",
                      desc="predict"):
        part = test.annotations.subset(torch.arange(start, min(start + batch_size, len(test))))
        pool = build_pool(part, s, checkpoint.margin, device=device, read_image=read_image)
        _, box_from_image = fit_to_box(part.joints.double(), s, checkpoint.margin)
        pred = predict_crops(model, checkpoint, pool.images, k)
        expected = decode == "expected" and pred.expected2d is not None
        p2, p3 = (pred.expected2d, pred.expected3d) if expected else (pred.pose2d[:, 0], pred.pose3d[:, 0])
        pose2d.append(apply_affine(invert_affine(box_from_image), p2.double().cpu()).float())
        pose3d.append(p3.cpu())
        if pred.classes is not None:
            classes.append(pred.classes.cpu())
    return TestPredictions(torch.cat(pose2d), torch.cat(pose3d), torch.cat(classes) if classes else None)


def constant_predictions(test: TestSet, pose2d: torch.Tensor, box: tuple[int, float | None] = (BOX_SIZE, None),
                         pose3d: torch.Tensor | None = None) -> TestPredictions:
    """The same pose predicted for every test person (trivial baselines: the most frequent class's mean
    pose, the mean training pose), placed in each person's protocol box.

    Args:
        test: the test set.
        pose2d: (J, 2) float box pixels of a ``box = (size, margin)`` normalised box (e.g. a class mean 2D
            pose, ``PoseClasses.mean_pose2d[k]``, in the classes' box).
        box: the box ``pose2d`` is in (``margin`` ``None``: 10 % of ``size``).
        pose3d: (J, 3) float oriented metres, or ``None``.

    Returns:
        :class:`TestPredictions` in image pixels: ``pose2d`` moved into each person's ``fit_to_box`` square
        of its ground truth (as a network's prediction on the protocol's crop would be).
    """
    n, j = test.annotations.joints.shape[:2]
    if tuple(pose2d.shape) != (j, 2) or (pose3d is not None and tuple(pose3d.shape) != (j, 3)):
        raise ValueError(f"Expected pose2d ({j}, 2) and pose3d ({j}, 3) or None, got {tuple(pose2d.shape)} and "
                         f"{None if pose3d is None else tuple(pose3d.shape)}")
    _, box_from_image = fit_to_box(test.annotations.joints.double(), BOX_SIZE)
    in_box = box_to_box(pose2d.double().cpu(), box[0], BOX_SIZE, box[1], None)
    p2 = apply_affine(invert_affine(box_from_image), in_box.expand(n, j, 2)).float()
    return TestPredictions(p2, None if pose3d is None else pose3d.float().cpu().expand(n, j, 3).clone())


def _add(summary, per_entry, name, values, groups, n_boot, level):
    per_entry[name] = values.double()
    summary[name] = ev.bootstrap_ci(values.double(), groups, n_boot=n_boot, level=level)


def evaluate_predictions(test: TestSet, predictions: TestPredictions, classes: PoseClasses | None = None,
                         class_box: tuple[int, float | None] = (BOX_SIZE, None), n_boot: int = 2000,
                         level: float = 0.95) -> EvaluationReport:
    """Score predictions on a test set with the paper's protocols (see :mod:`gpumosaic.evaluate`).

    Metrics (each with a bootstrap interval over the test instants; ``13`` = :func:`~gpumosaic.evaluate.paper_joints`,
    ``all`` = every joint of the layout):

    * ``error2d_px_13`` / ``error2d_px_all``: mean 2D error on the normalised 220×220 box;
    * ``pck_torso@0.2_13`` / ``_all``, and ``pckh@0.5_13`` / ``_all`` where the layout has a neck and head top;
    * with 3D ground truth and 3D predictions: ``mpjpe_mm_13`` (absolute, oriented poses),
      ``pa_mpjpe_mm_13`` (rigid alignment) and the same over all joints;
    * with ``classes``: ``lower_bound2d_px_13`` (class mean 2D poses, mapped from ``class_box`` to the
      220 box) and, with 3D ground truth, ``lower_bound3d_mm_13``.

    Args:
        test: the test set.
        predictions: :class:`TestPredictions` for its entries, in order.
        classes: the predictor's pose classes (for the lower bound), or ``None``.
        class_box: ``(size, margin)`` of the box the classes' mean 2D poses are in.
        n_boot, level: bootstrap resamples and confidence level.

    Returns:
        :class:`EvaluationReport`.
    """
    n, j = test.annotations.joints.shape[:2]
    if tuple(predictions.pose2d.shape) != (n, j, 2):
        raise ValueError(f"Expected predictions.pose2d of shape {(n, j, 2)} for this test set, got "
                         f"{tuple(predictions.pose2d.shape)}")
    skel = test.skeleton
    sel = ev.paper_joints(skel)
    groups = test.groups
    gt_box, box_from_image = fit_to_box(test.annotations.joints.double(), BOX_SIZE)
    pred_box = apply_affine(box_from_image, predictions.pose2d.double())
    err2 = ev.joint_errors(pred_box, gt_box)  # (N, J) px on the 220 box
    summary, per_entry, per_joint = {}, {}, {}
    args = (groups, n_boot, level)
    _add(summary, per_entry, "error2d_px_13", ev.mean_error(err2, sel), *args)
    _add(summary, per_entry, "error2d_px_all", ev.mean_error(err2), *args)
    per_joint["error2d_px"] = ev.per_joint_table(err2, skel)
    for kind, thr, label in (("torso", 0.2, "pck_torso@0.2"), ("head", 0.5, "pckh@0.5")):
        ref = ev.pck_reference(kind, gt_box, skel)
        if ref is None:
            continue
        ok = ev.pck(err2, ref, thr).double()
        _add(summary, per_entry, f"{label}_13", ok[:, list(sel)].mean(1), *args)
        _add(summary, per_entry, f"{label}_all", ok.mean(1), *args)
        per_joint[label] = ev.per_joint_table(ok, skel)
    has3d = test.pose3d is not None and predictions.pose3d is not None
    if has3d:
        if tuple(predictions.pose3d.shape) != (n, j, 3):
            raise ValueError(f"Expected predictions.pose3d of shape {(n, j, 3)}, got {tuple(predictions.pose3d.shape)}")
        gt3, p3 = test.pose3d.double(), predictions.pose3d.double()
        for aligned, name in ((False, "mpjpe_mm"), (True, "pa_mpjpe_mm")):
            e13 = ev.errors_3d(p3, gt3, sel, aligned=aligned)
            eall = ev.errors_3d(p3, gt3, None, aligned=aligned)
            _add(summary, per_entry, f"{name}_13", e13.mean(1), *args)
            _add(summary, per_entry, f"{name}_all", eall.mean(1), *args)
            per_joint[name] = ev.per_joint_table(eall, skel)
    if classes is not None:
        if classes.skeleton != skel.name:
            raise ValueError(f"classes are {classes.skeleton} but the test set is {skel.name}")
        if classes.mean_pose2d is not None:
            cls2 = box_to_box(classes.mean_pose2d.double().cpu(), class_box[0], BOX_SIZE, class_box[1], None)
            lb = ev.class_lower_bound(gt_box, cls2, sel)
            _add(summary, per_entry, "lower_bound2d_px_13", lb.error, *args)
        if test.pose3d is not None:
            lb = ev.class_lower_bound(test.pose3d.double(), classes.mean_pose3d.double().cpu(), sel, factor=MM_PER_M)
            _add(summary, per_entry, "lower_bound3d_mm_13", lb.error, *args)
    info = {
        "test_set": test.name,
        "n": n,
        "instants": int(torch.unique(groups).numel()),
        "skeleton": skel.name,
        "joints_13": [skel.names[k] for k in sel],
        "box": {"size": BOX_SIZE, "margin": 0.1 * BOX_SIZE,
                "note": "2D errors in px of the fit_to_box square of the ground-truth joints"},
        "pck": {"torso": "||l_shoulder - r_hip|| of the ground truth", "head": "||head_top - neck||"},
        "bootstrap": {"n_boot": n_boot, "level": level, "unit": "test instant (group)"},
        "loader": test.annotations.report.message(),
    }
    return EvaluationReport(summary, per_joint, per_entry, groups, info)


def save_predictions(path: str | os.PathLike, predictions: TestPredictions) -> Path:
    """Write predictions as JSON Lines (module docstring format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(predictions.pose2d.shape[0]):
            rec = {"index": i, "pose2d": [[round(float(v), 3) for v in xy] for xy in predictions.pose2d[i]]}
            if predictions.pose3d is not None:
                rec["pose3d"] = [[round(float(v), 6) for v in xyz] for xyz in predictions.pose3d[i]]
            if predictions.classes is not None:
                rec["classes"] = predictions.classes[i].tolist()
            f.write(json.dumps(rec) + "\n")
    return path


def load_predictions(path: str | os.PathLike, test: TestSet) -> TestPredictions:
    """Read a predictions file for ``test`` (one record per entry; ``index`` orders them when present)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No predictions file at {path}")
    n, j = test.annotations.joints.shape[:2]
    p2, p3 = [None] * n, [None] * n
    with open(path) as f:
        lines = [(no, line) for no, line in enumerate(f, 1) if line.strip()]
    if len(lines) != n:
        raise ValueError(f"{path}: {len(lines)} predictions for a test set of {n} entries")
    for pos, (no, line) in enumerate(lines):
        try:
            rec = json.loads(line)
            i = int(rec.get("index", pos))
            a = torch.tensor(rec["pose2d"], dtype=torch.float32)
            b = torch.tensor(rec["pose3d"], dtype=torch.float32) if "pose3d" in rec else None
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{no}: expected an object with 'pose2d' (J×2) and optional 'pose3d' (J×3): "
                             f"{err}") from None
        if not 0 <= i < n or p2[i] is not None:
            raise ValueError(f"{path}:{no}: index {i} out of range or repeated")
        if a.shape != (j, 2) or (b is not None and b.shape != (j, 3)):
            raise ValueError(f"{path}:{no}: expected pose2d {j}×2 and pose3d {j}×3, got {tuple(a.shape)} and "
                             f"{None if b is None else tuple(b.shape)}")
        p2[i], p3[i] = a, b
    pose3d = torch.stack(p3) if all(x is not None for x in p3) else None
    return TestPredictions(torch.stack(p2), pose3d)
