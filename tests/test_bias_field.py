"""The evened second look: a bias field taken off (N4) before the network judges a scan it saw no face in."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio

from defacegan.anatomy import kept_features
from defacegan.bias_field import evened
from defacegan.check import CheckResult, Summary
from defacegan.contract import InputContract
from defacegan.deface import face_region, register_template
from defacegan.detector_data import subject_of
from defacegan.families import FaceBundle, Variant, generate, make_bundle, remove_share
from defacegan.inference import Detector, registered_upright
from defacegan.io import Scan, ScanError, ScanFile, load_scan
from defacegan.pose import understood


def darkened_towards_the_front(scan: Scan, strength: float) -> Scan:
    """``scan`` under a smooth field that darkens the face (the front of a RAS+ head): a coil at the
    back of the head, e^-strength at the front edge of the field of view, e^strength at the back."""
    front = np.linspace(-1, 1, scan.data.shape[1])[None, :, None]
    return Scan((np.asarray(scan.data, dtype=np.float32) * np.exp(-strength * front)).astype(np.float32), scan.affine)


def under_bias_field(bundle: FaceBundle, variant: Variant, coefficients: float) -> Scan:
    """``variant`` under TorchIO's random bias field, drawn with the seed bench/acquisition.py gives its head."""
    torch.manual_seed(zlib.crc32(bundle.subject.encode()))
    image = tio.RandomBiasField(coefficients=coefficients)(tio.ScalarImage(tensor=torch.from_numpy(variant.volume[None].copy()),
                                                                            affine=bundle.affine))
    return Scan(image.data[0].numpy(), image.affine)


def test_evened_takes_a_smooth_field_off_a_textured_head():
    rng = np.random.default_rng(0)
    shape = (48, 56, 48)
    inside = sum(((np.indices(shape)[axis] - shape[axis] / 2) / (shape[axis] * 0.4)) ** 2 for axis in range(3)) < 1
    tissue = np.where(inside, rng.uniform(0.6, 1.0, shape), 0).astype(np.float32)  # two tissues' worth of contrast
    head = Scan(tissue, np.diag([4.0, 4.0, 4.0, 1.0]))
    biased = darkened_towards_the_front(head, 0.8)
    corrected = evened(biased)
    ratio = np.log(corrected.data[inside] / tissue[inside])  # what is left of the field, up to a constant
    field = np.log(biased.data[inside] / tissue[inside])
    assert ratio.std() < 0.25 * field.std(), (ratio.std(), field.std())
    assert np.all(corrected.data[~inside] == 0)  # no head, nothing made up


def test_a_scan_without_a_head_comes_back_as_it_was():
    """Nothing to fit on (the loader turns such scans away first; here the function alone)."""
    for data in (np.zeros((16, 16, 16), np.float32), np.ones((16, 16, 16), np.float32)):
        assert np.array_equal(evened(Scan(data, np.eye(4))).data, data)


def test_a_face_darkened_by_a_bias_field_is_face_and_a_removed_one_stays_removed(held_out_head):
    """On a real head the shipped detector never saw: darkened by a coil at the back of the head, its
    face is ``face`` to the network alone under a field that dims the face 5-fold against the back
    (the views are flattened), and not under one that dims it 9-fold; there ``check``'s default looks
    again with the field taken off and calls it ``face``, with a note. The same head with its face
    removed stays not ``face``."""
    scan = load_scan(held_out_head)
    removed = Scan(np.where(face_region(scan, register_template(scan)), 0, scan.data).astype(np.float32), scan.affine)
    intact, defaced = (darkened_towards_the_front(s, 1.1) for s in (scan, removed))
    network = Detector(anatomy="never")
    assert network.predict([darkened_towards_the_front(scan, 0.8)])[0].verdict == "face"
    alone = network.predict([intact])[0]
    assert alone.verdict != "face" and alone.evened_p_face is None, alone.probabilities
    checked, still_defaced = Detector().predict([intact, defaced])
    assert checked.verdict == "face" and checked.evened_p_face >= 0.5, (checked.probabilities, checked.evened_p_face)
    assert "eyes" in kept_features(checked.evened_tissue), checked.evened_tissue
    assert still_defaced.verdict != "face" and still_defaced.evened_p_face < 0.5
    result = CheckResult.from_prediction(checked, ScanFile(Path("darkened.nii.gz")))
    assert "intensities evened" in result.note and "eyes" in result.note and result.record()["evened_p_face"] == pytest.approx(checked.evened_p_face)
    assert Summary.of([result], 1.0).overruled == 1


