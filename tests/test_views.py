"""The six views and the sagittal slices: values, axis order, orientation, padding, scaling, devices."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defacegan.views import FACE_BOX, VIEW_MODES, VIEW_NAMES, _fine_detail, compute_views, robust_scale, sagittal_slices


def block_volume(shape=(8, 8, 8), block=(slice(2, 5), slice(3, 7), slice(1, 4))) -> np.ndarray:
    """Zeros with a block of ones: its robust scale is exactly 1."""
    volume = np.zeros(shape, np.float32)
    volume[block] = 1
    return volume


def displayed(plane: np.ndarray) -> np.ndarray:
    """The documented display of a RAS plane (first, second axis): second axis up, first rightwards."""
    return np.flipud(plane.T)


def expected_views(volume: np.ndarray) -> np.ndarray:
    planes = {
        "mean_sagittal": volume.mean(0),
        "mean_coronal": volume.mean(1),
        "mean_axial": volume.mean(2),
        "slice_sagittal": volume[volume.shape[0] // 2],
        "slice_coronal": volume[:, volume.shape[1] // 2],
        "slice_axial": volume[:, :, volume.shape[2] // 2],
    }
    return np.stack([displayed(planes[name]) for name in VIEW_NAMES[:6]])


def as_batch(*volumes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(volumes))[:, None]


def test_views_of_a_block_are_its_means_and_middle_slices():
    volume = block_volume()
    views = compute_views(as_batch(volume), size=8)
    assert views.shape == (1, 6, 8, 8) and views.dtype == torch.float32
    np.testing.assert_allclose(views[0].numpy(), expected_views(volume), atol=1e-6)
    assert views[0, 0].max() == pytest.approx(3 / 8)  # 3 of the 8 voxels along X are inside


def test_orientation_superior_up_face_right_patient_right_on_the_right():
    volume = np.zeros((9, 9, 9), np.float32)
    volume[4, 8, 4] = 1  # anterior end of the middle, on the sagittal and axial middle slices
    volume[4, 4, 8] = 2  # superior end, on the sagittal and coronal middle slices
    volume[8, 4, 4] = 3  # the patient's right end, on the coronal and axial middle slices
    views = compute_views(as_batch(volume), size=9)[0] * 3  # robust scale = the largest of three voxels
    sagittal, coronal, axial = (views[VIEW_NAMES.index(f"slice_{plane}")] for plane in ("sagittal", "coronal", "axial"))
    expected = {  # (image, row, column): voxel value
        (0, 4, 8): 1, (0, 0, 4): 2,  # sagittal: the face at the right edge, superior at the top
        (1, 0, 4): 2, (1, 4, 8): 3,  # coronal: superior at the top, the patient's right on the right
        (2, 0, 4): 1, (2, 4, 8): 3,  # axial: anterior at the top, the patient's right on the right
    }
    images = (sagittal, coronal, axial)
    for (image, row, column), value in expected.items():
        assert images[image][row, column].item() == pytest.approx(value)
    assert sum(int((image > 0).sum()) for image in images) == len(expected)


def test_non_square_planes_are_padded_centred():
    volume = np.ones((8, 16, 8), np.float32)  # sagittal plane is 8 rows (Z) x 16 columns (Y)
    sagittal = compute_views(as_batch(volume), size=16, mode="mean")[0, 0]
    assert (sagittal[:4] == 0).all() and (sagittal[12:] == 0).all() and (sagittal[4:12] == 1).all()


@pytest.mark.parametrize("size", [4, 32])
def test_resizing_keeps_a_uniform_head_uniform(size):
    views = compute_views(torch.full((1, 1, 16, 16, 16), 5.0), size)
    assert views.shape == (1, 6, size, size)
    torch.testing.assert_close(views, torch.ones_like(views))


def test_robust_scaling_ignores_gain_and_a_hot_voxel():
    volume = block_volume((16, 16, 16), (slice(2, 14),) * 3)  # 1728 voxels of 1
    torch.testing.assert_close(compute_views(as_batch(volume * 1000), 16), compute_views(as_batch(volume), 16))
    volume[8, 8, 8] = 1e6  # one outlier is above the 99.5th percentile of the nonzero voxels
    assert robust_scale(as_batch(volume * 1000)).item() == pytest.approx(1000)
    assert robust_scale(torch.zeros(1, 1, 4, 4, 4)).item() == 1  # no signal: left as is


def test_batch_items_are_independent_and_modes_select_views():
    a, b = block_volume(), 7 * block_volume(block=(slice(0, 8), slice(0, 2), slice(5, 8)))
    together = compute_views(as_batch(a, b), 8, "all_face_texture")
    alone = torch.cat([compute_views(as_batch(a), 8, "all_face_texture"), compute_views(as_batch(b), 8, "all_face_texture")])
    torch.testing.assert_close(together, alone)
    for mode, indices in VIEW_MODES.items():
        torch.testing.assert_close(compute_views(as_batch(a, b), 8, mode), together[:, list(indices)])
    with pytest.raises(ValueError, match="view mode"):
        compute_views(as_batch(a), 8, "diagonal")


def test_face_views_show_the_front_of_the_head_at_full_resolution():
    """A 32³ head whose face box holds a nose: the depth render is brightest at the nose tip and
    dark where no skin is; the face slice is the box's middle sagittal plane, not downsampled."""
    volume = np.zeros((32, 32, 32), np.float32)
    volume[6:26, 4:24, 4:28] = 1  # the head, its front at y = 23
    volume[15:17, 24:27, 10:13] = 1  # a nose, 3 voxels further out
    views = compute_views(as_batch(volume), 16, "all_face")[0]
    sagittal, coronal, depth = (views[VIEW_NAMES.index(name)].numpy() for name in ("face_sagittal", "face_coronal", "face_depth"))
    (x0, x1), (y0, y1), (z0, z1) = (tuple(round(f * 32) for f in box) for box in FACE_BOX)
    np.testing.assert_array_equal(sagittal, displayed(volume[(x0 + x1) // 2, y0:y1, z0:z1]))
    np.testing.assert_allclose(coronal, displayed(volume[x0:x1, y0:y1, z0:z1].mean(1)), atol=1e-6)
    nose = displayed(np.pad(np.ones((2, 3)), ((15 - x0, x1 - 17), (10 - z0, z1 - 13))))  # (x, z) of the nose in the box
    assert depth[nose > 0].max() == pytest.approx((y1 - y0 - (y1 - 1 - 26)) / (y1 - y0))
    np.testing.assert_allclose(depth[nose == 0], (y1 - y0 - (y1 - 1 - 23)) / (y1 - y0))  # the face's front, y = 23


def test_the_texture_view_reads_the_faces_fine_texture_against_the_heads_own():
    """A head with the same noise in all its tissue reads about as much texture in its face as in
    its back (shown halved: about 0.5); the same head with a smooth face reads far less, and the
    rays that meet no skin read 0."""
    rng = np.random.default_rng(0)
    volume = np.zeros((32, 32, 32), np.float32)
    volume[11:21, 4:24, 4:28] = 1 + 0.2 * rng.standard_normal((10, 20, 24))  # narrower than the face box
    smooth_face = volume.copy()
    smooth_face[11:21, 18:24, 4:28] = 1.0  # the front 6 voxels
    texture = VIEW_NAMES.index("face_texture")
    noisy, smooth = (compute_views(as_batch(v), 16, "all_face_texture")[0, texture] for v in (volume, smooth_face))
    face = noisy > 0
    assert 0.35 < noisy[face].mean() < 0.65
    assert smooth[face].mean() < 0.6 * noisy[face].mean()
    assert (~face).any() and (smooth[~face] == 0).all()  # beside the head
    assert 0 <= smooth.min() and noisy.max() <= 1


def test_the_fine_detail_of_a_part_of_the_grid_is_the_whole_grids_there():
    """The texture view filters only the face box and the back half, each with a one-voxel margin:
    the same values to the bit as the whole grid filtered, inside the grid and at its edges."""
    volumes = torch.from_numpy(np.random.default_rng(0).random((2, 1, 20, 24, 18)).astype(np.float32))
    whole = (volumes - F.avg_pool3d(volumes, 3, stride=1, padding=1, count_include_pad=False)).abs()
    for part in ([slice(5, 15), slice(12, 24), slice(3, 11)], [slice(0, 20), slice(0, 12), slice(0, 18)]):
        assert torch.equal(_fine_detail(volumes, part), whole[(..., *part)])


def test_sagittal_slices_match_the_sagittal_view_and_take_a_given_scale():
    volume = np.random.default_rng(0).random((9, 8, 8)).astype(np.float32)
    batch = as_batch(volume, 2 * volume)
    middle = sagittal_slices(batch, 8)
    torch.testing.assert_close(middle, compute_views(batch, 8, "slice")[:, :1])
    three = sagittal_slices(batch, 8, n_slices=3)
    assert three.shape == (2, 3, 8, 8)
    scale = robust_scale(batch)
    for k, x in enumerate((3, 4, 5)):
        np.testing.assert_allclose(three[0, k].numpy(), np.clip(displayed(volume[x]) / scale[0].item(), 0, 1), atol=1e-6)
    # The twin scaled by the first volume's factor is twice as bright (before clamping).
    shared = sagittal_slices(batch, 8, scale=scale[0] * 4)
    torch.testing.assert_close(shared[1], 2 * shared[0])
    with pytest.raises(ValueError, match="sagittal slices"):
        sagittal_slices(batch, 8, n_slices=11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("size", [32, 256])
def test_cpu_and_gpu_agree(size):
    volumes = torch.rand(2, 1, 96, 112, 80) * torch.tensor([1.0, 300.0]).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(compute_views(volumes.cuda(), size).cpu(), compute_views(volumes, size), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        sagittal_slices(volumes.cuda(), size, 3).cpu(), sagittal_slices(volumes, size, 3), atol=1e-5, rtol=0
    )
