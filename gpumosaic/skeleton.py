"""Skeletons: joint names, bones (edges of the kinematic tree), left/right flip permutation, mappings.

Provided layouts: :data:`LSP14` (the paper's 2D source layout and the package default), :data:`MPII16`,
:data:`H36M17`. :func:`mapping` returns a linear map between layouts, so that a joint missing from a layout
is the mean of others (pelvis = mid-hips, thorax = mid-shoulders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from ._check import ShapeError, check_finite, check_shape, checks_enabled

__all__ = ["Skeleton", "LSP14", "MPII16", "H36M17", "mapping", "convert", "get_skeleton", "check_joints"]


@dataclass(frozen=True)
class Skeleton:
    """A joint layout.

    Attributes:
        name: short name of the layout, e.g. ``"lsp14"``.
        names: joint names, in index order (J entries).
        bones: pairs ``(a, b)`` of joint indices, the J-1 edges of the kinematic tree.
        flip: left/right permutation: the mirrored pose's joint ``k`` is the original's joint ``flip[k]``.
        torso: indices of (right shoulder, left shoulder, right hip, left hip); the torso centre is their mean.
    """

    name: str
    names: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    flip: tuple[int, ...]
    torso: tuple[int, int, int, int]
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        j = len(self.names)
        if sorted(self.flip) != list(range(j)):
            raise ValueError(f"flip of {self.name} must be a permutation of range({j}), got {self.flip}")
        if len(self.bones) != j - 1:
            raise ValueError(f"{self.name} must have J-1={j - 1} bones (a tree), got {len(self.bones)}")
        for a, b in self.bones:
            if not (0 <= a < j and 0 <= b < j and a != b):
                raise ValueError(f"bad bone ({a}, {b}) in {self.name}")
        # Connected tree check.
        seen, stack = {0}, [0]
        while stack:
            k = stack.pop()
            for n in self.neighbours[k]:
                if n not in seen:
                    seen.add(n)
                    stack.append(n)
        if len(seen) != j:
            raise ValueError(f"bones of {self.name} do not connect all {j} joints")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def neighbours(self) -> tuple[tuple[int, ...], ...]:
        """For each joint, the joints sharing a bone with it (sorted)."""
        nb: list[set[int]] = [set() for _ in self.names]
        for a, b in self.bones:
            nb[a].add(b)
            nb[b].add(a)
        return tuple(tuple(sorted(s)) for s in nb)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def bones_tensor(self, device=None) -> torch.Tensor:
        """Bones as an int64 tensor of shape (J-1, 2)."""
        return torch.tensor(self.bones, dtype=torch.long, device=device)

    def flip_tensor(self, device=None) -> torch.Tensor:
        """Flip permutation as an int64 tensor of shape (J,)."""
        return torch.tensor(self.flip, dtype=torch.long, device=device)

    def torso_centre(self, joints: torch.Tensor) -> torch.Tensor:
        """Mean of the torso joints (right/left shoulders, right/left hips) of ``joints`` (..., J, D) ->
        (..., D), same dtype and device (no validation: see :func:`gpumosaic.camera.torso_centre`)."""
        idx = torch.tensor(self.torso, device=joints.device)
        return joints.index_select(-2, idx).mean(dim=-2)

    def __hash__(self) -> int:
        return hash(self.name)


def _flip_from_names(names: tuple[str, ...]) -> tuple[int, ...]:
    out = []
    for n in names:
        if n.startswith("r_"):
            m = "l_" + n[2:]
        elif n.startswith("l_"):
            m = "r_" + n[2:]
        else:
            m = n
        out.append(names.index(m))
    return tuple(out)


_LSP_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    "neck", "head_top",
)
LSP14 = Skeleton(
    name="lsp14",
    names=_LSP_NAMES,
    # A tree rooted at the neck; the hips hang from the neck (the sides of the torso).
    bones=((0, 1), (1, 2), (2, 12), (5, 4), (4, 3), (3, 12), (6, 7), (7, 8), (8, 12),
           (11, 10), (10, 9), (9, 12), (12, 13)),
    flip=_flip_from_names(_LSP_NAMES),
    torso=(8, 9, 2, 3),
)
"""Leeds Sports Pose, 14 joints: the paper's 2D layout and the package default."""

_MPII_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "upper_neck",
    "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
MPII16 = Skeleton(
    name="mpii16",
    names=_MPII_NAMES,
    bones=((0, 1), (1, 2), (2, 6), (5, 4), (4, 3), (3, 6), (6, 7), (7, 8), (8, 9),
           (10, 11), (11, 12), (12, 7), (15, 14), (14, 13), (13, 7)),
    flip=_flip_from_names(_MPII_NAMES),
    torso=(12, 13, 2, 3),
)
"""MPII Human Pose, 16 joints."""

