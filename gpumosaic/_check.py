"""One validation helper for public functions (house style rule 5).

``check_shape(x, ["B", "J", "2"], name="query")`` raises :class:`ShapeError` naming the argument with the
expected and actual shapes. Letters are free dimensions that must agree within one call when passed in
``dims``; digits are fixed sizes. Set ``GPUMOSAIC_CHECKS=0`` to switch the checks off in hot loops.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

__all__ = ["ShapeError", "check_shape", "check_finite", "check_seed", "checks_enabled", "unchecked"]

_state = threading.local()


class ShapeError(ValueError):
    """A tensor argument has the wrong number of dimensions or a wrong size."""


def checks_enabled() -> bool:
    """False when ``GPUMOSAIC_CHECKS=0`` or inside :func:`unchecked`."""
    return os.environ.get("GPUMOSAIC_CHECKS", "1") != "0" and not getattr(_state, "off", 0)


@contextmanager
def unchecked() -> Iterator[None]:
    """Skip the data-dependent checks (host syncs) of public stage functions in this thread.

    Used by :class:`~gpumosaic.engine.MosaicEngine` once it has validated its own inputs, so that the hot
    path makes no host-device round trip.
    """
    _state.off = getattr(_state, "off", 0) + 1
    try:
        yield
    finally:
        _state.off -= 1


def check_shape(x: torch.Tensor, shape: Sequence[str], name: str, dims: dict | None = None) -> dict:
    """Check ``x`` against ``shape`` (e.g. ``["B", "J", "2"]``); return the bound letter sizes.

    ``"*"`` as the first entry allows any number of leading dimensions.
    ``dims`` carries letters already bound by earlier arguments so that, e.g., ``J`` must agree.
    """
    dims = {} if dims is None else dims
    if not checks_enabled():
        # No validation, but callers may still read the bound sizes (shapes are host metadata: no sync).
        spec = [s for s in shape if s != "*"]
        for letter, size in zip(reversed(spec), reversed(tuple(getattr(x, "shape", ())))):
            if not letter.isdigit():
                dims.setdefault(letter, size)
        return dims
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor, got {type(x).__name__}")
    spec = list(shape)
    actual = tuple(x.shape)
    if spec and spec[0] == "*":
        spec = spec[1:]
        if x.dim() < len(spec):
            raise ShapeError(f"Expected {name} of shape (..., {', '.join(spec)}), got {actual}")
        actual = actual[x.dim() - len(spec):]
    elif x.dim() != len(spec):
        raise ShapeError(
            f"Expected {name} of shape ({', '.join(spec)}): expected {len(spec)} dimensions, "
            f"got {x.dim()} with shape {tuple(x.shape)}"
        )
    for letter, size in zip(spec, actual):
        if letter.isdigit():
            if int(letter) != size:
                raise ShapeError(f"Expected {name} of shape ({', '.join(spec)}), got {tuple(x.shape)}")
        elif letter in dims and dims[letter] != size:
            raise ShapeError(
                f"Expected {name} of shape ({', '.join(spec)}) with {letter}={dims[letter]}, "
                f"got {tuple(x.shape)}"
            )
        else:
            dims[letter] = size
    return dims


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (a host sync: public entry points only)."""
    if not checks_enabled():
        return
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"Expected finite values in {name}, got NaN or infinite entries")


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as a Python int after checking it is a non-negative integer (Python or NumPy, not bool);
    ``ValueError`` naming ``name`` otherwise. Used for seeds and epochs."""
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected {name} to be a non-negative integer, got {seed!r}")
    return int(seed)
