"""The BIDS App form: `defacegan deface BIDS_DIR OUTPUT_DIR participant` writes a BIDS-Derivatives
dataset that the real BIDS validator accepts, never touches the raw dataset, and finishes an
interrupted run; labels select scans; bad scans are reported while the rest carry on."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacegan import __version__
from defacegan.bids import DEIDENTIFICATION_CODE, find_scans
from defacegan.cli import EXIT_OK, EXIT_UNREADABLE, main
from support.bids_fixture import write_bids_dataset

EXPECTED = sorted([
    ".bidsignore", "README.md", "dataset_description.json",
    *(f"figures/{name}_deface.png" for name in
      ("sub-01_T1w", "sub-01_T2w", "sub-02_ses-1_T1w", "sub-02_ses-1_T2w", "sub-02_ses-2_T1w")),
    *(f"sub-01/anat/sub-01_{name}" for name in (
        "T1w.nii.gz", "T1w.json", "T2w.nii.gz", "T2w.json", "desc-deface_mask.nii.gz", "desc-deface_mask.json",
        "desc-defaceT2w_mask.nii.gz", "desc-defaceT2w_mask.json")),
    *(f"sub-02/ses-1/anat/sub-02_ses-1_{name}" for name in (
        "T1w.nii.gz", "T1w.json", "T2w.nii.gz", "T2w.json", "desc-deface_mask.nii.gz", "desc-deface_mask.json",
        "desc-defaceT2w_mask.nii.gz", "desc-defaceT2w_mask.json")),
    *(f"sub-02/ses-2/anat/sub-02_ses-2_{name}" for name in (
        "T1w.nii.gz", "T1w.json", "desc-deface_mask.nii.gz", "desc-deface_mask.json")),
])


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two subjects (T1w + T2w), the second with two sessions: five generated 4 mm heads."""
    return write_bids_dataset(tmp_path_factory.mktemp("bids") / "raw")


@pytest.fixture(scope="module")
def defaced(raw, tmp_path_factory) -> tuple[Path, dict[str, str], int]:
    """(OUTPUT_DIR, the raw tree's hashes before the run, exit code) of one BIDS App run."""
    before = tree(raw)
    out = tmp_path_factory.mktemp("derivatives") / "defacegan"
    code = main(["deface", str(raw), str(out), "participant", "--no-brain-check"])
    return out, before, code


def test_bids_app_writes_a_derivatives_dataset_and_keeps_the_raw_one(raw, defaced):
    out, before, code = defaced
    assert code == EXIT_OK
    assert tree(raw) == before  # originals never modified
    assert sorted(tree(out)) == EXPECTED  # no temporary files left
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "defacegan" and generated["Version"] == __version__ and "mask" in generated["Description"]
    assert (out / ".bidsignore").read_text().split() == ["figures"]

    t1w = json.loads((out / "sub-01/anat/sub-01_T1w.json").read_text())
    assert t1w["RepetitionTime"] == 2.3 and t1w["FlipAngle"] == 8  # the input's sidecar, copied
    assert t1w["DeidentificationMethodCodeSequence"] == [DEIDENTIFICATION_CODE]
    assert isinstance(t1w["DeidentificationMethod"], list) and "defacegan" in t1w["DeidentificationMethod"][0]
    t2w = json.loads((out / "sub-02/ses-1/anat/sub-02_ses-1_T2w.json").read_text())
    assert t2w["EchoTime"] == 0.4  # inherited from the top-level T2w.json
    no_sidecar = json.loads((out / "sub-02/ses-2/anat/sub-02_ses-2_T1w.json").read_text())
    assert no_sidecar["DeidentificationMethodCodeSequence"] == [DEIDENTIFICATION_CODE]  # created

    for image, mask in (("sub-01/anat/sub-01_T1w", "sub-01/anat/sub-01_desc-deface_mask"),
                        ("sub-01/anat/sub-01_T2w", "sub-01/anat/sub-01_desc-defaceT2w_mask")):
        original = nib.load(str(raw / f"{image}.nii.gz"))
        written, removed = nib.load(str(out / f"{image}.nii.gz")), nib.load(str(out / f"{mask}.nii.gz"))
        assert written.get_data_dtype() == original.get_data_dtype() and removed.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, original.affine)
        region = np.asanyarray(removed.dataobj)
        assert set(np.unique(region)) == {0, 1}
        np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.where(region == 1, 0, original.dataobj))
    assert (out / "figures/sub-01_T1w_deface.png").read_bytes().startswith(b"\x89PNG")


