"""Evaluate the three-way detector on held-out IXI subjects: every figure the README states.

Every IXI head of the subset is registered once (cached bundles), every defacing family is drawn
``--draws`` times per head and round (``--rounds``) with a random pose and contrast, and the
detector is fitted with :mod:`defacegan.detector_training` by the recipe of one of the shipped
detector's members (its draws, rounds and epochs, and the families it was trained on, from its
facts, and its contract's flattening unless ``--flatten-mm`` says otherwise; every family is tested;
one network per fold, not an ensemble: three would triple the hour this takes). Then:

0. **The shipped detector** (the ensemble ``make weights`` writes) on the 8 subjects it never saw
   (``HELD_OUT``), one round of fresh draws, and the partial-removal sweep (3.) on them, with how
   many subjects it calls ``face`` at each step, and per subject the removed or replaced faces far
   from the rule's line (under 10 % of every feature kept) it calls ``face``; every test scan's label,
   feature shares and probabilities are kept in the JSON (``scans``; the k-fold's, from the fold model that
   never saw each subject, beside the k-fold's figures). ``--shipped-only`` redoes this part alone.
1. **k-fold over subjects** (``--folds``, default 4 × 8 subjects): each subject is a test subject
   once; 3 training subjects per fold calibrate the temperature. Rates on the test folds:
   real faces called ``face``; partial defacings that leave the eyes and the nose called
   ``face``, and those that leave the eyes but not the nose (of the ``partial`` family, and of
   ``eye_level``, the learned defacer's cut); every face-labelled variant; removed
   faces not called ``face``; replaced faces called ``replaced``; one row per family. Wilson 95 % intervals, with the number of scans and
   of independent subjects behind each rate (draws of one subject are not independent: the
   subject count is the one that limits what a rate can claim).
2. **Calibration**: expected calibration error (15 bins, top-class confidence) before and after
   temperature scaling, and a reliability diagram.
3. **Partial-removal sweep**: the share of the face region removed from below, from the front, or
   of the nose only, against p(face), on each subject with the fold model that never saw it.
4. **Leave-one-family-out** on one subject split (fold 0): trained without a family, tested on it.

Writes ``<out>/detector_eval.json``, ``detector_eval.md``, ``reliability.png``, ``sweep.png``;
prints the tables. About 50 minutes on 2 cores once the views are drawn (4 k-fold fits of ~8 min,
12 leave-one-family-out fits of ~1 min; 64 min at 01d3b4f with 8 min of drawing); the first run
also registers the 32 heads (under a minute) and draws their views (two processes on a 24 GB
machine: 31 min for the 64 heads and rounds at 745f5ec), both cached in ``data/bundles`` and
shared with ``make weights``; ``--no-lofo`` skips the leave-one-family-out fits and
``--lofo-only`` adds them later to the report in ``--out``.

    python bench/detector_eval.py [--ixi ../shared/data/ixi-t1-2mm] [--folds 4] [--no-lofo | --lofo-only] [--shipped-only]
    python bench/detector_eval.py --view-mode all_face --no-lofo --out bench/results/detector_eval-nine
    python bench/detector_eval.py --shipped-only --ckpt OTHER.pt --out DIR
    python bench/detector_eval.py --train-rounds 4 --no-lofo --out bench/results/detector_eval-rounds4

The second fits the k-fold on another contract's views (here the nine views, without the face's
texture, docs/detector.md); the shipped column is drawn on the shipped detector's own. The third is the shipped column of another detector, on the held-out heads' draws of its
own contract (read from its checkpoint): the nine-view one (``git show
a78e2cc:src/defacegan/assets/detector.pt``), a member, or an ensemble of members on another contract
(``python -m defacegan.detector_training --view-mode all_face`` or ``--flatten-mm 20``), the same
subjects, variants and poses as the shipped detector's column.
The fourth trains each k-fold network on four rounds of draws instead of two and tests it on the
same scans as the first (the first two rounds of the test subjects): ``bench/kfold_compare.py``
reads the two reports side by side. ``--fits DIR`` keeps every fold's networks, which
``bench/anatomy.py --folds DIR`` puts through ``check``'s own path on the heads each never saw.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from defacegan.contract import VERDICTS, InputContract
from defacegan.detector_data import DRAWS, ROUNDS, Samples, bundle_caches, draw, read_bundle, subject_of
from defacegan.detector_training import EPOCHS, HELD_OUT, calibrate, fit, logits_of, save_detector, save_ensemble, split_subjects
from defacegan.families import FAMILIES, SWEEP_MODES, FaceBundle, families_but, remove_share
from defacegan.features import FACE_MIN_FRACTION, FEATURES
from defacegan.inference import SHIPPED_CHECKPOINT, load_network, verdict_of
from defacegan.io import atomic_write_text
from defacegan.metrics import expected_calibration_error, subject_bootstrap_interval, wilson_interval
from defacegan.models.detector import DetectorEnsemble, DetectorNet
from defacegan.report import markdown_table
from defacegan.views import VIEW_MODES
from provenance import provenance

FACE, REMOVED, REPLACED = (VERDICTS.index(v) for v in VERDICTS)
SWEEP_STEPS = np.linspace(0, 1, 11)
#: `check --threshold` values whose trade-off the k-fold table shows.
THRESHOLDS = (0.1, 0.2, 0.3, 0.5)


def rate(hits: np.ndarray, subjects: np.ndarray) -> dict:
    """A rate with its Wilson interval, scan count and subject count, and its interval with the
    heads resampled (``heads_low``, ``heads_high``: :func:`subject_bootstrap_interval`). Wilson's
    takes every scan for an independent trial; a head's draws are alike, so with few heads the
    resampled interval is the wider and the more honest of the two."""
    hits, subjects = np.asarray(hits, dtype=float), np.asarray(subjects)
    k, n = int(np.sum(hits)), int(np.size(hits))
    low, high = wilson_interval(k, n)
    heads_low, heads_high = subject_bootstrap_interval(lambda i: hits[i].mean(), subjects) if n else (float("nan"),) * 2
    return {"rate": k / n if n else float("nan"), "low": low, "high": high, "k": k, "n": n,
            "subjects": int(np.unique(subjects).size), "heads_low": heads_low, "heads_high": heads_high}


def rate_text(entry: dict) -> str:
    """The rate [Wilson 95 %; heads resampled 95 %, where the entry has it]."""
    if not entry["n"]:
        return "n/a"
    heads = f"; heads {entry['heads_low']:.3f}, {entry['heads_high']:.3f}" if "heads_low" in entry else ""
    return f"{entry['rate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}{heads}]"


def fold_of(bundles: list[FaceBundle], folds: int, seed: int) -> dict[str, int]:
    """Each subject's fold: a seeded shuffle dealt round the ``folds``."""
    subjects = sorted({b.subject for b in bundles})
    order = np.random.default_rng(seed).permutation(len(subjects))
    return {subjects[i]: n % folds for n, i in enumerate(order)}


