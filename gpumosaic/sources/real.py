"""The real default data: people filmed by real cameras and real motion, fetched from pinned PyPI packages.

``gpumosaic data prepare`` (:func:`gpumosaic.prepare.prepare`) downloads a few pinned, redistributable
packages with ``pip download --no-deps``, checks their sha256 against :data:`PINNED`, extracts only their
data files into a cache (``$GPUMOSAIC_CACHE``, default ``~/.cache/gpumosaic/real``), decodes the video frames
it needs and builds:

- a **real 2D pool** (``pool.npz``): the 4 calibrated cameras × 100 frames of Pose2Sim's balancing trial
  with their OpenPose BODY_25B keypoints, and the frames of Sports2D's outdoor demo video with MediaPipe
  Pose labels shipped in ``gpumosaic/data/real_labels/sports2d_mediapipe.json``; every person cropped by
  :func:`~gpumosaic.pools.build_pool` to S = :data:`POOL_SIZE` (384, margin 20 %; where the crop leaves
  the video frame the frame is mirrored, and ``content_box`` records the part filled from it), LSP14 joints;
- a **real 3D source** (``mocap.npz``): the 15 DeepMimic ``humanoid3d_*`` clips of pybullet (through
  :func:`~gpumosaic.sources.deepmimic.load_deepmimic`) and Pose2Sim's triangulated TRC trials (through
  :func:`~gpumosaic.sources.trc.load_trc`), LSP14, metres, ``z`` up, merged into one
  :class:`~gpumosaic.sources.base.Mocap3D`.

Both are plain ``.npz`` (read with ``allow_pickle=False``); a ``manifest.json`` records the pinned hashes,
the extracted files' hashes and the counts. :func:`load_real_pool` / :func:`load_real_mocap` read them.
``docs/data.md`` gives licences, provenance, joint mappings and approximations.

Provenance ids (``Pool2D.ids`` / ``Mocap3D.ids``): ``code * 100000 + frame`` with ``code`` from
:data:`POOL_SEQUENCES` / :data:`MOCAP_SEQUENCES` (frame = 0-based frame number in its video or file).

Convention:
    2D joints are ``(x, y)`` pixels, ``x`` to the right (column), ``y`` down (row); pixel (row v, column u)
    has its centre at ``(x, y) = (u, v)``. 3D poses are metres in a world frame with ``z`` up.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..skeleton import LSP14
from .base import Mocap3D, Pool2D
from .build import Annotations2D, PathLike, make_annotations
from .coco import face_layout_to_lsp
from .openpose import BODY25B_FOR_LSP14

__all__ = [
    "PinnedPackage",
    "PINNED",
    "HashMismatchError",
    "BODY25B_FOR_LSP14",
    "MEDIAPIPE_FOR_LSP14",
    "POOL_SEQUENCES",
    "POOL_MARGIN",
    "DEFAULT_MOTION",
    "MOCAP_SEQUENCES",
    "default_cache_dir",
    "sha256_file",
    "verify_file",
    "fetch_package",
    "extract_package",
    "cache_ready",
    "cache_dir",
    "read_manifest",
    "VideoFrames",
    "load_pose2sim_annotations",
    "load_sports2d_annotations",
    "sports2d_labels_path",
    "load_real_pool",
    "load_real_mocap",
    "read_real_meta",
]

FORMAT_VERSION = 3
"""Bumped whenever what :func:`gpumosaic.prepare.prepare` builds changes: an older cache is then rebuilt
(2: crops of :data:`POOL_SIZE` = 384 px instead of 256; 3: the frame mirrored where a crop leaves it, instead of
its edge rows replicated, and each crop's ``content_box``)."""

POOL_SIZE = 384
"""Stored side S of the real pool's crops. 384 with :data:`POOL_MARGIN` = 20 %: the joints span ≈ 230 stored px,
more than the 176 px of the engine's 220 box, and with the paper's α = 6 blended mosaics are then as
recognisable as copy-paste ones (at 256 px they were not). Chosen by the fidelity benchmark (docs/fidelity.md,
"Stored size at α = 6"); 442 KB per stored image (213 MB for the 481 real people)."""

POOL_MARGIN = 0.2
"""Crop margin of the real pool as a fraction of :data:`POOL_SIZE` (``build_pool``'s default is 10 %)."""

DEFAULT_MOTION = "clip=1|clip=2|clip=13+14+17+18+19+21+22+23+24"
"""Selector of the real mocap the commands use when no ``--mocap`` is given: the Pose2Sim trials and the 9 DeepMimic
clips in which the person stays on their feet (844 of 1,745 poses; ``--mocap real`` = all). Chosen by the
real-image reproduction's validation split and by the fidelity benchmark (docs/data.md, docs/fidelity.md)."""

ENV_VAR = "GPUMOSAIC_CACHE"

# --------------------------------------------------------------------------------------------------------
# Pinned packages
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinnedPackage:
    """One pinned PyPI distribution and the data files taken from it.

    Attributes:
        requirement: ``name==version`` as given to ``pip download``.
        filename: the distribution file pip saves (wheel or sdist).
        sha256: its expected hash (observed when the pin was made).
        licence: the package's licence (SPDX).
        sdist: fetch the source distribution (``--no-binary``) rather than a wheel.
        members: ``archive prefix -> cache folder`` (relative to ``files/``): every archive member under the
            prefix whose name passes ``keep`` is extracted there, keeping its path below the prefix.
        keep: name suffixes (or exact names) to extract below the prefixes.
        optional: used by the tests only (not part of the pool or mocap); a failure to fetch it is reported
            and ignored.
    """

    requirement: str
    filename: str
    sha256: str
    licence: str
    sdist: bool
    members: Mapping[str, str]
    keep: tuple[str, ...]
    optional: bool = False


_P2S_TRIAL = "Pose2Sim/S00_Demo_BatchSession/S00_P00_SingleParticipant/S00_P00_T01_BalancingTrial/"
_PYBULLET = "pybullet-3.2.7/examples/pybullet/gym/pybullet_data/"

PINNED: dict[str, PinnedPackage] = {
    "pose2sim-0.8.4": PinnedPackage(
        "pose2sim==0.8.4", "pose2sim-0.8.4-py3-none-any.whl",
        "d16e9bbbc38cdd210ff7ce7c4dea91ce4274012f05a27951dd33d4db95588e81", "BSD-3-Clause", False,
        {_P2S_TRIAL + "videos/": "pose2sim/videos", _P2S_TRIAL + "pose/": "pose2sim/pose",
         "pose2sim-0.8.4.dist-info/LICENSE": "pose2sim/LICENSE"},
        (".mp4", ".json", "LICENSE")),
    "pose2sim-0.4.15": PinnedPackage(
        "pose2sim==0.4.15", "pose2sim-0.4.15-py3-none-any.whl",
        "9325774a2789355229acb5753ff468e8f9dd57bd2e396a192a5e2a0c1d10008c", "BSD-3-Clause", False,
        {"Pose2Sim/Demo/opensim/Balancing_for_IK.trc": "pose2sim/trc/Balancing_for_IK.trc",
         "Pose2Sim/Demo/opensim/Standing_for_Scaling.trc": "pose2sim/trc/Standing_for_Scaling.trc",
         "Pose2Sim/Demo/calibration/Calib_qualisys.toml": "pose2sim/Calib_qualisys.toml"},
        (".trc", ".toml")),
    "pybullet-3.2.7": PinnedPackage(
        "pybullet==3.2.7", "pybullet-3.2.7.tar.gz",
        "042879db8d101ac7590dee475fc6aded508b85fe1273fdbbfde1d88bd200e14f", "Zlib", True,
        {_PYBULLET + "data/motions/humanoid3d_": "pybullet/motions/humanoid3d_",
         _PYBULLET + "humanoid/humanoid.urdf": "pybullet/humanoid.urdf",
         "pybullet-3.2.7/LICENSE.txt": "pybullet/LICENSE.txt"},
        (".txt", ".urdf")),
    "sports2d-0.8.34": PinnedPackage(
        "sports2d==0.8.34", "sports2d-0.8.34-py3-none-any.whl",
        "733b6db70742636ae9c35d870c22bd416582f579abd5881bee93a14bb0e2655d", "BSD-3-Clause", False,
        {"Sports2D/Demo/demo.mp4": "sports2d/demo.mp4",
         "sports2d-0.8.34.dist-info/licenses/LICENSE": "sports2d/LICENSE"},
        (".mp4", "LICENSE")),
    "bvhtoolbox-0.1.3": PinnedPackage(
        "bvhtoolbox==0.1.3", "bvhtoolbox-0.1.3.tar.gz",
        "2d9dcae87cd6bfa28c89463450de84497e612682ca0697ea088fc7f2ef0f937f", "MIT (code); example files unstated",
        True, {"bvhtoolbox-0.1.3/tests/example_files/": "bvhtoolbox/"}, (".bvh",), optional=True),
}
"""The pinned distributions (name -> :class:`PinnedPackage`); hashes observed on PyPI when pinned."""


class HashMismatchError(ValueError):
    """A downloaded or cached file's sha256 differs from the pinned one; the file is refused."""


def default_cache_dir() -> Path:
    """``$GPUMOSAIC_CACHE`` if set (and non-empty), else ``~/.cache/gpumosaic/real``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpumosaic" / "real"


def cache_dir(cache: PathLike | None = None) -> Path:
    """``cache`` as a ``Path``, or :func:`default_cache_dir` when ``None``."""
    return default_cache_dir() if cache is None else Path(cache).expanduser()


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: PathLike, expected: str) -> None:
    """Raise :class:`HashMismatchError` (naming the file and both hashes) unless ``sha256(path) == expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise HashMismatchError(f"{path}: sha256 {got} differs from the pinned {expected}; the file is refused "
                                f"(delete it and run `gpumosaic data prepare --force`)")


def fetch_package(pin: PinnedPackage, downloads: PathLike, *, quiet: bool = False) -> Path:
    """The verified distribution file of ``pin`` in ``downloads``: reused when present and valid, else fetched
    with ``python -m pip download --no-deps`` and verified; a file with the wrong hash is deleted and
    :class:`HashMismatchError` raised.

    Raises:
        RuntimeError: pip failed (e.g. no network); the message holds pip's last lines.
    """
    downloads = Path(downloads)
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / pin.filename
    if target.exists():
        try:
            verify_file(target, pin.sha256)
            return target
        except HashMismatchError:
            target.unlink()  # a stale or tampered download: fetch it again below
    name = pin.requirement.split("==")[0]
    # Hash-checking mode: pip verifies the file before it runs anything from it (an sdist's build backend
    # prepares its metadata); the check below repeats it independently of pip.
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{pin.requirement} --hash=sha256:{pin.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--require-hashes",
               "--dest", str(downloads), *(("--no-binary", name) if pin.sdist else ("--only-binary", ":all:")),
               "-r", str(requirements)]
        result = subprocess.run(cmd, stdout=None if not quiet else subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    if "DO NOT MATCH THE HASHES" in (result.stderr or ""):
        target.unlink(missing_ok=True)
        raise HashMismatchError(f"{pin.filename}: pip download {pin.requirement} got a file whose sha256 differs "
                                f"from the pinned {pin.sha256}; the file is refused")
    if result.returncode != 0 or not target.exists():
        tail = "\n".join((result.stderr or "").strip().splitlines()[-5:])
        raise RuntimeError(f"pip download {pin.requirement} failed (exit {result.returncode}):\n{tail}")
    try:
        verify_file(target, pin.sha256)
    except HashMismatchError:
        target.unlink()
        raise
    return target


def _member_target(pin: PinnedPackage, name: str) -> str | None:
    """Cache path (relative to ``files/``) of archive member ``name``, or None when it is not extracted."""
    for prefix, dest in pin.members.items():
        if name == prefix:
            return dest
        if name.startswith(prefix) and (prefix.endswith("/") or prefix.endswith("_")):
            rest = name[len(prefix):]
            if not any(rest.endswith(k) or rest == k for k in pin.keep):
                return None
            parts = Path(rest).parts
            if not parts or any(p in ("..", "") for p in parts) or Path(rest).is_absolute():
                return None
            return str(Path(dest) / rest) if prefix.endswith("/") else dest + rest
    return None


def extract_package(pin: PinnedPackage, archive: PathLike, files: PathLike) -> dict[str, str]:
    """Extract the data members of a verified ``archive`` into ``files``; returns ``{relative path: sha256}``.

    Only members selected by ``pin.members`` / ``pin.keep`` are written (``*.json.old`` backups are skipped by
    the suffix rule), each at its computed path (never at the archive's own member name).
    """
    files = Path(files)
    out: dict[str, str] = {}

    def write(rel: str, data: bytes) -> None:
        dest = files / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        out[rel] = hashlib.sha256(data).hexdigest()

    archive = Path(archive)
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                rel = None if info.is_dir() else _member_target(pin, info.filename)
                if rel is not None:
                    write(rel, z.read(info))
    else:
        with tarfile.open(archive, "r:*") as t:
            for member in t:
                rel = _member_target(pin, member.name) if member.isfile() else None
                if rel is not None:
                    write(rel, t.extractfile(member).read())
    if not out:
        raise ValueError(f"{archive}: no data member matched {sorted(pin.members)}")
    return out


# --------------------------------------------------------------------------------------------------------
# 2D sources -> LSP14
# --------------------------------------------------------------------------------------------------------

# BODY25B_FOR_LSP14 (the Pose2Sim keypoints' mapping) lives in .openpose, shared with load_openpose(layout="BODY_25B").

MEDIAPIPE_FOR_LSP14 = (28, 26, 24, 23, 25, 27, 16, 14, 12, 11, 13, 15)
"""MediaPipe Pose (33 landmarks) index of LSP14's 12 limb joints; neck = midpoint of the shoulders (11, 12),
head_top extrapolated from the neck and nose (0), eyes (2, 5) and ears (7, 8) as for COCO."""

_MEDIAPIPE_NECK = (11, 12)
_MEDIAPIPE_FACE = (0, 2, 5, 7, 8)  # extrapolate_head_top's order: nose, l_eye, r_eye, l_ear, r_ear

MEDIAPIPE_MIN_VISIBILITY = 0.75
"""A Sports2D frame is kept when the mean MediaPipe ``visibility`` of its 12 limb landmarks reaches this."""

MEDIAPIPE_MAX_JUMP = 0.1
"""Temporal check of the per-frame (untracked) MediaPipe labels: a Sports2D frame is kept only when the nearest
labelled frame on each side (at most 2 frames away) exists and the median distance between their LSP14 joints
is at most this fraction of the frame's joint extent (longer side of the joints' bounding box)."""

POOL_SEQUENCES = {1: "pose2sim cam01", 2: "pose2sim cam02", 3: "pose2sim cam03", 4: "pose2sim cam04",
                  5: "sports2d demo"}
"""Pool provenance codes: ``id = code * 100000 + frame``."""

MOCAP_SEQUENCES = {1: "pose2sim Balancing_for_IK.trc", 2: "pose2sim Standing_for_Scaling.trc",
                   **{10 + k: f"deepmimic humanoid3d_{n}.txt" for k, n in enumerate(
                       ("backflip", "cartwheel", "crawl", "dance_a", "dance_b", "getup_facedown", "getup_faceup",
                        "jump", "kick", "punch", "roll", "run", "spin", "spinkick", "walk"))}}
"""Mocap provenance codes: ``id = code * 100000 + frame`` (DeepMimic clips in sorted name order)."""

ID_BASE = 100000
"""Provenance ids are ``code * ID_BASE + frame``."""


def _frame_path(video: Path, frame: int) -> Path:
    """A pseudo path naming frame ``frame`` of ``video`` (read by :class:`VideoFrames`)."""
    return Path(f"{video}#{frame:06d}")


class VideoFrames:
    """``read_image`` for :func:`gpumosaic.pools.build_pool`: decodes ``video#frame`` paths by reading each video forwards.

    build_pool asks for frames in annotation order (sorted by video, then frame), so each video is decoded
    once; a request for an earlier frame reopens the video.
    """

    def __init__(self, progress: Callable[[int], None] | None = None) -> None:
        self._open: dict[str, tuple] = {}
        self._progress = progress

    def __call__(self, path: Path) -> np.ndarray:
        import cv2

        video, _, index = str(path).rpartition("#")
        index = int(index)
        cap, position = self._open.get(video, (None, 0))
        if cap is None or index < position:
            if cap is not None:
                cap.release()
            cap = cv2.VideoCapture(video)
            if not cap.isOpened():
                raise FileNotFoundError(f"Cannot open video {video}")
            position = 0
        while position < index:
            if not cap.grab():
                raise ValueError(f"{video}: frame {index} is past the end ({position} frames)")
            position += 1
        ok, bgr = cap.read()
        if not ok:
            raise ValueError(f"{video}: cannot decode frame {index}")
        self._open[video] = (cap, position + 1)
        if self._progress is not None:
            self._progress(1)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        for cap, _ in self._open.values():
            cap.release()
        self._open.clear()


def _video_size(video: Path) -> tuple[int, int]:
    """(width, height, frame count) of a video as OpenCV decodes it."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"Cannot open video {video}")
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    cap.release()
    return size


def load_pose2sim_annotations(files: PathLike, camera: int) -> Annotations2D:
    """Pose2Sim's balancing trial, camera ``camera`` (1..4): the most confident person of every frame, LSP14.

    Reads ``files/pose2sim/pose/cam0C_json/cam0C.NNNN.json`` (OpenPose BODY_25B; ``*.json.old`` are never
    extracted) and pairs frame NNNN with frame NNNN of ``files/pose2sim/videos/cam0C.mp4``. A frame is dropped
    (and counted) when its most confident person (largest confidence sum) lacks a used keypoint
    (confidence 0) or has a joint outside the video frame.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in video pixels; image paths are ``video#frame``
        pseudo paths (decoded by :func:`gpumosaic.prepare.prepare`); ids ``camera * 100000 + frame``.
    """
    if camera not in (1, 2, 3, 4):
        raise ValueError(f"Expected camera in 1..4, got {camera}")
    files = Path(files)
    folder = files / "pose2sim" / "pose" / f"cam{camera:02d}_json"
    video = files / "pose2sim" / "videos" / f"cam{camera:02d}.mp4"
    jsons = sorted(p for p in folder.glob(f"cam{camera:02d}.*.json"))
    if not jsons:
        raise FileNotFoundError(f"No Pose2Sim keypoint files in {folder}")
    width, height, count = _video_size(video)
    kps, frames = [], []
    reasons = {"no person": 0, "incomplete (most confident person lacks a used keypoint)": 0,
               "joint outside the frame": 0, "no video frame": 0}
    for path in jsons:
        frame = int(path.name.split(".")[-2])
        people = json.loads(path.read_text()).get("people", [])
        best, best_score = None, -np.inf
        for p, person in enumerate(people):
            values = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float64)
            if values.size != 75:
                raise ValueError(f"{path}: people[{p}].pose_keypoints_2d has {values.size} numbers; expected 75 "
                                 f"(BODY_25B)")
            values = values.reshape(25, 3)
            if values[:, 2].sum() > best_score:
                best, best_score = values, values[:, 2].sum()
        kps.append(np.zeros((25, 3)) if best is None else best)
        frames.append(frame)
        if best is None:
            reasons["no person"] += 1
    kp = np.stack(kps)
    frames = np.asarray(frames)
    used = kp[:, BODY25B_FOR_LSP14]  # (N, 14, 3)
    has_person = kp[..., 2].sum(1) > 0
    complete = (used[..., 2] > 0).all(1)
    xy = used[..., :2]
    inside = ((xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= height - 1)).all(1)
    in_video = frames < count
    keep = has_person & complete & inside & in_video
    reasons["incomplete (most confident person lacks a used keypoint)"] = int((has_person & ~complete).sum())
    reasons["joint outside the frame"] = int((has_person & complete & ~inside).sum())
    reasons["no video frame"] = int((has_person & complete & inside & ~in_video).sum())
    notes = ["BODY_25B; neck = BODY_25B Neck (upper neck); head_top = BODY_25B Head (head top)."]
    paths = [_frame_path(video, int(f)) for f in frames]
    return make_annotations("pose2sim", folder, xy, np.ones(xy.shape[:2], bool), keep, paths,
                        camera * ID_BASE + frames, LSP14, LSP14, reasons, notes)


def sports2d_labels_path() -> Path:
    """Path of the shipped ``gpumosaic/data/real_labels/sports2d_mediapipe.json``."""
    ref = importlib.resources.files("gpumosaic").joinpath("data").joinpath("real_labels").joinpath(
        "sports2d_mediapipe.json")
    if isinstance(ref, Path):
        return ref
    return Path(__file__).resolve().parents[1] / "data" / "real_labels" / "sports2d_mediapipe.json"


def load_sports2d_annotations(video: PathLike, labels: PathLike | None = None, *,
                              min_visibility: float = MEDIAPIPE_MIN_VISIBILITY,
                              max_jump: float = MEDIAPIPE_MAX_JUMP) -> Annotations2D:
    """Sports2D's ``demo.mp4`` with the shipped MediaPipe Pose labels, mapped to LSP14.

    Mapping: :data:`MEDIAPIPE_FOR_LSP14` for the limbs; ``neck`` = midpoint of the shoulders; ``head_top``
    extrapolated from the neck and the nose, eyes and ears by
    :func:`gpumosaic.sources.coco.extrapolate_head_top` (an approximation: MediaPipe has no head top).
    A frame is dropped (and counted, under the first reason that applies) when no person was found, when a
    used landmark lies outside the frame, when the mean ``visibility`` of the 12 limb landmarks is below
    ``min_visibility`` (MediaPipe guesses hidden limbs), or when it fails the temporal check of
    :data:`MEDIAPIPE_MAX_JUMP` (the labels were made frame by frame, without tracking, and an isolated frame
    that disagrees with its neighbours is usually a wrong fit). A joint counts as visible when its
    landmarks' visibility is >= 0.5.

    Args:
        video: the extracted ``demo.mp4`` (its sha256 must equal the one recorded in the labels).
        labels: the labels JSON (default :func:`sports2d_labels_path`).
        min_visibility, max_jump: see above.

    Returns:
        :class:`~gpumosaic.sources.build.Annotations2D` in video pixels, ``video#frame`` pseudo paths,
        ids ``5 * 100000 + frame``.
    """
    video = Path(video)
    labels = sports2d_labels_path() if labels is None else Path(labels)
    record = json.loads(Path(labels).read_text())
    if record.get("format") != "gpumosaic-real-labels" or len(record.get("landmarks", ())) != 33:
        raise ValueError(f"{labels}: expected gpumosaic-real-labels with 33 MediaPipe landmarks")
    expected = record["source"]["sha256"]
    if sha256_file(video) != expected:
        raise HashMismatchError(f"{video}: sha256 differs from the one the labels {labels} were made on ({expected})")
    width, height = int(record["source"]["width"]), int(record["source"]["height"])
    n = int(record["source"]["frames"])
    lm = np.zeros((n, 33, 3))
    found = np.zeros(n, bool)
    for key, value in record["frames"].items():
        if value is not None:
            lm[int(key)] = np.asarray(value, dtype=np.float64).reshape(33, 3)
            found[int(key)] = True
    used = list(MEDIAPIPE_FOR_LSP14) + list(_MEDIAPIPE_NECK) + list(_MEDIAPIPE_FACE)
    xy = lm[:, used, :2]
    inside = ((xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= height - 1)).all(1)
    confident = lm[:, list(MEDIAPIPE_FOR_LSP14), 2].mean(1) >= min_visibility
    present = np.ones((n, 33), bool)
    joints, _, _, vis = face_layout_to_lsp(lm[..., :2], present, lm[..., 2] >= 0.5, MEDIAPIPE_FOR_LSP14,
                                            _MEDIAPIPE_NECK, _MEDIAPIPE_FACE)
    extent = np.maximum(np.ptp(joints[..., 0], axis=1), np.ptp(joints[..., 1], axis=1))
    steady = np.zeros(n, bool)
    for f in np.flatnonzero(found):
        prev = next((g for g in (f - 1, f - 2) if g >= 0 and found[g]), None)
        after = next((g for g in (f + 1, f + 2) if g < n and found[g]), None)
        if prev is None or after is None or extent[f] <= 0:
            continue
        jump = [np.median(np.linalg.norm(joints[f] - joints[g], axis=-1)) / extent[f] for g in (prev, after)]
        steady[f] = max(jump) <= max_jump
    ok = found & inside & confident
    keep = ok & steady
    reasons = {"no person found": int((~found).sum()), "landmark outside the frame": int((found & ~inside).sum()),
               f"mean limb visibility < {min_visibility}": int((found & inside & ~confident).sum()),
               f"temporal check (neighbours missing or > {max_jump} of the extent away)": int((ok & ~steady).sum())}
    notes = [f"MediaPipe Pose ({record['provenance']['labeller']}); neck = shoulders' midpoint; head_top "
             f"extrapolated from neck, nose, eyes and ears."]
    frames = np.arange(n)
    return make_annotations("sports2d", labels, joints, vis, keep, [_frame_path(video, f) for f in frames],
                        5 * ID_BASE + frames, LSP14, LSP14, reasons, notes)


# --------------------------------------------------------------------------------------------------------
# Cache: prepare, check, load
# --------------------------------------------------------------------------------------------------------


def read_manifest(cache: Path) -> dict | None:
    """The ``manifest.json`` of a prepared cache, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads((cache / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def cache_ready(cache: PathLike | None = None) -> bool:
    """True when ``cache`` (default :func:`default_cache_dir`) holds a complete real pool and mocap built by this
    version from the pinned packages (manifest format, pinned hashes, and the two ``.npz`` files' sizes)."""
    cache = cache_dir(cache)
    manifest = read_manifest(cache)
    if not manifest or manifest.get("format_version") != FORMAT_VERSION:
        return False
    pins = {k: p.sha256 for k, p in PINNED.items() if not p.optional}
    if {k: v for k, v in manifest.get("packages", {}).items() if k in pins} != pins:
        return False
    for name in ("pool.npz", "mocap.npz"):
        entry = manifest.get("outputs", {}).get(name)
        path = cache / name
        if not entry or not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return False
    return True


def _require(cache: PathLike | None) -> Path:
    cache = cache_dir(cache)
    if not cache_ready(cache):
        raise FileNotFoundError(f"No prepared real data in {cache}; run `gpumosaic data prepare` (or use the demo "
                                f"data: gpumosaic.sources.demo)")
    return cache


def _read(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        missing = set(keys) - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)}")
        return {k: z[k] for k in keys}


def read_real_meta(cache: PathLike | None = None) -> dict:
    """``{"pool": ..., "mocap": ..., "manifest": ...}``: the metadata stored with the prepared real data."""
    cache = _require(cache)
    return {"pool": json.loads(str(_read(cache / "pool.npz", ["meta"])["meta"])),
            "mocap": json.loads(str(_read(cache / "mocap.npz", ["meta"])["meta"])),
            "manifest": read_manifest(cache)}


def load_real_pool(device: torch.device | str | None = None, cache: PathLike | None = None) -> Pool2D:
    """The prepared real pool: N people, uint8 (N, 3, S, S) RGB crops (S = :data:`POOL_SIZE` = 384), LSP14
    joints (N, 14, 2) in stored pixels, ids ``code * 100000 + frame`` (:data:`POOL_SEQUENCES`) and each crop's
    ``content_box`` (N, 4): the stored pixels that come from the video frame.

    Raises:
        FileNotFoundError: no prepared cache (run ``gpumosaic data prepare``).
    """
    arrays = _read(_require(cache) / "pool.npz", ["images", "joints", "ids", "content_box"])
    return Pool2D(images=torch.from_numpy(arrays["images"]).to(device),
                  joints=torch.from_numpy(arrays["joints"].astype(np.float32)).to(device), skeleton=LSP14,
                  ids=torch.from_numpy(arrays["ids"].astype(np.int64)).to(device),
                  content_box=torch.from_numpy(arrays["content_box"].astype(np.float32)).to(device))


def load_real_mocap(device: torch.device | str | None = None, cache: PathLike | None = None) -> Mocap3D:
    """The prepared real mocap: M poses float32 (M, 14, 3), LSP14, metres, world ``z`` up; ids
    ``code * 100000 + frame`` (:data:`MOCAP_SEQUENCES`).

    Raises:
        FileNotFoundError: no prepared cache (run ``gpumosaic data prepare``).
    """
    arrays = _read(_require(cache) / "mocap.npz", ["poses", "ids"])
    return Mocap3D(poses=torch.from_numpy(arrays["poses"].astype(np.float32)).to(device), skeleton=LSP14,
                   ids=torch.from_numpy(arrays["ids"].astype(np.int64)).to(device))
