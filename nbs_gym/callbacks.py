"""Stable-Baselines3 callbacks of ``nbs_gym.train`` (episode statistics, atomic checkpoints), and the env
wrappers that checkpoint a plug-in sampler that steps a Gymnasium env itself."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

__all__ = [
    "AtomicCheckpointCallback",
    "CheckpointSchedule",
    "CheckpointingEnv",
    "CheckpointingVectorEnv",
    "EpisodeStatsCallback",
    "StepProgressBar",
    "checkpoint_path",
    "checkpoints_newest_first",
    "latest_checkpoint",
    "replay_buffer_path",
    "save_atomic",
    "save_checkpoint",
    "save_through_temporary",
    "vec_normalize_path",
]

_CHECKPOINT = re.compile(r"^agent_(\d+)_steps(\.[^.]*)?$")
_REPLAY_BUFFER_SUFFIX = "_replay_buffer.pkl"
_VEC_NORMALIZE_SUFFIX = "_vecnormalize.pkl"


class EpisodeStatsCallback(BaseCallback):
    """Log each finished episode of the nbs_gym env to the SB3 logger (TensorBoard), at episode end.

    Scalars, averaged over the episodes that end between two logger dumps:

    * ``nbs/separation``: separation of L's profiles at the end of the episode (what the reward's
      potential reached).
    * ``nbs/ae_loss``: mean autoencoder training loss over the episode's batches.
    * ``nbs/reward/<term>``: sum of each reward term of ``info["rewards"]`` over the episode (its
      return, so ``separation_gain`` reads as final minus initial separation).
    * ``nbs/composition/group_<g>``: mean probability of group ``g`` in the batch composition.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._episodes: list[_EpisodeSums] = []

    def _on_training_start(self) -> None:
        self._episodes = [_EpisodeSums() for _ in range(self.training_env.num_envs)]

    def _on_step(self) -> bool:
        if "infos" not in self.locals or "dones" not in self.locals:
            return True  # an algorithm that steps the env itself without reporting (ARS)
        for sums, info, done in zip(self._episodes, self.locals["infos"], self.locals["dones"], strict=True):
            sums.add(info)
            if done:
                for key, value in sums.episode_scalars().items():
                    self.logger.record_mean(key, value)
                sums.clear()
        return True


