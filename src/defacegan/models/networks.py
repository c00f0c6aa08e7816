"""Pix2Pix and CycleGAN networks: the U-Net generator, the PatchGAN discriminator, the GAN loss.

They follow the reference pix2pix (Isola et al. 2017, junyanz/pytorch-CycleGAN-and-pix2pix):
4×4 convolutions of stride 2, BatchNorm, LeakyReLU(0.2) going down and ReLU going up, weights
drawn from N(0, 0.02) (BatchNorm scales from N(1, 0.02)). Images are (B, C, S, S) in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from monai.networks.nets.patchgan_discriminator import normal_init
from torch import nn

#: Channel growth stops at this multiple of the first level's width (512 for 64).
MAX_WIDTH_FACTOR = 8
#: Levels this deep (0 = outermost) and above the bottleneck get dropout, as in the reference.
FIRST_DROPOUT_LEVEL = 4


class UNetSkipBlock(nn.Module):
    """One U-Net level: downsample, the deeper levels (``inner``), upsample, then concatenate the
    level's own input (the skip connection). Built recursively from the bottleneck outwards.
    """

    def __init__(
        self,
        outer_channels: int,
        inner_channels: int,
        inner: UNetSkipBlock | None = None,
        in_channels: int | None = None,
        outermost: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer_channels, inner_channels, 4, stride=2, padding=1, bias=False)
        if inner is None:  # bottleneck: 1×1 at the full depth, nothing to normalise over space
            up = nn.ConvTranspose2d(inner_channels, outer_channels, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, nn.BatchNorm2d(outer_channels)]
        elif outermost:
            up = nn.ConvTranspose2d(2 * inner_channels, outer_channels, 4, stride=2, padding=1)
            layers = [down, inner, nn.ReLU(), up, nn.Tanh()]
        else:
            up = nn.ConvTranspose2d(2 * inner_channels, outer_channels, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2), down, nn.BatchNorm2d(inner_channels), inner,
                      nn.ReLU(), up, nn.BatchNorm2d(outer_channels)]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], 1)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: log2(image_size) downsamplings, so the bottleneck is 1×1 (8 levels at 256).

    Widths are ``base_channels`` × 1, 2, 4, 8, 8, …; the 8×-wide decoder levels above the
    bottleneck use ``dropout`` (pix2pix's only noise source). Output: tanh, in [-1, 1].
    Inputs must be ``image_size``² (the depth is fixed at construction).
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        dropout: float = 0.5,
    ):
        super().__init__()
        levels = round(math.log2(image_size))
        if image_size != 2**levels or levels < 2:
            raise ValueError(f"image_size must be a power of two ≥ 4, not {image_size}")
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        widths = [base_channels * min(2**level, MAX_WIDTH_FACTOR) for level in range(levels)]
        block = UNetSkipBlock(widths[-2], widths[-1])
        for level in range(levels - 2, 0, -1):
            block = UNetSkipBlock(
                widths[level - 1], widths[level], block, dropout=dropout if level >= FIRST_DROPOUT_LEVEL else 0.0
            )
        self.model = UNetSkipBlock(out_channels, widths[0], block, in_channels=in_channels, outermost=True)
        self.apply(normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchGAN(PatchDiscriminator):
    """The reference PatchGAN: judges its input images, concatenated along channels, patch by patch.

    MONAI's PatchDiscriminator has the reference layout (stride-2 convs, then one of stride 1 and
    a 1-channel output conv; BatchNorm except on the first layer); ``n_layers=3`` gives the 70×70
    receptive field and, for 256² inputs, a 30×30 map of logits. Unlike MONAI's, ``forward``
    returns only the logits, not every intermediate feature map. CycleGAN judges one image.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 64, n_layers: int = 3):
        super().__init__(
            spatial_dims=2,
            channels=base_channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=n_layers,
            norm="BATCH",
        )

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        return nn.Sequential.forward(self, torch.cat(images, 1))


class ConditionalPatchDiscriminator(PatchGAN):
    """pix2pix's PatchGAN, conditioned on the input: ``forward(condition, image)`` judges ``cat(condition, image)``."""

    def __init__(
        self, condition_channels: int = 1, image_channels: int = 1, base_channels: int = 64, n_layers: int = 3
    ):
        super().__init__(condition_channels + image_channels, base_channels, n_layers)


#: ``gan_loss`` modes: least squares (LSGAN) or the original cross-entropy on logits.
GAN_CRITERIA = {"lsgan": F.mse_loss, "vanilla": F.binary_cross_entropy_with_logits}


def gan_loss(logits: torch.Tensor, real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of discriminator ``logits`` against an all-real or all-fake target.

    Computed in float32. (MONAI's PatchAdversarialLoss is not used: its BCE is sigmoid + BCELoss,
    which autocast refuses, and its least squares puts a LeakyReLU on the logits by default.)
    """
    logits = logits.float()
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return GAN_CRITERIA[mode](logits, target)
