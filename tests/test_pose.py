"""The pose guard (:mod:`defacegan.pose`): a head whose header misstates its axes, or that lies
turned further than the grid is straightened, is read with its header turned back where the
template is plain about the turn, and otherwise called ``face`` with a note, never ``removed``.

On Colin27 (a real head other than the template's, Debian's ``mricron-data``) where installed; the
shipped detector's held-out IXI heads are in ``test_shipped_detector.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defacegan.augment import t2w_like
from defacegan.contract import InputContract, plane_rotation, turned
from defacegan.deface import COLIN27
from defacegan.inference import Detector, with_header_turned
from defacegan.io import Scan, load_scan
from defacegan.pose import (QUARTER_TURNS, build_poses, build_template, coarse, describe_turn, poses, require_poolable,
                            righting_turn, upright_margin)

needs_colin27 = pytest.mark.skipif(not COLIN27.is_file(), reason="Colin27 (Debian's mricron-data) is not installed")


def test_the_shipped_poses_are_the_template_turned_back_by_each_pose():
    """The asset is what ``python -m defacegan.pose`` builds (its templates stored in float16; its
    centres to float32 rounding, which moves with the installed libraries: 3e-6 voxels apart on a
    fresh install of 2026-12-05)."""
    shipped, built = poses(), build_poses()
    assert torch.equal(shipped.regions, built.regions)
    torch.testing.assert_close(shipped.centre, built.centre, rtol=0, atol=1e-4)
    assert torch.allclose(shipped.templates, built.templates, rtol=1e-3, atol=1e-6)


def test_the_template_is_compared_without_its_face():
    """What a defacer takes away or replaces is not compared: the upright pose's region holds none of
    the template's face voxels, and most of the rest of the head."""
    heads, face = build_template()
    assert face.sum() > 50
    for head, regions in zip(heads, poses().regions):  # T1w and T2w-like
        upright = regions[0].reshape(face.shape) > 0.5
        assert not (upright & face).any()
        assert (upright & (head > 0.1)).sum() > 0.5 * ((head > 0.1) & ~face).sum()


def test_the_quarter_turns_are_the_cubes_rotations_less_the_identity():
    assert len(QUARTER_TURNS) == 23
    assert {round(float(np.linalg.det(turn))) for turn in QUARTER_TURNS} == {1}
    assert len({turn.tobytes() for turn in QUARTER_TURNS}) == 23


def test_any_grid_whose_spacing_divides_the_pose_grids_is_averaged_onto_it():
    """The shipped 2 mm grid and a 4 mm grid of 192 mm (the test detectors') come to the same 8 mm
    voxels, the smaller one padded about its middle; a 3 mm grid is refused before any scan is read."""
    shipped = torch.zeros(1, 128, 128, 128)
    shipped[0, 40:88, 40:88, 40:88] = 1.0
    small = torch.zeros(48, 48, 48)
    small[12:36, 12:36, 12:36] = 1.0
    assert torch.equal(coarse(shipped, 2.0), coarse(small, 4.0))
    assert coarse(shipped, 2.0).shape == (32, 32, 32) and coarse(shipped, 2.0).sum() == 12 ** 3
    require_poolable(InputContract())
    with pytest.raises(ValueError, match="divides 8 mm, not 3 mm"):
        require_poolable(InputContract(spacing=3.0))


@needs_colin27
def test_a_head_turned_a_quarter_or_half_turn_is_not_understood():
    """Upright, nodded or turned within the straightening's reach: understood; a quarter turn about
    any axis or a half turn about the vertical one: not."""
    contract = InputContract()
    scan = load_scan(COLIN27)

    def margin(rotation: np.ndarray) -> float:
        moved = with_header_turned(scan, rotation)
        return upright_margin(contract.volume(moved.data, moved.affine), contract.spacing)

    for rotation in (np.eye(3), plane_rotation(1, 2, 20), plane_rotation(0, 1, 40)):
        assert margin(rotation) > 0
    for a, b, degrees in ((0, 1, 90), (0, 2, 90), (1, 2, -90), (0, 1, 180)):
        assert margin(plane_rotation(a, b, degrees)) < 0, (a, b, degrees)


