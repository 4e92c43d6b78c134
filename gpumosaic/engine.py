"""MosaicEngine: one batch of query 2D poses -> blended mosaics (the paper's §2, DESIGN.md steps 4–8).

Stages, each a pure function of its own module:

1. ``fit_to_box`` (:mod:`gpumosaic.geometry`): queries into the S×S box (pool poses were fitted once).
2. ``RetrievalIndex.best`` (:mod:`gpumosaic.retrieval`, Eq. 1–4): a match per searched joint.
3. Rigid alignment ``T`` of each match (Eq. 2) and ``warp_gather`` (:mod:`gpumosaic.warp`): each match
   resampled once from its stored image by ``query_from_stored = T ∘ box_from_stored`` (with the mirror
   folded in for virtual mirrored entries).
4. ``interpolate_triangulated`` (:mod:`gpumosaic.raster`, Eq. 5): per-match probability maps from the
   Delaunay triangulation of the aligned joints ``q'`` with vertex values ``exp(-||p_k - q'_k||² / σ²)``.
5. ``index_map`` and ``mosaic_from_index`` (:mod:`gpumosaic.blend`, Eq. 5–6): argmax stitching.
6. ``skeleton_distance``, ``window_half_width``, ``window_weights`` and ``blend`` (Eq. 7–9): pose-aware
   blending.

Everything is batched over queries and joints; the only Python loops are over pool chunks (retrieval) and
warp chunks, whose counts depend on sizes, never on data, so the engine makes no host-device sync.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from ._check import check_finite, check_shape, unchecked
from .blend import blend, index_map, mosaic_from_index, window_half_width, window_weights
from .geometry import align_rotation, apply_affine, compose_affine, fit_to_box, mirror_affine
from .raster import interpolate_triangulated, skeleton_distance
from .retrieval import RetrievalIndex, mirror_poses, reference_neighbours
from .skeleton import LSP14, Skeleton
from .soft import synthesise_soft
from .sources.base import Pool2D
from .warp import warp_blend_sparse, warp_gather

__all__ = ["MosaicSettings", "MosaicResult", "MosaicEngine", "DEFAULT_SIGMA"]

DEFAULT_SIGMA = 7.5
"""Default σ of Eq. 5 in pixels of the 220-px box; other sizes scale it by ``size / 220``.

