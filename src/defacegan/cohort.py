"""Build paired cohorts: each head with its face, beside its two defaced versions.

The folder and manifest format is :mod:`defacegan.manifest`'s. A source says which scans there
are (:class:`Entry`) and how one is made into volumes; building runs those in worker processes,
skips scans already built, reports unusable inputs and writes the manifest last.

Sources (:func:`source_from` maps the CLI's ``--source`` onto them):

- :class:`DemoSource`: the heads installed with the project, deformed into many subjects
  (:mod:`defacegan.demo`).
- :class:`FolderSource`: a folder of NIfTI T1 heads: one subject per file (``IXI012`` from
  ``IXI012-HH-1211_T1.nii.gz``), or per ``sub-XX`` in a BIDS layout
  (``sub-XX[/ses-YY]/anat/*_T1w.nii[.gz]``); each scan is defaced by
  :func:`defacegan.deface.deface` at its native resolution.
- :class:`IXISource`: the IXI T1 archive, downloaded by :func:`defacegan.ixi.fetch_ixi`, then as
  a folder.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torchio as tio

from defacegan.deface import deface
from defacegan.demo import DEMO_SUBJECTS, demo_heads, demo_subject, head_names
from defacegan.io import (
    Scan,
    ScanError,
    atomic_write_text,
    bids_anatomical_scans,
    find_scans,
    load_scan,
    save_nifti,
    stem,
)
from defacegan.ixi import fetch_ixi
from defacegan.manifest import COLUMNS, DEFAULT_FRACTIONS, MANIFEST, METHODS, VOLUMES, assign_splits

SETTINGS = "cohort.json"  # the source and seed a cohort folder was built with
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

Volumes = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]  # face, {method: removed (bool)}, RAS affine

IXI_SUBJECT = re.compile(r"(IXI\d+)-")


@dataclass(frozen=True)
class Entry:
    """One scan of a cohort: ``subject`` decides its split, ``folder`` (relative to the cohort)
    holds its volumes, ``source`` is its input file (or ``demo:<head>``), and ``index`` seeds
    a demo subject's deformation."""

    subject: str
    folder: str
    source: str
    index: int = 0


def scan_entries(folder: str | os.PathLike) -> list[Entry]:
    """The NIfTI heads under ``folder`` (recursively), grouped into subjects.

    A BIDS dataset (any ``sub-XX[/ses-YY]/anat/*_T1w.nii[.gz]`` at its top) contributes only
    those T1w scans, grouped by ``sub-XX``; otherwise every file is a subject, named by its IXI
    id or by its path without suffix (``/`` as ``_``).
    """
    folder = Path(folder)
    bids = bids_anatomical_scans(folder, ("T1w",))
    if bids:
        subjects = [(f"sub-{scan.subject}", scan.path) for scan in bids]
    else:
        paths = find_scans([folder])
        subjects = [(_subject_of(path.relative_to(folder).as_posix()), path) for path in paths]
    scans_of = Counter(subject for subject, _ in subjects)
    entries = [
        Entry(subject, subject if scans_of[subject] == 1 else f"{subject}/{stem(path)}", str(path.absolute()))
        for subject, path in subjects
    ]
    clashes = sorted(name for name, n in Counter(entry.folder for entry in entries).items() if n > 1)
    if clashes:
        raise ValueError(f"{folder}: several scans would share the output folder(s) {clashes}")
    return entries


def _subject_of(relative: str) -> str:
    name = PurePosixPath(relative)
    ixi = IXI_SUBJECT.match(name.name)
    return ixi.group(1) if ixi else str(name.with_name(stem(name))).replace("/", "_")


def stored_intensities(scan: Scan) -> np.ndarray:
    """The scan's RAS+ values in its file's own number type, without the file's scaling.

    Integer files come back as their stored integers, so face and defaced volumes hold the
    same values exactly and stay as compact as the input (MR intensities have no unit).
    """
    dtype = np.float32 if scan.original is None else scan.original.get_data_dtype()
    if not np.issubdtype(dtype, np.integer):
        return scan.data
    slope = float(getattr(scan.original.dataobj, "slope", 1.0))
    inter = float(getattr(scan.original.dataobj, "inter", 0.0))
    return np.rint((scan.data - inter) / slope).astype(dtype)


