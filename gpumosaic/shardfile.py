"""Tar shard files of :mod:`gpumosaic.export`: writer locks, per-sample checksums, verification.

Locks (:class:`ExportLock`)
    ``DIR/export.lock`` is an empty file on which every exporting process takes POSIX record locks
    (:func:`fcntl.lockf`): byte 0 while it reads or writes ``export.json`` (held briefly; other writers wait),
    byte ``1 + s`` for as long as it owns shard ``s`` (taken without waiting: a second writer of the same
    shard is refused with :class:`ExportLockedError`, naming the shard and the lock file). The ranks of one
    ``torchrun`` launch own disjoint shards, so they never conflict; two separate exports into one folder
    do. The kernel drops a process's locks when it exits, however it exits (``kill -9`` included), so a
    lock is never stale. Record locks are per process: two exports started from *threads* of one process
    are not told apart. Network file systems honour them where they support POSIX locks (NFSv4 does); on a
    platform without :mod:`fcntl` no lock is taken (a :class:`RuntimeWarning` says so).

Shard index (``shard-XXXXXX.index.json``, written next to ``shard-XXXXXX.tar``)
    ``{"format": "gpumosaic.shard-index", "version": 1, "shard": s, "export": <export.json digest>,
    "size": <tar bytes>, "sha256": <tar sha256>, "members": [[name, size, sha256], ...]}``
    with one entry per tar member (every sample's image, JSON and label files). The index is renamed into
    place before its tar, so a ``.tar`` name only appears once the shard and its index are complete.
    :func:`verify_shard` re-hashes the tar against its index (a bit flip anywhere is found);
    :func:`member_checksums` gives the per-member digests that :func:`gpumosaic.export.read_shards`
    checks while it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["ExportLockedError", "ExportLock", "index_name", "write_index", "verify_shard", "member_checksums",
           "sha256_file", "INDEX_FORMAT"]

INDEX_FORMAT = "gpumosaic.shard-index"
_INDEX_VERSION = 1

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class ExportLockedError(RuntimeError):
    """Another process is writing the same shards of an export folder."""


class ExportLock:
    """The record locks of one exporting process on ``DIR/export.lock`` (see the module docstring).

    Use as a context manager; :meth:`config` (a context manager) holds the ``export.json`` lock,
    :meth:`claim` takes the shards' locks until :meth:`close`.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out) / "export.lock"
        self._fd = None
        if fcntl is None:  # pragma: no cover - not POSIX
            warnings.warn(f"{self.path}: no fcntl on this platform; concurrent exports into one folder are not "
                          f"detected", RuntimeWarning, stacklevel=2)
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> "ExportLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release every lock of this object (closing the file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def config(self) -> "_ConfigLock":
        """Context manager holding byte 0 (waits for another process's brief ``export.json`` check)."""
        return _ConfigLock(self)

    def claim(self, shards: Iterable[int], shard_name) -> None:
        """Lock the bytes ``1 + s`` of ``shards`` without waiting.

        Raises:
            ExportLockedError: another process holds one of them (names the first such shard).
        """
        if self._fd is None:  # pragma: no cover - not POSIX
            return
        for start, stop in _runs(sorted(shards)):
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, stop - start, 1 + start, os.SEEK_SET)
            except OSError:  # EAGAIN / EACCES: held by another process
                busy = next(s for s in range(start, stop) if not self._try(s))
                raise ExportLockedError(
                    f"Another gpumosaic export is writing {shard_name(busy)} in {self.path.parent} (lock held on "
                    f"{self.path}): wait for it to finish, or use another output folder") from None

    def _try(self, s: int) -> bool:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + s, os.SEEK_SET)
            return True
        except OSError:
            return False


class _ConfigLock:
    def __init__(self, lock: ExportLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        if self.lock._fd is not None:
            fcntl.lockf(self.lock._fd, fcntl.LOCK_EX, 1, 0, os.SEEK_SET)

    def __exit__(self, *exc) -> None:
        if self.lock._fd is not None:
            fcntl.lockf(self.lock._fd, fcntl.LOCK_UN, 1, 0, os.SEEK_SET)


def _runs(values: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted integers -> half-open runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v:
            runs[-1] = (runs[-1][0], v + 1)
        else:
            runs.append((v, v + 1))
    return runs


def index_name(shard: int) -> str:
    """File name of shard ``shard``'s index: ``shard-{shard:06d}.index.json``."""
    return f"shard-{shard:06d}.index.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_index(tar_path: Path, index_path: Path, shard: int, export_digest: str,
                members: Sequence[tuple[str, int, str]]) -> None:
    """Write (``fsync``-ed, not renamed: the caller renames) the index of the finished tar ``tar_path``.

    Args:
        members: ``(name, size, sha256 of the data)`` of every member, in tar order.
    """
    index = {"format": INDEX_FORMAT, "version": _INDEX_VERSION, "shard": int(shard), "export": export_digest,
             "size": tar_path.stat().st_size, "sha256": sha256_file(tar_path),
             "members": [list(m) for m in members]}
    with open(index_path, "wb") as f:
        f.write((json.dumps(index, separators=(",", ":")) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _load_index(index_path: Path) -> dict | None:
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or index.get("version") != _INDEX_VERSION:
        return None
    return index


def verify_shard(tar_path: Path, index_path: Path, shard: int, export_digest: str,
                 expected: Sequence[str]) -> str | None:
    """Why the shard is not a complete, intact shard of this export, or ``None`` when it is.

    Checks that the index exists and belongs to shard ``shard`` of the export ``export_digest``, lists exactly
    the member names ``expected`` in order, and that the tar's size and sha256 equal the recorded ones (so
    any changed byte, e.g. a bit flip inside an image, is found).
    """
    index = _load_index(index_path)
    if index is None:
        return "no valid index"
    if index.get("shard") != shard or index.get("export") != export_digest:
        return "index of another shard or export"
    if [m[0] for m in index.get("members", [])] != list(expected):
        return "unexpected members"
    try:
        size = tar_path.stat().st_size
    except OSError:
        return "missing"
    if size != index.get("size"):
        return f"size {size} != recorded {index.get('size')}"
    if sha256_file(tar_path) != index.get("sha256"):
        return "content differs from its recorded sha256"
    return None


def member_checksums(index_path: Path) -> dict[str, str] | None:
    """Member name -> recorded sha256 from a shard index, or ``None`` when there is no valid index."""
    index = _load_index(index_path)
    if index is None:
        return None
    return {m[0]: m[2] for m in index.get("members", [])}
