"""DefaceDataModule on a generated cohort: batch contract, splits, balance, cache, config, Trainer hook."""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from defacegan.cohort import build_cohort
from defacegan.datamodule import DefaceDataModule
from defacegan.manifest import SPLITS
from defacegan.metrics import strict_region
from defacegan.views import VIEW_MODES

SMALL_GRID = {"spacing": 4.0, "shape": (48, 48, 48), "size": 32, "batch_size": 4}
AUGMENT = {"flip": {"_target_": "torchio.RandomFlip", "axes": ("LR",)},
           "affine": {"_target_": "torchio.RandomAffine", "p": 1, "degrees": 10},
           "noise": {"_target_": "torchio.RandomNoise", "p": 0.5, "std": 0.02}}
DEVICE_AUGMENT = {"flip": {"prob": 1.0}, "affine": {"prob": 1.0, "degrees": 10, "translation": 8}}


def datamodule(root: Path, **options) -> DefaceDataModule:
    dm = DefaceDataModule(root, **{**SMALL_GRID, **options})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def first_batch(dm: DefaceDataModule, split: str = "train") -> dict:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return dm.on_after_batch_transfer(next(iter(loader)), 0)


@pytest.mark.parametrize("view_mode", sorted(VIEW_MODES))
def test_classify_batches_follow_the_contract(synthetic_cohort, view_mode):
    dm = datamodule(synthetic_cohort, view_mode=view_mode, augment=AUGMENT)
    raw = next(iter(dm.train_dataloader()))
    assert raw["volume"].shape == (4, 1, 48, 48, 48) and raw["volume"].dtype == torch.float16
    batch = dm.on_after_batch_transfer(raw, 0)
    assert set(batch) == {"views", "label", "subject", "kind"}
    assert batch["views"].shape == (4, dm.n_views, 32, 32) and dm.n_views == len(VIEW_MODES[view_mode])
    assert batch["views"].dtype == torch.float32 and 0 <= batch["views"].min() and batch["views"].max() <= 1
    assert batch["label"].dtype == torch.float32 and batch["label"].shape == (4,)
    assert [kind != "face" for kind in batch["kind"]] == batch["label"].bool().tolist()
    assert all(isinstance(s, str) for s in batch["subject"])


@pytest.mark.parametrize("direction, n_slices", [("deface", 1), ("reface", 3)])
def test_translate_batches_follow_the_contract(synthetic_cohort, direction, n_slices):
    dm = datamodule(synthetic_cohort, task="translate", direction=direction, n_slices=n_slices)
    batch = first_batch(dm, "val")
    assert set(batch) == {"source", "target", "mask", "subject", "target_subject", "kind"}
    assert batch["target_subject"] == batch["subject"]  # val and test are paired
    assert set(batch["kind"]) <= {"mask", "plane"}
    for key in ("source", "target", "mask"):
        assert batch[key].shape == (2, n_slices, 32, 32) and batch[key].dtype == torch.float32
    assert batch["source"].min() >= -1 and batch["source"].max() <= 1 and batch["target"].min() >= -1
    assert batch["mask"].min() == 0 and batch["mask"].max() == 1  # the removed share, carried exactly
    strict, intact = strict_region(batch["mask"]), batch["mask"] == 0
    defaced = batch["target"] if direction == "deface" else batch["source"]
    face = batch["source"] if direction == "deface" else batch["target"]
    assert strict.any() and (defaced[strict] == -1).all()  # no intact voxel inside the strict region
    assert face[strict].mean() > -0.9  # ... which holds the face in the other image
    # Both are scaled by the source's factor, so they agree where nothing was removed.
    assert (face - defaced)[intact].abs().mean() < 0.02


def test_splits_do_not_leak_and_classes_are_balanced(synthetic_cohort):
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv", dtype={"subject": str})
    dm = datamodule(synthetic_cohort)
    subjects = {split: {item.subject for item in dm.datasets[split].items} for split in SPLITS}
    for split in SPLITS:
        assert subjects[split] == set(manifest.loc[manifest.split == split, "subject"])
        for item in dm.datasets[split].items:  # the cached files are the subject's own
            assert all(path.parent.name == item.subject for path in item.volumes.values())
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"] or subjects["val"] & subjects["test"])
    train = Counter(item.kind for item in dm.datasets["train"].items)
    assert train == {"face": 8, "mask": 4, "plane": 4}  # the face repeated once per method
    assert Counter(item.kind for item in dm.datasets["test"].items) == {"face": 1, "mask": 1, "plane": 1}
    assert datamodule(synthetic_cohort / "manifest.csv").datasets["test"].items == dm.datasets["test"].items


