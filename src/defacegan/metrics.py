"""Scores: defaced-or-not classification, and (below) image similarity for re-facing."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

CLASS_NAMES = ("face", "defaced")  # label 0, label 1


def classification_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1 (defaced = positive), ROC AUC and the confusion matrix.

    ``probabilities`` are p(defaced). AUC is NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=float).ravel()
    predicted = (probabilities >= threshold).astype(int)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "auc": float(skm.roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "confusion": skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        "n": int(labels.size),
    }


def classification_report(labels, probabilities, kinds) -> dict[str, dict]:
    """Metrics on everything (``"all"``) and per defacing method.

    ``kinds`` says what each scan is ("face" or the defacing method); the entry for a method
    scores that method's defaced scans against all the faces, so a cross-defacer run reports
    the method it trained on and the one it did not see side by side.
    """
    labels, probabilities, kinds = np.asarray(labels), np.asarray(probabilities), np.asarray(kinds)
    report = {"all": classification_metrics(labels, probabilities)}
    for method in sorted(set(kinds.tolist()) - {"face"}):
        keep = (kinds == "face") | (kinds == method)
        report[method] = classification_metrics(labels[keep], probabilities[keep])
    return report
