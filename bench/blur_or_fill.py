"""Can a registration tell a blurred face from a smooth fill where no feature region holds tissue?

The network calls some smooth fills ``face`` (``replace_smooth``, left out of its training, and a few
``fill`` draws), and a converse of the anatomy's rule would turn them: a ``face`` verdict becomes
defaced where none of the four feature regions holds tissue (bench/anatomy.py's vacancy report).
What stops it is the blurred face. The label rule counts it as ``face`` (blurred faces have been
shown to be reversible), yet the anatomy reads it as holding no tissue: a blur's regions vary too
little to pass :func:`defacegan.anatomy.looks_like_tissue`, the test that tells tissue from a fill.

This measures, on drawn families, what could tell the two apart on the scans whose four regions
read under :data:`VACANT`: the face region's ``likeness`` to the registered template at low
resolution (:func:`likeness`: a blur keeps the face's shape and its layout of dark and bright,
a fill keeps neither) and, for comparison, the anatomy's own texture measure
(:func:`defacegan.anatomy.face_texture`: a blur and a fill are both smooth). Then what the converse
rule guarded by ``likeness`` at ``--line`` would turn, by label, and how many of those the network
was sure of (p(face) ≥ :data:`~defacegan.anatomy.NETWORK_SURE`): ``check`` registers none of them
today, and reaching them would cost a registration (2-3 s) on every scan it calls ``face``, unless
something free says which ones to look at. The network's own ``face_texture`` view is free: the
face's fine texture against the head's (:func:`face_smoothness`), low for a blur, a fill or a pasted
face and about 1 or more for a face of the scan's own tissue. So the rule is also counted on the
scans under ``--smooth`` alone, and with vacancy read on the eye and nose regions only (the mouth
and chin regions hold neck tissue on some defaced heads).

    python bench/blur_or_fill.py --subjects training --draws 1 --seed 2000 --out bench/results/blur_or_fill-training.json
    python bench/blur_or_fill.py [--draws 4] [--line 0.7] [--smooth 0.6]

The first chooses the line on the 24 training heads; the second checks it on the 8 held-out ones.
Verdicts are ``check``'s default's, the anatomy's say included, which the converse rule would come
after (the anatomy turns a verdict into ``face`` only where the eye or nose region holds tissue,
so it adds no vacant ``face``, and it settles most heads whose pose the guard cannot read).
The line's default, 0.7, lies under every blurred face's likeness on the training heads.
Prints tables and writes JSON (default bench/results/blur_or_fill.json).
"""

from __future__ import annotations

import time
from collections import Counter
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.table import Table
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from defacegan import anatomy, deface
from defacegan.anatomy import NETWORK_SURE, OVERRULING
from defacegan.contract import VERDICTS
from defacegan.detector_data import bundle_caches, draw_volumes, read_bundle
from defacegan.features import FEATURES, head_mask
from defacegan.io import Scan, ScanError
from detector_eval import rate
from held_out import held_out_setup, write_result

#: A scan whose four feature regions all read under this share of tissue holds none (bench/anatomy.py's
#: lowest vacancy line).
VACANT = 0.05
#: The families drawn: the blurred face, the fills the network calls ``face``, the removals and
#: replacements that leave regions empty, and the faces the rule keeps.
FAMILIES = ("none", "blur", "replace_smooth", "fill", "shell", "mask", "plane", "crop", "partial", "eye_level", "replace_template")
#: Both the scan and the template are smoothed this much (mm) before they are compared: the scale of
#: the face's shape, coarser than the blurs drawn (σ 3-8 mm) leave.
LIKENESS_SIGMA_MM = 4.0
SEED = 1000  # the held-out draws of bench/anatomy.py


@lru_cache(maxsize=1)
def template_head() -> sitk.Image:
    """pydeface's template head as SimpleITK warps it, read once: from the NIfTI, each warp would
    read and decompress it again (0.2 s a scan, ten times the warp)."""
    head = deface.template_masks().head
    return deface.to_sitk(np.asanyarray(head.dataobj), head.affine)


