"""TorchIO pipelines: the deterministic standard grid, and the train-time augmentation.

Both act on a ``tio.Subject`` holding a face volume, its defaced twin and the removed-region
mask (a LabelMap), so every spatial transform moves all three alike and the pair stays aligned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torchio as tio
from omegaconf import DictConfig, ListConfig, OmegaConf


def standard_grid(spacing: float | Sequence[float] = 2.0, shape: Sequence[int] = (128, 128, 128)) -> tio.Transform:
    """RAS+ orientation, isotropic ``spacing`` mm, centred crop/zero-pad to ``shape`` voxels.

    Deterministic: the cache and inference use it so that a scan is seen on the same grid.
    Masks (LabelMaps) are resampled with nearest neighbour, intensities linearly.
    """
    # One defensive copy of the input (by Compose), not one per step: a full-resolution scan
    # costs tens of ms to deep-copy.
    steps = [tio.ToCanonical(copy=False), tio.Resample(spacing, copy=False), tio.CropOrPad(tuple(shape), copy=False)]
    return tio.Compose(steps)


class RandomOrientation(tio.Transform):
    """Permute and flip the voxel axes of all images alike while keeping the affine.

    This is what a header that mislabels the orientation does to a volume; training with it
    makes a classifier find the (missing) face wherever it ends up. Needs a cubic grid, so
    that the shape, and therefore batching, is unchanged.
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if len(set(subject.spatial_shape)) != 1:
            raise ValueError(f"axis permutations need a cubic grid, not {subject.spatial_shape}")
        order = [1 + axis for axis in torch.randperm(3).tolist()]
        flipped = [1 + axis for axis in range(3) if torch.rand(1).item() < 0.5]
        for image in subject.get_images(intensity_only=False):
            image.set_data(image.data.permute(0, *order).flip(flipped).contiguous())
        return subject


class AcquisitionEffects(tio.Transform):
    """Apply intensity transforms as the scanner would, before defacing.

    A face volume and its defaced twin are one acquisition, so every ScalarImage of the subject
    gets the same random draws (bias field, gamma, noise field...), and voxels that are exactly
    0 (the removed face, zero padding) stay 0, as no artefact reaches data that is not there.
    """

    def __init__(self, transform: tio.Transform, **kwargs):
        super().__init__(**kwargs)
        self.transform = transform

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        seed = int(torch.randint(2**31 - 1, (1,)))
        for name, image in subject.get_images_dict(intensity_only=True).items():
            absent = image.data == 0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                changed = self.transform(tio.Subject({name: image}))[name]
            image.set_data(torch.where(absent, 0, changed.data))
        return subject


#: Config key → TorchIO transform, in the order they are applied (spatial, then intensity).
SPATIAL_AUGMENTATIONS = {
    "orientation": RandomOrientation,
    "flip": tio.RandomFlip,
    "affine": tio.RandomAffine,
    "elastic": tio.RandomElasticDeformation,
    "anisotropy": tio.RandomAnisotropy,
}
INTENSITY_AUGMENTATIONS = {
    "motion": tio.RandomMotion,
    "ghosting": tio.RandomGhosting,
    "bias_field": tio.RandomBiasField,
    "blur": tio.RandomBlur,
    "gamma": tio.RandomGamma,
    "noise": tio.RandomNoise,
}


def _plain(value):
    """Config values as TorchIO wants them: dicts, and tuples instead of (Omega) lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(item) for item in value)
    return value


def build_augmentation(cfg: Mapping | None) -> tio.Compose | None:
    """The random train-time pipeline described by ``cfg``, or None when nothing is enabled.

    ``cfg`` maps a key of SPATIAL_AUGMENTATIONS / INTENSITY_AUGMENTATIONS to the keyword
    arguments of that TorchIO transform (``p`` is its probability); an entry that is null or
    has ``p: 0`` is off. Intensity transforms only touch ScalarImages (see AcquisitionEffects).
    """
    cfg = _plain(cfg) or {}
    unknown = set(cfg) - set(SPATIAL_AUGMENTATIONS) - set(INTENSITY_AUGMENTATIONS)
    if unknown:
        known = [*SPATIAL_AUGMENTATIONS, *INTENSITY_AUGMENTATIONS]
        raise ValueError(f"unknown augmentation {sorted(unknown)}; known: {known}")

    def enabled(table: dict[str, type[tio.Transform]]) -> list[tio.Transform]:
        # One copy of the input, by the outer Compose, is enough: the steps work in place.
        return [make(**cfg[key], copy=False) for key, make in table.items() if cfg.get(key) and cfg[key].get("p", 1) > 0]

    transforms = enabled(SPATIAL_AUGMENTATIONS)
    intensity = enabled(INTENSITY_AUGMENTATIONS)
    if intensity:
        transforms.append(AcquisitionEffects(tio.Compose(intensity, copy=False), copy=False))
    return tio.Compose(transforms) if transforms else None
