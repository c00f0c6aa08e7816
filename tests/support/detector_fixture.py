"""A tiny three-way detector fitted in seconds, and generated scans for it to judge.

The detector is the real :class:`DetectorNet` behind a coarse contract (4 mm, 48³ voxels,
16-pixel views, which learn as well as 32-pixel ones at a quarter of the cost a step), fitted
on the generated heads of ``cohort_fixture``: with their face, defaced by either method
(``removed``), or with a smooth foreign "face" in the removed region (``replaced``). Its
verdicts on unseen generated heads are right, so tests can check them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage
from support.cohort_fixture import synthetic_head

from defacegan.contract import VERDICTS, InputContract
from defacegan.detector_training import save_detector
from defacegan.models.detector import DetectorNet

#: The nine views: the generated heads carry no scanner noise for the face-texture view to read.
CONTRACT = InputContract(spacing=4.0, shape=(48, 48, 48), view_size=16, view_mode="all_face")
#: Generated kinds of scan and the verdict each should get.
KINDS = {"face": "face", "mask": "removed", "plane": "removed", "replaced": "replaced"}


def generated_head(kind: str, seed: int, shape=(40, 48, 44), spacing: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(RAS+ float32 volume, affine) of a generated head of one of :data:`KINDS`."""
    face, removed, affine = synthetic_head(shape, spacing, np.random.default_rng(seed))
    if kind == "face":
        return face, affine
    if kind == "replaced":  # a smooth, uniform face-shaped fill where the mask removed the face
        region = removed["mask"]
        fill = ndimage.gaussian_filter(region.astype(np.float32), 1.0) * np.percentile(face[face > 0], 60)
        return np.where(region, fill, face).astype(np.float32), affine
    return (face * ~removed[kind]).astype(np.float32), affine


def write_head(path: Path, kind: str, seed: int, axcodes: str = "RAS", dtype=np.int16, **grid) -> Path:
    """Save a generated head as NIfTI, stored in the voxel order ``axcodes`` (IXI's is PSR)."""
    data, affine = generated_head(kind, seed, **grid)
    to_disk = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    stored = apply_orientation(data, to_disk)
    image = nib.Nifti1Image(stored.astype(dtype), affine @ inv_ornt_aff(to_disk, data.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def fit_tiny_detector(path: Path, heads: int = 12, steps: int = 80) -> Path:
    """Fit DetectorNet on ``heads`` generated heads of every kind; save a detector checkpoint."""
    volumes, labels = [], []
    for seed in range(heads):
        for kind, verdict in KINDS.items():
            data, affine = generated_head(kind, 1000 + seed, shape=(48, 48, 48))
            volumes.append(CONTRACT.volume(data, affine))
            labels.append(VERDICTS.index(verdict))
    views = CONTRACT.views(torch.stack(volumes))
    labels = torch.tensor(labels)
    torch.manual_seed(0)
    net = DetectorNet(n_views=len(CONTRACT.view_names), n_classes=len(VERDICTS))
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(net(views), labels).backward()
        optimizer.step()
    return save_detector(net.eval(), CONTRACT, path, {"fixture": "generated heads"})
