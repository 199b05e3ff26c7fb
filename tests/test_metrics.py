"""Tests of nbs_gym.metrics against sklearn, slow per-threshold references and hand-computed values."""

from __future__ import annotations

import doctest
import itertools
import math
import warnings

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from nbs_gym import metrics
from nbs_gym.metrics import (
    METRIC_NAMES,
    MetricWarning,
    image_auroc,
    metric_at,
    pixel_aupro,
    pixel_auroc,
    pixel_f1_max,
    segmentation_metrics,
)


def random_batch(seed: int, shape: tuple[int, int, int] = (4, 12, 12)) -> tuple[NDArray, NDArray]:
    """Scattered small masks (many diagonal-only neighbours) and scores on a coarse grid, so with ties.

    The last image is normal, so that both image classes are present.
    """
    rng = np.random.default_rng(seed)
    masks = rng.random(shape) < 0.15
    masks[-1] = False
    scores = np.round(rng.random(shape) + 0.3 * masks, 1)
    return scores, masks


def reference_aupro(scores: NDArray, masks: NDArray, fpr_limit: float, thresholds: NDArray | None = None) -> float:
    """AUPRO by a loop over thresholds and regions, integrated segment by segment."""
    eight_connected = np.ones((3, 3), dtype=bool)
    regions = []
    for image, mask in enumerate(masks):
        labels, n_regions = ndimage.label(mask, structure=eight_connected)
        regions += [(image, labels == label) for label in range(1, n_regions + 1)]
    if thresholds is None:
        thresholds = np.unique(scores)[::-1]
    points = [(0.0, 0.0)]
    for threshold in thresholds:
        predicted = scores >= threshold
        fpr = (predicted & ~masks).sum() / (~masks).sum()
        pro = np.mean([predicted[image][region].sum() / region.sum() for image, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def two_region_batch() -> tuple[NDArray, NDArray]:
    """Two images of 3x4: region A (1 pixel) in image 0, region B (3 pixels) in image 1.

    A scores 0.9, B scores 0.5, five of the 20 normal pixels score 0.7, the others 0.1. Lowering the
    threshold gives the PRO curve (FPR, PRO): t=0.9 -> (0, 1/2) (A found; pixel-wise it would be 1/4),
    t=0.7 -> (5/20, 1/2), t=0.5 -> (0.25, 1), t=0.1 -> (1, 1). A and B sit at the same (row, column),
    so labelling across the batch axis would wrongly merge them into one region.
    """
    masks = np.zeros((2, 3, 4), dtype=bool)
    masks[0, 0, 0] = True
    masks[1, 0, :3] = True
    scores = np.full(masks.shape, 0.1)
    scores[0, 0, 0] = 0.9
    scores[1, 0, :3] = 0.5
    scores[0, 2, :4] = 0.7
    scores[1, 2, 0] = 0.7
    return scores, masks


# --- pixel AUROC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn(seed: int) -> None:
    scores, masks = random_batch(seed)
    assert pixel_auroc(scores, masks) == pytest.approx(roc_auc_score(masks.ravel(), scores.ravel()))


def test_pixel_auroc_perfect_and_inverted_maps() -> None:
    _, masks = random_batch(0)
    assert pixel_auroc(masks.astype(float), masks) == 1.0
    assert pixel_auroc(-masks.astype(float), masks) == 0.0


# --- pixel F1-max ------------------------------------------------------------------------------------


def test_pixel_f1_max_perfect_map() -> None:
    _, masks = random_batch(1)
    f1, threshold = pixel_f1_max(masks.astype(float), masks)
    assert f1 == 1.0
    assert threshold == 1.0


def test_pixel_f1_max_hand_case() -> None:
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4. Threshold 0.8: P=1, R=1/2, F1=2/3;
    # 0.4: P=1/2, R=1/2, F1=1/2; 0.35: P=2/3, R=1, F1=0.8; 0.1: P=1/2, R=1, F1=2/3.
    f1, threshold = pixel_f1_max([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    assert f1 == pytest.approx(0.8)
    assert threshold == 0.35


@pytest.mark.parametrize("seed", range(3))
def test_pixel_f1_max_matches_brute_force(seed: int) -> None:
    scores, masks = random_batch(seed)

    def f1_at(threshold: float) -> float:
        predicted = scores >= threshold
        tp = (predicted & masks).sum()
        return 2 * tp / (2 * tp + (predicted & ~masks).sum() + (~predicted & masks).sum())

    f1, threshold = pixel_f1_max(scores, masks)
    assert f1 == pytest.approx(max(f1_at(t) for t in np.unique(scores)), abs=1e-12)
    assert f1_at(threshold) == pytest.approx(f1, abs=1e-12)


# --- pixel AUPRO -------------------------------------------------------------------------------------


def test_pixel_aupro_perfect_map() -> None:
    _, masks = random_batch(2)
    noise = np.random.default_rng(2).random(masks.shape)
    # Not exactly 1.0: the PRO is a cumulative sum of 1 / (n_regions * |region|) terms.
    assert pixel_aupro(masks + 0.5 * noise, masks) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0])
def test_pixel_aupro_inverted_map_is_zero(fpr_limit: float) -> None:
    # Every normal pixel is found before any anomalous one: the curve runs along PRO = 0 up to FPR = 1.
    _, masks = random_batch(2)
    assert pixel_aupro(-masks.astype(float), masks, fpr_limit=fpr_limit) == 0.0


@pytest.mark.parametrize(
    ("fpr_limit", "expected"),
    [
        (0.2, 0.5),  # interpolated on the flat PRO = 1/2 segment: (0.2 * 1/2) / 0.2
        (0.3, 0.175 / 0.3),  # 0.25 * 1/2 + 0.05 * 1
        (1.0, 0.875),  # 0.25 * 1/2 + 0.75 * 1
    ],
)
def test_pixel_aupro_two_region_hand_case(fpr_limit: float, expected: float) -> None:
    scores, masks = two_region_batch()
    assert pixel_aupro(scores, masks, fpr_limit=fpr_limit) == pytest.approx(expected)


def test_pixel_aupro_uses_eight_connectivity() -> None:
    # Pixels (0, 0), (1, 1) and (1, 2) form one 8-connected region of 3 pixels; only (0, 0) scores
    # above the normal pixels, so PRO = 1/3 for FPR in [0, 1) and AUPRO = 1/3. With 4-connectivity
    # the regions would be {(0, 0)} and {(1, 1), (1, 2)}, giving 1/2.
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    scores = np.where(masks, 0.0, 0.5)
    scores[0, 0, 0] = 1.0
    assert pixel_aupro(scores, masks) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_pixel_aupro_matches_slow_reference(seed: int, fpr_limit: float) -> None:
    scores, masks = random_batch(seed)
    expected = reference_aupro(scores, masks, fpr_limit)
    assert pixel_aupro(scores, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("num_thresholds", [2, 7, 50])
def test_pixel_aupro_fixed_thresholds_match_slow_reference(num_thresholds: int) -> None:
    scores, masks = random_batch(5)
    scores = scores + np.random.default_rng(5).random(scores.shape) * 0.01  # break the ties
    thresholds = np.linspace(scores.max(), scores.min(), num_thresholds)
    expected = reference_aupro(scores, masks, 0.3, thresholds)
    assert pixel_aupro(scores, masks, num_thresholds=num_thresholds) == pytest.approx(expected, abs=1e-6)


def test_pixel_aupro_ignores_ranking_beyond_fpr_limit() -> None:
    # In the two-region case region B is found at FPR 0.25. Dropping B below every normal pixel moves
    # its detection to FPR 1: the area up to 0.25 stays 1/2, the area up to 0.3 falls from 0.175 / 0.3.
    scores, masks = two_region_batch()
    late_b = np.where(masks & (scores == 0.5), 0.05, scores)
    assert pixel_aupro(late_b, masks, fpr_limit=0.25) == pytest.approx(0.5)
    assert pixel_aupro(scores, masks, fpr_limit=0.25) == pytest.approx(0.5)
    assert pixel_aupro(late_b, masks, fpr_limit=0.3) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"fpr_limit": 0.0}, {"fpr_limit": 1.5}, {"num_thresholds": 1}])
