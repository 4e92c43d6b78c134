"""The gpumosaic command: generate and preview on the embedded demo data."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

from gpumosaic.cli import main
from gpumosaic.geometry import fit_to_box
from gpumosaic.sources.demo import load_demo_mocap

# The tests pin the embedded demo data: the default source is the real data when its cache exists.
DEMO = ["--pool", "demo", "--mocap", "demo"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    assert main(["generate", "--n", "3", "--out", str(out), "--device", "cpu", *DEMO, "--seed", "7",
                 "--batch-size", "2", "--quiet"]) == 0
    return out


def _records(out):
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


def test_generate_writes_images_and_labels(generated):
    recs = _records(generated)
    assert len(recs) == 3
    mocap = load_demo_mocap()
    for rec in recs:
        img = cv2.imread(str(generated / rec["image"]))
        assert img.shape == (220, 220, 3)
        assert len(rec["matches"]) == 14 and len(rec["source_ids"]) == 14
        # Labels against an independent recomputation: world pose -> camera -> pinhole -> box.
        world = mocap.poses[rec["mocap_index"]].double().numpy()
        cam = rec["camera"]
        r, t = np.array(cam["cam_from_world_R"]), np.array(cam["cam_from_world_t"])
        xc = world @ r.T + t
        uv = cam["focal_px"] * xc[:, :2] / xc[:, 2:]
        box, _ = fit_to_box(torch.from_numpy(uv), 220)
        np.testing.assert_allclose(np.array(rec["pose2d"]), box.numpy(), atol=1e-2)
        centre = xc[[8, 9, 2, 3]].mean(0)  # LSP14 torso: shoulders and hips
        np.testing.assert_allclose(np.array(rec["pose3d"]), xc - centre, atol=1e-4)
        occ = np.array(rec["occluded"])
        assert all((m == -1) == o for m, o in zip(rec["matches"], occ))


def test_generate_same_seed_same_output(generated, tmp_path):
    assert main(["generate", "--n", "3", "--out", str(tmp_path), "--device", "cpu", *DEMO, "--seed", "7",
                 "--batch-size", "2", "--quiet"]) == 0
    assert _records(tmp_path) == _records(generated)
    for rec in _records(generated):
        assert (tmp_path / rec["image"]).read_bytes() == (generated / rec["image"]).read_bytes()


def test_generate_no_blend_and_bad_args(tmp_path):
    assert main(["generate", "--n", "1", "--out", str(tmp_path), "--device", "cpu", *DEMO, "--no-blend", "--quiet"]) == 0
    assert len(_records(tmp_path)) == 1
    with pytest.raises(SystemExit):
        main(["generate", "--n", "0", "--out", str(tmp_path), "--device", "cpu"])
    # beyond the paper: multi-band blending; a bad engine setting is one line, not a traceback
    out = tmp_path / "multiband"
    assert main(["generate", "--n", "1", "--out", str(out), "--device", "cpu", *DEMO, "--multiband", "4", "--quiet"]) == 0
    assert len(_records(out)) == 1
    with pytest.raises(SystemExit, match="error: Expected multiband_levels in 0..6"):
        main(["generate", "--n", "1", "--out", str(out), "--overwrite", "--device", "cpu", *DEMO, "--multiband", "9"])
    with pytest.raises(SystemExit, match="error: Expected alpha >= 1"):
        main(["generate", "--n", "1", "--out", str(out), "--overwrite", "--device", "cpu", *DEMO, "--alpha", "0"])


def test_preview_writes_figure(tmp_path):
    path = tmp_path / "fig.png"
    assert main(["preview", "--out", str(path), "--device", "cpu", *DEMO, "--seed", "2"]) == 0
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 500 and img.shape[1] > 800
    assert img.std() > 10  # a drawn figure, not a blank canvas


# -- issue 12: clear messages, help, reruns ------------------------------------------------------------------


def test_generate_rerun_smaller_n_leaves_no_stale_images(tmp_path, capsys):
    args = ["generate", "--out", str(tmp_path), "--device", "cpu", *DEMO, "--quiet", "--batch-size", "4"]
    assert main([*args, "--n", "4"]) == 0
    with pytest.raises(SystemExit, match=r"holds an earlier generate output \(4 images and annotations.jsonl\); "
                                         r"pass --overwrite"):
        main([*args, "--n", "2"])
    assert len(list((tmp_path / "images").iterdir())) == 4  # untouched
    (tmp_path / "images" / "notes.txt").write_text("mine")  # not generate's: kept
    assert main([*args, "--num-samples", "2", "--overwrite"]) == 0
    images = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert images == ["0000000.png", "0000001.png", "notes.txt"]
    assert [r["image"] for r in _records(tmp_path)] == ["images/0000000.png", "images/0000001.png"]


def test_cli_clear_errors_without_tracebacks(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    common = ["--n", "1", "--device", "cpu", *DEMO, "--quiet"]
    with pytest.raises(SystemExit, match=r"error: --out .*file.txt is a file; expected a folder"):
        main(["generate", "--out", str(a_file), *common])
    with pytest.raises(SystemExit, match=r"error: --out .*file.txt/sub: cannot create the folder"):
        main(["generate", "--out", str(a_file / "sub"), *common])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            with pytest.raises(SystemExit, match=r"error: --out .*locked is not writable"):
                main(["generate", "--out", str(locked), *common])
            with pytest.raises(SystemExit, match=r"error: --out .*locked/x: cannot create the folder"):
                main(["export", "--out", str(locked / "x"), *common])
    finally:
        locked.chmod(0o700)
    for bad in ("tpu", "cuda:banana", "meta"):
        with pytest.raises(SystemExit, match=rf"error: --device: (unknown|unsupported) device '{bad}'"):
            main(["generate", "--out", str(tmp_path / "g"), "--n", "1", "--device", bad, *DEMO])


def test_preview_prints_the_path_it_wrote(tmp_path, capsys):
    folder = tmp_path / "figs"
    folder.mkdir()
    assert main(["preview", "--out", str(folder), "--device", "cpu", *DEMO]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"wrote {folder / 'preview.png'}" and (folder / "preview.png").is_file()
    assert "preview: loading the pool and mocap" in out.err  # feedback before the slow part
    assert main(["preview", "--out", str(tmp_path / "fig"), "--device", "cpu", *DEMO]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'fig.png'}" and (tmp_path / "fig.png").is_file()


def test_help_version_and_defaults(capsys):
    from gpumosaic import __version__
    from gpumosaic.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"gpumosaic {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and ":mod:" not in text and "gpumosaic generate" in text
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    commands = {name: subs[name] for name in ("generate", "preview", "export", "evaluate", "predict")}
    commands["data prepare"] = next(a for a in subs["data"]._actions if a.dest == "data_command").choices["prepare"]
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
        help_text = sub.format_help()
        assert "``" not in help_text
    gen_help = " ".join(commands["generate"].format_help().split())
    assert "(default: 16)" in gen_help and "(default: png)" in gen_help and "--num-samples" in gen_help
    assert "(default: 0)" in " ".join(commands["preview"].format_help().split())


def test_loader_warnings_are_one_line(tmp_path, capfd):
    """A loader's DroppedEntriesWarning prints as one 'warning: ...' line (no source path, no code line)."""
    import test_loaders as tl

    xyz = np.random.default_rng(0).normal(size=(4, len(tl.TRC_MARKERS), 3)) * 300
    tl._write_trc(tmp_path / "walk.trc", xyz, gaps=[(1, 1)])
    import warnings

    with warnings.catch_warnings():  # pytest records warnings; show them as Python's default hook does
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        assert main(["generate", "--n", "1", "--out", str(tmp_path / "g"), "--device", "cpu", "--quiet",
                     "--pool", "demo", "--mocap", f"trc:{tmp_path / 'walk.trc'}"]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "dropped" in line]
    assert lines and all(line.startswith("warning: trc loader") for line in lines), err
    assert "warnings.warn" not in err and "UserWarning" not in err and ".py:" not in err
