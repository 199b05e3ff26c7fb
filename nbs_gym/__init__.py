"""nbs_gym: neural batch sampling for semi-supervised anomaly detection, as a Gymnasium environment.

Importing the package registers the environment ids below with Gymnasium::

    import gymnasium as gym
    import nbs_gym  # noqa: F401

    env = gym.make("nbs_gym/NeuralBatchSampling-v1")

Each task version (:mod:`nbs_gym.tasks`) has one id per action mode: ``nbs_gym/NeuralBatchSampling-v1``
(Box weights over loss strata), ``...Spatial-v1`` (a grid of locations), ``...Discrete-v1`` and
``...Quantile-v1`` (the admitted share of the pool, lowest loss first).
"""

from __future__ import annotations

import gymnasium as gym

from nbs_gym.config import AutoencoderConfig, ConfigError, DataConfig, EnvConfig
from nbs_gym.tasks import DEFAULT_ENV_ID, ENV_IDS

__version__ = "0.1.0"

ENTRY_POINT = "nbs_gym.env:NeuralBatchSamplingEnv"
VECTOR_ENTRY_POINT = "nbs_gym.vector:NeuralBatchSamplingVectorEnv"


def _register_envs() -> None:
    # One env class; the ids differ only in configuration (nbs_gym.tasks.ENV_IDS).
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gym.registry:  # importing twice (or reloading) must not warn or fail
            gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT, kwargs=kwargs)


_register_envs()

__all__ = ["DEFAULT_ENV_ID", "ENV_IDS", "AutoencoderConfig", "ConfigError", "DataConfig", "EnvConfig", "__version__"]