@needs_colin27
def test_a_head_of_another_contrast_is_understood_upright_and_not_turned():
    """Colin27 made T2w-like (fluid bright, as the detector's training inverts heads): upright,
    nodded, turned or rolled by 20-30 degrees its pose is understood, which against the T1w template
    alone it was not (margins -0.006 upright, down to -0.010 nodded); a quarter turn is not."""
    contract = InputContract()
    scan = load_scan(COLIN27)
    inverted = t2w_like(torch.from_numpy(np.asarray(scan.data, dtype=np.float32))[None])[0].numpy()
    t2w = Scan(inverted, scan.affine)

    def margin(rotation: np.ndarray) -> float:
        moved = with_header_turned(t2w, rotation)
        return upright_margin(contract.volume(moved.data, moved.affine), contract.spacing)

    for rotation in (np.eye(3), plane_rotation(1, 2, 20), plane_rotation(1, 2, -20), plane_rotation(0, 1, 30),
                     plane_rotation(0, 2, 20)):
        assert margin(rotation) > 0
    for a, b, degrees in ((0, 1, 90), (0, 2, 90)):
        assert margin(plane_rotation(a, b, degrees)) < 0, (a, b, degrees)


def test_a_turn_is_named_by_its_angle_and_axis():
    assert describe_turn(plane_rotation(0, 1, 90)) == "90° about S"
    assert describe_turn(plane_rotation(0, 1, -90)) == "-90° about S"
    assert describe_turn(plane_rotation(1, 2, 180)) == "180° about R"
    assert describe_turn(np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])) == "120° about R+A+S"
    assert sorted({describe_turn(turn) for turn in QUARTER_TURNS}) == sorted(describe_turn(turn) for turn in QUARTER_TURNS)


@needs_colin27
def test_the_righting_read_from_the_loaders_volume_is_the_one_read_afresh():
    """A placement the mirror did not straighten is the grid along the header's axes, so the
    loader's volume gives the righting turn that reading the scan again would (and saves that read)."""
    contract = InputContract()
    scan = with_header_turned(load_scan(COLIN27), plane_rotation(0, 1, 90))
    placed = contract.place(scan.data, scan.affine)
    assert not placed.straightened
    turn = righting_turn(scan.data, scan.affine, contract, contract.volume(scan.data, scan.affine, placed))
    assert np.array_equal(turn, righting_turn(scan.data, scan.affine, contract))
    assert np.allclose(turn, plane_rotation(0, 1, -90))


@needs_colin27
def test_a_head_whose_header_is_turned_is_judged_turned_back(detector_ckpt):
    """A header turned a quarter way is read turned back by the template's best turn: the same
    voxels on the same grid as the scan stored upright, so the same answer, with the turn in its
    record and a note."""
    from defacegan.check import CheckResult
    from defacegan.io import ScanFile

    scan = load_scan(COLIN27)
    detector = Detector(detector_ckpt, device="cpu", anatomy="never")
    upright, sideways = detector.predict([scan, with_header_turned(scan, plane_rotation(0, 1, 90))])
    assert upright.righted is None and upright.pose_margin > 0
    assert sideways.righted == "-90° about S" and sideways.pose_margin == pytest.approx(upright.pose_margin, abs=1e-6)
    assert sideways.probabilities == pytest.approx(upright.probabilities, abs=1e-5) and sideways.verdict == upright.verdict
    record = CheckResult.from_prediction(sideways, ScanFile(COLIN27)).record()
    assert record["righted"] == "-90° about S" and "head looked turned a quarter or half way" in record["note"]
    assert "righted" not in CheckResult.from_prediction(upright, ScanFile(COLIN27)).record()


@needs_colin27
def test_a_header_turn_the_mirror_reading_straightens_near_upright_is_righted_too():
    """Colin27, its header turned 180° about R+S: the mirror reading turns the shipped grid about 81°
    onto a pose the margin passes (before: judged so, p(removed) 0.48 on an intact face); the grid
    turned past the reading's reach is read righted as well, which the template matches better, so
    the scan is judged as it is upright."""
    scan = load_scan(COLIN27)
    half_turn = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    detector = Detector(device="cpu", anatomy="never")
    upright, turned = detector.predict([scan, with_header_turned(scan, half_turn)])
    assert turned.righted == describe_turn(half_turn) == "180° about R+S"
    assert turned.probabilities == pytest.approx(upright.probabilities, abs=1e-5)


@needs_colin27
def test_check_calls_a_sideways_head_it_cannot_turn_back_face_and_says_why(detector_ckpt, monkeypatch):
    """Whatever the network saw, a head left lying sideways on the grid is ``face``, noted, with its
    negative margin in its record: here because no turn could make it plain enough (the bar set
    out of reach); the same head upright carries no such note."""
    from defacegan import inference
    from defacegan.check import CheckResult
    from defacegan.io import ScanFile

    monkeypatch.setattr(inference, "RIGHTED_ABOVE", 2.0)  # above any correlation's margin
    scan = load_scan(COLIN27)
    detector = Detector(detector_ckpt, device="cpu", anatomy="never")
    upright, sideways = detector.predict([scan, with_header_turned(scan, plane_rotation(0, 1, 90))])
    assert upright.pose_understood and upright.pose_margin > 0
    assert sideways.verdict == "face" and not sideways.pose_understood and sideways.righted is None
    result = CheckResult.from_prediction(sideways, ScanFile(COLIN27))
    assert "pose was not understood" in result.note and result.record()["pose_margin"] == sideways.pose_margin < 0
    assert "pose" not in (CheckResult.from_prediction(upright, ScanFile(COLIN27)).note or "")


