"""CycleGAN on sagittal slices: the unpaired attacker of the re-facing audit.

Pix2Pix learns from (defaced, face) pairs of one head; an attacker rarely has those. CycleGAN
(Zhu et al. 2017, junyanz/pytorch-CycleGAN-and-pix2pix; the model of the published refacing study
on IXI) learns from defaced scans and faces of *different* subjects: train batches come from
:class:`defacegan.datamodule.DefaceDataModule` with ``unpaired=True``. Validation and test stay
paired, so it is scored exactly as Pix2Pix is (it inherits Pix2Pix's evaluation and audit).

Two generators (``generator``: source → target, the re-facer; ``generator_back``: target →
source) and two unconditional PatchGANs (``discriminator`` judges targets, ``discriminator_back``
sources). Generator loss: LSGAN + ``cycle_weight`` · L1(cycle) + ``cycle_weight`` ·
``identity_weight`` · L1(identity), as in the reference; each discriminator: half the LSGAN loss
on a real and a generated image. Manual optimisation, generators then discriminators, so
``trainer.global_step`` grows by 2 per batch, as with Pix2Pix. No image pool: the discriminators
see the current batch's images.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from defacegan.models.networks import PatchGAN, UNetGenerator, gan_loss
from defacegan.models.pix2pix import Pix2Pix


class CycleGAN(Pix2Pix):
    """Unpaired image translation: two U-Net generators, two PatchGANs, adversarial + cycle + identity losses.

    Batches, networks' options, precision and test outputs as :class:`Pix2Pix` (``generator`` and
    ``discriminator`` configure both of a kind); ``optimizer_g`` trains both generators,
    ``optimizer_d`` both discriminators. The reference CycleGAN uses no dropout.
    """

    def __init__(
        self,
        size: int = 256,
        channels: int = 1,
        n_slices: int = 1,
        spacing: float = 2.0,
        grid_shape: Sequence[int] = (128, 128, 128),
        generator: Mapping[str, Any] | None = None,
        discriminator: Mapping[str, Any] | None = None,
        gan_loss: str = "lsgan",
        cycle_weight: float = 10.0,
        identity_weight: float = 0.5,
        optimizer_g: Callable[..., torch.optim.Optimizer] | None = None,
        optimizer_d: Callable[..., torch.optim.Optimizer] | None = None,
        lr_constant_epochs: int = 100,
        lr_decay_epochs: int = 0,
        bf16: bool = True,
        channels_last: bool = True,
        compile_mode: str | None = None,
    ):
        super().__init__(
            size=size, channels=channels, n_slices=n_slices, spacing=spacing, grid_shape=grid_shape,
            generator={"dropout": 0.0, **(generator or {})}, discriminator=discriminator, gan_loss=gan_loss,
            l1_weight=0.0, optimizer_g=optimizer_g, optimizer_d=optimizer_d, lr_constant_epochs=lr_constant_epochs,
            lr_decay_epochs=lr_decay_epochs, bf16=bf16, channels_last=channels_last, compile_mode=compile_mode,
        )

    def build_networks(self, generator: Mapping[str, Any], discriminator: Mapping[str, Any]) -> None:
        """Source → target and back; a PatchGAN for each domain."""
        channels, size = self.hparams.channels, self.hparams.size
        self.generator = UNetGenerator(size, channels, channels, **generator)
        self.generator_back = UNetGenerator(size, channels, channels, **generator)
        self.discriminator = PatchGAN(channels, **discriminator)
        self.discriminator_back = PatchGAN(channels, **discriminator)

    def parameter_groups(self) -> tuple:
        return (
            itertools.chain(self.generator.parameters(), self.generator_back.parameters()),
            itertools.chain(self.discriminator.parameters(), self.discriminator_back.parameters()),
        )

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_source, real_target = self.as_images(batch["source"]), self.as_images(batch["target"])
        optimizer_g, optimizer_d = self.optimizers()
        mode = self.hparams.gan_loss
        # Generators: fool both (frozen) discriminators, come back where they started, and leave
        # an image of their own output domain as it is.
        self.toggle_optimizer(optimizer_g)
        with self._autocast():
            fake_target, fake_source = self.generator(real_source), self.generator_back(real_target)
            loss_adversarial = gan_loss(self.discriminator(fake_target), True, mode) + gan_loss(
                self.discriminator_back(fake_source), True, mode
            )
            cycled_source, cycled_target = self.generator_back(fake_target), self.generator(fake_source)
            same_target, same_source = self.generator(real_target), self.generator_back(real_source)
        loss_cycle = F.l1_loss(cycled_source.float(), real_source) + F.l1_loss(cycled_target.float(), real_target)
        loss_identity = F.l1_loss(same_target.float(), real_target) + F.l1_loss(same_source.float(), real_source)
        weight = self.hparams.cycle_weight
        loss_g = loss_adversarial + weight * loss_cycle + weight * self.hparams.identity_weight * loss_identity
        self._update(optimizer_g, loss_g)
        self.untoggle_optimizer(optimizer_g)
        # Discriminators: real images of their domain against the generators' (detached) ones.
        self.toggle_optimizer(optimizer_d)
        with self._autocast():
            loss_d = 0.5 * (
                gan_loss(self.discriminator(real_target), True, mode) + gan_loss(self.discriminator(fake_target.detach()), False, mode)
            ) + 0.5 * (
                gan_loss(self.discriminator_back(real_source), True, mode)
                + gan_loss(self.discriminator_back(fake_source.detach()), False, mode)
            )
        self._update(optimizer_d, loss_d)
        self.untoggle_optimizer(optimizer_d)
        self.count_faces(batch["target"])
        losses = {"loss_d": loss_d, "loss_g": loss_g, "loss_adversarial": loss_adversarial, "loss_cycle": loss_cycle,
                  "loss_identity": loss_identity}
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()}, batch_size=len(real_source))

