"""Offline export: mosaics written as WebDataset-style tar shards, deterministic, resumable, distributed.

For users who want files rather than the online stream of :class:`~gpumosaic.OnlineMosaicDataset`.

Layout of ``DIR``
    ``DIR/shard-{index:06d}.tar``: shard ``s`` holds the samples with global index ``s·S .. min((s+1)·S, N) - 1``
    (S = ``shard_size``); the shard name carries the *global* shard index only (no rank), so an export
    can be resumed with a different number of processes. For each sample, in index order, the members
    ``{key}.{png|jpg}`` (the RGB mosaic, S_img × S_img), ``{key}.json`` (its annotation), ``{key}.cls`` (the
    pose class as ASCII decimal; only when ``classes`` are given), then the labels as NumPy ``.npy`` arrays
    (no pickle): ``{key}.pose2d.npy`` float32 (J, 2), ``{key}.pose3d.npy`` float32 (J, 3) and
    ``{key}.occluded.npy`` bool (J,) (the JSON's fields, for tensor pipelines), where ``key`` is the global
    sample index zero-padded to 9 digits (more when N > 10^9), e.g. ``000001234``.
    Members carry mtime 0, mode 0644 and no owner, so that a shard's bytes depend only on its samples.
    ``DIR/shard-XXXXXX.index.json`` records the shard's size and sha256 and every member's sha256
    (:mod:`gpumosaic.shardfile`). ``DIR/export.json`` records the export's settings (N, S, seed, image
    format, engine settings and fingerprints of pool, mocap and classes); a rerun with different settings
    raises instead of mixing two exports. ``DIR/export.lock`` is the writers' lock file (empty).
    Readers need no gpumosaic: ``tar tf``, ``webdataset.WebDataset("DIR/shard-{000000..000041}.tar")`` or
    :func:`read_shards` (plain :mod:`tarfile`). With `webdataset <https://github.com/webdataset/webdataset>`_
    (tested in ``tests/test_export.py`` when installed)::

        import webdataset as wds
        ds = (wds.WebDataset("DIR/shard-{000000..000041}.tar", shardshuffle=False)
              .decode("torchrgb")                       # png/jpg -> float32 (3, H, W) in [0, 1]
              .to_tuple("png", "pose2d.npy", "pose3d.npy", "cls"))   # "cls" only when exported with classes
        loader = wds.WebLoader(ds.batched(64), batch_size=None, num_workers=4)
        for image, pose2d, pose3d, label in loader:   # (64, 3, S, S), (64, J, 2), (64, J, 3), (64,)
            ...

Annotation record (``{key}.json``, built by :func:`gpumosaic.batch.annotation_records` like ``gpumosaic
generate``'s records, plus the sample's ids)
    ``key`` str, ``index`` int (global sample index), ``image`` member name, ``skeleton`` name,
    ``pose2d`` (J, 2) the 2D label in the S_img × S_img box (pixels, x right, y down, pixel centres at
    integers), ``pose3d`` (J, 3) oriented 3D pose (camera axes x right, y down, z forward, metres,
    torso-centred), ``occluded`` (J,) bool, ``mocap_index`` / ``mocap_id`` int, ``pair_index`` /
    ``view_index`` int (``pair = mocap_index·V + view_index``), ``camera`` {``azimuth_deg``,
    ``elevation_deg``, ``distance_m``, ``focal_px``, ``cam_from_world_R`` (3, 3), ``cam_from_world_t`` (3,)}
    with ``p_cam = R p_world + t`` (world z up), ``matches`` (J,) virtual pool entries (-1 where not
    searched), ``source_rows`` (J,) stored pool rows (-1 where not searched), ``source_ids`` (J,) pool
    ids, ``mirrored`` (J,) bool, and ``class`` int when ``classes`` are given.

Which sample is index i
    Sample ``i`` is the (pose, view) pair ``epoch_permutation(M·V, seed, epoch=i // (M·V))[i % (M·V)]``
    (:func:`gpumosaic.sharding.epoch_permutation`; M mocap poses, V = ``views.views_per_pose`` views, cameras
    from the counter-based :func:`gpumosaic.camera.view_angles`) synthesised by
    :meth:`OnlineMosaicDataset.synthesise <gpumosaic.OnlineMosaicDataset.synthesise>`: the export is the
    single-process stream of ``OnlineMosaicDataset(..., seed=seed)`` over epochs 0, 1, 2, … cut into
    shards. It depends on ``(seed, i)`` only, never on the rank, the number of processes, or where an
    earlier run stopped. (``gpumosaic generate`` draws its cameras from a ``torch.Generator`` stream
    instead, so ``export`` and ``generate`` with one seed give different mosaics.) Each shard is generated
    in batches of ``batch_size`` starting at its first sample, so on one device, with the same batch size
    and thread count, a shard's bytes are reproducible exactly; across devices or thread counts float
    reductions may change the last bits of the images (labels and ids are unaffected). The permutation
    costs 8·M·V bytes of host memory.

Resuming
    Each shard is written to ``shard-XXXXXX.tar.tmp``, its index to ``shard-XXXXXX.index.json.tmp``; both
    are ``fsync``-ed, then the index and lastly the tar are renamed (atomically) into place. On (re)start,
    every process deletes the ``.tmp`` files of the shards it owns, keeps the complete shards it owns
    (checked against their index: the index belongs to this shard of this export, lists exactly the expected
    member names in order, and the tar's size and sha256 equal the recorded ones, so a bit flip anywhere is
    found) and regenerates the missing or invalid ones. So an interrupted export, rerun with the same
    command, ends with keys exactly ``0..N-1``, none lost, duplicated or altered
    (``tests/test_export.py::test_fault_injection_kill_at_random_points`` kills exports at random points).

Concurrent writers
    A process locks ``export.json`` while it checks or writes it, and the shards it owns for the whole run
    (:class:`gpumosaic.shardfile.ExportLock`, POSIX record locks released by the kernel when the process
    dies). A second export into the same folder is refused: with other settings by the ``export.json``
    check (``ValueError``), with the same settings by :class:`~gpumosaic.shardfile.ExportLockedError` naming
    the shard another process is writing.

Distributed
    Shard ``s`` belongs to rank ``s % world_size``; each rank writes only its own shards, then waits at a
    ``torch.distributed`` barrier (when the process group is initialised). ``gpumosaic export`` under
    ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set) initialises the process group itself
    (``nccl`` on CUDA, one GPU per local rank; ``gloo`` on CPU).

Usage::

    # one process (GPU when available); --size changes the paper's 220-px side (tests/previews only)
    gpumosaic export --n 100000 --out shards/ --shard-size 1000 --format jpg --seed 0
    # four GPUs (or CPU processes) on one machine; rerun the same command to resume
    # (torchrun's own parser takes "--n" for an ambiguous abbreviation: spell it --num-samples there)
    torchrun --standalone --nproc_per_node 4 -m gpumosaic.cli export --num-samples 100000 --out shards/ \\
        --shard-size 1000 --format jpg --seed 0

From Python::

    from gpumosaic import MosaicEngine, load_demo_mocap, load_demo_pool
    from gpumosaic.export import export_shards, read_shards
    engine = MosaicEngine(load_demo_pool(), device="cuda")
    report = export_shards("shards/", 10_000, 1000, engine, load_demo_mocap(), seed=0)
    for key, image, record in read_shards("shards/"):   # image: float32 (3, H, W) in [0, 1]
        ...
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .batch import annotation_records
from .dataset import OnlineMosaicDataset
from .engine import MosaicEngine
from .settings import ViewSettings
from .shardfile import ExportLock, index_name, member_checksums, verify_shard, write_index
from .sharding import epoch_permutation, resolve_rank
from .sources.base import Mocap3D

__all__ = ["ExportReport", "export_shards", "read_shards", "shard_name", "sample_key"]

FORMAT_VERSION = 2  # 2: shard index files, .cls and .npy label members
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.tar$")
_FORMATS = ("png", "jpg")
_ARRAYS = ("pose2d.npy", "pose3d.npy", "occluded.npy")
_LABELS = ("cls", *_ARRAYS)  # extensions after the image and the json ("cls" only with classes)


@dataclass(frozen=True)
class ExportReport:
    """What one process of :func:`export_shards` did.

    Attributes:
        out: the output folder.
        n: N, samples of the whole export (all ranks).
        shard_size: S, samples per shard (the last shard may hold fewer).
        num_shards: shards of the whole export, ``ceil(N / S)``.
        rank, world_size: this process's place; it owns the shards ``s`` with ``s % world_size == rank``.
        written: indices of the shards this process generated in this call.
        skipped: indices of its shards found complete and kept.
        removed: file names this process deleted: partial ``.tmp`` files and invalid shards.
        samples_written: samples generated in this call.
        seconds: wall time of the call.
    """

    out: Path
    n: int
    shard_size: int
    num_shards: int
    rank: int
    world_size: int
    written: tuple[int, ...]
    skipped: tuple[int, ...]
    removed: tuple[str, ...]
    samples_written: int
    seconds: float


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-{index:06d}.tar``."""
    return f"shard-{index:06d}.tar"


