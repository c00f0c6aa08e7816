"""Benchmark `defacegan.deface`: seconds per scan, registration consistency, and brain removed.

Registration consistency (Dice of removed regions; it says the registration finds the same place
twice, not that the place is right):
- template trials: pydeface's mean head moved by a random affine (rotation ±10°, shift ±15 mm,
  scale ±10% per axis) onto a grid of ``--spacing`` mm, with noise, against the face mask
  (``mask``) or the plane cut (``plane``) moved by the same known transform — the template
  registered onto a warped copy of itself;
- with ``--data``: ``--scans`` real heads moved by a random affine, against the unmoved head's
  registration composed with the known transform (both registrations' errors count);
- and the same heads turned in the coil (about the head's long axis), rolled (about the
  front-back axis) or nodded (nose up or down) by each of ``--turns`` degrees, beyond the random
  affines' ±10: the starts of the registration's search (its nods, and the head's own axes from
  :func:`defacegan.deface.head_axes`) are what these measure.

Brain removed (an accuracy measure against something the defacer did not make): on every head of
``--data`` (or the first ``--brain-scans``), the brain found by BET on the face-intact head
(:mod:`defacegan.brain`), in mL and % inside what each method removes — with the defacer's own
registration, and with that registration moved 15-25 mm toward the brain on purpose (the failure
the flag is for). Per method: median and max, and the share of subjects flagged with its Wilson
95 % interval.

Each timing is one `deface(scan, (method,))` call (registration included) after a warm-up.
Prints tables and writes JSON (default bench/results/deface.json).
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

from defacegan.brain import FLAG_PERCENT, brain_mask, brain_removed
from defacegan.deface import LPS, Defaced, deface, register_template, removed_region, template_masks, warp
from defacegan.io import Scan, atomic_write_text, load_scan
from defacegan.manifest import METHODS
from defacegan.metrics import wilson_interval
from provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = runpy.run_path(str(ROOT / "tests" / "support" / "geometry.py"))  # shared with the deface tests
dice, random_affine, misregistered = GEOMETRY["dice"], GEOMETRY["random_affine"], GEOMETRY["misregistered"]
REGISTRATIONS = ("defacer's", "moved 15-25 mm")
THRESHOLDS = tuple(sorted({0.1, 0.25, 0.5, 1.0, 5.0, FLAG_PERCENT}))  # % of the brain; 5 %: brainprep's


def truths(scan: Scan, transform: sitk.Transform) -> dict[str, np.ndarray]:
    """The removed region each method should give when ``transform`` is the right registration."""
    return {method: removed_region(scan, transform, method) for method in METHODS}


def score(scan: Scan, truth: dict[str, np.ndarray], label: str, checks=None) -> list[dict]:
    """One row per method: seconds and Dice against ``truth``, and what ``checks(result)`` says of the output."""
    rows = []
    for method in METHODS:
        started = time.perf_counter()
        result: Defaced = deface(scan, (method,))[method]
        seconds = time.perf_counter() - started
        rows.append({"data": label, "method": method, "seconds": seconds, "dice": dice(result.removed, truth[method]),
                     **(checks(result) if checks else {})})
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


#: Each motion of a head in the coil: (axis of the rotation in SimpleITK's LPS world, sign); the
#: image turns by the inverse of the resampling transform, so +x lifts the nose.
MOTIONS = {"turned": (2, 1.0), "rolled": (1, 1.0), "nodded nose up": (0, 1.0), "nodded nose down": (0, -1.0)}


def posed(source: Scan, motion: str, degrees: float) -> tuple[Scan, sitk.Euler3DTransform]:
    """``source`` moved in the coil by ``motion`` (one of :data:`MOTIONS`) by ``degrees`` about its
    grid's centre, and the resampling transform that did it."""
    axis, sign = MOTIONS[motion]
    angles = [0.0, 0.0, 0.0]
    angles[axis] = sign * np.deg2rad(degrees)
    transform = sitk.Euler3DTransform((LPS @ centre_mm(source.data.shape, source.affine)).tolist(), *angles)
    return Scan(warp(source.image, transform, source.data.shape, source.affine), source.affine), transform


