"""Pix2Pix on sagittal slices: how much of a removed face can a GAN put back?

Trained on the translate batches of :class:`defacegan.datamodule.DefaceDataModule` (direction
"reface": defaced → face; "deface" works too, but the audit below assumes "reface"). The test
loop pastes the re-faced slices into the scans and scores them against the true faces on the
strictly removed region, next to two baselines (zero-fill and the mean training face at each
slice position), and measures whether a re-faced subject can be picked out among all test
subjects (:func:`defacegan.metrics.reface_audit`; ``bench/audit.py`` runs the k-fold audit over a
whole cohort). The model maps slices to slices: :func:`defacegan.reface.reface_scan` runs a
trained generator over a whole defaced 3D scan.

Steps: manual optimisation, a discriminator step then a generator step per batch, so
Lightning's ``trainer.global_step`` grows by 2 per batch: ``trainer.max_steps`` and
``ModelCheckpoint(every_n_train_steps=...)`` count 2 per batch, while epochs,
``val_check_interval``, ``log_every_n_steps`` and the loggers' step axis count batches. The
learning-rate schedule steps once per epoch, as in the reference pix2pix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule

from defacegan.metrics import image_scores, paste, reface_audit
from defacegan.models.networks import GAN_CRITERIA, ConditionalPatchDiscriminator, UNetGenerator, gan_loss

#: The reference pix2pix optimiser, for both networks.
PIX2PIX_ADAM = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


def linear_decay(epoch: int, constant_epochs: int, decay_epochs: int) -> float:
    """pix2pix's learning-rate factor: 1 for ``constant_epochs``, then linearly towards 0 over
    ``decay_epochs`` (epoch counted from 0; the last epoch runs at 1 / (decay_epochs + 1))."""
    return 1.0 - max(0, epoch + 1 - constant_epochs) / (decay_epochs + 1)


class Pix2Pix(LightningModule):
    """Conditional GAN: U-Net generator + PatchGAN on (input, output), adversarial + λ·L1 loss.

    Batches: ``source``, ``target`` (B, n, S, S), images in [-1, 1], and ``mask`` (each pixel's
    removed share); the n slices are split into network images of ``channels`` channels (1: each
    slice is its own image). ``n_slices`` is n: the average training face is kept per slice position.
    ``generator`` / ``discriminator`` are keyword arguments of :class:`UNetGenerator` /
    :class:`ConditionalPatchDiscriminator` (widths, dropout, depth; sizes and channels come from
    ``size`` and ``channels``); ``optimizer_g`` / ``optimizer_d`` build the optimizers (Hydra
    ``_partial_`` configs; default Adam, lr 2e-4, betas (0.5, 0.999)). ``lr_decay_epochs`` > 0
    turns on the linear decay after ``lr_constant_epochs``. ``spacing`` and ``grid_shape`` (the
    standard 3D grid) and ``size`` are stored in the checkpoint so that :func:`defacegan.reface.reface_scan`
    prepares scans as training did.

    On CUDA, ``bf16`` runs the networks under bfloat16 autocast, ``channels_last`` uses NHWC
    memory, and ``compile_mode`` (e.g. "max-autotune-no-cudagraphs", "reduce-overhead" for CUDA
    graphs) wraps both networks in ``torch.compile``; on the CPU all three are off.

    The test loop leaves its audit in ``test_results``, ``test_results_by_defacing``,
    ``test_subjects`` and ``test_shown`` (the first slice of each test subject: source, refaced,
    target); the training application writes them (:func:`defacegan.report.write_reface_audit`).
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
        l1_weight: float = 100.0,
        optimizer_g: Callable[..., torch.optim.Optimizer] | None = None,
        optimizer_d: Callable[..., torch.optim.Optimizer] | None = None,
        lr_constant_epochs: int = 100,
        lr_decay_epochs: int = 0,
        bf16: bool = True,
        channels_last: bool = True,
        compile_mode: str | None = None,
    ):
        super().__init__()
        if gan_loss not in GAN_CRITERIA:
            raise ValueError(f"gan_loss {gan_loss!r} is not one of {sorted(GAN_CRITERIA)}")
        # Plain data only, so that checkpoints load with torch.load(weights_only=True); the
        # optimizers are training-only and stay out of them.
        self.save_hyperparameters(ignore=["optimizer_g", "optimizer_d"], logger=False)
        self.automatic_optimization = False
        self.build_networks(generator or {}, discriminator or {})
        self.make_optimizers = (optimizer_g or PIX2PIX_ADAM, optimizer_d or PIX2PIX_ADAM)
        # Sum and count of the training targets (faces, when re-facing) at each slice position:
        # the audit's "average face" baseline, kept in the checkpoint with the weights.
        self.register_buffer("face_sum", torch.zeros(n_slices, size, size))
        self.register_buffer("face_count", torch.zeros((), dtype=torch.long))
        self._cuda_prepared = False
        self._test_outputs: list[dict] = []
        self.test_results: dict[str, dict[str, float]] = {}
        #: The Pix2Pix scores on each defacing method's scans, when the test set holds several.
        self.test_results_by_defacing: dict[str, dict[str, float]] = {}
        self.test_subjects: list[str] = []
        self.test_shown: dict[str, np.ndarray] = {}

    def build_networks(self, generator: Mapping[str, Any], discriminator: Mapping[str, Any]) -> None:
        """The U-Net generator (source → target) and the PatchGAN that judges (source, output) pairs."""
        channels = self.hparams.channels
        self.generator = UNetGenerator(self.hparams.size, channels, channels, **generator)
        self.discriminator = ConditionalPatchDiscriminator(channels, channels, **discriminator)

    def parameter_groups(self) -> tuple:
        """The parameters of the generator optimizer, then of the discriminator optimizer."""
        return self.generator.parameters(), self.discriminator.parameters()

    def count_faces(self, target: torch.Tensor) -> None:
        """Add a batch's training targets (B, n, S, S) to the average-face baseline (per slice position)."""
        with torch.no_grad():
            self.face_sum += target.float().sum(0)
            self.face_count += len(target)

    # -- devices and precision ------------------------------------------------------------
    @property
    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.hparams.bf16 and self._on_cuda)

    def setup(self, stage: str) -> None:
        """CUDA only, once: NHWC weights and ``torch.compile`` (the device is known from here on)."""
        if self._cuda_prepared or self.trainer.strategy.root_device.type != "cuda":
            return
        for network in self.children():
            if self.hparams.channels_last:
                network.to(memory_format=torch.channels_last)
            if self.hparams.compile_mode:
                network.compile(mode=self.hparams.compile_mode)
        self._cuda_prepared = True

    def as_images(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, n, S, S) slices → (B·n/C, C, S, S) network images (C = ``channels``)."""
        images = slices.reshape(-1, self.hparams.channels, *slices.shape[-2:])
        if self.hparams.channels_last and self._on_cuda:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Generated images (N, C, S, S) in [-1, 1], float32."""
        with self._autocast():
            return self.generator(source).float()

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        source, target = self.as_images(batch["source"]), self.as_images(batch["target"])
        optimizer_g, optimizer_d = self.optimizers()
        mode = self.hparams.gan_loss
        with self._autocast():
            fake = self.generator(source)
        # Discriminator: real pairs against fake ones; `detach` keeps the generator out of it.
        self.toggle_optimizer(optimizer_d)
        with self._autocast():
            loss_fake = gan_loss(self.discriminator(source, fake.detach()), False, mode)
            loss_real = gan_loss(self.discriminator(source, target), True, mode)
        loss_d = 0.5 * (loss_fake + loss_real)
        self._update(optimizer_d, loss_d)
        self.untoggle_optimizer(optimizer_d)
        # Generator: fool the discriminator (frozen by the toggle) and stay close to the target.
        self.toggle_optimizer(optimizer_g)
        with self._autocast():
            loss_adversarial = gan_loss(self.discriminator(source, fake), True, mode)
        loss_l1 = F.l1_loss(fake.float(), target)
        loss_g = loss_adversarial + self.hparams.l1_weight * loss_l1
        self._update(optimizer_g, loss_g)
        self.untoggle_optimizer(optimizer_g)
        self.count_faces(batch["target"])
        losses = {"loss_d": loss_d, "loss_g": loss_g, "loss_adversarial": loss_adversarial, "loss_l1": loss_l1}
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()}, batch_size=len(source))

    def _update(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def on_train_epoch_end(self) -> None:
        for scheduler in self._schedulers():
            scheduler.step()

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        return [] if schedulers is None else schedulers if isinstance(schedulers, list) else [schedulers]

    def configure_optimizers(self):
        optimizers = [make(parameters) for make, parameters in zip(self.make_optimizers, self.parameter_groups())]
        if not self.hparams.lr_decay_epochs:
            return optimizers
        factor = partial(
            linear_decay,
            constant_epochs=self.hparams.lr_constant_epochs,
            decay_epochs=self.hparams.lr_decay_epochs,
        )
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers]

    # -- evaluation -------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        source, target, mask = (self.as_images(batch[key]) for key in ("source", "target", "mask"))
        fake = self(source)
        pasted = image_scores(paste(fake, source, mask), target, mask)
        scores = {"loss_l1": float(F.l1_loss(fake, target))} | {name: float(values.nanmean()) for name, values in pasted.items()}
        self.log_dict({f"val/{name}": value for name, value in scores.items()}, batch_size=len(source), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        fake = self(self.as_images(batch["source"])).reshape(batch["source"].shape)
        self._test_outputs.append(
            {"subject": list(batch["subject"]), "kind": list(batch["kind"]), "refaced": fake.cpu()}
            | {key: batch[key].float().cpu() for key in ("source", "target", "mask")}
        )

    @property
    def average_face(self) -> torch.Tensor | None:
        """Mean training target at each slice position (n, S, S), or None before any training step."""
        return self.face_sum / self.face_count if self.face_count > 0 else None

    def on_test_epoch_end(self) -> None:
        """Score the whole test set (single process: the outputs are not gathered across ranks)."""
        outputs, self._test_outputs = self._test_outputs, []
        subjects, slices = group_by_subject(outputs)
        if not subjects:
            return
        source, target, mask = slices["source"], slices["target"], slices["mask"]
        candidates = {"pix2pix": slices["refaced"], "zero_fill": torch.full_like(source, -1)}
        if self.average_face is not None:  # a subject's entries (one per defacing method) lie end to end
            candidates["average_face"] = self.average_face.cpu().repeat(source.shape[1] // self.hparams.n_slices, 1, 1).expand_as(source)
        self.test_results = reface_audit(candidates, source, target, mask)
        # How reversible is each defacing method: the same audit on its scans alone.
        kinds = sorted({kind for output in outputs for kind in output["kind"]})
        self.test_results_by_defacing = {}
        for kind in kinds if len(kinds) > 1 else ():
            _, part = group_by_subject(outputs_of_kind(outputs, kind))
            self.test_results_by_defacing[kind] = reface_audit({"pix2pix": part["refaced"]}, part["source"], part["target"], part["mask"])["pix2pix"]
        by_defacing = {f"test/{kind}/{name}": value for kind, scores in self.test_results_by_defacing.items() for name, value in scores.items()}
        self.log_dict(flat_audit(self.test_results) | by_defacing)
        self.test_subjects = subjects
        self.test_shown = {key: slices[key][:, 0].numpy() for key in ("source", "refaced", "target")}


def group_by_subject(outputs: list[dict]) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Per-batch test outputs → subjects (in order of appearance) and (N, m, S, S) tensors.

    A subject's entries (one per defacing method) are concatenated along the slice axis, in
    loader order; subjects with more entries than others are cut to the common count so that
    every subject is compared at the same slice positions.
    """
    entries: dict[str, dict[str, list[torch.Tensor]]] = {}
    for output in outputs:
        for index, subject in enumerate(output["subject"]):
            for key, value in output.items():
                if torch.is_tensor(value):
                    entries.setdefault(subject, {}).setdefault(key, []).append(value[index])
    if not entries:
        return [], {}
    count = min(len(parts["refaced"]) for parts in entries.values())
    keys = [key for key, value in outputs[0].items() if torch.is_tensor(value)]
    stacked = {key: torch.stack([torch.cat(parts[key][:count]) for parts in entries.values()]) for key in keys}
    return list(entries), stacked


def outputs_of_kind(outputs: list[dict], kind: str) -> list[dict]:
    """The entries of per-batch test outputs whose ``kind`` (defacing method) is ``kind``."""
    selected = []
    for output in outputs:
        index = [i for i, entry_kind in enumerate(output["kind"]) if entry_kind == kind]
        if index:
            selected.append({key: value[index] if torch.is_tensor(value) else [value[i] for i in index] for key, value in output.items()})
    return selected


def flat_audit(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``test/ssim_face`` for Pix2Pix, ``test/<baseline>/<score>`` for the others."""
    return {
        f"test/{name}" if candidate == "pix2pix" else f"test/{candidate}/{name}": value
        for candidate, scores in results.items()
        for name, value in scores.items()
    }
