"""Offline export to tar shards: records, determinism, resuming after a crash, ranks and torchrun."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
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
    assert sorted(p.name for p in out.iterdir()) == ["export.json"] + [shard_name(s) for s in range(3)]
    with tarfile.open(out / shard_name(2)) as tar:
        assert tar.getnames() == ["000000006.png", "000000006.json", "000000007.png", "000000007.json"]
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
    assert r1.written == (1,) and sorted(p.name for p in tmp_path.glob("shard-*")) == [shard_name(1)]
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
    assert sorted(p.name for p in dest.iterdir()) == ["export.json"] + [shard_name(s) for s in range(3)]
    ref = {k: (im, r) for k, im, r in read_shards(out)}
    for key, image, rec in samples:  # same samples as the single-process export (up to float last bits)
        assert rec["pair_index"] == ref[key][1]["pair_index"]
        torch.testing.assert_close(image, ref[key][0], atol=1 / 255 + 1e-6, rtol=0)
