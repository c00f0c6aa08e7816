"""The re-facing audit's scores: the strict region on real masks, pasting, tissue-only image
scores, the seam, and the two re-identification matchers."""

from __future__ import annotations

import math

import pytest
import torch

from defacegan.metrics import (
    MAX_PSNR_DB,
    SEAM_PX,
    frontal_depth,
    image_scores,
    paste,
    reface_audit,
    seam_region,
    strict_region,
    surface_similarity,
    top_k_hits,
    voxel_similarity,
)
from defacegan.views import robust_scale, sagittal_slices


def generated_heads(n: int = 6, shape=(24, 40, 40), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, X, Y, Z) RAS heads, each an ellipsoid with a nose of its own length and height (all
    different), and one removed region (the anterior-inferior box, where the face is) shared by all."""
    rng = torch.Generator().manual_seed(seed)
    x, y, z = torch.meshgrid(*[torch.linspace(-1, 1, k) for k in shape], indexing="ij")
    heads = []
    for length in torch.linspace(0.05, 0.2, n)[torch.randperm(n, generator=rng)]:
        height = -0.4 + 0.3 * torch.rand(1, generator=rng)
        skull = (x**2 + y**2 / 0.7 + z**2) < 0.6
        nose = (x.abs() < 0.3) & ((z - height).abs() < 0.15) & (y > 0) & (y < 0.77 + length)
        heads.append((skull | nose).float() * (0.6 + 0.1 * torch.rand(shape, generator=rng)))
    removed = ((y > 0.3) & (z < 0.1)).float()
    return torch.stack(heads)[:, None], removed[None, None].expand(n, 1, *shape)


@pytest.fixture(scope="module")
def head(request) -> tuple[torch.Tensor, torch.Tensor]:
    """A face volume and the defacer's removed region, (1, 1, X, Y, Z): pydeface's mask registered
    onto a real IXI head when the subset is there, else a generated head."""
    try:
        bundle = request.getfixturevalue("held_out_bundle")
    except pytest.skip.Exception:
        return generated_heads(1)
    return torch.from_numpy(bundle.face)[None, None], torch.from_numpy(bundle.face_region)[None, None].float()


@pytest.mark.parametrize("size", [64, 128])
def test_no_intact_voxel_lies_inside_the_strict_region_of_a_real_mask(head, size):
    face, removed = head
    defaced = face * (1 - removed)
    n_slices = min(15, face.shape[2])
    share = sagittal_slices(removed, size, n_slices, 1.0)
    zero_filled = sagittal_slices(defaced, size, n_slices, robust_scale(defaced))
    strict = strict_region(share)
    assert strict.sum() > 50
    assert (zero_filled[strict] == 0).all()  # not one intact voxel contributes to a scored pixel
    truth = sagittal_slices(face, size, n_slices, robust_scale(defaced))
    assert (truth[strict] > 0).any()  # ... and the true face is there to be scored
    # The thresholded region the audit used before still holds anatomy where it is resized.
    border = (share >= 0.5) & ~strict
    assert (zero_filled[border] > 0.05).any() == (face.shape[-1] != size)


def test_pasting_keeps_the_scan_outside_and_the_candidate_inside():
    faces, removed = generated_heads(2)
    share = sagittal_slices(removed, 20, 5, 1.0)
    truth = sagittal_slices(faces, 20, 5, 1.0) * 2 - 1
    defaced = sagittal_slices(faces * (1 - removed), 20, 5, 1.0) * 2 - 1
    candidate = torch.rand_like(truth) * 2 - 1
    pasted = paste(candidate, defaced, share)
    strict, intact = strict_region(share), share == 0
    assert torch.equal(pasted[intact], truth[intact]) and torch.allclose(pasted[strict], candidate[strict])
    seam = ~strict & ~intact
    assert seam.any() and torch.allclose(pasted[seam], defaced[seam] + share[seam] * (candidate[seam] + 1))
    # The true face pasted in is the true face wherever the scan is strictly removed or intact.
    assert torch.allclose(paste(truth, defaced, share)[strict | intact], truth[strict | intact])


def test_image_scores_count_tissue_only_and_an_offset_gives_the_known_mae_and_psnr():
    faces, removed = generated_heads(3)
    share = sagittal_slices(removed, 20, 5, 1.0)
    truth = sagittal_slices(faces, 20, 5, 1.0) * 2 - 1
    perfect = image_scores(truth, truth, share)
    assert torch.allclose(perfect["ssim_face"], torch.ones(3)) and (perfect["mae_face"] == 0).all()
    assert (perfect["psnr_face"] == MAX_PSNR_DB).all()
    strict_air = strict_region(share) & (truth < -0.9)
    assert strict_air.any()
    wrong_air = image_scores(torch.where(strict_air, torch.ones_like(truth), truth), truth, share)
    assert (wrong_air["mae_face"] == 0).all()  # air in the true image is not scored
    offset = image_scores(truth + 0.25 * strict_region(share), truth, share)
    assert offset["mae_face"] == pytest.approx([0.25] * 3)
    assert offset["psnr_face"] == pytest.approx([10 * math.log10(2**2 / 0.25**2)] * 3)


def test_the_seam_is_a_ring_across_the_edge():
    share = torch.zeros(1, 1, 16, 16)
    share[..., 5:11, 5:11] = 1  # a hard-edged 6×6 region: the ring reaches SEAM_PX either side
    ring = seam_region(share)
    assert ring.sum() == (6 + 2 * SEAM_PX) ** 2 - (6 - 2 * SEAM_PX) ** 2
    assert not ring[..., 8, 8] and ring[..., 5, 5] and ring[..., 4, 4] and not ring[..., 0, 0]


def test_frontal_depth_counts_the_region_in_front_of_the_surface():
    image = torch.full((1, 2, 12), -1.0)
    image[0, 0, :7] = 1  # row 0: tissue up to column 6, the face looking right
    region = torch.zeros(1, 2, 12, dtype=torch.bool)
    region[..., 4:11] = True
    depth, surface = frontal_depth(image, region)
    assert depth.tolist() == [[4.0, 7.0]] and surface.tolist() == [[True, False]]


@pytest.mark.parametrize("matcher", [voxel_similarity, surface_similarity])
def test_both_matchers_know_a_face_and_leave_a_blank_at_chance(matcher):
    faces, removed = generated_heads(6)
    share = sagittal_slices(removed, 40, 5, 1.0)
    truth = sagittal_slices(faces, 40, 5, 1.0) * 2 - 1
    assert top_k_hits(matcher(truth, truth, share), 1).tolist() == [1.0] * 6
    blank = matcher(torch.full_like(truth, -1), truth, share)
    assert blank.isnan().all()
    assert top_k_hits(blank, 1) == pytest.approx([1 / 6] * 6) and top_k_hits(blank, 5) == pytest.approx([5 / 6] * 6)


def test_the_audit_scores_each_candidate_against_chance_with_intervals():
    faces, removed = generated_heads(6)
    share = sagittal_slices(removed, 20, 5, 1.0)
    truth = sagittal_slices(faces, 20, 5, 1.0) * 2 - 1
    defaced = sagittal_slices(faces * (1 - removed), 20, 5, 1.0) * 2 - 1
    results = reface_audit({"truth": truth, "zero_fill": torch.full_like(truth, -1)}, defaced, truth, share)
    assert set(results) == {"truth", "zero_fill", "chance"}
    assert results["chance"] == {f"{m}_top{k}": min(k, 6) / 6 for m in ("voxel", "surface") for k in (1, 5)} | {"n_subjects": 6}
    # The true face pasted in: exact on the strict region (SSIM's window reaches into the seam).
    assert results["truth"]["voxel_top1"] == 1 and results["truth"]["mae_face"] == 0
    assert results["truth"]["ssim_face"] == pytest.approx(1, abs=1e-2)
    zero = results["zero_fill"]
    for key in ("voxel_top1", "surface_top1", "voxel_top5"):
        assert zero[key] == pytest.approx(results["chance"][key])
        assert zero[f"{key}_low"] < zero[key] < zero[f"{key}_high"]
    assert zero["mae_face"] > 0.5 and zero["n_subjects"] == 6
