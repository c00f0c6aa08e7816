"""What the bench scripts that put the shipped detector to held-out IXI heads share: their options,
the detector, the heads it never saw (``HELD_OUT``), and the cases and table of the scripts that
acquire those heads in other ways (field of view, slices, noise)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from defacegan.detector_data import subject_of
from defacegan.detector_training import HELD_OUT
from defacegan.families import FaceBundle, Variant, generate, remove_share
from defacegan.inference import Detector
from defacegan.io import Scan, atomic_write_text
from defacegan.metrics import wilson_interval
from detector_eval import rate_text
from provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
#: What every head is put to under each acquisition condition: case → (how to make it from the head's
#: bundle, the expected answer: "face" or "not face"). The partial case keeps eyes and nose.
CASES = {
    "intact": (lambda bundle: generate(bundle, "none", np.random.default_rng(0)), "face"),
    "defaced: mask": (lambda bundle: generate(bundle, "mask", np.random.default_rng(0)), "not face"),
    "partly defaced: lowest 40 %": (lambda bundle: remove_share(bundle, 0.4, "below"), "face"),
}


def held_out_setup(doc: str, result: str, argv: list[str] | None,
                   extra: list[tuple[str, type, object]] = ()) -> tuple[argparse.Namespace, Detector, list[Path]]:
    """(options, the detector on the CPU, the held-out heads' files, or with ``--subjects training``
    the training heads') for a script whose docstring is ``doc`` and whose JSON goes to
    ``bench/results/<result>`` unless ``--out`` says otherwise; ``extra`` options are (flag, type, default)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--ixi", type=Path, default=Path("../shared/data/ixi-t1-2mm"))
    parser.add_argument("--cache", type=Path, default=Path("data/bundles"))
    parser.add_argument("--ckpt", default=None, help="detector checkpoint (default: the shipped one)")
    parser.add_argument("--member", type=int, default=None,
                        help="judge this member (0, 1, ...) of the checkpoint's ensemble alone, at its own temperature")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / result)
    parser.add_argument("--no-pose-check", dest="pose_check", action="store_false",
                        help="trust the headers' axes (check --no-pose-check): what the pose guard changes")
    parser.add_argument("--subjects", choices=("held-out", "training"), default="held-out",
                        help="the heads judged: the 8 the detector never saw (HELD_OUT, the default), or the 24 it was "
                             "trained on, where a line is chosen without spending the held-out heads")
    for flag, kind, default in extra:
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)
    paths = [path for path in sorted(args.ixi.glob("*.nii*")) if (subject_of(path) in HELD_OUT) == (args.subjects == "held-out")]
    detector = Detector(args.ckpt, device="cpu", pose_check=args.pose_check)
    if args.member is not None:
        members = getattr(detector.net, "members", [])
        if not 0 <= args.member < len(members):
            parser.error(f"--member {args.member}: {detector.checkpoint} holds {len(members) or 'no'} ensemble members")
        detector.net = members[args.member]
    return args, detector, paths


def write_result(args: argparse.Namespace, detector: Detector, started: float, ckpt: str | None = None, **fields) -> dict:
    """The script's JSON (the checkpoint, ``ckpt`` where it is not the detector's own, whether the pose
    guard was on, ``fields``, the seconds since ``started``, the code it ran: :func:`provenance`),
    written atomically."""
    result = {"ckpt": ckpt or str(detector.checkpoint), "member": args.member, "pose_check": detector.pose_check, **fields,
              "seconds": round(time.perf_counter() - started, 1), "run": provenance()}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return result


def right_rate(hits: list[bool]) -> dict:
    """How many of ``hits`` are right, of how many, the rate and its Wilson 95 % interval."""
    right, n = sum(hits), len(hits)
    low, high = wilson_interval(right, n)
    return {"right": right, "n": n, "rate": right / n, "low": low, "high": high}


