"""A tiny generated cohort in the manifest format, for fast data-pipeline tests and benchmarks.

Each head (RAS+, voxel-centred mm) is an ellipsoid scalp with a brighter ellipsoid brain and a
"face" bump anterior-inferior. The ``mask`` method removes an anterior-inferior box, the
``plane`` method the half-space beyond an oblique plane; defaced = face × (1 − removed).

Run as a script to write one: ``python tests/support/cohort_fixture.py OUT [--subjects N] [--spacing MM]
[--shape X Y Z]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from defacegan.io import save_nifti

SPLIT_CYCLE = ("train", "train", "train", "train", "val", "test")


def _inside(axes: list[np.ndarray], centre, radii) -> np.ndarray:
    """Inside an axis-aligned ellipsoid, from the three open-grid coordinate arrays (mm)."""
    return sum(((x - c) / r) ** 2 for x, c, r in zip(axes, centre, radii)) <= 1


def synthetic_head(shape, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """One head: (face float32, {method: removed bool}, affine). Sizes vary ±10 % per subject."""
    shape = tuple(shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    # The grid is axis-aligned: each world coordinate varies along one axis (broadcast, not stored).
    axes = [index * spacing + offset for index, offset in zip(np.ogrid[tuple(slice(n) for n in shape)], affine[:3, 3])]
    _, y, z = axes
    size = rng.uniform(0.9, 1.1)
    face = np.zeros(shape, np.float32)
    face[_inside(axes, (0, 0, 0), size * np.array([62, 78, 70]))] = 0.5
    face[_inside(axes, (0, 68 * size, -32 * size), size * np.array([28, 22, 24]))] = 0.7
    face[_inside(axes, (0, 0, 8 * size), size * np.array([48, 60, 50]))] = 1.0
    face = face * (1 + 0.05 * rng.standard_normal(shape)).astype(np.float32) * rng.uniform(100, 1000)
    removed = {
        "mask": np.broadcast_to((y > 40 * size) & (z < -5 * size), shape).copy(),
        "plane": np.broadcast_to(y - z > 70 * size, shape).copy(),
    }
    return face.clip(0).astype(np.float32), removed, affine


def write_cohort(out: Path, n_subjects: int = 6, shape=(40, 48, 44), spacing: float = 4.0, seed: int = 0) -> Path:
    """Write ``n_subjects`` generated heads and ``manifest.csv`` under ``out``; return the manifest."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_subjects):
        subject = f"sub-{index:02d}"
        face, removed, affine = synthetic_head(shape, spacing, rng)
        row = {"subject": subject, "source": "synthetic", "split": SPLIT_CYCLE[index % len(SPLIT_CYCLE)]}
        volumes = {"face": face}
        for method, region in removed.items():
            volumes[f"defaced_{method}"] = face * ~region
            volumes[f"removed_{method}"] = region.astype(np.uint8)
        for column, data in volumes.items():
            save_nifti(nib.Nifti1Image(data, affine), out / subject / f"{column}.nii.gz", overwrite=True)
            row[column] = f"{subject}/{column}.nii.gz"
        row["spacing"] = "x".join([f"{spacing:.1f}"] * 3)
        row["shape"] = "x".join(map(str, shape))
        rows.append(row)
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 48, 44))
    args = parser.parse_args()
    print(write_cohort(args.out, args.subjects, args.shape, args.spacing))
