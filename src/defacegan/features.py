"""What "face" means, as data: the identifiable facial features and the label rule built on them.

A defaced scan is safe when no feature that lets a person be recognised keeps the subject's own
tissue. The features are the **surface** of the eyes (lids and the front of the globes), the
nose, the lips/mouth and the chin: what a face render, and so a face-recognition system, sees.

They are drawn once, as boxes in the voxel space of pydeface's mean head (the template the
defacer registers anyway; it has no feature labels of its own). The boxes were read off its
mid-sagittal (x = 88), axial (z = 60, 80, 95) and coronal (y = 230) slices — eye globes centred
near x = 58 and 118, y = 198, z = 93; nasion near z = 96, nose tip near y = 245, z = 60;
subnasale near z = 50; lips z 22-50; chin below z = 24 — and kept inside pydeface's face mask
where the mask reaches. On a scan, a
feature is the part of its box (moved by the template registration) that lies within
:data:`SKIN_DEPTH_MM` of the head's outer surface: only tissue on the scan itself counts, so a
face cut off by the field of view has no feature voxels to keep.

Label rule (:func:`label_from`): ``face`` when any feature keeps at least
:data:`FACE_MIN_FRACTION` of its voxels as the subject's own tissue (blurred tissue still counts:
blurred faces have been shown to be reversible); otherwise ``replaced`` when most of the feature
voxels hold tissue that is not the subject's (a template or generated face), else ``removed``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

#: Feature boxes in pydeface-template voxel indices, half-open ranges per axis (x L→R, y P→A, z I→S).
FEATURE_BOXES: dict[str, tuple[tuple[tuple[int, int], ...], ...]] = {
    "eyes": (((40, 78), (185, 256), (80, 110)), ((98, 136), (185, 256), (80, 110))),
    "nose": (((74, 103), (205, 256), (48, 96)),),
    "mouth": (((62, 115), (200, 256), (22, 50)),),
    "chin": (((56, 121), (190, 256), (0, 24)),),
}
FEATURES = tuple(FEATURE_BOXES)
#: Tissue this deep under the skin makes up a feature's visible shape (a nose is ~20 mm high;
#: lids and lips are a few mm thick over bone and teeth).
SKIN_DEPTH_MM = 10.0
#: A feature is recognisable while at least this share of its surface tissue is the subject's.
#: Half of a nose or of an eye region still carries its shape; this is deliberately strict:
#: the tool must never call a scan safe while a recognisable part of the face is left.
FACE_MIN_FRACTION = 0.3
#: Below FACE_MIN_FRACTION, a scan whose features are mostly foreign tissue is ``replaced``.
REPLACED_MIN_FRACTION = 0.5


def ras_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """The 4×4 RAS world → RAS world matrix of an ITK affine transform (which works in LPS)."""
    from defacegan.deface import LPS  # the defacer (and SciPy) only where a registration is read, not for head_mask
    matrix = np.reshape(transform.GetMatrix(), (3, 3))
    centre, translation = np.asarray(transform.GetCenter()), np.asarray(transform.GetTranslation())
    result = np.eye(4)
    result[:3, :3] = LPS @ matrix @ LPS
    result[:3, 3] = LPS @ (centre + translation - matrix @ centre)
    return result


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head: Otsu foreground, its largest connected piece, closed, holes filled (bool, same grid)."""
    image = sitk.GetImageFromArray(np.asarray(data, dtype=np.float32))
    foreground = sitk.OtsuThreshold(image, 0, 1)
    largest = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(foreground)) == 1).astype(bool)
    return fill_holes(ball_closing(largest))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """SimpleITK's ``BinaryFillhole(mask)`` (face-connected background) to the bit, several times
    faster on one core: the background's connected pieces that touch no face of the array are holes."""
    background = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((~mask).astype(np.uint8))))
    outside = np.zeros(int(background.max()) + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            outside[background.take(end, axis)] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[background]


#: The ball of radius 2 voxels that SimpleITK's morphology uses, as the union of three boxes
#: (reach along each axis): 81 voxels, the 5×5×5 cube but its edges and corners.
BALL_BOXES = ((2, 1, 1), (1, 2, 1), (1, 1, 2))


def ball_closing(mask: np.ndarray) -> np.ndarray:
    """SimpleITK's ``BinaryMorphologicalClosing(mask, [2, 2, 2])`` (a ball of radius 2, safe border)
    to the bit, about 13 times faster: a dilation by a union of boxes is the union of the boxes'
    dilations, each a few shifted ORs along one axis; an erosion is the dilation of the complement
    (outside the array counts as foreground, as ITK's erosion has it). ``check`` closes every
    scan's head with noise in its air (:func:`defacegan.contract.without_air`)."""
    def grow(x: np.ndarray, axis: int, reach: int) -> np.ndarray:
        out = x.copy()
        for step in range(1, reach + 1):
            ahead, behind = [slice(None)] * 3, [slice(None)] * 3
            ahead[axis], behind[axis] = slice(step, None), slice(None, -step)
            out[tuple(ahead)] |= x[tuple(behind)]
            out[tuple(behind)] |= x[tuple(ahead)]
        return out

    def dilate(x: np.ndarray) -> np.ndarray:
        grown = np.zeros_like(x)
        for reach in BALL_BOXES:
            box = x
            for axis in (2, 1, 0):
                box = grow(box, axis, reach[axis])
            grown |= box
        return grown

    padded = np.pad(np.asarray(mask, dtype=bool), 2)
    return ~dilate(~dilate(padded))[2:-2, 2:-2, 2:-2]


def skin_shell(head: np.ndarray, spacing: tuple[float, float, float], depth_mm: float = SKIN_DEPTH_MM) -> np.ndarray:
    """Head voxels within ``depth_mm`` of the air outside it."""
    from scipy import ndimage  # 0.17 s to import: not on the path of check's head_mask

    return head & (ndimage.distance_transform_edt(head, sampling=spacing) <= depth_mm)


def template_voxels(shape: tuple[int, int, int], affine: np.ndarray, transform: sitk.AffineTransform,
                    template_affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z, 3) float32: where each voxel of a scan's grid lies in template voxel indices.

    ``transform`` maps scan points to template points (as :func:`defacegan.deface.register_template`
    returns it); ``template_affine`` is the template's voxel-to-world matrix.
    """
    to_template = np.linalg.inv(template_affine) @ ras_matrix(transform) @ affine
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), -1)
    return grid @ to_template[:3, :3].T.astype(np.float32) + to_template[:3, 3].astype(np.float32)


def in_boxes(voxels: np.ndarray, boxes) -> np.ndarray:
    """Voxels whose template position lies in any of ``boxes`` (half-open index ranges)."""
    inside = np.zeros(voxels.shape[:-1], bool)
    for box in boxes:
        this = np.ones(voxels.shape[:-1], bool)
        for axis, (low, high) in enumerate(box):
            this &= (voxels[..., axis] >= low) & (voxels[..., axis] < high)
        inside |= this
    return inside


def sample_template(voxels: np.ndarray, template_mask: np.ndarray) -> np.ndarray:
    """A boolean template mask read at ``voxels`` (nearest voxel; False outside the template)."""
    nearest = np.rint(voxels).astype(np.int64)
    within = np.all((nearest >= 0) & (nearest < template_mask.shape), axis=-1)
    values = np.zeros(voxels.shape[:-1], bool)
    values[within] = template_mask[tuple(nearest[within].T)]
    return values


def feature_map(shell: np.ndarray, voxels: np.ndarray, template_face: np.ndarray) -> np.ndarray:
    """uint8 map: 1 + index in :data:`FEATURES` where a feature is, else 0.

    A feature is its box, within pydeface's face region (``template_face``, True on the face),
    on the scan's skin ``shell`` (:func:`skin_shell`); ``voxels`` from :func:`template_voxels`.
    """
    candidates = shell & sample_template(voxels, template_face)
    labels = np.zeros(shell.shape, np.uint8)
    for number, boxes in enumerate(FEATURE_BOXES.values(), start=1):
        labels[candidates & (labels == 0) & in_boxes(voxels, boxes)] = number
    return labels


def fractions(features: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Share of each feature's voxels inside ``region`` (bool); NaN for a feature with no voxels."""
    shares = {}
    for number, name in enumerate(FEATURES, start=1):
        feature = features == number
        total = int(feature.sum())
        shares[name] = float((feature & region).sum() / total) if total else float("nan")
    return shares


def label_from(own: Mapping[str, float], foreign: Mapping[str, float]) -> str:
    """``face`` / ``removed`` / ``replaced`` from each feature's share of own and foreign tissue.

    Features with no voxels on the scan (NaN: outside the field of view) keep nothing. A scan
    with no feature voxels at all is ``removed`` (a face entirely outside the field of view).
    """
    kept = [share for share in own.values() if share == share]
    if kept and max(kept) >= FACE_MIN_FRACTION:
        return "face"
    filled = [share for share in foreign.values() if share == share]
    return "replaced" if filled and float(np.mean(filled)) >= REPLACED_MIN_FRACTION else "removed"
