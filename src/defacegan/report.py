"""Figures and tables for people to read: PNG bytes written atomically by the caller."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from scipy.ndimage import gaussian_filter
from sklearn.metrics import ConfusionMatrixDisplay, auc, roc_curve

from defacegan.io import atomic_write_bytes, atomic_write_text, head_threshold
from defacegan.manifest import CLASS_NAMES
from defacegan.metrics import classification_report

if TYPE_CHECKING:  # annotations only: plotting a result needs no registration code
    from defacegan.brain import BrainRemoved
    from defacegan.deface import Defaced
    from defacegan.io import Scan


def _outline(axis, region: np.ndarray, colour: str = "red") -> None:
    if region.any() and not region.all():
        axis.contour(region.T, levels=[0.5], colors=colour, linewidths=1)


def deface_qc_figure(scan: Scan, result: Defaced, brain: BrainRemoved | None = None) -> Figure:
    """QC figure of one defacing, so a person can check the face is gone and the brain intact.

    Rows: before, after. Columns: the middle sagittal slice (anterior to the right) and the head
    seen from the front (for each L-R, I-S column the first voxel from the front above the
    head threshold, shaded by depth and surface slope). The removed region is outlined in red;
    with ``brain``, the independent brain mask in blue on the slices and the brain removed in the
    title (red when flagged).
    """
    data, removed = scan.data, result.removed
    threshold = head_threshold(data)
    sx, sy, sz = scan.spacing
    middle = data.shape[0] // 2
    high = float(np.percentile(data[data > threshold], 99.5))
    figure = Figure(figsize=(9, 8), dpi=100, layout="constrained")
    title = f"{scan.path.name if scan.path else 'scan'}: defaced ({result.method}), removed region in red"
    if brain is not None:
        title += f"\nbrain (blue): {brain.line()}"
    figure.suptitle(title, color="red" if brain is not None and brain.flagged else "black")
    axes = figure.subplots(2, 2)
    for row, (volume, label) in enumerate(((data, "before"), (result.defaced, "after"))):
        sagittal, front = axes[row]
        sagittal.imshow(volume[middle].T, cmap="gray", origin="lower", vmin=0, vmax=high, aspect=sz / sy)
        _outline(sagittal, removed[middle])
        if brain is not None:
            _outline(sagittal, brain.mask[middle], "tab:blue")
        sagittal.set_title(f"{label}: middle sagittal slice")
        inside = volume > threshold
        hit = inside.any(axis=1)
        depth_mm = np.argmax(inside[:, ::-1], axis=1) * sy  # from the front (+y) backwards
        far = depth_mm[hit].min() + 150.0 if hit.any() else 150.0  # dark 150 mm behind the nearest
        depth_mm = gaussian_filter(np.where(hit, depth_mm, far), 1.0)
        slope_x, slope_z = np.gradient(depth_mm, sx, sz)
        shade = (far - depth_mm) / 150.0 / np.sqrt(1 + slope_x**2 + slope_z**2)
        # Seen from the front the subject's right (high x) is on the viewer's left.
        front.imshow(shade[::-1].T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=sz / sx)
        _outline(front, removed.any(axis=1)[::-1])
        front.set_title(f"{label}: seen from the front")
    for axis in axes.ravel():
        axis.set_axis_off()
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Render a figure to PNG and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_roc(labels, probabilities, path: str | Path) -> Path:
    """ROC curve of p(defaced) with its AUC."""
    figure = Figure(figsize=(4.5, 4.5), dpi=100, layout="constrained")
    axis = figure.subplots()
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, probabilities)
        axis.plot(fpr, tpr, label=f"AUC = {auc(fpr, tpr):.3f}")
        axis.legend(loc="lower right")
    axis.plot([0, 1], [0, 1], ls="--", color="grey")
    axis.set(xlabel="false positive rate (faces called defaced)", ylabel="true positive rate", title="ROC")
    return save_figure(figure, path)


def plot_confusion(confusion, path: str | Path) -> Path:
    """2×2 confusion matrix, rows = truth, columns = prediction."""
    figure = Figure(figsize=(4, 3.6), dpi=100, layout="constrained")
    axis = figure.subplots()
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(CLASS_NAMES)).plot(ax=axis, colorbar=False)
    return save_figure(figure, path)


def plot_curves(curves: list[dict], view_names: list[str], path: str | Path) -> Path:
    """Learning curves (top row) and validation curves (bottom row), one column per view."""
    figure = Figure(figsize=(3 * len(curves), 5.5), dpi=100, layout="constrained")
    axes = figure.subplots(2, len(curves), squeeze=False)
    for column, (curve, name) in enumerate(zip(curves, view_names)):
        learning = curve["learning"]
        for key in ("train", "val"):
            axes[0, column].plot(learning["sizes"], learning[key].mean(axis=1), marker="o", label=key)
        axes[0, column].set(title=name, xlabel="training scans", ylabel="F1", ylim=(0, 1.05))
        if "validation" in curve:
            validation = curve["validation"]
            for key in ("train", "val"):
                axes[1, column].semilogx(validation["values"], validation[key].mean(axis=1), marker="o", label=key)
            axes[1, column].set(xlabel=validation["param"], ylabel="F1", ylim=(0, 1.05))
        else:
            axes[1, column].set_axis_off()
    axes[0, 0].legend()
    return save_figure(figure, path)


def plot_image_grid(
    columns: dict[str, np.ndarray],
    path: str | Path,
    *,
    row_labels: list[str] | None = None,
    limits: dict[str, tuple[float, float]] | None = None,
    cmaps: dict[str, str] | None = None,
) -> Path:
    """Images side by side: one column per entry of ``columns`` ((rows, H, W) arrays, shown as
    stored, row 0 at the top), grey within ``limits[name]`` unless ``cmaps`` names another map.

    Faces are re-identifiable: write such grids to local files only.
    """
    limits, cmaps = limits or {}, cmaps or {}
    n_rows = len(next(iter(columns.values())))
    figure = Figure(figsize=(2.2 * len(columns), 2.2 * n_rows + 0.3), dpi=100, layout="constrained")
    axes = figure.subplots(n_rows, len(columns), squeeze=False)
    for column, (name, images) in enumerate(columns.items()):
        low, high = limits.get(name, (float(np.min(images)), float(np.max(images))))
        axes[0, column].set_title(name)
        for row, image in enumerate(images):
            axes[row, column].imshow(image, cmap=cmaps.get(name, "gray"), vmin=low, vmax=high)
    for row, label in enumerate(row_labels or []):
        axes[row, 0].text(-0.04, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center")
    for axis in axes.ravel():
        axis.set_axis_off()
    return save_figure(figure, path)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table, one line per row dict (missing values left blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def classification_outputs(labels, probabilities, kinds, out: Path) -> dict:
    """Test metrics (all, and per defacing method) plus ROC and confusion-matrix PNGs."""
    scores = classification_report(labels, probabilities, kinds)
    plots = [
        plot_roc(labels, probabilities, out / "roc.png"),
        plot_confusion(scores["all"]["confusion"], out / "confusion.png"),
    ]
    return {"test": scores["all"], "test_by_method": {k: v for k, v in scores.items() if k != "all"}, "plots": [str(p) for p in plots]}


SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "auc")


def print_summary(summary: dict, out: str | Path) -> None:
    """The metrics table at the end of a run, and where its files went."""
    table = Table(title=f"defacegan — {summary.get('model') or 'model'} ({summary.get('view_mode') or summary.get('task')})")
    columns = {"val": summary.get("val") or {}, "test": summary.get("test") or {}}
    columns.update({f"test: {m}": s for m, s in (summary.get("test_by_method") or {}).items()})
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = [k for k in SUMMARY_KEYS if any(k in c for c in columns.values())]
    keys += sorted({k for c in columns.values() for k, v in c.items() if isinstance(v, float)} - set(keys))
    for key in keys:
        table.add_row(key, *(format_value(c.get(key)) for c in columns.values()))
    console = Console()
    console.print(table)
    for key in ("train_seconds", "inference_ms_per_scan"):
        if key in summary:
            console.print(f"{key.replace('_', ' ')}: {summary[key]:.2f}")
    console.print(f"metrics: {Path(out) / 'metrics.json'}")
    if summary.get("plots"):
        console.print(f"plots: {Path(summary['plots'][0]).parent} ({', '.join(Path(p).name for p in summary['plots'])})")


def format_value(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


COMPARISON_COLUMNS = ("model", "view_mode", "train_methods", "accuracy", "precision", "recall", "f1", "auc",
                      "train_seconds", "inference_ms_per_scan")


def comparison_rows(sweep_dir: str | Path) -> list[dict]:
    """One row per finished job of a multirun (its metrics.json), in job order."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/metrics.json"), key=lambda p: p.parent.name):
        summary = json.loads(path.read_text())
        row = {k: summary.get(k) for k in COMPARISON_COLUMNS}
        row.update({k: (summary.get("test") or {}).get(k) for k in SUMMARY_KEYS})
        for method, scores in (summary.get("test_by_method") or {}).items():
            row[f"f1_{method}"] = scores.get("f1")
        row["train_methods"] = "+".join(summary.get("train_methods") or [])
        row["job"] = path.parent.name
        rows.append(row)
    return rows


