"""Benchmark `defacegan.deface`: seconds per scan and face-region Dice, both methods.

Template trials (ground truth known): pydeface's mean head moved by a random affine (rotation
±10°, shift ±15 mm, scale ±10% per axis) onto a grid of ``--spacing`` mm, with noise. The true
removed region is the face mask (``mask``) or the plane cut of the brain mask (``plane``) moved
by the same known transform; each method's output is scored against it by Dice.

With ``--data``: real heads (e.g. the IXI subset) moved by a random affine. Their truth is not
known, so this scores consistency: the moved head's removed region against the unmoved head's
registration composed with the known transform (both registrations' errors count).

Each timing is one `deface(scan, (method,))` call (registration included) after a warm-up.
Prints a table and writes JSON (default bench/results/deface.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.table import Table

from defacegan.deface import Defaced, brain_region, deface, face_region, plane_cut, register_template, template_masks, warp
from defacegan.io import Scan, atomic_write_text, load_scan
from defacegan.manifest import METHODS

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = runpy.run_path(str(ROOT / "tests" / "support" / "geometry.py"))  # shared with the deface tests
dice, random_affine = GEOMETRY["dice"], GEOMETRY["random_affine"]


def truths(scan: Scan, transform: sitk.Transform) -> dict[str, np.ndarray]:
    """The removed region each method should give when ``transform`` is the right registration."""
    return {"mask": face_region(scan, transform), "plane": plane_cut(brain_region(scan, transform), scan.affine)}


def score(scan: Scan, truth: dict[str, np.ndarray], label: str) -> list[dict]:
    rows = []
    for method in METHODS:
        started = time.perf_counter()
        result: Defaced = deface(scan, (method,))[method]
        seconds = time.perf_counter() - started
        rows.append({"data": label, "method": method, "seconds": seconds, "dice": dice(result.removed, truth[method])})
    return rows


def centre_mm(shape, affine) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


def template_trials(trials: int, spacing: float, rng: np.random.Generator) -> list[dict]:
    head = template_masks().head
    zoom = spacing / np.asarray(head.header.get_zooms()[:3])
    shape = tuple(int(n) for n in np.round(np.asarray(head.shape) / zoom))
    affine = head.affine @ np.diag([*zoom, 1.0])
    affine[:3, 3] = centre_mm(head.shape, head.affine) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    label = f"template, {spacing:g} mm"
    rows = []
    for _ in range(trials):
        transform = random_affine(rng, centre_mm(head.shape, head.affine))
        data = warp(head, transform, shape, affine)
        data = np.abs(data + rng.normal(0, 0.02 * data.max(), data.shape)).astype(np.float32)
        scan = Scan(data, affine)
        rows += score(scan, truths(scan, transform), label)
    return rows


def data_trials(paths: list[Path], trials: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for path in paths:
        source = load_scan(path)
        reference = register_template(source)
        for _ in range(trials):
            transform = random_affine(rng, centre_mm(source.data.shape, source.affine))
            scan = Scan(warp(source.image, transform, source.data.shape, source.affine), source.affine)
            rows += score(scan, truths(scan, sitk.CompositeTransform([reference, transform])), f"{path.parent.name} (consistency)")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["method"]), []).append(row)
    return [
        {
            "data": data, "method": method, "trials": len(group),
            "seconds_mean": float(np.mean([r["seconds"] for r in group])),
            "seconds_max": float(np.max([r["seconds"] for r in group])),
            "dice_mean": float(np.mean([r["dice"] for r in group])),
            "dice_min": float(np.min([r["dice"] for r in group])),
        }
        for (data, method), group in groups.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="random transforms per head (default 5)")
    parser.add_argument("--spacing", type=float, default=1.0, help="template trials' grid in mm (default 1)")
    parser.add_argument("--data", type=Path, help="folder of real heads for consistency trials (e.g. IXI)")
    parser.add_argument("--scans", type=int, default=4, help="how many heads of --data (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench/results/deface.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    head = template_masks().head  # warm-up: template caches, imports
    deface(Scan(np.asarray(head.dataobj, np.float32), head.affine), METHODS)
    rows = template_trials(args.trials, args.spacing, rng)
    if args.data:
        rows += data_trials(sorted(args.data.glob("*.nii*"))[: args.scans], args.trials, rng)
    summary = summarise(rows)

    table = Table(title="defacing: seconds per scan and removed-region Dice")
    for column in ("data", "method", "trials", "s/scan mean", "s/scan max", "Dice mean", "Dice min"):
        table.add_column(column, justify="left" if column in ("data", "method") else "right")
    for row in summary:
        table.add_row(row["data"], row["method"], str(row["trials"]), f"{row['seconds_mean']:.2f}",
                      f"{row['seconds_max']:.2f}", f"{row['dice_mean']:.3f}", f"{row['dice_min']:.3f}")
    Console(width=110).print(table)
    machine = {
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "itk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    document = {"config": {k: str(v) for k, v in vars(args).items()}, "machine": machine, "summary": summary, "trials": rows}
    atomic_write_text(args.json, json.dumps(document, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
