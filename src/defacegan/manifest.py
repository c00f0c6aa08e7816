"""The cohort manifest: which volumes a scan has, its class labels and its split.

A cohort is a folder with one sub-folder per scan, ``<subject>/`` (``<subject>/<scan>/`` when a
subject has several scans), holding RAS+ NIfTI volumes on the scan's own grid:

- ``face.nii.gz``: the head with its face;
- ``defaced_mask.nii.gz`` and ``removed_mask.nii.gz``: pydeface's face-mask method, the removed
  region as uint8 (1 = removed), and defaced = face × (1 − removed) exactly;
- ``defaced_plane.nii.gz`` and ``removed_plane.nii.gz``: the same for the quickshear plane cut;

and ``manifest.csv`` (:data:`COLUMNS`, paths relative to it), written last so a folder without
it is an unfinished build. Splits are drawn per subject from the subject ids and the seed alone,
before any volume is made: every scan of a subject, and every later augmentation of it, stays
in one split. Only numpy and pandas here, so that reading a manifest loads no imaging stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas

METHODS = ("mask", "plane")  # the defacing methods (defacegan.deface), one pair of volumes each
CLASS_NAMES = ("face", "defaced")  # label 0, label 1
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
MANIFEST = "manifest.csv"


def volume_columns(methods: Sequence[str]) -> list[str]:
    """Manifest columns of a scan's volumes for these defacing methods, the face first."""
    return ["face", *(f"{prefix}_{method}" for method in methods for prefix in ("defaced", "removed"))]


def is_mask_column(column: str) -> bool:
    return column.startswith("removed_")


VOLUMES = tuple(volume_columns(METHODS))
COLUMNS = ("subject", "source", "split", *VOLUMES, "spacing", "shape")


def assign_splits(
    subjects: Iterable[str], fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Map each distinct subject to one of :data:`SPLITS`: a seeded shuffle cut by ``fractions``.

    Sizes follow the fractions (largest remainder); with at least as many subjects as splits,
    every split with a positive fraction gets at least one.
    """
    unique = sorted(set(subjects))
    sizes = _split_sizes(len(unique), fractions)
    in_order = np.repeat(np.array(SPLITS, dtype=object), sizes)
    splits = np.empty(len(unique), dtype=object)
    splits[np.random.default_rng(seed).permutation(len(unique))] = in_order
    return dict(zip(unique, splits.tolist()))


def _split_sizes(count: int, fractions: tuple[float, ...]) -> np.ndarray:
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (len(SPLITS),) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers for {SPLITS}, "
                         f"got {fractions.tolist()}")
    share = fractions / fractions.sum() * count
    sizes = np.floor(share).astype(int)
    sizes[np.argsort(sizes - share, kind="stable")[: count - sizes.sum()]] += 1
    wanted = fractions > 0
    while count >= wanted.sum() and (empty := np.flatnonzero(wanted & (sizes == 0))).size:
        sizes[np.argmax(sizes)] -= 1
        sizes[empty[0]] += 1
    return sizes


def load_manifest(path_or_dir: str | os.PathLike) -> pandas.DataFrame:
    """A cohort's manifest (the file, or the folder holding it) with absolute volume paths."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cohort manifest (make one with `defacegan data build`)")
    import pandas  # only the cohort commands read manifests: `check` starts without it

    manifest = pandas.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {missing}")
    unknown = sorted(set(manifest["split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"{path}: unknown split(s) {unknown}, expected {SPLITS}")
    for column in VOLUMES:
        manifest[column] = [str(path.parent.resolve() / relative) for relative in manifest[column]]
    return manifest
