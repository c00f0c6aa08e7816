import numpy as np
from sklearn import metrics as skm

from defacegan.metrics import (
    classification_metrics,
    classification_report,
    ece_interval,
    expected_calibration_error,
    subject_bootstrap_interval,
)


def test_matches_sklearn_on_hand_made_labels():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    probabilities = np.array([0.1, 0.6, 0.2, 0.9, 0.4, 0.8, 0.7, 0.3])
    predicted = (probabilities >= 0.5).astype(int)
    scores = classification_metrics(labels, probabilities)
    assert scores["accuracy"] == 6 / 8
    assert scores["precision"] == skm.precision_score(labels, predicted) == 3 / 4
    assert scores["recall"] == skm.recall_score(labels, predicted) == 3 / 4
    assert scores["f1"] == skm.f1_score(labels, predicted)
    assert scores["auc"] == skm.roc_auc_score(labels, probabilities)
    assert scores["confusion"] == [[3, 1], [1, 3]]


def test_report_scores_each_method_against_all_faces():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.9, 0.3])
    kinds = np.array(["face", "face", "mask", "plane"])
    report = classification_report(labels, probabilities, kinds)
    assert report["mask"]["recall"] == 1.0 and report["mask"]["n"] == 3
    assert report["plane"]["recall"] == 0.0
    assert report["all"]["recall"] == 0.5
    assert np.isnan(classification_metrics([1, 1], [0.9, 0.8])["auc"])


def test_subject_bootstrap_resamples_heads_not_scans():
    # Two heads, one always right and one always wrong: every resampling draws whole heads, so the
    # accuracy is 0, 0.5 or 1 and never the scan-level values between them.
    subjects = np.repeat(["a", "b"], 50)
    right = np.repeat([1.0, 0.0], 50)
    low, high = subject_bootstrap_interval(lambda i: right[i].mean(), subjects, rounds=500)
    assert (low, high) == (0.0, 1.0)
    # One head's scans alone: nothing to resample between, the interval is the point.
    assert subject_bootstrap_interval(lambda i: right[i].mean(), subjects[:50], rounds=50) == (1.0, 1.0)


def test_ece_interval_brackets_the_ece_and_narrows_with_heads():
    rng = np.random.default_rng(0)

    def drawn(heads: int):
        confidence = rng.uniform(0.5, 1.0, heads * 40)
        labels = (rng.uniform(size=confidence.size) > confidence).astype(int)  # right as often as confident
        return np.stack([confidence, 1 - confidence], 1), labels, np.repeat(np.arange(heads), 40)

    few, many = drawn(4), drawn(64)
    low_few, high_few = ece_interval(*few)
    low_many, high_many = ece_interval(*many)
    assert low_many <= expected_calibration_error(*many[:2]) <= high_many
    assert high_many - low_many < high_few - low_few
