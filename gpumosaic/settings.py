"""Settings, one frozen dataclass per concern, with every default resolved here and nowhere else.

* :class:`MosaicSettings`: the synthesis engine (DESIGN.md steps 4–8): output size, α, β, σ, the box margin
  in **pixels**, mirroring, warps, soft mode.
* :class:`ViewSettings`: the virtual cameras (DESIGN.md steps 2–3): views per pose, azimuth and elevation
  ranges, camera distance and focal length, and the self-occlusion capsule radius and depth tolerance in
  **metres** (``occlusion_margin``; not to be confused with the box margin in pixels).

``None`` fields are resolved in ``__post_init__`` (e.g. ``sigma=None`` becomes ``7.5 · size / 220``), so a
settings object read anywhere holds final values. :class:`~gpumosaic.MosaicEngine`,
:class:`~gpumosaic.OnlineMosaicDataset`, :func:`gpumosaic.export.export_shards` and the reference engine
take these objects; the engine's keyword arguments are a shorthand for ``settings=MosaicSettings(...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .geometry import default_margin

__all__ = ["DEFAULT_SIGMA", "DEFAULT_ALPHA", "PAPER", "FIDELITY", "PRUNE_MIN_ROWS", "MosaicSettings", "ViewSettings",
           "check_view_ranges", "resolved_pruning"]

DEFAULT_SIGMA = 7.5
"""Default σ of Eq. 5 in pixels of the 220-px box; other sizes scale it by ``size / 220``.

Chosen by ``benchmarks/sigma_ablation.py`` (docs/engine.md): limb agreement of the copy-paste mosaic peaks
on a plateau σ ∈ [5, 10] px and falls off beyond; seams grow with σ."""


DEFAULT_ALPHA = 6.0
"""Default α of Eq. 7 (window side on the skeleton, px at S = 220): the paper's value, 6.

The fidelity benchmark (docs/fidelity.md, issue 13) measured that on pools stored at 160–256 px, α = 6 cost
blended mosaics recognisability (half of the body's pixels are cross-fades of misaligned sources) and α = 1
(:data:`FIDELITY`, ``--alpha 1``) removed that loss. On the real pool stored at 384 px (the default since session
4) α = 6 is as good as α = 1 (blended PCK@0.2 α 1 − α 6: −0.03 [−0.06, +0.01] held-out, −0.01 [−0.05, +0.02]
mocap, session 5). The paper's value is the default (deviations from the paper are options, never silent
defaults)."""

FIDELITY = {"alpha": 1.0}
"""The blending the fidelity benchmark chose for pools stored at ≤ 256 px (docs/fidelity.md): α = 1 (no window on
the skeleton itself, sharp seams on the body) with β = 0.25 still smoothing the background.
``MosaicEngine(pool, **FIDELITY)``, or ``--alpha 1`` on the command line. With crops of ≥ 384 px (the real
pool's) it brings nothing over the paper's α = 6 (:data:`DEFAULT_ALPHA`)."""

PAPER = {"alpha": 6.0, "beta": 0.25, "padding_mode": "border", "mask_outside": False, "compat_weight": 0.0}
"""The paper's blending settings and the original implementation choices (``MosaicEngine(pool, **PAPER)``,
``--paper`` on the command line): α = 6, β = 0.25 (Rogez & Schmid, Eq. 7), border replication, no mask, the
paper's per-joint retrieval."""