def test_pixel_aupro_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    scores, masks = two_region_batch()
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        pixel_aupro(scores, masks, **kwargs)


def test_batch_metrics_reject_a_single_map() -> None:
    scores, masks = two_region_batch()
    for metric in (pixel_aupro, image_auroc):
        with pytest.raises(ValueError, match=r"\(N, H, W\)"):
            metric(scores[0], masks[0])


# --- image AUROC -------------------------------------------------------------------------------------


def test_image_auroc_max_hand_case() -> None:
    # Image maxima: normal 0.2 and 0.6, anomalous 0.5 and 0.9. Of the four (anomalous, normal) pairs
    # only (0.5, 0.6) is misordered, so AUROC = 3/4.
    scores = np.array([[[0.2, 0.1]], [[0.1, 0.6]], [[0.5, 0.0]], [[0.3, 0.9]]])
    masks = np.array([[[False, False]], [[False, False]], [[True, False]], [[False, True]]])
    assert image_auroc(scores, masks) == 0.75


@pytest.mark.parametrize(("reduction", "expected"), [("max", 1.0), ("mean", 0.0), ("topk_mean", 0.0)])
def test_image_auroc_reductions(reduction: metrics.ImageReduction, expected: float) -> None:
    # 200-pixel maps, so topk_mean averages the top 2 pixels. The anomalous map has one pixel at 1.0
    # (max 1.0, mean 0.005, top-2 mean 0.5); the normal map has two pixels at 0.8 (0.8, 0.008, 0.8).
    scores = np.zeros((2, 1, 200))
    scores[0, 0, 0] = 1.0
    scores[1, 0, :2] = 0.8
    masks = np.zeros_like(scores, dtype=bool)
    masks[0, 0, 0] = True
    assert image_auroc(scores, masks, reduction=reduction) == expected


