"""TorchIO pipelines: the standard grid, and augmentation that keeps a face and its defaced twin aligned."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio
from cohort_fixture import synthetic_head
from omegaconf import OmegaConf
from scipy.ndimage import binary_dilation, binary_erosion

from defacegan.augment import RandomOrientation, build_augmentation, standard_grid

DEFAULT_AUGMENT = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "default.yaml").augment
SPATIAL_AND_INTENSITY = {
    "flip": {"axes": ("LR",), "flip_probability": 0.5},
    "affine": {"p": 1, "scales": 0.1, "degrees": 15, "translation": 8},
    "anisotropy": {"p": 1, "downsampling": (1.5, 2.5)},
    "bias_field": {"p": 1, "coefficients": 0.5, "order": 2},
    "gamma": {"p": 1, "log_gamma": 0.3},
    "noise": {"p": 1, "std": 0.05},
}


def head_subject(seed=0, method="mask", shape=(40, 48, 44)) -> tio.Subject:
    """A generated head as the cache holds it: intensities ≈[0, 1], on a cubic 4 mm grid."""
    face, removed, affine = synthetic_head(shape, 4.0, np.random.default_rng(seed))
    face = face / np.percentile(face[face > 0], 99.5)
    images = {
        "face": tio.ScalarImage(tensor=torch.from_numpy(face)[None], affine=affine),
        "defaced": tio.ScalarImage(tensor=torch.from_numpy(face * ~removed[method])[None], affine=affine),
        "removed": tio.LabelMap(tensor=torch.from_numpy(removed[method].astype(np.uint8))[None], affine=affine),
    }
    return tio.CropOrPad((48, 48, 48))(tio.Subject(images))


def misalignment(subject: tio.Subject) -> float:
    """Mean |defaced − face × (1 − removed)| away from the removed region's edges, relative to the face."""
    face, defaced = subject["face"].numpy()[0], subject["defaced"].numpy()[0]
    removed = subject["removed"].numpy()[0].astype(bool)
    away_from_edges = ~(binary_dilation(removed, iterations=2) & ~binary_erosion(removed, iterations=2))
    error = np.abs(defaced - face * ~removed)[away_from_edges]
    return float(error.mean() / np.abs(face).mean())


def test_standard_grid_is_canonical_resampled_and_centred():
    subject = head_subject()
    flipped_affine = subject["face"].affine @ np.diag([-1, 1, 1, 1])
    flipped_affine[0, 3] += subject["face"].affine[0, 0] * (subject.spatial_shape[0] - 1)
    mirrored = tio.ScalarImage(tensor=subject["face"].data.flip(1), affine=flipped_affine)  # LAS on disk, same head
    grid = standard_grid(spacing=2.0, shape=(80, 80, 80))
    canonical, from_las = grid(subject["face"]), grid(mirrored)
    assert canonical.shape == (1, 80, 80, 80) and canonical.spacing == (2.0, 2.0, 2.0)
    assert canonical.orientation == ("R", "A", "S")
    torch.testing.assert_close(from_las.data, canonical.data)
    assert grid(subject)["removed"].data.unique().tolist() == [0, 1]  # masks stay labels


def test_nothing_enabled_means_no_augmentation():
    assert build_augmentation(None) is None
    assert build_augmentation({}) is None
    assert build_augmentation({"affine": {"p": 0.0}, "noise": None}) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augmentation({"rotate": {"p": 1}})


def test_default_config_builds_and_keeps_shapes_and_types():
    augmentation = build_augmentation(DEFAULT_AUGMENT)
    torch.manual_seed(0)
    for _ in range(3):
        out = augmentation(head_subject())
        assert out.spatial_shape == (48, 48, 48)
        assert set(out["removed"].data.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_stays_aligned_under_random_spatial_and_intensity_transforms(seed):
    torch.manual_seed(seed)
    subject = head_subject(seed, method=("mask", "plane")[seed % 2])
    assert misalignment(subject) == 0
    augmented = build_augmentation(SPATIAL_AND_INTENSITY)(subject)
    assert not torch.equal(augmented["face"].data, subject["face"].data)
    assert misalignment(augmented) < 0.01
    # The check is sensitive: a twin moved by a different draw is far off.
    apart = build_augmentation({"affine": SPATIAL_AND_INTENSITY["affine"]})
    separately = tio.Subject(face=apart(augmented["face"]), defaced=augmented["defaced"], removed=augmented["removed"])
    assert misalignment(separately) > 0.05


def test_intensity_draws_are_shared_and_zeros_stay_zero():
    intensity = {key: SPATIAL_AND_INTENSITY[key] for key in ("bias_field", "gamma", "noise")}
    intensity["motion"] = {"p": 1, "degrees": 5, "translation": 5}
    torch.manual_seed(3)
    subject = head_subject()
    subject.add_image(tio.ScalarImage(tensor=subject["face"].data.clone(), affine=subject["face"].affine), "copy")
    out = build_augmentation(intensity)(subject)
    torch.testing.assert_close(out["copy"].data, out["face"].data)  # the same draws for every image
    removed = subject["removed"].data.bool()
    assert (out["defaced"].data[removed] == 0).all()  # no artefact where the face was removed
    assert torch.equal(out["removed"].data, subject["removed"].data)  # masks are not intensity-augmented


def test_random_orientation_moves_all_images_alike_and_keeps_the_header():
    torch.manual_seed(0)
    subject = head_subject()
    seen = set()
    for _ in range(8):
        out = RandomOrientation()(subject)
        seen.add(out["face"].data.sum(dim=(0, 2, 3)).argmax().item())
        assert misalignment(out) == 0
        np.testing.assert_array_equal(out["face"].affine, subject["face"].affine)
    assert len(seen) > 1  # the data really moved
    with pytest.raises(ValueError, match="cubic"):
        RandomOrientation()(tio.CropOrPad((48, 40, 48))(subject))
