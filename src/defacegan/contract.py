"""The input contract: how a scan becomes what the detector sees, in plain torch.

One small object, saved inside the detector's checkpoint, used by training (the cache), by
``check``/``serve``/``predict`` and by the evaluation benchmark, so that every path prepares a
scan the same way:

1. **grid**: resample to an axis-aligned RAS+ grid of ``spacing`` mm and ``shape`` voxels
   (trilinear; a box filter first when the scan is finer than the grid, so thin structures are
   averaged rather than aliased). Masks use nearest neighbour. Any orientation and oblique affine
   is handled by the one resampling. The grid is placed on the head, not on the field of view
   (``anchor="head"``): the back and the top of the head and its left-right middle, which no
   defacing touches, sit at the same grid position in every scan, so a middle slice cuts the
   same anatomy whether the scanner's field of view held the neck or stopped below the nose.
2. **air**: a magnitude image's air holds Rayleigh noise, where IXI's (the training scans') is 0;
   on the grid, what lies below the scan's air level (:func:`head_and_air_levels`) is set to 0, so
   that a noisy scan's air does not look like the noise some defacers fill the face with. A scan
   whose air is 0 has air level 0: this step leaves it as it is;
3. **intensities**: negative values (resampling overshoot, signed data) clamped to 0, divided by
   the volume's robust scale (99.5th percentile of the nonzero voxels), stored as float16 —
   what the training cache holds, so check and training see the same numbers;
4. **views**: :func:`defacegan.views.compute_views` at ``view_size`` pixels, ``view_mode`` views.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from defacegan.views import VIEW_MODES, VIEW_NAMES, compute_views, robust_scale

#: The detector's answers, in logit order: a face is there; the face was removed (zeros, noise,
#: a constant, cropped); the face was replaced by tissue that is not the subject's.
VERDICTS = ("face", "removed", "replaced")
ANCHORS = ("head", "fov")
#: Head voxels exceed this share of the 99.5th percentile of a scan's positive voxels ...
HEAD_FLOOR = 0.15
#: ... and the air's level: this many times the median of the voxels below that floor, most of which
#: are air. Air in a magnitude image is Rayleigh noise, whose median is 1.18 σ: 4 × 1.18 σ leaves
#: one air voxel in 10^5 above it. A scan whose air was masked to 0 (IXI's) has air level 0.
AIR_NOISE_FACTOR = 4.0
#: With ``anchor="head"`` the grid's centre lies this far (mm) in front of the back of the head
#: and below its top: the median of the 32 IXI heads relative to their field of view's centre,
#: so the grid holds the whole head with the face and some neck.
HEAD_ANCHOR_MM = (101.0, 92.0)


@dataclass(frozen=True)
class InputContract:
    """Scan → model input. ``spacing`` mm, ``shape`` voxels, ``view_size`` px, ``view_mode``."""

    spacing: float = 2.0
    shape: tuple[int, int, int] = (128, 128, 128)
    view_size: int = 64
    view_mode: str = "all_face"
    classes: tuple[str, ...] = VERDICTS
    anchor: str = "head"  # "head": the grid placed by head landmarks; "fov": on the field of view's centre

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.view_mode not in VIEW_MODES:
            raise ValueError(f"view_mode {self.view_mode!r} is not one of {sorted(VIEW_MODES)}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor {self.anchor!r} is not one of {ANCHORS}")

    @classmethod
    def from_dict(cls, values: Mapping) -> InputContract:
        return cls(**dict(values))

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint holding it loads with ``weights_only=True``."""
        values = asdict(self)
        return {**values, "shape": list(values["shape"]), "classes": list(values["classes"])}

    @property
    def view_names(self) -> list[str]:
        return [VIEW_NAMES[i] for i in VIEW_MODES[self.view_mode]]

    @property
    def grid_affine(self) -> np.ndarray:
        """Voxel → world of the grid, up to the translation that centres it on each scan."""
        return np.diag([self.spacing] * 3 + [1.0])

    def centre(self, data: np.ndarray | torch.Tensor, affine: np.ndarray) -> np.ndarray:
        """Where the grid's centre goes, in the scan's world mm (:meth:`placement`)."""
        return self.placement(data, affine)[0]

    def air_level(self, data: np.ndarray | torch.Tensor, affine: np.ndarray) -> float:
        """The scan's air level (:meth:`placement`)."""
        return self.placement(data, affine)[1]

    def placement(self, data: np.ndarray | torch.Tensor, affine: np.ndarray) -> tuple[np.ndarray, float]:
        """(where the grid's centre goes, in the scan's world mm; the scan's air level), from one
        read of the scan at about the grid's spacing.

        The centre is the field of view's, or (``anchor="head"``) :data:`HEAD_ANCHOR_MM` from the
        head's back, top and left-right middle. The head is what exceeds :func:`head_and_air_levels`'
        head level; its extent along each voxel axis runs between the 0.5th and 99.5th percentiles of
        its voxels' positions (so stray bright voxels in the air do not move it), found from the
        three axis profiles, not from every voxel's position. A scan with no head to speak of keeps
        the field of view's centre and air level 0.
        """
        data = data.numpy() if torch.is_tensor(data) else np.asarray(data)
        affine = np.asarray(affine, dtype=np.float64)
        steps = [max(1, round(self.spacing / s)) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
        sample = data[tuple(slice(None, None, step) for step in steps)]
        levels = head_and_air_levels(sample)
        if levels is None:
            return fov_centre(data.shape, affine), 0.0
        head_level, air = levels
        if self.anchor == "fov":
            return fov_centre(data.shape, affine), air
        head = sample > head_level
        if np.count_nonzero(head) < 1000:
            return fov_centre(data.shape, affine), air
        extent = []
        for axis in range(3):
            profile = np.cumsum(head.sum(axis=tuple(a for a in range(3) if a != axis)))
            extent.append(np.searchsorted(profile, [0.005 * profile[-1], 0.995 * profile[-1]]) * steps[axis])
        (x0, x1), (y0, y1), (z0, z1) = extent
        middle = [(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2]
        back, top = HEAD_ANCHOR_MM
        world = [affine @ np.append(point, 1.0) for point in (middle, [middle[0], y0, middle[2]], [middle[0], middle[1], z1])]
        return np.array([world[0][0], world[1][1] + back, world[2][2] - top]), air

    def on_grid(self, data: np.ndarray | torch.Tensor, affine: np.ndarray, *, label: bool = False,
                separable: bool = True, centre: np.ndarray | None = None) -> torch.Tensor:
        """A RAS+ (or any-orientation) volume resampled onto the grid centred at ``centre`` (world
        mm; default: the field of view's centre): (X, Y, Z) float32.

        ``label``: nearest neighbour and no smoothing (masks, label maps). ``data`` may be of any
        number type and memory layout (a RAS+ view of a file's stored voxels, as
        ``load_scan(path, copy=False)`` gives it, or its float32 copy): the result is the same to
        the bit. When grid voxels map to input voxels axis by axis (no rotation, no axis swap: what
        :func:`defacegan.io.load_scan` gives for every axis-aligned scan), the box filter sums
        strided views in that layout and the trilinear interpolation is done one axis at a time
        with ``grid_sample``'s own coordinates and weights: the same values up to float32
        rounding, several times faster. ``separable=False`` always takes the general
        ``grid_sample`` path, the reference the tests compare with.
        """
        data = data.numpy() if torch.is_tensor(data) else np.asarray(data)
        affine = np.asarray(affine, dtype=np.float64)
        centre = fov_centre(data.shape, affine) if centre is None else np.asarray(centre, dtype=np.float64)
        out = np.asarray(self.shape, dtype=np.float64)
        grid_to_world = self.grid_affine.copy()
        grid_to_world[:3, 3] = centre - self.spacing * (out - 1) / 2
        voxel_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        factors = [1 if label else max(1, math.floor(self.spacing / s + 1e-6)) for s in voxel_spacing]
        aligned = separable and np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))) == 0
        # box filter: averages what one grid voxel covers
        volume = box_means(data, factors) if aligned else float32_tensor(data)
        if any(f > 1 for f in factors):
            if not aligned:
                volume = F.avg_pool3d(volume[None, None], kernel_size=factors, stride=factors, ceil_mode=True)[0, 0]
            pooled = np.diag([*factors, 1.0])
            pooled[:3, 3] = (np.asarray(factors) - 1) / 2  # pooled voxel k is centred at k*f + (f-1)/2
            affine = affine @ pooled
        to_input = np.linalg.inv(affine) @ grid_to_world  # grid voxel → input voxel
        matrix = torch.as_tensor(to_input[:3, :3], dtype=torch.float32)
        offset = torch.as_tensor(to_input[:3, 3], dtype=torch.float32)
        if aligned and torch.count_nonzero(matrix - torch.diag(torch.diagonal(matrix))) == 0:
            return sample_separable(volume, matrix.diagonal(), offset, self.shape, label)
        axes = [torch.arange(k, dtype=torch.float32) for k in self.shape]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        voxels = points @ matrix.T + offset
        scale = torch.tensor([2.0 / max(k - 1, 1) for k in volume.shape])
        normalised = (voxels * scale - 1).flip(-1)  # grid_sample wants (z, y, x) → (W, H, D) order
        sampled = F.grid_sample(volume[None, None], normalised[None], mode="nearest" if label else "bilinear",
                                padding_mode="zeros", align_corners=True)
        return sampled[0, 0]

    @staticmethod
    def intensities(volumes: torch.Tensor) -> torch.Tensor:
        """Per volume of a (B, ...) batch: clamp at 0, divide by the robust scale, round
        through float16 (the cache's type)."""
        volumes = volumes.float().clamp_min(0)
        scale = robust_scale(volumes).reshape(-1, *[1] * (volumes.dim() - 1))
        return (volumes / scale).half().float()

    def volume(self, data: np.ndarray | torch.Tensor, affine: np.ndarray, centre: np.ndarray | None = None,
               zero_air: bool = True) -> torch.Tensor:
        """A scan as the model's 3D input: (1, X, Y, Z) float32 on the grid (centred at ``centre``,
        by default where :meth:`centre` puts it), its air set to 0, scaled. ``zero_air=False``
        keeps the air: for material that is not a scan, such as the template face a generator pastes."""
        placed, air = self.placement(data, affine)
        grid = self.on_grid(data, affine, centre=placed if centre is None else centre)
        return self.intensities(without_air(grid, air if zero_air else 0.0)[None])

    def views(self, volumes: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) grid volumes → (B, V, S, S) views in [0, 1]."""
        return compute_views(volumes, self.view_size, self.view_mode)


def without_air(grid: torch.Tensor, air: float) -> torch.Tensor:
    """``grid`` with what lies below the air level ``air`` set to 0 (none when ``air`` is 0)."""
    return grid.masked_fill(grid < air, 0.0) if air > 0 else grid


def head_and_air_levels(sample: np.ndarray) -> tuple[float, float] | None:
    """(head, air) intensity levels of a scan read at about the grid's spacing, or None when it has
    no head to speak of. Voxels above ``head`` are head: :data:`HEAD_FLOOR` of the 99.5th percentile
    of the positive voxels, or the air level where that is higher (a noisy air's brightest voxels
    would otherwise pass for scattered head and widen its extent). Voxels below ``air`` are air:
    :data:`AIR_NOISE_FACTOR` × the median of the voxels below the floor, 0 when most of those are 0."""
    coarse = sample[::2, ::2, ::2]  # enough voxels for the percentile and the median
    positive = coarse[coarse > 0]
    if positive.size < 100:
        return None
    floor = HEAD_FLOOR * float(np.percentile(positive, 99.5))
    below = coarse[coarse <= floor]
    air = AIR_NOISE_FACTOR * float(np.median(below)) if below.size else 0.0
    return max(floor, air), air


def fov_centre(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The world position (mm) of the centre of a ``shape`` voxel field of view."""
    return (affine @ np.append((np.asarray(shape[:3], dtype=np.float64) - 1) / 2, 1.0))[:3]


