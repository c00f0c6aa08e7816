"""`check --anatomy` against the network alone, on the IXI heads the shipped detector never saw.

Every defacing family is drawn afresh on the 8 held-out heads (as the shipped column of
bench/detector_eval.py draws them: seed 1000, random field of view and pose), each volume is judged
by ``check``'s path — the shipped network alone (``--no-anatomy``), and with the anatomy's second
opinion (:mod:`defacegan.anatomy`: a head nodded beyond the training poses that the network is unsure
of is judged again with the nod taken off; a ``removed`` verdict the network is unsure of whose eye
or nose region still holds tissue becomes ``face``, and so does a ``replaced`` one whose face also has
the rest of the head's fine texture) measured on every scan (``--anatomy``, so that
every scan's shares and nod are in the JSON) — and the issue's rates are printed side by side, per
family too, with the scans judged again and how. Then
``check``'s default, which measures the anatomy only where it could overrule, judges the same
volumes again: it must give the same verdicts, and its time per scan and the share of scans it
registered are printed. Real tools' defacings are in bench/other_defacers.py, which reports both as well.

    python bench/anatomy.py [--ixi ../shared/data/ixi-t1-2mm] [--draws 4]
    python bench/anatomy.py --subjects training --draws 1 --seed 2000 --out bench/results/anatomy-training.json

The second draws on the 24 heads the detector was trained on instead: where the anatomy's lines
are looked at without touching the held-out heads.

Prints tables and writes JSON (default bench/results/anatomy.json), with what the floor
(:data:`~defacegan.anatomy.NETWORK_UNSURE`) changed on the run: the anatomy's false alarms and the
faces it recovered, had every ``removed`` verdict been open to it. ``--rows RUN.json`` prints that
for a stored run (e.g. an earlier detector's: ``--ckpt PREVIOUS --out RUN.json``) without drawing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from defacegan.anatomy import NETWORK_UNSURE, overrules
from defacegan.contract import VERDICTS
from defacegan.detector_training import HELD_OUT, Samples, subject_of, bundle_caches, draw_volumes, read_bundle
from defacegan.families import FAMILIES
from defacegan.io import Scan
from detector_eval import headline, rate, rate_text, verdicts
from held_out import held_out_setup, write_result

SEED = 1000  # the shipped column's draws (bench/detector_eval.py)


def floor_report(rows: list[dict]) -> dict:
    """What the floor changed on a run's rows: the anatomy's verdicts had it been asked about every
    ``removed`` or ``replaced`` verdict (as before the floor) against the network's; its false alarms and the faces
    it recovered, how many of each lie below the floor, and the two rates without it."""
    def unfloored(row: dict) -> str:
        return "face" if overrules(row["network"], row["p_face"], row["tissue"], row.get("texture"), floor=0.0) else row["network"]

    flipped = [row for row in rows if row["network"] != "face" and unfloored(row) == "face"]
    alarms = [row["p_face"] for row in flipped if row["label"] != "face"]
    recovered = [row["p_face"] for row in flipped if row["label"] == "face"]
    removed, faces = [row for row in rows if row["label"] == "removed"], [row for row in rows if row["label"] == "face"]
    return {"floor": NETWORK_UNSURE, "false_alarms": len(alarms), "false_alarms_below_floor": sum(p < NETWORK_UNSURE for p in alarms),
            "recovered": len(recovered), "recovered_below_floor": sum(p < NETWORK_UNSURE for p in recovered),
            "lowest_recovered_p_face": min(recovered, default=None),
            "without_floor": {"removed faces not called face": [sum(unfloored(r) != "face" for r in removed), len(removed)],
                              "every face-labelled variant called face": [sum(unfloored(r) == "face" for r in faces), len(faces)]}}


def print_floor_report(report: dict) -> None:
    lowest = "" if report["lowest_recovered_p_face"] is None else f", the lowest at p(face) {report['lowest_recovered_p_face']:.2f}"
    print(f"without the floor (p(face) >= {report['floor']}): the anatomy's false alarms {report['false_alarms']}, "
          f"{report['false_alarms_below_floor']} of them below the floor; faces it recovered {report['recovered']}, "
          f"{report['recovered_below_floor']} below the floor{lowest}; "
          + "; ".join(f"{name} {k}/{n}" for name, (k, n) in report["without_floor"].items()))


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "anatomy.json", argv, extra=[("--draws", int, 4), ("--rows", Path, None),
                                                                                            ("--seed", int, SEED), ("--subjects", str, "held-out")])
    if args.subjects == "training":  # where the anatomy's lines are chosen: heads the network was trained on
        paths = [path for path in sorted(args.ixi.glob("*.nii*")) if subject_of(path) not in HELD_OUT]
    if args.rows:
        report = floor_report(json.loads(args.rows.read_text())["rows"])
        print(f"{args.rows}:")
        print_floor_report(report)
        return report
    detector.anatomy, detector.workers = "always", 2
    parts, alone_probabilities, probabilities, tissue, texture, nods, seconds = [], [], [], [], [], [], 0.0
    default_seconds, registered, same = 0.0, 0, True
    for cache in bundle_caches(paths, detector.contract, args.cache):
        bundle = read_bundle(cache)
        batch, facts = draw_volumes(bundle, detector.contract, draws=args.draws, seed=args.seed)
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
        detector.anatomy = "always"
        failed = [p.error for p in predictions + defaults + alone if p.error]
        if failed:
            raise SystemExit(failed[0])
        registered += sum(p.tissue is not None for p in defaults)
        same &= [p.verdict for p in predictions] == [p.verdict for p in defaults]
        parts.append(Samples(torch.zeros(len(batch), 0), **facts))
        alone_probabilities += [[p.probabilities[v] for v in VERDICTS] for p in alone]
        probabilities += [[p.probabilities[v] for v in VERDICTS] for p in predictions]
        tissue += [p.tissue for p in predictions]
        texture += [p.texture for p in predictions]
        nods += [(p.nod, p.unnodded) for p in predictions]
        print(f"{bundle.subject}: {len(batch)} volumes", flush=True)
    samples, probabilities, alone_probabilities = Samples.join(parts), np.array(probabilities), np.array(alone_probabilities)
    alone, checked = headline(samples, alone_probabilities), headline(samples, probabilities, tissue=tissue, texture=texture)
    said = {"network": verdicts(alone_probabilities), "anatomy": verdicts(probabilities, tissue=tissue, texture=texture)}
    face = VERDICTS.index("face")
    families = {family: {name: rate((said[name][which] == face) == (samples.label[which] == face), samples.subject[which])
                         for name in said}
                for family in FAMILIES if (which := samples.family == family).any()}

    n_subjects = len(set(samples.subject))
    table = Table(title=f"{args.subjects.capitalize()} IXI ({n_subjects} subjects, {args.draws} draws per family): network alone vs --anatomy")
    for column in ("rate", "network alone", "--anatomy", "scans (subjects)"):
        table.add_column(column)
    for name in alone:
        table.add_row(name, rate_text(alone[name]), rate_text(checked[name]), f"{alone[name]['n']} ({alone[name]['subjects']})")
    per_family = Table(title="Face or not, per family")
    for column in ("family", "network alone", "--anatomy", "scans (subjects)"):
        per_family.add_column(column)
    for family, r in families.items():
        per_family.add_row(family, rate_text(r["network"]), rate_text(r["anatomy"]), f"{r['network']['n']} ({r['network']['subjects']})")
    console = Console(width=160)
    console.print(table)
    console.print(per_family)
    per_scan, default_per_scan = seconds / len(samples.label), default_seconds / len(samples.label)
    print(f"check --anatomy: {per_scan:.2f} s a scan ({detector.workers} loader workers)")
    print(f"check (default): {default_per_scan:.2f} s a scan, {registered} of {len(samples.label)} scans registered; "
          f"verdicts {'the same as' if same else 'NOT the same as'} --anatomy's")
    rows = [{"subject": str(s), "family": str(f), "draw": int(n), "label": VERDICTS[label],
             **{f"p_{v}": float(p) for v, p in zip(VERDICTS, probability)}, "tissue": t, "texture": x, "nod": nod, "unnodded": unnodded,
             "p_face_unnodded": float(checked_probability[0]) if unnodded is not None else None,
             "network": VERDICTS[a], "anatomy": VERDICTS[b]}
            for s, f, n, label, probability, checked_probability, t, x, (nod, unnodded), a, b
            in zip(samples.subject, samples.family, samples.number, samples.label, alone_probabilities, probabilities, tissue,
                   texture, nods, said["network"], said["anatomy"])]
    unnodded = [row for row in rows if row["unnodded"] is not None]
    print(f"judged again with the nod taken off: {len(unnodded)} of {len(rows)} scans: "
          + ", ".join(f"{row['family']} {row['subject']} (nod {row['nod']:.0f}: p(face) {row['p_face']:.2f} -> "
                      f"{row['p_face_unnodded']:.2f})" for row in unnodded))
    result = write_result(args, detector, started, subjects=n_subjects, draws=args.draws, seed=args.seed, subjects_drawn=args.subjects,
                          seconds_per_scan=round(per_scan, 2), default_seconds_per_scan=round(default_per_scan, 2),
                          default_registered=registered, default_same_verdicts=same, network=alone, anatomy=checked,
                          per_family=families, floor=floor_report(rows), rows=rows)
    print_floor_report(result["floor"])
    if not same:
        raise SystemExit("check's default and --anatomy disagree on a verdict (see the JSON)")
    return result


if __name__ == "__main__":
    main()
