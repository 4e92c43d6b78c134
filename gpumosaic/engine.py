"""MosaicEngine: one batch of query 2D poses -> blended mosaics (the paper's §2, DESIGN.md steps 4–8).

A thin wrapper in the manner of PyTorch3D's ``MeshRasterizer``: it holds the settings
(:class:`MosaicSettings`) and the prepared pool (:func:`~gpumosaic.synthesis.prepare_pool`), validates a
call's inputs and calls the functional core of :mod:`gpumosaic.synthesis` (hard mode) or
:mod:`gpumosaic.soft` (soft mode). The stages and their equations are listed in :mod:`gpumosaic.synthesis`
and drawn in docs/architecture.md.
"""

from __future__ import annotations

import torch

from ._check import unchecked
from .allocator import retain_freed_memory
from .skeleton import Skeleton
from .soft import synthesise_soft
from .sources.base import Pool2D
from .settings import DEFAULT_ALPHA, DEFAULT_SIGMA, PAPER, MosaicSettings, resolved_retrieval_budget
from .synthesis import (
    MosaicResult,
    PreparedPool,
    prepare_pool,
    synthesise_hard,
    validate_query,
    warp_matched,
)

__all__ = ["MosaicSettings", "MosaicResult", "MosaicEngine", "DEFAULT_SIGMA", "DEFAULT_ALPHA", "PAPER"]


