"""The anatomy's second opinion: feature regions that still hold tissue overrule an unsure `removed`,
and an unsure `replaced` where the face also has the rest of the head's texture.

Heads: pydeface's mean head (installs with the project; a real average of heads) in a grid of its
own, and a real IXI head the shipped detector never saw, where ../shared has them.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from defacegan.anatomy import (NETWORK_SURE, NETWORK_UNSURE, NOD_BEYOND, OWN_TEXTURE, TISSUE_MIN_SHARE, TYPICAL_NOD,
                               face_texture, feature_regions, kept_features, looks_like_tissue, nod_to_undo, read,
                               template_features)
from defacegan.check import CheckResult
from defacegan.cli import EXIT_FACE, main
from defacegan.contract import plane_rotation, turned
from defacegan.deface import COLIN27, face_region, register_template, template_masks
from defacegan.features import FEATURE_BOXES, FEATURES, head_mask, in_boxes, template_voxels
from defacegan.inference import Detector, needs_anatomy, verdict_of
from defacegan.io import Scan, ScanError, ScanFile, load_scan
from support.geometry import nodded
from support.refacing import template_face_pasted

REMOVED_LIKELY = {"face": 0.1, "removed": 0.6, "replaced": 0.3}
REPLACED_LIKELY = {"face": 0.1, "removed": 0.3, "replaced": 0.6}


def below_the_eyes(scan: Scan, transform) -> np.ndarray:
    """A cut across the whole head below the eye regions and in front of the ears, as caideface's mask
    makes on some heads: the nose, mouth and chin go, both eye regions stay."""
    voxels = template_voxels(scan.data.shape, scan.affine, transform, template_masks().head.affine)
    eyes_bottom = min(box[2][0] for box in FEATURE_BOXES["eyes"])
    return (voxels[..., 2] < eyes_bottom - 2) & (voxels[..., 1] > 150)


@pytest.fixture(scope="module")
def mean_head() -> Scan:
    """pydeface's mean head, moved 6 mm and turned 8° so that the registration has work to do."""
    image = template_masks().head
    affine = turned(image.affine, plane_rotation(1, 2, 8))  # about the L-R axis
    affine[:3, 3] += [0, 6, -4]
    return Scan(np.asanyarray(image.dataobj).astype(np.float32), affine)


@pytest.fixture(scope="module")
def mean_head_versions(mean_head) -> dict[str, Scan]:
    transform = register_template(mean_head)
    face = face_region(mean_head, transform)
    level = float(np.percentile(mean_head.data[face & (mean_head.data > 0)], 60))
    noise = np.abs(np.random.default_rng(0).normal(level, level / 2, mean_head.data.shape))
    return {
        "intact": mean_head,
        "mask": Scan(np.where(face, 0, mean_head.data), mean_head.affine),
        "below the eyes": Scan(np.where(below_the_eyes(mean_head, transform), 0, mean_head.data), mean_head.affine),
        "constant fill": Scan(np.where(face, level, mean_head.data), mean_head.affine),
        "noise fill": Scan(np.where(face, noise, mean_head.data).astype(np.float32), mean_head.affine),
    }


def test_a_removed_verdict_is_overruled_only_where_a_feature_region_holds_tissue_and_the_network_is_unsure():
    kept = {"eyes": 0.9, "nose": 0.1, "mouth": 0.0, "chin": float("nan")}
    chin = {"eyes": 0.0, "nose": 0.0, "mouth": 0.0, "chin": 0.9}  # a failed defacing that left the lower face
    gone = {"eyes": 0.2, "nose": 0.0, "mouth": 1.0, "chin": 0.1}  # the mouth region: no vote
    assert kept_features(kept) == ["eyes"] and kept_features(chin) == ["chin"] and kept_features(gone) == []
    assert kept_features(chin, ("eyes", "nose")) == []
    assert verdict_of(REMOVED_LIKELY, 0.5, kept) == "face"
    assert verdict_of(REMOVED_LIKELY, 0.5, chin) == "face"
    assert verdict_of(REMOVED_LIKELY, 0.5, gone) == "removed"
    assert verdict_of(REMOVED_LIKELY, 0.5) == "removed"
    assert verdict_of(REPLACED_LIKELY, 0.5, kept) == "replaced"  # a pasted face holds tissue by design
    sure = {"face": NETWORK_UNSURE / 2, "removed": 0.9, "replaced": 1 - 0.9 - NETWORK_UNSURE / 2}
    assert verdict_of(sure, 0.5, kept) == "removed"  # a fill can look like tissue; the network was sure


