"""Shared fixtures: real data locations, small generated heads, the composed `train` config.

Tests run one thread per process: the machines are small and shared, the tensors are tiny,
and more threads only contend. The environment reaches `train.py` subprocesses and loader
workers; `torch.set_num_threads` covers this process, whatever imported torch first.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402  (after the thread variables, which it reads once)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

IXI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi-t1-2mm"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``name`` in the test run's temporary folder, made by ``build(path)`` in the first process
    that asks for it: pytest-xdist workers (``make test``) share it instead of each making its own."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the folder all workers of this run share
    path = root / name
    with FileLock(f"{path}.lock"):
        if not path.exists():
            build(path)
    return path


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
def held_out_head(ixi_scans) -> Path:
    """The IXI scan of the first held-out subject: a real head the shipped detector never saw."""
    from defacegan.detector_data import subject_of
    from defacegan.detector_training import HELD_OUT

    return next(path for path in ixi_scans if subject_of(path) == HELD_OUT[0])


@pytest.fixture(scope="session")
def held_out_bundle(held_out_head, tmp_path_factory):
    """One real IXI head the shipped detector never saw, registered to the template once for
    the whole test run, with its features and regions on the default contract's grid."""
    from defacegan.contract import InputContract
    from defacegan.detector_data import subject_of
    from defacegan.families import make_bundle
    from defacegan.io import load_scan

    def build(path: Path) -> None:
        path.write_bytes(pickle.dumps(make_bundle(load_scan(held_out_head), subject_of(held_out_head), InputContract())))

    return pickle.loads(built_once(tmp_path_factory, "held-out-bundle.pickle", build).read_bytes())


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory) -> Path:
    """Six generated 4 mm heads (4 train, 1 val, 1 test) with both defacings; the cohort folder."""
    from support.cohort_fixture import write_cohort

    return write_cohort(tmp_path_factory.mktemp("cohort")).parent


@pytest.fixture(scope="session")
def detector_ckpt(tmp_path_factory) -> Path:
    """A tiny detector checkpoint (4 mm grid) fitted in seconds on generated heads; see support.detector_fixture."""
    from support.detector_fixture import fit_tiny_detector

    return built_once(tmp_path_factory, "tiny-detector.ckpt", fit_tiny_detector)


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


@pytest.fixture
def compose_cfg(tmp_path, synthetic_cohort):
    """Compose the real `train` config as `python train.py <overrides>` would, made tiny.

    The generated cohort on its 4 mm grid, no loader processes, the CSV logger and ``tmp_path``
    (or ``output_dir``) for every output come first, so ``overrides`` win over them. The
    Hydra node is dropped as in a real run, where the task function never sees it, unless
    ``keep_hydra`` (to check launchers and run folders).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from defacegan.train import CONFIG_DIR
    from support.config import tiny_overrides

    def compose_cfg(*overrides: str, output_dir: Path | None = None, keep_hydra: bool = False):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*tiny_overrides(synthetic_cohort), "logger=csv", *overrides],
                          return_hydra_config=True)
        if keep_hydra:
            return cfg
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = cfg.paths.log_dir = str(output_dir or tmp_path)
            del cfg.hydra
        return cfg

    return compose_cfg