def turned_trials(paths: list[Path], degrees: list[float]) -> list[dict]:
    """Each head in each of :data:`MOTIONS` by each of ``degrees``, scored as :func:`data_trials` scores,
    with the two safety nets ``deface`` offers a user: its brain check (BET on the posed head) and
    ``--verify`` (the shipped detector, as ``check`` answers, on the output)."""
    from defacegan.inference import Detector

    detector = Detector(None, device="cpu")
    rows = []
    for path in paths:
        source = load_scan(path)
        reference = register_template(source)
        for angle in degrees:
            for motion in MOTIONS:
                scan, transform = posed(source, motion, angle)
                brain = brain_mask(scan)

                def safety_nets(result: Defaced) -> dict:
                    verdict = detector.predict([Scan(result.defaced, scan.affine)])[0].verdict
                    return {"brain_flagged": brain_removed(scan, result.removed, brain).flagged, "verify_face": verdict == "face"}

                rows += [{**row, "head": path.name} for row in score(
                    scan, truths(scan, sitk.CompositeTransform([reference, transform])),
                    f"{path.parent.name}, {motion} {angle:g} degrees", safety_nets)]
    return rows


def brain_trials(paths: list[Path], rng: np.random.Generator) -> list[dict]:
    """Brain removed per head and method, with the defacer's registration and a wrong one."""
    rows = []
    for path in paths:
        scan = load_scan(path)
        transform = register_template(scan)
        started = time.perf_counter()
        brain = brain_mask(scan)
        seconds = time.perf_counter() - started
        wrong = misregistered(transform, rng)
        for registration, used in zip(REGISTRATIONS, (transform, wrong)):
            for method in METHODS:
                measured = brain_removed(scan, removed_region(scan, used, method), brain)
                rows.append({"scan": path.name, "registration": registration, "method": method, "bet_seconds": seconds,
                             "brain_ml": measured.brain_ml, "brain_removed_ml": measured.removed_ml,
                             "brain_removed_percent": measured.percent})
        print(f"{path.name}: brain {measured.brain_ml:.0f} mL, BET {seconds:.0f} s", flush=True)
    return rows


def summarise_brain(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["registration"], row["method"]), []).append(row)
    summary = []
    for (registration, method), group in groups.items():
        percent = [r["brain_removed_percent"] for r in group]
        millilitres = [r["brain_removed_ml"] for r in group]
        flagged = {f"{threshold:g}": int(np.sum(np.asarray(percent) > threshold)) for threshold in THRESHOLDS}
        summary.append({
            "registration": registration, "method": method, "subjects": len(group),
            "removed_ml_median": float(np.median(millilitres)), "removed_ml_max": float(np.max(millilitres)),
            "removed_percent_median": float(np.median(percent)), "removed_percent_max": float(np.max(percent)),
            "flagged_above_percent": flagged,
            "flagged_wilson95": {key: wilson_interval(count, len(group)) for key, count in flagged.items()},
        })
    return summary


