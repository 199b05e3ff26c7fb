"""A natively batched vector environment, and its adapter for Stable-Baselines3.

:class:`NeuralBatchSamplingVectorEnv` runs N copies of :class:`~nbs_gym.env.NeuralBatchSamplingEnv`
on one :class:`~nbs_gym.engine.EpisodeEngine`, the single env's own engine with N sub-environments:
per step, one batched update of all N autoencoders and, at snapshot steps, the loss maps of the
snapshot images under all N (one grouped pass on a GPU; on the CPU one model after another, which is
faster there), with the bookkeeping as arrays over N. Each sub-environment draws from its own random
stream, so sub-environment ``i`` reset with seed ``s`` follows the trajectory of a single env reset
with ``s`` (up to float rounding of the batched kernels).

It is the ``vector_entry_point`` of every registered id::

    envs = gymnasium.make_vec("nbs_gym/NeuralBatchSampling-v0", num_envs=16,
                              vectorization_mode="vector_entry_point")

Stable-Baselines3 does not take Gymnasium vector envs; :class:`SB3VecEnv` wraps one as an SB3
``VecEnv``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from nbs_gym.config import EnvConfig
from nbs_gym.data import AnomalyDataset
from nbs_gym.engine import EngineSlot, EpisodeEngine, IndexedActionError
from nbs_gym.env import build_engine


class NeuralBatchSamplingVectorEnv(VectorEnv):
    """N neural-batch-sampling environments whose autoencoders train in one batched computation.

    Every episode has the same length, so sub-environments that were reset together snapshot and
    terminate at the same steps. After a partial reset (``options["reset_mask"]``) each still snapshots
    at its own steps, and only the models due are mapped. Autoreset mode: ``SAME_STEP`` — the step that terminates a
    sub-environment returns the first observation of its next episode, with the terminal observation
    and info in ``info["final_obs"]`` / ``info["final_info"]``.

    ``envs[i]`` is sub-environment ``i`` (:class:`SubEnvironment`): the single env's accessors
    (``patch_losses``, ``set_patch_draw``, ``progress``, ...) for that slot, as SB3's ``get_attr`` and
    ``env_method`` reach them through :class:`SB3VecEnv`.

    Args:
        num_envs: Number of sub-environments N.
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns one frame per sub-environment).
        config: A whole :class:`~nbs_gym.config.EnvConfig` instead of flat keywords.
        dataset_object: An already loaded dataset.
        profile_dir: Folder for finished episodes' profiles; sub-environment ``i`` writes to ``env_<i>/``.
        **kwargs: Flat settings, as for the single env.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        render_mode: str | None = None,
        *,
        config: EnvConfig | None = None,
        dataset_object: AnomalyDataset | None = None,
        profile_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs: must be >= 1, got {num_envs}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode: got {render_mode!r}, expected None or 'rgb_array'")
        folders = [Path(profile_dir) / f"env_{i:03d}" if profile_dir is not None else None for i in range(num_envs)]
        settings = (config if config is not None else EnvConfig()).replace(**kwargs)
        self.engine = build_engine(num_envs, settings, dataset_object, list(folders))
        self.envs = [SubEnvironment(self.engine, i, render_mode) for i in range(num_envs)]
        self.config = self.engine.config
        self.split = self.engine.split  # one split for every sub-environment
        self.render_mode = render_mode
        self.num_envs = num_envs
        self.device = self.engine.device
        self.single_observation_space = self.engine.observation_space
        self.single_action_space = self.engine.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._started = np.zeros(num_envs, dtype=bool)

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-environments (or those in ``options["reset_mask"]``).

        ``seed`` is ``None``, an int ``s`` (sub-environment ``i`` gets ``s + i``, as Gymnasium's vector
        envs do) or a list of one seed (or ``None``) per sub-environment.
        """
        seeds: list[int | None]
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: expected {self.num_envs} seeds (one per sub-environment), got {len(seeds)}")
        mask = np.ones(self.num_envs, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask']: expected a bool array of shape ({self.num_envs},)")
        never_reset = np.flatnonzero(~mask & ~self._started)
        if never_reset.size:
            raise ResetNeeded(
                f"options['reset_mask']: sub-environments {never_reset.tolist()} have never been reset; "
                "the first reset must include every sub-environment"
            )
        self._reset_slots(mask, seeds)
        return self.engine.observations(), batched_info(self.engine.info_fields(), mask)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``decision_interval`` batched updates of every sub-environment's autoencoder, each on batches its
        action composes."""
        if not self._started.all():
            raise ResetNeeded("step() called before reset(); call reset() first")
        if len(actions) != self.num_envs:
            raise ValueError(f"actions: expected one action per sub-environment ({self.num_envs}), got {len(actions)}")
        # Every action is checked before any sub-environment draws, so that a bad one changes no state.
        try:
            rewards, terminations, terms = self.engine.step(actions)
        except IndexedActionError as error:
            raise ValueError(f"actions[{error.index}]: {error}") from None
        truncations = np.zeros(self.num_envs, dtype=bool)  # the env never truncates (a TimeLimit may)
        every = np.ones(self.num_envs, dtype=bool)
        fields = self.engine.info_fields(terms)
        if not terminations.any():
            return self.engine.observations(), rewards, terminations, truncations, batched_info(fields, every)
        # As Gymnasium's SAME_STEP vector envs: a finished sub-environment reports its last step in
        # final_obs / final_info, and the observation and info of its next episode's start.
        final_obs = np.full(self.num_envs, None, dtype=object)
        last = self.engine.observations()
        for i in np.flatnonzero(terminations):
            final_obs[i] = last[i]
        final_info = batched_info(fields, terminations)
        paths = {slot: self.engine.save_profiles(slot) for slot in np.flatnonzero(terminations).tolist()}
        written = [slot for slot, path in paths.items() if path is not None]
        if written:
            final_info["profile_path"] = np.full(self.num_envs, None, dtype=object)
            final_info["_profile_path"] = np.zeros(self.num_envs, dtype=bool)
            for slot in written:
                final_info["profile_path"][slot], final_info["_profile_path"][slot] = paths[slot], True
        self._reset_slots(terminations, [None] * self.num_envs)
        infos = batched_info(_rows_where(terminations, self.engine.info_fields(), fields), every)
        infos["final_obs"], infos["_final_obs"] = final_obs, terminations.copy()
        infos["final_info"], infos["_final_info"] = final_info, terminations.copy()
        return self.engine.observations(), rewards, terminations, truncations, infos

    def render(self) -> tuple[Any, ...] | None:
        """One ``rgb_array`` frame per sub-environment."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        return tuple(env.render() for env in self.envs)

    def _reset_slots(self, mask: np.ndarray, seeds: Sequence[int | None]) -> None:
        slots = [int(i) for i in np.flatnonzero(mask)]
        for slot in slots:
            self.envs[slot].seed(seeds[slot])
        self.engine.reset(slots, [self.envs[slot].np_random for slot in slots])
        self._started[slots] = True


class SubEnvironment(EngineSlot):
    """Sub-environment ``slot`` of a vector env's engine: the single env's accessors for that slot, and
    its own random stream (``np_random``, seeded as ``gymnasium.Env.reset`` seeds it)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, engine: EpisodeEngine, slot: int, render_mode: str | None = None) -> None:
        self.engine, self.slot, self.render_mode = engine, slot, render_mode
        self._np_random: np.random.Generator | None = None
        self.action_space = engine.action_space
        self.observation_space = engine.observation_space

    def seed(self, seed: int | None) -> None:
        """A new stream from ``seed``; with None, the stream goes on (one is drawn from entropy at first)."""
        if seed is not None:
            self._np_random, _ = seeding.np_random(seed)

    @property
    def np_random(self) -> np.random.Generator:
        if self._np_random is None:
            self._np_random, _ = seeding.np_random()
        return self._np_random

    @property
    def unwrapped(self) -> SubEnvironment:
        return self

    def get_wrapper_attr(self, name: str) -> Any:
        return getattr(self, name)


