"""The one typed batch of training samples and the one annotation-record builder.

:class:`MosaicBatch` is what :class:`~gpumosaic.OnlineMosaicDataset` yields, what ``gpumosaic generate``
writes and what :func:`gpumosaic.export.export_shards` writes: mosaics with their labels, cameras and
provenance. :func:`annotation_records` turns a batch into the JSON records of ``annotations.jsonl``
(generate) and of the tar shards (export), so both write the same fields.

For code written against the earlier dictionary batches, ``batch["image"]``, ``batch.keys()`` and
iteration over the keys still work (:data:`BATCH_KEYS`).

Shape glossary: B batch, J joints, S image side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator, Sequence

import torch

from .camera import Cameras, ViewBatch
from .synthesis import MosaicResult

__all__ = ["MosaicBatch", "BATCH_KEYS", "synthetic_batch", "annotation_records"]

BATCH_KEYS = (
    "image", "pose2d", "pose3d", "label", "is_real", "pair_index", "mocap_index", "mocap_id", "view_index",
    "azimuth", "elevation", "occluded", "matches", "source_ids", "mirrored", "real_index",
)
"""The keys of the dictionary view of a :class:`MosaicBatch` (``batch[key]``)."""


@dataclass(frozen=True)
class MosaicBatch:
    """B training samples (every tensor on one device).

    Attributes:
        image: float32 (B, 3, S, S) in [0, 1].
        pose2d: float32 (B, J, 2) the 2D label in the S×S box (pixels, ``x`` right, ``y`` down, pixel
            centres at integers).
        pose3d: float32 (B, J, 3) oriented 3D pose (camera axes ``x`` right, ``y`` down, ``z`` forward,
            metres, torso-centred); zeros for real images.
        label: int64 (B,) pose class, -1 without classes and for real images.
        is_real: bool (B,) real images (no 3D pose, no camera).
        pair_index: int64 (B,) flat (pose, view) pair ``m·V + v``; -1 for real images and where views were
            drawn from a generator stream (``gpumosaic generate``).
        mocap_index, mocap_id: int64 (B,) mocap row and its id; -1 for real images.
        view_index: int64 (B,) view number ``v`` of the pair; -1 where ``pair_index`` is.
        cameras: :class:`~gpumosaic.camera.Cameras` with (B,) fields (zeros for real images).
        occluded: bool (B, J) self-occluded joints (not searched).
        matches: int64 (B, J) virtual pool entries (-1 where not searched, and for real images).
        source_rows: int64 (B, J) stored pool rows of the matches (-1 where not searched); for real images
            the real image's row on every joint.
        source_ids: int64 (B, J) ``pool.ids`` of the matches; for real images the real image's id.
        mirrored: bool (B, J) whether the match is a mirrored entry.
        real_index: int64 (B,) row of the real pool, -1 for synthetic images.
    """

    image: torch.Tensor
    pose2d: torch.Tensor
    pose3d: torch.Tensor
    label: torch.Tensor
    is_real: torch.Tensor
    pair_index: torch.Tensor
    mocap_index: torch.Tensor
    mocap_id: torch.Tensor
    view_index: torch.Tensor
    cameras: Cameras
    occluded: torch.Tensor
    matches: torch.Tensor
    source_rows: torch.Tensor
    source_ids: torch.Tensor
    mirrored: torch.Tensor
    real_index: torch.Tensor

    @property
    def azimuth(self) -> torch.Tensor:
        """float32 (B,) camera azimuth in degrees (0 for real images)."""
        return self.cameras.azimuth

    @property
    def elevation(self) -> torch.Tensor:
        """float32 (B,) camera elevation in degrees (0 for real images)."""
        return self.cameras.elevation

    def __len__(self) -> int:
        return self.image.shape[0]

    # Dictionary view (the earlier batch format).
    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in BATCH_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return BATCH_KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(BATCH_KEYS)

    def items(self):
        return [(k, getattr(self, k)) for k in BATCH_KEYS]

    def to(self, device) -> "MosaicBatch":
        """Every tensor (cameras included) on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def synthetic_batch(
    result: MosaicResult,
    views: ViewBatch,
    mocap_index: torch.Tensor,
    mocap_id: torch.Tensor,
    label: torch.Tensor | None = None,
    pair_index: torch.Tensor | None = None,
    view_index: torch.Tensor | None = None,
) -> MosaicBatch:
    """The :class:`MosaicBatch` of B synthetic samples.

    Args:
        result: the engine's output for the B queries ``views.pose2d``.
        views: :class:`~gpumosaic.camera.ViewBatch` with (B,) leading dims (one view per sample).
        mocap_index, mocap_id: int64 (B,) mocap rows and their ids.
        label: int64 (B,) pose classes, or ``None`` (-1).
        pair_index, view_index: int64 (B,), or ``None`` (-1: views not numbered by pair).
    """
    minus = torch.full_like(mocap_index, -1)
    return MosaicBatch(
        image=result.images,
        pose2d=result.pose2d,
        pose3d=views.pose3d,
        label=minus if label is None else label,
        is_real=torch.zeros_like(mocap_index, dtype=torch.bool),
        pair_index=minus if pair_index is None else pair_index,
        mocap_index=mocap_index,
        mocap_id=mocap_id,
        view_index=minus if view_index is None else view_index,
        cameras=views.cameras,
        occluded=views.occluded,
        matches=result.matches,
        source_rows=result.source_rows,
        source_ids=result.source_ids,
        mirrored=result.mirrored,
        real_index=minus,
    )