def scan_subject(path: str | os.PathLike, seed: int = 0) -> Volumes:
    """A scan defaced by both methods: (face, {method: removed bool}, affine), native grid."""
    scan = load_scan(path)
    try:
        defaced = deface(scan, methods=METHODS, seed=seed)
    except ValueError as error:  # e.g. no brain left to place the cutting plane against
        raise ScanError(path, f"defacing failed ({error})") from None
    removed = {method: result.removed for method, result in defaced.items()}
    return stored_intensities(scan), removed, scan.affine


def write_volumes(folder: Path, face: np.ndarray, removed: dict[str, np.ndarray], affine: np.ndarray,
                  protect: tuple[str, ...] = ()) -> None:
    """Write a scan's :data:`VOLUMES` into ``folder``; defaced = face × (1 − removed)."""
    volumes = {"face": face}
    for method in METHODS:
        volumes[f"defaced_{method}"] = np.where(removed[method], face.dtype.type(0), face)
        volumes[f"removed_{method}"] = removed[method].astype(np.uint8)
    for name, data in volumes.items():
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        save_nifti(image, folder / f"{name}.nii.gz", overwrite=True, protect=protect)


def _scan_volumes(entry: Entry, seed: int) -> Volumes:
    return scan_subject(entry.source, seed)


@dataclass(frozen=True)
class _DemoVolumes:
    """Makes a demo entry's volumes from the demo heads, loaded once by the parent process."""

    heads: dict[str, tio.Subject]

    def __call__(self, entry: Entry, seed: int) -> Volumes:
        base = self.heads[entry.source.removeprefix("demo:")]
        state = np.random.SeedSequence([seed, entry.index]).generate_state(1)[0]
        return demo_subject(base, int(state))


@dataclass(frozen=True)
class DemoSource:
    """``count`` demo subjects, taking the installed heads in turn: demo-mean-000, demo-colin-001..."""

    count: int = DEMO_SUBJECTS
    label = "demo"

    def entries(self, out: Path) -> list[Entry]:
        heads = head_names()
        names = [heads[index % len(heads)] for index in range(self.count)]
        return [Entry(f"demo-{name}-{index:03d}", f"demo-{name}-{index:03d}", f"demo:{name}", index)
                for index, name in enumerate(names)]

    def volume_builder(self) -> Callable[[Entry, int], Volumes]:
        """Loads the heads here, once, so that worker processes need not register Colin27 again."""
        return _DemoVolumes(demo_heads())


@dataclass(frozen=True)
class FolderSource:
    """The NIfTI heads under ``folder`` (:func:`scan_entries`); ``subjects``: only the first N."""

    folder: Path
    subjects: int | None = None

    @property
    def label(self) -> str:
        return str(self.folder.resolve())

    def entries(self, out: Path) -> list[Entry]:
        folder = self.folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: source must be 'demo', 'ixi' or a folder of NIfTI scans")
        if out.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{out}: the output folder must not lie inside the source folder {folder}")
        entries = scan_entries(folder)
        if not entries:
            raise ValueError(f"{folder}: no NIfTI scans found")
        if self.subjects is not None:
            kept = set(sorted({entry.subject for entry in entries})[: self.subjects])
            entries = [entry for entry in entries if entry.subject in kept]
        return entries

    def volume_builder(self) -> Callable[[Entry, int], Volumes]:
        return _scan_volumes


@dataclass(frozen=True)
class IXISource:
    """IXI's T1 heads, downloaded into the cohort folder, then built as a folder."""

    subjects: int | None = None
    label = "ixi"

    def entries(self, out: Path) -> list[Entry]:
        return FolderSource(fetch_ixi(out), self.subjects).entries(out)

    def volume_builder(self) -> Callable[[Entry, int], Volumes]:
        return _scan_volumes


Source = DemoSource | FolderSource | IXISource


def source_from(text: str | os.PathLike, subjects: int | None = None) -> Source:
    """The source the CLI's ``--source demo|ixi|FOLDER`` names. ``subjects``: how many demo
    subjects (default :data:`DEMO_SUBJECTS`), or the first N subjects of a folder."""
    if str(text) == "demo":
        return DemoSource(DEMO_SUBJECTS if subjects is None else subjects)
    if str(text) == "ixi":
        return IXISource(subjects)
    return FolderSource(Path(text), subjects)


