"""``bench/detector_eval.py --fits`` keeps each k-fold network and ``bench/anatomy.py --folds`` puts
every head through ``check``'s path with the one that never saw it: a kept fold must load as ``check``
loads a detector (same weights, same temperature, an ensemble where the fold had several members)
and be paired with its own test heads alone. A head judged by a network that trained on it would
make the k-fold's ``check`` figures a claim about training heads."""

from __future__ import annotations

from pathlib import Path

import torch

from defacegan.contract import InputContract
from defacegan.detector_data import subject_of
from defacegan.models.detector import DetectorNet

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_kept_folds_load_as_check_loads_them_and_judge_only_their_own_test_heads(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from anatomy import fold_judges
    from detector_eval import keep_fold

    contract = InputContract()
    torch.manual_seed(0)
    nets = [DetectorNet(n_views=len(contract.view_names)).eval() for _ in range(3)]
    for net, temperature in zip(nets, (1.5, 2.0, 0.8)):
        net.temperature.fill_(temperature)
    fits = tmp_path / "fits"
    keep_fold(fits, 0, nets[:1], [{"fold": 0, "test_subjects": ["IXI002"]}], contract)
    keep_fold(fits, 1, nets[1:], [{"fold": 1, "test_subjects": ["IXI012", "IXI013"]}] * 2, contract)
    ixi = tmp_path / "ixi"
    ixi.mkdir()
    for subject in ("IXI002", "IXI012", "IXI013", "IXI099"):
        (ixi / f"{subject}-Guys-0828-T1.nii.gz").touch()

    judges = fold_judges(fits, ixi, pose_check=True)

    assert [[subject_of(path) for path in paths] for _, paths in judges] == [["IXI002"], ["IXI012", "IXI013"]]
    views = torch.rand(2, len(contract.view_names), contract.view_size, contract.view_size)
    (single, _), (pair, _) = judges
    facts = torch.load(fits / "fold-1.pt", weights_only=True)["facts"]
    assert facts["held_out"] == ["IXI012", "IXI013"]  # the fold's test heads, not the shipped detector's
    assert single.contract == contract and pair.contract == contract
    with torch.no_grad():
        assert torch.allclose(torch.softmax(single.net(views), 1), torch.softmax(nets[0](views), 1), atol=1e-6)
        mean = torch.stack([torch.softmax(net(views), 1) for net in nets[1:]]).mean(0)
        assert torch.allclose(torch.softmax(pair.net(views), 1), mean, atol=1e-6)


def _row(subject: str, label: str, chin: float, p_face: float = 0.3) -> dict:
    """A ``removed`` verdict the network was unsure of, whose only region holding tissue is the chin's."""
    return {"subject": subject, "label": label, "network": "removed", "p_face": p_face, "texture": 1.0,
            "tissue": {"eyes": 0.0, "nose": 0.0, "mouth": 0.0, "chin": chin}}


def test_the_overruling_regions_are_chosen_on_the_other_folds_heads_and_scored_on_their_own(monkeypatch):
    """The cross-fitted choice of ``bench/anatomy.py``'s ``overruling`` report: a fold's set comes from
    the other folds' rows only. A chin that recovers the faces of folds 0 and 1 but raises two false
    alarms on fold 2 is chosen for fold 2 (and scored there: two false alarms), and for neither fold
    0 nor 1, whose other folds' rows show it losing."""
    monkeypatch.syspath_prepend(str(BENCH))
    from anatomy import overruling_report

    rows = [_row("A", "face", 0.9), _row("B", "face", 0.8), _row("C", "removed", 0.9), _row("C", "removed", 0.9),
            _row("C", "face", 0.1), _row("A", "removed", 0.1, p_face=0.01)]  # the last two: under the line, under the floor
    report = overruling_report(rows, {"A": "fold-0.pt", "B": "fold-1.pt", "C": "fold-2.pt"})

    chin = next(entry for entry in report["sets"] if entry["features"] == ["eyes", "nose", "chin"])
    plain = next(entry for entry in report["sets"] if entry["features"] == ["eyes", "nose"])
    assert (chin["face"], chin["removed"]) == (2, 2) and (plain["face"], plain["removed"]) == (0, 0)
    chosen = {fold["fold"]: fold for fold in report["cross_fitted"]}
    # fold 0's others: B's face against C's two false alarms; fold 1's the same with A: a loss, so no chin
    assert chosen["fold-0.pt"]["features"] == ["eyes", "nose"] and chosen["fold-1.pt"]["features"] == ["eyes", "nose"]
    # fold 2's others: A's and B's faces, no false alarm: the chin, scored on C's two false alarms
    assert chosen["fold-2.pt"]["features"] == ["eyes", "nose", "chin"]
    assert chosen["fold-2.pt"]["on_own_fold"] == {"face": 0, "removed": 2, "replaced": 0}
