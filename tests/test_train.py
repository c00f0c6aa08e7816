"""The experiment framework end to end: every config group composes and instantiates, and
`train(cfg)` fits, tests and reports for a Lightning model and a scikit-learn model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from defacegan.train import CONFIG_DIR, train

ROOT = Path(CONFIG_DIR).parent
GROUPS = {group: sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")) for group in ("data", "augment", "model", "trainer", "logger")}


def make_cfg(tmp_path: Path, cohort: Path, *overrides: str):
    """The real config, composed as `python train.py` would, pointed at a tiny cohort and tmp_path."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"data.root={cohort}", "data.num_workers=0", "data.spacing=4.0", "data.shape=[40,48,44]",
                       "logger=csv", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        del cfg.hydra  # as in a real run, where the task function never sees it
    return cfg


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUPS.items() for o in options if o != "sklearn"])
def test_every_config_group_option_composes_and_instantiates(tmp_path, synthetic_cohort, group, option):
    cfg = make_cfg(tmp_path, synthetic_cohort, f"{group}={option}")
    if group == "trainer":
        if option in ("gpu", "ddp"):
            assert cfg.trainer.accelerator == "gpu"  # needs CUDA to instantiate
            return
        instantiate(cfg.trainer, logger=False)
    elif group == "logger":
        assert all(instantiate(c) for c in (cfg.logger or {}).values())
    else:
        assert instantiate(cfg["data" if group == "augment" else group]) is not None  # augment fills data's keys


def test_model_sets_its_task_and_checkpoint_metric(tmp_path, synthetic_cohort):
    cfg = make_cfg(tmp_path, synthetic_cohort, "model=pix2pix")
    assert cfg.data.task == "translate" and cfg.callbacks.model_checkpoint.monitor == "val/ssim_face"
    cfg = make_cfg(tmp_path, synthetic_cohort, "model=svm")
    assert cfg.data.task == "classify"


def test_cnn_debug_run_fits_tests_and_reports(tmp_path, synthetic_cohort, capsys):
    cfg = make_cfg(tmp_path, synthetic_cohort, "trainer=debug", "data.augment=null")
    value = train(cfg)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert value == summary["val"]["f1"]
    assert set(summary["test_by_method"]) == {"mask", "plane"}
    assert summary["test"]["n"] == 3  # the test subject's face and two defaced twins
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "confusion.png").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    printed = capsys.readouterr().out
    assert "f1" in printed and "plots:" in printed


def test_sklearn_run_reports_with_curves(tmp_path, synthetic_cohort):
    cfg = make_cfg(tmp_path, synthetic_cohort, "model=logreg", "data=mean", "model.cv_folds=2", "model.augment_passes=1")
    train(cfg)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["model"] is None or summary["model"] == "logreg"
    assert len(summary["best_params"]) == 3 and summary["test"]["n"] == 3
    assert (tmp_path / "curves.png").exists() and (tmp_path / "model.joblib").exists()


def test_cfg_job_prints_the_composed_config():
    result = subprocess.run([sys.executable, "train.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "_target_: defacegan.models.cnn.MultiBranchCNN" in result.stdout


@pytest.mark.slow
def test_multirun_writes_comparison_table(tmp_path, synthetic_cohort):
    command = [sys.executable, "train.py", "-m", "model=logreg,cnn", "trainer=debug", f"data.root={synthetic_cohort}",
               "data.spacing=4.0", "data.shape=[40,48,44]", f"paths.log_dir={tmp_path}",
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
