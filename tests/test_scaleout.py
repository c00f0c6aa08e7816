"""Scaling out: DDP over CPU processes, Hydra's joblib and SLURM launchers, same seed → same
metrics, and multirun jobs that never share an output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from pytorch_lightning.accelerators import CPUAccelerator
from test_train import make_cfg

from defacegan.train import CONFIG_DIR, train

ROOT = Path(CONFIG_DIR).parent
SCORES = ("val", "test", "test_by_method")  # metrics.json entries that a rerun must reproduce


def tiny_cohort(cohort: Path) -> list[str]:
    """Overrides pointing `train.py` at the generated cohort, without loader processes."""
    return [f"data.root={cohort}", "data.num_workers=0", "data.spacing=4.0", "data.shape=[40,48,44]"]


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def hydra_config(*overrides: str):
    """`python train.py <overrides> --cfg hydra`, composed in-process."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


@pytest.mark.parametrize("launcher, target", [
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
])
def test_launchers_compose(launcher, target):
    hydra = hydra_config(f"hydra/launcher={launcher}")
    assert hydra.launcher._target_ == target and get_class(target)
    assert hydra.runtime.choices["hydra/launcher"] == launcher


def test_ddp_on_cpu_uses_gloo_without_sync_batchnorm(tmp_path, synthetic_cohort):
    cfg = make_cfg(tmp_path, synthetic_cohort, "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32")
    assert cfg.trainer.sync_batchnorm is False  # SyncBatchNorm has no CPU kernel
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.world_size == 2 and isinstance(trainer.accelerator, CPUAccelerator)
    assert make_cfg(tmp_path, synthetic_cohort, "trainer=ddp").trainer.sync_batchnorm is True


def test_same_seed_gives_the_same_metrics_on_cpu(tmp_path, synthetic_cohort):
    """The first run builds the volume cache, the second reads it: neither may change the scores."""
    scores = []
    for run in ("first", "second"):
        cfg = make_cfg(tmp_path / run, synthetic_cohort, "trainer=debug", f"data.cache_dir={tmp_path / 'cache'}")
        assert cfg.trainer.deterministic is True and cfg.data.augment is not None
        train(cfg)
        summary = json.loads((tmp_path / run / "metrics.json").read_text())
        scores.append({key: summary[key] for key in SCORES})
    assert scores[0] == scores[1]


@pytest.mark.slow
def test_ddp_trains_on_two_cpu_processes_and_tests_every_scan_once(tmp_path, synthetic_cohort):
    result = run_train("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
                       "trainer.max_epochs=2", "logger=csv", *tiny_cohort(synthetic_cohort),
                       f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "Starting with 2 processes" in result.stderr + result.stdout
    run = tmp_path / "run"
    assert (run / "train_ddp_process_1.log").exists()  # the second rank ran train.py too
    summary = json.loads((run / "metrics.json").read_text())
    # The test subject's face and both defaced twins, each once (not a rank's padded shard).
    assert summary["test"]["n"] == 3 and set(summary["test_by_method"]) == {"mask", "plane"}
    assert (run / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_joblib_multirun_jobs_get_their_own_folders_and_runs(tmp_path, synthetic_cohort, logger):
    """Three jobs on two joblib workers (so a worker is reused), differing only in the seed,
    which the job folder names leave out: folders, logs and W&B runs must still be apart."""
    sweep = tmp_path / "sweep"
    run_train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2,3", "trainer=debug",
              f"logger={logger}", *tiny_cohort(synthetic_cohort), f"paths.log_dir={tmp_path}",
              f"hydra.sweep.dir={sweep}")
    jobs = sorted(path.parent for path in sweep.glob("*/metrics.json"))
    assert len(jobs) == 3 and len({job.name for job in jobs}) == 3
    for seed, job in enumerate(jobs, start=1):
        assert f"seed={seed}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert json.loads((job / "metrics.json").read_text())["output_dir"] == str(job)
        if logger == "csv":
            assert (job / "csv" / "version_0" / "metrics.csv").exists()
        else:
            [run] = list((job / "wandb").glob("offline-run-*/run-*.wandb"))  # one offline run per job
            recorded = run.read_bytes()
            assert f'"seed":{seed},'.encode() in recorded  # its own config, not a neighbour's
            assert all(f'"seed":{other},'.encode() not in recorded for other in {1, 2, 3} - {seed})
    if logger == "wandb":
        run_ids = {path.name for path in sweep.glob("*/wandb/offline-run-*")}
        assert len(run_ids) == 3
