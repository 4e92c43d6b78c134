"""Views of 3D poses: camera sampling, perspective projection, oriented 3D labels, self-occlusion.

DESIGN.md steps 2-3 (Rogez & Schmid, IJCV 2018, §2.2): every 3D mocap pose is seen by V random cameras
(default 180) with azimuth ~ U[0°, 360°) and elevation ~ U[-45°, 45°], all looking at the pose's torso
centre (mean of shoulders and hips). The 2D query is the perspective projection; the 3D label is the pose
in the camera frame translated so that its torso centre is the origin (the "oriented pose"). A joint hidden
by another body part (by simple 3D reasoning, :func:`~gpumosaic.occlusion.self_occlusion`) is marked
``occluded``.

One view sampler: uniform numbers become angles by one map on the ranges of a
:class:`~gpumosaic.settings.ViewSettings`; the numbers come from a ``torch.Generator`` stream
(:func:`sample_views`, ``gpumosaic generate``) or from a counter-based hash of ``(seed, pose, view)``
(:func:`view_angles`: a pair has the same camera whichever worker, rank or epoch draws it; the dataset and
the export). :func:`render` turns poses and cameras into a :class:`ViewBatch`.

Shape glossary: M poses, V views per pose, J joints, ``...`` any leading dimensions.

Convention:
    World frame (:class:`~gpumosaic.sources.Mocap3D`): metres, right-handed, ``z`` up (Human3.6M).
    Camera frame: metres, right-handed, ``x`` right, ``y`` down, ``z`` forward along the optical axis; the
    camera centre is the origin. ``p_cam = cam_from_world_R @ p_world + cam_from_world_t``.
    Image: pixels, ``(x, y) = (u, v)`` with ``u`` to the right (column) and ``v`` down (row); pixel
    (row v, column u) has its centre at ``(x, y) = (u, v)``. ``u = f x/z + cx``, ``v = f y/z + cy``.
    Angles are in degrees: azimuth about world ``+z`` measured from world ``+x`` (towards ``+y``),
    elevation above the horizontal plane (positive = camera above the target, looking down).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from ._check import ShapeError, check_finite, check_seed, check_shape, checks_enabled
from .occlusion import self_occlusion, self_occlusion_core
from .settings import ViewSettings
from .skeleton import Skeleton, check_joints

__all__ = [
    "Cameras",
    "ViewBatch",
    "ViewSettings",
    "torso_centre",
    "look_at",
    "sample_views",
    "view_angles",
    "view_angles_core",
    "hashed_uniform",
    "project",
    "oriented_pose",
    "render",
    "render_views",
    "self_occlusion",
]


# --------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cameras:
    """A batch of look-at pinhole cameras (no distortion).

    Attributes:
        azimuth: float (...) degrees, about world ``+z`` from world ``+x``.
        elevation: float (...) degrees above the horizontal plane.
        distance: float (...) metres from the camera centre to the target (the torso centre).
        focal: float (...) focal length in pixels (square pixels).
        cam_from_world_R: float (..., 3, 3) rotation, rows = camera ``x`` (right), ``y`` (down), ``z``
            (forward) axes expressed in world coordinates; orthonormal with determinant +1.
        cam_from_world_t: float (..., 3) translation in metres, ``t = -R @ centre``.

    Convention:
        ``p_cam = cam_from_world_R @ p_world + cam_from_world_t``; world ``z`` up, camera ``x`` right,
        ``y`` down, ``z`` forward, both right-handed, metres. The principal point is not stored: the
        engine's projections use ``(0, 0)`` (2D joints relative to the principal point) and ``fit_to_box``
        normalises them afterwards.
    """

    azimuth: torch.Tensor
    elevation: torch.Tensor
    distance: torch.Tensor
    focal: torch.Tensor
    cam_from_world_R: torch.Tensor
    cam_from_world_t: torch.Tensor

    @property
    def centre(self) -> torch.Tensor:
        """float (..., 3) camera centres in world coordinates, ``-R^T t``."""
        return -torch.einsum("...ji,...j->...i", self.cam_from_world_R, self.cam_from_world_t)

    def to(self, device=None, dtype=None) -> "Cameras":
        """Move every field to ``device`` (and floating fields to ``dtype`` if given)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                                for f in fields(self)})

    def detach(self) -> "Cameras":
        return replace(self, **{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def as_dict(self) -> dict:
        """JSON-friendly dict of nested Python lists (floats), one key per field."""
        return {f.name: getattr(self, f.name).detach().cpu().tolist() for f in fields(self)}


@dataclass(frozen=True)
class ViewBatch:
    """V views of each of M 3D poses (output of :func:`render_views`).

    Attributes:
        pose2d: float (M, V, J, 2) projected joints in pixels, relative to the principal point ``(0, 0)``.
        pose3d: float (M, V, J, 3) oriented 3D labels: the pose in the camera frame, metres, translated so
            that its torso centre is the origin.
        occluded: bool (M, V, J) self-occluded joints (:func:`self_occlusion`).
        cameras: :class:`Cameras` with (M, V) fields.

    Convention:
        See the module docstring: camera ``x`` right, ``y`` down, ``z`` forward; pixels ``(x, y) = (u, v)``.
    """

    pose2d: torch.Tensor
    pose3d: torch.Tensor
    occluded: torch.Tensor
    cameras: Cameras

    def to(self, device=None) -> "ViewBatch":
        return ViewBatch(self.pose2d.to(device), self.pose3d.to(device), self.occluded.to(device),
                         self.cameras.to(device))

    def detach(self) -> "ViewBatch":
        return ViewBatch(self.pose2d.detach(), self.pose3d.detach(), self.occluded, self.cameras.detach())

    def select_view(self, view: int) -> "ViewBatch":
        """View ``view`` of each pose: (M, V, ...) fields become (M, ...)."""
        cams = replace(self.cameras, **{f.name: getattr(self.cameras, f.name)[:, view]
                                        for f in fields(self.cameras)})
        return ViewBatch(self.pose2d[:, view], self.pose3d[:, view], self.occluded[:, view], cams)


# --------------------------------------------------------------------------------------------------------
# Validation helpers (public entry points only)
# --------------------------------------------------------------------------------------------------------


def _as_tensor(x, like: torch.Tensor, name: str) -> torch.Tensor:
    """Python scalars / sequences / tensors -> a tensor on ``like``'s device and dtype."""
    if isinstance(x, torch.Tensor):
        if checks_enabled() and not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"Expected a real-valued {name}, got {x.dtype}")
        return x.to(device=like.device, dtype=like.dtype)
    try:
        return torch.as_tensor(x, device=like.device, dtype=like.dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"Expected {name} to be a number or a tensor, got {type(x).__name__}") from err


def _camera_args(like: torch.Tensor, lead: dict[str, tuple[int, ...]], **values) -> tuple[torch.Tensor, ...]:
    """The one validation of camera arguments (public entry points): each of ``values`` (``name=value``;
    the elevation's name contains ``elevation``, the distance's is ``distance``) as a tensor on ``like``'s
    device and dtype, leading shapes broadcastable with ``lead``, finite, elevation in [-90, 90], distance
    > 0. Returns the tensors in the order given."""
    out = {name: _as_tensor(value, like, name) for name, value in values.items()}
    _broadcast_leading({**lead, **{name: tuple(x.shape) for name, x in out.items()}})
    for name, x in out.items():
        check_finite(x, name)
    if checks_enabled():
        for name, x in out.items():
            if "elevation" in name and bool((x.abs() > 90).any()):
                raise ValueError(f"Expected {name} in [-90, 90] degrees")
            if name == "distance" and bool((x <= 0).any()):
                raise ValueError("Expected distance > 0 metres")
    return tuple(out.values())


def _broadcast_leading(shapes: dict[str, tuple[int, ...]]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        desc = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise ShapeError(f"Expected broadcastable leading dimensions, got {desc}") from None


# --------------------------------------------------------------------------------------------------------
# Torso centre, cameras, projection, oriented poses
# --------------------------------------------------------------------------------------------------------


def torso_centre(poses: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Mean of the skeleton's torso joints (right/left shoulders, right/left hips).

    Args:
        poses: float (..., J, D) joints (any D, e.g. 2 or 3).
        skeleton: the joint layout (``skeleton.torso`` names the four joints).

    Returns:
        float (..., D), same device and dtype as ``poses``.
    """
    check_joints(poses, skeleton, "poses", coords=None)
    return skeleton.torso_centre(poses)


def _look_at(target, azimuth_deg, elevation_deg, distance):
    a = torch.deg2rad(azimuth_deg)
    e = torch.deg2rad(elevation_deg)
    ca, sa, ce, se = torch.cos(a), torch.sin(a), torch.cos(e), torch.sin(e)
    zero = torch.zeros_like(ca)
    # Unit vector from the target to the camera centre: (cos e cos a, cos e sin a, sin e).
    # Closed forms of the normalised cross products (valid for |e| < 90°, continuous up to ±90°):
    #   forward f = -w;  right x = normalise(f × z_up) = (-sin a, cos a, 0);
    #   down    y = f × x = (sin e cos a, sin e sin a, -cos e).
    x_cam = torch.stack([-sa, ca, zero], dim=-1)
    y_cam = torch.stack([se * ca, se * sa, -ce], dim=-1)
    f_cam = torch.stack([-ce * ca, -ce * sa, -se], dim=-1)
    R = torch.stack([x_cam, y_cam, f_cam], dim=-2)
    centre = target - distance[..., None] * f_cam  # target + d·w
    t = -torch.einsum("...ij,...j->...i", R, centre)
    return R, t


def look_at(
    target: torch.Tensor,
    azimuth_deg: torch.Tensor | float,
    elevation_deg: torch.Tensor | float,
    distance: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation and translation of cameras on a sphere around ``target``, looking at it.

    Args:
        target: float (..., 3) world points the cameras look at (metres).
        azimuth_deg: float (...) degrees, about world ``+z`` from world ``+x``.
        elevation_deg: float (...) degrees above the horizontal plane, in [-90, 90].
        distance: float (...) metres, > 0.

    Leading dimensions broadcast together.

    Returns:
        ``(cam_from_world_R (..., 3, 3), cam_from_world_t (..., 3))``, dtype and device of ``target``.

    Convention:
        Camera centre ``c = target + distance·(cos e cos a, cos e sin a, sin e)`` (world ``z`` up).
        Optical axis ``f = normalise(target - c)``; right ``x_cam = normalise(f × z_up)``; down
        ``y_cam = f × x_cam``. ``R`` has rows ``[x_cam, y_cam, f]`` (right-handed, det +1) and
        ``t = -R c``, so ``p_cam = R p_world + t`` and the target maps to ``(0, 0, distance)``. World up
        maps to image up (negative ``y_cam``) for |e| < 90°. At e = ±90° the closed form used here keeps
        ``x_cam = (-sin a, cos a, 0)``, the limit of the definition.
    """
    check_shape(target, ["*", "3"], name="target")
    if checks_enabled() and not target.is_floating_point():
        raise TypeError(f"Expected floating-point target, got {target.dtype}")
    check_finite(target, "target")
    az, el, dist = _camera_args(target, {"target": tuple(target.shape[:-1])}, azimuth_deg=azimuth_deg,
                                elevation_deg=elevation_deg, distance=distance)
    lead = torch.broadcast_shapes(target.shape[:-1], az.shape, el.shape, dist.shape)
    target = target.expand(*lead, 3)
    return _look_at(target, az.expand(lead), el.expand(lead), dist.expand(lead))


def sample_views(
    num_poses: int,
    views: int | None = None,
    generator: torch.Generator | None = None,
    settings: ViewSettings | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw V uniform random viewing angles for each of M poses from a ``torch.Generator`` stream.

    ``azimuth ~ U[azimuth_range)`` and ``elevation ~ U[elevation_range)`` independently, from ``generator``
    only (same seed and device -> same output). Azimuth is drawn first (M·V numbers), then elevation.
    :func:`view_angles` draws the same distribution from a counter-based hash of ``(seed, pose, view)``
    instead (the dataset's and the export's cameras); both map uniforms to angles by one function.

    Args:
        num_poses: M >= 0.
        views: V >= 0; ``None`` means ``settings.views_per_pose`` (paper: 180).
        generator: the explicit ``torch.Generator`` (required); its device is the output device unless
            ``device`` is given (they must then agree).
        settings: :class:`~gpumosaic.settings.ViewSettings` (angle ranges, views per pose); ``None``: the
            paper's.
        device: output device; ``None`` means the generator's device.
        dtype: floating dtype of the output.

    Returns:
        ``(azimuth (M, V), elevation (M, V))`` in degrees.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected generator to be a torch.Generator, got {type(generator).__name__}")
    settings = ViewSettings() if settings is None else settings
    views = settings.views_per_pose if views is None else views
    if int(num_poses) != num_poses or num_poses < 0:
        raise ValueError(f"Expected num_poses to be a non-negative integer, got {num_poses}")
    if int(views) != views or views < 0:
        raise ValueError(f"Expected views to be a non-negative integer, got {views}")
    device = generator.device if device is None else torch.device(device)
    shape = (int(num_poses), int(views))
    u_az = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    u_el = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return _angles(u_az, u_el, settings)


# Counter-based view angles: a (pose, view) pair's angles depend only on (seed, pose, view).

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_STREAM_AZIMUTH = 0
_STREAM_ELEVATION = 1


def _mix32_int(x: int) -> int:
    """Wellons' ``lowbias32`` integer hash on a Python int in [0, 2^32) (bijective)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x · c) mod 2^32`` for int64 ``x`` in [0, 2^32) without int64 overflow.

    Splits ``c = c_hi·2^16 + c_lo``: ``x·c_lo < 2^48`` and ``(x·c_hi mod 2^16)·2^16 < 2^32``.
    """
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """:func:`_mix32_int` on an int64 tensor of values in [0, 2^32) (``>>`` is then a logical shift)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_prefix(seed: int, stream: int) -> int:
    """Hash state after absorbing the 64-bit seed and the stream number (Python ints, no tensors)."""
    s = int(seed) & _MASK64
    h = _mix32_int(s & _MASK32)
    h = _mix32_int(h ^ (s >> 32))
    return _mix32_int(h ^ (int(stream) & _MASK32))


def hashed_uniform(seed: int, stream: int, pose_index: torch.Tensor, view_index: torch.Tensor) -> torch.Tensor:
    """float64 uniform numbers in [0, 1) from ``hash(seed, stream, m, v)`` (24 bits), shape of the indices.

    Streams: 0 azimuth, 1 elevation (:func:`view_angles`), 2 roll (:func:`gpumosaic.roll.view_rolls`)."""
    h = _mix32(pose_index.bitwise_and(_MASK32) ^ _hash_prefix(seed, stream))
    h = _mix32(h ^ (pose_index >> 32))
    h = _mix32(h ^ view_index.bitwise_and(_MASK32))
    return (h >> 8).to(torch.float64) * 2.0**-24


def _angles(u_az: torch.Tensor, u_el: torch.Tensor, settings: ViewSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The one map from uniform numbers in [0, 1) to view angles: ``lo + u·(hi - lo)`` on each range."""
    (alo, ahi), (elo, ehi) = settings.azimuth_range, settings.elevation_range
    return alo + u_az * (ahi - alo), elo + u_el * (ehi - elo)


def view_angles_core(pose_index: torch.Tensor, view_index: torch.Tensor, seed: int, settings: ViewSettings,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`view_angles` without validation (int64 indices of one shape, a checked seed)."""
    u_az = hashed_uniform(seed, _STREAM_AZIMUTH, pose_index, view_index)
    u_el = hashed_uniform(seed, _STREAM_ELEVATION, pose_index, view_index)
    az, el = _angles(u_az, u_el, settings)  # float64, then one rounding
    return az.to(dtype), el.to(dtype)


def view_angles(
    pose_index: torch.Tensor,
    view_index: torch.Tensor,
    seed: int = 0,
    settings: ViewSettings | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera angles of (pose, view) pairs: a pure function of ``(seed, pose, view)``.

    ``azimuth = lo + u·(hi - lo)`` with ``u = hash(seed, 0, m, v) / 2^24``, elevation likewise with stream 1,
    where ``hash`` chains Wellons' ``lowbias32`` mixer over the seed's two 32-bit words, the stream, the two
    32-bit words of ``m`` and ``v``, and keeps its top 24 bits. Uniform on the ranges (to 2^-24), counter
    based (no generator state), bit-identical on CPU and CUDA before the final cast.

    Args:
        pose_index: int64 (...) mocap rows ``m`` >= 0.
        view_index: int64 (...) view numbers ``v`` in [0, 2^32), broadcastable with ``pose_index``.
        seed: non-negative integer (reduced modulo 2^64).
        settings: :class:`~gpumosaic.settings.ViewSettings` (its angle ranges); ``None``: the paper's.
        dtype: floating dtype of the output.

    Returns:
        ``(azimuth (...), elevation (...))`` degrees, on the indices' device.
    """
    for x, name in ((pose_index, "pose_index"), (view_index, "view_index")):
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"Expected {name} as an int64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.numel() and bool((x < 0).any()):
            raise ValueError(f"Expected non-negative {name}")
    if not dtype.is_floating_point:
        raise TypeError(f"Expected a floating dtype, got dtype={dtype}")
    settings = ViewSettings() if settings is None else settings
    seed = check_seed(seed)
    pose_index, view_index = torch.broadcast_tensors(pose_index.long(), view_index.long())
    return view_angles_core(pose_index, view_index, seed, settings, dtype)


def view_angles_reference(
    pose_index: torch.Tensor,
    view_index: torch.Tensor,
    seed: int = 0,
    settings: ViewSettings | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-Python twin of :func:`view_angles` (arbitrary-precision ints, one pair at a time; tests only)."""
    settings = ViewSettings() if settings is None else settings
    (alo, ahi), (elo, ehi) = settings.azimuth_range, settings.elevation_range
    m_all, v_all = torch.broadcast_tensors(pose_index, view_index)
    az, el = [], []
    for m, v in zip(m_all.reshape(-1).tolist(), v_all.reshape(-1).tolist()):
        out = []
        for stream in (_STREAM_AZIMUTH, _STREAM_ELEVATION):
            h = _mix32_int((m & _MASK32) ^ _hash_prefix(seed, stream))
            h = _mix32_int(h ^ (m >> 32))
            h = _mix32_int(h ^ (v & _MASK32))
            out.append((h >> 8) / float(1 << 24))
        az.append(alo + out[0] * (ahi - alo))
        el.append(elo + out[1] * (ehi - elo))
    shape = m_all.shape
    return (torch.tensor(az, dtype=torch.float64).reshape(shape).to(dtype),
            torch.tensor(el, dtype=torch.float64).reshape(shape).to(dtype))


def _project(points_cam, focal, principal):
    uv = points_cam[..., :2] / points_cam[..., 2:3] * focal[..., None, None]
    if principal is not None:
        uv = uv + principal[..., None, :]
    return uv


def project(
    points_cam: torch.Tensor,
    focal: torch.Tensor | float,
    principal: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Pinhole perspective projection without distortion.

    Args:
        points_cam: float (..., J, 3) points in the camera frame (metres), all with ``z > 0``.
        focal: float (...) focal lengths in pixels (broadcast over J).
        principal: float (..., 2) principal points ``(cx, cy)`` in pixels, or ``None`` for ``(0, 0)``.

    Returns:
        float (..., J, 2) pixels: ``u = f x/z + cx``, ``v = f y/z + cy``.

    Convention:
        Camera ``x`` right, ``y`` down, ``z`` forward; pixel ``(x, y) = (u, v)`` = (column, row).
    """
    check_shape(points_cam, ["*", "J", "3"], name="points_cam")
    if checks_enabled() and not points_cam.is_floating_point():
        raise TypeError(f"Expected floating-point points_cam, got {points_cam.dtype}")
    focal = _as_tensor(focal, points_cam, "focal")
    shapes = {"points_cam": tuple(points_cam.shape[:-2]), "focal": tuple(focal.shape)}
    if principal is not None:
        principal = _as_tensor(principal, points_cam, "principal")
        check_shape(principal, ["*", "2"], name="principal")
        shapes["principal"] = tuple(principal.shape[:-1])
    _broadcast_leading(shapes)
    check_finite(points_cam, "points_cam")
    check_finite(focal, "focal")
    if principal is not None:
        check_finite(principal, "principal")
    if checks_enabled() and bool((points_cam[..., 2] <= 0).any()):
        raise ValueError("Expected points_cam in front of the camera (z > 0), got points with z <= 0")
    return _project(points_cam, focal, principal)


def _apply_rt(points, R, t):
    return torch.einsum("...ij,...kj->...ki", R, points) + t[..., None, :]


def oriented_pose(
    poses_world: torch.Tensor,
    cam_from_world_R: torch.Tensor,
    cam_from_world_t: torch.Tensor,
    skeleton: Skeleton,
) -> torch.Tensor:
    """The paper's 3D label: the pose in the camera frame, translated so its torso centre is the origin.

    Args:
        poses_world: float (..., J, 3) world joints (metres).
        cam_from_world_R: float (..., 3, 3).
        cam_from_world_t: float (..., 3) (cancels out after centring, accepted for clarity).
        skeleton: the joint layout.

    Leading dimensions broadcast together.

    Returns:
        float (..., J, 3): ``R p + t - torso_centre(R p + t)``, dtype and device of ``poses_world``.

    Convention:
        Input in world metres (``z`` up); output in camera axes (``x`` right, ``y`` down, ``z`` forward),
        metres, origin at the torso centre (mean of both shoulders and hips).
    """
    check_joints(poses_world, skeleton, "poses_world")
    check_shape(cam_from_world_R, ["*", "3", "3"], name="cam_from_world_R")
    check_shape(cam_from_world_t, ["*", "3"], name="cam_from_world_t")
    _broadcast_leading({"poses_world": tuple(poses_world.shape[:-2]),
                        "cam_from_world_R": tuple(cam_from_world_R.shape[:-2]),
                        "cam_from_world_t": tuple(cam_from_world_t.shape[:-1])})
    check_finite(cam_from_world_R, "cam_from_world_R")
    check_finite(cam_from_world_t, "cam_from_world_t")
    R = cam_from_world_R.to(poses_world.dtype)
    t = cam_from_world_t.to(poses_world.dtype)
    cam = _apply_rt(poses_world, R, t)
    return cam - skeleton.torso_centre(cam)[..., None, :]


# --------------------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------------
# Views of a batch of 3D poses
# --------------------------------------------------------------------------------------------------------


def render(
    poses: torch.Tensor,
    skeleton: Skeleton,
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    distance: torch.Tensor,
    focal: torch.Tensor,
    settings: ViewSettings,
) -> ViewBatch:
    """Core of :func:`render_views` without validation (beyond the gated ``z > 0`` check).

    Args:
        poses: float (..., J, 3) world joints, broadcast against the cameras' leading dims (e.g. (B, J, 3)
            with (B,) cameras, or (M, 1, J, 3) with (M, V) cameras).
        skeleton: their joint layout.
        azimuth, elevation, distance, focal: float (...) camera parameters (degrees, metres, pixels), one
            shape, on ``poses``' device and dtype.
        settings: ``limb_radius`` and ``occlusion_margin`` (metres) of the self-occlusion rule.

    Returns:
        :class:`ViewBatch` with (...) leading dims; its cameras hold the given tensors.
    """
    target = skeleton.torso_centre(poses).expand(*azimuth.shape, 3)
    R, t = _look_at(target, azimuth, elevation, distance)
    cam = _apply_rt(poses, R, t)  # (..., J, 3)
    if checks_enabled() and bool((cam[..., 2] <= 0).any()):
        raise ValueError(
            "Some joints lie at or behind the camera's image plane (z <= 0); increase distance"
        )
    pose2d = _project(cam, focal, None)
    pose3d = cam - skeleton.torso_centre(cam)[..., None, :]
    occluded = self_occlusion_core(cam, skeleton, settings.limb_radius, settings.occlusion_margin)
    cameras = Cameras(azimuth=azimuth, elevation=elevation, distance=distance, focal=focal,
                      cam_from_world_R=R, cam_from_world_t=t)
    return ViewBatch(pose2d=pose2d, pose3d=pose3d, occluded=occluded, cameras=cameras)


def render_views(
    poses: torch.Tensor,
    skeleton: Skeleton,
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    distance: torch.Tensor | float | None = None,
    focal: torch.Tensor | float | None = None,
    settings: ViewSettings | None = None,
) -> ViewBatch:
    """See each of M world poses from V cameras looking at its torso centre.

    Args:
        poses: float (M, J, 3) world joints (metres, ``z`` up), e.g. ``Mocap3D.poses``.
        skeleton: their joint layout.
        azimuth: float (M, V) degrees (e.g. from :func:`sample_views`).
        elevation: float (M, V) degrees in [-90, 90].
        distance: float scalar or (M, V) metres from the camera centre to the torso centre (> 0); ``None``
            means ``settings.distance``.
        focal: float scalar or (M, V) focal length in pixels; ``None`` means ``settings.focal``.
        settings: :class:`~gpumosaic.settings.ViewSettings` (default distance and focal, and the
            self-occlusion ``limb_radius`` and ``occlusion_margin`` in metres); ``None``: the paper's.

    Returns:
        :class:`ViewBatch`: ``pose2d (M, V, J, 2)`` pixels relative to the principal point ``(0, 0)``,
        ``pose3d (M, V, J, 3)`` oriented 3D labels, ``occluded (M, V, J)`` bool, ``cameras`` with (M, V)
        fields; dtype and device of ``poses``.

    Raises:
        ValueError: if a joint lies at or behind a camera's image plane (``z <= 0``): increase ``distance``.

    Convention:
        See the module docstring (world ``z`` up; camera ``x`` right, ``y`` down, ``z`` forward).
    """
    settings = ViewSettings() if settings is None else settings
    check_joints(poses, skeleton, "poses")
    dims = check_shape(poses, ["M", "J", "3"], name="poses")
    check_shape(azimuth, ["M", "V"], name="azimuth", dims=dims)
    check_shape(elevation, ["M", "V"], name="elevation", dims=dims)
    M, V = dims["M"], dims["V"]
    az, el, dist, foc = _camera_args(
        poses, {"azimuth": (M, V)}, azimuth=azimuth, elevation=elevation,
        distance=settings.distance if distance is None else distance,
        focal=settings.focal if focal is None else focal,
    )
    return render(poses[:, None], skeleton, az, el, dist.expand(M, V).clone(), foc.expand(M, V).clone(), settings)
