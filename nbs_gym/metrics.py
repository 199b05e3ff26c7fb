"""Anomaly-segmentation and anomaly-detection metrics as pure functions over arrays.

Every metric takes ``scores``, a float anomaly map (higher means more anomalous), and ``masks``, the
ground truth of the same shape (``True`` marks an anomalous pixel), and returns Python floats.
The pixel metrics accept any shape; :func:`pixel_aupro` and :func:`image_auroc` need a batch of
maps shaped ``(N, H, W)``.

Degenerate inputs
-----------------
A metric that is undefined for its input never returns a silent NaN: it issues a
:class:`MetricWarning` and returns a documented fallback.

==================  ==============================================  ==================
metric              undefined when the masks hold                   fallback
==================  ==============================================  ==================
``pixel_auroc``     no anomalous pixels, or no normal pixels        ``0.5`` (chance)
``pixel_f1_max``    no anomalous pixels                             ``(0.0, inf)``
``pixel_aupro``     no anomalous pixels, or no normal pixels        ``0.0``
``image_auroc``     only anomalous images, or only normal images    ``0.5`` (chance)
==================  ==============================================  ==================

The AUROCs fall back to 0.5 because that is what an uninformative ranking scores; F1 and AUPRO fall
back to 0.0, "nothing found", so a split without anomalies can never make a model look good. The F1
threshold fallback ``inf`` flags no pixel, the right decision when there is nothing to find.

Constant scores are well defined but carry no ranking, so each metric warns about them and returns
its ordinary value (0.5 for the AUROCs). NaN scores, masks whose shape differs from the scores', and
masks that are not binary raise :class:`ValueError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

__all__ = [
    "METRIC_NAMES",
    "TOPK_FRACTION",
    "metric_at",
    "ImageReduction",
    "MetricWarning",
    "image_auroc",
    "pixel_aupro",
    "pixel_auroc",
    "pixel_f1_max",
    "segmentation_metrics",
]

ImageReduction = Literal["max", "mean", "topk_mean"]
"""How :func:`image_auroc` turns an anomaly map into one image score."""

METRIC_NAMES: tuple[str, ...] = ("pixel_auroc", "pixel_aupro", "pixel_f1_max", "image_auroc")
"""The metrics every table and report shows, per scorer and per defect type (keys of :func:`segmentation_metrics`)."""

TOPK_FRACTION = 0.01
"""Fraction of each map's highest pixels averaged by the ``"topk_mean"`` reduction (at least one)."""

# 8-connectivity inside each image and none along the batch axis, so that a single ndimage.label call
# labels the regions of every image separately.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


class MetricWarning(UserWarning):
    """A metric is undefined or uninformative for its input and returned a documented fallback."""


def segmentation_metrics(
    scores: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = 0.3,
    image_reduction: ImageReduction = "max",
) -> dict[str, float]:
    """Compute every metric of this module for one batch of anomaly maps.

    Args:
        scores: Anomaly maps, shape ``(N, H, W)``.
        masks: Ground-truth masks, shape ``(N, H, W)``.
        fpr_limit: FPR up to which the PRO curve is integrated, see :func:`pixel_aupro`.
        image_reduction: How a map becomes an image score, see :func:`image_auroc`.

    Returns:
        A dict with keys ``pixel_auroc``, ``pixel_aupro``, ``pixel_f1_max``, ``pixel_f1_threshold``
        and ``image_auroc``.

    Example:
        >>> scores = np.array([[[0.9, 0.1], [0.2, 0.1]], [[0.1, 0.2], [0.1, 0.3]]])
        >>> metrics = segmentation_metrics(scores, scores > 0.5)
        >>> metrics["pixel_auroc"], metrics["pixel_aupro"], metrics["image_auroc"]
        (1.0, 1.0, 1.0)
    """
    scores_arr, masks_arr = _validated(scores, masks)
    f1_max, f1_threshold = pixel_f1_max(scores_arr, masks_arr)
    return {
        "pixel_auroc": pixel_auroc(scores_arr, masks_arr),
        "pixel_aupro": pixel_aupro(scores_arr, masks_arr, fpr_limit=fpr_limit),
        "pixel_f1_max": f1_max,
        "pixel_f1_threshold": f1_threshold,
        "image_auroc": image_auroc(scores_arr, masks_arr, reduction=image_reduction),
    }


