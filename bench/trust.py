"""Where the check stands: every trust figure the README states, read from the benches' results and
set beside the targets the detector is held to, in one table (markdown, as the README shows it) and one JSON.

    python bench/trust.py [--results bench/results] [--out bench/results/trust.json]

It measures nothing itself: each row names the bench whose JSON it reads (``make figures`` writes
them all; a bench that has not run leaves its rows out) and the commit that bench ran at
(``+ changes`` when its code differed from the commit; ``not recorded`` for results older than the
record), so a row is as fresh as that bench's last run and says so. A rate carries two 95 %
intervals: Wilson's, which takes every scan for an independent trial, and one from resampling the
heads (bootstrap), since a head's draws are alike and the heads are what is independent; the
detector's rows are scored again from the reports' per-scan rows (:func:`detector_rows`) so that older
reports get the second too. "met" is "yes" when the lower end of both reaches the target, "point
only" when the rate does and an interval does not, else "no"; for the expected calibration error
(lower is better, interval from resampled heads) the same with the upper end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from defacegan.detector_data import Samples
from defacegan.io import atomic_write_text
from defacegan.metrics import ece_interval, wilson_interval
from detector_eval import headline
from kfold_compare import scans_of
from provenance import run_text

#: The targets the detector is held to: headline row of bench/detector_eval.py → the rate it must reach.
TARGETS = {
    "real faces called face": 0.98,
    "partial defacings leaving eyes and nose called face": 0.95,
    "removed faces not called face": 0.98,
    "replaced faces called replaced": 0.90,
}
#: Rows worth stating without a target of their own: the unsafe errors' neighbours.
WATCHED = ["partial defacings leaving the eyes but not the nose called face", "every face-labelled variant called face"]
#: ... and, where ``check``'s own path is measured (bench/anatomy.py), the learned defacer's cut that leaves the eyes.
EYE_LEVEL = "eye-level cuts leaving the eyes but not the nose called face"
ECE_TARGET, LOFO_TARGET = 0.05, 0.90
#: bench/anatomy.py --folds runs (every IXI head judged by the k-fold network that never saw it) and
#: what their section adds about the draws.
KFOLD_ANATOMY = {"anatomy-kfold.json": "", "anatomy-kfold-partial.json": ", partial and eye-level draws only"}
#: The coil fields' strengths under which bench/anatomy.py --bias-field judged the face-labelled families.
COIL_FIELDS = ("0.5", "1.0")


def counted(k: int, n: int, subjects: int, unit: str = "scans") -> dict:
    """A rate of ``k`` in ``n``; its Wilson interval only where the ``n`` are scans (conditions or
    families put to the same heads are not independent trials)."""
    low, high = wilson_interval(k, n) if unit == "scans" else (float("nan"), float("nan"))
    return {"rate": k / n if n else float("nan"), "low": low, "high": high, "k": k, "n": n, "subjects": subjects, "unit": unit}


def every_head_right(figure: dict) -> bool:
    """Every head got every scan right: resampling the heads shows no spread (interval [1, 1])."""
    return figure.get("heads_low") == 1.0 and bool(figure.get("subjects"))


def heads_low(figure: dict) -> float:
    """The lower end of a rate's interval over its heads: resampled (bootstrap), or where
    :func:`every_head_right`, which resampling cannot question, Wilson's over the heads, each head
    one trial (8 of 8 heads: 0.68)."""
    return wilson_interval(figure["subjects"], figure["subjects"])[0] if every_head_right(figure) else figure.get("heads_low", 1.0)


def row(section: str, what: str, figure: dict, target: float | None, source: str, run: dict | None,
        note: str = "") -> dict:
    """One figure beside its target; ``run``: the code its bench ran (:func:`provenance.provenance`)."""
    met = None
    if target is not None:  # a count of conditions or families has no interval: its rate is all there is
        sure = figure.get("unit", "scans") != "scans" or min(figure["low"], heads_low(figure)) >= target
        met = "no" if figure["rate"] < target else "yes" if sure else "point only"
    if every_head_right(figure):
        note = "; ".join(filter(None, [note, f"every head right on all: Wilson over its {figure['subjects']} heads "
                                              f"[{heads_low(figure):.2f}, 1.00]"]))
    return {"section": section, "what": what, **figure, "target": target, "met": met, "source": source,
            "run": run_text(run), "note": note}


def ece_row(section: str, what: str, ece: float, samples: Samples, probabilities: np.ndarray, run: dict | None) -> dict:
    """An expected calibration error beside its target (lower is better), with its 95 % interval over
    the heads of the report's test scans (``samples``, ``probabilities``: :func:`kfold_compare.scans_of`;
    :func:`ece_interval`); "met" as for a rate, the interval's upper end taken for the lower end."""
    low, high = ece_interval(probabilities, samples.label, samples.subject)
    met = "no" if ece > ECE_TARGET else "yes" if high <= ECE_TARGET else "point only"
    return {"section": section, "what": what, "value": ece, "low": low, "high": high, "n": len(samples.label),
            "subjects": int(np.unique(samples.subject).size), "target": ECE_TARGET, "met": met,
            "source": "bench/detector_eval.py", "run": run_text(run), "note": "lower is better"}


