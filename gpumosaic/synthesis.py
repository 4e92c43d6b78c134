"""The synthesis core (DESIGN.md steps 4–8) as plain functions; :class:`~gpumosaic.MosaicEngine` calls them.

Data flows one way through the stages, each a pure function of its own module:

1. ``fit_to_box`` (:mod:`gpumosaic.geometry`): queries into the S×S box (pool poses were fitted once, by
   :func:`prepare_pool`).
2. ``RetrievalIndex.best`` (:mod:`gpumosaic.retrieval`, Eq. 1–4): a match per searched joint.
3. ``rigid_alignment`` (:mod:`gpumosaic.geometry`, Eq. 2) of each match; the warp affine
   ``query_from_stored = T ∘ box_from_stored`` (mirror folded in for virtual mirrored entries).
4. ``interpolate_triangulated`` (:mod:`gpumosaic.raster`, Eq. 5): per-match probability maps from the
   Delaunay triangulation of the aligned joints ``q'`` with vertex values ``exp(-||p_k - q'_k||² / σ²)``.

Steps 1–4 are :func:`match_and_map`, shared by hard mode (:func:`synthesise_hard`, below) and soft mode
(:func:`gpumosaic.soft.synthesise_soft`). Hard mode then runs

5. ``warp_gather`` / ``warp_blend_sparse`` (:mod:`gpumosaic.warp`), ``index_map`` and ``mosaic_from_index``
   (:mod:`gpumosaic.blend`, Eq. 5–6): argmax stitching;
6. ``skeleton_distance`` (:mod:`gpumosaic.raster`), ``window_half_width``, ``window_weights`` and ``blend``
   (Eq. 7–9): pose-aware blending.

Everything is batched over queries and joints; the only Python loops are over pool chunks (retrieval) and
warp chunks, whose counts depend on sizes, never on data, so synthesis makes no host-device sync. The
functions here trust their inputs (:func:`validate_query` checks a public call's).

Glossary: B batch, J joints, N stored pool images, Nv = N or 2N virtual entries (mirroring), S box side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from ._check import check_finite, check_shape, checks_enabled
from .blend import blend, index_map, mosaic_from_index, window_half_width, window_weights
from .delaunay import TriangulationCache
from .geometry import compose_affine, fit_to_box, mirror_affine, rigid_alignment
from .raster import interpolate_triangulated, skeleton_distance
from .pairwise import tree_potts_matches
from .retrieval import RetrievalIndex, mirror_poses, reference_neighbours
from .settings import MosaicSettings, resolved_pruning, resolved_retrieval_budget
from .skeleton import Skeleton
from .sources.base import Pool2D
from .multiband import multiband_blend
from .warp import source_inside, warp_blend_sparse, warp_gather

__all__ = [
    "MosaicResult",
    "PreparedPool",
    "Matched",
    "prepare_pool",
    "validate_query",
    "match_and_map",
    "probability_maps",
    "mosaic_result",
    "warp_matched",
    "synthesise_hard",
]

def _map(x, fn):
    return None if x is None else fn(x)


@dataclass(frozen=True)
class MosaicResult:
    """Output of synthesis for B queries (S = ``settings.size``, J joints).

    Attributes:
        images: float (B, 3, S, S) in [0, 1], the blended mosaics (Eq. 9); the copy-paste mosaic when
            blending is off.
        mosaic_unblended: float (B, 3, S, S), the copy-paste mosaic (Eq. 6).
        index_map: int64 (B, S, S), the joint ``j`` whose warped match fills each pixel (Eq. 5).
        matches: int64 (B, J), virtual pool index per joint (``N..2N-1`` are mirrored entries), -1 where
            the joint was not searched (occluded).
        source_rows: int64 (B, J), stored pool row of each match (-1 where not searched).
        mirrored: bool (B, J), whether the match is a mirrored entry.
        source_ids: int64 (B, J), ``pool.ids`` of each match (-1 where not searched).
        searched: bool (B, J), joints that were searched.
        pose2d: float (B, J, 2), the query poses fitted into the S×S box: the 2D label of ``images``.
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
    source_rows: torch.Tensor
    mirrored: torch.Tensor
    source_ids: torch.Tensor
    searched: torch.Tensor
    pose2d: torch.Tensor
    aligned: torch.Tensor
    query_from_stored: torch.Tensor
    warped: torch.Tensor | None
    probability: torch.Tensor
    weights: torch.Tensor | None
    distance: torch.Tensor | None

    @property
    def query(self) -> torch.Tensor:
        """Old name of :attr:`pose2d` (the query in the S×S box)."""
        return self.pose2d

    @property
    def source(self) -> torch.Tensor:
        """Old name of :attr:`source_rows`."""
        return self.source_rows

    def detach(self) -> "MosaicResult":
        return replace(self, **{f.name: _map(getattr(self, f.name), torch.Tensor.detach) for f in fields(self)})

    def to(self, device) -> "MosaicResult":
        return replace(self, **{f.name: _map(getattr(self, f.name), lambda t: t.to(device)) for f in fields(self)})