def pixel_auroc(scores: ArrayLike, masks: ArrayLike) -> float:
    """Area under the ROC curve with every pixel as one sample.

    Args:
        scores: Anomaly scores, any shape.
        masks: Ground truth of the same shape as ``scores``.

    Returns:
        The AUROC, or 0.5 with a :class:`MetricWarning` when the masks hold only one class.

    Example:
        >>> pixel_auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        0.75
    """
    scores_arr, masks_arr = _validated(scores, masks)
    _warn_if_constant(scores_arr, "pixel_auroc", "pixel scores")
    if _missing_class(masks_arr, "pixel_auroc", "pixels", "0.5"):
        return 0.5
    return float(roc_auc_score(masks_arr.ravel(), scores_arr.ravel()))


def pixel_f1_max(scores: ArrayLike, masks: ArrayLike) -> tuple[float, float]:
    """Best pixel-wise F1 score over all thresholds, and the threshold that reaches it.

    A pixel is predicted anomalous when its score is at least the threshold. The candidate thresholds
    are the distinct scores (:func:`sklearn.metrics.precision_recall_curve`); among thresholds with
    equal F1 the lowest is returned.

    Args:
        scores: Anomaly scores, any shape.
        masks: Ground truth of the same shape as ``scores``.

    Returns:
        ``(f1_max, threshold)``, or ``(0.0, inf)`` with a :class:`MetricWarning` when the masks hold
        no anomalous pixel.

    Example:
        >>> pixel_f1_max([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        (0.8, 0.35)
    """
    scores_arr, masks_arr = _validated(scores, masks)
    _warn_if_constant(scores_arr, "pixel_f1_max", "pixel scores")
    if _missing_class(masks_arr, "pixel_f1_max", "pixels", "(0.0, inf)", normal_required=False):
        return 0.0, math.inf
    precision, recall, thresholds = precision_recall_curve(masks_arr.ravel(), scores_arr.ravel())
    # The last (precision, recall) pair is sklearn's (1, 0) end point, which has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    # Thresholds whose predictions are all false positives have precision = recall = 0; their F1 is 0.
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def pixel_aupro(
    scores: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to a false-positive rate.

    The regions are the 8-connected components of each image's mask; regions never span images. At a
    threshold ``t`` (pixels with score ``>= t`` are predicted anomalous):

    - PRO is the mean over all regions of ``|region ∩ predicted| / |region|``, so a small defect
      weighs as much as a large one;
    - FPR is the number of predicted normal pixels over the number of normal pixels, over all images.

    The curve starts at (0, 0), is integrated with the trapezoidal rule up to ``fpr_limit`` (the point
    at the limit is linearly interpolated) and divided by ``fpr_limit``, so a perfect map scores 1.0
    and a map that ranks every normal pixel above every anomalous one scores 0.0. A map of random
    scores has PRO close to FPR and scores about ``fpr_limit / 2``.

    Args:
        scores: Anomaly maps, shape ``(N, H, W)``.
        masks: Ground-truth masks, shape ``(N, H, W)``.
        fpr_limit: Upper FPR of the integration, in ``(0, 1]``.
        num_thresholds: ``None`` evaluates the curve exactly at every distinct score; an integer
            evaluates it at that many thresholds evenly spaced between the highest and the lowest
            score, as fixed-grid implementations do.

    Returns:
        The normalised AUPRO in ``[0, 1]``, or 0.0 with a :class:`MetricWarning` when the masks hold
        no anomalous pixel or no normal pixel.

    Raises:
        ValueError: If ``fpr_limit`` is outside ``(0, 1]`` or ``num_thresholds`` is below 2.

    Example:
        >>> scores = np.array([[[0.9, 0.1, 0.8], [0.2, 0.1, 0.3]]])
        >>> pixel_aupro(scores, scores > 0.5)
        1.0
    """
    scores_arr, masks_arr = _validated(scores, masks)
    _require_image_batch(scores_arr, "pixel_aupro")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be None or at least 2, got {num_thresholds}.")
    _warn_if_constant(scores_arr, "pixel_aupro", "pixel scores")
    if _missing_class(masks_arr, "pixel_aupro", "pixels", "0.0"):
        return 0.0
    fpr, pro = _pro_curve(scores_arr, masks_arr, num_thresholds)
    return _normalised_area(fpr, pro, fpr_limit)


def image_auroc(scores: ArrayLike, masks: ArrayLike, reduction: ImageReduction = "max") -> float:
    """Area under the ROC curve of image-level scores.

    An image is anomalous when its mask holds any anomalous pixel. Its score is, by ``reduction``:

    - ``"max"``: the highest pixel score of its map (the usual convention);
    - ``"mean"``: the mean pixel score;
    - ``"topk_mean"``: the mean of the highest :data:`TOPK_FRACTION` of its pixels (at least one),
      which is less sensitive than ``"max"`` to a single noisy pixel.

    Args:
        scores: Anomaly maps, shape ``(N, H, W)``.
        masks: Ground-truth masks, shape ``(N, H, W)``.
        reduction: How a map becomes an image score.

    Returns:
        The image AUROC, or 0.5 with a :class:`MetricWarning` when all images are anomalous or all
        are normal.

    Raises:
        ValueError: If ``reduction`` is unknown.

    Example:
        >>> scores = np.array([[[0.2, 0.1]], [[0.1, 0.6]], [[0.5, 0.0]], [[0.3, 0.9]]])
        >>> masks = np.array([[[False, False]], [[False, False]], [[True, False]], [[False, True]]])
        >>> image_auroc(scores, masks)
        0.75
    """
    scores_arr, masks_arr = _validated(scores, masks)
    _require_image_batch(scores_arr, "image_auroc")
    image_scores = _image_scores(scores_arr, reduction)
    image_labels = np.asarray(masks_arr.reshape(len(masks_arr), -1).any(axis=1), dtype=bool)
    _warn_if_constant(image_scores, "image_auroc", "image scores")
    if _missing_class(image_labels, "image_auroc", "images", "0.5"):
        return 0.5
    return float(roc_auc_score(image_labels, image_scores))


def _validated(scores: ArrayLike, masks: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.bool_]]:
    """Return ``scores`` as a float array and ``masks`` as a bool array, or raise ValueError."""
    scores_arr = np.asarray(scores)
    masks_arr = np.asarray(masks)
    if scores_arr.shape != masks_arr.shape:
        raise ValueError(
            f"scores and masks must have the same shape, got scores {scores_arr.shape} and masks {masks_arr.shape}."
        )
    if scores_arr.size == 0:
        raise ValueError("scores and masks are empty.")
    if not np.issubdtype(scores_arr.dtype, np.floating):
        scores_arr = scores_arr.astype(np.float64)
    n_nan = int(np.count_nonzero(np.isnan(scores_arr)))
    if n_nan:
        raise ValueError(f"scores contains {n_nan} NaN value(s).")
    if masks_arr.dtype != np.bool_:
        # A 0/255 mask read from a PNG must be binarised by the caller, not guessed at here.
        if not np.isin(masks_arr, (0, 1)).all():
            raise ValueError("masks must be boolean or hold only 0 and 1.")
        masks_arr = masks_arr.astype(bool)
    return scores_arr, masks_arr


def _require_image_batch(scores: NDArray[np.floating], metric: str) -> None:
    """Raise ValueError unless ``scores`` is a batch of 2-D maps."""
    if scores.ndim != 3:
        raise ValueError(f"{metric} expects scores and masks of shape (N, H, W), got {scores.shape}.")


def _warn_if_constant(values: NDArray[np.floating], metric: str, what: str) -> None:
    """Warn that a metric is uninformative because every value it ranks is the same."""
    if values.min() == values.max():
        warnings.warn(
            f"{metric}: all {what} are equal ({values.flat[0]}), so they carry no ranking.",
            MetricWarning,
            stacklevel=3,
        )


def _missing_class(
    labels: NDArray[np.bool_],
    metric: str,
    unit: str,
    fallback: str,
    *,
    normal_required: bool = True,
) -> bool:
    """Warn and return True when ``labels`` lacks anomalous samples (or normal ones, if required)."""
    n_anomalous = int(np.count_nonzero(labels))
    if n_anomalous == 0:
        missing = "anomalous"
    elif normal_required and n_anomalous == labels.size:
        missing = "normal"
    else:
        return False
    warnings.warn(
        f"{metric}: the masks hold no {missing} {unit}, so the metric is undefined; returning {fallback}.",
        MetricWarning,
        stacklevel=3,
    )
    return True


def _image_scores(scores: NDArray[np.floating], reduction: ImageReduction) -> NDArray[np.floating]:
    """Reduce each map of a ``(N, H, W)`` batch to one score."""
    flat = scores.reshape(len(scores), -1)
    if reduction == "max":
        return flat.max(axis=1)
    if reduction == "mean":
        return flat.mean(axis=1)
    if reduction == "topk_mean":
        k = max(1, math.ceil(TOPK_FRACTION * flat.shape[1]))
        return np.partition(flat, -k, axis=1)[:, -k:].mean(axis=1)
    raise ValueError(f"reduction must be 'max', 'mean' or 'topk_mean', got {reduction!r}.")


def _pro_curve(
    scores: NDArray[np.floating], masks: NDArray[np.bool_], num_thresholds: int | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FPR and PRO at decreasing thresholds, starting at (0, 0) and ending at (1, 1).

    Lowering the threshold past a pixel's score adds ``1 / n_normal`` to the FPR if the pixel is
    normal, and ``1 / (n_regions * |its region|)`` to the PRO if it is anomalous. Both curves are
    therefore cumulative sums over the pixels in descending score order: one sort, no loop.
    """
    regions, n_regions = ndimage.label(masks, structure=_REGION_STRUCTURE)
    regions = regions.ravel()
    region_sizes = np.bincount(regions)  # region_sizes[0] counts the normal pixels
    pro_weight_per_region = 1.0 / (n_regions * region_sizes)
    pro_weight_per_region[0] = 0.0

    flat_scores = scores.ravel()
    order = np.argsort(flat_scores)[::-1]
    sorted_scores = flat_scores[order]
    sorted_regions = regions[order]
    fpr_per_pixel = np.cumsum(sorted_regions == 0) / region_sizes[0]
    pro_per_pixel = np.cumsum(pro_weight_per_region[sorted_regions])

    if num_thresholds is None:
        # Pixels tied at one score cross every threshold together: keep the last pixel of each tie.
        last_of_tie = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
        curve_points = np.append(last_of_tie, sorted_scores.size - 1)
    else:
        thresholds = np.linspace(sorted_scores[0], sorted_scores[-1], num_thresholds)
        # searchsorted on the ascending negated scores counts the pixels with score >= threshold.
        n_predicted = np.searchsorted(-sorted_scores, -thresholds, side="right")
        curve_points = n_predicted - 1
    fpr = np.concatenate(([0.0], fpr_per_pixel[curve_points]))
    pro = np.concatenate(([0.0], pro_per_pixel[curve_points]))
    return fpr, pro


def _normalised_area(fpr: NDArray[np.float64], pro: NDArray[np.float64], fpr_limit: float) -> float:
    """Trapezoidal area under a curve with non-decreasing ``fpr`` on [0, fpr_limit], over fpr_limit."""
    n_inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    fpr_inside, pro_inside = fpr[:n_inside], pro[:n_inside]
    if fpr_inside[-1] < fpr_limit:
        # The curve ends at FPR = 1 >= fpr_limit, so a segment crosses the limit: cut it there.
        crossing = slice(n_inside - 1, n_inside + 1)
        pro_at_limit = np.interp(fpr_limit, fpr[crossing], pro[crossing])
        fpr_inside = np.append(fpr_inside, fpr_limit)
        pro_inside = np.append(pro_inside, pro_at_limit)
    return float(auc(fpr_inside, pro_inside) / fpr_limit)


def metric_at(tree: Mapping[str, Any], path: str | Sequence[str]) -> Any:
    """The value of a nested metrics mapping at ``path``: ``"predictor/pixel_f1_max"`` or its parts."""
    value: Any = tree
    for key in path.split("/") if isinstance(path, str) else path:
        value = value[key]
    return value