def test_test_methods_apply_to_the_test_split_only(synthetic_cohort):
    dm = datamodule(synthetic_cohort, train_methods=["mask"], test_methods=["mask", "plane"])
    assert {item.kind for item in dm.datasets["train"].items} == {"face", "mask"}
    assert {item.kind for item in dm.datasets["val"].items} == {"face", "mask"}
    assert {item.kind for item in dm.datasets["test"].items} == {"face", "mask", "plane"}
    with pytest.raises(ValueError, match="no column"):
        datamodule(synthetic_cohort, train_methods=["blur"])


def test_cache_is_compact_reused_and_refreshed(synthetic_cohort, tmp_path):
    dm = datamodule(synthetic_cohort, cache_dir=tmp_path)
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 6 * 5  # five volumes per subject
    arrays = {path.name.split("-")[0]: np.load(path, mmap_mode="r") for path in files if path.parent.name == "sub-00"}
    assert arrays["face"].dtype == np.float16 and arrays["removed_mask"].dtype == np.uint8
    assert arrays["face"].shape == (48, 48, 48) and set(np.unique(arrays["removed_plane"])) == {0, 1}
    written = {path: path.stat().st_mtime_ns for path in files}
    datamodule(synthetic_cohort, cache_dir=tmp_path)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.npy")} == written
    # A source file that changed is cached again (the old file goes), nothing else is.
    source = synthetic_cohort / "sub-01" / "defaced_plane.nii.gz"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    datamodule(synthetic_cohort, cache_dir=tmp_path)
    now = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.npy")}
    changed = set(now.items()) ^ set(written.items())
    assert {path.parent.name + "/" + path.name.split("-")[0] for path, _ in changed} == {"sub-01/defaced_plane"}
    assert len(now) == len(written) and dm.datasets["test"].items


def test_collect_is_deterministic_per_seed(synthetic_cohort):
    dm = datamodule(synthetic_cohort, train_methods=["mask"], augment=AUGMENT, seed=1)
    twice, once = dm.collect("train", passes=2), dm.collect("train")
    assert twice["views"].shape == (16, 6, 32, 32) and len(twice["subject"]) == len(twice["kind"]) == 16
    torch.testing.assert_close(once["views"], twice["views"][:8])
    assert not torch.equal(twice["views"][8:], twice["views"][:8])  # the second pass is another draw
    other = datamodule(synthetic_cohort, train_methods=["mask"], augment=AUGMENT, seed=2).collect("train")
    assert not torch.equal(other["views"], once["views"])
    plain = dm.collect("val")
    assert plain["label"].tolist() == [0.0, 1.0] and plain["kind"] == ["face", "mask"]


def test_workers_load_what_the_main_process_loads_and_augment_per_seed(synthetic_cohort):
    in_main = datamodule(synthetic_cohort, batch_size=3).collect("val")
    in_workers = datamodule(synthetic_cohort, batch_size=3, num_workers=2).collect("val")
    torch.testing.assert_close(in_workers["views"], in_main["views"])
    augmented = [datamodule(synthetic_cohort, train_methods=["mask"], augment=AUGMENT, num_workers=2).collect("train") for _ in range(2)]
    torch.testing.assert_close(augmented[0]["views"], augmented[1]["views"])


@pytest.mark.parametrize("group, views", [("all", 6), ("mean", 3), ("slice", 3)])
def test_config_group_instantiates(compose_cfg, synthetic_cohort, group, views):
    cfg = compose_cfg(f"data={group}", "data.augment=null", *[f"data.{key}={value}" for key, value in SMALL_GRID.items() if key != "shape"])
    dm = instantiate(cfg.data, shape=[48, 48, 48])
    assert dm.view_mode == group and dm.n_views == views and dm.augmentation is None
    assert cfg.data.augment is None and dm.roots == [synthetic_cohort] and dm.cache_dir is None


@pytest.mark.parametrize("choice, torchio, device", [("torchio", True, False), ("device", False, True), ("none", False, False)])
def test_augment_group_picks_where_augmentation_runs(compose_cfg, choice, torchio, device):
    dm = instantiate(compose_cfg(f"augment={choice}").data)
    assert (dm.augmentation is not None) == torchio and (dm.device_augmentation is not None) == device


