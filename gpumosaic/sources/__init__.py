"""Pools of annotated images, mocap sources, the embedded demo data."""

from .base import Mocap3D, Pool2D

__all__ = ["Pool2D", "Mocap3D"]
