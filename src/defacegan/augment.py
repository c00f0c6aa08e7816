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
from dataclasses import dataclass

import monai.transforms.utils as mtu
import torch
import torch.nn.functional as F
import torchio as tio
from monai.networks.layers import GaussianFilter
from monai.networks.layers.convutils import gaussian_1d
from monai.networks.utils import normalize_transform
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


def t2w_like(image: torch.Tensor, floor: float = 0.1) -> torch.Tensor:
    """A T2w-like contrast from a T1w one, per sample of a (B, ...) batch: intensities above
    ``floor`` of the sample's 99.5th percentile flipped (dark fluid becomes bright), the air and
    what is below kept as it is. ``DeviceAugmentation``'s ``invert``, and the benchmarks' T2w-like heads."""
    flat = image.flatten(1)
    scale = torch.quantile(flat[:, :: max(1, flat.shape[1] // 2**16)], 0.995, dim=1).clamp_min(1e-6)
    scale = scale.reshape(-1, *[1] * (image.dim() - 1))
    inside = image > floor * scale
    return torch.where(inside, (1.1 * scale - image).clamp_min(floor * scale), image)


@dataclass
class PoseDraws:
    """:class:`DeviceAugmentation`'s random draws for a batch: per sample, but the smoothing width."""

    flips: torch.Tensor  # (B, 3) bool: the axes mirrored
    warped: torch.Tensor  # (B,) bool: given an affine
    theta: torch.Tensor | None  # (B, 4, 4) float64 voxel matrices (output -> input) of the warped, the flips in them
    smoothed: torch.Tensor  # (B,) bool
    sigma: float | None  # the smoothing width (voxels), one for the batch
    inverted: torch.Tensor  # (B,) bool: made T2w-like
    gamma: torch.Tensor | None  # (B,) float32 (1: none), None when no sample of the batch got one

    def __getitem__(self, rows: slice) -> PoseDraws:
        """The draws of samples ``rows``."""
        return PoseDraws(self.flips[rows], self.warped[rows], None if self.theta is None else self.theta[rows], self.smoothed[rows],
                         self.sigma, self.inverted[rows], None if self.gamma is None else self.gamma[rows])


class DeviceAugmentation:
    """Random flips, affine, smoothing, T2w-like inversion and gamma on a whole batch on its device.

    Batched, for a GPU that CPU loader workers cannot keep busy: each transform is a few kernels
    per batch, not a Python loop over samples (one ``grid_sample`` resamples every sample with its
    own matrix, built by MONAI's ``create_rotate``/``create_scale``/``create_translate``), but the
    smoothing, one smoothed sample at a time, so that no sample's result depends on its batch
    (:meth:`apply` on a part of a batch gives its samples to the bit).
    The rules of the TorchIO path hold: a sample's volumes (face, defaced twin, removed mask)
    move together; its intensity volumes share every intensity draw; voxels that were exactly 0
    before the intensity transforms stay 0. Each sample gets its own draws, except the smoothing
    width, drawn once per batch. Options are in TorchIO's units (mm, degrees; see
    conf/augment/device.yaml); draws come from a generator seeded with ``seed``, not the global RNG.

    It can work on a slab: given the grid planes (along X, the sagittal axis) a batch holds and
    the planes wanted, it resamples only those planes of the augmented grid, exactly as from the
    whole volume (:meth:`read_planes` says which planes the wanted ones can draw on). A flip
    without an affine is a plane lookup, not a resampling, so such samples stay exact.
    """

    DEFAULTS = {
        "flip": {"prob": 0.5, "axes": (0,)},
        "affine": {"prob": 0.75, "degrees": 10.0, "scales": 0.1, "translation": 8.0},
        "smooth": {"prob": 0.2, "sigma": (0.25, 1.0)},
        "contrast": {"prob": 0.3, "gamma": (0.74, 1.35)},
        "invert": {"prob": 0.0, "floor": 0.1},
    }

    def __init__(self, cfg: Mapping, keys: Sequence[str], masks: Sequence[str] = (), spacing: float = 1.0, seed: int = 0):
        cfg = _plain(cfg) or {}
        unknown = set(cfg) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown device augmentation {sorted(unknown)}; known: {list(self.DEFAULTS)}")
        self.options = {key: {**self.DEFAULTS[key], **cfg[key]} for key in self.DEFAULTS if cfg.get(key)}
        self.keys, self.masks, self.spacing, self.seed = tuple(keys), tuple(masks), float(spacing), seed
        self.generator = torch.Generator().manual_seed(seed)

    def restart(self, offset: int = 0) -> None:
        """Start the random draws again from ``seed`` (+ ``offset``, e.g. a DDP rank)."""
        self.generator.manual_seed(self.seed + offset)

    @staticmethod
    def _reach(sigma: float | None) -> int:
        """Voxels on each side that MONAI's truncated Gaussian of ``sigma`` voxels reaches (0: none)."""
        return len(gaussian_1d(torch.tensor(sigma))) // 2 if sigma else 0

    @property
    def smoothing_radius(self) -> int:
        """Planes on each side that the widest smoothing kernel reaches."""
        return self._reach(max(self.options["smooth"]["sigma"]) / self.spacing if "smooth" in self.options else None)

    def read_planes(self, planes: tuple[int, int], shape: Sequence[int]) -> tuple[int, int]:
        """The grid planes ``[lo, hi)`` along X that augmented planes ``[start, stop)`` of a grid of
        ``shape`` voxels can draw on: the planes themselves, their mirror under a flip, and the
        reach of the largest rotation, scaling and shift (plus one plane for linear interpolation).

        A bound, not an estimate: the first row of MONAI's rotation (X·Y·Z order) starts with
        cos θy cos θz ≥ cos²θ, so its other two entries have a norm ≤ √(1 − cos⁴θ).
        """
        extent, depth, height = shape
        centre = (extent - 1) / 2
        radius = self.smoothing_radius
        start, stop = max(0, planes[0] - radius), min(extent, planes[1] + radius)
        lo, hi = start, stop
        if 0 in self.options.get("flip", {}).get("axes", ()):
            lo, hi = min(lo, extent - stop), max(hi, extent - start)
        if "affine" in self.options:
            options = self.options["affine"]
            angle = min(math.radians(options["degrees"]), math.pi / 2)
            tilt = math.sqrt(1 - math.cos(angle) ** 4)
            across = max(abs(start - centre), abs(stop - 1 - centre))
            reach = (1 + options["scales"]) * (across + tilt * math.hypot((depth - 1) / 2, (height - 1) / 2))
            reach += options["translation"] / self.spacing
            lo, hi = min(lo, math.floor(centre - reach)), max(hi, math.ceil(centre + reach) + 1)
        return max(0, lo), min(extent, hi)

    def _uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def _chosen(self, key: str, n: int) -> torch.Tensor:
        """Which of ``n`` samples get transform ``key`` (CPU bool mask; none when it is off)."""
        prob = self.options[key]["prob"] if key in self.options else 0.0
        return torch.rand(n, generator=self.generator) < prob

    def _affine_matrices(self, n: int) -> torch.Tensor:
        """(n, 4, 4) voxel-space matrices (output → input, about the grid's centre), float64."""
        options = self.options["affine"]
        angles = self._uniform(-1, 1, n, 3) * math.radians(options["degrees"])
        scales = 1 + self._uniform(-1, 1, n, 3) * options["scales"]
        shifts = self._uniform(-1, 1, n, 3) * options["translation"] / self.spacing
        return torch.stack([
            mtu.create_translate(3, shift.tolist(), backend="torch")
            @ mtu.create_rotate(3, angle.tolist(), backend="torch")
            @ mtu.create_scale(3, scale.tolist(), backend="torch")
            for angle, scale, shift in zip(angles, scales, shifts)
        ]).double()

    def draw(self, n: int) -> PoseDraws:
        """The random draws for a batch of ``n`` samples, in the order the generator gives them."""
        flips = torch.zeros(n, 3, dtype=torch.bool)
        for axis in self.options.get("flip", {}).get("axes", ()):
            flips[:, axis] = self._chosen("flip", n)
        warped = self._chosen("affine", n)
        theta = None
        if warped.any():
            # A flip before the affine is the affine of the mirrored grid: one resampling for both.
            matrices = self._affine_matrices(int(warped.sum()))
            mirror = torch.diag_embed(torch.cat([1 - 2 * flips[warped].double(), torch.ones(len(matrices), 1, dtype=torch.float64)], 1))
            theta = torch.zeros(n, 4, 4, dtype=torch.float64)
            theta[warped] = mirror @ matrices
        smoothed, sigma = self._chosen("smooth", n), None
        if smoothed.any():
            sigma = float(self._uniform(*self.options["smooth"]["sigma"], 1)) / self.spacing
        inverted = self._chosen("invert", n) if "invert" in self.options else torch.zeros(n, dtype=torch.bool)
        gamma, chosen = None, self._chosen("contrast", n)
        if chosen.any():
            low, high = (math.log(g) for g in self.options["contrast"]["gamma"])
            gamma = torch.where(chosen, self._uniform(low, high, n).exp(), 1.0).float()
        return PoseDraws(flips, warped, theta, smoothed, sigma, inverted, gamma)

    def __call__(self, batch: dict, first: int = 0, planes: tuple[int, int] | None = None, extent: int | None = None) -> dict:
        """``batch`` with its ``keys`` and ``masks`` tensors (B, 1, X, Y, Z) replaced by augmented copies.

        The tensors hold grid planes ``[first, first + X)`` of a grid ``extent`` planes wide along
        X (default: the whole grid); the result holds augmented planes ``planes`` = ``[start, stop)``
        (default: all of them), which must lie within :meth:`read_planes` of what is held.
        """
        return self.apply(batch, self.draw(len(batch[self.keys[0]])), first, planes, extent)

    def apply(self, batch: dict, draws: PoseDraws, first: int = 0, planes: tuple[int, int] | None = None,
              extent: int | None = None) -> dict:
        """:meth:`__call__` with the draws given: a batch drawn for at once can be augmented a part at
        a time (``draws[rows]``), each sample as it would have been in the whole."""
        roles = [*self.keys, *self.masks]
        device, extent = batch[roles[0]].device, extent or batch[roles[0]].shape[2]
        start, stop = planes or (0, extent)
        # Smoothed samples need the planes next to the wanted ones; the others only those.
        radius = self._reach(draws.sigma)
        out = (max(0, start - radius), min(extent, stop + radius))
        volumes = {role: self._lookup(batch[role], draws.flips, first, out, extent).float() for role in roles}
        if draws.theta is not None:
            for rows, span in ((draws.warped & draws.smoothed, out), (draws.warped & ~draws.smoothed, (start, stop))):
                if rows.any():
                    resampled = self._resample(batch, rows.to(device), draws.theta[rows], first, span, extent)
                    for role, value in resampled.items():
                        volumes[role][rows.to(device), :, span[0] - out[0] : span[1] - out[0]] = value
        image = torch.cat([volumes[key] for key in self.keys], dim=1)  # (B, keys, X, Y, Z): shared draws
        absent = image == 0
        if draws.sigma and draws.smoothed.any():
            smooth = GaussianFilter(3, draws.sigma).to(device)
            for row in torch.nonzero(draws.smoothed).flatten().tolist():  # one at a time: a batched
                image[row : row + 1] = smooth(image[row : row + 1])  # convolution's rounding depends on the batch's size
        if draws.inverted.any():
            chosen = draws.inverted.to(device)
            image = image.index_put((chosen,), t2w_like(image[chosen], self.options["invert"]["floor"]))
        if draws.gamma is not None:
            image = image.clamp_min(0).pow(draws.gamma.to(device)[:, None, None, None, None])
        volumes.update(zip(self.keys, torch.where(absent, 0, image).split(1, dim=1)))
        kept = slice(start - out[0], stop - out[0])
        return {**batch, **{role: volumes[role][:, :, kept].to(batch[role].dtype) for role in roles}}

    def _resample(self, batch: dict, rows: torch.Tensor, theta: torch.Tensor, first: int, span: tuple[int, int], extent: int) -> dict:
        """Planes ``span`` of the samples ``rows`` warped by their voxel matrices ``theta``: one
        sampling grid for all volumes of a sample, linear for intensities, nearest for masks."""
        held = batch[self.keys[0]].shape
        theta = self._slab_matrices(theta, first, held, span, extent)
        axes = [2, 1, 0]  # grid_sample's coordinates run (Z, Y, X) over a (X, Y, Z) tensor
        theta = theta[:, axes][:, :, [*axes, 3]][:, :3].float().to(batch[self.keys[0]].device)
        grid = F.affine_grid(theta, [int(rows.sum()), 1, span[1] - span[0], *held[3:]], align_corners=False)
        return {
            role: F.grid_sample(batch[role][rows].float(), grid, padding_mode="zeros",
                                mode="nearest" if role in self.masks else "bilinear", align_corners=False)
            for role in (*self.keys, *self.masks)
        }

    @staticmethod
    def _lookup(volumes: torch.Tensor, flips: torch.Tensor, first: int, out: tuple[int, int], extent: int) -> torch.Tensor:
        """Grid planes ``out`` of each sample, mirrored along the axes ``flips`` (B, 3) marks: exact."""
        wanted = torch.arange(*out)
        index = torch.where(flips[:, :1], extent - 1 - wanted, wanted) - first  # (B, planes)
        if index.min() < 0 or index.max() >= volumes.shape[2]:
            raise ValueError(f"planes {out} (or their mirror) are not among the {volumes.shape[2]} planes held from {first}")
        planes = volumes[torch.arange(len(volumes))[:, None], :, index.to(volumes.device)].transpose(1, 2)
        for axis in (1, 2):
            chosen = flips[:, axis].to(volumes.device)[:, None, None, None, None]
            planes = torch.where(chosen, planes.flip(2 + axis), planes)
        return planes

    @staticmethod
    @staticmethod
    def _slab_matrices(theta: torch.Tensor, first: int, held: Sequence[int], out: tuple[int, int], extent: int) -> torch.Tensor:
        """Voxel matrices about the whole grid's centre (output → input) → the normalised matrices
        ``grid_sample`` takes between the held planes and the planes ``out``. Voxel centres map
        exactly, whatever the two tensors' sizes; the held planes, not the ones a sample reaches,
        are the input, so that a sample is resampled alike in any batch."""
        centre = torch.tensor([(extent - 1) / 2, *[(n - 1) / 2 for n in held[3:]]], dtype=torch.float64)
        to_input = mtu.create_translate(3, (centre - torch.tensor([first, 0.0, 0.0], dtype=torch.float64)).tolist(), backend="torch").double()
        from_output = mtu.create_translate(3, (torch.tensor([out[0], 0.0, 0.0], dtype=torch.float64) - centre).tolist(), backend="torch").double()
        held_norm = normalize_transform(tuple(held[2:]), dtype=torch.float64, align_corners=False)
        out_norm = normalize_transform((out[1] - out[0], *held[3:]), dtype=torch.float64, align_corners=False)
        return held_norm @ to_input @ theta @ from_output @ torch.linalg.inv(out_norm)