def test_device_augmentation_runs_on_train_batches_only(synthetic_cohort):
    plain = datamodule(synthetic_cohort, train_methods=["mask"])
    dm = datamodule(synthetic_cohort, train_methods=["mask"], device_augment=DEVICE_AUGMENT, seed=1)
    train = dm.collect("train")
    assert not torch.equal(train["views"], plain.collect("train")["views"])
    torch.testing.assert_close(dm.collect("train")["views"], train["views"])  # each collect restarts from the seed
    torch.testing.assert_close(dm.collect("val")["views"], plain.collect("val")["views"])
    # Under a Trainer the batch hook augments in the train loop, not in validation.
    probe = ViewsProbe(dm.n_views)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, datamodule=dm)
    torch.testing.assert_close(probe.views["val"], plain.collect("val")["views"])
    unaugmented = plain.collect("train")["views"]
    assert all((unaugmented - view).abs().amax(dim=(1, 2, 3)).min() > 0 for view in probe.views["train"])


class ViewsProbe(pl.LightningModule):
    """The smallest classifier, to see what a Trainer hands to training_step and validation_step."""

    def __init__(self, n_views: int):
        super().__init__()
        self.linear = torch.nn.Linear(n_views * 32 * 32, 1)
        self.seen = []
        self.views = {}

    def training_step(self, batch, batch_idx):
        self.seen.append({key: tuple(value.shape) for key, value in batch.items() if torch.is_tensor(value)})
        self.views["train"] = batch["views"]
        logits = self.linear(batch["views"].flatten(1)).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])

    def validation_step(self, batch, batch_idx):
        self.views["val"] = batch["views"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_gets_views_from_the_batch_hook(synthetic_cohort):
    dm = DefaceDataModule(synthetic_cohort, view_mode="mean", **SMALL_GRID)
    probe = ViewsProbe(dm.n_views)
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, datamodule=dm)
    assert probe.seen == [{"views": (4, 3, 32, 32), "label": (4,)}] * 2


@pytest.mark.slow
def test_demo_cohort_batches(tmp_path):
    root = build_cohort("demo", tmp_path / "demo", subjects=6, seed=0)
    for task in ("classify", "translate"):
        dm = datamodule(root, task=task, spacing=2.0, shape=(128, 128, 128), augment=AUGMENT)
        batch = first_batch(dm)
        key = "views" if task == "classify" else "source"
        assert batch[key].shape[-2:] == (32, 32) and torch.isfinite(batch[key]).all()


def test_several_cohorts_train_together(synthetic_cohort, tmp_path):
    from support.cohort_fixture import write_cohort

    other = write_cohort(tmp_path / "other", n_subjects=3, seed=1).parent
    alone, both = datamodule(synthetic_cohort), datamodule([synthetic_cohort, other])
    # sub-00..02 of the second cohort are 3 train subjects: 2 methods x (face twice + 2 defaced).
    assert len(both.datasets["train"]) == len(alone.datasets["train"]) + 3 * 4
    assert len(both.datasets["test"]) == len(alone.datasets["test"])
    assert (other / "cache").is_dir()


SLAB_AUGMENT = {"flip": {"prob": 0.5}, "affine": {"prob": 0.75, "degrees": 10, "scales": 0.1, "translation": 8},
                "smooth": {"prob": 0.5}, "contrast": {"prob": 0.5}}


def full_volume_inputs(dm: DefaceDataModule, items: list, augment: bool) -> dict:
    """What the translate path gave before slabs: whole cached volumes, augmented whole, then sliced."""
    from defacegan.views import sagittal_slices

    batch = {role: torch.stack([torch.from_numpy(np.load(item.volumes[role]))[None] for item in items])
             for role in ("face", "defaced", "removed")}
    if augment:
        batch = dm.device_augmentation(batch)
    planes = {role: volume[:, :, slice(*dm.planes)] for role, volume in batch.items()}
    scale = torch.tensor([item.scale for item in items])
    return {"source": sagittal_slices(planes["defaced"], dm.size, dm.n_slices, scale) * 2 - 1,
            "target": sagittal_slices(planes["face"], dm.size, dm.n_slices, scale) * 2 - 1,
            "mask": sagittal_slices(planes["removed"], dm.size, dm.n_slices, 1.0)}


def test_a_slab_gives_the_slices_of_the_whole_augmented_volume(synthetic_cohort):
    """Train samples read only the planes their slices can draw on, yet match the whole-volume path."""
    from torch.utils.data import default_collate

    dm = datamodule(synthetic_cohort, task="translate", direction="reface", n_slices=3, batch_size=8,
                    device_augment=SLAB_AUGMENT, seed=3)
    train = dm.datasets["train"]
    lo, hi = train.planes
    assert 0 < lo < dm.planes[0] and dm.planes[1] < hi < dm.shape[0]  # a slab, with a margin
    items = train.items[:8]
    slab = default_collate([train[i] for i in range(8)])
    assert slab["face"].shape == (8, 1, hi - lo, 48, 48)
    dm.device_augmentation.restart()
    from_slab = dm.model_inputs(slab, augment=True)
    dm.device_augmentation.restart()
    whole = full_volume_inputs(dm, items, augment=True)
    for key in ("source", "target"):
        torch.testing.assert_close(from_slab[key], whole[key], atol=2e-3, rtol=0)
    # Nearest-neighbour masks agree but for ties at exactly half a voxel.
    assert ((from_slab["mask"] - whole["mask"]).abs() > 1e-6).float().mean() < 1e-3
    dm.device_augmentation.restart()
    assert not torch.equal(dm.model_inputs(default_collate([train[i] for i in range(8)]), augment=False)["source"], from_slab["source"])


