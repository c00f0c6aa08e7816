"""`check --out`'s dataset report: one self-contained page that a person reads before upload,
opened offline in headless Chromium: the summary, a row per scan (faces first), the T1w-only note,
the brain-removed column where deface recorded it, and sorting by verdict and by probability."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from support.browser import chromium_page
from support.detector_fixture import write_head

from defacegan.check import BRAIN_REMOVED_KEY, MISSING, CheckResult, tsv_columns
from defacegan.cli import EXIT_UNREADABLE, main

#: name → generated kind (None: an unreadable file)
SCANS = {"sub-01_T1w": "mask", "sub-02_T1w": "face", "sub-02_T2w": "plane", "sub-03_T1w": "replaced", "sub-04_T1w": None,
         "series5": "mask"}


@pytest.fixture(scope="module")
def report(tmp_path_factory, detector_ckpt) -> Path:
    """The report folder of `check FOLDER --out REPORT` on five scans, one of them unreadable."""
    folder = tmp_path_factory.mktemp("scans")
    for seed, (name, kind) in enumerate(SCANS.items()):
        if kind:
            write_head(folder / f"{name}.nii.gz", kind, 60 + seed)
        else:
            (folder / f"{name}.nii.gz").write_bytes(b"not a scan")
    (folder / "sub-01_T1w.json").write_text(json.dumps({BRAIN_REMOVED_KEY: 0.25}))  # as deface records it
    (folder / "series5.json").write_text(json.dumps({"SeriesDescription": "t2_flair_tra"}))  # as dcm2niix writes it
    out = folder.parent / "report"
    assert main(["check", str(folder), "--out", str(out), "--ckpt", str(detector_ckpt), "--workers", "0", "--no-pose-check"]) == EXIT_UNREADABLE
    return out


def test_report_page_is_self_contained_beside_its_tables(report):
    page = (report / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == 5  # a thumbnail for each readable scan
    table = pd.read_csv(report / "results.tsv", sep="\t", dtype=str, keep_default_na=False)
    # the replaced face (sub-03) is measured by the anatomy, however sure the network is: its columns are there;
    # the scans called defaced were looked at again with the bias field taken off: its p(face) too
    assert list(table.columns) == ["subject", "session", "contrast", "file", "p_face", "p_removed", "p_replaced",
                                   "verdict", "note", "pose_margin", "brain_removed", "evened_p_face", "tissue_eyes", "tissue_nose",
                                   "tissue_mouth", "tissue_chin", "face_texture", "views_png"]
    brain = dict(zip(table.file.map(lambda file: Path(file).name), table.brain_removed))
    assert brain["sub-01_T1w.nii.gz"] == "0.2500" and brain["sub-02_T1w.nii.gz"] == MISSING
    document = json.loads((report / "results.json").read_text())
    assert [row["file"] for row in document["results"]] == list(table.file)


def test_report_in_headless_chromium_summary_rows_and_sorting(report, tmp_path):
    requests: list[str] = []
    with chromium_page(tmp_path / "profile") as page:
        page.on("request", lambda request: requests.append(request.url))
        page.goto((report / "index.html").as_uri())
        summary = page.inner_text("#summary")

        def column(name: str) -> list[str]:
            index = page.eval_on_selector_all("#scans th", f"cells => cells.findIndex(c => c.innerText.startsWith({name!r}))")
            return page.eval_on_selector_all("#scans tbody tr", f"rows => rows.map(r => r.cells[{index}].innerText)")

        first = {"verdict": column("verdict"), "file": column("file"), "brain": column("brain removed"),
                 "contrast": column("contrast")}
        thumbnails = page.eval_on_selector_all("img.thumbnail", "images => images.every(i => i.complete && i.naturalWidth > 0)")
        page.click("#verdict-header")
        reversed_verdicts = column("verdict")
        page.click("#scans th:has-text('p(face)')")
        by_face = [float(value) if value != MISSING else -1 for value in column("p(face)")]
    assert requests == [(report / "index.html").as_uri()]  # nothing fetched: works offline
    assert summary == "1 of 6 scans still show a face; 1 could not be checked."
    assert first["verdict"][0] == "FACE PRESENT" and first["verdict"][1].startswith("error:")
    assert first["file"][0] == "sub-02_T1w.nii.gz" and len(first["file"]) == 6
    for contrast in ("T2w", "FLAIR"):  # from the BIDS name; from the sidecar's series description
        assert first["verdict"][first["contrast"].index(contrast)].endswith(f"{contrast}: detector validated on T1w only")
    brain = dict(zip((Path(f).name for f in first["file"]), first["brain"]))
    assert brain["sub-01_T1w.nii.gz"] == "0.2" and brain["sub-03_T1w.nii.gz"] == MISSING
    assert thumbnails
    assert reversed_verdicts[-1] == "FACE PRESENT" and reversed_verdicts[-2].startswith("error:")
    assert by_face == sorted(by_face, reverse=True)


def test_every_key_a_record_has_is_a_column_in_the_records_order():
    """A column only some scans have (here the second look's, with the bias field taken off) is in
    the TSV, where the record puts it, even when the first scan lacks it."""
    probabilities = {"face": 0.3, "removed": 0.6, "replaced": 0.1}
    plain = CheckResult("plain.nii.gz", probabilities=probabilities, answer="removed").record()
    evened = CheckResult("evened.nii.gz", probabilities=probabilities, answer="removed", evened_p_face=0.2, registered_evened=True,
                         tissue={"eyes": 0.0, "nose": 0.1, "mouth": 0.0, "chin": 0.0}, texture=0.8).record()
    columns = tsv_columns([plain, evened])
    assert set(columns) == (set(plain) | set(evened)) - {"error"}
    assert columns[:10] == ["subject", "session", "contrast", "file", "p_face", "p_removed", "p_replaced", "verdict", "note", "pose_margin"]
    assert columns[10:] == ["evened_p_face", "registered_evened", "tissue_eyes", "tissue_nose", "tissue_mouth", "tissue_chin",
                            "face_texture", "views_png"]
