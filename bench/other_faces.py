"""The shipped detector on faces replaced by faces it never trained on: does ``replaced`` mean "a face
that is not this head's", or "pydeface's mean face"?

The ``replace_template`` family pastes one face, pydeface's mean head's, into every head it draws.
Refacing tools paste their own: AFNI's refacer an average face of its own population, mri_reface an
average face fitted to the head. Here every held-out head's face is replaced exactly as
``replace_template`` replaces it (the same region, smooth warp, intensity scaling, noise and feathered
edge, drawn with the same seeds), but by other faces:

- ``pydeface mean face``: the family's own material, the reference;
- ``Colin27``: one man's face (27 scans of him averaged; Debian's ``mricron-data``), another scanner's;
- ``IXI average``: the mean of the training heads' faces (the heads outside ``HELD_OUT``), each
  registered to pydeface's template, an average of another population;
- ``held-out average``: the mean of the other held-out heads' faces, registered alike: an average face
  of heads no fit trained on (``bench/swap_training.py --donors average`` trains on averages of the
  training heads, which makes the ``IXI average`` row close to its training material);
- ``another held-out head``: the next held-out head's own face, a face swap: a real face, unseen in
  training, that is not this head's.

Where a donor has no tissue (Colin27's field of view ends at the mouth; air in front of a flatter
face), the pasted voxels count as removed, not foreign. Each donor head is registered to pydeface's template once (:func:`defacegan.deface.register_template`,
affine) and resampled into its space, then carried onto each head by that head's own registration,
as the template is for the family. The feature rule labels each scan from what was pasted where (the
same rule as training): no feature keeps the head's own tissue, so every scan is ``replaced``, or
``removed`` where the pasted tissue covers too little of the features (Colin27's eyes and half his
nose, with air for his mouth and chin). Right is not ``face``, and better the rule's label. Verdicts are
``check``'s default (the anatomy asked where the network is unsure or calls a scan ``replaced``), and the
network's alone beside them.

    python bench/other_faces.py [--draws 3] [--ixi ../shared/data/ixi-t1-2mm] [--ckpt DETECTOR]

Prints a table and writes JSON (default bench/results/other_faces.json).
"""

from __future__ import annotations

import dataclasses
import time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.table import Table

from defacegan import deface
from defacegan.contract import VERDICTS, InputContract
from defacegan.detector_data import bundle_caches, read_bundle, subject_of
from defacegan.detector_training import HELD_OUT
from defacegan.families import replace_template
from defacegan.inference import verdict_of
from defacegan.io import Scan, head_threshold, load_scan
from detector_eval import rate, rate_text
from held_out import held_out_setup, write_result

PYDEFACE, COLIN, AVERAGE, HELD_AVERAGE, SWAP = ("pydeface mean face", "Colin27", "IXI average", "held-out average",
                                                "another held-out head")
#: Pasted voxels count as foreign tissue above this (scaled) intensity, as the family's warp takes
#: its tissue (:func:`defacegan.families._foreign_face`); below it, what was pasted is air: removed.
FOREIGN_TISSUE = 0.05


class Registered(NamedTuple):
    """A head as loaded, the template's registration onto it (as the bundles', seed 0), and the head
    resampled into the template's space, scaled by its 99th intensity percentile so that heads average
    alike: its ``face`` as a donor."""

    scan: Scan
    transform: sitk.Transform
    face: np.ndarray


@lru_cache(maxsize=None)
def registered(path: Path) -> Registered:
    """The head in ``path``, loaded and registered once: bench/swap_training.py asks for the same heads
    again in one run."""
    scan = load_scan(path)
    template = deface.template_masks().head
    transform = deface.register_template(scan, 0)
    scaled = scan.data / np.percentile(scan.data[scan.data > head_threshold(scan.data)], 99)
    return Registered(scan, transform, deface.warp(deface.to_sitk(scaled, scan.affine), transform.GetInverse(),
                                                   template.shape, template.affine))


def onto_grid(donor: np.ndarray, head: Registered, contract: InputContract) -> np.ndarray:
    """A donor face (in the template's space) carried onto ``head`` by its registration and put on the
    contract's grid as the bundle's ``template_face`` is (:func:`defacegan.families.make_bundle`)."""
    template = deface.template_masks().head
    scan = head.scan
    moved = deface.warp(deface.to_sitk(donor, template.affine), head.transform, scan.data.shape, scan.affine)
    return contract.volume(moved, scan.affine, contract.place(scan.data, scan.affine), zero_air=False)[0].numpy()


