"""Would training on faces pasted from other heads, or on their average, teach the detector that a face
not the head's own is ``replaced``, without costing real faces?

``bench/other_faces.py`` found the shipped detector's ``replaced`` to mean pydeface's mean face: the
same pasting with another held-out head's face is called ``face`` on every head. This bench draws
that pasting for training, as an experiment outside the shipped recipe (no family is added to
:data:`defacegan.families.FAMILIES` here): ``replace_other``, each training head's face replaced as
``replace_template`` replaces it (:func:`defacegan.families.replace_template`, its region, warp,
intensity, noise and feathered edge), by the face of another training head drawn at random
(registered as ``bench/other_faces.py`` registers its donors; :data:`DRAWS` donors a head, one draw
each). With ``--donors average`` the family is ``replace_average`` instead: each training head's face
replaced by the mean of the other training heads' faces (:data:`DRAWS` draws a head), the average face a
refacing tool pastes, made of another population's heads. Seed 0's member of ``make weights``' recipe is fitted twice on the same draws (round 0 of the
24 training heads, shared with ``make weights``; 20 training and 4 calibration heads by seed 0): as
shipped (without ``replace_smooth``), and with the experiment's draws added. Each fit is judged as
the shipped column of ``bench/detector_eval.py`` judges the shipped detector (the 8 held-out heads,
seed 1000's draws, network alone), and by ``bench/other_faces.py --ckpt`` (``check``'s default with
the fit as its network).

    python bench/swap_training.py [--ixi ../shared/data/ixi-t1-2mm]
    python bench/swap_training.py --donors average --fits data/average_training --out bench/results/average_training.json
    python bench/swap_training.py --donors average --flatten-mm 20 --fits data/average_training-flatten20 \
        --out bench/results/average_training-flatten20.json

``--flatten-mm 20`` fits both on the shipped detector's contract (views flattened at σ 20 mm), its
round 0 of the training heads drawn and cached as ``make weights`` draws it.

Draws round 0 of the training heads once (18 min here in two processes, cached in ``data/bundles``), then the
face swaps or averages (cached in ``--fits``), two fits and their judging. Prints a table and writes
JSON to ``--out`` (default bench/results/swap_training.json) and the fits to ``--fits`` (default
``data/swap_training/``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

import other_faces
from defacegan.contract import InputContract
from defacegan.detector_data import DRAWS, Samples, _save_npz, draw_bundle, read_bundle, subject_of
from defacegan.detector_training import HELD_OUT, fit_member, save_detector
from defacegan.families import families_but
from detector_eval import rate_text
from smooth_training import ROWS, SHIPPED_WITHOUT, judged, options, round_zero, write_table

#: The experiment's family for each kind of donor (``--donors``); none is in defacegan.families.FAMILIES.
EXPERIMENT_FAMILIES = {"other": "replace_other", "average": "replace_average"}


def donor_faces(donors: str, faces: list[np.ndarray], i: int, rng: np.random.Generator) -> list[np.ndarray]:
    """:data:`DRAWS` faces (in the template's space) to paste onto head ``i`` of ``faces``: other heads'
    faces chosen with ``rng``, or the mean of the other heads' faces for every draw."""
    others = [j for j in range(len(faces)) if j != i]
    if donors == "other":
        return [faces[j] for j in rng.choice(others, DRAWS, replace=False)]
    return [np.mean([faces[j] for j in others], axis=0)] * DRAWS


def swaps(paths: list[Path], caches: list[Path], contract: InputContract, store: Path, seed: int,
          donors: str = "other") -> Samples:
    """:data:`DRAWS` draws of ``EXPERIMENT_FAMILIES[donors]`` for every head of ``paths`` (their bundles
    ``caches``), with the faces :func:`donor_faces` gives; cached in ``store``."""
    family = EXPERIMENT_FAMILIES[donors]
    flattened = f"-flatten{contract.flatten_mm:g}" if contract.flatten_mm else ""
    target = store / f"{family}-seed{seed}{flattened}.npz"
    if target.is_file():
        with np.load(target) as stored:
            return Samples(torch.from_numpy(stored["views"]), *(stored[k] for k in Samples.FACTS))
    fits = [other_faces.registered(path) for path in paths]
    rng = np.random.default_rng(seed)
    parts = []
    for i, (cache, head) in enumerate(zip(caches, fits)):
        bundle = read_bundle(cache)
        for number, face in enumerate(donor_faces(donors, [fit.face for fit in fits], i, rng)):
            pasted = dataclasses.replace(bundle, template_face=other_faces.onto_grid(face, head, contract))
            part = draw_bundle(pasted, contract, ("replace_template",), draws=1, seed=seed + number)
            parts.append(dataclasses.replace(part, family=np.array([family]), number=np.array([number])))
        print(f"{bundle.subject}: {DRAWS} {family} draws", flush=True)
    samples = Samples.join(parts)
    _save_npz(target, {"views": samples.views.numpy(), **{k: getattr(samples, k) for k in Samples.FACTS}})  # as the draws' cache
    return samples


def main(argv: list[str] | None = None) -> dict:
    parser = options(__doc__, "swap_training")
    parser.add_argument("--donors", choices=list(EXPERIMENT_FAMILIES), default="other",
                        help="paste other training heads' faces, or their average (give it its own --fits and --out)")
    parser.add_argument("--flatten-mm", type=float, default=None, metavar="MM",
                        help="both fits' contract flattens at this σ (the shipped detector's 20; default: not flattened)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    family = EXPERIMENT_FAMILIES[args.donors]
    contract, caches, train_heads, val_heads, drawn = round_zero(args, InputContract(flatten_mm=args.flatten_mm))
    known = [path for path in sorted(args.ixi.glob("*.nii*")) if subject_of(path) not in HELD_OUT]
    swapped = swaps(known, [cache for cache in caches if subject_of(cache) not in HELD_OUT], contract, args.fits, args.seed,
                    args.donors)
    samples = Samples.join([drawn, dataclasses.replace(swapped, views=swapped.views.to(drawn.views.dtype))])
    results, faces = {}, {}
    for number, (name, extra) in enumerate({"as shipped": [], f"with {family}": [family]}.items()):
        trained = families_but(SHIPPED_WITHOUT) + extra
        net, temperature, train = fit_member(samples, contract, trained, train_heads, val_heads, args.seed)
        facts = {"train_subjects": train_heads, "val_subjects": val_heads, "held_out": list(HELD_OUT),
                 "families": trained, "temperature": temperature, "seed": args.seed}
        path = save_detector(net, contract, args.fits / f"fit-{number}.pt", facts)
        results[name] = judged(args, path)
        results[name]["views"] = len(train.label)
        faces[name] = other_faces.main(["--ckpt", str(path), "--ixi", str(args.ixi), "--cache", str(args.cache),
                                        "--out", str(args.fits / f"other_faces-{number}.json")])
        print(f"{name}: {path}, {len(train.label)} training views ({time.perf_counter() - started:.0f} s)", flush=True)
    first = "held-out, 8 subjects"
    rows = [{first: f"{row} (network alone)", **{name: rate_text(r["headline"][row]) for name, r in results.items()}}
            for row in ROWS]
    rows.append({first: "expected calibration error (network alone)", **{name: f"{r['ece']:.3f}" for name, r in results.items()}})
    for donor in (s["donor"] for s in next(iter(faces.values()))["summary"]):
        for answer, what in (("network", "network alone"), ("verdict", "check's default")):
            rows.append({first: f"face replaced by {donor}: not called face ({what})",
                         **{name: rate_text(next(s for s in f["summary"] if s["donor"] == donor)[answer]["not_face"])
                            for name, f in faces.items()}})
    return write_table(args, rows, {"fits": {name: {k: v for k, v in r.items() if k != "scans"} for name, r in results.items()},
                                    "other_faces": {name: f["summary"] for name, f in faces.items()}}, started)


if __name__ == "__main__":
    main()
