"""The shipped detector on faces put back by this project's own re-facer, a generator it never trained on.

The families replace a removed face by the average face, a smooth generic shell, or a smooth
featureless mass grown from the cut (``replace_template``, ``replace_shell``, ``replace_smooth``,
the last drawn after what this bench first found the re-facer to paint, and left out of the
shipped detector's training: ``WEIGHT_WITHOUT`` in the Makefile); the re-facer itself is not in
training, so this stays a test on a generator's real output. Here a Pix2Pix is trained by
``train.py model=pix2pix`` on IXI heads the shipped detector trained on (the subset less
``HELD_OUT``, built into a cohort with ``defacegan data build``), so it never saw the held-out
heads either. Each of the 8 held-out heads
is defaced (``mask`` and ``plane``), written as NIfTI and re-faced by ``defacegan reface``'s
code (:func:`defacegan.reface.reface_file`, which finds the removed region by registration),
then both files are judged by ``check``'s path (network alone, and ``--anatomy``).

The expected answer comes from the feature rule, as in training: the voxels the defacer zeroed
are gone, the ones the re-facer filled with tissue are foreign. A re-faced head whose features
are covered by generated tissue is ``replaced``; one where the re-facer left them air is
``removed``. Both are defaced (not ``face``), unless the defacing itself left a feature.

The re-facer is narrow to fit 2 CPU cores (:data:`REFACER_OVERRIDES`: 4 mm grid, 64-px sagittal
slices, the 15 middle planes, 16 base channels): a weaker re-facer than a GPU would train.
``--refacer CKPT`` judges another one (any ``train.py model=pix2pix`` or ``model=cyclegan``
checkpoint).

    python bench/gan_refaced.py [--ixi ../shared/data/ixi-t1-2mm] [--refacer CKPT] [--ckpt DETECTOR]

Prints a table and writes JSON (default bench/results/gan_refaced.json).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
from rich.console import Console
from rich.table import Table

from defacegan.cohort import build_cohort
from defacegan.contract import VERDICTS
from defacegan.deface import deface
from defacegan.detector_data import bundle_caches, read_bundle, rule_label, subject_of
from defacegan.detector_training import HELD_OUT
from defacegan.inference import verdict_of
from defacegan.io import head_threshold, load_scan, stem
from defacegan.reface import load_refacer, reface_file
from held_out import ROOT, held_out_setup, right_rate, write_result

METHODS = ("mask", "plane")
#: The re-facer's recipe, sized for 2 CPU cores (67 s of training, early-stopped, in a 192 s run).
REFACER_OVERRIDES = (
    "model=pix2pix", "data.size=64", "data.spacing=4.0", "data.shape=[64,64,64]", "data.n_slices=15",
    "data.batch_size=2", "model.generator.base_channels=16", "model.discriminator.base_channels=16",
    "trainer.max_epochs=30", "test=false", "logger=csv",
)


def train_refacer(ixi: Path, work: Path) -> Path:
    """A Pix2Pix re-facer trained by ``train.py`` on the IXI heads outside ``HELD_OUT``, in
    ``work`` (kept: a second run reuses it); its best checkpoint by validation SSIM in the face."""
    best = work / "refacer.ckpt"
    if best.is_file():
        return best
    sources = work / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    for path in sorted(ixi.glob("*.nii*")):
        link = sources / path.name
        if subject_of(path) not in HELD_OUT and not link.exists():
            link.symlink_to(path.resolve())
    build_cohort(sources, work / "cohort", fractions=(0.85, 0.15, 0.0), workers=1)
    run = work / "train"
    subprocess.run([sys.executable, str(ROOT / "train.py"), *REFACER_OVERRIDES, f"data.root={work / 'cohort'}",
                    f"hydra.run.dir={run}"], check=True)
    checkpoints = sorted((run / "checkpoints").glob("epoch_*.ckpt"))
    if not checkpoints:
        raise SystemExit(f"{run}: the re-facer's training wrote no checkpoint")
    checkpoints[-1].rename(best)  # the monitored checkpoint (val/ssim_face, the only one kept)
    return best


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, paths = held_out_setup(__doc__, "gan_refaced.json", argv,
                                           extra=[("--refacer", Path, None), ("--work", Path, Path("data/refacer"))])
    detector.anatomy = "always"
    refacer_path = args.refacer or train_refacer(args.ixi, args.work)
    refacer = load_refacer(refacer_path, device="cpu")
    bundles = [read_bundle(cache) for cache in bundle_caches(paths, detector.contract, args.cache)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path, bundle in zip(paths, bundles):
            scan = load_scan(path)
            for method, defacing in deface(scan, METHODS).items():
                defaced_path = Path(folder) / f"{stem(path)}_{method}.nii.gz"
                refaced_path = Path(folder) / f"{stem(path)}_{method}_refaced.nii.gz"
                nib.save(nib.Nifti1Image(defacing.defaced, scan.affine), defaced_path)
                reface_file(defaced_path, refaced_path, refacer)
                refaced = load_scan(refaced_path).data
                gone = (defacing.defaced == 0) & (scan.data != 0)
                filled = gone & (refaced > head_threshold(scan.data))
                for stage, file, foreign in (("defaced", defaced_path, None), ("re-faced", refaced_path, filled)):
                    label, _ = rule_label(bundle, detector.contract, scan, gone, foreign)
                    prediction = detector.predict([file])[0]
                    if prediction.error:
                        raise SystemExit(prediction.error)
                    network = verdict_of(prediction.probabilities, detector.threshold)
                    rows.append({"head": bundle.subject, "method": method, "stage": stage, "expected": label,
                                 "filled_share": float(filled.sum() / max(gone.sum(), 1)) if foreign is not None else 0.0,
                                 "verdict": network, **{f"p_{k}": v for k, v in prediction.probabilities.items()},
                                 "anatomy_verdict": prediction.verdict, "tissue": prediction.tissue,
                                 "righted": prediction.righted, "unrighted": prediction.unrighted})
    summary = []
    for method in METHODS:
        for stage in ("defaced", "re-faced"):
            group = [row for row in rows if (row["method"], row["stage"]) == (method, stage)]
            for key, answer in (("verdict", "network alone"), ("anatomy_verdict", "--anatomy")):
                entry = {"method": method, "stage": stage, "answer": answer, "n": len(group),
                         "expected": {label: sum(row["expected"] == label for row in group) for label in VERDICTS},
                         "not_face": right_rate([row[key] != "face" for row in group]),
                         "as_expected": right_rate([row[key] == row["expected"] for row in group])}
                summary.append(entry)
    table = Table(title=f"Held-out heads re-faced by {refacer_path}: {detector.checkpoint}")
    for column in ("head", "defacing", "stage", "share of the region filled", "expected (rule)", "verdict",
                   "p_face / p_removed / p_replaced", "--anatomy verdict"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["head"], row["method"], row["stage"], f"{row['filled_share']:.2f}", row["expected"], row["verdict"],
                      f"{row['p_face']:.2f} / {row['p_removed']:.2f} / {row['p_replaced']:.2f}", row["anatomy_verdict"])
    Console(width=200).print(table)
    for s in summary:
        print(f"held-out IXI, {s['method']} {s['stage']}, {s['answer']} (expected {s['expected']}): "
              + "; ".join(f"{name} {s[key]['right']}/{s['n']} [{s[key]['low']:.2f}, {s[key]['high']:.2f}]"
                          for key, name in (("not_face", "not face"), ("as_expected", "as expected"))))
    return write_result(args, detector, started, refacer=str(refacer_path), refacer_recipe=list(REFACER_OVERRIDES),
                        rows=rows, summary=summary)


if __name__ == "__main__":
    main()