def detector_rows(report: dict, others: list[dict | None] = ()) -> list[dict]:
    """The shipped detector on its held-out subjects, the k-folds (``report``'s one network a fold and
    ``others``, runs with ``--members`` or ``--train-rounds``) and leave-one-family-out (network alone).
    The rates are scored again from each report's per-scan rows (:func:`kfold_compare.scans_of`): the
    same counts as the report's, with the interval over resampled heads that reports written before
    :func:`detector_eval.rate` gave it lack."""
    shipped, source = report["shipped"], "bench/detector_eval.py"
    columns = [(f"shipped, {len(shipped['subjects'])} held-out subjects", "expected calibration error", shipped, True),
               *((kfold_section(r, shipped), "expected calibration error, temperature-scaled", r, False)
                 for r in (report, *others) if r and "headline" in r)]
    scored = []  # per column: its section, run, headline rates and ECE row
    for section, what, column, is_shipped in columns:
        run, samples, probabilities, trained, ece = scans_of(column, is_shipped)
        scored.append((section, run, headline(samples, probabilities, trained=trained),
                       ece_row(section, what, ece, samples, probabilities, run)))
    rows = [row(section, name, rates[name], TARGETS.get(name), source, run)
            for name in [*TARGETS, *WATCHED] for section, run, rates, _ in scored]
    rows += [ece for *_, ece in scored]
    rows += [lofo_row(r) for r in (report, *others) if r and r.get("leave_one_family_out", {}).get("families")]
    return rows


def kfold_section(report: dict, shipped: dict) -> str:
    """The k-fold's recipe, networks a fold, rounds of draws a network and the views' flattening, named
    the shipped one only where it is the recipe of ``shipped``, the report's shipped column (its
    contract, where recorded, and its detector's training facts)."""
    members, rounds = report.get("members", 1), report.get("train_rounds", report["rounds"])
    recipe = shipped["training"].get("members", [shipped["training"]])
    is_shipped = "contract" in shipped and (members, rounds, flatten_of(report)) == (len(recipe), recipe[0].get("rounds"), flatten_of(shipped))
    return (f"k-fold, {'one network' if members == 1 else f'{members} networks'} of {rounds} rounds a fold, {views_of(report)}"
            + (" (the shipped recipe)" if is_shipped else ""))


def flatten_of(column: dict) -> float | None:
    """The σ (mm) a report's k-fold or shipped column flattened its views at (None: not, or not recorded)."""
    return column.get("contract", {}).get("flatten_mm")


def views_of(report: dict) -> str:
    """A k-fold report's views: flattened against a coil's field, at which σ, or not."""
    flatten = flatten_of(report)
    return f"views flattened at σ {flatten:g} mm" if flatten else "views not flattened"


