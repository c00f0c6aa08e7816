"""The shipped detector on the output of defacing tools that are not this project's: Quickshear, caideface and deepdefacer.

Every training family imitates another tool; this runs real ones. Heads: the 8 IXI subjects the
shipped detector never saw (``HELD_OUT``) and Colin27 when installed. Each defaced scan is written
as NIfTI and judged by ``check``'s path (``Detector`` on the file). Its expected answer comes from
the feature rule, as in training: the voxels the tool zeroed are carried onto the head's
registered features (its cached bundle), so a defacing that leaves an eye is expected to be
called ``face``. Every output is answered twice: by the network alone (``check``) and with the
anatomy's second opinion (``check --anatomy``, :mod:`defacegan.anatomy`). The brain mask both tools start from is BET's (:func:`defacegan.brain.brain_mask`,
as ``deface`` measures the brain with).

- Quickshear (Schimke & Hale 2011, ``pip install quickshear``) cuts along a plane a ``buffer``
  below the lower hull of the brain mask. Two buffers: its default of 10 voxels (20 mm on these
  2 mm heads) and 5 voxels (10 mm, the default's distance on the 1 mm scans it is usually run on).
- caideface (cai4cai, Apache-2.0; Garcia-Foncillas et al. 2025, arXiv:2505.12999) warps its own
  face mask from MNI152 space onto the scan by an affine registration of the skull-stripped scan
  to its skull-stripped MNI152 template, and keeps every voxel within its dilated brain mask.
  Its mask, template and settings are used as its ``register.py`` and ``skull_strip.py`` take them
  (14 mm box dilation, moments start, rigid then affine, Mattes MI with 50 bins on 10 % of the
  voxels, nearest-neighbour warp, background 0); the two engines it calls, which do not install
  from PyPI, are replaced: BET for HD-BET (whose weights download at run time) and SimpleITK for
  3D Slicer's BRAINSFit/BRAINSResample; and the brain, not the dilated brain, is registered
  (:func:`caideface_defaced` says why). Only its data is needed: ``pip install --no-deps
  caideface`` (``make install`` does it).
- deepdefacer (Khazane et al., MIT licence, ``pip install --no-deps deepdefacer``): a 3D U-Net
  that predicts the voxels to keep, trained by its authors on their own heads; its saved network
  runs here under PyTorch (``bench/deepdefacer.py`` says how, and how it was checked against Keras).

    python bench/other_defacers.py [--ixi ../shared/data/ixi-t1-2mm] [--ckpt CKPT]

Prints a table and writes JSON (default bench/results/other_defacers.json).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
import time
from functools import lru_cache, partial
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from quickshear import quickshear
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from defacegan.brain import brain_mask
from defacegan.deface import COLIN27, to_sitk, warp
from defacegan.detector_data import bundle_caches, read_bundle, rule_label, subject_of
from defacegan.detector_training import HELD_OUT
from defacegan.inference import verdict_of
from defacegan.io import Scan, load_scan, stem
from deepdefacer import deepdefacer_defaced
from held_out import held_out_setup, right_rate, write_result

QUICKSHEAR_BUFFERS_VOXELS = (10, 5)
#: caideface's brain-mask dilation (its ``desired_dilation_mm``): a box this many mm wide.
CAIDEFACE_DILATION_MM = 14.0
#: The grid caideface's registration runs on here (both images block-averaged to about this).
CAIDEFACE_REGISTRATION_MM = 2.0


def quickshear_defaced(scan: Scan, brain: np.ndarray, buffer: int) -> np.ndarray:
    image = nib.Nifti1Image(scan.data.astype(np.float32), scan.affine)
    return np.asanyarray(quickshear(image, nib.Nifti1Image(brain.astype(np.uint8), scan.affine), buff=buffer).dataobj)


def caideface_data() -> Path:
    """The folder of caideface's face mask and template, found without importing caideface (its
    package imports spaCy and HD-BET, which are not installed)."""
    try:
        folder = Path(importlib.metadata.distribution("caideface").locate_file("caideface/data"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("caideface is not installed: pip install --no-deps caideface (or make install)") from None
    return folder


def _shrunk(image: sitk.Image) -> sitk.Image:
    return sitk.BinShrink(image, [max(1, round(CAIDEFACE_REGISTRATION_MM / s)) for s in image.GetSpacing()])


@lru_cache(maxsize=1)
def caideface_template() -> tuple[sitk.Image, nib.Nifti1Image]:
    """caideface's skull-stripped MNI152 template as its registration uses it, and its face mask:
    read once for every head."""
    data = caideface_data()
    template = nib.load(data / "mni_icbm152_t1_tal_nlin_sym_55_ext_brain_only.nii.gz")
    return _shrunk(to_sitk(np.asanyarray(template.dataobj), template.affine)), nib.load(data / "t1_mask.nii.gz")


def caideface_defaced(scan: Scan, brain: np.ndarray, seed: int = 0) -> np.ndarray:
    """caideface's MRI defacing (its ``skull_strip_single`` then ``deface_single``), its engines
    replaced: the scan's brain registered (moments start, rigid then affine, Mattes MI, 50 bins,
    10 % of the voxels drawn with ``seed``) to caideface's skull-stripped MNI152 template at about
    2 mm, its face mask carried onto the scan (nearest neighbour; beyond the mask's field of view:
    kept), and every voxel zeroed that neither the face mask nor the brain mask dilated by a
    :data:`CAIDEFACE_DILATION_MM` box keeps.

    caideface registers the scan inside the *dilated* mask. With BET's mask that scaled the template
    up: by 10-21 % (per axis) on Colin27, which lies in MNI space already (the right answer is the identity),
    moving the face mask's edge down past the eyes. Registering the brain itself gives Colin27
    scales of 0.99-1.02, so this registers the brain.
    """
    template, face_mask_image = caideface_template()
    box = np.ones([max(1, int(round(CAIDEFACE_DILATION_MM / s))) for s in scan.spacing], bool)
    dilated = ndimage.binary_dilation(brain, structure=box)
    floating = _shrunk(to_sitk(np.where(brain, scan.data, 0), scan.affine))
    transform: sitk.Transform = sitk.CenteredTransformInitializer(
        floating, template, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    for stage in ("rigid", "affine"):
        if stage == "affine":
            transform = sitk.AffineTransform(transform.GetMatrix(), transform.GetTranslation(), transform.GetCenter())
        registration = sitk.ImageRegistrationMethod()
        registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(0.1, seed + 1)  # ITK reads seed 0 as "use the clock"
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=200,
                                                              relaxationFactor=0.5)
        registration.SetOptimizerScalesFromPhysicalShift()
        registration.SetShrinkFactorsPerLevel([2, 1])
        registration.SetSmoothingSigmasPerLevel([1, 0])
        registration.SetInitialTransform(transform, inPlace=True)
        registration.SetNumberOfWorkUnits(1)  # the same sums in the same order: reproducible
        registration.Execute(floating, template)
    face_mask = warp(face_mask_image, transform, scan.data.shape, scan.affine, linear=False, default=1.0)
    return np.where((face_mask > 0) | dilated, scan.data, 0).astype(np.float32)


def deepdefacer_output(scan: Scan, brain: np.ndarray) -> np.ndarray:
    """deepdefacer on the head in RAS+ voxel order; it finds the face without a brain mask."""
    return deepdefacer_defaced(scan.data)


#: (tool, setting, how to deface a scan given its brain mask).
TOOLS = [
    *(("quickshear", f"buffer {buffer} voxels", partial(quickshear_defaced, buffer=buffer)) for buffer in QUICKSHEAR_BUFFERS_VOXELS),
    ("caideface", "default (14 mm dilation)", caideface_defaced),
    ("deepdefacer", "2.1.2, RAS+ order", deepdefacer_output),
]


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "other_defacers.json", argv)
    detector.anatomy = "always"
    paths += [COLIN27] if COLIN27.is_file() else []
    bundles = [read_bundle(cache) for cache in bundle_caches(paths, detector.contract, args.cache)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path, bundle in zip(paths, bundles):
            scan = load_scan(path)
            brain = brain_mask(scan)
            for tool, setting, defaced_by in TOOLS:
                defaced = defaced_by(scan, brain)
                label, own = rule_label(bundle, detector.contract, scan, (defaced == 0) & (scan.data != 0))
                target = Path(folder) / f"{stem(path)}_{tool}_{len(rows)}.nii.gz"
                nib.save(nib.Nifti1Image(defaced, scan.affine), target)
                prediction = detector.predict([target])[0]
                if prediction.error:
                    raise SystemExit(prediction.error)
                network = verdict_of(prediction.probabilities, detector.threshold)
                rows.append({"head": bundle.subject, "ixi": subject_of(path) in HELD_OUT, "tool": tool, "setting": setting,
                             "spacing_mm": float(np.mean(scan.spacing)), "expected": label, "own_share": own,
                             "verdict": network, **{f"p_{k}": v for k, v in prediction.probabilities.items()},
                             "right": (network == "face") == (label == "face"), "tissue": prediction.tissue,
                             "anatomy_verdict": prediction.verdict, "righted": prediction.righted, "unrighted": prediction.unrighted,
                             "anatomy_right": (prediction.verdict == "face") == (label == "face")})
    summary = []
    for tool, setting, _ in TOOLS:
        ixi = [row for row in rows if row["ixi"] and (row["tool"], row["setting"]) == (tool, setting)]
        for key, answer in (("right", "network alone"), ("anatomy_right", "--anatomy")):
            summary.append({"tool": tool, "setting": setting, "answer": answer, **right_rate([row[key] for row in ixi]),
                            "expected_face": sum(row["expected"] == "face" for row in ixi)})
    table = Table(title=f"Heads defaced by other tools: {detector.checkpoint}")
    for column in ("head", "tool", "setting", "eyes / nose / mouth / chin left", "expected (rule)", "verdict",
                   "p_face / p_removed / p_replaced", "right", "--anatomy: regions holding tissue", "verdict", "right"):
        table.add_column(column)

    def shares(values: dict) -> str:
        return " / ".join("—" if share != share else f"{share:.2f}" for share in values.values())

    for row in rows:
        table.add_row(row["head"], row["tool"], row["setting"], shares(row["own_share"]), row["expected"], row["verdict"],
                      f"{row['p_face']:.2f} / {row['p_removed']:.2f} / {row['p_replaced']:.2f}", "yes" if row["right"] else "NO",
                      shares(row["tissue"]), row["anatomy_verdict"], "yes" if row["anatomy_right"] else "NO")
    Console(width=200).print(table)
    for s in summary:
        print(f"held-out IXI, {s['tool']} {s['setting']}, {s['answer']}: {s['right']}/{s['n']} right [{s['low']:.2f}, {s['high']:.2f}] "
              f"({s['expected_face']} expected face by the rule)")
    return write_result(args, detector, started, tools=[f"{tool}: {setting}" for tool, setting, _ in TOOLS], rows=rows, summary=summary)


if __name__ == "__main__":
    main()
