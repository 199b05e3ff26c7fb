"""Registered tasks: each version fixes a dataset, an episode and a reward; each action mode is one id.

A task version is a set of :class:`~nbs_gym.config.EnvConfig` settings over the config's defaults. Its
ids are ``nbs_gym/NeuralBatchSampling-<version>`` (strata), ``nbs_gym/NeuralBatchSamplingSpatial-<version>``,
``nbs_gym/NeuralBatchSamplingDiscrete-<version>`` and ``nbs_gym/NeuralBatchSamplingQuantile-<version>``,
registered in one loop. A change that alters a
task's trajectories adds a version; old versions stay as they were, so their numbers reproduce.

``v0``
    The first task: the config's defaults (synthetic fabric, 200 updates per episode, plain reward).
``v1``
    The task chosen from the headroom map (``docs/RESULTS.md``), on which batch composition measurably
    changes the anomaly classifier's result: see :data:`TASK_SETTINGS`.
"""

from __future__ import annotations

import re
from typing import Any

from nbs_gym.config import ACTION_MODES, ConfigError, EnvConfig

__all__ = [
    "DEFAULT_ENV_ID",
    "ENV_IDS",
    "MODE_NAMES",
    "TASK_SETTINGS",
    "env_id_for",
    "parse_env_id",
    "task_config",
]

TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "v0": {},
    "v1": {
        # A training set in which a fifth of the images hold an unlabeled stain: an autoencoder trained
        # on uniform batches learns to reconstruct stains, one that avoids them does not.
        "dataset": "synthetic:fabric?contamination=0.2&contaminating_defect=stain",
        # Long enough that uniform sampling's separation falls as the autoencoder learns the defects.
        "episode_length": 1000,
        # 200 env steps per episode, as in v0.
        "decision_interval": 5,
    },
}
"""Task version -> its settings over :class:`~nbs_gym.config.EnvConfig`'s defaults."""

MODE_NAMES: dict[str, str] = {"strata": "", "spatial": "Spatial", "discrete": "Discrete", "quantile": "Quantile"}
"""Action mode -> the word it adds to the id."""

ENV_IDS: dict[str, dict[str, Any]] = {
    f"nbs_gym/NeuralBatchSampling{MODE_NAMES[mode]}-{version}": {**settings, "action_mode": mode}
    for version, settings in TASK_SETTINGS.items()
    for mode in ACTION_MODES
}
"""Registered id -> its keyword arguments (the task's settings and its action mode)."""

DEFAULT_ENV_ID = "nbs_gym/NeuralBatchSampling-v1"
"""The task ``nbs_gym.train``, ``compare`` and ``study`` run unless told otherwise."""

_ID_PATTERN = re.compile(r"nbs_gym/NeuralBatchSampling(Spatial|Discrete|Quantile)?-(v\d+)")


def parse_env_id(env_id: str) -> tuple[str, str]:
    """``(version, action mode)`` of a registered id.

    Raises:
        ConfigError: ``env_id`` is not a registered id (the message lists them).
    """
    match = _ID_PATTERN.fullmatch(env_id) if isinstance(env_id, str) else None
    if match is None or env_id not in ENV_IDS:
        raise ConfigError(f"env_id: unknown id {env_id!r}; registered: {', '.join(ENV_IDS)}")
    mode = {"Spatial": "spatial", "Discrete": "discrete", "Quantile": "quantile", None: "strata"}[match.group(1)]
    return match.group(2), mode


def env_id_for(env_id: str, action_mode: str) -> str:
    """The id of the same task version as ``env_id`` with another action mode."""
    version, _ = parse_env_id(env_id)
    return f"nbs_gym/NeuralBatchSampling{MODE_NAMES[action_mode]}-{version}"


def task_config(env_id: str, **overrides: Any) -> EnvConfig:
    """The config ``gymnasium.make(env_id, **overrides)`` builds: the id's settings, then ``overrides``."""
    parse_env_id(env_id)
    return EnvConfig.from_kwargs(**{**ENV_IDS[env_id], **overrides})
