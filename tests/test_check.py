"""`defacegan check`: BIDS parsing, verdicts, exit codes, reports, and inputs left untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from support.detector_fixture import write_head
from PIL import Image
from rich.console import Console

from defacegan.check import LOOK_FLOOR, CheckResult, Summary, check_scans, gather_scans, print_results
from defacegan.cli import EXIT_FACE, EXIT_OK, EXIT_UNREADABLE, main
from defacegan.inference import Detector
from defacegan.io import ScanFile


@pytest.fixture(scope="module")
def detector(detector_ckpt: Path) -> Detector:
    return Detector(detector_ckpt, pose_check=False)  # generated heads: no anatomy for the pose guard (test_pose.py)


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    """A small BIDS dataset: sub-01 (face), sub-02 with a session (defaced), sub-03 (.nii), plus distractors."""
    root = tmp_path_factory.mktemp("bids")
    (root / "dataset_description.json").write_text('{"Name": "test", "BIDSVersion": "1.9.0"}')
    write_head(root / "sub-01/anat/sub-01_T1w.nii.gz", "face", 1)
    (root / "sub-01/anat/sub-01_T1w.json").write_text("{}")
    write_head(root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", "mask", 2)
    write_head(root / "sub-02/ses-1/anat/sub-02_ses-1_acq-fast_run-1_T2w.nii.gz", "plane", 3)
    write_head(root / "sub-03/anat/sub-03_PD.nii", "plane", 4, axcodes="PSR")
    for distractor in (
        "sub-02/ses-1/anat/sub-02_ses-1_angio.nii.gz",  # not a contrast that can show a face
        "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.nii.gz",  # not anat
        "derivatives/fmriprep/sub-01/anat/sub-01_T1w.nii.gz",  # not raw data
    ):
        write_head(root / distractor, "face", 5)
    return root


def sha256_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["check", *map(str, argv), "--no-pose-check"])  # generated heads: no anatomy for the pose guard (test_pose.py)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bids_root_yields_anatomical_scans_with_subject_and_session(bids_root):
    found = {(s.subject, s.session, s.path.name) for s in gather_scans([bids_root])}
    assert found == {
        ("01", None, "sub-01_T1w.nii.gz"),
        ("02", "1", "sub-02_ses-1_T1w.nii.gz"),
        ("02", "1", "sub-02_ses-1_acq-fast_run-1_T2w.nii.gz"),
        ("03", None, "sub-03_PD.nii"),
    }


def test_participant_labels_filter_with_or_without_prefix(bids_root):
    assert {s.subject for s in gather_scans([bids_root], ["01", "sub-03"])} == {"01", "03"}
    with pytest.raises(ValueError, match="participant.*07"):
        gather_scans([bids_root], ["01", "sub-07"])


def test_plain_folders_and_files(tmp_path):
    write_head(tmp_path / "site" / "IXI002-Guys-0828-T1.nii.gz", "face", 0)
    write_head(tmp_path / "site" / "sub-04_ses-pre_T1w.nii.gz", "face", 0)
    (tmp_path / "site" / "notes.txt").write_text("not a scan")
    named = tmp_path / "explicit.txt"
    named.write_text("named explicitly, so reported rather than skipped")
    scans = gather_scans([tmp_path / "site", named, tmp_path / "site"])
    assert scans == [
        ScanFile(tmp_path / "site" / "IXI002-Guys-0828-T1.nii.gz"),
        ScanFile(tmp_path / "site" / "sub-04_ses-pre_T1w.nii.gz", "04", "pre", "T1w"),
        ScanFile(named),
    ]


def test_verdicts_on_unseen_heads_in_other_grids_and_orientations(tmp_path, detector):
    grid = {"shape": (54, 64, 58), "spacing": 3.0}
    scans = [
        ScanFile(write_head(tmp_path / f"{kind}-{axcodes}.nii.gz", kind, 40 + i, axcodes, **grid))
        for i, (kind, axcodes) in enumerate([("face", "PSR"), ("mask", "PSR"), ("plane", "LIP"), ("replaced", "RAS"), ("face", "RAS")])
    ]
    results = check_scans(scans, detector)
    assert [r.status for r in results] == ["face", "removed", "removed", "replaced", "face"]
    assert [r.verdict for r in results] == ["FACE PRESENT", "face removed", "face removed", "face replaced", "FACE PRESENT"]
    for result in results:
        assert set(result.probabilities) == {"face", "removed", "replaced"} and result.error is None and result.views is None
        assert abs(sum(result.probabilities.values()) - 1) < 1e-5


def test_the_threshold_applies_to_p_face(tmp_path, detector_ckpt):
    """A scan is `face` when p(face) reaches the threshold, else the likelier of removed/replaced
    (the network's rule: without the anatomy's second opinion, which test_anatomy.py tests)."""
    scans = [ScanFile(write_head(tmp_path / "face.nii.gz", "face", 11))]
    (strict,) = check_scans(scans, Detector(detector_ckpt, threshold=0.0, anatomy="never", pose_check=False))
    (lenient,) = check_scans(scans, Detector(detector_ckpt, threshold=1.01, anatomy="never", pose_check=False))
    assert strict.status == "face"
    assert lenient.status == max(("removed", "replaced"), key=lenient.probabilities.__getitem__)


def test_a_check_starts_without_scipy_or_the_defacer(tmp_path, detector_ckpt):
    """What a one-scan `check` imports is most of its cold start (bench/startup.py): SciPy's ndimage
    (0.17 s) and the defacer serve the anatomy's registration, not a scan judged by the network alone,
    noisy air (the head mask, SimpleITK) and pose reading included."""
    image = nib.load(write_head(tmp_path / "head.nii.gz", "face", 7))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data += np.random.default_rng(7).rayleigh(0.03 * data.max(), data.shape) * (data == 0)
    nib.save(nib.Nifti1Image(data.astype(np.int16), image.affine), tmp_path / "noisy.nii.gz")
    program = (f"import sys; from defacegan.cli import main; main(['check', {str(tmp_path / 'noisy.nii.gz')!r}, "
               f"'--ckpt', {str(detector_ckpt)!r}, '--workers', '0', '--no-anatomy']); "
               "print(sorted(m for m in ('SimpleITK', 'scipy.ndimage', 'scipy.spatial', 'defacegan.deface') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "['SimpleITK']"  # the air was noisy: its head mask ran, and nothing more


def test_all_defaced_exits_0_and_json_lists_every_scan(tmp_path, capsys, detector_ckpt):
    for seed, kind in enumerate(["mask", "plane", "replaced"]):
        write_head(tmp_path / f"defaced{seed}.nii.gz", kind, seed)
    code, out, err = run_cli(capsys, tmp_path, "--ckpt", detector_ckpt, "--json")
    document = json.loads(out)
    assert code == EXIT_OK
    assert document["summary"] | {"seconds": 0} == {"scanned": 3, "faces": 0, "unreadable": 0, "near": 0, "seconds": 0,
                                                    "overruled": 0}
    assert [r["verdict"] for r in document["results"]] == ["removed", "removed", "replaced"]
    assert all({"p_face", "p_removed", "p_replaced"} <= set(r) for r in document["results"])
    assert document["view_names"] == list(Detector(detector_ckpt).view_names)


def test_a_face_exits_1_with_a_plain_table(bids_root, capsys, detector_ckpt):
    code, out, err = run_cli(capsys, bids_root, "--ckpt", detector_ckpt)
    lines = out.splitlines()
    assert code == EXIT_FACE
    assert lines[0].split() == ["subject", "session", "file", "p(face)", "p(removed)", "p(replaced)", "verdict"]
    faces = [line for line in lines[1:-1] if line.endswith("FACE PRESENT")]
    assert len(faces) == 1 and "sub-01_T1w.nii.gz" in faces[0] and faces[0].startswith("01 ")
    removed = [line for line in lines[1:-1] if "face removed" in line]
    assert len(removed) == 3 and sum(line.endswith("face removed") for line in removed) == 1  # the T1w
    assert {line.rsplit("(", 1)[-1] for line in removed if "_T1w" not in line} == {
        "T2w: detector validated on T1w only)", "PD: detector validated on T1w only)"}
    assert lines[-1].startswith("4 scanned, 1 with a face, 0 unreadable, ")
    verdict_column = lines[0].index("verdict")
    assert all(line[verdict_column - 1] == " " and line[verdict_column] != " " for line in lines[1:-1])


def test_corrupt_file_exits_2_and_the_others_are_still_reported(tmp_path, capsys, detector_ckpt):
    write_head(tmp_path / "a_face.nii.gz", "face", 7)
    good = write_head(tmp_path / "b_defaced.nii.gz", "mask", 8)
    (tmp_path / "c_truncated.nii.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "d_text.nii.gz").write_bytes(gzip.compress(b"not a NIfTI header at all" * 20))
    code, out, err = run_cli(capsys, tmp_path, "--ckpt", detector_ckpt, "--json")
    results = {Path(r["file"]).name: r for r in json.loads(out)["results"]}
    assert code == EXIT_UNREADABLE  # an unreadable scan wins over a face
    assert results["a_face.nii.gz"]["verdict"] == "face"
    assert results["b_defaced.nii.gz"]["verdict"] == "removed"
    for name in ("c_truncated.nii.gz", "d_text.nii.gz"):
        assert results[name]["verdict"] == "error" and results[name]["p_face"] is None
        assert not results[name]["error"].startswith(str(tmp_path))  # the file column already names it


def test_report_files_and_inputs_untouched(bids_root, tmp_path, capsys, detector_ckpt):
    before = sha256_tree(bids_root)
    out = tmp_path / "report"
    code, stdout, _ = run_cli(capsys, bids_root, "--ckpt", detector_ckpt, "--out", out, "--participant-label", "01", "02")
    assert code == EXIT_FACE
    assert sha256_tree(bids_root) == before
    table = pd.read_csv(out / "results.tsv", sep="\t", dtype=str, keep_default_na=False)
    # the scans called removed were looked at again with the bias field taken off: its p(face) is a column
    assert list(table.columns) == ["subject", "session", "contrast", "file", "p_face", "p_removed", "p_replaced",
                                   "verdict", "note", "pose_margin", "evened_p_face", "views_png"]
    assert sorted(table.verdict) == ["face", "removed", "removed"]
    assert sorted(zip(table.subject, table.session)) == [("01", "n/a"), ("02", "1"), ("02", "1")]
    document = json.loads((out / "results.json").read_text())
    assert [r["views_png"] for r in document["results"]] == list(table.views_png)
    index = (out / "index.html").read_text()
    for png in table.views_png:
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.width > 3 * 32
        assert f'href="{png}"' in index
    assert index.count("FACE PRESENT") == 1 and index.count("face removed") == 2
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no leftovers of atomic writes
    assert f"report: {out / 'index.html'}" in stdout


def test_nothing_to_check_exits_2(tmp_path, capsys, detector_ckpt):
    code, _, err = run_cli(capsys, tmp_path, "--ckpt", detector_ckpt)
    assert code == EXIT_UNREADABLE and "no NIfTI scans" in err
    code, _, err = run_cli(capsys, tmp_path, "--ckpt", tmp_path / "missing.ckpt")
    assert code == EXIT_UNREADABLE


def test_terminal_table_colours_the_verdicts(tmp_path, detector):
    scans = [ScanFile(write_head(tmp_path / "sub-09_T1w.nii.gz", "face", 9), "09")]
    results = check_scans(scans, detector)
    console = Console(force_terminal=True, width=200, record=True)
    print_results(results, Summary.of(results, 1.0), console)
    text = console.export_text(clear=False)
    assert "FACE PRESENT" in text and "09" in text and "1 scanned, 1 with a face, 0 unreadable, 1.0 s" in text
    assert "\x1b[1;31mFACE PRESENT" in console.export_text(styles=True)


def test_a_defaced_verdict_near_the_line_is_noted_and_counted():
    """Called removed with p(face) 0.45: noted and counted, but not a face (the exit code stays
    the threshold's); well below the floor, nothing is said; a T2w gets both notes; a head judged
    straightened says so."""
    def result(p_face: float, contrast: str | None = None) -> CheckResult:
        rest = (1 - p_face) / 2
        return CheckResult("scan.nii.gz", contrast=contrast, answer="removed",
                           probabilities={"face": p_face, "removed": rest + 0.01, "replaced": rest - 0.01})

    near, far = result(0.45), result(LOOK_FLOOR / 2)
    assert near.note == "p(face) 0.45, near the line: look at it" and far.note is None
    assert result(0.45, "T2w").note == "p(face) 0.45, near the line: look at it; T2w: detector validated on T1w only"
    turned = CheckResult("scan.nii.gz", answer="face", probabilities={"face": 0.9, "removed": 0.05, "replaced": 0.05},
                         straightened=29.6)
    assert turned.note == "the head lay turned 30° in the coil, beyond the training poses: judged on a grid turned with it"
    assert turned.record()["straightened"] == 29.6 and "straightened" not in near.record()
    summary = Summary.of([near, far, result(0.3)], seconds=1.0)
    assert (summary.faces, summary.near) == (0, 2)
    assert "2 more near the line" in summary.line and summary.headline == "0 of 3 scans still show a face; 2 more are near the line"
