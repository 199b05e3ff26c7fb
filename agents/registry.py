"""Agents by name: SB3 algorithms, sb3-contrib algorithms when installed, the built-in baselines.

Each :class:`AgentSpec` knows which env action modes its agent can act in and which one it takes by
default, so that ``--agent dqn`` picks the discrete env and ``--agent sac`` the strata Box env, while
``sac`` with ``action_mode=discrete`` is a clear error before anything is built::

    from agents import make_agent

    agent = make_agent("ppo", env, seed=0, n_steps=400)
    agent.learn(10_000)

A name with a colon (``package.module:ClassName``) loads a custom sampler through the plug-in protocol
(:mod:`agents.protocol`).
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

import agents.published  # noqa: F401  (its samplers join BASELINES)
from agents.baselines import BASELINES
from agents.protocol import load_sampler_class
from nbs_gym.config import ACTION_MODES, ConfigError
from nbs_gym.spaces import ObservationLayout
from nbs_gym.tasks import DEFAULT_ENV_ID, env_id_for, parse_env_id

__all__ = [
    "AGENTS",
    "ENV_APIS",
    "ENV_ID_BY_MODE",
    "TUNED",
    "AgentError",
    "AgentSpec",
    "TaskDefaults",
    "get_spec",
    "make_agent",
]

BOX_MODES: tuple[str, ...] = ("strata", "spatial", "quantile")
ENV_ID_BY_MODE: dict[str, str] = {mode: env_id_for(DEFAULT_ENV_ID, mode) for mode in ACTION_MODES}
"""Registered env id of each action mode, in the default task version."""

# The env's horizon is part of the task and observed (progress), and its documented objective is the
# undiscounted return S_T - S_0: every algorithm that discounts gets gamma = 1, so that what it
# optimises is that return (SB3's default 0.99 would weigh the last snapshot's gain of a 200-step
# episode about 0.16 of the first's).
_UNDISCOUNTED: dict[str, Any] = {"gamma": 1.0}
# A replay buffer of 40,000 transitions, no larger than a v0 run of 200 episodes (SB3 defaults to a
# million transitions).
_DQN_DEFAULTS: dict[str, Any] = {"buffer_size": 40_000, **_UNDISCOUNTED}
# One PPO rollout of one default episode (200 steps), minibatches that divide it.
_ON_POLICY_DEFAULTS: dict[str, Any] = {"n_steps": 200, "batch_size": 50, **_UNDISCOUNTED}


@dataclass(frozen=True)
class TaskDefaults:
    """An agent's best settings found on one task version (``docs/RESULTS.md``), which its runs there take
    unless told otherwise.

    Attributes:
        action_mode: The mode the agent acts in on that task when the id leaves the mode to the agent.
        n_envs: Training envs (``nbs_gym.train --n-envs``) when the user sets none.
        hyperparams: Constructor settings over the agent's defaults, in that mode on that task.
    """

    action_mode: str
    n_envs: int = 1
    hyperparams: Mapping[str, Any] = field(default_factory=dict)


# Exploration drawn once per episode (gSDE resampled at rollout starts only, a small initial spread) and
# Monte Carlo advantages, with four episodes per update (one per env): the settings of "Four episodes per
# update" in docs/RESULTS.md, where PPO and A2C in the quantile mode beat uniform sampling on F1-max beyond
# the 95 % CI over 8 seeds.
_EPISODE_EXPLORATION: dict[str, Any] = {
    "use_sde": True,
    "sde_sample_freq": -1,
    "gae_lambda": 1.0,
    "policy_kwargs": {"log_std_init": -2.0},
}
TUNED: dict[str, dict[str, TaskDefaults]] = {
    "ppo": {"v1": TaskDefaults("quantile", 4, {"batch_size": 200, **_EPISODE_EXPLORATION})},
    "a2c": {
        "v1": TaskDefaults(
            "quantile",
            4,
            {"n_steps": 200, "normalize_advantage": True, "use_rms_prop": False, **_EPISODE_EXPLORATION},
        )
    },
}
"""Per agent and task version, the best settings found (:class:`TaskDefaults`)."""

# name, module, class, action modes, default mode, policy, constructor defaults
_ALGORITHMS: tuple[tuple[str, str, str, tuple[str, ...], str, str, dict[str, Any]], ...] = (
    ("ppo", "stable_baselines3", "PPO", ACTION_MODES, "strata", "MlpPolicy", _ON_POLICY_DEFAULTS),
    ("a2c", "stable_baselines3", "A2C", ACTION_MODES, "strata", "MlpPolicy", _UNDISCOUNTED),
    ("sac", "stable_baselines3", "SAC", BOX_MODES, "strata", "MlpPolicy", _UNDISCOUNTED),
    ("td3", "stable_baselines3", "TD3", BOX_MODES, "strata", "MlpPolicy", _UNDISCOUNTED),
    ("ddpg", "stable_baselines3", "DDPG", BOX_MODES, "strata", "MlpPolicy", _UNDISCOUNTED),
    ("dqn", "stable_baselines3", "DQN", ("discrete",), "discrete", "MlpPolicy", _DQN_DEFAULTS),
    ("recurrent_ppo", "sb3_contrib", "RecurrentPPO", ACTION_MODES, "strata", "MlpLstmPolicy", _ON_POLICY_DEFAULTS),
    ("trpo", "sb3_contrib", "TRPO", ACTION_MODES, "strata", "MlpPolicy", _ON_POLICY_DEFAULTS),
    ("qrdqn", "sb3_contrib", "QRDQN", ("discrete",), "discrete", "MlpPolicy", _UNDISCOUNTED),
    ("tqc", "sb3_contrib", "TQC", BOX_MODES, "strata", "MlpPolicy", _UNDISCOUNTED),
    ("ars", "sb3_contrib", "ARS", ACTION_MODES, "strata", "MlpPolicy", {}),
)

AgentKind = Literal["sb3", "baseline", "plugin"]

ENV_APIS: tuple[str, ...] = ("gymnasium", "sb3")
"""Values of a plug-in's ``env_api``: the training env it is built on (see :attr:`AgentSpec.env_api`)."""