def p_face_range(rows: list[dict], donor: str) -> str:
    """The lowest and highest p(face) of the scans with ``donor``'s face that ``check`` called ``face``."""
    p_face = [row["p_face"] for row in rows if row["donor"] == donor and row["verdict"] == "face"]
    return f"{min(p_face):.2f}-{max(p_face):.2f}" if p_face else ""


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, held = held_out_setup(__doc__, "other_faces.json", argv, extra=[("--draws", int, 3)])
    contract = detector.contract
    bundles = [read_bundle(cache) for cache in bundle_caches(held, contract, args.cache)]
    fits = [registered(path) for path in held]
    donors = {}
    if deface.COLIN27.is_file():
        donors[COLIN] = registered(deface.COLIN27).face
    else:
        print(f"{deface.COLIN27} missing (Debian's mricron-data): no Colin27 face")
    training = [path for path in sorted(args.ixi.glob("*.nii*")) if subject_of(path) not in HELD_OUT]
    donors[AVERAGE] = np.mean([registered(path).face for path in training], axis=0)
    print(f"donors registered, {time.perf_counter() - started:.0f} s", flush=True)

    rows = []
    for i, (bundle, head) in enumerate(zip(bundles, fits)):
        faces = {PYDEFACE: bundle.template_face,
                 **{name: onto_grid(donor, head, contract) for name, donor in donors.items()},
                 HELD_AVERAGE: onto_grid(np.mean([other.face for j, other in enumerate(fits) if j != i], axis=0), head, contract),
                 SWAP: onto_grid(fits[(i + 1) % len(fits)].face, head, contract)}
        for donor, face in faces.items():
            pasted = dataclasses.replace(bundle, template_face=face)
            for draw in range(args.draws):
                drawn = replace_template(pasted, np.random.default_rng([draw, i]))
                tissue = drawn.foreign & (drawn.volume > FOREIGN_TISSUE)  # Colin27's field of view ends at the mouth
                variant = dataclasses.replace(drawn, removed=drawn.foreign & ~tissue, foreign=tissue)
                own, foreign = variant.shares(bundle.features)
                prediction = detector.predict([Scan(variant.volume, bundle.affine)])[0]
                if prediction.error:
                    raise SystemExit(f"{bundle.subject}, {donor}: {prediction.error}")
                rows.append({"head": bundle.subject, "donor": donor, "draw": draw, "label": variant.label(bundle.features),
                             "own": own, "foreign": foreign, "verdict": prediction.verdict,
                             "network": verdict_of(prediction.probabilities, detector.threshold),
                             **{f"p_{k}": v for k, v in prediction.probabilities.items()}})
        print(f"{bundle.subject}: {time.perf_counter() - started:.0f} s", flush=True)

    summary = []
    for donor in dict.fromkeys(row["donor"] for row in rows):
        drawn = [row for row in rows if row["donor"] == donor]
        defaced = [row for row in drawn if row["label"] != "face"]
        entry = {"donor": donor, "drawn": len(drawn), "labels": {v: sum(row["label"] == v for row in drawn) for v in VERDICTS},
                 "verdicts": {v: sum(row["verdict"] == v for row in drawn) for v in VERDICTS}}
        for answer in ("verdict", "network"):  # check's default; the network alone
            entry[answer] = {"not_face": rate([row[answer] != "face" for row in defaced], [row["head"] for row in defaced]),
                             "as_labelled": rate([row[answer] == row["label"] for row in defaced], [row["head"] for row in defaced])}
        summary.append(entry)
    table = Table(title=f"{len(bundles)} held-out IXI heads, face replaced by: {detector.checkpoint}")
    for column in ("face pasted in", "rule: removed / replaced / face", "not called face", "called as the rule says",
                   "network alone: not face", "verdicts: face / removed / replaced", "p(face) of those called face"):
        table.add_column(column)
    for s in summary:
        table.add_row(s["donor"], " / ".join(str(s["labels"][v]) for v in ("removed", "replaced", "face")),
                      *(f"{s[answer][key]['k']}/{s[answer][key]['n']} {rate_text(s[answer][key])}" for answer, key in
                        (("verdict", "not_face"), ("verdict", "as_labelled"), ("network", "not_face"))),
                      " / ".join(str(s["verdicts"][v]) for v in VERDICTS), p_face_range(rows, s["donor"]))
    Console(width=220).print(table)
    print(f"scored: the scans the rule labels removed or replaced ({len({row['head'] for row in rows})} subjects)")
    return write_result(args, detector, started, subjects=[b.subject for b in bundles], draws=args.draws,
                        donors_average_of=[subject_of(path) for path in training], rows=rows, summary=summary)


if __name__ == "__main__":
    main()