def kfold(bundles: list[FaceBundle], samples: Samples, drawn: list[Samples], contract: InputContract, folds: int,
          epochs: int, seed: int, trained: list[str], fits: Path | None = None):
    """Test probabilities (calibrated, and with temperature 1) for every scan of ``samples``, each
    from the fold's networks that did not see its subject, fitted on the ``trained`` families; plus
    the fold models and the seconds each fold's fits cost. With ``fits``, each fold's networks are
    kept there (:func:`keep_fold`).

    A fold fits one network per entry of ``drawn``, each on its own draws, with its own
    calibration subjects and seed, as ``make weights``' members differ (``drawn[m]`` holds the
    draws of seed ``seed + m``, ``samples``' rounds or more); their calibrated probabilities are
    averaged, as :class:`~defacegan.models.detector.DetectorEnsemble` does.
    """
    fold_of_subject = fold_of(bundles, folds, seed)
    probabilities = np.zeros((len(samples.label), len(VERDICTS)), np.float32)
    raw = np.zeros_like(probabilities)
    models, seconds = {}, []
    for fold in range(folds):
        test = {s for s, f in fold_of_subject.items() if f == fold}
        at_test = np.isin(samples.subject, sorted(test))
        started, nets, facts = time.perf_counter(), [], []
        for member, theirs in enumerate(drawn):
            member_seed = seed + fold + 100 * member  # member 0: the single network's seeds
            train_subjects, val_subjects = split_subjects([s for s in fold_of_subject if s not in test], val=3, seed=member_seed)
            recipe = np.isin(theirs.family, trained)
            net = fit(theirs.where(recipe & np.isin(theirs.subject, train_subjects)), contract, epochs=epochs, seed=member_seed)
            logits = logits_of(net, samples.views[torch.as_tensor(at_test)])  # temperature 1 until calibrated
            raw[at_test] += torch.softmax(logits, 1).numpy() / len(drawn)
            calibrate(net, theirs.where(recipe & np.isin(theirs.subject, val_subjects)))
            probabilities[at_test] += torch.softmax(logits / net.temperature, 1).numpy() / len(drawn)
            nets.append(net)
            facts.append({"fold": fold, "seed": member_seed, "trained_families": list(trained), "train_subjects": train_subjects,
                          "val_subjects": val_subjects, "test_subjects": sorted(test)})
        seconds.append(time.perf_counter() - started)
        if fits is not None:
            keep_fold(fits, fold, nets, facts, contract)
        models.update({s: nets[0] if len(nets) == 1 else DetectorEnsemble(nets).eval() for s in test})
        print(f"fold {fold}: {len(train_subjects)} train / {len(val_subjects)} val / {len(test)} test subjects, "
              f"T = {' / '.join(f'{float(net.temperature):.2f}' for net in nets)}, fit {seconds[-1]:.0f} s", flush=True)
    return probabilities, raw, models, seconds


