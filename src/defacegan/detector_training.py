"""Train the three-way detector (face / removed / replaced) on generated defacing families.

The drawn, labelled views (:mod:`defacegan.detector_data`, cached) →
:class:`~defacegan.models.detector.DetectorNet`, then temperature scaling on validation subjects.
A fit costs a few minutes once the views are drawn; fitting lives apart from drawing so that a
change here leaves the cached draws as they are.

``make weights`` runs :func:`main` once per seed in ``WEIGHT_SEEDS`` (Makefile), on ``WEIGHT_ROUNDS``
rounds of draws: all families, the IXI subset less :data:`HELD_OUT` (kept out so that the shipped
detector's figures and the real-anatomy tests use heads it never saw), 4 of its subjects for
calibration, drawn by the seed; then ``--ensemble`` writes the members as the one shipped checkpoint
(:func:`save_ensemble`). Each run also writes its drawn volumes' manifest (``--manifest``; ``make
weights``' are ``data/members-rounds4/seed-N.tsv``): per volume its subject, family, draw, label and
each feature's share of own and of foreign tissue.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defacegan.contract import VERDICTS, InputContract
from defacegan.detector_data import DRAWS, POSE, ROUNDS, Samples, bundle_caches, draw, subject_of
from defacegan.families import FAMILIES, families_but
from defacegan.io import atomic_write_bytes, atomic_write_text
from defacegan.models.detector import DetectorNet, fit_temperature
from defacegan.views import VIEW_MODES

#: IXI subjects of the 32-head subset never used to train the shipped detector: every 4th in
#: sorted order. The real-anatomy tests and the shipped detector's own checks use them.
HELD_OUT = ("IXI012", "IXI213", "IXI260", "IXI338", "IXI385", "IXI452", "IXI526", "IXI575")
#: The fit of the shipped detector's recipe (``make weights``): epochs and the network's channels.
EPOCHS, CHANNELS = 20, (8, 16, 32)



def fit(samples: Samples, contract: InputContract, epochs: int = EPOCHS, seed: int = 0, batch_size: int = 32,
        lr: float = 1e-3, channels: Sequence[int] = CHANNELS) -> DetectorNet:
    """Fit a DetectorNet on drawn views: class-balanced cross-entropy, AdamW, one-cycle schedule."""
    torch.manual_seed(seed)
    net = DetectorNet(n_views=len(contract.view_names), n_classes=len(VERDICTS), channels=channels)
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


def fit_member(samples: Samples, contract: InputContract, trained: Sequence[str], train_subjects: Sequence[str],
               val_subjects: Sequence[str], seed: int, epochs: int = EPOCHS,
               shown: dict[str, int] | None = None) -> tuple[DetectorNet, float, Samples]:
    """One member of the recipe: fitted on the ``trained`` families' views of ``train_subjects``
    (the families in ``shown`` that many times over), temperature-scaled on ``val_subjects``';
    returns (network, temperature, training views)."""
    recipe = np.isin(samples.family, list(trained))
    train = samples.where(recipe & np.isin(samples.subject, list(train_subjects)))
    repeats = [train.where(train.family == family) for family, times in (shown or {}).items() for _ in range(times - 1)]
    if repeats:  # joining copies every view: only when a family is shown more often
        train = Samples.join([train, *repeats])
    net = fit(train, contract, epochs=epochs, seed=seed)
    return net, calibrate(net, samples.where(recipe & np.isin(samples.subject, list(val_subjects)))), train


def save_detector(net: DetectorNet, contract: InputContract, path: str | os.PathLike, facts: dict | None = None) -> Path:
    """A checkpoint that loads with torch alone (``weights_only=True``): contract, network
    arguments, weights, facts."""
    return _write_checkpoint({"contract": contract.to_dict(), "network": net.config, "state_dict": net.state_dict(),
                              "facts": facts or {}}, path)


def save_ensemble(members: Sequence[str | os.PathLike], path: str | os.PathLike, held_out: Sequence[str] = HELD_OUT) -> Path:
    """One checkpoint of the member checkpoints (:func:`save_detector`'s, one input contract),
    whose probabilities :class:`~defacegan.models.detector.DetectorEnsemble` averages. Its facts
    list each member's; its training and calibration subjects are every member's; ``held_out``, the
    subjects none of them saw (a k-fold's fold names its own test subjects)."""
    loaded = [torch.load(member, map_location="cpu", weights_only=True) for member in members]
    if not loaded or any(checkpoint["contract"] != loaded[0]["contract"] for checkpoint in loaded):
        raise ValueError(f"an ensemble needs one or more members with one input contract: {[str(m) for m in members]}")
    facts = [checkpoint.get("facts", {}) for checkpoint in loaded]
    union = {key: sorted({subject for member in facts for subject in member.get(key, [])}) for key in ("train_subjects", "val_subjects")}
    checkpoint = {"contract": loaded[0]["contract"],
                  "members": [{key: member[key] for key in ("network", "state_dict")} for member in loaded],
                  "facts": {**union, "held_out": list(held_out), "members": facts}}
    return _write_checkpoint(checkpoint, path)


def _write_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """``checkpoint`` saved by torch, written atomically: a reader never sees half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
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
    parser.add_argument("--manifest", type=Path, default=Path("data/detector-manifest.tsv"),
                        help="where to write the drawn volumes' labels and feature shares")
    parser.add_argument("--draws", type=int, default=DRAWS, help="draws of every family per head and round")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws, the calibration subjects and the fit")
    parser.add_argument("--pose-degrees", type=float, default=POSE["affine"]["degrees"],
                        help="largest rotation of a drawn head about each axis (the recipe's by default)")
    parser.add_argument("--bias-field", type=float, nargs=2, metavar=("PROB", "COEFFICIENTS"),
                        help="draw this share of the volumes under a coil's field of coefficients up to this "
                             "(detector_data.with_bias_field; not in the shipped recipe)")
    parser.add_argument("--workers", type=int, default=None,
                        help="drawing processes (default: as many as the memory holds at 4 GiB each, at most 2)")
    parser.add_argument("--view-mode", default=InputContract.view_mode, choices=list(VIEW_MODES),
                        help="the contract's views (the shipped recipe's by default); all_face leaves out the face's texture, as the nine-view detector did")
    parser.add_argument("--flatten-mm", type=float, default=None, metavar="MM",
                        help="divide each volume by its tissue's local mean over a Gaussian of this σ before the views "
                             "(the contract's flatten_mm; make weights passes 20)")
    parser.add_argument("--without", nargs="*", default=[], choices=list(FAMILIES), metavar="FAMILY",
                        help="families drawn (they stay in the manifest) but not trained on")
    parser.add_argument("--ensemble", type=Path, nargs="+", metavar="MEMBER",
                        help="instead of training, write these members' checkpoints as one ensemble to --out")
    args = parser.parse_args(argv)
    if args.ensemble:
        path = save_ensemble(args.ensemble, args.out)
        print(f"{path}: an ensemble of {len(args.ensemble)} detectors")
        return path
    started = time.perf_counter()
    contract = InputContract(view_mode=args.view_mode, flatten_mm=args.flatten_mm)
    paths = sorted(p for p in args.source.glob("*.nii*") if subject_of(p) not in HELD_OUT)
    caches = bundle_caches(paths, contract, args.cache)
    train_subjects, val_subjects = split_subjects([subject_of(p) for p in paths], val=4, seed=args.seed)
    pose = {**POSE, "affine": {**POSE["affine"], "degrees": args.pose_degrees}}
    bias_field = dict(zip(("prob", "coefficients"), args.bias_field)) if args.bias_field else None
    samples = draw(caches, contract, args.cache, draws=args.draws, seed=args.seed, pose=pose, rounds=args.rounds,
                   workers=args.workers, bias_field=bias_field)
    atomic_write_text(args.manifest, samples.manifest())
    trained = families_but(args.without)
    net, temperature, train = fit_member(samples, contract, trained, train_subjects, val_subjects, args.seed, args.epochs)
    facts = {"train_subjects": train_subjects, "val_subjects": val_subjects, "held_out": list(HELD_OUT),
             "families": trained, "draws": args.draws, "rounds": args.rounds, "epochs": args.epochs, "temperature": temperature,
             "seed": args.seed, "pose_degrees": args.pose_degrees, "bias_field": bias_field}
    path = save_detector(net, contract, args.out, facts)
    print(f"{path}: {len(train.label)} training views of {len(train_subjects)} subjects, T = {temperature:.2f}, "
          f"{time.perf_counter() - started:.0f} s")
    return path


if __name__ == "__main__":
    main()
