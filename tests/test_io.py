import gzip
import hashlib

import nibabel as nib
import numpy as np
import pytest

from defacegan.io import ScanError, load_scan, save_nifti, find_scans


def write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def head(shape=(20, 24, 18)):
    rng = np.random.default_rng(0)
    return rng.random(shape).astype(np.float32) * 100


def test_reorients_to_ras_and_back(tmp_path):
    data = head()
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    path = write(tmp_path / "lps.nii.gz", data, lps)
    scan = load_scan(path)
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    np.testing.assert_allclose(scan.data, data[::-1, ::-1, :])
    back = scan.to_original(scan.data, dtype=np.float32)
    np.testing.assert_allclose(back.get_fdata(), data)
    np.testing.assert_allclose(back.affine, lps)
    assert scan.spacing == (2.0, 2.0, 2.0)


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    scan = load_scan(write(tmp_path / "a.nii", head()[..., None]))
    assert scan.data.ndim == 3


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((10, 10, 10), np.float32), "constant"),
        (np.ones((10, 10), np.float32), "2D"),
        (np.random.rand(8, 8, 8, 3).astype(np.float32), "4D"),
        (np.full((8, 8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_volumes_raise_one_line_naming_the_file(tmp_path, data, message):
    path = write(tmp_path / "bad.nii.gz", data)
    with pytest.raises(ScanError) as error:
        load_scan(path)
    text = str(error.value)
    assert str(path) in text and message in text and "\n" not in text


def test_a_volume_constant_but_for_one_voxel_its_sample_misses_is_not_constant(tmp_path):
    """The constant check looks at a sparse sample first; a voxel between the sampled ones still counts."""
    data = np.zeros((50, 60, 40), np.int16)
    data[25, 31, 17] = 7
    assert load_scan(write(tmp_path / "one.nii.gz", data)).data.max() == 7
    with pytest.raises(ScanError, match="constant"):
        load_scan(write(tmp_path / "flat.nii.gz", np.full((50, 60, 40), 3, np.int16)))


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    text = tmp_path / "text.nii"
    text.write_text("not an image")
    good = write(tmp_path / "good.nii.gz", head((40, 40, 40)))
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path, reason in [(empty, "empty"), (text, "NIfTI"), (truncated, "truncated"), (tmp_path / "missing.nii", "no such file")]:
        with pytest.raises(ScanError, match=reason) as error:
            load_scan(path)
        assert str(path) in str(error.value)


def test_save_is_atomic_and_protects_inputs(tmp_path):
    path = write(tmp_path / "in.nii.gz", head())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    scan = load_scan(path)
    with pytest.raises(ScanError, match="input"):
        save_nifti(scan.image, path, overwrite=True, protect=(path,))
    with pytest.raises(ScanError, match="exists"):
        save_nifti(scan.image, path)
    out = save_nifti(scan.to_original(scan.data), tmp_path / "out" / "o.nii.gz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.nii.gz"]
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, like any file the user writes
    np.testing.assert_allclose(nib.load(str(out)).get_fdata(), head(), rtol=1e-5)


def test_find_scans_recurses_and_keeps_named_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    one = write(tmp_path / "a" / "b" / "x.nii.gz", head())
    (tmp_path / "a" / "notes.txt").write_text("x")
    odd = tmp_path / "named.txt"
    odd.write_text("x")
    assert find_scans([tmp_path / "a", odd]) == [one, odd]


def test_ixi_scan_loads_in_ras(ixi_scans):
    scan = load_scan(ixi_scans[0])
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    assert scan.data.shape == (90, 120, 120)
