"""Would more heads help the detector, or more draws of the same heads, a wider network, or
training without the cuts near the rule's line? A learning curve along the first two, one fit for each other.

Issue 11's network targets (removed faces not called ``face`` >= 0.98, replaced faces called
``replaced`` >= 0.90) are unmet, and the way out this project cannot take here is training on more
heads than its 24 IXI training subjects. This bench asks whether that is the way out: one network
of the shipped members' recipe (their families, 20 epochs' worth of steps) is fitted on

- ``--heads`` training subjects (each repeat a seeded subset of the 20 training heads, nested, so
  a repeat's 5 heads are among its 10) with all 8 draws of every family (round 0 of ``make
  weights``' draws, seed 0), and
- all 20 heads with ``--head-draws`` of those 8 draws,
- all 20 heads with all 8 draws, by networks of ``--widths`` channels, wider than the members', and
- all 20 heads with all 8 draws, without the training scans whose largest kept share of a feature
  lies in ``--band`` around the rule's line (0.3), whose labels the views may not settle,

so that 5 heads x 8 draws and 20 heads x 2 draws, or 10 x 8 and 20 x 4, are the same number of
views: at equal views, does a new head or a new draw of a known head buy more? Every fit takes the
same number of optimiser steps (what 20 epochs are on 20 heads x 8 draws), so a smaller set is seen
for more epochs rather than trained less. The 4 calibration heads are the same in every fit (the
temperature is scaled on all their draws), and every fit is judged on the same scans: the 8
subjects none of them saw (``HELD_OUT``), the fresh draws the shipped column of
``bench/detector_eval.py`` is judged on (seed 1000). ``--repeats`` fits of each point differ in
their heads and the fit's seed (at 20 heads, only in the seed): the spread between them is the
fit's noise, the Wilson interval of one fit the test scans'. Besides the rates at `check`'s
threshold, every fit's face-or-not AUC over the test scans (p(face) against the label) says
whether a rate moved because the network tells faces apart better or because its operating point
moved, and the rate on the scans far from the line (every feature under a tenth kept) whether the
misses that no cut near the line explains moved.

    python bench/learning_curve.py [--ixi ../shared/data/ixi-t1-2mm] [--repeats 2]

Draws the 24 training heads' round 0 once (43 min here in one process, cached in ``data/bundles``
and shared with ``make weights``); each fit takes 7-8 min on 2 cores (16 min at twice the
channels), 14 fits by default, about 110 min. Prints a table and writes JSON (default
bench/results/learning_curve.json), the fits so far after each one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from defacegan.contract import InputContract
from defacegan.detector_data import DRAWS, Samples, bundle_caches, draw, subject_of
from defacegan.detector_training import CHANNELS, EPOCHS, HELD_OUT, calibrate, fit, logits_of, split_subjects
from defacegan.inference import SHIPPED_CHECKPOINT
from defacegan.io import atomic_write_text
from defacegan.report import markdown_table
from detector_eval import FACE, MARGINS, by_margin, headline, held_out_draws, largest_kept, rate_text, recipe_families
from provenance import provenance

#: The rates each fit is judged by (rows of :func:`detector_eval.headline`).
ROWS = ("real faces called face", "every face-labelled variant called face", "removed faces not called face",
        "replaced faces called replaced", "removed faces of the families trained on not called face",
        "replaced faces of the families trained on called replaced")
#: The row of :func:`detector_eval.by_margin` far from the rule's line: scans keeping under a tenth
#: of every feature (so all removed or replaced), whose rate is theirs not called face.
FAR = f"{MARGINS[0]:.2f}-{MARGINS[1]:.2f}"
#: Batch size of every fit (given to :func:`defacegan.detector_training.fit`).
BATCH = 32


class Point(NamedTuple):
    """One fit's recipe: ``heads`` training subjects, ``draws`` draws per family and head, a network
    of ``channels``, trained without the scans whose largest kept share lies in ``band`` (if any)."""

    heads: int
    draws: int
    channels: tuple[int, ...] = CHANNELS
    band: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        wider = "" if self.channels == CHANNELS else f", channels {'/'.join(map(str, self.channels))}"
        band = "" if self.band is None else f", without {self.band[0]:.2f}-{self.band[1]:.2f} kept"
        return f"{self.heads} x {self.draws}{wider}{band}"


def points(heads: list[int], head_draws: list[int], widths: list[tuple[int, ...]], band: tuple[float, float] | None,
           pool: int) -> list[Point]:
    """Every fit: the heads axis at DRAWS draws, the draws axis at all ``pool`` heads, then at all
    heads and draws the wider networks and the fit without the scans near the rule's line."""
    return ([Point(n, DRAWS) for n in heads] + [Point(pool, d) for d in head_draws if d != DRAWS]
            + [Point(pool, DRAWS, w) for w in widths if w != CHANNELS] + ([Point(pool, DRAWS, band=band)] if band else []))


def width(text: str) -> tuple[int, ...]:
    """``--widths`` argument: channels of the network's convolutions, e.g. 16,32,64."""
    return tuple(int(n) for n in text.split(","))