def write_comparison(sweep_dir: str | Path) -> Path | None:
    """comparison.csv and comparison.md in the sweep folder (test-set scores)."""
    rows = comparison_rows(sweep_dir)
    if not rows:
        return None
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv = "\n".join([",".join(columns)] + [",".join(format_value(r.get(c)) for c in columns) for r in rows]) + "\n"
    atomic_write_text(Path(sweep_dir) / "comparison.csv", csv)
    return atomic_write_text(Path(sweep_dir) / "comparison.md", markdown_table(rows, columns))


AUDIT_NAMES = {"pix2pix": "Pix2Pix", "cyclegan": "CycleGAN", "zero_fill": "zero-fill (the defaced input)", "average_face": "average face", "template_face": "template face", "chance": "chance"}


def write_reface_audit(
    results: dict[str, dict[str, float]],
    by_defacing: dict[str, dict[str, float]],
    subjects: list[str],
    shown: dict[str, np.ndarray],
    folder: Path,
    rows: int = 8,
) -> list[Path]:
    """reface_metrics.json, reface_metrics.md (one row per candidate, then Pix2Pix per defacing
    method) and reface_grid.png (input | output | target | |error|) of the first ``rows``
    subjects: ``shown`` holds a slice of each subject, ``source``, ``refaced`` and ``target``
    (N, S, S) in [-1, 1]."""
    shown = {key: images[:rows] for key, images in shown.items()}
    columns = list(dict.fromkeys(name for scores in results.values() for name in scores))
    table = [{"": AUDIT_NAMES.get(candidate, candidate)} | scores for candidate, scores in results.items()]
    table += [{"": f"Pix2Pix on {kind}-defaced scans"} | scores for kind, scores in by_defacing.items()]
    summary = {"n_subjects": len(subjects), "subjects": subjects, "scores": results, "pix2pix_by_defacing": by_defacing}
    grid = {"input": shown["source"], "output": shown["refaced"], "target": shown["target"]}
    grid["|output − target|"] = np.abs(shown["refaced"] - shown["target"])
    return [
        atomic_write_text(folder / "reface_metrics.json", json.dumps(summary, indent=2)),
        atomic_write_text(folder / "reface_metrics.md", markdown_table(table, ["", *columns])),
        plot_image_grid(
            grid,
            folder / "reface_grid.png",
            row_labels=subjects[: len(shown["source"])],
            limits={"input": (-1, 1), "output": (-1, 1), "target": (-1, 1), "|output − target|": (0, 1)},
            cmaps={"|output − target|": "magma"},
        ),
    ]