def _rows_where(mask: np.ndarray, chosen: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Per key (nested dicts too), the rows of ``chosen`` where ``mask`` holds and of ``other`` elsewhere."""
    merged: dict[str, Any] = {}
    for key, value in other.items():
        if isinstance(value, dict):
            merged[key] = _rows_where(mask, chosen[key], value)
        else:
            merged[key] = np.where(mask.reshape(-1, *([1] * (value.ndim - 1))), chosen[key], value)
    return merged


def batched_info(fields: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """A Gymnasium vector info dict from the engine's arrays over N: each key with its ``_key`` mask
    (the sub-environments in ``mask``), nested dicts as nested infos; values outside the mask are zero."""
    infos: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            infos[key] = batched_info(value, mask)
        else:
            kept = np.array(value, copy=True)
            kept[~mask] = 0
            infos[key] = kept
        infos[f"_{key}"] = mask.copy()
    return infos


def unbatch_info(infos: dict[str, Any], index: int) -> dict[str, Any]:
    """The info of one sub-environment from a Gymnasium vector info dict (values with their ``_key`` masks)."""
    single: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        present = infos.get(f"_{key}")
        if present is not None and not present[index]:
            continue
        single[key] = unbatch_info(value, index) if isinstance(value, dict) else value[index]
    return single


class SB3VecEnv(VecEnv):
    """A Gymnasium ``SAME_STEP`` vector env (such as :class:`NeuralBatchSamplingVectorEnv`) as an SB3 ``VecEnv``.

    Terminal observations go to ``infos[i]["terminal_observation"]`` and truncations to
    ``infos[i]["TimeLimit.truncated"]``, as SB3's own vec envs report them.
    """

    def __init__(self, venv: VectorEnv) -> None:
        if venv.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError("venv: SB3VecEnv needs a vector env whose autoreset_mode is SAME_STEP")
        self.venv = venv
        self.render_mode = getattr(venv, "render_mode", None)
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        seeds = None if all(seed is None for seed in self._seeds) else list(self._seeds)
        observations, infos = self.venv.reset(seed=seeds)  # type: ignore[arg-type]  # one seed per sub-env, as Gymnasium's vector envs take
        self.reset_infos = [unbatch_info(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return observations

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, terminations, truncations, infos = self.venv.step(self._actions)
        dones = terminations | truncations
        per_env = []
        for i in range(self.num_envs):
            if dones[i]:
                info = unbatch_info(infos["final_info"], i)
                info["terminal_observation"] = infos["final_obs"][i]
                self.reset_infos[i] = unbatch_info(infos, i)  # the next episode's, as SB3's vec envs keep it
            else:
                info = unbatch_info(infos, i)
            info["TimeLimit.truncated"] = bool(truncations[i] and not terminations[i])
            per_env.append(info)
        return observations, rewards.astype(np.float32), dones, per_env

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = cast("tuple[np.ndarray | None, ...] | None", self.venv.render())
        return list(frames) if frames is not None else [None] * self.num_envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [_attribute(self._sub_env(i), attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self._sub_env(i), attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return [
            _attribute(self._sub_env(i), method_name)(*method_args, **method_kwargs) for i in self._get_indices(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [is_wrapped(self._sub_env(i), wrapper_class) for i in self._get_indices(indices)]

    def _sub_env(self, index: int) -> Any:
        envs = getattr(self.venv, "envs", None)
        return envs[index] if envs is not None else self.venv


def _attribute(env: Any, name: str) -> Any:
    """An attribute of a sub-environment, looked up through its wrappers as SB3's vec envs do."""
    return env.get_wrapper_attr(name) if isinstance(env, gym.Wrapper) else getattr(env, name)
