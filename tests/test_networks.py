"""Pix2Pix networks: U-Net depth and shapes, the 70×70 PatchGAN, initialisation, GAN losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defacegan.models.networks import ConditionalPatchDiscriminator, UNetGenerator, gan_loss


@pytest.mark.parametrize("size", [64, 128, 256])
def test_generator_keeps_the_image_shape_with_log2_downsamplings(size):
    generator = UNetGenerator(size, base_channels=4)
    downsamplings = [m for m in generator.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(downsamplings) == math.log2(size)
    image = torch.rand(1, 1, size, size) * 2 - 1
    with torch.no_grad():
        output = generator.eval()(image)
    assert output.shape == image.shape
    assert output.abs().max() <= 1  # tanh


def test_generator_dropout_sits_in_the_wide_decoder_levels_as_in_the_reference():
    assert sum(isinstance(m, nn.Dropout) for m in UNetGenerator(256, base_channels=2).modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in UNetGenerator(64, base_channels=2).modules()) == 1
    assert not any(isinstance(m, nn.Dropout) for m in UNetGenerator(64, base_channels=2, dropout=0).modules())


def test_generator_channels_are_configurable_and_sizes_must_be_powers_of_two():
    output = UNetGenerator(32, in_channels=3, out_channels=2, base_channels=4)(torch.rand(2, 3, 32, 32))
    assert output.shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="power of two"):
        UNetGenerator(96)


def test_every_level_concatenates_its_input_with_its_output():
    generator = UNetGenerator(16, base_channels=4)
    level_1 = generator.model.model[1]  # the outermost block wraps level 1
    assert level_1(torch.rand(1, 4, 8, 8)).shape == (1, 4 + 4, 8, 8)


@pytest.mark.parametrize(("size", "patches"), [(64, 6), (128, 14), (256, 30)])
def test_patch_discriminator_judges_input_output_pairs_patch_by_patch(size, patches):
    discriminator = ConditionalPatchDiscriminator(base_channels=4)
    assert discriminator[0].conv.in_channels == 2  # cat(input, output)
    logits = discriminator(torch.rand(2, 1, size, size), torch.rand(2, 1, size, size))
    assert logits.shape == (2, 1, patches, patches)


def test_patch_discriminator_sees_70_by_70_pixels():
    discriminator = ConditionalPatchDiscriminator(base_channels=4).eval()  # eval: BatchNorm is per pixel
    condition = torch.rand(1, 1, 128, 128, requires_grad=True)
    discriminator(condition, torch.rand(1, 1, 128, 128))[0, 0, 7, 7].backward()
    rows, columns = torch.nonzero(condition.grad[0, 0], as_tuple=True)
    assert (rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) == (70, 70)


def test_weights_start_from_the_pix2pix_normal_distributions():
    generator = UNetGenerator(64)
    def weights(kinds):
        return torch.cat([m.weight.detach().flatten() for m in generator.modules() if isinstance(m, kinds)])

    convolutions, norms = weights((nn.Conv2d, nn.ConvTranspose2d)), weights(nn.BatchNorm2d)
    assert abs(convolutions.mean().item()) < 1e-3 and convolutions.std().item() == pytest.approx(0.02, rel=0.05)
    assert norms.mean().item() == pytest.approx(1.0, abs=0.01) and norms.std().item() == pytest.approx(0.02, rel=0.2)


def test_gan_losses_hide_the_real_and_fake_targets():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    assert gan_loss(torch.ones(3), True, "lsgan") == 0
    assert gan_loss(torch.zeros(3), False, "lsgan") == 0
    assert gan_loss(logits, True, "lsgan") == pytest.approx(((logits - 1) ** 2).mean().item())
    expected = F.binary_cross_entropy(torch.sigmoid(logits), torch.zeros_like(logits))
    assert gan_loss(logits, False, "vanilla") == pytest.approx(expected.item(), rel=1e-5)
    assert gan_loss(logits.bfloat16(), True, "vanilla").dtype == torch.float32
