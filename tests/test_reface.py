"""Re-facing audit: masked similarity scores, re-identification, and 3D re-facing of a scan."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from defacegan.cli import main
from defacegan.deface import deface
from defacegan.io import Scan, ScanError, load_scan
from defacegan.metrics import MAX_PSNR_DB, dilate, image_similarity, reface_audit, reidentification
from defacegan.models.pix2pix import Pix2Pix
from defacegan.reface import face_region, load_pix2pix, reface_scan
from defacegan.views import sagittal_planes, sagittal_slices


def toy_slices(n: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images in [-1, 1] and a removed box on the right (the face side)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    mask = torch.zeros_like(images)
    mask[..., 10:22, 20:30] = 1
    return images, mask


# -- image similarity -------------------------------------------------------------------------------

def test_identical_images_score_perfectly():
    images, mask = toy_slices()
    scores = image_similarity(images, images, mask)
    assert scores["ssim_face"] == pytest.approx(1) and scores["ssim_slice"] == pytest.approx(1)
    assert scores["mae_face"] == 0 and scores["psnr_face"] == MAX_PSNR_DB


def test_an_offset_inside_the_region_gives_the_known_mae_and_psnr():
    images, mask = toy_slices()
    shifted = images + 0.25 * mask
    scores = image_similarity(shifted, images, mask, dilation=0)
    assert scores["mae_face"] == pytest.approx(0.25)
    assert scores["psnr_face"] == pytest.approx(10 * math.log10(2**2 / 0.25**2))
    assert scores["mae_slice"] == pytest.approx(0.25 * mask.mean().item())
    assert scores["ssim_face"] < 1


def test_pixels_outside_the_region_do_not_change_the_face_scores():
    images, mask = toy_slices()
    prediction = images + 0.1 * mask
    beyond_window = 1 - dilate(mask, 3 + 5)  # outside the grown region and its SSIM window
    elsewhere = prediction + torch.rand_like(prediction) * beyond_window

    def face_scores(candidate):
        return {k: v for k, v in image_similarity(candidate, images, mask).items() if k.endswith("_face")}

    assert face_scores(elsewhere) == pytest.approx(face_scores(prediction))
    mae_slice = [image_similarity(candidate, images, mask)["mae_slice"] for candidate in (elsewhere, prediction)]
    assert mae_slice[0] > mae_slice[1]


def test_the_region_is_grown_by_the_dilation():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8, 8] = 1
    assert dilate(mask, 3).sum() == 49 and dilate(mask, 0).sum() == 1


def test_an_empty_region_is_left_out_of_the_face_means():
    images, mask = toy_slices(n=2)
    mask[1] = 0
    assert image_similarity(images + 0.5 * mask, images, mask, dilation=0)["mae_face"] == pytest.approx(0.5)


# -- re-identification -------------------------------------------------------------------------------

def test_refaced_faces_close_to_their_originals_are_all_recognised():
    faces, masks = toy_slices(n=12)
    noisy = faces + 0.05 * torch.randn(faces.shape, generator=torch.Generator().manual_seed(1))
    assert reidentification(noisy, faces, masks) == {"reid_top1": 1.0, "reid_top5": 1.0}


def test_unrelated_faces_are_recognised_at_about_chance():
    faces, masks = toy_slices(n=30)
    others, _ = toy_slices(n=30, seed=7)
    rates = reidentification(others, faces, masks)
    assert rates["reid_top1"] < 0.2 and rates["reid_top5"] < 0.5


def test_a_constant_guess_scores_exactly_chance():
    faces, masks = toy_slices(n=10)
    rates = reidentification(torch.full_like(faces, -1), faces, masks)
    assert rates == pytest.approx({"reid_top1": 0.1, "reid_top5": 0.5})


def test_the_audit_puts_the_generator_next_to_both_baselines_and_chance():
    faces, masks = toy_slices(n=8)
    faces = faces.reshape(4, 2, *faces.shape[-2:])  # 4 subjects × 2 slices
    masks = masks.reshape(faces.shape)
    defaced = torch.where(masks > 0, -1.0, faces)
    results = reface_audit(faces, defaced, faces, masks, average_face=faces.mean(0))
    assert set(results) == {"pix2pix", "defaced", "average_face", "chance"}
    assert results["pix2pix"]["ssim_face"] == pytest.approx(1) and results["pix2pix"]["reid_top1"] == 1
    assert results["defaced"]["reid_top1"] == pytest.approx(0.25)
    assert results["defaced"]["mae_slice"] > results["average_face"]["mae_slice"] > 0
    assert results["chance"] == {"reid_top1": 0.25, "reid_top5": 1.0}
    assert "average_face" not in reface_audit(faces, defaced, faces, masks)


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
    assert "not a usable Pix2Pix checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_the_face_region_of_a_real_head_is_found_and_refused_while_the_face_is_there(ixi_scans, pix2pix_ckpt, tmp_path):
    scan = load_scan(ixi_scans[0])
    with pytest.raises(ScanError, match="looks intact"):
        face_region(scan)
    defaced = deface(scan, ("mask",))["mask"]
    defaced_scan = Scan(defaced.defaced, scan.affine, scan.original, scan.path)
    region = face_region(defaced_scan)
    assert region.any() and not defaced_scan.data[region].any()
    refaced = reface_scan(defaced_scan, load_pix2pix(pix2pix_ckpt, device="cpu"), region)
    assert np.array_equal(refaced[~region], defaced_scan.data[~region])
