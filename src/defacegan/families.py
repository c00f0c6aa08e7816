"""Training-data generator: many ways a face can be defaced, replaced, or *not quite* defaced.

A detector trained on two defacers learns those two defacers. This module makes randomised
versions of the families of defacing seen in the field, each recording which voxels lost the
subject's own tissue (``removed``: zeros, noise, a constant, outside the field of view) and which
hold tissue that is not the subject's (``foreign``: a template face or a generic face shell). The
label of every generated volume then follows from :mod:`defacegan.features` — whether any
identifiable feature keeps the subject's own tissue — not from the family's name, so a failed
defacing is labelled ``face`` whatever tool made it.

Everything works on one grid (the :class:`defacegan.contract.InputContract` grid), on a
:class:`FaceBundle` made once per scan from its registration to pydeface's template.

Families (:data:`FAMILIES`):

- ``none``: the scan as it is.
- ``mask``: pydeface's face mask, grown or shrunk by a voxel, soft or hard edged.
- ``plane``: quickshear's plane with a random margin.
- ``face_ears``: the face mask and the ears (fsl_deface removes both).
- ``shell``: a skin-deep layer over the face removed (mri_deface-like), 8-20 mm deep.
- ``fill``: the face region filled with noise or a constant instead of zeros.
- ``crop``: the face outside the field of view (everything in front of a coronal plane).
- ``partial``: failed or partial defacings — 20-90 % of the mask cut by a plane from below, or
  tilted from there up to the front (past about 65 % from below the nose goes and the eyes stay),
  the nose or the mouth and chin only, the whole mask but one feature group, a cut across the
  head's width near eye level, the mask shifted 15-40 mm, a plane placed too far out, or a tight
  field of view whose edges cut the nose and chin (as Colin27's MNI box does).
- ``eye_level``: a learned defacer's cut (deepdefacer-like): the face mask below a smooth, undulating,
  tilted surface placed from a little under the eye regions to a little over them, soft-edged as a
  predicted mask resampled back to the scan; whether the eyes stay decides the label, so the family
  draws both sides of the line between "nose gone, eyes kept" (``face``) and ``removed``.
- ``blur``: the face smoothed (σ 3-8 mm); blurred faces are recognisable, so mostly ``face``.
- ``replace_template``: the registered template's face pasted in (AFNI refacer / mri_reface-like),
  warped, rescaled and given noise at random so that it is not always the same smooth face.
- ``replace_shell``: a generic face shell pasted in, varied the same way.
- ``replace_smooth``: the face removed and the part of it nearest the head filled with a smooth,
  featureless mass, as a generative re-facer trained on few heads paints it; a quarter of the
  draws fill only the face below the eyes and keep the eyes (``face``), so that a smooth lower
  face is not by itself what marks a face as gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from defacegan.contract import InputContract
from defacegan.features import FEATURES, feature_map, fractions, head_mask, in_boxes, label_from, skin_shell, template_voxels
from defacegan.io import Scan

#: Label value of the ears in a bundle's ``features`` map (not an identifying feature).
EARS = len(FEATURES) + 1
#: The ears in pydeface-template voxel indices (as FEATURE_BOXES), on the skin shell.
EAR_BOXES = (((0, 32), (85, 140), (55, 110)), ((144, 176), (85, 140), (55, 110)))


@dataclass
class FaceBundle:
    """One head on the contract grid, with what the generator needs (all arrays (X, Y, Z)).

    ``face``: intensities (scaled, float32); ``head``: bool; ``depth``: mm from the air outside
    the head (0 outside); ``features``: uint8 (1 + index in FEATURES, EARS for the ears);
    ``face_region``: pydeface's face mask moved onto the head (bool, True = remove);
    ``brain``: the template brain mask moved onto the head (bool); ``template_face``: the
    template head moved onto the head and matched in intensity; ``affine``: grid voxel → mm.
    """

    subject: str
    face: np.ndarray
    head: np.ndarray
    depth: np.ndarray
    features: np.ndarray
    face_region: np.ndarray
    brain: np.ndarray
    template_face: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))


@dataclass
class Variant:
    """One generated volume: its family, the volume, and where the subject's tissue went."""

    family: str
    volume: np.ndarray
    removed: np.ndarray
    foreign: np.ndarray

    def shares(self, features: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        """(own, foreign): each feature's share of voxels that are the subject's, or foreign."""
        return fractions(features, ~(self.removed | self.foreign)), fractions(features, self.foreign)

    def label(self, features: np.ndarray) -> str:
        return label_from(*self.shares(features))


def make_bundle(scan: Scan, subject: str, contract: InputContract, seed: int = 0) -> FaceBundle:
    """Register the template onto ``scan`` once, carry the face, brain, features and template
    head onto it, and put them all on the contract's grid."""
    from defacegan import deface

    transform = deface.register_template(scan, seed)
    head_image, face_mask = deface.template_masks()[:2]
    voxels = template_voxels(scan.data.shape, scan.affine, transform, head_image.affine)
    head = head_mask(scan.data)
    shell = skin_shell(head, scan.spacing)
    features = feature_map(shell, voxels, np.asanyarray(face_mask.dataobj) < 0.5)
    features[(features == 0) & shell & in_boxes(voxels, EAR_BOXES)] = EARS
    template = deface.warp(head_image, transform, scan.data.shape, scan.affine)

    placed = contract.place(scan.data, scan.affine)  # the intact head's: every variant shares it

    def grid(data, label=False):
        return contract.on_grid(data, scan.affine, label=label, placed=placed).numpy()

    head_on_grid = grid(head.astype(np.float32), label=True) > 0.5
    return FaceBundle(
        subject=subject,
        face=contract.volume(scan.data, scan.affine, placed)[0].numpy(),
        head=head_on_grid,
        depth=ndimage.distance_transform_edt(head_on_grid, sampling=contract.spacing).astype(np.float32),
        features=grid(features, label=True).astype(np.uint8),
        face_region=grid(deface.face_region(scan, transform).astype(np.float32), label=True) > 0.5,
        brain=grid(deface.brain_region(scan, transform).astype(np.float32), label=True) > 0.5,
        # material pasted into a head, not a scan: its air is kept, as the shipped detector's draws had it
        template_face=contract.volume(template, scan.affine, placed, zero_air=False)[0].numpy(),
        affine=contract.grid_affine,
    )


#: Directions in the grid's voxel axes (x, y anterior, z superior) for :func:`_share_of`.
BELOW, FRONT = (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)


def _share_of(region: np.ndarray, share: float, towards: tuple[float, float, float]) -> np.ndarray:
    """The ``share`` of ``region``'s voxels that lie furthest along ``towards`` (a direction in
    voxel axes: BELOW the lowest, FRONT the most anterior): a planar cut of known extent."""
    coordinates = np.nonzero(region)
    chosen = np.zeros(region.shape, bool)
    if coordinates[0].size and share > 0:
        values = np.tensordot(np.asarray(towards, float), np.stack(coordinates).astype(float), axes=1)
        keep = values >= np.quantile(values, 1 - share)
        chosen[tuple(c[keep] for c in coordinates)] = True
    return chosen


def _grow(region: np.ndarray, voxels: int) -> np.ndarray:
    if voxels > 0:
        return ndimage.binary_dilation(region, iterations=voxels)
    if voxels < 0:
        return ndimage.binary_erosion(region, iterations=-voxels)
    return region


def _paste(bundle: FaceBundle, region: np.ndarray, fill: np.ndarray | float, feather_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """``fill`` blended into ``region`` with a soft edge of ``feather_mm``; returns (volume,
    where the fill dominates). A voxel counts as replaced where the fill's weight is ≥ 0.5."""
    weight = region.astype(np.float32)
    if feather_mm > 0:
        weight = ndimage.gaussian_filter(weight, feather_mm / bundle.spacing)
    volume = (1 - weight) * bundle.face + weight * fill
    return volume.astype(np.float32), weight >= 0.5


def _zeroed(bundle: FaceBundle, region: np.ndarray, family: str, rng: np.random.Generator) -> Variant:
    volume, lost = _paste(bundle, region, 0.0, float(rng.choice([0.0, 0.0, 1.0, 2.0])))
    return Variant(family, volume, lost, np.zeros_like(lost))


def _plane(bundle: FaceBundle, margin_mm: float) -> np.ndarray:
    from defacegan.deface import plane_cut

    return plane_cut(bundle.brain, bundle.affine, margin_mm)


def none(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    empty = np.zeros(bundle.face.shape, bool)
    return Variant("none", bundle.face.copy(), empty, empty)


def mask(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    return _zeroed(bundle, _grow(bundle.face_region, int(rng.integers(-1, 3))), "mask", rng)


def plane(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    return _zeroed(bundle, _plane(bundle, float(rng.uniform(4, 16))), "plane", rng)


def face_ears(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    ears = _grow(bundle.features == EARS, int(rng.integers(1, 4)))
    return _zeroed(bundle, _grow(bundle.face_region, int(rng.integers(0, 2))) | ears, "face_ears", rng)


def shell(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    layer = _grow(bundle.face_region, 2) & (bundle.depth > 0) & (bundle.depth <= rng.uniform(8, 20))
    return _zeroed(bundle, layer, "shell", rng)


def fill(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    region = _grow(bundle.face_region, int(rng.integers(0, 2)))
    if rng.random() < 0.5:
        content: np.ndarray | float = rng.uniform(0.05, 0.6)
    else:
        content = np.abs(rng.normal(rng.uniform(0, 0.4), rng.uniform(0.02, 0.3), bundle.face.shape)).astype(np.float32)
    volume, lost = _paste(bundle, region, content, float(rng.choice([0.0, 1.5])))
    return Variant("fill", volume, lost, np.zeros_like(lost))


def _feature_voxels(bundle: FaceBundle) -> tuple[np.ndarray, ...]:
    return np.nonzero(np.isin(bundle.features, range(1, len(FEATURES) + 1)))


def _eye_voxels(bundle: FaceBundle) -> tuple[np.ndarray, ...]:
    return np.nonzero(bundle.features == 1 + FEATURES.index("eyes"))


def _below(bundle: FaceBundle, mm: float) -> np.ndarray:
    """The voxels below an axial plane ``mm`` above the lowest face-feature voxel (the chin's)."""
    lowest = _feature_voxels(bundle)[2]
    z = np.arange(bundle.face.shape[2])[None, None, :]
    return np.broadcast_to(z < (lowest.min() if lowest.size else 0) + mm / bundle.spacing, bundle.face.shape)


def _outside_view(bundle: FaceBundle, family: str, front_mm: float, below_mm: float | None) -> Variant:
    """Everything in front of a coronal plane ``front_mm`` in front of the rearmost feature voxel
    (and, unless ``below_mm`` is None, below an axial plane that far above the lowest one) left
    outside the field of view."""
    rearmost = _feature_voxels(bundle)[1]
    y = np.arange(bundle.face.shape[1])[None, :, None]
    cut = (rearmost.min() if rearmost.size else bundle.face.shape[1]) + front_mm / bundle.spacing
    region = np.broadcast_to(y >= cut, bundle.face.shape)
    if below_mm is not None:
        region = region | _below(bundle, below_mm)
    volume = np.where(region, 0, bundle.face).astype(np.float32)
    return Variant(family, volume, np.array(region), np.zeros(bundle.face.shape, bool))


def cut_below(bundle: FaceBundle, variant: Variant, mm: float) -> Variant:
    """``variant`` as a field of view whose lower edge lies ``mm`` above the chin's lowest voxel
    shows it: many protocols stop at the mouth, the nose or the cerebellum, not the neck, whatever
    the defacing. What the edge cuts off counts as removed, so the feature rule still labels it."""
    outside = _below(bundle, mm)
    return Variant(variant.family, np.where(outside, 0, variant.volume).astype(np.float32),
                   variant.removed | outside, variant.foreign & ~outside)


def crop(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    """Everything in front of a coronal plane just behind the face features: outside the field of
    view; often the field of view also ends below the chin."""
    below = rng.uniform(-4, 4) if rng.random() < 0.5 else None
    return _outside_view(bundle, "crop", front_mm=rng.uniform(-8, 2), below_mm=below)


def _feature_group(bundle: FaceBundle, rng: np.random.Generator) -> np.ndarray:
    """The voxels of one feature group, chosen at random: the nose, the mouth and chin, or the eyes."""
    chosen = [("nose",), ("mouth", "chin"), ("eyes",)][rng.integers(3)]
    return np.isin(bundle.features, [1 + FEATURES.index(name) for name in chosen])


def _across(bundle: FaceBundle, above_eyes_mm: float, behind_mm: float) -> np.ndarray:
    """Everything outside the brain below an axial plane ``above_eyes_mm`` above the eye regions'
    lowest voxel and in front of a coronal plane ``behind_mm`` behind the rearmost feature voxel."""
    eyes = _eye_voxels(bundle)[2]
    if not eyes.size:
        return np.zeros(bundle.face.shape, bool)
    rearmost = _feature_voxels(bundle)[1]
    z = np.arange(bundle.face.shape[2])[None, None, :]
    y = np.arange(bundle.face.shape[1])[None, :, None]
    return (z < eyes.min() + above_eyes_mm / bundle.spacing) & (y >= rearmost.min() - behind_mm / bundle.spacing) & ~bundle.brain


def partial(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    """Defacings that miss part of the face: most keep an identifiable feature."""
    kind = rng.integers(8)
    region = bundle.face_region
    if kind <= 1:  # part of the mask, cut by a plane from below (kind 0), or tilted towards the front
        # (past ~65 % from below or ~50 % from the front the nose goes and the eyes stay)
        tilt = 0.0 if kind == 0 else rng.uniform(0, np.pi / 2)
        region = _share_of(region, rng.uniform(0.2, 0.9), (0.0, np.sin(tilt), -np.cos(tilt)))
    elif kind == 2:  # one feature group only
        region = _grow(_feature_group(bundle, rng), int(rng.integers(1, 4)))
    elif kind == 3:  # a mis-registered mask
        direction = rng.choice([[0, 0, 1], [0, 0, -1], [0, 1, 0], [0, 1, 1]]).astype(float)
        shift = direction / np.linalg.norm(direction) * rng.uniform(15, 40) / bundle.spacing
        region = ndimage.shift(region.astype(np.float32), shift, order=0) > 0.5
    elif kind == 4:  # a plane placed too far out
        region = _plane(bundle, float(rng.uniform(22, 45)))
    elif kind == 5:  # the whole mask but one feature group
        region = region & ~_grow(_feature_group(bundle, rng), int(rng.integers(1, 3)))
    elif kind == 6:  # a cut across the head's whole width near eye level (caideface's mask can stop there)
        region = _across(bundle, float(rng.uniform(-5, 20)), float(rng.uniform(0, 15)))
    else:  # a tight field of view: its front edge cuts the nose and lips, its lower edge the chin
        return _outside_view(bundle, "partial", front_mm=rng.uniform(0, 25), below_mm=rng.uniform(0, 30))
    return _zeroed(bundle, region, "partial", rng)


def _below_eye_surface(bundle: FaceBundle, rng: np.random.Generator, heights: tuple[float, float],
                       tilts: tuple[float, float]) -> np.ndarray:
    """The voxels below a surface across the face: at a height drawn from ``heights`` (in eye
    regions' heights above their lowest voxel), undulating by up to 4 mm, rising towards the front
    by an angle drawn from ``tilts`` (radians; so that it takes the nose before the eyes)."""
    eyes = _eye_voxels(bundle)
    low, high = eyes[2].min(), eyes[2].max()
    shape = bundle.face.shape
    bumps = ndimage.gaussian_filter(rng.normal(size=shape[:2]), 10 / bundle.spacing)
    bumps *= rng.uniform(0, 4) / bundle.spacing / max(float(bumps.std()), 1e-6)
    tilt = np.tan(rng.uniform(*tilts)) * (np.arange(shape[1]) - eyes[1].mean())
    surface = low + rng.uniform(*heights) * (high - low) + bumps + tilt[None, :]
    return np.arange(shape[2])[None, None, :] < surface[..., None]


def eye_level(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    """The mask below a surface at 25 % under to 25 % over the eye regions' height, rising towards
    the front by up to 57° (as a learned defacer often does) or falling by up to 11°, with a 0-4 mm
    soft edge."""
    region = _grow(bundle.face_region, int(rng.integers(0, 3)))
    if not _eye_voxels(bundle)[2].size:
        return _zeroed(bundle, region, "eye_level", rng)
    below = _below_eye_surface(bundle, rng, (-0.25, 1.25), (-0.2, 1.0))
    volume, lost = _paste(bundle, region & below, 0.0, float(rng.uniform(0, 4)))
    return Variant("eye_level", volume, lost, np.zeros_like(lost))


def blur(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    region = _grow(bundle.face_region, 2)
    smooth = ndimage.gaussian_filter(bundle.face, rng.uniform(3, 8) / bundle.spacing)
    volume, _ = _paste(bundle, region, smooth, 2.0)
    empty = np.zeros(bundle.face.shape, bool)
    return Variant("blur", volume, empty, empty)


def _foreign_face(bundle: FaceBundle, face: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``face`` made one of many: smoothly warped (up to ~6 mm) within the region's box, scaled in
    intensity and given scanner-like noise, so that no one template's shape or smoothness is what
    marks a replaced face: the detector has to see that the face does not belong to the head."""
    box = ndimage.find_objects(_grow(region, 4).astype(np.uint8))[0]
    part = face[box]
    field = ndimage.gaussian_filter(rng.normal(size=(3, *part.shape)), sigma=(0, 6, 6, 6))
    field *= rng.uniform(0, 6) / bundle.spacing / max(float(field.std()), 1e-6)
    warped = face.copy()
    warped[box] = ndimage.map_coordinates(part, np.indices(part.shape) + field, order=1, mode="nearest")
    tissue = warped > 0.05
    noise = rng.normal(0, rng.uniform(0, 0.06), face.shape).astype(np.float32)
    return np.where(tissue, np.abs(warped * rng.uniform(0.8, 1.2) + noise), warped).astype(np.float32)


def replace_template(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    region = _grow(bundle.face_region, int(rng.integers(0, 3)))
    volume, foreign = _paste(bundle, region, _foreign_face(bundle, bundle.template_face, region, rng), float(rng.uniform(1, 4)))
    return Variant("replace_template", volume, np.zeros_like(foreign), foreign)


def replace_shell(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    """A generic face: the template's head outline, filled with smooth tissue-like intensity."""
    region = _grow(bundle.face_region, int(rng.integers(0, 3)))
    outline = ndimage.gaussian_filter((bundle.template_face > 0.15).astype(np.float32), rng.uniform(1, 3) / bundle.spacing)
    generic = _foreign_face(bundle, (outline * rng.uniform(0.3, 0.8)).astype(np.float32), region, rng)
    volume, foreign = _paste(bundle, region, generic, float(rng.uniform(1, 4)))
    return Variant("replace_shell", volume, np.zeros_like(foreign), foreign)


def replace_smooth(bundle: FaceBundle, rng: np.random.Generator) -> Variant:
    """A generator's guess: within the template's head outline, the removed region filled from the
    cut surface outwards for 3-30 mm with smooth tissue, no eyes or nose (what this project's
    Pix2Pix re-facer paints, bench/gan_refaced.py). Filled voxels are foreign, the rest removed.
    One draw in four fills only what lies below a surface under the eye regions that rises towards
    the front (a re-facer over a cut that took the nose and kept the eyes): the rule labels it
    ``face``, so the network has to look at the eyes, not at the smooth lower face."""
    region = _grow(bundle.face_region, int(rng.integers(0, 3)))
    if _eye_voxels(bundle)[2].size and rng.random() < 0.25:
        region = region & _below_eye_surface(bundle, rng, (-0.5, 0.0), (0.3, 1.0))
    from_cut = ndimage.distance_transform_edt(~(bundle.head & ~region), sampling=bundle.spacing)
    outline = ndimage.gaussian_filter((bundle.template_face > 0.15).astype(np.float32), 2 / bundle.spacing) > 0.5
    mass = region & outline & (from_cut <= rng.uniform(3, 30))
    smooth = ndimage.gaussian_filter(mass.astype(np.float32) * rng.uniform(0.2, 0.7), rng.uniform(2, 6) / bundle.spacing)
    volume = np.where(region, smooth, bundle.face).astype(np.float32)
    foreign = region & (smooth >= 0.05)
    return Variant("replace_smooth", volume, region & ~foreign, foreign)


FAMILIES: dict[str, Callable[[FaceBundle, np.random.Generator], Variant]] = {
    "none": none,
    "mask": mask,
    "plane": plane,
    "face_ears": face_ears,
    "shell": shell,
    "fill": fill,
    "crop": crop,
    "partial": partial,
    "eye_level": eye_level,
    "blur": blur,
    "replace_template": replace_template,
    "replace_shell": replace_shell,
    "replace_smooth": replace_smooth,
}


#: How :func:`remove_share` removes part of a face: from below, from the front, or the nose alone.
SWEEP_MODES = ("below", "front", "nose")


def remove_share(bundle: FaceBundle, share: float, mode: str = "below") -> Variant:
    """A partial defacing of known extent: ``share`` of the face region's voxels zeroed from below
    or from the front, or of the nose's voxels from the front (``mode`` in SWEEP_MODES)."""
    if mode not in SWEEP_MODES:
        raise ValueError(f"mode {mode!r} is not one of {SWEEP_MODES}")
    region = bundle.face_region if mode != "nose" else bundle.features == 1 + FEATURES.index("nose")
    removed = _share_of(region, share, BELOW if mode == "below" else FRONT)
    volume = np.where(removed, 0, bundle.face).astype(np.float32)
    return Variant(f"remove_{mode}", volume, removed, np.zeros_like(removed))


def families_but(without: Sequence[str] = ()) -> list[str]:
    """Every family's name, in FAMILIES' order, but those in ``without``: what a recipe trains on."""
    return [family for family in FAMILIES if family not in without]


def generate(bundle: FaceBundle, family: str, rng: np.random.Generator) -> Variant:
    """One randomised volume of ``family`` from ``bundle``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown defacing family {family!r}; choose from {list(FAMILIES)}")
    return FAMILIES[family](bundle, rng)
