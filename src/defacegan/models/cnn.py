"""Multi-branch CNN as a Lightning module: face or defaced, for the experiment framework.

The network is :class:`~defacegan.models.detector.DetectorNet` (one conv branch per 2D view)
with one output logit, p(defaced) = sigmoid(logit), trained on a cohort's two defacing methods
through ``train.py``. The shipped three-way detector (face / removed / replaced) is the same
network with three logits, trained on every defacing family by :mod:`defacegan.detector_training`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from pytorch_lightning import LightningModule
from torch import nn

from defacegan.metrics import classification_metrics
from defacegan.models.detector import DetectorNet
from defacegan.views import VIEW_MODES

#: The optimizer of conf/model/cnn.yaml, for a model built without one.
CNN_ADAMW = partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4)


class MultiBranchCNN(LightningModule):
    """Binary classifier over a stack of views (B, V, S, S) in [0, 1]; label 1 = defaced.

    ``view_mode``, ``size``, ``spacing`` and ``grid_shape`` describe the input it was trained on
    (which views, their pixel size, the standard 3D grid in mm/voxels); they are saved in the
    checkpoint so inference prepares scans exactly as training did.
    """

    def __init__(
        self,
        view_mode: str = "all",
        size: int = 32,
        spacing: float = 4.0,
        grid_shape: Sequence[int] = (64, 64, 64),
        channels: Sequence[int] = (8, 16, 32),
        kernel_size: int = 3,
        hidden: int = 64,
        dropout: float = 0.3,
        pooled: int = 4,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ):
        super().__init__()
        # Optimizer factories stay out of the checkpoint so it loads with weights_only=True.
        self.save_hyperparameters(logger=False, ignore=["optimizer", "scheduler"])
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = DetectorNet(len(VIEW_MODES[view_mode]), 1, channels, kernel_size, hidden, dropout, pooled)
        self.loss = nn.BCEWithLogitsLoss()
        self._outputs: dict[str, list[dict]] = {"val": [], "test": []}
        self.test_results: dict[str, np.ndarray] = {}

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for views (B, V, S, S)."""
        return self.net(views).squeeze(1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["views"]), batch["label"].float())
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self(batch["views"])
        self.log(f"{stage}/loss", self.loss(logits, batch["label"].float()), batch_size=len(logits), sync_dist=True)
        self._outputs[stage].append(
            {
                "probability": torch.sigmoid(logits.float()).cpu(),
                "label": batch["label"].cpu(),
                "subject": list(batch["subject"]),
                "kind": list(batch["kind"]),
            }
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _epoch_end(self, stage: str) -> dict[str, np.ndarray]:
        outputs = gather_across_ranks(self._outputs[stage])
        self._outputs[stage] = []
        if not outputs:
            return {}
        results = collate_predictions(outputs)
        scores = classification_metrics(results["label"], results["probability"])
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items() if k not in ("confusion", "n")})
        return results

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._epoch_end("test")

    def configure_optimizers(self):
        optimizer = (self.optimizer or CNN_ADAMW)(self.parameters())
        if self.scheduler is None:
            return optimizer
        # `monitor` serves ReduceLROnPlateau; other schedulers ignore it.
        scheduler = {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def gather_across_ranks(outputs: list[dict]) -> list[dict]:
    """Every process's prediction dicts, in rank order, when several train together (DDP).

    Each rank sees a shard of the val set; scoring the whole set on every rank gives all of them
    the same val/f1, so checkpointing and early stopping decide alike (a rank that stops alone
    leaves the others waiting in the next collective).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return outputs
    gathered: list[list[dict] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, outputs)
    return [output for part in gathered for output in part]


def collate_predictions(outputs: list[dict]) -> dict[str, np.ndarray]:
    """Concatenate per-batch prediction dicts into arrays (probability, label, subject, kind)."""
    return {
        "probability": torch.cat([o["probability"] for o in outputs]).numpy(),
        "label": torch.cat([o["label"] for o in outputs]).numpy().astype(int),
        "subject": np.array([s for o in outputs for s in o["subject"]]),
        "kind": np.array([k for o in outputs for k in o["kind"]]),
    }