def print_brain(rows: list[dict], summary: list[dict], console: Console) -> None:
    table = Table(title="brain removed per scan (BET mask of the face-intact head)")
    for column in ("scan", "brain mL", *(f"{m}, {r}" for r in REGISTRATIONS for m in METHODS)):
        table.add_column(column, justify="left" if column == "scan" else "right")
    by_scan: dict[str, dict] = {}
    for row in rows:
        by_scan.setdefault(row["scan"], {"brain": row["brain_ml"]})[(row["registration"], row["method"])] = row
    for scan, cells in by_scan.items():
        table.add_row(scan, f"{cells['brain']:.0f}", *(
            f"{c['brain_removed_ml']:.1f} mL {c['brain_removed_percent']:.2f}%"
            f"{' !' if c['brain_removed_percent'] > FLAG_PERCENT else ''}"
            for c in (cells[(r, m)] for r in REGISTRATIONS for m in METHODS)))
    console.print(table)
    table = Table(title=f"brain removed: distribution, and subjects flagged [Wilson 95 %] at each threshold "
                        f"(% of the brain; the shipped flag is > {FLAG_PERCENT:g} %)")
    for column in ("registration", "method", "subjects", "mL median", "mL max", "% median", "% max",
                   *(f"> {threshold:g} %" for threshold in THRESHOLDS)):
        table.add_column(column, justify="left" if column in ("registration", "method") else "right")
    for row in summary:
        flags = [f"{count}/{row['subjects']} = {count / row['subjects']:.2f} [{low:.2f}, {high:.2f}]"
                 for count, (low, high) in zip(row["flagged_above_percent"].values(), row["flagged_wilson95"].values())]
        table.add_row(row["registration"], row["method"], str(row["subjects"]), f"{row['removed_ml_median']:.1f}",
                      f"{row['removed_ml_max']:.1f}", f"{row['removed_percent_median']:.2f}",
                      f"{row['removed_percent_max']:.2f}", *flags)
    console.print(table)


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
            **({"brain_flagged": sum(r["brain_flagged"] for r in group), "verify_face": sum(r["verify_face"] for r in group)}
               if "brain_flagged" in group[0] else {}),
        }
        for (data, method), group in groups.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="random transforms per head (default 5)")
    parser.add_argument("--spacing", type=float, default=1.0, help="template trials' grid in mm (default 1)")
    parser.add_argument("--data", type=Path, help="folder of real heads for consistency and brain trials (e.g. IXI)")
    parser.add_argument("--scans", type=int, default=4, help="how many heads of --data for consistency (default 4)")
    parser.add_argument("--turns", type=float, nargs="*", default=[30.0, 45.0, 60.0],
                        help="degrees the --scans heads are turned, rolled and nodded by (default 30 45 60)")
    parser.add_argument("--brain-scans", type=int, help="how many heads of --data for brain removed (default all; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench/results/deface.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    head = template_masks().head  # warm-up: template caches, imports
    deface(Scan(np.asarray(head.dataobj, np.float32), head.affine), METHODS)
    rows = template_trials(args.trials, args.spacing, rng)
    heads = sorted(args.data.glob("*.nii*")) if args.data else []
    rows += data_trials(heads[: args.scans], args.trials, rng)
    rows += turned_trials(heads[: args.scans], args.turns)
    summary = summarise(rows)
    brain_rows = brain_trials(heads[: args.brain_scans], rng)
    brain_summary = summarise_brain(brain_rows)

    console = Console(width=200)
    table = Table(title="defacing: seconds per scan and registration consistency (Dice of removed regions)")
    for column in ("data", "method", "trials", "s/scan mean", "s/scan max", "Dice mean", "Dice min",
                   "brain flagged", "--verify: face"):
        table.add_column(column, justify="left" if column in ("data", "method") else "right")
    for row in summary:
        table.add_row(row["data"], row["method"], str(row["trials"]), f"{row['seconds_mean']:.2f}",
                      f"{row['seconds_max']:.2f}", f"{row['dice_mean']:.3f}", f"{row['dice_min']:.3f}",
                      str(row.get("brain_flagged", "")), str(row.get("verify_face", "")))
    console.print(table)
    if brain_rows:
        print_brain(brain_rows, brain_summary, console)
    machine = {
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "itk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    document = {"config": {k: str(v) for k, v in vars(args).items()}, "machine": machine, "run": provenance(),
                "consistency": {"summary": summary, "trials": rows},
                "brain_removed": {"flag_percent": FLAG_PERCENT, "summary": brain_summary, "scans": brain_rows}}
    atomic_write_text(args.json, json.dumps(document, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
