"""Separation measures on constructed profiles whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from nbs_gym.separation import MEASURES, SeparationTracker, separation


def _profiles(gap: float, n: int = 2000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal losses; anomalous pixels' log-losses are shifted up by ``gap`` standard deviations."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    logs = rng.normal(size=(n, k)) + gap * labels[:, None]
    return np.exp(logs - 4.0), labels


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_measure_grows_with_the_gap_between_classes(measure: str) -> None:
    values = [separation(*_profiles(gap), measure=measure) for gap in (0.0, 0.5, 1.5, 4.0)]
    assert values == sorted(values), values
    assert values[-1] > values[0]


def test_auroc_is_chance_without_signal_and_perfect_with_disjoint_classes() -> None:
    assert separation(*_profiles(0.0, n=20000), measure="auroc") == pytest.approx(0.5, abs=0.03)
    features = np.concatenate([np.full((50, 3), 1.0), np.full((50, 3), 2.0)]) * np.linspace(1, 2, 3)
    labels = np.arange(100) >= 50
    assert separation(features, labels, "auroc") == 1.0


def test_auroc_uses_the_profile_not_only_the_final_loss() -> None:
    # Final losses are identical in both classes; only the trajectory (first snapshot) differs.
    rng = np.random.default_rng(1)
    labels = rng.random(4000) < 0.25
    final = np.exp(rng.normal(size=4000))
    first = np.exp(rng.normal(size=4000) + 2.0 * labels)
    assert separation(final[:, None], labels, "auroc") == pytest.approx(0.5, abs=0.05)
    assert separation(np.stack([first, final], axis=1), labels, "auroc") > 0.85


def test_fisher_matches_the_closed_form_for_one_feature() -> None:
    logs = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0])
    labels = np.arange(8) >= 4
    # standardisation and the sign of the direction do not change Fisher's criterion of one feature
    expected = (11.5 - 1.5) ** 2 / (1.25 + 1.25)
    assert separation(np.exp(logs)[:, None], labels, "fisher") == pytest.approx(expected, rel=1e-6)


def test_prediction_loss_is_minus_log_two_at_chance() -> None:
    value = separation(*_profiles(0.0, n=20000), measure="prediction_loss")
    assert value == pytest.approx(-np.log(2.0), abs=0.01)


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.ones((4, 2)), np.array([True, True, True, True]), "both anomalous and normal"),
        (np.ones((4, 2)), np.array([True, False]), "(n_pixels,)"),
        (np.ones(4), np.array([True, False, True, False]), "(n_pixels, k)"),
        (np.ones((4, 0)), np.array([True, False, True, False]), "k >= 1"),
        (np.ones((4, 1)), np.array([0.5, 0.0, 2.0, 1.0]), "expected booleans (or 0 and 1)"),
        (np.array([[1.0], [np.inf], [1.0], [2.0]]), np.array([1, 0, 1, 0]), "finite and >= 0"),
        (np.array([[1.0], [np.nan], [1.0], [2.0]]), np.array([1, 0, 1, 0]), "finite and >= 0"),
        (np.array([[1.0], [-1.0], [1.0], [2.0]]), np.array([1, 0, 1, 0]), "finite and >= 0"),
    ],
)
def test_bad_input_is_a_clear_error(features: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        separation(features, labels)


def test_unknown_measure_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="auroc, fisher, prediction_loss"):
        separation(*_profiles(1.0), measure="accuracy")


def _reference(features: np.ndarray, labels: np.ndarray, measure: str) -> float:
    """The measures from scratch on the whole profile matrix: np.cov, sklearn's AUROC and logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    from nbs_gym.separation import _EPS, _SHRINKAGE

    logs = np.log(features + _EPS)
    x = (logs - logs.mean(axis=0)) / logs.std(axis=0)
    if measure == "prediction_loss":
        weights = np.where(labels, 0.5 / labels.mean(), 0.5 / (1.0 - labels.mean()))
        model = LogisticRegression(C=1.0, max_iter=200).fit(x, labels, sample_weight=weights)
        return -log_loss(labels, model.predict_proba(x)[:, 1], sample_weight=weights)
    anomalous, normal = x[labels], x[~labels]
    within = np.atleast_2d(np.cov(anomalous, rowvar=False)) + np.atleast_2d(np.cov(normal, rowvar=False))
    direction = np.linalg.solve(within + _SHRINKAGE * np.eye(x.shape[1]), anomalous.mean(0) - normal.mean(0))
    scores = x @ direction
    if measure == "auroc":
        return roc_auc_score(labels, scores)
    return (scores[labels].mean() - scores[~labels].mean()) ** 2 / (scores[labels].var() + scores[~labels].var())


def test_auroc_equals_sklearn_roc_auc_of_the_fisher_read_out_with_ties() -> None:
    rng = np.random.default_rng(4)
    labels = rng.random(3000) < 0.3
    features = np.round(np.exp(rng.normal(size=(3000, 3)) + labels[:, None]), 1)  # rounding makes ties
    assert separation(features, labels, "auroc") == pytest.approx(_reference(features, labels, "auroc"), abs=1e-12)


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_tracker_adding_snapshots_one_by_one_equals_the_measure_from_scratch(measure: str) -> None:
    features, labels = _profiles(1.0, n=3000, k=7, seed=5)
    features[:, 3:] *= features[:, :4]  # correlated columns, so that the covariances' cross terms matter
    tracker = SeparationTracker(labels, measure, max_columns=2)  # grows twice on the way
    values = [tracker.add(features[:, start : start + width]) for start, width in ((0, 1), (1, 2), (3, 1), (4, 3))]
    for value, stop in zip(values, (1, 3, 4, 7), strict=True):
        expected = _reference(features[:, :stop], labels, measure)
        assert value == pytest.approx(expected, rel=1e-6 if measure == "prediction_loss" else 1e-10), stop
    assert tracker.n_columns == 7
    assert values[-1] == pytest.approx(separation(features, labels, measure), rel=1e-12)


def test_tracker_rejects_features_of_the_wrong_number_of_pixels() -> None:
    features, labels = _profiles(1.0)
    tracker = SeparationTracker(labels)
    with pytest.raises(ValueError, match=r"got \(1999, 1\) and \(2000,\)"):
        tracker.add(features[:-1, :1])
