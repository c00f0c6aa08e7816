"""Shared fixtures: real data locations and small generated heads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

IXI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi-t1-2mm"


@pytest.fixture(scope="session")
def ixi_dir() -> Path:
    """The 32 real IXI heads (2 mm) beside the project; skip where a clone lacks them."""
    folder = Path(os.environ.get("DEFACEGAN_IXI_DIR", IXI_DIR))
    if not any(folder.glob("*.nii.gz")):
        pytest.skip(f"real IXI subset not found at {folder} (set DEFACEGAN_IXI_DIR)")
    return folder


@pytest.fixture(scope="session")
def ixi_scans(ixi_dir: Path) -> list[Path]:
    return sorted(ixi_dir.glob("*.nii.gz"))


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory) -> Path:
    """Six generated 4 mm heads (4 train, 1 val, 1 test) with both defacings; the cohort folder."""
    from support.cohort_fixture import write_cohort

    return write_cohort(tmp_path_factory.mktemp("cohort")).parent


@pytest.fixture(scope="session")
def detector_ckpt(tmp_path_factory) -> Path:
    """A tiny detector checkpoint (4 mm grid) fitted in seconds on generated heads; see support.detector_fixture."""
    from support.detector_fixture import fit_tiny_detector

    return fit_tiny_detector(tmp_path_factory.mktemp("detector") / "tiny.ckpt")


@pytest.fixture(scope="session")
def pix2pix_ckpt(tmp_path_factory) -> Path:
    """An untrained 32² Pix2Pix on a 4 mm, 32³ standard grid, saved as a Lightning checkpoint."""
    from pytorch_lightning import Trainer

    from defacegan.models.pix2pix import Pix2Pix

    model = Pix2Pix(size=32, spacing=4.0, grid_shape=(32, 32, 32), generator={"base_channels": 4},
                    discriminator={"base_channels": 4})
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("pix2pix") / "pix2pix.ckpt"
    trainer.save_checkpoint(path)
    return path
