"""Known geometry to score defacing against: Dice overlap and random affine head motions."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from defacegan.deface import LPS, warp
from defacegan.io import Scan


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def random_affine(
    rng: np.random.Generator,
    center_mm: np.ndarray,
    rotation_deg: float = 10.0,
    shift_mm: float = 15.0,
    scale: float = 0.10,
) -> sitk.AffineTransform:
    """A random affine about ``center_mm`` (RAS mm): rotations up to ±``rotation_deg``
    per axis, shifts up to ±``shift_mm``, per-axis scaling up to ±``scale``."""
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    rotation = sitk.Euler3DTransform((0, 0, 0), *angles.tolist())
    matrix = np.reshape(rotation.GetMatrix(), (3, 3)) @ np.diag(1 + rng.uniform(-scale, scale, 3))
    transform = sitk.AffineTransform(matrix.ravel().tolist(), rng.uniform(-shift_mm, shift_mm, 3).tolist())
    transform.SetCenter((LPS @ np.asarray(center_mm, dtype=float)).tolist())
    return transform


def misregistered(
    transform: sitk.Transform,
    rng: np.random.Generator,
    shift_mm: tuple[float, float] = (15.0, 25.0),
    angle_deg: tuple[float, float] = (20.0, 70.0),
) -> sitk.Transform:
    """``transform`` (scan -> template) made wrong on purpose: what it removes moves by a random
    ``shift_mm`` toward the brain, between straight back and straight up (``angle_deg`` up from
    posterior)."""
    distance = rng.uniform(*shift_mm)
    angle = np.deg2rad(rng.uniform(*angle_deg))
    towards_brain = LPS @ np.array([0.0, -np.cos(angle), np.sin(angle)])  # RAS posterior-superior
    return sitk.CompositeTransform([transform, sitk.TranslationTransform(3, (-distance * towards_brain).tolist())])


def nodded(source: Scan, degrees: float) -> tuple[Scan, sitk.Euler3DTransform]:
    """``source`` nodded by ``degrees`` (positive: nose up) about its field of view's centre, and
    the resampling transform that did it."""
    centre = source.affine[:3, :3] @ ((np.asarray(source.data.shape) - 1) / 2) + source.affine[:3, 3]
    nod = sitk.Euler3DTransform((LPS @ centre).tolist(), np.deg2rad(degrees), 0.0, 0.0)  # LPS +x: nose up
    return Scan(warp(source.image, nod, source.data.shape, source.affine), source.affine), nod
