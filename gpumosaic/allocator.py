"""glibc ``malloc`` settings that keep the engine's CPU working memory in the process between batches (issue 11).

Why. A batch of the hard engine allocates and frees some tens of tensors of 1–30 MB (probability maps,
window weights, sparse-warp samples). With glibc's defaults such a block either comes from ``mmap`` and goes
back to the system when freed (the dynamic mmap threshold starts at 128 KiB), or sits at the top of the heap,
which ``free`` trims back to the system as soon as more than twice that threshold is free. Either way the next
batch touches fresh pages: measured on one CPU thread at N = 1,000, B = 8, about 12,000 minor page faults and
24 ms of system time per mosaic on top of 50 ms of user time; with the settings below, 26 page faults and no
system time, the same user time (docs/performance.md, "Allocator").

What. :func:`retain_freed_memory` sets, once per process, ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's largest:
blocks up to that size come from the heap) and ``M_TRIM_THRESHOLD`` to 256 MiB (up to that much free memory
at the top of the heap stays in the process instead of going back to the system). Results are unchanged; the
cost is that the process keeps up to 256 MiB of freed heap for reuse (a batch of 8 mosaics works in about
200 MB). Blocks above 32 MiB still come from ``mmap`` (e.g. the (B, J, S, S) maps for B above about 12).
:class:`~gpumosaic.MosaicEngine` calls it when built on the CPU.

Left alone when: the C library is not glibc (musl, macOS, Windows: nothing to do), the user set
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_TOP_PAD_`` (their choice wins), or
``GPUMOSAIC_MALLOC=default`` (opt out).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "OPT_OUT_ENV", "retain_freed_memory", "allocator_state"]

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Bytes: blocks up to this size come from the heap (glibc caps the value at 32 MiB on 64-bit systems)."""
TRIM_THRESHOLD = 256 << 20
"""Bytes of free memory at the top of the heap kept in the process."""
OPT_OUT_ENV = "GPUMOSAIC_MALLOC"
_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_state: str | None = None  # None: not tried; else what retain_freed_memory found


def allocator_state() -> str | None:
    """What :func:`retain_freed_memory` did in this process: ``None`` (not called), ``"set"``, ``"opt-out"``,
    ``"user"`` (the user's ``MALLOC_*`` variables kept), ``"not-glibc"`` or ``"failed"`` (``mallopt``
    refused)."""
    return _state


def retain_freed_memory(environ=None) -> bool:
    """Set glibc's mmap and trim thresholds (module docstring) once per process; True when they are set.

    Args:
        environ: the environment to read (``os.environ`` when ``None``).
    """
    global _state
    if _state is not None:
        return _state == "set"
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_ENV, "").strip().lower() == "default":
        _state = "opt-out"
    elif any(name in env for name in _USER_ENV):
        _state = "user"
    elif not sys.platform.startswith("linux"):
        _state = "not-glibc"
    else:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # only glibc has it (musl's mallopt does nothing)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _state = "not-glibc"
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            _state = "set" if ok else "failed"
    return _state == "set"
