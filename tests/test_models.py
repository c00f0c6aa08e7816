"""Classifiers on small generated views: the CNN, the per-view voting models and the vote."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from defacegan.models.cnn import MultiBranchCNN
from defacegan.models.sklearn import ViewVoting, vote


def toy_views(n_subjects=12, n_views=6, size=16, seed=0):
    """Each subject gives a face (bright lower-front corner) and a defaced twin (corner zeroed)."""
    rng = np.random.default_rng(seed)
    faces = rng.random((n_subjects, n_views, size, size)).astype(np.float32) * 0.3
    faces[:, :, size // 2 :, size // 2 :] += 0.6
    defaced = faces.copy()
    defaced[:, :, size // 2 :, size // 2 :] = 0
    views = np.concatenate([faces, defaced])
    labels = np.repeat([0, 1], n_subjects)
    groups = np.tile([f"s{i}" for i in range(n_subjects)], 2)
    return views, labels, groups


@pytest.mark.parametrize("view_mode, n_views", [("all", 6), ("mean", 3)])
def test_cnn_shapes_and_learning(view_mode, n_views):
    torch.manual_seed(0)
    views, labels, _ = toy_views(n_views=n_views, size=16)
    model = MultiBranchCNN(view_mode=view_mode, size=16)
    x, y = torch.from_numpy(views), torch.from_numpy(labels).float()
    assert model(x).shape == (len(x),)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.loss(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    accuracy = ((torch.sigmoid(model(x)) >= 0.5).float() == y).float().mean()
    assert accuracy == 1.0


def test_cnn_branches_are_independent():
    """A change in one view moves only its own branch's features (the shipped DetectorNet's too)."""
    model = MultiBranchCNN(view_mode="all", size=32).eval()
    x = torch.rand(1, 6, 32, 32)
    y = x.clone()
    y[:, 2] = torch.rand(32, 32)
    fx, fy = model.net.branches(x), model.net.branches(y)
    per_branch = (fx - fy).abs().reshape(6, -1).amax(dim=1)
    assert per_branch[2] > 0 and torch.all(per_branch[[0, 1, 3, 4, 5]] == 0)


def test_vote_is_majority_with_probability_tie_break():
    p = np.array(
        [
            [0.9, 0.8, 0.1],  # 2 of 3 defaced
            [0.4, 0.2, 0.9],  # 1 of 3
            [0.6, 0.6, 0.3, 0.3],  # tie, mean 0.45 → face
            [0.9, 0.9, 0.4, 0.4],  # tie, mean 0.65 → defaced
        ],
        dtype=object,
    )
    decisions = [vote(np.array([row], dtype=float))[0] >= 0.5 for row in p]
    assert decisions == [True, False, False, True]


def test_voting_fits_with_group_folds_and_predicts():
    views, labels, groups = toy_views()
    model = ViewVoting(LogisticRegression(max_iter=500), {"C": [0.01, 1.0]}, cv_folds=3).fit(views, labels, groups)
    assert len(model.searches) == 6 and all("C" in p for p in model.best_params())
    scores = model.predict_proba(views)
    assert scores.shape == (len(views),) and ((scores >= 0.5) == labels).all()
    curves = model.curves_for_view(views, labels, groups, 0)
    assert curves["learning"]["val"].shape[0] == 4 and curves["validation"]["param"] == "C"


def test_grid_search_holds_out_whole_subjects():
    """Each subject gives two identical scans of one label: a fold that trained on a subject's
    twin would score a 1-nearest-neighbour perfectly (as plain 3-fold splits of these rows do);
    folds of whole subjects leave it near chance."""
    rng = np.random.default_rng(0)
    subject_views = rng.random((12, 6, 8, 8)).astype(np.float32)
    views, labels = np.concatenate([subject_views, subject_views]), np.tile(np.arange(12) % 2, 2)
    groups = np.tile([f"s{i}" for i in range(12)], 2)
    model = ViewVoting(KNeighborsClassifier(), {"n_neighbors": [1]}, cv_folds=3, scoring="accuracy").fit(views, labels, groups)
    assert [search.n_splits_ for search in model.searches] == [3] * 6
    assert max(search.best_score_ for search in model.searches) < 0.9


def test_folds_never_outnumber_the_subjects():
    views, labels, groups = toy_views(n_subjects=2)
    model = ViewVoting(LogisticRegression(), {"C": [1.0]}, cv_folds=5, curves=False).fit(views, labels, groups)
    assert [search.n_splits_ for search in model.searches] == [2] * 6