class AtomicCheckpointCallback(BaseCallback):
    """Save the model every ``save_freq`` environment steps and every ``save_minutes``, atomically.

    Files are ``save_dir/agent_<num_timesteps>_steps<suffix>``; a crash mid-save leaves the previous
    checkpoints intact and no partial file. SB3's ``CheckpointCallback`` writes in place instead. The
    time interval covers runs too short (or too slow) to reach ``save_freq`` before they are killed.

    Args:
        save_freq: Environment steps between checkpoints, counted over all envs; 0 for none by steps.
        save_dir: Folder of the checkpoints, created when needed.
        suffix: File suffix (``.zip`` for SB3 models).
        save_minutes: Wall-clock minutes between checkpoints; 0 for none by time.
        verbose: 1 prints the path of each checkpoint.
    """

    def __init__(
        self,
        save_freq: int,
        save_dir: str | os.PathLike[str],
        suffix: str = ".zip",
        save_minutes: float = 0.0,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        self.schedule = CheckpointSchedule(save_freq, save_dir, suffix, save_minutes)

    def _on_training_start(self) -> None:
        self.schedule.start(self.num_timesteps)

    def _on_step(self) -> bool:
        path = self.schedule.step(self.model, self.num_timesteps)
        if path is not None and self.verbose >= 1:
            print(f"checkpoint: {path}")
        return True


class CheckpointSchedule:
    """When to checkpoint: every ``save_freq`` environment steps and every ``save_minutes``; and where.

    Shared by :class:`AtomicCheckpointCallback` (SB3 algorithms) and :class:`CheckpointingEnv` /
    :class:`CheckpointingVectorEnv` (plug-ins that step a Gymnasium env themselves).

    Args:
        save_freq: Environment steps between checkpoints, counted over all envs; 0 for none by steps.
        save_dir: Folder of the checkpoints, created when needed.
        suffix: File suffix of the agent's saved file.
        save_minutes: Wall-clock minutes between checkpoints; 0 for none by time.
    """

    def __init__(self, save_freq: int, save_dir: str | os.PathLike[str], suffix: str, save_minutes: float = 0.0):
        if save_freq < 0:
            raise ValueError(f"save_freq: must be >= 0, got {save_freq}")
        if not save_minutes >= 0:
            raise ValueError(f"save_minutes: must be >= 0, got {save_minutes}")
        self.save_freq = save_freq
        self.save_minutes = save_minutes
        self.save_dir = Path(save_dir)
        self.suffix = suffix
        self._next_save: float = save_freq or math.inf
        self._next_time = math.inf

    def start(self, num_timesteps: int) -> None:
        """Schedule from ``num_timesteps``: a resumed agent's next checkpoint is the next multiple of save_freq."""
        self._next_save = (num_timesteps // self.save_freq + 1) * self.save_freq if self.save_freq else math.inf
        self._next_time = time.monotonic() + 60.0 * self.save_minutes if self.save_minutes else math.inf

    def step(self, agent: Any, num_timesteps: int) -> Path | None:
        """Save ``agent`` (atomically) if a checkpoint is due at ``num_timesteps``; returns its path or ``None``."""
        if num_timesteps < self._next_save and time.monotonic() < self._next_time:
            return None
        path = save_checkpoint(agent, checkpoint_path(self.save_dir, num_timesteps, self.suffix))
        self.start(num_timesteps)
        return path


class _StepCounter:
    """The step count and the sampler of a checkpointing wrapper, shared by the single and vector kinds."""

    schedule: CheckpointSchedule
    num_timesteps: int
    _agent: Any

    def _count_for(self, schedule: CheckpointSchedule) -> None:
        self.schedule = schedule
        self.num_timesteps = 0
        self._agent = None

    def attach(self, agent: Any) -> None:
        """Checkpoint ``agent`` from now on, counting from its ``num_timesteps`` (0 when it has none)."""
        self._agent = agent
        self.num_timesteps = int(getattr(agent, "num_timesteps", 0))
        self.schedule.start(self.num_timesteps)


class CheckpointingEnv(_StepCounter, gym.Wrapper):
    """A Gymnasium env that checkpoints the sampler stepping it, for plug-ins outside SB3.

    A plug-in's ``learn`` steps its env itself and receives no SB3 callbacks; this wrapper takes the
    checkpoints instead. It counts the env steps taken through it from the sampler's ``num_timesteps``
    at :meth:`attach`, and once a checkpoint is due it saves at the next ``reset``: at an episode's
    boundary, where an episodic learner has taken in the episode just finished. The file is numbered by
    the sampler's ``num_timesteps`` (the wrapper's count when it has none). Nothing is saved before
    :meth:`attach`.
    """

    def __init__(self, env: gym.Env, schedule: CheckpointSchedule) -> None:
        super().__init__(env)
        self._count_for(schedule)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self._agent is not None and self.num_timesteps > 0:
            self.schedule.step(self._agent, int(getattr(self._agent, "num_timesteps", self.num_timesteps)))
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        self.num_timesteps += 1
        return result


class CheckpointingVectorEnv(_StepCounter, VectorWrapper):
    """:class:`CheckpointingEnv` for a Gymnasium vector env.

    A step counts once per sub-environment. Sub-environments reset themselves (autoreset), so the
    checkpoint is taken right after the step at which it is due, numbered by the wrapper's count.
    """

    def __init__(self, env: VectorEnv, schedule: CheckpointSchedule) -> None:
        super().__init__(env)
        self._count_for(schedule)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        result = self.env.step(actions)
        self.num_timesteps += self.num_envs
        if self._agent is not None:
            self.schedule.step(self._agent, self.num_timesteps)
        return result


class PeriodicEvaluation(BaseCallback):
    """Every ``every`` environment steps, evaluate the model being trained and log what ``evaluate`` returns.

    ``evaluate(model)`` returns scalars by TensorBoard tag (``nbs_gym.train`` runs one evaluation episode
    and the anomaly classifier: the classifier's learning curve). They are recorded, not dumped: SB3
    writes them with its next dump, at that dump's step, so that no tag gets two values at one step.
    Evaluation runs inside :func:`torch.random.fork_rng`, so the agent's own random stream, and with it
    its training, is the same with and without it.

    Args:
        every: Environment steps (summed over the envs) between evaluations, >= 1.
        evaluate: The evaluation, given the model.
    """

    def __init__(self, every: int, evaluate: Callable[[Any], dict[str, float]]) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"PeriodicEvaluation: every must be >= 1, got {every}")
        self.every, self.evaluate = every, evaluate
        self._next = every

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            with torch.random.fork_rng():
                scalars = self.evaluate(self.model)
            for key, value in scalars.items():
                self.logger.record(key, value)
            self._next = (self.num_timesteps // self.every + 1) * self.every
        return True


class StepProgressBar(BaseCallback):
    """A progress bar of the model's environment steps from ``start`` to ``end``, right after a resume.

    SB3's own bar counts the steps of one ``learn`` call against the steps asked for, so a resumed or
    rounded-up run shows more steps done than its total.
    """

    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start, end
        self.bar: Any = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.end, initial=self.start, unit="step", dynamic_ncols=True)

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.update(self.num_timesteps - self.bar.n)
            self.bar.close()


def save_atomic(agent: Any, path: str | os.PathLike[str]) -> Path:
    """``agent.save`` to a temporary file beside ``path``, then move it into place; returns ``path``.

    The temporary name keeps ``path``'s suffix, so that savers which append a missing suffix (SB3
    appends ``.zip``) write exactly the temporary file.
    """
    return save_through_temporary(agent.save, Path(path))


def save_through_temporary(save: Callable[[Path], object], path: Path) -> Path:
    """``save(temporary)`` beside ``path``, keeping its suffix, then the temporary file moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        save(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def save_checkpoint(agent: Any, path: str | os.PathLike[str]) -> Path:
    """Save ``agent`` atomically and, for off-policy SB3 agents, its replay buffer beside it; an agent that
    trains on a ``VecNormalize`` env also gets its normalisation statistics beside it.

    A resumed off-policy agent needs its transitions: with an empty buffer it would train at once on
    the first few new ones. Only the newest buffer in a folder is kept (:func:`replay_buffer_path`
    names it); each can be as large as the buffer's capacity. The statistics (a few hundred bytes,
    :func:`vec_normalize_path`) are written before the agent, so that an agent file whose statistics
    are missing was not written by this function.
    """
    get_vec_normalize = getattr(agent, "get_vec_normalize_env", None)
    vec_normalize = get_vec_normalize() if callable(get_vec_normalize) else None
    if vec_normalize is not None:
        save_through_temporary(vec_normalize.save, vec_normalize_path(path))
    path = save_atomic(agent, path)
    if getattr(agent, "replay_buffer", None) is not None and hasattr(agent, "save_replay_buffer"):
        buffer_path = save_through_temporary(agent.save_replay_buffer, replay_buffer_path(path))
        for older in path.parent.glob(f"*{_REPLAY_BUFFER_SUFFIX}"):
            if older != buffer_path:
                older.unlink(missing_ok=True)
    return path


def replay_buffer_path(agent_path: str | os.PathLike[str]) -> Path:
    """Where :func:`save_checkpoint` puts the replay buffer of the agent saved at ``agent_path``."""
    agent_path = Path(agent_path)
    return agent_path.with_name(agent_path.stem + _REPLAY_BUFFER_SUFFIX)


def vec_normalize_path(agent_path: str | os.PathLike[str]) -> Path:
    """Where :func:`save_checkpoint` puts the ``VecNormalize`` statistics of the agent saved at ``agent_path``."""
    agent_path = Path(agent_path)
    return agent_path.with_name(agent_path.stem + _VEC_NORMALIZE_SUFFIX)


def checkpoint_path(save_dir: str | os.PathLike[str], num_timesteps: int, suffix: str) -> Path:
    """Path of the checkpoint taken after ``num_timesteps`` environment steps."""
    return Path(save_dir) / f"agent_{num_timesteps}_steps{suffix}"


def latest_checkpoint(save_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the most steps in ``save_dir``, or ``None`` if there is none."""
    found = checkpoints_newest_first(save_dir)
    return found[0] if found else None


