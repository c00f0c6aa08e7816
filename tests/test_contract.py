"""The input contract: one scan → the same tensor on the training path and the check path."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from defacegan.contract import InputContract, Placement, box_means, flattened, gaussian_blur, plane_rotation, turned, without_air
from defacegan.detector_data import draw_bundle, subject_of
from defacegan.features import ball_closing, fill_holes, head_mask
from defacegan.inference import GridDataset
from defacegan.io import load_scan
from defacegan.views import robust_scale
from support.artefacts import ghosted

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


def test_the_grid_sits_on_the_head_whatever_the_field_of_view(ixi_scans):
    """The same head with 60 mm more neck below and 20 mm more air above lands on the same grid
    voxels: the grid follows the head's back, top and middle, not the field of view's centre."""
    scan = load_scan(ixi_scans[0])
    data = scan.data
    step = scan.affine[:3, :3] @ [0, 0, 1]
    padded = np.concatenate([np.zeros((*data.shape[:2], 30), np.float32), data, np.zeros((*data.shape[:2], 10), np.float32)], 2)
    affine = scan.affine.copy()
    affine[:3, 3] -= 30 * step
    contracts = {"head": InputContract(), "fov": InputContract(anchor="fov")}
    head_same, fov_same = (contracts[a].volume(data, scan.affine) for a in ("head", "fov"))
    head_moved, fov_moved = (contracts[a].volume(padded, affine) for a in ("head", "fov"))
    assert torch.allclose(head_same, head_moved, atol=1e-3)
    assert (fov_same - fov_moved).abs().mean() > 10 * (head_same - head_moved).abs().mean() + 1e-3


def test_a_straightened_grid_puts_every_value_at_its_world_position():
    """Grid voxel g of a grid turned by R about its centre c samples the world at
    c + R (spacing g - spacing (shape - 1) / 2)."""
    shape, affine = (40, 44, 36), np.diag([2.0, 2.0, 2.0, 1.0])
    turn = plane_rotation(0, 1, 25) @ plane_rotation(0, 2, -15)
    placed = Placement(np.array([38.0, 44.0, 34.0]), rotation=turn)
    ours = COARSE.on_grid(world_ramp(shape, affine), affine, placed=placed)
    grid_affine = np.eye(4)
    grid_affine[:3, :3] = turn * COARSE.spacing
    grid_affine[:3, 3] = placed.centre - turn @ (COARSE.spacing * (np.asarray(COARSE.shape) - 1) / 2)
    expected = torch.from_numpy(world_ramp(COARSE.shape, grid_affine))
    inside = torch.from_numpy(ndimage.binary_erosion(ours.numpy() > 0, iterations=2))
    assert inside.sum() > 2000
    assert torch.allclose(ours[inside], expected[inside], atol=0.5)


@pytest.mark.parametrize("rotation", [plane_rotation(0, 1, 30), plane_rotation(0, 2, -30),
                                      plane_rotation(0, 1, -20) @ plane_rotation(0, 2, 20)],
                         ids=["turned", "rolled", "turned-and-rolled"])
def test_a_head_turned_beyond_the_training_poses_is_straightened(ixi_scans, rotation):
    """A real head turned or rolled in the coil further than the training poses reach gets a grid
    turned with it: its left-right axis goes where the turn took the head's (within 3 degrees) and
    the model input is the straight head's (correlation above 0.92, where a 10 degree turn left
    alone gives 0.88-0.92; a turn and a roll together also nod the head a little, which no mirror
    shows and the straightening leaves)."""
    contract = InputContract()
    scan = load_scan(ixi_scans[0])
    straight = contract.place(scan.data, scan.affine)
    assert not straight.straightened
    placed = contract.place(scan.data, turned(scan.affine, rotation))
    assert placed.straightened
    assert np.degrees(np.arccos(np.clip(placed.rotation[:, 0] @ rotation[:, 0], -1, 1))) < 3
    ours = contract.volume(scan.data, turned(scan.affine, rotation), placed)[0].flatten().numpy()
    assert np.corrcoef(ours, contract.volume(scan.data, scan.affine)[0].flatten().numpy())[0, 1] > 0.92


def test_heads_within_the_training_poses_are_left_as_they_lie(ixi_scans):
    """Every IXI head as stored (within 4 degrees of symmetric), and one turned by 5 degrees, keeps
    the world-aligned grid: the input of every scan the detector was trained on is unchanged."""
    contract = InputContract()
    for path in ixi_scans:
        scan = load_scan(path)
        assert not contract.place(scan.data, scan.affine).straightened, path.name
    assert not contract.place(scan.data, turned(scan.affine, plane_rotation(0, 1, 5))).straightened


@pytest.mark.parametrize("sigma", [0.7, 3.0, 8.2])
def test_the_mirror_readings_blur_is_scipys(sigma):
    """The pose reading blurs in torch (SciPy's import would slow `check`'s start) and must blur as SciPy does."""
    image = np.random.default_rng(3).random((40, 57))
    assert np.allclose(gaussian_blur(torch.as_tensor(image), sigma).numpy(), ndimage.gaussian_filter(image, sigma), atol=1e-12)


def test_the_contract_round_trips_through_a_plain_dict():
    values = COARSE.to_dict()
    assert all(v is None or isinstance(v, (int, float, str, list)) for v in values.values())
    assert InputContract.from_dict(values) == COARSE
    with pytest.raises(ValueError, match="view_mode"):
        InputContract(view_mode="diagonal")
    with pytest.raises(ValueError, match="anchor"):
        InputContract(anchor="nose")


def test_training_and_check_see_the_same_tensor_for_the_same_scan(held_out_bundle, ixi_scans):
    """The bundle a detector is trained from and the volume `check` makes of the file agree
    exactly, and so do the views: one contract, no second copy of the steps."""
    contract = InputContract()
    path = next(path for path in ixi_scans if subject_of(path) == held_out_bundle.subject)
    checked = GridDataset([path], contract)[0]["volume"]
    assert torch.equal(checked[0], torch.from_numpy(held_out_bundle.face))
    trained = draw_bundle(held_out_bundle, contract, families=("none",), draws=1, pose=None, field_of_view=None)
    assert torch.equal(trained.views, contract.views(checked[None]))
    assert trained.label.tolist() == [0]


def test_noisy_air_is_set_to_zero_and_zero_air_is_left_alone(ixi_scans):
    """A real head whose air is 0 (IXI's) has air level 0 and its model input is untouched; with
    Rayleigh noise in the air, the grid's air is 0 again and the head is placed where it was."""
    contract = InputContract()
    scans = {subject_of(path): load_scan(path) for path in ixi_scans}
    noisy_air = [subject for subject, scan in scans.items() if contract.place(scan.data, scan.affine).air > 0]
    assert noisy_air == ["IXI527"]  # IXI's air was masked to 0, but for one head's
    scan = scans["IXI012"]
    clean = contract.volume(scan.data, scan.affine)
    air = scan.data == 0
    rng = np.random.default_rng(0)
    sigma = 0.03 * np.percentile(scan.data[~air], 99)
    noisy = np.where(air, np.hypot(rng.normal(0, sigma, scan.data.shape), rng.normal(0, sigma, scan.data.shape)), scan.data)
    placed = contract.place(noisy, scan.affine)
    assert 3 * sigma < placed.air < 6 * sigma  # 4 x the Rayleigh median, 1.18 sigma
    assert np.allclose(placed.centre, contract.place(scan.data, scan.affine).centre, atol=2.0)
    model_input = contract.volume(noisy, scan.affine)
    outside = clean[0] == 0
    assert (model_input[0][outside] == 0).float().mean() > 0.99
    # what differs: the noise on the head's edge, which the head the step finds takes in, and the
    # faint rim IXI's own masking left around the head, which it leaves out (0.010 on this head)
    assert (model_input - clean).abs().mean() < 0.015


def test_flattening_divides_a_coil_field_out_and_leaves_a_void_empty(ixi_scans):
    """With ``flatten_mm`` the views of a real head under TorchIO's bias field (coefficients 0.5)
    lie much nearer its views without one than the plain contract's do; a defacer's void stays 0."""
    import torchio as tio

    plain, flat = InputContract(), InputContract(flatten_mm=20.0)
    scan = load_scan(next(path for path in ixi_scans if subject_of(path) == "IXI012"))
    volume = plain.volume(scan.data, scan.affine)
    coefficients = np.random.default_rng(0).uniform(-0.5, 0.5, 20).tolist()  # order 3: 20 terms
    darkened = plain.intensities(tio.BiasField(coefficients, order=3)(tio.ScalarImage(tensor=volume)).data[None])
    moved = {name: float((c.views(darkened) - c.views(volume[None])).abs().mean()) for name, c in (("plain", plain), ("flat", flat))}
    assert moved["flat"] < 0.4 * moved["plain"], moved
    assert flat.to_dict()["flatten_mm"] == 20.0 and InputContract.from_dict(flat.to_dict()) == flat
    void = volume.clone()
    void[0, :, 96:, :60] = 0  # the front and bottom of the grid, as a defacer leaves it
    assert torch.equal(flattened(void[None], 10.0)[0, 0, :, 96:, :60], torch.zeros_like(void[0, :, 96:, :60]))


def test_the_heads_closing_and_hole_filling_are_simpleitks_to_the_bit(ixi_scans):
    """The air step closes the head with :func:`ball_closing` and fills its holes with
    :func:`fill_holes`, which must be SimpleITK's closing by a ball of radius 2 (safe border) and its
    ``BinaryFillhole``: on real heads thresholded at several levels, on a head that touches the
    array's edges, on random masks and on tiny arrays."""
    import SimpleITK as sitk

    def simpleitk(mask: np.ndarray, operation) -> np.ndarray:
        return sitk.GetArrayFromImage(operation(sitk.GetImageFromArray(mask.astype(np.uint8)))).astype(bool)

    masks = []
    for path in ixi_scans[:3]:
        data = load_scan(path).data
        masks += [data > level * data.max() for level in (0.05, 0.2, 0.4)]
    masks.append(masks[0][10:-10, 20:-5, :40])  # cut by the array's edges
    rng = np.random.default_rng(0)
    masks += [rng.random((23, 31, 17)) < share for share in (0.1, 0.4, 0.7)]
    masks += [np.ones((1, 5, 4), bool), np.eye(3, dtype=bool)[None].repeat(3, 0), np.zeros((4, 4, 4), bool)]
    for mask in masks:
        assert np.array_equal(ball_closing(mask), simpleitk(mask, lambda image: sitk.BinaryMorphologicalClosing(image, [2, 2, 2])))
        assert np.array_equal(fill_holes(mask), simpleitk(mask, sitk.BinaryFillhole))
    assert not np.array_equal(ball_closing(masks[-4]), masks[-4])  # it does close
    assert not np.array_equal(fill_holes(masks[1]), masks[1])  # and fill


def test_ghosts_outside_the_head_are_set_to_zero_and_the_head_is_kept(ixi_scans):
    """TorchIO's default ghosting along A-P spreads copies of the head over the air, above the air's
    level: on the grid, what lies outside the head is set to 0 too, and the head's own voxels keep
    their values (all but some of its outermost layer, where the ghosts lift Otsu's line)."""
    contract = InputContract()
    scan = load_scan(next(path for path in ixi_scans if subject_of(path) == "IXI012"))
    clean = contract.volume(scan.data, scan.affine)[0].numpy()
    ghosts = ghosted(clean, contract.grid_affine, seed=0).data
    placed = contract.place(ghosts, contract.grid_affine)
    assert placed.air > 0
    grid = contract.on_grid(ghosts, contract.grid_affine, placed=placed)
    cleaned = without_air(grid, placed.air)
    head = head_mask(contract.on_grid(clean, contract.grid_affine, placed=placed).numpy())
    around = torch.from_numpy(~ndimage.binary_dilation(head, iterations=2))  # the air, 4 mm clear of the head
    assert (grid[around] > placed.air).float().mean() > 0.3  # ghosts above the air's level
    assert (cleaned[around] > 0).float().mean() < 0.01
    inside = torch.from_numpy(head)
    assert (cleaned[inside] == grid[inside]).float().mean() > 0.99
    part = (slice(1, None), slice(None, -1), slice(3, None))  # a grid of odd sizes: its blocks' maxima are found another way
    odd = without_air(grid[part], placed.air)
    assert (odd[around[part]] > 0).float().mean() < 0.01
    assert (odd[inside[part]] == grid[part][inside[part]]).float().mean() > 0.99


def ixi_like(affine: np.ndarray, shape=(75, 128, 128), seed: int = 0) -> np.ndarray:
    """A smooth head-sized blob with noise in int16 steps, x-fastest like load_scan's arrays."""
    rng = np.random.default_rng(seed)
    ramp = world_ramp(shape, affine)
    blob = np.clip(ramp - ramp.min(), 0, None) * (rng.random(shape) < 0.9) + rng.normal(0, 12, shape)
    return np.asfortranarray(np.abs(np.rint(blob)).astype(np.float32))


@pytest.mark.parametrize("contract", [InputContract(), COARSE], ids=["shipped", "coarse"])
def test_the_axis_aligned_path_matches_the_general_one(contract):
    """Same voxels, same weights, summed in another order: equal to float32 rounding (1e-4 of the
    robust scale, in the units the model sees), label maps exactly."""
    affine = nib.affines.from_matvec(np.diag([1.2, 0.9375, 0.9375]), [-44.0, -60.0, -58.0])  # finer: box filter
    for data in (ixi_like(affine), np.ascontiguousarray(ixi_like(affine)[:, 3:, :-5])):  # x-fastest; C order, cropped
        fast, general = (contract.on_grid(data, affine, separable=s) for s in (True, False))
        assert fast.shape == general.shape == contract.shape
        scale = float(robust_scale(general[None]))
        assert (fast - general).abs().max() <= 1e-4 * scale
        mask = data > np.median(data)
        assert torch.equal(contract.on_grid(mask, affine, label=True), contract.on_grid(mask, affine, label=True, separable=False))


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_a_files_stored_voxels_and_their_float32_copy_give_the_same_tensor(tmp_path, dtype):
    """`check` reads a file's voxels as stored (a RAS+ view of PSR order, here with odd sizes, so
    flipped axes end in partial blocks); training reads load_scan's float32 copy: the same
    tensor to the bit, and the general path's up to float32 rounding."""
    ras = nib.affines.from_matvec(np.diag([1.3, 1.9, 1.9]), [-40.0, -60.0, -58.0])  # box factors 3, 2, 2
    data = (ixi_like(ras, shape=(61, 67, 63)) * 1.37).astype(dtype)  # floats off the integers: order of sums shows
    to_disk = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("PSR"))
    stored = nib.Nifti1Image(nib.orientations.apply_orientation(data, to_disk),
                             ras @ nib.orientations.inv_ornt_aff(to_disk, data.shape))
    nib.save(stored, tmp_path / "scan.nii.gz")
    view, copy = (load_scan(tmp_path / "scan.nii.gz", copy=c) for c in (False, True))
    assert view.data.dtype == dtype and not view.data.flags.contiguous
    assert torch.equal(COARSE.volume(view.data, view.affine), COARSE.volume(copy.data, copy.affine))
    general = COARSE.on_grid(copy.data, copy.affine, separable=False)
    assert (COARSE.on_grid(view.data, view.affine) - general).abs().max() <= 1e-4 * float(robust_scale(general[None]))


