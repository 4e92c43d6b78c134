"""Argument parsing and source loading shared by the differentiable examples (``fit_pose.py``,
``learned_views.py``); run them as scripts (``python examples/fit_pose.py``), which puts this folder on
``sys.path``."""

from __future__ import annotations

import argparse

import torch

from gpumosaic.cli import load_sources


def add_common_arguments(ap: argparse.ArgumentParser, size: int, size_help: str, temperature: float,
                         temperature_help: str, out: str, threads_help: str = "torch CPU threads") -> None:
    """``--size``, ``--temperature``, ``--seed``, ``--threads``, ``--device``, ``--pool``, ``--mocap``,
    ``--out`` with each example's defaults."""
    ap.add_argument("--size", type=int, default=size, help=size_help)
    ap.add_argument("--temperature", type=float, default=temperature, help=temperature_help)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help=threads_help)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pool", default=None, help="KIND:PATH; default: the prepared real data, else the demo")
    ap.add_argument("--mocap", default=None, help="KIND:PATH; default: the prepared real data, else the demo")
    ap.add_argument("--out", default=out, help="figure path ('' for none)")


def setup(args: argparse.Namespace):
    """Threads, device, the example's ``torch.Generator`` (seeded with ``--seed``) and the sources.

    Returns:
        ``(device, generator, pool, mocap)``.
    """
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    pool, mocap = load_sources(args.pool, args.mocap, device)
    return device, generator, pool, mocap
