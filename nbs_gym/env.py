"""``NeuralBatchSamplingEnv``: autoencoder training as a Gymnasium environment."""

from __future__ import annotations

import copy
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from nbs_gym.autoencoder import AutoencoderTrainer
from nbs_gym.config import ConfigError, EnvConfig
from nbs_gym.data import AnomalyDataset, SemiSupervisedSplit, dataset_fingerprint, load_dataset, make_split
from nbs_gym.profiles import LossProfiles
from nbs_gym.separation import SeparationTracker, separation, separation_pixels, snapshot_features
from nbs_gym.spaces import ObservationLayout, action_space

# The info["rewards"] term that is the reward, by (reward_baseline, reward_mode).
_REWARD_TERM = {
    ("none", "dense"): "separation_gain",
    ("none", "terminal"): "final_separation",
    ("uniform_twin", "dense"): "paired_gain",
    ("uniform_twin", "terminal"): "final_paired_separation",
}

# Observation values are log10-losses, their changes, shares and progress (nbs_gym.spaces); the floor
# only guards against a loss of exactly zero, real values stay within about [-10, 1].
_LOSS_FLOOR = 1e-12

PatchDraw = Callable[[np.random.Generator, int], np.ndarray]
"""A privileged batch draw (see ``NeuralBatchSamplingEnv.set_patch_draw``): (rng, batch size) -> patch ids."""

Snapshot = tuple[np.ndarray, np.ndarray]
"""What the bookkeeping reads of one snapshot, on the host: pool patch losses (P,) and probe loss maps (n, H, W)."""


