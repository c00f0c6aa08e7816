"""Load, validate and save NIfTI head scans.

Every scan enters the project through :func:`load_scan`, which returns the volume in closest
canonical orientation (RAS+: axis 0 runs left→right, axis 1 posterior→anterior, axis 2
inferior→superior) as float32, and remembers how to go back to the file's own orientation so
outputs can be written in the input's space and header. Anything unusable raises
:class:`ScanError` with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

try:  # ISA-L inflates gzip about twice as fast as zlib, and decoding dominates a check run
    from isal import igzip, isal_zlib

    INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, gzip.BadGzipFile, isal_zlib.error)
except ImportError:  # pragma: no cover - isal is a dependency; stay usable without it
    igzip = None
    INFLATE_ERRORS = (zlib.error, gzip.BadGzipFile)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_DEFLATE_RATIO = 1032  # gzip (deflate) never expands its input by more than this
MIN_EXTENT_MM = 64.0  # a head is far larger; anything smaller cannot be registered meaningfully


class ScanError(Exception):
    """A scan that cannot be used. ``str()`` is ``'<path>: <reason>'`` on one line."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path or '<array>'}: {self.reason}")

    def __reduce__(self):  # pickled by worker processes: rebuilt from (path, reason), not the message
        return type(self), (self.path, self.reason)


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class Scan:
    """A validated 3D scan in RAS+ orientation.

    ``data`` is float32 (scaling applied; ``load_scan(copy=False)``: the stored type, a view);
    ``affine`` maps its voxels to scanner mm.
    ``original`` is the image as stored on disk (header and orientation), used by
    :meth:`to_original` so that outputs land in the input's own voxel order and header.
    """

    data: np.ndarray
    affine: np.ndarray
    original: nib.Nifti1Image | None = None
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def image(self) -> nib.Nifti1Image:
        """The RAS+ volume as a float32 NIfTI image."""
        return nib.Nifti1Image(self.data, self.affine)

    def to_original(self, data: np.ndarray, dtype: np.dtype | None = None) -> nib.Nifti1Image:
        """Put a RAS+ array (same grid as ``data``) back into the input's orientation and header.

        ``dtype`` defaults to the input's stored type for intensity outputs; pass ``np.uint8``
        for masks.
        """
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} does not match the scan's {self.data.shape}")
        if self.original is None:
            return nib.Nifti1Image(np.asarray(data, dtype=dtype or np.float32), self.affine)
        to_disk = ornt_transform(io_orientation(self.affine), io_orientation(self.original.affine))
        array = apply_orientation(np.asarray(data, dtype=np.float32), to_disk)
        header = self.original.header.copy()
        if dtype is None:
            # The input's stored type; NaN slope lets nibabel choose the scaling on save.
            stored = self.original.get_data_dtype()
            header.set_data_dtype(stored)
            header.set_slope_inter(np.nan, np.nan)
            slope, inter = self.original.header.get_slope_inter()
            if (np.issubdtype(stored, np.integer) and slope in (None, 1.0) and inter in (None, 0.0)
                    and np.array_equal(array, np.rint(array))
                    and array.min() >= np.iinfo(stored).min and array.max() <= np.iinfo(stored).max):
                # Unscaled integers that stay integers (a defaced image) are written exactly as they were.
                header.set_slope_inter(1.0, 0.0)
                array = array.astype(stored)
        else:
            header.set_data_dtype(np.dtype(dtype))
            header.set_slope_inter(1.0, 0.0)
            if np.issubdtype(np.dtype(dtype), np.integer):
                array = np.rint(array).astype(dtype)
        return type(self.original)(array, self.original.affine, header)


