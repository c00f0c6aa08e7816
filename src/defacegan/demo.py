"""Demo heads: the heads installed with the project, made into many subjects.

pydeface's mean head and Colin27 (when Debian's ``mricron-data`` is there) are each posed and
proportioned at random (a TorchIO affine that scales each axis on its own, on a 2 mm grid) and
given a scanner's contrast, bias field and noise. The face mask and brain mask move with the head,
so no registration runs per subject. Demo subjects share two anatomies: they prove the pipeline,
not a score. (An elastic deformation on top made each subject cost ten times as much, mostly
SimpleITK's B-spline resampling, for shapes that prove no more.)
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from defacegan.deface import COLIN27, brain_region, face_region, plane_cut, register_template, template_masks
from defacegan.io import head_threshold, load_scan

DEMO_SUBJECTS = 24  # each subject costs ~0.3 CPU-s, mostly the resampling and the gzip
DEMO_SPACING_MM = 2.0
DEMO_SHAPE = (96, 128, 128)  # 192 x 256 x 256 mm: a whole head with room to move
DEMO_DEFORMATION = tio.Compose([
    tio.RandomAffine(scales=0.12, degrees=8, translation=8),  # translation in mm; each axis scaled on its own
    tio.RandomGamma(log_gamma=0.2),
    tio.RandomBiasField(coefficients=0.3, order=2),
    tio.RandomNoise(std=(0, 0.02)),
    tio.RescaleIntensity(out_min_max=(0, 255), percentiles=(0, 99.5)),  # stored as uint8
])

FACE, BRAIN = 1, 2  # bits of a demo head's `regions` label map: one map moves both masks, a third faster


def head_names() -> tuple[str, ...]:
    """The installed heads, in the order demo subjects take them; says so when Colin27 is missing."""
    if COLIN27.is_file():
        return ("mean", "colin")
    print(f"notice: {COLIN27} not found (Debian package mricron-data); demo heads: pydeface's only")
    return ("mean",)


@lru_cache(maxsize=1)
def demo_heads() -> dict[str, tio.Subject]:
    """The installed heads on the demo grid with their face and brain masks, intensities in [0, 1].

    pydeface's mean head comes with its masks in template space; the template's masks are moved
    onto Colin27 by the defacing registration (:func:`defacegan.deface.register_template`),
    once per process.
    """
    head, face_mask, brain_mask = template_masks()
    heads = {"mean": _on_demo_grid(
        tio.ScalarImage(tensor=_channel(head.dataobj, np.float32), affine=head.affine),
        tio.LabelMap(tensor=_channel(np.asanyarray(face_mask.dataobj) < 0.5), affine=face_mask.affine),
        tio.LabelMap(tensor=_channel(brain_mask.dataobj), affine=brain_mask.affine),
    )}
    if COLIN27.is_file():
        colin = load_scan(COLIN27)
        transform = register_template(colin)
        heads["colin"] = _on_demo_grid(
            tio.ScalarImage(tensor=_channel(colin.data, np.float32), affine=colin.affine),
            tio.LabelMap(tensor=_channel(face_region(colin, transform)), affine=colin.affine),
            tio.LabelMap(tensor=_channel(brain_region(colin, transform)), affine=colin.affine),
        )
    return heads


def _channel(data, dtype=np.uint8) -> torch.Tensor:
    """A (1, X, Y, Z) tensor as TorchIO images hold them."""
    return torch.from_numpy(np.asarray(data, dtype=dtype)[None].copy())


def _on_demo_grid(head: tio.ScalarImage, face_mask: tio.LabelMap, brain_mask: tio.LabelMap) -> tio.Subject:
    """Resample onto an axis-aligned RAS grid (DEMO_SHAPE, DEMO_SPACING_MM) centred on the head;
    the two masks become the bits of one ``regions`` label map."""
    data = head.data[0].numpy()
    voxels = np.argwhere(data > head_threshold(data))
    centre = nib.affines.apply_affine(head.affine, (voxels.min(0) + voxels.max(0)) / 2)
    affine = np.diag([DEMO_SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = centre - DEMO_SPACING_MM * (np.asarray(DEMO_SHAPE) - 1) / 2
    to_grid = tio.Compose([
        tio.Resample((DEMO_SHAPE, affine)),
        tio.RescaleIntensity(out_min_max=(0, 1), percentiles=(0, 99.5)),
    ])
    on_grid = to_grid(tio.Subject(head=head, face_mask=face_mask, brain_mask=brain_mask))
    face, brain = on_grid["face_mask"].data > 0, on_grid["brain_mask"].data > 0
    regions = (FACE * face | BRAIN * brain).to(torch.uint8)
    return tio.Subject(head=on_grid["head"], regions=tio.LabelMap(tensor=regions, affine=affine))


def demo_subject(base: tio.Subject, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """One random deformation of a demo head: (face uint8, {method: removed bool}, affine)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        subject = DEMO_DEFORMATION(base)
    face = np.clip(np.rint(subject["head"].numpy()[0]), 0, 255).astype(np.uint8)
    affine = subject["head"].affine
    regions = subject["regions"].numpy()[0].astype(np.uint8)
    removed = {"mask": (regions & FACE) > 0, "plane": plane_cut((regions & BRAIN) > 0, affine)}
    return face, removed, affine
