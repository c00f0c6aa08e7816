"""Train the three-way detector (face / removed / replaced) on generated defacing families.

Heads → :class:`~defacegan.families.FaceBundle` (one registration each, cached) → randomised
variants of every family (:mod:`defacegan.families`), some in a field of view that stops above
the neck (:data:`FIELD_OF_VIEW`), labelled by the feature rule (:mod:`defacegan.features`) → a
random 3D pose and contrast (MONAI layers, as ``augment=device``)
→ the contract's views (six of the head, three of the face) → :class:`~defacegan.models.detector.DetectorNet`, then temperature
scaling on validation subjects. Drawing is the costly part (about a second a volume, mostly the
3D pose): each head's views are drawn once, in parallel processes, and cached in ``data/bundles``
under a key of the recipe and of the generator's source, so ``make weights`` and the evaluation
(``bench/detector_eval.py``, which fits many) share them; a fit then costs a few minutes.

``make weights`` runs :func:`main` once per seed in ``WEIGHT_SEEDS`` (Makefile): all families,
the IXI subset less :data:`HELD_OUT` (kept out so that the shipped detector's figures and the
real-anatomy tests use heads it never saw), 4 of its subjects for calibration, drawn by the seed;
then ``--ensemble`` writes the members as the one shipped checkpoint (:func:`save_ensemble`). Each
run also writes its drawn volumes' manifest (``data/members/seed-N.tsv``): per volume its
subject, family, draw, label and each feature's share of own and of foreign tissue.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defacegan.contract import VERDICTS, InputContract
from defacegan.families import FAMILIES, FaceBundle, Variant, cut_below, families_but, generate, make_bundle
from defacegan.features import FEATURES, label_from
from defacegan.io import Scan, atomic_write_bytes, atomic_write_text, load_scan, stem
from defacegan.models.detector import DetectorNet, fit_temperature

#: IXI subjects of the 32-head subset never used to train the shipped detector: every 4th in
#: sorted order. The real-anatomy tests and the shipped detector's own checks use them.
HELD_OUT = ("IXI012", "IXI213", "IXI260", "IXI338", "IXI385", "IXI452", "IXI526", "IXI575")


def source_key(*sources: str | os.PathLike) -> str:
    """A key of the code in ``sources``: their syntax trees without docstrings, so that a comment,
    a line break or a docstring leaves it as it is and a changed statement does not."""
    def code(tree: ast.Module) -> str:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                    and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                    and isinstance(node.body[0].value.value, str):
                node.body = node.body[1:]
        return ast.dump(tree)

    return hashlib.sha1("".join(code(ast.parse(Path(source).read_text())) for source in sources).encode()).hexdigest()[:10]


#: The code that makes a bundle: the registration (deface.py), the feature regions (features.py),
#: :func:`~defacegan.families.make_bundle` and the contract that puts the head on the grid.
BUNDLE_SOURCE = source_key(make_bundle.__code__.co_filename, label_from.__code__.co_filename,
                           Path(__file__).with_name("deface.py"), InputContract.views.__code__.co_filename)
#: The code of the generator, of the label rule, of this module (the draws' pose and placement), of
#: the pose itself (augment.py, imported only when drawing) and of the contract's grid and views:
#: drawn views are cached under a key that holds it, so a change to any of them draws again.
GENERATOR_SOURCE = source_key(generate.__code__.co_filename, label_from.__code__.co_filename, __file__,
                              Path(__file__).with_name("augment.py"), InputContract.views.__code__.co_filename)
#: The recipe of the shipped detector (``make weights``), which the evaluation repeats per fold.
DRAWS, ROUNDS, EPOCHS, CHANNELS = 8, 2, 20, (8, 16, 32)
POSE = {  # DeviceAugmentation options: head pose and contrast as scanners vary them
    "flip": {"prob": 0.5, "axes": [0]},
    "affine": {"prob": 0.9, "degrees": 15.0, "scales": 0.12, "translation": 12.0},
    # a whole head smoothed up to σ 3 mm (denoised, averaged or low-resolution scans): smoothness
    # alone must not read as a replaced face
    "smooth": {"prob": 0.3, "sigma": [0.5, 3.0]},
    "invert": {"prob": 0.2, "floor": 0.1},  # T2w-like: the detector is asked about every contrast
    "contrast": {"prob": 0.5, "gamma": [0.7, 1.4]},
}
#: The field of view's lower edge, raised on a share of the draws of every family: its height
#: above the chin's lowest voxel (mm), from below the chin (no neck) to above the mouth. A tight
#: field of view alone must not decide the verdict: trained on IXI's necks only, defaced heads
#: whose scan stopped above the mouth drifted towards `face` (Colin27's MNI box, IXI heads cut so).
FIELD_OF_VIEW = {"prob": 0.3, "above_chin_mm": [-20.0, 60.0]}


@dataclass
class Samples:
    """Drawn training or test examples: views (N, V, S, S) and their facts."""

    views: torch.Tensor
    label: np.ndarray  # index in VERDICTS
    family: np.ndarray
    subject: np.ndarray
    number: np.ndarray  # which draw of its (subject, family)
    own: np.ndarray  # (N, features): each feature's share of the subject's own tissue
    foreign: np.ndarray  # (N, features): each feature's share of tissue that is not the subject's

    FACTS = ("label", "family", "subject", "number", "own", "foreign")

    def where(self, keep: np.ndarray) -> Samples:
        return Samples(self.views[torch.as_tensor(keep)], *(getattr(self, k)[keep] for k in self.FACTS))

    @staticmethod
    def join(parts: Sequence[Samples]) -> Samples:
        return Samples(torch.cat([p.views for p in parts]), *(np.concatenate([getattr(p, k) for p in parts])
                                                              for k in Samples.FACTS))

    def manifest(self) -> str:
        """One TSV row per drawn volume: where it came from, its label, and the share of each
        feature that holds the subject's own tissue and foreign tissue (what the label follows from)."""
        columns = ["subject", "family", "draw", "label", *(f"own_{f}" for f in FEATURES), *(f"foreign_{f}" for f in FEATURES)]
        rows = ["\t".join(columns)]
        for i in range(len(self.label)):
            shares = [f"{v:.3f}" for v in (*self.own[i], *self.foreign[i])]
            rows.append("\t".join([str(self.subject[i]), str(self.family[i]), str(self.number[i]), VERDICTS[self.label[i]], *shares]))
        return "\n".join(rows) + "\n"


