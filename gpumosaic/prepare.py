"""``gpumosaic data prepare``: fetch, verify and extract the pinned packages, then build the real pool and mocap.

The pinned packages, their parsers and the cache readers live in :mod:`gpumosaic.sources.real` (loaders
parse); this module builds: the pool's crops (:func:`gpumosaic.pools.build_pool`, which warps) and the merged
mocap, saved as plain ``.npz`` with a ``manifest.json`` (:func:`save_real_cache`). ``docs/data.md`` gives
licences and provenance.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .pools import build_pool
from .skeleton import LSP14
from .sources.base import Mocap3D, Pool2D
from .sources.build import Annotations2D, PathLike
from .sources.deepmimic import load_deepmimic
from .sources.trc import load_trc
from .sources.real import (
    FORMAT_VERSION,
    ID_BASE,
    MOCAP_SEQUENCES,
    PINNED,
    POOL_SEQUENCES,
    POOL_MARGIN,
    POOL_SIZE,
    VideoFrames,
    cache_dir,
    cache_ready,
    extract_package,
    fetch_package,
    load_pose2sim_annotations,
    load_sports2d_annotations,
    read_manifest,
    sha256_file,
)

__all__ = ["PrepareReport", "prepare", "save_real_cache"]


@dataclass(frozen=True)
class PrepareReport:
    """What :func:`prepare` did.

    Attributes:
        cache: the cache folder.
        skipped: the cache was already valid and nothing was rebuilt.
        pool_size: N people in the pool.
        mocap_size: M poses in the mocap.
        counts: source -> (kept, total) entries.
        seconds: stage -> wall-clock seconds (``fetch``, ``extract``, ``pool``, ``mocap``, ``total``).
        missing_optional: optional packages that could not be fetched (test data only).
    """

    cache: Path
    skipped: bool
    pool_size: int
    mocap_size: int
    counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    missing_optional: tuple[str, ...] = ()

    def message(self) -> str:
        if self.skipped:
            return (f"real data already prepared in {self.cache} ({self.pool_size} pool images, "
                    f"{self.mocap_size} mocap poses); --force rebuilds")
        parts = ", ".join(f"{name} {kept}/{total}" for name, (kept, total) in self.counts.items())
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        text = (f"prepared real data in {self.cache}: pool {self.pool_size} images, mocap {self.mocap_size} poses "
                f"(kept/total: {parts}); {times}")
        if self.missing_optional:
            text += f"; optional test data not fetched: {', '.join(self.missing_optional)}"
        return text


def _files_intact(files: Path, recorded: Mapping[str, str]) -> bool:
    return bool(recorded) and all((files / rel).is_file() and sha256_file(files / rel) == h
                                  for rel, h in recorded.items())


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def _bar(total: int, desc: str, unit: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, leave=True, mininterval=1.0)


def _build_real_pool(files: Path, device, quiet: bool) -> tuple[Pool2D, dict, list[str]]:
    counts, notes = {}, []
    parts: list[Annotations2D] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the drops are counted in the reports and printed below
        for cam in (1, 2, 3, 4):
            ann = load_pose2sim_annotations(files, cam)
            parts.append(ann)
            counts[f"pose2sim cam{cam:02d}"] = (ann.report.kept, ann.report.total)
            notes.append(ann.report.message())
        ann = load_sports2d_annotations(files / "sports2d" / "demo.mp4")
        parts.append(ann)
        counts["sports2d"] = (ann.report.kept, ann.report.total)
        notes.append(ann.report.message())
    joints = torch.cat([a.joints for a in parts])
    merged = Annotations2D(joints=joints, visible=torch.cat([a.visible for a in parts]),
                           image_paths=tuple(p for a in parts for p in a.image_paths), skeleton=LSP14,
                           ids=torch.cat([a.ids for a in parts]), report=parts[0].report)
    bar = _bar(len(merged), "decoding video frames", "frame", quiet)
    reader = VideoFrames(bar.update)
    try:
        pool = build_pool(merged, POOL_SIZE, POOL_MARGIN * POOL_SIZE, device=device, read_image=reader, chunk=32)
    finally:
        reader.close()
        bar.close()
    return pool.to("cpu"), counts, notes


def _build_real_mocap(files: Path, build_dir: Path) -> tuple[Mocap3D, dict, list[str]]:
    counts, notes, poses, ids = {}, [], [], []
    for code, name in ((1, "Balancing_for_IK.trc"), (2, "Standing_for_Scaling.trc")):
        loaded = load_trc(files / "pose2sim" / "trc" / name)
        poses.append(loaded.mocap.poses)
        ids.append(code * ID_BASE + loaded.frame)
        counts[f"trc {name}"] = (loaded.report.kept, loaded.report.total)
        notes.append(loaded.report.message())
    loaded = load_deepmimic(files / "pybullet" / "motions", urdf=files / "pybullet" / "humanoid.urdf")
    names = [Path(s).name for s in loaded.sequences]
    expected = [v.split(" ", 1)[1] for k, v in MOCAP_SEQUENCES.items() if k >= 10]
    if names != expected:
        raise ValueError(f"Expected the DeepMimic clips {expected}, found {names}")
    poses.append(loaded.mocap.poses)
    ids.append((10 + loaded.sequence) * ID_BASE + loaded.frame)
    counts["deepmimic"] = (loaded.report.kept, loaded.report.total)
    notes.append(loaded.report.message())
    return Mocap3D(poses=torch.cat(poses), skeleton=LSP14, ids=torch.cat(ids)), counts, notes


def prepare(cache: PathLike | None = None, *, force: bool = False, quiet: bool = False,
            device: torch.device | str | None = None, log: Callable[[str], None] | None = None,
            downloads: PathLike | None = None) -> PrepareReport:
    """Fetch, verify, extract and build the real pool and mocap into ``cache`` (see the module docstring).

    Idempotent: returns at once (``skipped=True``) when :func:`cache_ready`, unless ``force``. Downloads are
    kept in ``cache/downloads`` (and reused when their hash is right); extracted files whose recorded hashes
    still match are not extracted again.

    Args:
        cache: the cache folder (default :func:`default_cache_dir`).
        force: rebuild even when the cache is valid.
        quiet: no progress bars and no pip output.
        device: where the pool crops are computed (default CPU); the saved arrays are host arrays.
        log: receives one line per step (default: print to stderr).
        downloads: folder for the distribution files (default ``cache/downloads``).

    Raises:
        RuntimeError: a required package could not be downloaded (e.g. offline).
        HashMismatchError: a downloaded file does not match its pinned hash.
    """
    log = log or (lambda text: print(text, file=sys.stderr))
    cache = cache_dir(cache)
    if not force and cache_ready(cache):
        m = read_manifest(cache)
        return PrepareReport(cache, True, m["outputs"]["pool.npz"]["n"], m["outputs"]["mocap.npz"]["n"])
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    cache.mkdir(parents=True, exist_ok=True)
    files = cache / "files"
    downloads = cache / "downloads" if downloads is None else Path(downloads)
    old = read_manifest(cache) or {}
    recorded = old.get("files", {})
    extracted: dict[str, dict[str, str]] = {}
    missing_optional = []
    t_fetch = t_extract = 0.0
    for key, pin in PINNED.items():
        mine = recorded.get(key, {})
        if old.get("packages", {}).get(key) == pin.sha256 and _files_intact(files, mine):
            extracted[key] = mine
            log(f"{pin.requirement}: data files already extracted and intact")
            continue
        t0 = time.perf_counter()
        try:
            log(f"{pin.requirement}: fetching {pin.filename} (pip download --no-deps)")
            archive = fetch_package(pin, downloads, quiet=quiet)
        except RuntimeError as err:
            if pin.optional:
                missing_optional.append(pin.requirement)
                log(f"{pin.requirement}: not fetched (optional, test data only): {err}")
                continue
            raise
        t1 = time.perf_counter()
        extracted[key] = extract_package(pin, archive, files)
        t_fetch += t1 - t0
        t_extract += time.perf_counter() - t1
        log(f"{pin.requirement}: sha256 verified, extracted {len(extracted[key])} files")
    seconds["fetch"], seconds["extract"] = t_fetch, t_extract
    build_dir = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        t0 = time.perf_counter()
        pool, pool_counts, pool_notes = _build_real_pool(files, device, quiet)
        seconds["pool"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mocap, mocap_counts, mocap_notes = _build_real_mocap(files, build_dir)
        seconds["mocap"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    for line in pool_notes + mocap_notes:
        log(line)
    counts = {**pool_counts, **mocap_counts}
    seconds["total"] = time.perf_counter() - start
    save_real_cache(cache, pool, mocap, files=extracted, counts=counts, seconds=seconds,
                    notes=pool_notes + mocap_notes)
    return PrepareReport(cache, False, len(pool), len(mocap), counts, seconds, tuple(missing_optional))


def _content_box(pool: Pool2D) -> np.ndarray:
    """(N, 4) float32: the pool's ``content_box``, or the whole stored image when it has none."""
    if pool.content_box is not None:
        return pool.content_box.cpu().numpy().astype(np.float32)
    h, w = pool.image_size
    return np.tile(np.array([-0.5, -0.5, w - 0.5, h - 0.5], np.float32), (len(pool), 1))


