"""Benchmark `defacegan check`: seconds per scan on IXI-sized scans, and where the time goes.

Writes N generated scans the size of full-resolution IXI T1 (256×256×150 voxels,
0.94×0.94×1.2 mm, int16, PSR order, gzip) to a temporary folder: pydeface's mean head resampled
onto that grid with Rician noise, so that gzip has real work to do. Then, after a warm-up run:

- the Detector on one core (this process pinned to one CPU, one torch thread, no workers), and a
  plain nibabel load of the same files (``np.asanyarray(nib.load(f).dataobj)``) on that core:
  their ratio is what `check` costs per scan beyond reading it (target ≤ 1.0×);
- the Detector with N loader worker processes on all CPUs;
- each stage of the per-scan work on one core: ``load_scan(copy=False)`` (read, gunzip,
  validate; the voxels as stored, seen in RAS+ order), the contract's grid (``on_grid``: box
  filter, interpolation), its intensities, the pose guard (:mod:`defacegan.pose`), the contract's views, the model and the
  views PNG that `--out` adds; and the same stages with the scans' heads turned 30° in the coil (their
  affines turned), which the contract straightens.

Prints a table and writes JSON (default bench/results/check.json). The model's weights do not
change the timing: without the shipped checkpoint an untrained detector of the default
architecture and input contract is used. The anatomy's second opinion is left out
(``anatomy="never"``): it is a registration of 2-3 s for each scan the network is unsure of, and
the shipped network is unsure of these heads (an average face: p(face) 0.33-0.36), so with it this
would time the registration, not the check of a scan the network is sure of.
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
import torch
from nibabel.processing import resample_from_to
from rich.console import Console
from rich.table import Table

from defacegan.check import CheckResult, result_png
from defacegan.contract import InputContract, plane_rotation, turned, without_air
from defacegan.detector_training import save_detector
from defacegan.inference import SHIPPED_CHECKPOINT, Detector, load_network, verdict_of
from defacegan.io import Scan, atomic_write_text, load_scan
from defacegan.models.detector import DetectorNet
from defacegan.pose import upright_margin
from provenance import provenance

IXI_SHAPE = (256, 256, 150)
IXI_SPACING = (0.9375, 0.9375, 1.2)
#: Voxel axes of the stored scans in RAS world directions: posterior, superior, right (PSR).
PSR_DIRECTIONS = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], float)
#: The scans' heads turned 30° about the vertical axis, as a patient lying turned in the coil.
TURNED = plane_rotation(0, 1, 30)


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
    contract = InputContract()
    return save_detector(DetectorNet(n_views=len(contract.view_names), n_classes=len(contract.classes)), contract, path)


def shipped_or_untrained(folder: Path, ckpt: Path | None = None) -> tuple[Path, str]:
    """(checkpoint, how to describe it): ``ckpt``, else the shipped one if it loads, else an
    untrained one written in ``folder`` (the weights do not change the timing)."""
    if ckpt:
        return ckpt, str(ckpt)
    shipped, untrained = Path(str(SHIPPED_CHECKPOINT)), "untrained, default architecture and contract"
    if shipped.exists():
        try:
            load_network(shipped)
            return shipped, str(shipped)
        except Exception as error:  # a half-written or foreign checkpoint fails in many ways
            untrained += f" (the shipped one does not load: {type(error).__name__})"
    return untrained_checkpoint(folder / "untrained.pt"), untrained


def one_core() -> None:
    """Pin this process to one CPU with one compute thread, as on a one-core machine."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)


def all_cores(cpus: set[int], threads: int) -> None:
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)


def seconds_per_scan(detector: Detector, paths: list[Path], repeats: int, clock=time.perf_counter) -> float:
    """Median of ``repeats`` warm batch runs over ``paths`` (after a warm-up run), by ``clock``."""
    detector.predict(paths[:2])
    times = []
    for _ in range(repeats):
        started = clock()
        predictions = detector.predict(paths)
        times.append(clock() - started)
        assert not any(p.error for p in predictions), [p.error for p in predictions if p.error]
    return float(np.median(times)) / len(paths)


