"""Does each scan still show a face, or was it removed or replaced? The check most users run.

:func:`gather_scans` turns files, folders and BIDS datasets into a list of scans (with subject
and session where the names carry them); :func:`check_scans` runs a loaded
:class:`~defacegan.inference.Detector` over them in batches; :func:`write_report` writes what a
person needs to review the answer: ``results.tsv``, ``results.json``, one PNG per scan with the
views the model saw, and a self-contained ``index.html`` (thumbnails inlined, a few lines of
inline script to sort it) that a person reads before uploading a dataset. Inputs are only ever read.

The detector was trained on T1w scans: a scan whose contrast is known to be another one (from its
BIDS suffix, or the series description of its DICOM series or sidecar JSON) gets a note beside its
verdict (:attr:`CheckResult.note`).

The anatomy's second opinion (:mod:`defacegan.anatomy`) gives a scan the share of each facial
feature's region that still holds tissue (``tissue_eyes``... columns) and the face's fine texture
against the rest of the head's (``face_texture``); a ``removed`` verdict the network is unsure of and
those regions contradict becomes ``face``, with a note saying so, and so does any ``replaced`` one
whose face also has the head's own texture, however sure the network was. The same
registration reads a nod: a head nodded beyond the training poses that the network was unsure of, or
whose pose only a registration could read, is judged again on a grid turned to take the nod off
(``nodded`` column, noted). It is measured on the
scans it could change by default, on every scan with ``--anatomy``, on none with ``--no-anatomy``.

The PNGs show faces wherever a face is still present: they are written only to the folder the
caller chooses.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table
from rich.text import Text

from defacegan.anatomy import kept_features
from defacegan.contract import VERDICTS
from defacegan.dicom import contrast_of
from defacegan.inference import Detector, Prediction, left_by_evened_look, likelier_defacing, turned_by_evened_look
from defacegan import bids
from defacegan.io import ScanFile, atomic_write_bytes, atomic_write_text, find_scans, stem
from defacegan.pose import understood

#: Missing values in TSV files, as BIDS writes them.
MISSING = "n/a"
#: The contrast the detector was validated on; verdicts on other known contrasts carry a note.
VALIDATED_CONTRAST = "T1w"
#: The key of a defaced image's JSON sidecar (``<stem>.json`` beside it, as deface writes it) that gives
#: the share of the brain, in %, inside the removed region; shown when a checked scan has one.
BRAIN_REMOVED_KEY = "BrainRemovedPercent"
#: A scan called ``removed`` or ``replaced`` with p(face) at least this is noted as close to the
#: line: on held-out subjects (k-fold, README) the band [0.2, threshold 0.5) holds about half of the
#: real faces the detector misses (0.953 called `face` at 0.5, 0.975 at 0.2) and about a seventh of
#: the removed ones, so it is the short list worth looking at by eye.
LOOK_FLOOR = 0.2
#: The report's default order: scans that still show a face first, then those that failed.
VERDICT_ORDER = ("face", "error", "replaced", "removed")


@lru_cache(maxsize=1)
def html_templates():
    """The report's and the web page's jinja2 templates (jinja2 is imported here, off a plain check's start: ~70 ms)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("defacegan", "templates"), autoescape=select_autoescape())


def gather_scans(paths: Iterable[str | os.PathLike], participant_labels: Sequence[str] = (),
                 session_labels: Sequence[str] = ()) -> list[ScanFile]:
    """Expand NIfTI files, DICOM series folders, folders (recursively) and BIDS roots (read with
    pybids; the anatomical contrasts that can show a face) into the scans to check.

    ``participant_labels`` (with or without ``sub-``) keeps only those subjects; a label that
    matches no scan is an error, so that a typo cannot pass for a clean dataset.
    ``session_labels`` (with or without ``ses-``) selects sessions of BIDS roots.
    """
    scans: dict[Path, ScanFile] = {}
    for path in map(Path, paths):
        if bids.is_bids_root(path):
            found = [scan.scan_file() for scan in bids.find_scans(path, session_labels=session_labels)]
        else:
            found = map(ScanFile.from_path, find_scans([path]))
        scans.update((scan.path, scan) for scan in found if scan.path not in scans)
    selected = list(scans.values())
    if participant_labels:
        wanted = {label.removeprefix("sub-") for label in participant_labels}
        selected = [scan for scan in selected if scan.subject in wanted]
        missing = wanted - {scan.subject for scan in selected}
        if missing:
            raise ValueError(f"no scans found for participant(s) {', '.join(sorted(missing))}")
    return selected


def sidecar(path: str | os.PathLike) -> dict:
    """The JSON beside a scan (``<stem>.json``: a BIDS sidecar, dcm2niix's, or deface's), or {}."""
    try:
        document = json.loads(Path(path).with_name(f"{stem(path)}.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


@dataclass
class CheckResult:
    """One scan's answer. ``views`` (V, S, S) in [0, 1] are kept when a report will show them."""

    file: str
    subject: str | None = None
    session: str | None = None
    contrast: str | None = None  # BIDS suffix, when known
    probabilities: dict[str, float] | None = None
    answer: str | None = None  # face, removed or replaced
    error: str | None = None
    views: np.ndarray | None = None
    views_png: str | None = None  # path of the views PNG, relative to the report folder
    brain_removed: float | None = None  # % of the brain in the removed region, when deface recorded it
    tissue: dict[str, float] | None = None  # each feature region's share holding tissue, where measured
    texture: float | None = None  # the face's fine texture as a share of the head's, where measured
    overruled: bool = False  # the network said removed or replaced; the anatomy found the head's own face
    straightened: float | None = None  # degrees the head lay turned or rolled, when judged straightened
    nodded: float | None = None  # degrees the head lay nodded from IXI's pose (nose up +), when judged with it taken off
    pose_margin: float | None = None  # the template head's match upright minus turned (defacegan.pose); < 0: pose not understood
    righted: str | None = None  # the turn the header's axes were read with, where the pose guard found them turned
    registered_upright: bool = False  # the pose guard could not read the pose; a registration of the template found the head upright
    evened_p_face: float | None = None  # p(face) with the bias field taken off, where the network did not see a face (defacegan.bias_field)
    evened_tissue: dict[str, float] | None = None  # the feature regions' tissue shares on the evened scan, where the network saw a face in it
    registered_evened: bool = False  # the template would not register onto the scan as it is; it did onto the evened scan
    unrighted: str | None = None  # the turn the pose guard read the head's axes with, where a registration found it upright as stored

    @classmethod
    def from_prediction(cls, prediction: Prediction, scan: ScanFile) -> CheckResult:
        """The answer for ``scan``; an error drops the path the Detector put before it (the row names the file)."""
        error = prediction.error and prediction.error.removeprefix(f"{prediction.source}: ")
        fields = (prediction.probabilities, prediction.verdict, error, prediction.views)
        return cls(str(scan.path), scan.subject, scan.session, scan.contrast, *fields,
                   tissue=prediction.tissue, texture=prediction.texture, overruled=prediction.overruled,
                   straightened=prediction.straightened, nodded=prediction.unnodded, pose_margin=prediction.pose_margin,
                   righted=prediction.righted, registered_upright=prediction.registered_upright,
                   evened_p_face=prediction.evened_p_face, evened_tissue=prediction.evened_tissue,
                   registered_evened=prediction.registered_evened, unrighted=prediction.unrighted)

    @property
    def status(self) -> str:
        """'error', 'face', 'removed' or 'replaced'."""
        return "error" if self.error else self.answer

    @property
    def verdict(self) -> str:
        return {"error": f"error: {self.error}", "face": "FACE PRESENT", "removed": "face removed",
                "replaced": "face replaced"}[self.status]

    @property
    def evened_to_face(self) -> bool:
        return turned_by_evened_look(self.status, self.evened_p_face)

    @property
    def evened_unconfirmed(self) -> bool:
        return left_by_evened_look(self.status, self.evened_tissue)

    @property
    def found_by_a_second_opinion(self) -> bool:
        """The network called the face removed or replaced; the anatomy or the evened intensities found it."""
        return self.overruled or self.evened_to_face

    @property
    def near_the_line(self) -> bool:
        """Called ``removed`` or ``replaced``, yet with p(face) ≥ :data:`LOOK_FLOOR`."""
        return self.status in ("removed", "replaced") and self.probability("face") >= LOOK_FLOOR

    @property
    def note(self) -> str | None:
        """Why the verdict deserves less trust: the head's pose was not understood, the anatomy
        overruled the network, p(face) close to the line, a head lying beyond the training poses, or
        a contrast the detector was not validated on."""
        notes = []
        if self.unrighted is not None:
            notes.append(f"the head looked turned a quarter or half way (the template head matched it so with its "
                         f"header's axes turned {self.unrighted}), but a registration of the template found it upright "
                         f"as stored: judged as it lies")
        elif self.registered_upright:
            notes.append("the template head matched the head about as well turned a quarter or half way; a registration "
                         "of the template found it upright: judged as it lies")
        elif not understood(self.pose_margin):
            notes.append("the head's pose was not understood (the template head matches it better turned a quarter or "
                         "half way: axes misstated in the header, or a head lying far from upright): called face "
                         "whatever the network saw, look at it")
        if self.righted is not None:
            notes.append(f"the head looked turned a quarter or half way (the template head matched it so: axes "
                         f"misstated in the header, or a head lying far from upright): judged with the header's axes "
                         f"turned {self.righted}, look at it")
        if self.overruled:
            regions = self.regions_text(self.tissue)
            said = likelier_defacing(self.probabilities)
            own = f" with the head's own texture ({self.texture:.2f})" if said == "replaced" else ""
            notes.append(f"the network saw the face {said} (p(face) {self.probability('face'):.2f}), "
                         f"but feature regions still hold tissue ({regions}){own}: look at it")
        if self.evened_to_face:
            notes.append(f"the network saw the face {likelier_defacing(self.probabilities)} (p(face) "
                         f"{self.probability('face'):.2f}), but with the scan's intensities evened (its bias field "
                         f"taken off, N4) it sees one (p(face) {self.evened_p_face:.2f}) and feature regions hold "
                         f"tissue ({self.regions_text(self.evened_tissue)}): look at it")
        if self.evened_unconfirmed:
            notes.append(f"with the scan's intensities evened (its bias field taken off, N4) the network sees a face "
                         f"(p(face) {self.evened_p_face:.2f}), but no eye, nose or chin region holds tissue: look at it")
        if self.registered_evened:
            notes.append("the template would not register onto the scan as it is (a strong bias field?); it did with "
                         "the scan's intensities evened (its bias field taken off, N4), and the anatomy was read there")
        if self.near_the_line:
            notes.append(f"p(face) {self.probability('face'):.2f}, near the line: look at it")
        if self.straightened is not None:
            notes.append(f"the head lay turned {self.straightened:.0f}° in the coil, beyond the training poses: "
                         "judged on a grid turned with it")
        if self.nodded is not None:
            why = "its pose was read by a registration" if self.registered_upright else "the network was unsure"
            notes.append(f"the head lay nodded {abs(self.nodded):.0f}° nose {'up' if self.nodded > 0 else 'down'}, beyond the "
                         f"training poses, and {why}: judged again on a grid turned with it")
        if self.contrast and self.contrast != VALIDATED_CONTRAST:
            notes.append(f"{self.contrast}: detector validated on {VALIDATED_CONTRAST} only")
        return "; ".join(notes) or None

    @staticmethod
    def regions_text(tissue: dict[str, float]) -> str:
        """The eye, nose and chin regions that hold tissue, with their shares: "eyes 0.94, nose 0.99"."""
        return ", ".join(f"{name} {tissue[name]:.2f}" for name in kept_features(tissue))

    @property
    def verdict_text(self) -> str:
        """The verdict with its note beside it."""
        return f"{self.verdict} ({self.note})" if self.note else self.verdict

    def probability(self, verdict: str) -> float | None:
        return None if self.probabilities is None else self.probabilities[verdict]

    def probability_text(self, verdict: str = "face") -> str:
        value = self.probability(verdict)
        return MISSING if value is None else f"{value:.3f}"

    def record(self) -> dict:
        """The JSON/TSV row (no arrays); ``brain_removed`` only where deface recorded it,
        ``straightened`` and ``nodded`` (degrees) only where the head was judged turned with them, ``righted``
        only where its header's axes were read turned, ``registered_upright`` only where a registration
        found upright a head whose pose the guard could not read, ``registered_evened`` only where the
        template registered onto the evened scan alone, ``unrighted`` only where a registration found
        upright as stored a head the guard would have righted."""
        return {
            "subject": self.subject,
            "session": self.session,
            "contrast": self.contrast,
            "file": self.file,
            **{f"p_{verdict}": self.probability(verdict) for verdict in VERDICTS},
            "verdict": self.status,
            "note": self.note,
            "pose_margin": self.pose_margin,
            "error": self.error,
            **({"brain_removed": self.brain_removed} if self.brain_removed is not None else {}),
            **({"straightened": self.straightened} if self.straightened is not None else {}),
            **({"nodded": self.nodded} if self.nodded is not None else {}),
            **({"righted": self.righted} if self.righted is not None else {}),
            **({"registered_upright": True} if self.registered_upright else {}),
            **({"evened_p_face": self.evened_p_face} if self.evened_p_face is not None else {}),
            **({"registered_evened": True} if self.registered_evened else {}),
            **({"unrighted": self.unrighted} if self.unrighted is not None else {}),
            **{f"tissue_{name}": share if share == share else None for name, share in (self.tissue or {}).items()},
            **({"face_texture": self.texture if self.texture == self.texture else None} if self.texture is not None else {}),
            "views_png": self.views_png,
        }


@dataclass(frozen=True)
class Summary:
    """What a run found: scans checked, those with a face (``overruled``: of them, those the network
    called removed or replaced and a second opinion, the anatomy's or the evened intensities', found
    the head's own face in), those
    unreadable, those called defaced near the line (:data:`LOOK_FLOOR`); and its wall-clock seconds."""

    scanned: int
    faces: int
    unreadable: int
    near: int
    seconds: float
    overruled: int = 0

    @classmethod
    def of(cls, results: Sequence[CheckResult], seconds: float) -> Summary:
        statuses = [result.status for result in results]
        near = sum(result.near_the_line for result in results)
        overruled = sum(result.found_by_a_second_opinion for result in results)
        return cls(len(results), statuses.count("face"), statuses.count("error"), near, seconds, overruled)

    @property
    def line(self) -> str:
        by_anatomy = f" ({self.overruled} found by a second opinion)" if self.overruled else ""
        near = f", {self.near} more near the line (p(face) ≥ {LOOK_FLOOR:g}: look at them)" if self.near else ""
        return (f"{self.scanned} scanned, {self.faces} with a face{by_anatomy}{near}, {self.unreadable} unreadable, "
                f"{self.seconds:.1f} s")

    @property
    def headline(self) -> str:
        """The report's first sentence: what must be fixed before upload, and what to look at."""
        near = f"; {self.near} more are near the line" if self.near else ""
        failed = f"; {self.unreadable} could not be checked" if self.unreadable else ""
        return f"{self.faces} of {self.scanned} scans still show a face{near}{failed}"


def check_scans(scans: Sequence[ScanFile], detector: Detector, keep_views: bool = False) -> list[CheckResult]:
    """Classify every scan in one batched Detector run; unreadable scans get an ``error``. A scan's
    sidecar JSON gives its contrast where its name does not (a series description, as dcm2niix
    writes it) and the brain-removed figure where deface recorded one."""
    predictions = detector.predict([scan.path for scan in scans], keep_views=keep_views)
    results = []
    for prediction, scan in zip(predictions, scans):
        metadata = sidecar(scan.path)
        brain = metadata.get(BRAIN_REMOVED_KEY)
        results.append(replace(CheckResult.from_prediction(prediction, scan),
                               contrast=scan.contrast or contrast_of(metadata),
                               brain_removed=float(brain) if isinstance(brain, (int, float)) else None))
    return results


def results_document(results: Sequence[CheckResult], summary: Summary, detector: Detector) -> dict:
    """Everything about a run as one JSON-able dict (``--json`` and ``results.json``)."""
    return {
        "summary": asdict(summary) | {"seconds": round(summary.seconds, 3)},
        "threshold": detector.threshold,
        "anatomy": detector.anatomy,
        "checkpoint": str(detector.checkpoint),
        "view_names": detector.view_names,
        "results": [result.record() for result in results],
    }


VIEW_PIXELS = 128  # views are enlarged to about this many pixels, nearest neighbour: the model's pixels
VERDICT_COLOURS = {"removed": (23, 107, 44), "replaced": (23, 107, 44), "face": (176, 0, 32), "error": (138, 90, 0)}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG inlined in a page, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def view_image(view: np.ndarray) -> Image.Image:
    """An (S, S) view in [0, 1] enlarged to about VIEW_PIXELS by nearest neighbour: the model's own pixels."""
    image = Image.fromarray((np.clip(view, 0, 1) * 255).round().astype(np.uint8))
    zoom = max(1, VIEW_PIXELS // image.width)
    return image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)


def views_png(views: np.ndarray, view_names: Sequence[str], title: Sequence[str], status: str) -> bytes:
    """(V, S, S) views in [0, 1] as one PNG: the ``title`` lines on a bar coloured by verdict, then the views, 3 per row."""
    font = ImageFont.load_default(size=14)
    n_views, size = views.shape[0], views.shape[-1]
    zoom = max(1, VIEW_PIXELS // size)
    cell, line, gap = size * zoom, 18, 4
    bar = len(title) * line + 2 * gap
    columns = min(3, n_views)
    rows = -(-n_views // columns)
    canvas = Image.new("RGB", (columns * (cell + gap) + gap, bar + rows * (cell + line + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.width, bar - 1), fill=VERDICT_COLOURS[status])
    for number, text in enumerate(title):
        draw.text((2 * gap, gap + number * line), fitted(draw, text, font, canvas.width - 4 * gap), fill="white", font=font)
    for index, (view, name) in enumerate(zip(views, view_names)):
        left = gap + (index % columns) * (cell + gap)
        top = bar + gap + (index // columns) * (cell + line + gap)
        canvas.paste(view_image(view), (left, top))
        draw.text((left, top + cell + 1), name.replace("_", " "), fill="black", font=font)
    return png_bytes(canvas)


def fitted(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text``, or its start and end joined by '…', whichever fits ``width`` pixels."""
    short, keep = text, len(text)
    while keep > 2 and draw.textlength(short, font=font) > width:
        keep -= 2
        short = text[: keep // 2] + "…" + text[len(text) - keep // 2 :]
    return short


def result_png(result: CheckResult, view_names: Sequence[str]) -> bytes:
    """The views of one result, titled with its verdict, probability and file name."""
    title = [f"{result.verdict_text}    p(face) = {result.probability_text('face')}", Path(result.file).name]
    return views_png(result.views, view_names, title, result.status)


THUMBNAIL_VIEW = "mean_sagittal"  # the face in profile: the view where a face shows most


def thumbnail_uri(result: CheckResult, view_names: Sequence[str]) -> str | None:
    """One view (the sagittal mean projection, else the first) as an inline ``data:`` PNG."""
    if result.views is None:
        return None
    view = result.views[view_names.index(THUMBNAIL_VIEW) if THUMBNAIL_VIEW in view_names else 0]
    return data_uri(png_bytes(view_image(view)))


def under_common_folder(files: Sequence[str]) -> tuple[str, list[str]]:
    """(the folder all ``files`` lie in, each file relative to it): short names in the report
    that still tell a raw scan from its defaced copy."""
    folder = os.path.commonpath([str(Path(file).parent) for file in files]) if files else ""
    return folder, [os.path.relpath(file, folder) for file in files]


def report_order(results: Sequence[CheckResult]) -> list[CheckResult]:
    """Faces first, then failures, then replaced and removed; within each, highest p(face) first."""
    return sorted(results, key=lambda r: (VERDICT_ORDER.index(r.status), -(r.probability("face") or 0.0)))


def png_names(results: Sequence[CheckResult]) -> list[str]:
    """A distinct PNG file name per result, from the scan's name (``-2``, ``-3``... on clashes)."""
    names, used = [], set()
    for result in results:
        base = stem(result.file)
        name, copy = f"{base}.png", 1
        while name in used:
            copy += 1
            name = f"{base}-{copy}.png"
        used.add(name)
        names.append(name)
    return names


def tsv_text(records: Sequence[dict], columns: Sequence[str]) -> str:
    """Tab-separated rows as BIDS writes them: ``n/a`` for missing values, 4 decimals for numbers."""

    def cell(value) -> str:
        return MISSING if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([cell(record.get(column)) for column in columns] for record in records)
    return buffer.getvalue()


def tsv_columns(records: Sequence[dict]) -> list[str]:
    """Every key any of ``records`` has (:meth:`CheckResult.record`) but ``error``, whose text the
    note and the verdict carry, in the records' order: a key only some have (``brain_removed``, the
    anatomy's ``tissue_*``, ``registered_evened``...) goes after the key it follows in the first that has it."""
    columns: list[str] = []
    for record in records:
        at = 0
        for key in record:
            if key not in columns:
                columns.insert(at, key)
            at = columns.index(key) + 1
    return [column for column in columns if column != "error"]


def write_report(results: Sequence[CheckResult], summary: Summary, detector: Detector, out: str | os.PathLike) -> Path:
    """Write ``views/*.png``, ``results.tsv``, ``results.json`` and ``index.html`` into ``out``.

    Sets each readable result's ``views_png``; results need their ``views``
    (``check_scans(..., keep_views=True)``). Every file is written atomically. Returns the index.
    """
    out = Path(out)
    for result, name in zip(results, png_names(results)):
        if result.views is not None:
            atomic_write_bytes(out / "views" / name, result_png(result, detector.view_names))
            result.views_png = f"views/{name}"
    records = [result.record() for result in results]
    columns = tsv_columns(records)
    with_brain = "brain_removed" in columns
    atomic_write_text(out / "results.tsv", tsv_text(records, columns))
    atomic_write_text(out / "results.json", json.dumps(results_document(results, summary, detector), indent=2) + "\n")
    ordered = report_order(results)
    folder, names = under_common_folder([result.file for result in ordered])
    rows = [(result, name, thumbnail_uri(result, detector.view_names)) for result, name in zip(ordered, names)]
    page = html_templates().get_template("report.html").render(
        rows=rows, folder=folder, summary=summary, threshold=detector.threshold, checkpoint=detector.checkpoint,
        with_brain=with_brain, verdict_order=VERDICT_ORDER, missing=MISSING,
    )
    return atomic_write_text(out / "index.html", page)


COLUMNS = ("subject", "session", "file", "p(face)", "p(removed)", "p(replaced)", "verdict")
VERDICT_STYLES = {"removed": "green", "replaced": "green", "face": "bold red", "error": "yellow"}


def print_results(results: Sequence[CheckResult], summary: Summary, console: Console | None = None) -> None:
    """One row per scan and the summary line: a rich table on a terminal, plain aligned text otherwise."""
    console = console or Console()
    rows = [(r.subject or "", r.session or "", r.file, *map(r.probability_text, VERDICTS), r.verdict_text) for r in results]
    if console.is_terminal:
        table = Table(*COLUMNS)
        for column in table.columns[3:6]:
            column.justify = "right"
        for row, result in zip(rows, results):
            table.add_row(*map(Text, row[:-1]), Text(row[-1], style=VERDICT_STYLES[result.status]))
        console.print(table, summary.line, highlight=False)
        return
    widths = [max(len(text) for text in column) for column in zip(COLUMNS, *rows)]
    for row in (COLUMNS, *rows):
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip(), file=console.file)
    print(summary.line, file=console.file)
    console.file.flush()