def checkpoints_newest_first(save_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints in ``save_dir``, most steps first (an empty list without the folder)."""
    folder = Path(save_dir)
    if not folder.is_dir():
        return []
    found = [(int(match[1]), path) for path in folder.iterdir() if (match := _CHECKPOINT.match(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


class _EpisodeSums:
    """Running sums of one env's current episode."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.steps = 0
        self.ae_loss = 0.0
        self.rewards: dict[str, float] = {}
        self.composition: np.ndarray | None = None
        self.separation = float("nan")

    def add(self, info: dict[str, Any]) -> None:
        self.steps += 1
        self.ae_loss += float(info["ae_loss"])
        for term, value in info["rewards"].items():
            self.rewards[term] = self.rewards.get(term, 0.0) + float(value)
        composition = np.asarray(info["batch_composition"], dtype=np.float64)
        self.composition = composition if self.composition is None else self.composition + composition
        self.separation = float(info["separation"])

    def episode_scalars(self) -> dict[str, float]:
        scalars = {"nbs/separation": self.separation, "nbs/ae_loss": self.ae_loss / self.steps}
        scalars |= {f"nbs/reward/{term}": total for term, total in self.rewards.items()}
        if self.composition is not None:
            mean = self.composition / self.steps
            scalars |= {f"nbs/composition/group_{g}": float(share) for g, share in enumerate(mean)}
        return scalars
