"""`check --anatomy` against the network alone, on the IXI heads the shipped detector never saw.

Every defacing family is drawn afresh on the 8 held-out heads (as the shipped column of
bench/detector_eval.py draws them: seed 1000, random field of view and pose), each volume is judged
by ``check``'s path — the shipped network alone (``--no-anatomy``), and with the anatomy's second
opinion (:mod:`defacegan.anatomy`: a head nodded beyond the training poses that the network is unsure
of is judged again with the nod taken off; a ``removed`` verdict the network is unsure of whose eye
or nose region still holds tissue becomes ``face``, and so does a ``replaced`` one whose face also has
the rest of the head's fine texture; then a verdict still not ``face`` judged once more with the
bias field taken off, :mod:`defacegan.bias_field`, its p(face) in the rows' ``p_face_evened`` and,
where that reaches the line, the evened scan's tissue shares in ``tissue_evened``; ``registered_evened``
where the template would register onto the evened scan alone)
measured on every scan (``--anatomy``, so that every scan's shares and nod are in the JSON) — and the detector's target rates are printed side by side, per
family too, with the scans judged again and how. Then
``check``'s default, which measures the anatomy only where it could overrule, judges the same
volumes again: it must give the same verdicts, and its time per scan and the share of scans it
registered are printed. Real tools' defacings are in bench/other_defacers.py, which reports both as well.

    python bench/anatomy.py [--ixi ../shared/data/ixi-t1-2mm] [--draws 4]
    python bench/anatomy.py --subjects training --draws 1 --seed 2000 --out bench/results/anatomy-training.json
    python bench/anatomy.py --families partial,eye_level --draws 12 --seed 3000 --out bench/results/anatomy-partial.json
    python bench/anatomy.py --families none,partial,eye_level,blur --bias-field 0.5 --out bench/results/anatomy-bias0.5.json
    python bench/anatomy.py --folds data/kfold-rounds4-flatten20 --draws 1 --out bench/results/anatomy-kfold.json

The second draws on the 24 heads the detector was trained on instead: where the anatomy's lines
are looked at without touching the held-out heads. The third draws only the two families whose cuts
keep the eyes or the nose on some draws (failed and partial defacings, the learned defacer's
eye-level cut), fresh ones and three times as many: the unsafe error, a face left and called
defaced, lives there, and 4 draws a family leave few such cuts to count. The fourth draws the
face-labelled families' volumes, each under a receive coil's field of coefficients up to
``--bias-field`` (:func:`defacegan.detector_data.with_bias_field`; every other draw as without it):
a field that darkens the face is what the network is weakest against (bench/bias_training.py).
The fifth judges all 32 heads, each with the k-fold network that never saw it (``bench/detector_eval.py
--fits``), in place of the shipped detector: ``check``'s path on four times the held-out subjects.

Prints tables and writes JSON (default bench/results/anatomy.json), with what the floor
(:data:`~defacegan.anatomy.NETWORK_UNSURE`) changed on the run: the anatomy's false alarms and the
faces it recovered, had every ``removed`` verdict been open to it, and what the converse rule (a
``face`` verdict turned ``removed`` where no feature region reads tissue) would turn, by label.
And what the nod rule changed: the faces and the defaced heads whose ``face`` verdict it took away or
gave. And how the anatomy's reading of each feature region agrees with the share of it the label
rule keeps (the rows hold both), and why each face called defaced got past the anatomy.
``--rows RUN.json`` prints these for a stored run (e.g. an earlier detector's: ``--ckpt PREVIOUS
--out RUN.json``) without drawing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from defacegan.anatomy import NETWORK_SURE, NETWORK_UNSURE, OVERRULING, TISSUE_MIN_SHARE, kept_features, may_overrule, overrules
from defacegan.check import LOOK_FLOOR
from defacegan.contract import VERDICTS
from defacegan.detector_data import Samples, bundle_caches, draw_volumes, read_bundle, subject_of
from defacegan.families import FAMILIES
from defacegan.features import FACE_MIN_FRACTION, FEATURES
from defacegan.inference import Detector, left_by_evened_look, turned_by_evened_look
from defacegan.io import Scan
from detector_eval import headline, rate
from held_out import held_out_setup, rate_table, write_result

SEED = 1000  # the shipped column's draws (bench/detector_eval.py)
#: The lines and p(face) ceilings :func:`vacancy_report` tries (None: no ceiling; the other, where
#: the anatomy takes the network's ``face`` for unsure).
VACANCY_LINES = (0.05, 0.1, 0.2, 0.3)
VACANCY_CEILINGS = (NETWORK_SURE, None)
#: The sets of feature regions :func:`overruling_report` lets overrule, fewest first.
OVERRULING_CANDIDATES = (("eyes", "nose"), ("eyes", "nose", "chin"), ("eyes", "nose", "mouth"), ("eyes", "nose", "mouth", "chin"))


def floor_report(rows: list[dict]) -> dict:
    """What the floor changed on a run's rows: the anatomy's verdicts had it been asked about every
    ``removed`` verdict (as it is about every ``replaced`` one) against the network's; its false alarms
    and the faces it recovered on ``removed`` verdicts, how many of each lie below the floor, and the
    two rates without it."""
    def unfloored(row: dict) -> str:
        return "face" if overrules(row["network"], row["p_face"], row["tissue"], row.get("texture"), floor=0.0) else row["network"]

    flipped = [row for row in rows if row["network"] == "removed" and unfloored(row) == "face"]
    alarms = [row["p_face"] for row in flipped if row["label"] != "face"]
    recovered = [row["p_face"] for row in flipped if row["label"] == "face"]
    removed, faces = [row for row in rows if row["label"] == "removed"], [row for row in rows if row["label"] == "face"]
    return {"floor": NETWORK_UNSURE, "false_alarms": len(alarms), "false_alarms_below_floor": sum(p < NETWORK_UNSURE for p in alarms),
            "recovered": len(recovered), "recovered_below_floor": sum(p < NETWORK_UNSURE for p in recovered),
            "lowest_recovered_p_face": min(recovered, default=None),
            "without_floor": {"removed faces not called face": [sum(unfloored(r) != "face" for r in removed), len(removed)],
                              "every face-labelled variant called face": [sum(unfloored(r) == "face" for r in faces), len(faces)]}}


def overruling_report(rows: list[dict], folds: dict[str, str] | None = None) -> dict:
    """Which feature regions should overrule (:data:`~defacegan.anatomy.OVERRULING`), on a run's rows:
    for each set of :data:`OVERRULING_CANDIDATES`, the network's verdicts it turns ``face`` at the floor,
    by label (its ``face`` ones are faces recovered, the rest false alarms). With ``folds`` (subject ->
    the fold network that judged it, a ``--folds`` run), the choice cross-fitted: each fold gets the set
    that recovers most faces net of false alarms on the other folds' heads (fewest regions on a tie) and
    is scored on its own, so that no head's rows choose the set it is scored by."""
    def turned(features: tuple[str, ...], subset: list[dict]) -> dict[str, int]:
        flipped = [row["label"] for row in subset
                   if overrules(row["network"], row["p_face"], row["tissue"], row.get("texture"), features=features)]
        return {label: flipped.count(label) for label in VERDICTS}

    def net(counts: dict[str, int]) -> int:
        return counts["face"] - counts["removed"] - counts["replaced"]

    report = {"current": list(OVERRULING), "sets": [{"features": list(features), **turned(features, rows)} for features in OVERRULING_CANDIDATES]}
    if folds:
        chosen = []
        for fold in sorted(set(folds.values())):
            own = [row for row in rows if folds[row["subject"]] == fold]
            others = [row for row in rows if folds[row["subject"]] != fold]
            on_others = {features: turned(features, others) for features in OVERRULING_CANDIDATES}
            best = max(OVERRULING_CANDIDATES, key=lambda features: (net(on_others[features]), -len(features)))
            chosen.append({"fold": fold, "features": list(best), "on_other_folds": on_others[best], "on_own_fold": turned(best, own)})
        report["cross_fitted"] = chosen
    return report


