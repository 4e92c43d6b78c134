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
      (``torchrun`` sets it to 1 per process); else the cores this process may use: its CPU affinity
      (``os.sched_getaffinity``), capped by a cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``) when one
      is set.
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
``main threads + num_workers × per-worker threads``; keep that at or below :func:`available_cores` (e.g.
``configure_threads(max(1, cores - num_workers))`` in the main process and ``WorkerThreads(1)``).

This module does not import torch at import time (only inside the functions that set torch's threads), so
that :func:`prefer_passive_wait` can run before torch is loaded.
"""

from __future__ import annotations

import argparse
import math
import operator
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

__all__ = [
    "ThreadChoice",
    "WorkerThreads",
    "add_threads_option",
    "available_cores",
    "cgroup_cpu_limit",
    "choose_threads",
    "configure_threads",
    "forked",
    "openmp_loaded",
    "prefer_passive_wait",
    "wait_policy",
]

WAIT_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "OMP_NUM_THREADS"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

# What prefer_passive_wait found, for describe(): None (never called), "set" (set before OpenMP was loaded),
# "late" (set, but OpenMP was already loaded with the old value), "user" (the user's own value kept).
_wait_state: str | None = None
_IMPORT_PID = os.getpid()


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
            environment) or ``"cores"`` (:func:`available_cores`).
        cores: :func:`available_cores` when chosen.
    """

    threads: int
    source: str
    cores: int

    def describe(self) -> str:
        """One line: the count, why, and the wait policy."""
        why = {
            "requested": "as requested",
            "OMP_NUM_THREADS": f"from OMP_NUM_THREADS; {self.cores} cores available",
            "cores": "the cores this process may use (CPU affinity and cgroup quota)",
        }[self.source]
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
                   cores: int | None = None) -> ThreadChoice:
    """Choose the intra-op thread count without applying it (see the module docstring for the order).

    Args:
        requested: an explicit count >= 1, or ``None``.
        environ: the environment to read ``OMP_NUM_THREADS`` from (default ``os.environ``).
        cores: the available cores (default :func:`available_cores`).

    Raises:
        ValueError: ``requested`` or a set ``OMP_NUM_THREADS`` is not a positive integer (named).
    """
    env = os.environ if environ is None else environ
    cores = available_cores() if cores is None else int(cores)
    if requested is not None:
        return ThreadChoice(_positive_int(requested, "threads"), "requested", cores)
    if env.get(THREADS_ENV, "").strip():  # OpenMP allows a nested list "4,2": its first level is ours
        return ThreadChoice(_positive_int(env[THREADS_ENV].split(",")[0], THREADS_ENV), "OMP_NUM_THREADS", cores)
    return ThreadChoice(cores, "cores", cores)


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
    """The ``--threads`` help text: the count and wait policy this process would choose now."""
    try:
        choice = choose_threads()
        default = (f"{choice.threads}, from OMP_NUM_THREADS" if choice.source == "OMP_NUM_THREADS" else
                   f"{choice.threads} = the cores this process may use, from its CPU affinity and cgroup quota")
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
