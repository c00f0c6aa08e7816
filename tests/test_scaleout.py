"""Scaling out: DDP over CPU processes, Hydra's joblib and SLURM launchers, same seed → same
metrics, runs and multirun jobs that never share an output folder, and resuming a killed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import get_class, instantiate
from pytorch_lightning.accelerators import CPUAccelerator
from support.config import tiny_overrides

from defacegan.models.cnn import gather_across_ranks
from defacegan.train import CONFIG_DIR, WANDB_RUN_ID, train

ROOT = Path(CONFIG_DIR).parent
SCORES = ("val", "test", "test_by_method")  # metrics.json entries that a rerun must reproduce


def train_env() -> dict[str, str]:
    """The environment of `train.py` subprocesses: tests/ is importable (support.kill_callback)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}


def run_train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python train.py <overrides>` in a subprocess."""
    result = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=train_env())
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("launcher, target", [
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
])
def test_launchers_compose(compose_cfg, launcher, target):
    hydra = compose_cfg(f"hydra/launcher={launcher}", keep_hydra=True).hydra
    assert hydra.launcher._target_ == target and get_class(target)
    assert hydra.runtime.choices["hydra/launcher"] == launcher


def test_ddp_on_cpu_uses_gloo_without_sync_batchnorm(compose_cfg):
    cfg = compose_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32")
    assert cfg.trainer.sync_batchnorm is False  # SyncBatchNorm has no CPU kernel
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.world_size == 2 and isinstance(trainer.accelerator, CPUAccelerator)
    assert compose_cfg("trainer=ddp").trainer.sync_batchnorm is True


def test_same_seed_gives_the_same_metrics_on_cpu(compose_cfg, tmp_path):
    """The first run builds the volume cache, the second reads it: neither may change the scores."""
    scores = []
    for run in ("first", "second"):
        cfg = compose_cfg("trainer=debug", f"data.cache_dir={tmp_path / 'cache'}", output_dir=tmp_path / run)
        assert cfg.trainer.deterministic is True and cfg.data.augment.affine.p > 0  # augmented: seeded draws
        train(cfg)
        summary = json.loads((tmp_path / run / "metrics.json").read_text())
        scores.append({key: summary[key] for key in SCORES})
    assert scores[0] == scores[1]


@pytest.mark.slow
def test_ddp_trains_on_two_cpu_processes_and_tests_every_scan_once(tmp_path, synthetic_cohort):
    result = run_train("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
                       "trainer.max_epochs=2", "logger=csv", *tiny_overrides(synthetic_cohort),
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
              f"logger={logger}", *tiny_overrides(synthetic_cohort), f"paths.log_dir={tmp_path}",
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


def _gather_on_rank(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    shard = [{"probability": torch.full((2,), rank / 2), "label": torch.tensor([rank, rank]), "subject": [f"s{rank}"] * 2,
              "kind": ["face", "mask"]}]
    results[rank] = [(o["subject"], o["label"].tolist()) for o in gather_across_ranks(shard)]
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters import torch; the DDP run above checks the result end to end
def test_cnn_scores_the_whole_val_set_on_every_ddp_rank(tmp_path):
    """Both ranks see both shards, in rank order, so they log the same val/f1 (and stop alike)."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_on_rank, args=(str(tmp_path / "init"), results), nprocs=2)
        expected = [(["s0", "s0"], [0, 0]), (["s1", "s1"], [1, 1])]
        assert results[0] == expected and results[1] == expected


def test_a_run_folder_is_never_shared_unless_resumed(compose_cfg):
    cfg = compose_cfg("trainer=debug", "train=false", "test=false")
    train(cfg)
    with pytest.raises(FileExistsError, match="another run already uses this folder"):
        train(cfg)
    cfg.ckpt_path, cfg.train = "last", True
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):  # claim taken; nothing to resume
        train(cfg)


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, synthetic_cohort):
    command = [sys.executable, "train.py", "train=false", "test=false", "logger=none", *tiny_overrides(synthetic_cohort),
               f"paths.log_dir={tmp_path}"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read().decode()[-2000:]
    folders = sorted((tmp_path / "train" / "runs").iterdir())
    assert len(folders) == 3 and all((folder / "metrics.json").exists() for folder in folders)


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_step_in_the_same_wandb_run(tmp_path, synthetic_cohort):
    """SIGKILL at the start of epoch 2; `ckpt_path=last` must go on from the step of epoch 1's
    checkpoint to the same final step as four uninterrupted epochs, logging into one W&B run id."""
    run = tmp_path / "run"
    common = ["logger=wandb", "trainer.max_epochs=4", "trainer.min_epochs=4", "data.augment=null",
              *tiny_overrides(synthetic_cohort), f"paths.log_dir={tmp_path}", f"hydra.run.dir={run}"]
    killed = run_train(*common, "+callbacks.kill._target_=support.kill_callback.KillAtEpoch", "+callbacks.kill.epoch=2",
                       check=False)
    assert killed.returncode == -9 and not (run / "metrics.json").exists()
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] > 0
    steps_per_epoch = saved["global_step"] // 2

    run_train(*common, "ckpt_path=last")
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 3 and final["global_step"] == 4 * steps_per_epoch
    run_id = (run / WANDB_RUN_ID).read_text().strip()
    offline_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(path.name.endswith(f"-{run_id}") for path in offline_runs)
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 3
