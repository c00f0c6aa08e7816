"""Generate a corpus of unusable and awkward-but-valid NIfTI inputs, for robustness tests.

Unusable (each with a fragment of the one-line error that must name it): truncated gzip, a
broken deflate stream, zero bytes, text named .nii, 2D, 4D, NaN/inf, all zeros, RGB colours,
an 8 mm cube, and headers that promise 8 GiB over a few bytes. Valid (must be processed like
any scan): int8, uint16 and float64 copies of the head, LPS voxel order, an oblique affine, a
0.9 x 0.9 x 3 mm grid, and a gzip file that goes on with 256 MiB of zeros past the voxels.

Heads are pydeface's template resampled (4 mm unless said otherwise): real-looking, and a
registration finds them in about a second.

Run as a script to write one: ``python tests/support/make_bad_inputs.py OUT``.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from nibabel.processing import resample_to_output

from defacegan.contract import plane_rotation, turned

TEMPLATE = files("pydeface") / "data" / "mean_reg2mean.nii.gz"


@dataclass(frozen=True)
class Case:
    """One input: ``error`` is a fragment of the expected message, or None for a valid scan."""

    path: Path
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def template_head(spacing: float | tuple[float, float, float] = 4.0) -> nib.Nifti1Image:
    """pydeface's mean head (RAS, int16) resampled to ``spacing`` mm, trilinear."""
    return resample_to_output(nib.load(str(TEMPLATE)), spacing, order=1)


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _stored_as(head: nib.Nifti1Image, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """A RAS image's voxels and affine in the voxel order ``axcodes``: the same head in the same place."""
    data = np.asanyarray(head.dataobj)
    to_disk = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    return apply_orientation(data, to_disk), head.affine @ inv_ornt_aff(to_disk, data.shape)


def _huge_header(path: Path, affine: np.ndarray) -> Path:
    """A file whose header promises 1024³ float64 voxels (8 GiB) over 4 KiB of data; gzipped for .gz names."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape((1024, 1024, 1024))
    header.set_sform(affine, code="scanner")
    header.set_data_offset(352)
    payload = header.binaryblock + b"\0" * 4 + np.ones(512).tobytes()
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def _corrupt_gzip(path: Path, image: nib.Nifti1Image) -> Path:
    """A gzip file whose first half inflates (header included) and whose second half is a
    deflate block of the reserved type 3: a decoder fails only once it reaches the voxels."""
    raw = image.to_bytes()
    half = len(raw) // 2
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)  # bare deflate: the gzip framing is written below
    first = deflate.compress(raw[:half]) + deflate.flush(zlib.Z_FULL_FLUSH)  # ends on a byte boundary
    second = deflate.compress(raw[half:]) + deflate.flush()
    framing = b"\x1f\x8b\x08\x00" + b"\0" * 4 + b"\x00\xff"  # magic, deflate, no flags, mtime 0, OS unknown
    trailer = struct.pack("<II", zlib.crc32(raw), len(raw) % 2**32)
    path.write_bytes(framing + first + b"\x07" + second[1:] + trailer)  # 0x07: last block, type 3
    return path


def _gzip_bomb(path: Path, image: nib.Nifti1Image) -> Path:
    """A valid .nii.gz followed by 16 more gzip members of 16 MiB of zeros each (256 MiB; 0.4 MB on disk)."""
    zeros = gzip.compress(bytes(16 * 2**20), mtime=0)
    path.write_bytes(gzip.compress(image.to_bytes(), mtime=0) + zeros * 16)
    return path


def make_bad_inputs(folder: str | Path) -> dict[str, Case]:
    """Write the corpus into ``folder`` (created); return its cases by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head = template_head(4.0)
    data = np.asanyarray(head.dataobj).astype(np.float32)
    affine = head.affine
    plain = nib.Nifti1Image(data, affine)
    rng = np.random.default_rng(0)
    cases: dict[str, Case] = {}

    def valid(name: str, path: Path) -> None:
        cases[name] = Case(path)

    def invalid(name: str, path: Path, error: str) -> None:
        cases[name] = Case(path, error)

    valid("good", _save(folder / "good.nii.gz", data, affine))
    valid("int8", _save(folder / "int8.nii.gz", np.rint(data / data.max() * 127).astype(np.int8), affine))
    valid("uint16", _save(folder / "uint16.nii.gz", np.rint(data / data.max() * 4000).astype(np.uint16), affine))
    valid("float64", _save(folder / "float64.nii.gz", data.astype(np.float64), affine))
    valid("lps", _save(folder / "lps.nii", *_stored_as(plain, "LPS")))
    nodded_then_turned = plane_rotation(0, 1, 6.0) @ plane_rotation(1, 2, 12.0)
    valid("oblique", _save(folder / "oblique.nii.gz", data, turned(affine, nodded_then_turned)))
    valid("gzip_bomb", _gzip_bomb(folder / "gzip_bomb.nii.gz", plain))
    anisotropic = template_head((0.9, 0.9, 3.0))
    valid("anisotropic", _save(folder / "anisotropic.nii.gz", np.asanyarray(anisotropic.dataobj), anisotropic.affine))

    invalid("corrupt_gz", _corrupt_gzip(folder / "corrupt_gz.nii.gz", plain), "corrupt data")
    whole = (folder / "good.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    invalid("truncated", folder / "truncated.nii.gz", "truncated")
    (folder / "empty.nii.gz").write_bytes(b"")
    invalid("empty", folder / "empty.nii.gz", "empty")
    (folder / "text.nii").write_text("subject,age\nsub-01,34\n")
    invalid("text", folder / "text.nii", "not a readable NIfTI")
    invalid("2d", _save(folder / "slice2d.nii.gz", data[:, :, data.shape[2] // 2].copy(), affine), "2D")
    series = np.stack([data, data * 1.1, data * 0.9], axis=-1)
    invalid("4d", _save(folder / "series4d.nii.gz", series, affine), "4D")
    spoiled = data.copy()
    spoiled[10, 10, 10], spoiled[20, 20, 20] = np.nan, np.inf
    invalid("nan", _save(folder / "nan_inf.nii.gz", spoiled, affine), "NaN or infinite")
    invalid("zeros", _save(folder / "zeros.nii.gz", np.zeros_like(data), affine), "constant")
    colours = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    colours["R"] = np.rint(data / data.max() * 255)
    invalid("rgb", _save(folder / "rgb.nii.gz", colours, affine), "RGB")
    tiny = (rng.random((8, 8, 8)) * 100).astype(np.float32)
    invalid("tiny", _save(folder / "tiny.nii.gz", tiny, np.eye(4)), "too small")
    invalid("huge_header", _huge_header(folder / "huge_header.nii", affine), "header dims")
    invalid("huge_header_gz", _huge_header(folder / "huge_header_gz.nii.gz", affine), "header dims")
    return cases


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    for name, case in make_bad_inputs(parser.parse_args().out).items():
        print(f"{name:15s} {'valid' if case.valid else 'error: ' + case.error:28s} {case.path}")
