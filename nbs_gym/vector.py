"""A natively batched vector environment, and its adapter for Stable-Baselines3.

:class:`NeuralBatchSamplingVectorEnv` runs N copies of :class:`~nbs_gym.env.NeuralBatchSamplingEnv`
whose autoencoders train as one batched network (:class:`~nbs_gym.autoencoder.BatchedAutoencoderTrainer`):
per step, one batched update of all N models and, at snapshot steps, the loss maps of the snapshot
images under all N (one grouped pass on a GPU; on the CPU one model after another, which is faster
there). The sampling bookkeeping stays per sub-environment and is the single env's own code, so
sub-environment ``i`` reset with seed ``s`` follows exactly the trajectory of a single env reset with
``s`` (up to float rounding of the batched kernels).

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
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from nbs_gym.autoencoder import BatchedAutoencoderTrainer
from nbs_gym.config import EnvConfig
from nbs_gym.data import AnomalyDataset
from nbs_gym.env import NeuralBatchSamplingEnv, Snapshot


class NeuralBatchSamplingVectorEnv(VectorEnv):
    """N neural-batch-sampling environments whose autoencoders train in one batched computation.

    Every episode has the same length, so sub-environments that were reset together snapshot and
    terminate at the same steps. After a partial reset (``options["reset_mask"]``) each still snapshots
    at its own steps, and only the models due are mapped. Autoreset mode: ``SAME_STEP`` — the step that terminates a
    sub-environment returns the first observation of its next episode, with the terminal observation
    and info in ``info["final_obs"]`` / ``info["final_info"]``.

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
        template = NeuralBatchSamplingEnv(render_mode, config=config, dataset_object=dataset_object, **kwargs)
        self.envs = [
            template._spawn(Path(profile_dir) / f"env_{i:03d}" if profile_dir is not None else None)
            for i in range(num_envs)
        ]
        self.config = template.config
        self.split = template.split  # one split for every sub-environment
        self.render_mode = render_mode
        self.num_envs = num_envs
        self.engine = BatchedAutoencoderTrainer(num_envs, template._snapshot_images.shape[1], self.config.autoencoder)
        self.device = self.engine.device
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._snapshot_images = template._snapshot_images
        self._gather_patches = template._gather_patches
        self._snapshots_to_host = template._snapshots_to_host
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
        slots = [int(i) for i in np.flatnonzero(mask)]
        results = self._reset_slots(slots, [seeds[i] for i in slots])
        observations = np.stack([env._observation() for env in self.envs])
        infos: dict[str, Any] = {}
        for slot in slots:
            infos = self._add_info(infos, results[slot][1], slot)
        return observations, infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``decision_interval`` batched updates of every sub-environment's autoencoder, each on batches its
        action composes."""
        if not self._started.all():
            raise ResetNeeded("step() called before reset(); call reset() first")
        if len(actions) != self.num_envs:
            raise ValueError(f"actions: expected one action per sub-environment ({self.num_envs}), got {len(actions)}")
        # Every action is checked before any sub-environment draws, so that a bad one changes no state.
        compositions = []
        for i, (env, action) in enumerate(zip(self.envs, actions, strict=True)):
            try:
                compositions.append(env.batch_composition(action))
            except ValueError as error:
                raise ValueError(f"actions[{i}]: {error}") from None
        for env, action in zip(self.envs, actions, strict=True):
            env._begin_step(action)
        for _ in range(self.config.decision_interval):
            patch_ids = np.concatenate([env._begin_update(c) for env, c in zip(self.envs, compositions, strict=True)])
            patches = self._gather_patches(patch_ids)
            per_patch = self.engine.update(patches.view(self.num_envs, -1, *patches.shape[1:])).cpu().numpy()
            # Sub-environments snapshot at the same steps unless a partial reset put them out of step.
            due = [i for i, env in enumerate(self.envs) if env._snapshot_due]
            snapshots = dict(zip(due, self._snapshots(due), strict=True)) if due else {}
            for i, env in enumerate(self.envs):
                env._finish_update(per_patch[i], snapshots.get(i))

        observations, step_infos, rewards = [], [], np.zeros(self.num_envs)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            step = env._finish_step()
            observation, rewards[i], terminations[i], truncations[i], info = step
            observations.append(observation)
            step_infos.append(info)
        finished = [i for i in range(self.num_envs) if terminations[i] or truncations[i]]
        resets = self._reset_slots(finished, [None] * len(finished)) if finished else {}
        # As Gymnasium's SAME_STEP vector envs: a finished sub-environment reports its last step in
        # final_obs / final_info, and the observation and info of its next episode's start.
        infos: dict[str, Any] = {}
        for i, info in enumerate(step_infos):
            if i in resets:
                infos = self._add_info(infos, {"final_obs": observations[i], "final_info": info}, i)
                observations[i], info = resets[i]
            infos = self._add_info(infos, info, i)
        return np.stack(observations), rewards, terminations, truncations, infos

    def render(self) -> tuple[Any, ...] | None:
        """One ``rgb_array`` frame per sub-environment."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        return tuple(env.render() for env in self.envs)

    def _reset_slots(self, slots: list[int], seeds: list[int | None]) -> dict[int, tuple[np.ndarray, dict]]:
        generators = []
        for slot, seed in zip(slots, seeds, strict=True):
            gym.Env.reset(self.envs[slot], seed=seed)  # seeds the sub-environment's np_random only
            generators.append(self.envs[slot]._begin_episode())
        self.engine.reset(slots, generators)
        snapshots = self._snapshots(slots)
        self._started[slots] = True
        return {slot: self.envs[slot]._finish_reset(snapshot) for slot, snapshot in zip(slots, snapshots, strict=True)}

    def _snapshots(self, models: list[int]) -> list[Snapshot]:
        """The snapshots of the given sub-environments' models: one batched pass, one copy to the host."""
        return self._snapshots_to_host(self.engine.loss_maps(self._snapshot_images, models=models))


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