@pytest.mark.parametrize("factors", [(3, 2, 2), (1, 2, 1), (2, 2, 2)])
def test_the_box_filter_averages_each_block_as_avg_pool3d_does(factors):
    """:func:`box_means`, every scan's box filter whatever its orientation, against ``avg_pool3d``
    with ``ceil_mode`` (partial last blocks averaged over what they hold): odd sizes, either memory
    order, int16 and float32 voxels; to float32 rounding (the sums run in another order)."""
    rng = np.random.default_rng(0)
    values = rng.normal(300, 80, (31, 26, 17)) * 1.37
    for data in (values.astype(np.float32), np.asfortranarray(values.astype(np.int16)), values[::-1, :, ::-1].astype(np.float32)):
        expected = F.avg_pool3d(torch.from_numpy(np.ascontiguousarray(data, np.float32))[None, None], factors, ceil_mode=True)[0, 0]
        assert torch.allclose(box_means(data, list(factors)), expected, rtol=1e-6, atol=0)


def test_an_oblique_scan_takes_the_general_path():
    shape = (60, 70, 40)
    affine = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.2, 0.1, -0.15) @ np.diag([1.5, 1.2, 2.0]), [-40.0, -35.0, -30.0])
    data = ixi_like(affine, shape)
    assert torch.equal(COARSE.on_grid(data, affine), COARSE.on_grid(data, affine, separable=False))


