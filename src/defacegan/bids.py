"""Deface a BIDS dataset into a BIDS-Derivatives dataset, as a BIDS App.

``defacegan deface BIDS_DIR OUTPUT_DIR participant`` reads the raw dataset with pybids
(:func:`find_scans`), and writes, for every anatomical scan that can show a face
(:data:`FACE_SUFFIXES`), under the same relative path in OUTPUT_DIR (a T1w is registered to
pydeface's template; the session's other contrasts get the T1w's removed region by rigid
registration, or the template's when the session has no T1w):

- the defaced image (same entities, header and voxel order as the input),
- its sidecar JSON: the input's metadata (BIDS inheritance resolved) plus
  ``DeidentificationMethod``, ``DeidentificationMethodCodeSequence`` and ``SkullStripped``,
- the removed region, ``<entities>_desc-deface_mask.nii.gz`` (uint8, 1 = removed; see
  :func:`mask_desc` for contrasts other than T1w) with its own sidecar,
- a QC figure under ``figures/`` (ignored by the validator through ``.bidsignore``).

Inputs are only read. Every file is written atomically and a scan counts as done only when all
its outputs exist, so a run that was interrupted is finished by running it again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from defacegan import __version__
from defacegan.io import Scan, ScanError, ScanFile, atomic_write_text, head_threshold, load_scan, save_nifti, stem

#: Anatomical BIDS suffixes whose images can show a face.
FACE_SUFFIXES = ("T1w", "T2w", "PD", "FLAIR")
#: The DICOM code (CID 7050) for removing recognisable visual features: what defacing does.
DEIDENTIFICATION_CODE = {
    "CodeValue": "113102",
    "CodingSchemeDesignator": "DCM",
    "CodeMeaning": "Clean Recognizable Visual Features Option",
}
METHOD_DESCRIPTIONS = {
    "mask": "pydeface's face mask, registered onto each scan with SimpleITK (no FSL)",
    "plane": "a quickshear-style plane cut below the brain, found by registering pydeface's template",
}
BIDS_VERSION = "1.10.0"
#: Files in a derivatives dataset that BIDS has no name for.
BIDSIGNORE = "figures\n"  # the validator ignores the folder only without a trailing slash
FIGURES = "figures"


@dataclass(frozen=True)
class BidsScan:
    """One raw image: its ``path``, its path ``relative`` to the dataset root, its BIDS
    ``entities`` (pybids names: subject, session, suffix, ...) and ``metadata`` (sidecars merged)."""

    path: Path
    relative: Path
    entities: dict = field(hash=False)
    metadata: dict = field(hash=False)
    reference: BidsScan | None = None  # the session's T1w, whose removed region this scan gets

    @property
    def session_key(self) -> tuple[str, str]:
        return self.entities.get("subject", ""), self.entities.get("session", "")

    @property
    def suffix(self) -> str:
        return self.entities["suffix"]

    def scan_file(self) -> ScanFile:
        return ScanFile(self.path, self.entities.get("subject"), self.entities.get("session"), self.suffix)


def is_bids_root(folder: str | os.PathLike) -> bool:
    return Path(folder).is_dir() and (Path(folder) / "dataset_description.json").is_file()


def find_scans(
    root: str | os.PathLike,
    participant_labels: Sequence[str] = (),
    session_labels: Sequence[str] = (),
    suffixes: Sequence[str] = FACE_SUFFIXES,
) -> list[BidsScan]:
    """The anatomical images with ``suffixes`` of a raw BIDS dataset, by session, T1w first.

    Every other contrast gets its session's (first) T1w as ``reference``.

    Labels may carry their ``sub-``/``ses-`` prefix or not. A label that matches no image is a
    ``ValueError``, so that a typo cannot pass for a finished dataset. ``derivatives/`` and
    ``sourcedata/`` are not searched. The dataset is not validated (pybids ``validate=False``).
    """
    from bids import BIDSLayout  # pybids (and pandas) load only for BIDS datasets

    root = Path(root)
    if not is_bids_root(root):
        raise ValueError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    subjects = [label.removeprefix("sub-") for label in participant_labels]
    sessions = [label.removeprefix("ses-") for label in session_labels]
    filters = {"subject": subjects} if subjects else {}
    if sessions:
        filters["session"] = sessions
    layout = BIDSLayout(root, validate=False, derivatives=False)
    files = layout.get(datatype="anat", suffix=list(suffixes), extension=[".nii", ".nii.gz"], **filters)
    for kind, wanted in (("subject", subjects), ("session", sessions)):
        missing = set(wanted) - {file.entities.get(kind) for file in files}
        if missing:
            raise ValueError(f"{root}: no {', '.join(suffixes)} images for {kind}(s) {', '.join(sorted(missing))}")
    scans = [
        BidsScan(Path(file.path), Path(file.relpath), dict(file.entities), file.get_metadata())
        for file in files
    ]
    # Each session's T1w first, so that a serial run finds its removed region on disk.
    scans.sort(key=lambda scan: (scan.session_key, scan.suffix != "T1w", scan.relative))
    t1w: dict[tuple[str, str], BidsScan] = {}
    for scan in scans:
        if scan.suffix == "T1w":
            t1w.setdefault(scan.session_key, scan)
    return [replace(scan, reference=t1w.get(scan.session_key)) if scan.suffix != "T1w" else scan for scan in scans]


def mask_desc(suffix: str) -> str:
    """The ``desc`` label of a scan's removed-region mask: ``deface`` for T1w, ``deface<suffix>``
    (``defaceT2w``...) for other contrasts, so that the masks of a session's images never share a
    name (a mask's name keeps the image's entities but not its suffix)."""
    return "deface" if suffix == "T1w" else f"deface{suffix}"


@dataclass(frozen=True)
class Outputs:
    """Where one scan's derivatives go."""

    image: Path
    sidecar: Path
    mask: Path
    mask_sidecar: Path
    figure: Path

    def all(self) -> tuple[Path, ...]:
        return (self.image, self.sidecar, self.mask, self.mask_sidecar, self.figure)