@dataclass(frozen=True)
class MosaicSettings:
    """Settings of the synthesis engine: the paper's equations, with defaults chosen by measurement where the
    paper gives none (padding, out-of-image mask: chosen by the fidelity benchmark, docs/fidelity.md);
    :data:`PAPER` restores the original implementation choices too, :data:`FIDELITY` gives α = 1.

    Attributes:
        size: S, side of the square output in pixels (paper: 220).
        alpha: α of Eq. 7, the window side at distance 0 from the skeleton, px (paper and default: 6;
            :data:`FIDELITY` = 1 keeps body seams sharp, which helped pools stored at ≤ 256 px).
        beta: β of Eq. 7, window growth per pixel of distance to the skeleton (paper: 0.25).
        sigma: σ of Eq. 5 in box pixels (Gaussian vertex values of the probability maps); ``None`` means
            ``DEFAULT_SIGMA · size / 220`` (7.5 px at the paper's 220).
        margin: ``fit_to_box`` margin in box **pixels**; ``None`` means
            :func:`~gpumosaic.geometry.default_margin` (10 % of ``size``).
        mirror: double the pool virtually with mirrored entries (flip + left/right permutation).
        padding_mode: how warps sample outside the stored image: ``"reflection"`` (mirror the image about its
            edges: real content, no streaks; default), ``"border"`` (replicate the edge: streaks; the
            original choice) or ``"zeros"``.
        blend: run pose-aware blending; ``False`` returns the copy-paste mosaic as ``images``.
        mask_outside: beyond the paper (issue 13): a match whose warp samples outside its stored image (pure
            padding) never wins a pixel that another match fills with real content, and is left out of the
            blend there (:func:`~gpumosaic.warp.source_inside`, ``index_map(valid=)``, ``mask_weights``).
            Default ``True`` (chosen by the fidelity benchmark). Hard mode only: soft mode ignores it.
        compat_weight: λ >= 0 of a pairwise image-compatibility term (beyond the paper, its future work;
            :mod:`gpumosaic.pairwise`): retrieval minimises ``Σ_j D_j(p, m_j) + λ·Σ_bones [m_j ≠ m_k]`` exactly
            (dynamic programming on the kinematic tree), so neighbouring joints prefer the same source image.
            In px of Eq. 3; 0 (default) is the paper's per-joint argmin (Eq. 4). Needs every D_j: (B, J, Nv)
            distances per batch.
        multiband_levels: 0 (default): the paper's pose-aware blending (Eq. 7–9). n ≥ 1: beyond the paper,
            multi-band blending of the matches over the index map with n Laplacian bands
            (:func:`gpumosaic.multiband.multiband_blend`; hard mode, dense warps; ``weights`` and ``distance``
            are then ``None``). Measured by the fidelity benchmark (docs/fidelity.md, "Session 5").
        warp_chunk: warps per chunk (bounds memory; not a semantic setting).
        pixel_chunk: mosaics per pass of the hard engine's per-pixel stages (probability maps to blending;
            not a semantic setting): retrieval runs on the whole batch, the per-pixel stages on sub-batches
            of this many, so that their temporaries stay the same size whatever the batch (on the CPU, blocks
            above glibc's 32 MiB mmap threshold are returned to the system and page-faulted in again on
            every batch: B = 32 in one pass cost 1.36x B = 8 per mosaic, docs/performance.md). Default 8.
        retrieval_budget: bytes of the exact retrieval's work buffers per pool chunk (not a semantic setting);
            ``None`` (default): 4 MiB on the CPU (a chunk stays in cache), 1 GiB on CUDA (few kernel launches)
            (:func:`resolved_retrieval_budget`).
        retrieval: how the exact retrieval (Eq. 4) runs; every choice gives the same matches (not a semantic
            setting). ``"scan"``: Eq. 3 for every pool row. ``"pruned"``: a lower bound skips the rows that
            cannot win and Eq. 3 runs on the rest (:mod:`gpumosaic.pruning`; ``nonzero`` inside: a host sync on
            CUDA, so never inside a compiled graph, where the scan is used). ``"auto"`` (default): pruned on the
            CPU for indexes of at least :data:`PRUNE_MIN_ROWS` virtual entries (measured faster there,
            docs/performance.md), the scan otherwise.
        soft: differentiable soft mode (:mod:`gpumosaic.soft`, docs/differentiable.md): softmax of the
            log-probability maps at temperature τ instead of the argmax, smooth skeleton distance and
            smooth windows, so mosaics have gradients w.r.t. the query joints (matches stay discrete).
            ``False`` (default): the paper's hard engine.
        temperature: τ > 0 of soft mode (ignored in hard mode): τ = 1 mixes the warps in proportion to
            their probabilities, τ → 0 tends to hard mode.
        warps: how the hard engine samples the matched images. ``"dense"``: warp every match over the whole
            frame (``warped`` is returned). ``"sparse"``: sample each pixel only from the matches whose
            weight there is non-zero (:func:`~gpumosaic.warp.warp_blend_sparse`; the same mosaics up to float
            rounding, several times less work, ``warped`` is ``None``: :meth:`MosaicEngine.warp_matches`
            recomputes it); it finds the non-zero weights with ``nonzero``, a host sync on CUDA.
            ``"auto"`` (default): sparse on the CPU, dense on CUDA.
        compile: ``False`` (default): eager. ``True`` or ``"engine"``: the hard engine's core
            (:meth:`MosaicEngine.synthesise`, retrieval to blending) as one ``torch.compile(fullgraph=True,
            dynamic=False)`` graph: no graph break, hence no ``.item()``, no data-dependent shape and no host
            sync inside. Warps are dense there (``"auto"`` means dense when traced): the sparse path's
            ``nonzero`` has a data-dependent size, which a single graph cannot hold without a capacity that
            could drop samples. CUDA only: on the CPU, inductor's C++ build of this graph aborts on an index
            bounds check in the fused raster kernel (torch 2.14.1), so :class:`MosaicEngine` refuses it.
            ``"retrieval"``: only the exact retrieval's chunk kernel is compiled (fused, the same matches), the
            rest stays eager. The first call of each batch size compiles (about a minute or more on a CPU);
            measured effects in docs/performance.md. Soft mode is never compiled.
    """

    size: int = 220
    alpha: float = DEFAULT_ALPHA
    beta: float = 0.25
    sigma: float | None = None
    margin: float | None = None
    mirror: bool = True
    padding_mode: str = "reflection"
    blend: bool = True
    mask_outside: bool = True
    compat_weight: float = 0.0
    multiband_levels: int = 0
    warp_chunk: int = 256
    pixel_chunk: int = 8
    retrieval_budget: int | None = None
    retrieval: str = "auto"
    soft: bool = False
    temperature: float = 1.0
    warps: str = "auto"
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"Expected size >= 8, got {self.size}")
        if self.sigma is None:
            object.__setattr__(self, "sigma", DEFAULT_SIGMA * self.size / 220.0)
        if self.sigma <= 0:
            raise ValueError(f"Expected sigma > 0, got {self.sigma}")
        if self.margin is None:
            object.__setattr__(self, "margin", default_margin(self.size))
        if not 0 <= 2 * self.margin < self.size:
            raise ValueError(f"Expected 0 <= 2*margin < size, got margin={self.margin}, size={self.size}")
        if self.alpha < 1 or self.beta < 0:
            raise ValueError(f"Expected alpha >= 1 and beta >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(f"Expected padding_mode 'border', 'zeros' or 'reflection', got {self.padding_mode!r}")
        if not 0 <= self.compat_weight < float("inf"):
            raise ValueError(f"Expected a finite compat_weight >= 0, got {self.compat_weight}")
        if self.multiband_levels:
            from .multiband import max_levels

            top = max_levels(self.size)
            if isinstance(self.multiband_levels, bool) or not 0 <= self.multiband_levels <= top:
                raise ValueError(f"Expected multiband_levels in 0..{top} at size {self.size} (0: the paper's "
                                 f"blending), got {self.multiband_levels!r}")
            if self.soft:
                raise ValueError("Expected multiband_levels=0 in soft mode (multi-band blending is hard-mode only)")
        if self.retrieval not in ("auto", "scan", "pruned"):
            raise ValueError(f"Expected retrieval 'auto', 'scan' or 'pruned', got {self.retrieval!r}")
        if self.warps not in ("auto", "dense", "sparse"):
            raise ValueError(f"Expected warps 'auto', 'dense' or 'sparse', got {self.warps!r}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"Expected a finite temperature > 0, got {self.temperature}")
        if self.compile not in (False, True, "engine", "retrieval"):
            raise ValueError(f"Expected compile False, True, 'engine' or 'retrieval', got {self.compile!r}")
        if self.compile in (True, "engine") and self.warps == "sparse":
            raise ValueError("Expected warps 'auto' or 'dense' with compile=True, got 'sparse' (its nonzero has a "
                             "data-dependent size: a compiled graph uses dense warps)")
        for value, name in ((self.warp_chunk, "warp_chunk"), (self.pixel_chunk, "pixel_chunk"),
                            (self.retrieval_budget, "retrieval_budget")):
            if name == "retrieval_budget" and value is None:
                continue
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"Expected {name} to be a positive integer, got {value!r}")

    @classmethod
    def from_options(cls, settings: "MosaicSettings | None" = None, **options) -> "MosaicSettings":
        """``settings``, or a new one from the given fields (``None`` values mean "the default").

        Raises ``TypeError`` naming the argument when both ``settings`` and a field are given (a field would
        silently override a resolved default such as ``sigma``) or when a name is not a field.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"Expected MosaicSettings fields, got unknown argument(s) {unknown}")
        given = {k: v for k, v in options.items() if v is not None}
        if settings is not None:
            if given:
                raise TypeError(f"Expected settings or keyword arguments, not both: got settings and {sorted(given)}")
            if not isinstance(settings, cls):
                raise TypeError(f"Expected settings to be a MosaicSettings, got {type(settings).__name__}")
            return settings
        return cls(**given)


PRUNE_MIN_ROWS = 10000
"""Index size (virtual entries, mirrored ones included) from which ``retrieval="auto"`` prunes on the CPU. With
the third pass of the pruned search (session 4), at 10,000 entries the two cost the same (pruned / scan 0.97 and
0.87 in two runs), at 20,000 the pruned one 0.70–0.72 of the scan, at 160,000 about 0.5 (docs/performance.md);
below 10,000 the scan is cheaper (1.14 at 5,000)."""


def resolved_pruning(settings: MosaicSettings, device: torch.device, num_entries: int) -> bool:
    """Whether the exact retrieval skips rows by its lower bound (``settings.retrieval``, resolved)."""
    if settings.retrieval != "auto":
        return settings.retrieval == "pruned"
    return torch.device(device).type == "cpu" and num_entries >= PRUNE_MIN_ROWS


def resolved_retrieval_budget(settings: MosaicSettings, device: torch.device) -> int:
    """``settings.retrieval_budget``, else 4 MiB on the CPU and 1 GiB on other devices (bytes)."""
    budget = settings.retrieval_budget
    return budget if budget is not None else ((4 << 20) if torch.device(device).type == "cpu" else (1 << 30))


def check_view_ranges(azimuth_range, elevation_range) -> tuple[tuple[float, float], tuple[float, float]]:
    """Validate view ranges in degrees: finite ``(lo, hi)`` pairs, ``lo <= hi``, elevation within ±90°."""
    try:
        (alo, ahi), (elo, ehi) = (tuple(map(float, azimuth_range)), tuple(map(float, elevation_range)))
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected (lo, hi) pairs, got azimuth_range={azimuth_range!r}, elevation_range={elevation_range!r}"
        ) from None
    if not all(math.isfinite(v) for v in (alo, ahi, elo, ehi)) or alo > ahi or elo > ehi:
        raise ValueError(
            f"Expected finite (lo, hi) ranges with lo <= hi, got azimuth_range={tuple(azimuth_range)}, "
            f"elevation_range={tuple(elevation_range)}"
        )
    if elo < -90 or ehi > 90:
        raise ValueError(f"Expected elevation_range within [-90, 90], got {tuple(elevation_range)}")
    return (alo, ahi), (elo, ehi)


@dataclass(frozen=True)
class ViewSettings:
    """The virtual cameras of DESIGN.md steps 2–3 (the paper's defaults), shared by camera, dataset, export.

    Attributes:
        views_per_pose: V cameras per mocap pose (paper: 180).
        azimuth_range: ``(lo, hi)`` degrees, azimuth ~ U[lo, hi) (paper: (0, 360)).
        elevation_range: ``(lo, hi)`` degrees within [-90, 90], elevation ~ U[lo, hi] (paper: (-45, 45)).
        roll_range: ``(lo, hi)`` degrees within [-180, 180], the camera's rotation about its optical axis,
            roll ~ U[lo, hi] (paper: none, ``(0, 0)``; an option, :func:`gpumosaic.camera.roll_views`). Real
            cameras are rarely level; a rolled camera turns the 2D pose in the image plane.
        distance: camera distance to the torso centre, metres (> every joint's distance from it).
        focal: focal length in pixels (perspective strength; ``fit_to_box`` removes the scale).
        limb_radius: self-occlusion capsule radius, metres (:func:`gpumosaic.camera.self_occlusion`).
        occlusion_margin: self-occlusion depth tolerance, **metres** (a joint is hidden only by a body part
            more than this much in front of it).
    """

    views_per_pose: int = 180
    azimuth_range: tuple[float, float] = (0.0, 360.0)
    elevation_range: tuple[float, float] = (-45.0, 45.0)
    roll_range: tuple[float, float] = (0.0, 0.0)
    distance: float = 5.0
    focal: float = 1000.0
    limb_radius: float = 0.05
    occlusion_margin: float = 0.02

    def __post_init__(self) -> None:
        v = self.views_per_pose
        if isinstance(v, bool) or int(v) != v or v <= 0:
            raise ValueError(f"Expected views_per_pose to be a positive integer, got {v!r}")
        object.__setattr__(self, "views_per_pose", int(v))
        az, el = check_view_ranges(self.azimuth_range, self.elevation_range)
        object.__setattr__(self, "azimuth_range", az)
        object.__setattr__(self, "elevation_range", el)
        try:
            rlo, rhi = map(float, self.roll_range)
        except (TypeError, ValueError):
            raise ValueError(f"Expected roll_range as a (lo, hi) pair of degrees, got {self.roll_range!r}") from None
        if not (math.isfinite(rlo) and math.isfinite(rhi) and -180 <= rlo <= rhi <= 180):
            raise ValueError(f"Expected roll_range (lo, hi) with -180 <= lo <= hi <= 180, got {self.roll_range!r}")
        object.__setattr__(self, "roll_range", (rlo, rhi))
        for name in ("distance", "focal"):
            value = getattr(self, name)
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"Expected a finite {name} > 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("limb_radius", "occlusion_margin"):
            value = getattr(self, name)
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"Expected a finite {name} >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
