"""The input contract: how a scan becomes what the detector sees, in plain torch.

One small object, saved inside the detector's checkpoint, used by training (the cache), by
``check``/``serve``/``predict`` and by the evaluation benchmark, so that every path prepares a
scan the same way:

1. **grid**: resample to an axis-aligned RAS+ grid of ``spacing`` mm and ``shape`` voxels,
   centred on the centre of the scan's field of view (trilinear; a box filter first when the
   scan is finer than the grid, so thin structures are averaged rather than aliased). Masks use
   nearest neighbour. Any orientation and oblique affine is handled by the one resampling.
2. **intensities**: negative values (resampling overshoot, signed data) clamped to 0, divided by
   the volume's robust scale (99.5th percentile of the nonzero voxels), stored as float16 —
   what the training cache holds, so check and training see the same numbers;
3. **views**: :func:`defacegan.views.compute_views` at ``view_size`` pixels, ``view_mode`` views.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from defacegan.views import VIEW_MODES, VIEW_NAMES, compute_views, robust_scale

#: The detector's answers, in logit order: a face is there; the face was removed (zeros, noise,
#: a constant, cropped); the face was replaced by tissue that is not the subject's.
VERDICTS = ("face", "removed", "replaced")


@dataclass(frozen=True)
class InputContract:
    """Scan → model input. ``spacing`` mm, ``shape`` voxels, ``view_size`` px, ``view_mode``."""

    spacing: float = 2.0
    shape: tuple[int, int, int] = (128, 128, 128)
    view_size: int = 64
    view_mode: str = "all"
    classes: tuple[str, ...] = VERDICTS

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.view_mode not in VIEW_MODES:
            raise ValueError(f"view_mode {self.view_mode!r} is not one of {sorted(VIEW_MODES)}")

    @classmethod
    def from_dict(cls, values: Mapping) -> InputContract:
        return cls(**dict(values))

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint holding it loads with ``weights_only=True``."""
        values = asdict(self)
        return {**values, "shape": list(values["shape"]), "classes": list(values["classes"])}

    @property
    def view_names(self) -> list[str]:
        return [VIEW_NAMES[i] for i in VIEW_MODES[self.view_mode]]

    @property
    def grid_affine(self) -> np.ndarray:
        """Voxel → world of the grid, up to the translation that centres it on each scan."""
        return np.diag([self.spacing] * 3 + [1.0])

    def on_grid(self, data: np.ndarray | torch.Tensor, affine: np.ndarray, *, label: bool = False) -> torch.Tensor:
        """A RAS+ (or any-orientation) volume resampled onto the grid: (X, Y, Z) float32.

        ``label``: nearest neighbour and no smoothing (masks, label maps).
        """
        volume = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data).float()
        affine = np.asarray(affine, dtype=np.float64)
        size = np.asarray(volume.shape, dtype=np.float64)
        centre = affine @ np.append((size - 1) / 2, 1.0)
        out = np.asarray(self.shape, dtype=np.float64)
        grid_to_world = self.grid_affine.copy()
        grid_to_world[:3, 3] = centre[:3] - self.spacing * (out - 1) / 2
        voxel_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        factors = [1 if label else max(1, math.floor(self.spacing / s + 1e-6)) for s in voxel_spacing]
        volume = volume[None, None]
        if any(f > 1 for f in factors):  # box filter: averages what one grid voxel covers
            volume = F.avg_pool3d(volume, kernel_size=factors, stride=factors, ceil_mode=True)
            pooled = np.diag([*factors, 1.0])
            pooled[:3, 3] = (np.asarray(factors) - 1) / 2  # pooled voxel k is centred at k*f + (f-1)/2
            affine = affine @ pooled
        to_input = np.linalg.inv(affine) @ grid_to_world  # grid voxel → input voxel
        n = volume.shape[2:]
        axes = [torch.arange(k, dtype=torch.float32) for k in self.shape]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        matrix = torch.as_tensor(to_input[:3, :3], dtype=torch.float32)
        offset = torch.as_tensor(to_input[:3, 3], dtype=torch.float32)
        voxels = points @ matrix.T + offset
        scale = torch.tensor([2.0 / max(k - 1, 1) for k in n])
        normalised = (voxels * scale - 1).flip(-1)  # grid_sample wants (z, y, x) → (W, H, D) order
        sampled = F.grid_sample(volume, normalised[None], mode="nearest" if label else "bilinear",
                                padding_mode="zeros", align_corners=True)
        return sampled[0, 0]

    @staticmethod
    def intensities(volumes: torch.Tensor) -> torch.Tensor:
        """Per volume of a (B, ...) batch: clamp at 0, divide by the robust scale, round
        through float16 (the cache's type)."""
        volumes = volumes.float().clamp_min(0)
        scale = robust_scale(volumes).reshape(-1, *[1] * (volumes.dim() - 1))
        return (volumes / scale).half().float()

    def volume(self, data: np.ndarray | torch.Tensor, affine: np.ndarray) -> torch.Tensor:
        """A scan as the model's 3D input: (1, X, Y, Z) float32 on the grid, scaled."""
        return self.intensities(self.on_grid(data, affine)[None])

    def views(self, volumes: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) grid volumes → (B, V, S, S) views in [0, 1]."""
        return compute_views(volumes, self.view_size, self.view_mode)