def outputs_for(scan: BidsScan, out: str | os.PathLike) -> Outputs:
    out = Path(out)
    image = out / scan.relative
    name = stem(image)
    base = name.removesuffix(f"_{scan.suffix}")
    extension = image.name[len(name):]
    mask = image.with_name(f"{base}_desc-{mask_desc(scan.suffix)}_mask{extension}")
    return Outputs(
        image=image,
        sidecar=image.with_name(f"{name}.json"),
        mask=mask,
        mask_sidecar=mask.with_name(f"{stem(mask)}.json"),
        figure=out / FIGURES / f"{name}_deface.png",
    )


def dataset_description(method: str) -> dict:
    return {
        "Name": f"defacegan: defaced ({method})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "defacegan",
            "Version": __version__,
            "Description": f"Defaced with the '{method}' method: {METHOD_DESCRIPTIONS[method]}.",
        }],
    }


def prepare_output(root: str | os.PathLike, out: str | os.PathLike, method: str) -> Path:
    """Make ``out`` a derivatives dataset for ``method`` (or check that it already is one).

    Refuses an ``out`` that is the raw dataset or lies inside it other than under
    ``derivatives/``, and one that holds another tool's or another method's outputs.
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    if out == root or (out.is_relative_to(root) and not out.is_relative_to(root / "derivatives")):
        raise ValueError(f"{out}: the output folder must be outside the BIDS dataset or under its derivatives/")
    description = out / "dataset_description.json"
    wanted = dataset_description(method)
    if description.exists():
        try:
            found = json.loads(description.read_text())
            generated = found["GeneratedBy"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"{description}: not written by defacegan; choose another output folder") from None
        if generated.get("Name") != "defacegan" or generated.get("Description") != wanted["GeneratedBy"][0]["Description"]:
            raise ValueError(f"{description}: holds other outputs ({generated.get('Description')}); "
                             "choose another output folder")
    else:
        atomic_write_text(description, json.dumps(wanted, indent=2) + "\n")
    if not (out / ".bidsignore").exists():
        atomic_write_text(out / ".bidsignore", BIDSIGNORE)
    if not (out / "README.md").exists():
        atomic_write_text(out / "README.md", f"# Defaced images\n\nWritten by defacegan {__version__}: "
                                             f"{METHOD_DESCRIPTIONS[method]}. QC figures are in {FIGURES}/.\n")
    return out


def _json(document: dict) -> str:
    return json.dumps(document, indent=2, default=str) + "\n"


def deface_scan(scan: BidsScan, out: str | os.PathLike, method: str, protect: Sequence[Path] = (),
                brain_check: bool = True) -> str:
    """Deface one scan into the derivatives dataset ``out``; return a one-line summary.

    With ``brain_check``, the brain removed (:func:`defacegan.brain.brain_removed`, BET on the
    input) goes into the image's sidecar, the QC figure and the summary line.

    A scan whose outputs all exist is skipped; otherwise all of them are (re)written, the image
    last, and temporary files left by a killed run are removed. A scan with a ``reference`` (its
    session's T1w) loses the T1w's removed region, carried over by rigid registration; others are
    registered to pydeface's template. Raises :class:`ScanError` for a scan that cannot be read
    or registered.
    """
    from defacegan.brain import brain_removed
    from defacegan.deface import deface, deface_like  # SimpleITK, matplotlib load only when needed
    from defacegan.report import deface_qc_figure, save_figure

    outputs = outputs_for(scan, out)
    if all(path.exists() for path in outputs.all()):
        return f"already defaced -> {outputs.image}"
    for path in outputs.all():  # temporary files of a run killed while writing (see io.save_nifti)
        for stale in path.parent.glob(f".{path.name}.*"):
            stale.unlink()
    protect = (scan.path, *protect)
    loaded = load_scan(scan.path)
    if scan.reference is None:
        result = deface(loaded, methods=(method,))[method]
        how = f"defacegan {__version__} ({method}): {METHOD_DESCRIPTIONS[method]}"
    else:
        try:
            reference, region = reference_region(scan.reference, out, method)
        except ScanError as error:
            raise ScanError(scan.path, f"its T1w could not be defaced ({error})") from None
        result = deface_like(loaded, reference, region, method)
        how = (f"defacegan {__version__} ({method}): the region removed from {scan.reference.relative.name} "
               f"({METHOD_DESCRIPTIONS[method]}), carried over by rigid registration (SimpleITK, mutual information)")
    save_nifti(loaded.to_original(result.removed, dtype=np.uint8), outputs.mask, overwrite=True, protect=protect)
    image_uri = f"bids::{outputs.image.relative_to(Path(out)).as_posix()}"
    atomic_write_text(outputs.mask_sidecar, _json({
        "Description": f"Region removed from the {scan.suffix} image by defacing (1 = removed)",
        "Type": "Face",
        "Sources": [image_uri],
        "SpatialReference": image_uri,
    }))
    brain = brain_removed(loaded, result.removed) if brain_check else None
    save_figure(deface_qc_figure(loaded, result, brain), outputs.figure)
    methods = scan.metadata.get("DeidentificationMethod", [])
    codes = scan.metadata.get("DeidentificationMethodCodeSequence", [])
    metadata = {
        **scan.metadata,
        "SkullStripped": False,
        "DeidentificationMethod": [*([methods] if isinstance(methods, str) else methods), how],
        "DeidentificationMethodCodeSequence": [*([codes] if isinstance(codes, dict) else codes), DEIDENTIFICATION_CODE],
        **(brain.sidecar() if brain else {}),
    }
    atomic_write_text(outputs.sidecar, _json(metadata))
    save_nifti(loaded.to_original(result.defaced), outputs.image, overwrite=True, protect=protect)
    head = loaded.data > head_threshold(loaded.data)
    removed = 100 * np.count_nonzero(result.removed & head) / max(np.count_nonzero(head), 1)
    carried = f" from {scan.reference.relative.name}" if scan.reference else ""
    brain_text = f", {brain.line()}" if brain else ""
    return f"defaced ({method}{carried}), {removed:.1f}% of head removed{brain_text} -> {outputs.image}"


def reference_region(reference: BidsScan, out: str | os.PathLike, method: str) -> tuple[Scan, np.ndarray]:
    """(the T1w scan, its removed region, bool RAS+): read from its finished outputs in ``out``,
    or defaced afresh (the same seed gives the same region) when a parallel run has not written
    them yet."""
    import nibabel as nib

    from defacegan.deface import deface

    scan = load_scan(reference.path)
    outputs = outputs_for(reference, out)
    if all(path.exists() for path in outputs.all()):
        return scan, np.asanyarray(nib.as_closest_canonical(nib.load(str(outputs.mask))).dataobj) > 0
    return scan, deface(scan, methods=(method,))[method].removed
