"""Per-view voting classifiers: logistic regression, RBF-SVM or random forest.

One scikit-learn pipeline (standardise → estimator) per 2D view, each tuned by GridSearchCV
on the flattened view with folds grouped by subject (a subject's face and defaced twin never
straddle folds), combined by majority vote with ties broken by the mean probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GridSearchCV, GroupKFold, learning_curve, validation_curve
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def vote(probabilities: np.ndarray) -> np.ndarray:
    """Combine per-view p(defaced) of shape (N, V) into one score per scan.

    score = (votes + mean probability) / (V + 1), where votes counts views with p ≥ 0.5. It is
    ≥ 0.5 exactly when the majority says "defaced", or on a tie when the mean probability is ≥ 0.5,
    so thresholding the score at 0.5 is the majority vote, and it still ranks scans for ROC AUC.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    votes = (probabilities >= 0.5).sum(axis=1)
    return (votes + probabilities.mean(axis=1)) / (probabilities.shape[1] + 1)


class ViewVoting:
    """One grid-searched estimator per view; `fit(views, labels, groups)`, `predict_proba(views)`.

    ``views`` is (N, V, S, S); ``groups`` are subject ids for GroupKFold.
    """

    def __init__(
        self,
        estimator: BaseEstimator,
        param_grid: dict[str, Sequence],
        cv_folds: int = 3,
        scoring: str = "f1",
        n_jobs: int = 1,
        augment_passes: int = 2,
        curves: bool = True,
        seed: int = 0,
    ):
        self.estimator = estimator
        self.param_grid = {f"estimator__{k}": list(v) for k, v in dict(param_grid).items()}
        self.cv_folds = cv_folds
        self.scoring = scoring
        self.n_jobs = n_jobs
        self.augment_passes = augment_passes
        self.curves = curves
        self.seed = seed
        self.searches: list[GridSearchCV] = []

    @property
    def name(self) -> str:
        return type(self.estimator).__name__

    def _pipeline(self) -> Pipeline:
        estimator = clone(self.estimator)
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=self.seed)
        return Pipeline([("scale", StandardScaler()), ("estimator", estimator)])

    def _cv(self, groups: np.ndarray) -> GroupKFold:
        return GroupKFold(n_splits=min(self.cv_folds, len(np.unique(groups))))

    def fit(self, views: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> ViewVoting:
        views, labels, groups = np.asarray(views), np.asarray(labels).astype(int), np.asarray(groups)
        self.searches = []
        for v in range(views.shape[1]):
            search = GridSearchCV(
                self._pipeline(), self.param_grid, scoring=self.scoring, cv=self._cv(groups), n_jobs=self.n_jobs
            )
            search.fit(flatten(views[:, v]), labels, groups=groups)
            self.searches.append(search)
        return self

    def view_probabilities(self, views: np.ndarray) -> np.ndarray:
        """p(defaced) from each view's best estimator, shape (N, V)."""
        views = np.asarray(views)
        return np.stack([s.predict_proba(flatten(views[:, v]))[:, 1] for v, s in enumerate(self.searches)], axis=1)

    def predict_proba(self, views: np.ndarray) -> np.ndarray:
        """The vote score per scan, in [0, 1]; ≥ 0.5 means defaced (see :func:`vote`)."""
        return vote(self.view_probabilities(views))

    def best_params(self) -> list[dict]:
        return [{k.removeprefix("estimator__"): v for k, v in s.best_params_.items()} for s in self.searches]

    def curves_for_view(self, views: np.ndarray, labels: np.ndarray, groups: np.ndarray, view: int) -> dict:
        """Learning curve and a validation curve (first grid parameter) of one view's best pipeline."""
        X, y = flatten(np.asarray(views)[:, view]), np.asarray(labels).astype(int)
        best = self.searches[view].best_estimator_
        cv = self._cv(groups)
        sizes, train_scores, val_scores = learning_curve(
            best, X, y, groups=groups, cv=cv, scoring=self.scoring, train_sizes=np.linspace(0.3, 1.0, 4),
            shuffle=True, random_state=self.seed, n_jobs=self.n_jobs,
        )
        result = {"learning": {"sizes": sizes, "train": train_scores, "val": val_scores}}
        param, values = next(iter(self.param_grid.items()))
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numeric) > 1:
            train_scores, val_scores = validation_curve(
                best, X, y, groups=groups, param_name=param, param_range=numeric, cv=cv, scoring=self.scoring, n_jobs=self.n_jobs
            )
            result["validation"] = {
                "param": param.removeprefix("estimator__"), "values": np.array(numeric), "train": train_scores, "val": val_scores
            }
        return result


def flatten(images: np.ndarray) -> np.ndarray:
    """(N, S, S) → (N, S·S) feature rows."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1)
