"""The re-facing audit: how much of a removed face can a candidate put back, and does the result
give the subject away? Every audit figure the README states comes from this script.

On a cohort (``defacegan data``; default the IXI subset at ``data/ixi``), each scan's face, its
defaced twins and their removed regions are put on the 2 mm standard grid and cut into the
``--slices`` middle sagittal slices (``--size`` px). k-fold over *all* subjects (``--folds``):
each candidate is built from a fold's training subjects and re-faces the fold's test subjects,
so every subject is re-faced once by a candidate that never saw it. Then, per defacing method,
:func:`defacegan.metrics.reface_audit` pastes every re-faced slice into its scan and scores it
on the strictly removed region (SSIM/PSNR/MAE on its tissue, the seam apart), and matches it
against every subject's true face (voxel correlation, and a frontal depth render of the surface):
top-1/top-5 with Wilson 95 % intervals next to chance, the subjects being the trials.

Candidates (:func:`candidates`): each is built per fold as ``build(data, train, test)`` and
returns a callable from (defaced slices, removed share) to re-faced slices, so a new generator
is one more entry:

- ``pix2pix``: a narrow Pix2Pix (U-Net + PatchGAN, LSGAN + 100·L1) trained on the fold's
  training subjects, both defacing methods;
- ``cyclegan``: a CycleGAN of the same width (two U-Nets, two PatchGANs, LSGAN + cycle + identity)
  trained on the same slices unpaired: each defaced slice meets the face of another subject;
- ``zero_fill``: the defaced input itself (air in the region);
- ``average_face``: the mean training face at each slice position;
- ``template_face``: pydeface's template head registered onto the subject (from its intact
  head: what the defacer's own registration gives an attacker), from the cached bundles.

Also reported: zero-fill matched inside a thresholded region (share ≥ 0.5), which still holds
blurred intact voxels along its border.

    python bench/audit.py                  # 4 folds of the 32 IXI heads, 64 px, 15 slices, 16 epochs
    python bench/audit.py --smoke          # seconds: 8 subjects, 2 folds, 1 epoch, tiny networks

Prints a table per defacing method and writes ``bench/results/audit.json`` and ``audit.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning import Trainer
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import KFold
from torch.utils.data import DataLoader, Dataset

from defacegan.contract import InputContract
from defacegan.datamodule import cache_scan, other_subject
from defacegan.detector_data import bundle_caches, read_bundle
from defacegan.io import atomic_write_text
from defacegan.manifest import METHODS, load_manifest, volume_columns
from defacegan.metrics import REID_RANKS, rate, reface_audit, top_k_hits, voxel_similarity
from defacegan.models.cyclegan import CycleGAN
from defacegan.models.pix2pix import Pix2Pix
from defacegan.report import audit_markdown, audit_rows
from defacegan.views import robust_scale, sagittal_slices

RESULTS = Path(__file__).resolve().parent / "results"
#: The standard grid of the cohort's volumes (the Pix2Pix grid, and the bundles' contract grid).
SPACING, SHAPE = 2.0, (128, 128, 128)
#: The bundles' grid must be the standard grid: centred on the field of view, not on the head.
BUNDLE_GRID = InputContract(spacing=SPACING, shape=SHAPE, anchor="fov")

#: (defaced slices, removed share) → re-faced slices, all (N, n, S, S) in [-1, 1].
Candidate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AuditSlices:
    """The cohort as the audit sees it: (N, n, S, S) slices in [-1, 1] (removed: the share),
    item i subject i, by defacing method; a face and its defaced twin share the defaced scan's
    robust scale (as in training), so they agree exactly outside the removed region."""

    subjects: list[str]
    faces: dict[str, torch.Tensor]
    templates: torch.Tensor
    defaced: dict[str, torch.Tensor]
    removed: dict[str, torch.Tensor]


def load_slices(cohort: Path, bundles: Path, cache: Path, size: int, n_slices: int, subjects: int | None) -> AuditSlices:
    """Every scan's volumes on the standard grid (cached as the datamodule caches them) and its
    registered template head (the bundles), cut into the middle sagittal slices."""
    manifest = load_manifest(cohort).sort_values("subject").head(subjects)
    columns = volume_columns(METHODS)
    caches = bundle_caches([Path(p) for p in manifest["source"]], BUNDLE_GRID, bundles)
    templates = {b.subject: b.template_face for b in map(read_bundle, caches)}
    template, (faces, defaced, removed) = [], ({m: [] for m in METHODS} for _ in range(3))
    for _, row in manifest.iterrows():
        paths = cache_scan(row, columns, cache / row["subject"], SPACING, SHAPE)
        volume = {column: torch.from_numpy(np.load(path).astype(np.float32))[None, None] for column, path in paths.items()}
        for method in METHODS:
            scale = robust_scale(volume[f"defaced_{method}"])
            faces[method].append(sagittal_slices(volume["face"], size, n_slices, scale) * 2 - 1)
            defaced[method].append(sagittal_slices(volume[f"defaced_{method}"], size, n_slices, scale) * 2 - 1)
            removed[method].append(sagittal_slices(volume[f"removed_{method}"], size, n_slices, 1.0))
        template.append(sagittal_slices(torch.from_numpy(templates[row["subject"]])[None, None], size, n_slices) * 2 - 1)
    return AuditSlices(
        subjects=manifest["subject"].tolist(), templates=torch.cat(template),
        **{name: {m: torch.cat(v) for m, v in parts.items()} for name, parts in
           (("faces", faces), ("defaced", defaced), ("removed", removed))},
    )


def zero_fill(data: AuditSlices, train: np.ndarray, test: np.ndarray) -> Candidate:
    return lambda defaced, removed: torch.full_like(defaced, -1)


def average_face(data: AuditSlices, train: np.ndarray, test: np.ndarray) -> Candidate:
    average = torch.cat([data.faces[m][train] for m in METHODS]).mean(0)
    return lambda defaced, removed: average.expand_as(defaced)


def template_face(data: AuditSlices, train: np.ndarray, test: np.ndarray) -> Candidate:
    templates = data.templates[test]
    return lambda defaced, removed: templates


def training_slices(data: AuditSlices, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The training subjects' defaced and face slices of every defacing method, as (M, 1, S, S)
    images, and each image's subject."""
    size, n_slices = data.templates.shape[-1], data.templates.shape[1]
    sources, targets = (torch.cat([slices[m][train] for m in METHODS]).reshape(-1, 1, size, size)
                        for slices in (data.defaced, data.faces))
    return sources, targets, [data.subjects[i] for _ in METHODS for i in train for _ in range(n_slices)]