def lofo_row(report: dict) -> dict:
    """How many held-out families a report's leave-one-family-out fits answered face-or-not right in
    ≥ :data:`LOFO_TARGET`, each family's rate, and how many the same fit trained with the family reaches."""
    lofo = report["leave_one_family_out"]
    right = [family for family, r in lofo["families"].items() if r["face_or_not"]["rate"] >= LOFO_TARGET]
    note = "met by: " + (", ".join(right) or "none") + "; each family's rate: " + \
        ", ".join(f"{f} {r['face_or_not']['rate']:.2f}" for f, r in lofo["families"].items())
    with_it = {f: r for f, r in (lofo.get("with_every_family") or {}).items() if r}
    if with_it:
        short = [f"{f} {r['face_or_not']['rate']:.2f}" for f, r in with_it.items() if r["face_or_not"]["rate"] < LOFO_TARGET]
        note += (f"; the same fit trained with the family: {len(with_it) - len(short)} of {len(with_it)} reach it"
                 + (f" (short: {', '.join(short)})" if short else ""))
    return row(f"leave-one-family-out, {views_of(report)}", "held-out families answered face-or-not right in ≥ 0.90",
               counted(len(right), len(lofo["families"]), len(lofo["test_subjects"]), "families"), 1.0,
               "bench/detector_eval.py", lofo.get("run"), note)


def anatomy_rows(report: dict, section: str = "`check` (with the anatomy), held-out") -> list[dict]:
    """What ``check`` answers by default: the network, and the anatomy where the network is unsure
    (the rows a run's families give scans to)."""
    return [row(section, name, report["anatomy"][name], TARGETS.get(name), "bench/anatomy.py", report.get("run"),
                f"network alone {report['network'][name]['rate']:.3f}")
            for name in [*TARGETS, *WATCHED, EYE_LEVEL] if report["anatomy"].get(name, {}).get("n")]


def sweep_rows(report: dict, outside: dict | None = None) -> list[dict]:
    """The partial-removal sweep through ``check``'s default (bench/sweep_check.py): cuts of known
    extent, from below, from the front and of the nose alone, on the heads the detector never saw;
    and on Colin27 (``outside``), one head from outside IXI, whose cuts are counted, not rated."""
    section = f"`check`, partial-removal sweep, {len(report['subjects'])} held-out subjects"
    rows = [row(section, name, r["check"], TARGETS["partial defacings leaving eyes and nose called face"] if "eyes and nose" in name else None,
                "bench/sweep_check.py", report.get("run"), f"network alone {r['network']['rate']:.3f}")
            for name, r in report["rates"].items()]
    for name, r in (outside or {}).get("rates", {}).items():
        rows.append(row("`check`, partial-removal sweep, Colin27 (outside IXI)", name,
                        counted(r["check"]["k"], r["check"]["n"], 1, "cuts"), None, "bench/sweep_check.py", outside.get("run"),
                        f"network alone {r['network']['k']} of {r['network']['n']}"))
    return rows


def guard_rows(report: dict) -> list[dict]:
    """The network alone through ``check``'s path with its pose guard, on the shipped column's draws:
    the targets' rates as the guard leaves them (``--no-anatomy``; beside them, with the guard's flags
    referred to a registration as ``check``'s default does, and without the guard), and how many of
    those near-upright heads it let be."""
    section = f"`check`'s path, network alone with the pose guard, {report['subjects']} held-out subjects"
    rows = [row(section, name, report["with_guard"][name], TARGETS.get(name), "bench/pose_guard.py", report.get("run"),
                f"flags referred to a registration {report['referred'][name]['rate']:.3f}; "
                f"without the guard {report['without_guard'][name]['rate']:.3f}")
            for name in [*TARGETS, *WATCHED] if name in report["with_guard"]]
    actions = {action: sum(counts[action] for counts in report["actions"].values()) for action in ("none", "flagged", "righted")}
    rows.append(row(section, "scans of heads near upright the guard let be (neither flagged nor righted)",
                    counted(actions["none"], sum(actions.values()), report["subjects"]), None, "bench/pose_guard.py",
                    report.get("run"), f"{actions['flagged']} flagged ({report['registered_upright']} of them found upright by a registration), "
                    f"{actions['righted']} righted; faces it made not face: {len(report['unsafe'])}"))
    return rows


