"""Unusable inputs mixed with good scans, through every command.

Each unusable file is named in exactly one error line, the command exits 2, every input stays
byte-identical and nothing is left behind for it (no output, no temporary file); the awkward but
valid scans (number types, LPS, oblique, anisotropic) are processed like the plain one. Then a
fuzz test: whatever bytes it is given, the loader returns a valid scan or raises ScanError.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.make_bad_inputs import Case, make_bad_inputs

from defacegan.cli import EXIT_OK, EXIT_UNREADABLE, main
from defacegan.io import Scan, ScanError, load_scan, save_nifti, stem
from defacegan.manifest import VOLUMES

#: Valid scans stored on the plain scan's own grid: their verdicts must match it closely.
SAME_GRID = ("int8", "uint16", "float64", "lps", "gzip_bomb")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Case]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad-inputs"))


def valid_cases(corpus: dict[str, Case]) -> dict[str, Case]:
    return {name: case for name, case in corpus.items() if case.valid}


def bad_cases(corpus: dict[str, Case]) -> dict[str, Case]:
    return {name: case for name, case in corpus.items() if not case.valid}


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture
def untouched(corpus):
    """Fails the test if a command changed, added or removed any file of the corpus."""
    folder = next(iter(corpus.values())).path.parent
    before = digests(folder)
    yield
    assert digests(folder) == before


def assert_named_once(text: str, cases: dict[str, Case], with_reason: bool = True) -> None:
    """Each case's file is named on exactly one line of ``text``, which gives its expected reason."""
    for name, case in cases.items():
        lines = [line for line in text.splitlines() if str(case.path) in line]
        assert len(lines) == 1, f"{name}: {lines}"
        assert not with_reason or case.error in lines[0], f"{name}: {lines[0]}"