def test_the_axis_aligned_path_matches_the_general_one_on_a_real_head(ixi_scans):
    contract = InputContract()
    for path in ixi_scans[:2]:
        scan = load_scan(path)
        fast, general = (contract.on_grid(scan.data, scan.affine, separable=s) for s in (True, False))
        assert (fast - general).abs().max() <= 1e-4 * float(robust_scale(general[None]))
        model_input = [contract.intensities(v[None]) for v in (fast, general)]  # float16 steps: ±1 at most
        assert (model_input[0] - model_input[1]).abs().max() <= 2e-3


def test_a_saved_detector_loads_with_torch_alone(tmp_path):
    """weights_only loading: the contract and the facts are plain types, numpy scalars included."""
    from defacegan.detector_training import save_detector, split_subjects
    from defacegan.inference import load_network
    from defacegan.models.detector import DetectorNet

    train, val = split_subjects(np.array(["IXI1", "IXI2", "IXI3"]), val=1, seed=0)
    net = DetectorNet(n_views=len(COARSE.view_names), n_classes=3, channels=(4, 8))
    net.temperature.fill_(1.5)
    path = save_detector(net, COARSE, tmp_path / "detector.pt", {"train_subjects": train, "val_subjects": val})
    loaded, contract, facts = load_network(path)
    assert contract == COARSE and float(loaded.temperature) == 1.5 and loaded.config == net.config
    assert facts == {"train_subjects": train, "val_subjects": val}