def save_real_cache(cache: PathLike, pool: Pool2D, mocap: Mocap3D, *, files: Mapping[str, Mapping[str, str]],
                    counts: Mapping[str, tuple[int, int]] | None = None, seconds: Mapping[str, float] | None = None,
                    notes: Sequence[str] = ()) -> None:
    """Write ``pool.npz``, ``mocap.npz`` and ``manifest.json`` into ``cache`` (what :func:`prepare` ends with).

    Args:
        cache: the cache folder.
        pool: LSP14 pool (uint8 images) to store; mocap: LSP14 poses.
        files: package key of :data:`PINNED` -> {extracted file (relative to ``cache/files``): sha256}; the
            manifest records the pinned hash of each of these packages (:func:`cache_ready` compares them).
        counts, seconds, notes: recorded for provenance.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if pool.skeleton.name != LSP14.name or mocap.skeleton.name != LSP14.name:
        raise ValueError(f"Expected LSP14 pool and mocap, got {pool.skeleton.name} and {mocap.skeleton.name}")
    if pool.images.dtype != torch.uint8:
        raise TypeError(f"Expected uint8 pool images, got {pool.images.dtype}")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"format_version": FORMAT_VERSION, "skeleton": LSP14.name, "id_rule": "code * 100000 + frame",
              "counts": dict(counts or {}), "reports": list(notes), "built": date}
    pool_meta = {"format": "gpumosaic-real-pool", "image_size": list(pool.image_size),
                 "margin_fraction": POOL_MARGIN if pool.image_size[0] == POOL_SIZE else None,
                 "sequences": {str(k): v for k, v in POOL_SEQUENCES.items()}, **common}
    mocap_meta = {"format": "gpumosaic-real-mocap", "units": "m", "up": "z",
                  "sequences": {str(k): v for k, v in MOCAP_SEQUENCES.items()}, **common}
    (cache / "manifest.json").unlink(missing_ok=True)  # the cache is invalid while being rewritten
    _save_npz(cache / "pool.npz", {"images": pool.images.cpu().numpy(), "joints": pool.joints.cpu().numpy(),
                                   "ids": pool.ids.cpu().numpy(), "content_box": _content_box(pool),
                                   "meta": np.array(json.dumps(pool_meta))})
    _save_npz(cache / "mocap.npz", {"poses": mocap.poses.cpu().numpy(), "ids": mocap.ids.cpu().numpy(),
                                    "meta": np.array(json.dumps(mocap_meta))})
    manifest = {
        "format_version": FORMAT_VERSION,
        "packages": {k: PINNED[k].sha256 for k in files},
        "files": {k: dict(v) for k, v in files.items()},
        "outputs": {name: {"bytes": (cache / name).stat().st_size, "n": n, "sha256": sha256_file(cache / name)}
                    for name, n in (("pool.npz", len(pool)), ("mocap.npz", len(mocap)))},
        "counts": dict(counts or {}),
        "seconds": dict(seconds or {}),
        "built": date,
    }
    tmp = cache / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(cache / "manifest.json")
