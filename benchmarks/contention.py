"""Throughput under CPU contention: old thread defaults against the new ones, side by side (issue 14).

A busy-loop competitor process (``while True: pass``) is pinned to one core for the whole run; then, in
several rounds, each condition runs in a fresh subprocess (the OpenMP wait policy is read when torch is
loaded, so it cannot change inside one process) and times mosaics/s of the CPU engine:

* ``old``: torch's default thread count, ``OMP_WAIT_POLICY`` unset (libgomp spins 300,000 iterations
  before a waiting thread sleeps): what gpumosaic did before issue 14;
* ``new``: :func:`gpumosaic.threads.configure_threads` with no count, as the ``gpumosaic`` command does:
  the free cores (those this process may use less those other processes keep busy, from 0.1 s of
  ``/proc/stat`` at start-up: the competitor counts), ``OMP_WAIT_POLICY=PASSIVE`` set before torch is
  imported; the run records the choice and why (``thread_choice``);
* ``threads=N`` for each ``--threads N``: the same with an explicit count (``gpumosaic ... --threads N``).

The conditions' order rotates from round to round, so that a slow spell of the machine does not fall on one
condition only. Each run: the demo pool and mocap (or ``--pool`` / ``--mocap``), queries drawn as
``gpumosaic generate`` draws them (``sample_views`` + ``render_views`` per batch; no files written), one
warm-up batch, then batches of ``--batch-size`` until ``--seconds`` have passed (at least one). Reported per
condition: the median mosaics/s over rounds, the mean with a 95 % t-interval, CPU seconds per wall second
(spinning threads show up here); then the per-round ratios new/old, new/best fixed count and new/1 thread
(geometric mean of the paired ratios, 95 % t-interval on their logs); and the 1-minute load average before
every run.

    nice -n 10 python benchmarks/contention.py                  # 1 competitor, threads 1..cores, 5 rounds
    python benchmarks/contention.py --competitors 0 --rounds 3  # the same without a competitor

Writes ``benchmarks/results/contention_cpu_<date>.json``. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLEARED_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OMP_PROC_BIND")
# t quantiles (two-sided 95 %) for 1..30 degrees of freedom; normal beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [float("nan")] * 3


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95 % t-interval (nan half-width for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan"), float("nan")
    t = _T975[len(values) - 2] if len(values) - 1 <= len(_T975) else 1.96
    h = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - h, m + h


def ratio_ci(num: list[float], den: list[float]) -> dict:
    """Geometric mean of the paired ratios num/den with a 95 % t-interval on their logs."""
    logs = [math.log(a / b) for a, b in zip(num, den) if a > 0 and b > 0]
    m, lo, hi = mean_ci(logs)
    return {"ratio": math.exp(m), "ci95": [math.exp(lo), math.exp(hi)], "per_round": [math.exp(x) for x in logs]}


# ----------------------------------------------------------------------------------------------------------
# Child: one condition in a fresh process
# ----------------------------------------------------------------------------------------------------------


def child(args) -> None:
    sys.path.insert(0, str(REPO))
    condition = args.child
    if condition != "old":  # before torch is imported, exactly as the gpumosaic command does
        from gpumosaic.threads import prefer_passive_wait

        prefer_passive_wait()
    import resource

    import torch

    wait_env = os.environ.get("OMP_WAIT_POLICY")  # as libgomp read it (the cli import below sets it too late)

    from gpumosaic import MosaicEngine
    from gpumosaic.camera import render_views, sample_views
    from gpumosaic.cli import load_sources

    choice = None
    if condition == "new":
        from gpumosaic.threads import configure_threads

        choice = configure_threads().describe()  # measures the free cores here (0.1 s of /proc/stat)
    elif condition.startswith("threads="):
        from gpumosaic.threads import configure_threads

        configure_threads(int(condition.split("=", 1)[1]))
    pool, mocap = load_sources(args.pool, args.mocap, torch.device("cpu"), notice=lambda _: None)
    engine = MosaicEngine(pool, skeleton=pool.skeleton, device="cpu")
    gen = torch.Generator().manual_seed(args.seed)

    def batch():
        idx = torch.randint(len(mocap), (args.batch_size,), generator=gen)
        az, el = sample_views(args.batch_size, 1, generator=gen)
        views = render_views(mocap.poses[idx], mocap.skeleton, az, el)
        return engine(views.pose2d[:, 0], views.occluded[:, 0]).images

    batch()  # warm-up
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    n = 0
    while True:
        batch()
        n += args.batch_size
        elapsed = time.perf_counter() - t0
        if elapsed >= args.seconds:  # at least one timed batch
            break
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    print(json.dumps({
        "condition": condition, "mosaics": n, "seconds": elapsed, "mosaics_per_s": n / elapsed,
        "cpu_per_wall": cpu / elapsed, "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": wait_env, "pool_size": len(pool), "thread_choice": choice,
    }))


# ----------------------------------------------------------------------------------------------------------
# Parent: competitor, rounds, summary
# ----------------------------------------------------------------------------------------------------------


def start_competitors(count: int, cores: list[int]) -> list[subprocess.Popen]:
    procs = []
    for k in range(count):
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        core = cores[-1 - (k % len(cores))]
        os.sched_setaffinity(proc.pid, {core})
        procs.append(proc)
    return procs


def run_condition(condition: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", condition, "--seconds", str(args.seconds),
           "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    cmd += (["--pool", args.pool] if args.pool else []) + (["--mocap", args.mocap] if args.mocap else [])
    before = loadavg()
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{condition} failed:\n{out.stderr[-3000:]}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec.update(loadavg_before=before, loadavg_after=loadavg(), process_s=time.perf_counter() - t)
    return rec


def summarise(runs: list[dict], conditions: list[str], fixed: list[str]) -> dict:
    by = {c: [r["mosaics_per_s"] for r in runs if r["condition"] == c] for c in conditions}
    summary = {}
    for c in conditions:
        m, lo, hi = mean_ci(by[c])
        cpu = [r["cpu_per_wall"] for r in runs if r["condition"] == c]
        summary[c] = {"median": statistics.median(by[c]), "mean": m, "ci95": [lo, hi], "runs": by[c],
                      "cpu_per_wall_median": statistics.median(cpu)}
    best = max(fixed, key=lambda c: summary[c]["median"]) if fixed else None
    ratios = {}
    if "old" in by:
        ratios["new/old"] = ratio_ci(by["new"], by["old"])
    if best:
        ratios[f"new/best fixed ({best})"] = ratio_ci(by["new"], by[best])
    if "threads=1" in by:
        ratios["new/threads=1"] = ratio_ci(by["new"], by["threads=1"])
    return {"conditions": summary, "best_fixed": best, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=None, metavar="N",
                    help="fixed thread counts compared with the defaults (default: 1 .. the cores this process "
                         "may use)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all conditions (order rotated)")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per run (after one warm-up batch)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--competitors", type=int, default=1,
                    help="busy-loop processes, each pinned to one core (from the last core down)")
    ap.add_argument("--pool", default="demo", help="as gpumosaic --pool (default: the embedded demo pool)")
    ap.add_argument("--mocap", default="demo", help="as gpumosaic --mocap (default: the embedded demo mocap)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is abandoned")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(REPO))
    from gpumosaic.threads import available_cores

    cores = sorted(os.sched_getaffinity(0))
    fixed_counts = args.threads or list(range(1, available_cores() + 1))
    fixed = [f"threads={n}" for n in fixed_counts]
    conditions = ["old", "new", *fixed]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the competitors
    competitors = start_competitors(args.competitors, cores)
    runs = []
    t_start = time.perf_counter()
    now = _dt.datetime.now(_dt.timezone.utc)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"contention_cpu_{now.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""

    def write(complete: bool) -> dict:
        """The JSON so far (rewritten after every run, so that a stopped run keeps what it measured)."""
        done = {r["condition"] for r in runs}
        summary = summarise(runs, [c for c in conditions if c in done], [c for c in fixed if c in done]) \
            if {"new"} <= done else None
        loads = [r["loadavg_before"][0] for r in runs] or [float("nan")]
        path.write_text(json.dumps({
            "benchmark": "contention", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": now.isoformat(timespec="seconds"), "git_commit": commit or None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "affinity": cores,
            "niceness": os.nice(0), "complete": complete, "rounds_done": len(runs) / len(conditions),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
            "conditions": conditions, "wall_s": time.perf_counter() - t_start, "runs": runs, "summary": summary,
            "loadavg_before_runs": {"median": statistics.median(loads), "min": min(loads), "max": max(loads)},
        }, indent=1))
        return summary

    try:
        time.sleep(1.0)
        for r in range(args.rounds):
            order = conditions[r % len(conditions):] + conditions[: r % len(conditions)]
            for c in order:
                rec = run_condition(c, args)
                rec["round"] = r
                runs.append(rec)
                write(complete=False)
                print(f"round {r} {c:>10}: {rec['mosaics_per_s']:6.2f} mosaics/s  threads {rec['torch_threads']}  "
                      f"cpu/wall {rec['cpu_per_wall']:.2f}  load {rec['loadavg_before'][0]:.2f}", flush=True)
    finally:
        for proc in competitors:
            proc.kill()
            proc.wait()
    summary = write(complete=True)
    print(f"\n{'condition':>10} {'median':>8} {'mean [95% CI]':>22} {'cpu/wall':>9}   (mosaics/s)")
    for c, s in summary["conditions"].items():
        print(f"{c:>10} {s['median']:8.2f} {s['mean']:8.2f} [{s['ci95'][0]:5.2f}, {s['ci95'][1]:5.2f}] "
              f"{s['cpu_per_wall_median']:9.2f}")
    for name, rat in summary["ratios"].items():
        print(f"{name}: {rat['ratio']:.2f} [{rat['ci95'][0]:.2f}, {rat['ci95'][1]:.2f}] "
              f"(per round: {', '.join(f'{x:.2f}' for x in rat['per_round'])})")
    loads = [r["loadavg_before"][0] for r in runs]
    print(f"1-min load average before the runs: median {statistics.median(loads):.2f}, "
          f"range {min(loads):.2f}-{max(loads):.2f} ({os.cpu_count()} cores, {args.competitors} competitor(s))")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