class AgentError(ValueError):
    """An unknown agent, an agent that cannot act in the requested mode, or bad hyperparameters."""


@dataclass(frozen=True)
class AgentSpec:
    """How to build, and load back, one kind of agent.

    Attributes:
        name: Registry name (``"ppo"``) or the plug-in's ``"package.module:ClassName"``.
        agent_class: The class built.
        kind: ``"sb3"`` (an SB3 algorithm, built with a policy name), ``"baseline"`` or ``"plugin"``
            (both built as ``agent_class(env, seed=seed, **hyperparams)``).
        action_modes: Env action modes the agent can act in.
        default_action_mode: Mode used when the user sets none.
        policy: SB3 policy name (``kind == "sb3"`` only).
        defaults: Constructor keyword arguments applied before the user's hyperparameters.
        tuned: Per task version (``"v1"``), the best settings found there (:data:`TUNED`): the action
            mode a plain id leaves to the agent, the number of training envs and the hyperparameters in
            that mode, over ``defaults``.
    """

    name: str
    agent_class: type[Any]
    kind: AgentKind
    action_modes: tuple[str, ...]
    default_action_mode: str
    policy: str = "MlpPolicy"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tuned: Mapping[str, TaskDefaults] = field(default_factory=dict)

    @property
    def file_suffix(self) -> str:
        """Suffix of the file the agent saves to (``.zip`` for SB3, ``.json`` for baselines)."""
        return str(getattr(self.agent_class, "file_suffix", ".zip"))

    @property
    def env_api(self) -> str:
        """The training env the agent is built on: ``"sb3"`` (an SB3 ``VecEnv``) or ``"gymnasium"``.

        SB3 algorithms (and plug-ins that subclass SB3's ``BaseAlgorithm``) and the built-in baselines
        take a ``VecEnv``; any other plug-in gets a Gymnasium env (a ``gymnasium.vector.VectorEnv`` with
        ``--n-envs > 1``) unless its class sets ``env_api = "sb3"``.
        """
        if self.kind != "plugin" or issubclass(self.agent_class, BaseAlgorithm):
            return "sb3"
        return str(getattr(self.agent_class, "env_api", "gymnasium"))

    def resolve_action_mode(self, requested: str | None, task: str = DEFAULT_ENV_ID) -> str:
        """The env action mode to use: ``requested``, or when ``None`` the agent's on ``task``'s version
        (its tuned mode there, else its default mode).

        Raises:
            ConfigError: ``requested`` is no action mode at all, or ``task`` no registered id.
            AgentError: The agent cannot act in ``requested``.
        """
        if requested is None:
            tuned = self.tuned.get(parse_env_id(task)[0])
            return tuned.action_mode if tuned is not None else self.default_action_mode
        if requested not in ACTION_MODES:
            raise ConfigError(f"action_mode: got {requested!r}, expected one of {', '.join(ACTION_MODES)}")
        if requested not in self.action_modes:
            raise AgentError(
                f"agent {self.name!r} cannot act in action_mode={requested!r}; "
                f"it supports action_mode {' or '.join(self.action_modes)}"
            )
        return requested

    def env_id(self, requested_mode: str | None = None, task: str = DEFAULT_ENV_ID) -> str:
        """Registered env id of ``task``'s version for :meth:`resolve_action_mode` of ``requested_mode``."""
        return env_id_for(task, self.resolve_action_mode(requested_mode, task))

    def task_defaults(self, env_id: str) -> TaskDefaults | None:
        """The tuned settings that apply on ``env_id`` (its task version, in the tuned mode), if any."""
        version, mode = parse_env_id(env_id)
        tuned = self.tuned.get(version)
        return tuned if tuned is not None and tuned.action_mode == mode else None

    def settings(self, env_id: str | None = None) -> dict[str, Any]:
        """The constructor settings before the user's on ``env_id``: ``defaults``, then the tuned ones
        that apply there (:meth:`task_defaults`); ``defaults`` alone without an id. Copies."""
        tuned = self.task_defaults(env_id) if env_id is not None else None
        return copy.deepcopy({**self.defaults, **(tuned.hyperparams if tuned is not None else {})})

    def n_envs(self, env_id: str) -> int:
        """Training envs on ``env_id`` when the user sets none: the tuned number there, else 1."""
        tuned = self.task_defaults(env_id)
        return tuned.n_envs if tuned is not None else 1

    def check_action_space(self, action_space: spaces.Space[Any], observation_space: Any = None) -> None:
        """Raise :class:`AgentError` unless the agent can act in ``action_space``.

        With the env's ``observation_space`` the quantile mode (a ``(1,)`` Box over more than one observed
        group) is told apart from the strata and spatial ones; without it, only Discrete from Box.
        """
        if isinstance(action_space, spaces.Discrete):
            fits = "discrete" in self.action_modes
        else:
            try:
                groups = ObservationLayout.of(observation_space).n_groups
            except ValueError:  # no observation space given (or not the env's): only Discrete from Box
                groups = 0
            quantile = action_space.shape == (1,) and groups > 1
            fits = "quantile" in self.action_modes if quantile else bool({"strata", "spatial"} & set(self.action_modes))
        if not fits:
            raise AgentError(
                f"agent {self.name!r} cannot act in {action_space}; "
                f"it supports action_mode {' or '.join(self.action_modes)}"
            )

    def build(self, env: Any, seed: int | None = None, env_id: str | None = None, **hyperparams: Any) -> Any:
        """A new agent on ``env`` (a ``gymnasium.Env`` or SB3 ``VecEnv``), with :meth:`settings` of
        ``env_id`` (the registered id ``env`` runs) under ``hyperparams``.

        Raises:
            AgentError: The agent cannot act in the env's action space, or the constructor rejects
                the hyperparameters (unknown name or invalid value).
        """
        # A Gymnasium vector env's spaces are batched; its single_* spaces are one sub-environment's.
        action_space = getattr(env, "single_action_space", env.action_space)
        self.check_action_space(action_space, getattr(env, "single_observation_space", env.observation_space))
        # A copy: SB3 writes into nested settings it is given (A2C adds its optimizer class to
        # policy_kwargs), and the caller's, saved with the run, must stay plain data.
        settings = {**self.settings(env_id), **copy.deepcopy(hyperparams)}
        try:
            if self.kind == "sb3":
                return self.agent_class(self.policy, env, seed=seed, **{"verbose": 0, **settings})
            return self.agent_class(env, seed=seed, **settings)
        except (TypeError, AssertionError) as error:
            # SB3 validates hyperparameters with asserts; both are user input errors here.
            raise AgentError(f"agent {self.name!r}: bad hyperparameters {settings} ({error})") from error

    def load(self, path: str | os.PathLike[str], env: Any = None, device: str = "auto") -> Any:
        """Load an agent saved by this spec's class; ``device`` applies to SB3 algorithms only."""
        if self.kind == "sb3":
            return self.agent_class.load(path, env=env, device=device)
        return self.agent_class.load(path, env=env)


