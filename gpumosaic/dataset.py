"""OnlineMosaicDataset: an endless-on-demand stream of ready training batches (DESIGN.md steps 2 and 9–10).

The paper (Rogez & Schmid, IJCV 2018, §2.2–§3) sees each of M mocap poses from V = 180 random cameras and
synthesises one mosaic per (pose, view) pair. This module turns that sample space into a
``torch.utils.data.IterableDataset`` whose items are whole batches generated on ``device`` by batched
tensor code (no per-sample loops): views, projection, self-occlusion, the :class:`~gpumosaic.MosaicEngine`
and, when given, the pose class of each sample (:class:`gpumosaic.classes.PoseClasses`).

Sample space and cameras
    The M·V pairs are numbered ``pair = m·V + v``. The camera of pair ``(m, v)`` depends only on
    ``(seed, m, v)``: its azimuth and elevation are drawn by a counter-based hash (:func:`view_angles`,
    Wellons' ``lowbias32`` integer mixer chained over the 64-bit seed, a stream number, ``m`` and ``v``;
    24 bits of the hash give a uniform number in [0, 1)). So a pair has the same camera whichever worker,
    rank, epoch or batch draws it, nothing is stored per pair, and the integer hash is bit-identical on CPU
    and CUDA. Azimuth ~ U[0°, 360°), elevation ~ U[-45°, 45°] (the paper's), distance 5 m, focal 1000 px.

Epochs and sharding
    An epoch is a permutation of the M·V pairs (:func:`epoch_permutation`, ``torch.randperm`` on the CPU
    with a generator seeded from ``(seed, epoch)`` by ``numpy.random.SeedSequence``: the order is the same
    on every device). :meth:`OnlineMosaicDataset.set_epoch` picks the epoch. The stream is split into
    ``S = world_size · num_workers`` shards; shard ``s = rank · num_workers + worker`` takes the strided
    slice ``perm[s::S]`` and cuts it into batches of ``batch_size`` (the last one smaller unless
    ``drop_last``). Shards are disjoint and their union is the epoch. ``rank`` / ``world_size`` come from the
    arguments, else from ``torch.distributed`` when it is initialised at construction, else 0 / 1;
    ``worker`` / ``num_workers`` from ``torch.utils.data.get_worker_info()`` at iteration time.
    ``batches_per_epoch`` caps the synthetic batches one rank yields per epoch (its workers share them:
    worker ``w`` takes ``len(range(w, n, num_workers))``, the batches DataLoader's round-robin would order
    ``w, w + num_workers, …``), e.g. to make short "epochs" of a huge M·V; it never wraps past the shard.

Determinism
    Same seed, epoch, shard layout and device → identical batches (the engine is deterministic; CPU float
    reductions may differ in the last bits between thread counts, e.g. a DataLoader worker runs one thread).

Real batches
    With ``real=Pool2D`` and ``real_every=n`` a batch of real images follows every n-th synthetic batch of
    a stream (the paper alternates synthetic and real batches): pool images fitted into the S×S box by the
    engine's ``fit_to_box`` and resampled once with :func:`~gpumosaic.warp.warp_gather`, with their 2D
    poses. Real images are drawn from their own per-epoch permutation, shard ``s`` taking entries
    ``s, s + S, s + 2S, …`` (cyclically). They carry no 3D pose: ``pose3d`` is zeros (never NaN),
    ``label`` is -1 and ``is_real`` is True.

Batch dictionary (B = ``batch_size``, J joints, S = engine size; every tensor on ``device``)
    ``image`` float32 (B, 3, S, S) in [0, 1]; ``pose2d`` float32 (B, J, 2) the 2D label in the S×S box
    (the engine's ``query``); ``pose3d`` float32 (B, J, 3) oriented 3D pose (camera axes, metres,
    torso-centred); ``label`` int64 (B,) ``classes.encode(pose3d)`` or -1 without classes / for real
    images; ``is_real`` bool (B,); ``pair_index``, ``mocap_index``, ``mocap_id``, ``view_index`` int64
    (B,) (-1 for real images); ``azimuth``, ``elevation`` float32 (B,) degrees (0 for real images);
    ``occluded`` bool (B, J) self-occluded joints (not searched); ``matches`` int64 (B, J) virtual pool
    entries (-1 where not searched, and for real images); ``source_ids`` int64 (B, J) ``pool.ids`` of each
    match (for real images: the real image's id on every joint); ``mirrored`` bool (B, J);
    ``real_index`` int64 (B,) row of ``real`` (-1 for synthetic images).

Usage
    On CUDA, generate in the main process (CUDA cannot run in forked DataLoader workers; a worker asking for
    a CUDA dataset raises)::

        ds = OnlineMosaicDataset(pool, mocap, batch_size=64, classes=classes, device="cuda", seed=0)
        loader = DataLoader(ds, batch_size=None, num_workers=0)
        for epoch in range(epochs):
            ds.set_epoch(epoch)
            for batch in loader:
                loss = F.cross_entropy(net(batch["image"]), batch["label"])

    On CPU, ``num_workers > 0`` gives each worker its own disjoint stream (``batch_size=None``: the
    dataset already batches). Each worker runs one torch thread (DataLoader's default); pass
    ``worker_init_fn=gpumosaic.threads.WorkerThreads(n)`` for n (n > 1: spawned workers only), keeping
    ``main threads + workers · n`` within the cores (:mod:`gpumosaic.threads`). Call ``set_epoch`` before creating the iterator; with
    ``persistent_workers=True`` the workers keep the epoch they started with. Under
    ``torch.distributed`` every rank builds the dataset after ``init_process_group`` (or passes ``rank`` /
    ``world_size``); pass ``drop_last=True`` or ``batches_per_epoch`` so that all ranks yield the same
    number of batches.

Shape glossary: B batch, J joints, M mocap poses, V views per pose, N pool images, S box side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ._check import unchecked
from .camera import _render, _torso_centre, check_view_ranges
from .engine import MosaicEngine
from .geometry import default_margin, fit_to_box
from .sources.base import Mocap3D, Pool2D
from .warp import warp_gather

__all__ = [
    "OnlineMosaicDataset",
    "ShardInfo",
    "shard_info",
    "view_angles",
    "epoch_permutation",
]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_STREAM_AZIMUTH = 0
_STREAM_ELEVATION = 1
_PERM_PAIRS = 0
_PERM_REAL = 1


# --------------------------------------------------------------------------------------------------------
# Counter-based cameras: a (pose, view) pair's angles depend only on (seed, pose, view)
# --------------------------------------------------------------------------------------------------------


def _mix32_int(x: int) -> int:
    """Wellons' ``lowbias32`` integer hash on a Python int in [0, 2^32) (bijective)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x · c) mod 2^32`` for int64 ``x`` in [0, 2^32) without int64 overflow.

    Splits ``c = c_hi·2^16 + c_lo``: ``x·c_lo < 2^48`` and ``(x·c_hi mod 2^16)·2^16 < 2^32``.
    """
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """:func:`_mix32_int` on an int64 tensor of values in [0, 2^32) (``>>`` is then a logical shift)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_prefix(seed: int, stream: int) -> int:
    """Hash state after absorbing the 64-bit seed and the stream number (Python ints, no tensors)."""
    s = int(seed) & _MASK64
    h = _mix32_int(s & _MASK32)
    h = _mix32_int(h ^ (s >> 32))
    return _mix32_int(h ^ (int(stream) & _MASK32))


