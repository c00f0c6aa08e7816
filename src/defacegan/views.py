"""The six 2D views of a head that the classifiers see, and the sagittal slices Pix2Pix translates
(and their way back into the volume, :func:`sagittal_planes`).

Pure torch, batched, the same code on CPU and CUDA (it runs in ``on_after_batch_transfer`` on the
batch's device). Volumes are canonical RAS+ ``(B, 1, X, Y, Z)``: X runs left→right, Y
posterior→anterior, Z inferior→superior.

Every 2D image is displayed the same way:

- sagittal (collapses X): rows superior (top) → inferior, columns posterior → anterior, so the
  face looks to the right of the image;
- coronal (collapses Y): rows superior → inferior, columns the patient's left → right
  (neurological convention: the patient's right is on the image's right);
- axial (collapses Z): rows anterior (top) → posterior, columns left → right.

A "slice" is the voxel plane at index ``n // 2`` of the collapsed axis; a "mean" is the average
over that axis. Each image is zero-padded to a centred square (aspect preserved), resized to
``size``² with an antialiased bilinear filter, divided by the volume's robust intensity scale and
clamped to [0, 1].

The three ``face_*`` views look only at :data:`FACE_BOX`, the front and lower part of a grid
placed on the head (:class:`defacegan.contract.InputContract` with ``anchor="head"``), at the
grid's own resolution: the middle sagittal slice (the nose's and lips' profile), the mean over
the box's depth, and a frontal depth render of the skin (brighter = nearer; the face's shape,
what face recognition on MRI renders). Whole-head views at 64 px show 4 mm pixels; these show
the face at 2 mm. ``all_face_texture`` adds a fourth, ``face_texture`` (:func:`_face_texture`): the
face's fine texture against the head's own, which the shipped contract reads (docs/detector.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: View order and names; channel ``v`` of :func:`compute_views` is ``VIEW_NAMES[v]``.
VIEW_NAMES = ("mean_sagittal", "mean_coronal", "mean_axial", "slice_sagittal", "slice_coronal", "slice_axial",
              "face_sagittal", "face_coronal", "face_depth", "face_texture")
#: Which views each ``view_mode`` keeps (indices into VIEW_NAMES).
VIEW_MODES = {"mean": (0, 1, 2), "slice": (3, 4, 5), "all": (0, 1, 2, 3, 4, 5), "all_face": tuple(range(9)),
              "all_face_texture": tuple(range(10))}
#: The face's part of a head-anchored grid, as fractions of each RAS axis (left-right,
#: posterior-anterior, inferior-superior): the front half, from below the chin to the brow.
FACE_BOX = ((0.25, 0.75), (0.5, 1.0), (0.16, 0.66))
#: Skin is where a voxel exceeds this share of the volume's robust scale (the depth render).
SKIN_FLOOR = 0.15
#: ``face_texture`` reads the fine texture this many voxels deep under the skin, facing the front.
TEXTURE_DEPTH = 4
#: The collapsed volume axis of each plane (RAS+ axes 0, 1, 2).
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}

ROBUST_PERCENTILE = 99.5
#: Voxels per volume the percentile is estimated from (a strided subsample keeps it cheap).
ROBUST_SAMPLES = 2**16


def robust_scale(volumes: torch.Tensor, percentile: float = ROBUST_PERCENTILE) -> torch.Tensor:
    """Per-volume intensity scale ``(B,)``: the ``percentile`` of the nonzero voxels.

    Estimated on the volumes' device from a strided subsample of at most ``ROBUST_SAMPLES``
    voxels, by nearest rank counted from the top with ``topk`` (no full sort, no host sync; the
    zeros need no masking, they rank below every positive voxel). A volume without positive
    signal gets scale 1.
    """
    flat = volumes.reshape(volumes.shape[0], -1)
    sample = flat[:, :: max(1, math.ceil(flat.shape[1] / ROBUST_SAMPLES))].float()
    count = (sample != 0).sum(dim=1)
    from_top = ((count - 1).clamp_min(0) * (1 - percentile / 100)).round().long()
    most = math.ceil((sample.shape[1] - 1) * (1 - percentile / 100)) + 1
    scale = sample.topk(most, dim=1).values.gather(1, from_top[:, None]).squeeze(1)
    return torch.where((count > 0) & (scale > 0), scale, torch.ones_like(scale))


def _display(planes: torch.Tensor) -> torch.Tensor:
    """(..., A, B) planes, axes in RAS order → images: B's high end at the top row, A rightwards."""
    return planes.transpose(-1, -2).flip(-2)


