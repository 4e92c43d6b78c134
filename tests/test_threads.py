"""Thread settings (issue 14): the choice of the thread count, the wait policy set before torch loads (read
back from libgomp itself), ``--threads`` on every computing command, and threads inside DataLoader workers."""

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gpumosaic import Mocap3D, MosaicSettings, ViewSettings, load_demo_mocap, load_demo_pool
from gpumosaic.cli import build_parser, main
from gpumosaic.dataset import OnlineMosaicDataset
from gpumosaic.threads import (
    WorkerThreads,
    add_threads_option,
    available_cores,
    cgroup_cpu_limit,
    choose_threads,
    prefer_passive_wait,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = ["--pool", "demo", "--mocap", "demo"]


# -- the choice ----------------------------------------------------------------------------------------------


def test_cgroup_cpu_limit(tmp_path):
    path = tmp_path / "cpu.max"
    assert cgroup_cpu_limit(tmp_path / "missing") is None
    for text, want in (("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000", 2.0),
                       ("garbage", None), ("0 100000", None)):
        path.write_text(text)
        assert cgroup_cpu_limit(path) == want, text


def test_available_cores_affinity_and_quota():
    assert available_cores(affinity={0, 1, 2}, cpu_limit=1.5) == 2  # a quota of 1.5 cores: 2 threads
    assert available_cores(affinity={4}, cpu_limit=8.0) == 1
    assert available_cores(affinity=set(), cpu_limit=0.25) == 1  # never 0
    # The default, recomputed independently: this process's affinity capped by the cgroup quota.
    want = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        want = min(want, math.ceil(limit))
    assert available_cores() == want


def test_choose_threads_order():
    # No request, no OMP_NUM_THREADS: the cores.
    c = choose_threads(None, environ={}, cores=6)
    assert (c.threads, c.source, c.cores) == (6, "cores", 6)
    assert c.describe().startswith("6 threads (the cores this process may use")
    # The user's OMP_NUM_THREADS is respected (torchrun sets 1); a nested list's first level counts.
    c = choose_threads(None, environ={"OMP_NUM_THREADS": "3"}, cores=6)
    assert (c.threads, c.source) == (3, "OMP_NUM_THREADS")
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "4,2"}, cores=6).threads == 4
    assert choose_threads(None, environ={"OMP_NUM_THREADS": " "}, cores=6).source == "cores"
    # An explicit count wins over both.
    c = choose_threads(5, environ={"OMP_NUM_THREADS": "3"}, cores=2)
    assert (c.threads, c.source) == (5, "requested")
    assert c.describe().startswith("5 threads (as requested)")
    assert choose_threads(1, environ={}, cores=2).describe().startswith("1 thread (as requested)")
    assert choose_threads(None, environ={}).threads == available_cores()


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2x", None])
def test_choose_threads_rejects(bad):
    if bad is None:
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            choose_threads(None, environ={"OMP_NUM_THREADS": "many"}, cores=2)
        return
    with pytest.raises(ValueError, match="threads"):
        choose_threads(bad, environ={}, cores=2)
    with pytest.raises(ValueError, match="threads"):
        WorkerThreads(bad)


