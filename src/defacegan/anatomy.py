"""A second opinion from anatomy: do the regions of the eyes, nose, mouth and chin still hold tissue?

The network judges six views of a head and knows the defacings it was trained on. A tool that cuts
differently can leave a face it calls ``removed``: caideface's mask stops at the eyes on some heads and
takes the lower face across the whole width of the head, and the shipped network called 4 of those
8 held-out IXI heads ``removed`` with both eye regions untouched (docs/detector.md, bench/other_defacers.py).

This looks where the face should be instead. It registers pydeface's template onto the scan (the
registration ``deface`` runs), carries the template's own feature surfaces onto it — each feature's
box (:data:`defacegan.features.FEATURE_BOXES`) on the template's skin, within its face mask, as the
label rule draws them on a training head — and measures the share of each that lies inside the scan's
head (:func:`defacegan.features.head_mask`). Zeroed or cropped features hold no head; a face that
is there holds it. A region filled with a constant or with noise (the ``fill`` family) is inside the
head too, but is not tissue: neighbouring voxels of tissue are alike and its intensities vary, so a
region whose content fails either (:func:`looks_like_tissue`) counts as holding none.

Tissue in a region does not say whose it is: a ``replaced`` face holds tissue by definition. So a
``removed`` verdict is overruled by tissue alone (:func:`overrules`), a ``replaced`` one only when the
face's fine texture is also the head's own (:func:`face_texture`, :data:`OWN_TEXTURE`). A pasted face
(a template, an average of faces, a generator's paint) is smoother than the scanner's noise in the
rest of the head; a real face carries that noise. A head that is smooth all over, as Colin27 (an
average of 27 scans of one man) is, has a face as smooth as the rest of it; the network called its
intact face ``replaced`` (bench/outside_heads.py). The anatomy overrules a ``removed`` verdict only
where the network is unsure (:data:`NETWORK_UNSURE`): a fill that resampling and smoothing have made
look like tissue fooled it on scans the network had rightly called ``removed`` at p(face) ≤ 0.05. A
``replaced`` verdict it judges however sure the network was: the texture is a second, independent
condition, and an intact face called ``replaced`` is the worst answer a privacy check can give (the
k-fold's networks call a few heads' intact faces ``replaced`` at p(face) under 0.01, docs/detector.md).

The eyes, the nose and the chin overrule (:data:`OVERRULING`); the mouth does not. The eyes and the
nose identify most and sit in the middle of the registered template's face, where a few mm of
misregistration matter least. The chin region lies next to the neck and holds neck tissue on some
heads whose face was removed; it overrules all the same, because the failed defacings that keep
only the lower face (a mask shifted up, a cut that stops above the chin) were half of the faces
``check`` still called defaced, and the rule labels a kept chin ``face``.

The same registration reads how far the head lies nodded (:func:`defacegan.deface.head_nod`),
which the detector's grid cannot: the mirror plane that straightens a turned or rolled head shows
no nod. The network was trained on heads posed up to 15 degrees from IXI's; nodded further, a face
drew p(face) 0.4 and a defaced head 0.5-0.9 (bench/acquisition.py). Where the network is unsure
(p(face) between :data:`NETWORK_UNSURE` and :data:`NETWORK_SURE`) and the head, lying straight
in its mirror, nods beyond the training poses (:data:`NOD_BEYOND`), the scan is judged again on a
grid turned to take the nod off (:func:`nod_to_undo`).

And a registration settles what the pose guard (:mod:`defacegan.pose`) could not: whether a head its
coarse template matched about as well turned a quarter or half way lies upright after all
(:func:`registered_upright`). Most such heads lie upright with the front of the head cut off by
the field of view or a defacer, which the rigid template does not expect; the guard calls them
``face``, a false alarm, unless the registration finds them upright.

It costs one registration, 2-3 s a scan on one core, so ``check`` measures it only on the scans
it could change (``--anatomy``: on every scan); the registration stack (SimpleITK, the template)
is imported when it is first used, so that a ``check`` that needs none starts as fast as before.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import nibabel as nib
    import SimpleITK as sitk

    from defacegan.deface import PitchSearch
    from defacegan.io import Scan

#: A feature region with at least this share inside the head is still there. Chosen on the 24
#: training subjects (one draw of every family, 312 scans, against the rule's labels), not on the
#: held-out heads: lowering the line from 0.5 to 0.35 reads 6 more of the 74 face-labelled defacings
#: as kept (39 -> 45) for 3 more of the 163 removed ones (16 -> 19); below 0.35 removed scans come
#: in faster than faces (0.3: 46 and 24). The rule labels `face` from 0.3 of a feature's own tissue,
#: and this reading runs lower than the rule's share on real tools' eye-level cuts (deepdefacer's
#: 0.62 and 0.51 read 0.36 and 0.37): a face left is the error a privacy check must not make.
TISSUE_MIN_SHARE = 0.35
#: The features whose regions overrule a ``removed`` verdict. The chin was chosen cross-fitted on the
#: k-fold's heads, each judged by the fold network that never saw it (bench/anatomy.py's
#: ``overruling`` report on its ``--folds`` runs at 49a0e9f, 608 scans of 32 heads): for each fold, the
#: region set that recovered most faces net of false alarms on the other three folds' heads was the
#: eyes, nose and chin in 7 of 8 choices (both runs, four folds each), and on the folds it was chosen
#: for it recovered 11 faces (eyes and nose alone: 9) for the same 3 false alarms. On the 24 heads the
#: shipped detector trained on (``--subjects training --draws 1 --seed 2000``) it turns 1 more face
#: for 3 more false alarms; on its 8 held-out heads, through ``check`` before and after (make
#: figures' five anatomy runs and the sweep, rerun at 7e2a13d), 5 more faces for 2. A face called
#: defaced is the error a privacy check must not make; a false alarm costs a look. The mouth region
#: adds a face the chin does not on one of the seven anatomy runs.
OVERRULING = ("eyes", "nose", "chin")
#: ... and only when the network gave the face at least this probability. Chosen on the anatomy bench's
#: runs of the two shipped detectors before the current one (bench/anatomy.py, 8 held-out heads,
#: 281 removed or replaced and 103 face-labelled draws each): every face the anatomy recovered (6;
#: 8) had p(face) ≥ 0.18, while 12 of its 18 false alarms and 13 of 20 (noise and constant fills,
#: skin-deep shells) had p(face) ≤ 0.05. The current detector's run is the check of the choice.
NETWORK_UNSURE = 0.1
#: ... and below this a ``face`` verdict is unsure enough to be judged again on a nodded head.
NETWORK_SURE = 1 - NETWORK_UNSURE
#: How IXI's heads lie against the template (degrees, nose up): the median nod of the 24 heads the
#: shipped detector was trained on, the middle of the training poses (the 32 IXI heads and Colin27
#: read -8.7 to +18.9; bench/pitch_search.py prints it).
TYPICAL_NOD = 7.7
#: A head nodded further than this from :data:`TYPICAL_NOD` lies beyond the training poses (15
#: degrees from each training head's own pose); the registration reads a nod within a few degrees
#: (8 held-out heads, intact, mask-defaced and partly defaced, nodded ±20 and ±30 degrees: the nod
#: read moved by the nod made to within 3 degrees on 93 of 96 scans; one head nodded 20 nose up read
#: 14 short, on all three).
NOD_BEYOND = 15.0
#: A face whose fine texture is at least this share of the rest of the head's (:func:`face_texture`)
#: is taken for the head's own. Chosen on the 24 training subjects (``bench/anatomy.py --subjects
#: training --draws 1 --seed 2000``, 312 scans), not on the held-out heads: all 50 of their real
#: faces, partial and eye-level cuts whose eye or nose region holds tissue read at least 0.90 (the
#: intact faces 0.90-1.32), the pasted template faces 0.33-0.82. Of the 12 unsure ``replaced``
#: verdicts there with an eye or nose region holding tissue, this line turns 3 into ``face``, all false
#: alarms (two generic face shells at 0.92 and 1.07, a skin-deep cut at 0.95); at 1.0 it would be 1,
#: with 4 of the 50 faces under the line: a face left is the error a privacy check must not make.
OWN_TEXTURE = 0.9
#: The face's texture is compared with the head's own beyond this distance from the face region
#: (mm), where the template's face mask, a few mm off, no longer reaches.
TEXTURE_MARGIN_MM = 6.0
#: Tissue: neighbouring voxels correlate at least this much (a real face's skin, fat and muscle
#: 0.6-0.8 on the held-out heads at 2 mm; white noise about 0) ...
MIN_NEIGHBOUR_CORRELATION = 0.3
#: ... and intensities vary by at least this coefficient of variation (a face 0.4-0.5; a constant fill
#: with a feathered edge under 0.1).
MIN_VARIATION = 0.15


@lru_cache(maxsize=1)
def template_features() -> nib.Nifti1Image:
    """The template's feature surfaces: 1 + index in FEATURES on its skin, 0 elsewhere (float32 for warping)."""
    import nibabel as nib

    from defacegan import deface
    from defacegan.features import feature_map, head_mask, skin_shell

    head_image, face_mask = deface.template_masks()[:2]
    data = np.asanyarray(head_image.dataobj).astype(np.float32)
    shell = skin_shell(head_mask(data), head_image.header.get_zooms()[:3])
    indices = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in data.shape), indexing="ij"), -1)
    labels = feature_map(shell, indices, np.asanyarray(face_mask.dataobj) < 0.5)  # the template on itself
    return nib.Nifti1Image(labels.astype(np.float32), head_image.affine)


