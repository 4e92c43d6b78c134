"""gpumosaic: GPU image-based synthesis of 3D human pose training data.

Implements the synthesis engine of Rogez & Schmid, *Image-based Synthesis for Deep 3D Human Pose
Estimation* (IJCV 2018): mocap 3D poses are projected to random virtual cameras, each joint of the query 2D
pose retrieves its best-matching annotated image, matches are warped, stitched by an argmax index map of
per-joint probability maps and blended around the skeleton. Batched torch tensors, CPU and CUDA.
"""

from .batch import MosaicBatch
from .camera import Cameras, ViewBatch, render_views, sample_views, view_angles
from .dataset import OnlineMosaicDataset
from .engine import MosaicEngine
from .settings import DEFAULT_SIGMA, MosaicSettings, ViewSettings
from .skeleton import H36M17, LSP14, MPII16, Skeleton
from .sources import Mocap3D, Pool2D, load_demo_mocap, load_demo_pool
from .synthesis import MosaicResult

__version__ = "0.1.0"

__all__ = [
    "MosaicEngine",
    "OnlineMosaicDataset",
    "MosaicResult",
    "MosaicBatch",
    "MosaicSettings",
    "ViewSettings",
    "DEFAULT_SIGMA",
    "Cameras",
    "ViewBatch",
    "sample_views",
    "view_angles",
    "render_views",
    "Skeleton",
    "LSP14",
    "MPII16",
    "H36M17",
    "Pool2D",
    "Mocap3D",
    "load_demo_pool",
    "load_demo_mocap",
]
