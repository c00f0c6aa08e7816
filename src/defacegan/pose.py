"""Was the head's pose understood? A guard against false assurance from a misread pose.

The detector judges a face from views of a grid whose axes are taken to be the head's
(:meth:`defacegan.contract.InputContract.place`: RAS+ from the header, straightened by the head's
mirror plane up to 45 degrees). A header that misstates the axes (a quarter turn, a head lying on
its side or face down) or a head turned beyond what the mirror reading straightens leaves the face
where the views do not look, and the network, never trained on such grids, calls an intact face
removed. This averages the detector's own input volume down to a coarse grid (:data:`POSE_CHECK_MM`,
:func:`coarse`) and compares it with pydeface's mean head brought there the same way
(:func:`upright_margin`): their correlation over the template's top :data:`COMPARED_MM` (what a
field of view that stops at the chin still holds), the best over poses near
upright (:data:`NEAR_UPRIGHT`: nods, turns and rolls up to 30 degrees, which the network was
trained on or the anatomy's nod takes off) minus the best over the 23 other quarter-turn
orientations of the head about its centre of mass. A head better matched by one of those is not
understood, and ``check`` answers ``face`` with a note: a false alarm to look at, not false
assurance.

The template on that grid is an asset (:data:`TEMPLATE_ASSET`, built by ``python -m defacegan.pose``,
``make assets``): placing it costs more than a second, more than the whole check of a scan.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from io import BytesIO

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from defacegan.contract import HEAD_FLOOR, InputContract, plane_rotation
from defacegan.io import atomic_write_bytes

#: The pose is compared on a grid this coarse (mm), :data:`POSE_SHAPE` voxels a side (256 mm): a
#: head's gross shape, averaged down from the detector's input volume.
POSE_CHECK_MM = 8.0
POSE_SHAPE = (32, 32, 32)
#: The template head on that grid.
TEMPLATE_ASSET = files("defacegan") / "assets" / "template_pose.npy"
#: The template is compared over its top this far (mm): the head above the chin, which a field of
#: view that stops at the chin still holds.
COMPARED_MM = 140.0
#: Poses the detector understands, as rotations of the grid's (left-right, front-back, up-down) axes:
#: upright, and nodded, turned or rolled by 15 or 30 degrees.
NEAR_UPRIGHT = np.stack([np.eye(3)] + [plane_rotation(a, b, degrees) for a, b in ((1, 2), (0, 1), (0, 2))
                                       for degrees in (-30.0, -15.0, 15.0, 30.0)])


def quarter_turns() -> np.ndarray:
    """The 23 rotations other than the identity that take the grid's axes onto its axes or their opposites."""
    turns = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            rotation = np.zeros((3, 3))
            rotation[range(3), order] = signs
            if np.linalg.det(rotation) > 0 and not np.array_equal(rotation, np.eye(3)):
                turns.append(rotation)
    return np.stack(turns)


QUARTER_TURNS = quarter_turns()


def require_poolable(contract: InputContract) -> None:
    """Raise ValueError unless ``contract``'s grid averages down to :data:`POSE_CHECK_MM` voxels."""
    factor = POSE_CHECK_MM / contract.spacing
    if factor != round(factor):
        raise ValueError(f"the pose check needs a grid spacing that divides {POSE_CHECK_MM:g} mm, not {contract.spacing:g} mm: "
                         "turn it off (--no-pose-check, pose_check=False)")


