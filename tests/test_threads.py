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
import gpumosaic.threads as gt
from gpumosaic.threads import (
    CoreLoad,
    WorkerThreads,
    add_threads_option,
    available_cores,
    busy_core_equivalents,
    cgroup_cpu_limit,
    choose_threads,
    core_load,
    cpu_jiffies,
    measure_core_load,
    prefer_passive_wait,
    read_proc_stat,
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


# Hand-made /proc/stat snapshots: columns user nice system idle iowait irq softirq steal guest guest_nice.
STAT_0 = """cpu  1234 0 0 0 0 0 0 0 0 0
cpu0 100 0 50 800 50 0 0 0 7 0
cpu1 200 0 0 700 100 0 0 0 0 0
cpu2 0 0 0 1000 0 0 0 0 0 0
intr 5958443 0 0
"""
# 10 jiffies later: cpu0 busy all the time (user), cpu1 idle (9 idle + 1 iowait), cpu2 busy (outside {0, 1}).
STAT_1 = """cpu  9999 0 0 0 0 0 0 0 0 0
cpu0 110 0 50 800 50 0 0 0 9 0
cpu1 200 0 0 709 101 0 0 0 0 0
cpu2 10 0 0 1000 0 0 0 0 0 0
"""
# The same 10 jiffies with one competitor moved between the cores (5 + 5 busy), and with steal time.
STAT_1_MIGRATING = "cpu0 105 0 50 805 50 0 0 0 0 0\ncpu1 205 0 0 705 100 0 0 0 0 0\n"
STAT_1_STEAL = "cpu0 102 0 50 806 50 0 0 2 0 0\ncpu1 200 0 0 710 100 0 0 0 0 0\n"


def test_cpu_jiffies_by_hand():
    got = cpu_jiffies(STAT_0)
    # total = user+nice+system+idle+iowait+irq+softirq+steal (guest is inside user); idle = idle+iowait.
    assert got == {0: (1000, 850), 1: (1000, 800), 2: (1000, 1000)}
    assert cpu_jiffies("cpu3 1 2 3 4\ncpuX 1 2 3 4 5\ncpu4 1 2\ncpu5 a b c d\n") == {3: (10, 4)}  # old kernel: 4 cols


def test_busy_core_equivalents_by_hand():
    # (busy jiffies of cpu0 + cpu1 - own) / (total jiffies / 2 CPUs): (10 + 0 - own) / 10.
    assert busy_core_equivalents(STAT_0, STAT_1, {0, 1}) == pytest.approx(1.0)
    assert busy_core_equivalents(STAT_0, STAT_1, {0, 1}, own_jiffies=4) == pytest.approx(0.6)
    assert busy_core_equivalents(STAT_0, STAT_1, {0, 1}, own_jiffies=30) == 0.0  # clipped at 0
    assert busy_core_equivalents(STAT_0, STAT_1, {0, 1, 2}) == pytest.approx(2.0)  # (10 + 0 + 10) / 10
    assert busy_core_equivalents(STAT_0, STAT_1, {1}) == 0.0
    # One competitor that the scheduler moved between the cores is still one core: (5 + 5) / 10.
    assert busy_core_equivalents(STAT_0, STAT_1_MIGRATING, {0, 1}) == pytest.approx(1.0)
    # Steal (another VM on the core) counts as busy: cpu0 2 user + 2 steal of 10 -> 4 / 10.
    assert busy_core_equivalents(STAT_0, STAT_1_STEAL, {0, 1}) == pytest.approx(0.4)
    # CPUs absent from a snapshot, or whose counters went back (hot-plug), say nothing.
    assert busy_core_equivalents(STAT_0, STAT_1, {7}) is None
    assert busy_core_equivalents(STAT_1, STAT_0, {0, 1}) is None
    assert busy_core_equivalents(STAT_0, STAT_0, {0, 1}) is None  # no time passed


def test_core_load_busy_and_free():
    # (cpus, allowed, used) -> (busy, free): a core is busy when more than half used; never below 1 thread.
    for cpus, allowed, used, busy, free in ((2, 2, 0.0, 0, 2), (2, 2, 0.5, 0, 2), (2, 2, 0.51, 1, 1), (2, 2, 1.0, 1, 1),
                                            (2, 2, 1.6, 2, 1), (2, 2, 2.0, 2, 1), (8, 8, 2.4, 2, 6),
                                            (4, 2, 1.0, 1, 2), (4, 2, 2.7, 3, 1), (2, 2, None, 0, 2)):
        load = CoreLoad(cpus, allowed, used, "/proc/stat" if used is not None else "unknown", 0.1)
        assert (load.busy, load.free) == (busy, free), (cpus, allowed, used)
    assert CoreLoad(2, 2, 1.0, "/proc/stat", 0.1).describe() == (
        "2 allowed, 1 busy: other processes used 1.00 cores (/proc/stat over 0.1 s)")
    assert CoreLoad(4, 4, 1.2, "load average").describe() == (
        "4 allowed, 1 busy: other processes used 1.20 cores (load average)")


def test_measure_core_load_with_injected_sources():
    snapshots, slept, clock = iter([STAT_0, STAT_1]), [], iter([5.0, 5.03])  # 0.03 s of own CPU = 3 jiffies

    load = measure_core_load(0.25, affinity={0, 1}, cpu_limit=64.0, read_stat=lambda: next(snapshots),
                             sleep=slept.append, cpu_time=lambda: next(clock), clock_ticks=100)
    assert slept == [0.25]
    assert (load.cpus, load.allowed, load.source, load.window_s) == (2, 2, "/proc/stat", 0.25)
    assert load.used == pytest.approx(0.7)  # (10 - 3) / 10
    assert (load.busy, load.free) == (1, 1)
    # Without /proc/stat: the 1-minute load average stands in.
    load = measure_core_load(affinity={0, 1, 2, 3}, cpu_limit=64.0, read_stat=lambda: None,
                             sleep=slept.append, loadavg=lambda: (1.7, 0.0, 0.0))
    assert (load.source, load.used, load.busy, load.free) == ("load average", 1.7, 2, 2)
    assert slept == [0.25]  # nothing to wait for

    def no_loadavg():
        raise OSError("unavailable")

    load = measure_core_load(affinity={0, 1}, cpu_limit=64.0, read_stat=lambda: None, loadavg=no_loadavg)
    assert (load.source, load.used, load.busy, load.free) == ("unknown", None, 0, 2)
    # One allowed core (affinity or quota): nothing to measure.
    for affinity, limit in (({3}, 64.0), ({0, 1}, 0.5)):
        load = measure_core_load(affinity=affinity, cpu_limit=limit, read_stat=pytest.fail)
        assert (load.source, load.free) == ("one core", 1)


def test_this_machines_proc_stat_and_the_cached_load():
    text = read_proc_stat()
    if text is None:
        pytest.skip("no /proc/stat here")
    jiffies = cpu_jiffies(text)
    assert set(os.sched_getaffinity(0)) <= set(jiffies)
    for cpu, (total, idle) in jiffies.items():  # independent parse of the same text
        fields = next(line.split() for line in text.splitlines() if line.startswith(f"cpu{cpu} "))
        assert total == sum(int(v) for v in fields[1:9]) and idle == int(fields[4]) + int(fields[5])
    load = core_load()
    assert core_load() is load  # measured once per process
    assert load.allowed == available_cores() and load.cpus == len(os.sched_getaffinity(0))
    assert 1 <= load.free <= load.allowed
    assert load.source in ("/proc/stat", "one core")


def test_choose_threads_order():
    idle6 = CoreLoad(6, 6, 0.0, "/proc/stat", 0.1)
    busy2 = CoreLoad(2, 2, 0.98, "/proc/stat", 0.1)
    # No request, no OMP_NUM_THREADS: the free cores.
    c = choose_threads(None, environ={}, load=idle6)
    assert (c.threads, c.source, c.cores, c.load) == (6, "free cores", 6, idle6)
    assert c.describe().startswith("6 threads (the free cores: 6 allowed, 0 busy: other processes used 0.00 cores")
    c = choose_threads(None, environ={}, load=busy2)
    assert (c.threads, c.summary()) == (1, "threads: 1 (2 allowed, 1 busy)")
    # The user's OMP_NUM_THREADS is respected (torchrun sets 1); a nested list's first level counts.
    c = choose_threads(None, environ={"OMP_NUM_THREADS": "3"}, load=busy2)
    assert (c.threads, c.source, c.load) == (3, "OMP_NUM_THREADS", None)
    assert c.summary() == "threads: 3 (OMP_NUM_THREADS)"
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "4,2"}, load=idle6).threads == 4
    assert choose_threads(None, environ={"OMP_NUM_THREADS": " "}, load=idle6).source == "free cores"
    # An explicit count wins over both.
    c = choose_threads(5, environ={"OMP_NUM_THREADS": "3"}, load=busy2)
    assert (c.threads, c.source) == (5, "requested")
    assert c.describe().startswith("5 threads (as requested)")
    assert choose_threads(1, environ={}, load=busy2).describe().startswith("1 thread (as requested)")
    # Without a load given: this process's measurement (core_load, once per process).
    assert choose_threads(None, environ={}).threads == core_load().free


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2x", None])
def test_choose_threads_rejects(bad):
    if bad is None:
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            choose_threads(None, environ={"OMP_NUM_THREADS": "many"})
        return
    with pytest.raises(ValueError, match="threads"):
        choose_threads(bad, environ={})
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
    monkeypatch.setattr(gt, "core_load", lambda refresh=False: CoreLoad(2, 2, 1.03, "/proc/stat", 0.1))
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
    assert ("default here: 1 = the free cores, measured at start-up: 2 allowed, 1 busy: other processes used "
            "1.03 cores (/proc/stat over 0.1 s)") in help_text
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


def test_main_applies_threads(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["generate", "--n", "1", "--out", str(tmp_path / "a"), "--device", "cpu", *DEMO, "--quiet",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        # The default: the free cores (a hand-made load: 3 allowed, one and a half busy -> 2 busy -> 1 free;
        # then idle -> 3), said on the command's first line.
        for used, want in ((1.6, 1), (0.2, 3)):
            load = CoreLoad(3, 3, used, "/proc/stat", 0.1)
            monkeypatch.setattr(gt, "core_load", lambda refresh=False, load=load: load)
            assert main(["preview", "--out", str(tmp_path / "b.png"), "--device", "cpu", *DEMO]) == 0
            assert torch.get_num_threads() == want
            busy = 3 - want
            assert f"preview: loading the pool and mocap (cpu; threads: {want} (3 allowed, {busy} busy))" in (
                capsys.readouterr().err)
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