def fold_tests(folds: Path) -> dict[str, list[str]]:
    """Each fold checkpoint ``bench/detector_eval.py --fits`` kept in ``folds``, with its test subjects (``folds.json``)."""
    return json.loads((folds / "folds.json").read_text())


def run_folds(ckpt: str | None) -> dict[str, str] | None:
    """Subject -> fold checkpoint, where a run judged its heads by the fold networks of ``ckpt`` (a ``--folds`` directory)."""
    folds = Path(ckpt or "")
    return {subject: name for name, tested in fold_tests(folds).items() for subject in tested} if (folds / "folds.json").is_file() else None


def vacancy_report(rows: list[dict]) -> dict:
    """What the converse rule would do on a run's rows: a ``face`` verdict (``check``'s, with the
    anatomy) turned ``removed`` where no feature region (of all four) reads tissue at ``line`` or more
    (NaN, outside the field of view: none) and the network's p(face), before any nod is taken off,
    is under ``ceiling``; per line and ceiling, the scans it would turn, by label: its ``removed``
    and ``replaced`` ones are recovered, its ``face`` ones are faces called defaced, the error a
    privacy check must not make."""
    def most(tissue: dict[str, float]) -> float:
        return max((share for share in (tissue[name] for name in FEATURES) if share == share), default=0.0)

    called_face = [row for row in rows if row["anatomy"] == "face"]
    rules = []
    for line in VACANCY_LINES:
        for ceiling in VACANCY_CEILINGS:
            turned = [row for row in called_face if most(row["tissue"]) < line and (ceiling is None or row["p_face"] < ceiling)]
            faces = [row["family"] for row in turned if row["label"] == "face"]
            rules.append({"line": line, "ceiling": ceiling, **{label: sum(row["label"] == label for row in turned) for label in VERDICTS},
                          "face_families": dict(Counter(faces))})
    return {"called_face": len(called_face), "rules": rules}


