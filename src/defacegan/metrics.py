"""Scores: defaced-or-not classification, and (below) image similarity for re-facing."""

from __future__ import annotations

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


# Re-facing audit: how close does a generator get to the removed face, and does that face give
# the subject away? Images are (N, C, H, W) sagittal slices in [-1, 1] (the source volume's
# robust intensity scale mapped onto [-1, 1]), so their data range is 2.

DATA_RANGE = 2.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the Gaussian window of Wang et al. (2004)
MAX_PSNR_DB = 100.0  # identical images score this instead of inf, so that averages stay finite
#: The removed region is grown by this many pixels before scoring: the seam is where fakes show.
REMOVED_DILATION_PX = 3
REID_RANKS = (1, 5)


def dilate(mask: torch.Tensor, pixels: int = REMOVED_DILATION_PX) -> torch.Tensor:
    """Grow binary (N, C, H, W) masks by ``pixels`` in every direction (square element); float {0, 1}."""
    mask = (mask > 0).float()
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels) if pixels > 0 else mask


def ssim_map(prediction: torch.Tensor, target: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """Per-pixel SSIM (N, C, H, W) from MONAI; inputs are reflect-padded so every pixel has a value."""
    pad = SSIM_WINDOW // 2
    padded = [F.pad(x.float(), (pad, pad, pad, pad), mode="reflect") for x in (prediction, target)]
    ssim, _ = compute_ssim_and_cs(
        *padded, spatial_dims=2, kernel_size=(SSIM_WINDOW,) * 2, kernel_sigma=(SSIM_SIGMA,) * 2, data_range=data_range
    )
    return ssim


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each item's values where ``mask`` is 1: (N,), NaN for an empty mask."""
    weight = mask.flatten(1)
    return (values.flatten(1) * weight).sum(1) / weight.sum(1)


def image_similarity(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    dilation: int = REMOVED_DILATION_PX,
    data_range: float = DATA_RANGE,
) -> dict[str, float]:
    """SSIM, PSNR (dB) and MAE inside the removed region (``*_face``) and on the whole slice (``*_slice``).

    ``mask`` is 1 where the face was removed; it is grown by ``dilation`` pixels. Each score is
    computed per image and then averaged; images whose region is empty are left out of the
    ``*_face`` means. Masked SSIM is the mean of the SSIM map over the region; PSNR comes from the
    masked mean squared error, capped at MAX_PSNR_DB; MAE is in image units (a fraction of the
    source's robust scale × 2 for [-1, 1] images).
    """
    prediction, target = prediction.float(), target.float()
    regions = {"face": dilate(mask, dilation), "slice": torch.ones_like(target)}
    ssim = ssim_map(prediction, target, data_range)
    error = prediction - target
    scores = {}
    for name, region in regions.items():
        mse = _masked_mean(error**2, region)
        scores[f"ssim_{name}"] = _masked_mean(ssim, region)
        scores[f"psnr_{name}"] = (10 * torch.log10(data_range**2 / mse)).clamp(max=MAX_PSNR_DB)
        scores[f"mae_{name}"] = _masked_mean(error.abs(), region)
    return {name: float(values.nanmean()) for name, values in scores.items()}


def reidentification(
    refaced: torch.Tensor, originals: torch.Tensor, masks: torch.Tensor, ranks: tuple[int, ...] = REID_RANKS
) -> dict[str, float]:
    """How often a re-faced subject is picked out among the original faces of all N subjects.

    Item i of each (N, ...) tensor is one subject (all its slices, at the same positions for
    every subject). For each refaced face i, every original j is scored by Pearson correlation
    with it inside subject i's own removed region ``masks[i]``, the part the generator made up
    (not grown, nor united with j's region: around it lies i's untouched anatomy, which would
    give the subject away whatever the generator did). ``reid_top{k}``: the rate
    at which i's own original is among the k most similar; ties are counted as broken at random
    (the expected rate), so a constant guess such as a zero-filled region scores chance.
    """
    n = len(refaced)
    refaced, originals = refaced.reshape(n, -1).float(), originals.reshape(n, -1).float()
    masks = masks.reshape(n, -1) > 0
    similarity = torch.stack(
        [torch.corrcoef(torch.cat([refaced[i, masks[i]][None], originals[:, masks[i]]]))[0, 1:] for i in range(n)]
    ).nan_to_num(nan=-torch.inf)
    own = similarity.diagonal()[:, None]
    better = (similarity > own).sum(1)
    tied_with_others = (similarity == own).sum(1) - 1
    return {f"reid_top{k}": float(((k - better) / (tied_with_others + 1)).clamp(0, 1).mean()) for k in ranks}


def reface_audit(
    refaced: torch.Tensor,
    defaced: torch.Tensor,
    faces: torch.Tensor,
    masks: torch.Tensor,
    average_face: torch.Tensor | None = None,
    *,
    dilation: int = REMOVED_DILATION_PX,
    data_range: float = DATA_RANGE,
) -> dict[str, dict[str, float]]:
    """The generator's re-facing scores next to its baselines, over a test set of N subjects.

    (N, n, S, S) tensors in [-1, 1], one entry per subject (its n sagittal slices): ``refaced``
    the generator's output, ``defaced`` its input (zero-filled region: the "defaced" baseline),
    ``faces`` the originals, ``masks`` 1 in the removed region. ``average_face`` ((1 or n, S, S),
    the mean training face) pasted into each removed region is the "average_face" baseline.
    Each candidate gets :func:`image_similarity` and :func:`reidentification` scores; "chance" is
    the re-identification rate of a random guess, min(k, N) / N.
    """
    candidates = {"pix2pix": refaced, "defaced": defaced}
    if average_face is not None:
        candidates["average_face"] = torch.where(masks > 0, average_face.to(defaced), defaced)
    everything = {**candidates, "faces": faces, "masks": masks}
    images = {name: x.reshape(-1, 1, *x.shape[-2:]) for name, x in everything.items()}
    results = {
        name: image_similarity(images[name], images["faces"], images["masks"], dilation=dilation, data_range=data_range)
        | reidentification(candidate, faces, masks)
        for name, candidate in candidates.items()
    }
    results["chance"] = {f"reid_top{k}": min(k, len(faces)) / len(faces) for k in REID_RANKS}
    return results
