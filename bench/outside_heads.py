"""The detector on heads from outside IXI: the heads that install with the project.

Every figure of ``bench/detector_eval.py`` comes from IXI (one site, one contrast). This bench asks
the shipped detector (or ``--ckpt``) about heads it never saw in any form: Colin27 (Debian's
``mricron-data``: 27 scans of one person averaged, MNI space, a different field of view) and
pydeface's mean head (an average of many heads and the very face the ``replace_template`` family
pastes in: no one person's face, so its intact and partly defaced scans have no expected answer
and are reported, not scored). Each head is tried as it is, stored in another
orientation (LPS, voxel axes swapped), T2w-like (intensities inverted inside the head), defaced by
``defacegan deface`` (mask and plane; T2w-like too), partly defaced (only the lowest 40 % of the
face region: eyes and nose remain, so `face`), and with the registered template's face pasted in
(`replaced`). Two anatomies: these rows show failures, they cannot show a rate. Every case is
answered twice: by the network alone (``check``) and with the anatomy's second opinion
(``check --anatomy``, :mod:`defacegan.anatomy`).

    python bench/outside_heads.py [--ckpt src/defacegan/assets/detector.pt ...]

Prints a table and writes JSON (default bench/results/outside_heads.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from defacegan.augment import t2w_like
from defacegan.deface import COLIN27, face_region, register_template, removed_region, template_masks
from defacegan.families import BELOW, _share_of
from defacegan.inference import Detector, verdict_of
from defacegan.io import Scan, atomic_write_text, load_scan
from provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test support's re-facing, shared with the anatomy tests
from support.refacing import template_face_pasted  # noqa: E402


def lps_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """The same head stored LPS with the first two voxel axes swapped: what another scanner writes."""
    flipped = nib.Nifti1Image(data, affine).as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
    return nib.Nifti1Image(np.ascontiguousarray(np.swapaxes(np.asanyarray(flipped.dataobj), 0, 1)), flipped.affine[:, [1, 0, 2, 3]])


def cases(name: str, scan: Scan) -> list[tuple[str, str | None, nib.Nifti1Image]]:
    """(case, expected verdict or None, image) for one head."""
    transform = register_template(scan)
    face = face_region(scan, transform)
    data = scan.data.astype(np.float32)
    intact = None if name == "mean head" else "face"

    def image(volume):
        return nib.Nifti1Image(volume.astype(np.float32), scan.affine)

    t2 = t2w_like(torch.from_numpy(data)[None])[0].numpy()  # the inversion training draws
    return [
        ("intact", intact, image(data)),
        ("intact, stored LPS, axes swapped", intact, lps_image(data, scan.affine)),
        ("intact, T2w-like", intact, image(t2)),
        ("defaced: mask", "not face", image(np.where(face, 0, data))),
        ("defaced: plane", "not face", image(np.where(removed_region(scan, transform, "plane"), 0, data))),
        ("T2w-like, defaced: mask", "not face", image(np.where(face, 0, t2))),
        ("partly defaced: lowest 40 % of the mask", intact, image(np.where(_share_of(face, 0.4, BELOW), 0, data))),
        ("face replaced by the template's", None if name == "mean head" else "replaced", image(template_face_pasted(scan, transform))),
    ]


def heads() -> dict[str, Scan]:
    found = {}
    if COLIN27.is_file():
        found["Colin27"] = load_scan(COLIN27)
    head = nib.as_closest_canonical(template_masks().head)
    found["mean head"] = Scan(np.asanyarray(head.dataobj).astype(np.float32), head.affine)
    return found


def met(expected: str | None, verdict: str) -> bool | None:
    if expected is None:
        return None
    return verdict != "face" if expected == "not face" else verdict == expected


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", nargs="+", default=[None], help="detector checkpoints (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "outside_heads.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    built = [(head, case, expected, image) for head, scan in heads().items() for case, expected, image in cases(head, scan)]
    rows, console = [], Console(width=200)
    for ckpt in args.ckpt:
        detector = Detector(ckpt, anatomy="always")
        predictions = detector.predict([image for *_, image in built])
        table = Table(title=f"outside IXI: {detector.checkpoint}")
        for column in ("head", "case", "expected", "verdict", "p_face", "p_removed", "p_replaced", "right",
                       "--anatomy: eyes / nose / mouth / chin", "face texture", "verdict", "right"):
            table.add_column(column)
        for (head, case, expected, _), prediction in zip(built, predictions):
            p = prediction.probabilities
            network = verdict_of(p, detector.threshold)
            right, right_anatomy = met(expected, network), met(expected, prediction.verdict)
            rows.append({"ckpt": str(detector.checkpoint), "head": head, "case": case, "expected": expected,
                         "verdict": network, **{f"p_{k}": round(v, 4) for k, v in p.items()}, "right": right,
                         "tissue": prediction.tissue, "texture": prediction.texture, "anatomy_verdict": prediction.verdict, "anatomy_right": right_anatomy,
                         "righted": prediction.righted, "unrighted": prediction.unrighted})
            mark = {True: "yes", False: "[red]NO[/red]", None: ""}
            table.add_row(head, case, expected or "(none)", network, *(f"{v:.3f}" for v in p.values()), mark[right],
                          " / ".join(f"{v:.2f}" for v in prediction.tissue.values()), f"{prediction.texture:.2f}", prediction.verdict,
                          mark[right_anatomy])
        console.print(table)
    result = {"rows": rows, "seconds": round(time.perf_counter() - started, 1), "run": provenance()}
    for key, label in (("right", "network alone"), ("anatomy_right", "--anatomy")):
        scored = [r[key] for r in rows if r[key] is not None]
        result[key], result["scored"] = sum(scored), len(scored)
        console.print(f"{label}: {sum(scored)} of {len(scored)} scored cases right")
    atomic_write_text(args.out, json.dumps(result, indent=2))
    console.print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
