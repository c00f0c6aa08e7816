"""Inference: p(defaced) for scans on disk or in memory, with the trained multi-branch CNN.

The checkpoint is loaded once; scans are decoded and put on the training grid in loader workers
(decoding gzip dominates the cost), then their views are computed and classified in batches on
the chosen device. Unreadable scans come back as predictions with an ``error`` instead of
stopping the batch.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset

from defacegan.augment import standard_grid
from defacegan.io import Scan, ScanError, atomic_write_bytes, load_scan, require_head_extent, validate_volume
from defacegan.models.cnn import MultiBranchCNN
from defacegan.views import VIEW_MODES, VIEW_NAMES, compute_views

SHIPPED_CHECKPOINT = files("defacegan") / "assets" / "detector.ckpt"

ScanInput = str | os.PathLike | Scan | nib.Nifti1Image | np.ndarray


@dataclass
class Prediction:
    """One scan's verdict; ``probability``/``defaced`` are None when ``error`` says why."""

    source: str
    probability: float | None = None
    defaced: bool | None = None
    error: str | None = None
    views: np.ndarray | None = None  # (V, S, S) in [0, 1]: what the model saw


def as_scan(item: ScanInput) -> Scan:
    """Paths are loaded; a NIfTI image is reoriented like a file; a bare array is taken as RAS+ 1 mm."""
    if isinstance(item, Scan):
        return item
    if isinstance(item, np.ndarray):
        return Scan(validate_volume(item), np.eye(4))
    if isinstance(item, nib.spatialimages.SpatialImage):
        canonical = nib.as_closest_canonical(item)
        return Scan(validate_volume(np.asanyarray(canonical.dataobj)), canonical.affine, item)
    return load_scan(item)


class GridDataset(Dataset):
    """Scans resampled to the model's standard grid; failures are returned, not raised."""

    def __init__(self, items: Sequence[ScanInput], spacing: float, grid_shape: Sequence[int]):
        self.items = list(items)
        self.grid = standard_grid(spacing, tuple(grid_shape))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        source = str(item) if isinstance(item, (str, os.PathLike)) else f"<input {index}>"
        try:
            scan = as_scan(item)
            require_head_extent(scan, "classify")
            image = self.grid(tio.ScalarImage(tensor=torch.from_numpy(scan.data)[None], affine=scan.affine))
            return {"index": index, "source": source, "volume": image.data.float(), "error": ""}
        except ScanError as error:
            return {"index": index, "source": source, "volume": None, "error": str(error)}


def collate(items: list[dict]) -> list[dict]:
    return items


class Detector:
    """A loaded classifier: ``Detector(ckpt).predict(paths)`` → list of :class:`Prediction`."""

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        threshold: float = 0.5,
        batch_size: int = 8,
        workers: int = 0,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = Path(ckpt) if ckpt is not None else Path(str(SHIPPED_CHECKPOINT))
        if not path.exists():
            raise FileNotFoundError(f"{path}: checkpoint not found (train one, or run `make weights`)")
        self.model = MultiBranchCNN.load_from_checkpoint(path, map_location=self.device).eval()
        self.checkpoint = path
        self.threshold = threshold
        self.batch_size = batch_size
        self.workers = workers

    @property
    def view_names(self) -> list[str]:
        return [VIEW_NAMES[i] for i in VIEW_MODES[self.model.hparams.view_mode]]

    def loader(self, items: Sequence[ScanInput]) -> DataLoader:
        hp = self.model.hparams
        dataset = GridDataset(items, hp.spacing, hp.grid_shape)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers, collate_fn=collate)

    @torch.inference_mode()
    def predict(self, items: Iterable[ScanInput], keep_views: bool = False) -> list[Prediction]:
        items = list(items)
        hp = self.model.hparams
        predictions: list[Prediction | None] = [None] * len(items)
        for batch in self.loader(items):
            good = [b for b in batch if not b["error"]]
            for bad in (b for b in batch if b["error"]):
                predictions[bad["index"]] = Prediction(bad["source"], error=bad["error"])
            if not good:
                continue
            volumes = torch.stack([b["volume"] for b in good]).to(self.device)
            views = compute_views(volumes, hp.size, hp.view_mode)
            probabilities = torch.sigmoid(self.model(views).float()).cpu().numpy()
            for b, p, v in zip(good, probabilities, views.cpu().numpy()):
                predictions[b["index"]] = Prediction(
                    b["source"], float(p), bool(p >= self.threshold), views=v if keep_views else None
                )
        return predictions


def predict(items: Iterable[ScanInput], ckpt: str | os.PathLike | None = None, **options) -> list[Prediction]:
    """p(defaced) and verdict for each scan (paths, :class:`Scan`, NIfTI images or RAS+ arrays)."""
    keep_views = options.pop("keep_views", False)
    return Detector(ckpt, **options).predict(items, keep_views=keep_views)


def export_detector(run_dir: str | os.PathLike, out: str | os.PathLike = str(SHIPPED_CHECKPOINT)) -> Path:
    """Ship a training run's best CNN checkpoint: weights and input spec only, no optimizer state.

    ``run_dir`` is a `train.py` output folder; its metrics.json names the best checkpoint.
    """
    summary = json.loads((Path(run_dir) / "metrics.json").read_text())
    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    slim = {key: checkpoint[key] for key in ("state_dict", "hyper_parameters", "pytorch-lightning_version")}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    path = atomic_write_bytes(out, buffer.getvalue())
    MultiBranchCNN.load_from_checkpoint(path, map_location="cpu")  # fails loudly if unusable
    return path