class MosaicEngine:
    """The paper's synthesis engine over one pool (DESIGN.md steps 4–8).

    Args:
        pool: the annotated images (:class:`~gpumosaic.sources.Pool2D`); uint8 images stay uint8 on the
            device; float images in [0, 1] make the mosaics differentiable with respect to them.
        skeleton: the joint layout of queries and pool; ``None`` means ``pool.skeleton`` (a given one must
            match it).
        settings: the :class:`MosaicSettings` (every default is resolved there); ``None`` builds one from
            the keyword fields below.
        device: where the pool and all computation live; ``None`` keeps the pool's device.
        size, alpha, beta, sigma, margin, mirror, padding_mode, blend, mask_outside, compat_weight,
            multiband_levels, warp_chunk, pixel_chunk, retrieval_budget, retrieval, soft, temperature, warps,
            compile: shorthand for ``settings=MosaicSettings(size=..., ...)``; ``None`` means the
            :class:`MosaicSettings` default. Giving both ``settings`` and a field raises ``TypeError``.

    Calling the engine on ``query (B, J, 2)`` (pixels of any frame, fitted into the box here),
    ``occluded (B, J) bool`` (not searched; ``None``: none occluded) returns a :class:`MosaicResult`.
    A row with every joint occluded is searched in full (documented fallback: the mosaic needs a source).

    On the CPU, building an engine sets glibc's malloc thresholds once per process so that a batch's freed
    working memory is reused by the next one instead of being returned to the system and faulted in again
    (:func:`gpumosaic.allocator.retain_freed_memory`; opt out with ``GPUMOSAIC_MALLOC=default``).

    Example:
        >>> from gpumosaic import MosaicEngine, load_demo_pool
        >>> engine = MosaicEngine(load_demo_pool())
        >>> engine(torch.rand(2, 14, 2) * 100).images.shape
        torch.Size([2, 3, 220, 220])
    """

    def __init__(
        self,
        pool: Pool2D,
        skeleton: Skeleton | None = None,
        settings: MosaicSettings | None = None,
        *,
        device: torch.device | str | None = None,
        size: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        sigma: float | None = None,
        margin: float | None = None,
        mirror: bool | None = None,
        padding_mode: str | None = None,
        blend: bool | None = None,
        mask_outside: bool | None = None,
        compat_weight: float | None = None,
        multiband_levels: int | None = None,
        warp_chunk: int | None = None,
        pixel_chunk: int | None = None,
        retrieval_budget: int | None = None,
        retrieval: str | None = None,
        soft: bool | None = None,
        temperature: float | None = None,
        warps: str | None = None,
        compile: bool | str | None = None,
    ) -> None:
        if not isinstance(pool, Pool2D):
            raise TypeError(f"Expected pool to be a Pool2D, got {type(pool).__name__}")
        skeleton = pool.skeleton if skeleton is None else skeleton
        if pool.skeleton.name != skeleton.name:
            raise ValueError(f"Pool skeleton {pool.skeleton.name} differs from engine skeleton {skeleton.name}")
        self.settings = MosaicSettings.from_options(
            settings, size=size, alpha=alpha, beta=beta, sigma=sigma, margin=margin, mirror=mirror,
            padding_mode=padding_mode, blend=blend, mask_outside=mask_outside, compat_weight=compat_weight,
            multiband_levels=multiband_levels, warp_chunk=warp_chunk, pixel_chunk=pixel_chunk,
            retrieval_budget=retrieval_budget, retrieval=retrieval, soft=soft, temperature=temperature, warps=warps,
            compile=compile,
        )
        self.skeleton = skeleton
        self.pool = pool if device is None else pool.to(device)
        if self.settings.compile in (True, "engine") and self.device.type == "cpu":
            raise ValueError(
                "compile=True/'engine' is not available on the CPU: torch 2.14.1's inductor C++ build of the "
                "whole step aborts on an index bounds check inside the fused raster kernel (the graph itself "
                "traces: tests/test_compile.py); use compile='retrieval' (the exact search's kernel) on the CPU")
        self._compiled = None
        if self.device.type == "cpu":  # keep freed working memory for the next batch (gpumosaic/allocator.py)
            retain_freed_memory()
        self.prepared: PreparedPool = prepare_pool(self.pool, skeleton, self.settings)

    @property
    def device(self) -> torch.device:
        return self.pool.joints.device

    @property
    def retrieval_budget(self) -> int:
        """Bytes of the exact retrieval's work buffers: ``settings.retrieval_budget``, else 4 MiB on the CPU
        and 1 GiB on CUDA."""
        return resolved_retrieval_budget(self.settings, self.device)

    @property
    def index(self):
        """The :class:`~gpumosaic.retrieval.RetrievalIndex` of the Nv virtual entries' box poses."""
        return self.prepared.index

    @property
    def box_from_stored(self) -> torch.Tensor:
        """float (Nv, 2, 3) maps from each virtual entry's stored image to the S×S box."""
        return self.prepared.box_from_stored

    def warp_matches(self, result: MosaicResult) -> torch.Tensor:
        """The dense stack of matched images warped into the query frame, (B, J, 3, S, S), zeros where a joint
        was not searched: ``result.warped`` when the engine kept it, else recomputed (sparse warps)."""
        if result.warped is not None:
            return result.warped
        with unchecked():
            return warp_matched(self.prepared, self.settings, result.source_rows, result.query_from_stored,
                                result.searched)

    def to(self, device) -> "MosaicEngine":
        return MosaicEngine(self.pool.to(device), self.skeleton, settings=self.settings)

    def __call__(
        self,
        query: torch.Tensor,
        occluded: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MosaicResult:
        """Synthesise one mosaic per query pose.

        Args:
            query: float (B, J, 2) query 2D poses, pixels (any frame: fitted into the S×S box here).
            occluded: bool (B, J) self-occluded joints, not searched; ``None`` = all visible.
            generator: unused (the paper's engine is deterministic); accepted so that callers can pass
                one stream through every stage.

        Returns:
            :class:`MosaicResult`.
        """
        del generator
        query, searched = validate_query(query, occluded, self.skeleton, self.device, self.index.joints.dtype)
        query = query.to(dtype=self.index.joints.dtype)
        # Inputs are validated: the stages run without their own data-dependent checks (host syncs).
        with unchecked():
            if self.settings.compile in (True, "engine") and not self.settings.soft:
                if self._compiled is None:  # one graph (docs/performance.md, "Compiled")
                    self._compiled = torch.compile(self.synthesise, fullgraph=True, dynamic=False)
                return self._compiled(query, searched)
            return self.synthesise(query, searched)

    def synthesise(self, query: torch.Tensor, searched: torch.Tensor) -> MosaicResult:
        """The engine's core on validated inputs (no checks, no host sync): soft or hard mode. In hard mode
        ``torch.compile(engine.synthesise, fullgraph=True)`` traces it as one graph (``compile=True``).

        Args:
            query: float (B, J, 2) query poses on the engine's device, in the index's dtype.
            searched: bool (B, J) joints to search.
        """
        if self.settings.soft:  # differentiable w.r.t. the query: gpumosaic/soft.py, docs/differentiable.md
            return synthesise_soft(query, searched, self.settings, self.prepared)
        return synthesise_hard(query, searched, self.settings, self.prepared)