def test_derivatives_pass_the_bids_validator(defaced):
    out, _, code = defaced
    assert code == EXIT_OK
    validator = shutil.which("bids-validator-deno") or shutil.which("bids-validator-deno", path=str(Path(sys.executable).parent))
    if validator is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    try:
        run = subprocess.run([validator, str(out), "--json"], capture_output=True, text=True, timeout=120)
        issues = json.loads(run.stdout)["issues"]["issues"]
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError) as error:
        pytest.skip(f"bids-validator-deno could not run offline here ({type(error).__name__}: {error})")
    errors = [(issue["code"], issue.get("location"), issue.get("subCode")) for issue in issues if issue["severity"] == "error"]
    assert errors == []
    assert run.returncode == 0


def test_a_second_run_skips_finished_scans_and_redoes_an_unfinished_one(raw, defaced, tmp_path, capsys):
    out = tmp_path / "defacegan"
    shutil.copytree(defaced[0], out)
    finished = tree(out)
    capsys.readouterr()

    assert main(["deface", str(raw), str(out), "participant", "--no-brain-check"]) == EXIT_OK
    assert capsys.readouterr().out.count("already defaced") == 5
    assert tree(out) == finished

    mask = out / "sub-02/ses-1/anat/sub-02_ses-1_desc-defaceT2w_mask.nii.gz"
    mask.rename(mask.with_name(f".{mask.name}.x1y2z3.nii.gz"))  # as if killed while writing it
    assert main(["deface", str(raw), str(out), "participant", "--no-brain-check"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert printed.count("already defaced") == 4 and "sub-02_ses-1_T2w.nii.gz: defaced (mask from sub-02_ses-1_T1w.nii.gz)" in printed
    assert sorted(tree(out)) == EXPECTED

    finished = tree(out)
    assert main(["deface", str(raw), str(out), "participant", "--method", "plane", "--no-brain-check"]) == EXIT_UNREADABLE
    assert "holds other outputs" in capsys.readouterr().err and tree(out) == finished


def test_labels_select_scans_and_a_wrong_label_is_an_error(raw, tmp_path, capsys):
    def names(**labels):
        return [scan.relative.name for scan in find_scans(raw, **labels)]

    assert names(participant_labels=["sub-01"]) == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]
    assert names(participant_labels=["02"], session_labels=["ses-2"]) == ["sub-02_ses-2_T1w.nii.gz"]
    with pytest.raises(ValueError, match="subject.*07"):
        find_scans(raw, participant_labels=["01", "07"])

    code = main(["deface", str(raw), str(tmp_path / "out"), "participant", "--session-label", "9", "--no-brain-check"])
    error = capsys.readouterr().err
    assert code == EXIT_UNREADABLE and error.count("\n") == 1 and "session(s) 9" in error
    code = main(["deface", str(raw), str(raw / "sub-01"), "participant", "--no-brain-check"])
    assert code == EXIT_UNREADABLE and "outside the BIDS dataset" in capsys.readouterr().err


def test_a_bad_scan_is_reported_and_the_others_are_defaced(tmp_path, capsys):
    raw = write_bids_dataset(tmp_path / "raw", layout=(("01", None, ("T1w",)),))
    broken = raw / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a nifti")
    orphan = broken.with_name("sub-02_T2w.nii.gz")  # readable, but its T1w cannot be defaced
    shutil.copy(raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz", orphan)
    out = tmp_path / "out"

    code = main(["deface", str(raw), str(out), "participant", "--nprocs", "2", "--no-brain-check"])  # workers report errors too

    printed = capsys.readouterr()
    assert code == EXIT_UNREADABLE
    errors = printed.err.splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"error: {broken}: not a readable NIfTI")
    assert errors[1].startswith(f"error: {orphan}: its T1w could not be defaced ({broken}: ")
    assert "1 of 3 done, 2 failed" in printed.out
    assert (out / "sub-01/anat/sub-01_T1w.nii.gz").exists() and not (out / "sub-02").exists()


def test_bids_app_check_writes_its_report_to_the_output_folder(raw, detector_ckpt, tmp_path, capsys):
    before = tree(raw)
    out = tmp_path / "check"

    code = main(["check", str(raw), str(out), "participant", "--participant-label", "02", "--session-label", "1",
                 "--ckpt", str(detector_ckpt), "--workers", "0", "--no-pose-check"])

    printed = capsys.readouterr().out
    assert code in (EXIT_OK, 1), printed
    assert (out / "results.tsv").is_file() and (out / "index.html").is_file() and f"report: {out}" in printed
    files = [Path(row["file"]).name for row in json.loads((out / "results.json").read_text())["results"]]
    assert sorted(files) == ["sub-02_ses-1_T1w.nii.gz", "sub-02_ses-1_T2w.nii.gz"]
    assert tree(raw) == before


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_other_contrasts_lose_the_t1w_region(defaced):
    out = defaced[0]
    t1w, t2w = (np.asanyarray(nib.load(str(out / f"sub-02/ses-1/anat/sub-02_ses-1_{name}_mask.nii.gz")).dataobj) > 0
                for name in ("desc-deface", "desc-defaceT2w"))
    assert t1w.any() and dice(t1w, t2w) > 0.97  # the T2w is the same anatomy on the same grid
    sidecar = json.loads((out / "sub-02/ses-1/anat/sub-02_ses-1_T2w.json").read_text())
    assert "carried over by rigid registration" in sidecar["DeidentificationMethod"][0]
    assert "sub-02_ses-1_T1w.nii.gz" in sidecar["DeidentificationMethod"][0]


def test_carried_region_follows_a_moved_head():
    """A T2w-like contrast moved by a known rigid motion gets the T1w's region moved the same way."""
    import SimpleITK as sitk

    from defacegan.deface import deface, deface_like, to_sitk, warp
    from defacegan.io import Scan
    from support.bids_fixture import generated_head, inverted

    data, affine = generated_head(7)
    t1w = Scan(data.astype(np.float32), affine)
    removed = deface(t1w)["mask"].removed
    motion = sitk.Euler3DTransform()
    motion.SetCenter((affine @ [*(np.asarray(data.shape) / 2), 1])[:3].tolist())
    motion.SetRotation(np.deg2rad(6), np.deg2rad(-4), 0.0)
    motion.SetTranslation((5.0, -6.0, 4.0))
    moved = Scan(warp(to_sitk(inverted(data), affine), motion, data.shape, affine), affine)
    expected = warp(to_sitk(removed.astype(np.float32), affine), motion, data.shape, affine) >= 0.5

    carried = deface_like(moved, t1w, removed, "mask")

    assert dice(carried.removed, expected) > 0.9
    assert dice(carried.removed, removed) < dice(carried.removed, expected)  # it did move
    np.testing.assert_array_equal(carried.defaced[carried.removed], 0)


@pytest.mark.slow
def test_a_killed_run_started_again_skips_finished_scans_and_matches_an_uninterrupted_run(raw, defaced, tmp_path):
    """SIGKILL `deface ... participant` (a real process) once its first scan is finished, run it again."""
    import os
    import signal
    import time

    import defacegan
    from defacegan.bids import outputs_for

    out = tmp_path / "defacegan"
    command = [sys.executable, "-m", "defacegan.cli", "deface", str(raw), str(out), "participant", "--participant-label", "01", "--no-brain-check"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(defacegan.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    first, second = find_scans(raw, participant_labels=["01"])
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in outputs_for(first, out).all()) and process.poll() is None:
        assert time.monotonic() < deadline, "the first scan was not finished in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stdout.read()  # killed, not finished
    assert not all(path.exists() for path in outputs_for(second, out).all())

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    assert again.returncode == EXIT_OK, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == f"{first.path}: already defaced -> {outputs_for(first, out).image}"
    assert lines[1].startswith(f"{second.path}: defaced (mask from sub-01_T1w.nii.gz)")
    finished, uninterrupted = tree(out), tree(defaced[0])
    assert sorted(finished) == [name for name in EXPECTED if "sub-01" in name or "/" not in name]  # no temporary files
    assert finished == {name: digest for name, digest in uninterrupted.items() if name in finished}  # byte for byte


@pytest.mark.slow
def test_the_bids_app_measures_the_brain_removed_and_check_reports_it(ixi_scans, tmp_path, capsys):
    """A real head as sub-01's T1w: the derivative's sidecar holds the brain removed (BET on the
    input), the line says it, and `check` on the derivatives shows the same figure."""
    from defacegan.detector_data import subject_of
    from defacegan.detector_training import HELD_OUT

    raw = tmp_path / "raw"
    anat = raw / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "one IXI head", "BIDSVersion": "1.10.0"}))
    shutil.copyfile(next(path for path in ixi_scans if subject_of(path) == HELD_OUT[1]), anat / "sub-01_T1w.nii.gz")
    out = tmp_path / "defacegan"

    assert main(["deface", str(raw), str(out), "participant"]) == EXIT_OK
    sidecar = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    assert sidecar["BrainML"] > 1000 and 0 <= sidecar["BrainRemovedPercent"] < 0.25 and not sidecar["BrainRemovedFlagged"]
    assert f"brain removed {sidecar['BrainRemovedML']:.1f} mL" in capsys.readouterr().out
    assert main(["check", str(out), "--json", "--workers", "0"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(Path(row["file"]).name, row["brain_removed"]) for row in rows] == [("sub-01_T1w.nii.gz", sidecar["BrainRemovedPercent"])]