@dataclass(frozen=True)
class _Builder:
    """Builds one entry; picklable, so worker processes can run it."""

    out: Path
    seed: int
    volumes: Callable[[Entry, int], Volumes]  # the source's volume builder

    def __call__(self, entry: Entry) -> tuple[str, str] | None:
        """None when built; (input, reason) for an input that cannot be used."""
        try:
            face, removed, affine = self.volumes(entry, self.seed)
            # A folder scan's input file; a demo entry's ``demo:<head>`` names no file.
            write_volumes(self.out / entry.folder, face, removed, affine, protect=(entry.source,))
        except ScanError as error:
            return error.path or entry.source, error.reason
        return None


_worker_builder: _Builder | None = None


def _start_worker(builder: _Builder, threads: int) -> None:
    global _worker_builder
    _worker_builder = builder
    torch.set_num_threads(threads)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)


def _build_in_worker(entry: Entry) -> tuple[str, str] | None:
    return _worker_builder(entry)


def _build_all(builder: _Builder, entries: list[Entry], workers: int) -> Iterator[tuple[str, str] | None]:
    """Build entries in order, in ``workers`` processes; each entry's result depends only on
    its own seed, never on which worker ran it."""
    workers = min(workers, len(entries))
    if workers <= 1:
        yield from map(builder, entries)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_start_worker, initargs=(builder, threads)) as pool:
        yield from pool.map(_build_in_worker, entries)


def _complete(folder: Path) -> bool:
    return all((folder / f"{name}.nii.gz").is_file() for name in VOLUMES)


def _claim(out: Path, source: str, seed: int) -> None:
    """Record what ``out`` is built from; refuse to mix in volumes from another source or seed."""
    wanted = {"source": source, "seed": seed}
    settings = out / SETTINGS
    if settings.is_file():
        found = json.loads(settings.read_text())
        if found != wanted:
            raise ValueError(f"{out} holds a cohort built with {found}, not {wanted}: "
                             "choose another output folder")
    else:
        atomic_write_text(settings, json.dumps(wanted) + "\n")


def _manifest_row(out: Path, entry: Entry, split: str) -> dict[str, str]:
    header = nib.load(out / entry.folder / "face.nii.gz").header
    return {
        "subject": entry.subject,
        "source": entry.source,
        "split": split,
        **{name: f"{entry.folder}/{name}.nii.gz" for name in VOLUMES},
        "spacing": "x".join(str(round(float(size), 4)) for size in header.get_zooms()[:3]),
        "shape": "x".join(str(n) for n in header.get_data_shape()[:3]),
    }


def build_cohort(
    source: Source | str | os.PathLike,
    out: str | os.PathLike,
    *,
    subjects: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    workers: int = DEFAULT_WORKERS,
    failures: list[ScanError] | None = None,
) -> Path:
    """Build (or finish) the cohort of ``source`` in ``out``; return the manifest's path.

    ``source``: a source object, or ``"demo"``, ``"ixi"`` or a folder of NIfTI heads with
    ``subjects`` as in :func:`source_from`. Scans whose
    volumes all exist are not built again. Inputs that cannot be used are printed on one line
    each, appended to ``failures`` and left out of the manifest; the rest carry on.
    """
    out = Path(out)
    if isinstance(source, (str, os.PathLike)):
        source = source_from(source, subjects)
    elif subjects is not None:
        raise ValueError("subjects: give it to the source object")
    entries = source.entries(out)
    _claim(out, source.label, seed)
    split_of = assign_splits([entry.subject for entry in entries], fractions, seed)
    todo = [entry for entry in entries if not _complete(out / entry.folder)]
    print(f"{out}: {len(entries)} scans of {len(split_of)} subjects, {len(entries) - len(todo)} already built",
          flush=True)
    results = _build_all(_Builder(out, seed, source.volume_builder()), todo, workers) if todo else ()
    failed = set()
    for entry, problem in zip(todo, results):
        if problem is None:
            print(f"{entry.folder}: built from {entry.source}", flush=True)
            continue
        failed.add(entry)
        error = ScanError(*problem)
        print(f"error: {error}", file=sys.stderr, flush=True)
        if failures is not None:
            failures.append(error)
    rows = [_manifest_row(out, entry, split_of[entry.subject]) for entry in entries if entry not in failed]
    return atomic_write_text(out / MANIFEST, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))

