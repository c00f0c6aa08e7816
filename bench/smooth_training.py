"""Should the shipped detector train on ``replace_smooth`` after all, if blurred faces are shown more often?

``make weights`` leaves the family out (``WEIGHT_WITHOUT``): trained on it, a member called blurred
faces, eyes-kept partial cuts and Colin27 not a face more often (docs/detector.md, "Why `replace_smooth` is drawn
but not trained on"). A blurred face and a smooth fill differ in whose shape the face has, so this asks
whether seeing blurred faces more often keeps them apart; and since a quarter of the family's draws
fill only the face below the eyes and keep the eyes (labelled ``face``), whether those keep the
eye-kept cuts a face. Seed 0's member of ``make weights``' recipe
is fitted three ways on the same draws (round 0 of its cache, the 20 training heads of seed 0, its 4
calibration heads): as shipped, without ``replace_smooth``; on all 13 families; on all 13 with the
training heads' ``blur`` draws shown ``--blur-times`` times. Each is judged as the shipped column of
``bench/detector_eval.py`` judges the shipped detector (the 8 held-out heads, seed 1000's fresh draws),
network alone; ``python bench/anatomy.py --ckpt data/smooth_training/fit-N.pt --out RUN.json`` judges a
fit through ``check``'s default, with the anatomy's second opinion, on the shipped detector's draws.

    python bench/smooth_training.py [--ixi ../shared/data/ixi-t1-2mm] [--blur-times 3]

Draws round 0 of the 24 training heads once (34 min here in one process, cached in
``data/bundles`` and shared with ``make weights``), then each fit and its judging take 5-6 min on 2 cores. Prints a
table and writes JSON (default bench/results/smooth_training.json) and the fits to
``data/smooth_training/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from defacegan.contract import InputContract
from defacegan.detector_data import DRAWS, Samples, bundle_caches, draw, subject_of
from defacegan.detector_training import HELD_OUT, fit_member, save_detector, split_subjects
from defacegan.families import families_but
from defacegan.io import atomic_write_text
from defacegan.report import markdown_table
from detector_eval import rate_text, shipped
from provenance import provenance

#: The rates of the table (rows of :func:`detector_eval.headline`), then the families whose
#: face-or-not rate the choice moves.
ROWS = ("real faces called face", "partial defacings leaving eyes and nose called face",
        "partial defacings leaving the eyes but not the nose called face",
        "eye-level cuts leaving the eyes but not the nose called face", "every face-labelled variant called face",
        "removed faces not called face", "replaced faces called replaced")
FAMILY_ROWS = ("blur", "replace_smooth", "eye_level", "partial", "plane", "mask")
#: Families drawn on both sides of the rule's line, whose rate is also given for each side.
SPLIT_ROWS = ("replace_smooth", "eye_level")
#: The families ``make weights`` draws but does not train on (the Makefile's WEIGHT_WITHOUT): the fit
#: benches' "as shipped".
SHIPPED_WITHOUT = ["replace_smooth"]


def fits(blur_times: int) -> dict[str, tuple[list[str], int]]:
    """Each fit's name → (families left out, times the training heads' blur draws are shown)."""
    return {"without replace_smooth (as shipped)": (SHIPPED_WITHOUT, 1), "all 13 families": ([], 1),
            f"all 13, blur shown {blur_times} times": ([], blur_times)}


def options(doc: str, name: str) -> argparse.ArgumentParser:
    """The options of a bench that fits seed ``--seed``'s member on round 0 of the training heads:
    its fits go to ``data/<name>``, its JSON to ``bench/results/<name>.json``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--ixi", type=Path, default=Path("../shared/data/ixi-t1-2mm"))
    parser.add_argument("--cache", type=Path, default=Path("data/bundles"))
    parser.add_argument("--fits", type=Path, default=Path("data") / name)
    parser.add_argument("--out", type=Path, default=Path("bench/results") / f"{name}.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def write_table(args: argparse.Namespace, rows: list[dict], result: dict, started: float) -> dict:
    """Print ``rows`` as a table and write ``result`` with them, the seconds since ``started`` and the
    code it ran (:func:`provenance`) to ``args.out`` as JSON, atomically; return it."""
    print(markdown_table(rows, list(rows[0])))
    result = {**result, "rows": rows, "seconds": time.perf_counter() - started, "run": provenance()}
    atomic_write_text(args.out, json.dumps(result, indent=2, default=float) + "\n")
    print(f"written to {args.out}")
    return result


def round_zero(args: argparse.Namespace, contract: InputContract | None = None
               ) -> tuple[InputContract, list[Path], list[str], list[str], Samples]:
    """(the contract, every head's bundle cache, seed ``args.seed``'s training and calibration heads, the
    training heads' round-0 draws): what a member of ``make weights``' recipe is fitted on, on ``contract``
    (default: the unflattened ``InputContract()`` these benches first ran on)."""
    contract = contract or InputContract()
    caches = bundle_caches(sorted(args.ixi.glob("*.nii*")), contract, args.cache)
    known = [cache for cache in caches if subject_of(cache) not in HELD_OUT]
    train_heads, val_heads = split_subjects(sorted({subject_of(c) for c in known}), val=4, seed=args.seed)
    return contract, caches, train_heads, val_heads, draw(known, contract, args.cache, seed=args.seed)


def judged(args: argparse.Namespace, ckpt: Path) -> dict:
    """The fit ``ckpt`` judged as ``bench/detector_eval.py``'s shipped column judges the shipped detector:
    the held-out heads' fresh draws on its own contract, network alone."""
    return shipped(sorted(args.ixi.glob("*.nii*")), args.cache, DRAWS, args.seed, ckpt)


def main(argv: list[str] | None = None) -> dict:
    parser = options(__doc__, "smooth_training")
    parser.add_argument("--blur-times", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    contract, _, train_heads, val_heads, samples = round_zero(args)
    results = {}
    for number, (name, (without, blur_times)) in enumerate(fits(args.blur_times).items()):
        net, temperature, train = fit_member(samples, contract, families_but(without), train_heads, val_heads, args.seed,
                                             shown={"blur": blur_times})
        facts = {"train_subjects": train_heads, "val_subjects": val_heads, "held_out": list(HELD_OUT),
                 "families": families_but(without), "blur_times": blur_times, "temperature": temperature,
                 "seed": args.seed}
        path = save_detector(net, contract, args.fits / f"fit-{number}.pt", facts)
        results[name] = judged(args, path)
        results[name]["views"] = len(train.label)
        print(f"{name}: {path}, {len(train.label)} training views ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = [{"held-out, 8 subjects, network alone": row,
             **{name: rate_text(r["headline"][row]) for name, r in results.items()}} for row in ROWS]
    rows += [{"held-out, 8 subjects, network alone": f"`{family}` answered face or not right",
              **{name: rate_text(r["per_family"][family]["face_or_not"]) for name, r in results.items()}} for family in FAMILY_ROWS]
    for family in SPLIT_ROWS:
        for side in ("face", "not face"):
            n = next(iter(results.values()))["per_family"][family]["face_or_not_by_label"][side]["n"]
            rows.append({"held-out, 8 subjects, network alone": f"`{family}` labelled {side} answered right ({n})",
                         **{name: rate_text(r["per_family"][family]["face_or_not_by_label"][side]) for name, r in results.items()}})
    rows.append({"held-out, 8 subjects, network alone": "expected calibration error",
                 **{name: f"{r['ece']:.3f}" for name, r in results.items()}})
    return write_table(args, rows, {"fits": {name: {k: v for k, v in r.items() if k != "scans"} for name, r in results.items()}},
                       started)


if __name__ == "__main__":
    main()
