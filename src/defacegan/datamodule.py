"""LightningDataModule: cohort manifest → cached standard-grid volumes → augmented batches → views.

- ``prepare_data`` puts every volume of the cohort once on the standard grid
  (:func:`defacegan.augment.standard_grid`) and caches it as ``.npy`` (float16 intensities,
  uint8 masks), read back memory-mapped, so epochs never decode gzip again.
- Loader workers build a ``tio.Subject`` per item and apply the TorchIO augmentation on the CPU
  (train split only); the loader yields 3D volumes. Sagittal slices (translate) need only a slab
  of each volume: the sagittal planes they are cut from, plus, in train batches augmented on the
  device, the planes a rotation, scaling, shift or flip can bring into them
  (:meth:`defacegan.augment.DeviceAugmentation.read_planes`). TorchIO's transforms (motion,
  ghosting...) need the whole volume, so with them the loader reads it all.
- ``on_after_batch_transfer`` applies the optional on-device (MONAI) augmentation to train
  batches, then turns the volumes into views or sagittal slices on the batch's device.

Batches after transfer:

- classify: ``views`` (B, V, S, S) float in [0, 1], ``label`` (B,) float (0 face, 1 defaced),
  ``subject`` list[str], ``kind`` list[str] ("face" or the defacing method);
- translate: ``source`` and ``target`` (B, n_slices, S, S) in [-1, 1], each scaled by its scan's
  source robust intensity scale (measured once per scan on the standard grid; the paired target
  shares its source's), ``mask`` (B, n_slices, S, S) float, the removed share of each pixel (1
  where every voxel behind it was removed, 0 where none was; at S = the grid's side, the removed
  voxels themselves), ``subject`` and ``target_subject`` list[str] (the same, unless the train
  batches are unpaired), ``kind`` list[str].
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torchio as tio
from pytorch_lightning.utilities import move_data_to_device
from torch.utils.data import DataLoader, Dataset

from defacegan.augment import DeviceAugmentation, build_augmentation, standard_grid
from defacegan.io import atomic_write_bytes
from defacegan.manifest import CLASS_NAMES, SPLITS, is_mask_column, load_manifest, volume_columns
from defacegan.views import VIEW_MODES, VIEW_NAMES, compute_views, robust_scale, sagittal_slices

TASKS = ("classify", "translate")
DIRECTIONS = ("deface", "reface")


def _file_key(path: str) -> str:
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_mtime_ns}:{stat.st_size}"


def cache_scan(row: Mapping, columns: Sequence[str], folder: Path, spacing: float, shape: Sequence[int]) -> dict[str, Path]:
    """Put one manifest row's volumes on the standard grid, once; return ``{column: .npy path}``.

    Intensities are divided by the face's robust scale (one factor for the scan, so its
    defaced twins stay exactly comparable), clipped at 0 and stored as float16: ≈[0, 1] keeps
    float16 precise and gives TorchIO's gamma/noise a meaningful range. Masks are uint8 {0, 1}.
    A file's name carries a hash of the grid and of its source's (and the face's) path, mtime
    and size, so an edited cohort is re-cached; each file is written atomically.
    """
    grid = f"C-order|{spacing}|{tuple(shape)}|{_file_key(row['face'])}"
    targets = {
        column: folder / f"{column}-{hashlib.sha1(f'{grid}|{_file_key(row[column])}'.encode()).hexdigest()[:16]}.npy"
        for column in columns
    }
    missing = [column for column, path in targets.items() if not path.exists()]
    if not missing:
        return targets
    images = {column: (tio.LabelMap if is_mask_column(column) else tio.ScalarImage)(row[column]) for column in {"face", *missing}}
    # TorchIO draws a random number per call, even for this fixed grid: building the cache must not
    # move the global RNG, or a run's augmentations would depend on whether the cache existed.
    with torch.random.fork_rng(devices=[]):
        subject = standard_grid(spacing, shape)(tio.Subject(images))
    scale = float(robust_scale(subject["face"].data[None]))
    for column in missing:
        path, data = targets[column], subject[column].data[0]
        # C order (scans load in Fortran order): batches of C-order arrays stack 4x faster.
        array = data.numpy() if is_mask_column(column) else (data / scale).clamp_min(0).numpy()
        array = np.ascontiguousarray(array, dtype=np.uint8 if is_mask_column(column) else np.float16)
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(path, buffer.getvalue())
        for stale in folder.glob(f"{column}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
    return targets


def source_scale(path: Path) -> float:
    """The robust intensity scale (:func:`defacegan.views.robust_scale`) of a cached volume: what
    its sagittal slices are divided by, measured once on the whole grid, since a slab cannot."""
    return float(robust_scale(torch.from_numpy(np.load(path))[None, None]))


def other_subject(subjects: Sequence[str], index: int) -> int:
    """An index whose subject differs from ``subjects[index]``, uniformly among them, drawn with
    torch's RNG (seeded per loader worker): how unpaired training meets another head each time."""
    while subjects[other := int(torch.randint(len(subjects), (1,)))] == subjects[index]:
        pass
    return other


@dataclass(frozen=True)
class Item:
    """One dataset entry: cached volumes by role ("volume", or "face"/"defaced"/"removed")."""

    subject: str
    kind: str
    volumes: dict[str, Path]
    label: int | None = None  # classify: the index in CLASS_NAMES
    scale: float | None = None  # translate: the robust intensity scale of the source volume


class VolumeDataset(Dataset):
    """Cached volumes of one split; ``augmentation`` (TorchIO) runs here, in the loader workers.

    Yields float16 intensities and uint8 masks as (1, X, Y, Z) tensors: half the bytes to
    pin and transfer; the views are computed in float32 on the device. ``planes`` = (lo, hi)
    reads only those grid planes along X (a slab; the cache is C-ordered, so that is one
    contiguous read). ``unpaired`` names a role whose volume comes from another subject's
    item, drawn afresh for every sample: CycleGAN's two domains never show the same head.
    """

    def __init__(
        self,
        items: Sequence[Item],
        spacing: float,
        augmentation: tio.Transform | None = None,
        planes: tuple[int, int] | None = None,
        unpaired: str | None = None,
    ):
        self.items = list(items)
        self.affine = np.diag([spacing, spacing, spacing, 1.0])
        self.augmentation = augmentation
        self.planes = planes
        self.unpaired = unpaired
        self.subjects = [item.subject for item in self.items]
        if unpaired is not None and len(set(self.subjects)) < 2:
            raise ValueError("unpaired batches need at least two subjects in the split")

    def __len__(self) -> int:
        return len(self.items)

    def _partner(self, index: int) -> Item:
        """The item the unpaired role comes from (the item itself when paired)."""
        if self.unpaired is None:
            return self.items[index]
        return self.items[other_subject(self.subjects, index)]

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        partner = self._partner(index)
        volumes = item.volumes if partner is item else {**item.volumes, self.unpaired: partner.volumes[self.unpaired]}
        lo, hi = self.planes or (0, None)
        # Copy-on-write maps: tensors over the file's pages, copied once, by the batch's collation.
        arrays = {role: np.load(path, mmap_mode="c")[lo:hi] for role, path in volumes.items()}
        if self.augmentation is None:
            tensors = {role: torch.from_numpy(array)[None] for role, array in arrays.items()}
        else:
            subject = tio.Subject(
                {
                    role: (tio.LabelMap if array.dtype == np.uint8 else tio.ScalarImage)(
                        tensor=torch.from_numpy(array.astype(np.float32))[None], affine=self.affine
                    )
                    for role, array in arrays.items()
                }
            )
            subject = self.augmentation(subject)
            tensors = {role: torch.from_numpy(subject[role].numpy().astype(array.dtype, order="C")) for role, array in arrays.items()}
        sample = {**tensors, "subject": item.subject, "kind": item.kind}
        if item.label is not None:
            sample["label"] = torch.tensor(item.label, dtype=torch.float32)
        if item.scale is not None:
            sample |= {"scale": torch.tensor(item.scale), "target_scale": torch.tensor(partner.scale),
                       "target_subject": partner.subject, "first_plane": lo}
        return sample


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each loader worker from its torch seed (set from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class DefaceDataModule(pl.LightningDataModule):
    """Face / defaced volumes of a cohort, split by subject, for the classifiers and Pix2Pix.

    ``task`` "classify": each scan contributes its face (label 0) and its defaced volumes
    (label 1) for the split's methods; in train the face is repeated once per method so the
    classes are balanced. ``task`` "translate": one (face, defaced, removed) triple per scan
    and method; ``direction`` "deface" translates face → defaced, "reface" defaced → face;
    ``unpaired`` gives each train source the target of another subject (CycleGAN), while val and
    test stay paired so that outputs are scored against the truth. Train and val use
    ``train_methods``, test uses ``test_methods``.
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        task: str = "classify",
        view_mode: str = "all",
        size: int = 32,
        train_methods: Sequence[str] = ("mask", "plane"),
        test_methods: Sequence[str] | None = None,
        direction: str = "deface",
        unpaired: bool = False,
        n_slices: int = 1,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping | None = None,
        device_augment: Mapping | None = None,
        spacing: float = 4.0,
        shape: Sequence[int] = (64, 64, 64),
        cache_dir: str | os.PathLike | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        if view_mode not in VIEW_MODES:
            raise ValueError(f"view_mode {view_mode!r} is not one of {sorted(VIEW_MODES)}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
        self.save_hyperparameters(logger=False)
        self.roots = [Path(r) for r in ([root] if isinstance(root, (str, os.PathLike)) else root)]
        self.task = task
        self.view_mode = view_mode
        self.size = size
        self.train_methods = tuple(train_methods)
        self.test_methods = tuple(test_methods or train_methods)
        self.direction = direction
        self.unpaired = unpaired
        self.n_slices = n_slices
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = build_augmentation(augment)
        self.spacing = float(spacing)
        keys, masks = (("face", "defaced"), ("removed",)) if task == "translate" else (("volume",), ())
        self.device_augmentation = DeviceAugmentation(device_augment, keys, masks, self.spacing, seed) if device_augment else None
        self.shape = tuple(int(s) for s in shape)
        if not 1 <= n_slices <= self.shape[0]:
            raise ValueError(f"cannot take {n_slices} sagittal slices from {self.shape[0]} planes")
        middle = self.shape[0] // 2 - n_slices // 2  # the planes sagittal_slices takes from a whole volume
        self.planes = (middle, middle + n_slices)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        self.datasets: dict[str, VolumeDataset] = {}

    @property
    def view_names(self) -> tuple[str, ...]:
        """Names of the channels of ``views`` (classify), in order."""
        return tuple(VIEW_NAMES[v] for v in VIEW_MODES[self.view_mode])

    @property
    def n_views(self) -> int:
        return len(self.view_names)

    def methods(self, split: str) -> tuple[str, ...]:
        return self.test_methods if split == "test" else self.train_methods

    def _cached(self) -> tuple[pd.DataFrame, list[dict[str, Path]]]:
        """The manifests (one per root, concatenated) and each row's cached volumes, building what is missing."""
        methods = dict.fromkeys(self.train_methods + self.test_methods)
        columns = volume_columns(list(methods))
        manifests, paths = [], []
        for root in self.roots:
            manifest = load_manifest(root)
            missing = [c for c in columns if c not in manifest.columns]
            if missing:
                raise ValueError(f"{root}: manifest has no column {missing} (methods {list(methods)})")
            cohort_dir = (root if root.is_dir() else root.parent).resolve()
            grid = (self.cache_dir or cohort_dir / "cache") / f"{self.spacing:g}mm-{'x'.join(map(str, self.shape))}"
            paths += [
                cache_scan(row, columns, grid / Path(row["face"]).parent.relative_to(cohort_dir), self.spacing, self.shape)
                for _, row in manifest.iterrows()
            ]
            manifests.append(manifest)
        return pd.concat(manifests, ignore_index=True), paths

    def prepare_data(self) -> None:
        self._cached()

    @property
    def rank(self) -> int:
        """This process's rank under a (DDP) Trainer, else 0: it offsets every augmentation seed, so
        that ranks draw different augmentations for their different samples."""
        return self.trainer.global_rank if self.trainer is not None else 0

    def setup(self, stage: str | None = None) -> None:
        if self.device_augmentation is not None:
            self.device_augmentation.restart(offset=self.rank)
        if self.datasets:
            return
        manifest, paths = self._cached()
        for split in SPLITS:
            items = [
                item
                for (_, row), cached in zip(manifest.iterrows(), paths)
                if row["split"] == split
                for item in self._items(row["subject"], cached, self.methods(split), balance=split == "train")
            ]
            augmentation = self.augmentation if split == "train" else None
            if self.task == "classify":
                self.datasets[split] = VolumeDataset(items, self.spacing, augmentation)
                continue
            unpaired = ("face" if self.direction == "reface" else "defaced") if self.unpaired and split == "train" else None
            self.datasets[split] = VolumeDataset(items, self.spacing, augmentation, self.read_planes(split), unpaired)

    def read_planes(self, split: str) -> tuple[int, int]:
        """Translate: the grid planes along X that ``split``'s loader reads (see the module docstring)."""
        if split != "train" or (self.augmentation is None and self.device_augmentation is None):
            return self.planes
        if self.augmentation is not None:
            return 0, self.shape[0]
        return self.device_augmentation.read_planes(self.planes, self.shape)

    def _items(self, subject: str, cached: dict[str, Path], methods: Sequence[str], balance: bool) -> list[Item]:
        if self.task == "translate":
            roles = [{"face": cached["face"], "defaced": cached[f"defaced_{method}"], "removed": cached[f"removed_{method}"]} for method in methods]
            source = "face" if self.direction == "deface" else "defaced"
            return [Item(subject, method, volumes, scale=source_scale(volumes[source])) for method, volumes in zip(methods, roles)]
        face, defaced = CLASS_NAMES.index("face"), CLASS_NAMES.index("defaced")
        faces = [Item(subject, "face", {"volume": cached["face"]}, face)] * (len(methods) if balance else 1)
        return faces + [Item(subject, method, {"volume": cached[f"defaced_{method}"]}, defaced) for method in methods]

    def _loader(self, split: str, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call prepare_data() and setup() first")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed + self.rank),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled and augmented; drops a ragged last batch (a batch of one breaks BatchNorm)."""
        return self._loader("train", shuffle=True, drop_last=len(self.datasets["train"]) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return self.model_inputs(batch, augment=self.trainer is not None and self.trainer.training)

    def model_inputs(self, batch: dict, augment: bool = False) -> dict:
        """3D volumes on the device → views (classify) or sagittal slices (translate).

        ``augment``: a train batch, which gets the on-device augmentation when there is one.
        """
        if self.task == "classify":
            if augment and self.device_augmentation is not None:
                batch = self.device_augmentation(batch)
            views = compute_views(batch["volume"], self.size, self.view_mode)
            return {"views": views, "label": batch["label"], "subject": batch["subject"], "kind": batch["kind"]}
        first = int(batch["first_plane"][0])
        if augment and self.device_augmentation is not None:
            planes = self.device_augmentation(batch, first, self.planes, self.shape[0])
        else:
            kept = slice(self.planes[0] - first, self.planes[1] - first)
            planes = {role: batch[role][:, :, kept] for role in ("face", "defaced", "removed")}
        source, target = ("face", "defaced") if self.direction == "deface" else ("defaced", "face")
        return {
            "source": sagittal_slices(planes[source], self.size, self.n_slices, batch["scale"]) * 2 - 1,
            "target": sagittal_slices(planes[target], self.size, self.n_slices, batch["target_scale"]) * 2 - 1,
            # The removed share of each pixel, not a thresholded copy: 1 only where no intact
            # voxel contributes (the audit's strict region, defacegan.metrics.strict_region).
            "mask": sagittal_slices(planes["removed"], self.size, self.n_slices, scale=1.0),
            "subject": batch["subject"],
            "target_subject": batch["target_subject"],
            "kind": batch["kind"],
        }

    def collect(self, split: str, passes: int = 1, device: str | torch.device | None = None) -> dict:
        """Every batch of ``split`` after transfer, concatenated: tensors on the CPU, lists joined.

        For models trained without a Trainer (scikit-learn). The train split is augmented as in
        training (in the loader workers, then on ``device``), so ``passes`` > 1 gives that many
        augmented copies. Deterministic per ``seed``.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        parts: dict[str, list] = {}
        if self.device_augmentation is not None:
            self.device_augmentation.restart()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            loader = self._loader(split)
            for _ in range(passes):
                for batch in loader:
                    batch = self.model_inputs(move_data_to_device(batch, device), augment=split == "train")
                    for key, value in batch.items():
                        parts.setdefault(key, []).append(value.cpu() if torch.is_tensor(value) else value)
        return {key: torch.cat(values) if torch.is_tensor(values[0]) else [v for part in values for v in part] for key, values in parts.items()}