def box_means(data: np.ndarray, factors: list[int]) -> torch.Tensor:
    """(X, Y, Z) of any number type and layout → float32 means of each ``factors`` block, x fastest
    in memory; the last block of an axis is partial when the factor does not divide it (what
    ``avg_pool3d(..., ceil_mode=True)`` gives).

    The block's voxels are added as strided views of the input, in a fixed order, each converted
    to float32 as it is read: the result is the same to the bit whatever the input's layout and
    number type, and a file's integer voxels are read once, without a float32 copy of the scan.
    """
    blocks = [-(-n // factor) for n, factor in zip(data.shape, factors)]
    if blocks == list(data.shape):
        return float32_tensor(data)
    # Sums in the input's own memory order (reading it sequentially), made x-fastest at the end.
    order = sorted(range(3), key=lambda axis: -abs(data.strides[axis]))
    total = np.zeros([blocks[axis] for axis in order], dtype=np.float32).transpose(np.argsort(order))
    for start in itertools.product(*(range(factor) for factor in factors)):
        part = data[tuple(slice(j, None, factor) for j, factor in zip(start, factors))]
        reach = tuple(slice(0, n) for n in part.shape)  # a partial last block has fewer parts
        np.add(total[reach], part, out=total[reach], casting="unsafe")
    counts = []
    for n, factor in zip(data.shape, factors):
        count = np.full(-(-n // factor), factor, dtype=np.float32)
        count[-1] = n - (len(count) - 1) * factor
        counts.append(count)
    # Full blocks divide by one number; the partial last slab of an axis by its own counts.
    edges = []
    for axis, count in enumerate(counts):
        if count[-1] != factors[axis]:
            slab = tuple(slice(-1, None) if a == axis else slice(None) for a in range(3))
            edges.append((slab, total[slab] / (counts[0][slab[0], None, None] * counts[1][None, slab[1], None]
                                               * counts[2][None, None, slab[2]])))
    total /= np.float32(math.prod(factors))
    for slab, means in edges:
        total[slab] = means
    return torch.from_numpy(np.asfortranarray(total))


def float32_tensor(data: np.ndarray) -> torch.Tensor:
    """``data`` as a float32 tensor, x fastest in memory; a copy unless it is one already."""
    return torch.from_numpy(np.require(data, np.float32, ["F_CONTIGUOUS", "WRITEABLE"]))


def sample_separable(volume: torch.Tensor, step: torch.Tensor, offset: torch.Tensor,
                     shape: tuple[int, int, int], label: bool) -> torch.Tensor:
    """``grid_sample`` (zeros padding, ``align_corners=True``) for a grid whose voxel ``g`` lies at
    input voxel ``g * step + offset`` on each axis: one 1D interpolation per axis, each a product
    with an (output, input) matrix holding two weights a row (one for ``label``: nearest).

    The source coordinates are computed with the general path's float32 operations, so both
    paths interpolate between the same voxels with the same weights; only the order in which the
    weighted values are summed differs (a float32 rounding). The three products run in the
    volume's memory order (x fastest from :func:`box_means`, or C order), so no copy is made
    between them, and only over the grid rows that reach into the scan: the rest are zeros.
    """
    axes = (2, 1, 0) if not volume.is_contiguous() and volume.permute(2, 1, 0).is_contiguous() else (0, 1, 2)
    work = volume.permute(*axes).contiguous()  # a view unless the volume is in neither order
    matrices = [interpolation_matrix(shape[a], volume.shape[a], step[a], offset[a], label) for a in axes]
    rows = [slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else slice(0, 0)
            for hit in (torch.nonzero(matrix.any(dim=1)).flatten() for matrix in matrices)]
    outer, middle, inner = (matrix[row] for matrix, row in zip(matrices, rows))
    a, b, c = work.shape
    work = (work.reshape(a * b, c) @ inner.T).reshape(a, b, -1)
    work = middle @ work  # one (b → shape) product per outer index
    work = (outer @ work.reshape(a, -1)).reshape(outer.shape[0], middle.shape[0], inner.shape[0])
    result = volume.new_zeros(shape)
    result.permute(*axes)[rows[0], rows[1], rows[2]] = work
    return result


def interpolation_matrix(size: int, n: int, step: torch.Tensor, offset: torch.Tensor, label: bool) -> torch.Tensor:
    """(size, n) weights taking ``n`` input voxels to ``size`` grid voxels on one axis, grid voxel
    ``g`` at input voxel ``g * step + offset``; input voxels outside 0 … n-1 count as zeros."""
    voxels = torch.arange(size, dtype=torch.float32) * step + offset
    normalised = voxels * torch.tensor(2.0 / max(n - 1, 1)) - 1
    source = (normalised + 1) / 2 * (n - 1)  # grid_sample's unnormalisation, in its float32 steps
    rows = torch.arange(size)
    weights = torch.zeros(size, n + 2)  # columns: input voxels -1 … n; the outer two are dropped
    if label:
        weights[rows, (source.round() + 1).long().clamp(0, n + 1)] = 1.0  # round half to even, as grid_sample
    else:
        lower = source.floor()
        weights[rows, (lower + 1).long().clamp(0, n + 1)] = (lower + 1) - source
        weights[rows, (lower + 2).long().clamp(0, n + 1)] += source - lower
    return weights[:, 1:-1]