def test_a_replaced_verdict_is_overruled_only_where_the_face_also_has_the_heads_own_texture():
    kept = {"eyes": 0.9, "nose": 0.8, "mouth": 0.9, "chin": 0.9}
    gone = {"eyes": 0.2, "nose": 0.0, "mouth": 1.0, "chin": 0.0}
    assert verdict_of(REPLACED_LIKELY, 0.5, kept, OWN_TEXTURE) == "face"
    assert verdict_of(REPLACED_LIKELY, 0.5, kept, OWN_TEXTURE - 0.05) == "replaced"  # smoother than the head: pasted
    assert verdict_of(REPLACED_LIKELY, 0.5, kept, float("nan")) == "replaced"
    assert verdict_of(REPLACED_LIKELY, 0.5, gone, 1.0) == "replaced"


def test_a_replaced_verdict_is_judged_however_sure_the_network_was_and_a_removed_one_is_not():
    """An intact face called `replaced` would pass as anonymised: the texture, an independent
    condition, is asked however sure the network was; a sure `removed` is left (fills look like tissue)."""
    kept = {"eyes": 0.9, "nose": 0.8, "mouth": 0.9, "chin": 0.9}
    sure_replaced = {"face": NETWORK_UNSURE / 20, "removed": 0.05, "replaced": 1 - 0.05 - NETWORK_UNSURE / 20}
    sure_removed = {"face": NETWORK_UNSURE / 20, "removed": 0.95, "replaced": 0.05 - NETWORK_UNSURE / 20}
    assert needs_anatomy(sure_replaced, 0.5) and not needs_anatomy(sure_removed, 0.5)
    assert verdict_of(sure_replaced, 0.5, kept, 1.0) == "face"
    assert verdict_of(sure_replaced, 0.5, kept, OWN_TEXTURE - 0.05) == "replaced"
    assert verdict_of(sure_removed, 0.5, kept) == "removed"


def test_a_real_face_has_the_heads_own_texture_however_smooth_the_scan_and_a_pasted_face_does_not(held_out_head):
    """On a real held-out head: its face, the whole scan smoothed (as an average of many scans, like
    Colin27, or a denoising reconstruction gives it) and with noise added all over, against the
    template's face pasted in (an AFNI- or mri_reface-like re-facing)."""
    scan = load_scan(held_out_head)
    transform = register_template(scan)
    data = scan.data.astype(np.float32)
    level = float(np.percentile(data[data > 0], 75))
    versions = {"intact": data, "smoothed all over": ndimage.gaussian_filter(data, 1.0),
                "noisier all over": np.abs(data + np.random.default_rng(0).normal(0, level / 20, data.shape)),
                "template's face": template_face_pasted(scan, transform)}
    textures = {name: face_texture(Scan(volume.astype(np.float32), scan.affine), transform, head_mask(volume))
                for name, volume in versions.items()}
    assert min(textures[name] for name in ("intact", "smoothed all over", "noisier all over")) >= OWN_TEXTURE, textures
    assert textures["template's face"] < OWN_TEXTURE - 0.2, textures


def test_each_carried_feature_region_lies_in_its_own_template_boxes(mean_head):
    """Carried onto a moved and turned head, a voxel labelled as a feature maps back into that
    feature's boxes on the template (a voxel of slack for the resampling), not into a neighbour's."""
    transform = register_template(mean_head)
    regions = feature_regions(mean_head, transform)
    voxels = template_voxels(mean_head.data.shape, mean_head.affine, transform, template_masks().head.affine)
    for number, name in enumerate(FEATURES, start=1):
        grown = [tuple((low - 1, high + 1) for low, high in box) for box in FEATURE_BOXES[name]]
        labelled = regions == number
        assert labelled.sum() > 100 and in_boxes(voxels[labelled], grown).all(), name


