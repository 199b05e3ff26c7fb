"""Separation measures on constructed profiles whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from nbs_gym.separation import MEASURES, separation


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
    ],
)
def test_bad_input_is_a_clear_error(features: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        separation(features, labels)


def test_unknown_measure_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="auroc, fisher, prediction_loss"):
        separation(*_profiles(1.0), measure="accuracy")


def test_auroc_equals_sklearn_roc_auc_of_the_fisher_read_out_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    from nbs_gym.separation import _fisher_direction, _standardised_log

    rng = np.random.default_rng(4)
    labels = rng.random(3000) < 0.3
    features = np.round(np.exp(rng.normal(size=(3000, 3)) + labels[:, None]), 1)  # rounding makes ties
    x = _standardised_log(features)
    expected = roc_auc_score(labels, x @ _fisher_direction(x, labels))
    assert separation(features, labels, "auroc") == pytest.approx(expected, abs=1e-12)
