"""Build paired cohorts: each head with its face, beside its two defaced versions.

A cohort is a folder with one sub-folder per scan, ``<subject>/`` (``<subject>/<scan>/`` when a
subject has several scans), holding RAS+ NIfTI volumes on the scan's own grid:

- ``face.nii.gz``: the head with its face;
- ``defaced_mask.nii.gz`` and ``removed_mask.nii.gz``: pydeface's face-mask method, the removed
  region as uint8 (1 = removed), and defaced = face × (1 − removed) exactly;
- ``defaced_plane.nii.gz`` and ``removed_plane.nii.gz``: the same for the quickshear plane cut;

and ``manifest.csv`` (:data:`COLUMNS`, paths relative to it), written last so a folder without
it is an unfinished build. Splits are drawn per subject from the subject ids and the seed alone,
before any volume is made: every scan of a subject, and every later augmentation of it, stays
in one split.

Sources:

- ``demo``: the heads installed with the project, pydeface's mean head and Colin27 (when Debian's
  ``mricron-data`` is there), each made into many subjects by random smooth deformations
  (TorchIO) on a 2 mm grid. The face mask and brain mask move with the head, so no registration
  runs per subject. Demo subjects share two anatomies: they prove the pipeline, not a score.
- a folder of NIfTI T1 heads: one subject per file (``IXI012`` from ``IXI012-HH-1211_T1.nii.gz``),
  or per ``sub-XX`` in a BIDS layout (``sub-XX[/ses-YY]/anat/*_T1w.nii[.gz]``); each scan is
  defaced by :func:`defacegan.deface.deface` at its native resolution.
- ``ixi``: the IXI T1 archive, downloaded by :func:`defacegan.ixi.fetch_ixi`, then as a folder.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torchio as tio

from defacegan.deface import (
    COLIN27,
    METHODS,
    brain_region,
    deface,
    face_region,
    plane_cut,
    register_template,
    template_masks,
)
from defacegan.io import (
    Scan,
    ScanError,
    atomic_write_text,
    bids_anatomical_scans,
    find_scans,
    head_threshold,
    load_scan,
    save_nifti,
    stem,
)
from defacegan.ixi import fetch_ixi

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
MANIFEST = "manifest.csv"
SETTINGS = "cohort.json"  # the source and seed a cohort folder was built with
VOLUMES = ("face", *(f"{kind}_{method}" for method in METHODS for kind in ("defaced", "removed")))
COLUMNS = ("subject", "source", "split", *VOLUMES, "spacing", "shape")
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

DEMO_SUBJECTS = 24  # about 50 s on 2 cores: each subject costs ~3 CPU-s, mostly the elastic resampling
DEMO_SPACING_MM = 2.0
DEMO_SHAPE = (96, 128, 128)  # 192 x 256 x 256 mm: a whole head with room to move
DEMO_DEFORMATION = tio.Compose([
    tio.RandomAffineElasticDeformation(  # one resampling for both
        affine_kwargs={"scales": 0.1, "degrees": 8, "translation": 8},  # translation in mm
        elastic_kwargs={"num_control_points": 7, "max_displacement": 8},  # mm
    ),
    tio.RandomGamma(log_gamma=0.2),
    tio.RandomBiasField(coefficients=0.3, order=2),
    tio.RandomNoise(std=(0, 0.02)),
    tio.RescaleIntensity(out_min_max=(0, 255), percentiles=(0, 99.5)),  # stored as uint8
])

FACE, BRAIN = 1, 2  # bits of a demo head's `regions` label map: one map moves both masks, a third faster

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


def demo_entries(count: int = DEMO_SUBJECTS) -> list[Entry]:
    """``count`` demo subjects, taking the installed heads in turn: demo-mean-000, demo-colin-001..."""
    heads = ("mean", "colin") if COLIN27.is_file() else ("mean",)
    names = [heads[index % len(heads)] for index in range(count)]
    return [Entry(f"demo-{name}-{index:03d}", f"demo-{name}-{index:03d}", f"demo:{name}", index)
            for index, name in enumerate(names)]


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


def demo_subject(base: tio.Subject, seed: int) -> Volumes:
    """One random deformation of a demo head: (face uint8, {method: removed bool}, affine)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        subject = DEMO_DEFORMATION(base)
    face = np.clip(np.rint(subject["head"].numpy()[0]), 0, 255).astype(np.uint8)
    affine = subject["head"].affine
    regions = subject["regions"].numpy()[0].astype(np.uint8)
    removed = {"mask": (regions & FACE) > 0, "plane": plane_cut((regions & BRAIN) > 0, affine)}
    return face, removed, affine


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