def fitted(model: Pix2Pix, dataset, *, epochs: int, batch_size: int, seed: int) -> Candidate:
    """``model`` trained from scratch on ``dataset`` (items {"source", "target"}), as a candidate."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader)
    model.eval()
    size = model.hparams.size

    @torch.no_grad()
    def generate(defaced: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        return model(defaced.reshape(-1, 1, size, size)).reshape(defaced.shape)

    return generate


def pix2pix(data: AuditSlices, train: np.ndarray, test: np.ndarray, *, epochs: int, width: int, batch_size: int,
            seed: int) -> Candidate:
    """A Pix2Pix trained on the training subjects' (defaced, face) slice pairs of every defacing method."""
    sources, targets, _ = training_slices(data, train)
    pl.seed_everything(seed, verbose=False)
    model = Pix2Pix(size=sources.shape[-1], generator={"base_channels": width}, discriminator={"base_channels": width})
    return fitted(model, [{"source": s, "target": t} for s, t in zip(sources, targets)], epochs=epochs, batch_size=batch_size, seed=seed)


class UnpairedSlices(Dataset):
    """CycleGAN's training set: each defaced slice with the face slice of another subject, drawn afresh per sample."""

    def __init__(self, sources: torch.Tensor, targets: torch.Tensor, subjects: list[str]):
        self.sources, self.targets, self.subjects = sources, targets, subjects

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        return {"source": self.sources[index], "target": self.targets[other_subject(self.subjects, index)]}


def cyclegan(data: AuditSlices, train: np.ndarray, test: np.ndarray, *, epochs: int, width: int, batch_size: int,
             seed: int) -> Candidate:
    """A CycleGAN (the unpaired attacker) trained on the same slices, never shown a subject's own pair."""
    sources, targets, subjects = training_slices(data, train)
    pl.seed_everything(seed, verbose=False)
    model = CycleGAN(size=sources.shape[-1], generator={"base_channels": width}, discriminator={"base_channels": width})
    return fitted(model, UnpairedSlices(sources, targets, subjects), epochs=epochs, batch_size=batch_size, seed=seed)


#: Candidates that learn (minutes a fold): the ones a ``--probes`` file lets a rerun reuse. The
#: others are rebuilt every run, and must equal the file's copies, which shows it holds this data.
TRAINED = ("pix2pix", "cyclegan")


