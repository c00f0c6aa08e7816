"""The experiment framework end to end: every config group composes and instantiates, and
`train(cfg)` fits, tests and reports for a Lightning model and a scikit-learn model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from pytorch_lightning import Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from support.config import tiny_overrides

from defacegan.datamodule import DefaceDataModule
from defacegan.models.sklearn import ViewVoting
from defacegan.train import CONFIG_DIR, train

ROOT = Path(CONFIG_DIR).parent
GROUPS = {group: sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")) for group in ("data", "augment", "model", "trainer", "logger")}
LOGGERS = {"csv": [CSVLogger], "wandb": [WandbLogger], "none": []}


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUPS.items() for o in options if o != "sklearn"])
def test_every_config_group_option_composes_and_instantiates(compose_cfg, tmp_path, synthetic_cohort, group, option):
    cfg = compose_cfg(f"{group}={option}")
    if group == "trainer":
        if option in ("gpu", "ddp"):
            assert cfg.trainer.accelerator == "gpu"  # needs CUDA to instantiate
            return
        trainer = instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer, Trainer) and isinstance(trainer.accelerator, CPUAccelerator)
        assert trainer.max_epochs == cfg.trainer.max_epochs
        assert trainer.limit_train_batches == cfg.trainer.get("limit_train_batches", 1.0)
    elif group == "logger":
        loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
        assert [type(logger) for logger in loggers] == LOGGERS[option]
        assert all(Path(logger.save_dir) == tmp_path for logger in loggers)  # outputs stay in the run folder
    elif group == "model":
        model = instantiate(cfg.model)
        assert type(model) is get_class(cfg.model._target_)
        if isinstance(model, ViewVoting):
            assert type(model.estimator) is get_class(cfg.model.estimator._target_)
            assert model.cv_folds == cfg.model.cv_folds and set(model.param_grid) == {f"estimator__{k}" for k in cfg.model.param_grid}
        else:  # what the network sees is the data's grid, stored for inference
            assert (model.hparams.size, model.hparams.spacing) == (cfg.data.size, cfg.data.spacing)
    else:  # data, and augment, which fills data's keys
        dm = instantiate(cfg.data)
        assert isinstance(dm, DefaceDataModule) and dm.roots == [synthetic_cohort]
        assert dm.view_mode == cfg.data.view_mode and dm.spacing == 4.0 and dm.num_workers == 0
        assert (dm.augmentation is None) == (cfg.data.augment is None)
        assert (dm.device_augmentation is None) == (cfg.data.device_augment is None)


def test_model_sets_its_task_and_checkpoint_metric(compose_cfg):
    cfg = compose_cfg("model=pix2pix")
    assert cfg.data.task == "translate" and cfg.callbacks.model_checkpoint.monitor == "val/ssim_face"
    cfg = compose_cfg("model=svm")
    assert cfg.data.task == "classify" and cfg.optimized_metric == "val/f1"


def test_cnn_debug_run_fits_tests_and_reports(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg("trainer=debug", "data.augment=null")
    value = train(cfg)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert value == summary["val"]["f1"]
    assert set(summary["test_by_method"]) == {"mask", "plane"}
    assert summary["test"]["n"] == 3  # the test subject's face and two defaced twins
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "confusion.png").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    printed = capsys.readouterr().out
    assert "f1" in printed and "plots:" in printed


def test_sklearn_run_reports_with_curves(compose_cfg, tmp_path):
    cfg = compose_cfg("model=logreg", "data=mean", "model.cv_folds=2", "model.augment_passes=1", "model.param_grid.C=[0.01,1.0]")
    train(cfg)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert (summary["model"], summary["view_mode"], summary["task"]) == ("logreg", "mean", "classify")
    assert [params["C"] in (0.01, 1.0) for params in summary["best_params"]] == [True] * 3  # one search per view
    assert summary["test"]["n"] == 3
    assert (tmp_path / "curves.png").exists() and (tmp_path / "model.joblib").exists()


def test_pix2pix_debug_run_fits_tests_and_audits(compose_cfg, tmp_path):
    cfg = compose_cfg("model=pix2pix", "trainer=debug", "data.augment=null", "model.generator.base_channels=4",
                      "model.discriminator.base_channels=4")
    value = train(cfg)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert (summary["model"], summary["task"]) == ("pix2pix", "translate")
    assert value == summary["val"]["ssim_face"] and -1 <= value <= 1
    assert {"zero_fill", "average_face", "chance"} <= set(summary["test_by_method"])
    assert (tmp_path / "reface_metrics.json").exists() and (tmp_path / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow  # a fresh interpreter imports the whole stack: ~10 s for one print
def test_cfg_job_prints_the_composed_config():
    result = subprocess.run([sys.executable, "train.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "_target_: defacegan.models.cnn.MultiBranchCNN" in result.stdout


@pytest.mark.slow
def test_multirun_writes_comparison_table(tmp_path, synthetic_cohort):
    command = [sys.executable, "train.py", "-m", "model=logreg,cnn", "trainer=debug", *tiny_overrides(synthetic_cohort),
               f"paths.log_dir={tmp_path}",
               "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "logreg" in table and "cnn" in table


def test_comparison_table_has_one_row_per_job(tmp_path):
    from defacegan.report import write_comparison

    for job, model, f1 in [("0_model=logreg", "logreg", 0.9), ("1_model=cnn", "cnn", 1.0)]:
        (tmp_path / job).mkdir()
        summary = {"model": model, "view_mode": "all", "train_methods": ["mask"], "test": {"f1": f1},
                   "test_by_method": {"plane": {"f1": 0.5}}, "train_seconds": 1.5}
        (tmp_path / job / "metrics.json").write_text(json.dumps(summary))
    lines = write_comparison(tmp_path).read_text().splitlines()
    assert len(lines) == 4 and "f1_plane" in lines[0]
    assert "| logreg | all | mask |" in lines[2] and "1.0000" in lines[3]
    assert (tmp_path / "comparison.csv").read_text().count("\n") == 3


def test_a_sweep_folder_resolves_before_hydra_sets_its_runtime(monkeypatch, tmp_path):
    """`python train.py -m experiment=compare` resolves hydra.sweep.dir before any job runs, when
    Hydra's runtime config is not set yet: it must not need it (it did, and every README sweep failed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=compare"], return_hydra_config=True)
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    try:
        sweep_dir = OmegaConf.select(cfg, "hydra.sweep.dir")
    finally:
        HydraConfig.instance().cfg = saved
    assert Path(sweep_dir).parent == tmp_path / "outputs" / "train" / "multiruns"