def keep_fold(fits: Path, fold: int, nets: list[DetectorNet], facts: list[dict], contract: InputContract) -> Path:
    """A fold's networks as one checkpoint, ``fits/fold-K.pt`` (an ensemble of its members'
    checkpoints where it has several), and its test subjects in ``fits/folds.json``: what
    ``bench/anatomy.py --folds`` puts through ``check``'s own path, heads the network never saw."""
    fits.mkdir(parents=True, exist_ok=True)
    path = fits / f"fold-{fold}.pt"
    if len(nets) == 1:
        save_detector(nets[0], contract, path, facts[0])
    else:
        save_ensemble([save_detector(net, contract, fits / f"fold-{fold}-member-{m}.pt", fact)
                       for m, (net, fact) in enumerate(zip(nets, facts))], path, held_out=facts[0]["test_subjects"])
    index = fits / "folds.json"
    folds = json.loads(index.read_text()) if fold and index.exists() else {}
    folds[path.name] = facts[0]["test_subjects"]
    atomic_write_text(index, json.dumps(folds, indent=2) + "\n")
    return path


def verdicts(probabilities: np.ndarray, threshold: float = 0.5, tissue: list[dict] | None = None,
             texture: list[float] | None = None) -> np.ndarray:
    """Each scan's verdict index by `check`'s rule (:func:`defacegan.inference.verdict_of`), with
    the anatomy's second opinion where ``tissue`` gives each scan's feature regions and ``texture``
    its face's texture (`check --anatomy`)."""
    tissue = tissue or [None] * len(probabilities)
    texture = texture or [None] * len(probabilities)
    return np.array([VERDICTS.index(verdict_of(dict(zip(VERDICTS, map(float, p))), threshold, t, x))
                     for p, t, x in zip(probabilities, tissue, texture)])


def headline(samples: Samples, probabilities: np.ndarray | None, threshold: float = 0.5, tissue: list[dict] | None = None,
             trained: list[str] | None = None, texture: list[float] | None = None, said: np.ndarray | None = None) -> dict[str, dict]:
    """The detector's targets (bench/trust.py's TARGETS), each as a rate over test scans, at `check
    --threshold` ``threshold`` (with `--anatomy` where ``tissue`` and ``texture`` are given), or of the verdict indices ``said``
    (as `check` gave them, e.g. with its pose guard's); when the detector was ``trained`` on some
    families only, the removed and replaced rows again over those families' scans."""
    if said is None:
        said = verdicts(probabilities, threshold, tissue, texture)
    eyes, nose = FEATURES.index("eyes"), FEATURES.index("nose")
    keeps_eyes, keeps_nose = (samples.own[:, feature] >= FACE_MIN_FRACTION for feature in (eyes, nose))
    # a nose outside the field of view (NaN share) counts in neither keeps_nose nor eyes_only
    eyes_only = keeps_eyes & (samples.own[:, nose] < FACE_MIN_FRACTION)
    partial = samples.family == "partial"
    groups = {
        "real faces called face": (samples.family == "none", said == FACE),
        "partial defacings leaving eyes and nose called face": (partial & keeps_eyes & keeps_nose, said == FACE),
        "partial defacings leaving the eyes but not the nose called face": (partial & eyes_only, said == FACE),
        "eye-level cuts leaving the eyes but not the nose called face": ((samples.family == "eye_level") & eyes_only, said == FACE),
        "every face-labelled variant called face": (samples.label == FACE, said == FACE),
        "removed faces not called face": (samples.label == REMOVED, said != FACE),
        "replaced faces not called face": (samples.label == REPLACED, said != FACE),
        "replaced faces called replaced": (samples.label == REPLACED, said == REPLACED),
        "removed faces called removed": (samples.label == REMOVED, said == REMOVED),
    }
    if trained is not None and set(trained) != set(FAMILIES):
        seen = np.isin(samples.family, trained)
        groups["removed faces of the families trained on not called face"] = (seen & (samples.label == REMOVED), said != FACE)
        groups["replaced faces of the families trained on called replaced"] = (seen & (samples.label == REPLACED), said == REPLACED)
    return {name: rate(hit[which], samples.subject[which]) for name, (which, hit) in groups.items()}


#: Edges of the largest share of its own tissue that any feature of a scan keeps: the rule's line
#: (FACE_MIN_FRACTION) splits the removed or replaced scans below it from the faces above it.
MARGINS = (0.0, 0.1, FACE_MIN_FRACTION, 0.6, 0.99, 1.0)


def largest_kept(samples: Samples) -> np.ndarray:
    """Per scan, the largest share of its own tissue that any feature keeps (NaN, a feature outside
    the field of view, keeps none)."""
    return np.nan_to_num(samples.own, nan=0.0).max(axis=1)


def of_families(samples: Samples, families: list[str] | None) -> np.ndarray:
    """Which scans are of ``families`` (all of them for None)."""
    return np.isin(samples.family, families) if families is not None else np.ones(len(samples.family), bool)


