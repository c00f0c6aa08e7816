"""Pix2Pix LightningModule: manual optimisation, step counting, LR decay, the test-time audit."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning import Callback, Trainer
from torch.utils.data import DataLoader

from defacegan.models.pix2pix import Pix2Pix, group_by_subject, linear_decay
from defacegan.reface import load_refacer
from defacegan.train import summarise_test

SIZE = 32


def translate_batches(n_batches: int, batch_size: int = 2, n_slices: int = 1, seed: int = 0) -> DataLoader:
    """Translate batches as the DataModule delivers them: a face, its zero-filled twin, the mask."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(n_batches):
        faces = torch.rand(batch_size, n_slices, SIZE, SIZE, generator=generator) * 2 - 1
        mask = torch.zeros_like(faces)
        mask[..., 8:24, 20:] = 1
        subjects = [f"sub-{index}{item}" for item in range(batch_size)]
        source = torch.where(mask > 0, -1.0, faces)
        kinds = [("mask", "plane")[index % 2]] * batch_size
        batches.append({"source": source, "target": faces, "mask": mask, "subject": subjects, "kind": kinds})
    return DataLoader(batches, batch_size=None)


def tiny_pix2pix(**options) -> Pix2Pix:
    return Pix2Pix(size=SIZE, generator={"base_channels": 4}, discriminator={"base_channels": 4}, **options)


def quiet_trainer(tmp_path, **options) -> Trainer:
    return Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, **options
    )