def test_a_lower_variation_line_reads_the_mean_heads_homogeneous_chin_and_still_no_fill():
    """The tissue test's variation line fails the template's own intact chin (its intensities vary by
    0.14 of their mean: fat under thin skin), which is why a kept chin often reads 0 (bench/reading.py
    asks what a lower line would change); a constant or noise fill fails a lower line too."""
    data = np.asanyarray(template_masks().head.dataobj).astype(np.float32)
    chin = (np.asanyarray(template_features().dataobj) == 1 + FEATURES.index("chin")) & head_mask(data)
    assert not looks_like_tissue(data, chin)
    assert looks_like_tissue(data, chin, min_variation=0.05)
    level = float(data[chin].mean())
    noise = np.random.default_rng(0).normal(level, level / 2, data.shape).astype(np.float32)
    for fill in (np.full_like(data, level), noise):
        assert not looks_like_tissue(np.where(chin, fill, data), chin, min_variation=0.05)


def test_feature_regions_on_the_mean_head(mean_head_versions):
    shares = {name: read(scan).tissue for name, scan in mean_head_versions.items()}
    assert kept_features(shares["intact"]) == ["eyes", "nose"], shares["intact"]
    assert kept_features(shares["mask"]) == [], shares["mask"]
    assert kept_features(shares["below the eyes"]) == ["eyes"], shares["below the eyes"]
    for fill in ("constant fill", "noise fill"):  # inside the head, but not tissue
        assert kept_features(shares[fill]) == [], (fill, shares[fill])


def test_feature_regions_on_a_head_turned_45_degrees(mean_head_versions):
    """The same scans turned a further 45 degrees in the world (their affine, no resampling): read from
    a registration started straight, the defaced head's eye region held tissue (a false alarm)."""
    for name, kept in (("intact", ["eyes", "nose"]), ("mask", [])):
        scan = mean_head_versions[name]
        shares = read(Scan(scan.data, turned(scan.affine, plane_rotation(0, 1, 45)))).tissue  # about S-I
        assert kept_features(shares) == kept, (name, shares)


def test_check_anatomy_calls_a_cut_below_the_eyes_face_and_writes_the_regions(held_out_head, tmp_path, capsys):
    """On a real held-out head (not the mean head: that is the template's own face, which the
    network rightly calls `replaced`, a verdict the anatomy never overrules)."""
    scan = load_scan(held_out_head)
    transform = register_template(scan)
    for name, cut in (("below_the_eyes", below_the_eyes(scan, transform)), ("mask", face_region(scan, transform))):
        nib.save(nib.Nifti1Image(np.where(cut, 0, scan.data), scan.affine), tmp_path / f"{name}.nii.gz")
    code = main(["check", str(tmp_path), "--anatomy", "--json", "--out", str(tmp_path / "report")])
    document = json.loads(capsys.readouterr().out)
    rows = {Path(row["file"]).name: row for row in document["results"]}
    assert code == EXIT_FACE and document["anatomy"] == "always"
    overruled = [row for row in document["results"] if "network saw the face" in (row["note"] or "")]
    assert document["summary"]["overruled"] == len(overruled)
    cut = rows["below_the_eyes.nii.gz"]
    assert cut["verdict"] == "face" and cut["tissue_eyes"] >= TISSUE_MIN_SHARE
    assert rows["mask.nii.gz"]["verdict"] != "face"
    assert max(rows["mask.nii.gz"][f"tissue_{name}"] for name in ("eyes", "nose")) < TISSUE_MIN_SHARE
    header = (tmp_path / "report" / "results.tsv").read_text().splitlines()[0].split("\t")
    assert [f"tissue_{name}" for name in FEATURES] == [c for c in header if c.startswith("tissue_")]

    # check's default measures the anatomy only where it could change the answer, with the same verdicts;
    # `--no-anatomy` gives the network's own
    for mode in ("unsure", "never"):
        main(["check", str(tmp_path), "--json", *(["--no-anatomy"] if mode == "never" else [])])
        document = json.loads(capsys.readouterr().out)
        assert document["anatomy"] == mode
        for row in document["results"]:
            always = rows[Path(row["file"]).name]
            probabilities = {verdict: always[f"p_{verdict}"] for verdict in ("face", "removed", "replaced")}
            measured = row.get("tissue_eyes") is not None
            if mode == "unsure":
                assert row["verdict"] == always["verdict"]
                assert measured == needs_anatomy(probabilities, 0.5), row
            else:
                assert row["verdict"] == verdict_of(probabilities, 0.5) and not measured


