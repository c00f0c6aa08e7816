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
   A head turned or rolled in the coil further than the training poses reach
   (``straighten_beyond`` degrees from its mirror-symmetric pose, :func:`mirror_angle`) is
   straightened: the grid's axes turn with it, so its mid-sagittal plane is the grid's;
2. **air**: a magnitude image's air holds Rayleigh noise, where IXI's (the training scans') is 0;
   on the grid, what lies outside the head, found above the scan's air level
   (:func:`head_and_air_levels`), is set to 0 (:func:`without_air`), so that a noisy scan's air
   does not look like the noise some defacers fill the face with, and ghosts do not hide a face;
   the head's own voxels are kept. A scan whose air is 0 has air level 0: this step leaves it as
   it is;
3. **intensities**: negative values (resampling overshoot, signed data) clamped to 0, divided by
   the volume's robust scale (99.5th percentile of the nonzero voxels), stored as float16 —
   what the training cache holds, so check and training see the same numbers;
4. **views**: :func:`defacegan.views.compute_views` at ``view_size`` pixels, ``view_mode`` views;
   with ``flatten_mm`` set (the shipped detector's is 20 mm: ``make weights``' WEIGHT_FLATTEN_MM),
   of the volume divided by its tissue's local mean first (:func:`flattened`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

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
#: The head's mirror plane (its turn and roll) is read on a grid this coarse (mm): a few ms.
MIRROR_GRID_MM = 4.0
#: The mirror plane is looked for this far (degrees) either side of the grid's, in these steps.
POSE_SEARCH_DEGREES = (45.0, 3.0)
#: A head's mirror is looked for in its projections' detail: what a Gaussian of this σ (mm) does not keep.
MIRROR_DETAIL_MM = 12.0
#: Times the mirror plane is read again on the grid straightened by the previous reading.
STRAIGHTENING_ROUNDS = 2


@dataclass(frozen=True, eq=False)
class Placement:
    """Where a scan's grid goes: its centre (world mm), its axes (the columns of ``rotation``: the
    identity unless the head was straightened) and the scan's air level. Not comparable with ``==``:
    its arrays have no one truth value."""

    centre: np.ndarray
    air: float = 0.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def straightened(self) -> bool:
        return not np.array_equal(self.rotation, np.eye(3))

    @property
    def degrees(self) -> float:
        """How far (degrees) the grid's left-right axis is turned from the world's."""
        return tilt(self.rotation[:, 0])


@dataclass(frozen=True)
class InputContract:
    """Scan → model input. ``spacing`` mm, ``shape`` voxels, ``view_size`` px, ``view_mode``."""

    spacing: float = 2.0
    shape: tuple[int, int, int] = (128, 128, 128)
    view_size: int = 64
    #: Ten views: the nine and the face's texture under the skin, which tells a replaced or smoothed
    #: face from the subject's own (docs/detector.md, "The recipe").
    view_mode: str = "all_face_texture"
    classes: tuple[str, ...] = VERDICTS
    anchor: str = "head"  # "head": the grid placed by head landmarks; "fov": on the field of view's centre
    #: With ``anchor="head"``: a head turned or rolled more than this (degrees) is straightened. The
    #: training poses stop at 15 degrees from IXI's heads, which lie within 4 degrees of symmetric
    #: (turned -3.5 to 2.2, rolled -2.2 to 1.0); 10 leaves room for a turn and a roll together,
    #: each of whose projections reads less than the turn or the roll alone.
    straighten_beyond: float = 10.0
    #: Where set, the grid volume is divided by its tissue's local mean, a Gaussian of this σ (mm),
    #: before the views (:func:`flattened`), so that a receive coil's smooth field divides out. The
    #: shipped detector's checkpoint carries 20 (``make weights``' WEIGHT_FLATTEN_MM); None here keeps
    #: the default contract's views, and the caches drawn on it, as they were; measured by
    #: ``bench/bias_training.py --flatten-mm``.
    flatten_mm: float | None = None

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

    def place(self, data: np.ndarray | torch.Tensor, affine: np.ndarray, nod: float = 0.0) -> Placement:
        """Where the grid goes (:class:`Placement`), from one read of the scan at about the grid's
        spacing.

        The centre is the field of view's, or (``anchor="head"``) :data:`HEAD_ANCHOR_MM` from the
        head's back, top and left-right middle. The head is what exceeds :func:`head_and_air_levels`'
        head level; its extent along each voxel axis runs between the 0.5th and 99.5th percentiles of
        its voxels' positions (so stray bright voxels in the air do not move it). A scan with no head
        to speak of keeps the field of view's centre and air level 0. A head turned or rolled more
        than ``straighten_beyond`` degrees (:meth:`straightening`) gets axes along its own and is
        anchored on them. ``nod`` (degrees, positive nose up) turns the grid about the head's own
        left-right axis by as much, so that a head nodded by it is judged as one that is not: the
        mirror plane cannot show a nod, a registration can (:mod:`defacegan.anatomy`).
        """
        data = data.numpy() if torch.is_tensor(data) else np.asarray(data)
        affine = np.asarray(affine, dtype=np.float64)
        steps = [max(1, round(self.spacing / s)) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
        sample = data[tuple(slice(None, None, step) for step in steps)]
        levels = head_and_air_levels(sample)
        if levels is None:
            return Placement(fov_centre(data.shape, affine))
        head_level, air = levels
        if self.anchor == "fov":
            return Placement(fov_centre(data.shape, affine), air)
        head = sample > head_level
        if np.count_nonzero(head) < 1000:
            return Placement(fov_centre(data.shape, affine), air)
        (x0, x1), (y0, y1), (z0, z1) = (np.asarray(span) * step for span, step in zip(head_extent(head), steps))
        middle = [(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2]
        back, top = HEAD_ANCHOR_MM
        world = [affine @ np.append(point, 1.0) for point in (middle, [middle[0], y0, middle[2]], [middle[0], middle[1], z1])]
        placed = Placement(np.array([world[0][0], world[1][1] + back, world[2][2] - top]), air)
        sample_affine = affine @ np.diag([*steps, 1.0])
        rotation = self.straightening(sample, sample_affine, placed)
        if nod:
            rotation = (np.eye(3) if rotation is None else rotation) @ plane_rotation(1, 2, nod)
        if rotation is None:
            return placed
        # Anchored again, on the head's own axes.
        coarse = self.mirror_grid()
        look = coarse.on_grid(sample, sample_affine, placed=replace(placed, rotation=rotation)).numpy() > head_level
        (x0, x1), (y0, y1), (z0, z1) = (np.asarray(span) * coarse.spacing for span in head_extent(look))
        local = np.array([(x0 + x1) / 2, y0 + back, z1 - top]) - coarse.spacing * (np.asarray(coarse.shape) - 1) / 2
        return Placement(placed.centre + rotation @ local, air, rotation)

    def mirror_grid(self) -> InputContract:
        """The same grid at :data:`MIRROR_GRID_MM`: where the head's mirror plane is read."""
        return replace(self, spacing=MIRROR_GRID_MM, shape=tuple(round(n * self.spacing / MIRROR_GRID_MM) for n in self.shape))

    def straightening(self, sample: np.ndarray, affine: np.ndarray, placed: Placement) -> np.ndarray | None:
        """The rotation that straightens a head placed at ``placed`` (``sample``: the scan read at
        about the grid's spacing, ``affine`` its voxels' world mm), or None when its mirror plane is
        turned (about the vertical axis) and rolled (about the front-back axis) by no more than
        ``straighten_beyond`` degrees together.

        The head's mirror plane is read from two mean projections (:func:`mirror_angle`): from above
        (the turn) and from the front (the roll); its normal is (1, tan turn, tan roll) on the grid's
        axes. The straightening is the smallest rotation that takes the grid's left-right axis onto
        that normal, so it leaves the head's nodding (which no mirror shows) as it was. A roll
        shears the view from above and a turn the view from the front (a turn and a roll together
        can cancel in one reading), so unless the first reading is within half of
        ``straighten_beyond``, the plane is read again on the grid turned so far
        (:data:`STRAIGHTENING_ROUNDS`) and that reading decides."""
        coarse = self.mirror_grid()

        def normal(rotation: np.ndarray) -> np.ndarray:
            """The mirror plane's normal in world axes, read on the grid turned by ``rotation``."""
            look = coarse.on_grid(sample, affine, placed=replace(placed, rotation=rotation))
            # the air below its level left out; ghosts, copies along the head's own A-P axis, keep its
            # mirror, so the head mask of without_air is not worth its 20-30 ms a reading here
            look = look.masked_fill(look < placed.air, 0.0).numpy()
            turn, roll = mirror_angle(look.mean(axis=2)), mirror_angle(look.mean(axis=1))
            local = np.array([1.0, math.tan(math.radians(turn)), math.tan(math.radians(roll))])
            return rotation @ (local / np.linalg.norm(local))

        plane = normal(np.eye(3))
        if tilt(plane) <= self.straighten_beyond / 2:  # plainly straight: the one reading is enough
            return None
        for _ in range(STRAIGHTENING_ROUNDS):
            plane = normal(rotation_onto(plane))
        return rotation_onto(plane) if tilt(plane) > self.straighten_beyond else None

    def on_grid(self, data: np.ndarray | torch.Tensor, affine: np.ndarray, *, label: bool = False,
                separable: bool = True, placed: Placement | None = None) -> torch.Tensor:
        """A RAS+ (or any-orientation) volume resampled onto the grid where ``placed`` puts it
        (default: on the field of view's centre, along the world's axes): (X, Y, Z) float32.

        ``label``: nearest neighbour and no smoothing (masks, label maps). ``data`` may be of any
        number type and memory layout (a RAS+ view of a file's stored voxels, as
        ``load_scan(path, copy=False)`` gives it, or its float32 copy): the result is the same to
        the bit. The box filter (:func:`box_means`) sums strided views in that layout, whatever the
        scan's orientation. When grid voxels map to input voxels axis by axis (no rotation, no axis
        swap: what :func:`defacegan.io.load_scan` gives for every axis-aligned scan), the trilinear
        interpolation is done one axis at a time with ``grid_sample``'s own coordinates and
        weights: the same values up to float32 rounding, several times faster. ``separable=False``
        always takes the general ``grid_sample`` path, the reference the tests compare with; an
        oblique scan and a straightened grid always do.
        """
        data = data.numpy() if torch.is_tensor(data) else np.asarray(data)
        affine = np.asarray(affine, dtype=np.float64)
        placed = Placement(fov_centre(data.shape, affine)) if placed is None else placed
        out = np.asarray(self.shape, dtype=np.float64)
        grid_to_world = np.eye(4)
        grid_to_world[:3, :3] = placed.rotation * self.spacing
        grid_to_world[:3, 3] = placed.centre - placed.rotation @ (self.spacing * (out - 1) / 2)
        voxel_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        factors = [1 if label else max(1, math.floor(self.spacing / s + 1e-6)) for s in voxel_spacing]
        # box filter: averages what one grid voxel covers, along the input's own voxel axes
        volume = box_means(data, factors)
        if any(f > 1 for f in factors):
            pooled = np.diag([*factors, 1.0])
            pooled[:3, 3] = (np.asarray(factors) - 1) / 2  # pooled voxel k is centred at k*f + (f-1)/2
            affine = affine @ pooled
        to_input = np.linalg.inv(affine) @ grid_to_world  # grid voxel → input voxel
        matrix = torch.as_tensor(to_input[:3, :3], dtype=torch.float32)
        offset = torch.as_tensor(to_input[:3, 3], dtype=torch.float32)
        if separable and torch.count_nonzero(matrix - torch.diag(torch.diagonal(matrix))) == 0:
            return sample_separable(volume, matrix.diagonal(), offset, self.shape, label)
        axes = [torch.arange(k, dtype=torch.float32) for k in self.shape]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        # grid_sample wants (z, y, x) → (W, H, D) order: each coordinate computed as (x, y, z) would give it, in reverse
        scale = torch.tensor([2.0 / max(k - 1, 1) for k in reversed(volume.shape)])
        normalised = (points @ matrix.flip(0).T + offset.flip(0)) * scale - 1
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

    def volume(self, data: np.ndarray | torch.Tensor, affine: np.ndarray, placed: Placement | None = None,
               zero_air: bool = True) -> torch.Tensor:
        """A scan as the model's 3D input: (1, X, Y, Z) float32 on the grid (where ``placed`` puts it,
        by default where :meth:`place` does), its air set to 0, scaled. ``zero_air=False`` keeps the
        air: for material that is not a scan, such as the template face a generator pastes."""
        placed = self.place(data, affine) if placed is None else placed
        grid = self.on_grid(data, affine, placed=placed)
        return self.intensities(without_air(grid, placed.air if zero_air else 0.0)[None])

    def views(self, volumes: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) grid volumes → (B, V, S, S) views in [0, 1]."""
        if self.flatten_mm:
            volumes = flattened(volumes.float(), self.flatten_mm / self.spacing)
        return compute_views(volumes, self.view_size, self.view_mode)


#: :func:`flattened` finds the local level on the grid shrunk by this factor.
FLATTEN_SHRINK = 4


def flattened(volumes: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, X, Y, Z) volumes divided by their tissue's local mean (a Gaussian of ``sigma`` voxels,
    :func:`gaussian_blur`, normalised by the tissue's own weight, found on a grid :data:`FLATTEN_SHRINK`
    times coarser): a smooth multiplicative field divides out, while contrast at scales under
    ``sigma`` stays and the air, and a defacer's void, stay 0. About 20 ms a 128³ volume on one core."""
    scale = robust_scale(volumes).reshape(-1, 1, 1, 1, 1)
    tissue = (volumes > HEAD_FLOOR * scale).float()  # the head as place() finds it
    weighted, weight = (F.avg_pool3d(x, FLATTEN_SHRINK, ceil_mode=True) for x in (volumes * tissue, tissue))
    level = torch.stack([gaussian_blur(w[0], sigma / FLATTEN_SHRINK) / gaussian_blur(t[0], sigma / FLATTEN_SHRINK).clamp_min(1e-3)
                         for w, t in zip(weighted, weight)])[:, None]
    level = F.interpolate(level, size=volumes.shape[2:], mode="trilinear", align_corners=False)
    return volumes / level.clamp_min(1e-3 * scale)


def without_air(grid: torch.Tensor, air: float) -> torch.Tensor:
    """``grid`` with its air set to 0 where the scan's was not (air level ``air`` > 0; 0: ``grid`` as
    it is): what lies outside the head (:func:`defacegan.features.head_mask`, found on the grid
    with what lies below the air level left out). That is the noise in the air, its brightest
    voxels, and ghosts: the copies of the head that motion or a pulsing vessel smear along the
    phase-encoding axis, which lie above the air's level. The head's own voxels are kept as they
    are, the darkest too: TorchIO's default ghosting turned 6 of 8 held-out faces into removed ones
    while the ghosts stayed, and with Rician noise of 10 % an intact face drew p(face) 0.03 and 3
    partial defacings that keep eyes and nose 0.20-0.23 while the head's voxels below the air level
    were set to 0 as well (bench/acquisition.py).

    The head is found at twice the spacing, each voxel as bright as the brightest it covers, so that
    its edge errs outwards: 26 ms a scan on one core (``python bench/check.py`` at 7889226), where
    the grid's own resolution took 0.4 s with SimpleITK's closing, with the same verdicts on the
    bench's noisy, ghosted and moved heads."""
    if air <= 0:
        return grid
    from defacegan.features import head_mask  # SimpleITK: only for a scan whose air is not 0

    # The brightest voxel of a block is below the air level exactly when all of them are: pooled first,
    # the air is left out of 8 times fewer voxels, to the same result.
    if any(n % 2 for n in grid.shape):
        brightest = F.max_pool3d(grid[None, None], 2, ceil_mode=True)[0, 0]
    else:  # the same maxima, a third of max_pool3d's time on one core
        a, b, c = (n // 2 for n in grid.shape)
        brightest = grid.reshape(a, 2, b, 2, c, 2).amax(5).amax(3).amax(1)
    head = torch.from_numpy(head_mask(brightest.masked_fill(brightest < air, 0.0).numpy()))
    (a, b, c), (x, y, z) = head.shape, grid.shape
    head = head[:, None, :, None, :, None].expand(a, 2, b, 2, c, 2).reshape(2 * a, 2 * b, 2 * c)[:x, :y, :z]
    return grid.masked_fill(~head, 0.0)


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


def head_extent(head: np.ndarray) -> list[tuple[int, int]]:
    """Per voxel axis, the 0.5th and 99.5th percentiles of the positions of a mask's voxels, from the
    three axis profiles (not from every voxel's position)."""
    extent = []
    for axis in range(3):
        profile = np.cumsum(head.sum(axis=tuple(a for a in range(3) if a != axis)))
        extent.append(tuple(np.searchsorted(profile, [0.005 * profile[-1], 0.995 * profile[-1]])))
    return extent


def plane_rotation(a: int, b: int, degrees: float) -> np.ndarray:
    """The 3D rotation by ``degrees`` in the plane of axes ``a`` and ``b`` (from ``a`` towards ``b``)."""
    rotation = np.eye(3)
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation[[a, a, b, b], [a, b, a, b]] = cos, -sin, sin, cos
    return rotation


def turned(affine: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """A scan's affine with its head turned by ``rotation`` about the world's origin: the same
    voxels in another pose, as a head lying turned in the coil (benches and tests)."""
    turn = np.eye(4)
    turn[:3, :3] = rotation
    return turn @ affine


def tilt(axis: np.ndarray) -> float:
    """How far (degrees) the unit vector ``axis`` is turned from the world's left-right axis."""
    return math.degrees(math.acos(min(1.0, max(-1.0, float(axis[0])))))


def rotation_onto(normal: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the left-right axis (1, 0, 0) onto the unit vector ``normal``."""
    axis = np.cross([1.0, 0.0, 0.0], normal)
    sin, cos = np.linalg.norm(axis), normal[0]
    if sin < 1e-12:
        return np.eye(3)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]) / sin
    return np.eye(3) + sin * k + (1 - cos) * k @ k


@lru_cache(maxsize=1)
def mirror_reflections() -> tuple[np.ndarray, torch.Tensor]:
    """The angles :func:`mirror_angle` tries (degrees, every :data:`POSE_SEARCH_DEGREES` step) and the
    reflection about the line at each, (A, 2, 2)."""
    reach, step = POSE_SEARCH_DEGREES
    angles = np.arange(-reach, reach + step / 2, step)
    turns = [plane_rotation(0, 1, angle)[:2, :2] for angle in angles]
    return angles, torch.as_tensor(np.stack([turn @ np.diag([-1.0, 1.0]) @ turn.T for turn in turns]))


def mirror_angle(image: np.ndarray, spacing: float = MIRROR_GRID_MM) -> float:
    """The angle (degrees) from the image's second axis to the line through its centre of mass about
    which it is most nearly mirror-symmetric: a head's mid-sagittal line in a projection from above
    or from the front, which no defacing moves (the face is cut or filled symmetrically, and what
    remains of the head is most of it). Only the image's detail is compared (what a Gaussian of
    :data:`MIRROR_DETAIL_MM` does not keep): a head's outline is a near-ellipse that matches its own
    reflection at any angle, and a bias field is smooth. The correlation of the detail with its
    reflection is taken every :data:`POSE_SEARCH_DEGREES` step (all reflections in one
    ``grid_sample``, bilinear, 0 beyond the image's edge), the best step refined by a parabola
    through its neighbours' scores. ``spacing``: the image's pixel size (mm). A grid sampled at
    ``plane_rotation(a, b, angle)`` has the line on axis ``b``."""
    image = torch.as_tensor(image, dtype=torch.float64)
    rows, columns = image.shape
    weights = image / image.sum()
    centre = torch.stack([(weights.sum(1) * torch.arange(rows)).sum(), (weights.sum(0) * torch.arange(columns)).sum()])
    detail = image - gaussian_blur(image, MIRROR_DETAIL_MM / spacing)
    angles, reflections = mirror_reflections()
    # pixel (row, column) reads its reflection at (source_row, source_column), one (A, R, C) plane per angle
    offset = (centre - reflections @ centre)[:, None, None]
    reflection = reflections[:, None, None]
    row, column = torch.arange(rows, dtype=torch.float64)[:, None], torch.arange(columns, dtype=torch.float64)
    source_row = row * reflection[..., 0, 0] + column * reflection[..., 0, 1] + offset[..., 0]
    source_column = row * reflection[..., 1, 0] + column * reflection[..., 1, 1] + offset[..., 1]
    normalised = torch.stack([source_column * 2 / (columns - 1) - 1, source_row * 2 / (rows - 1) - 1], -1)  # grid_sample's (x, y)
    mirrored = F.grid_sample(detail.expand(len(angles), 1, rows, columns), normalised, mode="bilinear",
                             padding_mode="zeros", align_corners=True)[:, 0]
    # nothing read from beyond the edge pixels
    mirrored = mirrored * ((source_row >= 0) & (source_row <= rows - 1) & (source_column >= 0) & (source_column <= columns - 1))
    mirrored = mirrored - mirrored.mean((1, 2), keepdim=True)
    flat = detail - detail.mean()
    scores = ((flat * mirrored).sum((1, 2)) / (torch.sqrt((flat ** 2).sum() * (mirrored ** 2).sum((1, 2))) + 1e-12)).tolist()
    best = int(np.argmax(scores))
    if 0 < best < len(angles) - 1:
        left, middle, right = scores[best - 1:best + 2]
        curvature = left - 2 * middle + right
        if curvature < 0:
            return float(angles[best] + POSE_SEARCH_DEGREES[1] * (left - right) / (2 * curvature))
    return float(angles[best])


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` smoothed by a Gaussian of ``sigma`` pixels along each axis, truncated at 4 sigma, its
    edges mirrored with the edge pixel repeated: ``scipy.ndimage.gaussian_filter``'s result, in torch,
    whose import ``check`` has paid already (SciPy's costs a cold start 0.17 s, bench/startup.py)."""
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    for axis, size in enumerate(image.shape):
        index = torch.arange(-radius, size + radius)
        index = torch.where(index < 0, -index - 1, torch.where(index >= size, 2 * size - 1 - index, index))
        padded = image.index_select(axis, index).movedim(axis, -1)
        image = F.conv1d(padded.reshape(-1, 1, padded.shape[-1]), kernel).reshape(*padded.shape[:-1], size).movedim(-1, axis)
    return image


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