def _square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) images to a centred square, then resize to ``size``² (antialiased)."""
    height, width = images.shape[-2:]
    side = max(height, width)
    left, top = (side - width) // 2, (side - height) // 2
    padded = F.pad(images, (left, side - width - left, top, side - height - top))
    if side == size:
        return padded
    return F.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def face_box(volumes: torch.Tensor) -> torch.Tensor:
    """(B, 1, X, Y, Z) → the :data:`FACE_BOX` part of each volume."""
    return volumes[(..., *face_bounds(volumes.shape[2:]))]


def face_bounds(shape: torch.Size) -> list[slice]:
    """The :data:`FACE_BOX` part of a grid of ``shape`` (X, Y, Z), per axis."""
    return [slice(round(lo * n), round(hi * n)) for (lo, hi), n in zip(FACE_BOX, shape)]


def _face_view(volumes: torch.Tensor, name: str, scale: torch.Tensor) -> torch.Tensor:
    """One ``face_*`` view, (B, 1, H, W), already in [0, 1] (before resizing)."""
    box = face_box(volumes)
    if name == "face_sagittal":
        return _scaled(_display(box.select(2, box.shape[2] // 2)), scale)
    if name == "face_coronal":
        return _scaled(_display(box.mean(3)), scale)
    skin = box > SKIN_FLOOR * scale.reshape(-1, 1, 1, 1, 1)
    depth = box.shape[3]
    first_from_front = skin.flip(3).float().argmax(3)  # index of the nearest skin voxel on each ray
    nearness = (depth - first_from_front).float() / depth
    return _display(torch.where(skin.any(3), nearness, 0.0))


def _face_texture(volumes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The ``face_texture`` view, (B, 1, H, W) in [0, 1]: facing the front of the face box, the
    fine texture of the first :data:`TEXTURE_DEPTH` voxels under the skin (each voxel's absolute
    difference from its 3×3×3 neighbourhood's mean), in units of the head's own (the same, over
    the tissue of the back half of the grid, which no defacer touches), halved. A pasted face is
    smoother than the scanner's noise in the rest of the head; a real face carries that noise."""
    x, y, z = volumes.shape[2:]
    tissue = volumes > SKIN_FLOOR * scale.reshape(-1, 1, 1, 1, 1)
    back = [slice(0, x), slice(0, y // 2), slice(0, z)]
    tissue_behind, detail_behind = tissue[(..., *back)], _fine_detail(volumes, back)
    own = (detail_behind * tissue_behind).sum((1, 2, 3, 4)) / tissue_behind.sum((1, 2, 3, 4)).clamp_min(1)
    bounds = face_bounds(volumes.shape[2:])
    skin, detail = tissue[(..., *bounds)], _fine_detail(volumes, bounds)
    depth = skin.shape[3]
    first_from_front = skin.flip(3).float().argmax(3, keepdim=True)
    from_front = torch.arange(depth - 1, -1, -1, device=volumes.device).reshape(1, 1, 1, -1, 1)
    under = skin & (from_front >= first_from_front) & (from_front < first_from_front + TEXTURE_DEPTH)
    texture = (detail * under).sum(3) / under.sum(3).clamp_min(1)
    relative = texture / own.clamp_min(1e-6).reshape(-1, 1, 1, 1)
    return _display(torch.where(skin.any(3), relative / 2, 0.0).clamp(0, 1))


def _fine_detail(volumes: torch.Tensor, part: list[slice]) -> torch.Tensor:
    """Each voxel's absolute difference from its 3×3×3 neighbourhood's mean (the neighbours within the
    grid), over the ``part`` (X, Y, Z slices) of (B, 1, X, Y, Z) volumes: read with a margin of one
    voxel, it is what the whole grid would give, for the fraction of its cost."""
    grown = [slice(max(0, p.start - 1), min(n, p.stop + 1)) for p, n in zip(part, volumes.shape[2:])]
    around = volumes[(..., *grown)]
    detail = (around - F.avg_pool3d(around, 3, stride=1, padding=1, count_include_pad=False)).abs()
    return detail[(..., *(slice(p.start - g.start, p.stop - g.start) for p, g in zip(part, grown)))]


def _view(volumes: torch.Tensor, name: str) -> torch.Tensor:
    """One named whole-head view, (B, 1, H, W), before resizing and scaling."""
    reduction, plane = name.split("_")
    dim = 2 + PLANE_AXES[plane]
    if reduction == "mean":
        collapsed = volumes.mean(dim)
    else:
        collapsed = volumes.select(dim, volumes.shape[dim] // 2)
    return _display(collapsed)


def _scaled(images: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)
    return (images / scale).clamp(0, 1)


def compute_views(volumes: torch.Tensor, size: int, mode: str = "all") -> torch.Tensor:
    """(B, 1, X, Y, Z) RAS+ volumes → (B, V, size, size) views in [0, 1], ordered as VIEW_NAMES.

    ``mode`` picks the views (``VIEW_MODES``): "mean", "slice", "all" or "all_face".
    """
    if mode not in VIEW_MODES:
        raise ValueError(f"view mode {mode!r} is not one of {sorted(VIEW_MODES)}")
    volumes = volumes.float()
    scale = robust_scale(volumes)
    images = []
    for name in (VIEW_NAMES[v] for v in VIEW_MODES[mode]):
        if name == "face_texture":
            images.append(_square(_face_texture(volumes, scale), size))
        elif name.startswith("face_"):
            images.append(_square(_face_view(volumes, name, scale), size))
        else:  # resized, then scaled and clamped
            images.append(_scaled(_square(_view(volumes, name), size), scale))
    return torch.cat(images, dim=1)


def sagittal_slices(
    volumes: torch.Tensor, size: int, n_slices: int = 1, scale: torch.Tensor | float | None = None
) -> torch.Tensor:
    """(B, 1, X, Y, Z) → (B, n_slices, size, size) adjacent sagittal slices in [0, 1].

    The slices are centred on the middle one (index ``X // 2``; for ``n_slices`` = 3 that is
    ``X//2 - 1 … X//2 + 1``) and shown like the sagittal views (face to the right). ``scale`` is
    the per-volume intensity scale, ``(B,)`` or a number; by default the volumes' own
    :func:`robust_scale`. Pass the source's scale for its paired target so both share it.
    """
    volumes = volumes.float()
    middle = volumes.shape[2] // 2
    first = middle - n_slices // 2
    if n_slices < 1 or first < 0 or first + n_slices > volumes.shape[2]:
        raise ValueError(f"cannot take {n_slices} sagittal slices from {volumes.shape[2]} voxels")
    images = _square(_display(volumes[:, 0, first : first + n_slices]), size)
    return _scaled(images, robust_scale(volumes) if scale is None else scale)


def sagittal_planes(images: torch.Tensor, plane_shape: Sequence[int]) -> torch.Tensor:
    """Undo :func:`sagittal_slices`' layout: (k, S, S) images → (k, Y, Z) planes.

    Resize back to the padded square, cut the centred (Z, Y) picture out, and turn it from
    display order (superior at the top, anterior to the right) back to RAS (Y, Z) order.
    """
    height, width = plane_shape[1], plane_shape[0]
    side = max(height, width)
    if images.shape[-1] != side:
        images = F.interpolate(images[:, None], size=(side, side), mode="bilinear", antialias=True)[:, 0]
    top, left = (side - height) // 2, (side - width) // 2
    return images[:, top : top + height, left : left + width].flip(-2).transpose(-1, -2)
