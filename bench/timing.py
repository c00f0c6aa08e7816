"""Timing helpers shared by the training benchmarks (imported as `timing` from bench/ scripts)."""

from __future__ import annotations

import time

import torch
from pytorch_lightning import Callback


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Wall time of ``steps`` training batches after ``warmup`` (≥ 1) batches, across epochs.

    The span runs from the end of the last warm-up batch to the end of the last timed one, so it
    holds exactly ``steps`` batch fetches (loader, transfer, batch hook) and ``steps`` model steps.
    """

    def __init__(self, warmup: int, steps: int):
        if warmup < 1:
            raise ValueError("warmup must be at least one batch")
        self.warmup, self.steps = warmup, steps
        self.seconds = float("nan")
        self._batches, self._start = 0, 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._batches += 1
        if self._batches == self.warmup:
            synchronize(module.device)
            self._start = time.perf_counter()
        elif self._batches == self.warmup + self.steps:
            synchronize(module.device)
            self.seconds = time.perf_counter() - self._start
            trainer.should_stop = True
