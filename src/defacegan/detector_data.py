"""The detector's training data: registered heads and their drawn, labelled, posed views, cached.

Heads → :class:`~defacegan.families.FaceBundle` (one registration each, cached) → randomised
variants of every family (:mod:`defacegan.families`), some in a field of view that stops above
the neck (:data:`FIELD_OF_VIEW`), labelled by the feature rule (:mod:`defacegan.features`) → a
random 3D pose and contrast (MONAI layers, as ``augment=device``) → the contract's views (six of
the head, three of the face). Drawing is the costly part (about half a second a volume, mostly the
3D pose and placing the posed head on the grid again): each head's views are drawn once, in
parallel processes, and cached in ``data/bundles`` under a key of the recipe and of this code
(:data:`GENERATOR_SOURCE`), so ``make weights`` and the evaluation (``bench/detector_eval.py``,
which fits many) share them. Fitting networks on the views is :mod:`defacegan.detector_training`'s,
kept apart so that a change there draws nothing again.
"""

from __future__ import annotations

import ast
import hashlib
import io
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from defacegan.contract import VERDICTS, InputContract
from defacegan.families import FAMILIES, FaceBundle, Variant, cut_below, generate, make_bundle
from defacegan.features import FEATURES, label_from
from defacegan.io import Scan, atomic_write_bytes, load_scan, stem


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
#: the pose itself (augment.py, imported only when drawing) and of the contract's grid and views
#: (contract.py, views.py):
#: drawn views are cached under a key that holds it, so a change to any of them draws again, and a
#: change to how networks are fitted on them (detector_training.py) does not.
GENERATOR_SOURCE = source_key(generate.__code__.co_filename, label_from.__code__.co_filename, __file__,
                              Path(__file__).with_name("augment.py"), InputContract.views.__code__.co_filename,
                              Path(__file__).with_name("views.py"))
#: The draws of the shipped detector's recipe (``make weights``), which the evaluation repeats per
#: fold: every family drawn ``DRAWS`` times per head in each of ``ROUNDS`` rounds.
DRAWS, ROUNDS = 8, 2
POSE = {  # DeviceAugmentation options: head pose and contrast as scanners vary them
    "flip": {"prob": 0.5, "axes": [0]},
    "affine": {"prob": 0.9, "degrees": 15.0, "scales": 0.12, "translation": 12.0},
    # a whole head smoothed up to σ 3 mm (denoised, averaged or low-resolution scans): smoothness
    # alone must not read as a replaced face
    "smooth": {"prob": 0.3, "sigma": [0.5, 3.0]},
    "invert": {"prob": 0.2, "floor": 0.1},  # T2w-like: the detector is asked about every contrast
    "contrast": {"prob": 0.5, "gamma": [0.7, 1.4]},
}
#: Volumes posed at a time: the pose's draws are made for a head's whole batch and applied a part
#: at a time (each volume as in the whole), so that a drawing process holds a few of its volumes'
#: intermediate copies at once, not all of them.
POSE_CHUNK = 8
#: The field of view's lower edge, raised on a share of the draws of every family: its height
#: above the chin's lowest voxel (mm), from below the chin (no neck) to above the mouth. A tight
#: field of view alone must not decide the verdict: trained on IXI's necks only, defaced heads
#: whose scan stopped above the mouth drifted towards `face` (Colin27's MNI box, IXI heads cut so).
FIELD_OF_VIEW = {"prob": 0.3, "above_chin_mm": [-20.0, 60.0]}
#: The order of the receive coil's field some draws can be made under (``bias_field``: on its ``prob``
#: share of the draws, TorchIO's polynomial field, each coefficient uniform up to its ``coefficients``;
#: TorchIO's default is 0.5). Not in the shipped recipe: ``detector_training --bias-field PROB COEFFICIENTS``.
BIAS_FIELD_ORDER = 3


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


#: One drawing process's memory, with room to spare: a head's 13 families × 8 draws, posed
#: :data:`POSE_CHUNK` at a time and turned into views, peaked at 2.6 GB (posed all at once, 11.3 GB:
#: two such processes ran a 24 GB machine out of memory).
DRAW_PROCESS_BYTES = 4 * 2**30


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


def with_bias_field(variant: Variant, coefficients: float, rng: np.random.Generator, order: int = BIAS_FIELD_ORDER) -> Variant:
    """``variant`` acquired under a receive coil's field (TorchIO's polynomial bias field, each
    coefficient uniform in ±``coefficients``, drawn by ``rng``). Only the subject's own tissue was
    acquired: removed, filled and pasted voxels were written after the scan and keep their values."""
    import torchio as tio

    count = math.comb(order + 3, 3)  # TorchIO's coefficients: one per monomial x^i y^j z^k, i + j + k <= order
    field = tio.BiasField(coefficients=rng.uniform(-coefficients, coefficients, count).tolist(), order=order)
    biased = field(tio.ScalarImage(tensor=torch.from_numpy(variant.volume)[None])).data[0].numpy()
    written = variant.removed | variant.foreign
    return Variant(variant.family, np.where(written, variant.volume, biased).astype(np.float32), variant.removed, variant.foreign)


