"""The pose guard (:mod:`defacegan.pose`): a head whose header misstates its axes, or that lies
turned further than the grid is straightened, is called ``face`` with a note, never ``removed``.

On Colin27 (a real head other than the template's, Debian's ``mricron-data``) where installed; the
shipped detector's held-out IXI heads are in ``test_shipped_detector.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defacegan.contract import InputContract, plane_rotation
from defacegan.deface import COLIN27
from defacegan.inference import Detector
from defacegan.io import load_scan
from defacegan.pose import QUARTER_TURNS, build_template, coarse, require_poolable, template, upright_margin
from support.geometry import header_turned

needs_colin27 = pytest.mark.skipif(not COLIN27.is_file(), reason="Colin27 (Debian's mricron-data) is not installed")


def test_the_shipped_template_is_the_template_on_the_pose_grid():
    """The asset is what ``python -m defacegan.pose`` builds (stored as float32)."""
    assert np.allclose(template().numpy(), build_template().numpy(), atol=1e-6)


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
        moved = header_turned(scan, rotation)
        return upright_margin(contract.volume(moved.data, moved.affine), contract.spacing)

    for rotation in (np.eye(3), plane_rotation(1, 2, 20), plane_rotation(0, 1, 40)):
        assert margin(rotation) > 0
    for a, b, degrees in ((0, 1, 90), (0, 2, 90), (1, 2, -90), (0, 1, 180)):
        assert margin(plane_rotation(a, b, degrees)) < 0, (a, b, degrees)


@needs_colin27
def test_check_calls_a_sideways_head_face_and_says_why(detector_ckpt):
    """Whatever the network saw, a head lying sideways on the grid is ``face``, noted, with its
    negative margin in its record; the same head upright carries no such note."""
    from defacegan.check import CheckResult
    from defacegan.io import ScanFile

    scan = load_scan(COLIN27)
    detector = Detector(detector_ckpt, device="cpu", anatomy="never")
    upright, sideways = detector.predict([scan, header_turned(scan, plane_rotation(0, 1, 90))])
    assert upright.pose_understood and upright.pose_margin > 0
    assert sideways.verdict == "face" and not sideways.pose_understood
    result = CheckResult.from_prediction(sideways, ScanFile(COLIN27))
    assert "pose was not understood" in result.note and result.record()["pose_margin"] == sideways.pose_margin < 0
    assert "pose" not in (CheckResult.from_prediction(upright, ScanFile(COLIN27)).note or "")