def by_margin(samples: Samples, probabilities: np.ndarray, trained: list[str] | None = None) -> dict[str, dict]:
    """Face or not, right, by how far a scan lies from the rule's line: the largest share of its
    own tissue any feature keeps, in the bins of :data:`MARGINS` (the last one closed: intact
    features). Families not ``trained`` on are left out (their rows in :func:`per_family` show them)."""
    said, kept, seen = verdicts(probabilities), largest_kept(samples), of_families(samples, trained)
    table = {}
    for low, high in zip(MARGINS[:-1], MARGINS[1:]):
        which = seen & (kept >= low) & ((kept < high) if high < MARGINS[-1] else (kept <= high))
        if which.any():
            table[f"{low:.2f}-{high:.2f}"] = rate((said[which] == FACE) == (samples.label[which] == FACE), samples.subject[which])
    return table


def far_from_line(samples: Samples, trained: list[str] | None = None) -> np.ndarray:
    """Which scans are removed or replaced faces that keep under a tenth of every feature (the
    first bin of :data:`MARGINS`), of the families ``trained`` on."""
    return of_families(samples, trained) & (largest_kept(samples) < MARGINS[1]) & (samples.label != FACE)


def fully_removed_by_subject(samples: Samples, probabilities: np.ndarray, trained: list[str] | None = None) -> dict[str, dict]:
    """:func:`far_from_line`'s scans not called ``face``, per subject: whether the misses far from
    the rule's line are spread over the heads or sit on a few."""
    said, which = verdicts(probabilities), far_from_line(samples, trained)
    table = {}
    for subject in sorted(set(samples.subject[which])):
        theirs = which & (samples.subject == subject)
        table[subject] = rate(said[theirs] != FACE, samples.subject[theirs])
    return table


def family_rates(labels: np.ndarray, subjects: np.ndarray, said: np.ndarray) -> dict:
    """One family's test scans: how many of each label, and the verdicts ``said`` right three-way and face or not."""
    return {"labels": {v: int((labels == i).sum()) for i, v in enumerate(VERDICTS)},
            "three_way": rate(said == labels, subjects),
            "face_or_not": rate((said == FACE) == (labels == FACE), subjects)}


def per_family(samples: Samples, probabilities: np.ndarray) -> dict[str, dict]:
    said = verdicts(probabilities)
    table = {}
    for family in FAMILIES:
        which = samples.family == family
        labels, subjects, called_face = samples.label[which], samples.subject[which], said[which] == FACE
        table[family] = {
            **family_rates(labels, subjects, said[which]),
            # a family drawn on both sides of the rule's line can be right on one side only
            "face_or_not_by_label": {"face": rate(called_face[labels == FACE], subjects[labels == FACE]),
                                     "not face": rate(~called_face[labels != FACE], subjects[labels != FACE])},
        }
    return table


def reliability_png(probabilities: np.ndarray, labels: np.ndarray, path: Path, bins: int = 15) -> None:
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    axis.bar(centres, accuracy, width=1 / bins, edgecolor="k", alpha=0.7, label="test scans")
    axis.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability, calibrated, k-fold test")
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def sweep(bundles: list[FaceBundle], models: dict, contract: InputContract) -> dict:
    results = {}
    for mode in SWEEP_MODES:
        curves, rule = [], []
        for bundle in bundles:
            variants = [remove_share(bundle, share, mode) for share in SWEEP_STEPS]
            volumes = torch.stack([torch.from_numpy(v.volume) for v in variants])[:, None]
            logits = logits_of(models[bundle.subject], contract.views(volumes))
            curves.append(torch.softmax(logits, 1)[:, FACE].numpy())
            rule.append([v.label(bundle.features) == "face" for v in variants])
        results[mode] = {"share": SWEEP_STEPS.tolist(), "p_face_mean": np.mean(curves, 0).tolist(),
                         "p_face_min": np.min(curves, 0).tolist(), "p_face_max": np.max(curves, 0).tolist(),
                         "called_face": np.sum(np.asarray(curves) >= 0.5, 0).tolist(),
                         "rule_face_rate": np.mean(rule, 0).tolist(), "subjects": len(bundles)}
    return results


