"""The shipped detector on the output of a defacing tool that is not this project's: Quickshear.

Every training family imitates another tool; this runs a real one. Quickshear (Schimke & Hale
2011, ``pip install quickshear``) cuts along a plane a ``buffer`` below the lower hull of a brain
mask; the mask here is BET's (:func:`defacegan.brain.brain_mask`, as ``deface`` measures the brain
with). Heads: the 8 IXI subjects the shipped detector never saw (``HELD_OUT``) and Colin27 when
installed. Each defaced scan is written as NIfTI and judged by ``check``'s path (``Detector``
on the file). Its expected answer comes from the feature rule, as in training: the voxels
Quickshear zeroed are carried onto the head's registered features (its cached bundle), so a cut
that leaves an eye is expected to be called ``face``.

Two buffers: Quickshear's default of 10 voxels (20 mm on these 2 mm heads) and 5 voxels (10 mm,
the default's distance on the 1 mm scans it is usually run on).

    python bench/other_defacers.py [--ixi ../shared/data/ixi-t1-2mm] [--ckpt CKPT]

Prints a table and writes JSON (default bench/results/other_defacers.json).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from quickshear import quickshear
from rich.console import Console
from rich.table import Table

from defacegan.brain import brain_mask
from defacegan.deface import COLIN27
from defacegan.detector_training import HELD_OUT, bundle_caches, read_bundle, rule_label, subject_of
from defacegan.io import load_scan, stem
from defacegan.metrics import wilson_interval
from held_out import held_out_setup, write_result

BUFFERS_VOXELS = (10, 5)


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "other_defacers.json", argv)
    paths += [COLIN27] if COLIN27.is_file() else []
    bundles = [read_bundle(cache) for cache in bundle_caches(paths, detector.contract, args.cache)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path, bundle in zip(paths, bundles):
            scan = load_scan(path)
            image = nib.Nifti1Image(scan.data.astype(np.float32), scan.affine)
            brain = nib.Nifti1Image(brain_mask(scan).astype(np.uint8), scan.affine)
            for buffer in BUFFERS_VOXELS:
                defaced = np.asanyarray(quickshear(image, brain, buff=buffer).dataobj)
                label, own = rule_label(bundle, detector.contract, scan, (defaced == 0) & (scan.data != 0))
                target = Path(folder) / f"{stem(path)}_quickshear{buffer}.nii.gz"
                nib.save(nib.Nifti1Image(defaced, scan.affine), target)
                prediction = detector.predict([target])[0]
                if prediction.error:
                    raise SystemExit(prediction.error)
                rows.append({"head": bundle.subject, "ixi": subject_of(path) in HELD_OUT, "buffer_voxels": buffer,
                             "buffer_mm": buffer * float(np.mean(scan.spacing)), "expected": label,
                             "own_share": own, "verdict": prediction.verdict, **{f"p_{k}": v for k, v in prediction.probabilities.items()},
                             "right": (prediction.verdict == "face") == (label == "face")})
    summary = []
    for buffer in BUFFERS_VOXELS:
        ixi = [row for row in rows if row["ixi"] and row["buffer_voxels"] == buffer]
        right = sum(row["right"] for row in ixi)
        low, high = wilson_interval(right, len(ixi))
        summary.append({"buffer_voxels": buffer, "right": right, "n": len(ixi), "rate": right / len(ixi), "low": low, "high": high,
                        "expected_face": sum(row["expected"] == "face" for row in ixi)})
    table = Table(title=f"Quickshear-defaced heads: {detector.checkpoint}")
    for column in ("head", "buffer", "expected (rule)", "verdict", "p_face / p_removed / p_replaced", "right"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["head"], f"{row['buffer_voxels']} vox ({row['buffer_mm']:.0f} mm)", row["expected"], row["verdict"],
                      f"{row['p_face']:.2f} / {row['p_removed']:.2f} / {row['p_replaced']:.2f}", "yes" if row["right"] else "NO")
    Console().print(table)
    for s in summary:
        print(f"held-out IXI, buffer {s['buffer_voxels']} voxels: {s['right']}/{s['n']} right [{s['low']:.2f}, {s['high']:.2f}] "
              f"({s['expected_face']} expected face by the rule)")
    return write_result(args, detector, started, tool="quickshear", rows=rows, summary=summary)


if __name__ == "__main__":
    main()
