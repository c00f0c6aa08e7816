"""`train(cfg)`: compose, instantiate, fit, test on the best checkpoint, report.

Lightning models (CNN, Pix2Pix) go through a Trainer; scikit-learn voting models are fitted on
the same DataModule's views without one. Either way the run folder gets `metrics.json`, plots
and a printed table, and a W&B run is always finished so multirun jobs never log into each other.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

import hydra
import joblib
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule, seed_everything
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console

from defacegan import report
from defacegan.io import atomic_write_text
from defacegan.metrics import classification_report
from defacegan.models.cnn import MultiBranchCNN

log = logging.getLogger(__name__)

OmegaConf.register_new_resolver("path_name", lambda path: Path(str(path)).name, replace=True)
# The launch folder, resolvable before Hydra sets its runtime config: a multirun's sweep folder is
# resolved then, and `${hydra:runtime.cwd}` there failed every `python train.py -m experiment=...`.
OmegaConf.register_new_resolver("launch_dir", os.getcwd, replace=True)
OmegaConf.register_new_resolver("is_gpu", lambda accelerator: str(accelerator) in ("gpu", "cuda"), replace=True)

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


RUN_CLAIM = "run.claim"
WANDB_RUN_ID = "wandb_run_id"


def claim_output_dir(out: Path, resuming: bool) -> None:
    """Make ``out`` this run's alone: a second run started into the same folder stops here.

    Run folders are named to the microsecond, so two launches only meet in one folder when it
    is given twice (``hydra.run.dir``); only a resume (``ckpt_path=last``) may reuse one.
    """
    out.mkdir(parents=True, exist_ok=True)
    claim = out / RUN_CLAIM
    try:
        descriptor = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if not resuming:
            raise FileExistsError(
                f"{out}: another run already uses this folder ({claim.read_text().strip()}); "
                "give a new hydra.run.dir, or resume it with ckpt_path=last"
            ) from None
        claim.write_text(f"pid {os.getpid()} (resumed)\n")
        return
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"pid {os.getpid()}\n")


def wandb_run_id(out: Path) -> str:
    """The W&B run id of this run folder: made on the first start, read back on a resume."""
    path = out / WANDB_RUN_ID
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


def instantiate_loggers(cfg: DictConfig | None, out: Path) -> list[Logger]:
    """Loggers from the `logger` group.

    A W&B run without an explicit ``id`` gets the run folder's (:func:`wandb_run_id`), so a run
    resumed with ``ckpt_path=last`` goes on logging into the same W&B run.
    """
    loggers = []
    for name, conf in (cfg or {}).items():
        conf = OmegaConf.to_container(conf, resolve=True)
        if get_class(conf["_target_"]) is WandbLogger and not conf.get("id"):
            conf.update(id=wandb_run_id(out), resume="allow")
        loggers.append(instantiate(conf))
        log.info("logger %s", name)
    return loggers


def finish_wandb(loggers: list[Logger]) -> None:
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means this run folder's checkpoints/last.ckpt (resume by reusing hydra.run.dir)."""
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise FileNotFoundError(f"{last}: no checkpoint to resume (set hydra.run.dir to the earlier run's folder)")
        return str(last)
    return ckpt_path