def _uniform(seed: int, stream: int, pose_index: torch.Tensor, view_index: torch.Tensor) -> torch.Tensor:
    """float64 uniform numbers in [0, 1) from ``hash(seed, stream, m, v)`` (24 bits), shape of the indices."""
    h = _mix32(pose_index.bitwise_and(_MASK32) ^ _hash_prefix(seed, stream))
    h = _mix32(h ^ (pose_index >> 32))
    h = _mix32(h ^ view_index.bitwise_and(_MASK32))
    return (h >> 8).to(torch.float64) * 2.0**-24


def _view_angles(pose_index, view_index, seed, azimuth_range, elevation_range, dtype):
    (alo, ahi), (elo, ehi) = azimuth_range, elevation_range
    u_az = _uniform(seed, _STREAM_AZIMUTH, pose_index, view_index)
    u_el = _uniform(seed, _STREAM_ELEVATION, pose_index, view_index)
    return (alo + u_az * (ahi - alo)).to(dtype), (elo + u_el * (ehi - elo)).to(dtype)


def _check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected {name} to be a non-negative integer, got {seed!r}")
    return int(seed)


def view_angles(
    pose_index: torch.Tensor,
    view_index: torch.Tensor,
    seed: int = 0,
    azimuth_range: Sequence[float] = (0.0, 360.0),
    elevation_range: Sequence[float] = (-45.0, 45.0),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera angles of (pose, view) pairs: a pure function of ``(seed, pose, view)``.

    ``azimuth = lo + u·(hi - lo)`` with ``u = hash(seed, 0, m, v) / 2^24``, elevation likewise with stream 1,
    where ``hash`` chains Wellons' ``lowbias32`` mixer over the seed's two 32-bit words, the stream, the two
    32-bit words of ``m`` and ``v``, and keeps its top 24 bits. Uniform on the ranges (to 2^-24), counter
    based (no generator state), bit-identical on CPU and CUDA before the final cast.

    Args:
        pose_index: int64 (...) mocap rows ``m`` >= 0.
        view_index: int64 (...) view numbers ``v`` in [0, 2^32), broadcastable with ``pose_index``.
        seed: non-negative integer (reduced modulo 2^64).
        azimuth_range: ``(lo, hi)`` degrees (paper: ``(0, 360)``).
        elevation_range: ``(lo, hi)`` degrees within [-90, 90] (paper: ``(-45, 45)``).
        dtype: floating dtype of the output.

    Returns:
        ``(azimuth (...), elevation (...))`` degrees, on the indices' device.
    """
    for x, name in ((pose_index, "pose_index"), (view_index, "view_index")):
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"Expected {name} as an int64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.numel() and bool((x < 0).any()):
            raise ValueError(f"Expected non-negative {name}")
    if not dtype.is_floating_point:
        raise TypeError(f"Expected a floating dtype, got dtype={dtype}")
    ranges = check_view_ranges(azimuth_range, elevation_range)
    seed = _check_seed(seed)
    pose_index, view_index = torch.broadcast_tensors(pose_index.long(), view_index.long())
    return _view_angles(pose_index, view_index, seed, *ranges, dtype)


def view_angles_reference(
    pose_index: torch.Tensor,
    view_index: torch.Tensor,
    seed: int = 0,
    azimuth_range: Sequence[float] = (0.0, 360.0),
    elevation_range: Sequence[float] = (-45.0, 45.0),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-Python twin of :func:`view_angles` (arbitrary-precision ints, one pair at a time; tests only)."""
    (alo, ahi), (elo, ehi) = check_view_ranges(azimuth_range, elevation_range)
    m_all, v_all = torch.broadcast_tensors(pose_index, view_index)
    az, el = [], []
    for m, v in zip(m_all.reshape(-1).tolist(), v_all.reshape(-1).tolist()):
        out = []
        for stream in (_STREAM_AZIMUTH, _STREAM_ELEVATION):
            h = _mix32_int((m & _MASK32) ^ _hash_prefix(seed, stream))
            h = _mix32_int(h ^ (m >> 32))
            h = _mix32_int(h ^ (v & _MASK32))
            out.append((h >> 8) / float(1 << 24))
        az.append(alo + out[0] * (ahi - alo))
        el.append(elo + out[1] * (ehi - elo))
    shape = m_all.shape
    return (torch.tensor(az, dtype=torch.float64).reshape(shape).to(dtype),
            torch.tensor(el, dtype=torch.float64).reshape(shape).to(dtype))


# --------------------------------------------------------------------------------------------------------
# Epoch permutations and shards
# --------------------------------------------------------------------------------------------------------


def _generator_seed(seed: int, epoch: int, stream: int) -> int:
    words = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) | (int(words[1]) << 32)) & ((1 << 63) - 1)