def likeness(scan: Scan, transform: sitk.Transform) -> float:
    """The Pearson correlation, over the registered template's face region (air included), of the
    scan and the template registered onto it (``transform``), both smoothed by
    :data:`LIKENESS_SIGMA_MM`: about 0.9 for a face, intact or blurred; low where the face was cut
    or filled."""
    sigma = LIKENESS_SIGMA_MM / np.asarray(scan.spacing)
    template = deface.warp(template_head(), transform, scan.data.shape, scan.affine)
    face = deface.face_region(scan, transform)
    ours, theirs = (ndimage.gaussian_filter(np.asarray(a, np.float32), sigma)[face] for a in (scan.data, template))
    return float(np.corrcoef(ours, theirs)[0, 1]) if face.sum() > 20 and ours.std() > 0 and theirs.std() > 0 else float("nan")


def face_smoothness(views: np.ndarray, names: list[str]) -> float:
    """The face's fine texture against the head's, from the network's ``face_texture`` view (the
    median of its pixels that show skin, the view's halving undone; NaN where the contract has no
    such view or it shows no skin)."""
    if "face_texture" not in names:
        return float("nan")
    view = views[names.index("face_texture")]
    return float(np.median(view[view > 0]) * 2) if (view > 0).any() else float("nan")


def measure(scan: Scan) -> dict:
    """One registration of the template onto ``scan``: its feature regions' tissue shares, the
    face's texture and its likeness."""
    transform = deface.register_template(scan, 0)
    head = head_mask(scan.data)
    return {"tissue": anatomy.feature_tissue(scan, transform, head), "texture": anatomy.face_texture(scan, transform, head),
            "likeness": likeness(scan, transform)}


def vacant(row: dict, features: tuple[str, ...] = FEATURES) -> bool:
    """No region of ``features`` reads :data:`VACANT` of tissue (NaN, outside the field of view: none)."""
    return all(not row["tissue"][name] >= VACANT for name in features)


def auc(higher: list[float], lower: list[float]) -> float:
    """The chance that a value of ``higher`` exceeds one of ``lower`` (ties count half; NaN left out)."""
    higher, lower = [x for x in higher if x == x], [x for x in lower if x == x]
    if not higher or not lower:
        return float("nan")
    return float(roc_auc_score([1] * len(higher) + [0] * len(lower), higher + lower))


def separation(rows: list[dict]) -> dict:
    """Among the vacant scans: each measure's AUC of blurred faces over the rest, and both groups' ranges."""
    empty = [row for row in rows if vacant(row)]
    blurred, other = ([row for row in empty if (row["family"] == "blur") == is_blur] for is_blur in (True, False))
    report = {"vacant": len(empty), "blurred": len(blurred), "other": dict(Counter(row["family"] for row in other))}
    for measure_name in ("likeness", "texture"):
        values = [[row[measure_name] for row in group] for group in (blurred, other)]
        report[measure_name] = {"auc": auc(*values), **{f"{name}_range": [float(np.nanmin(v)), float(np.nanmax(v))] if v else None
                                                      for name, v in zip(("blurred", "other"), values)}}
    return report


def converse(rows: list[dict], line: float, smooth: float | None, features: tuple[str, ...]) -> dict:
    """What the converse rule guarded by likeness would turn: ``face`` verdicts on scans vacant
    in ``features``' regions whose likeness is under ``line`` (and, unless ``smooth`` is None, whose
    face is smoother than ``smooth``, :func:`face_smoothness`); by label, with the rates it would give,
    how many it turns where the network was sure (p(face) ≥ NETWORK_SURE) and how many face verdicts
    it would have to register."""
    faces = [row for row in rows if row["verdict"] == "face"]
    looked_at = [row for row in faces if smooth is None or row["smoothness"] < smooth]
    turned = [row for row in looked_at if vacant(row, features) and row["likeness"] < line]
    wrong = [row for row in faces if row["label"] != "face"]
    return {"line": line, "smooth": smooth, "features": list(features), "face_verdicts": len(faces), "registered": len(looked_at),
            "turned": {label: sum(row["label"] == label for row in turned) for label in VERDICTS},
            "faces_turned": dict(Counter(row["family"] for row in turned if row["label"] == "face")),
            "turned_sure": sum(row["p_face"] >= NETWORK_SURE for row in turned),
            "defaced_called_face_recovered": rate(np.array([row in turned for row in wrong]), np.array([row["subject"] for row in wrong])) if wrong else None}