#: A head whose pose the pose guard could not read (:mod:`defacegan.pose`: not understood, not
#: righted) is judged as it lies when the template registered onto it from the grid's axes fits it
#: better, by at least this much Mattes mutual information (lower is better), than registered onto
#: it read turned back by the guard's best quarter or half turn (:func:`registered_upright`) ...
#: Chosen on the 24 IXI heads outside the held-out set (a probe: one draw of every family on 21 of
#: them, each upright and with its header turned 2 of the 23 ways): the guard flagged 21 upright
#: scans, whose first fit was better by 0.12-0.28 (one worse by 0.03, left flagged), and 182 turned
#: ones, of which those whose fit ended within :data:`REGISTERED_NOD_WITHIN` were better by 0.026 at
#: most, two apart (by 0.22 and 0.23: turned a quarter way about S, which the mirror reading had
#: straightened, so upright on the grid). A turned face judged as it lies is the unsafe error: the
#: line sits nearer the upright scans.
REGISTERED_BETTER_BY = 0.1
#: ... and its fit ends nodded within this many degrees of :data:`TYPICAL_NOD`: the poses the network
#: judges, or the anatomy takes the nod off (:data:`NOD_BEYOND`); a registration that ends further
#: found the head lying so, not upright. Chosen on the same 24 heads (a second probe: intact, mask-
#: defaced and partly defaced, nodded 30 and 40 degrees nose up, 144 scans): the guard flagged 28,
#: whose fits from the grid's axes were all better by 0.12-0.33 and ended nodded 33.8 to 59.2
#: degrees; with 30 here 25 of them stayed flagged (bench/acquisition.py's head nodded 30 degrees
#: nose up was 7/8), with 55 all 28 are judged as they lie, their nod taken off (:func:`nod_to_undo`),
#: and answered right. The turned scans of the first probe that fitted better by 0.1 from the grid's
#: axes ended 74 degrees from the typical nod (57 for one better by 0.099).
REGISTERED_NOD_WITHIN = 55.0


