"""Data-pipeline throughput: views per second on each device, loader volumes per second.

- views: ``compute_views`` (all six) and ``sagittal_slices`` on a batch of 256³ float32 volumes
  (a 1 mm head), on the CPU and on CUDA when present. Needs torch only.
- loader: the DataModule's train loader on the 2 mm / 128³ standard grid, augmentation off and
  on (conf/augment/torchio.yaml), with 0 and 2 workers, after the cache is built; the first batch
  (worker start-up) is not timed.

    python bench/pipeline.py [--root COHORT] [--json bench/results/pipeline.json] [--only views|loader]

Without ``--root`` the loader runs on a generated cohort (tests/support/cohort_fixture.py) in a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import tempfile
import time
from pathlib import Path

import torch

from defacegan.views import compute_views, sagittal_slices

ROOT = Path(__file__).resolve().parents[1]


def timed(run, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``run()``, after one warm-up call."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def bench_views(batch: int, side: int, repeats: int) -> list[dict]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    generator = torch.Generator().manual_seed(0)
    volumes = torch.rand(batch, 1, side, side, side, generator=generator) * 1000
    rows = []
    for device in devices:
        on_device = volumes.to(device)
        for name, run_at in (
            ("views all", lambda size: compute_views(on_device, size, "all")),
            ("sagittal slice", lambda size: sagittal_slices(on_device, size)),
        ):
            for size in (32, 256):
                with torch.inference_mode():
                    seconds = timed(lambda: run_at(size), device, repeats if device.type == "cuda" else max(1, repeats // 4))
                rows.append({"bench": name, "device": device.type, "size": size, "volume": f"{side}^3", "batch": batch,
                             "volumes_per_s": batch / seconds})
    return rows


def generated_cohort(folder: Path) -> Path:
    write_cohort = runpy.run_path(str(ROOT / "tests" / "support" / "cohort_fixture.py"))["write_cohort"]
    return write_cohort(folder, n_subjects=8, shape=(88, 108, 96), spacing=2.0).parent


def bench_loader(root: Path, batches: int) -> list[dict]:
    from omegaconf import OmegaConf

    from defacegan.datamodule import DefaceDataModule

    augment = OmegaConf.load(ROOT / "conf" / "augment" / "torchio.yaml").augment
    rows = []
    for augmented in (False, True):
        for workers in (0, 2):
            dm = DefaceDataModule(root, batch_size=4, num_workers=workers, augment=augment if augmented else None, pin_memory=False,
                                  spacing=2.0, shape=(128, 128, 128))
            dm.prepare_data()
            dm.setup("fit")
            loader, timed_batches, loaded, seconds = dm.train_dataloader(), 0, 0, 0.0
            batches_of = iter(loader)
            next(batches_of)  # worker start-up and first reads are not timed
            while timed_batches < batches:
                started = time.perf_counter()
                batch = next(batches_of, None)
                if batch is None:  # next epoch (persistent workers carry on)
                    batches_of = iter(loader)
                    continue
                seconds += time.perf_counter() - started
                timed_batches, loaded = timed_batches + 1, loaded + len(batch["volume"])
            rows.append({"bench": "loader", "augment": augmented, "workers": workers, "grid": f"{dm.spacing:g} mm {'x'.join(map(str, dm.shape))}",
                         "volumes_per_s": loaded / seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="cohort folder (default: a generated one)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    parser.add_argument("--only", choices=("views", "loader"))
    parser.add_argument("--batch", type=int, default=4, help="256³ volumes per views call")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6, help="timed loader batches per setting")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    rows = []
    if args.only in (None, "views"):
        rows += bench_views(args.batch, 256, args.repeats)
    if args.only in (None, "loader"):
        with tempfile.TemporaryDirectory() as scratch:
            rows += bench_loader(args.root or generated_cohort(Path(scratch)), args.batches)
    for row in rows:
        setting = ", ".join(f"{key}={value}" for key, value in row.items() if key not in ("bench", "volumes_per_s"))
        print(f"{row['bench']:15s} {setting:55s} {row['volumes_per_s']:9.1f} volumes/s")
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_before": load_before,
        "cohort": str(args.root) if args.root else "generated: tests/support/cohort_fixture.py, 8 subjects",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