@needs_colin27
def test_a_registration_finds_an_upright_head_upright_and_a_sideways_one_not():
    """:func:`defacegan.anatomy.registered_upright` on Colin27: lying as stored, the template fits it
    better from the grid's axes than read turned a quarter way; lying sideways or nodded a quarter
    way (its header turned), the fit from the grid's axes loses to the one from the turn that rights it."""
    from defacegan.anatomy import registered_upright

    scan = load_scan(COLIN27)
    assert registered_upright(scan, with_header_turned(scan, plane_rotation(0, 1, 90))) is not None
    for turn in (plane_rotation(0, 1, 90), plane_rotation(1, 2, 90)):
        turned = with_header_turned(scan, turn)
        assert registered_upright(turned, with_header_turned(turned, turn.T)) is None


@needs_colin27
def test_a_head_the_guard_cannot_read_is_judged_as_it_lies_when_a_registration_finds_it_upright(detector_ckpt, monkeypatch):
    """Where the anatomy may run, a scan the guard could not read (its margin made -0.005 here, as a
    field of view cut in front of the eyes gives) and would call ``face`` is registered: Colin27 lying
    as stored is found upright and judged as it lies (the network, and the anatomy where it may
    overrule), with a note and ``registered_upright`` in its record; sideways, it stays ``face``, noted as not understood. ``--anatomy never`` registers
    nothing: the guard's answer stands."""
    from defacegan import inference
    from defacegan.check import CheckResult
    from defacegan.io import ScanFile

    monkeypatch.setattr(inference, "upright_margin", lambda volume, spacing: -0.005)
    scan = load_scan(COLIN27)
    sideways = with_header_turned(scan, plane_rotation(0, 1, 90))
    # threshold 1.1: never face by p(face), so that a face here is the guard's
    network = Detector(detector_ckpt, device="cpu", threshold=1.1, anatomy="never").predict([scan])[0]
    as_it_lies = Detector(detector_ckpt, device="cpu", threshold=1.1, pose_check=False).predict([scan])[0]
    upright, turned = Detector(detector_ckpt, device="cpu", threshold=1.1).predict([scan, sideways])
    assert network.verdict == "face" and not network.pose_understood and not network.registered_upright
    # judged as it lies: the network's `replaced`, turned `face` by Colin27's own texture, not the guard's `face`
    assert as_it_lies.overruled and inference.likelier_defacing(as_it_lies.probabilities) == "replaced"
    assert upright.verdict == as_it_lies.verdict and upright.overruled == as_it_lies.overruled
    assert upright.registered_upright and upright.pose_understood
    record = CheckResult.from_prediction(upright, ScanFile(COLIN27)).record()
    assert record["registered_upright"] is True and "a registration of the template found it upright" in record["note"]
    assert turned.verdict == "face" and not turned.registered_upright and not turned.pose_understood
    assert "pose was not understood" in CheckResult.from_prediction(turned, ScanFile(COLIN27)).note


@needs_colin27
def test_a_nodded_head_the_guard_cannot_read_is_judged_with_its_nod_taken_off_however_sure_the_network(detector_ckpt, monkeypatch):
    """A head nodded far nose up is one the guard flags (bench/acquisition.py's 30 degrees nose up);
    the registration that finds it upright also reads its nod, and the network judges it with the
    nod taken off whatever p(face) it gave the nodded head: Colin27 with its header nodded 40 degrees
    (the guard's flag forced, as above)."""
    from defacegan import inference
    from defacegan.anatomy import NOD_BEYOND, TYPICAL_NOD
    from defacegan.check import CheckResult
    from defacegan.io import ScanFile

    monkeypatch.setattr(inference, "upright_margin", lambda volume, spacing: -0.005)
    scan = load_scan(COLIN27)
    nodded = Scan(scan.data, turned(scan.affine, plane_rotation(1, 2, 40)))
    prediction = Detector(detector_ckpt, device="cpu").predict([nodded])[0]
    assert prediction.registered_upright and prediction.unnodded is not None
    assert abs(prediction.unnodded) > NOD_BEYOND and prediction.nod == pytest.approx(TYPICAL_NOD + prediction.unnodded)
    note = CheckResult.from_prediction(prediction, ScanFile(COLIN27)).note
    assert "its pose was read by a registration: judged again on a grid turned with it" in note
