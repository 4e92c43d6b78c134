"""Offline export to tar shards: records, determinism, resuming after a crash, ranks and torchrun."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gpumosaic import MosaicEngine, load_demo_mocap, load_demo_pool
from gpumosaic.cli import main
from gpumosaic.dataset import OnlineMosaicDataset
from gpumosaic.settings import ViewSettings
from gpumosaic.sharding import epoch_permutation
from gpumosaic.export import ExportReport, export_shards, read_shards, sample_key, shard_name
from gpumosaic.geometry import fit_to_box
from gpumosaic.shardfile import ExportLockedError, index_name
from gpumosaic.sources import Mocap3D

SIZE = 64  # small images for speed (the paper's 220 is the default)
N, SHARD, BATCH, SEED = 8, 3, 2, 5  # shards of 3, 3, 2 samples
CLI_ARGS = ["--pool", "demo", "--mocap", "demo", "--shard-size", str(SHARD), "--batch-size", str(BATCH), "--size", str(SIZE), "--device", "cpu",
            "--seed", str(SEED), "--quiet"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return load_demo_pool(), load_demo_mocap()


@pytest.fixture(scope="module")
def engine(data):
    return MosaicEngine(data[0], size=SIZE)


def _export(out, engine, mocap, **kw):
    kw = {"batch_size": BATCH, "progress": False, **kw}
    return export_shards(out, kw.pop("n", N), kw.pop("shard_size", SHARD), engine, mocap, kw.pop("seed", SEED),
                         **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, engine, data):
    """An uninterrupted single-process export."""
    out = tmp_path_factory.mktemp("ref")
    report = _export(out, engine, data[1])
    return out, report


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("shard-*.tar"))}


def _keys(out):
    return [key for key, _, _ in read_shards(out, decode=False)]


def test_report_and_layout(reference):
    out, report = reference
    assert isinstance(report, ExportReport)
    assert (report.n, report.shard_size, report.num_shards) == (N, SHARD, 3)
    assert report.written == (0, 1, 2) and report.skipped == () and report.removed == ()
    assert report.samples_written == N
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "export.lock"] + sorted(
        [shard_name(s) for s in range(3)] + [index_name(s) for s in range(3)])
    with tarfile.open(out / shard_name(2)) as tar:
        assert tar.getnames() == [f"00000000{i}.{e}" for i in (6, 7)
                                  for e in ("png", "json", "pose2d.npy", "pose3d.npy", "occluded.npy")]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert sample_key(7, N) == "000000007" and sample_key(12, 10**10) == "0000000012"


def test_records_match_independent_labels(reference, data):
    """Labels recomputed from world poses and the stored camera (numpy pinhole); ids consistent."""
    out, _ = reference
    pool, mocap = data
    samples = list(read_shards(out))
    assert [k for k, _, _ in samples] == [sample_key(i, N) for i in range(N)]
    for key, image, rec in samples:
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1 and image.std() > 0.01
        assert rec["key"] == key and rec["index"] == int(key) and rec["image"] == f"{key}.png"
        assert rec["pair_index"] == rec["mocap_index"] * 180 + rec["view_index"]
        assert rec["mocap_id"] == int(mocap.ids[rec["mocap_index"]])
        world = mocap.poses[rec["mocap_index"]].double().numpy()
        cam = rec["camera"]
        r, t = np.array(cam["cam_from_world_R"]), np.array(cam["cam_from_world_t"])
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
        xc = world @ r.T + t
        assert np.isfinite(xc).all() and (xc[:, 2] > 0).all()
        uv = cam["focal_px"] * xc[:, :2] / xc[:, 2:]
        box, _ = fit_to_box(torch.from_numpy(uv), SIZE)
        np.testing.assert_allclose(np.array(rec["pose2d"]), box.numpy(), atol=1e-2)
        centre = xc[[8, 9, 2, 3]].mean(0)  # LSP14 torso: shoulders and hips
        np.testing.assert_allclose(np.array(rec["pose3d"]), xc - centre, atol=1e-4)
        # Camera centre sits `distance` away from the world torso centre.
        np.testing.assert_allclose(np.linalg.norm(-r.T @ t - world[[8, 9, 2, 3]].mean(0)), cam["distance_m"],
                                   atol=1e-4)
        matches, rows = np.array(rec["matches"]), np.array(rec["source_rows"])
        occluded = np.array(rec["occluded"])
        # Occluded joints are not searched, unless every joint is (then all are searched).
        np.testing.assert_array_equal(matches == -1, occluded & ~occluded.all())
        assert ((rows == -1) == (matches == -1)).all()
        ids = np.where(rows >= 0, pool.ids.numpy()[np.clip(rows, 0, None)], -1)
        np.testing.assert_array_equal(ids, rec["source_ids"])
        np.testing.assert_array_equal(np.array(rec["mirrored"]), matches >= len(pool))


def test_samples_follow_the_dataset_stream(reference, engine, data):
    """Sample i is the i-th sample of the single-process OnlineMosaicDataset stream with the same seed."""
    out, _ = reference
    ds = OnlineMosaicDataset(None, data[1], batch_size=N, engine=engine, seed=SEED, rank=0, world_size=1)
    batch = next(iter(ds))
    samples = list(read_shards(out))
    assert [r["pair_index"] for _, _, r in samples] == batch["pair_index"].tolist()
    images = torch.stack([im for _, im, _ in samples])
    torch.testing.assert_close(images, batch["image"], atol=1 / 255 + 1e-6, rtol=0)  # PNG: uint8 rounding
    torch.testing.assert_close(torch.tensor([r["pose2d"] for _, _, r in samples]), batch["pose2d"],
                               atol=1e-4, rtol=0)


def test_pair_order_wraps_over_epochs(tmp_path, engine, data):
    """With M·V = 4 pairs, keys 0..9 run through epoch permutations 0, 1, 2 (plain-loop reference)."""
    small = Mocap3D(data[1].poses[:2], data[1].skeleton, data[1].ids[:2])
    _export(tmp_path, engine, small, n=10, shard_size=4, views=ViewSettings(views_per_pose=2), seed=3)
    got = [rec["pair_index"] for _, _, rec in read_shards(tmp_path, decode=False)]
    expected = [int(epoch_permutation(4, 3, i // 4)[i % 4]) for i in range(10)]
    assert got == expected
    assert sorted(got[:4]) == sorted(got[4:8]) == [0, 1, 2, 3]


def test_same_seed_same_bytes_and_seed_matters(reference, tmp_path, engine, data):
    out, _ = reference
    _export(tmp_path / "a", engine, data[1])
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(out)
    _export(tmp_path / "b", engine, data[1], seed=SEED + 1, n=2)
    other = [r["pair_index"] for _, _, r in read_shards(tmp_path / "b", decode=False)]
    assert other != [r["pair_index"] for _, _, r in read_shards(out, decode=False)][:2]


def test_resume_after_crash_is_exact(reference, tmp_path, engine, data):
    """A crash after sample 4 (mid shard 1) leaves shard 0 and a partial .tmp; the rerun completes exactly."""
    out, _ = reference
    seen = []

    def crash(index):
        seen.append(index)
        if index == 4:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        _export(tmp_path, engine, data[1], on_sample=crash)
    assert seen == [0, 1, 2, 3, 4]
    assert (tmp_path / shard_name(0)).exists() and not (tmp_path / shard_name(1)).exists()
    partial = tmp_path / (shard_name(1) + ".tmp")
    assert partial.exists()

    report = _export(tmp_path, engine, data[1])
    assert report.skipped == (0,) and report.written == (1, 2)
    assert report.removed == (partial.name,) and report.samples_written == N - SHARD
    keys = _keys(tmp_path)
    assert keys == [sample_key(i, N) for i in range(N)] and len(set(keys)) == N
    assert _shard_bytes(tmp_path) == _shard_bytes(out)
    assert not list(tmp_path.glob("*.tmp"))

    again = _export(tmp_path, engine, data[1])  # nothing left to do
    assert again.written == () and again.skipped == (0, 1, 2) and again.samples_written == 0


def test_cli_resume_truncated_tmp_and_corrupt_shard(reference, tmp_path, capsys):
    """Delete the last shard and leave a truncated .tmp, truncate another shard: the CLI rerun repairs both."""
    out, _ = reference
    work = tmp_path / "work"
    shutil.copytree(out, work)
    last = (work / shard_name(2)).read_bytes()
    (work / shard_name(2)).unlink()
    (work / (shard_name(2) + ".tmp")).write_bytes(last[: len(last) // 2])
    middle = work / shard_name(1)
    middle.write_bytes(middle.read_bytes()[:1500])  # a "complete" name holding a truncated tar
    assert main(["export", "--n", str(N), "--out", str(work), *CLI_ARGS]) == 0
    assert "wrote 2 shards" in capsys.readouterr().out
    assert _shard_bytes(work) == _shard_bytes(out)
    assert _keys(work) == [sample_key(i, N) for i in range(N)]
    assert not list(work.glob("*.tmp"))


def test_refuses_to_mix_exports(reference, tmp_path, engine, data):
    out, _ = reference
    work = tmp_path / "work"
    shutil.copytree(out, work)
    with pytest.raises(ValueError, match=r"export.json differs in \['seed'\]"):
        _export(work, engine, data[1], seed=SEED + 1)
    with pytest.raises(ValueError, match=r"differs in \['image_format', 'jpeg_quality'\]"):
        _export(work, engine, data[1], image_format="jpg")
    with pytest.raises(SystemExit, match="differs"):
        main(["export", "--n", str(N + 1), "--out", str(work), *CLI_ARGS])
    assert _shard_bytes(work) == _shard_bytes(out)  # untouched


def test_bad_arguments(tmp_path, engine, data):
    mocap = data[1]
    for kw, match in (({"n": 0}, "Expected n to be an integer >= 1"),
                      ({"shard_size": 0}, "Expected shard_size"),
                      ({"batch_size": 0}, "Expected batch_size"),
                      ({"seed": -1}, "Expected seed"),
                      ({"image_format": "gif"}, "Expected image_format"),
                      ({"image_format": "jpg", "jpeg_quality": 101}, "Expected jpeg_quality"),
                      ({"rank": 2, "world_size": 2}, "Expected integers 0 <= rank < world_size")):
        with pytest.raises(ValueError, match=match):
            _export(tmp_path, engine, mocap, **kw)
    with pytest.raises(TypeError, match="Expected engine to be a MosaicEngine"):
        export_shards(tmp_path, 1, 1, None, mocap)
    with pytest.raises(SystemExit):
        main(["export", "--n", "0", "--out", str(tmp_path), *CLI_ARGS])


def test_ranks_split_shards(reference, tmp_path, engine, data):
    """Explicit rank/world_size: shard s is written by rank s % 2; the union is the single-process export."""
    out, _ = reference
    r1 = _export(tmp_path, engine, data[1], rank=1, world_size=2)
    assert r1.written == (1,) and sorted(p.name for p in tmp_path.glob("shard-*.tar")) == [shard_name(1)]
    r0 = _export(tmp_path, engine, data[1], rank=0, world_size=2)
    assert r0.written == (0, 2)
    assert _shard_bytes(tmp_path) == _shard_bytes(out)


def test_jpeg_and_read_errors(reference, tmp_path, engine, data):
    out, _ = reference
    _export(tmp_path / "jpg", engine, data[1], n=2, shard_size=2, image_format="jpg", jpeg_quality=90)
    ref = {k: im for k, im, _ in read_shards(out)}
    samples = list(read_shards(tmp_path / "jpg"))
    assert [k for k, _, _ in samples] == [sample_key(0, 2), sample_key(1, 2)]
    for key, image, rec in samples:
        assert rec["image"] == f"{key}.jpg" and torch.isfinite(image).all()
        assert (image - ref[key]).abs().mean() < 0.03  # same mosaic, JPEG-compressed
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(bad / shard_name(0), "w") as tar:
        tar.add(out / "export.json", arcname="readme.txt")
    with pytest.raises(ValueError, match="Expected members"):
        list(read_shards(bad))


def test_export_on_device(reference, tmp_path, data, device):
    """Same pairs and cameras on every device (counter-based); finite images of the right size."""
    out, _ = reference
    engine = MosaicEngine(data[0], size=SIZE, device=device)
    _export(tmp_path, engine, data[1].to(device), n=3, shard_size=2)
    ref = {k: r for k, _, r in read_shards(out, decode=False)}
    samples = list(read_shards(tmp_path))
    assert [k for k, _, _ in samples] == [sample_key(i, 3) for i in range(3)]
    for key, image, rec in samples:
        assert image.shape == (3, SIZE, SIZE) and torch.isfinite(image).all()
        for field in ("pair_index", "mocap_index", "view_index"):
            assert rec[field] == ref[key][field]
        for field in ("azimuth_deg", "elevation_deg"):
            assert rec["camera"][field] == ref[key]["camera"][field]
        np.testing.assert_allclose(rec["pose2d"], ref[key]["pose2d"], atol=1e-3)


def test_torchrun_two_processes(reference, tmp_path):
    """``torchrun --nproc_per_node 2 -m gpumosaic.cli export`` on CPU (gloo): keys 0..N-1 exactly once."""
    out, _ = reference
    dest = tmp_path / "dist"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gpumosaic.cli", "export", "--num-samples", str(N), "--out", str(dest), *CLI_ARGS]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2" in proc.stdout and "rank 1/2" in proc.stdout
    samples = list(read_shards(dest))
    keys = [k for k, _, _ in samples]
    assert keys == [sample_key(i, N) for i in range(N)] and len(set(keys)) == N
    assert sorted(p.name for p in dest.glob("shard-*.tar")) == [shard_name(s) for s in range(3)]
    assert not list(dest.glob("*.tmp"))
    ref = {k: (im, r) for k, im, r in read_shards(out)}
    for key, image, rec in samples:  # same samples as the single-process export (up to float last bits)
        assert rec["pair_index"] == ref[key][1]["pair_index"]
        torch.testing.assert_close(image, ref[key][0], atol=1 / 255 + 1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------------
# Hardening (issue 12): checksums, concurrent writers, fault injection, labels for WebDataset pipelines
# --------------------------------------------------------------------------------------------------------

# A child export with the reference's settings; prints "ready" once set up and "sample i" as it writes, and,
# with a third argument, waits forever after its first sample (to hold its locks while the test looks).
CHILD = f"""
import sys, time
from gpumosaic import MosaicEngine, load_demo_mocap, load_demo_pool
from gpumosaic.export import export_shards
engine = MosaicEngine(load_demo_pool(), size={SIZE})
mocap = load_demo_mocap()
hold = len(sys.argv) > 2
def on_sample(i):
    print("sample", i, flush=True)
    while hold:
        time.sleep(1)
