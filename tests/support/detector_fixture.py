"""A tiny detector checkpoint fitted in seconds, and generated scans for it to judge.

The detector is the real :class:`MultiBranchCNN` on a coarse grid (4 mm, 48³ voxels, 32-pixel
views), fitted on the generated heads of ``cohort_fixture`` and their defaced twins, so that its
verdicts on unseen generated heads are right and tests can check them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from support.cohort_fixture import synthetic_head
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from defacegan.models.cnn import MultiBranchCNN
from defacegan.views import compute_views

GRID = {"spacing": 4.0, "grid_shape": (48, 48, 48)}
KINDS = ("face", "mask", "plane")


def generated_head(kind: str, seed: int, shape=(40, 48, 44), spacing: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(RAS+ float32 volume, affine) of a generated head: with its face, or defaced by 'mask' or 'plane'."""
    face, removed, affine = synthetic_head(shape, spacing, np.random.default_rng(seed))
    return (face if kind == "face" else face * ~removed[kind]).astype(np.float32), affine


def write_head(path: Path, kind: str, seed: int, axcodes: str = "RAS", dtype=np.int16, **grid) -> Path:
    """Save a generated head as NIfTI, stored in the voxel order ``axcodes`` (IXI's is PSR)."""
    data, affine = generated_head(kind, seed, **grid)
    to_disk = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    stored = apply_orientation(data, to_disk)
    image = nib.Nifti1Image(stored.astype(dtype), affine @ inv_ornt_aff(to_disk, data.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def fit_tiny_detector(path: Path, heads: int = 16, steps: int = 60) -> Path:
    """Fit the CNN on ``heads`` generated faces and as many defaced twins (alternating methods); save a checkpoint."""
    volumes, labels = [], []
    for seed in range(heads):
        face, removed, _ = synthetic_head(GRID["grid_shape"], GRID["spacing"], np.random.default_rng(1000 + seed))
        volumes += [face, face * ~removed[KINDS[1 + seed % 2]]]
        labels += [0.0, 1.0]
    views = compute_views(torch.from_numpy(np.stack(volumes)).float()[:, None], 32)
    labels = torch.tensor(labels)
    torch.manual_seed(0)
    model = MultiBranchCNN(view_mode="all", size=32, **GRID)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: more threads only contend
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(model(views), labels).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    torch.save(checkpoint, path)
    return path
