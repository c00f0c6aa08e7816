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