def tool_rows(other_defacers: dict | None, gan_refaced: dict | None) -> list[dict]:
    """Other projects' defacing tools and this project's Pix2Pix re-facer, as ``check`` answers by default."""
    rows = []
    for r in (other_defacers or {}).get("summary", []):
        if r["answer"] == "--anatomy":  # the default's verdicts: the anatomy is asked where the network is unsure
            rows.append(row("other tools, held-out", f"{r['tool']} ({r['setting']}): scans answered right",
                            counted(r["right"], r["n"], r["n"]), None, "bench/other_defacers.py", other_defacers.get("run"),
                            f"{r['expected_face']} of {r['n']} labelled face by the rule"))
    for r in (gan_refaced or {}).get("summary", []):
        if r["answer"] == "--anatomy" and r["stage"] == "re-faced":
            rows.append(row("Pix2Pix re-faced, held-out", f"{r['method']}-defaced, re-faced: not called face",
                            counted(r["not_face"]["right"], r["not_face"]["n"], r["n"]), TARGETS["removed faces not called face"],
                            "bench/gan_refaced.py", gan_refaced.get("run")))
    return rows


def other_face_rows(report: dict | None) -> list[dict]:
    """Held-out heads whose face was replaced, as the ``replace_template`` family does it, by faces the
    detector never trained on (bench/other_faces.py), as ``check`` answers by default."""
    rows = []
    for s in (report or {}).get("summary", []):
        labels = ", ".join(f"{s['labels'][v]} {v}" for v in ("removed", "replaced") if s["labels"][v])
        rows.append(row("faces replaced by other faces, held-out", f"{s['donor']}: not called face",
                        s["verdict"]["not_face"], TARGETS["removed faces not called face"], "bench/other_faces.py",
                        report.get("run"), f"rule: {labels}; network alone {s['network']['not_face']['rate']:.3f}"))
    return rows


def outside_rows(outside: dict | None) -> list[dict]:
    if not outside:
        return []
    scored = [r for r in outside["rows"] if r.get("expected") is not None]
    heads = len({r["head"] for r in scored})
    wrong = "; ".join(f"{r['head']} {r['case']}: {r['anatomy_verdict']}" for r in scored if not r["anatomy_right"])
    return [row("heads from outside IXI", "cases answered right (check's default)",
                counted(sum(bool(r["anatomy_right"]) for r in scored), len(scored), heads), None, "bench/outside_heads.py",
                outside.get("run"), "wrong: " + wrong if wrong else "")]


def condition_rows(report: dict | None, section: str, source: str) -> list[dict]:
    """Per case, how many acquisition conditions every head got right, and the ones that fell short."""
    rows = []
    for case in dict.fromkeys(r["case"] for r in (report or {}).get("rows", [])):
        conditions = [r for r in report["rows"] if r["case"] == case]
        short = [r for r in conditions if r["right"] < r["n"]]
        subjects = len(report["subjects"])
        expected = conditions[0]["expected"]
        rows.append(row(section, f"{case}: conditions with every head `{expected}`",
                        counted(len(conditions) - len(short), len(conditions), subjects, "conditions"), None, source,
                        report.get("run"), "short: " + "; ".join(f"{r['condition']} {r['right']}/{r['n']}" for r in short) if short else ""))
    return rows


#: A posed head's removed region agrees with its registration as stored at least this much (Dice).
DEFACER_DICE = 0.9


def defacer_rows(report: dict | None) -> list[dict]:
    """The defacer on heads turned, rolled or nodded in the coil (bench/deface.py): per method, how
    many poses every head came through (its removed region matching its own straight registration
    carried along, Dice ≥ :data:`DEFACER_DICE`), and the ones that fell short, with how many of their
    misses a user would have been warned of (the brain check or ``--verify``)."""
    trials = [t for t in (report or {}).get("consistency", {}).get("trials", []) if " degrees" in t["data"]]
    nets = bool(trials) and "brain_flagged" in trials[0]  # runs before the safety nets were recorded: none

    def shortfall(pose: str, group: list[dict], misses: list[dict]) -> str:
        warned = f", {sum(t['brain_flagged'] or t['verify_face'] for t in misses)} warned" if nets else ""
        return f"{pose} {len(group) - len(misses)}/{len(group)}{warned}"

    rows = []
    for method in dict.fromkeys(t["method"] for t in trials):
        poses = {}
        for t in trials:
            if t["method"] == method:
                poses.setdefault(t["data"].split(", ", 1)[1], []).append(t)
        misses = {pose: [t for t in group if t["dice"] < DEFACER_DICE] for pose, group in poses.items()}
        short = {pose: missed for pose, missed in misses.items() if missed}
        heads = max(len(group) for group in poses.values())
        what = f"`{method}`: poses with every head's removed region in place (Dice ≥ {DEFACER_DICE:g})"
        note = "; ".join(shortfall(pose, poses[pose], missed) for pose, missed in short.items())
        if short and nets:
            note += " (warned: of the misses, flagged by the brain check or called `face` by `--verify`)"
        rows.append(row("defacer, posed heads", what, counted(len(poses) - len(short), len(poses), heads, "poses"), None,
                        "bench/deface.py", report.get("run"), f"short: {note}" if short else ""))
    return rows


