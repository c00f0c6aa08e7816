"""Two k-fold reports of ``bench/detector_eval.py`` on the same test scans, row by row and subject by subject.

Two recipes' k-folds that tested the same draws (same ``--seed``, ``--draws`` and ``--rounds``) differ
in the recipe alone, so each rate can be read in pairs: per subject, did the second recipe get more
of that subject's scans right, or fewer? The subjects are what is independent, so the two-sided
sign test over the subjects that changed says whether a difference is more than the luck of a few
heads. Rows are ``detector_eval.headline``'s, at `check`'s default threshold, plus the removed or
replaced faces far from the rule's line (under 10 % of every feature kept, the families trained
on: ``fully_removed_by_subject``'s scans). Reads the reports' per-scan rows (``scans``); fits
nothing, runs in seconds. With ``--shipped`` it reads the reports' shipped columns instead: two
detectors (a re-shipped one and a copy of the last run's report) on the same held-out scans.

    python bench/kfold_compare.py bench/results/detector_eval bench/results/detector_eval-rounds4 \\
        [--names "2 rounds" "4 rounds"] [--shipped] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
from math import comb
from pathlib import Path

import numpy as np
import torch
from detector_eval import (FACE, far_from_line, headline, kfold_probabilities_of, rate, rate_text, table, trained_families,
                           verdicts)

from defacegan.contract import VERDICTS
from defacegan.detector_data import Samples
from defacegan.features import FEATURES
from defacegan.io import atomic_write_text

FAR = "removed or replaced faces keeping under 10 % of every feature (families trained on) not called face"


def read(folder: Path, shipped: bool = False) -> tuple[dict, Samples, np.ndarray, list[str], float]:
    """:func:`scans_of` the report in ``folder``, its k-fold or its ``shipped`` column."""
    report = json.loads((folder / "detector_eval.json").read_text())
    return scans_of(report["shipped"] if shipped else report, shipped)


def scans_of(report: dict, shipped: bool = False) -> tuple[dict, Samples, np.ndarray, list[str], float]:
    """A report's k-fold (or its ``shipped`` column): its run, test scans (facts only, no views), their
    probabilities, the families trained on and the ECE (temperature-scaled)."""
    if shipped:
        trained, ece = trained_families(report["training"]), report["ece"]
    else:
        trained, ece = report["trained_families"], report["calibration"]["ece_calibrated"]
    rows = report["scans"]
    samples = Samples(torch.empty(len(rows), 0),
                      label=np.array([VERDICTS.index(r["label"]) for r in rows]),
                      family=np.array([r["family"] for r in rows]), subject=np.array([r["subject"] for r in rows]),
                      number=np.array([r["draw"] for r in rows]),
                      own=np.array([[r["own"][f] for f in FEATURES] for r in rows], np.float32),
                      foreign=np.zeros((len(rows), len(FEATURES)), np.float32))
    return report["run"], samples, kfold_probabilities_of(report, samples), trained, ece


def rates(samples: Samples, probabilities: np.ndarray, trained: list[str]) -> dict[str, dict]:
    """``headline``'s rows and the far-from-the-line row."""
    rows = headline(samples, probabilities, trained=trained)
    far = far_from_line(samples, trained)
    rows[FAR] = rate(verdicts(probabilities[far]) != FACE, samples.subject[far])
    return rows


def sign_test(better: int, worse: int) -> float:
    """Two-sided sign test: the chance of a split at least this uneven between subjects that changed."""
    changed = better + worse
    tail = sum(comb(changed, k) for k in range(min(better, worse) + 1)) / 2**changed if changed else 0.5
    return min(1.0, 2 * tail)


def compare(first: Path, second: Path, shipped: bool = False) -> dict:
    (run_a, samples, p_a, trained, ece_a), (run_b, samples_b, p_b, trained_b, ece_b) = read(first, shipped), read(second, shipped)
    if not all(np.array_equal(getattr(samples, k), getattr(samples_b, k)) for k in ("subject", "family", "number")):
        raise SystemExit(f"{first} and {second} did not test the same scans (--seed, --draws, --rounds, --subjects)")
    if trained != trained_b:
        raise SystemExit("the two recipes trained on different families: their removed and replaced rows do not compare")
    rows = {name: {"first": a, "second": b, "better": 0, "worse": 0}
            for (name, a), b in zip(rates(samples, p_a, trained).items(), rates(samples, p_b, trained).values())}
    for subject in sorted(set(samples.subject)):
        mine = samples.subject == subject
        per_a, per_b = rates(samples.where(mine), p_a[mine], trained), rates(samples.where(mine), p_b[mine], trained)
        for name, row in rows.items():
            row["better"] += int(per_b[name]["k"] > per_a[name]["k"])
            row["worse"] += int(per_b[name]["k"] < per_a[name]["k"])
    for row in rows.values():
        row["sign_test_p"] = sign_test(row["better"], row["worse"])
    ece = {"first": ece_a, "second": ece_b}
    return {"first": str(first), "second": str(second), "column": "shipped" if shipped else "k-fold", "runs": [run_a, run_b],
            "subjects": int(np.unique(samples.subject).size), "scans": len(samples.label), "rows": rows, "ece_calibrated": ece}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a detector_eval.py --out folder")
    parser.add_argument("second", type=Path, help="another, on the same test scans")
    parser.add_argument("--names", nargs=2, default=None, help="the two columns' names (default: the folders')")
    parser.add_argument("--shipped", action="store_true", help="compare the reports' shipped columns, not their k-folds")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default: bench/results/kfold_compare-FIRST-SECOND.json, the folders' names; "
                             "shipped_compare-... with --shipped)")
    args = parser.parse_args()
    args.out = args.out or Path("bench/results") / (f"{'shipped' if args.shipped else 'kfold'}_compare-"
                                                    f"{args.first.name}-{args.second.name}.json")
    result = compare(args.first, args.second, args.shipped)
    names = args.names or [args.first.name, args.second.name]
    result["names"] = names
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    def cell(entry: dict) -> str:
        return f"{entry['k']} of {entry['n']}, {rate_text(entry)}"

    lines = [f"{result['column']}, {result['subjects']} subjects, the same {result['scans']} test scans; per subject, more right "
             "with the second / fewer (two-sided sign test over the subjects that changed):", "",
             table([f"{result['column']} test", *names, "subjects better / worse (p)"],
                   [[name, cell(r["first"]), cell(r["second"]), f"{r['better']} / {r['worse']} ({r['sign_test_p']:.2f})"]
                    for name, r in result["rows"].items()]),
             "", f"ECE: {result['ece_calibrated']['first']:.3f} / {result['ece_calibrated']['second']:.3f}",
             f"written to {args.out}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
