"""CPU thread settings: how many intra-op threads torch uses, and how its OpenMP threads wait.

Why. Torch's CPU kernels run on an OpenMP pool (libgomp in the Linux wheels). Between parallel regions
libgomp's threads spin (``GOMP_SPINCOUNT`` = 300,000 iterations when ``OMP_WAIT_POLICY`` is unset) before
they sleep. On a machine where another process uses a core, the spinning threads steal the very core the
thread they wait for needs: on 2 cores with one busy, ``gpumosaic generate`` fell from 16.7 mosaics/s (one
thread) to 8.9 with torch's default of two threads, and to 0.9 under heavier contention (issue 14;
``benchmarks/contention.py`` measures it). A passive wait policy (``OMP_WAIT_POLICY=PASSIVE``: threads sleep
at once) removes the collapse.

The default chosen here
    * threads: ``--threads N`` / ``requested`` when given; else the user's ``OMP_NUM_THREADS`` when set
      (``torchrun`` sets it to 1 per process); else the *free* cores (:func:`core_load`): the cores this
      process may use (its CPU affinity, ``os.sched_getaffinity``, capped by a cgroup v2 CPU quota,
      ``/sys/fs/cgroup/cpu.max``) less the cores other processes keep busy, at least 1.
    * busy cores: measured once per process, at the first default choice, from two ``/proc/stat``
      snapshots 0.1 s apart (:data:`LOAD_WINDOW_S`; the process sleeps meanwhile): the non-idle jiffies
      (idle and iowait count as idle, steal as busy) of the CPUs in the affinity, less this process's own
      CPU time, in core-equivalents ``b``; ``ceil(b - 0.5)`` cores count as busy (a core more than half
      used). Why 0.5: torch splits a parallel region evenly between its threads and waits for the slowest;
      a thread on a core that another process holds a fraction ``f`` of the time runs its half at ``1 - f``
      speed, so two threads take ``max(1/2, 1/(2(1 - f)))`` of one thread's time: equal at ``f = 0.5``,
      slower above.
      The sum over the CPUs (not a per-CPU test) is used because the scheduler moves a competitor between
      cores: one busy process can show as 50 % on each of two. Without ``/proc/stat`` (macOS, Windows) the
      1-minute load average (``os.getloadavg``) stands in for ``b``; without either, no core counts busy.
      A short window can catch a burst or miss a competitor that starts later: pass ``--threads`` (or set
      ``OMP_NUM_THREADS``) where the load is known.
    * wait policy: ``OMP_WAIT_POLICY=PASSIVE`` unless the user set ``OMP_WAIT_POLICY``. libgomp reads it
      once, when it is loaded, i.e. at ``import torch``; setting it later changes nothing (measured:
      ``OMP_DISPLAY_ENV=VERBOSE`` shows ``GOMP_SPINCOUNT = '300000'`` when it is set after ``import torch``
      and ``'0'`` when set before). The ``gpumosaic`` command sets it before it imports torch (the package's
      ``__init__`` imports nothing heavy for this reason).

Python API: the same, in a script::

    import gpumosaic.threads as gt
    gt.prefer_passive_wait()        # before the first `import torch` in the process (anywhere)
    import torch
    choice = gt.configure_threads() # or configure_threads(4); returns what it chose and why
    print(choice.describe())

DataLoader workers: torch's DataLoader runs each worker with one thread (``torch.set_num_threads(1)``)
before ``worker_init_fn``; :class:`WorkerThreads` sets another count per worker (more than one only in
spawned or forkserver workers: OpenMP deadlocks in forked ones). The process then runs
``main threads + num_workers × per-worker threads``; keep that at or below the free cores (e.g.
``configure_threads(max(1, core_load().free - num_workers))`` in the main process, before the workers start,
and ``WorkerThreads(1)``). The default alone (``configure_threads()``) does not know about workers that have
not started yet: measured before them, it gives the main process every free core.

This module does not import torch at import time (only inside the functions that set torch's threads), so
that :func:`prefer_passive_wait` can run before torch is loaded.
"""

from __future__ import annotations

import argparse
import math
import operator
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, MutableMapping

__all__ = [
    "CoreLoad",
    "ThreadChoice",
    "WorkerThreads",
    "add_threads_option",
    "available_cores",
    "cgroup_cpu_limit",
    "choose_threads",
    "configure_threads",
    "core_load",
    "cpu_jiffies",
    "busy_core_equivalents",
    "measure_core_load",
    "forked",
    "openmp_loaded",
    "prefer_passive_wait",
    "wait_policy",
]

