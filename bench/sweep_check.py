"""The partial-removal sweep through ``check``'s default, on the IXI heads the shipped detector never saw.

bench/detector_eval.py sweeps the share of the face removed (from below, from the front, or of the
nose alone, :func:`defacegan.families.remove_share`) against the network's p(face). What a user gets
is ``check``'s verdict: the network, its pose guard, and the anatomy's second opinion where the
network is unsure (:mod:`defacegan.anatomy`), which turns a ``removed`` verdict into ``face`` when an
eye or nose region still holds tissue. Here every step of the sweep (10 % to 100 %; 0 % is the intact
face, measured in bench/anatomy.py) of each of the 8 held-out heads (``HELD_OUT``) is judged by that
path, and by the network alone (``--no-anatomy``) beside it, and scored by the feature rule:

- cuts that leave the eyes and the nose (each keeps at least :data:`~defacegan.features.FACE_MIN_FRACTION`
  of its own tissue) called ``face``: the error a privacy check must not make is a miss here;
- cuts that leave the eyes but take the nose called ``face`` (the rule labels them ``face``);
- every cut the rule labels ``face`` (some keep only the mouth or the chin) called ``face``;
- cuts the rule labels ``removed`` not called ``face`` (false alarms are misses here).

The steps of one head are not independent trials: each rate carries Wilson's interval, which takes
every scan for one, and one from resampling the heads, and says how many heads stand behind it. A
scan ``check`` could not judge (an error, exit 2) counts as a wrong answer. The sweep has no
randomness: the same heads give the same scans.

    python bench/sweep_check.py [--ixi ../shared/data/ixi-t1-2mm] [--ckpt CKPT] [--subjects training]
    python bench/sweep_check.py --head /usr/share/mricron/templates/ch2.nii.gz --out bench/results/sweep_check-colin27.json

The second sweeps one head from outside IXI instead: Colin27 (another scanner, MNI space, 27 scans
of one man averaged), which installs with the project (bench/outside_heads.py); one head is one
trial, so its rows are counts of cuts, not a rate that generalises.

Prints tables and writes JSON (default bench/results/sweep_check.json). About 10 minutes on 2 cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from defacegan.detector_data import bundle_caches, read_bundle
from defacegan.families import SWEEP_MODES, remove_share
from defacegan.features import FACE_MIN_FRACTION
from defacegan.io import Scan
from detector_eval import SWEEP_STEPS, rate
from held_out import held_out_setup, rate_table, write_result

#: The rates this bench states: name → (which rows it counts, which answer is right).
GROUPS = {
    "sweep cuts leaving eyes and nose called face": (lambda r: r["label"] == "face" and r["eyes_kept"] and r["nose_kept"], "face"),
    "sweep cuts leaving the eyes but not the nose called face": (lambda r: r["label"] == "face" and r["eyes_kept"] and not r["nose_kept"], "face"),
    "sweep cuts the rule labels face called face": (lambda r: r["label"] == "face", "face"),
    "sweep cuts the rule labels removed not called face": (lambda r: r["label"] == "removed", "not face"),
}
#: How a sweep's verdicts are reached: ``check``'s default, and the network alone.
ANSWERS = {"check": "unsure", "network": "never"}


def right(verdict: str | None, expected: str) -> bool:
    """Whether ``verdict`` (None: not judged) is the expected answer, "face" or "not face"."""
    return verdict is not None and (verdict == "face") == (expected == "face")


def group_rates(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Each of :data:`GROUPS` as a rate per answer (:data:`ANSWERS`), over its rows' heads."""
    rates = {}
    for name, (which, expected) in GROUPS.items():
        chosen = [r for r in rows if which(r)]
        subjects = np.array([r["subject"] for r in chosen])
        rates[name] = {answer: rate(np.array([right(r[answer], expected) for r in chosen], bool), subjects) for answer in ANSWERS}
    return rates


def step_table(rows: list[dict]) -> Table:
    """Per mode and step: heads called ``face`` by ``check`` and by the network, heads the rule labels
    ``face``, and those whose eyes and nose are both kept."""
    table = Table(title="heads called face, per step of the sweep")
    for column in ("removed", "share", "check: face", "network: face", "rule: face", "eyes and nose kept", "not judged"):
        table.add_column(column)
    for mode in SWEEP_MODES:
        for share in sorted({r["share"] for r in rows}):
            step = [r for r in rows if r["mode"] == mode and r["share"] == share]
            table.add_row(mode, f"{share:.0%}", str(sum(r["check"] == "face" for r in step)),
                          str(sum(r["network"] == "face" for r in step)), str(sum(r["label"] == "face" for r in step)),
                          str(sum(r["eyes_kept"] and r["nose_kept"] for r in step)), str(sum(r["error"] is not None for r in step)))
    return table


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "sweep_check.json", argv, extra=[("--head", Path, None)])
    paths = [args.head] if args.head else paths
    rows = []
    for cache in bundle_caches(paths, detector.contract, args.cache):
        bundle = read_bundle(cache)
        cases = [(mode, float(share), remove_share(bundle, float(share), mode)) for mode in SWEEP_MODES for share in SWEEP_STEPS[1:]]
        scans = [Scan(variant.volume, bundle.affine) for *_, variant in cases]
        verdicts = {}
        for answer, anatomy in ANSWERS.items():
            detector.anatomy = anatomy
            verdicts[answer] = detector.predict(scans)
        for (mode, share, variant), judged, alone in zip(cases, verdicts["check"], verdicts["network"]):
            own, _ = variant.shares(bundle.features)
            rows.append({"subject": bundle.subject, "mode": mode, "share": share, "label": variant.label(bundle.features),
                         "own": own, "eyes_kept": bool(own["eyes"] >= FACE_MIN_FRACTION), "nose_kept": bool(own["nose"] >= FACE_MIN_FRACTION),
                         "check": None if judged.error else judged.verdict, "network": None if alone.error else alone.verdict,
                         "p_face": None if alone.error else alone.probabilities["face"], "overruled": judged.overruled,
                         "tissue": judged.tissue, "pose_understood": judged.pose_understood, "righted": judged.righted,
                         "unrighted": judged.unrighted, "error": judged.error or alone.error})
        print(f"{bundle.subject}: {len(cases)} cuts, check called {sum(r['check'] == 'face' for r in rows[-len(cases):])} face", flush=True)
    detector.anatomy = "unsure"
    rates = group_rates(rows)
    n_subjects = len({r["subject"] for r in rows})
    heads = f"{n_subjects} {args.subjects} IXI heads" if not args.head else f"{args.head.name}, one head from outside IXI"
    console = Console(width=160)
    console.print(rate_table(f"The partial-removal sweep through check ({heads}, {detector.checkpoint})", "rate",
                             {"check (default)": "check", "network alone": "network"}, rates))
    console.print(step_table(rows))
    misses = [r for r in rows if any(which(r) and not right(r["check"], expected) for which, expected in GROUPS.values())]
    for r in misses:
        tissue = ", ".join(f"{k} {v:.2f}" for k, v in (r["tissue"] or {}).items())
        print(f"wrong: {r['subject']} {r['mode']} {r['share']:.0%} (rule {r['label']}): check {r['check']}, network {r['network']} "
              f"p(face) {r['p_face'] if r['p_face'] is None else round(r['p_face'], 2)}; tissue read: {tissue or 'not read'}"
              + (f"; {r['error']}" if r["error"] else ""))
    return write_result(args, detector, started, subjects=sorted({r["subject"] for r in rows}),
                        subjects_drawn=str(args.head) if args.head else args.subjects,
                        rates=rates, rows=rows)


if __name__ == "__main__":
    main()
