"""Built-in batch samplers that follow a fixed rule: the baselines an RL sampler has to beat.

Each has Stable-Baselines3's surface (``learn`` is a no-op returning ``self``; ``predict``;
``save``/``load`` as JSON), so ``nbs_gym.train`` and user code treat them like any trained agent.
All accept one observation ``(obs_dim,)`` or a batch ``(n_envs, obs_dim)`` as SB3's ``VecEnv`` gives.

=================  ==========================================================================
name               rule
=================  ==========================================================================
``uniform``        zero action: plain SGD on uniformly drawn patches, the paper's "no sampler"
                   ablation (discrete mode: the uniform action ``S``; quantile mode: the action
                   ``1``, which admits the whole pool)
``random``         uniformly random actions from a seeded copy of the action space
``hard_mining``    favour the groups with the highest current loss: the action grows with the
                   group's loss rank (in the strata mode: with the stratum index)
``curriculum``     easy to hard: favour low-loss groups early, high-loss ones late, moving with
                   the observation's progress entry from 0 to 1
``oracle``         a privileged reference, not a method: it reads every image's mask and draws
                   a share ``defect_share`` (default 0) of each batch from patches that hold
                   anomalous pixels, the rest from patches that hold none, through the env's
                   :meth:`~nbs_gym.env.NeuralBatchSamplingEnv.set_patch_draw`; the normalised
                   score's 1 (:mod:`nbs_gym.scores`)
=================  ==========================================================================

The published per-patch rules (``loss_rank``, ``reducible_loss``, ``self_paced``) are in
:mod:`agents.published`; they share this module's surface and its :data:`BASELINES` registry.

``uniform``, ``random``, the ``oracle`` and the published rules act in every mode; ``hard_mining`` and
``curriculum`` weigh groups and so act in the strata, spatial and discrete modes only.

The rank-based rules read the per-group loss levels (observation entries ``0 .. S-1``) rather than
assuming the groups are sorted, so they also mean something in the spatial mode, where the groups
are image regions. In the strata mode the levels are sorted, and the rank is the stratum index.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from gymnasium import spaces

from nbs_gym.data import AnomalyDataset, load_dataset
from nbs_gym.env import PatchDraw
from nbs_gym.io import write_atomic
from nbs_gym.spaces import ObservationLayout, action_space

__all__ = [
    "BASELINES",
    "BaselineSampler",
    "CurriculumSampler",
    "HardMiningSampler",
    "OracleSampler",
    "RandomSampler",
    "UniformSampler",
    "defect_share_draw",
    "defective_patches",
    "env_dataset",
    "window_sums",
]


BASELINES: dict[str, type[BaselineSampler]] = {}
"""Built-in samplers by name, in the order they are defined: every :class:`BaselineSampler` subclass that
sets its own ``name`` (this module's rules, then the published rules of :mod:`agents.published`)."""


class HasSpaces(Protocol):
    """Anything with the env's spaces: a ``gymnasium.Env``, an SB3 ``VecEnv``, a wrapper."""

    action_space: spaces.Space[Any]
    observation_space: spaces.Space[Any]


@dataclass
class _Spaces:
    """The spaces of an env, rebuilt from a saved sampler when ``load`` gets no env."""

    action_space: spaces.Space[Any]
    observation_space: spaces.Space[Any]


class BaselineSampler:
    """Common part of the fixed-rule samplers: spaces, batching, no-op training, JSON files.

    Args:
        env: The env (or vectorised env) whose spaces the sampler acts in.
        seed: Seed of the sampler's own randomness (only ``random`` has any).

    Raises:
        ValueError: The spaces are not those of :class:`nbs_gym.env.NeuralBatchSamplingEnv`.
    """

    name: ClassVar[str] = ""
    file_suffix: ClassVar[str] = ".json"
    action_modes: ClassVar[tuple[str, ...]] = ("strata", "spatial", "discrete")
    default_action_mode: ClassVar[str] = "strata"
    quantile: bool = False
    """Whether the action is the quantile mode's admitted share (a ``(1,)`` Box over more than one group)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that sets its own ``name`` joins :data:`BASELINES` under it."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            if cls.name in BASELINES:
                raise TypeError(f"{cls.__name__}: a built-in sampler named {cls.name!r} exists: {BASELINES[cls.name]}")
            BASELINES[cls.name] = cls

    def __init__(self, env: HasSpaces, seed: int | None = None) -> None:
        self.action_space = env.action_space
        self.observation_space = env.observation_space
        self.seed = seed
        self.num_timesteps = 0
        self.discrete = isinstance(self.action_space, spaces.Discrete)
        try:
            self.layout = ObservationLayout.of(self.observation_space)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None
        self.obs_dim = self.layout.size
        self.n_groups = self.layout.n_groups
        if isinstance(self.action_space, spaces.Discrete):
            expected = f"Discrete({self.n_groups + 1})"
            fits = int(self.action_space.n) == self.n_groups + 1
        else:
            expected = f"a Box of shape ({self.n_groups},) or (1,)"
            fits = isinstance(self.action_space, spaces.Box) and self.action_space.shape in ((self.n_groups,), (1,))
        if not fits:
            raise ValueError(
                f"{self.name}: action space {self.action_space} does not fit the observation's {self.n_groups} "
                f"groups; expected {expected}"
            )
        # One group and a (1,) action: every action draws uniformly, whichever the mode.
        self.quantile = not self.discrete and self.n_groups > 1 and self.action_space.shape == (1,)
        if self.quantile and "quantile" not in self.action_modes:
            raise ValueError(f"{self.name}: cannot act in the quantile mode; it acts in {', '.join(self.action_modes)}")

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> BaselineSampler:
        """Nothing to learn: a fixed rule. Returns ``self``."""
        return self

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The action for one observation ``(obs_dim,)`` or a batch ``(n, obs_dim)``; ``state`` passes through.

        Returns float32 actions of shape ``(S,)`` / ``(n, S)`` in the strata and spatial modes, ``(1,)`` /
        ``(n, 1)`` in the quantile mode, int64 of shape ``()`` / ``(n,)`` in the discrete mode, as SB3's
        ``predict`` does.
        """
        rows = np.asarray(observation, dtype=np.float32)
        batched = rows.ndim == 2
        if not batched:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[1] != self.obs_dim:
            raise ValueError(
                f"{self.name}: expected an observation of shape ({self.obs_dim},) or (n, {self.obs_dim}), "
                f"got {np.shape(observation)}"
            )
        if self.discrete:
            actions = self._choose(rows).astype(np.int64)
        elif self.quantile:
            actions = np.clip(self._admit(rows), -1.0, 1.0).astype(np.float32)
        else:
            actions = np.clip(self._weigh(rows), -1.0, 1.0).astype(np.float32)
        return (actions if batched else actions[0]), state

    def params(self) -> dict[str, Any]:
        """The rule's keyword arguments, as :meth:`save` stores them."""
        return {}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the sampler's name, parameters, seed and spaces to ``path`` as JSON, atomically."""
        record = {
            "sampler": self.name,
            "params": self.params(),
            "seed": self.seed,
            "n_groups": self.n_groups,
            "discrete": self.discrete,
            "quantile": self.quantile,
        }
        text = json.dumps(record, indent=2).encode()
        write_atomic(Path(path), lambda handle: handle.write(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: HasSpaces | None = None) -> BaselineSampler:
        """Read a sampler written by :meth:`save`; without ``env`` the spaces are rebuilt from the file.

        Raises:
            ValueError: The file is not a saved sampler of this class (or, on the base class, of any
                built-in baseline).
        """
        try:
            record = json.loads(Path(path).read_text())
            sampler_class = BASELINES[record["sampler"]]
            n_groups, discrete = int(record["n_groups"]), bool(record["discrete"])
            quantile = bool(record.get("quantile", False))
            seed, params = record["seed"], dict(record["params"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a saved baseline sampler ({type(error).__name__}: {error})") from error
        if not issubclass(sampler_class, cls):
            raise ValueError(f"{path}: holds a {sampler_class.__name__}, not a {cls.__name__}")
        if env is None:
            mode = "discrete" if discrete else "quantile" if quantile else "strata"
            layout = ObservationLayout(n_groups)
            spaces_only = _Spaces(action_space(mode, n_groups), layout.observation_space())
            return sampler_class(spaces_only, seed=seed, **params)
        return sampler_class(env, seed=seed, **params)

    # Subclasses implement one rule per action kind, vectorised over observation rows.

    def _weigh(self, rows: np.ndarray) -> np.ndarray:
        """Box modes: an ``(n, S)`` action in [-1, 1] per row."""
        raise NotImplementedError

    def _choose(self, rows: np.ndarray) -> np.ndarray:
        """Discrete mode: an ``(n,)`` action in ``0 .. S`` per row."""
        raise NotImplementedError

    def _admit(self, rows: np.ndarray) -> np.ndarray:
        """Quantile mode: an ``(n, 1)`` action in [-1, 1] per row (the admitted share is ``(a + 1) / 2``)."""
        raise NotImplementedError

    def _levels(self, rows: np.ndarray) -> np.ndarray:
        return rows[:, self.layout.levels]

    def _progress(self, rows: np.ndarray) -> np.ndarray:
        return rows[:, self.layout.progress]

    def _loss_rank(self, rows: np.ndarray) -> np.ndarray:
        """``(n, S)`` loss rank of each group scaled to [-1, 1]: -1 lowest loss, +1 highest."""
        # Stable sort: tied levels keep the group order, so sorted strata rank by their index.
        ranks = np.argsort(np.argsort(self._levels(rows), axis=1, kind="stable"), axis=1, kind="stable")
        if self.n_groups == 1:  # one group (a 1x1 spatial grid) has no ranking: the neutral action
            return np.zeros(ranks.shape)
        return 2.0 * ranks / (self.n_groups - 1) - 1.0


class UniformSampler(BaselineSampler):
    """Plain SGD: every patch equally likely (zero action; discrete: the uniform action ``S``; quantile:
    the action 1, the whole pool)."""

    name = "uniform"
    action_modes = ("strata", "spatial", "discrete", "quantile")

    def _weigh(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros((len(rows), self.n_groups))

    def _choose(self, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), self.n_groups)

    def _admit(self, rows: np.ndarray) -> np.ndarray:
        return np.ones((len(rows), 1))


class RandomSampler(BaselineSampler):
    """Uniformly random actions from a copy of the action space seeded with ``seed``.

    The actions stay random under ``deterministic=True``: randomness is the rule, and the seed makes
    it reproducible.
    """

    name = "random"
    action_modes = ("strata", "spatial", "discrete", "quantile")

    def __init__(self, env: HasSpaces, seed: int | None = None) -> None:
        super().__init__(env, seed)
        # A private copy: seeding the env's own space would change what other users of it draw.
        self._space = copy.deepcopy(self.action_space)
        self._space.seed(seed)

    def _weigh(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self._space.sample() for _ in rows])

    def _choose(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self._space.sample() for _ in rows])

    _admit = _weigh


class _StrengthSampler(BaselineSampler):
    """A rule-based sampler with one setting: how strongly it departs from uniform sampling."""

    def __init__(self, env: HasSpaces, seed: int | None = None, strength: float = 1.0) -> None:
        super().__init__(env, seed)
        self.strength = _check_strength(strength, self.name)

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength}


class HardMiningSampler(_StrengthSampler):
    """Hard-example mining: weight grows with the group's current loss.

    Args:
        env: The env whose spaces the sampler acts in.
        seed: Unused (the rule is deterministic); kept for the common constructor.
        strength: Action of the highest-loss group, in ``[0, 1]``; the lowest gets ``-strength`` and the
            others lie evenly between. With the env's temperature ``tau`` the hardest group is drawn
            ``exp(2 * strength / tau)`` times as often per patch as the easiest. The discrete mode always
            draws the whole batch from the highest-loss group.
    """

    name = "hard_mining"

    def _weigh(self, rows: np.ndarray) -> np.ndarray:
        return self.strength * self._loss_rank(rows)

    def _choose(self, rows: np.ndarray) -> np.ndarray:
        return np.argmax(self._loss_rank(rows), axis=1)


class CurriculumSampler(_StrengthSampler):
    """Easy to hard: low-loss groups first, high-loss groups by the end of the episode.

    The action is ``strength * (2 * progress - 1) * rank``, with ``rank`` the group's loss rank in
    ``[-1, 1]``: at progress 0 it favours the lowest-loss groups as hard mining favours the highest,
    halfway it is uniform, at progress 1 it is hard mining. The discrete mode draws the batch from the
    group whose loss rank is ``round(progress * (S - 1))``.

    Args:
        env: The env whose spaces the sampler acts in.
        seed: Unused (the rule is deterministic); kept for the common constructor.
        strength: Largest action magnitude, in ``[0, 1]``.
    """

    name = "curriculum"

    def _weigh(self, rows: np.ndarray) -> np.ndarray:
        direction = 2.0 * np.clip(self._progress(rows), 0.0, 1.0) - 1.0
        return self.strength * direction[:, None] * self._loss_rank(rows)

    def _choose(self, rows: np.ndarray) -> np.ndarray:
        target = np.rint(np.clip(self._progress(rows), 0.0, 1.0) * (self.n_groups - 1))
        # The group holding that rank: rank -1..1 back to 0..S-1.
        group_rank = np.rint((self._loss_rank(rows) + 1.0) * (self.n_groups - 1) / 2.0)
        return np.argmax(group_rank == target[:, None], axis=1)


class OracleSampler(UniformSampler):
    """The mask-reading reference: what batch composition can buy when every defect is known.

    Its actions are uniform's; what it changes is the env's draw. ``nbs_gym.train`` (and any caller)
    hands it each env it is to act on through :meth:`prepare_env`, which reads the masks of every image
    of the env's dataset (loaded again from its spec: the env itself holds only L's masks) and replaces
    the env's batch draw. It never enters a labeled-only claim.

    Args:
        env: The env (or vectorised env) whose spaces the sampler acts in.
        seed: Unused (the draws come from the env's own ``np_random``).
        defect_share: Expected share of each batch drawn from patches holding anomalous pixels, in
            [0, 1]; 0 trains the autoencoder on defect-free patches only.
    """

    name = "oracle"

    def __init__(self, env: HasSpaces, seed: int | None = None, defect_share: float = 0.0) -> None:
        super().__init__(env, seed)
        if isinstance(defect_share, bool) or not isinstance(defect_share, (int, float)) or not 0 <= defect_share <= 1:
            raise ValueError(f"oracle: defect_share must be a number in [0, 1], got {defect_share!r}")
        self.defect_share = float(defect_share)

    def params(self) -> dict[str, Any]:
        return {"defect_share": self.defect_share}

    def prepare_env(self, env: Any, dataset: AnomalyDataset | None = None) -> None:
        """Make ``env`` (a :class:`~nbs_gym.env.NeuralBatchSamplingEnv`, possibly wrapped) draw by the masks.

        Args:
            env: The env.
            dataset: Its dataset with every mask, when already loaded; by default loaded from the env's
                dataset spec.

        Raises:
            ValueError: The dataset's patches are all defective or all defect-free where the share
                needs both.
        """
        base = env.unwrapped
        defective = defective_patches(base, dataset)
        defect, clean = np.flatnonzero(defective), np.flatnonzero(~defective)
        if (self.defect_share > 0 and not defect.size) or (self.defect_share < 1 and not clean.size):
            raise ValueError(f"oracle: the pool has {defect.size} defective and {clean.size} defect-free patches")
        share = self.defect_share
        base.set_patch_draw(defect_share_draw(base, defect, clean, lambda progress: share))


def defect_share_draw(
    env: Any, defect: np.ndarray, clean: np.ndarray, defect_share: Callable[[float], float]
) -> PatchDraw:
    """Batches of the unwrapped ``env`` with a binomial share ``defect_share(progress)`` of patches drawn from
    ``defect`` (patch ids holding anomalous pixels) and the rest from ``clean`` (the oracle's draw)."""

    def draw(rng: np.random.Generator, batch: int) -> np.ndarray:
        n_defect = int(rng.binomial(batch, defect_share(env.progress)))
        return np.concatenate([rng.choice(defect, n_defect), rng.choice(clean, batch - n_defect)])

    return draw


def defective_patches(env: Any, dataset: AnomalyDataset | None = None) -> np.ndarray:
    """Whether each pool patch of ``env`` (an unwrapped env), by patch id, holds an anomalous pixel.

    Reads every mask of the env's dataset (``dataset`` when given, else loaded again from its config):
    privileged, for the references that train by the masks, never for a labeled-only sampler.
    """
    dataset = env_dataset(env, dataset)
    image, top, left = env.patch_windows
    return window_sums(dataset.masks.astype(np.int64), image, top, left, env.config.patch_size) > 0


def env_dataset(env: Any, dataset: AnomalyDataset | None = None) -> AnomalyDataset:
    """``dataset`` when given, else the dataset of ``env`` (an unwrapped env) loaded again from its config."""
    if dataset is not None:
        return dataset
    data = env.config.data
    return load_dataset(data.dataset, image_size=data.image_size, seed=data.dataset_seed, channels=data.channels)


def window_sums(maps: np.ndarray, image: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``maps[image[i]]`` over the ``size`` x ``size`` window at ``(top[i], left[i])``, for every ``i``.

    Through a summed-area table of ``maps`` (N, H, W), so every window costs four lookups.
    """
    table = np.pad(maps.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))
    return (
        table[image, top + size, left + size]
        - table[image, top, left + size]
        - table[image, top + size, left]
        + table[image, top, left]
    )


def _check_strength(strength: float, name: str) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"{name}: strength must be a number in [0, 1], got {strength!r}")
    return float(strength)