def test_a_scan_whose_second_opinion_fails_is_an_error_naming_it_and_the_others_are_answered(held_out_head, tmp_path, monkeypatch):
    """check's default registers only the unsure `removed` scans; when that registration fails the
    scan is an error (exit 2 in `check`), not a silent network verdict (tried on the scan as it is and
    evened alike), and the batch carries on."""
    scan = load_scan(held_out_head)
    cut = tmp_path / "below_the_eyes.nii.gz"
    nib.save(nib.Nifti1Image(np.where(below_the_eyes(scan, register_template(scan)), 0, scan.data), scan.affine), cut)
    network = Detector(threshold=1.0, anatomy="never").predict([cut, held_out_head])  # no scan is `face` at 1.0
    assert needs_anatomy(network[0].probabilities, 1.0), network[0].probabilities

    def unregistrable(scan, seed=0, search=None):
        raise ScanError(scan.path, "registration failed (stand-in for a head the template cannot be fitted to)")

    monkeypatch.setattr("defacegan.anatomy.read", unregistrable)
    failed, other = Detector(threshold=1.0).predict([cut, held_out_head])
    assert failed.verdict is None and failed.error.startswith(f"{cut}: registration failed")
    if needs_anatomy(network[1].probabilities, 1.0):
        assert other.error
    else:
        assert other.error is None and other.verdict == network[1].verdict and other.tissue is None


def test_on_a_real_held_out_head(held_out_bundle):
    """A real IXI head on the detector's grid: its face, its face removed by pydeface's mask, and
    everything below its eyes removed."""
    bundle = held_out_bundle
    eyes = bundle.features == 1 + FEATURES.index("eyes")
    lowest_eye = np.nonzero(eyes)[2].min()
    z = np.arange(bundle.face.shape[2])[None, None, :]
    below = (z < lowest_eye - 1) & bundle.face_region.any(axis=2, keepdims=True)
    top_of_chin = np.nonzero(bundle.features == 1 + FEATURES.index("chin"))[2].max()
    versions = {"intact": bundle.face, "mask": np.where(bundle.face_region, 0, bundle.face),
                "below the eyes": np.where(below, 0, bundle.face),
                "all but the chin": np.where(bundle.face_region & (z > top_of_chin), 0, bundle.face)}
    shares = {name: read(Scan(volume.astype(np.float32), bundle.affine)).tissue for name, volume in versions.items()}
    assert {"eyes", "nose"} <= set(kept_features(shares["intact"])), shares["intact"]
    assert kept_features(shares["mask"]) == [], shares["mask"]
    # the cut keeps the eyes whole and the bridge of the nose above it: the nose region reads far less
    # than the intact one's (0.45 on this head), which the 0.35 line still counts as kept
    assert "eyes" in kept_features(shares["below the eyes"]), shares["below the eyes"]
    assert shares["below the eyes"]["nose"] < shares["intact"]["nose"] - 0.3, shares
    # a mask that stopped above the chin (shifted up, as a misregistered defacing leaves it): a face
    assert kept_features(shares["all but the chin"]) == ["chin"], shares["all but the chin"]


def test_an_overruled_verdict_says_why():
    result = CheckResult("scan.nii.gz", probabilities=REMOVED_LIKELY, answer="face", overruled=True,
                         tissue={"eyes": 0.9, "nose": 0.2, "mouth": 0.0, "chin": float("nan")})
    assert result.status == "face"
    assert "network saw the face removed (p(face) 0.10)" in result.note and "(eyes 0.90)" in result.note
    assert result.record()["tissue_eyes"] == 0.9 and result.record()["tissue_chin"] is None  # NaN is not JSON
    result = CheckResult("scan.nii.gz", probabilities=REPLACED_LIKELY, answer="face", overruled=True, texture=1.02,
                         tissue={"eyes": 0.9, "nose": 0.8, "mouth": 0.0, "chin": 0.0})
    assert "network saw the face replaced (p(face) 0.10)" in result.note and "head's own texture (1.02)" in result.note
    assert result.record()["face_texture"] == 1.02