def test_the_slab_bound_holds_at_the_largest_rotation_scaling_and_shift(synthetic_cohort):
    import itertools
    import math

    import monai.transforms.utils as mtu

    from defacegan.augment import DeviceAugmentation

    options = {"affine": {"prob": 1, "degrees": 20, "scales": 0.2, "translation": 12}, "flip": {"prob": 1}}
    augmentation = DeviceAugmentation(options, keys=("face",), spacing=4.0)
    shape, planes = (64, 48, 40), (31, 34)
    lo, hi = augmentation.read_planes(planes, shape)
    assert 0 < lo and hi < 64
    corners = [
        mtu.create_translate(3, shift, backend="torch") @ mtu.create_rotate(3, angles, backend="torch")
        @ mtu.create_scale(3, scales, backend="torch")
        for angles in itertools.product(*[(-math.radians(20), math.radians(20))] * 3)
        for scales in itertools.product((0.8, 1.2), repeat=3)
        for shift in itertools.product((-3, 3), repeat=3)
    ]
    mirrored = torch.stack(corners).double() @ torch.diag(torch.tensor([-1.0, 1, 1, 1], dtype=torch.float64))
    # where the corners of the wanted planes come from: input X (about the grid's centre) of each pose
    centre = [(n - 1) / 2 for n in shape]
    ends = torch.tensor([planes[0], planes[1] - 1], dtype=torch.float64) - centre[0]
    wanted = torch.cartesian_prod(ends, *[torch.tensor([-c, c], dtype=torch.float64) for c in centre[1:]])
    for theta in (torch.stack(corners).double(), mirrored):
        reached = wanted @ theta[:, 0, :3].T + theta[:, 0, 3] + centre[0]
        assert lo <= math.floor(float(reached.min())) and math.ceil(float(reached.max())) + 1 <= hi


def test_the_mask_is_the_removed_share_of_each_pixel(synthetic_cohort):
    """At the grid's own size the mask is the removed voxels; smaller, its strict region holds
    nothing of the defaced input, where a share thresholded at one half lets anatomy in."""
    coarse = datamodule(synthetic_cohort, task="translate", direction="reface", n_slices=3, size=32)
    batch = first_batch(coarse, "val")
    assert (batch["source"][strict_region(batch["mask"])] == -1).all()
    assert (batch["source"][batch["mask"] >= 0.5] > -1).any()
    native = datamodule(synthetic_cohort, task="translate", direction="reface", n_slices=3, size=48)
    raw = next(iter(native.val_dataloader()))
    assert raw["removed"].shape[2] == 3  # val and test read only the planes they slice
    removed = raw["removed"][:, 0].transpose(-1, -2).flip(-2).float()  # as the slices are displayed
    assert torch.equal(native.on_after_batch_transfer(raw, 0)["mask"], removed)


def test_unpaired_train_batches_take_the_target_from_another_subject(synthetic_cohort):
    from torch.utils.data import default_collate

    dm = datamodule(synthetic_cohort, task="translate", direction="reface", unpaired=True, batch_size=8)
    train = dm.datasets["train"]
    faces = {item.subject: item for item in train.items}
    torch.manual_seed(0)
    samples = [train[i % len(train)] for i in range(24)]
    assert all(sample["target_subject"] != sample["subject"] for sample in samples)
    assert len({(sample["subject"], sample["target_subject"]) for sample in samples}) > len(faces)  # drawn afresh
    batch = dm.model_inputs(default_collate(samples[:8]))
    partners = [faces[subject] for subject in batch["target_subject"]]
    expected = full_volume_inputs(dm, partners, augment=False)["target"]
    torch.testing.assert_close(batch["target"], expected)
    paired = first_batch(dm, "val")
    assert paired["target_subject"] == paired["subject"]
    with pytest.raises(ValueError, match="two subjects"):
        from defacegan.datamodule import VolumeDataset

        VolumeDataset(train.items[:1], 4.0, unpaired="face")
