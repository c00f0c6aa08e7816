"""A re-facing as AFNI's refacer or mri_reface make one, for tests and benches on real heads."""

from __future__ import annotations

import numpy as np

from defacegan.deface import face_region, template_masks, warp
from defacegan.io import Scan


def template_face_pasted(scan: Scan, transform) -> np.ndarray:
    """``scan`` with its face region (pydeface's mask, moved by ``transform``) replaced by the
    template head moved onto it, scaled to the face's intensity (their 75th percentiles in the region)."""
    face = face_region(scan, transform)
    data = scan.data.astype(np.float32)
    template = warp(template_masks().head, transform, data.shape, scan.affine)
    template *= np.percentile(data[face & (data > 0)], 75) / max(np.percentile(template[face & (template > 0)], 75), 1e-6)
    return np.where(face, template, data).astype(np.float32)