def subject_of(path: Path) -> str:
    return stem(path).split("-")[0]


#: One drawing process's peak memory: a head's 13 families × 8 draws, posed and turned into views
#: (the kernel stopped one at 12.4 GB on a 24 GB machine while a second held 11.7 GB).
DRAW_PROCESS_BYTES = 13 * 2**30


def draw_workers(limit: int = 2) -> int:
    """How many drawing processes this machine's physical memory holds (1 to ``limit``)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): stay safe
        return 1
    return max(1, min(limit, memory // DRAW_PROCESS_BYTES))


def _in_processes(job, jobs: list[tuple], workers: int, what: str) -> None:
    """Run ``job`` on each of ``jobs`` (each writes its own cache file), in ``workers`` spawned
    processes (in this one when ``workers`` is 1), naming each as it finishes."""
    if not jobs:
        return
    print(f"{what} {len(jobs)} heads", flush=True)
    spawned = workers > 1 and len(jobs) > 1
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) if spawned else nullcontext() as pool:
        for name in (pool.map if spawned else map)(job, jobs):
            print(f"  {name}", flush=True)


def _save_npz(target: Path, arrays: dict, compressed: bool = False) -> Path:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return atomic_write_bytes(target, buffer.getvalue())


def write_bundle(bundle: FaceBundle, target: Path) -> Path:
    return _save_npz(target, vars(bundle), compressed=True)


def _bundle_job(args: tuple[str, dict, str]) -> str:
    path, contract, cache = args
    torch.set_num_threads(1)
    write_bundle(make_bundle(load_scan(path), subject_of(Path(path)), InputContract.from_dict(contract)), Path(cache))
    return Path(path).name


def bundle_caches(paths: Sequence[Path], contract: InputContract, cache_dir: Path, workers: int = 2) -> list[Path]:
    """A bundle per scan, made once (a registration each, ~5 s) and cached under ``cache_dir``
    under a key of the grid and of :data:`BUNDLE_SOURCE` (a change of views does not register
    again, a change of the feature regions does); returns the cache files."""
    values = contract.to_dict()
    grid = {name: values[name] for name in ("spacing", "shape", "anchor", "straighten_beyond")}
    key = hashlib.sha1(repr((grid, BUNDLE_SOURCE)).encode()).hexdigest()[:10]
    caches = [cache_dir / f"{stem(p)}-{key}.npz" for p in paths]
    jobs = [(str(p), contract.to_dict(), str(c)) for p, c in zip(paths, caches) if not c.exists()]
    _in_processes(_bundle_job, jobs, workers, f"registering (cached in {cache_dir})")
    return caches


def read_bundle(cache: Path) -> FaceBundle:
    with np.load(cache) as stored:
        values = {k: stored[k] for k in stored.files}
    return FaceBundle(subject=str(values.pop("subject")), **values)


def rule_label(bundle: FaceBundle, contract: InputContract, scan: Scan, removed: np.ndarray,
               foreign: np.ndarray | None = None) -> tuple[str, dict[str, float]]:
    """(label, each feature's share of own tissue) by the feature rule for ``scan`` (the bundle's
    head, as stored) with ``removed`` (bool, the scan's voxels) gone and ``foreign`` (bool, the
    voxels a re-facer filled with tissue that is not the subject's) put in: how a defacing made
    outside the families, another tool's output, is labelled the way the training draws are."""
    placed = contract.place(scan.data, scan.affine)  # the intact head's, as the bundle's grid

    def on_grid(mask: np.ndarray) -> np.ndarray:
        return contract.on_grid(mask.astype(np.float32), scan.affine, label=True, placed=placed).numpy() > 0.5

    gone = on_grid(removed)
    filled = on_grid(foreign) if foreign is not None else np.zeros_like(gone)
    variant = Variant("other tool", np.where(gone, 0, bundle.face), gone & ~filled, filled)
    return variant.label(bundle.features), variant.shares(bundle.features)[0]


def _seed_of(seed: int, *names: str) -> list[int]:
    return [seed, *(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) for name in names)]


