"""Benchmark `defacegan check`: seconds per scan on IXI-sized scans, and where the time goes.

Writes N generated scans the size of full-resolution IXI T1 (256×256×150 voxels,
0.94×0.94×1.2 mm, int16, PSR order, gzip) to a temporary folder: pydeface's mean head resampled
onto that grid with Rician noise, so that gzip has real work to do. Then, after a warm-up run:

- the Detector on one core (this process pinned to one CPU, one torch/ITK thread, no workers);
- the Detector with N loader worker processes on all CPUs;
- each stage of the per-scan work on one core: read + gunzip, reorient + validate, the standard
  grid (resample, crop/pad), the views, the model, and the views PNG that `--out` adds.

Prints a table and writes JSON (default bench/results/check.json). The model's weights do not
change the timing: without the shipped checkpoint an untrained detector of the default
architecture on a 2 mm, 128³ grid is used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import zlib
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import pytorch_lightning as pl
import SimpleITK as sitk
import torch
import torchio as tio
from nibabel.processing import resample_from_to
from rich.console import Console
from rich.table import Table

from defacegan.augment import standard_grid
from defacegan.check import CheckResult, result_png
from defacegan.inference import SHIPPED_CHECKPOINT, Detector
from defacegan.io import load_scan
from defacegan.models.cnn import MultiBranchCNN
from defacegan.views import compute_views

IXI_SHAPE = (256, 256, 150)
IXI_SPACING = (0.9375, 0.9375, 1.2)
#: Voxel axes of the stored scans in RAS world directions: posterior, superior, right (PSR).
PSR_DIRECTIONS = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], float)


def write_scans(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` IXI-sized .nii.gz heads: pydeface's mean head on the IXI grid, fresh noise in each."""
    head = nib.load(str(files("pydeface") / "data" / "mean_reg2mean.nii.gz"))
    affine = np.eye(4)
    affine[:3, :3] = PSR_DIRECTIONS * np.array(IXI_SPACING)
    centre = head.affine @ np.r_[(np.array(head.shape) - 1) / 2, 1]
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((np.array(IXI_SHAPE) - 1) / 2)
    clean = resample_from_to(head, (IXI_SHAPE, affine), order=1).get_fdata(dtype=np.float32)
    clean *= 800 / clean.max()
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        noisy = np.hypot(clean + rng.normal(0, 12, IXI_SHAPE), rng.normal(0, 12, IXI_SHAPE))
        image = nib.Nifti1Image(noisy.astype(np.int16), affine)
        image.set_data_dtype(np.int16)
        paths.append(folder / f"IXI{index:03d}-bench-T1.nii.gz")
        nib.save(image, paths[-1])
    return paths


