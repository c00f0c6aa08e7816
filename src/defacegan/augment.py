"""Train-time augmentation, and the deterministic standard grid.

- TorchIO (the default, ``data.augment``) runs in the loader's CPU workers on a ``tio.Subject``
  holding a face volume, its defaced twin and the removed-region mask (a LabelMap), so every
  spatial transform moves all three alike and the pair stays aligned.
- ``data.device_augment`` runs on the transferred batch, on the GPU when there is one, for
  when CPU workers cannot keep it busy: flips, affine, smoothing and gamma, batched (MONAI layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import monai.transforms.utils as mtu
import torch
import torchio as tio
from monai.networks.layers import AffineTransform, GaussianFilter
from omegaconf import DictConfig, ListConfig, OmegaConf


def standard_grid(spacing: float | Sequence[float], shape: Sequence[int]) -> tio.Transform:
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

    ``cfg`` maps a name to a ``_target_`` block: a transform class (TorchIO's, or
    :class:`RandomOrientation`) and its keyword arguments, ``p`` its probability (see
    conf/augment/torchio.yaml); an entry that is null or has ``p: 0`` is off. Spatial transforms
    run in the order given; the intensity ones (``tio.IntensityTransform``) then run together in
    :class:`AcquisitionEffects`, so they only touch ScalarImages and share their draws.
    """
    from hydra.utils import instantiate  # training-only dependency: not at module import

    transforms, intensity = [], []
    for name, entry in (_plain(cfg) or {}).items():
        if not entry or entry.get("p", 1) <= 0:
            continue
        if "_target_" not in entry:
            raise ValueError(f"augmentation {name!r} names no _target_ (e.g. torchio.RandomAffine)")
        # One copy of the input, by the outer Compose, is enough: the steps work in place.
        transform = instantiate(entry, copy=False, _convert_="all")
        (intensity if isinstance(transform, tio.IntensityTransform) else transforms).append(transform)
    if intensity:
        transforms.append(AcquisitionEffects(tio.Compose(intensity, copy=False), copy=False))
    return tio.Compose(transforms) if transforms else None


class DeviceAugmentation:
    """Random flips, affine, smoothing and gamma on a whole batch on its device (MONAI layers).

    Batched, for a GPU that CPU loader workers cannot keep busy: each transform is a few kernels
    per batch, not a Python loop over samples (MONAI's ``AffineTransform`` resamples every sample
    with its own matrix, built by MONAI's ``create_rotate``/``create_scale``/``create_translate``).
    The rules of the TorchIO path hold: a sample's volumes (face, defaced twin, removed mask)
    move together; its intensity volumes share every intensity draw; voxels that were exactly 0
    before the intensity transforms stay 0. Each sample gets its own draws, except the smoothing
    width, drawn once per batch. Options are in TorchIO's units (mm, degrees; see
    conf/augment/device.yaml); draws come from a generator seeded with ``seed``, not the global RNG.
    """

    DEFAULTS = {
        "flip": {"prob": 0.5, "axes": (0,)},
        "affine": {"prob": 0.75, "degrees": 10.0, "scales": 0.1, "translation": 8.0},
        "smooth": {"prob": 0.2, "sigma": (0.25, 1.0)},
        "contrast": {"prob": 0.3, "gamma": (0.74, 1.35)},
    }

    def __init__(self, cfg: Mapping, keys: Sequence[str], masks: Sequence[str] = (), spacing: float = 1.0, seed: int = 0):
        cfg = _plain(cfg) or {}
        unknown = set(cfg) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown device augmentation {sorted(unknown)}; known: {list(self.DEFAULTS)}")
        self.options = {key: {**self.DEFAULTS[key], **cfg[key]} for key in self.DEFAULTS if cfg.get(key)}
        self.keys, self.masks, self.spacing, self.seed = tuple(keys), tuple(masks), float(spacing), seed
        self.generator = torch.Generator().manual_seed(seed)
        self._warps = {mode: AffineTransform(mode=mode, padding_mode="zeros", zero_centered=True) for mode in ("bilinear", "nearest")}

    def restart(self, offset: int = 0) -> None:
        """Start the random draws again from ``seed`` (+ ``offset``, e.g. a DDP rank)."""
        self.generator.manual_seed(self.seed + offset)

    def _uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def _chosen(self, key: str, n: int) -> torch.Tensor:
        """Which of ``n`` samples get transform ``key`` (CPU bool mask; none when it is off)."""
        prob = self.options[key]["prob"] if key in self.options else 0.0
        return torch.rand(n, generator=self.generator) < prob

    def _affine_matrices(self, n: int) -> torch.Tensor:
        """(n, 4, 4) voxel-space matrices (output → input, about the grid's centre)."""
        options = self.options["affine"]
        angles = self._uniform(-1, 1, n, 3) * math.radians(options["degrees"])
        scales = 1 + self._uniform(-1, 1, n, 3) * options["scales"]
        shifts = self._uniform(-1, 1, n, 3) * options["translation"] / self.spacing
        return torch.stack([
            mtu.create_translate(3, shift.tolist(), backend="torch")
            @ mtu.create_rotate(3, angle.tolist(), backend="torch")
            @ mtu.create_scale(3, scale.tolist(), backend="torch")
            for angle, scale, shift in zip(angles, scales, shifts)
        ]).float()

    def __call__(self, batch: dict) -> dict:
        """``batch`` with its ``keys`` and ``masks`` tensors (B, 1, X, Y, Z) replaced by augmented copies."""
        roles = [*self.keys, *self.masks]
        volumes = {role: batch[role].float() for role in roles}
        n, device = len(volumes[roles[0]]), volumes[roles[0]].device
        for axis in self.options.get("flip", {}).get("axes", ()):
            chosen = self._chosen("flip", n).to(device)[:, None, None, None, None]
            volumes = {role: torch.where(chosen, volume.flip(2 + axis), volume) for role, volume in volumes.items()}
        if (chosen := self._chosen("affine", n)).any():
            theta = self._affine_matrices(int(chosen.sum())).to(device)
            chosen = chosen.to(device)
            for role in roles:
                warp = self._warps["nearest" if role in self.masks else "bilinear"]
                volumes[role] = volumes[role].index_put((chosen,), warp(volumes[role][chosen], theta))
        image = torch.cat([volumes[key] for key in self.keys], dim=1)  # (B, keys, X, Y, Z): shared draws
        absent = image == 0
        if (chosen := self._chosen("smooth", n)).any():
            sigma = float(self._uniform(*self.options["smooth"]["sigma"], 1)) / self.spacing
            chosen = chosen.to(device)
            image = image.index_put((chosen,), GaussianFilter(3, sigma).to(device)(image[chosen]))
        if (chosen := self._chosen("contrast", n)).any():
            low, high = (math.log(g) for g in self.options["contrast"]["gamma"])
            gamma = torch.where(chosen, self._uniform(low, high, n).exp(), 1.0).float().to(device)
            image = image.clamp_min(0).pow(gamma[:, None, None, None, None])
        volumes.update(zip(self.keys, torch.where(absent, 0, image).split(1, dim=1)))
        return {**batch, **{role: volumes[role].to(batch[role].dtype) for role in roles}}