def coarse(volume: torch.Tensor, spacing: float) -> torch.Tensor:
    """A grid volume ((1,) X, Y, Z at ``spacing`` mm: the contract's input) averaged down to
    :data:`POSE_CHECK_MM` and cropped or padded to :data:`POSE_SHAPE` about its middle. Where the
    head lies on it does not matter to within a few voxels: :func:`upright_margin` moves its
    centre of mass onto the template's."""
    factor = round(POSE_CHECK_MM / spacing)
    pooled = F.avg_pool3d(volume.reshape(1, 1, *volume.shape[-3:]).float(), factor, ceil_mode=True)[0, 0]
    for axis, size in enumerate(POSE_SHAPE):
        extra = pooled.shape[axis] - size
        if extra > 0:
            pooled = pooled.narrow(axis, extra // 2, size)
        elif extra < 0:
            pad = [0, 0] * 3
            pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = -extra // 2, -extra - (-extra // 2)
            pooled = F.pad(pooled, pad)
    return pooled


def build_template() -> torch.Tensor:
    """pydeface's mean head as the shipped contract's volume (:class:`InputContract`'s defaults),
    placed as a scan is, on the pose grid (:func:`coarse`): (X, Y, Z) float32."""
    from defacegan.deface import PYDEFACE_DATA  # SimpleITK and SciPy: only here, not on check's path

    image = nib.load(str(PYDEFACE_DATA / "mean_reg2mean.nii.gz"))
    contract = InputContract()
    return coarse(contract.volume(np.asanyarray(image.dataobj), image.affine), contract.spacing)


@lru_cache(maxsize=1)
def template() -> torch.Tensor:
    """The template on the pose grid, as the asset holds it (float32, as scans' grids are)."""
    return torch.from_numpy(np.load(str(TEMPLATE_ASSET)))


def centre_of_mass(volume: torch.Tensor) -> torch.Tensor:
    """(3,) voxel coordinates of ``volume``'s intensity-weighted centre."""
    weights = volume.clamp_min(0)
    weights = weights / weights.sum()
    return torch.stack([(weights.sum(dim=[d for d in range(3) if d != axis]) * torch.arange(n, dtype=volume.dtype)).sum()
                        for axis, n in enumerate(volume.shape)])


def turned_about(volumes: torch.Tensor, rotations: np.ndarray, centre: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """``volumes`` (C, X, Y, Z) turned by each of ``rotations`` (A, 3, 3) about ``centre`` (voxels),
    which lands on ``onto``: (A, C, X, Y, Z), trilinear, 0 outside."""
    turns = torch.as_tensor(rotations, dtype=torch.float64)
    to_unit = 2 / (torch.tensor(volumes.shape[1:], dtype=torch.float64) - 1)  # voxels -> [-1, 1], align_corners
    # a voxel p of the result is read at turns @ (p - onto) + centre; in [-1, 1] coordinates, x y z = the last axis first
    linear = to_unit[:, None] * turns / to_unit
    offset = to_unit * (turns @ (1 / to_unit - onto.double()) + centre.double()) - 1
    theta = torch.cat([linear, offset[..., None]], -1).flip(-2)[..., [2, 1, 0, 3]]
    grid = F.affine_grid(theta.to(volumes.dtype), [len(turns), *volumes.shape], align_corners=True)
    return F.grid_sample(volumes.expand(len(turns), *volumes.shape), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=True)


@dataclass(frozen=True)
class Poses:
    """The template turned back by each pose about its centre of mass (``centre``, voxels): over the
    voxels of its turned :data:`COMPARED_MM` region (``regions``, (A, N) 0/1), less its mean there
    and over its norm (``templates``, (A, N)), so that a dot product with a scan is a correlation
    over that region, up to the scan's own spread there."""

    templates: torch.Tensor
    regions: torch.Tensor
    centre: torch.Tensor


@lru_cache(maxsize=1)
def poses() -> Poses:
    """:class:`Poses` of :data:`NEAR_UPRIGHT` and :data:`QUARTER_TURNS` (a scan turned by a pose matches
    the template as the scan matches the template turned back by it: each scan is resampled once)."""
    head = template()
    centre = centre_of_mass(head)
    back = np.concatenate([NEAR_UPRIGHT, QUARTER_TURNS]).transpose(0, 2, 1)
    top = int(torch.nonzero(head.amax((0, 1)) > HEAD_FLOOR).max())
    region = torch.zeros_like(head)
    region[..., max(0, top - round(COMPARED_MM / POSE_CHECK_MM)):] = 1.0
    turned, regions = turned_about(torch.stack([head, region]), back, centre, centre).unbind(1)
    regions = (regions > 0.5).float().flatten(1)
    turned = turned.flatten(1) * regions
    turned = (turned - turned.sum(1, keepdim=True) / regions.sum(1, keepdim=True)) * regions
    return Poses(turned / turned.norm(dim=1, keepdim=True), regions, centre)


def upright_margin(volume: torch.Tensor, spacing: float) -> float:
    """How much better the template matches a scan near upright than turned a quarter or half way,
    from the detector's input volume of it (``volume``, (1,) X, Y, Z at ``spacing`` mm: placed and
    turned as :meth:`~defacegan.contract.InputContract.place` says) averaged down (:func:`coarse`):
    the best correlation over
    :data:`NEAR_UPRIGHT` less the best over :data:`QUARTER_TURNS`, each over the template's top
    :data:`COMPARED_MM` (so a field of view that stops at the chin and one that holds the neck are
    judged alike), the scan's centre of mass on the template's and shifted a voxel either way along
    each axis (a neck, or its absence, moves the centre of mass). Negative: not understood."""
    compared = poses()
    grid = coarse(volume, spacing)
    centred = turned_about(grid[None], np.eye(3)[None], centre_of_mass(grid), compared.centre)[0, 0]
    shifts = torch.stack([centred.roll(shift, dims=(0, 1, 2)).flatten()
                          for shift in itertools.product((-1, 0, 1), repeat=3)], 1)  # (N, 27)
    spread = compared.regions @ shifts ** 2 - (compared.regions @ shifts) ** 2 / compared.regions.sum(1, keepdim=True)
    scores = ((compared.templates @ shifts) / spread.clamp_min(1e-12).sqrt()).amax(1)
    return float(scores[: len(NEAR_UPRIGHT)].max() - scores[len(NEAR_UPRIGHT):].max())


def understood(margin: float | None) -> bool:
    """Whether a scan with :func:`upright_margin` ``margin`` (None: not checked) was understood."""
    return margin is None or margin >= 0


def write_template_asset() -> str:
    """Build the template asset and write it (float32)."""
    buffer = BytesIO()
    np.save(buffer, build_template().float().numpy())
    return str(atomic_write_bytes(str(TEMPLATE_ASSET), buffer.getvalue()))


if __name__ == "__main__":
    print(write_template_asset())
