"""Train the three-way detector (face / removed / replaced) on generated defacing families.

Heads → :class:`~defacegan.families.FaceBundle` (one registration each, cached) → randomised
variants of every family (:mod:`defacegan.families`), labelled by the feature rule
(:mod:`defacegan.features`) → a random 3D pose and contrast (MONAI layers, as ``augment=device``)
→ the contract's six views → :class:`~defacegan.models.detector.DetectorNet`, then temperature
scaling on validation subjects. Views are drawn once and kept in memory, so one fit costs
about a minute on two CPU cores: the evaluation (``bench/detector_eval.py``) fits many.

``make weights`` runs :func:`main`: all families, the IXI subset less :data:`HELD_OUT` (kept
out so that the shipped detector's figures and the real-anatomy tests use heads it never saw).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defacegan.contract import VERDICTS, InputContract
from defacegan.families import FAMILIES, FaceBundle, generate, make_bundle
from defacegan.features import label_from
from defacegan.io import atomic_write_bytes, load_scan, stem
from defacegan.models.detector import DetectorNet, fit_temperature

#: IXI subjects of the 32-head subset never used to train the shipped detector: every 4th in
#: sorted order. The real-anatomy tests and the shipped detector's own checks use them.
HELD_OUT = ("IXI012", "IXI213", "IXI260", "IXI338", "IXI385", "IXI452", "IXI526", "IXI575")
#: The recipe of the shipped detector (``make weights``), which the evaluation repeats per fold.
DRAWS, EPOCHS = 3, 20
POSE = {  # DeviceAugmentation options: head pose and contrast as scanners vary them
    "flip": {"prob": 0.5, "axes": [0]},
    "affine": {"prob": 0.9, "degrees": 15.0, "scales": 0.12, "translation": 12.0},
    "smooth": {"prob": 0.2, "sigma": [0.25, 1.0]},
    "contrast": {"prob": 0.5, "gamma": [0.7, 1.4]},
}


@dataclass
class Samples:
    """Drawn training or test examples: views (N, V, S, S) and their facts."""

    views: torch.Tensor
    label: np.ndarray  # index in VERDICTS
    family: np.ndarray
    subject: np.ndarray
    own: np.ndarray  # (N, features): each feature's share of the subject's own tissue

    def where(self, keep: np.ndarray) -> Samples:
        return Samples(self.views[torch.as_tensor(keep)], self.label[keep], self.family[keep], self.subject[keep], self.own[keep])

    @staticmethod
    def join(parts: Sequence[Samples]) -> Samples:
        return Samples(torch.cat([p.views for p in parts]), *(np.concatenate([getattr(p, k) for p in parts])
                                                              for k in ("label", "family", "subject", "own")))


def subject_of(path: Path) -> str:
    return stem(path).split("-")[0]


def _bundle_job(args: tuple[str, dict, str]) -> str:
    path, contract, cache = args
    torch.set_num_threads(1)
    target = Path(cache)
    if not target.exists():
        bundle = make_bundle(load_scan(path), subject_of(Path(path)), InputContract.from_dict(contract))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: v for k, v in vars(bundle).items() if k != "subject"}, subject=bundle.subject)
        atomic_write_bytes(target, buffer.getvalue())
    return path


def load_bundles(paths: Sequence[Path], contract: InputContract, cache_dir: Path, workers: int = 2) -> list[FaceBundle]:
    """A bundle per scan, made once (a registration each, ~5 s) and cached under ``cache_dir``."""
    key = hashlib.sha1(repr(contract.to_dict()).encode()).hexdigest()[:10]
    caches = [cache_dir / f"{stem(p)}-{key}.npz" for p in paths]
    jobs = [(str(p), contract.to_dict(), str(c)) for p, c in zip(paths, caches) if not c.exists()]
    if jobs:
        print(f"registering {len(jobs)} heads (cached in {cache_dir})", flush=True)
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            for done in pool.map(_bundle_job, jobs):
                print(f"  {Path(done).name}", flush=True)
    bundles = []
    for cache in caches:
        with np.load(cache) as stored:
            values = {k: stored[k] for k in stored.files}
        bundles.append(FaceBundle(subject=str(values.pop("subject")), **values))
    return bundles


def draw(bundles: Sequence[FaceBundle], contract: InputContract, families: Sequence[str] = tuple(FAMILIES),
         draws: int = DRAWS, seed: int = 0, pose: dict | None = POSE) -> Samples:
    """``draws`` random variants of each family for each bundle, posed and turned into views.

    Deterministic for a seed; each (subject, family, draw) gets its own generator, so adding a
    family or a subject does not change the others' draws.
    """
    from defacegan.augment import DeviceAugmentation

    posing = DeviceAugmentation(pose, keys=("volume",), spacing=contract.spacing, seed=seed) if pose else None
    parts = []
    for bundle in bundles:
        volumes, labels, names, owns = [], [], [], []
        for family in families:
            for number in range(draws):
                rng = np.random.default_rng([seed, int(hashlib.sha1(f"{bundle.subject}/{family}".encode()).hexdigest()[:8], 16), number])
                variant = generate(bundle, family, rng)
                own, foreign = variant.shares(bundle.features)
                volumes.append(torch.from_numpy(variant.volume))
                labels.append(VERDICTS.index(label_from(own, foreign)))
                names.append(family)
                owns.append([own[name] for name in own])
        batch = torch.stack(volumes)[:, None]
        if posing is not None:
            batch = posing({"volume": batch})["volume"]
        views = contract.views(batch)
        parts.append(Samples(views, np.array(labels), np.array(names), np.array([bundle.subject] * len(labels)),
                             np.array(owns, dtype=np.float32)))
    return Samples.join(parts)


def fit(samples: Samples, contract: InputContract, epochs: int = EPOCHS, seed: int = 0, batch_size: int = 32,
        lr: float = 1e-3) -> DetectorNet:
    """Fit a DetectorNet on drawn views: class-balanced cross-entropy, AdamW, one-cycle schedule."""
    torch.manual_seed(seed)
    net = DetectorNet(n_views=len(contract.view_names), n_classes=len(VERDICTS))
    counts = np.bincount(samples.label, minlength=len(VERDICTS)).astype(np.float32)
    weights = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / len(VERDICTS))
    loss = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, len(samples.label) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    labels = torch.as_tensor(samples.label)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            optimiser.zero_grad()
            loss(net(samples.views[index]), labels[index]).backward()
            optimiser.step()
            schedule.step()
    return net.eval()


@torch.no_grad()
def logits_of(net: DetectorNet, views: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([net(views[i : i + batch_size]) for i in range(0, len(views), batch_size)])


def calibrate(net: DetectorNet, samples: Samples) -> float:
    """Set ``net.temperature`` by temperature scaling on ``samples`` (validation); return it."""
    net.temperature.fill_(1.0)
    temperature = fit_temperature(logits_of(net, samples.views), torch.as_tensor(samples.label))
    net.temperature.fill_(temperature)
    return temperature


def save_detector(net: DetectorNet, contract: InputContract, path: str | os.PathLike, facts: dict | None = None) -> Path:
    """A checkpoint that loads with torch alone (``weights_only=True``): contract, weights, facts."""
    buffer = io.BytesIO()
    torch.save({"contract": contract.to_dict(), "state_dict": net.state_dict(), "facts": facts or {}}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def split_subjects(subjects: Sequence[str], val: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) subjects: ``val`` of them drawn with ``seed`` for calibration."""
    order = [str(subject) for subject in np.random.default_rng(seed).permutation(sorted(subjects))]
    return sorted(order[val:]), sorted(order[:val])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Train and ship the three-way detector (make weights).")
    parser.add_argument("--source", type=Path, default=Path("../shared/data/ixi-t1-2mm"), help="folder of T1 heads with faces")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "assets" / "detector.pt")
    parser.add_argument("--cache", type=Path, default=Path("data/bundles"))
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    contract = InputContract()
    paths = sorted(p for p in args.source.glob("*.nii*") if subject_of(p) not in HELD_OUT)
    bundles = load_bundles(paths, contract, args.cache)
    train_subjects, val_subjects = split_subjects([b.subject for b in bundles], val=4, seed=args.seed)
    samples = draw(bundles, contract, draws=args.draws, seed=args.seed)
    train = samples.where(np.isin(samples.subject, train_subjects))
    val = samples.where(np.isin(samples.subject, val_subjects))
    net = fit(train, contract, epochs=args.epochs, seed=args.seed)
    temperature = calibrate(net, val)
    facts = {"train_subjects": train_subjects, "val_subjects": val_subjects, "held_out": list(HELD_OUT),
             "families": list(FAMILIES), "draws": args.draws, "epochs": args.epochs, "temperature": temperature,
             "seed": args.seed}
    path = save_detector(net, contract, args.out, facts)
    print(f"{path}: {len(train.label)} training views of {len(train_subjects)} subjects, T = {temperature:.2f}, "
          f"{time.perf_counter() - started:.0f} s")
    return path


if __name__ == "__main__":
    main()