@dataclass(frozen=True)
class PreparedPool:
    """A pool ready for synthesis under one :class:`MosaicSettings` (built once by :func:`prepare_pool`).

    Attributes:
        pool: the stored images, joints and ids (:class:`~gpumosaic.sources.Pool2D`).
        index: the retrieval index of the Nv virtual entries' box poses (rows ``N..2N-1`` mirrored).
        box_from_stored: float (Nv, 2, 3), each virtual entry's map from its stored image's pixels to the
            S×S box (the mirror folded in for mirrored entries).
        triangulations: the Delaunay triangulation of each virtual entry's box pose, computed on first use
            (CPU; Eq. 5's triangulation of the aligned joints is the same: :class:`TriangulationCache`).
    """

    pool: Pool2D
    index: RetrievalIndex
    box_from_stored: torch.Tensor
    triangulations: TriangulationCache

    @property
    def skeleton(self) -> Skeleton:
        return self.index.skeleton

    @property
    def device(self) -> torch.device:
        return self.pool.joints.device


def prepare_pool(pool: Pool2D, skeleton: Skeleton, settings: MosaicSettings) -> PreparedPool:
    """Fit every (virtual) pool pose into the S×S box once and build the retrieval index.

    Args:
        pool: the annotated images (on the device synthesis runs on).
        skeleton: their joint layout.
        settings: ``size``, ``margin`` and ``mirror`` are used.

    Returns:
        :class:`PreparedPool`.
    """
    s = settings
    joints = pool.joints.float()
    box, box_from_stored = fit_to_box(joints, s.size, s.margin)
    if s.mirror:
        width = pool.image_size[1]
        mirrored = mirror_poses(joints, skeleton, width=width)  # in the flipped stored frame
        box_m, box_from_flipped = fit_to_box(mirrored, s.size, s.margin)
        box_from_stored_m = compose_affine(box_from_flipped, mirror_affine(width, joints))
        box = torch.cat([box, box_m], 0)
        box_from_stored = torch.cat([box_from_stored, box_from_stored_m], 0)
    return PreparedPool(pool, RetrievalIndex.build(box, skeleton), box_from_stored, TriangulationCache(box))


