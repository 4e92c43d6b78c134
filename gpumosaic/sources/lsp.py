"""Leeds Sports Pose (LSP, 2,000 images) and LSP-extended (LSPET, 10,000 images) loaders.

Layout on disk: a folder with ``joints.mat`` and ``images/``. LSP stores ``joints`` as 3×14×N (rows x, y,
flag; images ``im0001.jpg`` .. ``im2000.jpg``), LSPET as 14×3×N (columns x, y, flag; ``im00001.jpg`` ..
``im10000.jpg``; the high-resolution re-release uses ``.png``). The joint order is LSP14's own (right
ankle, right knee, right hip, left hip, left knee, left ankle, right wrist, right elbow, right shoulder,
left shoulder, left elbow, left wrist, neck, head top), so no mapping is needed for ``skeleton="lsp14"``.

Assumptions (documented, checkable with ``visibility=``):
    - LSP's flag row has *inverted* semantics: 1 marks an occluded joint, 0 a visible one (the convention
      most pose code bases apply to the original LSP ``joints.mat``). LSPET's flag column is 1 for visible.
    - A joint is *missing* when a coordinate is not finite or not positive (``x <= 0`` or ``y <= 0``): LSPET
      leaves unannotated joints at non-positive placeholder coordinates. Entries with a missing joint are
      dropped (the pool needs complete annotations) and counted in the report.
    - Occluded but located joints are kept (their positions are annotated); ``drop_occluded=True`` drops the
      entries that have any.

Provenance ids: the 0-based image number (``im0001`` -> 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..skeleton import LSP14, Skeleton
from .build import Annotations2D, PathLike, make_annotations

__all__ = ["load_lsp"]


def _read_joints(mat_path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(xy (N, 14, 2), flag (N, 14), variant)`` with variant ``"lsp"`` or ``"lspet"``."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"{mat_path}: not a readable MATLAB file ({exc})") from exc
    if "joints" not in mat:
        raise ValueError(f"{mat_path}: no variable 'joints' (found {sorted(k for k in mat if not k.startswith('__'))})")
    joints = np.asarray(mat["joints"], dtype=np.float64)
    if joints.ndim == 2:  # a single image saved without its trailing dimension
        joints = joints[..., None]
    if joints.ndim != 3:
        raise ValueError(f"{mat_path}: field 'joints' must be 3×14×N (LSP) or 14×3×N (LSPET), got {joints.shape}")
    if joints.shape[:2] == (3, 14):
        return joints[:2].transpose(2, 1, 0), joints[2].T, "lsp"
    if joints.shape[:2] == (14, 3):
        return joints[:, :2].transpose(2, 0, 1), joints[:, 2].T, "lspet"
    if joints.shape[:2] == (14, 2) or joints.shape[:2] == (2, 14):
        raise ValueError(f"{mat_path}: field 'joints' has no flag row/column, shape {joints.shape}")
    raise ValueError(f"{mat_path}: field 'joints' must be 3×14×N (LSP) or 14×3×N (LSPET), got {joints.shape}")


def load_lsp(path: PathLike, *, skeleton: Skeleton | str = LSP14, image_dir: PathLike | None = None,
             visibility: str = "auto", drop_occluded: bool = False) -> Annotations2D:
    """Read LSP or LSP-extended annotations (the variant is told by the array's layout).

    Args:
        path: the dataset folder (holding ``joints.mat``) or the ``joints.mat`` file itself.
        skeleton: output layout (LSP14 is native; MPII16 / H36M17 via :func:`gpumosaic.skeleton.convert`).
        image_dir: the images' folder; default ``images/`` beside ``joints.mat``. Names follow the variant:
            ``im%04d`` (LSP) or ``im%05d`` (LSPET), ``.jpg``, or ``.png`` if the first image only exists so.
        visibility: meaning of the flag: ``"auto"`` (LSP: 1 = occluded; LSPET: 1 = visible), ``"visible"``
            (1 = visible) or ``"occluded"`` (1 = occluded).
        drop_occluded: also drop entries with any occluded joint.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in original-image pixels.

    Convention:
        ``(x, y)`` pixels as stored in ``joints.mat``; MATLAB's 1-based pixel indices are kept as they are
        (the datasets' annotations are click positions, not indices).
    """
    path = Path(path)
    mat_path = path / "joints.mat" if path.is_dir() else path
    if not mat_path.exists():
        raise FileNotFoundError(f"No LSP joints.mat at {mat_path}")
    xy, flag, variant = _read_joints(mat_path)
    if visibility not in ("auto", "visible", "occluded"):
        raise ValueError(f"Expected visibility 'auto', 'visible' or 'occluded', got {visibility!r}")
    occluded_flag = visibility == "occluded" or (visibility == "auto" and variant == "lsp")
    visible = (flag == 0) if occluded_flag else (flag != 0)
    n = xy.shape[0]
    missing = ~np.isfinite(xy).all(-1) | (xy <= 0).any(-1)  # (N, 14)
    incomplete = missing.any(-1)
    occluded = ~visible.all(-1) & ~incomplete if drop_occluded else np.zeros(n, bool)
    keep = ~incomplete & ~occluded

    folder = Path(image_dir) if image_dir is not None else mat_path.parent / "images"
    stem = "im{:04d}" if variant == "lsp" else "im{:05d}"
    ext = ".jpg"
    if not (folder / (stem.format(1) + ".jpg")).exists() and (folder / (stem.format(1) + ".png")).exists():
        ext = ".png"
    paths = [folder / (stem.format(i + 1) + ext) for i in range(n)]
    flag_note = "flag 1 = occluded" if occluded_flag else "flag 1 = visible"
    return make_annotations(
        variant, mat_path, np.nan_to_num(xy), visible, keep, paths, np.arange(n), LSP14, skeleton,
        {"incomplete (joint missing: non-finite or non-positive coordinate)": int(incomplete.sum()),
         "occluded joint (drop_occluded=True)": int(occluded.sum())},
        notes=(f"{variant.upper()} layout, {flag_note}.",),
    )
