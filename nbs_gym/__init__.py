"""nbs_gym: neural batch sampling for semi-supervised anomaly detection, as a Gymnasium environment.

Importing the package registers the environment ids below with Gymnasium::

    import gymnasium as gym
    import nbs_gym  # noqa: F401

    env = gym.make("nbs_gym/NeuralBatchSampling-v0", episode_length=100)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from nbs_gym.config import AutoencoderConfig, ConfigError, DataConfig, EnvConfig

__version__ = "0.1.0"

ENTRY_POINT = "nbs_gym.env:NeuralBatchSamplingEnv"
VECTOR_ENTRY_POINT = "nbs_gym.vector:NeuralBatchSamplingVectorEnv"

# id -> default keyword arguments. One env class; the ids differ only in configuration.
ENV_IDS: dict[str, dict[str, Any]] = {
    "nbs_gym/NeuralBatchSampling-v0": {"action_mode": "strata"},
    "nbs_gym/NeuralBatchSamplingSpatial-v0": {"action_mode": "spatial"},
    "nbs_gym/NeuralBatchSamplingDiscrete-v0": {"action_mode": "discrete"},
}


def _register_envs() -> None:
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gym.registry:  # importing twice (or reloading) must not warn or fail
            gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT, kwargs=kwargs)


_register_envs()

__all__ = ["ENV_IDS", "AutoencoderConfig", "ConfigError", "DataConfig", "EnvConfig", "__version__"]