def nibabel_seconds_per_scan(paths: list[Path], repeats: int) -> float:
    """Median of ``repeats`` runs of a plain nibabel load (header + every voxel) over ``paths``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for path in paths:
            np.asanyarray(nib.load(str(path)).dataobj)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) / len(paths)


def stage_profile(detector: Detector, paths: list[Path], turn: np.ndarray = np.eye(3)) -> dict[str, float]:
    """Mean CPU seconds per scan of each stage of the Detector's work (one thread), one after the other,
    on the scans as written or, with ``turn`` (3×3), as a head lying turned that way would give them.

    "gunzip alone" is zlib inflating the file, for scale: load_scan inflates with ISA-L.
    """
    contract = detector.contract
    stages = dict.fromkeys(
        ["load_scan: read, gunzip, validate (as stored)", "  gunzip alone (zlib)", "contract grid: head anchor, air level, pose (place)", "contract grid (on_grid)",
         "contract air to 0",
         "contract intensities", "pose guard (upright_margin)", "views", "model", "views PNG (--out)"], 0.0)
    load_scan(paths[0])
    for path in paths:
        laps, clock = iter(stages), time.process_time()

        def lap() -> None:
            nonlocal clock
            now = time.process_time()
            stages[next(laps)] += now - clock
            clock = now

        scan = load_scan(path, copy=False)  # as Detector.predict reads it
        scan = Scan(scan.data, turned(scan.affine, turn))
        lap()
        zlib.decompress(path.read_bytes(), wbits=31)
        lap()
        placed = contract.place(scan.data, scan.affine)
        lap()
        grid = contract.on_grid(scan.data, scan.affine, placed=placed)
        lap()
        grid = without_air(grid, placed.air)
        lap()
        volumes = torch.stack([contract.intensities(grid[None])]).to(detector.device)  # as Detector.predict batches them
        lap()
        upright_margin(volumes[0].cpu(), contract.spacing)
        lap()
        with torch.inference_mode():
            views = contract.views(volumes)
            lap()
            probabilities = torch.softmax(detector.net(views).float(), dim=1)[0].tolist()
            lap()
        named = dict(zip(contract.classes, probabilities))
        result = CheckResult(str(path), probabilities=named, answer=verdict_of(named, detector.threshold),
                             views=views[0].cpu().numpy())
        result_png(result, detector.view_names)
        lap()
    return {stage: total / len(paths) for stage, total in stages.items()}


def write_results(results: dict, path: Path, console: Console) -> None:
    atomic_write_text(path, json.dumps({**results, "run": provenance()}, indent=2) + "\n")
    console.print(f"written: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=16, help="scans per timed batch")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="N for the N-worker run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind (the median is kept)")
    parser.add_argument("--ckpt", type=Path, help="detector checkpoint (default: the shipped one, else untrained)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "check.json")
    args = parser.parse_args()
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as folder:
        folder = Path(folder)
        paths = write_scans(folder, args.scans)
        ckpt, described = shipped_or_untrained(folder, args.ckpt)
        megabytes = np.mean([p.stat().st_size for p in paths]) / 1e6
        one_core()
        detector = Detector(ckpt, device="cpu", batch_size=8, workers=0, anatomy="never")
        stages = stage_profile(detector, paths)
        turned = stage_profile(detector, paths, TURNED)
        nibabel_seconds_per_scan(paths, 1)  # warm the page cache
        one, nibabel_load = [], []
        for _ in range(args.repeats):  # interleaved, so that a change in machine load hits both alike
            one.append(seconds_per_scan(detector, paths, 1))
            nibabel_load.append(nibabel_seconds_per_scan(paths, 1))
        one, nibabel_load = float(np.median(one)), float(np.median(nibabel_load))
        one_cpu = seconds_per_scan(detector, paths, args.repeats, time.process_time)
        all_cores(cpus, threads)
        many = seconds_per_scan(Detector(ckpt, device="cpu", batch_size=8, workers=args.workers, anatomy="never"),
                                paths, args.repeats)
    contract = detector.contract
    results = {
        "scan": {"shape": IXI_SHAPE, "spacing_mm": IXI_SPACING, "dtype": "int16", "gzip_mb": round(megabytes, 2)},
        "detector": {"checkpoint": described, "contract": contract.to_dict()},
        "machine": {"cpus": len(cpus), "processor": platform.processor() or platform.machine(),
                    "load_average_1min": os.getloadavg()[0]},
        "scans": args.scans,
        "repeats": args.repeats,
        "seconds_per_scan": {"1 core, in-process (wall)": round(one, 3), "1 core, in-process (CPU)": round(one_cpu, 3),
                             "1 core, nibabel load alone (wall)": round(nibabel_load, 3),
                             f"{args.workers} workers (wall)": round(many, 3)},
        "check_over_nibabel_load_1_core": round(one / nibabel_load, 2),
        "stages_seconds_per_scan_1_core": {k: round(v, 4) for k, v in stages.items()},
        "stages_seconds_per_scan_1_core_head_turned_30": {k: round(v, 4) for k, v in turned.items()},
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
    table.add_section()
    for name in ("contract grid: head anchor, air level, pose (place)", "contract grid (on_grid)"):
        table.add_row(f"head turned 30° (straightened): {name}", f"{turned[name]:.3f}")
    console.print(table)
    console.print(f"check / nibabel load, 1 core, wall (medians of {args.repeats}, interleaved): "
                  f"{results['check_over_nibabel_load_1_core']:.2f}× (target ≤ 1.0×)")
    write_results(results, args.json, console)


if __name__ == "__main__":
    main()
