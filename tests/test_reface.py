"""Re-facing a scan in 3D (`defacegan reface`); the audit's scores are tested in test_metrics_audit."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from defacegan.cli import main
from defacegan.deface import deface
from defacegan.io import Scan, ScanError, load_scan
from defacegan.models.pix2pix import Pix2Pix
from defacegan.reface import face_region, load_refacer, reface_scan
from defacegan.views import sagittal_planes, sagittal_slices


# -- 3D re-facing --------------------------------------------------------------------------------------

def test_sagittal_planes_undo_the_views_layout():
    planes = torch.rand(3, 1, 1, 20, 14)
    assert torch.equal(sagittal_planes(sagittal_slices(planes, 20, 1, 1.0)[:, 0], (20, 14)), planes[:, 0, 0])
    # At another image size the resizing blurs a little, but moves nothing.
    y, z = torch.meshgrid(torch.arange(20.0), torch.arange(14.0), indexing="ij")
    blob = torch.exp(-((y - 13) ** 2 + (z - 4) ** 2) / 8)
    back = sagittal_planes(sagittal_slices(blob[None, None, None], 40, 1, 1.0)[:, 0], (20, 14))[0]
    assert divmod(int(back.argmax()), 14) == (13, 4) and (back - blob).abs().max() < 0.1


@pytest.fixture(scope="module")
def defaced_head(tmp_path_factory):
    """A noisy ellipsoid 'head' stored LPS (not RAS), its anterior-inferior box zero-filled."""
    rng = np.random.default_rng(0)
    shape = (30, 34, 26)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = ((x**2 + y**2 + z**2) < 0.8) * (100 + 10 * rng.standard_normal(shape))
    removed = (y < -0.3) & (z < 0)  # stored LPS: low y is anterior
    head[removed] = 0
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    affine[:3, 3] = [45, 50, -39]
    folder = tmp_path_factory.mktemp("head")
    nib.save(nib.Nifti1Image(head.astype(np.float32), affine), folder / "defaced.nii.gz")
    nib.save(nib.Nifti1Image(removed.astype(np.uint8), affine), folder / "removed.nii.gz")
    return folder


def test_reface_changes_the_removed_region_only(pix2pix_ckpt, defaced_head, tmp_path):
    source, mask = defaced_head / "defaced.nii.gz", defaced_head / "removed.nii.gz"
    output = tmp_path / "refaced.nii.gz"
    assert main(["reface", str(source), "-o", str(output), "--ckpt", str(pix2pix_ckpt), "--mask", str(mask)]) == 0

    before, after, removed = load_scan(source), load_scan(output), load_scan(mask).data > 0
    assert np.array_equal(nib.load(output).affine, nib.load(source).affine)  # the input's space and voxel order
    assert np.array_equal(after.data[~removed], before.data[~removed])
    assert np.isfinite(after.data).all() and (after.data[removed] != 0).any()


def test_reface_scan_keeps_what_the_standard_grid_does_not_cover(defaced_head):
    scan = load_scan(defaced_head / "defaced.nii.gz")
    narrow = Pix2Pix(size=32, spacing=4.0, grid_shape=(16, 16, 16), generator={"base_channels": 4}).eval()
    refaced = reface_scan(scan, narrow, np.ones(scan.data.shape, bool))  # 64 mm of a 90×102×78 mm scan
    assert refaced.shape == scan.data.shape and refaced.dtype == np.float32
    assert np.array_equal(refaced[:4], scan.data[:4]) and not np.array_equal(refaced, scan.data)
    with pytest.raises(ScanError, match="no removed region"):
        reface_scan(scan, narrow, np.zeros(scan.data.shape, bool))
    with pytest.raises(ScanError, match="does not match"):
        reface_scan(scan, narrow, np.ones((2, 2, 2), bool))


def test_reface_reports_unusable_inputs_and_keeps_going(pix2pix_ckpt, defaced_head, tmp_path, capsys):
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), empty)
    source = defaced_head / "defaced.nii.gz"
    args = ["reface", str(source), "-o", str(tmp_path / "out.nii.gz"), "--ckpt", str(pix2pix_ckpt)]
    assert main([*args, "--mask", str(empty)]) == 2
    assert main(["reface", str(empty), "-o", str(tmp_path / "x.nii.gz"), "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "not a usable Pix2Pix or CycleGAN checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_the_face_region_of_a_real_head_is_found_and_refused_while_the_face_is_there(ixi_scans, pix2pix_ckpt, tmp_path):
    scan = load_scan(ixi_scans[0])
    with pytest.raises(ScanError, match="looks intact"):
        face_region(scan)
    defaced = deface(scan, ("mask",))["mask"]
    defaced_scan = Scan(defaced.defaced, scan.affine, scan.original, scan.path)
    region = face_region(defaced_scan)
    assert region.any() and not defaced_scan.data[region].any()
    refaced = reface_scan(defaced_scan, load_refacer(pix2pix_ckpt, device="cpu"), region)
    assert np.array_equal(refaced[~region], defaced_scan.data[~region])