_H36M_NAMES = (
    "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
    "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist",
)
H36M17 = Skeleton(
    name="h36m17",
    names=_H36M_NAMES,
    bones=((0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10),
           (8, 11), (11, 12), (12, 13), (8, 14), (14, 15), (15, 16)),
    flip=_flip_from_names(_H36M_NAMES),
    torso=(14, 11, 1, 4),
)
"""Human3.6M, 17 joints (the common 17-joint subset)."""

_SKELETONS = {s.name: s for s in (LSP14, MPII16, H36M17)}


def get_skeleton(name: str | Skeleton) -> Skeleton:
    """Return a skeleton by name (``"lsp14"``, ``"mpii16"``, ``"h36m17"``)."""
    if isinstance(name, Skeleton):
        return name
    try:
        return _SKELETONS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown skeleton {name!r}; expected one of {sorted(_SKELETONS)}") from None


# Each target joint as a list of source joints whose mean it is.
_RECIPES: dict[tuple[str, str], list[list[str]]] = {
    ("mpii16", "lsp14"): [[n] for n in ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
                                        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
                                        "l_wrist", "upper_neck", "head_top")],
    ("h36m17", "lsp14"): [[n] for n in ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
                                        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
                                        "l_wrist", "thorax", "head")],
    ("lsp14", "mpii16"): [["r_ankle"], ["r_knee"], ["r_hip"], ["l_hip"], ["l_knee"], ["l_ankle"],
                          ["r_hip", "l_hip"], ["r_shoulder", "l_shoulder"], ["neck"], ["head_top"],
                          ["r_wrist"], ["r_elbow"], ["r_shoulder"], ["l_shoulder"], ["l_elbow"], ["l_wrist"]],
    ("h36m17", "mpii16"): [["r_ankle"], ["r_knee"], ["r_hip"], ["l_hip"], ["l_knee"], ["l_ankle"],
                           ["pelvis"], ["thorax"], ["neck_nose"], ["head"],
                           ["r_wrist"], ["r_elbow"], ["r_shoulder"], ["l_shoulder"], ["l_elbow"], ["l_wrist"]],
    ("mpii16", "h36m17"): [["pelvis"], ["r_hip"], ["r_knee"], ["r_ankle"], ["l_hip"], ["l_knee"],
                           ["l_ankle"], ["pelvis", "thorax"], ["thorax"], ["upper_neck"], ["head_top"],
                           ["l_shoulder"], ["l_elbow"], ["l_wrist"], ["r_shoulder"], ["r_elbow"], ["r_wrist"]],
    ("lsp14", "h36m17"): [["r_hip", "l_hip"], ["r_hip"], ["r_knee"], ["r_ankle"], ["l_hip"], ["l_knee"],
                          ["l_ankle"], ["r_hip", "l_hip", "r_shoulder", "l_shoulder"],
                          ["r_shoulder", "l_shoulder"], ["neck"], ["head_top"],
                          ["l_shoulder"], ["l_elbow"], ["l_wrist"], ["r_shoulder"], ["r_elbow"], ["r_wrist"]],
}


def mapping(src: Skeleton | str, dst: Skeleton | str) -> torch.Tensor:
    """Linear map between layouts: float32 tensor of shape (J_dst, J_src), rows summing to 1.

    ``dst_joints = mapping(src, dst) @ src_joints``. Approximations: MPII ``upper_neck`` and H36M ``thorax``
    stand for LSP ``neck``; H36M ``head`` for ``head_top``; missing pelvis/thorax/spine are means of hips
    and shoulders.
    """
    src, dst = get_skeleton(src), get_skeleton(dst)
    if src.name == dst.name:
        return torch.eye(len(src))
    recipe = _RECIPES.get((src.name, dst.name))
    if recipe is None:
        raise ValueError(f"No mapping from {src.name} to {dst.name}")
    m = torch.zeros(len(dst), len(src))
    for row, parts in enumerate(recipe):
        for p in parts:
            m[row, src.index(p)] = 1.0 / len(parts)
    return m


def convert(joints: torch.Tensor, src: Skeleton | str, dst: Skeleton | str) -> torch.Tensor:
    """Convert joints of shape (..., J_src, D) to (..., J_dst, D) with :func:`mapping`."""
    m = mapping(src, dst).to(device=joints.device, dtype=joints.dtype)
    return torch.einsum("ds,...sc->...dc", m, joints)


def check_joints(x: torch.Tensor, skeleton: Skeleton, name: str, coords: str | None = "3") -> None:
    """Validate joints ``x (..., J, coords)`` of ``skeleton`` at a public entry point: float, J joints, finite.

    ``coords`` is the size of the last dimension (``"2"``, ``"3"``) or ``None`` for any. Raises
    :class:`~gpumosaic._check.ShapeError` / ``TypeError`` / ``ValueError`` naming ``name``; the finiteness
    check syncs with the device (skipped inside :func:`~gpumosaic._check.unchecked`).
    """
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
