"""How much brain a defacing removed, measured against a brain mask the defacer did not make.

The defacer's own masks (the face mask, and the atlas brain mask the plane cut rests on) all
move with one registration of pydeface's template, so checking one against another cannot fail:
a registration 20 mm off moves the brain mask with the face mask. Here the brain is found on the
face-intact input itself by ``brainextractor`` (FSL's BET re-implemented in Python: a surface
grown from a sphere inside the head until it meets the brain's edge; no template, no
registration), on a 2 mm isotropic copy cropped below the head's top like FSL's ``robustfov``
(BET wants isotropic voxels; 2 mm costs about 30 s on one core and is precise enough for
millilitres). The mask is carried back to the scan's grid; the brain removed is the brain voxels
inside the removed region.

BET's mask is loose at the skull base (it leaks in front of the brainstem into the clivus and
sphenoid), next to where the plane cut runs. The flag (:data:`FLAG_PERCENT`, 0.25 % of the brain
mask, about 3.5 mL) was set from the 32 IXI heads (``python bench/deface.py --data
../shared/data/ixi-t1-2mm --trials 0 --scans 0``): correctly registered, the ``mask`` method
removed 0.0 mL on every head, so the threshold only leaves room for BET's uneven edge elsewhere;
brainprep's 5 % would pass every ``mask`` registration moved 15-25 mm into the brain (max 1.4 %),
0.25 % flags 18 of those 32 (the rest removed less than 0.25 %). The ``plane`` cut exceeds it on
6 of 32 correct registrations (skull-base leak and lower brainstem): scans worth a look.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from defacegan.deface import to_sitk, warp
from defacegan.io import Scan, ScanError, head_threshold

BET_SPACING_MM = 2.0
KEEP_BELOW_TOP_MM = 170.0  # FSL robustfov's default brain-to-neck length
#: Scans whose defacing removed more than this share of the brain mask are flagged for a look.
FLAG_PERCENT = 0.25


@dataclass
class BrainRemoved:
    """The brain (``mask``, bool on the scan's RAS+ grid) and how much of it a defacing removed."""

    mask: np.ndarray
    brain_ml: float
    removed_ml: float

    @property
    def percent(self) -> float:
        return 100 * self.removed_ml / self.brain_ml if self.brain_ml else 0.0

    @property
    def flagged(self) -> bool:
        return bool(self.percent > FLAG_PERCENT)

    def sidecar(self) -> dict:
        """What the defaced image's JSON sidecar records, in BIDS's CamelCase (the mask stays out);
        ``defacegan check`` shows ``BrainRemovedPercent`` when it finds it."""
        return {
            "BrainMask": "brainextractor (BET) on the input, 2 mm",
            "BrainML": round(self.brain_ml, 1),
            "BrainRemovedML": round(self.removed_ml, 2),
            "BrainRemovedPercent": round(self.percent, 3),
            "BrainRemovedFlagPercent": FLAG_PERCENT,
            "BrainRemovedFlagged": self.flagged,
        }

    def line(self) -> str:
        """One line for people: the figure, and a warning when it is flagged."""
        text = f"brain removed {self.removed_ml:.1f} mL ({self.percent:.2f}%)"
        return f"{text}, ABOVE {FLAG_PERCENT:g}%: look at it" if self.flagged else text


def brain_mask(scan: Scan) -> np.ndarray:
    """The brain of ``scan`` (a face-intact head) by BET on a 2 mm isotropic copy; bool, the scan's grid.

    As FSL's ``robustfov`` before BET, only the top KEEP_BELOW_TOP_MM of the head is given to it:
    with the neck and tongue in view BET's starting sphere sits low and its surface grows into
    them (hundreds of mL on IXI heads)."""
    import nibabel as nib
    from brainextractor import BrainExtractor  # numba compiles on first use: load only when needed

    spacing = np.asarray(scan.spacing, dtype=float)
    zoom = BET_SPACING_MM / spacing
    shape = tuple(int(n) for n in np.ceil(np.asarray(scan.data.shape) / zoom))
    affine = scan.affine @ np.diag([*zoom, 1.0])
    affine[:3, 3] = (scan.affine @ [*((zoom - 1) / 2), 1.0])[:3]  # same corner as the scan's grid
    identity = sitk.Transform()
    coarse = warp(to_sitk(scan.data, scan.affine), identity, shape, affine)
    head = coarse > head_threshold(coarse)
    top = np.nonzero(head.any(axis=(0, 1)))[0].max() if head.any() else shape[2] - 1
    lowest = max(0, int(top - KEEP_BELOW_TOP_MM / BET_SPACING_MM))
    coarse = coarse[:, :, lowest:]
    affine[:3, 3] = (affine @ [0, 0, lowest, 1.0])[:3]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every iteration
            extractor = BrainExtractor(nib.Nifti1Image(coarse, affine))
            extractor.run()
            brain = extractor.compute_mask()
    except Exception as error:  # numba kernels and mesh code fail in many ways on odd volumes
        raise ScanError(scan.path, f"brain extraction failed ({type(error).__name__}: {error})") from None
    return warp(to_sitk(brain, affine), identity, scan.data.shape, scan.affine) >= 0.5


def brain_removed(scan: Scan, removed: np.ndarray, mask: np.ndarray | None = None) -> BrainRemoved:
    """How much of the brain (``mask``, default :func:`brain_mask` of ``scan``) lies in ``removed``."""
    mask = brain_mask(scan) if mask is None else mask
    voxel_ml = float(np.prod(scan.spacing)) / 1000
    return BrainRemoved(mask, float(np.count_nonzero(mask) * voxel_ml), float(np.count_nonzero(mask & removed) * voxel_ml))
