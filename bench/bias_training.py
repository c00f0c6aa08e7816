"""Would drawing training heads under a receive coil's field make the detector hold on scans with one,
without costing the rows it is judged by?

No drawn volume of the shipped recipe carries a bias field, and a field that darkens the face is
what ``bench/acquisition.py`` finds the detector weakest against (its "bias field up to 1" rows;
``check``'s second look with the field taken off mends part of it). This bench fits seed
``--seed``'s member of ``make weights``' recipe on round 0 of the 24 training heads twice: as
shipped, and with ``--bias-field PROB COEFFICIENTS`` (``python -m defacegan.detector_training
--bias-field``: that share of the volumes drawn under TorchIO's polynomial field, each coefficient
uniform up to COEFFICIENTS, over the subject's own tissue only; :func:`defacegan.detector_data.with_bias_field`).
A fit already in ``--fits`` whose facts match (families, seed, field, flattening) is used as it is. Each fit, and
the shipped ensemble beside them, is judged by the network alone on the 8 held-out heads' test draws
(seed 1000 whatever ``--seed``, as ``bench/detector_eval.py``'s shipped column), then on the very same
draws under a field of coefficients up to each of :data:`TEST_FIELDS` (every draw, paired: same variant
and pose, the field added), each replacement family trained on also on its own (:data:`REPLACEMENTS`),
then the two fits through ``check``'s path on ``bench/acquisition.py``'s bias-field conditions
(``--ckpt``; written to ``--fits``). ``--candidate CKPT`` judges one more detector, one that might be
shipped next or the one shipped before, beside the shipped ensemble in every row, and then both
through ``check``'s path too (``make figures`` sets the unflattened ensemble of 02e70a9 beside the
flattened one shipped at ff29075).

``--flatten-mm MM`` asks the other way round: the second fit's contract divides every volume by its
tissue's local mean before the views (:func:`defacegan.contract.flattened`), drawn under a field too
unless ``--bias-field 0 0``. Each network is judged on draws made with its own contract (the same
variants, poses and fields: the draws are seeded alike).

    python bench/bias_training.py [--ixi ../shared/data/ixi-t1-2mm] [--bias-field 0.5 0.6] [--flatten-mm MM] [--candidate CKPT]

Prints a table and writes JSON to ``--out`` (default bench/results/bias_training.json).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import acquisition
from defacegan.detector_data import DRAWS, bundle_caches, draw, subject_of
from defacegan.detector_training import HELD_OUT, logits_of
from defacegan.detector_training import main as train_member
from defacegan.families import families_but
from defacegan.inference import SHIPPED_CHECKPOINT, load_network
from defacegan.metrics import expected_calibration_error
from detector_eval import headline, per_family, rate_text, trained_families
from smooth_training import ROWS, SHIPPED_WITHOUT, options, write_table

#: The test draws' fields: none (the shipped column's draws), TorchIO's default strength, and the
#: strength of acquisition.py's strongest field, beyond the training field's default.
TEST_FIELDS = (None, 0.5, 1.0)
FIRST = "8 held-out subjects"
TEST_SEED = 1000  # the shipped column's draws (bench/detector_eval.py), whatever seed the fits have
#: The replacements trained on, each family's scans answered right three-way: which of them a contract
#: loses when it loses replaced faces (a pasted face differs from a face in contrast a small σ evens out).
REPLACEMENTS = ("replace_template", "replace_shell")


def fitted(args, number: int, bias_field: dict | None, flatten_mm: float | None = None) -> Path:
    """Seed ``args.seed``'s member at one round (without :data:`SHIPPED_WITHOUT`, as shipped), drawn with
    ``bias_field`` or without, on a contract that flattens (``flatten_mm``) or not: ``--fits/fit-<number>.pt``,
    fitted unless a fit of that recipe is there."""
    path = args.fits / f"fit-{number}.pt"
    if path.exists():
        _, contract, facts = load_network(path)
        if (facts.get("families"), facts.get("seed"), facts.get("bias_field"), contract.flatten_mm) == (
                families_but(SHIPPED_WITHOUT), args.seed, bias_field, flatten_mm):
            print(f"{path}: fitted before with this recipe, used as it is")
            return path
    field = ["--bias-field", *(str(bias_field[k]) for k in ("prob", "coefficients"))] if bias_field else []
    flatten = ["--flatten-mm", str(flatten_mm)] if flatten_mm else []
    return train_member(["--source", str(args.ixi), "--cache", str(args.cache), "--seed", str(args.seed), "--rounds", "1",
                         "--without", *SHIPPED_WITHOUT, "--out", str(path), "--manifest", str(args.fits / f"fit-{number}.tsv"),
                         *field, *flatten])


def second_fit_name(bias_field: dict | None, flatten_mm: float | None) -> str:
    """The column of the fit that is not as shipped."""
    parts = ([f"flattened (σ {flatten_mm:g} mm)"] if flatten_mm else []) + (["with a coil field"] if bias_field else [])
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> dict:
    parser = options(__doc__, "bias_training")
    parser.add_argument("--bias-field", type=float, nargs=2, default=(0.5, 0.6), metavar=("PROB", "COEFFICIENTS"),
                        help="the second fit's draws under a field (PROB 0: none)")
    parser.add_argument("--flatten-mm", type=float, default=None, metavar="MM", help="the second fit's contract flattens")
    parser.add_argument("--candidate", type=Path, default=None, metavar="CKPT",
                        help="another detector, one that might be shipped next (e.g. an ensemble of `make weights` members on "
                             "another contract) or the one shipped before, judged beside the shipped ensemble, through check's path too")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    trained_field = dict(zip(("prob", "coefficients"), args.bias_field)) if args.bias_field[0] else None
    if not (trained_field or args.flatten_mm):
        parser.error("the second fit would be the first: give it a --bias-field or --flatten-mm")
    fits = {"as shipped": fitted(args, 0, None),
            second_fit_name(trained_field, args.flatten_mm): fitted(args, 1, trained_field, args.flatten_mm)}
    candidate = {f"candidate ({args.candidate})": args.candidate} if args.candidate else {}
    judged = {"shipped ensemble": Path(str(SHIPPED_CHECKPOINT)), **candidate, **fits}
    through_check = judged if candidate else fits  # the shipped ensemble's own run is acquisition.py's, unless beside a candidate
    networks = {name: load_network(path) for name, path in judged.items()}
    held_paths = [path for path in sorted(args.ixi.glob("*.nii*")) if subject_of(path) in HELD_OUT]
    rows, results = [], {}
    for strength in TEST_FIELDS:
        field = {"prob": 1.0, "coefficients": strength} if strength else None
        test = "held-out draws" + (f", coil field up to {strength:g}" if strength else "")
        drawn = {}  # each contract's draws under this field, read once for the networks that share it
        for name, (net, contract, facts) in networks.items():
            if contract not in drawn:
                drawn[contract] = draw(bundle_caches(held_paths, contract, args.cache), contract, args.cache,
                                       draws=DRAWS, seed=TEST_SEED, bias_field=field)
            samples = drawn[contract]
            with torch.no_grad():
                probabilities = torch.softmax(logits_of(net, samples.views), 1).numpy()
            results.setdefault(name, {})[test] = {
                "headline": headline(samples, probabilities, trained=trained_families(facts)),
                "ece": expected_calibration_error(probabilities, samples.label),
                "per_family": per_family(samples, probabilities)}
        for row in ROWS:
            rows.append({FIRST: f"{test}: {row} (network alone)",
                         **{name: rate_text(results[name][test]["headline"][row]) for name in judged}})
        for family in REPLACEMENTS:
            rows.append({FIRST: f"{test}: `{family}` answered right three-way (network alone)",
                         **{name: rate_text(results[name][test]["per_family"][family]["three_way"]) for name in judged}})
        rows.append({FIRST: f"{test}: expected calibration error (network alone)",
                     **{name: f"{results[name][test]['ece']:.3f}" for name in judged}})
    conditions = {}
    for number, (name, path) in enumerate(through_check.items()):
        conditions[name] = acquisition.main(["--ixi", str(args.ixi), "--cache", str(args.cache), "--ckpt", str(path),
                                             "--conditions", "bias field", "--out", str(args.fits / f"acquisition-{number}.json")])["rows"]
    for i, condition in enumerate(conditions["as shipped"]):
        rows.append({FIRST: f"{condition['case']}, {condition['condition']}: heads answered right (check's default)",
                     **{name: f"{conditions[name][i]['right']}/{conditions[name][i]['n']}" if name in conditions else ""
                        for name in judged}})
    return write_table(args, rows, {"fits": {name: str(path) for name, path in fits.items()}, "trained_field": trained_field,
                                    "test_fields": list(TEST_FIELDS), "results": results, "acquisition": conditions}, started)


if __name__ == "__main__":
    main()