def judge_conditions(detector: Detector, bundles: list[FaceBundle],
                     conditions: dict[str, Callable[[FaceBundle, Variant], Scan]]) -> list[dict]:
    """Every case of :data:`CASES` of every head, acquired as each of ``conditions`` says (the head's
    bundle and the case's volume → the scan ``check`` gets), judged by ``check``'s path: a row per case
    and condition, one scan per head, so the heads are the trials. A scan ``check`` could not judge
    (an error, exit 2) counts as a wrong answer, and the row names it under ``failed``."""
    rows = []
    for case, (make, expected) in CASES.items():
        variants = [(bundle, make(bundle)) for bundle in bundles]
        for condition, acquire in conditions.items():
            predictions = detector.predict([acquire(bundle, variant) for bundle, variant in variants])
            failed = {bundle.subject: p.error for (bundle, _), p in zip(variants, predictions) if p.error}
            p_face = [p.probabilities["face"] for p in predictions if not p.error] or [float("nan")]
            rows.append({"case": case, "expected": expected, "condition": condition,
                         **right_rate([not p.error and (p.verdict == "face") == (expected == "face") for p in predictions]),
                         "failed": failed,
                         "p_face_mean": float(np.mean(p_face)), "p_face_min": float(np.min(p_face)),
                         "p_face_max": float(np.max(p_face)), "overruled": sum(p.overruled for p in predictions),
                         "pose_not_understood": sum(not p.pose_understood for p in predictions),
                         "righted": sum(p.righted is not None for p in predictions),
                         "registered_upright": sum(p.registered_upright for p in predictions),
                         "evened_to_face": sum(p.evened_to_face for p in predictions),
                         "evened_unconfirmed": sum(p.evened_unconfirmed for p in predictions),
                         "registered_evened": sum(p.registered_evened for p in predictions)})
    return rows


def rate_table(title: str, first: str, answers: dict[str, str], rates: dict[str, dict[str, dict]]) -> Table:
    """``rates`` (row name → answer → :func:`detector_eval.rate`) as a table: the rows under ``first``,
    a column per answer (title → key in ``answers``), and the scans and subjects behind each row."""
    table = Table(title=title)
    for column in (first, *answers, "scans (subjects)"):
        table.add_column(column)
    for name, by_answer in rates.items():
        counted = next(iter(by_answer.values()))
        table.add_row(name, *(rate_text(by_answer[key]) for key in answers.values()), f"{counted['n']} ({counted['subjects']})")
    return table


def print_conditions(title: str, rows: list[dict]) -> None:
    """``judge_conditions``' rows as a table: right answers [Wilson 95 %], p(face), the verdicts the
    anatomy turned to ``face`` and those the second look with the bias field taken off did (and those
    where it saw a face but no eye or nose region held tissue on the evened scan, left as they were), the
    scans whose pose was not understood (called ``face``), those judged with their header's axes
    turned back (righted), those the guard could not read that a registration found upright and
    those the template registered onto only once evened, per case and condition."""
    table = Table(title=title)
    for column in ("case", "expected", "condition", "right [Wilson 95 %]", "p(face) mean (min-max)", "anatomy: face",
                   "evened: face", "evened: face, no tissue", "pose not understood", "righted", "registered upright",
                   "registered evened"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["case"], row["expected"], row["condition"],
                      f"{row['right']}/{row['n']} [{row['low']:.2f}, {row['high']:.2f}]",
                      f"{row['p_face_mean']:.2f} ({row['p_face_min']:.2f}-{row['p_face_max']:.2f})", str(row["overruled"]),
                      str(row.get("evened_to_face", "")), str(row.get("evened_unconfirmed", "")),
                      str(row["pose_not_understood"]), str(row["righted"]), str(row["registered_upright"]),
                      str(row.get("registered_evened", "")))
    Console().print(table)
    for row in rows:
        for subject, error in row.get("failed", {}).items():
            print(f"not judged (counted wrong): {row['case']}, {row['condition']}, {subject}: {error}")
