"""What the bench scripts that put the shipped detector to held-out IXI heads share: their options,
the detector, and the heads it never saw (``HELD_OUT``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from defacegan.detector_training import HELD_OUT, subject_of
from defacegan.inference import Detector
from defacegan.io import atomic_write_text
from defacegan.metrics import wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def held_out_setup(doc: str, result: str, argv: list[str] | None,
                   extra: list[tuple[str, type, object]] = ()) -> tuple[argparse.Namespace, Detector, list[Path]]:
    """(options, the detector on the CPU, the held-out heads' files) for a script whose docstring
    is ``doc`` and whose JSON goes to ``bench/results/<result>`` unless ``--out`` says otherwise;
    ``extra`` options are (flag, type, default)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--ixi", type=Path, default=Path("../shared/data/ixi-t1-2mm"))
    parser.add_argument("--cache", type=Path, default=Path("data/bundles"))
    parser.add_argument("--ckpt", default=None, help="detector checkpoint (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / result)
    for flag, kind, default in extra:
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)
    paths = [path for path in sorted(args.ixi.glob("*.nii*")) if subject_of(path) in HELD_OUT]
    return args, Detector(args.ckpt, device="cpu"), paths


def write_result(args: argparse.Namespace, detector: Detector, started: float, **fields) -> dict:
    """The script's JSON (the checkpoint, ``fields``, the seconds since ``started``), written atomically."""
    result = {"ckpt": str(detector.checkpoint), **fields, "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return result


def right_rate(hits: list[bool]) -> dict:
    """How many of ``hits`` are right, of how many, the rate and its Wilson 95 % interval."""
    right, n = sum(hits), len(hits)
    low, high = wilson_interval(right, n)
    return {"right": right, "n": n, "rate": right / n, "low": low, "high": high}
