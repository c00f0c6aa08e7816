"""End-to-end training throughput against the pure model step, for the CNN, Pix2Pix and CycleGAN.

End to end is what `python train.py` does per batch: cached volumes (manifest → standard-grid
cache, built before timing) → augmentation (TorchIO in the loader workers, or MONAI on the
device, or none) → transfer → views / sagittal slices → training step. The pure step trains the
same model on one batch of model inputs that already sits on the device. Both run under a
Lightning Trainer built from the real Hydra configs (trainer=gpu when CUDA is there, else cpu),
and both are timed over the same number of batches after a warm-up. The ratio says whether the
data path keeps the device busy (target: ≥ 80 %); "data path alone" (the loop without a model)
is the ceiling that end to end can reach, however fast the device's step.

    python bench/throughput.py [--root data/demo] [--models cnn pix2pix cyclegan] [--augment none torchio device]
                               [--steps 20] [--warmup 3] [--override data.num_workers=0 ...]

Sagittal slices (Pix2Pix, CycleGAN) are read as slabs: only the planes the slices can draw on
under the augmentation (all of them under TorchIO's). On a CPU the GANs' networks are narrowed
and the slices made smaller (see CPU_OVERRIDES), or a run would take hours; on CUDA the configs
are used as they are. Prints a table with each row's share of the pure step, writes JSON
(default bench/results/throughput.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import runpy
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pytorch_lightning.utilities import move_data_to_device
from rich.console import Console
from rich.table import Table
from timing import StepTimer, synchronize
from torch.utils.data import DataLoader

from defacegan.train import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
#: The GANs on a CPU: 64² slices and 16 base channels instead of 256² and 64.
GAN_ON_CPU = ["data.size=64", "model.generator.base_channels=16", "model.discriminator.base_channels=16"]
CPU_OVERRIDES = {"pix2pix": GAN_ON_CPU, "cyclegan": GAN_ON_CPU}


def compose_run(model: str, augment: str, root: Path, output_dir: Path, overrides: list[str]):
    cuda = torch.cuda.is_available()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[
            f"model={model}", f"augment={augment}", f"data.root={root}", f"trainer={'gpu' if cuda else 'cpu'}",
            "logger=none", f"paths.output_dir={output_dir}", *([] if cuda else CPU_OVERRIDES.get(model, [])), *overrides,
        ])


def samples_per_second(cfg, model, warmup: int, steps: int, **fit_inputs) -> float:
    """Training samples/s over ``steps`` batches after ``warmup``, under the config's Trainer."""
    timer = StepTimer(warmup, steps)
    trainer = instantiate(cfg.trainer, max_epochs=-1, max_steps=-1, min_epochs=None, limit_val_batches=0,
                          num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[timer])
    trainer.fit(model, **fit_inputs)
    return cfg.data.batch_size * steps / timer.seconds


def data_path_rate(datamodule, device: torch.device, warmup: int, steps: int) -> float:
    """Samples/s of the data path alone (loader, transfer, augmentation, views; no model): the
    most that end to end can reach with a faster device step."""
    def batches():
        loader = datamodule.train_dataloader()  # one loader, as a Trainer keeps: its workers persist across epochs
        while True:
            yield from loader

    stream, seconds = batches(), 0.0
    for index in range(warmup + steps):
        started = time.perf_counter()
        datamodule.model_inputs(move_data_to_device(next(stream), device), augment=True)
        synchronize(device)
        if index >= warmup:
            seconds += time.perf_counter() - started
    return datamodule.batch_size * steps / seconds


def pure_step_inputs(datamodule, device: torch.device) -> DataLoader:
    """One train batch of model inputs on the device, served again and again (no loading, no augmentation)."""
    batch = datamodule.model_inputs(move_data_to_device(next(iter(datamodule.train_dataloader())), device))
    return DataLoader([batch] * 1_000_000, batch_size=None)


def bench(model_name: str, augments: list[str], root: Path, output_dir: Path, args) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, pure = [], None
    for augment in augments:
        cfg = compose_run(model_name, augment, root, output_dir, args.override)
        torch.manual_seed(0)
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()  # the cache is built (or found) before anything is timed
        datamodule.setup("fit")
        if pure is None:
            pure = samples_per_second(cfg, instantiate(cfg.model), args.warmup, args.steps,
                                      train_dataloaders=pure_step_inputs(datamodule, device))
            rows.append({"model": model_name, "path": "pure step", "augment": "-", "samples_per_s": pure, "of_pure": 1.0})
        rate = samples_per_second(cfg, instantiate(cfg.model), args.warmup, args.steps, datamodule=datamodule)
        alone = data_path_rate(datamodule, device, args.warmup, args.steps)
        rows.append({"model": model_name, "path": "end to end", "augment": augment, "samples_per_s": rate, "of_pure": rate / pure,
                     "data_path_samples_per_s": alone,
                     "grid": f"{cfg.data.spacing:g} mm {'x'.join(map(str, cfg.data.shape))}", "size": cfg.data.size,
                     "batch": cfg.data.batch_size, "workers": cfg.data.num_workers})
    return rows


def generated_cohort(folder: Path) -> Path:
    write_cohort = runpy.run_path(str(ROOT / "tests" / "support" / "cohort_fixture.py"))["write_cohort"]
    return write_cohort(folder, n_subjects=12, shape=(88, 108, 96), spacing=2.0).parent


def print_table(result: dict) -> None:
    table = Table(title=f"Training samples/s on {result['device']} ({result['threads']} threads, load {result['load_average_before']:.1f})")
    for column in ("model", "path", "augment", "samples/s", "of pure step", "data path alone"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        alone = row.get("data_path_samples_per_s")
        table.add_row(row["model"], row["path"], row["augment"], f"{row['samples_per_s']:.1f}", f"{100 * row['of_pure']:.0f} %",
                      "" if alone is None else f"{alone:.1f}")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="cohort folder (default: data/demo if built, else a generated one)")
    parser.add_argument("--models", nargs="+", default=["cnn", "pix2pix"], choices=["cnn", "pix2pix", "cyclegan"])
    parser.add_argument("--augment", nargs="+", default=["none", "torchio", "device"], choices=["none", "torchio", "device"])
    parser.add_argument("--steps", type=int, default=20, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing (worker start-up, cuDNN autotune)")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every row")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "throughput.json")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # one Trainer per row: keep the table readable

    load_before = os.getloadavg()[0]
    demo = ROOT / "data" / "demo"
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or (demo if (demo / "manifest.csv").exists() else generated_cohort(Path(scratch)))
        rows = [row for model in args.models for row in bench(model, args.augment, root, Path(scratch), args)]
    result = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "load_average_before": load_before, "cohort": str(root), "steps": args.steps, "warmup": args.warmup,
        "overrides": args.override, "cpu_overrides": None if torch.cuda.is_available() else CPU_OVERRIDES, "rows": rows,
    }
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