def test_prefer_passive_wait_respects_the_user():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert prefer_passive_wait(env) is False
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {}
    took_effect = prefer_passive_wait(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert took_effect is False  # torch (and its OpenMP) is loaded in this test process: too late


# -- the wait policy libgomp actually read --------------------------------------------------------------------


def _omp_display(code: str, **env_overrides) -> str:
    """stderr of a fresh interpreter running ``code`` with libgomp's OMP_DISPLAY_ENV=VERBOSE."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               **env_overrides)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_cli_sets_passive_wait_before_torch_loads():
    """``import gpumosaic.cli`` (what the console script and ``python -m`` do first) must set the policy before
    torch loads libgomp: libgomp's own display shows GOMP_SPINCOUNT 0 then (300000 when set later)."""
    text = _omp_display("import sys, gpumosaic; assert 'torch' not in sys.modules; import gpumosaic.cli")
    if "GOMP_SPINCOUNT" not in text:
        pytest.skip("torch's OpenMP runtime is not libgomp here")
    assert "GOMP_SPINCOUNT = '0'" in text
    # Control: the same variable set after `import torch` is not seen (this is why the order matters).
    late = _omp_display("import torch, os; os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'; torch.ones(9).sum()")
    assert "GOMP_SPINCOUNT = '300000'" in late
    # The user's own policy is kept.
    active = _omp_display("import gpumosaic.cli", OMP_WAIT_POLICY="ACTIVE")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in active and "GOMP_SPINCOUNT = '0'" not in active


# -- the command line ----------------------------------------------------------------------------------------


def test_threads_option_on_every_computing_command(monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    parser = build_parser()
    base = {"generate": ["--n", "1", "--out", "x"], "export": ["--n", "1", "--out", "x"], "preview": ["--out", "x"]}
    for command, rest in base.items():
        assert parser.parse_args([command, *rest]).threads is None
        assert parser.parse_args([command, *rest, "--threads", "3"]).threads == 3
        with pytest.raises(SystemExit):
            parser.parse_args([command, *rest, "--threads", "0"])
        assert "positive integer" in capsys.readouterr().err
    # Commands added by other modules of the CLI get it too (all but `data`).
    commands = re.search(r"\{([^}]*)\}", parser.format_usage()).group(1).split(",")
    assert {"generate", "export", "preview", "data"} <= set(commands)
    for name in commands:
        if name != "data":
            with pytest.raises(SystemExit):
                parser.parse_args([name, "--help"])
            assert "--threads N" in capsys.readouterr().out, name
    assert not hasattr(parser.parse_args(["data", "prepare"]), "threads")
    # --help says what it chose.
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default here: {available_cores()} = the cores this process may use" in help_text
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["preview", "--help"])
    assert "default here: 3, from OMP_NUM_THREADS" in " ".join(capsys.readouterr().out.split())


def test_add_threads_option_keeps_a_commands_own():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("new")
    own = sub.add_parser("own")
    own.add_argument("--threads", default="mine")
    add_threads_option(sub)
    assert parser.parse_args(["new", "--threads", "2"]).threads == 2
    assert parser.parse_args(["own"]).threads == "mine"


def test_main_applies_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["generate", "--n", "1", "--out", str(tmp_path / "a"), "--device", "cpu", *DEMO, "--quiet",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["preview", "--out", str(tmp_path / "b.png"), "--device", "cpu", *DEMO]) == 0
        assert torch.get_num_threads() == available_cores()
        monkeypatch.setenv("OMP_NUM_THREADS", "nope")
        with pytest.raises(SystemExit, match="OMP_NUM_THREADS"):
            main(["preview", "--out", str(tmp_path / "c.png"), "--device", "cpu", *DEMO])
    finally:
        torch.set_num_threads(before)


# -- DataLoader workers --------------------------------------------------------------------------------------


class _ThreadReportingDataset(OnlineMosaicDataset):
    """Reports the generating process's torch thread count in each batch's ``label`` (no classes here)."""

    def synthesise(self, pair_index):
        batch = super().synthesise(pair_index)
        return dataclasses.replace(batch, label=torch.full_like(batch.label, torch.get_num_threads()))


@pytest.fixture(scope="module")
def small_dataset():
    pool = load_demo_pool().subset(slice(0, 20))
    mocap = load_demo_mocap()
    mocap = Mocap3D(mocap.poses[:2].clone(), mocap.skeleton, mocap.ids[:2].clone())
    return _ThreadReportingDataset(pool, mocap, batch_size=2, views=ViewSettings(views_per_pose=2),
                                   engine=MosaicSettings(size=32))


@pytest.mark.parametrize("per_worker", [None, 1])
def test_threads_inside_forked_dataloader_workers(small_dataset, per_worker):
    before = torch.get_num_threads()
    init = None if per_worker is None else WorkerThreads(per_worker)
    loader = DataLoader(small_dataset, batch_size=None, num_workers=2, worker_init_fn=init,
                        multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 2  # one per worker: 4 pairs in batches of 2
    # Without worker_init_fn torch's DataLoader runs one thread per worker (documented in gpumosaic.threads).
    assert all(b.label.tolist() == [1, 1] for b in batches)
    assert torch.get_num_threads() == before  # the main process is untouched


def test_more_threads_in_a_forked_worker_raise_instead_of_hanging(small_dataset):
    torch.ones(10**6).exp().sum()  # the parent has used its OpenMP team: a 2-thread fork would deadlock
    loader = DataLoader(small_dataset, batch_size=None, num_workers=1, worker_init_fn=WorkerThreads(2),
                        multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match="spawn"):
        list(loader)


def test_threads_inside_spawned_dataloader_worker(small_dataset):
    loader = DataLoader(small_dataset, batch_size=None, num_workers=1, worker_init_fn=WorkerThreads(2),
                        multiprocessing_context="spawn")
    batches = list(loader)
    assert len(batches) == 2
    assert all(b.label.tolist() == [2, 2] for b in batches)
