"""Where the defacer's registration search goes: the start pitches it tries and where each ends.

:func:`defacegan.deface.register_template` optimises from nods of -20, 0 and +20 degrees about the
head's own axes and tries a start 20 degrees further out (up to 60) wherever the outermost one
ends beyond itself. This bench shows that rule at work, per head:
- every head of ``--data`` as stored, and Colin27 where it is installed: the search should not
  grow on heads that lie as scanners put them (then their registrations are those of the three
  starts alone), and how far inside its own start each outermost optimisation stopped says how
  much room that leaves; and how far each lies nodded against the template once registered
  (:func:`defacegan.deface.head_nod`): the median over the IXI heads the shipped detector was
  trained on (all but ``HELD_OUT``) is :data:`defacegan.anatomy.TYPICAL_NOD`, the pose ``check``
  turns a head nodded beyond the training poses back to;
- the first ``--scans`` of them nodded nose up and nose down by each of ``--nods`` degrees (the
  motions of ``bench/deface.py``): where the search grows, and which start wins.

    python bench/pitch_search.py --data ../shared/data/ixi-t1-2mm

Prints a table and writes JSON (default bench/results/pitch_search.json). The Dice these
registrations give against the truth is ``bench/deface.py``'s (``--turns``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from deface import posed
from defacegan.anatomy import TYPICAL_NOD
from defacegan.deface import COLIN27, PITCH_STARTS_DEG, head_nod, pitch_search, register_template
from defacegan.detector_data import subject_of
from defacegan.detector_training import HELD_OUT
from defacegan.io import Scan, atomic_write_text, load_scan


def searched(scan: Scan, head: str, pose: str, registered: bool = False) -> dict:
    """One row: each start tried with its final Mattes MI and the nod it ended at, and the winner;
    with ``registered``, the nod of the whole registration too."""
    search = pitch_search(scan)
    starts = {f"{start:g}": {"mi": mi, "ended": search.ended(start)} for start, (mi, _) in search.fits.items()}
    return {"head": head, "pose": pose, "starts": starts, "grew": len(search.fits) > len(PITCH_STARTS_DEG),
            "best_start": search.best, "best_ended": search.ended(search.best),
            **({"nod": head_nod(scan, register_template(scan, search=search))} if registered else {})}


def summarise(rows: list[dict]) -> list[dict]:
    """Per pose: heads, heads whose search grew, and how far the outermost starts ended."""
    summary = []
    for pose in dict.fromkeys(row["pose"] for row in rows):
        group = [row for row in rows if row["pose"] == pose]
        edges = {side: [row["starts"][f"{side * max(PITCH_STARTS_DEG):g}"]["ended"] for row in group] for side in (-1, 1)}
        summary.append({"pose": pose, "heads": len(group), "grew": sum(row["grew"] for row in group),
                        "won_beyond_the_starts": sum(abs(row["best_start"]) > max(PITCH_STARTS_DEG) for row in group),
                        "lower_start_ended": [min(edges[-1]), max(edges[-1])],
                        "upper_start_ended": [min(edges[1]), max(edges[1])]})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of real heads (e.g. IXI)")
    parser.add_argument("--scans", type=int, default=8, help="how many heads of --data to nod (default 8)")
    parser.add_argument("--nods", type=float, nargs="*", default=[30.0, 45.0, 60.0],
                        help="degrees the --scans heads are nodded nose up and down by (default 30 45 60)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/pitch_search.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    heads = sorted(args.data.glob("*.nii*"))
    rows = [searched(load_scan(path), path.name, "as stored", registered=True)
            for path in heads + ([COLIN27] if COLIN27.is_file() else [])]
    for path in heads[: args.scans]:
        source = load_scan(path)
        for degrees in args.nods:
            for motion in ("nodded nose up", "nodded nose down"):
                rows.append(searched(posed(source, motion, degrees)[0], path.name, f"{motion} {degrees:g} degrees"))
    summary = summarise(rows)

    table = Table(title=f"the registration's pitch search ({args.data.name}; starts {', '.join(f'{s:g}' for s in PITCH_STARTS_DEG)})")
    for column in ("pose", "heads", "search grew", "won by a start beyond", "-20 start ended", "+20 start ended"):
        table.add_column(column, justify="left" if column == "pose" else "right")
    for row in summary:
        table.add_row(row["pose"], str(row["heads"]), str(row["grew"]), str(row["won_beyond_the_starts"]),
                      *(f"{low:+.1f} to {high:+.1f}" for low, high in (row["lower_start_ended"], row["upper_start_ended"])))
    Console().print(table)
    nods = {row["head"]: row["nod"] for row in rows if "nod" in row}
    trained = [nod for head, nod in nods.items() if head != COLIN27.name and subject_of(Path(head)) not in HELD_OUT]
    typical = float(np.median(trained)) if trained else None
    print(f"registered as stored, nodded against the template: {min(nods.values()):+.1f} to {max(nods.values()):+.1f} degrees "
          f"({len(nods)} heads); the median of the {len(trained)} the shipped detector was trained on: "
          + (f"{typical:+.1f} (anatomy.TYPICAL_NOD: {TYPICAL_NOD:g})" if typical is not None else "none among them"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps({"data": str(args.data), "starts": list(PITCH_STARTS_DEG), "summary": summary,
                                             "typical_nod_of_the_training_heads": typical,
                                             "rows": rows, "seconds": time.perf_counter() - started}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
