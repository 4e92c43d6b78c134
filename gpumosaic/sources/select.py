"""Source selection: restrict a pool or a mocap to an id range, a camera or clip, a frame range.

Held-out protocols need parts of a source: "every camera but cam04", "frames 0–69 of the balancing trial",
"DeepMimic clips only". A :class:`Selection` says which entries to keep; :func:`select_pool` /
:func:`select_mocap` apply it, and every command takes it in its source spec (``--pool KIND:PATH:SELECTOR``,
``--pool real::SELECTOR`` for a kind whose path is optional; see :func:`parse_source_spec`).

Selector text (no spaces)::

    selector     := alternative ( "|" alternative )*     an entry is kept when ANY alternative matches
    alternative  := clause ( "," clause )*               ... and an alternative matches when ALL its clauses do
    clause       := key "=" ranges
    ranges       := range ( "+" range )*                 any of the ranges
    range        := INT | INT "-" INT | INT "-"           one value, inclusive range, open-ended range
    key          := id | row | seq (aliases: sequence, camera, cam, clip, subject) | frame

Keys:

- ``id``: the entry's provenance id (``Pool2D.ids`` / ``Mocap3D.ids``);
- ``row``: the entry's position in the source (0-based, before selection);
- ``seq``: the sequence, i.e. the camera (real pool: 1–4 Pose2Sim cam01–cam04, 5 Sports2D), the clip (real
  mocap: 1–2 Pose2Sim TRC trials, 10–24 DeepMimic clips; demo: the subject);
- ``frame``: the frame number within its sequence.

``seq`` and ``frame`` follow the ``id = seq * 100000 + frame`` rule of the real and demo data
(:data:`ID_STRIDE`). Mocap loaded by a loader (``bvh``, ``trc``, ``deepmimic``, ``cmu``, ``h36m``) instead
uses the loader's own sequence index (file or ``subject/action`` key, in reading order) and frame number,
passed explicitly to :meth:`Selection.mask`.

Examples: ``camera=1-3,frame=0-69|camera=5`` (cameras 1–3 up to frame 69, and all of Sports2D);
``clip=10-24`` (DeepMimic only); ``id=100000-100049`` ; ``row=0-99+200-`` (rows 0–99 and from 200 on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .base import Mocap3D, Pool2D

__all__ = [
    "ID_STRIDE",
    "Selection",
    "SourceSpec",
    "parse_selection",
    "parse_source_spec",
    "select_pool",
    "select_mocap",
]

ID_STRIDE = 100000
"""``id = seq * ID_STRIDE + frame`` for the real and demo data."""

_KEYS = {"id": "id", "row": "row", "frame": "frame", "seq": "seq", "sequence": "seq", "camera": "seq",
         "cam": "seq", "clip": "seq", "subject": "seq"}
_RANGE = re.compile(r"^(\d+)(?:(-)(\d*))?$")


@dataclass(frozen=True)
class Selection:
    """Which entries of a source to keep (see the module docstring for the text form).

    Attributes:
        alternatives: a tuple of alternatives, each a tuple of clauses ``(key, ranges)`` with ``key`` one of
            ``"id"``, ``"row"``, ``"seq"``, ``"frame"`` and ``ranges`` a tuple of inclusive ``(lo, hi)``
            integer pairs (``hi = None``: no upper end). An entry is kept when, for some alternative, each
            clause's value lies in one of its ranges.
        text: the selector text (for messages and checkpoints).
    """

    alternatives: tuple[tuple[tuple[str, tuple[tuple[int, int | None], ...]], ...], ...]
    text: str = ""

    @classmethod
    def where(cls, **clauses) -> "Selection":
        """One alternative from keyword clauses: ``Selection.where(camera=(1, 3), frame=range(0, 70))``.

        A value is an int, an inclusive ``(lo, hi)`` pair (``hi`` may be ``None``), a ``range`` (its usual
        half-open meaning), or a list of those.
        """
        alternative, texts = [], []
        for key, value in clauses.items():
            if key not in _KEYS:
                raise ValueError(f"Expected selection keys among {sorted(_KEYS)}, got {key!r}")
            ranges = []
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, range):
                    if v.step != 1 or len(v) == 0:
                        raise ValueError(f"Expected a non-empty range with step 1 for {key}, got {v}")
                    ranges.append((v.start, v.stop - 1))
                elif isinstance(v, tuple) and len(v) == 2:
                    ranges.append((int(v[0]), None if v[1] is None else int(v[1])))
                else:
                    ranges.append((int(v), int(v)))
            for lo, hi in ranges:
                _check_range(lo, hi, key)
            alternative.append((_KEYS[key], tuple(ranges)))
            texts.append(f"{key}=" + "+".join(f"{lo}-{'' if hi is None else hi}" for lo, hi in ranges))
        if not alternative:
            raise ValueError("Expected at least one clause, got none")
        return cls(alternatives=(tuple(alternative),), text=",".join(texts))

    def mask(self, ids: torch.Tensor, sequence: torch.Tensor | None = None,
             frame: torch.Tensor | None = None) -> torch.Tensor:
        """Which entries to keep.

        Args:
            ids: int64 (N,) provenance ids.
            sequence: int64 (N,) sequence of each entry; ``None`` means ``ids // ID_STRIDE``.
            frame: int64 (N,) frame of each entry; ``None`` means ``ids % ID_STRIDE``.

        Returns:
            bool (N,) on ``ids``'s device.
        """
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            raise ValueError(f"Expected ids as a 1-D tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
        ids = ids.long()
        values = {
            "id": ids,
            "row": torch.arange(ids.shape[0], device=ids.device),
            "seq": ids // ID_STRIDE if sequence is None else sequence.to(ids.device).long(),
            "frame": ids % ID_STRIDE if frame is None else frame.to(ids.device).long(),
        }
        keep = torch.zeros_like(ids, dtype=torch.bool)
        for alternative in self.alternatives:
            ok = torch.ones_like(keep)
            for key, ranges in alternative:
                v = values[key]
                hit = torch.zeros_like(keep)
                for lo, hi in ranges:
                    hit |= (v >= lo) & (True if hi is None else v <= hi)
                ok &= hit
            keep |= ok
        return keep

    def __str__(self) -> str:
        return self.text


def _mask_reference(selection: Selection, ids, sequence=None, frame=None) -> list[bool]:
    """Plain-loop twin of :meth:`Selection.mask` (tests only)."""
    out = []
    for row, i in enumerate(int(x) for x in ids):
        vals = {"id": i, "row": row, "seq": i // ID_STRIDE if sequence is None else int(sequence[row]),
                "frame": i % ID_STRIDE if frame is None else int(frame[row])}
        keep = False
        for alternative in selection.alternatives:
            if all(any(lo <= vals[k] and (hi is None or vals[k] <= hi) for lo, hi in ranges)
                   for k, ranges in alternative):
                keep = True
        out.append(keep)
    return out


def _check_range(lo: int, hi: int | None, key: str) -> None:
    if lo < 0 or (hi is not None and hi < lo):
        raise ValueError(f"Expected a range lo-hi with 0 <= lo <= hi for {key}, got {lo}-{hi}")


def parse_selection(text: str) -> Selection:
    """Parse a selector (module docstring grammar) into a :class:`Selection`.

    Raises:
        ValueError: naming the part that does not parse.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"Expected a non-empty selector string, got {text!r}")
    alternatives = []
    for alt in text.split("|"):
        clauses = []
        for clause in alt.split(","):
            key, sep, value = clause.partition("=")
            if not sep or key.strip().lower() not in _KEYS:
                raise ValueError(f"Expected selector clauses KEY=RANGES with KEY among {sorted(_KEYS)}, "
                                 f"got {clause!r} in {text!r}")
            ranges = []
            for part in value.split("+"):
                m = _RANGE.match(part.strip())
                if not m:
                    raise ValueError(f"Expected ranges like 3, 0-69 or 200- in {clause!r}, got {part!r}")
                lo = int(m.group(1))
                hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                _check_range(lo, hi, key)
                ranges.append((lo, hi))
            clauses.append((_KEYS[key.strip().lower()], tuple(ranges)))
        alternatives.append(tuple(clauses))
    return Selection(alternatives=tuple(alternatives), text=text)