def load(folder: Path, name: str) -> dict | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def figure_text(r: dict) -> str:
    if "value" in r:
        return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}], {r['n']} scans ({r['subjects']} subjects, resampled)"
    if r["n"] == 0:
        return "n/a"
    if r.get("unit", "scans") != "scans":
        each = f"{r['subjects']} subjects each" if r["subjects"] > 1 else "one head"
        return f"{r['k']} of {r['n']} {r['unit']} ({each})"
    heads = f"; heads {r['heads_low']:.2f}, {r['heads_high']:.2f}" if "heads_low" in r else ""
    return f"{r['rate']:.3f} [{r['low']:.2f}, {r['high']:.2f}{heads}], {r['k']} of {r['n']} scans ({r['subjects']} subjects)"


def markdown(rows: list[dict]) -> str:
    lines = ["| where | what | rate [Wilson 95 %; heads resampled 95 %] or ECE [heads resampled], count (independent subjects) | target | met | from | run (commit, date) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "" if r["target"] is None else "every family" if r.get("unit") == "families" else \
            f"≤ {r['target']:.2f}" if "value" in r else f"≥ {r['target']:.2f}"
        met = {"no": "**no**", None: ""}.get(r["met"], r["met"])
        what = r["what"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['section']} | {what} | {figure_text(r)} | {target} | {met} | `{r['source']}` | {r['run']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/trust.json"))
    args = parser.parse_args(argv)
    report = load(args.results / "detector_eval", "detector_eval.json")
    if report is None:  # the slowest bench (100 min): the other rows stand without it
        print(f"{args.results / 'detector_eval' / 'detector_eval.json'}: missing, its rows left out (bench/detector_eval.py)")
    anatomy = load(args.results, "anatomy.json")
    guard = load(args.results, "pose_guard.json")
    others = [load(args.results / name, "detector_eval.json")  # make figures' other k-folds
              for name in ("detector_eval-members3", "detector_eval-rounds4", "detector_eval-rounds4-flatten20",
                           "detector_eval-members3-rounds4-flatten20")]
    rows = [*(detector_rows(report, others) if report else []), *(guard_rows(guard) if guard else []),
            *(anatomy_rows(anatomy) if anatomy else []),
            *(anatomy_rows(partial, "`check` (with the anatomy), held-out, partial and eye-level draws only")
              if (partial := load(args.results, "anatomy-partial.json")) else []),
            *[row for name, draws in KFOLD_ANATOMY.items() if (kfold := load(args.results, name))
              for row in anatomy_rows(kfold, f"`check` (with the anatomy), k-fold, one network of 4 rounds a fold, views flattened "
                                             f"at σ 20 mm{draws}")],
            *[row for strength in COIL_FIELDS if (field := load(args.results, f"anatomy-bias{strength}.json"))
              for row in anatomy_rows(field, f"`check` (with the anatomy), held-out, faces under a coil's field up to {strength}")],
            *(sweep_rows(sweep, load(args.results, "sweep_check-colin27.json")) if (sweep := load(args.results, "sweep_check.json")) else []),
            *tool_rows(load(args.results, "other_defacers.json"), load(args.results, "gan_refaced.json")),
            *other_face_rows(load(args.results, "other_faces.json")),
            *outside_rows(load(args.results, "outside_heads.json")),
            *condition_rows(load(args.results, "field_of_view.json"), "field of view, held-out", "bench/field_of_view.py"),
            *condition_rows(load(args.results, "acquisition.json"), "acquisitions, held-out", "bench/acquisition.py"),
            *defacer_rows(load(args.results, "deface.json"))]
    print(markdown(rows))
    atomic_write_text(args.out, json.dumps({"rows": rows}, indent=1, allow_nan=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
