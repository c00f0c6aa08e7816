"""CycleGAN: one training step moves all four networks, and `train.py model=cyclegan` runs end to end unpaired."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pytorch_lightning import Trainer
from support.config import tiny_overrides
from torch.utils.data import DataLoader

from defacegan.models.cyclegan import CycleGAN
from defacegan.models.networks import PatchGAN, UNetGenerator
from defacegan.reface import load_refacer
from defacegan.train import CONFIG_DIR, train

NETWORKS = ("generator", "generator_back", "discriminator", "discriminator_back")


def tiny_cyclegan() -> CycleGAN:
    return CycleGAN(size=16, spacing=4.0, grid_shape=(16, 16, 16), generator={"base_channels": 4},
                    discriminator={"base_channels": 4, "n_layers": 2})


def test_one_step_moves_all_four_networks():
    torch.manual_seed(0)
    model = tiny_cyclegan()
    assert [type(getattr(model, name)) for name in NETWORKS] == [UNetGenerator, UNetGenerator, PatchGAN, PatchGAN]
    assert model.hparams.cycle_weight == 10.0 and model.hparams.identity_weight == 0.5 and model.hparams.gan_loss == "lsgan"
    before = {name: [p.detach().clone() for p in getattr(model, name).parameters()] for name in NETWORKS}
    batch = {"source": torch.rand(4, 1, 16, 16) * 2 - 1, "target": torch.rand(4, 1, 16, 16) * 2 - 1,
             "mask": torch.zeros(4, 1, 16, 16), "subject": ["a", "b", "c", "d"], "kind": ["mask"] * 4}
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    assert trainer.global_step == 2  # one batch: a generator step and a discriminator step
    for name in NETWORKS:
        moved = [not torch.equal(old, new) for old, new in zip(before[name], getattr(model, name).parameters())]
        assert all(moved), f"{name}: {moved.count(False)} of {len(moved)} parameter tensors unchanged"
    assert model.face_count == 4 and model.average_face.shape == (1, 16, 16)
    out = model(batch["source"])
    assert out.shape == (4, 1, 16, 16) and out.dtype == torch.float32 and out.abs().max() <= 1


def test_cyclegan_debug_run_fits_unpaired_tests_and_audits(compose_cfg, tmp_path):
    cfg = compose_cfg("model=cyclegan", "trainer=debug", "data.augment=null", "data.size=32", "model.generator.base_channels=4",
                      "model.discriminator.base_channels=4")
    assert cfg.data.unpaired and cfg.data.task == "translate" and cfg.callbacks.model_checkpoint.monitor == "val/ssim_face"
    value = train(cfg)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert (summary["model"], summary["task"]) == ("cyclegan", "translate")
    assert value == summary["val"]["ssim_face"] and -1 <= value <= 1
    assert {"zero_fill", "average_face", "chance"} <= set(summary["test_by_method"])
    loaded = load_refacer(tmp_path / "checkpoints" / "last.ckpt", device="cpu")  # what `defacegan reface` loads
    assert isinstance(loaded, CycleGAN) and not loaded.training and loaded.hparams.cycle_weight == 10.0


@pytest.mark.slow
def test_a_sweep_runs_the_classifier_and_both_gans(tmp_path, synthetic_cohort):
    command = [sys.executable, "train.py", "-m", "model=cnn,pix2pix,cyclegan", "trainer=debug", "data.augment=null",
               *tiny_overrides(synthetic_cohort), "data.size=32", f"paths.log_dir={tmp_path}", "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    result = subprocess.run(command, cwd=CONFIG_DIR + "/..", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    models = {json.loads(path.read_text())["model"] for path in (tmp_path / "sweep").glob("*/metrics.json")}
    assert models == {"cnn", "pix2pix", "cyclegan"}