#: The audit's columns: (heading, score key); re-identification keys carry ``_low``/``_high``.
AUDIT_COLUMNS = (
    ("SSIM", "ssim_face"), ("PSNR (dB)", "psnr_face"), ("MAE", "mae_face"), ("seam SSIM", "ssim_seam"),
    ("seam MAE", "mae_seam"), ("voxel top-1", "voxel_top1"), ("voxel top-5", "voxel_top5"),
    ("surface top-1", "surface_top1"), ("surface top-5", "surface_top5"),
)


def audit_rows(scores: dict[str, dict[str, float]]) -> list[dict[str, str]]:
    """One row of formatted cells per candidate of a :func:`defacegan.metrics.reface_audit`
    result: image scores to 3 decimals, rates as "0.25 [0.13, 0.42]"."""
    rows = []
    for candidate, values in scores.items():
        row = {"": AUDIT_NAMES.get(candidate, candidate)}
        for heading, key in AUDIT_COLUMNS:
            if key + "_low" in values:
                row[heading] = f"{values[key]:.2f} [{values[key + '_low']:.2f}, {values[key + '_high']:.2f}]"
            elif key in values:
                row[heading] = f"{values[key]:.2f}" if key.startswith(("voxel", "surface", "psnr")) else f"{values[key]:.3f}"
        rows.append(row)
    return rows


def audit_markdown(result: dict) -> str:
    """The k-fold audit of ``bench/audit.py`` as Markdown: one table per defacing method."""
    parts = []
    for method, scores in result["audit"].items():
        parts.append(f"**{method}-defaced** ({result['n_subjects']} subjects, each re-faced once by a candidate "
                     f"that never saw it; {result['size']}-px sagittal slices × {result['n_slices']}):\n")
        parts.append(markdown_table(audit_rows(scores), ["", *(heading for heading, _ in AUDIT_COLUMNS)]))
    return "\n".join(parts)