def epoch_permutation(num_items: int, seed: int = 0, epoch: int = 0, stream: int = _PERM_PAIRS) -> torch.Tensor:
    """The epoch's order of ``num_items`` samples: ``torch.randperm`` on the CPU, seeded from ``(seed, epoch)``.

    Args:
        num_items: N >= 0 (M·V pairs, or the real pool's size).
        seed, epoch: non-negative integers; the generator's seed is
            ``numpy.random.SeedSequence([seed, epoch, stream])`` (so nearby seeds/epochs are unrelated).
        stream: 0 for (pose, view) pairs, 1 for real images.

    Returns:
        int64 (N,) on the CPU (same order whatever device the batches are made on); 8 bytes per item.
    """
    if int(num_items) != num_items or num_items < 0:
        raise ValueError(f"Expected num_items to be a non-negative integer, got {num_items}")
    gen = torch.Generator().manual_seed(_generator_seed(_check_seed(seed), _check_seed(epoch, "epoch"), stream))
    return torch.randperm(int(num_items), generator=gen)


@dataclass(frozen=True)
class ShardInfo:
    """Where one data stream sits among ranks and DataLoader workers.

    Attributes:
        rank, world_size: the process's place in ``torch.distributed`` (0, 1 when not distributed).
        worker, num_workers: the DataLoader worker (0, 1 in the main process).
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def shard(self) -> int:
        """``rank · num_workers + worker``."""
        return self.rank * self.num_workers + self.worker

    @property
    def num_shards(self) -> int:
        """``world_size · num_workers``."""
        return self.world_size * self.num_workers


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(f"Expected both rank and world_size or neither, got rank={rank}, world_size={world_size}")
    if int(world_size) != world_size or world_size < 1 or int(rank) != rank or not 0 <= rank < world_size:
        raise ValueError(f"Expected integers 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def shard_info(rank: int | None = None, world_size: int | None = None) -> ShardInfo:
    """The current stream's :class:`ShardInfo`.

    ``rank`` / ``world_size``: explicit, or (both ``None``) ``torch.distributed``'s when initialised, else
    0 / 1. Worker id and count come from ``torch.utils.data.get_worker_info()``.
    """
    rank, world_size = _resolve_rank(rank, world_size)
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return ShardInfo(rank=rank, world_size=world_size, worker=worker, num_workers=num_workers)


# --------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------


class OnlineMosaicDataset(IterableDataset):
    """Ready batches of mosaics for the (pose, view) pairs of an epoch (see the module docstring).

    Args:
        pool: the annotated images the mosaics are made of (:class:`~gpumosaic.sources.Pool2D`); ignored
            (may be ``None``) when ``engine`` is a :class:`~gpumosaic.MosaicEngine`: its pool is used.
        mocap: the 3D poses (:class:`~gpumosaic.sources.Mocap3D`, world metres, ``z`` up), same skeleton.
        batch_size: B, samples per yielded batch (> 0).
        views_per_pose: V cameras per mocap pose (paper: 180).
        classes: an object with ``encode(pose3d (..., J, 3)) -> (...) int64`` (e.g.
            :class:`gpumosaic.classes.PoseClasses` on ``device``) giving ``label``; ``None``: label -1.
        device: where batches are generated and returned.
        seed: non-negative integer; fixes every camera and every epoch's order.
        engine: ``None`` (a default :class:`~gpumosaic.MosaicEngine` over ``pool``), a dict of
            :class:`~gpumosaic.MosaicEngine` keyword arguments (e.g. ``{"size": 64}``), or an engine (moved
            to ``device`` if it lives elsewhere).
        real: a :class:`~gpumosaic.sources.Pool2D` of real images for alternating batches, or ``None``.
        real_every: n > 0 yields a real batch after every n-th synthetic batch of each stream (needs
            ``real``); 0 never.
        batches_per_epoch: at most this many synthetic batches per rank and epoch (split over the rank's
            DataLoader workers); ``None``: the whole shard.
        rank, world_size: explicit distributed position; both ``None``: from ``torch.distributed`` if it is
            initialised now, else a single process.
        drop_last: drop each stream's last incomplete batch.
        azimuth_range, elevation_range: camera angle ranges in degrees (paper: (0, 360), (-45, 45)).
        distance: camera distance to the torso centre in metres (> every joint's distance from it).
        focal: focal length in pixels (perspective strength; ``fit_to_box`` removes the scale).
        limb_radius, occlusion_margin: self-occlusion capsule radius and depth tolerance, metres
            (:func:`gpumosaic.camera.self_occlusion`).

    Example:
        >>> from gpumosaic import load_demo_pool, load_demo_mocap
        >>> ds = OnlineMosaicDataset(load_demo_pool(), load_demo_mocap(), batch_size=4, views_per_pose=2)
        >>> batch = next(iter(ds))
        >>> batch["image"].shape, batch["pose3d"].shape
        (torch.Size([4, 3, 220, 220]), torch.Size([4, 14, 3]))
    """

    def __init__(
        self,
        pool: Pool2D | None,
        mocap: Mocap3D,
        batch_size: int,
        views_per_pose: int = 180,
        classes=None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        engine: MosaicEngine | dict | None = None,
        real: Pool2D | None = None,
        real_every: int = 0,
        batches_per_epoch: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        azimuth_range: Sequence[float] = (0.0, 360.0),
        elevation_range: Sequence[float] = (-45.0, 45.0),
        distance: float = 5.0,
        focal: float = 1000.0,
        limb_radius: float = 0.05,
        occlusion_margin: float = 0.02,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        if not isinstance(mocap, Mocap3D):
            raise TypeError(f"Expected mocap to be a Mocap3D, got {type(mocap).__name__}")
        for value, name in ((batch_size, "batch_size"), (views_per_pose, "views_per_pose")):
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"Expected {name} to be a positive integer, got {value!r}")
        if isinstance(real_every, bool) or int(real_every) != real_every or real_every < 0:
            raise ValueError(f"Expected real_every to be a non-negative integer, got {real_every!r}")
        if real_every > 0 and real is None:
            raise ValueError(f"Expected a real Pool2D with real_every={real_every}, got real=None")
        if real is not None and not isinstance(real, Pool2D):
            raise TypeError(f"Expected real to be a Pool2D or None, got {type(real).__name__}")
        if batches_per_epoch is not None and (int(batches_per_epoch) != batches_per_epoch or batches_per_epoch <= 0):
            raise ValueError(f"Expected batches_per_epoch to be a positive integer or None, got {batches_per_epoch!r}")
        if classes is not None and not callable(getattr(classes, "encode", None)):
            raise TypeError(f"Expected classes with an encode(pose3d) method, got {type(classes).__name__}")
        for value, name in ((distance, "distance"), (focal, "focal")):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"Expected a finite {name} > 0, got {value!r}")
        for value, name in ((limb_radius, "limb_radius"), (occlusion_margin, "occlusion_margin")):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"Expected a finite {name} >= 0, got {value!r}")

        # Engine.
        if isinstance(engine, MosaicEngine):
            self.engine = engine if engine.device == self.device else engine.to(self.device)
        elif engine is None or isinstance(engine, dict):
            if not isinstance(pool, Pool2D):
                raise TypeError(f"Expected pool to be a Pool2D when engine is not given, got {type(pool).__name__}")
            kwargs = dict(engine or {})
            kwargs.setdefault("skeleton", pool.skeleton)
            self.engine = MosaicEngine(pool, device=self.device, **kwargs)
        else:
            raise TypeError(f"Expected engine as a MosaicEngine, a dict of its arguments or None, got "
                            f"{type(engine).__name__}")
        self.skeleton = self.engine.skeleton
        if mocap.skeleton.name != self.skeleton.name:
            raise ValueError(f"Mocap skeleton {mocap.skeleton.name} differs from engine skeleton {self.skeleton.name}")
        if real is not None and real.skeleton.name != self.skeleton.name:
            raise ValueError(
                f"Real pool skeleton {real.skeleton.name} differs from engine skeleton {self.skeleton.name}"
            )

        self.mocap = mocap
        self.poses = mocap.poses.to(device=self.device, dtype=torch.float32)
        self.mocap_ids = mocap.ids.to(self.device)
        reach = float((self.poses - _torso_centre(self.poses, self.skeleton)[:, None]).norm(dim=-1).max())
        if reach >= float(distance):
            raise ValueError(
                f"Expected distance > the largest joint distance from a torso centre ({reach:.3f} m) so that "
                f"every joint is in front of every camera, got distance={distance}"
            )
        self.real = None if real is None else real.to(self.device)
        self.real_ids = None if real is None else self.real.ids.to(self.device)

        self.batch_size = int(batch_size)
        self.views_per_pose = int(views_per_pose)
        self.classes = classes
        self.seed = _check_seed(seed)
        self.real_every = int(real_every)
        self.batches_per_epoch = None if batches_per_epoch is None else int(batches_per_epoch)
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.drop_last = bool(drop_last)
        self.azimuth_range, self.elevation_range = check_view_ranges(azimuth_range, elevation_range)
        self.distance = float(distance)
        self.focal = float(focal)
        self.limb_radius = float(limb_radius)
        self.occlusion_margin = float(occlusion_margin)
        self.epoch = 0

    # -- sample space ------------------------------------------------------------------------------------

    @property
    def num_pairs(self) -> int:
        """M·V, the (pose, view) pairs of one epoch."""
        return len(self.mocap) * self.views_per_pose

    @property
    def size(self) -> int:
        """S, the side of the generated images."""
        return self.engine.settings.size

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iterator follows."""
        self.epoch = _check_seed(epoch, "epoch")

    def shard(self, worker: int | None = None, num_workers: int | None = None) -> ShardInfo:
        """This rank's :class:`ShardInfo` for a worker (default: the calling DataLoader worker, if any)."""
        if worker is None and num_workers is None:
            info = get_worker_info()
            worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if worker is None or num_workers is None or not 0 <= worker < num_workers:
            raise ValueError(f"Expected 0 <= worker < num_workers, got worker={worker}, num_workers={num_workers}")
        return ShardInfo(self.rank, self.world_size, int(worker), int(num_workers))

    def pair_batches(self, shard: ShardInfo) -> list[torch.Tensor]:
        """The flat pair indices (``m·V + v``) of each synthetic batch of ``shard`` this epoch (CPU int64)."""
        mine = epoch_permutation(self.num_pairs, self.seed, self.epoch, _PERM_PAIRS)[shard.shard::shard.num_shards]
        batches = list(mine.split(self.batch_size)) if len(mine) else []
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.batches_per_epoch is not None:
            batches = batches[: len(range(shard.worker, self.batches_per_epoch, shard.num_workers))]
        return batches

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches (synthetic and real) one rank yields per epoch when loaded with ``num_workers``."""
        workers = max(int(num_workers), 1)
        total = 0
        for w in range(workers):
            n = len(self.pair_batches(self.shard(w, workers)))
            total += n + (n // self.real_every if self.real_every else 0)
        return total

    # -- batches -----------------------------------------------------------------------------------------

    def synthesise(self, pair_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """One synthetic batch for the given pairs (see the module docstring for the keys).

        Args:
            pair_index: int64 (B,) flat pair indices ``m·V + v`` in [0, M·V), any device.
        """
        idx = pair_index.to(device=self.device, dtype=torch.int64)
        V = self.views_per_pose
        m, v = idx // V, idx % V
        with torch.no_grad():
            az, el = _view_angles(m, v, self.seed, self.azimuth_range, self.elevation_range, torch.float32)
            # render_views' core without its validation (inputs were checked at construction; z > 0 since
            # distance > every joint's reach); unchecked: no host syncs.
            with unchecked():
                pose2d, pose3d, occluded, _, _ = _render(
                    self.poses[m], self.skeleton, az, el, torch.full_like(az, self.distance),
                    torch.full_like(az, self.focal), self.limb_radius, self.occlusion_margin,
                )
                res = self.engine(pose2d, occluded)
            if self.classes is not None:
                label = self.classes.encode(pose3d).to(torch.int64)
            else:
                label = torch.full_like(idx, -1)
        return {
            "image": res.images,
            "pose2d": res.query,
            "pose3d": pose3d,
            "label": label,
            "is_real": torch.zeros_like(idx, dtype=torch.bool),
            "pair_index": idx,
            "mocap_index": m,
            "mocap_id": self.mocap_ids[m],
            "view_index": v,
            "azimuth": az,
            "elevation": el,
            "occluded": occluded,
            "matches": res.matches,
            "source_ids": res.source_ids,
            "mirrored": res.mirrored,
            "real_index": torch.full_like(idx, -1),
        }

    def real_batch(self, real_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch of real images ``real.images[real_index]`` fitted into the S×S box, same keys.

        Args:
            real_index: int64 (B,) rows of ``real`` in [0, len(real)), any device.
        """
        if self.real is None:
            raise ValueError("Expected a dataset built with real=Pool2D, got real=None")
        idx = real_index.to(device=self.device, dtype=torch.int64)
        s = self.engine.settings
        j = len(self.skeleton)
        with torch.no_grad(), unchecked():
            box, box_from_stored = fit_to_box(self.real.joints[idx].float(), s.size,
                                              default_margin(s.size) if s.margin is None else s.margin)
            images = warp_gather(self.real.images, idx, box_from_stored, (s.size, s.size),
                                 padding_mode=s.padding_mode, chunk=s.warp_chunk, dtype=torch.float32)
        b = idx.shape[0]
        minus = torch.full_like(idx, -1)
        return {
            "image": images,
            "pose2d": box,
            "pose3d": torch.zeros(b, j, 3, device=self.device),
            "label": minus,
            "is_real": torch.ones_like(idx, dtype=torch.bool),
            "pair_index": minus,
            "mocap_index": minus.clone(),
            "mocap_id": minus.clone(),
            "view_index": minus.clone(),
            "azimuth": torch.zeros(b, device=self.device),
            "elevation": torch.zeros(b, device=self.device),
            "occluded": torch.zeros(b, j, dtype=torch.bool, device=self.device),
            "matches": torch.full((b, j), -1, dtype=torch.int64, device=self.device),
            "source_ids": self.real_ids[idx][:, None].expand(b, j).clone(),
            "mirrored": torch.zeros(b, j, dtype=torch.bool, device=self.device),
            "real_index": idx,
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard = self.shard()
        if get_worker_info() is not None and self.device.type != "cpu":
            raise RuntimeError(
                f"Expected num_workers=0 for a dataset on {self.device} (generation runs on the device in "
                f"the main process), got a DataLoader worker"
            )
        batches = self.pair_batches(shard)
        real_perm = None
        if self.real_every:
            real_perm = epoch_permutation(len(self.real), self.seed, self.epoch, _PERM_REAL)
        return self._stream(shard, batches, real_perm)

    def _stream(self, shard: ShardInfo, batches, real_perm) -> Iterator[dict[str, torch.Tensor]]:
        b = self.batch_size
        for i, pairs in enumerate(batches):
            yield self.synthesise(pairs)
            if self.real_every and (i + 1) % self.real_every == 0:
                k = (i + 1) // self.real_every - 1  # this stream's k-th real batch
                j = torch.arange(k * b, (k + 1) * b)
                yield self.real_batch(real_perm[(shard.shard + shard.num_shards * j) % len(real_perm)])

