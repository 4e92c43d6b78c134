"""gpumosaic: GPU image-based synthesis of 3D human pose training data.

Implements the synthesis engine of Rogez & Schmid, *Image-based Synthesis for Deep 3D Human Pose
Estimation* (IJCV 2018): mocap 3D poses are projected to random virtual cameras, each joint of the query 2D
pose retrieves its best-matching annotated image, matches are warped, stitched by an argmax index map of
per-joint probability maps and blended around the skeleton. Batched torch tensors, CPU and CUDA.

The names below are imported on first use (PEP 562), so that ``import gpumosaic`` (and the ``gpumosaic``
command, :mod:`gpumosaic.threads`) can set ``OMP_WAIT_POLICY`` before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "MosaicEngine": "engine",
    "OnlineMosaicDataset": "dataset",
    "MosaicResult": "synthesis",
    "MosaicBatch": "batch",
    "MosaicSettings": "settings",
    "ViewSettings": "settings",
    "DEFAULT_SIGMA": "settings",
    "Cameras": "camera",
    "ViewBatch": "camera",
    "sample_views": "camera",
    "view_angles": "camera",
    "render_views": "camera",
    "Skeleton": "skeleton",
    "LSP14": "skeleton",
    "MPII16": "skeleton",
    "H36M17": "skeleton",
    "Pool2D": "sources",
    "Mocap3D": "sources",
    "load_demo_pool": "sources",
    "load_demo_mocap": "sources",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a submodule not imported yet, e.g. gpumosaic.camera
        if not name.startswith("__"):
            try:
                return importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as err:
                if err.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from .batch import MosaicBatch
    from .camera import Cameras, ViewBatch, render_views, sample_views, view_angles
    from .dataset import OnlineMosaicDataset
    from .engine import MosaicEngine
    from .settings import DEFAULT_SIGMA, MosaicSettings, ViewSettings
    from .skeleton import H36M17, LSP14, MPII16, Skeleton
    from .sources import Mocap3D, Pool2D, load_demo_mocap, load_demo_pool
    from .synthesis import MosaicResult