def files_below(folder: Path) -> list[str]:
    """Every file below ``folder`` as a relative path; temporary files start with '.'."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def removed_percent(out: str, case: Case) -> float:
    """The '% of head removed' that `deface` printed for ``case``."""
    line = next(line for line in out.splitlines() if line.startswith(f"{case.path}: defaced"))
    return float(re.search(r"([\d.]+)% of head removed", line).group(1))


#: Registration-based commands cost about a second per valid scan: by default they get the bad
#: scans and these valid ones, and all valid ones in the `slow` run.
def with_valid(*names: str):
    """Every bad case with the valid cases ``names`` by default; with every valid case under `slow`."""
    return pytest.mark.parametrize(
        "valid", [names, pytest.param(None, marks=pytest.mark.slow, id="all-valid")],
        ids=lambda valid: "+".join(valid) if valid else None,
    )


def chosen_cases(corpus: dict[str, Case], valid: tuple[str, ...] | None) -> dict[str, Case]:
    """Every bad case and the ``valid`` ones (None: all)."""
    return {name: case for name, case in corpus.items() if not case.valid or valid is None or name in valid}


@with_valid("good", "lps")  # good: the reference share of face
def test_deface_processes_the_valid_scans_and_names_each_bad_one(corpus, tmp_path, capsys, untouched, valid):
    cases = chosen_cases(corpus, valid)
    out = tmp_path / "out"
    code = main(["deface", *(str(case.path) for case in cases.values()), "-o", str(out), "--no-brain-check"])

    printed = capsys.readouterr()
    assert code == EXIT_UNREADABLE
    assert_named_once(printed.err, bad_cases(cases))
    defaced_cases = valid_cases(cases)
    assert files_below(out) == sorted(f"{stem(case.path)}_{suffix}" for case in defaced_cases.values()
                                      for suffix in ("defaced.json", "defaced.nii.gz"))
    for name, case in defaced_cases.items():
        source, defaced = nib.load(case.path), nib.load(out / f"{stem(case.path)}_defaced.nii.gz")
        assert defaced.shape == source.shape and defaced.get_data_dtype() == source.get_data_dtype(), name
        np.testing.assert_allclose(defaced.affine, source.affine, atol=1e-5)
        # The same head in every storage: the same share of it is the face.
        assert removed_percent(printed.out, case) == pytest.approx(removed_percent(printed.out, corpus["good"]), abs=1.0)
    assert 2 < removed_percent(printed.out, corpus["good"]) < 15


def test_check_classifies_the_valid_scans_and_reports_each_bad_one(corpus, detector_ckpt, tmp_path, capsys, untouched):
    out = tmp_path / "report"
    code = main(["check", str(corpus["good"].path.parent), "--ckpt", str(detector_ckpt), "--workers", "0", "--no-pose-check",
                 "--out", str(out)])

    printed = capsys.readouterr()
    assert code == EXIT_UNREADABLE
    assert_named_once(printed.out, bad_cases(corpus))
    results = {Path(row["file"]): row for row in json.loads((out / "results.json").read_text())["results"]}
    for case in bad_cases(corpus).values():
        row = results[case.path]
        assert row["p_face"] is None and case.error in row["error"] and row["views_png"] is None
    valid = valid_cases(corpus)
    probability = {name: results[case.path]["p_face"] for name, case in valid.items()}
    assert all(p is not None and 0 <= p <= 1 for p in probability.values())
    for name in SAME_GRID:
        assert probability[name] == pytest.approx(probability["good"], abs=0.05), name
    assert files_below(out) == sorted(["index.html", "results.json", "results.tsv",
                                       *(f"views/{stem(case.path)}.png" for case in valid.values())])


def box_mask(scan: Scan) -> np.ndarray:
    """A removed region for re-facing: the anterior-inferior corner of the scan (RAS+ grid)."""
    removed = np.zeros(scan.data.shape, bool)
    _, y, z = scan.data.shape
    removed[:, 2 * y // 3 :, : z // 3] = True
    return removed


@with_valid("good", "lps")
def test_reface_fills_valid_scans_and_refuses_bad_scans_and_masks(corpus, pix2pix_ckpt, tmp_path, capsys, untouched, valid):
    out, masks = tmp_path / "out", tmp_path / "masks"
    good = corpus["good"].path
    for name, case in bad_cases(corpus).items():
        for role, args in (("scan", [str(case.path)]), ("mask", [str(good), "--mask", str(case.path)])):
            code = main(["reface", *args, "-o", str(out / f"{name}-{role}.nii.gz"), "--ckpt", str(pix2pix_ckpt)])
            assert code == EXIT_UNREADABLE, f"{name} as {role}"
            # As a mask, the tiny cube is refused for its grid, not its size.
            assert_named_once(capsys.readouterr().err, {name: case}, with_reason=role == "scan")
    assert not out.exists()

    refaced_cases = valid_cases(chosen_cases(corpus, valid))
    for name, case in refaced_cases.items():
        scan = load_scan(case.path)
        removed = box_mask(scan)
        mask = save_nifti(scan.to_original(removed, dtype=np.uint8), masks / f"{name}.nii.gz")
        output = out / f"{name}.nii.gz"
        code = main(["reface", str(case.path), "--mask", str(mask), "-o", str(output), "--ckpt", str(pix2pix_ckpt)])
        assert code == EXIT_OK, capsys.readouterr().err
        refaced, source = nib.load(output), nib.load(case.path)
        assert refaced.shape == source.shape and refaced.get_data_dtype() == np.float32
        np.testing.assert_allclose(refaced.affine, source.affine, atol=1e-5)
        after = load_scan(output).data
        assert np.array_equal(after[~removed], scan.data[~removed]), name
        assert not np.array_equal(after[removed], scan.data[removed]), name
    assert files_below(out) == sorted(f"{name}.nii.gz" for name in refaced_cases)


@with_valid("lps")  # stored LPS, built RAS+
def test_data_build_builds_the_valid_scans_and_skips_each_bad_one(corpus, tmp_path, capsys, untouched, valid):
    source = tmp_path / "source"
    source.mkdir()
    copies = {}
    for name, case in chosen_cases(corpus, valid).items():
        copies[name] = Case(Path(shutil.copy(case.path, source)), case.error)
    before = digests(source)
    out = tmp_path / "cohort"

    code = main(["data", "build", "--source", str(source), "--out", str(out), "--workers", "1"])

    printed = capsys.readouterr()
    assert code == EXIT_UNREADABLE
    assert digests(source) == before
    assert_named_once(printed.err, bad_cases(copies))
    built = valid_cases(copies)
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["subject"]) == sorted(stem(case.path) for case in built.values())
    assert files_below(out) == sorted(["cohort.json", "manifest.csv",
                                       *(f"{stem(c.path)}/{v}.nii.gz" for c in built.values() for v in VOLUMES)])
    for name, case in built.items():
        folder = out / stem(case.path)
        face = np.asanyarray(nib.load(folder / "face.nii.gz").dataobj)
        assert np.array_equal(face.astype(np.float32), load_scan(case.path).data), name  # RAS+, values as stored
        for method in ("mask", "plane"):
            removed = np.asanyarray(nib.load(folder / f"removed_{method}.nii.gz").dataobj) == 1
            defaced = np.asanyarray(nib.load(folder / f"defaced_{method}.nii.gz").dataobj)
            assert np.array_equal(defaced, np.where(removed, 0, face)), (name, method)
            assert 0.01 < removed.mean() < 0.5, (name, method)


def test_data_past_the_voxels_is_never_inflated(corpus):
    """256 MiB of zeros after the voxels of a gzip file cost no memory: only what the header promises is read."""
    tracemalloc.start()
    try:
        scan = load_scan(corpus["gzip_bomb"].path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(scan.data, load_scan(corpus["good"].path).data)
    assert peak < 16 * 2**20


# -- the loader under fuzzing ------------------------------------------------------------------------------

DTYPES = (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64, np.complex64)
HEADER_BYTES = 348
SCL_SLOPE_OFFSET = 112  # NIfTI-1 header: float32 scl_slope, then scl_inter
SROW_OFFSET = 280  # NIfTI-1 header: float32 srow_x, srow_y, srow_z (the sform's 3 x 4 rows)


@st.composite
def nifti_bytes(draw) -> tuple[str, bytes]:
    """(file name, contents): a random NIfTI-1 image, maybe scaled oddly, with a broken sform or
    header, gzipped or not, then maybe damaged and truncated as stored."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=5)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    with np.errstate(invalid="ignore", over="ignore"):  # out-of-range values wrap: fine, any bits will do
        data = (rng.normal(size=shape) * draw(st.sampled_from([1.0, 100.0, 1e30]))).astype(dtype)
    if dtype.kind in "fc" and draw(st.booleans()):
        data.flat[rng.integers(data.size, size=draw(st.integers(1, 3)))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if draw(st.booleans()):
        data[...] = data.flat[0]
    affine = np.eye(4)
    affine[:3, :3] = draw(st.sampled_from([
        np.diag(rng.uniform(0.5, 3, 3)),                              # plain
        np.diag(rng.uniform(0.5, 3, 3) * rng.choice([-1, 1], 3)),     # flipped axes
        np.linalg.qr(rng.normal(size=(3, 3)))[0] * rng.uniform(0.5, 3),  # oblique
        rng.normal(size=(3, 3)),                                      # sheared
    ]))
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    contents = bytearray(nib.Nifti1Image(data, affine, dtype=dtype).to_bytes())
    if draw(st.booleans()):  # a broken sform, which nibabel itself would refuse to write
        broken = draw(st.sampled_from([np.diag([1.0, 1.0, 0.0]), np.zeros((3, 3)), np.full((3, 3), np.nan)]))
        struct.pack_into("<12f", contents, SROW_OFFSET, *np.column_stack([broken, affine[:3, 3]]).ravel())
    if draw(st.booleans()):
        slope, inter = draw(st.sampled_from([(0.0, 0.0), (np.nan, 0.0), (np.inf, 0.0), (1e38, 1e38), (-2.0, 5.0)]))
        struct.pack_into("<ff", contents, SCL_SLOPE_OFFSET, slope, inter)
    for _ in range(draw(st.integers(0, 3))):  # corrupt header fields: dims, type codes, offsets...
        contents[draw(st.integers(0, HEADER_BYTES - 1))] = draw(st.integers(0, 255))
    name = draw(st.sampled_from(["scan.nii", "scan.nii.gz"]))
    stored = bytearray(gzip.compress(contents) if name.endswith(".gz") else contents)
    for _ in range(draw(st.integers(0, 2))):  # damage on disk: the gzip stream, the voxels...
        stored[draw(st.integers(0, len(stored) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        stored = stored[: draw(st.integers(0, len(stored)))]
    return name, bytes(stored)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nifti_bytes())
def test_load_scan_returns_a_valid_scan_or_raises_scan_error(fuzz_folder, named_contents):
    name, contents = named_contents
    path = fuzz_folder / name
    path.write_bytes(contents)
    try:
        scan = load_scan(path)
    except ScanError as error:
        text = str(error)
        assert text.startswith(f"{path}: ") and "\n" not in text
        return
    assert scan.data.ndim == 3 and scan.data.dtype == np.float32 and np.isfinite(scan.data).all()
    assert np.isfinite(scan.affine).all() and nib.aff2axcodes(scan.affine) == ("R", "A", "S")
