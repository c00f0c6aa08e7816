"""The shipped detector when the field of view stops above the neck, on IXI heads it never saw.

IXI's field of view holds the neck; many protocols stop at the mouth, the nose or the cerebellum,
and a defaced scan from one of them must still read as defaced, a partly defaced one as a face.
Each of the 8 held-out heads (``HELD_OUT``) is judged by ``check``'s own path (the Detector on the
head's grid volume, with its default: the anatomy's second opinion where the network is unsure)
intact, defaced by the pydeface mask, and partly defaced (the lowest 40 % of the face region: eyes
and nose remain, so ``face`` by the feature rule), first as IXI stored it,
then with the field of view's lower edge raised to 0, 20, 35 and 50 mm above the chin
(:func:`defacegan.families.cut_below`), with its upper edge 20 and 40 mm below the top of
the head (the grid is placed by the head's top, back and middle: such a scan misplaces it), and
with its front edge 8, 16 and 24 mm behind the tip of the nose (a field of view too short from
back to front: IXI's own cuts the nose's tip and the lips of some heads, IXI443 and IXI527). Rates
of the expected answer with Wilson 95 % intervals: one scan per head and case, so the 8 subjects
are the trials.

    python bench/field_of_view.py [--ixi ../shared/data/ixi-t1-2mm] [--ckpt CKPT]

Prints a table and writes JSON (default bench/results/field_of_view.json).
"""

from __future__ import annotations

import time

import numpy as np

from defacegan.detector_data import bundle_caches, read_bundle
from defacegan.families import cut_below
from defacegan.io import Scan
from held_out import held_out_setup, judge_conditions, print_conditions, write_result

#: The field of view's lower edge above the chin's lowest voxel (mm); None: as IXI stored it.
EDGES_MM = (None, 0.0, 20.0, 35.0, 50.0)
#: The field of view's upper edge below the top of the head (mm): the grid is placed by the head's
#: top, which such a scan does not show.
TOP_CUTS_MM = (20.0, 40.0)
#: The field of view's front edge behind the tip of the nose (mm): the face's front cut off.
FRONT_CUTS_MM = (8.0, 16.0, 24.0)


def lower_edge(mm: float | None):
    """The acquisition whose field of view's lower edge lies ``mm`` above the chin (None: IXI's, with the neck)."""
    return lambda bundle, variant: Scan((variant if mm is None else cut_below(bundle, variant, mm)).volume, bundle.affine)


def edge(axis: int, mm: float):
    """The acquisition whose field of view ends ``mm`` short of the intact head's last voxel along
    RAS ``axis`` (2: the top of the head; 1: the tip of the nose)."""
    def acquire(bundle, variant) -> Scan:
        last = np.flatnonzero(bundle.head.any(axis=tuple(a for a in range(3) if a != axis))).max()
        volume = variant.volume.copy()
        volume[(slice(None),) * axis + (slice(int(round(last + 1 - mm / bundle.spacing)), None),)] = 0
        return Scan(volume, bundle.affine)
    return acquire


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args, detector, held = held_out_setup(__doc__, "field_of_view.json", argv)
    bundles = [read_bundle(cache) for cache in bundle_caches(held, detector.contract, args.cache)]
    conditions = {"as stored (neck)" if mm is None else f"{mm:.0f} mm above the chin": lower_edge(mm) for mm in EDGES_MM}
    conditions |= {f"top of the head: {mm:.0f} mm cut off": edge(2, mm) for mm in TOP_CUTS_MM}
    conditions |= {f"front of the face: {mm:.0f} mm cut off": edge(1, mm) for mm in FRONT_CUTS_MM}
    rows = judge_conditions(detector, bundles, conditions)
    print_conditions(f"field of view stopping above the neck, below the top of the head or behind the tip of the nose: {detector.checkpoint}, {len(bundles)} held-out IXI heads", rows)
    return write_result(args, detector, started, subjects=[b.subject for b in bundles], rows=rows)


if __name__ == "__main__":
    main()
