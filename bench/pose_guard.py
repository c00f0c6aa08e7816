"""What the pose guard (:mod:`defacegan.pose`) does to the shipped column's own test scans.

Every defacing family is drawn afresh on the 8 held-out IXI heads as bench/detector_eval.py's shipped
column draws them (seed 1000: random pose within the training's 15 degrees, field of view, smoothing,
a T2w-like inversion in a fifth of the draws), and each volume is judged by ``check``'s path, network
alone (``--anatomy never``), with the guard and without it (``--no-pose-check``); and a third way,
as ``check``'s default takes the guard: a scan it flags is referred to a registration of the template
(:func:`defacegan.inference.registered_upright`) and judged as it lies (the verdict without the guard)
where that finds it upright. These heads all lie near upright, so every scan the guard flags
(answered ``face``) or rights (judged turned a quarter or half way back) is a scan it misread: the
table of its actions by label says how often, and the detector's target rates side by side say what that
costs, with Wilson 95 % intervals and the subjects behind them. Each scan's verdicts and the guard's
action are in the JSON.

    python bench/pose_guard.py [--ixi ../shared/data/ixi-t1-2mm] [--draws 4]

About 15 minutes on 2 cores with 4 draws (416 scans), a few seconds of them for each registration.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from defacegan.contract import VERDICTS
from defacegan.detector_data import Samples, bundle_caches, draw_volumes, read_bundle
from defacegan.inference import registered_upright
from defacegan.io import Scan
from detector_eval import headline, rate_text
from held_out import held_out_setup, write_result

SEED = 1000  # the shipped column's draws (bench/detector_eval.py)


def guard_action(prediction) -> str:
    """What the guard did to a scan: ``righted``, ``flagged`` (not understood: answered ``face``) or ``none``."""
    if prediction.righted is not None:
        return "righted"
    return "none" if prediction.pose_understood else "flagged"


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "pose_guard.json", argv, extra=[("--draws", int, 4), ("--seed", int, SEED)])
    detector.anatomy, detector.workers = "never", 2
    parts, rows, failures = [], [], []
    for cache in bundle_caches(paths, detector.contract, args.cache):
        bundle = read_bundle(cache)
        batch, facts = draw_volumes(bundle, detector.contract, draws=args.draws, seed=args.seed)
        scans = [Scan(volume[0].numpy(), bundle.affine) for volume in batch]
        detector.pose_check = True
        guarded = detector.predict(scans)
        detector.pose_check = False
        bare = detector.predict(scans)
        keep = np.array([not (g.error or b.error) for g, b in zip(guarded, bare)])
        failures += [f"{bundle.subject} {facts['family'][i]} draw {facts['number'][i]}: {guarded[i].error or bare[i].error}"
                     for i in np.flatnonzero(~keep)]
        parts.append(Samples(torch.zeros(len(batch), 0), **facts).where(keep))
        for i in np.flatnonzero(keep):
            g, b = guarded[i], bare[i]
            found_upright = guard_action(g) == "flagged" and registered_upright(scans[i], detector.contract) is not None
            rows.append({"subject": bundle.subject, "family": str(facts["family"][i]), "draw": int(facts["number"][i]),
                         "label": VERDICTS[facts["label"][i]], "guard": guard_action(g), "righted": g.righted,
                         "pose_margin": round(g.pose_margin, 4), "registered_upright": found_upright, "with_guard": g.verdict,
                         "referred": b.verdict if found_upright else g.verdict, "without_guard": b.verdict})
        print(f"{bundle.subject}: {len(batch)} volumes, {int((~keep).sum())} not judged", flush=True)
    detector.pose_check = True  # as the JSON records it: the guard's run is the one under test
    samples = Samples.join(parts)
    said = {name: np.array([VERDICTS.index(row[name]) for row in rows]) for name in ("with_guard", "referred", "without_guard")}
    rates = {name: headline(samples, None, said=verdict) for name, verdict in said.items()}

    def is_face(verdict: str) -> bool:
        return verdict == "face"

    actions = Counter((row["guard"], "face" if row["label"] == "face" else "not face") for row in rows)
    changed = Counter((row["label"] == "face", is_face(row["with_guard"]), is_face(row["without_guard"]))
                      for row in rows if is_face(row["with_guard"]) != is_face(row["without_guard"]))
    unsafe = [row for row in rows if row["label"] == "face" and not is_face(row["with_guard"]) and is_face(row["without_guard"])]
    n_subjects = len(set(samples.subject))
    table = Table(title=f"Held-out IXI ({n_subjects} subjects, {args.draws} draws per family), network alone: with the pose guard and without")
    for column in ("rate", "with the guard", "a flag referred to a registration", "without", "scans (subjects)"):
        table.add_column(column)
    for name, entry in rates["with_guard"].items():
        table.add_row(name, rate_text(entry), rate_text(rates["referred"][name]), rate_text(rates["without_guard"][name]),
                      f"{entry['n']} ({entry['subjects']})")
    console = Console(width=160)
    console.print(table)
    by_label = {label: {action: actions[(action, label)] for action in ("none", "flagged", "righted")} for label in ("face", "not face")}
    print("the guard's actions (every one on a head lying near upright is a misreading): "
          + "; ".join(f"{label}-labelled {sum(counts.values())}: " + ", ".join(f"{n} {a}" for a, n in counts.items())
                      for label, counts in by_label.items()))
    found = [row for row in rows if row["registered_upright"]]
    print(f"flagged scans a registration found upright (judged as they lie): {len(found)} of {sum(row['guard'] == 'flagged' for row in rows)}"
          f" ({sum(row['label'] == 'face' for row in found)} face-labelled, of which not face as they lie: "
          f"{sum(row['label'] == 'face' and not is_face(row['referred']) for row in found)})")
    print(f"face or not changed by the guard: {changed[(False, True, False)]} defaced scans made face, "
          f"{len(unsafe)} faces made not face (unsafe), {changed[(True, True, False)]} faces made face, "
          f"{changed[(False, False, True)]} defaced scans made not face; {len(failures)} scans not judged"
          + "".join(f"\n  {failure}" for failure in failures))
    return write_result(args, detector, started, subjects=n_subjects, draws=args.draws, seed=args.seed,
                        actions=by_label, unsafe=unsafe, registered_upright=len(found), with_guard=rates["with_guard"],
                        referred=rates["referred"], without_guard=rates["without_guard"],
                        failures=failures, rows=rows)


if __name__ == "__main__":
    main()
