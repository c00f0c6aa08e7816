"""A small raw BIDS dataset of generated 4 mm heads, for the BIDS-App tests.

Each T1w is pydeface's template head on a 4 mm grid, moved by a random rigid-ish affine (so a
registration finds it in well under a second); each T2w is its intensity-inverted copy inside
the head (bright background-free CSF-like contrast), as a different contrast of the same anatomy.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from defacegan.deface import template_masks, warp
from support.geometry import random_affine

#: (subject, session or None, suffixes) of the default dataset: one subject without sessions,
#: one with two.
LAYOUT = (("01", None, ("T1w", "T2w")), ("02", "1", ("T1w", "T2w")), ("02", "2", ("T1w",)))


def grid_4mm() -> tuple[tuple[int, int, int], np.ndarray]:
    """The template's own grid at 4 mm (44 x 64 x 64)."""
    head = template_masks().head
    affine = head.affine @ np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (head.affine @ [1.5, 1.5, 1.5, 1.0])[:3]
    return tuple(n // 4 for n in head.shape), affine


def generated_head(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T1w-like int16 volume, affine) of the template head moved by a seeded random affine."""
    shape, affine = grid_4mm()
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    data = warp(template_masks().head, random_affine(np.random.default_rng(seed), centre), shape, affine)
    return np.rint(data / data.max() * 1000).astype(np.int16), affine


def inverted(t1w: np.ndarray) -> np.ndarray:
    """A T2w-like contrast: intensities flipped inside the head, air kept dark."""
    head = t1w > 0.1 * t1w.max()
    return np.where(head, t1w.max() + 100 - t1w, 0).astype(np.int16)


def write_bids_dataset(root: Path, layout=LAYOUT) -> Path:
    """Write the dataset under ``root`` (with a T1w sidecar for sub-01 and a top-level T2w.json
    inherited by every T2w); return ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "generated heads", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in sorted({s for s, _, _ in layout})))
    (root / "README").write_text("Generated heads for defacegan's tests.\n")
    (root / "T2w.json").write_text(json.dumps({"RepetitionTime": 3.2, "EchoTime": 0.4}))
    for index, (subject, session, suffixes) in enumerate(layout):
        t1w, affine = generated_head(index)
        folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        for suffix in suffixes:
            data = t1w if suffix == "T1w" else inverted(t1w)
            nib.save(nib.Nifti1Image(data, affine), str(folder / f"{prefix}_{suffix}.nii.gz"))
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3, "FlipAngle": 8}))
    return root