WAIT_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "OMP_NUM_THREADS"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_STAT = Path("/proc/stat")
LOAD_WINDOW_S = 0.1  # seconds between the two /proc/stat snapshots (10 jiffies per CPU at USER_HZ = 100)
BUSY_THRESHOLD = 0.5  # a core counts as busy when other processes use more than this fraction of it

# What prefer_passive_wait found, for describe(): None (never called), "set" (set before OpenMP was loaded),
# "late" (set, but OpenMP was already loaded with the old value), "user" (the user's own value kept).
_wait_state: str | None = None
_IMPORT_PID = os.getpid()
_core_load: "CoreLoad | None" = None  # core_load()'s measurement, once per process


# --------------------------------------------------------------------------------------------------------
# Cores
# --------------------------------------------------------------------------------------------------------


def cgroup_cpu_limit(path: str | os.PathLike = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in cores (``quota / period`` of ``cpu.max``), or ``None`` when unlimited/absent."""
    try:
        fields = Path(path).read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cores(affinity: set[int] | None = None, cpu_limit: float | None = None) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (rounded up), >= 1.

    Args:
        affinity: CPU ids (default ``os.sched_getaffinity(0)``, or ``os.cpu_count()`` cores where the
            platform has no affinity call).
        cpu_limit: a quota in cores (default :func:`cgroup_cpu_limit`); ``None``: no quota.
    """
    if affinity is None:
        try:
            count = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            count = os.cpu_count() or 1
    else:
        count = len(affinity)
    limit = cgroup_cpu_limit() if cpu_limit is None else cpu_limit
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


# --------------------------------------------------------------------------------------------------------
# Free cores: how many of the allowed cores other processes keep busy
# --------------------------------------------------------------------------------------------------------


def read_proc_stat(path: str | os.PathLike = PROC_STAT) -> str | None:
    """The text of ``/proc/stat``, or ``None`` where it cannot be read (not Linux)."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_jiffies(text: str) -> dict[int, tuple[int, int]]:
    """Per-CPU ``(total, idle)`` jiffies from the ``cpuN`` lines of a ``/proc/stat`` text.

    ``total`` sums user, nice, system, idle, iowait, irq, softirq and steal (guest time is already inside
    user and nice); ``idle`` is idle + iowait. Lines that do not parse are skipped (the ``cpu`` total line
    too); missing trailing columns (old kernels) count as 0.
    """
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or not fields[0][3:].isdigit():
            continue
        try:
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            continue
        if len(values) < 4:
            continue
        values += [0] * (8 - len(values))
        out[int(fields[0][3:])] = (sum(values), values[3] + values[4])
    return out


def busy_core_equivalents(before: str, after: str, cpus: Iterable[int], own_jiffies: float = 0.0) -> float | None:
    """Cores' worth of CPU that *other* processes used on ``cpus`` between two ``/proc/stat`` snapshots.

    ``(Σ busy jiffies − own_jiffies) / (Σ total jiffies / n)`` over the ``n`` CPUs of ``cpus`` present in
    both snapshots, where busy = total − idle: the denominator is the window's length in jiffies per CPU.
    Clipped to ``[0, n]``.

    Args:
        before, after: ``/proc/stat`` texts, ``after`` taken later.
        cpus: the CPU ids to count (this process's affinity).
        own_jiffies: this process's CPU time over the window, in jiffies (``os.sysconf("SC_CLK_TCK")`` per
            second), since it ran on the same CPUs.

    Returns:
        The core-equivalents, or ``None`` when no CPU of ``cpus`` advanced between the snapshots.
    """
    a, b = cpu_jiffies(before), cpu_jiffies(after)
    busy = total = 0
    n = 0
    for cpu in set(cpus):
        if cpu in a and cpu in b:
            d_total, d_idle = b[cpu][0] - a[cpu][0], b[cpu][1] - a[cpu][1]
            if d_total < 0 or d_idle < 0:  # counters reset (CPU hot-plugged): this CPU says nothing
                continue
            busy += d_total - d_idle
            total += d_total
            n += 1
    if n == 0 or total == 0:
        return None
    return min(float(n), max(0.0, (busy - own_jiffies) / (total / n)))


@dataclass(frozen=True)
class CoreLoad:
    """The cores this process may use, and how many of them other processes keep busy.

    Attributes:
        cpus: the CPUs of this process's affinity (those measured).
        allowed: :func:`available_cores`: ``cpus`` capped by a cgroup quota.
        used: the CPU other processes used on those CPUs, in core-equivalents (``None``: not measured).
        source: where ``used`` came from: ``"/proc/stat"``, ``"load average"``, ``"one core"`` (nothing
            to measure) or ``"unknown"`` (no source: no core counts as busy).
        window_s: the measuring window (``/proc/stat`` only), seconds.
    """

    cpus: int
    allowed: int
    used: float | None
    source: str
    window_s: float = 0.0

    @property
    def busy(self) -> int:
        """Whole cores counted busy: ``ceil(used - 0.5)`` (a core more than half used), within ``[0, cpus]``."""
        if self.used is None:
            return 0
        return min(self.cpus, max(0, math.ceil(self.used - BUSY_THRESHOLD)))

    @property
    def free(self) -> int:
        """The default thread count: ``min(allowed, cpus - busy)``, at least 1."""
        return max(1, min(self.allowed, self.cpus - self.busy))

    def describe(self) -> str:
        """E.g. ``"2 allowed, 1 busy: other processes used 0.98 cores (/proc/stat over 0.1 s)"``."""
        head = f"{self.allowed} allowed, {self.busy} busy"
        if self.used is None:
            return f"{head}: {'nothing to measure' if self.source == 'one core' else 'load not measurable here'}"
        over = f" over {self.window_s:g} s" if self.source == "/proc/stat" else ""
        return f"{head}: other processes used {self.used:.2f} cores ({self.source}{over})"


def measure_core_load(window_s: float = LOAD_WINDOW_S, *, affinity: set[int] | None = None,
                      cpu_limit: float | None = None,
                      read_stat: Callable[[], str | None] = read_proc_stat,
                      sleep: Callable[[float], object] = time.sleep,
                      cpu_time: Callable[[], float] = time.process_time,
                      loadavg: Callable[[], tuple[float, float, float]] | None = None,
                      clock_ticks: float | None = None) -> CoreLoad:
    """Measure now how many of the allowed cores are busy (see the module docstring); no caching.

    Every source is a parameter, so that tests can feed hand-made snapshots.

    Args:
        window_s: seconds between the two ``/proc/stat`` snapshots (this process sleeps meanwhile).
        affinity: CPU ids (default ``os.sched_getaffinity(0)``, or ``range(os.cpu_count())``).
        cpu_limit: a cgroup quota in cores (default :func:`cgroup_cpu_limit`).
        read_stat: returns a ``/proc/stat`` text or ``None`` (default :func:`read_proc_stat`); called twice.
        sleep, cpu_time: ``time.sleep`` and this process's CPU seconds (``time.process_time``), to subtract
            its own use over the window.
        loadavg: the fallback without ``/proc/stat`` (default ``os.getloadavg`` where it exists); its
            1-minute value is taken as the cores used.
        clock_ticks: jiffies per second of ``/proc/stat`` (default ``os.sysconf("SC_CLK_TCK")``, else 100).
    """
    if affinity is None:
        try:
            affinity = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            affinity = set(range(os.cpu_count() or 1))
    cpus = max(1, len(affinity))
    allowed = available_cores(affinity, cpu_limit)
    if cpus == 1 or allowed == 1:
        return CoreLoad(cpus, allowed, None, "one core")
    before = read_stat()
    if before is not None:
        start = cpu_time()
        sleep(window_s)
        after = read_stat()
        own_s = cpu_time() - start
        if after is not None:
            if clock_ticks is None:
                try:
                    clock_ticks = float(os.sysconf("SC_CLK_TCK"))
                except (AttributeError, ValueError, OSError):
                    clock_ticks = 100.0
            used = busy_core_equivalents(before, after, affinity, own_s * clock_ticks)
            if used is not None:
                return CoreLoad(cpus, allowed, used, "/proc/stat", window_s)
    if loadavg is None:
        loadavg = getattr(os, "getloadavg", None)
    if loadavg is not None:
        try:
            return CoreLoad(cpus, allowed, min(float(cpus), max(0.0, float(loadavg()[0]))), "load average")
        except OSError:
            pass
    return CoreLoad(cpus, allowed, None, "unknown")


def core_load(refresh: bool = False) -> CoreLoad:
    """:func:`measure_core_load`, measured once per process (at the first call) and kept.

    The default thread count is chosen at start-up, before this process's own work loads the machine;
    ``refresh=True`` measures again (costs :data:`LOAD_WINDOW_S` of sleep).
    """
    global _core_load
    if _core_load is None or refresh:
        _core_load = measure_core_load()
    return _core_load


# --------------------------------------------------------------------------------------------------------
# Wait policy
# --------------------------------------------------------------------------------------------------------


def openmp_loaded() -> bool:
    """Whether an OpenMP runtime is already loaded in this process (then it has read ``OMP_WAIT_POLICY``).

    Reads ``/proc/self/maps`` on Linux (libgomp, libiomp, libomp); elsewhere: whether torch is imported.
    """
    try:
        with open("/proc/self/maps") as maps:
            return any(name in line for line in maps for name in ("libgomp", "libiomp", "libomp"))
    except OSError:
        return "torch" in sys.modules


def prefer_passive_wait(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set ``OMP_WAIT_POLICY``; call before ``import torch``.

    Args:
        environ: the mapping to edit (default ``os.environ``, whose outcome :func:`wait_policy` reports).

    Returns:
        True when the environment now asks for a passive wait *and* no OpenMP runtime was loaded yet (so it
        takes effect); False when the user's value was kept or torch was imported first (then the policy
        libgomp read at load time stays: set the variable in the shell, or call this before the first
        ``import torch``).
    """
    global _wait_state
    env = os.environ if environ is None else environ
    if environ is None and _wait_state in ("set", "late") and env.get(WAIT_ENV) == "PASSIVE":
        state = _wait_state  # called again: the value is ours, not the user's
    elif WAIT_ENV in env:
        state = "user"
    else:
        env[WAIT_ENV] = "PASSIVE"
        state = "late" if openmp_loaded() else "set"
    if environ is None:
        _wait_state = state
    return state == "set"


def wait_policy(environ: Mapping[str, str] | None = None) -> str:
    """A sentence on the OpenMP wait policy in effect (for ``--help`` and logs)."""
    env = os.environ if environ is None else environ
    if _wait_state == "set":
        return "OMP_WAIT_POLICY=PASSIVE, set before torch started"
    if _wait_state == "late":
        return ("OpenMP's default spin-wait: torch was imported before OMP_WAIT_POLICY=PASSIVE could be set "
                "(set it in the shell, or call prefer_passive_wait() before `import torch`)")
    if WAIT_ENV in env:
        return f"OMP_WAIT_POLICY={env[WAIT_ENV]}, yours"
    return "OpenMP's default spin-wait (OMP_WAIT_POLICY unset)"


# --------------------------------------------------------------------------------------------------------
# Thread count
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count chosen, and where it came from.

    Attributes:
        threads: the count (>= 1).
        source: ``"requested"`` (``--threads`` / an argument), ``"OMP_NUM_THREADS"`` (the user's
            environment) or ``"free cores"`` (:attr:`CoreLoad.free`).
        cores: :func:`available_cores` (the cores this process may use, busy or not).
        load: the :class:`CoreLoad` the default came from (``None`` for the other sources: not measured).
    """

    threads: int
    source: str
    cores: int
    load: CoreLoad | None = None

    def summary(self) -> str:
        """Short, for logs: ``"threads: 1 (2 allowed, 1 busy)"``, ``"threads: 4 (requested)"``."""
        why = f"{self.load.allowed} allowed, {self.load.busy} busy" if self.load is not None else self.source
        return f"threads: {self.threads} ({why})"

    def describe(self) -> str:
        """One line: the count, why, and the wait policy."""
        if self.load is not None:
            why = f"the free cores: {self.load.describe()}"
        else:
            why = {"requested": "as requested",
                   "OMP_NUM_THREADS": f"from OMP_NUM_THREADS; {self.cores} cores allowed"}.get(self.source, self.source)
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({why}); {wait_policy()}"


def _positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (an int, or a string of decimal digits), else ValueError naming ``name``."""
    n = None
    if isinstance(value, str):
        n = int(value.strip()) if value.strip().isdigit() else None
    elif not isinstance(value, bool):
        try:
            n = operator.index(value)
        except TypeError:
            n = None
    if n is None or n < 1:
        raise ValueError(f"Expected {name} to be a positive integer, got {value!r}")
    return n


def choose_threads(requested: int | None = None, environ: Mapping[str, str] | None = None,
                   load: CoreLoad | None = None) -> ThreadChoice:
    """Choose the intra-op thread count without applying it (see the module docstring for the order).

    Args:
        requested: an explicit count >= 1, or ``None``.
        environ: the environment to read ``OMP_NUM_THREADS`` from (default ``os.environ``).
        load: the cores and their load for the default (default :func:`core_load`, measured once per
            process; only consulted when neither ``requested`` nor ``OMP_NUM_THREADS`` decides).

    Raises:
        ValueError: ``requested`` or a set ``OMP_NUM_THREADS`` is not a positive integer (named).
    """
    env = os.environ if environ is None else environ
    if requested is not None:
        threads = _positive_int(requested, "threads")
        return ThreadChoice(threads, "requested", load.allowed if load else available_cores())
    if env.get(THREADS_ENV, "").strip():  # OpenMP allows a nested list "4,2": its first level is ours
        threads = _positive_int(env[THREADS_ENV].split(",")[0], THREADS_ENV)
        return ThreadChoice(threads, "OMP_NUM_THREADS", load.allowed if load else available_cores())
    load = core_load() if load is None else load
    return ThreadChoice(load.free, "free cores", load.allowed, load)


def configure_threads(requested: int | None = None) -> ThreadChoice:
    """Choose (:func:`choose_threads`) and apply the thread count: ``torch.set_num_threads``.

    Also calls :func:`prefer_passive_wait` (effective only when torch is not imported yet; see its note).
    Returns the :class:`ThreadChoice`.
    """
    if _wait_state is None:
        prefer_passive_wait()
    choice = choose_threads(requested)
    import torch

    torch.set_num_threads(choice.threads)
    return choice


class WorkerThreads:
    """``worker_init_fn`` for a DataLoader: each worker runs ``threads`` torch threads (picklable).

    More than one thread per worker needs workers that are not forked (``multiprocessing_context="spawn"``
    or ``"forkserver"``): GNU OpenMP (torch's on Linux) is not fork-safe, and a forked child whose parent
    already ran a parallel region deadlocks in its first parallel region with more than one thread
    (reproduced here with torch 2.14). Under fork, ``WorkerThreads(n > 1)`` therefore raises instead of
    hanging; ``WorkerThreads(1)`` (torch's own per-worker default) works with any start method.

    Example::

        loader = DataLoader(dataset, batch_size=None, num_workers=2, worker_init_fn=WorkerThreads(2),
                            multiprocessing_context="spawn")
    """

    def __init__(self, threads: int = 1) -> None:
        self.threads = _positive_int(threads, "threads")

    def __call__(self, worker_id: int) -> None:
        if self.threads > 1 and forked():
            raise RuntimeError(
                f"Expected a DataLoader multiprocessing_context of 'spawn' or 'forkserver' for "
                f"WorkerThreads({self.threads}): OpenMP deadlocks with more than one thread in a forked worker; "
                f"got a forked worker (use WorkerThreads(1) with fork)"
            )
        import torch

        torch.set_num_threads(self.threads)

    def __repr__(self) -> str:
        return f"WorkerThreads({self.threads})"


def forked() -> bool:
    """Whether this process is a fork of the one that imported this module (e.g. a forked DataLoader worker).

    A spawned or forkserver child imports the module afresh, so its import-time pid is its own.
    """
    return os.getpid() != _IMPORT_PID


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def _threads_arg(text: str) -> int:
    try:
        return _positive_int(text, "--threads")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def threads_help() -> str:
    """The ``--threads`` help text: the count and wait policy this process chooses by default, and why."""
    try:
        choice = choose_threads()
        default = (f"{choice.threads}, from OMP_NUM_THREADS" if choice.load is None else
                   f"{choice.threads} = the free cores, measured at start-up: {choice.load.describe()}")
    except ValueError as err:
        default = f"none: {err}"
    return f"torch CPU threads (default here: {default}; {wait_policy()})"


def add_threads_option(subparsers: argparse.Action, exclude: tuple[str, ...] = ()) -> None:
    """Add ``--threads N`` to every command of ``subparsers`` (``parser.add_subparsers()``'s result).

    Commands named in ``exclude``, and those that define their own ``--threads``, are left alone. The
    parsed value is ``None`` when the option is not given (then :func:`configure_threads` chooses).
    """
    text = threads_help()
    for name, parser in subparsers.choices.items():
        if name in exclude:
            continue
        try:
            parser.add_argument("--threads", type=_threads_arg, default=None, metavar="N", help=text)
        except argparse.ArgumentError:  # its own --threads, or an alias of a command already done
            pass
