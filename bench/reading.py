"""How the anatomy reads a feature region, against the share of it the label rule keeps, and what two
other readings would change in ``check``, replayed on a stored bench/anatomy.py run.

The anatomy (:func:`defacegan.anatomy.feature_tissue`) reads a region as the share of the registered
template's feature surface that lies inside the scan's head, or 0 where what lies there does not look
like tissue (:func:`defacegan.anatomy.looks_like_tissue`). The label rule counts the subject's own
feature surface (:mod:`defacegan.features`). This draws the stored run's volumes again (its seed,
families, draws and bias field: the same volumes, which the readings' agreement with the stored ones
checks), registers each once, and reads every region as ``check`` does and in the other ways:

- **head grown 2 or 4 mm**: a template voxel within that distance of the head counts as inside it, for
  a template surface that lies a few mm off the head's own;
- **variation line 0.10 or 0.05** in place of :data:`~defacegan.anatomy.MIN_VARIATION`: a homogeneous
  region (a chin, a blurred face) counts as tissue.

For each, per feature: of the scans where the rule keeps it (own share at least
:data:`~defacegan.features.FACE_MIN_FRACTION`), how many read at the anatomy's line
(:data:`~defacegan.anatomy.TISSUE_MIN_SHARE`), and of those where it does not, how many read so all the
same; why an overruling feature the rule keeps reads under the line (outside the field of view, the
template's region outside the head, or not tissue-like), by family; and, replayed on the run's final
verdicts with :func:`defacegan.anatomy.overrules` (p(face) as the network gave it, after a nod was taken
off), the verdicts not ``face`` that each reading would turn ``face``, by label: faces recovered, or
false alarms. The replay leaves out what ``check`` does after the overrule (the evened look).

    python bench/reading.py --run bench/results/anatomy-kfold.json --out bench/results/reading-kfold.json
    python bench/reading.py --run bench/results/anatomy-kfold-partial.json --out bench/results/reading-kfold-partial.json

Prints tables and writes JSON (default bench/results/reading.json).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from defacegan.anatomy import MIN_VARIATION, OVERRULING, TISSUE_MIN_SHARE, overrules
from defacegan.contract import VERDICTS
from defacegan.detector_data import bundle_caches, subject_of
from defacegan.features import FACE_MIN_FRACTION, FEATURES
from defacegan.inference import Detector
from anatomy import feature_agreement, final_p_face, share
from held_out import held_out_setup, write_result

#: The readings compared: name → (mm the head is grown by, the variation line of the tissue test).
READINGS = {"as check reads": (0.0, MIN_VARIATION), "head grown 2 mm": (2.0, MIN_VARIATION), "head grown 4 mm": (4.0, MIN_VARIATION),
            "variation line 0.10": (0.0, 0.10), "variation line 0.05": (0.0, 0.05)}


def read_head(job: tuple) -> list[dict]:
    """Every stored draw of one head, drawn again and registered once: its regions read each way."""
    cache, contract, families, draws, seed, bias_field = job
    import torch
    from scipy import ndimage

    from defacegan import deface
    from defacegan.anatomy import feature_regions, looks_like_tissue
    from defacegan.contract import InputContract
    from defacegan.detector_data import draw_volumes, read_bundle
    from defacegan.features import fractions, head_mask
    from defacegan.io import Scan, ScanError

    torch.set_num_threads(1)
    bundle = read_bundle(Path(cache))
    batch, facts = draw_volumes(bundle, InputContract.from_dict(contract), families, draws=draws, seed=seed, bias_field=bias_field)
    rows = []
    for volume, family, number in zip(batch, facts["family"], facts["number"]):
        scan = Scan(volume[0].numpy(), bundle.affine)
        row = {"subject": bundle.subject, "family": str(family), "draw": int(number)}
        try:
            features = feature_regions(scan, deface.register_template(scan))
        except ScanError as error:
            rows.append({**row, "error": str(error)})
            continue
        head = head_mask(scan.data)
        outside = ndimage.distance_transform_edt(~head, sampling=scan.spacing)
        within = {grown: fractions(features, outside <= grown) for grown in {grown for grown, _ in READINGS.values()}}
        tissue_like = {variation: {name: looks_like_tissue(scan.data, (features == index) & head, variation)
                                   for index, name in enumerate(FEATURES, start=1)}
                       for variation in {variation for _, variation in READINGS.values()}}
        row["readings"] = {reading: {name: value if value != value or tissue_like[variation][name] else 0.0
                                     for name, value in within[grown].items()}
                           for reading, (grown, variation) in READINGS.items()}
        row["inside"] = within[0.0]
        rows.append(row)
    print(f"  {bundle.subject}: {len(rows)} volumes", flush=True)
    return rows


def why_unread(rows: list[dict]) -> dict:
    """Per overruling feature the rule keeps but ``check`` reads under the line: why, by family."""
    result = {}
    for name in OVERRULING:
        reasons: dict[str, Counter] = {"outside the field of view": Counter(), "template's region outside the head": Counter(),
                                       "not tissue-like": Counter()}
        for row in rows:
            if share(row["own"][name]) < FACE_MIN_FRACTION or share(row["readings"]["as check reads"][name]) >= TISSUE_MIN_SHARE:
                continue
            inside = row["inside"][name]
            reason = ("outside the field of view" if inside != inside else
                      "template's region outside the head" if inside < TISSUE_MIN_SHARE else "not tissue-like")
            reasons[reason][row["family"]] += 1
        result[name] = {reason: dict(families) for reason, families in reasons.items()}
    return result


def replay(rows: list[dict], reading: str) -> dict:
    """The run's final verdicts not ``face`` that ``reading`` would overrule, by label, and who they are."""
    turned = [row for row in rows if row["anatomy"] != "face"
              and overrules(row["anatomy"], final_p_face(row), row["readings"][reading], row["texture"])]
    return {"by_label": {label: sum(row["label"] == label for row in turned) for label in VERDICTS},
            "scans": [f"{row['subject']} {row['family']} {row['draw']} ({row['label']})" for row in turned]}


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, _ = held_out_setup(__doc__, "reading.json", argv, extra=[("--run", Path, Path("bench/results/anatomy-kfold.json")),
                                                                            ("--workers", int, 2)])
    stored = json.loads(args.run.read_text())
    folds = Path(stored["ckpt"])
    judge = Detector(sorted(folds.glob("fold-*.pt"))[0], device="cpu") if folds.is_dir() else detector
    subjects = sorted({row["subject"] for row in stored["rows"]})
    paths = [path for path in sorted(args.ixi.glob("*.nii*")) if subject_of(path) in subjects]
    caches = bundle_caches(paths, judge.contract, args.cache)
    jobs = [(str(cache), judge.contract.to_dict(), stored["families"], stored["draws"], stored["seed"], stored["bias_field"]) for cache in caches]
    print(f"reading {len(jobs)} heads' draws again ({args.run})", flush=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        drawn = {(row["subject"], row["family"], row["draw"]): row for rows in pool.map(read_head, jobs) for row in rows}
    rows, differ = [], 0
    for row in stored["rows"]:
        again = drawn.get((row["subject"], row["family"], row["draw"]))
        if again is None or "readings" not in again or row["tissue"] is None:
            continue  # a scan check could not judge, or this registration could not read
        differ += any(abs(share(row["tissue"][name]) - share(again["readings"]["as check reads"][name])) > 0.01 for name in FEATURES)
        rows.append({**row, **again})
    print(f"{len(rows)} of {len(stored['rows'])} scans read again; {differ} read otherwise than the stored run "
          f"({'the same volumes' if not differ else 'NOT the same volumes or code: the replay below is not the run'})")
    readings = {reading: {"agreement": feature_agreement(rows, lambda row: row["readings"][reading]),
                          "replay": replay(rows, reading)} for reading in READINGS}
    print(f"reading at the line ({TISSUE_MIN_SHARE}) or more, where the rule keeps the feature (own >= {FACE_MIN_FRACTION}) / where not; "
          f"check's verdicts not face it turns face, by label:")
    for reading, result in readings.items():
        print(f"  {reading:20s} " + "; ".join(f"{name} {a['kept_read']}/{a['kept']} / {a['gone_read']}/{a['gone']}"
                                                for name, a in result["agreement"].items())
              + " | turned face: " + ", ".join(f"{label} {n}" for label, n in result["replay"]["by_label"].items()))
        if reading != "as check reads" and result["replay"]["scans"]:
            print(f"  {'':20s} {', '.join(result['replay']['scans'])}")
    reasons = why_unread(rows)
    print("kept by the rule, read under the line by check, why (by family):")
    for name, why in reasons.items():
        print(f"  {name}: " + "; ".join(f"{reason} {sum(families.values())} {families or ''}" for reason, families in why.items()))
    return write_result(args, detector, started, ckpt=stored["ckpt"], stored_run=str(args.run), scans=len(rows), subjects=len(subjects),
                        read_otherwise=differ, readings=readings, why_unread=reasons)


if __name__ == "__main__":
    main()
