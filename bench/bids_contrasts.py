"""Other contrasts defaced with their T1w's removed region, as `deface BIDS_DIR OUTPUT_DIR participant` does.

No IXI T2/PD scans are at hand here, so each subject's second contrast is *T2w-like*: its IXI T1
with the intensities inverted inside the head (as the tests do), moved by a known rigid motion
(rotation up to ±6° per axis, shift up to ±6 mm) and resampled onto a 2.5 mm grid, as a scan
acquired separately in the same session would be. The BIDS App defaces the T1w by registering
pydeface's template, and carries that region over to the T2w-like scan by rigid registration.

Scores, per subject, the Dice overlap, within the head, between the tissue removed from the
T2w-like scan and the T1w's region moved by the known motion (so: how well the rigid registration
carried it over, against a known truth; the air in the region is left out, as it would inflate Dice). Prints a table, writes JSON (default bench/results/bids_contrasts.json)
and docs/bids_contrasts.png: deface's own QC figures for a T1w and its T2w-like scan. The figure
shows Colin27 (Debian's ``mricron-data``, a published template head; pydeface's mean head where it
is missing), made T2w-like the same way, never an IXI subject: a face render of a real subject
does not belong in a repository.

    python bench/bids_contrasts.py --ixi ../shared/data/ixi-t1-2mm --subjects 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console
from rich.table import Table

from defacegan.bids import find_scans, outputs_for
from defacegan.cli import main as defacegan
from defacegan.deface import COLIN27, LPS, PYDEFACE_DATA, to_sitk, warp
from defacegan.io import atomic_write_text, head_threshold, load_scan
from defacegan.report import save_figure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test support's T2w-like contrast and Dice, shared with the tests
from support.bids_fixture import inverted  # noqa: E402
from support.geometry import dice  # noqa: E402

T2W_SPACING_MM = 2.5
CAPTION = ("Colin27 (a published template head); T2w-like = its T1 intensity-inverted inside the head, rigidly moved and resampled to 2.5 mm "
           "(no real T2w at hand). Left: the T1w, defaced with pydeface's face mask registered by SimpleITK. "
           "Right: the T2w-like scan, defaced with the T1w's removed region carried over by rigid registration.")


def rigid_motion(rng: np.random.Generator, centre_ras: np.ndarray) -> sitk.Euler3DTransform:
    """A random rigid motion about ``centre_ras`` (mm), in SimpleITK's LPS world."""
    motion = sitk.Euler3DTransform()
    motion.SetCenter((LPS @ centre_ras).tolist())
    motion.SetRotation(*np.deg2rad(rng.uniform(-6, 6, 3)).tolist())
    motion.SetTranslation(rng.uniform(-6, 6, 3).tolist())
    return motion


def write_dataset(root: Path, heads: dict[str, Path], seed: int) -> dict[str, tuple]:
    """A raw BIDS dataset, ``sub-<label>/anat/`` with a T1w and a T2w-like scan per head; returns
    per subject (motion, T2w-like grid shape, its affine)."""
    rng = np.random.default_rng(seed)
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "IXI T1 with T2w-like copies", "BIDSVersion": "1.10.0"}))
    (root / "README").write_text("IXI dataset T1 heads (CC BY-SA 3.0) with T2w-like copies, for bench/bids_contrasts.py.\n")
    truths = {}
    for subject, path in heads.items():
        scan = load_scan(path)
        t1w = np.rint(scan.data).astype(np.int16)
        extent = np.asarray(t1w.shape) * np.asarray(scan.spacing)
        shape = tuple(int(n) for n in np.ceil(extent / T2W_SPACING_MM))
        affine = np.diag([T2W_SPACING_MM] * 3 + [1.0])
        affine[:3, 3] = scan.affine[:3, 3]
        centre = (scan.affine @ [*((np.asarray(t1w.shape) - 1) / 2), 1])[:3]
        motion = rigid_motion(rng, centre)
        t2w = warp(to_sitk(inverted(t1w), scan.affine), motion, shape, affine)
        anat = root / f"sub-{subject}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(t1w, scan.affine), anat / f"sub-{subject}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(np.rint(t2w).astype(np.int16), affine), anat / f"sub-{subject}_T2w.nii.gz")
        truths[subject] = (motion, shape, affine)
    return truths