def validate_volume(data: np.ndarray, name: str | os.PathLike | None = None, *, float32: bool = True) -> np.ndarray:
    """Return ``data`` as a float32 3D array, or raise :class:`ScanError` explaining why not.

    A trailing singleton 4th dimension is squeezed; real 2D/4D data, NaN/inf values, empty and
    constant volumes are rejected. ``float32=False`` leaves integer data in its own type (checked
    as its float32 values), so that a caller that copies it anyway converts it in that one copy.
    """
    data = np.asarray(data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        kind = f"{data.ndim}D" if data.ndim != 4 else f"4D with {data.shape[3]} volumes"
        raise ScanError(name, f"expected a 3D volume, got {kind} array of shape {data.shape}")
    if min(data.shape) < 2:
        raise ScanError(name, f"volume of shape {data.shape} is too thin to be a head scan")
    if data.size == 0:
        raise ScanError(name, "volume is empty")
    if np.issubdtype(data.dtype, np.complexfloating):
        raise ScanError(name, f"complex data ({data.dtype}) is not a magnitude image")
    if not np.issubdtype(data.dtype, np.number) and data.dtype != bool:
        raise ScanError(name, f"{data.dtype} voxels (e.g. RGB colours) are not a scalar intensity image")
    integers = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    if not integers:  # integers are always finite; floats are checked as the float32 values they become
        data = data.astype(np.float32, copy=False)
        finite = np.isfinite(data)
        if not finite.all():
            raise ScanError(name, f"{(~finite).sum()} voxels are NaN or infinite")
    if is_constant(data):
        raise ScanError(name, f"volume is constant (all voxels = {float(np.float32(data.min())):g})")
    return data.astype(np.float32, copy=False) if float32 else data


def is_constant(data: np.ndarray) -> bool:
    """Whether every voxel has the same float32 value. A sparse sample that varies settles it
    (float32 rounding keeps order, so the whole volume's extremes differ too): a scan's two passes
    over every voxel (6 ms for IXI's 10 M) are left to a volume whose sample is constant."""
    sample = data[tuple(slice(None, None, max(1, n // 24)) for n in data.shape)]
    if np.float32(sample.max()) != np.float32(sample.min()):
        return False
    return bool(np.float32(data.max()) == np.float32(data.min()))


def load_scan(path: str | os.PathLike, *, copy: bool = True) -> Scan:
    """Read a NIfTI file (or a DICOM series folder, see :mod:`defacegan.dicom`), reorient it to
    RAS+ and validate it; never modifies the file.

    ``copy=False`` leaves ``data`` as a RAS+ view of the voxels as stored (their own number
    type, flipped and transposed strides, read-only) instead of a float32 copy: for a reader
    that takes each voxel once, as the input contract's grid does (``check``).
    """
    path = Path(path)
    if not path.exists():
        raise ScanError(path, "no such file")
    if path.is_dir():
        from defacegan.dicom import is_dicom_series, load_series  # dcm2niix only for DICOM folders

        if is_dicom_series(path):
            return load_series(path)
        raise ScanError(path, "is a folder, neither a NIfTI file nor a DICOM series")
    if path.stat().st_size == 0:
        raise ScanError(path, "file is empty (0 bytes)")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for foreign or broken files
        raise ScanError(path, f"not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(path, f"not a NIfTI image ({type(image).__name__})")
    shape = image.shape
    if min(shape, default=0) < 1:
        raise ScanError(path, f"header dims {shape} are not all positive")
    voxels = int(np.prod(shape, dtype=object))  # Python ints: header dims can overflow int64
    if len(shape) > 3 and int(np.prod(shape[3:], dtype=object)) > 1:
        raise ScanError(path, f"expected a 3D volume, got 4D with shape {shape}")
    if voxels > 2_000_000_000:
        raise ScanError(path, f"header dims {shape} are implausibly large")
    # nibabel allocates what the header promises before reading: refuse promises the file cannot keep.
    needed = voxels * image.get_data_dtype().itemsize + int(image.dataobj.offset)
    capacity = path.stat().st_size * (MAX_DEFLATE_RATIO if path.name.lower().endswith(".gz") else 1)
    if needed > capacity:
        raise ScanError(path, f"truncated or corrupt: header dims {shape} need {needed} bytes of data, "
                              f"more than this {path.stat().st_size}-byte file can hold")
    try:
        if igzip is not None and path.name.lower().endswith(".gz"):
            with igzip.open(path) as stream:  # inflate only what the header promises (no gzip bombs)
                raw = stream.read(needed)
            proxy = image.dataobj
            if len(raw) == needed and proxy.slope == 1 and proxy.inter == 0:  # unscaled: the bytes are the voxels
                data = np.ndarray(proxy.shape, proxy.dtype, buffer=raw, offset=proxy.offset, order=proxy.order)
            else:
                data = np.asanyarray(type(image).from_bytes(raw).dataobj)
        else:
            data = np.asanyarray(image.dataobj)
    except (EOFError, OSError, ValueError, MemoryError, *INFLATE_ERRORS) as error:
        raise ScanError(path, f"truncated or corrupt data ({type(error).__name__}: {error})") from None
    data = validate_volume(data, path, float32=False)
    affine = image.affine
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ScanError(path, "header has no usable voxel-to-world affine")
    ornt = io_orientation(affine)
    canonical = apply_orientation(data, ornt)
    canonical_affine = affine @ inv_ornt_aff(ornt, data.shape)
    if not copy:
        return Scan(canonical, canonical_affine, image, path)
    # Fortran order (x fastest), as NIfTI and SimpleITK store voxels: no transposing copies later.
    # Integer data becomes float32 in this same copy.
    return Scan(np.require(canonical, np.float32, ["F_CONTIGUOUS", "WRITEABLE"]), canonical_affine, image, path)


def head_threshold(data: np.ndarray) -> float:
    """Otsu's intensity threshold between air and head."""
    import SimpleITK as sitk  # only callers that look for the head pay for loading it

    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(np.asarray(data, dtype=np.float32)))
    return float(otsu.GetThreshold())


def require_head_extent(scan: Scan, purpose: str) -> None:
    """Raise :class:`ScanError` when the field of view is under MIN_EXTENT_MM on any axis: too
    small to hold a head, so neither a registration nor a classifier can say anything about it."""
    extent = np.asarray(scan.data.shape) * np.asarray(scan.spacing)
    if extent.min() < MIN_EXTENT_MM:
        size = "x".join(f"{e:.0f}" for e in extent)
        raise ScanError(scan.path, f"volume too small to {purpose} ({size} mm field of view, "
                                   f"need at least {MIN_EXTENT_MM:.0f} mm per axis)")


def save_nifti(
    image: nib.Nifti1Image,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Write ``image`` atomically: a temporary file in the target folder, then a rename.

    Refuses to write onto an existing file unless ``overwrite``, and always refuses to write
    onto any path in ``protect`` (the inputs), so a run can never clobber its own inputs.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output name must end in .nii or .nii.gz")
    target = path.resolve()
    if any(target == Path(p).resolve() for p in protect):
        raise ScanError(path, "refusing to overwrite an input file")
    if path.exists() and not overwrite:
        raise ScanError(path, "output exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give a temporary file the permissions a plain open() would (mkstemp makes it 0600), then rename."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (TSV, JSON, HTML, Markdown) atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_scans(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of NIfTI files and DICOM series folders.

    Files named explicitly are kept even if they do not look like NIfTI, so that they are
    reported as unreadable rather than silently skipped; so is a DICOM series folder.
    """
    from defacegan.dicom import is_dicom_series

    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir() and not is_dicom_series(item):
            found.extend(sorted(p for p in item.rglob("*") if (p.is_file() and is_nifti(p)) or is_dicom_series(p)))
        else:
            found.append(item)
    return list(dict.fromkeys(found))


#: ``sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix>.nii[.gz]`` (BIDS labels are alphanumeric)
BIDS_NAME = re.compile(
    r"^sub-(?P<subject>[a-zA-Z0-9]+)(?:_ses-(?P<session>[a-zA-Z0-9]+))?(?:_[a-zA-Z0-9]+-[a-zA-Z0-9]+)*"
    r"_(?P<suffix>[a-zA-Z0-9]+)\.nii(?:\.gz)?$"
)


@dataclass(frozen=True)
class ScanFile:
    """A scan file; ``subject``/``session`` are BIDS labels without prefix, and ``contrast`` its
    BIDS suffix (T1w, T2w...), when the name or the DICOM series description says."""

    path: Path
    subject: str | None = None
    session: str | None = None
    contrast: str | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> ScanFile:
        path = Path(path)
        if path.is_dir():
            from defacegan.dicom import contrast_of, series_metadata

            return cls(path, contrast=contrast_of(series_metadata(path)))
        match = BIDS_NAME.match(path.name)
        return cls(path, match["subject"], match["session"], match["suffix"]) if match else cls(path)


def bids_anatomical_scans(root: str | os.PathLike, suffixes: Sequence[str]) -> list[ScanFile]:
    """Images with these suffixes (``T1w``...) in ``sub-*/[ses-*/]anat/`` of a BIDS dataset, sorted.

    Only the raw data at the dataset's top: ``derivatives/`` and ``sourcedata/`` are not scanned.
    """
    root = Path(root)
    paths = sorted({*root.glob("sub-*/anat/*.nii*"), *root.glob("sub-*/ses-*/anat/*.nii*")})
    return [
        ScanFile(path, match["subject"], match["session"], match["suffix"])
        for path in paths
        if path.is_file() and (match := BIDS_NAME.match(path.name)) and match["suffix"] in suffixes
    ]


def stem(path: str | os.PathLike) -> str:
    """File name without .nii / .nii.gz."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
