"""The standard grid, and augmentation (TorchIO on the CPU, MONAI on the device) that keeps a face
and its defaced twin aligned."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio
from support.cohort_fixture import synthetic_head
from omegaconf import OmegaConf
from scipy.ndimage import binary_dilation, binary_erosion

from defacegan.augment import DeviceAugmentation, RandomOrientation, build_augmentation, standard_grid

AUGMENT_CONF = Path(__file__).parents[1] / "conf" / "augment"
DEFAULT_AUGMENT = OmegaConf.load(AUGMENT_CONF / "torchio.yaml").augment
DEVICE_AUGMENT = OmegaConf.load(AUGMENT_CONF / "device.yaml").device_augment
SPATIAL_AND_INTENSITY = {
    "flip": {"_target_": "torchio.RandomFlip", "axes": ("LR",), "flip_probability": 0.5},
    "affine": {"_target_": "torchio.RandomAffine", "p": 1, "scales": 0.1, "degrees": 15, "translation": 8},
    "anisotropy": {"_target_": "torchio.RandomAnisotropy", "p": 1, "downsampling": (1.5, 2.5)},
    "bias_field": {"_target_": "torchio.RandomBiasField", "p": 1, "coefficients": 0.5, "order": 2},
    "gamma": {"_target_": "torchio.RandomGamma", "p": 1, "log_gamma": 0.3},
    "noise": {"_target_": "torchio.RandomNoise", "p": 1, "std": 0.05},
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
    assert build_augmentation({"affine": {"_target_": "torchio.RandomAffine", "p": 0.0}, "noise": None}) is None
    with pytest.raises(ValueError, match="names no _target_"):
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
    intensity["motion"] = {"_target_": "torchio.RandomMotion", "p": 1, "degrees": 5, "translation": 5}
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


def head_batch(n=3) -> dict[str, torch.Tensor]:
    """Generated heads as a transferred translate batch holds them: float16 volumes, uint8 masks."""
    subjects = [head_subject(seed, method=("mask", "plane")[seed % 2]) for seed in range(n)]
    dtypes = {"face": torch.float16, "defaced": torch.float16, "removed": torch.uint8}
    return {role: torch.stack([s[role].data for s in subjects]).to(dtype) for role, dtype in dtypes.items()}


def batch_subjects(batch: dict[str, torch.Tensor]) -> list[tio.Subject]:
    return [tio.Subject(face=tio.ScalarImage(tensor=batch["face"][i].float()), defaced=tio.ScalarImage(tensor=batch["defaced"][i].float()),
                        removed=tio.LabelMap(tensor=batch["removed"][i])) for i in range(len(batch["face"]))]


def test_device_augmentation_moves_the_pair_together_and_shares_intensity_draws():
    every_time = {key: {**options, "prob": 1.0} for key, options in OmegaConf.to_container(DEVICE_AUGMENT).items()}
    batch = head_batch()
    out = DeviceAugmentation(every_time, keys=("face", "defaced"), masks=("removed",), spacing=4.0, seed=0)(batch)
    for role, volume in batch.items():
        assert out[role].shape == volume.shape and out[role].dtype == volume.dtype
        assert not torch.equal(out[role], volume)
    assert set(out["removed"].unique().tolist()) == {0, 1}
    for subject in batch_subjects(out):
        assert misalignment(subject) < 0.01
        assert (subject["defaced"].data[binary_erosion(subject["removed"].numpy(), iterations=1)] == 0).all()
    # The check is sensitive: the twin moved by another draw is far off.
    apart = DeviceAugmentation({"affine": every_time["affine"]}, keys=("face",), spacing=4.0, seed=1)(out)
    assert all(misalignment(subject) > 0.05 for subject in batch_subjects(apart))


def test_device_augmentation_draws_per_sample():
    """Batched, yet each sample gets its own flip, affine and gamma (the same head twice differs)."""
    head = head_batch(1)
    twice = {role: volume.repeat(2, 1, 1, 1, 1) for role, volume in head.items()}
    every_time = {"affine": {"prob": 1.0}, "contrast": {"prob": 1.0}}
    out = DeviceAugmentation(every_time, keys=("face", "defaced"), masks=("removed",), spacing=4.0)(twice)
    assert not torch.equal(out["face"][0], out["face"][1]) and not torch.equal(out["removed"][0], out["removed"][1])


def test_a_batch_augmented_a_part_at_a_time_is_the_batch_augmented_whole():
    """Drawing poses a head's volumes a few at a time with the draws made for all of them: every
    sample comes out as in the whole, to the bit, smoothed ones too (a batched convolution's
    rounding depends on the batch's size)."""
    batch = head_batch(4)
    every_time = {key: {**options, "prob": 1.0} for key, options in OmegaConf.to_container(DEVICE_AUGMENT).items()}
    augmentation = DeviceAugmentation({**every_time, "invert": {"prob": 0.5}}, keys=("face", "defaced"), masks=("removed",), spacing=4.0, seed=3)
    draws = augmentation.draw(4)
    assert draws.sigma and draws.smoothed.all() and draws.gamma is not None
    whole = augmentation.apply(batch, draws)
    for size in (1, 3):
        parts = [augmentation.apply({role: volume[i : i + size] for role, volume in batch.items()}, draws[i : i + size]) for i in range(0, 4, size)]
        for role in batch:
            assert torch.equal(torch.cat([part[role] for part in parts]), whole[role])
    augmentation.restart()
    for role, volume in augmentation(batch).items():  # a call is its draws, applied
        assert torch.equal(volume, whole[role])


def test_inversion_makes_a_t2w_like_contrast_and_keeps_the_air():
    """Inside the head the darkest tissue becomes the brightest; exact zeros (air, a removed
    face) stay zero, so a defaced T2w-like scan is still defaced."""
    batch = head_batch(1)
    out = DeviceAugmentation({"invert": {"prob": 1.0}}, keys=("face", "defaced"), masks=("removed",), spacing=4.0)(batch)
    face, inverted = batch["face"][0, 0].float(), out["face"][0, 0].float()
    inside = face > 0.1 * torch.quantile(face[face > 0], 0.995)
    assert torch.equal(inverted[face == 0], face[face == 0])
    assert torch.corrcoef(torch.stack([face[inside], inverted[inside]]))[0, 1] < -0.9
    assert (out["defaced"][0, 0][batch["removed"][0, 0].bool()] == 0).all()


def test_device_augmentation_draws_from_its_seed():
    batch = head_batch(2)
    augmentation = DeviceAugmentation(DEVICE_AUGMENT, keys=("face", "defaced"), masks=("removed",), spacing=4.0, seed=5)
    first = augmentation(batch)["face"]
    assert not torch.equal(augmentation(batch)["face"], first)  # draws go on
    augmentation.restart()
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(augmentation(batch)["face"], first)
    other_seed = DeviceAugmentation(DEVICE_AUGMENT, keys=("face", "defaced"), masks=("removed",), spacing=4.0, seed=6)
    assert not torch.equal(other_seed(batch)["face"], first)
    with pytest.raises(ValueError, match="unknown device augmentation"):
        DeviceAugmentation({"elastic": {"prob": 1}}, keys=("face",))