def registered_upright(scan: Scan, turned_back: Scan, seed: int = 0) -> PitchSearch | None:
    """The registration search (:func:`defacegan.deface.pitch_search`) of a ``scan`` whose pose the
    template could not read, when it finds the head upright on the grid's axes: its fit better than
    the one onto ``turned_back`` (the scan read turned back by the guard's best turn) by
    :data:`REGISTERED_BETTER_BY` and nodded within :data:`REGISTERED_NOD_WITHIN` of IXI's pose; None
    otherwise, and where SimpleITK fails (the guard's answer stands). The guard compares a coarse
    template rigidly; a registration fits the head's own shape, so a head cut by a field of view or
    a defacer the template does not expect is still read for what it is."""
    from defacegan import deface

    try:
        upright = deface.pitch_search(scan, seed)
        if abs(upright.ended(upright.best) - TYPICAL_NOD) > REGISTERED_NOD_WITHIN:
            return None  # found lying so, whatever the turned fit: that search is not run
        turned = deface.pitch_search(turned_back, seed)
    except RuntimeError:
        return None
    return upright if upright.fits[upright.best][0] <= turned.fits[turned.best][0] - REGISTERED_BETTER_BY else None


class Reading(NamedTuple):
    """What one registration of the template onto a scan tells: each feature region's share holding
    tissue (:func:`feature_tissue`), the head's nod (degrees, :func:`defacegan.deface.head_nod`) and
    the face's texture against the head's (:func:`face_texture`)."""

    tissue: dict[str, float]
    nod: float
    texture: float


