"""Deface head scans without FSL: pydeface's face mask or a quickshear-style plane cut.

Both methods rest on ONE 12-dof affine registration of pydeface's mean head onto the scan
(SimpleITK, Mattes mutual information on ~8 and ~4 mm copies, starts at three head pitches
about the head's own axes and more where the head nods further, seeded sampling; about a
second). The metric only samples the scanned head (a dilated head mask of the scan), so zero
padding and faces cut off by the field of view cannot pull the template away.

- ``mask``: pydeface's method. Its face mask (0 on the face) is moved onto the scan with that
  transform (trilinear, threshold 0.5). Voxels outside the template's field of view keep mask 1,
  so a long neck is not wiped (pydeface issue #27).
- ``plane``: quickshear's method. An atlas brain mask in template space (a shipped asset, see
  :func:`build_template_brain_mask`) is moved onto the scan; everything anterior-inferior of the
  plane tangent to the brain's lower-front edge, shifted out by a margin, is removed.

Volumes are RAS+ numpy arrays with a voxel-to-world (mm) affine, as :func:`defacegan.io.load_scan`
gives them. SimpleITK works in LPS world coordinates; :func:`to_sitk` and :func:`from_sitk` convert.
Transforms follow ITK's convention: they map scan (fixed) points to template (moving) points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError

from defacegan.io import Scan, ScanError, load_scan, require_head_extent, save_nifti
from defacegan.manifest import METHODS

PYDEFACE_DATA = files("pydeface") / "data"
BRAIN_MASK_ASSET = files("defacegan") / "assets" / "template_brain_mask.nii.gz"
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")

REGISTRATION_SPACING_MM = 4.0  # both images are block-averaged to about this before registering
SAMPLING_FRACTION = 0.3  # of the ~4 mm voxels in the final level, drawn at random (seeded)
PITCH_STARTS_DEG = (-20.0, 0.0, 20.0)  # heads nod in scanners; one optimisation from each
PITCH_STEP_DEG, PITCH_REACH_DEG = 20.0, 60.0  # more starts, a step apart, up to the reach (register_template)
PLANE_MARGIN_MM = 10.0  # quickshear's default buffer (10 voxels at 1 mm)
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS world coordinates


@dataclass
class Defaced:
    """One defacing of a scan: ``defaced`` (float32, the scan's RAS+ grid) and ``removed``
    (bool, True where the face was zeroed)."""

    defaced: np.ndarray
    removed: np.ndarray
    method: str


class TemplateMasks(NamedTuple):
    """pydeface's mean head, its face mask (0 on the face, 1 elsewhere) and a brain mask
    (uint8, 2 mm grid), all in the template's world space."""

    head: nib.Nifti1Image
    face_mask: nib.Nifti1Image
    brain_mask: nib.Nifti1Image


def _place(image: sitk.Image, affine: np.ndarray) -> sitk.Image:
    """Give ``image`` the geometry of a RAS voxel-to-world affine (SimpleITK's world is LPS)."""
    world = LPS @ np.asarray(affine, dtype=float)[:3]
    spacing = np.linalg.norm(world[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((world[:, :3] / spacing).ravel().tolist())
    image.SetOrigin(world[:, 3].tolist())
    return image


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A float32 SimpleITK image of a RAS+ array (sitk arrays are z, y, x)."""
    return _place(sitk.GetImageFromArray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0).copy()), affine)


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y, z) array and RAS affine of a SimpleITK image."""
    direction = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    affine = np.eye(4)
    affine[:3] = LPS @ np.column_stack([direction, image.GetOrigin()])
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine


def warp(
    image: nib.Nifti1Image | sitk.Image,
    transform: sitk.Transform,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    linear: bool = True,
    default: float = 0.0,
) -> np.ndarray:
    """Resample ``image`` onto the RAS+ grid (``shape``, ``affine``): value at grid point p is
    ``image(transform(p))``; points that land outside ``image`` get ``default``."""
    if isinstance(image, nib.Nifti1Image):
        image = to_sitk(np.asanyarray(image.dataobj), image.affine)
    reference = _place(sitk.Image([int(n) for n in shape], sitk.sitkUInt8), affine)
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    moved = sitk.Resample(image, reference, transform, interpolator, default, sitk.sitkFloat32)
    return from_sitk(moved)[0]


def _low_resolution(image: sitk.Image) -> sitk.Image:
    """Block-average to about REGISTRATION_SPACING_MM (anti-aliased and fast)."""
    factors = [max(1, round(REGISTRATION_SPACING_MM / s)) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors)


def _metric_mask(image: sitk.Image) -> sitk.Image:
    """The head (Otsu foreground, largest piece, holes filled) dilated by two voxels, so the
    metric sees the head's outline but neither padding nor the air beyond a cut-off face."""
    foreground = sitk.OtsuThreshold(image, 0, 1)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(foreground)) == 1
    return sitk.BinaryDilate(sitk.BinaryFillhole(largest), [2, 2, 2])


@lru_cache(maxsize=1)
def _pydeface_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    return (nib.load(str(PYDEFACE_DATA / "mean_reg2mean.nii.gz")),
            nib.load(str(PYDEFACE_DATA / "facemask.nii.gz")))


@lru_cache(maxsize=1)
def _template() -> dict[str, sitk.Image]:
    """The template as registration and warping use it (SimpleITK, cached)."""
    head, face_mask = _pydeface_template()
    low = _low_resolution(to_sitk(np.asanyarray(head.dataobj), head.affine))
    return {
        "head": low,
        "head_mask": _metric_mask(low),
        "face_mask": to_sitk(np.asanyarray(face_mask.dataobj), face_mask.affine),
    }


@lru_cache(maxsize=1)
def _brain_mask() -> sitk.Image:
    brain_mask = template_masks().brain_mask
    return to_sitk(np.asanyarray(brain_mask.dataobj), brain_mask.affine)


def template_masks() -> TemplateMasks:
    """pydeface's template head and face mask, and the shipped brain mask, in template space."""
    if not BRAIN_MASK_ASSET.is_file():
        raise FileNotFoundError(f"{BRAIN_MASK_ASSET} missing: run `python -m defacegan.deface`")
    return TemplateMasks(*_pydeface_template(), nib.load(str(BRAIN_MASK_ASSET)))


def _optimise(fixed: sitk.Image, fixed_mask: sitk.Image, transform: sitk.AffineTransform,
              shrink: int, fraction: float, seed: int) -> float:
    """Refine ``transform`` in place on one pyramid level; return the final Mattes MI.

    The metric uses ``fraction`` of the masked voxels, drawn at random with ``seed``, or all
    of them for ``fraction >= 1``."""
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if fraction < 1:
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(fraction, seed + 1)  # ITK reads seed 0 as "use the clock"
    registration.SetMetricFixedMask(fixed_mask)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetShrinkFactorsPerLevel([shrink])
    registration.SetSmoothingSigmasPerLevel([shrink - 1])
    registration.SetInitialTransform(transform, inPlace=True)
    registration.SetNumberOfWorkUnits(1)  # split metric sums add up in varying order; no faster here
    registration.Execute(fixed, _template()["head"])
    return registration.GetMetricValue()


def register_template(scan: Scan, seed: int = 0, search: PitchSearch | None = None) -> sitk.AffineTransform:
    """12-dof affine mapping scan points to pydeface template points (ITK convention).

    Like FLIRT's coarse search: from the aligned head centres of mass, one start per head
    pitch in PITCH_STARTS_DEG is optimised at ~8 mm on every voxel (so their Mattes MI values
    compare fairly); the best is refined at ~4 mm on SAMPLING_FRACTION of the voxels, drawn at
    random with ``seed`` (reproducible). The metric only looks inside the scan's dilated head.
    A head turned or rolled in the coil starts from its own axes (:func:`head_axes`): started
    straight, heads turned 45 degrees were registered within 9 degrees of straight, the face
    region put beside the face. A nod shows in the search itself: where the outermost start's
    optimisation ends beyond it, the head lies further that way, and one more start PITCH_STEP_DEG
    out is tried, up to PITCH_REACH_DEG (on IXI heads nodded 45 degrees nose up, the 20-degree
    start got stuck near 30 and the face mask missed the face; on the 32 IXI heads as scanned
    and Colin27 no start ends beyond itself, so they are registered as with the three starts
    alone: bench/pitch_search.py).
    ``search``: the scan's :func:`pitch_search` with ``seed``, where the caller has it already.
    Raises :class:`ScanError` for volumes too small to hold a head or when the registration
    fails or gives an implausible scaling.
    """
    require_head_extent(scan, "register")
    try:
        search = pitch_search(scan, seed) if search is None else search
        transform = search.fits[search.best][1]
        _optimise(search.fixed, search.fixed_mask, transform, 1, SAMPLING_FRACTION, seed)
    except RuntimeError as error:
        raise ScanError(scan.path, f"registration failed ({str(error).strip().splitlines()[-1]})") from None
    scales = np.linalg.svd(np.reshape(transform.GetMatrix(), (3, 3)), compute_uv=False)
    if scales.min() < 0.6 or scales.max() > 1.6:
        raise ScanError(scan.path, f"registration failed (implausible scaling {scales.round(2).tolist()})")
    return transform


class PitchSearch(NamedTuple):
    """:func:`register_template`'s coarse search: the ~4 mm scan and its metric mask, the head's
    axes (scan → head axes, in SimpleITK's LPS world) and, per start pitch tried (degrees),
    (Mattes MI at ~8 mm, lower is better; the transform optimised from it)."""

    fixed: sitk.Image
    fixed_mask: sitk.Image
    axes: np.ndarray
    fits: dict[float, tuple[float, sitk.AffineTransform]]

    @property
    def best(self) -> float:
        """The start whose fit has the lowest MI (the first tried, on a tie)."""
        return min(self.fits, key=lambda start: self.fits[start][0])

    def ended(self, start: float) -> float:
        """Degrees the head is nodded by where the optimisation from ``start`` ended (:func:`nod_degrees`)."""
        return nod_degrees(self.fits[start][1], self.axes)


def nod_degrees(transform: sitk.AffineTransform, axes: np.ndarray) -> float:
    """Degrees ``transform`` (scan → template) nods the head about its own L-R axis (``axes``: scan →
    head axes, in SimpleITK's LPS world), from the rotation nearest its matrix; the sign of
    ``SetRotation``'s first angle, positive when the head lies nose up against the template."""
    u, _, vt = np.linalg.svd(np.reshape(transform.GetMatrix(), (3, 3)) @ axes)
    rotation = u @ vt
    return float(np.rad2deg(np.arctan2(rotation[2, 1], rotation[1, 1])))


def head_nod(scan: Scan, transform: sitk.AffineTransform) -> float:
    """Degrees the registered head lies nodded against the template, about its own L-R axis
    (:func:`head_axes`): what the mirror plane cannot show (:func:`nod_degrees`)."""
    return nod_degrees(transform, LPS @ head_axes(scan) @ LPS)


def pitch_search(scan: Scan, seed: int = 0) -> PitchSearch:
    """One optimisation at ~8 mm on every voxel from each start pitch about the head's own axes:
    PITCH_STARTS_DEG, then outward by PITCH_STEP_DEG (up to PITCH_REACH_DEG) while the outermost
    start's optimisation ends beyond it (see :func:`register_template`). Raises RuntimeError
    where SimpleITK fails."""
    fixed = _low_resolution(to_sitk(scan.data, scan.affine))
    fixed_mask = _metric_mask(fixed)
    centred = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed_mask, sitk.sitkFloat32),
        sitk.Cast(_template()["head_mask"], sitk.sitkFloat32),
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    search = PitchSearch(fixed, fixed_mask, LPS @ head_axes(scan) @ LPS, {})

    def optimise_from(pitch: float) -> None:
        start = sitk.Euler3DTransform(centred)
        start.SetRotation(np.deg2rad(pitch), 0.0, 0.0)  # about the L-R axis
        matrix = np.reshape(start.GetMatrix(), (3, 3)) @ search.axes.T
        transform = sitk.AffineTransform(matrix.ravel().tolist(), start.GetTranslation(), start.GetCenter())
        search.fits[pitch] = _optimise(fixed, fixed_mask, transform, 2, 1.0, seed), transform

    for pitch in PITCH_STARTS_DEG:
        optimise_from(pitch)
    for side in (-1.0, 1.0):
        outward = side * max(PITCH_STARTS_DEG)
        while abs(outward) < PITCH_REACH_DEG and side * search.ended(outward) > abs(outward):
            outward += side * PITCH_STEP_DEG
            optimise_from(outward)
    return search


def head_axes(scan: Scan) -> np.ndarray:
    """The head's own axes in the scan's RAS world (the columns; the identity for a head within 10
    degrees of straight): its mirror plane, as the detector's input contract reads it to straighten
    a turned or rolled head (:meth:`defacegan.contract.InputContract.place`). A nod has no mirror:
    the pitch starts search it."""
    from defacegan.contract import InputContract

    return InputContract().place(scan.data, scan.affine).rotation


def face_region(scan: Scan, transform: sitk.Transform) -> np.ndarray:
    """The template's face moved onto the scan (True = remove); outside the template: kept."""
    template = _template()
    face_mask = warp(template["face_mask"], transform, scan.data.shape, scan.affine, default=1.0)
    return face_mask < 0.5


def brain_region(scan: Scan, transform: sitk.Transform) -> np.ndarray:
    """The template's brain mask moved onto the scan."""
    return warp(_brain_mask(), transform, scan.data.shape, scan.affine) >= 0.5


def plane_cut(brain_mask: np.ndarray, affine: np.ndarray, margin_mm: float = PLANE_MARGIN_MM) -> np.ndarray:
    """quickshear's cut: True beyond the plane tangent to the brain's lower front, plus a margin.

    The brain's voxel centres are projected onto the sagittal (A, S) world plane in mm (the L-R
    axis collapsed). Of their convex hull's edges, the one facing most directly
    anterior-inferior (outward normal nearest 45° between anterior and inferior) gives the line;
    shifted ``margin_mm`` away from the brain, everything beyond it at any L-R position is
    removed. No brain voxel is ever removed for ``margin_mm >= 0``.
    """
    # The hull of the projection only needs each L-R line's outermost brain voxels.
    lines = brain_mask.any(axis=0)
    if lines.sum() < 3:
        raise ValueError("brain mask is empty or too small to place a cutting plane against")
    j, k = np.nonzero(lines)
    left = np.argmax(brain_mask, axis=0)[lines]
    right = brain_mask.shape[0] - 1 - np.argmax(brain_mask[::-1], axis=0)[lines]
    voxels = np.column_stack([np.concatenate([left, right]), np.tile(j, 2), np.tile(k, 2)])
    points = voxels @ affine[1:3, :3].T + affine[1:3, 3]  # (A, S) in mm
    try:
        hull = points[ConvexHull(points).vertices]  # counter-clockwise in the (A, S) plane
    except QhullError:
        raise ValueError("brain mask is flat in the sagittal plane: no cutting plane") from None
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.column_stack([edges[:, 1], -edges[:, 0]]) / np.linalg.norm(edges, axis=1)[:, None]
    best = np.argmax(normals @ np.array([1.0, -1.0]))  # outward normal toward anterior-inferior
    normal, start = normals[best], hull[best]
    # Signed distance (mm) of every voxel from the line: linear in the voxel indices.
    weights, offset = normal @ affine[1:3, :3], normal @ (affine[1:3, 3] - start)
    grid = np.ogrid[tuple(slice(0, n) for n in brain_mask.shape)]
    return sum(w * g for w, g in zip(weights, grid)) + offset > margin_mm


def deface(scan: Scan, methods: tuple[str, ...] = ("mask",), seed: int = 0) -> dict[str, Defaced]:
    """Deface ``scan`` with each of ``methods`` (see :data:`defacegan.manifest.METHODS`), sharing one registration.

    Returns ``{method: Defaced}``; ``seed`` seeds the registration's sampling (same seed, same
    result). Raises :class:`ScanError` when the scan cannot be registered."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown defacing method(s) {sorted(unknown)}; choose from {METHODS}")
    transform = register_template(scan, seed)
    results = {}
    for method in methods:
        removed = removed_region(scan, transform, method)
        defaced = np.where(removed, 0, scan.data).astype(np.float32, copy=False)
        results[method] = Defaced(defaced, removed, method)
    return results


def removed_region(scan: Scan, transform: sitk.Transform, method: str) -> np.ndarray:
    """What ``method`` removes from ``scan`` (bool, True = remove) when ``transform`` registers it."""
    if method == "mask":
        return face_region(scan, transform)
    return plane_cut(brain_region(scan, transform), scan.affine)


def register_rigid(scan: Scan, reference: Scan, seed: int = 0) -> sitk.Euler3DTransform:
    """6-dof rigid transform mapping ``scan`` points to ``reference`` points (ITK convention), for
    two contrasts of one session (a T2w onto its T1w): both share the scanner's world, so the
    search starts at the identity; Mattes MI works across contrasts; ~4 mm, ``seed`` seeds the
    sampling. Raises :class:`ScanError` when the registration fails."""
    try:
        fixed = _low_resolution(to_sitk(scan.data, scan.affine))
        moving = _low_resolution(to_sitk(reference.data, reference.affine))
        transform = sitk.Euler3DTransform()
        transform.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
        registration = sitk.ImageRegistrationMethod()
        registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(0.5, seed + 1)
        registration.SetMetricFixedMask(_metric_mask(fixed))
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5)
        registration.SetOptimizerScalesFromPhysicalShift()
        registration.SetShrinkFactorsPerLevel([2, 1])
        registration.SetSmoothingSigmasPerLevel([1, 0])
        registration.SetInitialTransform(transform, inPlace=True)
        registration.SetNumberOfWorkUnits(1)
        registration.Execute(fixed, moving)
    except RuntimeError as error:
        raise ScanError(scan.path, f"registration to {reference.path or 'the reference'} failed "
                                   f"({str(error).strip().splitlines()[-1]})") from None
    return transform


def deface_like(scan: Scan, reference: Scan, removed: np.ndarray, method: str, seed: int = 0) -> Defaced:
    """Deface ``scan`` by carrying over the region ``removed`` from ``reference`` (bool, the
    reference's RAS+ grid; e.g. a T1w's), rigidly registered: every contrast of a session loses
    the same anatomy. Voxels beyond the reference's field of view are kept."""
    transform = register_rigid(scan, reference, seed)
    carried = warp(to_sitk(removed.astype(np.float32), reference.affine), transform, scan.data.shape, scan.affine) >= 0.5
    return Defaced(np.where(carried, 0, scan.data).astype(np.float32, copy=False), carried, method)


def build_template_brain_mask(colin27: Path = COLIN27, out: Path | None = None) -> Path:
    """Make the shipped asset: a brain mask in pydeface-template space (uint8, 2 mm grid).

    Provenance: Colin27 (``ch2.nii.gz``, whole head in MNI space, Debian ``mricron-data``) is
    registered onto pydeface's template with :func:`register_template` (its face is cut off
    by the MNI box, which the metric mask handles); nilearn's MNI152 brain mask
    (``load_mni152_brain_mask``) is moved into template space with that transform (trilinear,
    threshold 0.5) on the template's own grid at half resolution.
    """
    from nilearn.datasets import load_mni152_brain_mask

    transform = register_template(load_scan(colin27), seed=0)  # Colin27 points -> template
    head = _pydeface_template()[0]
    shape = tuple(n // 2 for n in head.shape)
    affine = head.affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1]])
    brain = warp(load_mni152_brain_mask(), transform.GetInverse(), shape, affine) >= 0.5
    image = nib.Nifti1Image(brain.astype(np.uint8), affine)
    image.header.set_xyzt_units("mm")
    return save_nifti(image, out or Path(str(BRAIN_MASK_ASSET)), overwrite=True)


if __name__ == "__main__":
    print(build_template_brain_mask())
