"""The shipped detector when the field of view stops above the neck, on IXI heads it never saw.

IXI's field of view holds the neck; many protocols stop at the mouth, the nose or the cerebellum,
and a defaced scan from one of them must still read as defaced, a partly defaced one as a face.
Each of the 8 held-out heads (``HELD_OUT``) is judged by ``check``'s own path (the Detector on the
head's grid volume, with its default: the anatomy's second opinion where the network is unsure)
intact, defaced by the pydeface mask, and partly defaced (the lowest 40 % of the face region: eyes
and nose remain, so ``face`` by the feature rule), first as IXI stored it,
then with the field of view's lower edge raised to 0, 20, 35 and 50 mm above the chin
(:func:`defacegan.families.cut_below`). Rates of the expected answer with Wilson 95 % intervals:
one scan per head and case, so the 8 subjects are the trials.

    python bench/field_of_view.py [--ixi ../shared/data/ixi-t1-2mm] [--ckpt CKPT]

Prints a table and writes JSON (default bench/results/field_of_view.json).
"""

from __future__ import annotations

import time

import numpy as np
from rich.console import Console
from rich.table import Table

from defacegan.detector_training import bundle_caches, read_bundle
from defacegan.families import cut_below, generate, remove_share
from defacegan.io import Scan
from held_out import held_out_setup, right_rate, write_result

#: The field of view's lower edge above the chin's lowest voxel (mm); None: as IXI stored it.
EDGES_MM = (None, 0.0, 20.0, 35.0, 50.0)
#: Case → (how to make it from a head's bundle, the expected answer: "face" or "not face").
CASES = {
    "intact": (lambda bundle: generate(bundle, "none", np.random.default_rng(0)), "face"),
    "defaced: mask": (lambda bundle: generate(bundle, "mask", np.random.default_rng(0)), "not face"),
    "partly defaced: lowest 40 %": (lambda bundle: remove_share(bundle, 0.4, "below"), "face"),
}


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, held = held_out_setup(__doc__, "field_of_view.json", argv)
    bundles = [read_bundle(cache) for cache in bundle_caches(held, detector.contract, args.cache)]
    rows = []
    for case, (make, expected) in CASES.items():
        variants = [(bundle, make(bundle)) for bundle in bundles]
        for edge in EDGES_MM:
            scans = [Scan((variant if edge is None else cut_below(bundle, variant, edge)).volume, bundle.affine)
                     for bundle, variant in variants]
            predictions = detector.predict(scans)
            p_face = [p.probabilities["face"] for p in predictions]
            rows.append({"case": case, "expected": expected, "edge_mm": edge,
                         **right_rate([(p.verdict == "face") == (expected == "face") for p in predictions]),
                         "p_face_mean": float(np.mean(p_face)), "p_face_min": float(np.min(p_face)),
                         "p_face_max": float(np.max(p_face))})
    table = Table(title=f"field of view stopping above the neck: {detector.checkpoint}, {len(bundles)} held-out IXI heads")
    for column in ("case", "expected", "lower edge", "right [Wilson 95 %]", "p(face) mean (min-max)"):
        table.add_column(column)
    for row in rows:
        edge = "as stored (neck)" if row["edge_mm"] is None else f"{row['edge_mm']:.0f} mm above the chin"
        table.add_row(row["case"], row["expected"], edge, f"{row['right']}/{row['n']} [{row['low']:.2f}, {row['high']:.2f}]",
                      f"{row['p_face_mean']:.2f} ({row['p_face_min']:.2f}-{row['p_face_max']:.2f})")
    Console().print(table)
    return write_result(args, detector, started, subjects=[b.subject for b in bundles], rows=rows)


if __name__ == "__main__":
    main()
