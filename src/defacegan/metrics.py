"""Scores: defaced-or-not classification, and (below) image similarity for re-facing."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics.regression import compute_ssim_and_cs
from sklearn import metrics as skm

def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95 % for z = 1.96); (nan, nan) without trials.

    Unlike the normal approximation it stays inside [0, 1] and is honest at rates of 0 or 1:
    8 of 8 gives [0.68, 1.0], not [1.0, 1.0].
    """
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def expected_calibration_error(probabilities, labels, bins: int = 15) -> float:
    """ECE of the top-class confidence: the scan-weighted mean |accuracy − confidence| over
    ``bins`` equal-width confidence bins. ``probabilities``: (N, classes)."""
    probabilities = np.asarray(probabilities, dtype=float)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)) - 1, 0, bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def subject_bootstrap_interval(statistic, subjects, rounds: int = 2000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` (indices into the scans) over ``rounds``
    resamplings of whole subjects with replacement: a head's scans are not independent trials, the
    heads are, so the interval is as wide as the number of heads makes it."""
    subjects = np.asarray(subjects)
    by_subject = [np.flatnonzero(subjects == subject) for subject in np.unique(subjects)]
    rng = np.random.default_rng(seed)
    values = [statistic(np.concatenate([by_subject[i] for i in rng.integers(len(by_subject), size=len(by_subject))]))
              for _ in range(rounds)]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def ece_interval(probabilities, labels, subjects, bins: int = 15) -> tuple[float, float]:
    """The expected calibration error's 95 % interval, heads resampled (:func:`subject_bootstrap_interval`)."""
    probabilities, labels = np.asarray(probabilities, dtype=float), np.asarray(labels)
    return subject_bootstrap_interval(lambda i: expected_calibration_error(probabilities[i], labels[i], bins), subjects)


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


# Re-facing audit: how close does a candidate (a generator, or a baseline) get to the removed face
# once it is pasted into the scan, and does that face give the subject away? Images are
# (N, n, S, S) sagittal slices in [-1, 1] (the source volume's robust intensity scale mapped onto
# [-1, 1], air = -1), item i one subject; their data range is 2.

DATA_RANGE = 2.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the Gaussian window of Wang et al. (2004)
MAX_PSNR_DB = 100.0  # identical images score this instead of inf, so that averages stay finite
#: A pixel is strictly removed when at least this share of the voxels behind it was removed:
#: resizing carries the mask as a share (a weighted mean of 0s and 1s), which reaches 1 only where
#: no intact voxel contributes (the tolerance covers float rounding of the weights).
FULLY_REMOVED = 1 - 1e-4
#: Pixels whose true value is below this fraction of the robust scale are air: image scores leave
#: them out (air is easy to copy and says nothing about a face).
TISSUE_LEVEL = 0.1
#: Half-width (px) of the seam: the ring across the mask's edge where a pasted face meets the scan.
SEAM_PX = 2
REID_RANKS = (1, 5)


def strict_region(removed: torch.Tensor) -> torch.Tensor:
    """Where no intact voxel lies behind a pixel: ``removed`` is each pixel's removed share
    (the resized removed-region mask, e.g. the datamodule's ``mask``); bool, same shape."""
    return removed >= FULLY_REMOVED


def seam_region(removed: torch.Tensor, pixels: int = SEAM_PX) -> torch.Tensor:
    """The ring across the removed region's edge: within ``pixels`` of it on either side, the
    pixels that mix removed and intact voxels included; bool, same shape as ``removed``."""
    images = removed.reshape(-1, 1, *removed.shape[-2:]).float()
    pool = partial(F.max_pool2d, kernel_size=2 * pixels + 1, stride=1, padding=pixels)
    touched = pool((images > 0).float()) > 0
    inner = -pool(-strict_region(images).float()) > 0
    return (touched & ~inner).reshape(removed.shape)


def tissue(truth: torch.Tensor) -> torch.Tensor:
    """Pixels of the true image that hold tissue, not air (bool)."""
    return truth > 2 * TISSUE_LEVEL - 1


def paste(refaced: torch.Tensor, defaced: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """A candidate's face put into the scan, as pasting it into the removed voxels and then
    slicing would: defaced + removed share × candidate (in [0, 1] intensities, where the
    zero-filled removed voxels add nothing). Strictly removed pixels become the candidate, intact
    ones stay the scan's, and the seam mixes the two by the share."""
    return defaced + removed * (refaced.to(defaced) + 1)


def ssim_map(prediction: torch.Tensor, target: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """Per-pixel SSIM (N, C, H, W) from MONAI; inputs are reflect-padded so every pixel has a value."""
    pad = SSIM_WINDOW // 2
    padded = [F.pad(x.float(), (pad, pad, pad, pad), mode="reflect") for x in (prediction, target)]
    ssim, _ = compute_ssim_and_cs(
        *padded, spatial_dims=2, kernel_size=(SSIM_WINDOW,) * 2, kernel_sigma=(SSIM_SIGMA,) * 2, data_range=data_range
    )
    return ssim


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each item's values where ``mask`` is true: (N,), NaN for an empty mask."""
    weight = mask.flatten(1).float()
    return (values.flatten(1) * weight).sum(1) / weight.sum(1)


def image_scores(pasted: torch.Tensor, truth: torch.Tensor, removed: torch.Tensor) -> dict[str, torch.Tensor]:
    """SSIM, PSNR (dB) and MAE of each item (N,) on the tissue of its strictly removed region
    (``*_face``) and of its seam (``*_seam``), all slices of an item pooled.

    ``pasted`` is the candidate already in the scan (:func:`paste`); ``removed`` the removed
    share. Masked SSIM averages MONAI's SSIM map (computed on whole slices) over the region; PSNR
    comes from the masked mean squared error, capped at MAX_PSNR_DB; MAE is in image units (2 =
    the robust scale). An item without such pixels scores NaN.
    """
    pasted, truth = pasted.float(), truth.float()
    ssim = ssim_map(pasted.reshape(-1, 1, *pasted.shape[-2:]), truth.reshape(-1, 1, *truth.shape[-2:])).reshape(truth.shape)
    error = pasted - truth
    scores = {}
    for name, region in (("face", strict_region(removed)), ("seam", seam_region(removed))):
        region = region & tissue(truth)
        mse = _masked_mean(error**2, region)
        scores[f"ssim_{name}"] = _masked_mean(ssim, region)
        scores[f"psnr_{name}"] = (10 * torch.log10(DATA_RANGE**2 / mse)).clamp(max=MAX_PSNR_DB)
        scores[f"mae_{name}"] = _masked_mean(error.abs(), region)
    return scores


def voxel_similarity(probes: torch.Tensor, gallery: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """(N, G) Pearson correlation of probe i with every gallery face j inside probe i's strictly
    removed region (air included: the region's shape is what a candidate had to fill). Around the
    region lies i's untouched anatomy, which would give the subject away whatever the candidate did.
    A constant probe (zero-fill) correlates with nothing: NaN."""
    n = len(probes)
    probes, gallery, regions = probes.reshape(n, -1).float(), gallery.reshape(len(gallery), -1).float(), strict_region(removed).reshape(n, -1)
    return torch.stack([torch.corrcoef(torch.cat([probes[i, regions[i]][None], gallery[:, regions[i]]]))[0, 1:] for i in range(n)])


def frontal_depth(images: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head surface seen from the front, inside ``region``: for each image row (one point of a
    frontal render: a slice position × a height), how many region pixels lie in front of the first
    tissue pixel, counted from the anterior (right) side. Returns (depth, surface) of shape
    (..., H): float depth in pixels, and whether the row's region holds any tissue (where it does
    not, depth is the row's whole region)."""
    solid = (tissue(images) & region).flip(-1)
    in_front = region.flip(-1) & (solid.cumsum(-1) == 0)
    return in_front.sum(-1).float(), solid.any(-1)


def surface_similarity(probes: torch.Tensor, gallery: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """(N, G) minus the mean |depth difference| (px) between probe i's frontal depth render and
    gallery face j's, both inside probe i's strictly removed region, over the rows where the probe
    drew a surface (the intact forehead and ears stay out). A probe without any surface there
    (zero-fill) matches nothing: NaN."""
    regions = strict_region(removed)
    rows = []
    for i in range(len(probes)):
        region = regions[i].expand_as(gallery)
        depth, surface = frontal_depth(probes[i], regions[i])
        gallery_depth, _ = frontal_depth(gallery, region)
        used = surface & regions[i].any(-1)
        rows.append(-(gallery_depth - depth).abs().flatten(1)[:, used.flatten()].mean(1))
    return torch.stack(rows)


def top_k_hits(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) for an (N, G) similarity of probe i to gallery entry j, entry i being probe i's own
    face: the chance that the own face is among the k most similar, ties broken at random (so a
    probe that matches nothing, NaN everywhere, scores exactly k / G)."""
    similarity = similarity.nan_to_num(nan=-torch.inf)
    own = similarity.diagonal()[:, None]
    better = (similarity > own).sum(1)
    tied_with_others = (similarity == own).sum(1) - 1
    return ((k - better) / (tied_with_others + 1)).clamp(0, 1)


MATCHERS = {"voxel": voxel_similarity, "surface": surface_similarity}


def rate(hits: torch.Tensor) -> dict[str, float]:
    """Mean of per-subject hits with its Wilson 95 % interval (subjects are the trials)."""
    successes, trials = float(hits.sum()), len(hits)
    low, high = wilson_interval(successes, trials)
    return {"": successes / trials, "_low": low, "_high": high}


def reface_audit(
    candidates: dict[str, torch.Tensor], defaced: torch.Tensor, faces: torch.Tensor, removed: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Every candidate's re-faced slices pasted into the scan and scored like with like.

    (N, n, S, S) tensors, item i one subject at the same slice positions for all: ``candidates``
    maps a name to its raw output (e.g. a generator's, zero-fill's -1, an average face),
    ``defaced`` the zero-filled input, ``faces`` the originals (also the gallery the probes are
    matched against), ``removed`` each pixel's removed share. Per candidate: the subject-mean
    :func:`image_scores`, and for each matcher of MATCHERS the top-k re-identification rate with
    its Wilson interval (``voxel_top1``, ``voxel_top1_low``, ``voxel_top1_high``...). "chance" is
    k / N, and every entry carries ``n_subjects``.
    """
    n = len(faces)
    results = {}
    for name, refaced in candidates.items():
        pasted = paste(refaced, defaced, removed)
        scores = {key: float(values.nanmean()) for key, values in image_scores(pasted, faces, removed).items()}
        for matcher, similarity in MATCHERS.items():
            matrix = similarity(pasted, faces, removed)
            for k in REID_RANKS:
                scores |= {f"{matcher}_top{k}{suffix}": value for suffix, value in rate(top_k_hits(matrix, k)).items()}
        results[name] = scores | {"n_subjects": n}
    results["chance"] = {f"{matcher}_top{k}": min(k, n) / n for matcher in MATCHERS for k in REID_RANKS} | {"n_subjects": n}
    return results