def draw_volumes(bundle: FaceBundle, contract: InputContract, families: Sequence[str] = tuple(FAMILIES),
                 draws: int = DRAWS, seed: int = 0, pose: dict | None = POSE,
                 field_of_view: dict | None = FIELD_OF_VIEW) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """``draws`` random variants of each family of one head, some in a tighter field of view
    (``field_of_view``), posed: volumes (N, 1, X, Y, Z) on the contract's grid and their facts
    (:attr:`Samples.FACTS`). A posed volume is placed on the grid again by its head and scaled,
    as ``check`` does with a file (:meth:`InputContract.volume`).

    Deterministic for (seed, subject): each (subject, family, draw) gets its own generator and
    each subject its own pose generator, so adding a family or a subject, or drawing subjects in
    another process, does not change the others' draws.
    """
    from defacegan.augment import DeviceAugmentation

    volumes, labels, names, numbers, owns, foreigns = [], [], [], [], [], []
    for family in families:
        for number in range(draws):
            rng = np.random.default_rng([*_seed_of(seed, f"{bundle.subject}/{family}"), number])
            variant = generate(bundle, family, rng)
            if field_of_view and rng.random() < field_of_view["prob"]:
                variant = cut_below(bundle, variant, rng.uniform(*field_of_view["above_chin_mm"]))
            own, foreign = variant.shares(bundle.features)
            volumes.append(torch.from_numpy(variant.volume))
            labels.append(VERDICTS.index(label_from(own, foreign)))
            names.append(family)
            numbers.append(number)
            owns.append([own[name] for name in FEATURES])
            foreigns.append([foreign[name] for name in FEATURES])
    batch = torch.stack(volumes)[:, None]
    if pose:
        pose_seed = int(np.random.default_rng(_seed_of(seed, bundle.subject)).integers(2**31))
        batch = DeviceAugmentation(pose, keys=("volume",), spacing=contract.spacing, seed=pose_seed)({"volume": batch})["volume"]
        # A posed head is placed on the grid again as `check` places a file, by its own back, top
        # and middle: trained on heads placed before the pose, the network met tilted heads in
        # places `check` never puts them (the detector trained so called 0.943 of held-out removed
        # faces not `face` on draws placed before the pose, 0.903 on draws placed as here:
        # bench/detector_eval.py --shipped-only --ckpt, docs/detector.md).
        batch = torch.stack([contract.volume(volume[0].numpy(), contract.grid_affine) for volume in batch])
    facts = {"label": np.array(labels), "family": np.array(names), "subject": np.array([bundle.subject] * len(labels)),
             "number": np.array(numbers), "own": np.array(owns, dtype=np.float32), "foreign": np.array(foreigns, dtype=np.float32)}
    return batch, facts


def draw_bundle(bundle: FaceBundle, contract: InputContract, *args, **options) -> Samples:
    """:func:`draw_volumes` (same arguments) turned into views."""
    batch, facts = draw_volumes(bundle, contract, *args, **options)
    return Samples(contract.views(batch), **facts)


def _draw_job(args: tuple) -> str:
    bundle_cache, contract, families, draws, seed, pose, field_of_view, target = args
    torch.set_num_threads(1)
    bundle = read_bundle(Path(bundle_cache))
    samples = draw_bundle(bundle, InputContract.from_dict(contract), families, draws, seed, pose, field_of_view)
    _save_npz(Path(target), {"views": samples.views.numpy(), **{k: getattr(samples, k) for k in Samples.FACTS}})
    return bundle.subject