def test_image_auroc_rejects_unknown_reduction() -> None:
    scores, masks = two_region_batch()
    with pytest.raises(ValueError, match="median"):
        image_auroc(scores, masks, reduction="median")  # type: ignore[arg-type]


# --- segmentation_metrics and return types -------------------------------------------------------------


def test_segmentation_metrics_collects_every_metric_as_python_floats() -> None:
    scores, masks = random_batch(3)
    result = segmentation_metrics(scores, masks, fpr_limit=0.2)
    f1, threshold = pixel_f1_max(scores, masks)
    assert result == {
        "pixel_auroc": pixel_auroc(scores, masks),
        "pixel_aupro": pixel_aupro(scores, masks, fpr_limit=0.2),
        "pixel_f1_max": f1,
        "pixel_f1_threshold": threshold,
        "image_auroc": image_auroc(scores, masks),
    }
    assert all(type(value) is float for value in result.values())


# --- degenerate inputs -------------------------------------------------------------------------------


def test_no_anomalous_pixels_warns_and_returns_fallbacks() -> None:
    scores = np.random.default_rng(0).random((3, 4, 4))
    masks = np.zeros(scores.shape, dtype=bool)
    with pytest.warns(MetricWarning, match="no anomalous"):
        result = segmentation_metrics(scores, masks)
    assert result == {
        "pixel_auroc": 0.5,
        "pixel_aupro": 0.0,
        "pixel_f1_max": 0.0,
        "pixel_f1_threshold": math.inf,
        "image_auroc": 0.5,
    }


def test_no_normal_pixels_warns_and_returns_fallbacks() -> None:
    scores = np.random.default_rng(0).random((3, 4, 4))
    masks = np.ones(scores.shape, dtype=bool)
    with pytest.warns(MetricWarning, match="no normal pixels"):
        assert pixel_auroc(scores, masks) == 0.5
    with pytest.warns(MetricWarning, match="no normal pixels"):
        assert pixel_aupro(scores, masks) == 0.0
    with pytest.warns(MetricWarning, match="no normal images"):
        assert image_auroc(scores, masks) == 0.5


def test_pixel_f1_max_is_defined_without_normal_pixels() -> None:
    # Flagging everything gives precision = recall = 1, so there is nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pixel_f1_max([0.3, 0.1, 0.7], [True, True, True]) == (1.0, 0.1)


def test_constant_scores_warn_and_rank_at_chance() -> None:
    masks = np.zeros((2, 2, 2), dtype=bool)
    masks[0, 0, 0] = True
    constant = np.full(masks.shape, 0.4)
    with pytest.warns(MetricWarning, match="all pixel scores are equal"):
        assert pixel_auroc(constant, masks) == 0.5
    with pytest.warns(MetricWarning, match="all image scores are equal"):
        assert image_auroc(constant, masks) == 0.5
    # The pixel scores differ, but both image maxima are 0.9.
    varied = np.array([[[0.9, 0.1], [0.2, 0.3]], [[0.1, 0.9], [0.2, 0.3]]])
    with pytest.warns(MetricWarning, match="all image scores are equal"):
        assert image_auroc(varied, masks) == 0.5


def test_nan_scores_raise_naming_the_argument() -> None:
    scores, masks = two_region_batch()
    scores[0, 1, 1] = np.nan
    for metric in (pixel_auroc, pixel_f1_max, pixel_aupro, image_auroc, segmentation_metrics):
        with pytest.raises(ValueError, match="scores contains 1 NaN"):
            metric(scores, masks)


def test_shape_mismatch_raises_with_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"scores \(2, 3, 4\) and masks \(2, 4, 3\)"):
        pixel_auroc(np.zeros((2, 3, 4)), np.zeros((2, 4, 3), dtype=bool))


def test_masks_must_be_binary() -> None:
    scores, masks = two_region_batch()
    assert pixel_auroc(scores, masks.astype(np.uint8)) == pixel_auroc(scores, masks)
    with pytest.raises(ValueError, match="masks must be boolean"):
        pixel_auroc(scores, masks.astype(np.uint8) * 255)


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        pixel_auroc(np.zeros((0, 3, 3)), np.zeros((0, 3, 3), dtype=bool))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted > 0
    assert result.failed == 0


def test_metric_at_reads_a_nested_value_by_a_slash_path_or_its_parts() -> None:
    tree = {"predictor": {"pixel_f1_max": 0.5, "per_defect_type": {"hole": {"pixel_auroc": 0.9}}}}
    assert metric_at(tree, "predictor/pixel_f1_max") == 0.5
    assert metric_at(tree, ("predictor", "per_defect_type", "hole", "pixel_auroc")) == 0.9
    with pytest.raises(KeyError):
        metric_at(tree, "final_loss/pixel_f1_max")


def test_every_reported_metric_name_is_a_key_of_segmentation_metrics() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    scores = np.random.default_rng(0).random((2, 8, 8)) + masks
    assert set(METRIC_NAMES) <= set(segmentation_metrics(scores, masks))
