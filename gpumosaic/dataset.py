"""OnlineMosaicDataset: an endless-on-demand stream of ready training batches (DESIGN.md steps 2 and 9–10).

The paper (Rogez & Schmid, IJCV 2018, §2.2–§3) sees each of M mocap poses from V = 180 random cameras and
synthesises one mosaic per (pose, view) pair. This module turns that sample space into a
``torch.utils.data.IterableDataset`` whose items are whole batches generated on ``device`` by batched
tensor code (no per-sample loops): views, projection, self-occlusion, the :class:`~gpumosaic.MosaicEngine`
and, when given, the pose class of each sample (:class:`gpumosaic.classes.PoseClasses`).

Sample space and cameras
    The M·V pairs are numbered ``pair = m·V + v``. The camera of pair ``(m, v)`` depends only on
    ``(seed, m, v)``: its azimuth and elevation are drawn by a counter-based hash (:func:`gpumosaic.camera.view_angles`,
    Wellons' ``lowbias32`` integer mixer chained over the 64-bit seed, a stream number, ``m`` and ``v``;
    24 bits of the hash give a uniform number in [0, 1)). So a pair has the same camera whichever worker,
    rank, epoch or batch draws it, nothing is stored per pair, and the integer hash is bit-identical on CPU
    and CUDA. Azimuth ~ U[0°, 360°), elevation ~ U[-45°, 45°] (the paper's), distance 5 m, focal 1000 px.

Epochs and sharding
    An epoch is a permutation of the M·V pairs (:func:`gpumosaic.sharding.epoch_permutation`, ``torch.randperm`` on the CPU
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

Batches
    Each item is a :class:`~gpumosaic.batch.MosaicBatch` (B = ``batch_size``, J joints, S = engine size;
    every tensor on ``device``): ``image``, ``pose2d`` (the engine's box label), ``pose3d``, ``label``,
    ``cameras`` (B,) and provenance (``pair_index``, ``mocap_index``, ``mocap_id``, ``view_index``,
    ``matches``, ``source_rows``, ``source_ids``, ``mirrored``, ``real_index``, ``is_real``). ``batch["image"]``
    and the other keys of :data:`~gpumosaic.batch.BATCH_KEYS` still work.

Usage
    On CUDA, generate in the main process (CUDA cannot run in forked DataLoader workers; a worker asking for
    a CUDA dataset raises)::

        ds = OnlineMosaicDataset(pool, mocap, batch_size=64, classes=classes, device="cuda", seed=0)
        loader = DataLoader(ds, batch_size=None, num_workers=0)
        for epoch in range(epochs):
            ds.set_epoch(epoch)
            for batch in loader:
                loss = F.cross_entropy(net(batch["image"]), batch["label"])

    On CPU, ``num_workers > 0`` gives each worker its own disjoint stream. Always pass ``batch_size=None``
    to the ``DataLoader``: the dataset already batches, and the default ``batch_size=1`` would batch the
    batches again; that is refused with a ``TypeError`` saying so. Call ``set_epoch`` before creating each
    epoch's iterator: the epoch lives in shared memory, so DataLoader workers see it even with
    ``persistent_workers=True`` (they re-read it when the next epoch's iterator starts). Iterating one epoch
    twice (``set_epoch`` forgotten) warns with :class:`EpochRepeatWarning`. ``len(ds)`` (and so
    ``len(loader)``) is the number of batches one rank yields per epoch with the ``num_workers`` given at
    construction (default 0); a DataLoader with another worker count warns, since the count depends on it
    (each worker's last batch may be short). Each worker runs one torch thread (DataLoader's default); pass
    ``worker_init_fn=gpumosaic.threads.WorkerThreads(n)`` for n (n > 1: spawned workers only), keeping
    ``main threads + workers · n`` within the free cores (``gpumosaic.threads.core_load().free``, measured
    before the workers start; :mod:`gpumosaic.threads`). Under
    ``torch.distributed`` every rank builds the dataset after ``init_process_group`` (or passes ``rank`` /
    ``world_size``); pass ``drop_last=True`` or ``batches_per_epoch`` so that all ranks yield the same
    number of batches.

Shape glossary: B batch, J joints, M mocap poses, V views per pose, N pool images, S box side.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from ._check import check_seed, unchecked
from .batch import MosaicBatch, synthetic_batch
from .camera import Cameras, render, view_angles, view_angles_core
from .roll import has_roll, roll_views, view_rolls
from .engine import MosaicEngine
from .geometry import fit_to_box
from .settings import MosaicSettings, ViewSettings
from .sharding import STREAM_PAIRS, STREAM_REAL, ShardInfo, epoch_permutation, resolve_rank, shard_info
from .sources.base import Mocap3D, Pool2D
from .warp import warp_gather

__all__ = [
    "OnlineMosaicDataset",
    "ShardInfo",
    "shard_info",
    "view_angles",
    "epoch_permutation",
    "EpochRepeatWarning",
]

# --------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------


class EpochRepeatWarning(UserWarning):
    """An :class:`OnlineMosaicDataset` epoch was iterated again (``set_epoch`` not called in between)."""


def _refuse_collate(batch, *, collate_fn_map=None):
    raise TypeError(f"OnlineMosaicDataset yields whole batches: create the DataLoader with batch_size=None (this "
                    f"DataLoader stacks {len(batch)} of them into one, e.g. the default batch_size=1 gives "
                    f"(1, B, ...) tensors)")


# torch's documented extension point of default_collate (see torch.utils.data._utils.collate.collate): a
# DataLoader that batches MosaicBatch items again fails with the message above.
default_collate_fn_map[MosaicBatch] = _refuse_collate


class OnlineMosaicDataset(IterableDataset):
    """Ready batches of mosaics for the (pose, view) pairs of an epoch (see the module docstring).

    Args:
        pool: the annotated images the mosaics are made of (:class:`~gpumosaic.sources.Pool2D`); ignored
            (may be ``None``) when ``engine`` is a :class:`~gpumosaic.MosaicEngine`: its pool is used.
        mocap: the 3D poses (:class:`~gpumosaic.sources.Mocap3D`, world metres, ``z`` up), same skeleton.
        batch_size: B, samples per yielded batch (> 0).
        views: the cameras (:class:`~gpumosaic.settings.ViewSettings`: V views per pose, angle ranges,
            distance, focal, self-occlusion radius and margin in metres); ``None``: the paper's.
        classes: an object with ``encode(pose3d (..., J, 3)) -> (...) int64`` (e.g.
            :class:`gpumosaic.classes.PoseClasses` on ``device``) giving ``label``; ``None``: label -1.
        device: where batches are generated and returned.
        seed: non-negative integer; fixes every camera and every epoch's order.
        engine: an engine (moved to ``device`` if it lives elsewhere), or the
            :class:`~gpumosaic.MosaicSettings` of a new engine over ``pool`` (``None``: the defaults).
        real: a :class:`~gpumosaic.sources.Pool2D` of real images for alternating batches, or ``None``.
        real_every: n > 0 yields a real batch after every n-th synthetic batch of each stream (needs
            ``real``); 0 never.
        batches_per_epoch: at most this many synthetic batches per rank and epoch (split over the rank's
            DataLoader workers); ``None``: the whole shard.
        rank, world_size: explicit distributed position; both ``None``: from ``torch.distributed`` if it is
            initialised now, else a single process.
        drop_last: drop each stream's last incomplete batch.
        num_workers: the DataLoader's ``num_workers`` this dataset will be loaded with; used only by
            ``len()`` (a different count at iteration time warns).

    Example:
        >>> from gpumosaic import load_demo_pool, load_demo_mocap
        >>> ds = OnlineMosaicDataset(load_demo_pool(), load_demo_mocap(), batch_size=4,
        ...                          views=ViewSettings(views_per_pose=2))
        >>> batch = next(iter(ds))
        >>> batch["image"].shape, batch["pose3d"].shape
        (torch.Size([4, 3, 220, 220]), torch.Size([4, 14, 3]))
    """

    def __init__(
        self,
        pool: Pool2D | None,
        mocap: Mocap3D,
        batch_size: int,
        views: ViewSettings | None = None,
        classes=None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        engine: MosaicEngine | MosaicSettings | None = None,
        real: Pool2D | None = None,
        real_every: int = 0,
        batches_per_epoch: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        if not isinstance(mocap, Mocap3D):
            raise TypeError(f"Expected mocap to be a Mocap3D, got {type(mocap).__name__}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"Expected batch_size to be a positive integer, got {batch_size!r}")
        views = ViewSettings() if views is None else views
        if not isinstance(views, ViewSettings):
            raise TypeError(f"Expected views to be a ViewSettings or None, got {type(views).__name__}")
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

        # Engine.
        if isinstance(engine, MosaicEngine):
            self.engine = engine if engine.device == self.device else engine.to(self.device)
        elif engine is None or isinstance(engine, MosaicSettings):
            if not isinstance(pool, Pool2D):
                raise TypeError(f"Expected pool to be a Pool2D when engine is not given, got {type(pool).__name__}")
            self.engine = MosaicEngine(pool, settings=engine, device=self.device)
        else:
            raise TypeError(f"Expected engine as a MosaicEngine, a MosaicSettings or None, got "
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
        reach = float((self.poses - self.skeleton.torso_centre(self.poses)[:, None]).norm(dim=-1).max())
        if reach >= views.distance:
            raise ValueError(
                f"Expected distance > the largest joint distance from a torso centre ({reach:.3f} m) so that "
                f"every joint is in front of every camera, got distance={views.distance}"
            )
        self.real = None if real is None else real.to(self.device)
        self.real_ids = None if real is None else self.real.ids.to(self.device)

        self.batch_size = int(batch_size)
        self.views = views
        self.classes = classes
        self.seed = check_seed(seed)
        self.real_every = int(real_every)
        self.batches_per_epoch = None if batches_per_epoch is None else int(batches_per_epoch)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.drop_last = bool(drop_last)
        if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"Expected num_workers to be a non-negative integer, got {num_workers!r}")
        self.num_workers = int(num_workers)
        # [epoch, last epoch whose iteration started + 1] in shared memory: DataLoader workers (forked or
        # spawned; persistent or not) read the epoch set in the main process when their iterator starts.
        self._epoch_cell = torch.zeros(2, dtype=torch.int64).share_memory_()

    # Read-only shorthands for the view settings.
    @property
    def views_per_pose(self) -> int:
        return self.views.views_per_pose

    @property
    def azimuth_range(self) -> tuple[float, float]:
        return self.views.azimuth_range

    @property
    def elevation_range(self) -> tuple[float, float]:
        return self.views.elevation_range

    @property
    def distance(self) -> float:
        return self.views.distance

    @property
    def focal(self) -> float:
        return self.views.focal

    # -- sample space ------------------------------------------------------------------------------------

    @property
    def num_pairs(self) -> int:
        """M·V, the (pose, view) pairs of one epoch."""
        return len(self.mocap) * self.views_per_pose

    @property
    def size(self) -> int:
        """S, the side of the generated images."""
        return self.engine.settings.size

    @property
    def epoch(self) -> int:
        """The epoch the next iterator follows (shared with DataLoader workers)."""
        return int(self._epoch_cell[0])

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch_cell[0] = check_seed(epoch, "epoch")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iterator follows (also in DataLoader workers, persistent
        ones included: the value lives in shared memory)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches (synthetic and real) one rank yields per epoch with the ``num_workers`` given at
        construction (:meth:`num_batches`)."""
        return self.num_batches(self.num_workers)

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
        mine = epoch_permutation(self.num_pairs, self.seed, self.epoch, STREAM_PAIRS)[shard.shard::shard.num_shards]
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

    def synthesise(self, pair_index: torch.Tensor) -> MosaicBatch:
        """One synthetic batch for the given pairs (:class:`~gpumosaic.batch.MosaicBatch`).

        Args:
            pair_index: int64 (B,) flat pair indices ``m·V + v`` in [0, M·V), any device.
        """
        idx = pair_index.to(device=self.device, dtype=torch.int64)
        V = self.views.views_per_pose
        m, v = idx // V, idx % V
        with torch.no_grad():
            az, el = view_angles_core(m, v, self.seed, self.views, torch.float32)
            # render_views' core without its validation (inputs were checked at construction; z > 0 since
            # distance > every joint's reach); unchecked: no host syncs.
            with unchecked():
                views = render(self.poses[m], self.skeleton, az, el, torch.full_like(az, self.views.distance),
                               torch.full_like(az, self.views.focal), self.views)
                if has_roll(self.views):  # an option (the paper's cameras are level): gpumosaic.roll
                    views = roll_views(views, view_rolls(m, v, self.seed, self.views))
                res = self.engine(views.pose2d, views.occluded)
            label = None if self.classes is None else self.classes.encode(views.pose3d).to(torch.int64)
        return synthetic_batch(res, views, m, self.mocap_ids[m], label=label, pair_index=idx, view_index=v)

    def real_batch(self, real_index: torch.Tensor) -> MosaicBatch:
        """One batch of real images ``real.images[real_index]`` fitted into the S×S box.

        Args:
            real_index: int64 (B,) rows of ``real`` in [0, len(real)), any device.
        """
        if self.real is None:
            raise ValueError("Expected a dataset built with real=Pool2D, got real=None")
        idx = real_index.to(device=self.device, dtype=torch.int64)
        s = self.engine.settings
        j = len(self.skeleton)
        with torch.no_grad(), unchecked():
            box, box_from_stored = fit_to_box(self.real.joints[idx].float(), s.size, s.margin)
            images = warp_gather(self.real.images, idx, box_from_stored, (s.size, s.size),
                                 padding_mode=s.padding_mode, chunk=s.warp_chunk, dtype=torch.float32)
        b = idx.shape[0]
        minus = torch.full_like(idx, -1)
        zeros = torch.zeros(b, device=self.device)
        no_camera = Cameras(azimuth=zeros, elevation=zeros.clone(), distance=zeros.clone(), focal=zeros.clone(),
                            cam_from_world_R=torch.zeros(b, 3, 3, device=self.device),
                            cam_from_world_t=torch.zeros(b, 3, device=self.device))
        return MosaicBatch(
            image=images,
            pose2d=box,
            pose3d=torch.zeros(b, j, 3, device=self.device),
            label=minus,
            is_real=torch.ones_like(idx, dtype=torch.bool),
            pair_index=minus.clone(),
            mocap_index=minus.clone(),
            mocap_id=minus.clone(),
            view_index=minus.clone(),
            cameras=no_camera,
            occluded=torch.zeros(b, j, dtype=torch.bool, device=self.device),
            matches=torch.full((b, j), -1, dtype=torch.int64, device=self.device),
            source_rows=idx[:, None].expand(b, j).clone(),
            source_ids=self.real_ids[idx][:, None].expand(b, j).clone(),
            mirrored=torch.zeros(b, j, dtype=torch.bool, device=self.device),
            real_index=idx,
        )

    def __iter__(self) -> Iterator[MosaicBatch]:
        shard = self.shard()
        if get_worker_info() is not None and self.device.type != "cpu":
            raise RuntimeError(
                f"Expected num_workers=0 for a dataset on {self.device} (generation runs on the device in "
                f"the main process), got a DataLoader worker"
            )
        epoch = self.epoch
        if shard.worker == 0:  # one stream per rank checks: warn once per repeated epoch
            if int(self._epoch_cell[1]) == epoch + 1:
                warnings.warn(f"OnlineMosaicDataset: epoch {epoch} is iterated again, with the same order and "
                              f"cameras as before; call set_epoch(epoch) before each epoch", EpochRepeatWarning,
                              stacklevel=2)
            self._epoch_cell[1] = epoch + 1
            if shard.num_workers != max(self.num_workers, 1):
                warnings.warn(f"OnlineMosaicDataset was built with num_workers={self.num_workers} but is loaded "
                              f"with {shard.num_workers if get_worker_info() else 0}: len() assumed the former "
                              f"and may be off; pass num_workers= to the dataset too", RuntimeWarning, stacklevel=2)
        batches = self.pair_batches(shard)
        real_perm = None
        if self.real_every:
            real_perm = epoch_permutation(len(self.real), self.seed, self.epoch, STREAM_REAL)
        return self._stream(shard, batches, real_perm)

    def _stream(self, shard: ShardInfo, batches, real_perm) -> Iterator[MosaicBatch]:
        b = self.batch_size
        for i, pairs in enumerate(batches):
            yield self.synthesise(pairs)
            if self.real_every and (i + 1) % self.real_every == 0:
                k = (i + 1) // self.real_every - 1  # this stream's k-th real batch
                j = torch.arange(k * b, (k + 1) * b)
                yield self.real_batch(real_perm[(shard.shard + shard.num_shards * j) % len(real_perm)])