def fit_lightning(cfg: DictConfig, model: LightningModule, datamodule, loggers: list[Logger], out: Path) -> dict | None:
    """Fit, then validate and test the best checkpoint; None in the non-zero ranks of a multi-process run."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    summary: dict = {}
    if cfg.train:
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_checkpoint(cfg.get("ckpt_path"), out))
        summary["train_seconds"] = time.perf_counter() - started
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    summary["checkpoint"] = best or None
    if trainer.world_size > 1:
        # DDP shards (and pads) the val/test sets across processes, so each would score a part:
        # rank 0 evaluates every scan exactly once on one device, the other ranks are done.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if trainer.global_rank != 0:
            return None
        trainer = instantiate(cfg.trainer, devices=1, num_nodes=1, strategy="auto", sync_batchnorm=False,
                              callbacks=callbacks, logger=loggers or False)
    if cfg.test:
        ckpt = best or None
        validated = trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt)[0]
        summary["val"] = {k.removeprefix("val/"): float(v) for k, v in validated.items()}
        started = time.perf_counter()
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)
        summary["test_seconds"] = time.perf_counter() - started
        summary.update(summarise_test(model, out, loggers if cfg.get("log_faces") else []))
    return summary


def summarise_test(model: LightningModule, out: Path, face_loggers: list[Logger]) -> dict:
    """The test part of the run summary, its files written to ``out``: a classifier's scores and
    ROC/confusion PNGs (all scans, per defacing method), or a GAN's re-facing audit (Pix2Pix as
    ``test``, the baselines by name, Pix2Pix on each defacing method) and its image grid. The grid
    shows faces: it goes to the W&B loggers among ``face_loggers`` (given only with ``log_faces``)."""
    if isinstance(model, MultiBranchCNN):
        r = model.test_results
        return report.classification_outputs(r["label"], r["probability"], r["kind"], out)
    results, by_defacing = model.test_results, model.test_results_by_defacing
    files = report.write_reface_audit(results, by_defacing, model.test_subjects, model.test_shown, out)
    images = [str(path) for path in files if path.suffix == ".png"]
    for logger in face_loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="test/reface_grid", images=images)
    return {
        "test": results.get("pix2pix", {}),
        "test_by_method": {name: scores for name, scores in results.items() if name != "pix2pix"}
        | {f"pix2pix on {kind}": scores for kind, scores in by_defacing.items()},
        "plots": images,
    }


def fit_sklearn(cfg: DictConfig, model, datamodule, loggers: list[Logger], out: Path) -> dict:
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.collect("train", passes=model.augment_passes)
    started = time.perf_counter()
    model.fit(train["views"], train["label"], train["subject"])
    summary: dict = {"train_seconds": time.perf_counter() - started, "best_params": model.best_params()}
    val = datamodule.collect("val")
    summary["val"] = classification_report(val["label"], model.predict_proba(val["views"]), val["kind"])["all"]
    if cfg.test:
        datamodule.setup("test")
        started = time.perf_counter()
        test = datamodule.collect("test")
        probability = model.predict_proba(test["views"])
        summary["test_seconds"] = time.perf_counter() - started
        summary.update(report.classification_outputs(test["label"], probability, test["kind"], out))
    if model.curves:
        curves = [model.curves_for_view(train["views"], train["label"], train["subject"], v) for v in range(train["views"].shape[1])]
        summary["plots"] = summary.get("plots", []) + [str(report.plot_curves(curves, datamodule.view_names, out / "curves.png"))]
    joblib.dump(model, out / "model.joblib")
    summary["checkpoint"] = str(out / "model.joblib")
    for logger in loggers:
        logger.log_metrics(flat_metrics(summary))
    return summary


def flat_metrics(summary: dict) -> dict[str, float]:
    """`val/f1`-style scalar keys from a summary, for loggers and sweepers."""
    flat = {}
    for stage in ("val", "test"):
        flat.update({f"{stage}/{k}": float(v) for k, v in (summary.get(stage) or {}).items() if isinstance(v, (int, float))})
    for method, scores in (summary.get("test_by_method") or {}).items():
        flat.update({f"test/{method}/{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float))})
    return flat


def train(cfg: DictConfig) -> float | None:
    """Run one experiment; return `cfg.optimized_metric` for Hydra sweepers."""
    seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # DDP's other ranks rerun this script into rank 0's folder
        claim_output_dir(out, resuming=cfg.get("ckpt_path") == "last")
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    loggers = instantiate_loggers(cfg.get("logger"), out)
    try:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        fit = fit_lightning if isinstance(model, LightningModule) else fit_sklearn
        summary = fit(cfg, model, datamodule, loggers, out)
        if summary is None:
            return None
        summary.update(run_facts(cfg, model, summary))
        atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2, default=float))
        report.print_summary(summary, out)
        return flat_metrics(summary).get(cfg.optimized_metric)
    finally:
        finish_wandb(loggers)


def run_facts(cfg: DictConfig, model, summary: dict) -> dict:
    """Identity of the run for comparison tables: model, view mode, task, inference cost."""
    test = summary.get("test") or {}
    n = test.get("n") or 0
    facts = {
        "model": hydra_choice("model"),
        "view_mode": cfg.data.get("view_mode"),
        "task": cfg.data.get("task"),
        "train_methods": list(cfg.data.get("train_methods") or []),
        "output_dir": str(Path(cfg.paths.output_dir)),
    }
    if n and "test_seconds" in summary:
        facts["inference_ms_per_scan"] = 1000 * summary["test_seconds"] / n
    return facts


def hydra_choice(group: str) -> str | None:
    """The running job's choice in a config group (e.g. model=svm), when run through Hydra."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


class ComparisonTable(Callback):
    """Hydra callback: after a multirun, collect every job's metrics.json into one table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = report.write_comparison(config.hydra.sweep.dir)
        if path is not None:
            Console().print(f"comparison table: {path}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)
