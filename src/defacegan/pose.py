"""Was the head's pose understood? A guard against false assurance from a misread pose.

The detector judges a face from views of a grid whose axes are taken to be the head's
(:meth:`defacegan.contract.InputContract.place`: RAS+ from the header, straightened by the head's
mirror plane up to 45 degrees). A header that misstates the axes (a quarter turn, a head lying on
its side or face down) or a head turned beyond what the mirror reading straightens leaves the face
where the views do not look, and the network, never trained on such grids, calls an intact face
removed. This averages the detector's own input volume down to a coarse grid (:data:`POSE_CHECK_MM`,
:func:`coarse`) and compares it with pydeface's mean head brought there the same way, T1w or
T2w-like (:data:`CONTRASTS`; :func:`upright_margin`): their correlation over the template's top
:data:`COMPARED_MM` (what a field of view that stops at the chin still holds) less its face
(:data:`FACE_SHARE`: what a defacer takes away or replaces), the best over poses near upright
(:data:`NEAR_UPRIGHT`: nods, turns and rolls up to 30 degrees, which the network was
trained on or the anatomy's nod takes off) minus the best over the 23 other quarter-turn
orientations of the head about its centre of mass. A head better matched by one of those is not
understood. One the template plainly matches turned a quarter or half way is read again with
its header's axes turned back so (:func:`righting_turn`, :data:`RIGHTING_BELOW`) and judged if it is
then plainly upright, as is one whose grid the mirror reading turned past its reach
(:data:`STRAIGHTENED_PAST`) when the righted reading matches better. Any other is referred to a
registration of the template (:func:`defacegan.anatomy.registered_upright`, a few seconds; not with
``--anatomy never``): judged as it lies where that finds it upright, otherwise answered ``face`` by
``check``, with a note: a false alarm to look at, not false assurance.

The template, turned back by each pose, is an asset (:data:`POSES_ASSET`, built by ``python -m
defacegan.pose``, ``make assets``): placing it costs more than a second, more than the whole check of a scan.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
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
#: The template turned back by each pose (:func:`build_poses`), shipped (``python -m defacegan.pose``,
#: ``make assets``): placing pydeface's head costs more than a second, and turning it every way 0.1-0.2 s
#: of every check's start.
POSES_ASSET = files("defacegan") / "assets" / "pose_templates.npz"
#: The template is compared over its top this far (mm): the head above the chin, which a field of
#: view that stops at the chin still holds.
COMPARED_MM = 140.0
#: ... less the template's face: its voxels (8 mm) of which more than this share is pydeface's face
#: mask. A defacer removes or replaces the face; without it, a defaced head is matched as its intact
#: self is (on 24 IXI heads, not the held-out ones, posed 8 ways and defaced 3 ways, the pose was
#: not understood on 17 of 576 defaced scans, against 37 with the face compared).
FACE_SHARE = 0.05
#: The template's contrasts: pydeface's T1w mean head, and the T2w-like head the detector's training
#: inverts to (:func:`defacegan.augment.t2w_like`). A scan's score in a pose is the better of the two:
#: against the T1w head alone, a fluid-bright head can match better turned than upright (of the 416
#: draws of the held-out heads within 15 degrees of upright that ``bench/detector_eval.py``'s shipped
#: column judges, the T1w head alone flagged or righted 94, in a probe; both, with
#: :data:`RIGHTED_ABOVE` raised, 33: ``bench/pose_guard.py``).
CONTRASTS = ("T1w", "T2w-like")
#: A scan whose margin (:func:`upright_margin`) is below minus this is read again with its header's
#: axes turned back by the template's best quarter or half turn (:func:`righting_turn`), and judged
#: so if the template then matches it upright by at least :data:`RIGHTED_ABOVE`; otherwise, and for
#: a margin between -RIGHTING_BELOW and 0, ``check`` answers ``face``. Both keep the turn to where
#: the template is plain about it: headers turned a quarter or half way gave margins of -0.013 to
#: -0.157 on 32 IXI heads, upright heads +0.010 to +0.068 (nodded up to 25 degrees, turned 40; both
#: with the face compared, before :data:`FACE_SHARE`). The bar for the righted reading was 0.01
#: until the T2w-like template: on the 24 IXI heads outside the held-out set, one draw of every
#: family each (random pose within 15 degrees, contrast, field of view), upright and with the
#: header turned 4 ways, a bar of 0.02 rights 1 upright scan by a wrong turn instead of 5, and no
#: turned face-labelled scan by a wrong turn instead of 6 of 352 (a wrong turn can hide a face),
#: at the price of 104 of those 352 flagged (``face``, with a note) instead of 39, 238 righted instead of 299.
RIGHTING_BELOW = 0.01
RIGHTED_ABOVE = 0.02
#: A grid the mirror reading turned further than this (degrees, the reading's reach) is read righted
#: too, and judged so when the template then matches it upright by more: a header turned a quarter
#: or half way can be straightened onto a near-upright pose that the margin passes (Colin27, its
#: header turned 180 degrees about R+S: straightened 81 degrees, margin +0.014, p(removed) 0.48).
STRAIGHTENED_PAST = 45.0
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


def build_template() -> tuple[torch.Tensor, torch.Tensor]:
    """pydeface's mean head as the shipped contract's volume (:class:`InputContract`'s defaults),
    placed as a scan is, in each of :data:`CONTRASTS`, on the pose grid (:func:`coarse`), float32,
    (C, X, Y, Z); and its face there (pydeface's face mask: the voxels of which more than
    :data:`FACE_SHARE` is face), bool, (X, Y, Z)."""
    from defacegan.augment import t2w_like
    from defacegan.deface import PYDEFACE_DATA  # SimpleITK and SciPy: only here, not on check's path

    image = nib.load(str(PYDEFACE_DATA / "mean_reg2mean.nii.gz"))
    face = np.asanyarray(nib.load(str(PYDEFACE_DATA / "facemask.nii.gz")).dataobj) < 0.5
    contract = InputContract()
    data = np.asanyarray(image.dataobj)
    placed = contract.place(data, image.affine)
    volume = contract.volume(data, image.affine, placed)
    heads = torch.stack([coarse(volume, contract.spacing), coarse(t2w_like(volume[None])[0], contract.spacing)])
    face_share = coarse(contract.on_grid(face.astype(np.float32), image.affine, label=True, placed=placed), contract.spacing)
    return heads, face_share > FACE_SHARE


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
    """The template in each of :data:`CONTRASTS` turned back by each pose about its centre of mass
    (``centre``, (C, 3) voxels): over the voxels of its turned compared region (its top
    :data:`COMPARED_MM` less its face; ``regions``, (C, A, N) 0/1), less its mean there and over its
    norm (``templates``, (C, A, N)), so that a dot product with a scan is a correlation over that
    region, up to the scan's own spread there."""

    templates: torch.Tensor
    regions: torch.Tensor
    centre: torch.Tensor


def build_poses() -> Poses:
    """:class:`Poses` of :data:`NEAR_UPRIGHT` and :data:`QUARTER_TURNS` (a scan turned by a pose matches
    the template as the scan matches the template turned back by it: each scan is resampled once)."""
    heads, face = build_template()
    back = np.concatenate([NEAR_UPRIGHT, QUARTER_TURNS]).transpose(0, 2, 1)
    top = int(torch.nonzero(heads[0].amax((0, 1)) > HEAD_FLOOR).max())
    region = torch.zeros_like(face, dtype=heads.dtype)
    region[..., max(0, top - round(COMPARED_MM / POSE_CHECK_MM)):] = 1.0
    region[face] = 0.0
    built = []
    for head in heads:
        centre = centre_of_mass(head)
        turned, regions = turned_about(torch.stack([head, region]), back, centre, centre).unbind(1)
        regions = (regions > 0.5).float().flatten(1)
        turned = turned.flatten(1) * regions
        turned = (turned - turned.sum(1, keepdim=True) / regions.sum(1, keepdim=True)) * regions
        built.append((turned / turned.norm(dim=1, keepdim=True), regions, centre))
    return Poses(*map(torch.stack, zip(*built)))


@lru_cache(maxsize=1)
def poses() -> Poses:
    """:class:`Poses` as the asset holds them (:data:`POSES_ASSET`: the templates in float16, which
    moves a margin by less than 1e-4; the regions as bits)."""
    with np.load(str(POSES_ASSET)) as stored:
        templates = torch.from_numpy(stored["templates"].astype(np.float32))
        regions = np.unpackbits(stored["regions"], axis=-1, count=templates.shape[-1])
        return Poses(templates, torch.from_numpy(regions.astype(np.float32)), torch.from_numpy(stored["centre"]))


def pose_scores(volume: torch.Tensor, spacing: float) -> torch.Tensor:
    """The template's best correlation (the better of its :data:`CONTRASTS`) with a scan in each pose
    (:data:`NEAR_UPRIGHT`, then :data:`QUARTER_TURNS`), from the detector's input volume of it
    (``volume``, (1,) X, Y, Z at ``spacing`` mm: placed and turned as
    :meth:`~defacegan.contract.InputContract.place` says) averaged down (:func:`coarse`): each over
    the template's top :data:`COMPARED_MM` less its face (so a field of view that stops at the chin
    and one that holds the neck, a defaced head and an intact one, are judged alike), the scan's
    centre of mass on the template's and shifted a voxel either way along each axis (a neck, or its
    absence, moves the centre of mass)."""
    compared = poses()
    grid = coarse(volume, spacing)
    scores = []
    for templates, regions, centre in zip(compared.templates, compared.regions, compared.centre):
        centred = turned_about(grid[None], np.eye(3)[None], centre_of_mass(grid), centre)[0, 0]
        shifts = torch.stack([centred.roll(shift, dims=(0, 1, 2)).flatten()
                              for shift in itertools.product((-1, 0, 1), repeat=3)], 1)  # (N, 27)
        spread = regions @ shifts ** 2 - (regions @ shifts) ** 2 / regions.sum(1, keepdim=True)
        scores.append(((templates @ shifts) / spread.clamp_min(1e-12).sqrt()).amax(1))
    return torch.stack(scores).amax(0)


def upright_margin(volume: torch.Tensor, spacing: float) -> float:
    """How much better the template matches a scan near upright than turned a quarter or half way
    (:func:`pose_scores`): the best correlation over :data:`NEAR_UPRIGHT` less the best over
    :data:`QUARTER_TURNS`. Negative: not understood."""
    scores = pose_scores(volume, spacing)
    return float(scores[: len(NEAR_UPRIGHT)].max() - scores[len(NEAR_UPRIGHT):].max())


def best_quarter_turn(volume: torch.Tensor, spacing: float) -> np.ndarray:
    """The quarter or half turn (of :data:`QUARTER_TURNS`, on the grid's axes) by which an upright
    head best matches the scan (:func:`pose_scores`): the grid holds it turned so."""
    return QUARTER_TURNS[int(pose_scores(volume, spacing)[len(NEAR_UPRIGHT):].argmax())]


def understood(margin: float | None) -> bool:
    """Whether a scan with :func:`upright_margin` ``margin`` (None: not checked) was understood."""
    return margin is None or margin >= 0


def righting_turn(data: np.ndarray, affine: np.ndarray, contract: InputContract,
                  along_header: torch.Tensor | None = None) -> np.ndarray:
    """The world rotation that would bring the head of a scan (``data``, ``affine``) upright, read on
    ``contract``'s grid along the header's axes (not straightened by the mirror, which would leave
    the head between two quarter turns): the inverse of :func:`best_quarter_turn` there.
    ``along_header``: the contract's volume of the scan when its placement was not straightened,
    which is that grid's (not built twice)."""
    if along_header is None:
        along_header = replace(contract, straighten_beyond=360.0).volume(data, affine)
    return best_quarter_turn(along_header, contract.spacing).T


def describe_turn(rotation: np.ndarray) -> str:
    """A quarter or half turn in words: its angle (right-handed) and its axis in RAS, the axis's
    first component positive, e.g. ``-90° about S`` or ``120° about R-A+S``."""
    degrees = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rotation) - 1) / 2))))
    if degrees > 179.0:  # a half turn: its axis is the eigenvector of eigenvalue 1
        values, vectors = np.linalg.eig(rotation)
        axis = np.real(vectors[:, np.argmin(abs(values - 1))])
    else:
        axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    if axis[np.flatnonzero(abs(axis) > 1e-6)[0]] < 0:
        axis, degrees = -axis, (degrees if degrees > 179.0 else -degrees)
    letters = "".join(("-" if value < 0 else "+") + name for value, name in zip(axis, "RAS") if abs(value) > 1e-6)
    return f"{degrees:.0f}° about {letters.removeprefix('+')}"


def write_poses_asset() -> str:
    """Build the poses' asset (:func:`build_poses`) and write it."""
    built = build_poses()
    buffer = BytesIO()
    np.savez_compressed(buffer, templates=built.templates.numpy().astype(np.float16),
                        regions=np.packbits(built.regions.numpy() > 0.5, axis=-1), centre=built.centre.numpy())
    return str(atomic_write_bytes(str(POSES_ASSET), buffer.getvalue()))


if __name__ == "__main__":
    print(write_poses_asset())
