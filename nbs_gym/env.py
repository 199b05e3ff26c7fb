"""``NeuralBatchSamplingEnv``: autoencoder training as a Gymnasium environment."""

from __future__ import annotations

import os
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from nbs_gym.config import ConfigError, EnvConfig
from nbs_gym.data import AnomalyDataset, SemiSupervisedSplit, load_dataset, make_split
from nbs_gym.engine import EngineSlot, EpisodeEngine, IndexedActionError, PatchDraw

__all__ = ["NeuralBatchSamplingEnv", "PatchDraw", "build_engine"]


def build_engine(
    n_envs: int,
    config: EnvConfig,
    dataset_object: AnomalyDataset | None = None,
    profile_dirs: list[str | os.PathLike[str] | None] | None = None,
) -> EpisodeEngine:
    """The engine of ``n_envs`` sub-environments of ``config``: its dataset loaded (unless given) and split."""
    data = config.data
    dataset = (
        dataset_object
        if dataset_object is not None
        else load_dataset(data.dataset, image_size=data.image_size, seed=data.dataset_seed, channels=data.channels)
    )
    if dataset.image_size != data.image_size:
        raise ConfigError(f"image_size: {data.image_size}, but the dataset's images are {dataset.image_size}")
    split: SemiSupervisedSplit = make_split(
        dataset,
        n_labeled_anomalous_per_type=data.n_labeled_anomalous_per_type,
        n_labeled_normal=data.n_labeled_normal,
        seed=data.split_seed,
        transductive=data.transductive,
    )
    # The engine keeps the images and L's masks only: E's masks never reach the agent or the reward.
    return EpisodeEngine(n_envs, config, dataset, split, profile_dirs)