def smoothness_ranges(rows: list[dict]) -> dict:
    """Each family's range of :func:`face_smoothness` on the scans called ``face``, split by label."""
    ranges = {}
    for row in rows:
        if row["verdict"] == "face" and row["smoothness"] == row["smoothness"]:
            low, high = ranges.get((row["family"], row["label"]), (np.inf, -np.inf))
            ranges[(row["family"], row["label"])] = (min(low, row["smoothness"]), max(high, row["smoothness"]))
    return {f"{family} ({label})": [float(low), float(high)] for (family, label), (low, high) in sorted(ranges.items())}


def print_report(title: str, split: dict, smoothness: dict, rules: list[dict]) -> None:
    """:func:`separation`'s table, the smoothness ranges and each :func:`converse` rule's counts and rates."""
    table = Table(title=f"{title}: {split['vacant']} scans with no region holding tissue, {split['blurred']} of them blurred faces")
    for column in ("measure", "AUC blurred over the rest", "blurred faces", "the rest"):
        table.add_column(column)
    for name in ("likeness", "texture"):
        entry = split[name]
        ranges = [f"{r[0]:.3f}-{r[1]:.3f}" if r else "-" for r in (entry["blurred_range"], entry["other_range"])]
        table.add_row(name, f"{entry['auc']:.3f}", *ranges)
    Console(width=160).print(table)
    print(f"the rest: {split['other']}")
    print("face smoothness of the scans called face: " + "; ".join(f"{name} {low:.2f}-{high:.2f}" for name, (low, high) in smoothness.items()))
    for rule in rules:
        gate = f"smoothness < {rule['smooth']}" if rule["smooth"] is not None else "every face verdict"
        print(f"converse rule, likeness < {rule['line']}, {'+'.join(rule['features'])} vacant, {gate} ({rule['registered']} of "
              f"{rule['face_verdicts']} face verdicts registered): turns {rule['turned']} (faces: {rule['faces_turned'] or 'none'}), "
              f"{rule['turned_sure']} of them at p(face) ≥ {NETWORK_SURE}")
        if rule["defaced_called_face_recovered"]:
            r = rule["defaced_called_face_recovered"]
            print(f"  defaced scans called face it recovers: {r['k']} of {r['n']} ({r['subjects']} subjects), {r['rate']:.3f} "
                  f"[{r['low']:.2f}, {r['high']:.2f}; heads {r['heads_low']:.2f}, {r['heads_high']:.2f}]")


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "blur_or_fill.json", argv, extra=[("--draws", int, 4), ("--seed", int, SEED),
                                                                                          ("--line", float, 0.7), ("--smooth", float, 0.6)])
    names = detector.contract.view_names
    rows, failures = [], []
    for cache in bundle_caches(paths, detector.contract, args.cache):
        bundle = read_bundle(cache)
        batch, facts = draw_volumes(bundle, detector.contract, FAMILIES, draws=args.draws, seed=args.seed)
        scans = [Scan(volume[0].numpy(), bundle.affine) for volume in batch]
        for i, (scan, prediction) in enumerate(zip(scans, detector.predict(scans, keep_views=True))):
            name = f"{bundle.subject} {facts['family'][i]} draw {facts['number'][i]}"
            try:
                if prediction.error:
                    raise ScanError(prediction.error)
                measured = measure(scan)
            except ScanError as error:
                failures.append(f"{name}: {error}")
                continue
            rows.append({"subject": bundle.subject, "family": str(facts["family"][i]), "draw": int(facts["number"][i]),
                         "label": VERDICTS[int(facts["label"][i])], "own": dict(zip(FEATURES, map(float, facts["own"][i]))),
                         "verdict": prediction.verdict, "p_face": prediction.probabilities["face"],
                         "smoothness": face_smoothness(prediction.views, names), **measured})
        print(f"{bundle.subject}: {len(scans)} volumes", flush=True)
    split, smoothness = separation(rows), smoothness_ranges(rows)
    rules = [converse(rows, args.line, smooth, features) for smooth in (None, args.smooth) for features in (FEATURES, OVERRULING)]
    print_report(f"{args.subjects.capitalize()} IXI ({len({row['subject'] for row in rows})} subjects, {args.draws} draws a family)",
                 split, smoothness, rules)
    for failure in failures:
        print(f"not judged: {failure}")
    return write_result(args, detector, started, subjects=args.subjects, draws=args.draws, seed=args.seed, families=list(FAMILIES),
                        separation=split, smoothness=smoothness, converse=rules, failures=failures, rows=rows)


if __name__ == "__main__":
    main()
