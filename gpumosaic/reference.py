"""Per-image CPU reference of the synthesis engine, built from NumPy, OpenCV and SciPy.

:class:`ReferenceEngine` runs the same pipeline as :class:`gpumosaic.MosaicEngine` (DESIGN.md steps 4–8,
Eq. 1–9 of Rogez & Schmid, IJCV 2018) the way the paper's engine would run on a CPU, one query at a time:

1. ``fit_to_box`` of the query (NumPy, float64); the pool poses (and their virtual mirrored copies) were
   fitted once at construction.
2. Retrieval: Eq. 3 in vectorised NumPy form, per query joint over every pool entry at once; ``argmin``
   (ties: lowest index).
3. Rigid map ``T`` of Eq. 2 per match; ``query_from_stored = T ∘ box_from_stored`` (mirror folded in) built
   here in NumPy, independently of :mod:`gpumosaic.geometry`; ``cv2.warpAffine`` (``INTER_LINEAR``,
   ``BORDER_REPLICATE`` or ``BORDER_CONSTANT`` 0) resamples each match from its stored image.
4. Probability maps (Eq. 5): ``scipy.spatial.Delaunay`` of the aligned joints ``q'``, ``find_simplex`` and
   the barycentric transforms inside the hull, the value of the nearest hull point outside (vectorised over
   pixels).
5. Index map (``argmax``, ties: lowest ``j``) and copy-paste mosaic (Eq. 5–6).
6. Blending (Eq. 7–9): ``d`` = ``scipy.ndimage.distance_transform_edt`` of a ``cv2.line`` raster of the
   query skeleton, ``r = floor((α + β·d) / 2)``, window shares from an integral image (``cumsum``) of the
   one-hot index map, ``M = Σ_j w_j · I'_j``.

It is the baseline of ``benchmarks/throughput.py`` and the independent check of ``tests/test_reference.py``.
It shares no pipeline code with the engine (only the :class:`~gpumosaic.skeleton.Skeleton` tables and the
engine's :class:`~gpumosaic.MosaicSettings`, whose defaults are resolved in one place).

Convention:
    2D points are ``(x, y)`` pixels, ``x`` to the right (column ``u``), ``y`` down (row ``v``); pixel
    ``(v, u)`` has its centre at ``(x, y) = (u, v)``. Affine maps are ``(2, 3)`` arrays ``dst_from_src``
    with ``x_dst = A[:, :2] @ x_src + A[:, 2]`` (the matrix ``cv2.warpAffine`` takes). Images are returned
    float32 CHW in [0, 1].

Glossary: J joints, N pool images (Nv = 2N virtual entries with mirroring), S output side.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial import Delaunay, QhullError

from .settings import MosaicSettings
from .skeleton import Skeleton
from .sources.base import Pool2D

__all__ = ["ReferenceEngine", "ReferenceResult", "single_threaded_blas"]

_EPS_PX = 1.0  # ε of Eq. 3, px
_LINE_SHIFT = 4  # cv2.line fixed-point bits: joints rasterised at 1/16 px


@dataclass(frozen=True)
class ReferenceResult:
    """One mosaic from :class:`ReferenceEngine` (NumPy arrays).

    Attributes:
        images: float32 (3, S, S) in [0, 1], the blended mosaic (Eq. 9).
        mosaic_unblended: float32 (3, S, S), the copy-paste mosaic (Eq. 6).
        index_map: int64 (S, S), the joint whose match fills each pixel (Eq. 5).
        matches: int64 (J,), virtual pool index per joint (``N..2N-1`` mirrored), -1 where not searched.
        query: float64 (J, 2), the query pose in the S×S box.
        query_from_stored: float64 (J, 2, 3), the affine each match was warped with (zeros where not
            searched).
        probability: float64 (J, S, S), the probability maps (zeros where not searched).
        distance: float64 (S, S), ``d`` of Eq. 7 (EDT of the skeleton raster).
        timings: seconds spent in each stage (``retrieval``, ``warps``, ``probability``, ``index_map``,
            ``blending``).
    """

    images: np.ndarray
    mosaic_unblended: np.ndarray
    index_map: np.ndarray
    matches: np.ndarray
    query: np.ndarray
    query_from_stored: np.ndarray
    probability: np.ndarray
    distance: np.ndarray
    timings: dict = field(default_factory=dict)


# (get, set) thread-count entry points of the OpenBLAS builds that NumPy, SciPy and OpenCV wheels bundle.
_OPENBLAS_THREAD_CONTROLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


@functools.lru_cache(maxsize=1)
def _openblas_controls() -> tuple:
    """(get, set) functions of every OpenBLAS loaded in this process (Linux ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return ()
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in _OPENBLAS_THREAD_CONTROLS:
            if hasattr(lib, get) and hasattr(lib, set_):
                controls.append((getattr(lib, get), getattr(lib, set_)))
                break
    return tuple(controls)


@contextlib.contextmanager
def single_threaded_blas():
    """Run the block with every loaded OpenBLAS on one thread, restoring the counts afterwards.

    SciPy's ``find_simplex`` computes barycentric transforms with one tiny LAPACK call per triangle; a
    multi-threaded OpenBLAS wakes its worker threads for each of them, which on a busy 2-core machine made
    a 14-point ``find_simplex`` over 220×220 pixels take ~300 ms instead of ~2 ms. The reference is a
    one-image-at-a-time, single-threaded baseline, so it runs under this context.
    """
    controls = _openblas_controls()
    before = [get() for get, _ in controls]
    for _, set_ in controls:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(controls, before):
            set_(n)


def _fit_to_box(joints: np.ndarray, size: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(..., J, 2) -> (box joints (..., J, 2), box_from_src (..., 2, 3)): bounding box centred on
    ``((S-1)/2, (S-1)/2)``, longer side ``S - 2·margin``; zero extent: scale 1."""
    lo, hi = joints.min(-2), joints.max(-2)
    extent = (hi - lo).max(-1)
    scale = np.where(extent > 0, (size - 2.0 * margin) / np.where(extent > 0, extent, 1.0), 1.0)
    trans = (size - 1) / 2.0 - scale[..., None] * 0.5 * (lo + hi)
    affine = np.zeros(joints.shape[:-2] + (2, 3))
    affine[..., 0, 0] = affine[..., 1, 1] = scale
    affine[..., :, 2] = trans
    return scale[..., None, None] * joints + trans[..., None, :], affine


def _compose(a_from_b: np.ndarray, b_from_c: np.ndarray) -> np.ndarray:
    """``a_from_c = a_from_b ∘ b_from_c`` for (..., 2, 3) affine maps."""
    lin = a_from_b[..., :2] @ b_from_c[..., :2]
    t = (a_from_b[..., :2] @ b_from_c[..., 2:])[..., 0] + a_from_b[..., 2]
    return np.concatenate([lin, t[..., None]], -1)


def _eq3_weights(x: np.ndarray) -> np.ndarray:
    """``w_k^j(x)`` of Eq. 3 for poses (..., J, 2) -> (..., J_j, J_k): zero diagonal, rows summing to 1."""
    dist = np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)
    inv = 1.0 / np.maximum(dist, _EPS_PX)
    j = x.shape[-2]
    inv[..., np.arange(j), np.arange(j)] = 0.0
    return inv / inv.sum(-1, keepdims=True)


def _nearest_on_segments(xy: np.ndarray, a: np.ndarray, b: np.ndarray, va: np.ndarray, vb: np.ndarray):
    """Pixels (n, 2) against segments a-b (E, 2) with end values va, vb (E,): value at the nearest point of
    the nearest segment, (n,). Vectorised over pixels and segments."""
    dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]  # (E,)
    l2 = dx * dx + dy * dy
    inv_l2 = np.divide(1.0, l2, out=np.zeros_like(l2), where=l2 > 0)  # a zero-length segment: t = 0
    rx = xy[:, 0, None] - a[None, :, 0]  # (n, E)
    ry = xy[:, 1, None] - a[None, :, 1]
    t = np.clip((rx * dx + ry * dy) * inv_l2, 0.0, 1.0)
    gx, gy = rx - t * dx, ry - t * dy
    nearest = np.argmin(gx * gx + gy * gy, axis=1)  # first minimum: a hull vertex shared by two edges
    tt = np.take_along_axis(t, nearest[:, None], 1)[:, 0]
    return va[nearest] + tt * (vb[nearest] - va[nearest])


def _interpolate(points: np.ndarray, values: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Eq. 5 interpolant at pixel centres xy (n, 2): barycentric inside the Delaunay triangulation of
    ``points`` (J, 2), nearest hull point's value outside. Degenerate (collinear) sets: nearest point of
    the segments joining consecutive points along their line; one distinct point: its value."""
    _, first = np.unique(points, axis=0, return_index=True)
    keep = np.sort(first)  # coincident points: keep the lowest index
    pts, val = points[keep], values[keep]
    if len(keep) == 1:
        return np.full(xy.shape[0], val[0])
    tri = None
    if len(keep) >= 3:
        try:
            tri = Delaunay(pts)
        except QhullError:
            tri = None
    if tri is None:
        far = max(((i, k) for i in range(len(keep)) for k in range(len(keep))),
                  key=lambda ik: ((pts[ik[1]] - pts[ik[0]]) ** 2).sum())
        order = np.argsort((pts - pts[far[0]]) @ (pts[far[1]] - pts[far[0]]), kind="stable")
        return _nearest_on_segments(xy, pts[order[:-1]], pts[order[1:]], val[order[:-1]], val[order[1:]])
    out = np.empty(xy.shape[0])
    # bruteforce: a direct test of every triangle; Qhull's default walk is ~200x slower here because
    # most pixels lie outside the hull.
    simplex = tri.find_simplex(xy, bruteforce=True)
    inside = simplex >= 0
    s_in = simplex[inside]
    trans = tri.transform[s_in]  # (n, 3, 2): rows 0-1 the inverse map, row 2 the offset
    bary = np.einsum("nij,nj->ni", trans[:, :2], xy[inside] - trans[:, 2])
    bary = np.concatenate([bary, 1.0 - bary.sum(1, keepdims=True)], 1)
    out[inside] = (bary * val[tri.simplices[s_in]]).sum(1)
    if (~inside).any():
        edges = tri.convex_hull  # (E, 2)
        out[~inside] = _nearest_on_segments(xy[~inside], pts[edges[:, 0]], pts[edges[:, 1]],
                                            val[edges[:, 0]], val[edges[:, 1]])
    return out


class ReferenceEngine:
    """The synthesis engine, one query at a time on the CPU (NumPy / OpenCV / SciPy).

    Args:
        pool: the annotated images (:class:`~gpumosaic.sources.Pool2D`, uint8 or float images); kept as
            is (no copy of the images), read one match at a time.
        skeleton: joint layout of queries and pool; ``None`` means ``pool.skeleton`` (a given one must
            match it).
        settings: the engine's :class:`~gpumosaic.MosaicSettings` (``None``: the defaults); ``size``,
            ``alpha``, ``beta``, ``sigma``, ``margin``, ``mirror``, ``padding_mode`` (``"border"``:
            ``cv2.BORDER_REPLICATE``, ``"zeros"``: ``cv2.BORDER_CONSTANT`` 0, ``"reflection"``:
            ``cv2.BORDER_REFLECT``) and ``mask_outside`` (pixels whose nearest stored pixel, by a
            nearest-neighbour ``cv2.warpAffine`` of an all-ones image, lies outside lose the index map to any
            match with content there and leave the blend) are used; ``compat_weight`` must be 0; the others
            (warps, chunks, soft mode) do not apply to this reference of the hard engine.

    Calling it on ``query (J, 2)`` (pixels of any frame) and ``occluded (J,) bool`` returns a
    :class:`ReferenceResult`. Occluded joints are not searched; if every joint is occluded all are searched.
    """

    def __init__(self, pool: Pool2D, skeleton: Skeleton | None = None,
                 settings: MosaicSettings | None = None) -> None:
        if not isinstance(pool, Pool2D):
            raise TypeError(f"Expected pool to be a Pool2D, got {type(pool).__name__}")
        skeleton = pool.skeleton if skeleton is None else skeleton
        if pool.skeleton.name != skeleton.name:
            raise ValueError(f"Pool skeleton {pool.skeleton.name} differs from skeleton {skeleton.name}")
        settings = MosaicSettings() if settings is None else settings
        if not isinstance(settings, MosaicSettings):
            raise TypeError(f"Expected settings to be a MosaicSettings or None, got {type(settings).__name__}")
        size, padding_mode = settings.size, settings.padding_mode
        self.skeleton = skeleton
        self.size = int(size)
        self.alpha, self.beta = float(settings.alpha), float(settings.beta)
        self.sigma = float(settings.sigma)  # resolved by MosaicSettings (7.5 · size / 220 by default)
        self.margin = float(settings.margin)  # resolved by MosaicSettings (10 % of size by default)
        self.mirror = bool(settings.mirror)
        self.border = {"border": cv2.BORDER_REPLICATE, "zeros": cv2.BORDER_CONSTANT,
                       "reflection": cv2.BORDER_REFLECT}[padding_mode]
        self.mask_outside = bool(settings.mask_outside)
        if settings.compat_weight:
            raise ValueError("Expected compat_weight = 0: the reference engine has only the paper's per-joint "
                             f"retrieval, got compat_weight={settings.compat_weight}")
        self.images = pool.images.detach().cpu()  # (N, 3, H, W), read one match at a time
        self.content_box = None if pool.content_box is None else pool.content_box.detach().cpu().double().numpy()
        self.scale = 1.0 if self.images.is_floating_point() else 1.0 / 255.0
        joints = pool.joints.detach().cpu().double().numpy()
        self.num_real = joints.shape[0]
        box, box_from_stored = _fit_to_box(joints, self.size, self.margin)
        if self.mirror:
            width = pool.image_size[1]
            flipped = joints.copy()
            flipped[..., 0] = (width - 1.0) - joints[..., 0]
            flipped = flipped[:, list(skeleton.flip)]  # the flipped image's joint k is the original's flip[k]
            box_m, box_from_flipped = _fit_to_box(flipped, self.size, self.margin)
            flip = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])
            box = np.concatenate([box, box_m], 0)
            box_from_stored = np.concatenate([box_from_stored, _compose(box_from_flipped, flip[None])], 0)
        self.box = box  # (Nv, J, 2)
        self.box_from_stored = box_from_stored  # (Nv, 2, 3)
        self.pool_weights = _eq3_weights(box)  # (Nv, J, J)
        self.neighbours = skeleton.neighbours
        vv, uu = np.mgrid[0 : self.size, 0 : self.size]
        self.pixels = np.stack([uu.ravel(), vv.ravel()], 1).astype(np.float64)  # (S*S, 2) as (x, y)

    def __len__(self) -> int:
        return self.box.shape[0]

    # -- stages -------------------------------------------------------------------------------------------

    def _reference_neighbour(self, p: np.ndarray, j: int) -> int:
        nbrs = self.neighbours[j]  # sorted: argmax's first maximum is the lowest index
        return nbrs[int(np.argmax([np.linalg.norm(p[i] - p[j]) for i in nbrs]))]

    def _retrieve(self, p: np.ndarray, searched: np.ndarray) -> np.ndarray:
        """Eq. 1–4, vectorised over the pool: matches (J,), -1 where not searched."""
        q = self.box  # (Nv, J, 2)
        wp = _eq3_weights(p)  # (J, J)
        matches = np.full(p.shape[0], -1, dtype=np.int64)
        for j in np.flatnonzero(searched):
            i = self._reference_neighbour(p, j)
            # T (Eq. 2): rotate q about q_j so that q_i - q_j points along p_i - p_j, then move q_j to p_j.
            dq = q[:, i] - q[:, j]  # (Nv, 2)
            ang = np.arctan2(p[i, 1] - p[j, 1], p[i, 0] - p[j, 0]) - np.arctan2(dq[:, 1], dq[:, 0])
            c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
            rel = q - q[:, j : j + 1]  # (Nv, J, 2)
            ax = c * rel[..., 0] - s * rel[..., 1] + p[j, 0]
            ay = s * rel[..., 0] + c * rel[..., 1] + p[j, 1]
            dist = np.hypot(p[None, :, 0] - ax, p[None, :, 1] - ay)  # (Nv, J)
            cost = ((wp[j][None] + self.pool_weights[:, j]) * dist).sum(1)  # D_j (Eq. 3), (Nv,)
            matches[j] = int(np.argmin(cost))  # Eq. 4, first minimum
        return matches

    def _rigid(self, p: np.ndarray, j: int, q: np.ndarray) -> np.ndarray:
        """``query_from_box`` (2, 3): the map T of Eq. 2 for joint j and pool pose q (J, 2)."""
        i = self._reference_neighbour(p, j)
        ang = np.arctan2(p[i, 1] - p[j, 1], p[i, 0] - p[j, 0]) - np.arctan2(q[i, 1] - q[j, 1], q[i, 0] - q[j, 0])
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        return np.concatenate([rot, (p[j] - rot @ q[j])[:, None]], 1)

    def _warp(self, n_virtual: int, query_from_stored: np.ndarray) -> np.ndarray:
        src = self.images[n_virtual % self.num_real].permute(1, 2, 0).numpy().astype(np.float32) * self.scale
        out = cv2.warpAffine(src, query_from_stored, (self.size, self.size), flags=cv2.INTER_LINEAR,
                             borderMode=self.border, borderValue=(0.0, 0.0, 0.0, 0.0))
        return out.transpose(2, 0, 1)  # (3, S, S)

    def _inside(self, n_virtual: int, query_from_stored: np.ndarray) -> np.ndarray:
        """(S, S) bool: query pixels whose nearest stored pixel lies inside the stored image and, with a
        ``content_box``, has its centre inside that box (mask_outside)."""
        h, w = self.images.shape[-2:]
        ones = np.ones((h, w), np.uint8)
        if self.content_box is not None:
            x0, y0, x1, y1 = self.content_box[n_virtual % self.num_real]
            cols, rows = np.arange(w), np.arange(h)
            ones = (((cols >= x0) & (cols <= x1))[None, :] & ((rows >= y0) & (rows <= y1))[:, None]).astype(np.uint8)
        return cv2.warpAffine(ones, query_from_stored, (self.size, self.size), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0

    def _skeleton_distance(self, p: np.ndarray) -> np.ndarray:
        raster = np.zeros((self.size, self.size), np.uint8)
        fixed = np.round(p * (1 << _LINE_SHIFT)).astype(np.int64)
        for a, b in self.skeleton.bones:
            cv2.line(raster, (int(fixed[a, 0]), int(fixed[a, 1])), (int(fixed[b, 0]), int(fixed[b, 1])), 1,
                     thickness=1, lineType=cv2.LINE_8, shift=_LINE_SHIFT)
        if not raster.any():  # skeleton entirely off the image: every window at its largest useful size
            return np.full((self.size, self.size), 2.0 * self.size)
        return ndimage.distance_transform_edt(raster == 0)

    def _window_weights(self, index: np.ndarray, num_j: int, half: np.ndarray) -> np.ndarray:
        """Eq. 8 by an integral image of the one-hot index map: (J, S, S) shares."""
        s = self.size
        onehot = (index[None] == np.arange(num_j)[:, None, None]).astype(np.int64)
        sat = np.zeros((num_j, s + 1, s + 1), np.int64)
        sat[:, 1:, 1:] = onehot.cumsum(1).cumsum(2)
        v, u = np.mgrid[0:s, 0:s]
        y0, y1 = np.maximum(v - half, 0), np.minimum(v + half, s - 1)
        x0, x1 = np.maximum(u - half, 0), np.minimum(u + half, s - 1)
        count = sat[:, y1 + 1, x1 + 1] - sat[:, y0, x1 + 1] - sat[:, y1 + 1, x0] + sat[:, y0, x0]
        area = (y1 - y0 + 1) * (x1 - x0 + 1)
        return count / area[None]

    # -- one mosaic ---------------------------------------------------------------------------------------

    def __call__(self, query, occluded=None) -> ReferenceResult:
        """Synthesise one mosaic.

        Args:
            query: (J, 2) float query pose, pixels of any frame (array-like or CPU tensor).
            occluded: (J,) bool, joints not searched; ``None`` = all visible.

        Returns:
            :class:`ReferenceResult`.
        """
        query = np.asarray(query, dtype=np.float64)
        num_j = len(self.skeleton)
        if query.shape != (num_j, 2):
            raise ValueError(f"Expected query of shape ({num_j}, 2), got {query.shape}")
        if not np.isfinite(query).all():
            raise ValueError("Expected a finite query")
        searched = np.ones(num_j, bool) if occluded is None else ~np.asarray(occluded, dtype=bool)
        if searched.shape != (num_j,):
            raise ValueError(f"Expected occluded of shape ({num_j},), got {searched.shape}")
        if not searched.any():
            searched = np.ones(num_j, bool)  # the mosaic needs a source: search everything
        with single_threaded_blas():
            return self._synthesise(query, searched)

    def _synthesise(self, query: np.ndarray, searched: np.ndarray) -> ReferenceResult:
        num_j = len(self.skeleton)
        s = self.size
        timings = {}
        t0 = time.perf_counter()

        p, _ = _fit_to_box(query, s, self.margin)
        matches = self._retrieve(p, searched)
        t1 = time.perf_counter()
        timings["retrieval"] = t1 - t0

        warped = np.zeros((num_j, 3, s, s), np.float32)
        aligned = np.zeros((num_j, num_j, 2))
        query_from_stored = np.zeros((num_j, 2, 3))
        for j in np.flatnonzero(searched):
            query_from_box = self._rigid(p, j, self.box[matches[j]])
            aligned[j] = self.box[matches[j]] @ query_from_box[:, :2].T + query_from_box[:, 2]
            query_from_stored[j] = _compose(query_from_box, self.box_from_stored[matches[j]])
            warped[j] = self._warp(matches[j], query_from_stored[j])
        t2 = time.perf_counter()
        timings["warps"] = t2 - t1

        prob = np.zeros((num_j, s, s))
        for j in np.flatnonzero(searched):
            values = np.exp(-((p - aligned[j]) ** 2).sum(-1) / self.sigma**2)  # Eq. 5 vertex values
            prob[j] = _interpolate(aligned[j], values, self.pixels).reshape(s, s)
        t3 = time.perf_counter()
        timings["probability"] = t3 - t2

        valid = np.ones((num_j, s, s), bool)
        if self.mask_outside:
            for j in np.flatnonzero(searched):
                valid[j] = self._inside(matches[j], query_from_stored[j])
        # Lexicographic: a valid match beats any invalid one (prob is in [0, 1]), then the larger prob.
        key = prob + 2.0 * valid if self.mask_outside else prob
        masked = np.where(searched[:, None, None], key, -np.inf)
        index = np.argmax(masked, axis=0).astype(np.int64)  # first maximum: ties go to the lowest j
        unblended = np.take_along_axis(warped, index[None, None].repeat(3, 1), axis=0)[0]
        t4 = time.perf_counter()
        timings["index_map"] = t4 - t3

        distance = self._skeleton_distance(p)
        half = np.maximum(np.floor((self.alpha + self.beta * distance) / 2.0), 0).astype(np.int64)
        weights = self._window_weights(index, num_j, half)
        if self.mask_outside:
            kept = weights * valid
            total = kept.sum(0, keepdims=True)
            weights = np.where(total > 0, kept / np.where(total > 0, total, 1.0), weights)
        images = np.einsum("jhw,jchw->chw", weights, warped.astype(np.float64)).astype(np.float32)
        timings["blending"] = time.perf_counter() - t4

        return ReferenceResult(
            images=images,
            mosaic_unblended=unblended,
            index_map=index,
            matches=matches,
            query=p,
            query_from_stored=query_from_stored,
            probability=prob,
            distance=distance,
            timings=timings,
        )

    def batch(self, queries, occluded=None) -> list[ReferenceResult]:
        """One :class:`ReferenceResult` per query of ``queries (B, J, 2)`` (a plain loop: the CPU baseline)."""
        queries = np.asarray(queries, dtype=np.float64)
        occ = [None] * len(queries) if occluded is None else np.asarray(occluded, dtype=bool)
        with single_threaded_blas():
            return [self(q, o) for q, o in zip(queries, occ)]