def nod_report(rows: list[dict], threshold: float) -> dict:
    """What the nod rule (:func:`~defacegan.anatomy.nod_to_undo`) changed on a run's rows: of the scans
    judged again with the nod taken off, by label, how many the network called ``face`` as they lay
    and not with the nod off (``lost``: a face lost is the unsafe error; a defaced head, recovered)
    and the converse (``gained``: a face gained; a defaced head, a false alarm made). "As they lay" is
    the network alone's look, after the guard's righting, which only the anatomy's path checks: on a
    scan whose righting that path refuted (``unrighted``), the change also holds the turn undone."""
    judged = [row for row in rows if row["unnodded"] is not None]
    def crossed(row: dict, before: bool) -> bool:
        return (row["p_face"] >= threshold) == before and (row["p_face_unnodded"] >= threshold) != before
    return {"judged": len(judged), "of": len(rows),
            **{label: {"judged": sum(row["label"] == label for row in judged),
                       "lost": sum(row["label"] == label and crossed(row, True) for row in judged),
                       "gained": sum(row["label"] == label and crossed(row, False) for row in judged)} for label in VERDICTS}}


def reading_report(rows: list[dict]) -> dict:
    """How the anatomy's reading of each feature region (``tissue``, :func:`~defacegan.anatomy.feature_tissue`)
    agrees with the share of the feature the label rule counts as the subject's own (``own``, known
    from how the scan was made): of the scans where the rule keeps the feature (own share at least
    :data:`~defacegan.features.FACE_MIN_FRACTION`), how many read at the anatomy's line
    (:data:`~defacegan.anatomy.TISSUE_MIN_SHARE`) or more, and of those where it does not, how many
    read so all the same; with the mean reading minus own share where the rule keeps it. And the
    face-labelled scans ``check`` called defaced, by why the anatomy let them pass (:func:`why_passed`),
    where the rule keeps an overruling feature (:data:`~defacegan.anatomy.OVERRULING`), or only
    features kept that do not overrule."""
    read = [row for row in rows if row["tissue"] is not None]
    missed = [row for row in read if row["label"] == "face" and row["anatomy"] != "face"]
    overruling = [row for row in missed if any(share(row["own"][name]) >= FACE_MIN_FRACTION for name in OVERRULING)]
    passed: dict[str, list[str]] = {why: [] for why in WHY_PASSED}
    for row in overruling:
        passed[why_passed(row)].append(f"{row['subject']} {row['family']} {row['draw']} (p(face) {final_p_face(row):.2f})")
    return {"read": len(read), "of": len(rows), "features": feature_agreement(read, lambda row: row["tissue"]),
            "faces_called_defaced": len(missed),
            "noted_near_the_line": sum(final_p_face(row) >= LOOK_FLOOR for row in missed),
            "overruling_kept": passed, "only_others_kept": len(missed) - len(overruling)}


