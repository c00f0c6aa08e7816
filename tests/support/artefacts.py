"""Acquisition artefacts on a head as bench/acquisition.py draws them, for tests on real heads."""

from __future__ import annotations

import numpy as np
import torch
import torchio as tio

from defacegan.io import Scan


def ghosted(volume: np.ndarray, affine: np.ndarray, seed: int) -> Scan:
    """``volume`` (on the contract's RAS grid) with TorchIO's default ghosting along A-P, drawn with
    ``seed``, as bench/acquisition.py's strong-ghosts row draws it."""
    torch.manual_seed(seed)
    image = tio.RandomGhosting(axes=(1,), intensity=(0.5, 1.0))(tio.ScalarImage(tensor=torch.from_numpy(volume[None].copy()), affine=affine))
    return Scan(image.data[0].numpy(), image.affine)