def untrained_checkpoint(path: Path) -> Path:
    model = MultiBranchCNN(spacing=2.0, grid_shape=(128, 128, 128))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def one_core() -> None:
    """Pin this process to one CPU with one compute thread (torch, ITK), as on a one-core machine."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def all_cores(cpus: set[int], threads: int, itk_threads: int) -> None:
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)


def seconds_per_scan(detector: Detector, paths: list[Path], repeats: int, clock=time.perf_counter) -> float:
    """Best of ``repeats`` warm batch runs over ``paths`` (after a warm-up run), by ``clock``."""
    detector.predict(paths[:2])
    times = []
    for _ in range(repeats):
        started = clock()
        predictions = detector.predict(paths)
        times.append(clock() - started)
        assert not any(p.error for p in predictions), [p.error for p in predictions if p.error]
    return min(times) / len(paths)


def stage_profile(detector: Detector, paths: list[Path]) -> dict[str, float]:
    """Mean CPU seconds per scan of each stage of the Detector's work (one thread), one after the other.

    "gunzip alone" is zlib inflating the file, for scale: it is part of load_scan's time.
    """
    hp = detector.model.hparams
    grid = standard_grid(hp.spacing, tuple(hp.grid_shape))
    stages = dict.fromkeys(
        ["load_scan: read, gunzip, reorient, validate", "  gunzip alone (zlib)", "standard grid (TorchIO)",
         "views", "model", "views PNG (--out)"], 0.0)
    load_scan(paths[0])
    for path in paths:
        laps, clock = iter(stages), time.process_time()

        def lap() -> None:
            nonlocal clock
            now = time.process_time()
            stages[next(laps)] += now - clock
            clock = now

        scan = load_scan(path)
        lap()
        zlib.decompress(path.read_bytes(), wbits=31)
        lap()
        image = grid(tio.ScalarImage(tensor=torch.from_numpy(scan.data)[None], affine=scan.affine))
        volumes = torch.stack([image.data.float()]).to(detector.device)  # as Detector.predict batches them
        lap()
        with torch.inference_mode():
            views = compute_views(volumes, hp.size, hp.view_mode)
            lap()
            probability = torch.sigmoid(detector.model(views).float()).item()
            lap()
        result = CheckResult(str(path), probability=probability, defaced=probability >= 0.5, views=views[0].cpu().numpy())
        result_png(result, detector.view_names)
        lap()
    return {stage: total / len(paths) for stage, total in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=16, help="scans per timed batch")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="N for the N-worker run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ckpt", type=Path, help="detector checkpoint (default: the shipped one, else untrained)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "check.json")
    args = parser.parse_args()
    cpus, threads, itk_threads = os.sched_getaffinity(0), torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as folder:
        folder = Path(folder)
        paths = write_scans(folder, args.scans)
        ckpt = args.ckpt or (Path(str(SHIPPED_CHECKPOINT)) if Path(str(SHIPPED_CHECKPOINT)).exists() else None)
        described = str(ckpt) if ckpt else "untrained, default architecture"
        ckpt = ckpt or untrained_checkpoint(folder / "untrained.ckpt")
        megabytes = np.mean([p.stat().st_size for p in paths]) / 1e6
        one_core()
        detector = Detector(ckpt, device="cpu", batch_size=8, workers=0)
        stages = stage_profile(detector, paths)
        one = seconds_per_scan(detector, paths, args.repeats)
        one_cpu = seconds_per_scan(detector, paths, args.repeats, time.process_time)
        all_cores(cpus, threads, itk_threads)
        many = seconds_per_scan(Detector(ckpt, device="cpu", batch_size=8, workers=args.workers), paths, args.repeats)
    hp = detector.model.hparams
    results = {
        "scan": {"shape": IXI_SHAPE, "spacing_mm": IXI_SPACING, "dtype": "int16", "gzip_mb": round(megabytes, 2)},
        "detector": {"checkpoint": described, "spacing_mm": hp.spacing, "grid_shape": list(hp.grid_shape), "view_size": hp.size},
        "machine": {"cpus": len(cpus), "processor": platform.processor() or platform.machine(),
                    "load_average_1min": os.getloadavg()[0]},
        "scans": args.scans,
        "seconds_per_scan": {"1 core, in-process (wall)": round(one, 3), "1 core, in-process (CPU)": round(one_cpu, 3),
                             f"{args.workers} workers (wall)": round(many, 3)},
        "stages_seconds_per_scan_1_core": {k: round(v, 4) for k, v in stages.items()},
    }
    console = Console()
    console.print(f"defacegan check, warm: {args.scans} scans of {IXI_SHAPE} voxels ({megabytes:.1f} MB .nii.gz), "
                  f"{len(cpus)} CPUs, load average {results['machine']['load_average_1min']:.1f}")
    table = Table()
    table.add_column("what")
    table.add_column("s / scan", justify="right")
    for name, value in results["seconds_per_scan"].items():
        table.add_row(name, f"{value:.3f}")
    table.add_section()
    for name, value in results["stages_seconds_per_scan_1_core"].items():
        table.add_row(f"1 core (CPU): {name}", f"{value:.3f}")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written: {args.json}")


if __name__ == "__main__":
    main()