def candidates(args) -> dict[str, Callable[[AuditSlices, np.ndarray, np.ndarray], Candidate]]:
    """The audit's candidates by name, each built per fold from (data, train indices, test indices)."""
    gan = {"epochs": args.epochs, "width": args.width, "batch_size": args.batch_size, "seed": args.seed}
    return {
        "pix2pix": partial(pix2pix, **gan),
        "cyclegan": partial(cyclegan, **gan),
        "zero_fill": zero_fill,
        "average_face": average_face,
        "template_face": template_face,
    }


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_slices(args.cohort, args.bundles, args.cache, args.size, args.slices, args.subjects)
    loaded = time.perf_counter() - started
    builders = candidates(args)
    refaced = {name: {m: torch.empty_like(data.templates) for m in METHODS} for name in builders}
    folds, reused, stored = [], [], {}
    if args.probes and args.probes.exists():  # an earlier run's re-faced slices: train only the GANs it lacks
        stored, folds = torch.load(args.probes, weights_only=False)
        reused = sorted(name for name in stored if name in builders and name in TRAINED)
        refaced.update({name: stored[name] for name in reused})
    missing = {name: build for name, build in builders.items() if name not in reused}
    splits = KFold(args.folds, shuffle=True, random_state=args.seed).split(data.subjects)
    for fold, (train, test) in enumerate(splits):
        seconds = {}
        for name in sorted(missing, key=lambda name: name in TRAINED):  # the quick ones first: they check the file
            fold_started = time.perf_counter()
            candidate = missing[name](data, train, test)
            for method in METHODS:
                refaced[name][method][test] = candidate(data.defaced[method][test], data.removed[method][test])
                if name in stored and not torch.equal(stored[name][method][test], refaced[name][method][test]):
                    raise SystemExit(f"{args.probes} was made from other data ({name} differs from this run's): run without it")
            seconds[name] = time.perf_counter() - fold_started
        tested = [data.subjects[i] for i in test]
        if fold < len(folds):
            assert folds[fold]["test"] == tested, "the stored folds are not this run's folds"
            folds[fold]["seconds"].update(seconds)
        else:
            folds.append({"test": tested, "train_subjects": len(train), "seconds": seconds})
        print(f"fold {fold}: {len(test)} test subjects, " + ", ".join(f"{n} {t:.0f} s" for n, t in seconds.items()), flush=True)
    if args.probes:
        args.probes.parent.mkdir(parents=True, exist_ok=True)
        torch.save((refaced, folds), args.probes)
    audit = {
        method: reface_audit({name: refaced[name][method] for name in builders},
                             data.defaced[method], data.faces[method], data.removed[method])
        for method in METHODS
    }
    # What a thresholded region lets through: zero-fill matched inside the share ≥ 0.5 region.
    old_region = {}
    for method in METHODS:
        similarity = voxel_similarity(data.defaced[method], data.faces[method], (data.removed[method] >= 0.5).float())
        old_region[method] = {f"voxel_top{k}{suffix}": value for k in REID_RANKS
                              for suffix, value in rate(top_k_hits(similarity, k)).items()}
    return {
        "cohort": str(args.cohort), "subjects": data.subjects, "n_subjects": len(data.subjects),
        "size": args.size, "n_slices": args.slices, "spacing_mm": SPACING, "folds": folds,
        "gans": {"epochs": args.epochs, "base_channels": args.width, "batch_size": args.batch_size},
        "threads": torch.get_num_threads(), "device": platform.processor() or "cpu",
        "seconds": {"load": loaded, "total": time.perf_counter() - started}, "smoke": args.smoke, "reused": reused,
        "audit": audit, "zero_fill_on_a_thresholded_region": old_region,
    }


def print_tables(result: dict) -> None:
    console = Console()
    for method, scores in result["audit"].items():
        table = Table(title=f"{method}-defaced, {result['n_subjects']} subjects, {result['size']} px × {result['n_slices']} slices")
        rows = audit_rows(scores)
        for column in rows[0] | rows[-1]:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*(row.get(column, "") for column in rows[0] | rows[-1]))
        console.print(table)
    console.print("zero-fill inside a thresholded (share ≥ 0.5) region: " + ", ".join(
        f"{method} top-1 {scores['voxel_top1']:.2f} [{scores['voxel_top1_low']:.2f}, {scores['voxel_top1_high']:.2f}]"
        for method, scores in result["zero_fill_on_a_thresholded_region"].items()))
    for name, label in (("pix2pix", "Pix2Pix"), ("cyclegan", "CycleGAN")):
        seconds = [fold["seconds"][name] for fold in result["folds"] if name in fold["seconds"]]
        if seconds:
            console.print(f"{label} per fold: {np.mean(seconds):.0f} s (min {min(seconds):.0f}, max {max(seconds):.0f})")
    console.print(f"total {result['seconds']['total'] / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=Path("data/ixi"), help="a cohort folder (defacegan data)")
    parser.add_argument("--bundles", type=Path, default=Path("data/bundles"), help="registered-template cache")
    parser.add_argument("--cache", type=Path, default=Path("data/cache/audit"), help="standard-grid volume cache")
    parser.add_argument("--subjects", type=int, help="the first N subjects only")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--width", type=int, default=16, help="base channels of the U-Net and the PatchGAN")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="8 subjects, 2 folds, 1 epoch, 4-channel networks")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    parser.add_argument("--probes", type=Path, help="keep the re-faced slices here (faces: keep them local); when the "
                        "file exists, the GANs it holds are reused and only the others are trained")
    args = parser.parse_args()
    if args.smoke:
        args.subjects, args.folds, args.epochs, args.width, args.slices = 8, 2, 1, 4, 3
    result = run(args)
    print_tables(result)
    folder = args.out or RESULTS
    name = "audit-smoke" if args.smoke else "audit"
    atomic_write_text(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(folder / f"{name}.md", audit_markdown(result))
    print(f"results: {folder / name}.json, .md")


if __name__ == "__main__":
    main()
