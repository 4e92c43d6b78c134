"""Pools of annotated images, mocap sources, the embedded demo data."""

from .base import Mocap3D, Pool2D
from .demo import generate_demo, load_demo_mocap, load_demo_pool

__all__ = ["Pool2D", "Mocap3D", "load_demo_pool", "load_demo_mocap", "generate_demo"]