def _key_width(n: int) -> int:
    return max(9, len(str(max(n - 1, 0))))


def sample_key(index: int, n: int) -> str:
    """The tar key of global sample ``index`` in an export of ``n`` samples (zero-padded, 9 digits or more)."""
    return f"{index:0{_key_width(n)}d}"


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Expected {name} to be an integer >= {low}, got {value!r}")
    return int(value)


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _config(n, shard_size, engine: MosaicEngine, mocap: Mocap3D, seed, image_format, jpeg_quality,
            views: ViewSettings, classes=None) -> dict:
    settings = asdict(engine.settings)
    for transient in ("warp_chunk", "retrieval_budget", "retrieval", "compile"):  # speed/memory knobs, not semantics
        settings.pop(transient, None)
    return {
        "format_version": FORMAT_VERSION,
        "n": n,
        "shard_size": shard_size,
        "seed": seed,
        "image_format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpg" else None,
        "views_per_pose": views.views_per_pose,
        **({} if views == ViewSettings(views_per_pose=views.views_per_pose) else {"views": asdict(views)}),
        "key_width": _key_width(n),
        "skeleton": engine.skeleton.name,
        "engine": settings,
        "pool": {"size": len(engine.pool), "fingerprint": _fingerprint(engine.pool.joints, engine.pool.ids)},
        "mocap": {"size": len(mocap), "fingerprint": _fingerprint(mocap.poses, mocap.ids)},
        "classes": None if classes is None else _classes_fingerprint(classes),
    }