def annotation_records(
    batch: MosaicBatch,
    skeleton: str,
    images: Sequence[str],
    keys: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
) -> list[dict]:
    """The JSON annotation record of each sample (one device -> host copy for the batch).

    Fields, in this order: ``key`` and ``index`` (when given: export), ``image`` (file or member name),
    ``skeleton`` (name), ``pose2d`` (J, 2), ``pose3d`` (J, 3), ``occluded`` (J,), ``mocap_index``,
    ``mocap_id``, ``pair_index`` and ``view_index`` (when the sample has a pair number), ``camera``
    {``azimuth_deg``, ``elevation_deg``, ``distance_m``, ``focal_px``, ``cam_from_world_R`` (3, 3),
    ``cam_from_world_t`` (3,)}, ``matches`` (J,), ``source_rows`` (J,), ``source_ids`` (J,), ``mirrored``
    (J,). Units and frames as in :class:`MosaicBatch`.

    Args:
        batch: B samples.
        skeleton: the skeleton's name.
        images: B image names.
        keys, indices: B sample keys and global indices (export), or ``None``.
    """
    # one host copy of every label; the images stay where they are
    host = replace(batch, **{f.name: getattr(batch, f.name).to("cpu") for f in fields(batch) if f.name != "image"})
    cams = host.cameras
    records = []
    for k, image in enumerate(images):
        record = {} if keys is None else {"key": keys[k], "index": int(indices[k])}
        record.update({
            "image": image,
            "skeleton": skeleton,
            "pose2d": host.pose2d[k].tolist(),
            "pose3d": host.pose3d[k].tolist(),
            "occluded": host.occluded[k].tolist(),
            "mocap_index": int(host.mocap_index[k]),
            "mocap_id": int(host.mocap_id[k]),
        })
        if int(host.pair_index[k]) >= 0:
            record.update({"pair_index": int(host.pair_index[k]), "view_index": int(host.view_index[k])})
        record.update({
            "camera": {
                "azimuth_deg": float(cams.azimuth[k]),
                "elevation_deg": float(cams.elevation[k]),
                "distance_m": float(cams.distance[k]),
                "focal_px": float(cams.focal[k]),
                "cam_from_world_R": cams.cam_from_world_R[k].tolist(),
                "cam_from_world_t": cams.cam_from_world_t[k].tolist(),
            },
            "matches": host.matches[k].tolist(),
            "source_rows": host.source_rows[k].tolist(),
            "source_ids": host.source_ids[k].tolist(),
            "mirrored": host.mirrored[k].tolist(),
        })
        records.append(record)
    return records
