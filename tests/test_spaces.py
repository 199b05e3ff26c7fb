"""The observation layout and the spaces, defined once (``nbs_gym.spaces``), are what the env uses."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.spaces import OBS_BOUND, ObservationLayout, action_space

SMALL = {"episode_length": 20, "profile_length": 4, "batch_size": 8, "image_size": 32, "patch_size": 8, "device": "cpu"}


@pytest.mark.parametrize(
    ("env_id", "groups", "mode"),
    [
        ("nbs_gym/NeuralBatchSampling-v1", 5, "strata"),
        ("nbs_gym/NeuralBatchSamplingSpatial-v1", 9, "spatial"),
        ("nbs_gym/NeuralBatchSamplingQuantile-v1", 5, "quantile"),
        ("nbs_gym/NeuralBatchSamplingDiscrete-v1", 5, "discrete"),
    ],
)
def test_the_env_s_spaces_and_observation_follow_the_layout(env_id: str, groups: int, mode: str) -> None:
    env = gym.make(env_id, **SMALL)
    layout = ObservationLayout.of(env.observation_space)
    assert layout == ObservationLayout(groups) and env.observation_space == layout.observation_space()
    assert env.action_space == action_space(mode, groups)
    observation, _ = env.reset(seed=0)
    assert observation[layout.progress] == 0.0
    observation, _, _, _, info = env.step(env.action_space.sample())
    assert observation[layout.progress] == pytest.approx(info["step"] / SMALL["episode_length"])
    # The batch shares of the recent batches sum to one once a batch has been drawn.
    assert observation[layout.batch_shares].sum() == pytest.approx(1.0, abs=1e-5)
    env.close()


def test_assemble_orders_clips_and_checks_its_parts() -> None:
    layout = ObservationLayout(2)
    observation = layout.assemble(np.array([1.0, 2.0]), np.array([-1.0, 50.0]), np.array([0.5, 0.5]), 0.25, -3.0, -2.0)
    assert observation.dtype == np.float32 and observation.shape == (layout.size,)
    assert observation[layout.level_changes].tolist() == [-1.0, OBS_BOUND]
    assert observation[[layout.progress, layout.batch_log_loss, layout.pool_log_loss]].tolist() == [0.25, -3.0, -2.0]
    with pytest.raises(ValueError, match="expected 9 entries in all, got 8"):
        layout.assemble(np.array([1.0]), np.array([1.0, 2.0]), np.array([0.5, 0.5]), 0.0, 0.0, 0.0)


def test_a_space_that_is_no_observation_of_the_env_is_an_error_naming_its_shape() -> None:
    with pytest.raises(ValueError, match=r"\(3 \* S \+ 3,\) with S >= 1, got \(7,\)"):
        ObservationLayout.of(spaces.Box(-1.0, 1.0, (7,)))
    with pytest.raises(ValueError, match="action_mode: expected strata, spatial, quantile or discrete, got 'grid'"):
        action_space("grid", 5)
