"""A second opinion with the scan's intensities evened: the bias field taken off (N4) before the network looks again.

A receive coil's sensitivity falls off with distance, so a scan is brighter near the coil and darker
away from it. The face sits at the edge of the head, where such a field is strongest, and the network,
trained on IXI's mild fields only, reads a face darkened by one as a face that is gone: under TorchIO's
bias fields with coefficients up to 1, ``check`` called three of eight held-out intact faces not
``face`` (bench/acquisition.py, at d10e257). N4 (Tustison et al. 2010, SimpleITK's ``N4BiasFieldCorrectionImageFilter``)
estimates the smooth multiplicative field and divides it out. The network never saw N4-corrected
heads, so it is not run on every scan; a scan the network and the anatomy call ``removed`` or
``replaced`` is judged once more with its intensities evened, and called ``face`` if the network then
sees one and the anatomy, read on the evened scan, finds the eye, nose or chin region holding tissue
(:meth:`defacegan.inference.Detector.look_evened`). It can only turn a verdict to ``face``: the error
it risks is a false alarm, the safe one. The anatomy has its say because the network alone saw a
face in a mask-defaced held-out head under Rician noise once it was evened (p(face) 0.50;
bench/acquisition.py at 660778f), whose eye and nose regions hold no tissue.

The field is fitted on the scan shrunk to about :data:`FIT_SPACING_MM`, within its Otsu foreground:
the field is smooth, and a coarse fit costs about half a second on a 2 mm head and a second on a 1 mm
one (2 cores).
"""

from __future__ import annotations

import numpy as np

from defacegan.io import Scan

#: N4 fits the field on the scan shrunk to about this spacing (mm): on the 8 held-out heads under the
#: strongest bias fields, fitting at 8 mm gave the network the same answers as at 4 mm, in a fifth
#: of the time (0.7 s against 3.9 s a 2 mm scan on one core).
FIT_SPACING_MM = 8.0
#: N4's fitting levels and iterations at each (ITK's default is 4 levels of 50): three levels of
#: 50 evened those heads as well as at 4 mm; two of 20 left three of the eight faces under p(face) 0.7.
ITERATIONS = (50, 50, 50)


def evened(scan: Scan) -> Scan:
    """``scan`` divided by the bias field N4 finds in its Otsu foreground (the head); its path kept, so
    that an error on it names the file."""
    import SimpleITK as sitk  # imported where it is first used: a check that needs none starts faster

    data = np.asarray(scan.data, dtype=np.float32)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing([float(s) for s in scan.spacing[::-1]])  # SimpleITK's axes are the array's reversed
    shrink = [max(1, round(FIT_SPACING_MM / float(s))) for s in scan.spacing[::-1]]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(ITERATIONS))
    corrector.Execute(sitk.Shrink(image, shrink), sitk.Shrink(sitk.OtsuThreshold(image, 0, 1), shrink))
    field = np.exp(sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image)))
    return Scan((data / field).astype(np.float32), scan.affine, path=scan.path)