def region(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mask written by deface, as (bool RAS+ array, affine)."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(image.dataobj) > 0, image.affine


def side_by_side(left: Path, right: Path) -> Figure:
    figure = Figure(figsize=(16, 7.6), dpi=100, layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, path, title in zip(axes, (left, right), ("T1w", "T2w-like (other contrast)")):
        with Image.open(path) as image:
            axis.imshow(np.asarray(image))
        axis.set_title(title, fontsize=14)
        axis.set_axis_off()
    figure.text(0.5, 0.0, CAPTION, ha="center", va="bottom", wrap=True, fontsize=10)
    return figure


def shown_head() -> Path:
    return COLIN27 if COLIN27.exists() else PYDEFACE_DATA / "mean_reg2mean.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi", type=Path, default=ROOT.parent / "shared" / "data" / "ixi-t1-2mm")
    parser.add_argument("--subjects", type=int, default=4, help="IXI heads to use (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the raw and defaced datasets here (default: a temporary folder)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "bids_contrasts.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "bids_contrasts.json")
    args = parser.parse_args()
    heads = {path.name.split("-")[0]: path for path in sorted(args.ixi.glob("*.nii.gz"))[: args.subjects]}  # IXI002
    if not heads:
        sys.exit(f"error: no IXI heads in {args.ixi}")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        raw, out = work / "raw", work / "derivatives" / "defacegan"
        truths = write_dataset(raw, heads, args.seed)
        started = time.perf_counter()
        if defacegan(["deface", str(raw), str(out), "participant"]) != 0:
            sys.exit("error: the BIDS App run failed")
        seconds = time.perf_counter() - started
        scans = {(scan.entities["subject"], scan.suffix): scan for scan in find_scans(raw)}
        rows = []
        for subject, (motion, shape, affine) in truths.items():
            t1w_region, t1w_affine = region(outputs_for(scans[subject, "T1w"], out).mask)
            carried, _ = region(outputs_for(scans[subject, "T2w"], out).mask)
            expected = warp(to_sitk(t1w_region.astype(np.float32), t1w_affine), motion, shape, affine) >= 0.5
            t2w = load_scan(scans[subject, "T2w"].path).data
            head = t2w > head_threshold(t2w)
            rows.append({"subject": subject, "dice_in_head": dice(carried & head, expected & head),
                         "head_removed_percent": 100 * float((carried & head).sum() / head.sum())})
        shown_raw, shown_out = work / "shown" / "raw", work / "shown" / "derivatives"
        write_dataset(shown_raw, {"colin27" if COLIN27.exists() else "template": shown_head()}, args.seed)
        if defacegan(["deface", str(shown_raw), str(shown_out), "participant"]) != 0:
            sys.exit("error: the BIDS App run failed on the figure's head")
        shown = {scan.suffix: scan for scan in find_scans(shown_raw)}
        save_figure(side_by_side(*(outputs_for(shown[suffix], shown_out).figure for suffix in ("T1w", "T2w"))), args.figure)
    table = Table("subject", "Dice in the head (carried vs. known motion)", "head removed (%)",
                  title=f"T2w-like scans defaced with their T1w's region ({len(rows)} IXI subjects)")
    for row in rows:
        table.add_row(row["subject"], f"{row['dice_in_head']:.3f}", f"{row['head_removed_percent']:.1f}")
    values = np.array([row["dice_in_head"] for row in rows])
    table.add_row("mean [min]", f"{values.mean():.3f} [{values.min():.3f}]", "")
    Console().print(table)
    document = {"subjects": len(rows), "rows": rows, "dice_in_head_mean": float(values.mean()),
                "dice_in_head_min": float(values.min()),
                "seconds": round(seconds, 1), "figure": str(args.figure)}
    atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    print(f"{len(rows) * 2} scans defaced in {seconds:.0f} s; wrote {args.figure} and {args.json}")


if __name__ == "__main__":
    main()
