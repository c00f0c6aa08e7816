"""Paired cohorts: demo heads and folders of scans → volumes, manifest and subject-wise splits."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel.orientations import apply_orientation, io_orientation

from defacegan import demo
from defacegan.cli import EXIT_UNREADABLE, main
from defacegan.cohort import DemoSource, build_cohort, scan_entries
from defacegan.io import head_threshold
from defacegan.manifest import COLUMNS, MANIFEST, METHODS, SPLITS, VOLUMES, assign_splits, load_manifest

FEW_SUBJECTS = 3  # one per split, and both installed heads (mean, colin)


def volume(path: str | Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory) -> Path:
    """A small demo cohort built in this process, on a 4 mm demo grid for this module's tests:
    the same steps as `make demo`'s 2 mm grid on an eighth of the voxels, in a third of the time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "DEMO_SPACING_MM", 2 * demo.DEMO_SPACING_MM)
        patch.setattr(demo, "DEMO_SHAPE", tuple(n // 2 for n in demo.DEMO_SHAPE))
        demo.demo_heads.cache_clear()  # the heads are cached on the grid they were made for
        yield build_cohort("demo", tmp_path_factory.mktemp("demo"), subjects=FEW_SUBJECTS, seed=0, workers=1).parent
    demo.demo_heads.cache_clear()


def test_demo_cohort_has_every_volume_and_column(demo_cohort):
    stored = pd.read_csv(demo_cohort / MANIFEST)
    assert tuple(stored.columns) == COLUMNS
    assert not any(Path(path).is_absolute() for column in VOLUMES for path in stored[column])
    manifest = load_manifest(demo_cohort)
    assert len(manifest) == FEW_SUBJECTS and manifest["subject"].is_unique
    assert manifest["subject"].str.fullmatch(r"demo-(mean|colin)-\d{3}").all()
    assert set(manifest["split"]) == set(SPLITS), "every split holds a subject"
    for _, row in manifest.iterrows():
        images = {column: nib.load(row[column]) for column in VOLUMES}
        assert {nib.aff2axcodes(image.affine) for image in images.values()} == {("R", "A", "S")}
        assert {image.shape for image in images.values()} == {tuple(int(n) for n in row["shape"].split("x"))}
        assert row["spacing"] == "x".join([str(demo.DEMO_SPACING_MM)] * 3)


def test_demo_defaced_is_the_face_without_its_removed_region(demo_cohort):
    for _, row in load_manifest(demo_cohort).iterrows():
        face = volume(row["face"])
        for method in METHODS:
            removed = volume(row[f"removed_{method}"])
            assert set(np.unique(removed)) == {0, 1}
            np.testing.assert_array_equal(volume(row[f"defaced_{method}"]), face * (1 - removed))


def test_demo_removed_region_is_the_front_bottom_of_the_head(demo_cohort):
    for _, row in load_manifest(demo_cohort).iterrows():
        face = volume(row["face"]).astype(np.float32)
        affine = nib.load(row["face"]).affine
        head = face > head_threshold(face)
        head_centre = nib.affines.apply_affine(affine, np.argwhere(head).mean(0))
        for method in METHODS:
            removed_head = head & (volume(row[f"removed_{method}"]) > 0)
            voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
            assert removed_head.sum() * voxel_mm3 > 4000, f"{row['subject']} {method}: removes part of the head"
            centre = nib.affines.apply_affine(affine, np.argwhere(removed_head).mean(0))
            anterior, superior = centre[1:] - head_centre[1:]
            where = f"{row['subject']} {method}: {anterior:.0f} mm anterior, {superior:.0f} mm superior"
            assert anterior > 20 and superior < -10, where


@pytest.mark.slow  # three more demo builds, two in a process pool
def test_demo_subjects_depend_on_the_seed_not_on_the_workers(demo_cohort, tmp_path):
    again = pd.read_csv(build_cohort("demo", tmp_path / "again", subjects=2, seed=0, workers=2))
    first = pd.read_csv(demo_cohort / MANIFEST).head(2)
    assert again.drop(columns="split").equals(first.drop(columns="split"))
    for column in VOLUMES:
        for relative in again[column]:
            assert sha256(tmp_path / "again" / relative) == sha256(demo_cohort / relative), relative
    other = build_cohort("demo", tmp_path / "other", subjects=1, seed=1, workers=1).parent
    face = "demo-mean-000/face.nii.gz"
    assert not np.array_equal(volume(other / face), volume(demo_cohort / face))


def test_rebuild_finishes_only_what_is_missing(demo_cohort, tmp_path):
    cohort = shutil.copytree(demo_cohort, tmp_path / "cohort")
    unfinished = cohort / "demo-mean-000" / "removed_plane.nii.gz"
    unfinished.unlink()
    (cohort / MANIFEST).unlink()
    untouched = {path: path.stat().st_mtime_ns for path in cohort.glob("demo-colin-*/*.nii.gz")}
    manifest = build_cohort("demo", cohort, subjects=FEW_SUBJECTS, seed=0, workers=1)
    assert manifest.read_text() == (demo_cohort / MANIFEST).read_text(), "same seed, same manifest"
    assert sha256(unfinished) == sha256(demo_cohort / "demo-mean-000" / "removed_plane.nii.gz")
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    with pytest.raises(ValueError, match="choose another output folder"):
        build_cohort("demo", cohort, subjects=FEW_SUBJECTS, seed=1)


def test_folder_build_skips_a_corrupt_scan_and_leaves_inputs_alone(ixi_scans, tmp_path, capsys):
    source = tmp_path / "scans"
    source.mkdir()
    shutil.copy(ixi_scans[0], source)  # one real head is built; the corrupt one beside it is skipped
    corrupt = source / "IXI999-HH-0000_T1.nii.gz"
    corrupt.write_bytes(ixi_scans[0].read_bytes()[:3000])
    before = {path: sha256(path) for path in source.iterdir()}

    code = main(["data", "build", "--source", str(source), "--out", str(tmp_path / "cohort"), "--workers", "1"])

    assert code == EXIT_UNREADABLE
    assert {path: sha256(path) for path in source.iterdir()} == before
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and corrupt.name in errors[0]
    manifest = load_manifest(tmp_path / "cohort")
    assert list(manifest["subject"]) == [ixi_scans[0].name.split("-")[0]]
    for _, row in manifest.iterrows():
        original = nib.load(row["source"])
        stored = apply_orientation(np.asanyarray(original.dataobj.get_unscaled()), io_orientation(original.affine))
        face = volume(row["face"])
        np.testing.assert_array_equal(face, stored)  # native grid, the file's own values, RAS+
        assert face.dtype == original.get_data_dtype()
        assert row["spacing"] == "2.0x2.0x2.0" and row["shape"] == "x".join(map(str, stored.shape))
        for method in METHODS:
            removed = volume(row[f"removed_{method}"])
            assert 0 < removed.mean() < 0.5
            np.testing.assert_array_equal(volume(row[f"defaced_{method}"]), face * (1 - removed))


def test_demo_without_colin27_uses_the_mean_head_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "COLIN27", tmp_path / "absent" / "ch2.nii.gz")
    assert [entry.subject for entry in DemoSource(2).entries(tmp_path)] == ["demo-mean-000", "demo-mean-001"]
    capsys.readouterr()
    build_cohort(DemoSource(0), tmp_path / "cohort")
    assert "not found" in capsys.readouterr().out


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_bids_sessions_belong_to_their_subject(tmp_path):
    for name in ("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
                 "sub-02/anat/sub-02_T1w.nii", "sub-02/anat/sub-02_T2w.nii.gz",
                 "sub-02/func/sub-02_task-rest_bold.nii.gz", "derivatives/x/sub-03/anat/sub-03_T1w.nii.gz"):
        touch(tmp_path / name)
    entries = scan_entries(tmp_path)
    assert [(entry.subject, entry.folder) for entry in entries] == [
        ("sub-01", "sub-01/sub-01_ses-1_T1w"), ("sub-01", "sub-01/sub-01_ses-2_T1w"), ("sub-02", "sub-02")]
    assert set(assign_splits(entry.subject for entry in entries)) == {"sub-01", "sub-02"}


def test_plain_folders_give_one_subject_per_file(tmp_path):
    for name in ("IXI012-HH-1211_T1.nii.gz", "site-a/head.nii.gz", "site-b/head.nii", "notes.txt"):
        touch(tmp_path / name)
    assert [entry.subject for entry in scan_entries(tmp_path)] == ["IXI012", "site-a_head", "site-b_head"]


@settings(max_examples=60, deadline=None)
@given(count=st.integers(3, 300), seed=st.integers(0, 2**32 - 1))
def test_splits_partition_subjects_with_none_empty(count, seed):
    subjects = [f"s{index:03d}" for index in range(count)]
    split_of = assign_splits(subjects, seed=seed)
    assert sorted(split_of) == subjects
    sizes = pd.Series(split_of).value_counts()
    assert set(sizes.index) == set(SPLITS)
    for split, fraction in zip(SPLITS, (0.7, 0.15, 0.15)):
        assert abs(sizes[split] - fraction * count) < 2


def test_splits_depend_on_the_seed_not_the_order():
    subjects = [f"s{index:02d}" for index in range(40)]
    assert assign_splits(subjects, seed=3) == assign_splits(subjects[::-1], seed=3)
    assert assign_splits(subjects, seed=3) != assign_splits(subjects, seed=4)
    assert set(assign_splits(subjects, (0.8, 0.2, 0.0)).values()) == {"train", "val"}
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(subjects, (0.8, -0.1, 0.3))


def test_load_manifest_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cohort manifest"):
        load_manifest(tmp_path)
    pd.DataFrame({"subject": ["a"], "split": ["train"]}).to_csv(tmp_path / MANIFEST, index=False)
    with pytest.raises(ValueError, match="lacks column"):
        load_manifest(tmp_path)


@pytest.mark.slow
def test_bids_cohort_keeps_sessions_in_one_split(ixi_scans, tmp_path):
    layout = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
              "sub-02/anat/sub-02_T1w.nii.gz", "sub-03/anat/sub-03_T1w.nii.gz"]
    for scan, name in zip(ixi_scans, layout):
        (tmp_path / "bids" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(scan, tmp_path / "bids" / name)
    manifest = load_manifest(build_cohort(tmp_path / "bids", tmp_path / "cohort", workers=2))
    assert len(manifest) == 4 and set(manifest["split"]) == set(SPLITS)
    assert manifest.groupby("subject")["split"].nunique().max() == 1
