"""The detector network in plain torch: a multi-branch CNN over the six 2D views of a head.

One small conv stack per view (8, 16, 32 filters, kernel 3); the branches are independent but
run as one grouped convolution, so six views cost one kernel launch per layer. Branch features
are concatenated into a dense head with dropout that gives one logit per class
(:data:`defacegan.contract.InputContract.classes`: face, removed, replaced). It imports torch
alone, so ``check`` loads it without the training stack; the Lightning module that trains it
lives in :mod:`defacegan.models.cnn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def branch_stack(n_views: int, channels: Sequence[int], kernel_size: int) -> nn.Sequential:
    """Per-view conv → BN → ReLU → pool blocks, kept separate by ``groups=n_views``.

    BatchNorm (per channel, so per branch) keeps each view's absolute intensity level, which
    carries much of the signal (a missing face darkens the projections); GroupNorm over a
    branch normalised it away and training often collapsed to a constant output.
    """
    layers: list[nn.Module] = []
    width = 1
    for out in channels:
        layers += [
            nn.Conv2d(n_views * width, n_views * out, kernel_size, padding=kernel_size // 2, groups=n_views),
            nn.BatchNorm2d(n_views * out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        width = out
    return nn.Sequential(*layers)


class DetectorNet(nn.Module):
    """Views (B, V, S, S) in [0, 1] → class logits (B, n_classes).

    ``temperature`` (a buffer, 1 until calibrated) divides the logits, so a calibrated network
    gives calibrated probabilities wherever it is loaded.
    """

    def __init__(self, n_views: int = 6, n_classes: int = 3, channels: Sequence[int] = (8, 16, 32),
                 kernel_size: int = 3, hidden: int = 64, dropout: float = 0.3, pooled: int = 4):
        super().__init__()
        #: The constructor's arguments, saved beside the weights so a checkpoint rebuilds its network.
        self.config = {"n_views": n_views, "n_classes": n_classes, "channels": list(channels), "kernel_size": kernel_size,
                       "hidden": hidden, "dropout": dropout, "pooled": pooled}
        self.branches = branch_stack(n_views, list(channels), kernel_size)
        self.pool = nn.AdaptiveAvgPool2d(pooled)  # any view size → fixed feature length
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_views * channels[-1] * pooled * pooled, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.branches(views))) / self.temperature


class DetectorEnsemble(nn.Module):
    """Calibrated DetectorNets trained alike but for their seed (draws, calibration subjects,
    initialisation), their probabilities averaged.

    On heads unlike the training heads one network's answer swings with its seed (Colin27 defaced
    by pydeface's mask: p(face) 0.10, 0.33 and 0.81 for seeds 0, 1 and 2); the mean is steadier
    and better calibrated. The output is the log of the mean probabilities, so a softmax of it,
    as every caller takes of DetectorNet's logits, gives the mean.
    """

    def __init__(self, members: Sequence[DetectorNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(member(views), dim=1) for member in self.members]).mean(0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of ``logits / T``."""
    log_t = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)
    loss = nn.CrossEntropyLoss()

    def closure():
        optimiser.zero_grad()
        value = loss(logits / log_t.exp(), labels)
        value.backward()
        return value

    optimiser.step(closure)
    return float(log_t.detach().exp())