@dataclass(frozen=True)
class _Builder:
    """Builds one entry; picklable, so worker processes can run it. ``heads``: demo only."""

    out: Path
    seed: int
    heads: dict[str, tio.Subject] | None = None

    def __call__(self, entry: Entry) -> tuple[str, str] | None:
        """None when built; (input, reason) for an input that cannot be used."""
        try:
            if self.heads is None:
                face, removed, affine = scan_subject(entry.source, self.seed)
            else:
                base = self.heads[entry.source.removeprefix("demo:")]
                state = np.random.SeedSequence([self.seed, entry.index]).generate_state(1)[0]
                face, removed, affine = demo_subject(base, int(state))
            protect = () if self.heads else (entry.source,)
            write_volumes(self.out / entry.folder, face, removed, affine, protect=protect)
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
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subjects: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    workers: int = DEFAULT_WORKERS,
    failures: list[ScanError] | None = None,
) -> Path:
    """Build (or finish) the cohort of ``source`` in ``out``; return the manifest's path.

    ``source``: ``"demo"``, ``"ixi"`` or a folder of NIfTI heads. ``subjects``: how many demo
    subjects (default :data:`DEMO_SUBJECTS`), or the first N subjects of a folder. Scans whose
    volumes all exist are not built again. Inputs that cannot be used are printed on one line
    each, appended to ``failures`` and left out of the manifest; the rest carry on.
    """
    out = Path(out)
    if str(source) == "demo":
        entries, label = demo_entries(DEMO_SUBJECTS if subjects is None else subjects), "demo"
        if not COLIN27.is_file():
            print(f"notice: {COLIN27} not found (Debian package mricron-data); demo heads: pydeface's only")
    else:
        folder = fetch_ixi(out) if str(source) == "ixi" else Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: source must be 'demo', 'ixi' or a folder of NIfTI scans")
        if out.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{out}: the output folder must not lie inside the source folder {folder}")
        entries, label = scan_entries(folder), "ixi" if str(source) == "ixi" else str(folder.resolve())
        if not entries:
            raise ValueError(f"{folder}: no NIfTI scans found")
        if subjects is not None:
            kept = set(sorted({entry.subject for entry in entries})[:subjects])
            entries = [entry for entry in entries if entry.subject in kept]
    _claim(out, label, seed)
    split_of = assign_splits([entry.subject for entry in entries], fractions, seed)
    todo = [entry for entry in entries if not _complete(out / entry.folder)]
    print(f"{out}: {len(entries)} scans of {len(split_of)} subjects, {len(entries) - len(todo)} already built",
          flush=True)
    builder = _Builder(out, seed, demo_heads() if label == "demo" and todo else None)
    failed = set()
    for entry, problem in zip(todo, _build_all(builder, todo, workers)):
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


def load_manifest(path_or_dir: str | os.PathLike) -> pd.DataFrame:
    """A cohort's manifest (the file, or the folder holding it) with absolute volume paths."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cohort manifest (make one with `defacegan data build`)")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {missing}")
    unknown = sorted(set(manifest["split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"{path}: unknown split(s) {unknown}, expected {SPLITS}")
    for column in VOLUMES:
        manifest[column] = [str(path.parent.resolve() / relative) for relative in manifest[column]]
    return manifest