class GradientsAtEachStep(Callback):
    """Which network holds gradients when each optimizer steps, and their values."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        def grads(network):
            return [None if p.grad is None else p.grad.clone() for p in network.parameters()]

        self.steps.append(
            {"optimizer": optimizer, "generator": grads(module.generator), "discriminator": grads(module.discriminator)}
        )


def test_one_batch_steps_the_discriminator_then_the_generator_each_on_its_own_loss(tmp_path):
    model = tiny_pix2pix()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    recorder = GradientsAtEachStep()
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[recorder])
    trainer.fit(model, train_dataloaders=translate_batches(1))

    d_step, g_step = recorder.steps
    assert d_step["optimizer"] is trainer.optimizers[1] and g_step["optimizer"] is trainer.optimizers[0]
    # D's step: its loss never reached G (fake.detach()), so G holds no gradients yet.
    assert all(g is None for g in d_step["generator"])
    assert all(g is not None for g in d_step["discriminator"])
    # G's step: D was frozen by the toggle, so D's gradients are still those of its own step.
    assert all(g is not None for g in g_step["generator"])
    assert all(torch.equal(a, b) for a, b in zip(d_step["discriminator"], g_step["discriminator"]))
    changed = {name.split(".")[0] for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"generator", "discriminator"}
    assert trainer.global_step == 2  # two optimizer steps for the one batch
    faces = next(iter(translate_batches(1)))["target"]
    assert int(model.face_count) == 2 and torch.allclose(model.average_face, faces.mean(0))


def test_global_step_counts_two_per_batch_and_the_lr_decays_linearly(tmp_path):
    model = tiny_pix2pix(lr_constant_epochs=1, lr_decay_epochs=2, gan_loss="vanilla")
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=translate_batches(2))
    assert trainer.global_step == 2 * 2 * 2  # epochs × batches × optimizers
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == pytest.approx([2e-4 / 3] * 2)
    assert {"train/loss_d", "train/loss_g", "train/loss_l1", "train/loss_adversarial"} <= set(trainer.callback_metrics)


def test_linear_decay_matches_the_reference_schedule():
    factors = [linear_decay(epoch, constant_epochs=2, decay_epochs=3) for epoch in range(6)]
    assert factors == pytest.approx([1, 1, 0.75, 0.5, 0.25, 0.0])


def test_validation_logs_the_audit_scores(tmp_path):
    trainer = quiet_trainer(tmp_path)
    scores = trainer.validate(tiny_pix2pix(), dataloaders=translate_batches(2), verbose=False)[0]
    assert {"val/ssim_face", "val/psnr_face", "val/mae_face", "val/ssim_seam", "val/loss_l1"} <= set(scores)
    assert -1 <= scores["val/ssim_face"] <= 1


def test_test_loop_audits_the_whole_test_set_and_the_run_writes_its_files(tmp_path):
    model = tiny_pix2pix()
    model.face_sum += 0.5
    model.face_count += 1
    trainer = quiet_trainer(tmp_path)
    trainer.test(model, dataloaders=translate_batches(3, n_slices=2), verbose=False)

    results = model.test_results
    assert set(results) == {"pix2pix", "zero_fill", "average_face", "chance"}
    chance = {f"{matcher}_top{k}": pytest.approx(min(k, 6) / 6) for matcher in ("voxel", "surface") for k in (1, 5)}
    assert results["chance"] == chance | {"n_subjects": 6}
    assert len(set(model.test_subjects)) == 6 and all(len(images) == 6 for images in model.test_shown.values())
    summary = summarise_test(model, tmp_path / "run", face_loggers=[])
    # Zero-fill puts nothing into the strict region: both matchers rank it at chance.
    assert {key: results["zero_fill"][key] for key in chance} == chance
    written = json.loads((tmp_path / "run" / "reface_metrics.json").read_text())
    assert written["n_subjects"] == 6 and written["scores"]["pix2pix"] == pytest.approx(results["pix2pix"], nan_ok=True)
    table = (tmp_path / "run" / "reface_metrics.md").read_text().splitlines()
    assert table[0].startswith("|  | ssim_face") and len(table) == 2 + 4 + 2  # 4 candidates, Pix2Pix per method
    assert table[-1].startswith("| Pix2Pix on plane-defaced scans |")
    # Batches 0 and 2 hold mask-defaced scans, batch 1 plane-defaced ones: each method audited alone.
    by_defacing = model.test_results_by_defacing
    assert set(by_defacing) == {"mask", "plane"} == set(written["pix2pix_by_defacing"])
    assert all(written["pix2pix_by_defacing"][kind] == pytest.approx(by_defacing[kind], nan_ok=True) for kind in by_defacing)
    assert by_defacing["plane"]["voxel_top5"] == 1.0  # 2 subjects: any guess is in the top 5
    assert (tmp_path / "run" / "reface_grid.png").stat().st_size > 0
    assert summary["test"] == results["pix2pix"]
    assert set(summary["test_by_method"]) == {"zero_fill", "average_face", "chance", "pix2pix on mask", "pix2pix on plane"}
    assert summary["plots"] == [str(tmp_path / "run" / "reface_grid.png")]
    logged = trainer.callback_metrics["test/average_face/ssim_face"]
    assert logged == pytest.approx(results["average_face"]["ssim_face"])
    assert trainer.callback_metrics["test/plane/ssim_face"] == pytest.approx(by_defacing["plane"]["ssim_face"])


def test_group_by_subject_joins_each_subjects_entries_in_loader_order():
    outputs = [
        {"subject": ["a", "b"], "refaced": torch.tensor([[[[1.0]]], [[[2.0]]]])},
        {"subject": ["a", "b"], "refaced": torch.tensor([[[[3.0]]], [[[4.0]]]])},
    ]
    subjects, slices = group_by_subject(outputs)
    assert subjects == ["a", "b"]
    assert slices["refaced"].flatten().tolist() == [1.0, 3.0, 2.0, 4.0]


def test_checkpoints_hold_plain_data_and_the_average_face(tmp_path):
    model = tiny_pix2pix(grid_shape=[16, 16, 16])
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, train_dataloaders=translate_batches(1))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    torch.load(tmp_path / "model.ckpt", weights_only=True)  # no pickled code
    loaded = load_refacer(tmp_path / "model.ckpt", device="cpu")
    assert not loaded.training and loaded.hparams.size == SIZE and list(loaded.hparams.grid_shape) == [16, 16, 16]
    assert torch.equal(loaded.average_face, model.average_face)


def test_the_hydra_config_builds_the_model_for_the_reface_task(compose_cfg):
    cfg = compose_cfg("model=pix2pix", "data.size=32", "model.generator.base_channels=4", "model.discriminator.base_channels=4")
    assert (cfg.data.task, cfg.data.direction, cfg.optimized_metric) == ("translate", "reface", "val/ssim_face")
    model = instantiate(cfg.model)
    assert isinstance(model, Pix2Pix) and model.generator.image_size == 32 and not cfg.log_faces
    optimizer_g, optimizer_d = model.configure_optimizers()
    assert optimizer_g.defaults["lr"] == 2e-4 and tuple(optimizer_d.defaults["betas"]) == (0.5, 0.999)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_path_trains_in_bf16_with_nhwc_weights_and_fused_adam(tmp_path):
    fused_adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999), fused=True)
    model = tiny_pix2pix(optimizer_g=fused_adam, optimizer_d=fused_adam)
    before = [p.detach().clone() for p in model.generator.parameters()]
    trainer = Trainer(accelerator="gpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=translate_batches(2))
    convolution = model.generator.model.model[0]
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not bf16 weights
    assert any(not torch.equal(a.cpu(), b.cpu()) for a, b in zip(before, model.generator.parameters()))
    assert torch.isfinite(trainer.callback_metrics["train/loss_g"])
