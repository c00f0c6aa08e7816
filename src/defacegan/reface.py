"""Re-face defaced scans with a trained Pix2Pix or CycleGAN generator (``defacegan reface``).

Applications of the model live here, beside :mod:`defacegan.inference`: reading and writing
NIfTI, finding the removed region by registration, and moving a scan onto the training grid and
back; :mod:`defacegan.models.pix2pix` only maps slices to slices.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torchio as tio

from defacegan.augment import standard_grid
from defacegan.deface import deface
from defacegan.io import Scan, ScanError, head_threshold, load_scan, save_nifti
from defacegan.models.cyclegan import CycleGAN
from defacegan.models.pix2pix import Pix2Pix
from defacegan.views import robust_scale, sagittal_planes, sagittal_slices

#: A face region in which more voxels than this hold tissue still has its face. (On IXI heads at
#: 2 mm: 21-27 % before defacing, 1-6 % after pydeface-style or plane defacing.)
INTACT_TISSUE_FRACTION = 0.12


def load_refacer(ckpt: str | os.PathLike, device: str | torch.device | None = None) -> Pix2Pix:
    """A trained Pix2Pix or CycleGAN (told apart by its hyperparameters) from its Lightning
    checkpoint, in eval mode on ``device`` (default: CUDA if any)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    model_class = CycleGAN if "cycle_weight" in hparams else Pix2Pix
    return model_class.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()


def face_region(scan: Scan) -> np.ndarray:
    """Where the face of a defaced ``scan`` was: the zero voxels of the region that pydeface's
    mask method removes (found by registering its template, :func:`defacegan.deface.deface`).

    Tissue a defacer left inside that region is kept. Raises :class:`ScanError` when the region
    is empty or still holds a face.
    """
    removed = deface(scan, ("mask",))["mask"].removed
    if not removed.any():
        raise ScanError(scan.path, "no removed region: the face region lies outside the scan")
    tissue = float((scan.data[removed] > head_threshold(scan.data)).mean())
    if tissue > INTACT_TISSUE_FRACTION:
        raise ScanError(
            scan.path,
            f"no removed region: {tissue:.0%} of the face region holds tissue, so the face looks intact "
            "(pass a mask to re-face a region anyway)",
        )
    return removed & (scan.data == 0)


@torch.no_grad()
def reface_scan(scan: Scan, model: Pix2Pix, removed: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
    """``scan`` with its removed region filled by the generator: float32, RAS+, the scan's grid.

    As in training, the scan goes onto the standard grid (:func:`defacegan.augment.standard_grid`
    with the checkpoint's spacing and shape), every sagittal slice through the region is scaled
    by the scan's robust intensity scale and translated, and the slices are put back into a
    volume, which is resampled (linearly) onto the scan's grid. Only voxels in ``removed``
    (bool, the scan's grid) that the standard grid covers change; all others are copied as they are.
    """
    hparams = model.hparams
    if hparams.channels != 1:
        raise ValueError(f"re-facing needs a generator of 1-slice images, not {hparams.channels} channels")
    removed = np.asarray(removed, dtype=bool)
    if removed.shape != scan.data.shape:
        raise ScanError(scan.path, f"mask shape {removed.shape} does not match the scan's {scan.data.shape}")
    if not removed.any():
        raise ScanError(scan.path, "no removed region: the mask is empty")

    def image(kind, array):
        return kind(tensor=torch.from_numpy(np.ascontiguousarray(array))[None], affine=scan.affine)

    on_grid = standard_grid(hparams.spacing, hparams.grid_shape)(
        tio.Subject(
            volume=image(tio.ScalarImage, scan.data),
            removed=image(tio.LabelMap, removed.astype(np.uint8)),
            covered=image(tio.LabelMap, np.ones(scan.data.shape, np.uint8)),
        )
    )
    volume = on_grid["volume"].data[0].float().clamp_min(0)  # the cache clips at 0 too
    region = on_grid["removed"].data[0] > 0
    positions = region.any(dim=(1, 2)).nonzero()[:, 0]
    scale = robust_scale(volume[None, None])
    sources = sagittal_slices(volume[positions][:, None, None], hparams.size, 1, scale) * 2 - 1
    generated = torch.cat([model(batch.to(model.device)).cpu() for batch in sources.split(batch_size)])
    faces = sagittal_planes((generated[:, 0] + 1) / 2 * scale, volume.shape[1:])
    refaced = volume.clone()
    refaced[positions] = torch.where(region[positions], faces, volume[positions])
    back = tio.Resample((scan.data.shape, scan.affine))(
        tio.Subject(
            volume=tio.ScalarImage(tensor=refaced[None], affine=on_grid["volume"].affine),
            covered=on_grid["covered"],
        )
    )
    changed = removed & (back["covered"].data[0].numpy() > 0)
    return np.where(changed, back["volume"].data[0].numpy(), scan.data).astype(np.float32)


def reface_file(
    path: str | os.PathLike,
    output: str | os.PathLike,
    model: Pix2Pix,
    mask: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Re-face one NIfTI file; write the result in the input's orientation and header as float32
    (so that the voxels outside the region keep their exact values). Returns a one-line summary."""
    started = time.perf_counter()
    scan = load_scan(path)
    if mask is None:
        removed = face_region(scan)
    else:
        mask_scan = load_scan(mask)
        if mask_scan.data.shape != scan.data.shape or not np.allclose(mask_scan.affine, scan.affine, atol=1e-3):
            raise ScanError(mask, f"mask grid {mask_scan.data.shape} does not match the scan's {scan.data.shape}")
        removed = mask_scan.data > 0.5
    refaced = reface_scan(scan, model, removed)
    inputs = (path, mask) if mask else (path,)
    save_nifti(scan.to_original(refaced, dtype=np.float32), output, overwrite=overwrite, protect=inputs)
    return f"re-faced {int(removed.sum())} voxels in {time.perf_counter() - started:.1f} s -> {output}"