Chosen by ``benchmarks/sigma_ablation.py`` (docs/engine.md): limb agreement of the copy-paste mosaic peaks
on a plateau σ ∈ [5, 10] px and falls off beyond; seams grow with σ."""


@dataclass(frozen=True)
class MosaicSettings:
    """Settings of :class:`MosaicEngine` (the paper's defaults).

    Attributes:
        size: S, side of the square output in pixels (paper: 220).
        alpha: α of Eq. 8, the window side at distance 0 from the skeleton, px (paper: 6).
        beta: β of Eq. 8, window growth per pixel of distance to the skeleton (paper: 0.25).
        sigma: σ of Eq. 5 in box pixels (Gaussian vertex values of the probability maps); ``None`` means
            ``DEFAULT_SIGMA · size / 220`` (7.5 px at the paper's 220).
        margin: ``fit_to_box`` margin in px; ``None`` means 10 % of ``size``.
        mirror: double the pool virtually with mirrored entries (flip + left/right permutation).
        padding_mode: how warps sample outside the stored image: ``"border"`` (replicate, default) or
            ``"zeros"``.
        blend: run pose-aware blending; ``False`` returns the copy-paste mosaic as ``images``.
        warp_chunk: warps per chunk (bounds memory; not a semantic setting).
        retrieval_budget: bytes of intermediate distance tensors per retrieval chunk.
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
    """

    size: int = 220
    alpha: float = 6.0
    beta: float = 0.25
    sigma: float | None = None
    margin: float | None = None
    mirror: bool = True
    padding_mode: str = "border"
    blend: bool = True
    warp_chunk: int = 256
    retrieval_budget: int = 4 << 20
    soft: bool = False
    temperature: float = 1.0
    warps: str = "auto"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"Expected size >= 8, got {self.size}")
        if self.sigma is None:
            object.__setattr__(self, "sigma", DEFAULT_SIGMA * self.size / 220.0)
        if self.sigma <= 0:
            raise ValueError(f"Expected sigma > 0, got {self.sigma}")
        if self.alpha < 1 or self.beta < 0:
            raise ValueError(f"Expected alpha >= 1 and beta >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.padding_mode not in ("border", "zeros"):
            raise ValueError(f"Expected padding_mode 'border' or 'zeros', got {self.padding_mode!r}")
        if self.warps not in ("auto", "dense", "sparse"):
            raise ValueError(f"Expected warps 'auto', 'dense' or 'sparse', got {self.warps!r}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"Expected a finite temperature > 0, got {self.temperature}")


@dataclass(frozen=True)
class MosaicResult:
    """Output of :class:`MosaicEngine` for B queries (S = ``settings.size``, J joints).

    Attributes:
        images: float (B, 3, S, S) in [0, 1], the blended mosaics (Eq. 9); the copy-paste mosaic when
            blending is off.
        mosaic_unblended: float (B, 3, S, S), the copy-paste mosaic (Eq. 6).
        index_map: int64 (B, S, S), the joint ``j`` whose warped match fills each pixel (Eq. 5).
        matches: int64 (B, J), virtual pool index per joint (``N..2N-1`` are mirrored entries), -1 where
            the joint was not searched (occluded).
        source: int64 (B, J), stored pool row of each match (-1 where not searched).
        mirrored: bool (B, J), whether the match is a mirrored entry.
        source_ids: int64 (B, J), ``pool.ids`` of each match (-1 where not searched).
        searched: bool (B, J), joints that were searched.
        query: float (B, J, 2), the query poses in the S×S box (the 2D label of ``images``).
        aligned: float (B, J, J, 2), ``q'``: each match's joints after the rigid map ``T`` (Eq. 2).
        query_from_stored: float (B, J, 2, 3), the affine each match was warped with.
        warped: float (B, J, 3, S, S), each match warped into the query frame (zeros where not searched);
            ``None`` with sparse warps (:meth:`MosaicEngine.warp_matches` recomputes it).
        probability: float (B, J, S, S), the probability maps (Eq. 5; zeros where not searched).
        weights: float (B, J, S, S) blending weights ``w_j`` (Eq. 8), or None when blending is off.
        distance: float (B, S, S) distance to the query skeleton ``d`` (Eq. 7), or None when blending is off.
    """

    images: torch.Tensor
    mosaic_unblended: torch.Tensor
    index_map: torch.Tensor
    matches: torch.Tensor
    source: torch.Tensor
    mirrored: torch.Tensor
    source_ids: torch.Tensor
    searched: torch.Tensor
    query: torch.Tensor
    aligned: torch.Tensor
    query_from_stored: torch.Tensor
    warped: torch.Tensor | None
    probability: torch.Tensor
    weights: torch.Tensor | None
    distance: torch.Tensor | None

    def detach(self) -> "MosaicResult":
        return replace(self, **{f.name: _map(getattr(self, f.name), torch.Tensor.detach) for f in fields(self)})

    def to(self, device) -> "MosaicResult":
        return replace(self, **{f.name: _map(getattr(self, f.name), lambda t: t.to(device)) for f in fields(self)})


@dataclass(frozen=True)
class _Matched:
    """Steps 1-4 of one batch (internal): box queries (B, J, 2), matches (B, J), stored rows (B, J),
    aligned matches q' (B, J, J, 2), warp affines (B, J, 2, 3), probability maps (B, J, S, S)."""

    query: torch.Tensor
    matches: torch.Tensor
    source: torch.Tensor
    aligned: torch.Tensor
    query_from_stored: torch.Tensor
    probability: torch.Tensor


def _map(x, fn):
    return None if x is None else fn(x)


class MosaicEngine:
    """The paper's synthesis engine over one pool (DESIGN.md steps 4–8).

    Args:
        pool: the annotated images (:class:`~gpumosaic.sources.Pool2D`); uint8 images stay uint8 on the
            device; float images in [0, 1] make the mosaics differentiable with respect to them.
        skeleton: the joint layout of queries and pool (default ``LSP14``); must match ``pool.skeleton``.
        size, alpha, beta, sigma, margin, mirror, padding_mode, blend, soft, temperature, warps: see
            :class:`MosaicSettings`.
        device: where the pool and all computation live; ``None`` keeps the pool's device.
        settings: a full :class:`MosaicSettings` instead of the keyword arguments above.

    Calling the engine on ``query (B, J, 2)`` (pixels of any frame, fitted into the box here),
    ``occluded (B, J) bool`` (not searched; ``None``: none occluded) returns a :class:`MosaicResult`.
    A row with every joint occluded is searched in full (documented fallback: the mosaic needs a source).

    Example:
        >>> from gpumosaic import MosaicEngine, load_demo_pool
        >>> engine = MosaicEngine(load_demo_pool())
        >>> engine(torch.rand(2, 14, 2) * 100).images.shape
        torch.Size([2, 3, 220, 220])
    """

    def __init__(
        self,
        pool: Pool2D,
        skeleton: Skeleton = LSP14,
        size: int = 220,
        alpha: float = 6.0,
        beta: float = 0.25,
        sigma: float | None = None,
        margin: float | None = None,
        mirror: bool = True,
        padding_mode: str = "border",
        blend: bool = True,
        soft: bool = False,
        temperature: float = 1.0,
        warps: str = "auto",
        device: torch.device | str | None = None,
        settings: MosaicSettings | None = None,
    ) -> None:
        if not isinstance(pool, Pool2D):
            raise TypeError(f"Expected pool to be a Pool2D, got {type(pool).__name__}")
        if pool.skeleton.name != skeleton.name:
            raise ValueError(f"Pool skeleton {pool.skeleton.name} differs from engine skeleton {skeleton.name}")
        self.settings = settings or MosaicSettings(
            size=size, alpha=alpha, beta=beta, sigma=sigma, margin=margin, mirror=mirror,
            padding_mode=padding_mode, blend=blend, soft=soft, temperature=temperature,
            warps=warps,
        )
        self.skeleton = skeleton
        self.pool = pool if device is None else pool.to(device)
        self._build()

    @property
    def device(self) -> torch.device:
        return self.pool.joints.device

    def _build(self) -> None:
        """Fit every (virtual) pool pose into the box once and build the retrieval index."""
        s = self.settings
        joints = self.pool.joints.float()
        box, box_from_stored = fit_to_box(joints, s.size, s.margin)
        if s.mirror:
            width = self.pool.image_size[1]
            mirrored = mirror_poses(joints, self.skeleton, width=width)  # in the flipped stored frame
            box_m, box_from_flipped = fit_to_box(mirrored, s.size, s.margin)
            box_from_stored_m = compose_affine(box_from_flipped, mirror_affine(width, joints))
            box = torch.cat([box, box_m], 0)
            box_from_stored = torch.cat([box_from_stored, box_from_stored_m], 0)
        self.box_from_stored = box_from_stored  # (Nv, 2, 3)
        self.index = RetrievalIndex.build(box, self.skeleton)

    def _warp(self, source: torch.Tensor, query_from_stored: torch.Tensor, searched: torch.Tensor) -> torch.Tensor:
        s = self.settings
        mask = searched[..., None, None, None].to(torch.float32)
        return warp_gather(
            self.pool.images, source.clamp_min(0), query_from_stored, (s.size, s.size),
            padding_mode=s.padding_mode, chunk=s.warp_chunk,
        ) * mask

    def warp_matches(self, result: MosaicResult) -> torch.Tensor:
        """The dense stack of matched images warped into the query frame, (B, J, 3, S, S), zeros where a joint
        was not searched: ``result.warped`` when the engine kept it, else recomputed (sparse warps)."""
        if result.warped is not None:
            return result.warped
        with unchecked():
            return self._warp(result.source, result.query_from_stored, result.searched)

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
        query, searched = self._validate(query, occluded)
        query = query.to(dtype=self.index.joints.dtype)
        # Inputs are validated: the stages run without their own data-dependent checks (host syncs).
        with unchecked():
            return self._synthesise(query, searched)

    def _validate(self, query: torch.Tensor, occluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Check a public call's ``query (B, J, 2)`` and ``occluded (B, J)``; return the query on the engine's
        device (its dtype kept) and ``searched (B, J)``. May sync with the device (entry point only)."""
        dims = check_shape(query, ["B", "J", "2"], name="query")
        if query.dim() != 3 or query.shape[1] != len(self.skeleton):
            raise ValueError(
                f"Expected query with J={len(self.skeleton)} joints of {self.skeleton.name}, "
                f"got shape {tuple(query.shape)}"
            )
        if not query.is_floating_point():
            raise TypeError(f"Expected a floating-point query, got {query.dtype}")
        check_finite(query, "query")
        query = query.to(device=self.device)
        if occluded is None:
            return query, torch.ones(query.shape[:2], dtype=torch.bool, device=self.device)
        check_shape(occluded, ["B", "J"], name="occluded", dims=dict(dims))
        if occluded.dtype != torch.bool:
            raise TypeError(f"Expected occluded to be a bool tensor, got {occluded.dtype}")
        return query, ~occluded.to(self.device)

    def _match_and_map(
        self, query: torch.Tensor, searched: torch.Tensor, matches: torch.Tensor | None = None
    ) -> "_Matched":
        """Steps 1-4, shared by hard and soft mode: box, retrieval, rigid alignment, probability maps.

        Computes in ``query.dtype``; retrieval and the choice of neighbour ``i`` are discrete and run on the
        detached query, so everything else carries gradients w.r.t. the query (soft mode).
        ``matches`` (B, J) replaces retrieval when given (e.g. to hold matches fixed while fitting a pose).
        """
        s = self.settings
        b, num_j = query.shape[:2]
        dt = query.dtype

        # 1. Queries into the box.
        p, _ = fit_to_box(query, s.size, s.margin)  # (B, J, 2)

        # 2. Retrieval (Eq. 1-4).
        if matches is None:
            matches, _ = self.index.best(p.detach().to(self.index.joints.dtype), searched,
                                         budget_bytes=s.retrieval_budget)
        else:
            matches = matches.masked_fill(~searched, -1)
        m = matches.clamp_min(0)  # unsearched joints read entry 0; masked out below

        # 3. Rigid alignment (Eq. 2): q'_k = R (q_k - q_j) + p_j, R turning q_i - q_j onto p_i - p_j.
        q = self.index.joints[m].to(dt)  # (B, J, J, 2), constants
        nb = reference_neighbours(p.detach(), self.skeleton)  # (B, J) the i of each j
        jj = torch.arange(num_j, device=self.device)
        q_j = q[:, jj, jj]  # (B, J, 2)
        q_i = torch.gather(q, 2, nb[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
        p_i = torch.gather(p, 1, nb[..., None].expand(-1, -1, 2))
        rot = align_rotation(q_i - q_j, p_i - p)  # (B, J, 2, 2)
        trans = p - (rot @ q_j[..., None])[..., 0]
        query_from_box = torch.cat([rot, trans[..., None]], -1)  # (B, J, 2, 3)
        aligned = apply_affine(query_from_box, q)  # (B, J, J, 2)
        query_from_stored = compose_affine(query_from_box, self.box_from_stored[m].to(dt))

        # 4. Probability maps (Eq. 5): vertex values exp(-||p_k - q'_k||^2 / sigma^2), barycentric inside
        # the Delaunay triangulation of q', nearest-hull-point value outside.
        values = torch.exp(-(p[:, None] - aligned).square().sum(-1) / s.sigma**2)  # (B, J, J)
        prob = interpolate_triangulated(
            aligned.reshape(b * num_j, num_j, 2), values.reshape(b * num_j, num_j), (s.size, s.size)
        ).view(b, num_j, s.size, s.size) * searched[..., None, None].to(dt)
        return _Matched(p, matches, m % len(self.pool), aligned, query_from_stored, prob)

    def _result(self, mt: "_Matched", searched: torch.Tensor, **fields_) -> MosaicResult:
        """Assemble a :class:`MosaicResult` from the shared steps and a mode's images and maps."""
        ids = self.pool.ids.to(self.device)
        return MosaicResult(
            matches=mt.matches,
            source=torch.where(searched, mt.source, -1),
            mirrored=(mt.matches >= len(self.pool)) & searched,
            source_ids=torch.where(searched, ids[mt.source], -1),
            searched=searched,
            query=mt.query,
            aligned=mt.aligned,
            query_from_stored=mt.query_from_stored,
            probability=mt.probability,
            **fields_,
        )

    def _synthesise(self, query: torch.Tensor, searched: torch.Tensor) -> MosaicResult:
        s = self.settings
        if s.soft:  # differentiable w.r.t. the query: gpumosaic/soft.py, docs/differentiable.md
            return synthesise_soft(self, query, searched)
        searched = searched | ~searched.any(dim=1, keepdim=True)  # all-occluded rows: search everything
        num_j = query.shape[1]
        mt = self._match_and_map(query, searched)
        p, source, query_from_stored, prob = mt.query, mt.source, mt.query_from_stored, mt.probability

        # Warps: one resampling from the stored image (mirror folded into the affine); dense now, or sparse
        # (only where a weight is non-zero) once the weights are known.
        sparse = s.warps == "sparse" or (s.warps == "auto" and self.device.type == "cpu")
        warped = None if sparse else self._warp(source, query_from_stored, searched)  # (B, J, 3, S, S)

        # 5. Index map and copy-paste mosaic (Eq. 5-6).
        index = index_map(prob, searched)
        unblended = None if sparse else mosaic_from_index(warped, index)

        # 6. Pose-aware blending (Eq. 7-9).
        weights = distance = None
        if s.blend:
            distance = skeleton_distance(p, self.skeleton, (s.size, s.size))
            half = window_half_width(distance, s.alpha, s.beta)
            weights = window_weights(index, num_j, half)
            if sparse:  # every window holds its own pixel: the copy-paste samples are among the blend's
                images, unblended = warp_blend_sparse(
                    self.pool.images, source, query_from_stored, weights, s.padding_mode, index_map=index
                )
            else:
                images = blend(warped, weights)
        else:
            if sparse:
                one_hot = torch.nn.functional.one_hot(index, num_j).permute(0, 3, 1, 2).to(prob.dtype)
                unblended = warp_blend_sparse(self.pool.images, source, query_from_stored, one_hot, s.padding_mode)
            images = unblended

        return self._result(mt, searched, images=images, mosaic_unblended=unblended, index_map=index,
                            warped=warped, weights=weights, distance=distance)