def fit_point(samples: Samples, point: Point, heads: list[str], val: Samples, test: Samples, trained: list[str],
              steps: int, seed: int, contract: InputContract) -> dict:
    """One network of ``point``'s recipe fitted on its draws of ``heads`` for ``steps`` steps,
    calibrated on ``val`` and judged on ``test``."""
    keep = np.isin(samples.family, trained) & np.isin(samples.subject, heads) & (samples.number < point.draws)
    if point.band is not None:
        kept = largest_kept(samples)
        keep &= (kept < point.band[0]) | (kept >= point.band[1])
    train = samples.where(keep)
    epochs = max(1, round(steps / (len(train.label) // BATCH)))
    started = time.perf_counter()
    net = fit(train, contract, epochs=epochs, seed=seed, batch_size=BATCH, channels=point.channels)
    temperature = calibrate(net, val)
    probabilities = torch.softmax(logits_of(net, test.views), 1).numpy()
    return {"point": point.name, "heads": len(heads), "draws": point.draws, "channels": list(point.channels),
            "band": point.band, "seed": seed, "subjects": heads, "views": len(train.label), "epochs": epochs,
            "temperature": temperature, "fit_seconds": time.perf_counter() - started,
            "headline": headline(test, probabilities, trained=trained),
            "margins": by_margin(test, probabilities, trained),
            "auc": float(roc_auc_score(test.label == FACE, probabilities[:, FACE]))}


def mean_of(entries: list[dict]) -> str:
    """Rates' mean over the repeats, then every repeat's rate [Wilson 95 %]."""
    return f"{np.mean([e['rate'] for e in entries]):.3f} (" + "; ".join(map(rate_text, entries)) + ")"


def summary_rows(fits: list[dict]) -> list[dict]:
    """Per point: views; each rate's mean over the repeats with every repeat's rate [Wilson 95 %],
    of :data:`ROWS` and far from the line (:data:`FAR`); the face-or-not AUC's mean with every repeat's."""
    rows = []
    for point in dict.fromkeys(f["point"] for f in fits):
        group = [f for f in fits if f["point"] == point]
        row = {"fit": point, "views": group[0]["views"]}
        row.update({name: mean_of([f["headline"][name] for f in group]) for name in ROWS})
        row[f"removed or replaced keeping under {MARGINS[1]:.0%} of every feature, families trained on, not called face"] = \
            mean_of([f["margins"][FAR] for f in group])
        aucs = [f["auc"] for f in group]
        row["face or not, AUC"] = f"{np.mean(aucs):.3f} (" + "; ".join(f"{a:.3f}" for a in aucs) + ")"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ixi", type=Path, default=Path("../shared/data/ixi-t1-2mm"))
    parser.add_argument("--cache", type=Path, default=Path("data/bundles"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/learning_curve.json"))
    parser.add_argument("--heads", type=int, nargs="+", default=[5, 10, 20], help="training heads, at all 8 draws")
    parser.add_argument("--head-draws", type=int, nargs="+", default=[2, 4], help="draws per family and head, at all heads")
    parser.add_argument("--widths", type=width, nargs="*", default=[(16, 32, 64)],
                        help="channels of wider networks, at all heads and draws, e.g. 16,32,64")
    parser.add_argument("--band", type=float, nargs=2, default=[0.1, 0.6], metavar=("LOW", "HIGH"),
                        help="one fit at all heads and draws without the training scans whose largest kept share "
                             "lies in [LOW, HIGH): the cuts near the rule's line (0.3)")
    parser.add_argument("--no-band", dest="band", action="store_const", const=None, help="no such fit")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    contract = InputContract()
    caches = bundle_caches(sorted(args.ixi.glob("*.nii*")), contract, args.cache)
    held = [cache for cache in caches if subject_of(cache) in HELD_OUT]
    known = [cache for cache in caches if subject_of(cache) not in HELD_OUT]
    samples = draw(known, contract, args.cache, draws=DRAWS, seed=args.seed)
    test = held_out_draws(held, contract, args.cache, DRAWS, args.seed)
    trained = recipe_families(Path(str(SHIPPED_CHECKPOINT)), None)
    pool, val_heads = split_subjects(sorted({subject_of(c) for c in known}), val=4, seed=args.seed)
    if max(args.heads) > len(pool):
        raise SystemExit(f"--heads: at most {len(pool)} training heads ({len(known)} known, 4 calibrate)")
    val = samples.where(np.isin(samples.family, trained) & np.isin(samples.subject, val_heads))
    # EPOCHS over the largest set, all the pool's draws of the trained families
    steps = EPOCHS * (int(np.sum(np.isin(samples.family, trained) & np.isin(samples.subject, pool))) // BATCH)
    print(f"{len(samples.label)} training and {len(test.label)} test scans drawn ({time.perf_counter() - started:.0f} s); "
          f"{steps} steps a fit", flush=True)
    fits = []
    result = {"test_subjects": sorted(set(test.subject)), "val_subjects": val_heads, "pool": pool,
              "trained_families": trained, "steps": steps, "fits": fits, "run": provenance()}

    def save() -> None:  # after every fit, so that an interrupted run keeps the fits it made
        result["seconds"] = time.perf_counter() - started
        atomic_write_text(args.out, json.dumps(result, indent=2, default=float) + "\n")

    for repeat in range(args.repeats):
        order = [str(s) for s in np.random.default_rng(args.seed + repeat).permutation(pool)]
        for point in points(args.heads, args.head_draws, args.widths, args.band and tuple(args.band), len(pool)):
            fits.append(fit_point(samples, point, sorted(order[:point.heads]), val, test, trained, steps,
                                  args.seed + repeat, contract))
            line = "; ".join(f"{name} {rate_text(fits[-1]['headline'][name])}" for name in ROWS[2:4])
            print(f"repeat {repeat}, {point.name}: {line}; AUC {fits[-1]['auc']:.3f} "
                  f"({fits[-1]['fit_seconds']:.0f} s)", flush=True)
            save()
    rows = summary_rows(fits)
    print(f"\nLearning curve: {len(test.label)} test scans of {len(set(test.subject))} held-out subjects; "
          f"mean of {args.repeats} fits (each fit's rate [Wilson 95 %])\n")
    print(markdown_table(rows, list(rows[0])))
    save()
    print(f"written to {args.out} in {result['seconds'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
