"""Defacing: registration accuracy against known transforms, the plane cut's geometry, real heads,
pydeface's #27 (a long field of view is kept), the CLI, and the input's orientation on output."""

from __future__ import annotations

import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from defacegan.cli import EXIT_OK, EXIT_UNREADABLE, main, verify_defaced
from defacegan.brain import FLAG_PERCENT, brain_mask, brain_removed
from defacegan.deface import (LPS, PITCH_STARTS_DEG, PitchSearch, deface, pitch_search, plane_cut, register_template,
                              removed_region, template_masks, warp)
from defacegan.io import Scan, ScanError, head_threshold, load_scan
from defacegan.manifest import METHODS
from support.geometry import dice, misregistered, nodded, random_affine


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


@pytest.mark.parametrize("degrees", [(0.0, 0.0, 45.0), (20.0, 0.0, 45.0)], ids=["turned 45", "nodded 20, turned 45"])
def test_a_head_turned_in_the_coil_loses_its_own_face(grid_4mm, degrees):
    """Started straight, the registration put a head turned 45 degrees within 9 of straight and
    the face mask beside the face (Dice 0.61 and 0.58 here): it starts from the head's own axes."""
    lps_centre = LPS @ centre(grid_4mm)
    transform = sitk.Euler3DTransform(lps_centre.tolist(), *np.deg2rad(degrees))  # LPS: about L-R, A-P, S-I
    scan = template_scan(grid_4mm, transform)
    shape, affine = grid_4mm
    true_face = warp(template_masks().face_mask, transform, shape, affine, default=1.0) < 0.5

    assert dice(deface(scan, ("mask",))["mask"].removed, true_face) >= 0.95


def test_a_real_head_nodded_nose_up_loses_its_own_face(held_out_head):
    """A held-out IXI head nodded 45 degrees nose up: the search's outermost start (20 degrees)
    stopped near 30 and the face mask kept much of the face (Dice 0.61 here); the search now
    goes further out where a start ends beyond itself. The truth is the straight head's own
    registration carried along by the nod."""
    source = load_scan(held_out_head)
    scan, nod = nodded(source, 45.0)
    true_face = removed_region(scan, sitk.CompositeTransform([register_template(source), nod]), "mask")

    assert dice(deface(scan, ("mask",))["mask"].removed, true_face) >= 0.9


def test_the_search_reads_the_nod_a_fit_ended_at():
    """``PitchSearch.ended`` reads the nod about the head's own L-R axis from a 12-dof matrix: the
    rotation nearest it, whatever the scaling, in ``SetRotation``'s sign."""
    turn = sitk.Euler3DTransform()
    turn.SetRotation(0.0, 0.0, np.deg2rad(30.0))
    axes = np.reshape(turn.GetMatrix(), (3, 3)).T  # scan → head axes: the head lies turned 30°
    nod = sitk.Euler3DTransform()
    nod.SetRotation(np.deg2rad(25.0), 0.0, 0.0)
    fit = sitk.AffineTransform(3)
    fit.SetMatrix((np.reshape(nod.GetMatrix(), (3, 3)) @ np.diag([1.1, 0.9, 1.05]) @ axes.T).ravel().tolist())
    search = PitchSearch(None, None, axes, {20.0: (-0.5, fit)})

    assert search.ended(20.0) == pytest.approx(25.0, abs=0.5)


def test_a_real_head_as_scanned_is_searched_from_the_three_starts_alone(held_out_head):
    """The search grows only where a start ends beyond itself: a head as scanned is registered as
    with the three starts (bench/pitch_search.py: none of the 32 IXI heads and Colin27 grew)."""
    search = pitch_search(load_scan(held_out_head))

    assert list(search.fits) == list(PITCH_STARTS_DEG)
    assert all(abs(search.ended(start)) < max(PITCH_STARTS_DEG) for start in search.fits)


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


def test_brain_removed_counts_brain_voxels_inside_the_removed_region():
    """Millilitres and the flag from a known brain and region, on an anisotropic grid."""
    spacing = np.array([1.0, 2.0, 2.5])
    scan = Scan(np.ones((40, 30, 20), np.float32), np.diag([*spacing, 1.0]))
    brain = np.zeros(scan.data.shape, bool)
    brain[5:35, 5:25, 5:15] = True  # 30 * 20 * 10 voxels of 5 mm^3: 30 mL
    removed = np.zeros_like(brain)
    removed[:, 24:, :] = True  # one voxel deep into the brain's front: 30 * 1 * 10 voxels, 1.5 mL

    measured = brain_removed(scan, removed, brain)

    assert measured.brain_ml == pytest.approx(30.0) and measured.removed_ml == pytest.approx(1.5)
    assert measured.percent == pytest.approx(5.0) and measured.flagged == (5.0 > FLAG_PERCENT)
    assert measured.sidecar()["BrainRemovedML"] == 1.5 and measured.sidecar()["BrainRemovedFlagged"] == measured.flagged
    assert not brain_removed(scan, np.zeros_like(brain), brain).flagged
    assert not brain_removed(scan, removed, np.zeros_like(brain)).flagged  # no brain found: nothing removed