def test_the_evened_look_turns_a_verdict_only_where_the_eyes_nose_or_chin_hold_tissue():
    """The network saw faces in defaced heads once they were evened (a mask-defaced head under Rician
    noise, bench/acquisition.py): its face counts only where the anatomy finds an overruling region
    (eyes, nose, chin) on the evened scan; otherwise the verdict stays, with a note to look at it."""
    detector = Detector(anatomy="never")  # the rule alone; the network is not run
    gone = {"eyes": 0.0, "nose": 0.12, "mouth": 0.5, "chin": 0.2}
    assert detector.evened_shows_face(0.9, {**gone, "eyes": 0.8}) and detector.evened_shows_face(0.9, {**gone, "chin": 0.8})
    assert not detector.evened_shows_face(0.9, gone)
    assert not detector.evened_shows_face(0.3, {**gone, "eyes": 0.8}) and not detector.evened_shows_face(None, None)
    left = CheckResult("scan.nii.gz", probabilities={"face": 0.3, "removed": 0.6, "replaced": 0.1}, answer="removed",
                       evened_p_face=0.9, evened_tissue=gone)
    assert left.evened_unconfirmed and not left.evened_to_face and "no eye, nose or chin region holds tissue" in left.note


@pytest.fixture(scope="module")
def unregistrable(ixi_scans) -> tuple[Scan, Scan]:
    """A real head (IXI527) cut below the eyes and mask-defaced, each under TorchIO's bias field with
    coefficients up to 1, which keeps the template from registering onto either as it is (an
    implausible scaling: ``check`` said error, exit 2, before)."""
    bundle = make_bundle(load_scan(next(p for p in ixi_scans if subject_of(p) == "IXI527")), "IXI527", InputContract())
    scans = tuple(under_bias_field(bundle, variant, 1.0) for variant in
                  (remove_share(bundle, 0.4, "below"), generate(bundle, "mask", np.random.default_rng(0))))
    for scan in scans:
        with pytest.raises(ScanError, match="registration failed"):
            register_template(scan)
    return scans


def test_a_cut_the_template_will_not_register_onto_keeps_its_face(unregistrable):
    """The cut that keeps the eyes and nose is ``face`` to the network, its views flattened."""
    (kept,) = Detector().predict([unregistrable[0]])
    assert kept.verdict == "face" and kept.error is None, kept


@pytest.mark.xfail(strict=True, reason="the pose guard rights the mask-defaced head by a quarter turn it did not have and "
                                       "the network calls the turned head face; the registration that would refute the "
                                       "turn fails as stored and evened (a false alarm, on the safe side)")
def test_a_mask_defaced_head_the_template_will_not_register_onto_is_not_face(unregistrable):
    (gone,) = Detector().predict([unregistrable[1]])
    assert gone.verdict != "face", gone


def test_a_head_whose_pose_only_the_evened_scan_shows_upright_is_judged_as_it_lies(ixi_scans):
    """A held-out head, mask-defaced, under the same field: the pose guard does not understand its
    pose and the template's registration onto the scan as it is finds it not upright, so it used to be
    called ``face`` whatever it held; registered onto the evened scan, it is upright and ``removed``."""
    bundle = make_bundle(load_scan(next(p for p in ixi_scans if subject_of(p) == "IXI338")), "IXI338", InputContract())
    scan = under_bias_field(bundle, generate(bundle, "mask", np.random.default_rng(0)), 1.0)
    assert registered_upright(scan, Detector().contract) is None
    checked = Detector().predict([scan])[0]
    assert not understood(checked.pose_margin) and checked.registered_upright and checked.registered_evened, checked
    assert checked.verdict == "removed" and not kept_features(checked.tissue), checked
    result = CheckResult.from_prediction(checked, ScanFile(Path("biased.nii.gz")))
    assert "would not register onto the scan as it is" in result.note and result.record()["registered_evened"] is True
