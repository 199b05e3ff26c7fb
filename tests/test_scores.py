"""Reference scores and the normalised score (0 = uniform, 1 = oracle)."""

from __future__ import annotations

import math

import pytest

import nbs_gym
from nbs_gym.config import ConfigError
from nbs_gym.scores import (
    REFERENCE_METRICS,
    REFERENCE_SAMPLERS,
    normalized_score,
    normalized_scores,
    reference_metadata,
    reference_scores,
)


@pytest.mark.parametrize("env_id", sorted(nbs_gym.ENV_IDS))
def test_reference_scores_load_for_every_registered_id(env_id: str) -> None:
    scores = reference_scores(env_id)
    assert set(scores) == set(REFERENCE_SAMPLERS)
    for sampler in REFERENCE_SAMPLERS:
        assert set(scores[sampler]) == set(REFERENCE_METRICS)
        assert all(0.0 < value <= 1.0 for value in scores[sampler].values())
    metadata = reference_metadata(env_id)
    assert metadata["seeds"] and "headroom.py" in metadata["command"]


@pytest.mark.parametrize("env_id", ["nbs_gym/NeuralBatchSampling-v0", "nbs_gym/NeuralBatchSampling-v1"])
def test_uniform_scores_zero_and_the_oracle_one(env_id: str) -> None:
    scores = reference_scores(env_id)
    for metric in REFERENCE_METRICS:
        low, high = scores["uniform"][metric], scores["oracle"][metric]
        assert normalized_score(env_id, metric, low) == 0.0
        assert normalized_score(env_id, metric, high) == pytest.approx(1.0)
        assert normalized_score(env_id, metric, (low + high) / 2) == pytest.approx(0.5)
    entry = {"predictor": {metric.split("/")[1]: scores["oracle"][metric] for metric in REFERENCE_METRICS}}
    assert normalized_scores(env_id, entry) == pytest.approx(dict.fromkeys(REFERENCE_METRICS, 1.0))


def test_bad_metric_or_task_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="metric: got 'final_loss/pixel_auroc'"):
        normalized_score("nbs_gym/NeuralBatchSampling-v1", "final_loss/pixel_auroc", 0.5)
    with pytest.raises(ConfigError, match="unknown id"):
        reference_scores("nbs_gym/NeuralBatchSampling-v7")
    assert not math.isnan(normalized_score("nbs_gym/NeuralBatchSamplingDiscrete-v1", REFERENCE_METRICS[0], 0.5))