def get_spec(name: str) -> AgentSpec:
    """The spec of a registry name or of a ``package.module:ClassName`` plug-in.

    Raises:
        AgentError: Unknown name (the message lists the known ones).
        agents.protocol.PluginError: The plug-in cannot be imported or lacks part of the protocol.
    """
    if ":" in name:
        return _plugin_spec(name)
    if name in _NOT_INSTALLED:
        raise AgentError(
            f"agent {name!r} needs {_NOT_INSTALLED[name]}, which is not installed: "
            'pip install -e ".[contrib]" (or pip install sb3-contrib)'
        )
    if name not in AGENTS:
        raise AgentError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)} or give package.module:ClassName")
    return AGENTS[name]


def make_agent(
    name_or_path: str, env: Any, seed: int | None = None, env_id: str | None = None, **hyperparams: Any
) -> Any:
    """Build the agent ``name_or_path`` on ``env`` with constructor overrides ``hyperparams``.

    Args:
        name_or_path: A key of :data:`AGENTS` or ``package.module:ClassName``.
        env: A ``gymnasium.Env`` or SB3 ``VecEnv`` of the nbs_gym environment.
        seed: Seed of the agent's randomness (SB3 also seeds torch, numpy and the env with it).
        env_id: The registered id ``env`` runs; with it, the agent's tuned settings there
            (:data:`TUNED`) join its defaults.
        **hyperparams: Constructor keyword arguments, over the registry's defaults.

    Raises:
        AgentError: Unknown agent, an action space it cannot act in, or rejected hyperparameters.
        agents.protocol.PluginError: A plug-in that cannot be loaded.
    """
    return get_spec(name_or_path).build(env, seed, env_id, **hyperparams)


