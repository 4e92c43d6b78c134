"""Views of 3D poses: camera sampling, perspective projection, oriented 3D labels, self-occlusion.

DESIGN.md steps 2-3 (Rogez & Schmid, IJCV 2018, §2.2): every 3D mocap pose is seen by V random cameras
(default 180) with azimuth ~ U[0°, 360°) and elevation ~ U[-45°, 45°], all looking at the pose's torso
centre (mean of shoulders and hips). The 2D query is the perspective projection; the 3D label is the pose
in the camera frame translated so that its torso centre is the origin (the "oriented pose"). A joint hidden
by another body part (by simple 3D reasoning, :func:`self_occlusion`) is marked ``occluded``.

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

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from ._check import ShapeError, check_finite, check_shape, checks_enabled
from .skeleton import Skeleton

__all__ = [
    "Cameras",
    "ViewBatch",
    "torso_centre",
    "look_at",
    "sample_views",
    "project",
    "oriented_pose",
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


# --------------------------------------------------------------------------------------------------------
# Validation helpers (public entry points only)
# --------------------------------------------------------------------------------------------------------


def _check_joints(x: torch.Tensor, skeleton: Skeleton, name: str, coords: str | None = "3") -> None:
    check_shape(x, ["*", "J", coords if coords is not None else "D"], name=name)
    if not checks_enabled():
        return
    if not x.is_floating_point():
        raise TypeError(f"Expected floating-point {name}, got {x.dtype}")
    if x.shape[-2] != len(skeleton):
        raise ShapeError(
            f"Expected {name} with J={len(skeleton)} joints of skeleton {skeleton.name}, got {tuple(x.shape)}"
        )
    check_finite(x, name)


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


def _broadcast_leading(shapes: dict[str, tuple[int, ...]]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        desc = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise ShapeError(f"Expected broadcastable leading dimensions, got {desc}") from None


# --------------------------------------------------------------------------------------------------------
# Torso centre, cameras, projection, oriented poses
# --------------------------------------------------------------------------------------------------------


def _torso_centre(poses: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    idx = torch.tensor(skeleton.torso, device=poses.device)
    return poses.index_select(-2, idx).mean(dim=-2)


def torso_centre(poses: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Mean of the skeleton's torso joints (right/left shoulders, right/left hips).

    Args:
        poses: float (..., J, D) joints (any D, e.g. 2 or 3).
        skeleton: the joint layout (``skeleton.torso`` names the four joints).

    Returns:
        float (..., D), same device and dtype as ``poses``.
    """
    _check_joints(poses, skeleton, "poses", coords=None)
    return _torso_centre(poses, skeleton)


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
    az = _as_tensor(azimuth_deg, target, "azimuth_deg")
    el = _as_tensor(elevation_deg, target, "elevation_deg")
    dist = _as_tensor(distance, target, "distance")
    lead = _broadcast_leading({"target": tuple(target.shape[:-1]), "azimuth_deg": tuple(az.shape),
                               "elevation_deg": tuple(el.shape), "distance": tuple(dist.shape)})
    for x, name in ((target, "target"), (az, "azimuth_deg"), (el, "elevation_deg"), (dist, "distance")):
        check_finite(x, name)
    if checks_enabled():
        if bool((el.abs() > 90).any()):
            raise ValueError("Expected elevation_deg in [-90, 90] degrees")
        if bool((dist <= 0).any()):
            raise ValueError("Expected distance > 0 metres")
    target = target.expand(*lead, 3)
    return _look_at(target, az.expand(lead), el.expand(lead), dist.expand(lead))


def check_view_ranges(azimuth_range, elevation_range) -> tuple[tuple[float, float], tuple[float, float]]:
    """Validate view ranges in degrees: finite ``(lo, hi)`` pairs, ``lo <= hi``, elevation within ±90°."""
    try:
        (alo, ahi), (elo, ehi) = (tuple(map(float, azimuth_range)), tuple(map(float, elevation_range)))
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected (lo, hi) pairs, got azimuth_range={azimuth_range!r}, elevation_range={elevation_range!r}"
        ) from None
    if not all(math.isfinite(v) for v in (alo, ahi, elo, ehi)) or alo > ahi or elo > ehi:
        raise ValueError(
            f"Expected finite (lo, hi) ranges with lo <= hi, got azimuth_range={tuple(azimuth_range)}, "
            f"elevation_range={tuple(elevation_range)}"
        )
    if elo < -90 or ehi > 90:
        raise ValueError(f"Expected elevation_range within [-90, 90], got {tuple(elevation_range)}")
    return (alo, ahi), (elo, ehi)



