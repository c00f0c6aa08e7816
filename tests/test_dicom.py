"""DICOM series folders in `check` and `deface`: converted by dcm2niix to the very volume and
geometry the series was written from, checked and defaced like NIfTI files, written out as NIfTI;
bad folders get one line naming the folder; other contrasts get the T1w-only note."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from support.bids_fixture import generated_head, inverted
from support.dicom_fixture import write_series

from defacegan.cli import EXIT_FACE, EXIT_OK, EXIT_UNREADABLE, main
from defacegan.contract import VERDICTS
from defacegan.dicom import contrast_of, series_metadata
from defacegan.io import ScanError, find_scans, load_scan


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    """pydeface's template head, moved: 44 x 64 x 64 voxels of 4 mm, written as 64 slices."""
    return generated_head(31)


@pytest.fixture(scope="module")
def series(head, tmp_path_factory) -> Path:
    return write_series(tmp_path_factory.mktemp("dicom") / "t1_mprage", *head)


def test_a_series_loads_as_the_volume_it_was_written_from(head, series, tmp_path):
    scan = load_scan(series)
    data, affine = head
    assert scan.path == series and scan.data.shape == data.shape
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-3)
    assert contrast_of(series_metadata(series)) == "T1w"

    parent = tmp_path / "study"
    shutil.copytree(series, parent / "series-2")
    nifti = parent / "anat.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), nifti)
    (parent / "notes.txt").write_text("not a scan")
    assert find_scans([parent]) == [nifti, parent / "series-2"]


@pytest.mark.parametrize("description, contrast", [
    ("t1_mprage_sag_p2", "T1w"), ("T2_TSE_TRA", "T2w"), ("t2_flair_tra", "FLAIR"), ("PD_TSE", "PD"),
    ("3D T1 TFE", "T1w"), ("t2*_gre", None), ("localizer", None),
])
def test_contrast_from_the_series_description(description, contrast):
    assert contrast_of({"SeriesDescription": description}) == contrast


def test_check_a_series(series, capsys, detector_ckpt):
    assert main(["check", str(series), "--ckpt", str(detector_ckpt), "--workers", "0", "--json"]) in (EXIT_OK, EXIT_FACE)
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["file"] == str(series) and result["verdict"] in VERDICTS
    # a T1w series: no contrast note (the generated head lies turned about 9° and may be straightened)
    assert "validated on" not in (result["note"] or "")


def test_other_contrasts_get_the_t1w_only_note(head, tmp_path, capsys, detector_ckpt):
    t2w = write_series(tmp_path / "series-3", inverted(head[0]), head[1], description="t2_tse_tra")
    main(["check", str(t2w), "--ckpt", str(detector_ckpt), "--workers", "0"])
    row = capsys.readouterr().out.splitlines()[1]
    assert row.endswith(")") and "(T2w: detector validated on T1w only)" in row


def test_bad_dicom_folders_get_one_line_naming_the_folder(head, series, tmp_path, capsys, detector_ckpt):
    no_dicom = tmp_path / "no-dicom"
    no_dicom.mkdir()
    (no_dicom / "IM0001.dcm").write_bytes(b"\0" * 200)  # named like DICOM, no preamble
    mixed = tmp_path / "mixed"
    shutil.copytree(series, mixed)
    other = write_series(tmp_path / "other", *head, description="t1_se_tra", series_number=5)
    for path in other.iterdir():
        path.rename(mixed / f"S5{path.name}")
    truncated, gap = tmp_path / "truncated", tmp_path / "gap"
    for folder, keep in ((truncated, 0.5), (gap, 0.1)):  # pixels cut short; or the header too, so the file is skipped
        shutil.copytree(series, folder)
        cut = folder / "IM0020.dcm"
        cut.write_bytes(cut.read_bytes()[: int(keep * cut.stat().st_size)])

    assert main(["check", str(no_dicom), "--ckpt", str(detector_ckpt)]) == EXIT_UNREADABLE
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(no_dicom) in error and "DICOM" in error
    with pytest.raises(ScanError, match=f"^{no_dicom}: is a folder, neither a NIfTI file nor a DICOM series$"):
        load_scan(no_dicom)

    code = main(["check", str(mixed), str(truncated), str(gap), "--ckpt", str(detector_ckpt), "--workers", "0", "--json"])
    results = {Path(result["file"]).name: result["error"] for result in json.loads(capsys.readouterr().out)["results"]}
    assert code == EXIT_UNREADABLE
    assert results["mixed"].startswith("holds 2 DICOM series")
    assert results["truncated"].startswith("not a usable DICOM series") and "IM0020.dcm" in results["truncated"]
    assert results["gap"].startswith("not a usable DICOM series: missing or unreadable images")

    code = main(["deface", str(truncated), "-o", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == EXIT_UNREADABLE and error.count("\n") == 1 and error.startswith(f"error: {truncated}: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_real_head_as_dicom_is_found_with_a_face_and_defaced(ixi_scans, tmp_path, capsys):
    """An IXI head (2 mm) written as 90 DICOM slices: the shipped detector sees its face; `deface`
    writes NIfTI on the series' grid with the face zeroed, and the detector sees it removed."""
    scan = load_scan(ixi_scans[0])
    head = np.rint(scan.data)
    series = write_series(tmp_path / "IXI-t1", head, scan.affine)
    assert main(["check", str(series), "--json"]) == EXIT_FACE
    assert json.loads(capsys.readouterr().out)["results"][0]["verdict"] == "face"

    assert main(["deface", str(series), "-o", str(tmp_path / "out")]) == EXIT_OK
    output = tmp_path / "out" / "IXI-t1_defaced.nii.gz"
    assert f"-> {output} (NIfTI, from the DICOM series converted by dcm2niix)" in capsys.readouterr().out
    written = nib.as_closest_canonical(nib.load(str(output)))  # stored in the converted series' voxel order
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-3)
    defaced = np.asanyarray(written.dataobj)
    assert np.count_nonzero(defaced != head) > 1000 and np.all((defaced == 0) | (defaced == head))

    assert main(["check", str(output), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["results"][0]["verdict"] == "removed"
