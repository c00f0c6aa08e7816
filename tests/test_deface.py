"""Defacing: registration accuracy against known transforms, the plane cut's geometry, real heads,
pydeface's #27 (a long field of view is kept), the CLI, and the input's orientation on output."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from defacegan.cli import EXIT_UNREADABLE, main
from defacegan.deface import brain_region, deface, face_region, plane_cut, register_template, template_masks, warp
from defacegan.io import Scan, ScanError, load_scan
from defacegan.manifest import METHODS
from support.geometry import dice, random_affine


def world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RAS mm coordinates of a mask's voxels, one row each."""
    return np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def grid_4mm() -> tuple[tuple[int, int, int], np.ndarray]:
    """The template's own grid at 4 mm (44 x 64 x 64): a registration takes well under a second."""
    head = template_masks().head
    affine = head.affine @ np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (head.affine @ [1.5, 1.5, 1.5, 1.0])[:3]
    return tuple(n // 4 for n in head.shape), affine


def template_scan(grid_4mm, transform) -> Scan:
    shape, affine = grid_4mm
    return Scan(warp(template_masks().head, transform, shape, affine), affine)


def centre(grid_4mm) -> np.ndarray:
    shape, affine = grid_4mm
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_both_methods_recover_a_known_transform(grid_4mm, seed):
    transform = random_affine(np.random.default_rng(seed), centre(grid_4mm))
    scan = template_scan(grid_4mm, transform)
    shape, affine = grid_4mm
    true_face = warp(template_masks().face_mask, transform, shape, affine, default=1.0) < 0.5
    true_cut = plane_cut(warp(template_masks().brain_mask, transform, shape, affine) >= 0.5, affine)

    results = deface(scan, METHODS)

    assert dice(results["mask"].removed, true_face) >= 0.95
    assert dice(results["plane"].removed, true_cut) >= 0.9
    for result in results.values():
        assert result.removed.dtype == bool and result.defaced.dtype == np.float32
        np.testing.assert_array_equal(result.defaced, np.where(result.removed, 0, scan.data))


def test_plane_cut_spares_the_brain_and_keeps_the_margin():
    spacing = np.array([2.0, 2.0, 3.0])  # anisotropic on purpose
    shape = (60, 80, 50)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2  # world origin at the grid's centre
    i, j, k = np.indices(shape)
    x, y, z = (affine[axis, axis] * index + affine[axis, 3] for axis, index in enumerate((i, j, k)))
    brain = (x / 55) ** 2 + ((y - 5) / 65) ** 2 + ((z - 10) / 45) ** 2 <= 1  # centre (0, 5, 10) mm

    removed = plane_cut(brain, affine, margin_mm=10.0)

    assert removed.any() and not (removed & brain).any()
    gap_mm = distance_transform_edt(~brain, sampling=spacing)[removed]
    assert 10.0 <= gap_mm.min() < 10.0 + spacing.max()  # the margin, and the plane is tangent
    assert (removed == removed[:1]).all()  # a plane across all L-R positions
    a, s = world(affine, removed)[:, 1:].T
    assert ((a - 5) - (s - 10) > 0).all()  # every removed voxel is anterior-inferior of the brain
    assert removed[:, -1, 0].all() and not removed[:, -1, -1].any() and not removed[:, 0, 0].any()
    with pytest.raises(ValueError, match="empty"):
        plane_cut(np.zeros(shape, bool), affine)


def test_real_head_loses_its_face_and_keeps_its_brain(ixi_scans):
    scan = load_scan(ixi_scans[0])
    transform = register_template(scan, seed=0)
    brain = brain_region(scan, transform)

    results = deface(scan, METHODS, seed=0)

    np.testing.assert_array_equal(results["mask"].removed, face_region(scan, transform))  # seeded: same
    brain_centre = world(scan.affine, brain).mean(axis=0)
    for result in results.values():
        assert result.removed.any() and not (result.removed & brain).any()
        removed_centre = world(scan.affine, result.removed).mean(axis=0)
        assert removed_centre[1] > brain_centre[1] + 30  # anterior of the brain
        assert removed_centre[2] < brain_centre[2] - 30  # and below it


def test_field_of_view_beyond_the_template_is_kept(grid_4mm):
    """pydeface #27: FSL gives mask 0 outside the template, wiping a long neck; here it stays."""
    shape, affine = grid_4mm
    scan = template_scan(grid_4mm, random_affine(np.random.default_rng(3), centre(grid_4mm), 3, 3, 0.02))
    extra = 15  # 60 mm of chin and neck below the template's field of view: its lowest slice repeated
    data = np.concatenate([np.repeat(scan.data[:, :, :1], extra, axis=2), scan.data], axis=2)
    longer = affine.copy()
    longer[:3, 3] -= affine[:3, 2] * extra
    removed = deface(Scan(data, longer))["mask"].removed

    below = slice(0, extra - 3)  # 12 mm of slack for the registration's error at the template's edge
    assert data[:, :, below].max() > 0 and not removed[:, :, below].any()
    assert removed[:, :, extra:].any()  # the face inside the template's field of view is still removed


def test_too_small_volume_is_a_clear_error():
    tiny = Scan(np.random.default_rng(0).random((12, 12, 12), dtype=np.float32), np.eye(4))
    with pytest.raises(ScanError, match="too small to register"):
        deface(tiny)
    with pytest.raises(ValueError, match="unknown defacing method"):
        deface(tiny, ("blur",))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_defaces_good_files_reports_bad_ones_and_keeps_the_input_orientation(grid_4mm, tmp_path, capsys):
    scan = template_scan(grid_4mm, random_affine(np.random.default_rng(4), centre(grid_4mm)))
    # Store it in PSR voxel order (like IXI): axes posterior, superior, right.
    psr = np.transpose(scan.data, (1, 2, 0))[::-1]
    psr_affine = scan.affine[:, [1, 2, 0, 3]] @ np.diag([-1.0, 1, 1, 1])
    psr_affine[:3, 3] = (scan.affine @ [0, scan.data.shape[1] - 1, 0, 1])[:3]
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "head.nii.gz"
    nib.save(nib.Nifti1Image(psr.copy(), psr_affine), str(good))
    assert nib.aff2axcodes(nib.load(str(good)).affine) == ("P", "S", "R")
    bad = inputs / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    before = {path.name: sha256(path) for path in inputs.iterdir()}
    out = tmp_path / "out"

    code = main(["deface", str(good), str(bad), "-o", str(out), "--save-mask", "--qc", "--method", "mask"])

    printed = capsys.readouterr()
    assert code == EXIT_UNREADABLE
    assert "broken.nii.gz" in printed.err and "head.nii.gz: defaced (mask)" in printed.out
    assert {path.name: sha256(path) for path in inputs.iterdir()} == before
    assert sorted(path.name for path in out.iterdir()) == [
        "head_defaced.nii.gz", "head_defacemask.nii.gz", "head_qc.png"]  # no temporary files left
    assert (out / "head_qc.png").read_bytes().startswith(b"\x89PNG")
    defaced, mask = nib.load(str(out / "head_defaced.nii.gz")), nib.load(str(out / "head_defacemask.nii.gz"))
    for image in (defaced, mask):
        np.testing.assert_allclose(image.affine, psr_affine)
        assert image.shape == psr.shape
    removed = np.asanyarray(mask.dataobj)
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(removed)) == {0, 1}
    np.testing.assert_allclose(defaced.get_fdata(), np.where(removed == 1, 0, psr), atol=1e-4)

    again = main(["deface", str(good), "-o", str(out)])
    assert again == EXIT_UNREADABLE and "--overwrite" in capsys.readouterr().err