def sweep_png(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    titles = {"below": "face region removed from below", "front": "face region removed from the front",
              "nose": "nose removed from the front"}
    for axis, (mode, r) in zip(axes, results.items()):
        axis.fill_between(r["share"], r["p_face_min"], r["p_face_max"], alpha=0.25, label="min-max over subjects")
        axis.plot(r["share"], r["p_face_mean"], "o-", label="mean p(face)")
        axis.plot(r["share"], r["rule_face_rate"], "k--", label="share labelled face by the rule")
        axis.set(title=titles[mode], xlabel="share removed", ylim=(-0.02, 1.02))
    axes[0].set_ylabel(f"p(face), {results['below']['subjects']} held-out subjects")
    axes[0].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def leave_one_family_out(samples: Samples, contract: InputContract, bundles: list[FaceBundle], folds: int,
                         epochs: int, seed: int, per_round: int, draws: int, trained: list[str],
                         kfold_probabilities: np.ndarray) -> dict:
    """Fold 0's split, fitted on the first ``draws`` draws of each family in every round of
    ``per_round`` (fewer than the k-fold's, to keep the fits affordable): trained on the ``trained``
    families without one, tested on every draw of it. Beside each, on the same test scans, the
    same fit trained with every family (``with_every_family``: what leaving the family out costs,
    apart from the smaller fit) and the k-fold's fold-0 network (or ensemble, with ``--members``),
    trained with it on every draw (``kfold_network``, from ``kfold_probabilities``)."""
    fold_of_subject = fold_of(bundles, folds, seed)
    test = sorted(s for s, f in fold_of_subject.items() if f == 0)
    train_subjects, val_subjects = split_subjects([s for s in fold_of_subject if s not in test], val=3, seed=seed)
    fewer, at_test = samples.number % per_round < draws, np.isin(samples.subject, test)

    def fitted(families: list[str]) -> tuple[DetectorNet, float]:
        started = time.perf_counter()
        recipe = fewer & np.isin(samples.family, families)
        net = fit(samples.where(recipe & np.isin(samples.subject, train_subjects)), contract, epochs=epochs, seed=seed)
        calibrate(net, samples.where(recipe & np.isin(samples.subject, val_subjects)))
        return net, time.perf_counter() - started

    def answers(net: DetectorNet, held: Samples) -> dict:
        return on_family(held, torch.softmax(logits_of(net, held.views), 1).numpy())  # calibrated: the net divides by its temperature

    every, every_seconds = fitted(trained)
    print(f"with every family: {every_seconds:.0f} s", flush=True)
    results, with_every, by_kfold = {}, {}, {}
    for family in FAMILIES:
        if family == "none":
            continue
        which = at_test & (samples.family == family)
        held = samples.where(which)
        net, seconds = fitted([f for f in trained if f != family]) if family in trained else (every, every_seconds)
        results[family] = {**answers(net, held), "fit_seconds": seconds}
        with_every[family] = answers(every, held) if family in trained else None
        by_kfold[family] = on_family(held, kfold_probabilities[which]) if family in trained else None
        print(f"without {family}: {rate_text(results[family]['three_way'])} three-way on it "
              f"({seconds:.0f} s)", flush=True)
    return {"test_subjects": test, "train_subjects": train_subjects, "draws": draws, "families": results,
            "with_every_family": with_every, "with_every_family_fit_seconds": every_seconds, "kfold_network": by_kfold,
            "run": provenance()}


def on_family(held: Samples, probabilities: np.ndarray) -> dict:
    """Leave-one-family-out's rates on one family's test scans."""
    said = verdicts(probabilities)
    removed_or_replaced = held.label != FACE
    return {**family_rates(held.label, held.subject, said),
            "replaced_vs_removed": rate(said[removed_or_replaced] == held.label[removed_or_replaced], held.subject[removed_or_replaced])}


def kfold_probabilities_of(report: dict, samples: Samples) -> np.ndarray:
    """The k-fold's test probabilities of ``samples``, from the report's per-scan rows (which must
    be these very draws, in this order)."""
    rows = report["scans"]
    if len(rows) != len(samples.label) or any((r["subject"], r["family"], r["draw"]) != (s, f, int(n))
                                              for r, s, f, n in zip(rows, samples.subject, samples.family, samples.number)):
        raise SystemExit("the report's k-fold scans are not these draws: run again without --lofo-only")
    return np.array([[r["p"][v] for v in VERDICTS] for r in rows], np.float32)


def recipe_families(ckpt: Path, without: list[str] | None) -> list[str]:
    """The families the k-fold and leave-one-family-out fits train on: all but ``without`` when it
    is given, else those the members of ``ckpt`` were trained on (their facts; ``make weights``
    leaves out WEIGHT_WITHOUT), so that the fits repeat the recipe of the detector they stand beside."""
    if without is None:
        return trained_families(load_network(ckpt)[2])
    return families_but(without)


def trained_families(facts: dict) -> list[str]:
    """The families a detector's members were trained on, from its facts (all, where they do not say)."""
    trained = {family for member in facts.get("members", [facts]) for family in member.get("families", FAMILIES)}
    return [family for family in FAMILIES if family in trained]


def table(columns: list[str], rows: list[list[str]]) -> str:
    return markdown_table([dict(zip(columns, row)) for row in rows], columns)


def held_out_draws(held: list[Path], contract: InputContract, cache_dir: Path, draws: int, seed: int) -> Samples:
    """The held-out heads' test scans: one round of draws seeded apart from every training round."""
    return draw(held, contract, cache_dir, draws=draws, seed=seed + 1000)


def shipped(paths: list[Path], cache_dir: Path, draws: int, seed: int, ckpt: Path) -> dict:
    """The detector ``ckpt`` (the shipped one by default) on the subjects it never saw (HELD_OUT),
    fresh draws of every family on its own contract (whatever the k-fold's)."""
    net, contract, facts = load_network(ckpt)
    held = bundle_caches([path for path in paths if subject_of(path) in HELD_OUT], contract, cache_dir)
    samples = held_out_draws(held, contract, cache_dir, draws, seed)
    probabilities = torch.softmax(logits_of(net, samples.views), 1).numpy()
    bundles = [read_bundle(cache) for cache in held]
    trained = trained_families(facts)
    return {"ckpt": str(ckpt), "contract": contract.to_dict(), "subjects": sorted(set(samples.subject)), "draws": draws, "training": facts,
            "headline": headline(samples, probabilities, trained=trained), "per_family": per_family(samples, probabilities),
            "margins": by_margin(samples, probabilities, trained),
            "fully_removed_by_subject": fully_removed_by_subject(samples, probabilities, trained),
            "ece": expected_calibration_error(probabilities, samples.label),
            "sweep": sweep(bundles, {bundle.subject: net for bundle in bundles}, contract),
            "scans": scan_rows(samples, probabilities), "run": provenance()}


def scan_rows(samples: Samples, probabilities: np.ndarray) -> list[dict]:
    """One row per test scan (where it came from, its label, each feature's own share, the three
    probabilities): what a rate's misses can be looked up in without drawing again."""
    return [{"subject": str(samples.subject[i]), "family": str(samples.family[i]), "draw": int(samples.number[i]),
             "label": VERDICTS[samples.label[i]], "own": dict(zip(FEATURES, map(float, samples.own[i]))),
             "p": dict(zip(VERDICTS, map(float, probabilities[i])))} for i in range(len(samples.label))]


def headline_rows(results: dict) -> list[list[str]]:
    return [[name, rate_text(r), f"{r['n']} ({r['subjects']})"] for name, r in results.items()]


def family_rows(results: dict) -> list[list[str]]:
    return [[family, " / ".join(f"{v[0]}{n}" for v, n in r["labels"].items()), rate_text(r["three_way"]),
             rate_text(r["face_or_not"]), f"{r['three_way']['n']} ({r['three_way']['subjects']})"]
            for family, r in results.items()]


def margin_lines(results: dict) -> list[str]:
    """The table of :func:`by_margin` (none for a report written before it existed)."""
    if "margins" not in results:
        return []
    return [f"Face or not, right, by the largest share of its own tissue a feature keeps (the rule's line: "
            f"{FACE_MIN_FRACTION}; the families trained on):", "",
            table(["kept", "right", "scans (subjects)"], [[k, rate_text(r), f"{r['n']} ({r['subjects']})"] for k, r in results["margins"].items()]), "",
            *subject_lines(results)]


def subject_lines(results: dict) -> list[str]:
    """The table of :func:`fully_removed_by_subject` (none for a report written before it existed)."""
    if "fully_removed_by_subject" not in results:
        return []
    rows = results["fully_removed_by_subject"]
    return [f"Removed or replaced faces keeping under {MARGINS[1]:.0%} of every feature, not called face, per subject:", "",
            table(["subject", "not called face", "scans", "called face"],
                  [[k, rate_text(r), str(r["n"]), str(r["n"] - r["k"])] for k, r in rows.items()]), ""]


def markdown(report: dict) -> str:
    family_columns = ["family", "labels f/r/r", "three-way", "face or not", "scans (subjects)"]
    lines = []
    if report.get("shipped"):
        ship = report["shipped"]
        members = len(ship["training"].get("members", [])) or 1
        name = "The shipped detector" if ship["ckpt"] == str(SHIPPED_CHECKPOINT) else f"The detector {ship['ckpt']}"
        lines += [f"{name} ({members} member{'s' * (members > 1)}) on the {len(ship['subjects'])} IXI subjects it never saw, {ship['draws']} fresh "
                  f"draws of every family each; rate [Wilson 95 %; heads resampled 95 %], scans (subjects); ECE {ship['ece']:.3f}.", "",
                  table(["shipped detector, held-out subjects", "rate", "scans (subjects)"], headline_rows(ship["headline"])), "",
                  table(family_columns, family_rows(ship["per_family"])), "",
                  *margin_lines(ship),
                  "The partial-removal sweep on the same subjects: subjects called face (p(face) ≥ 0.5) / labelled face by the rule, "
                  f"of {len(ship['subjects'])}, at each share removed:", "",
                  table(["removed", *(f"{share:.0%}" for share in SWEEP_STEPS)],
                        [[mode, *(f"{called} / {round(rule * r['subjects'])}" for called, rule in zip(r["called_face"], r["rule_face_rate"]))]
                         for mode, r in ship["sweep"].items()]), ""]
    if "headline" not in report:  # --shipped-only before any full run
        return "\n".join(lines)
    untrained = [family for family in FAMILIES if family not in report.get("trained_families", FAMILIES)]
    members = report.get("members", 1)
    networks = "one network (one member of the shipped recipe)" if members == 1 else \
        f"an ensemble of {members} networks (members of the shipped recipe, each on its own draws, seed and calibration subjects)"
    lines += [f"k-fold: {report['subjects']} IXI subjects in {report['folds']} folds, each tested once by {networks} "
              f"trained without it ({report.get('train_rounds', report['rounds'])} rounds of {report['draws']} draws per family and subject, "
              f"{report['epochs']} epochs{'; not trained on ' + ', '.join(untrained) if untrained else ''}, tested on every family).", "",
              table(["k-fold test", "rate", "scans (subjects)"], headline_rows(report["headline"])), "",
              table(family_columns, family_rows(report["per_family"])), "", *margin_lines(report)]
    names = list(report["headline"])
    rows = [[name, *(rate_text(report["thresholds"][str(t)][name]) for t in THRESHOLDS)] for name in names]
    lines += ["k-fold rates at other `check --threshold` values (a scan is `face` when p(face) ≥ threshold):", "",
              table(["k-fold test", *(f"threshold {t}" for t in THRESHOLDS)], rows), ""]
    calibration = report["calibration"]
    lines += [f"Expected calibration error (15 bins): {calibration['ece_raw']:.3f} before, "
              f"{calibration['ece_calibrated']:.3f} after temperature scaling ({calibration['scans']} test scans).", ""]
    lofo = report["leave_one_family_out"]
    if not lofo["families"]:
        return "\n".join(lines) + "\n"

    def beside(family: str, key: str) -> list[str]:
        other = (lofo.get(key) or {}).get(family)
        return [rate_text(other["three_way"]), rate_text(other["face_or_not"])] if other else ["n/a", "n/a"]

    rows = [[family, rate_text(r["three_way"]), rate_text(r["face_or_not"]), rate_text(r["replaced_vs_removed"]),
             *beside(family, "with_every_family"), *beside(family, "kfold_network"),
             f"{r['three_way']['n']} ({r['three_way']['subjects']})", f"{r['fit_seconds']:.0f}"]
            for family, r in lofo["families"].items()]
    lines += [f"Leave-one-family-out ({len(lofo['test_subjects'])} test subjects, every draw of the family; fits on "
              f"{lofo['draws']} draw(s) per family and round): trained without the family; the same fit with every family; "
              "the k-fold's network of those subjects (every draw, with every family):", "",
              table(["held-out family", "without it: three-way", "without it: face or not", "without it: replaced vs removed",
                     "same fit with it: three-way", "same fit with it: face or not", "k-fold network: three-way",
                     "k-fold network: face or not", "scans (subjects)", "fit s"], rows)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi", type=Path, default=Path("../shared/data/ixi-t1-2mm"))
    parser.add_argument("--cache", type=Path, default=Path("data/bundles"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/detector_eval"))
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--draws", type=int, default=DRAWS, help="draws of every family per head and round")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of draws the k-fold tests on (and trains on)")
    parser.add_argument("--train-rounds", type=int, default=None,
                        help="rounds the k-fold's networks train on, if more than --rounds (tested on the first --rounds alone)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=1,
                        help="networks per fold, averaged as make weights' ensemble is (3: the shipped recipe, three times the fits)")
    parser.add_argument("--subjects", type=int, default=None, help="only the first N heads (a quick smoke run)")
    parser.add_argument("--fits", type=Path, default=None, metavar="DIR",
                        help="keep each fold's networks in DIR (fold-K.pt, folds.json): bench/anatomy.py --folds DIR "
                             "judges every head through check's path with the fold network that never saw it")
    parser.add_argument("--lofo-draws", type=int, default=1, help="draws per family and round in the leave-one-family-out fits")
    parser.add_argument("--no-lofo", action="store_true", help="skip the leave-one-family-out fits")
    parser.add_argument("--lofo-only", action="store_true",
                        help="after a --no-lofo run: add the leave-one-family-out fits to its report in --out")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 while `make weights` runs beside it)")
    parser.add_argument("--ckpt", type=Path, default=Path(str(SHIPPED_CHECKPOINT)),
                        help="the detector of the shipped column (default: the shipped one; e.g. an earlier one, to compare on the same draws)")
    parser.add_argument("--without", nargs="*", default=None, choices=list(FAMILIES), metavar="FAMILY",
                        help="families the k-fold and leave-one-family-out fits do not train on (tested all the same; "
                             "default: those the --ckpt detector was not trained on; no FAMILY: train on all)")
    parser.add_argument("--shipped-only", action="store_true",
                        help="after `make weights`: redo the shipped detector's column only, keeping the k-fold and "
                             "leave-one-family-out figures of the last full run in --out, if any (they do not use the shipped weights)")
    parser.add_argument("--view-mode", default=InputContract().view_mode, choices=list(VIEW_MODES),
                        help="the views the k-fold's networks see (the shipped column sees the --ckpt detector's own)")
    parser.add_argument("--flatten-mm", type=float, default=None, metavar="MM",
                        help="the k-fold's networks' views flattened at this σ (the contract's flatten_mm; default: the "
                             "--ckpt detector's, so that the fits repeat its recipe; 0: not flattened)")
    args = parser.parse_args()
    args.train_rounds = args.train_rounds or args.rounds
    args.paths = sorted(args.ixi.glob("*.nii*"))[: args.subjects]
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.shipped_only:
        last = args.out / "detector_eval.json"
        report = json.loads(last.read_text()) if last.exists() else {}
        report["shipped"] = shipped(args.paths, args.cache, args.draws, args.seed, args.ckpt)
        report["shipped"]["seconds"] = time.perf_counter() - started
        report.setdefault("seconds", report["shipped"]["seconds"])
        write_report(report, args.out)
        print(f"(the shipped column alone: {report['shipped']['seconds'] / 60:.1f} min)", flush=True)
        return
    flatten_mm = load_network(args.ckpt)[1].flatten_mm if args.flatten_mm is None else args.flatten_mm or None
    contract = InputContract(view_mode=args.view_mode, flatten_mm=flatten_mm)
    caches = bundle_caches(args.paths, contract, args.cache)
    bundles = [read_bundle(cache) for cache in caches]
    samples = draw(caches, contract, args.cache, draws=args.draws, seed=args.seed, rounds=args.rounds)
    print(f"{len(samples.label)} scans drawn from {len(bundles)} subjects ({time.perf_counter() - started:.0f} s)", flush=True)
    drawn = [] if args.lofo_only else [
        samples if member == 0 and args.train_rounds == args.rounds else
        draw(caches, contract, args.cache, draws=args.draws, seed=args.seed + member, rounds=args.train_rounds)
        for member in range(args.members)]
    trained = recipe_families(args.ckpt, args.without)
    if args.lofo_only:
        last = args.out / "detector_eval.json"
        if not last.exists():
            raise SystemExit(f"{last}: no k-fold report to add to; run without --lofo-only first")
        report, started = json.loads(last.read_text()), None  # its k-fold's time stays its own
    else:
        report = kfold_report(args, contract, bundles, samples, drawn, trained)
        write_report(report, args.out, started)  # the k-fold's figures survive an interrupted leave-one-family-out
    if not args.no_lofo:
        report["leave_one_family_out"] = leave_one_family_out(samples, contract, bundles, args.folds, args.epochs, args.seed,
                                                              args.draws, min(args.lofo_draws, args.draws), trained,
                                                              kfold_probabilities_of(report, samples))
        write_report(report, args.out, started)


def kfold_report(args: argparse.Namespace, contract: InputContract, bundles: list[FaceBundle],
                 samples: Samples, drawn: list[Samples], trained: list[str]) -> dict:
    """The k-fold's figures on the test scans ``samples`` of networks fitted on ``drawn`` (and the
    shipped column unless ``--subjects``), with both PNGs written."""
    probabilities, raw, models, seconds = kfold(bundles, samples, drawn, contract, args.folds, args.epochs, args.seed, trained,
                                                args.fits)
    args.out.mkdir(parents=True, exist_ok=True)
    reliability_png(probabilities, samples.label, args.out / "reliability.png")
    sweeps = sweep(bundles, models, contract)
    sweep_png(sweeps, args.out / "sweep.png")
    return {
        "shipped": None if args.subjects else shipped(args.paths, args.cache, args.draws, args.seed, args.ckpt),
        "subjects": len(bundles), "folds": args.folds, "members": args.members, "draws": args.draws, "rounds": args.rounds,
        "train_rounds": args.train_rounds, "epochs": args.epochs,
        "trained_families": trained,
        "contract": contract.to_dict(), "fit_seconds": seconds,
        "headline": headline(samples, probabilities, trained=trained),
        "thresholds": {str(t): headline(samples, probabilities, t, trained=trained) for t in THRESHOLDS},
        "per_family": per_family(samples, probabilities),
        "margins": by_margin(samples, probabilities, trained),
        "fully_removed_by_subject": fully_removed_by_subject(samples, probabilities, trained),
        "calibration": {"ece_raw": expected_calibration_error(raw, samples.label),
                        "ece_calibrated": expected_calibration_error(probabilities, samples.label),
                        "scans": len(samples.label)},
        "sweep": sweeps,
        "scans": scan_rows(samples, probabilities),  # each from the fold model that never saw its subject
        "leave_one_family_out": {"test_subjects": [], "families": {}},
        "run": provenance(),
    }

def write_report(report: dict, out: Path, started: float | None = None) -> None:
    """The JSON and markdown; ``report["seconds"]`` since ``started`` (kept as it is without one)."""
    if started is not None:
        report["seconds"] = time.perf_counter() - started
    atomic_write_text(out / "detector_eval.json", json.dumps(report, indent=2, default=float) + "\n")
    text = markdown(report)
    atomic_write_text(out / "detector_eval.md", text)
    print(text)
    print(f"written to {out} in {report['seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
