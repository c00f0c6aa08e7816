"""DICOM series folders as scans: converted with dcm2niix, the field's DICOM-to-NIfTI converter.

A folder is a DICOM series folder when a file directly in it carries the DICOM preamble (``DICM``
at byte 128). :func:`load_series` converts it with the ``dcm2niix`` binary that the PyPI package
ships (no system install needed) into a temporary folder and reads the NIfTI through
:func:`defacegan.io.load_scan`, so a series is validated like any file; the converted image is
kept in memory and the temporary folder removed. A folder that holds no DICOM image, several
series, or a truncated file is a :class:`~defacegan.io.ScanError` naming the folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib

from defacegan.io import Scan, ScanError, is_nifti, load_scan

PREAMBLE_BYTES, MAGIC = 128, b"DICM"
#: dcm2niix's documented exit codes that say why a folder did not convert.
DCM2NIIX_ERRORS = {2: "no DICOM images found", 4: "a corrupt DICOM file", 5: "not a readable folder",
                   8: "some DICOM files could not be converted"}
#: Series descriptions (or sequence names) → BIDS suffix, first match wins; None when none matches.
CONTRAST_PATTERNS = (
    ("FLAIR", re.compile(r"flair|tirm|spcir", re.I)),
    ("PD", re.compile(r"(?<![a-z])pd(?![a-z])|proton", re.I)),
    ("T1w", re.compile(r"t1(?!\d)|mp-?2?rage|spgr|bravo|tfl3d|tfe", re.I)),
    ("T2w", re.compile(r"t2(?![*\ds])|tse|haste", re.I)),  # after T1w and PD: T1 and PD are often TSE too
)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble (a DICOMDIR index is no image)."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR" or is_nifti(path):
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(PREAMBLE_BYTES + len(MAGIC))[PREAMBLE_BYTES:] == MAGIC
    except OSError:
        return False


def is_dicom_series(folder: str | os.PathLike) -> bool:
    """True when a file directly in ``folder`` is a DICOM file."""
    folder = Path(folder)
    try:
        return folder.is_dir() and any(is_dicom_file(path) for path in folder.iterdir() if path.is_file())
    except OSError:
        return False


def dcm2niix(folder: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    """Run the packaged dcm2niix on the files directly in ``folder`` (no subfolders), writing into ``out``."""
    import dcm2niix as package  # the binary's location; imported only when a series is converted

    arguments = ["-d", "0", "-z", "n", "-f", "%s_%p", *options, "-o", str(out), str(folder)]
    return package.main(arguments, capture_output=True, text=True)


#: The starts of dcm2niix's lines that say a series is broken even where it still writes a volume
#: (a truncated file is skipped and the gap is "missing images").
BROKEN_SERIES = ("error", "unable", "warning: file not large enough", "warning: missing images")


def dcm2niix_problem(run: subprocess.CompletedProcess) -> str | None:
    """Why dcm2niix's conversion is unusable, in its own words (it names a truncated file), or None."""
    said = [line.strip() for line in (run.stdout + run.stderr).splitlines()
            if line.strip().lower().startswith(BROKEN_SERIES)]
    if run.returncode == 0 and not said:
        return None
    reason = DCM2NIIX_ERRORS.get(run.returncode, "missing or unreadable images" if run.returncode == 0
                                 else f"dcm2niix failed (exit code {run.returncode})")
    return f"{reason} (dcm2niix: {said[-1]})" if said else reason


def load_series(folder: str | os.PathLike) -> Scan:
    """The DICOM series in ``folder`` as a :class:`Scan` whose ``path`` is the folder."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="dcm2niix-") as temporary:
        run = dcm2niix(folder, Path(temporary), "-b", "n")
        images = sorted(Path(temporary).glob("*.nii"))
        problem = dcm2niix_problem(run) or (None if images else DCM2NIIX_ERRORS[2])
        if problem:
            raise ScanError(folder, f"not a usable DICOM series: {problem}")
        if len(images) > 1:
            names = ", ".join(image.stem for image in images)
            raise ScanError(folder, f"holds {len(images)} DICOM series or images ({names}); give one series per folder")
        try:
            scan = load_scan(images[0])
        except ScanError as error:
            raise ScanError(folder, f"DICOM series converted by dcm2niix: {error.reason}") from None
        original = nib.Nifti1Image.from_bytes(images[0].read_bytes())  # outlives the temporary folder
    return replace(scan, original=original, path=folder)


def series_metadata(folder: str | os.PathLike) -> dict:
    """The series' BIDS sidecar as dcm2niix writes it (SeriesDescription, EchoTime...), without
    converting the pixels; {} for a folder dcm2niix cannot read as one series."""
    with tempfile.TemporaryDirectory(prefix="dcm2niix-") as temporary:
        dcm2niix(Path(folder), Path(temporary), "-b", "o")
        sidecars = list(Path(temporary).glob("*.json"))
        return json.loads(sidecars[0].read_text()) if len(sidecars) == 1 else {}


def contrast_of(metadata: dict) -> str | None:
    """The BIDS suffix (T1w, T2w, PD, FLAIR) that the series description, protocol or sequence
    name states, or None when none of them says."""
    text = " ".join(str(metadata.get(key, "")) for key in ("SeriesDescription", "ProtocolName", "SequenceName"))
    return next((suffix for suffix, pattern in CONTRAST_PATTERNS if pattern.search(text)), None)