class NeuralBatchSamplingEnv(gym.Env[np.ndarray, Any]):
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
        self.config = (config if config is not None else EnvConfig()).replace(**kwargs)
        self.render_mode = render_mode
        self.profile_dir = Path(profile_dir) if profile_dir is not None else None
        cfg, data = self.config, self.config.data

        dataset = (
            dataset_object
            if dataset_object is not None
            else load_dataset(data.dataset, image_size=data.image_size, seed=data.dataset_seed, channels=data.channels)
        )
        if dataset.image_size != data.image_size:
            raise ConfigError(f"image_size: {data.image_size}, but the dataset's images are {dataset.image_size}")
        self.split: SemiSupervisedSplit = make_split(
            dataset,
            n_labeled_anomalous_per_type=data.n_labeled_anomalous_per_type,
            n_labeled_normal=data.n_labeled_normal,
            seed=data.split_seed,
            transductive=data.transductive,
        )
        # The env keeps the images and L's masks only: E's masks never reach the agent or the reward.
        self.dataset_spec = dataset.spec
        self.image_size = dataset.image_size
        self._images = dataset.images
        self._labeled_masks = dataset.masks[np.asarray(self.split.labeled, dtype=np.int64)]
        self._fingerprint = dataset_fingerprint(dataset)
        self.trainer = AutoencoderTrainer(dataset.channels, cfg.autoencoder)
        self.device = self.trainer.device

        # Images whose loss maps a snapshot computes: the pool (for the strata) and the probes (profiles).
        pool, probe = np.asarray(self.split.pool), np.asarray(self.split.probe)
        snapshot_index = np.union1d(pool, probe)
        self._pool_rows = np.searchsorted(snapshot_index, pool)
        self._probe_rows = np.searchsorted(snapshot_index, probe)
        self._snapshot_images = torch.as_tensor(dataset.images[snapshot_index], device=self.device)
        self._twin: AutoencoderTrainer | None = None
        if cfg.reward_baseline == "uniform_twin":  # the twin maps L's images only: its separation is all it gives
            self._twin = AutoencoderTrainer(dataset.channels, cfg.autoencoder)
            self._labeled_images = self._snapshot_images[torch.as_tensor(self._probe_rows[: len(self.split.labeled)])]
        self._snapshot_in_step = False
        self._patch_draw: PatchDraw | None = None
        # The probe images of every episode's profiles, shared read-only.
        self._probe_images = dataset.images[probe]
        self._probe_images.flags.writeable = False
        self._build_patch_grid(len(pool))
        self._build_groups()
        self._build_separation_pixels()

        self.layout = ObservationLayout(cfg.n_groups)
        self.action_space: spaces.Space[Any] = action_space(cfg.action_mode, cfg.n_groups)
        self.observation_space = self.layout.observation_space()

        self._snapshot_at = {step: k for k, step in enumerate(cfg.snapshot_steps)}
        self._episode = -1
        self._step_count = 0
        self.last_profiles: LossProfiles | None = None

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.trainer.reset(self._begin_episode())
        return self._finish_reset(self._snapshots_to_host(self.trainer.loss_maps(self._snapshot_images)[None])[0])

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._step_count >= self.config.episode_length:
            raise RuntimeError("step() called after the episode terminated; call reset() first")
        composition = self.batch_composition(action)
        self._begin_step(action)
        for _ in range(self.config.decision_interval):
            patch_ids = self._begin_update(composition)
            per_patch = self.trainer.update(self._gather_patches(patch_ids))
            snapshot = None
            if self._snapshot_due:
                snapshot = self._snapshots_to_host(self.trainer.loss_maps(self._snapshot_images)[None])[0]
            self._finish_update(per_patch.cpu().numpy(), snapshot)
        return self._finish_step()

    # The phases below split reset() and step() around the autoencoder's work, so that the vector env
    # can run that work for all its sub-environments in one batched computation.

    def _begin_episode(self) -> torch.Generator:
        """Draw the episode's seed from ``np_random``; returns the generator the weights are drawn from.

        With the uniform twin, the twin gets the same initial weights and a patch stream of its own,
        seeded by a second draw from ``np_random``.
        """
        self._episode += 1
        self._episode_seed = int(self.np_random.integers(2**63 - 1))
        if self._twin is not None:
            self._twin.reset(torch.Generator().manual_seed(self._episode_seed))
            self._twin_rng = np.random.default_rng(int(self.np_random.integers(2**63 - 1)))
        return torch.Generator().manual_seed(self._episode_seed)

    def _finish_reset(self, snapshot: Snapshot) -> tuple[np.ndarray, dict[str, Any]]:
        """Episode state from the snapshot (see ``_snapshots_to_host``) of the freshly initialised autoencoder."""
        cfg = self.config
        self._step_count = 0
        self._patch_loss, probe_maps = snapshot
        self._restratify(from_scratch=True)
        n_labeled = len(self.split.labeled)
        self._display_map = probe_maps[self._display_probe].copy()
        k, n_probe, size = cfg.profile_length, len(self._probe_rows), self.image_size
        self._loss_maps = np.zeros((k, n_probe, size, size), dtype=np.float32)
        self._n_snapshots = 0
        columns_per_snapshot = 2 if cfg.context_window else 1
        self._separation_tracker = SeparationTracker(
            self._separation_labels, cfg.reward, max_columns=k * columns_per_snapshot
        )
        self._initial_separation = separation(
            self._reward_features(probe_maps[:n_labeled]), self._separation_labels, cfg.reward
        )
        self._separation = self._previous_separation = self._initial_separation
        if self._twin is not None:
            # The twin starts from the agent's very weights, so its initial separation is the agent's.
            self._twin_tracker = SeparationTracker(
                self._separation_labels, cfg.reward, max_columns=k * columns_per_snapshot
            )
            self._twin_separation = self._previous_twin_separation = self._initial_separation
        self._levels_at_snapshot = self._group_levels()
        self._recent_counts: deque[np.ndarray] = deque(maxlen=cfg.history)
        self._position_counts = np.zeros(self._n_positions, dtype=np.int64)
        self._batch_loss = float(self._patch_loss.mean())
        self.last_profiles = None
        self._last_composition = self._group_sizes / self._group_sizes.sum()
        return self._observation(), self._info(snapshot=False)

    def _begin_step(self, action: Any) -> None:
        """Start an env step with a checked action: the potential the step's reward is measured from and,
        in the quantile mode, how many patches the step's batches are drawn from."""
        if self.config.action_mode == "quantile":
            self._admitted = self.admitted_patches(action)
        self._previous_separation = self._separation
        if self._twin is not None:
            self._previous_twin_separation = self._twin_separation

    def _begin_update(self, composition: np.ndarray) -> np.ndarray:
        """Draw the batch of a composition (see ``batch_composition``); returns the patch ids to train on."""
        patch_ids, group_counts = self._draw(composition)
        self._recent_counts.append(group_counts)
        self._position_counts += np.bincount(self._patch_position[patch_ids], minlength=self._n_positions)
        self._last_composition = composition
        self._pending_patch_ids = patch_ids
        return patch_ids

    @property
    def _snapshot_due(self) -> bool:
        """Whether the update now being done is followed by a snapshot of the loss maps."""
        return self._step_count + 1 in self._snapshot_at

    def _finish_update(self, per_patch: np.ndarray, snapshot: Snapshot | None) -> None:
        """Bookkeeping after one update: patch losses, the twin's update, the snapshot (when due)."""
        self._patch_loss[self._pending_patch_ids] = per_patch
        self._batch_loss = float(per_patch.mean())
        if self._twin is not None:
            ids = self._twin_rng.integers(0, len(self._patch_loss), size=self.config.batch_size)
            self._twin.update(self._gather_patches(ids))
        self._step_count += 1
        self._snapshot_in_step = self._snapshot_in_step or snapshot is not None
        if snapshot is not None:
            self._take_snapshot(snapshot)
        else:
            self._restratify()

    def _finish_step(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """The end of an env step (``decision_interval`` updates): reward, observation, info, profiles."""
        terminated = self._step_count == self.config.episode_length
        rewards = self._rewards(terminated)
        reward = rewards[_REWARD_TERM[self.config.reward_baseline, self.config.reward_mode]]
        info = self._info(snapshot=self._snapshot_in_step, rewards=rewards)
        self._snapshot_in_step = False
        if terminated:
            self.last_profiles = self._episode_profiles()
            if self.profile_dir is not None:
                path = self.profile_dir / f"episode_{self._episode:05d}.npz"
                info["profile_path"] = str(self.last_profiles.save(path))
        return self._observation(), reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: probe image | its latest loss map | where the batches came from (pool average)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        from matplotlib import colormaps

        image = self._images[self.split.probe[self._display_probe]]
        gray = image.mean(axis=0) if image.shape[0] == 1 else None
        panel_image = np.repeat(gray[..., None], 3, axis=2) if gray is not None else image.transpose(1, 2, 0)
        loss = self._display_map / max(float(self._display_map.max()), _LOSS_FLOOR)
        coverage = self._sampling_coverage()
        panels = [
            panel_image,
            colormaps["inferno"](loss)[..., :3],
            colormaps["viridis"](coverage / max(float(coverage.max()), 1.0))[..., :3],
        ]
        size = self.image_size
        gap = np.ones((size, 2, 3))
        frame = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
        scale = max(1, 256 // size)
        frame = np.kron(frame, np.ones((scale, scale, 1)))
        return (np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)

    # ------------------------------------------------------------------ public helpers

    def batch_composition(self, action: Any) -> np.ndarray:
        """Probability of each group for the next batch, from an action; a bad action is a ValueError."""
        cfg = self.config
        n_groups = cfg.n_groups
        if cfg.action_mode == "discrete":
            value = np.asarray(action)
            if value.size != 1 or not np.issubdtype(value.dtype, np.integer) or not 0 <= value.item() <= n_groups:
                raise ValueError(
                    f"action: expected an integer in [0, {n_groups}] for Discrete({n_groups + 1}), got {action!r}"
                )
            choice = int(value.item())
            if choice == n_groups:
                return self._group_sizes / self._group_sizes.sum()
            composition = np.zeros(n_groups)
            composition[choice] = 1.0
            return composition
        if cfg.action_mode == "quantile":
            admitted = self.admitted_patches(action)
            starts = self._group_starts.astype(np.float64)
            return np.clip(admitted - starts, 0.0, self._group_sizes) / admitted
        value = self._box_action(action, n_groups)
        logits = value / cfg.temperature + np.log(self._group_sizes)
        weights = np.exp(logits - logits.max())
        return weights / weights.sum()

    def admitted_patches(self, action: Any) -> int:
        """Quantile mode: how many of the lowest-loss pool patches an action admits to the next batches,
        ``round((a + 1) / 2 * P)`` but at least ``batch_size``; a bad action is a ValueError."""
        if self.config.action_mode != "quantile":
            raise ValueError(f"admitted_patches: the action mode is {self.config.action_mode!r}, not 'quantile'")
        share = (float(np.clip(self._box_action(action, 1)[0], -1.0, 1.0)) + 1.0) / 2.0
        n_patches = len(self._patch_loss)
        return int(min(n_patches, max(self.config.batch_size, round(share * n_patches))))

    @staticmethod
    def _box_action(action: Any, size: int) -> np.ndarray:
        value = np.asarray(action, dtype=np.float64)
        if value.shape != (size,):
            raise ValueError(f"action: expected shape ({size},) in [-1, 1], got shape {value.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"action: expected finite values in [-1, 1] of shape ({size},), got {value}")
        if (np.abs(value) > 1.0 + 1e-6).any():
            raise ValueError(f"action: expected values in [-1, 1] of shape ({size},), got {value}")
        return value

    def _spawn(self, profile_dir: Path | None) -> NeuralBatchSamplingEnv:
        """A sibling sharing this env's dataset, split, patch grid and device tensors, for the vector env.

        Episode state is created by reset (never mutated in place across episodes), so siblings only
        share read-only state. The sibling has no trainer of its own: the vector env trains all
        siblings' autoencoders in one batched engine and drives the step phases itself.
        """
        sibling = copy.copy(self)
        sibling._np_random = None
        sibling._np_random_seed = None
        sibling.trainer = None  # type: ignore[assignment]  # the vector env trains the siblings' models
        if self._twin is not None:  # each sibling's twin trains on its own, outside the batched engine
            sibling._twin = AutoencoderTrainer(self._snapshot_images.shape[1], self.config.autoencoder)
        sibling.profile_dir = profile_dir
        sibling._episode = -1
        sibling.last_profiles = None
        return sibling

    @property
    def patch_windows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each pool patch (by patch id) lies: its image's index in the dataset, its top row and its
        left column. A patch is ``patch_size`` pixels square."""
        image = np.union1d(self.split.pool, self.split.probe)[self._patch_image]
        return image, self._patch_y.copy(), self._patch_x.copy()

    def set_patch_draw(self, draw: PatchDraw | None) -> None:
        """Draw every batch with ``draw(np_random, batch_size)`` (patch ids, see :attr:`patch_windows`)
        instead of the action's composition; ``None`` restores the composition's draw.

        For samplers that choose patch by patch rather than group by group: the published per-patch
        rules of :mod:`agents.published`, which read :attr:`patch_losses` and :attr:`progress`, and the
        ``oracle``. The env's own ``np_random`` is passed, so an episode stays a function of its seed. A
        sampler that chooses patches by what the agent cannot observe (the masks, as the ``oracle`` does)
        is a reference for what batch composition can buy, never a result of a labeled-only method.
        """
        self._patch_draw = draw

    @property
    def patch_losses(self) -> np.ndarray:
        """The current loss estimate of every pool patch, by patch id (see :attr:`patch_windows`); read-only.

        A patch's estimate is its loss at the latest snapshot of the loss maps, or in the latest batch
        that held it when that came later: the label-free signal the strata are cut from, and the one
        the per-patch rules of :mod:`agents.published` read from their draw (:meth:`set_patch_draw`).
        """
        view = self._patch_loss.view()
        view.flags.writeable = False
        return view

    @property
    def last_patch_ids(self) -> np.ndarray:
        """Patch ids of the latest update's batch (a copy; empty before the first update of an episode)."""
        if self._step_count == 0:
            return np.empty(0, dtype=np.int64)
        return np.array(self._pending_patch_ids, dtype=np.int64)

    @property
    def progress(self) -> float:
        """Updates done this episode over ``episode_length``, in [0, 1] (the observation's progress entry)."""
        return self._step_count / self.config.episode_length

    @property
    def separation(self) -> float:
        """Current separation S_t of L's profiles (the reward's potential)."""
        return self._separation

    # ------------------------------------------------------------------ construction

    def _build_patch_grid(self, n_pool: int) -> None:
        cfg, size = self.config, self.image_size
        offsets = np.arange(0, size - cfg.patch_size + 1, cfg.stride)
        ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
        self._grid_side = len(offsets)
        self._n_positions = ys.size
        n_patches = n_pool * self._n_positions
        self._patch_image = np.repeat(self._pool_rows, self._n_positions)
        self._patch_position = np.tile(np.arange(self._n_positions), n_pool)
        self._patch_y = np.tile(ys.ravel(), n_pool)
        self._patch_x = np.tile(xs.ravel(), n_pool)
        if n_patches < cfg.batch_size:
            raise ConfigError(f"batch_size: {cfg.batch_size} is larger than the patch pool ({n_patches} patches)")
        self._offsets = torch.arange(cfg.patch_size, device=self.device)
        # The same tables on the device, so that cutting a batch is indexing there, without host copies.
        self._patch_image_t = torch.as_tensor(self._patch_image, device=self.device)
        self._patch_y_t = torch.as_tensor(self._patch_y, device=self.device)
        self._patch_x_t = torch.as_tensor(self._patch_x, device=self.device)
        self._patch_loss = np.zeros(n_patches)
        labeled_anomalous = np.flatnonzero(self._labeled_masks.any(axis=(1, 2)))
        self._display_probe = int(labeled_anomalous[0]) if labeled_anomalous.size else 0

    def _build_groups(self) -> None:
        cfg = self.config
        n_patches, n_groups = len(self._patch_loss), cfg.n_groups
        if n_patches < n_groups:
            setting = "spatial_grid" if cfg.action_mode == "spatial" else "n_strata"
            raise ConfigError(f"{setting}: {n_groups} groups, but the pool has only {n_patches} patches")
        if cfg.action_mode == "spatial":
            centre_y = self._patch_y + cfg.patch_size / 2
            centre_x = self._patch_x + cfg.patch_size / 2
            side, size = cfg.spatial_grid, self.image_size
            row = np.minimum((centre_y * side) // size, side - 1)
            column = np.minimum((centre_x * side) // size, side - 1)
            cell = row * side + column
            self._patch_group = cell.astype(np.int64)
            self._group_sizes = np.bincount(self._patch_group, minlength=n_groups).astype(np.float64)
            if (self._group_sizes == 0).any():
                raise ConfigError(
                    f"spatial_grid: a {side}x{side} grid leaves cells without patch centres; "
                    f"the patch grid has {self._grid_side} positions per side"
                )
            self._order = np.argsort(self._patch_group, kind="stable")
        else:
            bounds = (np.arange(n_groups + 1) * n_patches) // n_groups
            self._group_sizes = np.diff(bounds).astype(np.float64)
            self._order = np.arange(n_patches)
        self._group_starts = np.concatenate([[0], np.cumsum(self._group_sizes[:-1])]).astype(np.int64)

    def _build_separation_pixels(self) -> None:
        """The pixels of L the reward reads (a seeded subset on large data) and their labels."""
        try:
            pixels, labels = separation_pixels(self._labeled_masks, self.config.data.split_seed)
        except ValueError:
            raise ConfigError(
                "n_labeled_anomalous_per_type: the labeled set needs anomalous and normal pixels"
            ) from None
        self._separation_pixels, self._separation_labels = pixels, labels

    # ------------------------------------------------------------------ dynamics

    def _draw(self, composition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patch ids of one batch: a group per draw by ``composition``, then a patch uniformly within it."""
        if self._patch_draw is not None:
            patch_ids = np.asarray(self._patch_draw(self.np_random, self.config.batch_size), dtype=np.int64)
            return patch_ids, np.bincount(self._groups_of(patch_ids), minlength=len(composition))
        if self.config.action_mode == "quantile":  # the order is sorted by loss: its first ranks are admitted
            ranks = self.np_random.integers(0, self._admitted, size=self.config.batch_size)
            groups = np.searchsorted(self._group_starts, ranks, side="right") - 1
            return self._order[ranks], np.bincount(groups, minlength=len(composition))
        groups = self.np_random.choice(len(composition), size=self.config.batch_size, p=composition)
        within = self.np_random.integers(0, self._group_sizes[groups].astype(np.int64))
        patch_ids = self._order[self._group_starts[groups] + within]
        return patch_ids, np.bincount(groups, minlength=len(composition))

    def _gather_patches(self, patch_ids: np.ndarray) -> torch.Tensor:
        """(B, C, p, p) patches, cut from the pool images on the device in one indexing operation."""
        ids = torch.from_numpy(patch_ids).to(self.device)
        image = self._patch_image_t[ids]
        rows = self._patch_y_t[ids][:, None] + self._offsets
        cols = self._patch_x_t[ids][:, None] + self._offsets
        patches = self._snapshot_images[image[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return patches.permute(0, 3, 1, 2)

    def _snapshots_to_host(self, maps: torch.Tensor) -> list[Snapshot]:
        """Host copies of what the bookkeeping reads of each model's snapshot, for all models at once.

        Args:
            maps: Loss maps of the snapshot images under each model, shape (models, images, H, W).

        Returns:
            Per model: every pool patch's current loss (the mean of the loss map over its window,
            float64) and the probe images' loss maps (float32).
        """
        cfg = self.config
        # Pooling every image and then picking the pool's windows spares a copy of the pool's maps.
        pooled = torch.nn.functional.avg_pool2d(maps.reshape(-1, 1, *maps.shape[2:]), cfg.patch_size, cfg.stride)
        pooled = pooled.reshape(*maps.shape[:2], -1)[:, self._pool_rows]
        patch_losses = pooled.reshape(len(maps), -1).cpu().numpy().astype(np.float64)
        probe_maps = maps[:, self._probe_rows].cpu().numpy()
        return list(zip(patch_losses, probe_maps, strict=True))

    def _take_snapshot(self, snapshot: Snapshot) -> None:
        self._patch_loss, probe_maps = snapshot
        self._restratify()
        self._loss_maps[self._n_snapshots] = probe_maps
        self._display_map = self._loss_maps[self._n_snapshots, self._display_probe]
        self._n_snapshots += 1
        self._separation = self._separation_tracker.add(self._reward_features(probe_maps[: len(self.split.labeled)]))
        if self._twin is not None:
            twin_maps = self._twin.loss_maps(self._labeled_images).cpu().numpy()
            self._twin_separation = self._twin_tracker.add(self._reward_features(twin_maps))
        self._levels_at_snapshot = self._group_levels()

    def _restratify(self, from_scratch: bool = False) -> None:
        """Sort the pool by current patch loss; the strata are equal runs of that order, lowest loss first.

        The sort is stable over the previous order (over patch ids ``from_scratch``, as at a reset), so
        ties keep a fixed order and a seed gives the same strata whatever ran before. Between snapshots
        only one batch's patches change loss and the previous order is nearly sorted: numpy's stable
        sort (timsort) merges its runs in about 45 us for the default pool of about 6,400 patches,
        against about 190 us for ``np.argpartition`` into the strata, whose selection mispredicts branches.
        """
        if self.config.action_mode == "spatial":
            return
        if from_scratch:
            self._order = np.arange(len(self._patch_loss))
        losses = self._patch_loss[self._order]
        rank = np.argsort(losses, kind="stable")
        self._order = self._order[rank]
        self._sorted_loss = losses[rank]

    def _groups_of(self, patch_ids: np.ndarray) -> np.ndarray:
        """The group (stratum or cell) each of the given patches is in now."""
        if self.config.action_mode == "spatial":
            return self._patch_group[patch_ids]
        rank = np.empty_like(self._order)
        rank[self._order] = np.arange(len(self._order))
        return np.searchsorted(self._group_starts, rank[patch_ids], side="right") - 1

    def _reward_features(self, labeled_maps: np.ndarray) -> np.ndarray:
        """One snapshot's reward features of the separation pixels (the loss, and the box mean with a context)."""
        return snapshot_features(labeled_maps, self._separation_pixels, self.config.context_window)

    def _rewards(self, terminated: bool) -> dict[str, float]:
        gain = float(self._separation - self._previous_separation)
        rewards = {"separation_gain": gain, "final_separation": float(self._separation) if terminated else 0.0}
        if self._twin is not None:
            twin_gain = float(self._twin_separation - self._previous_twin_separation)
            rewards["twin_separation_gain"] = twin_gain
            rewards["paired_gain"] = gain - twin_gain
            paired = float(self._separation - self._twin_separation)
            rewards["final_paired_separation"] = paired if terminated else 0.0
        return rewards

    def _group_levels(self) -> np.ndarray:
        if self.config.action_mode == "spatial":
            sums = np.bincount(self._patch_group, weights=self._patch_loss, minlength=len(self._group_sizes))
        else:
            sums = np.add.reduceat(self._sorted_loss, self._group_starts)
        return np.log10(np.maximum(sums / self._group_sizes, _LOSS_FLOOR))

    def _observation(self) -> np.ndarray:
        levels = self._group_levels()
        if self._recent_counts:
            shares = np.sum(self._recent_counts, axis=0) / (len(self._recent_counts) * self.config.batch_size)
        else:
            shares = np.zeros(len(self._group_sizes))
        return self.layout.assemble(
            levels,
            levels - self._levels_at_snapshot,
            shares,
            progress=self._step_count / self.config.episode_length,
            batch_log_loss=float(np.log10(max(self._batch_loss, _LOSS_FLOOR))),
            pool_log_loss=float(np.log10(max(float(self._patch_loss.mean()), _LOSS_FLOOR))),
        )

    def _info(self, snapshot: bool, rewards: dict[str, float] | None = None) -> dict[str, Any]:
        info = {
            "step": self._step_count,
            "separation": float(self._separation),
            "initial_separation": float(self._initial_separation),
            "rewards": rewards if rewards is not None else self._rewards(False),
            "ae_loss": float(self._batch_loss),
            "batch_composition": self._last_composition.astype(np.float32),
            "snapshot": snapshot,
            "n_snapshots": self._n_snapshots,
        }
        if self._twin is not None:
            info["twin_separation"] = float(self._twin_separation)
        return info

    def _sampling_coverage(self) -> np.ndarray:
        """How often each pixel location was inside a sampled patch this episode, summed over images."""
        cfg, size = self.config, self.image_size
        side = self._grid_side
        counts = torch.as_tensor(self._position_counts.reshape(1, 1, side, side), dtype=torch.float32)
        kernel = torch.ones(1, 1, cfg.patch_size, cfg.patch_size)
        coverage = torch.nn.functional.conv_transpose2d(counts, kernel, stride=cfg.stride)[0, 0]
        padded = np.zeros((size, size))
        padded[: coverage.shape[0], : coverage.shape[1]] = coverage.numpy()
        return padded

    def _episode_profiles(self) -> LossProfiles:
        """The finished episode's profiles. They take over the episode's loss maps, which the next reset
        replaces with a new array, and share one read-only array of the probe images: copying both took
        about 20 ms per episode."""
        probe = np.asarray(self.split.probe, dtype=np.int64)
        return LossProfiles(
            loss_maps=self._loss_maps,
            snapshot_steps=np.asarray(self.config.snapshot_steps, dtype=np.int64),
            images=self._probe_images,
            probe_indices=probe,
            labeled_masks=self._labeled_masks,
            split=self.split,
            metadata={
                "config": self.config.to_dict(),
                "dataset": self.dataset_spec,
                "dataset_fingerprint": self._fingerprint,
                "episode": self._episode,
                "episode_seed": self._episode_seed,
                "separation": float(self._separation),
                "initial_separation": float(self._initial_separation),
            },
        )