def validate_query(
    query: torch.Tensor, occluded: torch.Tensor | None, skeleton: Skeleton, device: torch.device,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a public call's ``query (B, J, 2)`` and ``occluded (B, J)``.

    ``compute_dtype``: the dtype the stages will compute in (default the query's). Finiteness and the
    poses' extent are checked *after* the cast, so a finite float64 ``1e39`` (``inf`` in float32), or a
    float32 ``±3e38`` whose ``max - min`` overflows in :func:`~gpumosaic.geometry.fit_to_box`, is refused here
    rather than failing deep inside. An empty batch (B = 0) is refused.

    Returns:
        ``(query, searched)``: the query on ``device`` (its dtype kept) and bool ``searched (B, J)``.
        May sync with the device (entry points only).
    """
    dims = check_shape(query, ["B", "J", "2"], name="query")
    if query.dim() != 3 or query.shape[1] != len(skeleton):
        raise ValueError(
            f"Expected query with J={len(skeleton)} joints of {skeleton.name}, got shape {tuple(query.shape)}"
        )
    if not query.is_floating_point():
        raise TypeError(f"Expected a floating-point query, got {query.dtype}")
    if dims["B"] == 0:
        raise ValueError(f"Expected at least one query pose (B >= 1), got an empty batch of shape "
                         f"{tuple(query.shape)}")
    check_finite(query, "query")
    if checks_enabled():
        dtype = compute_dtype or query.dtype
        cast = query.to(dtype)
        if not bool(torch.isfinite(cast).all()):
            raise ValueError(f"Expected query values within the range of {dtype} (the engine computes in it), "
                             f"got max |x| = {float(query.abs().max()):.3g}")
        lo, hi = cast.amin(dim=1), cast.amax(dim=1)  # what fit_to_box adds and subtracts
        if not bool(torch.isfinite(torch.cat([hi - lo, hi + lo])).all()):
            raise ValueError(f"Expected query poses whose extent (max - min, max + min per axis) fits in {dtype}, "
                             f"got coordinates up to |x| = {float(query.abs().max()):.3g}; scale the poses down")
    query = query.to(device=device)
    if occluded is None:
        return query, torch.ones(query.shape[:2], dtype=torch.bool, device=device)
    check_shape(occluded, ["B", "J"], name="occluded", dims=dict(dims))
    if occluded.dtype != torch.bool:
        raise TypeError(f"Expected occluded to be a bool tensor, got {occluded.dtype}")
    return query, ~occluded.to(device)


@dataclass(frozen=True)
class Matched:
    """Steps 1–4 of one batch (:func:`match_and_map`).

    Attributes:
        pose2d: float (B, J, 2) queries ``p`` fitted into the S×S box.
        matches: int64 (B, J) virtual pool entries (-1 where not searched).
        source_rows: int64 (B, J) stored pool row of each match (row 0 where not searched: mask with
            ``searched``).
        aligned: float (B, J, J, 2) ``q'``, each match's joints after the rigid map ``T`` (Eq. 2).
        query_from_stored: float (B, J, 2, 3) warp affines from stored-image pixels to the box.
        probability: float (B, J, S, S) probability maps (Eq. 5), zeros where not searched (``None`` when
            :func:`match_and_map` was asked for steps 1–3 only).
    """

    pose2d: torch.Tensor
    matches: torch.Tensor
    source_rows: torch.Tensor
    aligned: torch.Tensor
    query_from_stored: torch.Tensor
    probability: torch.Tensor


def match_and_map(
    query: torch.Tensor,
    searched: torch.Tensor,
    settings: MosaicSettings,
    prepared: PreparedPool,
    matches: torch.Tensor | None = None,
    maps: bool = True,
) -> Matched:
    """Steps 1–4, shared by hard and soft mode: box, retrieval, rigid alignment, probability maps.

    Computes in ``query.dtype``; retrieval and the choice of neighbour ``i`` are discrete and run on the
    detached query, so everything else carries gradients w.r.t. the query (soft mode).

    Args:
        query: float (B, J, 2) query poses (any frame; fitted into the S×S box here), on ``prepared``'s
            device.
        searched: bool (B, J) joints to search.
        settings: ``size``, ``margin``, ``sigma``, ``retrieval_budget`` and ``retrieval`` are used.
        prepared: the pool (:func:`prepare_pool`).
        matches: int64 (B, J) virtual pool entries to use instead of retrieval (e.g. to hold matches
            fixed while fitting a pose), or ``None`` to retrieve (Eq. 4).
        maps: ``False``: skip step 4 (``probability`` is ``None``).

    Returns:
        :class:`Matched`.
    """
    s = settings
    b, num_j = query.shape[:2]
    dt = query.dtype
    index = prepared.index

    # 1. Queries into the box.
    p, _ = fit_to_box(query, s.size, s.margin)  # (B, J, 2)

    # 2. Retrieval (Eq. 1-4).
    budget = resolved_retrieval_budget(s, p.device)
    if matches is None and s.compat_weight > 0:  # beyond the paper: Eq. 3 + a Potts term on the bones
        unary = index.distances(p.detach().to(index.joints.dtype), budget_bytes=budget)
        matches = tree_potts_matches(unary, prepared.skeleton, s.compat_weight, searched)
    elif matches is None:
        matches, _ = index.best(p.detach().to(index.joints.dtype), searched, budget_bytes=budget,
                                compiled=s.compile == "retrieval", pruned=resolved_pruning(s, p.device, len(index)))
    else:
        matches = matches.masked_fill(~searched, -1)
    m = matches.clamp_min(0)  # unsearched joints read entry 0; masked out below

    # 3. Rigid alignment (Eq. 2): q'_k = R (q_k - q_j) + p_j, R turning q_i - q_j onto p_i - p_j.
    q = index.joints[m].to(dt)  # (B, J, J, 2), constants
    nb = reference_neighbours(p.detach(), index.skeleton)  # (B, J) the i of each j
    query_from_box, aligned = rigid_alignment(p, q, nb)  # (B, J, 2, 3), (B, J, J, 2)
    query_from_stored = compose_affine(query_from_box, prepared.box_from_stored[m].to(dt))

    prob = probability_maps(p, aligned, searched, s) if maps else None
    return Matched(p, matches, m % len(prepared.pool), aligned, query_from_stored, prob)


def probability_maps(
    pose2d: torch.Tensor, aligned: torch.Tensor, searched: torch.Tensor, settings: MosaicSettings,
    triangles: torch.Tensor | None = None,
) -> torch.Tensor:
    """Step 4 (Eq. 5): per-match probability maps.

    Vertex values ``exp(-||p_k - q'_k||² / σ²)``, barycentric inside the Delaunay triangulation of ``q'``,
    the nearest hull point's value outside.

    Args:
        pose2d: float (B, J, 2) queries ``p`` in the S×S box.
        aligned: float (B, J, J, 2) each match's aligned joints ``q'``.
        searched: bool (B, J).
        settings: ``size`` and ``sigma`` are used.
        triangles: optional (B, J, T) bool Delaunay triangulation of each match's aligned joints (e.g. its pool
            pose's, :attr:`PreparedPool.triangulations`); ``None`` triangulates ``aligned`` here.

    Returns:
        float (B, J, S, S), zeros where not searched.
    """
    s = settings
    b, num_j = pose2d.shape[:2]
    values = torch.exp(-(pose2d[:, None] - aligned).square().sum(-1) / s.sigma**2)  # (B, J, J)
    points, values = aligned.reshape(b * num_j, num_j, 2), values.reshape(b * num_j, num_j)
    tri = None if triangles is None else triangles.reshape(b * num_j, -1)
    size = (s.size, s.size)
    differentiable = torch.is_grad_enabled() and (points.requires_grad or values.requires_grad)
    if pose2d.device.type == "cpu" and not torch.compiler.is_compiling() and not differentiable:
        # Unsearched (self-occluded) joints' maps are zeros: not rasterised (a data-dependent count, free on
        # the CPU); the same values as the dense form below.
        rows = searched.reshape(-1).nonzero()[:, 0]
        if len(rows) == b * num_j:
            return interpolate_triangulated(points, values, size, tri).view(b, num_j, *size)
        out = values.new_zeros(b * num_j, *size)
        out.index_copy_(0, rows, interpolate_triangulated(points[rows], values[rows], size,
                                                          None if tri is None else tri[rows]))
        return out.view(b, num_j, *size)
    return interpolate_triangulated(points, values, size, tri).view(b, num_j, *size) * searched[
        ..., None, None].to(pose2d.dtype)


def mosaic_result(prepared: PreparedPool, matched: Matched, searched: torch.Tensor, **images) -> MosaicResult:
    """Assemble a :class:`MosaicResult` from :func:`match_and_map`'s output and a mode's images and maps.

    Args:
        prepared: the pool the matches index.
        matched: steps 1–4.
        searched: bool (B, J).
        images: the mode's ``images``, ``mosaic_unblended``, ``index_map``, ``warped``, ``weights`` and
            ``distance`` (see :class:`MosaicResult`).
    """
    pool = prepared.pool
    ids = pool.ids.to(prepared.device)
    return MosaicResult(
        matches=matched.matches,
        source_rows=torch.where(searched, matched.source_rows, -1),
        mirrored=(matched.matches >= len(pool)) & searched,
        source_ids=torch.where(searched, ids[matched.source_rows], -1),
        searched=searched,
        pose2d=matched.pose2d,
        aligned=matched.aligned,
        query_from_stored=matched.query_from_stored,
        probability=matched.probability,
        **images,
    )


def warp_matched(
    prepared: PreparedPool,
    settings: MosaicSettings,
    source_rows: torch.Tensor,
    query_from_stored: torch.Tensor,
    searched: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dense warps of the matched stored images into the query frame, zeros where not searched.

    Args:
        prepared: the pool.
        settings: ``size``, ``padding_mode`` and ``warp_chunk`` are used.
        source_rows: int64 (B, J) stored rows (negative rows read row 0 and are masked).
        query_from_stored: float (B, J, 2, 3) warp affines.
        searched: bool (B, J).
        dtype: ``None``: float32 (or a float pool's dtype), masked in float32; else the output dtype,
            masked in it (soft mode: the query's dtype).

    Returns:
        float (B, J, 3, S, S).
    """
    s = settings
    mask = searched[..., None, None, None].to(torch.float32 if dtype is None else dtype)
    return warp_gather(
        prepared.pool.images, source_rows.clamp_min(0), query_from_stored, (s.size, s.size),
        padding_mode=s.padding_mode, chunk=s.warp_chunk, dtype=dtype,
    ) * mask


def synthesise_hard(
    query: torch.Tensor, searched: torch.Tensor, settings: MosaicSettings, prepared: PreparedPool
) -> MosaicResult:
    """The paper's engine on validated inputs (DESIGN.md steps 4–8): argmax stitching and Eq. 7–9 blending.

    Args:
        query: float (B, J, 2) query poses (any frame), on ``prepared``'s device, in the index's dtype.
        searched: bool (B, J); a row with no searched joint is searched in full (the mosaic needs a
            source).
        settings: the engine's settings.
        prepared: the pool (:func:`prepare_pool`).

    Returns:
        :class:`MosaicResult`.
    """
    s = settings
    searched = searched | ~searched.any(dim=1, keepdim=True)  # all-occluded rows: search everything
    mt = match_and_map(query, searched, s, prepared, maps=False)  # steps 1-3 on the whole batch
    # Steps 4-8 on sub-batches of pixel_chunk mosaics (a count fixed by the shapes): their temporaries keep
    # one size whatever the batch (docs/performance.md, "batch size").
    b = query.shape[0]
    out = None
    for i in range(0, max(b, 1), s.pixel_chunk):  # b = 0: one empty pass
        rows = slice(i, min(i + s.pixel_chunk, b))
        part = _pixel_stages(mt, searched, s, prepared, rows)
        if i == 0 and rows.stop == b:  # one pass: its tensors are the result
            out = part
            break
        if out is None:  # the whole batch's outputs, filled pass by pass (no second copy at the end)
            out = {k: _map(t, lambda t: t.new_empty((b, *t.shape[1:]))) for k, t in part.items()}
        for k, t in part.items():
            if t is not None:
                out[k][rows] = t
    mt = replace(mt, probability=out.pop("probability"))
    return mosaic_result(prepared, mt, searched, **out)


def _pixel_stages(mt: Matched, searched: torch.Tensor, s: MosaicSettings, prepared: PreparedPool,
                  rows: slice) -> dict:
    """Steps 4–8 of :func:`synthesise_hard` for the batch rows ``rows``: a dict of the result's per-pixel
    fields (``probability``, ``images``, ``mosaic_unblended``, ``index_map``, ``warped``, ``weights``,
    ``distance``; ``None`` where not computed)."""
    device = prepared.device
    searched = searched[rows]
    p, source, query_from_stored = mt.pose2d[rows], mt.source_rows[rows], mt.query_from_stored[rows]
    num_j = p.shape[1]
    tri = None  # the pool poses' own triangulations, filled on first use (CPU: a data-dependent count)
    if device.type == "cpu" and not torch.compiler.is_compiling():
        tri = prepared.triangulations.valid(mt.matches[rows].clamp_min(0).reshape(-1)).view(*searched.shape, -1)
    prob = probability_maps(p, mt.aligned[rows], searched, s, tri)
    images_pool = prepared.pool.images

    # Warps: one resampling from the stored image (mirror folded into the affine); dense now, or sparse
    # (only where a weight is non-zero) once the weights are known.
    sparse = s.warps == "sparse" or (s.warps == "auto" and device.type == "cpu")
    sparse = sparse and not torch.compiler.is_compiling()  # nonzero: a data-dependent size (one graph: dense)
    multiband = s.blend and s.multiband_levels > 0  # beyond the paper: needs every match's whole warp
    sparse = sparse and not multiband
    warped = None if sparse else warp_matched(prepared, s, source, query_from_stored, searched)  # (B, J, 3, S, S)

    # 5. Index map and copy-paste mosaic (Eq. 5-6); optionally padding never beats real content.
    valid = None
    if s.mask_outside:
        box = prepared.pool.content_box  # (N, 4) or None: the stored pixels filled from each photo
        box = None if box is None else box[source.clamp_min(0)]  # (B, J, 4)
        valid = source_inside(query_from_stored, prepared.pool.image_size, (s.size, s.size), box=box,
                              dtype=prob.dtype)
    index = index_map(prob, searched, valid)
    unblended = None if sparse else mosaic_from_index(warped, index)

    # 6. Pose-aware blending (Eq. 7-9).
    weights = distance = None
    if multiband:
        images = multiband_blend(warped, index, s.multiband_levels)
    elif s.blend:
        distance = skeleton_distance(p, prepared.skeleton, (s.size, s.size))
        half = window_half_width(distance, s.alpha, s.beta)
        weights = window_weights(index, num_j, half, valid=valid)  # mask_weights(w, valid) with a mask
        if sparse:  # every window holds its own pixel: the copy-paste samples are among the blend's
            images, unblended = warp_blend_sparse(
                images_pool, source, query_from_stored, weights, s.padding_mode, index_map=index
            )
        else:
            images = blend(warped, weights)
    else:
        if sparse:
            one_hot = torch.nn.functional.one_hot(index, num_j).permute(0, 3, 1, 2).to(prob.dtype)
            unblended = warp_blend_sparse(images_pool, source, query_from_stored, one_hot, s.padding_mode)
        images = unblended
    return dict(probability=prob, images=images, mosaic_unblended=unblended, index_map=index, warped=warped,
                weights=weights, distance=distance)