def draw(bundle_caches: Sequence[Path], contract: InputContract, cache_dir: Path, families: Sequence[str] = tuple(FAMILIES),
         draws: int = DRAWS, seed: int = 0, pose: dict | None = POSE, field_of_view: dict | None = FIELD_OF_VIEW,
         workers: int | None = None, rounds: int = 1) -> Samples:
    """:func:`draw_bundle` for every cached bundle, in ``workers`` processes, each head's views
    cached under ``cache_dir`` (keyed by the recipe and the generator's source, so a change to
    the families or the label rule draws again).

    ``rounds`` of ``draws`` each: round ``r`` draws with seed ``seed + r`` into its own cache
    files, so adding a round keeps the rounds already drawn; its draws are numbered after the
    previous rounds' (``number // draws`` is the round). ``workers``: drawing processes
    (default :func:`draw_workers`).
    """
    values, families = contract.to_dict(), list(families)
    targets, jobs = [], []
    for round_seed in range(seed, seed + rounds):
        recipe = repr((values, families, draws, round_seed, pose, field_of_view, GENERATOR_SOURCE))
        key = hashlib.sha1(recipe.encode()).hexdigest()[:10]
        for path in bundle_caches:
            target = cache_dir / f"{path.stem}-draws-{key}.npz"
            targets.append((round_seed - seed, target))
            if not target.exists():
                jobs.append((str(path), values, families, draws, round_seed, pose, field_of_view, str(target)))
    _in_processes(_draw_job, jobs, workers or draw_workers(), f"drawing (cached in {cache_dir})")
    parts = []
    for round_index, target in targets:
        with np.load(target) as stored:
            views, facts = torch.from_numpy(stored["views"]), {k: stored[k] for k in Samples.FACTS}
        facts["number"] = facts["number"] + round_index * draws
        parts.append(Samples(views, **facts))
    return Samples.join(parts)


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
    train = Samples.join([train] + [train.where(train.family == family) for family, times in (shown or {}).items()
                                    for _ in range(times - 1)])
    net = fit(train, contract, epochs=epochs, seed=seed)
    return net, calibrate(net, samples.where(recipe & np.isin(samples.subject, list(val_subjects)))), train


def save_detector(net: DetectorNet, contract: InputContract, path: str | os.PathLike, facts: dict | None = None) -> Path:
    """A checkpoint that loads with torch alone (``weights_only=True``): contract, network
    arguments, weights, facts."""
    buffer = io.BytesIO()
    torch.save({"contract": contract.to_dict(), "network": net.config, "state_dict": net.state_dict(), "facts": facts or {}}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def save_ensemble(members: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """One checkpoint of the member checkpoints (:func:`save_detector`'s, one input contract),
    whose probabilities :class:`~defacegan.models.detector.DetectorEnsemble` averages. Its facts
    list each member's; its training and calibration subjects are every member's."""
    loaded = [torch.load(member, map_location="cpu", weights_only=True) for member in members]
    if not loaded or any(checkpoint["contract"] != loaded[0]["contract"] for checkpoint in loaded):
        raise ValueError(f"an ensemble needs one or more members with one input contract: {[str(m) for m in members]}")
    facts = [checkpoint.get("facts", {}) for checkpoint in loaded]
    union = {key: sorted({subject for member in facts for subject in member.get(key, [])}) for key in ("train_subjects", "val_subjects")}
    checkpoint = {"contract": loaded[0]["contract"],
                  "members": [{key: member[key] for key in ("network", "state_dict")} for member in loaded],
                  "facts": {**union, "held_out": list(HELD_OUT), "members": facts}}
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
    parser.add_argument("--workers", type=int, default=None,
                        help="drawing processes (default: as many as the memory holds at 13 GB each, at most 2)")
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
    contract = InputContract()
    paths = sorted(p for p in args.source.glob("*.nii*") if subject_of(p) not in HELD_OUT)
    caches = bundle_caches(paths, contract, args.cache)
    train_subjects, val_subjects = split_subjects([subject_of(p) for p in paths], val=4, seed=args.seed)
    pose = {**POSE, "affine": {**POSE["affine"], "degrees": args.pose_degrees}}
    samples = draw(caches, contract, args.cache, draws=args.draws, seed=args.seed, pose=pose, rounds=args.rounds,
                   workers=args.workers)
    atomic_write_text(args.manifest, samples.manifest())
    trained = families_but(args.without)
    net, temperature, train = fit_member(samples, contract, trained, train_subjects, val_subjects, args.seed, args.epochs)
    facts = {"train_subjects": train_subjects, "val_subjects": val_subjects, "held_out": list(HELD_OUT),
             "families": trained, "draws": args.draws, "rounds": args.rounds, "epochs": args.epochs, "temperature": temperature,
             "seed": args.seed, "pose_degrees": args.pose_degrees}
    path = save_detector(net, contract, args.out, facts)
    print(f"{path}: {len(train.label)} training views of {len(train_subjects)} subjects, T = {temperature:.2f}, "
          f"{time.perf_counter() - started:.0f} s")
    return path


if __name__ == "__main__":
    main()