def sample_views(
    num_poses: int,
    views: int = 180,
    generator: torch.Generator | None = None,
    azimuth_range: Sequence[float] = (0.0, 360.0),
    elevation_range: Sequence[float] = (-45.0, 45.0),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw V uniform random viewing angles for each of M poses (the paper's defaults).

    ``azimuth ~ U[azimuth_range)`` and ``elevation ~ U[elevation_range)`` independently, from ``generator``
    only (same seed and device -> same output). Azimuth is drawn first (M·V numbers), then elevation.

    Args:
        num_poses: M >= 0.
        views: V >= 0 (paper: 180).
        generator: the explicit ``torch.Generator`` (required); its device is the output device unless
            ``device`` is given (they must then agree).
        azimuth_range: ``(lo, hi)`` degrees (paper: ``(0, 360)``).
        elevation_range: ``(lo, hi)`` degrees within [-90, 90] (paper: ``(-45, 45)``).
        device: output device; ``None`` means the generator's device.
        dtype: floating dtype of the output.

    Returns:
        ``(azimuth (M, V), elevation (M, V))`` in degrees.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected generator to be a torch.Generator, got {type(generator).__name__}")
    if int(num_poses) != num_poses or num_poses < 0:
        raise ValueError(f"Expected num_poses to be a non-negative integer, got {num_poses}")
    if int(views) != views or views < 0:
        raise ValueError(f"Expected views to be a non-negative integer, got {views}")
    (alo, ahi), (elo, ehi) = check_view_ranges(azimuth_range, elevation_range)
    device = generator.device if device is None else torch.device(device)
    shape = (int(num_poses), int(views))
    az = torch.rand(shape, generator=generator, device=device, dtype=dtype) * (ahi - alo) + alo
    el = torch.rand(shape, generator=generator, device=device, dtype=dtype) * (ehi - elo) + elo
    return az, el


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
    _check_joints(poses_world, skeleton, "poses_world")
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
    return cam - _torso_centre(cam, skeleton)[..., None, :]


# --------------------------------------------------------------------------------------------------------
# Self-occlusion
# --------------------------------------------------------------------------------------------------------


def _torso_triangles(skeleton: Skeleton) -> tuple[tuple[int, int, int], ...]:
    """The torso quad split along both diagonals: four triangles, a set that left/right mirroring maps onto
    itself, so the occlusion rule is symmetric. Each corner spans three of them and faces the fourth."""
    r_sh, l_sh, r_hip, l_hip = skeleton.torso
    return (r_sh, l_sh, l_hip), (r_sh, l_hip, r_hip), (r_sh, l_sh, r_hip), (l_sh, l_hip, r_hip)


# The kernels below work on coordinate planes (x, y, z), each a contiguous (..., J) tensor, rather than on
# (..., J, 3) tensors: reductions over a trailing dimension of size 3 are several times slower on CPU than
# three fused elementwise products. Per-view quantities (bone vectors, triangle edges) are (..., 1) planes.


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _sub(u, v):
    return (u[0] - v[0], u[1] - v[1], u[2] - v[2])


def _ray_segment_closest(P, a, A, B, tiny):
    """Closest points between segments [0, P] (camera ray) and [A, B] (bone), batched.

    Ericson, *Real-Time Collision Detection*, §5.1.9 (clamped closed form), with the ray starting at the
    origin. ``P``: coordinate planes (..., J); ``a = |P|²`` (..., J); ``A``, ``B``: planes (..., 1).
    Returns ``(dist2, s)`` (..., J): squared distance and the ray parameter in [0, 1] of the closest ray
    point ``s·P``.
    """
    d = _sub(B, A)
    e = _dot(d, d)  # (..., 1) squared bone length
    f = -_dot(d, A)  # d·(origin - A)
    c = -_dot(P, A)  # P·(origin - A)
    b = _dot(P, d)
    a_ok, e_ok = a > tiny, e > tiny
    a_safe = torch.where(a_ok, a, torch.ones_like(a))
    e_safe = torch.where(e_ok, e, torch.ones_like(e))
    denom = a * e - b * b  # = a e sin²θ >= 0
    # Near-parallel lines: any s works for the infinite lines; take s = 0 and let the clamps below fix it.
    nonpar = denom > 16 * torch.finfo(a.dtype).eps * a * e
    denom_safe = torch.where(nonpar, denom, torch.ones_like(denom))
    s = torch.where(nonpar, ((b * f - c * e) / denom_safe).clamp(0, 1), torch.zeros_like(a))
    t = (b * s + f) / e_safe
    # t outside [0, 1]: clamp it and recompute s for the clamped bone end (A if t < 0, B if t > 1).
    s_at_A = (-c / a_safe).clamp(0, 1)
    s = torch.where(t < 0, s_at_A, torch.where(t > 1, ((b - c) / a_safe).clamp(0, 1), s))
    t = t.clamp(0, 1)
    # Degenerate bone (a point): t = 0, s = projection of A on the ray.
    s = torch.where(e_ok, s, s_at_A)
    t = torch.where(e_ok, t, torch.zeros_like(t))
    # Degenerate ray (joint at the camera centre): s = 0, t = the bone point nearest the origin.
    s = torch.where(a_ok, s, torch.zeros_like(s))
    t = torch.where(a_ok | ~e_ok, t, (f / e_safe).clamp(0, 1))
    diff = tuple(s * P[k] - (A[k] + t * d[k]) for k in range(3))
    return _dot(diff, diff), s


def _ray_triangle(P, depth, v0, v1, v2):
    """Möller–Trumbore: rays ``X(τ) = τ·P`` (origin 0) against one triangle per view, batched.

    ``P``: coordinate planes (..., J); ``depth = |P|`` (..., J); ``v0, v1, v2``: planes (..., 1).
    Returns ``(hit, τ)`` (..., J); ``hit`` is True where the ray (τ > 0) crosses the closed triangle.
    """
    e1 = _sub(v1, v0)
    e2 = _sub(v2, v0)
    tvec = tuple(-x for x in v0)  # ray origin (0) minus v0
    qvec = _cross(tvec, e1)  # per view: does not depend on the ray
    pvec = _cross(P, e2)
    det = _dot(e1, pvec)
    scale = depth * (_dot(e1, e1) * _dot(e2, e2)).sqrt()
    ok = det.abs() > 16 * torch.finfo(depth.dtype).eps * scale  # ray not parallel to the triangle's plane
    inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
    u = _dot(tvec, pvec) * inv
    v = _dot(P, qvec) * inv
    tau = _dot(e2, qvec) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (tau > 0)
    return hit, tau


# Views per chunk. On CPU, chunks keep the ~20 (chunk, J) temporaries per bone small and cache-resident
# (1000 x 180 views, one thread: 1.42 s unchunked, 1.07 s at 16384, 1.10 s at 4096, 2.97 s at 256); on
# CUDA, large chunks keep the kernel-launch count low.
_CHUNK = {"cpu": 16384}
_CHUNK_DEFAULT = 1 << 18


def _self_occlusion(points_cam, skeleton, limb_radius, margin):
    lead, J = points_cam.shape[:-2], points_cam.shape[-2]
    flat = points_cam.reshape(-1, J, 3)
    chunk = _CHUNK.get(points_cam.device.type, _CHUNK_DEFAULT)
    if flat.shape[0] <= chunk:
        return _self_occlusion_chunk(flat, skeleton, limb_radius, margin).reshape(*lead, J)
    # Loop over chunks of views (a count fixed by the shape, not by the data).
    out = torch.cat([_self_occlusion_chunk(c, skeleton, limb_radius, margin) for c in flat.split(chunk)])
    return out.reshape(*lead, J)


def _self_occlusion_chunk(points_cam, skeleton, limb_radius, margin):
    J = points_cam.shape[-2]
    tiny = torch.finfo(points_cam.dtype).tiny ** 0.5
    P = tuple(points_cam.movedim(-1, 0).contiguous())  # 3 planes (..., J)
    a = _dot(P, P)  # (..., J) squared distance from the camera centre to each joint
    depth = a.sqrt()
    occ = torch.zeros(points_cam.shape[:-1], dtype=torch.bool, device=points_cam.device)
    r2 = limb_radius * limb_radius
    joint_ids = torch.arange(J, device=points_cam.device)

    def joint(k):
        return tuple(x[..., k:k + 1] for x in P)  # planes (..., 1), broadcast over the J rays

    # (a) limb capsules: loop over the J-1 bones (fixed count), batched over all views and joints.
    for a_idx, b_idx in skeleton.bones:
        dist2, s = _ray_segment_closest(P, a, joint(a_idx), joint(b_idx), tiny)
        in_front = (1 - s) * depth > margin  # closest ray point nearer than the joint by > margin
        not_incident = (joint_ids != a_idx) & (joint_ids != b_idx)
        occ |= (dist2 < r2) & in_front & not_incident
    # (b) torso triangles: a corner joint skips only the triangles it spans.
    for tri in _torso_triangles(skeleton):
        hit, tau = _ray_triangle(P, depth, *(joint(k) for k in tri))
        not_corner = (joint_ids != tri[0]) & (joint_ids != tri[1]) & (joint_ids != tri[2])
        occ |= hit & ((1 - tau) * depth > margin) & not_corner
    return occ


def self_occlusion(
    points_cam: torch.Tensor,
    skeleton: Skeleton,
    limb_radius: float = 0.05,
    margin: float = 0.02,
) -> torch.Tensor:
    """Joints hidden by another body part, by simple 3D reasoning (DESIGN.md step 3).

    The body is modelled as one capsule of radius ``limb_radius`` around every bone of ``skeleton.bones``
    plus the torso, the quad of shoulders and hips split along both diagonals into four triangles
    ``(r_shoulder, l_shoulder, l_hip)``, ``(r_shoulder, l_hip, r_hip)``, ``(r_shoulder, l_shoulder, r_hip)``
    and ``(l_shoulder, l_hip, r_hip)`` (both splits, so that the rule is left/right symmetric). For joint ``j`` at ``P_j`` consider the segment ("ray") from the camera centre ``O = 0`` to
    ``P_j``, with ``depth_j = |P_j|``. Joint ``j`` is occluded iff

    (a) for some bone ``(a, b)`` with ``a != j`` and ``b != j``, the closest pair of points between the
        segments ``[O, P_j]`` and ``[P_a, P_b]`` (closed form, Ericson §5.1.9; near-parallel pairs take the
        ray point nearest the camera that the clamps allow) is at distance ``< limb_radius`` and its ray
        point ``s·P_j`` (``s`` in [0, 1]) is nearer than the joint by more than ``margin``:
        ``(1 - s)·depth_j > margin``; or
    (b) for some torso triangle not having ``j`` as a corner, the ray ``τ·P_j`` (``τ > 0``) crosses the
        closed triangle (Möller–Trumbore; rays parallel to its plane never cross) at
        ``(1 - τ)·depth_j > margin``, i.e. in front of the joint by more than ``margin``.

    So each shoulder and hip is tested against the one torso triangle it does not span, the one made of
    the other three corners (e.g. ``l_shoulder`` against ``(r_shoulder, l_hip, r_hip)``); a joint is never occluded by a bone it belongs to (so a forearm pointing
    straight at the camera does not hide its own elbow, while the elbow hides a wrist behind it through the
    upper-arm capsule). A joint at the camera
    centre is never occluded. The rule ignores the head's volume, the limbs' thickness beyond
    ``limb_radius`` and the view frustum.

    Args:
        points_cam: float (..., J, 3) joints in the camera frame (metres), camera centre at the origin.
        skeleton: the joint layout (J joints; ``skeleton.torso`` gives the torso corners).
        limb_radius: capsule radius in metres (>= 0).
        margin: depth tolerance in metres (>= 0).

    Returns:
        bool (..., J), True where the joint is occluded; same device as ``points_cam``.

    Convention:
        Camera frame, metres, right-handed, ``x`` right, ``y`` down, ``z`` forward; only relative
        geometry matters (no ``z > 0`` requirement).
    """
    _check_joints(points_cam, skeleton, "points_cam")
    if not (float(limb_radius) >= 0 and math.isfinite(limb_radius)):
        raise ValueError(f"Expected a finite limb_radius >= 0, got {limb_radius}")
    if not (float(margin) >= 0 and math.isfinite(margin)):
        raise ValueError(f"Expected a finite margin >= 0, got {margin}")
    return _self_occlusion(points_cam, skeleton, float(limb_radius), float(margin))


# -- reference twin: plain Python loops over views, joints, bones (float64); tests only -------------------


def _v_sub(p, q):
    return (p[0] - q[0], p[1] - q[1], p[2] - q[2])


def _v_dot(p, q):
    return p[0] * q[0] + p[1] * q[1] + p[2] * q[2]


def _v_cross(p, q):
    return (p[1] * q[2] - p[2] * q[1], p[2] * q[0] - p[0] * q[2], p[0] * q[1] - p[1] * q[0])


def _v_lerp(p, q, w):
    return (p[0] + w * (q[0] - p[0]), p[1] + w * (q[1] - p[1]), p[2] + w * (q[2] - p[2]))


def _closest_param(x0, x1, q):
    """Parameter in [0, 1] of the point of segment [x0, x1] closest to q."""
    d = _v_sub(x1, x0)
    dd = _v_dot(d, d)
    if dd == 0.0:
        return 0.0
    return min(1.0, max(0.0, _v_dot(_v_sub(q, x0), d) / dd))


def _ray_segment_closest_reference(P, A, B):
    """Closest pair between [0, P] and [A, B] by enumeration: interior critical point, then the 4 edges
    of the parameter square. Returns ``(distance, s)``."""
    origin = (0.0, 0.0, 0.0)
    D = _v_sub(B, A)
    candidates = []
    # Interior: grad of |sP - A - tD|² = 0  <=>  [[a, -b], [b, -e]] (s, t) = (P·A, D·A).
    a, b, e = _v_dot(P, P), _v_dot(P, D), _v_dot(D, D)
    pa, da = _v_dot(P, A), _v_dot(D, A)
    det = b * b - a * e
    if abs(det) > 1e-12 * a * e:
        s = (b * da - e * pa) / det
        t = (a * da - b * pa) / det
        if 0.0 <= s <= 1.0 and 0.0 <= t <= 1.0:
            candidates.append((s, t))
    # Edges of the parameter square.
    candidates.append((0.0, _closest_param(A, B, origin)))
    candidates.append((1.0, _closest_param(A, B, P)))
    candidates.append((_closest_param(origin, P, A), 0.0))
    candidates.append((_closest_param(origin, P, B), 1.0))
    best = None
    for s, t in candidates:
        diff = _v_sub(_v_lerp(origin, P, s), _v_lerp(A, B, t))
        dist = math.sqrt(_v_dot(diff, diff))
        if best is None or dist < best[0]:
            best = (dist, s)
    return best


def _ray_triangle_reference(P, v0, v1, v2):
    """Plane intersection then same-side tests. Returns ``(hit, τ)`` for the ray ``τ·P``."""
    n = _v_cross(_v_sub(v1, v0), _v_sub(v2, v0))
    denom = _v_dot(n, P)
    if abs(denom) <= 1e-12 * math.sqrt(_v_dot(n, n) * _v_dot(P, P)) or _v_dot(n, n) == 0.0:
        return False, 0.0
    tau = _v_dot(n, v0) / denom
    if tau <= 0:
        return False, tau
    X = (tau * P[0], tau * P[1], tau * P[2])
    for p, q in ((v0, v1), (v1, v2), (v2, v0)):
        if _v_dot(_v_cross(_v_sub(q, p), _v_sub(X, p)), n) < 0:
            return False, tau
    return True, tau


def self_occlusion_reference(
    points_cam: torch.Tensor,
    skeleton: Skeleton,
    limb_radius: float = 0.05,
    margin: float = 0.02,
) -> torch.Tensor:
    """Plain-loop twin of :func:`self_occlusion` (same rule, same signature and output), for tests.

    Uses an independent closest-pair method (enumeration of the interior critical point and the four
    edges of the parameter square) and a plane-intersection + same-side triangle test, in float64.
    """
    flat = points_cam.detach().reshape(-1, points_cam.shape[-2], 3).cpu().double().tolist()
    J = points_cam.shape[-2]
    out = []
    for view in flat:
        pts = [tuple(p) for p in view]
        row = []
        for j in range(J):
            P = pts[j]
            depth = math.sqrt(_v_dot(P, P))
            occluded = False
            if depth > 0:
                for a_idx, b_idx in skeleton.bones:
                    if j in (a_idx, b_idx):
                        continue
                    dist, s = _ray_segment_closest_reference(P, pts[a_idx], pts[b_idx])
                    if dist < limb_radius and (1 - s) * depth > margin:
                        occluded = True
                for tri in _torso_triangles(skeleton):
                    if j in tri:
                        continue
                    hit, tau = _ray_triangle_reference(P, pts[tri[0]], pts[tri[1]], pts[tri[2]])
                    if hit and (1 - tau) * depth > margin:
                        occluded = True
            row.append(occluded)
        out.append(row)
    return torch.tensor(out, dtype=torch.bool).reshape(points_cam.shape[:-1]).to(points_cam.device)


# --------------------------------------------------------------------------------------------------------
# Views of a batch of 3D poses
# --------------------------------------------------------------------------------------------------------


def _render(poses, skeleton, az, el, dist, foc, limb_radius, margin):
    """Core of :func:`render_views` (no validation beyond the gated z check): ``poses (..., J, 3)`` world
    joints seen by cameras ``az, el, dist, foc (...)`` (broadcast against ``poses``' leading dims) looking at
    the torso centre. Returns ``(pose2d, pose3d, occluded, R, t)``."""
    target = _torso_centre(poses, skeleton).expand(*az.shape, 3)
    R, t = _look_at(target, az, el, dist)
    cam = _apply_rt(poses, R, t)  # (..., J, 3)
    if checks_enabled() and bool((cam[..., 2] <= 0).any()):
        raise ValueError(
            "Some joints lie at or behind the camera's image plane (z <= 0); increase distance"
        )
    pose2d = _project(cam, foc, None)
    pose3d = cam - _torso_centre(cam, skeleton)[..., None, :]
    occluded = _self_occlusion(cam, skeleton, float(limb_radius), float(margin))
    return pose2d, pose3d, occluded, R, t


def render_views(
    poses: torch.Tensor,
    skeleton: Skeleton,
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    distance: torch.Tensor | float = 5.0,
    focal: torch.Tensor | float = 1000.0,
    limb_radius: float = 0.05,
    margin: float = 0.02,
) -> ViewBatch:
    """See each of M world poses from V cameras looking at its torso centre.

    Args:
        poses: float (M, J, 3) world joints (metres, ``z`` up), e.g. ``Mocap3D.poses``.
        skeleton: their joint layout.
        azimuth: float (M, V) degrees (e.g. from :func:`sample_views`).
        elevation: float (M, V) degrees in [-90, 90].
        distance: float scalar or (M, V) metres from the camera centre to the torso centre (> 0).
        focal: float scalar or (M, V) focal length in pixels.
        limb_radius, margin: passed to :func:`self_occlusion`.

    Returns:
        :class:`ViewBatch`: ``pose2d (M, V, J, 2)`` pixels relative to the principal point ``(0, 0)``,
        ``pose3d (M, V, J, 3)`` oriented 3D labels, ``occluded (M, V, J)`` bool, ``cameras`` with (M, V)
        fields; dtype and device of ``poses``.

    Raises:
        ValueError: if a joint lies at or behind a camera's image plane (``z <= 0``): increase ``distance``.

    Convention:
        See the module docstring (world ``z`` up; camera ``x`` right, ``y`` down, ``z`` forward).
    """
    _check_joints(poses, skeleton, "poses")
    dims = check_shape(poses, ["M", "J", "3"], name="poses")
    check_shape(azimuth, ["M", "V"], name="azimuth", dims=dims)
    check_shape(elevation, ["M", "V"], name="elevation", dims=dims)
    M, V = dims["M"], dims["V"]
    az = _as_tensor(azimuth, poses, "azimuth")
    el = _as_tensor(elevation, poses, "elevation")
    dist = _as_tensor(distance, poses, "distance")
    foc = _as_tensor(focal, poses, "focal")
    _broadcast_leading({"azimuth": (M, V), "distance": tuple(dist.shape), "focal": tuple(foc.shape)})
    for x, name in ((az, "azimuth"), (el, "elevation"), (dist, "distance"), (foc, "focal")):
        check_finite(x, name)
    if checks_enabled():
        if bool((el.abs() > 90).any()):
            raise ValueError("Expected elevation in [-90, 90] degrees")
        if bool((dist <= 0).any()):
            raise ValueError("Expected distance > 0 metres")
    dist = dist.expand(M, V)
    foc = foc.expand(M, V)
    pose2d, pose3d, occluded, R, t = _render(poses[:, None], skeleton, az, el, dist, foc, limb_radius, margin)
    cameras = Cameras(azimuth=az, elevation=el, distance=dist.clone(), focal=foc.clone(),
                      cam_from_world_R=R, cam_from_world_t=t)
    return ViewBatch(pose2d=pose2d, pose3d=pose3d, occluded=occluded, cameras=cameras)