@pytest.fixture(scope="module")
def real_head_brain(ixi_scans):
    """A real IXI head, the defacer's registration and its BET brain mask (about a minute)."""
    scan = load_scan(ixi_scans[0])
    return scan, register_template(scan, seed=0), brain_mask(scan)


@pytest.mark.slow
def test_real_head_brain_mask_is_a_brain(real_head_brain):
    scan, _, brain = real_head_brain
    volume_ml = np.count_nonzero(brain) * np.prod(scan.spacing) / 1000
    assert 1000 < volume_ml < 2000  # an adult brain with its CSF, cerebellum and brainstem
    head = world(scan.affine, scan.data > head_threshold(scan.data))
    inside = world(scan.affine, brain)
    assert 5 < head[:, 2].max() - inside[:, 2].max() < 25  # under the scalp and skull
    assert 5 < head[:, 1].max() - inside[:, 1].max() < 60  # behind the forehead, not in the face


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_brain_flag_fires_when_the_registration_is_wrong(real_head_brain, method):
    """A correct defacing removes the face in front of and below the brain and is not flagged; the
    same registration moved 15-25 mm toward the brain cuts into it and is."""
    scan, transform, brain = real_head_brain
    removed = removed_region(scan, transform, method)
    np.testing.assert_array_equal(deface(scan, (method,), seed=0)[method].removed, removed)  # seeded: same
    brain_centre, removed_centre = world(scan.affine, brain).mean(axis=0), world(scan.affine, removed).mean(axis=0)
    assert removed_centre[1] > brain_centre[1] + 30  # anterior of the brain
    assert removed_centre[2] < brain_centre[2] - 30  # and below it
    assert not brain_removed(scan, removed, brain).flagged

    moved = misregistered(transform, np.random.default_rng(0), shift_mm=(25.0, 25.0), angle_deg=(45.0, 45.0))
    wrong = brain_removed(scan, removed_region(scan, moved, method), brain)

    assert wrong.flagged and wrong.removed_ml > 5


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

    code = main(["deface", str(good), str(bad), "-o", str(out), "--save-mask", "--qc", "--method", "mask",
                 "--no-brain-check"])

    printed = capsys.readouterr()
    assert code == EXIT_UNREADABLE
    assert "broken.nii.gz" in printed.err and "head.nii.gz: defaced (mask)" in printed.out
    assert {path.name: sha256(path) for path in inputs.iterdir()} == before
    assert sorted(path.name for path in out.iterdir()) == [
        "head_defaced.json", "head_defaced.nii.gz", "head_defacemask.nii.gz", "head_qc.png"]  # no temporary files left
    assert json.loads((out / "head_defaced.json").read_text())["DeidentificationMethod"] == ["defacegan (mask)"]
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


@pytest.mark.slow
def test_cli_measures_the_brain_and_verify_finds_an_undone_defacing(held_out_head, tmp_path, capsys):
    """On a real head the shipped detector never saw: the brain removed goes into the JSON and the
    QC figure, --verify calls the output defaced; with the defacing undone, it fires."""
    out = tmp_path / "out"

    code = main(["deface", str(held_out_head), "-o", str(out), "--qc", "--verify"])

    printed = capsys.readouterr().out
    assert code == EXIT_OK, printed
    record = json.loads((out / f"{held_out_head.name.removesuffix('.nii.gz')}_defaced.json").read_text())
    assert record["BrainML"] > 1000 and not record["BrainRemovedFlagged"]
    assert f"brain removed {record['BrainRemovedML']:.1f} mL" in printed
    assert "removed" in printed.split("verdict")[-1] and "0 with a face" in printed
    assert main(["check", str(out), "--json", "--workers", "0"]) == EXIT_OK  # check shows what deface measured
    checked = json.loads(capsys.readouterr().out)["results"]
    assert [row["brain_removed"] for row in checked] == [record["BrainRemovedPercent"]]
    output = out / f"{held_out_head.name.removesuffix('.nii.gz')}_defaced.nii.gz"
    shutil.copyfile(held_out_head, output)  # the defacing undone: the face is back

    assert verify_defaced([output]) == 1
    assert "1 with a face" in capsys.readouterr().out