def _seed_of(seed: int, *names: str) -> list[int]:
    return [seed, *(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) for name in names)]


def draw_volumes(bundle: FaceBundle, contract: InputContract, families: Sequence[str] = tuple(FAMILIES),
                 draws: int = DRAWS, seed: int = 0, pose: dict | None = POSE,
                 field_of_view: dict | None = FIELD_OF_VIEW,
                 bias_field: dict | None = None) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """``draws`` random variants of each family of one head, some in a tighter field of view
    (``field_of_view``), some under a coil's field (``bias_field``: ``prob``, ``coefficients``;
    :func:`with_bias_field`), posed: volumes (N, 1, X, Y, Z) on the contract's grid and their facts
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
            if bias_field and rng.random() < bias_field["prob"]:
                variant = with_bias_field(variant, bias_field["coefficients"], rng)
            own, foreign = variant.shares(bundle.features)
            volumes.append(torch.from_numpy(variant.volume))
            labels.append(VERDICTS.index(label_from(own, foreign)))
            names.append(family)
            numbers.append(number)
            owns.append([own[name] for name in FEATURES])
            foreigns.append([foreign[name] for name in FEATURES])
    if pose:
        pose_seed = int(np.random.default_rng(_seed_of(seed, bundle.subject)).integers(2**31))
        augmentation = DeviceAugmentation(pose, keys=("volume",), spacing=contract.spacing, seed=pose_seed)
        draws = augmentation.draw(len(volumes))
        for start in range(0, len(volumes), POSE_CHUNK):
            rows = slice(start, start + POSE_CHUNK)
            posed = augmentation.apply({"volume": torch.stack(volumes[rows])[:, None]}, draws[rows])["volume"]
            # A posed head is placed on the grid again as `check` places a file, by its own back, top
            # and middle: trained on heads placed before the pose, the network met tilted heads in
            # places `check` never puts them (the detector trained so called 0.943 of held-out removed
            # faces not `face` on draws placed before the pose, 0.903 on draws placed as here:
            # bench/detector_eval.py --shipped-only --ckpt, docs/detector.md).
            volumes[rows] = [contract.volume(volume[0].numpy(), contract.grid_affine)[0] for volume in posed]
    batch = torch.stack(volumes)[:, None]
    facts = {"label": np.array(labels), "family": np.array(names), "subject": np.array([bundle.subject] * len(labels)),
             "number": np.array(numbers), "own": np.array(owns, dtype=np.float32), "foreign": np.array(foreigns, dtype=np.float32)}
    return batch, facts


def draw_bundle(bundle: FaceBundle, contract: InputContract, *args, **options) -> Samples:
    """:func:`draw_volumes` (same arguments) turned into views."""
    batch, facts = draw_volumes(bundle, contract, *args, **options)
    return Samples(contract.views(batch), **facts)


def _draw_job(args: tuple) -> str:
    bundle_cache, contract, families, draws, seed, pose, field_of_view, bias_field, target = args
    torch.set_num_threads(1)
    bundle = read_bundle(Path(bundle_cache))
    samples = draw_bundle(bundle, InputContract.from_dict(contract), families, draws, seed, pose, field_of_view, bias_field)
    _save_npz(Path(target), {"views": samples.views.numpy(), **{k: getattr(samples, k) for k in Samples.FACTS}})
    return bundle.subject


def draw(bundle_caches: Sequence[Path], contract: InputContract, cache_dir: Path, families: Sequence[str] = tuple(FAMILIES),
         draws: int = DRAWS, seed: int = 0, pose: dict | None = POSE, field_of_view: dict | None = FIELD_OF_VIEW,
         workers: int | None = None, rounds: int = 1, bias_field: dict | None = None) -> Samples:
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
        recipe = repr((values, families, draws, round_seed, pose, field_of_view, bias_field, GENERATOR_SOURCE))
        key = hashlib.sha1(recipe.encode()).hexdigest()[:10]
        for path in bundle_caches:
            target = cache_dir / f"{path.stem}-draws-{key}.npz"
            targets.append((round_seed - seed, target))
            if not target.exists():
                jobs.append((str(path), values, families, draws, round_seed, pose, field_of_view, bias_field, str(target)))
    _in_processes(_draw_job, jobs, workers or draw_workers(), f"drawing (cached in {cache_dir})")
    parts = []
    for round_index, target in targets:
        with np.load(target) as stored:
            views, facts = torch.from_numpy(stored["views"]), {k: stored[k] for k in Samples.FACTS}
        facts["number"] = facts["number"] + round_index * draws
        parts.append(Samples(views, **facts))
    return Samples.join(parts)