def read(scan: Scan, seed: int = 0, search: PitchSearch | None = None) -> Reading:
    """The template registered onto ``scan`` once, read for tissue and nod (``search``: the scan's
    :func:`defacegan.deface.pitch_search` with ``seed``, where the caller has it already). Raises
    :class:`~defacegan.io.ScanError` when the scan cannot be registered."""
    from defacegan import deface
    from defacegan.features import head_mask

    transform = deface.register_template(scan, seed, search)
    head = head_mask(scan.data)  # found once, for the tissue shares and the texture alike
    return Reading(feature_tissue(scan, transform, head), deface.head_nod(scan, transform), face_texture(scan, transform, head))


def feature_tissue(scan: Scan, transform: sitk.Transform, head: np.ndarray) -> dict[str, float]:
    """Each feature's share of its template surface that lies inside ``scan``'s ``head``
    (:func:`defacegan.features.head_mask`; the template registered onto it by ``transform``), or 0
    where what lies there does not look like tissue (:func:`looks_like_tissue`); NaN for a feature
    the registered template puts outside the field of view."""
    from defacegan.features import FEATURES, fractions

    features = feature_regions(scan, transform)
    shares = fractions(features, head)
    for number, name in enumerate(FEATURES, start=1):
        if not np.isnan(shares[name]) and not looks_like_tissue(scan.data, (features == number) & head):
            shares[name] = 0.0
    return shares


def face_texture(scan: Scan, transform: sitk.Transform, head: np.ndarray) -> float:
    """The face's fine texture as a share of the rest of the head's: the median absolute difference
    of each voxel from its 3×3×3 neighbourhood's mean, over the ``head``'s voxels
    (:func:`defacegan.features.head_mask`) in the registered template's face region, divided by the
    same over its voxels that are neither in the brain nor within :data:`TEXTURE_MARGIN_MM` of the
    face (scalp, skull, neck). About 1 for the head's own face at any noise level; NaN where either
    part holds no head."""
    from scipy import ndimage

    from defacegan import deface

    data = scan.data.astype(np.float32)
    face = deface.face_region(scan, transform)
    near_face = ndimage.distance_transform_edt(~face, sampling=scan.spacing) <= TEXTURE_MARGIN_MM
    rest = head & ~near_face & ~deface.brain_region(scan, transform)
    face &= head
    if not face.any() or not rest.any():
        return float("nan")
    detail = np.abs(data - ndimage.uniform_filter(data, 3))
    return float(np.median(detail[face]) / max(float(np.median(detail[rest])), np.finfo(np.float32).tiny))


def feature_regions(scan: Scan, transform: sitk.Transform) -> np.ndarray:
    """The template's feature surfaces on ``scan``'s grid (uint8, 1 + index in FEATURES), carried by
    ``transform`` nearest-neighbour: interpolating the labels would invent an eye (1) on the edge
    of every nose (2) or mouth (3) region."""
    from defacegan import deface

    return deface.warp(template_features(), transform, scan.data.shape, scan.affine, linear=False).astype(np.uint8)


