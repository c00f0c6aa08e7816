"""A Lightning callback that SIGKILLs its own training process, for the resume tests.

Loaded by `train.py` through `+callbacks.kill._target_=support.kill_callback.KillAtEpoch` with tests/
on PYTHONPATH: the process dies exactly as under `kill -9`, but at a known point, after the
checkpoints of the epochs before ``epoch`` are on disk.
"""

from __future__ import annotations

import os
import signal

from pytorch_lightning import Callback


class KillAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
