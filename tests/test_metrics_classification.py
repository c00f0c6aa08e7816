import numpy as np
from sklearn import metrics as skm

from defacegan.metrics import classification_metrics, classification_report


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