def _classes_fingerprint(classes) -> str:
    tensors = [t for t in (getattr(classes, name, None) for name in ("centres", "mean_pose3d", "mean_pose2d"))
               if isinstance(t, torch.Tensor)]
    if not tensors:
        raise TypeError(f"Expected classes with a centres tensor (e.g. a PoseClasses), got {type(classes).__name__}")
    return _fingerprint(*tensors)


def _digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per writer
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sync_config(out: Path, config: dict) -> None:
    """Write ``export.json`` or check that an existing one describes the same export (under the lock)."""
    path = out / "export.json"
    for stale in out.glob("export.json.*.tmp"):  # written under the lock we hold: left by a dead writer
        stale.unlink(missing_ok=True)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"Cannot read {path} ({err}); remove it only if {out} holds no other export") from None
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ValueError(
                f"Expected {out} to be empty or to hold the same export, but its export.json differs in "
                f"{diff}: use a new output folder (or the original settings to resume)"
            )
        return
    _write_atomic(path, (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())


def _member_exts(ext: str, with_class: bool) -> list[str]:
    return [ext, "json", *(e for e in _LABELS if with_class or e != "cls")]


def _expected_names(start: int, stop: int, n: int, exts: list[str]) -> list[str]:
    return [f"{sample_key(i, n)}.{e}" for i in range(start, stop) for e in exts]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[str, int, str]:
    """Add one member (fixed metadata); return ``(name, size, sha256)`` for the shard index."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
    return name, len(data), hashlib.sha256(data).hexdigest()


class _PairOrder:
    """Global sample index -> flat (pose, view) pair index, caching the latest epoch's permutation."""

    def __init__(self, num_pairs: int, seed: int) -> None:
        self.num_pairs, self.seed = num_pairs, seed
        self._epoch, self._perm = None, None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        parts, i = [], start
        while i < stop:  # one step per epoch the range touches
            epoch, offset = divmod(i, self.num_pairs)
            if epoch != self._epoch:
                self._epoch, self._perm = epoch, epoch_permutation(self.num_pairs, self.seed, epoch)
            take = min(stop - i, self.num_pairs - offset)
            parts.append(self._perm[offset: offset + take])
            i += take
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def _encode(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    import cv2

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image_format == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} image as {image_format}")
    return buf.tobytes()


def _batch_members(ds: OnlineMosaicDataset, pairs: torch.Tensor, start: int, n: int, image_format: str,
                   jpeg_quality: int) -> list[list[tuple[str, bytes]]]:
    """Synthesise samples ``start..start+len(pairs)-1``; return each sample's ``(member name, bytes)``."""
    batch = ds.synthesise(pairs)
    with torch.no_grad():
        images = (batch.image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    # One device -> host copy per batch (I/O code; the synthesis above made no sync).
    images = images.cpu().numpy()
    keys = [sample_key(start + k, n) for k in range(len(pairs))]
    names = [f"{key}.{image_format}" for key in keys]
    records = annotation_records(batch, ds.skeleton.name, names, keys=keys,
                                 indices=range(start, start + len(pairs)))
    host = {name: getattr(batch, name).cpu() for name in ("label", "pose2d", "pose3d", "occluded")}
    out = []
    for k, (name, image, key, record) in enumerate(zip(names, images, keys, records)):
        if ds.classes is not None:
            record["class"] = int(host["label"][k])
        members = [(name, _encode(image, image_format, jpeg_quality)),
                   (f"{key}.json", json.dumps(record, separators=(",", ":")).encode())]
        if ds.classes is not None:
            members.append((f"{key}.cls", str(record["class"]).encode()))
        members += [(f"{key}.pose2d.npy", _npy(host["pose2d"][k].numpy().astype(np.float32))),
                    (f"{key}.pose3d.npy", _npy(host["pose3d"][k].numpy().astype(np.float32))),
                    (f"{key}.occluded.npy", _npy(host["occluded"][k].numpy().astype(bool)))]
        out.append(members)
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def export_shards(
    out: str | os.PathLike,
    n: int,
    shard_size: int,
    engine: MosaicEngine,
    mocap: Mocap3D,
    seed: int = 0,
    *,
    batch_size: int = 16,
    image_format: str = "png",
    jpeg_quality: int = 95,
    views: ViewSettings | None = None,
    classes=None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    on_sample: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write (or complete) this process's tar shards of an N-sample export (see the module docstring).

    Args:
        out: output folder (created if missing).
        n: N > 0, samples of the whole export.
        shard_size: S > 0, samples per shard (the last one holds ``N - (num_shards - 1)·S``).
        engine: the :class:`~gpumosaic.MosaicEngine` (its device is where samples are generated; its size
            is the image side).
        mocap: the 3D poses (:class:`~gpumosaic.sources.Mocap3D`, engine's skeleton).
        seed: non-negative integer fixing every sample (cameras and order, as in
            :class:`~gpumosaic.OnlineMosaicDataset`).
        batch_size: B > 0, samples per engine call (batches never straddle shards).
        image_format: ``"png"`` (lossless) or ``"jpg"``.
        jpeg_quality: 1..100, for ``"jpg"``.
        views: the cameras (:class:`~gpumosaic.settings.ViewSettings`; V = ``views.views_per_pose``,
            paper: 180); ``None``: the paper's.
        classes: pose classes (:class:`~gpumosaic.classes.PoseClasses` on the engine's device) giving each
            sample's ``.cls`` member and ``class`` field; ``None``: neither is written.
        rank, world_size: this process's place; both ``None``: from ``torch.distributed`` when initialised,
            else 0 / 1. This process writes the shards ``s`` with ``s % world_size == rank``.
        progress: show a tqdm bar (on stderr) of this process's samples.
        on_sample: called with each global sample index once it is written into the current shard's
            ``.tmp`` file (e.g. custom progress; tests raise from it to simulate a crash).

    Returns:
        :class:`ExportReport` of this process. When ``torch.distributed`` is initialised with
        ``world_size`` processes, returns after a barrier, i.e. once every rank has finished.

    Raises:
        ValueError: on bad arguments, or when ``out/export.json`` describes a different export.
        gpumosaic.shardfile.ExportLockedError: another process is writing shards of this export.
    """
    start_time = time.perf_counter()
    n = _check_int(n, "n", 1)
    shard_size = _check_int(shard_size, "shard_size", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    views = ViewSettings() if views is None else views
    if not isinstance(views, ViewSettings):
        raise TypeError(f"Expected views to be a ViewSettings or None, got {type(views).__name__}")
    seed = _check_int(seed, "seed", 0)
    jpeg_quality = _check_int(jpeg_quality, "jpeg_quality", 1)
    if jpeg_quality > 100:
        raise ValueError(f"Expected jpeg_quality in [1, 100], got {jpeg_quality}")
    if image_format not in _FORMATS:
        raise ValueError(f"Expected image_format in {_FORMATS}, got {image_format!r}")
    if not isinstance(engine, MosaicEngine):
        raise TypeError(f"Expected engine to be a MosaicEngine, got {type(engine).__name__}")
    if not isinstance(mocap, Mocap3D):
        raise TypeError(f"Expected mocap to be a Mocap3D, got {type(mocap).__name__}")
    rank, world_size = resolve_rank(rank, world_size)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected out to be a folder, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    config = _config(n, shard_size, engine, mocap, seed, image_format, jpeg_quality, views, classes)
    digest = _digest(config)
    ds = OnlineMosaicDataset(None, mocap, batch_size, views, device=engine.device, seed=seed,
                             engine=engine, rank=0, world_size=1, classes=classes)
    order = _PairOrder(ds.num_pairs, seed)
    exts = _member_exts(image_format, classes is not None)

    num_shards = -(-n // shard_size)
    mine = range(rank, num_shards, world_size)

    def bounds(s: int) -> tuple[int, int]:
        return s * shard_size, min((s + 1) * shard_size, n)

    with ExportLock(out) as lock:
        with lock.config():
            _sync_config(out, config)
        lock.claim(mine, shard_name)
        # Resume: drop this rank's partial files, keep its intact shards, regenerate the rest.
        removed, skipped, todo = [], [], []
        for s in mine:
            final, index = out / shard_name(s), out / index_name(s)
            for tmp in (final.with_name(final.name + ".tmp"), index.with_name(index.name + ".tmp")):
                if tmp.exists():
                    tmp.unlink()
                    removed.append(tmp.name)
            if final.exists():
                if verify_shard(final, index, s, digest, _expected_names(*bounds(s), n, exts)) is None:
                    skipped.append(s)
                    continue
                final.unlink()
                removed.append(final.name)
            index.unlink(missing_ok=True)
            todo.append(s)
        written, samples = _write_shards(out, todo, bounds, ds, order, n, image_format, jpeg_quality,
                                         batch_size, digest, on_sample, progress, rank, world_size,
                                         total=sum(bounds(s)[1] - bounds(s)[0] for s in mine),
                                         done=sum(bounds(s)[1] - bounds(s)[0] for s in skipped))

    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size > 1:
        dist.barrier()
    return ExportReport(
        out=out, n=n, shard_size=shard_size, num_shards=num_shards, rank=rank, world_size=world_size,
        written=tuple(written), skipped=tuple(skipped), removed=tuple(removed), samples_written=samples,
        seconds=time.perf_counter() - start_time,
    )


def _write_shards(out: Path, todo: list[int], bounds, ds: OnlineMosaicDataset, order: _PairOrder, n: int,
                  image_format: str, jpeg_quality: int, batch_size: int, digest: str, on_sample, progress: bool,
                  rank: int, world_size: int, total: int, done: int) -> tuple[list[int], int]:
    """Generate the shards ``todo`` (each: tar and index to ``.tmp``, fsync, rename index then tar)."""

    from tqdm import tqdm

    written, samples = [], 0
    with tqdm(total=total, initial=done, unit="mosaic", disable=not progress, file=sys.stderr,
              position=rank if world_size > 1 else None,
              desc=f"rank {rank}" if world_size > 1 else "export") as bar:
        for s in todo:
            lo, hi = bounds(s)
            final, index = out / shard_name(s), out / index_name(s)
            tmp, index_tmp = final.with_name(final.name + ".tmp"), index.with_name(index.name + ".tmp")
            entries = []
            with open(tmp, "wb") as f:
                with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for b0 in range(lo, hi, batch_size):
                        b1 = min(b0 + batch_size, hi)
                        for k, members in enumerate(
                            _batch_members(ds, order(b0, b1), b0, n, image_format, jpeg_quality)
                        ):
                            entries += [_add_member(tar, name, data) for name, data in members]
                            if on_sample is not None:
                                on_sample(b0 + k)
                        bar.update(b1 - b0)
                f.flush()
                os.fsync(f.fileno())
            write_index(tmp, index_tmp, s, digest, entries)
            # Atomic renames, index first: a shard name only ever points to a complete, indexed shard.
            os.replace(index_tmp, index)
            os.replace(tmp, final)
            _fsync_dir(out)
            written.append(s)
            samples += hi - lo
    return written, samples


def read_shards(directory: str | os.PathLike, decode: bool = True,
                verify: bool = True) -> Iterator[tuple[str, object, dict]]:
    """Iterate over the samples of the complete shards in ``directory`` (plain :mod:`tarfile`).

    Shards ``shard-XXXXXX.tar`` are read in index order (``.tmp`` files are ignored), samples in the order
    they were written, so a complete export yields keys ``0..N-1`` in order. The ``.cls`` and ``.npy`` label
    members repeat the record's fields and are checked, not returned.

    Args:
        directory: the export folder.
        decode: ``True``: images as float32 (3, H, W) tensors in [0, 1] (RGB, the library's convention);
            ``False``: the encoded ``png``/``jpg`` bytes as stored.
        verify: check every member against the sha256 recorded in the shard's index
            (``shard-XXXXXX.index.json``; shards without an index are read unchecked).

    Yields:
        ``(key, image, record)``: the zero-padded key (str), the image, the annotation dict.

    Raises:
        ValueError: if a shard holds a member that is not ``{key}.{png|jpg|json|cls|pose2d.npy|pose3d.npy|
            occluded.npy}``, a key misses its image or its record, or (``verify``) a member's bytes differ from
            its recorded checksum (the message names the shard and the member).
    """
    directory = Path(directory)
    shards = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _SHARD_RE.match(p.name)))
    for s, path in shards:
        checksums = member_checksums(directory / index_name(s)) if verify else None
        with tarfile.open(path, "r:") as tar:
            current, parts = None, {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                if not member.isfile() or ext not in (*_FORMATS, "json", *_LABELS):
                    raise ValueError(f"Expected members {{key}}.png|jpg|json|cls|*.npy in {path.name}, got "
                                     f"{member.name!r}")
                if key != current:
                    if current is not None:
                        yield _sample(path, current, parts, decode)
                    current, parts = key, {}
                parts[ext] = tar.extractfile(member).read()
                if checksums is not None and hashlib.sha256(parts[ext]).hexdigest() != checksums.get(member.name):
                    raise ValueError(f"{path.name}: member {member.name!r} differs from the sha256 recorded in "
                                     f"{index_name(s)} (corrupt file; rerun the export command to rewrite the shard)")
            if current is not None:
                yield _sample(path, current, parts, decode)


def _sample(path: Path, key: str, parts: dict, decode: bool) -> tuple[str, object, dict]:
    ext = next((e for e in _FORMATS if e in parts), None)
    if ext is None or "json" not in parts:
        raise ValueError(f"Expected an image and a json for key {key} in {path.name}, got {sorted(parts)}")
    record = json.loads(parts["json"])
    image = parts[ext]
    if decode:
        import cv2

        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"Cannot decode the image of key {key} in {path.name}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0)
    return key, image, record