def share(value: float) -> float:
    return value if value == value else 0.0  # NaN: outside the field of view, none


def feature_agreement(rows: list[dict], tissue: Callable[[dict], dict[str, float]]) -> dict:
    """Per feature, of ``rows``: where the label rule keeps it (``own`` share at least
    :data:`~defacegan.features.FACE_MIN_FRACTION`) how many read (``tissue(row)``) at the anatomy's line
    or more, and the mean reading minus own share there; where it does not, how many read so all the same."""
    result = {}
    for name in FEATURES:
        kept = [row for row in rows if share(row["own"][name]) >= FACE_MIN_FRACTION]
        gone = [row for row in rows if share(row["own"][name]) < FACE_MIN_FRACTION]
        result[name] = {"kept": len(kept), "kept_read": sum(share(tissue(row)[name]) >= TISSUE_MIN_SHARE for row in kept),
                        "kept_bias": float(np.mean([share(tissue(row)[name]) - row["own"][name] for row in kept])) if kept else None,
                        "gone": len(gone), "gone_read": sum(share(tissue(row)[name]) >= TISSUE_MIN_SHARE for row in gone)}
    return result


def final_p_face(row: dict) -> float:
    """p(face) as ``check`` last gave it: the network's, or with the nod taken off where it was."""
    return row["p_face_unnodded"] if row["p_face_unnodded"] is not None else row["p_face"]


#: Why a face-labelled scan ``check`` called defaced got past the anatomy (:func:`why_passed`).
WHY_PASSED = ("read under the line", "read, the network sure", "read, smooth as a pasted face", "read, yet not face")


def why_passed(row: dict) -> str:
    """Of :data:`WHY_PASSED`: no overruling region read at the line; or they read, but the network was
    sure of its ``removed`` (p(face) under the floor, after a nod was taken off), or the face's texture
    was not the head's own (a ``replaced`` verdict), or a later look (the evened one) left the verdict."""
    p_face = final_p_face(row)
    if not kept_features(row["tissue"]):
        return WHY_PASSED[0]
    if not may_overrule(row["anatomy"], p_face):
        return WHY_PASSED[1]
    return WHY_PASSED[2] if not overrules(row["anatomy"], p_face, row["tissue"], row["texture"]) else WHY_PASSED[3]


def print_reading_report(report: dict) -> None:
    print(f"the anatomy's reading against the share the label rule keeps (own >= {FACE_MIN_FRACTION}), {report['read']} of "
          f"{report['of']} scans read; read at the line ({TISSUE_MIN_SHARE}) or more, where kept / where not kept:")
    for name, f in report["features"].items():
        bias = "" if f["kept_bias"] is None else f", reading minus own share where kept {f['kept_bias']:+.2f}"
        print(f"  {name}: {f['kept_read']} of {f['kept']} / {f['gone_read']} of {f['gone']}{bias}")
    print(f"face-labelled scans check called defaced: {report['faces_called_defaced']}, {report['noted_near_the_line']} of them "
          f"noted near the line (p(face) >= {LOOK_FLOOR:g}); {'/'.join(OVERRULING)} kept: "
          + "; ".join(f"{why} {len(scans)}" + (f" ({', '.join(scans)})" if scans else "") for why, scans in report["overruling_kept"].items())
          + f"; only the other features kept: {report['only_others_kept']}")