def test_an_ensemble_of_saved_detectors_averages_their_probabilities(tmp_path):
    """make weights ships several calibrated networks as one checkpoint: loaded, it gives the mean
    of its members' probabilities, and its facts name every member's training subjects."""
    from defacegan.detector_training import save_detector, save_ensemble
    from defacegan.inference import load_network
    from defacegan.models.detector import DetectorNet

    members, paths = [], []
    for seed, (train, val) in enumerate([(["IXI1", "IXI2"], ["IXI3"]), (["IXI2", "IXI3"], ["IXI1"])]):
        torch.manual_seed(seed)
        net = DetectorNet(n_views=len(COARSE.view_names), n_classes=3, channels=(4, 8)).eval()
        net.temperature.fill_(1.0 + seed)
        members.append(net)
        paths.append(save_detector(net, COARSE, tmp_path / f"seed-{seed}.pt", {"train_subjects": train, "val_subjects": val}))
    ensemble, contract, facts = load_network(save_ensemble(paths, tmp_path / "detector.pt"))
    views = torch.rand(5, len(COARSE.view_names), COARSE.view_size, COARSE.view_size)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(net(views), 1) for net in members]).mean(0)
        assert torch.allclose(torch.softmax(ensemble(views), 1), expected, atol=1e-6)
    assert contract == COARSE and len(facts["members"]) == 2
    assert facts["train_subjects"] == ["IXI1", "IXI2", "IXI3"] and facts["val_subjects"] == ["IXI1", "IXI3"]
    with pytest.raises(ValueError, match="one input contract"):
        save_ensemble([paths[0], save_detector(members[0], InputContract(), tmp_path / "other.pt")], tmp_path / "bad.pt")