def looks_like_tissue(data: np.ndarray, region: np.ndarray, min_variation: float = MIN_VARIATION) -> bool:
    """Whether the voxels of ``region`` look like tissue rather than a fill: neighbours along the
    voxel axes correlate (:data:`MIN_NEIGHBOUR_CORRELATION`) and intensities vary (``min_variation``;
    bench/reading.py asks what a lower line would change)."""
    values = data[region].astype(np.float64)
    if values.size < 20 or values.mean() <= 0 or values.std() / values.mean() < min_variation:
        return False
    correlations = []
    for axis in range(3):
        pairs = region & np.roll(region, -1, axis)
        pairs[(slice(None),) * axis + (-1,)] = False  # no pairs across the wrap-around
        first, second = data[pairs].astype(np.float64), np.roll(data, -1, axis)[pairs].astype(np.float64)
        if first.size >= 20 and first.std() > 0 and second.std() > 0:
            correlations.append(np.corrcoef(first, second)[0, 1])
    return bool(correlations) and float(np.mean(correlations)) >= MIN_NEIGHBOUR_CORRELATION


def kept_features(shares: dict[str, float], features: tuple[str, ...] = OVERRULING) -> list[str]:
    """The overruling ``features`` whose regions still hold tissue (NaN: outside the field of view, not kept)."""
    return [name for name in features if shares.get(name, float("nan")) >= TISSUE_MIN_SHARE]


def nod_to_undo(p_face: float, nod: float, straightened: bool, referred: bool = False) -> float | None:
    """The degrees to turn the grid by (:meth:`defacegan.contract.InputContract.place`'s ``nod``)
    so that the network judges the head as IXI's lie, when it was unsure and the head nods beyond
    the training poses; None otherwise, and for a head the grid was ``straightened`` for: the nod
    is read about the head's own axes, and where those had to be found (turned or rolled beyond 10
    degrees) it was misread by 26 and 45 degrees on 2 of 8 held-out heads turned 25, rolled 20 and
    nodded 10 degrees, which turned one face `replaced` (bench/acquisition.py's combined pose).

    A ``referred`` head (one the pose guard could not read, found upright by :func:`registered_upright`)
    has its nod taken off however sure the network was: the guard flags heads nodded far beyond the
    training poses, where the network's sureness means little (a head nodded 40 degrees nose up,
    partly defaced with eyes and nose kept, drew p(face) 0.03; 0.99 with the nod taken off)."""
    if not straightened and (referred or may_take_a_nod_off(p_face, straightened)) and abs(nod - TYPICAL_NOD) > NOD_BEYOND:
        return nod - TYPICAL_NOD
    return None


def may_take_a_nod_off(p_face: float, straightened: bool) -> bool:
    """Whether a nod may be taken off (:func:`nod_to_undo`), whatever it is: the network is unsure
    of a head whose grid was not straightened."""
    return not straightened and NETWORK_UNSURE <= p_face < NETWORK_SURE


def needs_reading(verdict: str, p_face: float, straightened: bool) -> bool:
    """Whether a registration could change the network's answer: it is unsure of a head lying
    straight (a nod may be taken off, :func:`nod_to_undo`), or the anatomy may overrule it."""
    return may_take_a_nod_off(p_face, straightened) or may_overrule(verdict, p_face)


def may_overrule(verdict: str, p_face: float, floor: float = NETWORK_UNSURE) -> bool:
    """Whether the anatomy has a say: a ``removed`` verdict the network is unsure of (p(face) ≥
    ``floor``; bench/anatomy.py asks with 0, to see what the floor changes), or any ``replaced`` one,
    which it overrules only where the face's texture is also the head's own (:func:`overrules`)."""
    return verdict == "replaced" or (verdict == "removed" and p_face >= floor)


def overrules(verdict: str, p_face: float, shares: dict[str, float] | None, texture: float | None = None,
              floor: float = NETWORK_UNSURE, features: tuple[str, ...] = OVERRULING) -> bool:
    """True when the anatomy contradicts a verdict it may overrule (:func:`may_overrule`, ``floor``):
    an overruling feature's region (``features``) still holds tissue and, against ``replaced``, the
    face's ``texture`` is the head's own (:data:`OWN_TEXTURE`; NaN or None: not)."""
    if not may_overrule(verdict, p_face, floor) or shares is None or not kept_features(shares, features):
        return False
    return verdict == "removed" or (texture is not None and texture >= OWN_TEXTURE)