def test_a_nod_is_taken_off_beyond_the_training_poses_of_a_straight_head_the_network_is_unsure_of_or_the_guard_referred():
    beyond = NOD_BEYOND + 5
    assert nod_to_undo(0.5, TYPICAL_NOD + beyond, False) == pytest.approx(beyond)
    assert nod_to_undo(0.5, TYPICAL_NOD - beyond, False) == pytest.approx(-beyond)
    assert nod_to_undo(0.5, TYPICAL_NOD + NOD_BEYOND - 1, False) is None  # within the training poses
    assert nod_to_undo(NETWORK_SURE, TYPICAL_NOD + beyond, False) is None
    assert nod_to_undo(NETWORK_UNSURE / 2, TYPICAL_NOD + beyond, False) is None
    assert nod_to_undo(0.5, TYPICAL_NOD + beyond, True) is None  # its axes were found by the mirror: the nod is less sure
    # a head the pose guard could not read, found upright by a registration: its nod goes, however sure the network
    assert nod_to_undo(NETWORK_UNSURE / 2, TYPICAL_NOD + beyond, False, referred=True) == pytest.approx(beyond)
    assert nod_to_undo(NETWORK_SURE, TYPICAL_NOD - beyond, False, referred=True) == pytest.approx(-beyond)
    assert nod_to_undo(NETWORK_UNSURE / 2, TYPICAL_NOD + NOD_BEYOND - 1, False, referred=True) is None
    assert nod_to_undo(0.5, TYPICAL_NOD + beyond, True, referred=True) is None


def test_a_real_head_nodded_beyond_the_training_poses_is_judged_again_with_the_nod_taken_off(held_out_head):
    """A held-out IXI head nodded 45 degrees nose up, far beyond the training poses (15): the network
    alone is unsure of its face (p(face) 0.67; nodded 30 degrees it is sure, 0.99). The registration
    reads the nod, and check's default judges the head again on a grid turned to take it off:
    `face`, surer than the network alone."""
    source = load_scan(held_out_head)
    scan = nodded(source, 45.0)[0]
    assert read(scan).nod - read(source).nod == pytest.approx(45.0, abs=5.0)
    alone, checked = Detector(anatomy="never").predict([scan])[0], Detector().predict([scan])[0]
    assert NETWORK_UNSURE <= alone.probabilities["face"] < NETWORK_SURE, alone.probabilities
    assert checked.unnodded is not None and checked.verdict == "face", checked.probabilities
    assert checked.probabilities["face"] > alone.probabilities["face"]
    result = CheckResult.from_prediction(checked, ScanFile(Path("nodded.nii.gz")))
    assert result.record()["nodded"] == pytest.approx(checked.nod - TYPICAL_NOD) and "nodded" in result.note


@pytest.mark.skipif(not COLIN27.is_file(), reason="Colin27 (Debian's mricron-data) is not installed")
def test_colin27s_smooth_intact_face_is_called_face_by_checks_default():
    """Colin27, 27 scans of one man averaged, is smooth all over, as a pasted face is: the network
    has called its intact face `replaced` (bench/outside_heads.py). Its face has the texture of the
    rest of its head; the template's face pasted onto it has not."""
    scan = load_scan(COLIN27)
    pasted = Scan(template_face_pasted(scan, register_template(scan)), scan.affine)
    intact, pasted = Detector(anatomy="always").predict([scan, pasted])
    assert intact.verdict == "face" and intact.texture >= OWN_TEXTURE, (intact.probabilities, intact.texture)
    assert intact.overruled == (intact.probabilities["face"] < 0.5)
    assert pasted.verdict == "replaced" and pasted.texture < OWN_TEXTURE - 0.2, (pasted.probabilities, pasted.texture)
