"""The input contract: one scan → the same tensor on the training path and the check path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from defacegan.contract import InputContract
from defacegan.detector_training import draw
from defacegan.families import make_bundle
from defacegan.inference import GridDataset
from defacegan.io import load_scan

COARSE = InputContract(spacing=4.0, shape=(64, 64, 64), view_size=32)


def world_ramp(shape, affine) -> np.ndarray:
    """A linear function of world position (mm), sampled at each voxel of a grid."""
    voxels = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    return (100 + world @ np.array([1.0, 2.0, 3.0])).astype(np.float32)


def test_the_grid_puts_every_value_at_its_world_position_for_an_oblique_scan():
    shape = (60, 70, 40)
    affine = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.2, 0.1, -0.15) @ np.diag([1.5, 1.2, 2.0]),
                                     [-40.0, -35.0, -30.0])
    ours = COARSE.on_grid(world_ramp(shape, affine), affine)
    centre = affine @ np.append((np.asarray(shape) - 1) / 2, 1)
    grid_affine = COARSE.grid_affine.copy()
    grid_affine[:3, 3] = centre[:3] - COARSE.spacing * (np.asarray(COARSE.shape) - 1) / 2
    expected = torch.from_numpy(world_ramp(COARSE.shape, grid_affine))
    # Inside the scan, away from its edges (where zero padding enters the interpolation).
    inside = torch.from_numpy(ndimage.binary_erosion(ours.numpy() > 0, iterations=2))
    assert inside.sum() > 2000
    assert torch.allclose(ours[inside], expected[inside], atol=0.5)


def test_voxel_order_on_disk_does_not_matter():
    shape = (30, 36, 24)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = world_ramp(shape, affine)
    flipped = nib.as_closest_canonical(nib.Nifti1Image(data, affine)).slicer[::-1, :, ::-1]
    assert torch.allclose(COARSE.on_grid(data, affine), COARSE.on_grid(np.asanyarray(flipped.dataobj), flipped.affine), atol=1e-3)


def test_the_contract_round_trips_through_a_plain_dict():
    values = COARSE.to_dict()
    assert all(isinstance(v, (int, float, str, list)) for v in values.values())
    assert InputContract.from_dict(values) == COARSE
    with pytest.raises(ValueError, match="view_mode"):
        InputContract(view_mode="diagonal")


def test_training_and_check_see_the_same_tensor_for_the_same_scan(ixi_scans):
    path = ixi_scans[1]
    scan = load_scan(path)
    bundle = make_bundle(scan, "IXI", COARSE)
    checked = GridDataset([path], COARSE)[0]["volume"]
    assert torch.equal(checked[0], torch.from_numpy(bundle.face))
    trained = draw([bundle], COARSE, families=("none",), draws=1, pose=None)
    assert torch.equal(trained.views, COARSE.views(checked[None]))
    assert trained.label.tolist() == [0]