class NeuralBatchSamplingEnv(EngineSlot, gym.Env[np.ndarray, Any]):
    """Train an autoencoder on image patches; the agent chooses what each training batch holds.

    ## Description

    An episode is one training run of a small convolutional autoencoder from a fresh initialisation,
    ``episode_length`` Adam updates long, on patches of the autoencoder's pool of images (normal
    training images, the labeled set L and, in the transductive default, the evaluation set E without
    labels). Each step, the agent's action sets the batch composition: how the ``batch_size`` patches of
    the next update are drawn from ``S`` groups of the patch pool. At ``profile_length`` evenly spaced
    snapshots the per-pixel loss maps of every probe image (L and E) are recorded; the sequence of a
    pixel's losses is its loss profile. The reward is how much better the profiles of L separate
    anomalous from normal pixels, the signal a downstream anomaly classifier learns from.

    Groups are label-free. In the ``strata`` mode (default) they are loss strata: patches sorted by
    their current reconstruction loss (refreshed from every batch and every snapshot) and cut into
    ``n_strata`` equal quantile bins, lowest loss first. In the ``spatial`` mode they are the cells of a
    ``spatial_grid`` x ``spatial_grid`` grid of patch locations (row-major).

    ## Action Space

    * ``strata`` / ``spatial``: ``Box(-1, 1, (S,), float32)``. Group ``g`` is drawn with probability
      proportional to ``n_g * exp(a_g / temperature)`` (``n_g`` its number of patches), then a patch
      uniformly within it; the zero action is plain uniform sampling over all patches.
    * ``discrete``: ``Discrete(S + 1)``; ``a < S`` draws the whole batch from stratum ``a``, ``a = S``
      draws uniformly from all patches.
    * ``quantile``: ``Box(-1, 1, (1,), float32)``. The action admits the share ``q = (a + 1) / 2`` of the
      pool, lowest current loss first (at least ``batch_size`` patches), and every patch of the batch is
      drawn uniformly from the admitted ones: ``a = 1`` is uniform sampling, the zero action the lowest
      half. A self-paced schedule (:class:`agents.published.SelfPacedSampler`) is a path through this
      space. The observation's groups are the ``n_strata`` strata, and ``info["batch_composition"]``
      the share of each stratum among the admitted patches.

    ## Observation Space

    ``Box(-20, 20, (3S + 3,), float32)``, label-free:

    | index          | observation                                                       | min  | max |
    |----------------|-------------------------------------------------------------------|------|-----|
    | 0 .. S-1       | log10 mean current loss of the patches of group g                 | -20  | 20  |
    | S .. 2S-1      | change of that level since the previous snapshot                  | -20  | 20  |
    | 2S .. 3S-1     | share of group g among the patches of the last ``history`` batches | 0    | 1   |
    | 3S             | progress: updates done / ``episode_length``                        | 0    | 1   |
    | 3S + 1         | log10 training loss of the last batch                             | -20  | 20  |
    | 3S + 2         | log10 mean current loss over the whole pool                       | -20  | 20  |

    ## Rewards

    The potential is the separation ``S_t`` (measure ``reward``, see :mod:`nbs_gym.separation`) of L's
    profiles recorded so far; ``S_0`` is that of the freshly initialised autoencoder's loss maps. It
    changes only at snapshots. With ``context_window`` w, each pixel's features are its profile and the
    profile of the mean loss over the w x w box around it (the classifier also reads a neighbourhood).
    ``info["rewards"]`` holds both terms every step:

    * ``separation_gain``: ``S_t - S_{t-1}`` — the reward when ``reward_mode="dense"`` (default); the
      return of an episode is then exactly ``S_T - S_0``.
    * ``final_separation``: ``S_T`` at the last step, else 0 — the reward when ``reward_mode="terminal"``.

    With ``reward_baseline="uniform_twin"`` a twin autoencoder starts from the same weights and trains in
    lockstep on uniform batches of its own seeded stream (it never sees the agent's batches); its
    separation ``S_t^twin`` is measured at the same snapshots, and the potential becomes
    ``S_t - S_t^twin`` (0 at the start). Three more terms:

    * ``twin_separation_gain``: ``S_t^twin - S_{t-1}^twin``.
    * ``paired_gain``: ``separation_gain - twin_separation_gain`` — the dense reward with the twin; the
      return is ``S_T - S_T^twin``, the separation gained over uniform sampling from the same start.
    * ``final_paired_separation``: ``S_T - S_T^twin`` at the last step, else 0 — the terminal reward
      with the twin.

    With ``decision_interval`` k, each term is summed over the step's k updates (a potential difference
    over the step), so the return is the same.

    ## Starting State

    Autoencoder weights drawn from a torch generator seeded from ``np_random``, a fresh Adam state, the
    strata of the initial reconstruction losses, an empty sampling history.

    ## Episode End

    * Termination: after ``episode_length`` updates, that is ``episode_length / decision_interval`` env
      steps (the horizon is part of the task; progress is observed).
    * Truncation: never by the env itself; a ``TimeLimit`` wrapper may add it.

    ## Arguments

    Keyword arguments of ``gymnasium.make`` (flat; see :class:`nbs_gym.config.EnvConfig` for all). The
    defaults below are the config's (the v0 task); a registered id sets its task version's on top
    (:data:`nbs_gym.tasks.TASK_SETTINGS`), and keywords given to ``make`` override both:

    | parameter        | type       | default       | meaning                                              |
    |------------------|------------|---------------|------------------------------------------------------|
    | dataset          | str        | "synthetic"   | ``synthetic[:category][?options]``, ``photo:NAME``   |
    |                  |            |               | or ``mvtec:PATH``                                    |
    | image_size       | int        | 64            | side of the images after resizing                    |
    | episode_length   | int        | 200           | autoencoder updates per episode                      |
    | batch_size       | int        | 32            | patches per update                                   |
    | patch_size       | int        | 16            | side of a patch                                      |
    | profile_length   | int        | 10            | snapshots K per episode                              |
    | action_mode      | str        | "strata"      | "strata", "spatial", "discrete" or "quantile"        |
    | n_strata         | int        | 5             | loss strata S                                        |
    | reward           | str        | "auroc"       | "auroc", "fisher" or "prediction_loss"               |
    | reward_mode      | str        | "dense"       | "dense" or "terminal"                                |
    | context_window   | int        | 0             | odd box side whose mean losses join the reward's     |
    |                  |            |               | features (0: each pixel's own profile only)          |
    | decision_interval| int        | 1             | updates per env step, all with one composition       |
    | reward_baseline  | str        | "none"        | "none" or "uniform_twin" (gain over a uniform twin)  |
    | device           | str        | "auto"        | "cpu", "cuda[:N]" or "auto"                          |
    | profile_dir      | str | None | None          | folder to write each finished episode's profiles    |
    | config           | EnvConfig  | None          | a whole config; flat keywords (the id's              |
    |                  |            |               | ``action_mode`` among them) override its fields      |
    | dataset_object   | AnomalyDataset | None      | an already loaded dataset (skips loading ``dataset``)|

    ## Info

    Every ``reset`` and ``step`` returns an ``info`` dict with:

    | key                 | meaning                                                                 |
    |---------------------|-------------------------------------------------------------------------|
    | step                | updates done this episode                                               |
    | separation          | ``S_t``, the separation of L's profiles so far                          |
    | initial_separation  | ``S_0``                                                                 |
    | rewards             | every reward term of this step (see Rewards)                            |
    | ae_loss             | mean training loss of the last batch                                    |
    | batch_composition   | probability of each group for the step's batches (float32)              |
    | snapshot            | whether a snapshot of the loss maps was taken during this step          |
    | n_snapshots         | snapshots taken so far                                                  |
    | twin_separation     | ``S_t^twin`` (``reward_baseline="uniform_twin"`` only)                  |
    | profile_path        | where the finished episode's profiles were written (last step, with     |
    |                     | ``profile_dir`` only)                                                   |

    ## Version History

    * v0: Initial version: synthetic fabric, 200 updates per episode, one update per env step, the
      plain reward. Later options (``decision_interval``, ``reward_baseline``, the dataset options)
      default to the v0 behaviour, so v0 trajectories are unchanged.
    * v1: The task chosen from the headroom map (``docs/RESULTS.md``), where batch composition measurably
      changes the classifier's result: a fabric training set a fifth of whose images hold an unlabeled
      stain (``synthetic:fabric?contamination=0.2&contaminating_defect=stain``), 1,000 updates per
      episode, 5 updates per env step (200 env steps). The reward stays the plain one: the uniform twin
      lowered the reward's signal-to-noise ratio there. Settings: :data:`nbs_gym.tasks.TASK_SETTINGS`.
    * The ``quantile`` action mode joined both versions as ids of their own (``...Quantile-v0``,
      ``...Quantile-v1``); the other ids' trajectories did not change, so their versions stayed.
    * The env became slot 0 of an :class:`~nbs_gym.engine.EpisodeEngine`, the vector env's engine; every
      trajectory stayed the same to the bit, so no version moved.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        config: EnvConfig | None = None,
        dataset_object: AnomalyDataset | None = None,
        profile_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode: got {render_mode!r}, expected None or 'rgb_array'")
        self.render_mode = render_mode
        self.engine = build_engine(
            1, (config if config is not None else EnvConfig()).replace(**kwargs), dataset_object, [profile_dir]
        )
        self.slot = 0
        self.action_space = self.engine.action_space
        self.observation_space = self.engine.observation_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.engine.reset([0], [self.np_random])
        return self.engine.observations()[0], self._info(self.engine.info_fields())

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        engine = self.engine
        if engine.rngs[0] is None:
            raise RuntimeError("step() called before reset(); call reset() first")
        if engine.step_count[0] >= self.config.episode_length:
            raise RuntimeError("step() called after the episode terminated; call reset() first")
        try:
            rewards, terminated, terms = engine.step([action])
        except IndexedActionError as error:
            raise ValueError(str(error)) from None
        info = self._info(engine.info_fields(terms))
        if terminated[0]:
            path = engine.save_profiles(0)
            if path is not None:
                info["profile_path"] = path
        return engine.observations()[0], float(rewards[0]), bool(terminated[0]), False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: probe image | its latest loss map | where the batches came from (pool average)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        return self.engine.render(0)

    @staticmethod
    def _info(fields: dict[str, Any]) -> dict[str, Any]:
        """The single env's info from the engine's arrays over one sub-environment (Python scalars)."""
        info: dict[str, Any] = {}
        for key, value in fields.items():
            if isinstance(value, dict):
                info[key] = {name: float(term[0]) for name, term in value.items()}
            elif value.ndim > 1:
                info[key] = value[0]
            else:
                info[key] = value[0].item()
        return info