print("ready", flush=True)
export_shards(sys.argv[1], {N}, {SHARD}, engine, mocap, {SEED}, batch_size={BATCH}, progress=False,
              on_sample=on_sample)
print("done", flush=True)
"""


def _child(out, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _flip_bit(path, member_name, byte=100, bit=3):
    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
    data = bytearray(path.read_bytes())
    data[member.offset_data + byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_bit_flip_in_complete_shard_is_detected_and_rewritten(reference, tmp_path, engine, data):
    out, _ = reference
    work = tmp_path / "work"
    shutil.copytree(out, work)
    _flip_bit(work / shard_name(1), "000000004.png")  # structurally still a complete tar
    with pytest.raises(ValueError, match=r"shard-000001.tar: member '000000004.png' differs from the sha256"):
        list(read_shards(work, decode=False))
    report = _export(work, engine, data[1])
    assert report.skipped == (0, 2) and report.written == (1,) and report.removed == (shard_name(1),)
    assert _shard_bytes(work) == _shard_bytes(out)
    assert (work / index_name(1)).read_bytes() == (out / index_name(1)).read_bytes()
    assert _keys(work) == [sample_key(i, N) for i in range(N)]
    # An index that does not match its tar (e.g. from another export) also makes the shard be rewritten.
    (work / index_name(2)).write_text((work / index_name(2)).read_text().replace('"shard":2', '"shard":7'))
    assert _export(work, engine, data[1]).written == (2,)
    assert _shard_bytes(work) == _shard_bytes(out)


def test_concurrent_writer_is_refused(reference, tmp_path, engine, data):
    """A second export into a folder another process is writing: refused with a clear message, nothing mixed."""
    out, _ = reference
    holder = _child(tmp_path, "hold")
    try:
        line = holder.stdout.readline()
        while line and not line.startswith("sample"):
            line = holder.stdout.readline()
        assert line.startswith("sample 0"), holder.stderr.read()[-2000:]
        with pytest.raises(ExportLockedError, match=r"Another gpumosaic export is writing shard-000000.tar in "):
            _export(tmp_path, engine, data[1])
        with pytest.raises(ValueError, match=r"export.json differs in \['seed'\]"):
            _export(tmp_path, engine, data[1], seed=SEED + 1)
        with pytest.raises(SystemExit, match=r"error: Another gpumosaic export is writing shard-000000.tar"):
            main(["export", "--n", str(N), "--out", str(tmp_path), *CLI_ARGS])
        # Other ranks' shards are free: a rank that owns none of the held shards would proceed (none here).
    finally:
        holder.kill()
        holder.communicate()
    report = _export(tmp_path, engine, data[1])  # the dead holder's locks are gone
    assert report.written == (0, 1, 2) and report.removed == (shard_name(0) + ".tmp",)
    assert _shard_bytes(tmp_path) == _shard_bytes(out)
    assert json.loads((tmp_path / "export.json").read_text())["seed"] == SEED


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fault_injection_kill_at_random_points(reference, tmp_path, seed):
    """SIGKILL exports at random times (before, between and inside shards, during renames and fsyncs), then
    rerun until one finishes: the result is the uninterrupted export, byte for byte, with nothing lost,
    duplicated or altered, and no temporary file left."""
    out, ref_report = reference
    rng = np.random.default_rng(seed)
    per_sample = ref_report.seconds / N
    for _ in range(5):  # on a loaded machine an export may finish before its kill lands: start afresh
        kills, child = _kill_and_resume(tmp_path, rng, per_sample, 3 if seed == 0 else 2)  # seed 0: kill a resume too
        if kills:
            break
        for f in tmp_path.iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    assert child.returncode == 0 and kills >= 1
    keys = _keys(tmp_path)
    assert keys == [sample_key(i, N) for i in range(N)]
    assert _shard_bytes(tmp_path) == _shard_bytes(out)
    for s in range(3):
        assert (tmp_path / index_name(s)).read_bytes() == (out / index_name(s)).read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def _kill_and_resume(tmp_path, rng, per_sample, attempts):
    """Run the export child ``attempts`` times, SIGKILLing all but the last at a random point; returns
    ``(kills that landed, the last child)``."""
    kills = 0
    for attempt in range(attempts):
        child = _child(tmp_path)
        assert child.stdout.readline().startswith("ready"), child.stderr.read()[-2000:]
        seen = ""
        if attempt < attempts - 1:  # the last attempt runs to the end
            # After sample `after` was added to its shard (-1: before any), plus a random fraction of a sample's
            # time: the kill lands while encoding, writing a member, fsyncing or renaming. The first attempt
            # never picks the last sample, so at least one kill lands before the export completes.
            after = int(rng.integers(-1, N - 1 if attempt == 0 else N))
            line = "ready"
            while after >= 0 and line and not (line.startswith("sample") and int(line.split()[1]) >= after):
                line = child.stdout.readline()
                seen += line
            time.sleep(rng.uniform(0, 1.5 * per_sample))
            if child.poll() is None:
                child.kill()
                kills += 1
        stdout, stderr = child.communicate(timeout=300)
        if child.returncode == 0:
            assert "done" in seen + stdout
            break
        assert child.returncode == -9, stderr[-2000:]
    return kills, child


def test_labels_cls_and_npy_members(reference, tmp_path, engine, data):
    """``.cls`` = the nearest class centre of the record's pose3d (numpy argmin); ``.npy`` = the JSON fields."""
    from gpumosaic.classes import PoseClasses

    out, _ = reference
    ref = [r for _, _, r in read_shards(out, decode=False)]
    poses = torch.tensor([r["pose3d"] for r in ref])
    classes = PoseClasses.fit(poses, k=3, generator=torch.Generator().manual_seed(0), progress=False)
    _export(tmp_path, engine, data[1], classes=classes)
    centres = classes.centres.reshape(3, -1).double().numpy()
    with tarfile.open(tmp_path / shard_name(0)) as tar:
        assert tar.getnames()[:6] == ["000000000.png", "000000000.json", "000000000.cls", "000000000.pose2d.npy",
                                      "000000000.pose3d.npy", "000000000.occluded.npy"]
    for s in range(3):
        with tarfile.open(tmp_path / shard_name(s)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in [m for m in members if m.endswith(".json")]:
            key = name[:-5]
            rec = json.loads(members[name])
            flat = np.asarray(rec["pose3d"], np.float64).reshape(-1)
            nearest = int(np.argmin(((centres - flat) ** 2).sum(1)))
            assert int(members[f"{key}.cls"].decode()) == rec["class"] == nearest
            arrays = {e: np.load(io.BytesIO(members[f"{key}.{e}.npy"]), allow_pickle=False)
                      for e in ("pose2d", "pose3d", "occluded")}
            assert arrays["pose2d"].dtype == np.float32 and arrays["pose2d"].shape == (14, 2)
            np.testing.assert_array_equal(arrays["pose2d"], np.float32(rec["pose2d"]))
            np.testing.assert_array_equal(arrays["pose3d"], np.float32(rec["pose3d"]))
            np.testing.assert_array_equal(arrays["occluded"], np.array(rec["occluded"], bool))
    with pytest.raises(ValueError, match=r"export.json differs in \['classes'\]"):
        _export(tmp_path, engine, data[1])  # the same folder without classes: another export
    classes.save(tmp_path / "classes.npz")  # the CLI's --classes gives the same shards
    assert main(["export", "--n", str(N), "--out", str(tmp_path / "cli"), *CLI_ARGS,
                 "--classes", str(tmp_path / "classes.npz")]) == 0
    assert _shard_bytes(tmp_path / "cli") == _shard_bytes(tmp_path)


def test_webdataset_reads_the_documented_pipeline(reference, tmp_path, engine, data):
    """The module docstring's webdataset example, run as written (skipped without webdataset)."""
    wds = pytest.importorskip("webdataset")
    from gpumosaic.classes import PoseClasses

    out, _ = reference
    poses = torch.tensor([r["pose3d"] for _, _, r in read_shards(out, decode=False)])
    classes = PoseClasses.fit(poses, k=2, generator=torch.Generator().manual_seed(0), progress=False)
    _export(tmp_path, engine, data[1], classes=classes)
    ref = list(read_shards(tmp_path))
    ds = (wds.WebDataset(str(tmp_path / "shard-{000000..000002}.tar"), shardshuffle=False)
          .decode("torchrgb")
          .to_tuple("png", "pose2d.npy", "pose3d.npy", "cls"))
    loader = wds.WebLoader(ds.batched(4), batch_size=None, num_workers=0)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, SIZE, SIZE)] * 2  # stacked batches
    image = torch.cat([torch.as_tensor(b[0]) for b in batches])
    pose2d = torch.cat([torch.as_tensor(b[1]) for b in batches])
    label = [int(c) for b in batches for c in b[3]]
    assert image.shape == (N, 3, SIZE, SIZE) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.stack([im for _, im, _ in ref]), atol=0, rtol=0)
    torch.testing.assert_close(pose2d, torch.tensor([r["pose2d"] for _, _, r in ref]))
    assert label == [r["class"] for _, _, r in ref]