def _plugin_spec(target: str) -> AgentSpec:
    sampler_class = load_sampler_class(target)
    declared = getattr(sampler_class, "action_modes", ACTION_MODES)
    modes = (declared,) if isinstance(declared, str) else tuple(declared)
    suffix = getattr(sampler_class, "file_suffix", ".zip")
    if not (isinstance(suffix, str) and suffix.startswith(".") and len(suffix) > 1):
        raise AgentError(
            f"--agent {target}: class {sampler_class.__name__} has file_suffix {suffix!r}; expected '.ext'"
        )
    env_api = getattr(sampler_class, "env_api", "gymnasium")
    if env_api not in ENV_APIS:
        raise AgentError(
            f"--agent {target}: class {sampler_class.__name__} has env_api {env_api!r}; expected one of "
            f"{', '.join(map(repr, ENV_APIS))}"
        )
    default = str(getattr(sampler_class, "default_action_mode", "strata" if "strata" in modes else modes[0]))
    unknown = sorted(set(modes) - set(ACTION_MODES))
    if unknown or default not in modes:
        raise AgentError(
            f"--agent {target}: class {sampler_class.__name__} declares action modes {modes} "
            f"(default {default!r}); expected a subset of {', '.join(ACTION_MODES)} holding the default"
        )
    return AgentSpec(target, sampler_class, "plugin", modes, default)


def _build_registry() -> tuple[dict[str, AgentSpec], dict[str, str]]:
    registry: dict[str, AgentSpec] = {}
    not_installed: dict[str, str] = {}
    for name, module_name, class_name, modes, default, policy, defaults in _ALGORITHMS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # sb3-contrib is optional: its agents are listed only when installed
            not_installed[name] = module_name.partition(".")[0].replace("_", "-")
            continue
        registry[name] = AgentSpec(
            name, getattr(module, class_name), "sb3", modes, default, policy, defaults, TUNED.get(name, {})
        )
    for name, sampler_class in BASELINES.items():
        registry[name] = AgentSpec(
            name, sampler_class, "baseline", sampler_class.action_modes, sampler_class.default_action_mode
        )
    return registry, not_installed


AGENTS: dict[str, AgentSpec]
"""Every agent known by name, SB3 and sb3-contrib algorithms first, then the built-in baselines."""
_NOT_INSTALLED: dict[str, str]
"""Agents whose package is missing: name -> the package that provides it."""
AGENTS, _NOT_INSTALLED = _build_registry()