def print_nod_report(report: dict) -> None:
    print(f"the nod rule judged {report['judged']} of {report['of']} scans again with the nod taken off; the network's "
          "face verdict lost / gained by it, by label (a face lost: the unsafe error; a defaced head lost: recovered): "
          + "; ".join(f"{label} {report[label]['lost']} / {report[label]['gained']} of {report[label]['judged']}" for label in VERDICTS))


def print_vacancy_report(report: dict) -> None:
    print(f"had check called `removed` the faces whose every feature region reads under the line (p(face) under the ceiling): "
          f"scans turned, by label (face: faces lost), of {report['called_face']} called face")
    for r in report["rules"]:
        faces = ", ".join(f"{family} {n}" for family, n in r["face_families"].items())
        ceiling = "none" if r["ceiling"] is None else f"{r['ceiling']:.2f}"
        print(f"  line {r['line']:.2f}, ceiling {ceiling}: removed {r['removed']}, replaced {r['replaced']}, "
              f"face {r['face']}{f' ({faces})' if faces else ''}")


def print_overruling_report(report: dict) -> None:
    print(f"regions that may overrule (now {'+'.join(report['current'])}): turned face at the floor, by label: "
          + "; ".join(f"{'+'.join(entry['features'])}: " + ", ".join(f"{label} {entry[label]}" for label in VERDICTS)
                      for entry in report["sets"]))
    for fold in report.get("cross_fitted", []):
        print(f"  cross-fitted, {fold['fold']}: {'+'.join(fold['features'])} (other folds {fold['on_other_folds']}; own fold {fold['on_own_fold']})")


def print_floor_report(report: dict) -> None:
    lowest = "" if report["lowest_recovered_p_face"] is None else f", the lowest at p(face) {report['lowest_recovered_p_face']:.2f}"
    print(f"without the floor on removed verdicts (p(face) >= {report['floor']}): the anatomy's false alarms {report['false_alarms']}, "
          f"{report['false_alarms_below_floor']} of them below the floor; faces it recovered {report['recovered']}, "
          f"{report['recovered_below_floor']} below the floor{lowest}; "
          + "; ".join(f"{name} {k}/{n}" for name, (k, n) in report["without_floor"].items()))


