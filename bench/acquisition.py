"""The shipped detector on IXI heads it never saw, as other scanners and protocols would have acquired them.

The detector is trained on IXI's 3D T1 scans (2 mm here) with flips, poses up to 15 degrees,
smoothing and gamma; the scans it will judge come from clinical 2D protocols (thick slices in any
of the three directions), low-field or fast scans (coarse voxels, noise), coils with a strong bias
field, denoising reconstructions and averaged scans, patients who moved or lay tilted in the coil, and
files whose header misstates the axes by a quarter or half turn. Each of the 8 held-out heads (``HELD_OUT``),
intact, defaced by the pydeface mask and partly defaced (the lowest 40 % of the face region: eyes
and nose remain, so ``face``), is acquired as each condition below says and judged by ``check``'s
own path (the anatomy's second opinion where the network is unsure). No condition but "as stored"
is within the training augmentation (its poses stop at 15 degrees): this measures how far the
detector carries, it does not tune it. Heads turned or rolled past 10 degrees meet the contract's
straightening (``InputContract.place``); a nod has no mirror and stays as it is; a head the
straightening does not bring upright is called ``face`` by the pose guard (:mod:`defacegan.pose`). Two rows put the noise in the air only and in the head
only, to tell which of the two moves a verdict; one adds it before the defacing, as a published
dataset's scans were acquired and then defaced. One scan per head, case and condition, with its own
random draw (seeded by the subject): the 8 subjects are the trials (Wilson 95 % intervals).

    python bench/acquisition.py [--ixi ../shared/data/ixi-t1-2mm] [--ckpt CKPT] [--conditions TEXT] [--no-pose-check]
    python bench/acquisition.py --subjects training --conditions "bias field" --out bench/results/acquisition-training.json

``--conditions``: only the conditions whose name holds TEXT; ``--no-pose-check``: ``check
--no-pose-check``, the headers' axes trusted; ``--subjects training``: the 24 heads the detector
was trained on instead (their faces it has seen, but not under these conditions), where a line for
``check``'s second looks can be chosen without spending the held-out heads.

Prints a table and writes JSON (default bench/results/acquisition.json).
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import torch
import torchio as tio
from monai.transforms import RandRicianNoise

from defacegan.contract import plane_rotation
from defacegan.detector_data import bundle_caches, read_bundle
from defacegan.families import FaceBundle, Variant
from defacegan.inference import with_header_turned
from defacegan.io import Scan
from held_out import held_out_setup, judge_conditions, print_conditions, write_result

#: Slices of clinical 2D protocols: 5 mm and a 1 mm gap, acquired as 6 mm.
SLICE_MM = 6.0
#: Rician noise of these shares of the head's 99th percentile (the bundles' scale is 1): a fast or a
#: low-field scan, and (15 %) one beyond what a scan worth sharing holds. IXI's air is 0: the
#: detector never saw noisy air.
NOISE = (0.05, 0.10, 0.15)
#: Gaussian smoothing of the whole scan (σ, mm), beyond training's (σ up to 1 mm): a scan averaged
#: from several (as Colin27 is) or a denoising reconstruction.
SMOOTHING_MM = (2.0, 3.0)
#: TorchIO ghosting strengths (share of the k-space's maximum): faint, and TorchIO's default.
GHOSTS = {"faint": (0.3, 0.3), "strong": (0.5, 1.0)}
#: TorchIO bias-field strengths (its polynomial's largest coefficient; 0.5 is its default): a field
#: that darkens the face shrinks the fine texture the detector reads a real face by.
BIAS = (0.25, 0.5, 1.0)


def _seed(bundle: FaceBundle) -> int:
    return zlib.crc32(bundle.subject.encode())


def as_stored(bundle: FaceBundle, variant: Variant) -> Scan:
    return Scan(variant.volume, bundle.affine)


def through(transform: tio.Transform):
    """Acquired through a TorchIO transform, a random one drawn once per subject: an artefact, a
    pose, or a resampling (``tio.Resample(..., antialias=True)``: each voxel the average over its
    extent, for thick slices or coarse voxels; the scan keeps the grid the transform gives it)."""
    def acquire(bundle: FaceBundle, variant: Variant) -> Scan:
        torch.manual_seed(_seed(bundle))
        image = transform(tio.ScalarImage(tensor=torch.from_numpy(variant.volume[None].copy()), affine=bundle.affine))
        return Scan(image.data[0].numpy(), image.affine)
    return acquire


def header_turned(a: int, b: int, degrees: float):
    """A header that misstates the axes: the voxels as stored, the affine turned by ``degrees`` in the
    plane of world axes ``a`` and ``b`` (a quarter turn: a head lying sideways or face down on the
    grid), read back as a file is (:func:`defacegan.inference.with_header_turned`: reoriented to RAS+)."""
    def acquire(bundle: FaceBundle, variant: Variant) -> Scan:
        return with_header_turned(Scan(variant.volume, bundle.affine), plane_rotation(a, b, degrees))
    return acquire


def rician(std: float, where: str = "everywhere"):
    """Magnitude noise, as a receiver gives it: the air turns Rayleigh-bright, not just grainy.
    ``where``: "everywhere"; only in the "air" or the "head" (the bundle's head mask), to tell
    which of the two a change of verdict comes from; or "before the defacing": the head acquired
    noisy and then defaced, as a published dataset holds it (noisy air, and the face region as the
    defacer left it: zeros, not noise)."""
    def acquire(bundle: FaceBundle, variant: Variant) -> Scan:
        noise = RandRicianNoise(prob=1.0, std=std, sample_std=False)
        noise.set_random_state(_seed(bundle))
        before = where == "before the defacing"
        noisy = np.asarray(noise((bundle.face if before else variant.volume)[None]))[0].astype(np.float32)
        if before:
            noisy = np.where(variant.removed | variant.foreign, variant.volume, noisy)
        elif where != "everywhere":
            noisy = np.where(bundle.head == (where == "head"), noisy, variant.volume)
        return Scan(noisy, bundle.affine)
    return acquire


CONDITIONS = {
    "as stored (2 mm)": as_stored,
    f"{SLICE_MM:g} mm axial slices": through(tio.Resample((2.0, 2.0, SLICE_MM), antialias=True)),
    f"{SLICE_MM:g} mm coronal slices": through(tio.Resample((2.0, SLICE_MM, 2.0), antialias=True)),
    f"{SLICE_MM:g} mm sagittal slices": through(tio.Resample((SLICE_MM, 2.0, 2.0), antialias=True)),
    "4 mm voxels": through(tio.Resample((4.0, 4.0, 4.0), antialias=True)),
    **{f"Rician noise, {std:.0%} of the 99th percentile": rician(std) for std in NOISE},
    **{f"Rician noise, {NOISE[0]:.0%}, in the {where} only": rician(NOISE[0], where) for where in ("air", "head")},
    f"Rician noise, {NOISE[0]:.0%}, acquired before the defacing": rician(NOISE[0], "before the defacing"),
    **{f"bias field (TorchIO, coefficients up to {c:g})": through(tio.RandomBiasField(coefficients=c)) for c in BIAS},
    **{f"smoothed all over, σ {sigma:g} mm (averaged or denoised)": through(tio.Blur(std=sigma)) for sigma in SMOOTHING_MM},
    **{f"{name} ghosts along A-P (TorchIO, intensity {low:g}-{high:g})":
       through(tio.RandomGhosting(axes=(1,), intensity=(low, high))) for name, (low, high) in GHOSTS.items()},
    "motion (TorchIO, 2 moves up to 10 degrees and 10 mm)": through(tio.RandomMotion()),
    **{f"head {what} {abs(max(degrees, key=abs))} degrees": through(tio.Affine(scales=1, degrees=degrees, translation=0))
       for what, degrees in (("tilted nose up", (20, 0, 0)), ("tilted nose down", (-20, 0, 0)),
                             ("tilted nose up", (30, 0, 0)), ("tilted nose down", (-30, 0, 0)),
                             ("turned", (0, 0, 30)), ("rolled", (0, 30, 0)),
                             ("turned", (0, 0, 45)), ("turned", (0, 0, 60)))},
    "head turned 25, rolled 20 and tilted nose up 10 degrees": through(tio.Affine(scales=1, degrees=(10, 20, 25), translation=0)),
    **{f"header's axes {what}": header_turned(a, b, degrees)
       for what, (a, b, degrees) in (("turned 90 degrees", (0, 1, 90)), ("turned 180 degrees (face at the back)", (0, 1, 180)),
                                     ("rolled 90 degrees (head on its side)", (0, 2, 90)),
                                     ("pitched 90 degrees (face up)", (1, 2, 90)))},
}


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, held = held_out_setup(__doc__, "acquisition.json", argv, [("--conditions", str, "")])
    bundles = [read_bundle(cache) for cache in bundle_caches(held, detector.contract, args.cache)]
    rows = judge_conditions(detector, bundles, {name: acquire for name, acquire in CONDITIONS.items() if args.conditions in name})
    print_conditions(f"other acquisitions: {detector.checkpoint}, {len(bundles)} {args.subjects} IXI heads", rows)
    return write_result(args, detector, started, subjects=[b.subject for b in bundles], subjects_drawn=args.subjects, rows=rows)


if __name__ == "__main__":
    main()
