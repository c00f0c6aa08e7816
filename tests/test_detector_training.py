"""The member recipe of `make weights` (detector_training.fit_member) on small generated views."""

from __future__ import annotations

import numpy as np
import torch

from defacegan.contract import VERDICTS, InputContract
from defacegan.detector_data import Samples
from defacegan.detector_training import fit_member, logits_of
from defacegan.features import FEATURES

#: (family, label) of the generated examples: a face, a removed face, a replaced one, a blurred face.
KINDS = (("none", "face"), ("mask", "removed"), ("replace_template", "replaced"), ("blur", "face"))


def generated_samples(contract: InputContract, per_kind: int = 6, subjects=("s1", "s2", "s3", "s4")) -> Samples:
    """Views whose class shows in one corner (bright for a face, dark for removed, mid-grey for
    replaced), with noise, ``per_kind`` of each kind per subject."""
    rng = np.random.default_rng(0)
    size, views = contract.view_size, len(contract.view_names)
    rows = [(subject, family, label, n) for subject in subjects for family, label in KINDS for n in range(per_kind)]
    level = {"face": 1.0, "removed": 0.0, "replaced": 0.5}
    data = rng.normal(0.3, 0.1, (len(rows), views, size, size)).astype(np.float32)
    for i, (_, _, label, _) in enumerate(rows):
        data[i, :, : size // 2, : size // 2] += level[label]
    nothing = np.zeros((len(rows), len(FEATURES)), np.float32)
    return Samples(torch.from_numpy(data), np.array([VERDICTS.index(r[2]) for r in rows]), np.array([r[1] for r in rows]),
                   np.array([r[0] for r in rows]), np.array([r[3] for r in rows]), nothing, nothing.copy())


def test_a_member_learns_only_its_families_and_subjects_and_is_calibrated_on_the_others():
    contract = InputContract()
    samples = generated_samples(contract, per_kind=16)
    trained = ["none", "mask", "replace_template"]
    net, temperature, train = fit_member(samples, contract, trained, ["s1", "s2", "s3"], ["s4"], seed=0, epochs=12)
    assert set(train.family) == set(trained) and set(train.subject) == {"s1", "s2", "s3"}
    assert len(train.label) == 3 * 3 * 16
    assert temperature > 0 and float(net.temperature) == temperature
    held = samples.where(samples.subject == "s4")
    assert (logits_of(net, held.views).argmax(1).numpy() == held.label).mean() == 1.0


def test_a_family_shown_more_often_is_repeated_in_training():
    contract = InputContract()
    samples = generated_samples(contract, per_kind=2)
    _, _, once = fit_member(samples, contract, [f for f, _ in KINDS], ["s1", "s2"], ["s3"], seed=0, epochs=1)
    _, _, thrice = fit_member(samples, contract, [f for f, _ in KINDS], ["s1", "s2"], ["s3"], seed=0, epochs=1,
                              shown={"blur": 3})
    blur = int((once.family == "blur").sum())
    assert blur == 2 * 2 and len(thrice.label) == len(once.label) + 2 * blur
    assert int((thrice.family == "blur").sum()) == 3 * blur