def fold_judges(folds: Path, ixi: Path, pose_check: bool) -> list[tuple[Detector, list[Path]]]:
    """Each fold network ``bench/detector_eval.py --fits`` kept in ``folds``, with the heads of ``ixi``
    it never saw (its test subjects, ``folds.json``)."""
    every = sorted(ixi.glob("*.nii*"))
    return [(Detector(folds / name, device="cpu", pose_check=pose_check), [path for path in every if subject_of(path) in tested])
            for name, tested in fold_tests(folds).items()]


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "anatomy.json", argv, extra=[("--draws", int, 4), ("--rows", Path, None),
                                                                                            ("--seed", int, SEED),
                                                                                            ("--families", str, ",".join(FAMILIES)),
                                                                                            ("--bias-field", float, None),
                                                                                            ("--folds", Path, None)])
    drawn = args.families.split(",")
    field = {"prob": 1.0, "coefficients": args.bias_field} if args.bias_field else None
    if args.rows:
        stored = json.loads(args.rows.read_text())
        rows = stored["rows"]
        report = floor_report(rows)
        print(f"{args.rows}:")
        print_floor_report(report)
        print_overruling_report(overruling_report(rows, run_folds(stored["ckpt"])))
        print_vacancy_report(vacancy_report(rows))
        print_nod_report(nod_report(rows, detector.threshold))
        if "own" in rows[0]:  # runs stored before the rows held the rule's shares cannot say
            print_reading_report(reading_report(rows))
        return report
    judges = fold_judges(args.folds, args.ixi, args.pose_check) if args.folds else [(detector, paths)]
    heads = "k-fold" if args.folds else args.subjects  # k-fold: every head, by the fold network that never saw it
    parts, alone_probabilities, probabilities, tissue, texture, nods, evened, seconds = [], [], [], [], [], [], [], 0.0
    default_seconds, registered, same, failures, guard, said = 0.0, 0, True, [], [], {"network": [], "anatomy": []}
    for detector, cache in [(judge, cache) for judge, its_paths in judges for cache in bundle_caches(its_paths, judge.contract, args.cache)]:
        detector.anatomy, detector.workers = "always", 2  # --anatomy first, then check's default, then the network alone
        bundle = read_bundle(cache)
        batch, facts = draw_volumes(bundle, detector.contract, drawn, draws=args.draws, seed=args.seed, bias_field=field)
        scans = [Scan(volume[0].numpy(), bundle.affine) for volume in batch]
        clock = time.perf_counter()
        predictions = detector.predict(scans)
        seconds += time.perf_counter() - clock
        detector.anatomy = "unsure"  # check's default
        clock = time.perf_counter()
        defaults = detector.predict(scans)
        default_seconds += time.perf_counter() - clock
        detector.anatomy = "never"  # the network alone
        alone = detector.predict(scans)
        # a scan any of the three runs could not judge is reported and left out of the rates, as check carries on
        keep = np.array([not (a.error or b.error or c.error) for a, b, c in zip(predictions, defaults, alone)])
        failures += [f"{bundle.subject} {facts['family'][i]} draw {facts['number'][i]}: "
                     + next(p.error for p in (predictions[i], defaults[i], alone[i]) if p.error) for i in np.flatnonzero(~keep)]
        predictions, defaults, alone = ([p for p, k in zip(run, keep) if k] for run in (predictions, defaults, alone))
        registered += sum(p.tissue is not None for p in defaults)
        same &= [p.verdict for p in predictions] == [p.verdict for p in defaults]
        parts.append(Samples(torch.zeros(len(batch), 0), **facts).where(keep))
        guard += [(p.righted, p.unrighted, p.pose_understood, p.registered_upright) for p in predictions]  # with the registration's say
        said["network"] += [VERDICTS.index(p.verdict) for p in alone]
        said["anatomy"] += [VERDICTS.index(p.verdict) for p in predictions]
        alone_probabilities += [[p.probabilities[v] for v in VERDICTS] for p in alone]
        probabilities += [[p.probabilities[v] for v in VERDICTS] for p in predictions]
        tissue += [p.tissue for p in predictions]
        texture += [p.texture for p in predictions]
        nods += [(p.nod, p.unnodded) for p in predictions]
        evened += [(p.evened_p_face, p.evened_tissue, p.registered_evened) for p in predictions]
        print(f"{bundle.subject}: {len(batch)} volumes, {int((~keep).sum())} not judged", flush=True)
    samples, probabilities, alone_probabilities = Samples.join(parts), np.array(probabilities), np.array(alone_probabilities)
    # check's verdicts as it gave them: a head whose pose was not understood is face whatever its probabilities
    said = {name: np.array(verdict) for name, verdict in said.items()}
    alone, checked = headline(samples, None, said=said["network"]), headline(samples, None, said=said["anatomy"])
    face = VERDICTS.index("face")
    families = {family: {name: rate((said[name][which] == face) == (samples.label[which] == face), samples.subject[which])
                         for name in said}
                for family in FAMILIES if (which := samples.family == family).any()}

    n_subjects = len(set(samples.subject))
    columns = {"network alone": "network", "--anatomy": "anatomy"}
    console = Console(width=160)
    console.print(rate_table(f"{heads.capitalize()} IXI ({n_subjects} subjects, {args.draws} draws per family): network alone vs --anatomy",
                             "rate", columns, {name: {"network": alone[name], "anatomy": checked[name]} for name in alone}))
    console.print(rate_table("Face or not, per family", "family", columns, families))
    per_scan, default_per_scan = seconds / len(samples.label), default_seconds / len(samples.label)
    print(f"check --anatomy: {per_scan:.2f} s a scan ({detector.workers} loader workers)")
    print(f"check (default): {default_per_scan:.2f} s a scan, {registered} of {len(samples.label)} scans registered; "
          f"verdicts {'the same as' if same else 'NOT the same as'} --anatomy's")
    rows = [{"subject": str(s), "family": str(f), "draw": int(n), "label": VERDICTS[label],
             "own": dict(zip(FEATURES, map(float, own))), "foreign": dict(zip(FEATURES, map(float, foreign))),
             **{f"p_{v}": float(p) for v, p in zip(VERDICTS, probability)}, "tissue": t, "texture": x, "nod": nod, "unnodded": unnodded,
             "p_face_unnodded": float(checked_probability[0]) if unnodded is not None else None,
             "network": VERDICTS[a], "anatomy": VERDICTS[b], "righted": righted, "unrighted": unrighted, "pose_understood": understood,
             "registered_upright": registered_upright, "p_face_evened": e, "tissue_evened": et, "registered_evened": flat}
            for s, f, n, label, own, foreign, probability, checked_probability, t, x, (nod, unnodded), a, b,
            (righted, unrighted, understood, registered_upright), (e, et, flat)
            in zip(samples.subject, samples.family, samples.number, samples.label, samples.own, samples.foreign,
                   alone_probabilities, probabilities, tissue,
                   texture, nods, said["network"], said["anatomy"], guard, evened)]
    unnodded = [row for row in rows if row["unnodded"] is not None]
    print(f"judged again with the nod taken off: {len(unnodded)} of {len(rows)} scans: "
          + ", ".join(f"{row['family']} {row['subject']} (nod {row['nod']:.0f}: p(face) {row['p_face']:.2f} -> "
                      f"{row['p_face_unnodded']:.2f})" for row in unnodded))
    looked = [row for row in rows if row["p_face_evened"] is not None]
    turned = Counter(row["label"] for row in looked if turned_by_evened_look(row["anatomy"], row["p_face_evened"]))
    unconfirmed = Counter(row["label"] for row in looked if left_by_evened_look(row["anatomy"], row["tissue_evened"]))
    print(f"judged again with the bias field taken off (every verdict not face): {len(looked)} of {len(rows)} scans; turned to "
          f"face: {sum(turned.values())} (by label: {dict(turned) or 'none'}); a face seen but no eye, nose or chin region "
          f"holding tissue, so not turned: {sum(unconfirmed.values())} (by label: {dict(unconfirmed) or 'none'})")
    result = write_result(args, detector, started, ckpt=args.folds and str(args.folds),  # every fold's, not the last one's
                          subjects=n_subjects, draws=args.draws, seed=args.seed, subjects_drawn=heads,
                          families=drawn, bias_field=field,
                          seconds_per_scan=round(per_scan, 2), default_seconds_per_scan=round(default_per_scan, 2),
                          default_registered=registered, default_same_verdicts=same, network=alone, anatomy=checked,
                          per_family=families, floor=floor_report(rows),
                          overruling=overruling_report(rows, run_folds(args.folds and str(args.folds))), vacancy=vacancy_report(rows),
                          nod=nod_report(rows, detector.threshold), reading=reading_report(rows), failures=failures, rows=rows)
    print(f"the pose guard (--anatomy): {sum(r['righted'] is not None for r in rows)} of {len(rows)} scans judged righted, "
          f"{sum(r['registered_upright'] for r in rows)} it could not read found upright by a registration and judged as they lie, "
          f"{sum(not r['pose_understood'] for r in rows)} not understood (called face), {sum(r['registered_evened'] for r in rows)} "
          f"registered onto the evened scan alone; {len(failures)} scans not judged"
          + "".join(f"\n  {failure}" for failure in failures))
    print_floor_report(result["floor"])
    print_overruling_report(result["overruling"])
    print_vacancy_report(result["vacancy"])
    print_nod_report(result["nod"])
    print_reading_report(result["reading"])
    if not same:
        raise SystemExit("check's default and --anatomy disagree on a verdict (see the JSON)")
    return result


if __name__ == "__main__":
    main()