def _as_selection(selection: Selection | str) -> Selection:
    if isinstance(selection, Selection):
        return selection
    if isinstance(selection, str):
        return parse_selection(selection)
    raise TypeError(f"Expected selection as a Selection or a selector string, got {type(selection).__name__}")


def select_pool(pool: Pool2D, selection: Selection | str) -> Pool2D:
    """The entries of ``pool`` that ``selection`` keeps (order kept).

    Raises:
        ValueError: nothing is selected (naming the selector).
    """
    sel = _as_selection(selection)
    keep = sel.mask(pool.ids)
    index = torch.nonzero(keep).reshape(-1)
    if index.numel() == 0:
        raise ValueError(f"Selection {sel.text!r} keeps none of the {len(pool)} pool entries")
    return pool.subset(index)


def select_mocap(mocap: Mocap3D, selection: Selection | str, sequence: torch.Tensor | None = None,
                 frame: torch.Tensor | None = None) -> Mocap3D:
    """The poses of ``mocap`` that ``selection`` keeps (order and ids kept).

    Args:
        mocap: the source.
        selection: a :class:`Selection` or selector text.
        sequence, frame: int64 (M,) per-pose sequence and frame (e.g. a loader's
            :class:`~gpumosaic.sources.build.LoadedMocap` fields); ``None``: from the ids.

    Raises:
        ValueError: nothing is selected.
    """
    sel = _as_selection(selection)
    keep = sel.mask(mocap.ids, sequence, frame)
    index = torch.nonzero(keep).reshape(-1)
    if index.numel() == 0:
        raise ValueError(f"Selection {sel.text!r} keeps none of the {len(mocap)} mocap poses")
    return Mocap3D(poses=mocap.poses[index], skeleton=mocap.skeleton, ids=mocap.ids[index])


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``KIND[:PATH][:SELECTOR]`` source spec.

    Attributes:
        kind: lower-cased kind (a loader kind, ``demo`` or ``real``).
        path: the path, or ``None`` when omitted (only for kinds whose path is optional).
        selection: the selection, or ``None`` to keep every entry.
    """

    kind: str
    path: Path | None
    selection: Selection | None = None


def parse_source_spec(spec: str, optional_path: Sequence[str] = ("demo", "real")) -> SourceSpec:
    """Parse ``KIND:PATH``, ``KIND:PATH:SELECTOR``, ``KIND``, ``KIND:`` or ``KIND::SELECTOR``.

    The text after the last ``:`` is a selector when it parses as one (it then contains ``KEY=``); otherwise
    it belongs to the path, so paths containing ``:`` still work (``bvh:walk:1.bvh``). ``KIND`` alone (or
    with an empty path) is accepted for the kinds in ``optional_path``.

    Raises:
        ValueError: no kind, or no path for a kind that needs one, or a malformed selector after ``::``.
    """
    kind, sep, rest = str(spec).partition(":")
    kind = kind.strip().lower()
    if not kind:
        raise ValueError(f"Expected a source as KIND:PATH[:SELECTOR], got {spec!r}")
    selection = None
    head, sep2, tail = rest.rpartition(":")
    if sep2 and "=" in tail:
        try:
            selection = parse_selection(tail)
            rest = head
        except ValueError:
            if not head:  # KIND::SELECTOR with a bad selector: say so rather than read it as a path
                raise
    if not rest:
        if kind in optional_path:
            return SourceSpec(kind, None, selection)
        raise ValueError(f"Expected a source as KIND:PATH[:SELECTOR] (a path is required for {kind!r}), got {spec!r}")
    return SourceSpec(kind, Path(rest), selection)
