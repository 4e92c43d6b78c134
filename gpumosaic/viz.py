"""Drawing: skeleton overlays and the paper's Figure 2 (the synthesis pipeline for one query)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .skeleton import Skeleton

__all__ = ["draw_skeleton", "pipeline_figure", "preview_fidelity"]

_LEFT, _RIGHT, _MID = "#1f77b4", "#d62728", "#2ca02c"


def _side(skeleton: Skeleton, a: int, b: int) -> str:
    names = skeleton.names[a] + skeleton.names[b]
    return _LEFT if "l_" in names else _RIGHT if "r_" in names else _MID


def draw_skeleton(ax, pose: torch.Tensor, skeleton: Skeleton, highlight: int | None = None, lw: float = 2.0):
    """Draw a 2D pose (J, 2) on a matplotlib axis: left limbs blue, right red, centre green."""
    p = pose.detach().cpu().numpy()
    for a, b in skeleton.bones:
        ax.plot([p[a, 0], p[b, 0]], [p[a, 1], p[b, 1]], color=_side(skeleton, a, b), lw=lw)
    ax.scatter(p[:, 0], p[:, 1], s=8, c="k", zorder=3)
    if highlight is not None:
        ax.scatter(p[highlight, 0], p[highlight, 1], s=60, facecolors="none", edgecolors="yellow", lw=2, zorder=4)


def _img(x: torch.Tensor) -> np.ndarray:
    return x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def preview_fidelity(result, b: int = 0, python=None) -> dict | None:
    """The fidelity of mosaic ``b`` to the independent detector (:mod:`gpumosaic.fidelity`), or ``None`` when
    the detector is not set up (``$GPUMOSAIC_DETECTOR_PYTHON``): an optional path, gpumosaic never needs it.

    Returns:
        ``{"blended": {...}, "copy_paste": {...}, "version": str}``, each ``{"detected": bool, "pck": float,
        "joints": (J, 2) ndarray}``: PCK@0.2 of the torso over the 12 limb joints against the query pose.
    """
    from .fidelity import LIMBS12, correct_joints, detect_poses, detector_available

    if not detector_available(python):
        return None
    det = detect_poses(torch.cat([result.images[b:b + 1], result.mosaic_unblended[b:b + 1]]), python)
    labels = result.query[b:b + 1].detach().double().cpu().numpy().repeat(2, 0)
    ok = correct_joints(det.joints, det.detected, labels)[:, list(LIMBS12)].mean(1)
    out = {"version": det.version}
    for k, name in enumerate(("blended", "copy_paste")):
        out[name] = {"detected": bool(det.detected[k]), "pck": float(ok[k]), "joints": det.joints[k]}
    return out


def pipeline_figure(result, engine, b: int, path: str | Path, fidelity: dict | None = None) -> None:
    """Figure 2 of the paper for query ``b`` of a :class:`~gpumosaic.engine.MosaicResult`.

    Rows: the query pose, index map, mosaic before and after blending; each joint's matched image warped
    into the query frame (its aligned pose drawn, the joint circled); each joint's probability map.
    ``fidelity`` (from :func:`preview_fidelity`) adds the independent detector's pose on the blended mosaic
    and its PCK@0.2 for both mosaics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skel = engine.skeleton
    warped = engine.warp_matches(result)
    num_j = result.matches.shape[1]
    size = result.images.shape[-1]
    cols = 7
    rows_j = (num_j + cols - 1) // cols
    fig, axes = plt.subplots(1 + 2 * rows_j, cols, figsize=(2.2 * cols, 2.3 * (1 + 2 * rows_j)))
    for ax in axes.flat:
        ax.set_axis_off()
    top = axes[0]
    top[0].imshow(np.ones((size, size, 3)))
    draw_skeleton(top[0], result.query[b], skel)
    top[0].set_title("query 2D pose", fontsize=9)
    cmap = plt.get_cmap("tab20", num_j)
    top[1].imshow(result.index_map[b].cpu().numpy(), cmap=cmap, vmin=-0.5, vmax=num_j - 0.5, interpolation="nearest")
    top[1].set_title("index map (Eq. 5)", fontsize=9)
    top[2].imshow(_img(result.mosaic_unblended[b]))
    top[2].set_title("mosaic, no blending", fontsize=9)
    top[3].imshow(_img(result.images[b]))
    top[3].set_title("blended (Eq. 9)", fontsize=9)
    top[4].imshow(_img(result.images[b]))
    draw_skeleton(top[4], result.query[b], skel, lw=1.0)
    top[4].set_title("blended + query", fontsize=9)
    if result.distance is not None:
        top[5].imshow(result.distance[b].cpu().numpy(), cmap="magma")
        top[5].set_title("skeleton distance d", fontsize=9)
    if fidelity is not None:
        blended, pasted = fidelity["blended"], fidelity["copy_paste"]
        top[6].imshow(_img(result.images[b]))
        if blended["detected"]:
            draw_skeleton(top[6], torch.from_numpy(blended["joints"]), skel, lw=1.0)
        top[6].set_title(f"MediaPipe: PCK@0.2 {blended['pck']:.2f}" if blended["detected"]
                         else "MediaPipe: no person", fontsize=9)
        pasted_text = f"{pasted['pck']:.2f}" if pasted["detected"] else "no person"
        top[2].set_title(f"mosaic, no blending (PCK {pasted_text})", fontsize=8)
    for j in range(num_j):
        r, c = divmod(j, cols)
        ax = axes[1 + r, c]
        ax.imshow(_img(warped[b, j]))
        if result.searched[b, j]:
            draw_skeleton(ax, result.aligned[b, j], skel, highlight=j, lw=1.0)
            flag = " (m)" if result.mirrored[b, j] else ""
            ax.set_title(f"{skel.names[j]}: #{int(result.source_ids[b, j])}{flag}", fontsize=8)
        else:
            ax.set_title(f"{skel.names[j]}: occluded", fontsize=8)
        ax2 = axes[1 + rows_j + r, c]
        ax2.imshow(result.probability[b, j].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax2.set_title(f"P({skel.names[j]})", fontsize=8)
    fig.suptitle("gpumosaic: image-based synthesis of one query (Rogez & Schmid, Fig. 2)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
