"""The episode engine: N training runs of the autoencoder, with their batch sampling, in one place.

:class:`EpisodeEngine` is what :class:`~nbs_gym.env.NeuralBatchSamplingEnv` (N = 1) and
:class:`~nbs_gym.vector.NeuralBatchSamplingVectorEnv` (N) drive, through its public methods. It holds

* the **patch pool** (:class:`PatchPool`): the images a snapshot maps, every patch window, and the cut
  of a batch of patches on the device;
* the **groups** the actions compose batches from, one strategy object per kind
  (:class:`LossStrata`, re-sorted by current loss; :class:`SpatialCells`, fixed);
* the **trainer**: N autoencoders as one batched computation
  (:class:`~nbs_gym.autoencoder.BatchedAutoencoderTrainer`, the package's one Adam);
* the **bookkeeping** of every sub-environment as arrays over N: patch losses ``(N, P)``, the strata's
  order, the batch history, the step counts, the separations, from which the observations ``(N, D)``
  and the infos come in one pass;
* the **reward**: each sub-environment's :class:`~nbs_gym.separation.SeparationTracker` (and the uniform
  twin's, with ``reward_baseline="uniform_twin"``).

Each sub-environment draws its batches from its own numpy generator (the env's ``np_random``), so
sub-environment ``i`` reset with seed ``s`` follows the trajectory of a single env reset with ``s``.
Those draws, and therefore the bookkeeping that chooses what they read, stay on the host; the loss maps
of a snapshot are pooled into patch losses on the device, so only ``(N, P)`` losses and the probe
images' maps cross to the host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces

from nbs_gym.autoencoder import AutoencoderTrainer, BatchedAutoencoderTrainer
from nbs_gym.config import ConfigError, EnvConfig
from nbs_gym.data import AnomalyDataset, SemiSupervisedSplit, dataset_fingerprint
from nbs_gym.profiles import LossProfiles
from nbs_gym.separation import SeparationTracker, separation, separation_pixels, snapshot_features
from nbs_gym.spaces import OBS_BOUND, ObservationLayout, action_space

__all__ = [
    "REWARD_TERM",
    "EpisodeEngine",
    "GroupStrategy",
    "LossStrata",
    "PatchDraw",
    "PatchPool",
    "SpatialCells",
    "draw_groups",
]

REWARD_TERM = {
    ("none", "dense"): "separation_gain",
    ("none", "terminal"): "final_separation",
    ("uniform_twin", "dense"): "paired_gain",
    ("uniform_twin", "terminal"): "final_paired_separation",
}
"""The ``info["rewards"]`` term that is the reward, by (``reward_baseline``, ``reward_mode``)."""

# Observation values are log10-losses, their changes, shares and progress (nbs_gym.spaces); the floor
# only guards against a loss of exactly zero, real values stay within about [-10, 1].
_LOSS_FLOOR = 1e-12

PatchDraw = Callable[[np.random.Generator, int], np.ndarray]
"""A privileged batch draw (see ``NeuralBatchSamplingEnv.set_patch_draw``): (rng, batch size) -> patch ids."""


class PatchPool:
    """The patches the autoencoders train on and the images whose loss maps a snapshot takes.

    Patch ``j`` is the ``patch_size`` square window at ``(patch_y[j], patch_x[j])`` of pool image
    ``patch_image[j]`` (a row of :attr:`snapshot_images`), at grid position ``patch_position[j]``.

    Args:
        dataset: The loaded dataset.
        split: Its split; the pool's images are the patch pool, the probes' maps are the profiles.
        config: The env's settings (patch size and stride).
        device: Where the images and the patch tables live.
    """

    def __init__(self, dataset: AnomalyDataset, split: SemiSupervisedSplit, config: EnvConfig, device: torch.device):
        size, patch, stride = dataset.image_size, config.patch_size, config.stride
        pool, probe = np.asarray(split.pool), np.asarray(split.probe)
        self.snapshot_index = np.union1d(pool, probe)
        """Dataset indices of the snapshot images, in the order of :attr:`snapshot_images`."""
        self.pool_rows = np.searchsorted(self.snapshot_index, pool)
        self.probe_rows = np.searchsorted(self.snapshot_index, probe)
        self.snapshot_images = torch.as_tensor(dataset.images[self.snapshot_index], device=device)
        self.channels, self.image_size, self.patch_size, self.stride = dataset.channels, size, patch, stride
        self.device = device
        offsets = np.arange(0, size - patch + 1, stride)
        ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
        self.grid_side = len(offsets)
        self.n_positions = ys.size
        n_pool = len(pool)
        self.patch_image = np.repeat(self.pool_rows, self.n_positions)
        self.patch_position = np.tile(np.arange(self.n_positions), n_pool)
        self.patch_y = np.tile(ys.ravel(), n_pool)
        self.patch_x = np.tile(xs.ravel(), n_pool)
        self.n_patches = n_pool * self.n_positions
        if self.n_patches < config.batch_size:
            raise ConfigError(
                f"batch_size: {config.batch_size} is larger than the patch pool ({self.n_patches} patches)"
            )
        # Every window of every snapshot image, as a view (no copy): cutting a batch is one indexing.
        self._windows = self.snapshot_images.unfold(2, patch, stride).unfold(3, patch, stride)
        self._image_t = torch.as_tensor(self.patch_image, device=device)
        self._row_t = torch.as_tensor(self.patch_y // stride, device=device)
        self._column_t = torch.as_tensor(self.patch_x // stride, device=device)
        self._probe_rows_t = torch.as_tensor(self.probe_rows, device=device)

    def gather(self, patch_ids: np.ndarray) -> torch.Tensor:
        """The patches of ``patch_ids`` (any shape ``S``) on the device, shape ``(*S, C, p, p)``."""
        ids = torch.from_numpy(np.ascontiguousarray(patch_ids, dtype=np.int64)).to(self.device)
        flat = ids.reshape(-1)
        patches = self._windows[self._image_t[flat], :, self._row_t[flat], self._column_t[flat]]
        return patches.reshape(*ids.shape, *patches.shape[1:])

    def patch_losses(self, maps: torch.Tensor) -> np.ndarray:
        """Every pool patch's loss under each model, the mean of its maps over its window: ``(M, P)``
        float64 on the host, from loss maps ``(M, images, H, W)`` of the snapshot images."""
        # Pooling every image and then picking the pool's windows spares a copy of the pool's maps.
        pooled = torch.nn.functional.avg_pool2d(maps.reshape(-1, 1, *maps.shape[2:]), self.patch_size, self.stride)
        pooled = pooled.reshape(*maps.shape[:2], -1)[:, self.pool_rows]
        return pooled.reshape(len(maps), -1).cpu().numpy().astype(np.float64)

    def probe_maps_into(self, maps: torch.Tensor, out: np.ndarray) -> None:
        """Copy the probe images' loss maps of one model (``maps``: (images, H, W)) into ``out`` on the host."""
        if maps.device.type == "cpu":  # numpy's take copies row by row, several times faster than index_select
            np.take(maps.numpy(), self.probe_rows, axis=0, out=out)
        else:
            out[...] = maps[self._probe_rows_t].cpu().numpy()

    def coverage(self, position_counts: np.ndarray) -> np.ndarray:
        """How often each pixel location was inside a sampled patch, from counts per grid position."""
        side, size = self.grid_side, self.image_size
        counts = torch.as_tensor(position_counts.reshape(1, 1, side, side), dtype=torch.float32)
        kernel = torch.ones(1, 1, self.patch_size, self.patch_size)
        covered = torch.nn.functional.conv_transpose2d(counts, kernel, stride=self.stride)[0, 0]
        padded = np.zeros((size, size))
        padded[: covered.shape[0], : covered.shape[1]] = covered.numpy()
        return padded


class GroupStrategy(Protocol):
    """What the engine asks of the groups of the patch pool that actions compose batches from.

    A strategy keeps its per-sub-environment state as arrays over N. ``order[i]`` lists the patch ids of
    sub-environment ``i`` group by group (group ``g`` is ``order[i, starts[g] : starts[g] + sizes[g]]``).
    """

    n_groups: int
    sizes: np.ndarray
    starts: np.ndarray
    order: np.ndarray
    sorted_by_loss: bool
    """Whether ``order`` is sorted by current loss (the quantile mode admits its first ranks)."""

    def refresh(self, env: int, loss: np.ndarray) -> None:
        """Sub-environment ``env``'s patch losses changed (after an update or a snapshot)."""
        ...

    def restart(self, env: int, loss: np.ndarray) -> None:
        """A new episode of ``env`` starts from these patch losses."""
        ...

    def levels(self, envs: np.ndarray, loss: np.ndarray) -> np.ndarray:
        """Mean patch loss of every group, (len(envs), S), from the losses ``loss`` (len(envs), P)."""
        ...

    def groups_of(self, env: int, patch_ids: np.ndarray) -> np.ndarray:
        """The group each of the given patches of ``env`` is in now."""
        ...


class LossStrata:
    """Loss strata: the pool sorted by current patch loss and cut into ``n_strata`` equal runs, lowest
    loss first.

    The sort is stable over the previous order (over patch ids at a reset), so ties keep a fixed order
    and a seed gives the same strata whatever ran before. Between snapshots only one batch's patches
    change loss and the previous order is nearly sorted, which numpy's stable sort (timsort) merges
    faster than the alternatives measured in docs/PERFORMANCE.md.
    """

    sorted_by_loss = True

    def __init__(self, n_envs: int, n_patches: int, n_strata: int) -> None:
        if n_patches < n_strata:
            raise ConfigError(f"n_strata: {n_strata} groups, but the pool has only {n_patches} patches")
        bounds = (np.arange(n_strata + 1) * n_patches) // n_strata
        self.n_groups = n_strata
        self.sizes = np.diff(bounds).astype(np.float64)
        self.starts = bounds[:-1].astype(np.int64)
        self.order = np.tile(np.arange(n_patches), (n_envs, 1))
        self.sorted_loss = np.zeros((n_envs, n_patches))

    def restart(self, env: int, loss: np.ndarray) -> None:
        self.order[env] = np.arange(self.order.shape[1])
        self.refresh(env, loss)

    def refresh(self, env: int, loss: np.ndarray) -> None:
        # The whole sort however few losses changed: on a nearly sorted order it is the fastest exact form measured.
        values = loss[self.order[env]]
        by_loss = np.argsort(values, kind="stable")
        self.order[env] = self.order[env][by_loss]
        self.sorted_loss[env] = values[by_loss]

    def levels(self, envs: np.ndarray, loss: np.ndarray) -> np.ndarray:
        return np.add.reduceat(self.sorted_loss[envs], self.starts, axis=1) / self.sizes

    def groups_of(self, env: int, patch_ids: np.ndarray) -> np.ndarray:
        rank = np.empty_like(self.order[env])
        rank[self.order[env]] = np.arange(len(rank))
        return np.searchsorted(self.starts, rank[patch_ids], side="right") - 1


class SpatialCells:
    """The cells of a ``side`` x ``side`` grid over the image, row-major; a patch is in the cell of its
    centre. The groups never change."""

    sorted_by_loss = False

    def __init__(self, n_envs: int, pool: PatchPool, side: int) -> None:
        n_groups = side * side
        if pool.n_patches < n_groups:
            raise ConfigError(f"spatial_grid: {n_groups} groups, but the pool has only {pool.n_patches} patches")
        half = pool.patch_size / 2
        row = np.minimum(((pool.patch_y + half) * side) // pool.image_size, side - 1)
        column = np.minimum(((pool.patch_x + half) * side) // pool.image_size, side - 1)
        self.cell = (row * side + column).astype(np.int64)
        self.n_groups = n_groups
        self.sizes = np.bincount(self.cell, minlength=n_groups).astype(np.float64)
        if (self.sizes == 0).any():
            raise ConfigError(
                f"spatial_grid: a {side}x{side} grid leaves cells without patch centres; "
                f"the patch grid has {pool.grid_side} positions per side"
            )
        self.starts = np.concatenate([[0], np.cumsum(self.sizes[:-1])]).astype(np.int64)
        self.order = np.broadcast_to(np.argsort(self.cell, kind="stable"), (n_envs, pool.n_patches))

    def restart(self, env: int, loss: np.ndarray) -> None:
        pass

    def refresh(self, env: int, loss: np.ndarray) -> None:
        pass

    def levels(self, envs: np.ndarray, loss: np.ndarray) -> np.ndarray:
        bins = self.cell + self.n_groups * np.arange(len(envs))[:, None]
        sums = np.bincount(bins.ravel(), weights=loss.ravel(), minlength=len(envs) * self.n_groups)
        return sums.reshape(len(envs), self.n_groups) / self.sizes

    def groups_of(self, env: int, patch_ids: np.ndarray) -> np.ndarray:
        return self.cell[patch_ids]


def draw_groups(rng: np.random.Generator, composition: np.ndarray, size: int) -> np.ndarray:
    """``rng.choice(len(composition), size, p=composition)`` as numpy's Generator computes it (the
    cumulative distribution, then one uniform draw per sample), the same draws from the same stream
    without its argument checks, which cost more than the draw (``composition`` comes checked)."""
    cdf = composition.cumsum()
    cdf /= cdf[-1]
    return cdf.searchsorted(rng.random(size), side="right")


class EpisodeEngine:
    """N sub-environments' training runs of the autoencoder and their batch sampling (see the module).

    Args:
        n_envs: Number of sub-environments N.
        config: The env's settings.
        dataset: The loaded dataset.
        split: Its semi-supervised split (one for every sub-environment).
        profile_dirs: Per sub-environment, the folder its finished episodes' profiles are written to.
    """

    def __init__(
        self,
        n_envs: int,
        config: EnvConfig,
        dataset: AnomalyDataset,
        split: SemiSupervisedSplit,
        profile_dirs: Sequence[str | os.PathLike[str] | None] | None = None,
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"num_envs: must be >= 1, got {n_envs}")
        cfg = self.config = config
        self.n_envs = n_envs
        self.split = split
        self.trainer = BatchedAutoencoderTrainer(n_envs, dataset.channels, cfg.autoencoder)
        self.device = self.trainer.device
        self.pool = PatchPool(dataset, split, cfg, self.device)
        self.groups: GroupStrategy = (
            SpatialCells(n_envs, self.pool, cfg.spatial_grid)
            if cfg.action_mode == "spatial"
            else LossStrata(n_envs, self.pool.n_patches, cfg.n_strata)
        )
        self.layout = ObservationLayout(cfg.n_groups)
        self.action_space: spaces.Space[Any] = action_space(cfg.action_mode, cfg.n_groups)
        self.observation_space = self.layout.observation_space()
        dirs = list(profile_dirs) if profile_dirs is not None else [None] * n_envs
        if len(dirs) != n_envs:
            raise ValueError(f"profile_dirs: expected one per sub-environment ({n_envs}), got {len(dirs)}")
        self.profile_dirs = [Path(d) if d is not None else None for d in dirs]

        # What every sub-environment shares, read-only: the images, L's masks and the reward's pixels.
        self.dataset_spec = dataset.spec
        self.image_size = dataset.image_size
        self.images = dataset.images
        self.labeled_masks = dataset.masks[np.asarray(split.labeled, dtype=np.int64)]
        self.fingerprint = dataset_fingerprint(dataset)
        self.probe_images = dataset.images[np.asarray(split.probe)]
        self.probe_images.flags.writeable = False
        self.n_labeled = len(split.labeled)
        try:
            self.separation_pixels, self.separation_labels = separation_pixels(self.labeled_masks, cfg.data.split_seed)
        except ValueError:
            raise ConfigError(
                "n_labeled_anomalous_per_type: the labeled set needs anomalous and normal pixels"
            ) from None
        labeled_anomalous = np.flatnonzero(self.labeled_masks.any(axis=(1, 2)))
        self.display_probe = int(labeled_anomalous[0]) if labeled_anomalous.size else 0
        self._snapshot_after = np.zeros(cfg.episode_length + 2, dtype=bool)
        self._snapshot_after[list(cfg.snapshot_steps)] = True
        self._twins: list[AutoencoderTrainer] | None = None
        if cfg.reward_baseline == "uniform_twin":  # each twin maps L's images only: its separation is all it gives
            self._twins = [AutoencoderTrainer(dataset.channels, cfg.autoencoder) for _ in range(n_envs)]
            self._labeled_images = self.pool.snapshot_images[
                torch.as_tensor(self.pool.probe_rows[: self.n_labeled], device=self.device)
            ]

        n, n_groups, n_patches = n_envs, cfg.n_groups, self.pool.n_patches
        self.rngs: list[np.random.Generator | None] = [None] * n
        self.patch_draws: list[PatchDraw | None] = [None] * n
        self.episode = np.full(n, -1, dtype=np.int64)
        self.episode_seed = np.zeros(n, dtype=np.int64)
        self.step_count = np.zeros(n, dtype=np.int64)
        self.patch_loss = np.zeros((n, n_patches))
        self.batch_loss = np.zeros(n)
        self.last_patch_ids = np.zeros((n, cfg.batch_size), dtype=np.int64)
        self.composition = np.zeros((n, n_groups))
        self.admitted = np.full(n, n_patches, dtype=np.int64)
        self.recent_counts = np.zeros((n, cfg.history, n_groups), dtype=np.int64)
        self.n_recent = np.zeros(n, dtype=np.int64)
        self.position_counts = np.zeros((n, self.pool.n_positions), dtype=np.int64)
        self.levels_at_snapshot = np.zeros((n, n_groups))
        self.n_snapshots = np.zeros(n, dtype=np.int64)
        self.snapshot_in_step = np.zeros(n, dtype=bool)
        self.separation = np.zeros(n)
        self.previous_separation = np.zeros(n)
        self.initial_separation = np.zeros(n)
        self.twin_separation = np.zeros(n)
        self.previous_twin_separation = np.zeros(n)
        self.loss_maps: list[np.ndarray] = [np.empty(0, np.float32)] * n
        self.display_maps = np.zeros((n, self.image_size, self.image_size), dtype=np.float32)
        self.last_profiles: list[LossProfiles | None] = [None] * n
        self._trackers: list[SeparationTracker | None] = [None] * n
        self._twin_trackers: list[SeparationTracker | None] = [None] * n
        self._twin_rngs: list[np.random.Generator | None] = [None] * n

    # ------------------------------------------------------------------ episodes

    def reset(self, slots: Sequence[int], rngs: Sequence[np.random.Generator]) -> None:
        """Start a new episode in each of ``slots``, drawing its seed from its generator in ``rngs``.

        The episode's seed seeds the torch generator of the initial weights (and the uniform twin's,
        which get the same weights and a patch stream of their own, seeded by a second draw).
        """
        generators = []
        for slot, rng in zip(slots, rngs, strict=True):
            self.rngs[slot] = rng
            self.episode[slot] += 1
            seed = self.episode_seed[slot] = int(rng.integers(2**63 - 1))
            if self._twins is not None:
                self._twins[slot].reset(torch.Generator().manual_seed(seed))
                self._twin_rngs[slot] = np.random.default_rng(int(rng.integers(2**63 - 1)))
            generators.append(torch.Generator().manual_seed(seed))
        self.trainer.reset(list(slots), generators)
        maps = self.trainer.loss_maps(self.pool.snapshot_images, models=slots)
        losses = self.pool.patch_losses(maps)
        cfg = self.config
        k, n_probe, size = cfg.profile_length, len(self.pool.probe_rows), self.image_size
        max_columns = k * (2 if cfg.context_window else 1)
        for row, slot in enumerate(slots):
            self.step_count[slot] = 0
            self.patch_loss[slot] = losses[row]
            self.groups.restart(slot, self.patch_loss[slot])
            # The episode's loss maps are a new array: the last episode's profiles took over the old one.
            self.loss_maps[slot] = np.zeros((k, n_probe, size, size), dtype=np.float32)
            probe_maps = np.empty((n_probe, size, size), dtype=np.float32)
            self.pool.probe_maps_into(maps[row], probe_maps)
            self.display_maps[slot] = probe_maps[self.display_probe]
            self.n_snapshots[slot] = 0
            self._trackers[slot] = SeparationTracker(self.separation_labels, cfg.reward, max_columns=max_columns)
            initial = separation(
                self._reward_features(probe_maps[: self.n_labeled]), self.separation_labels, cfg.reward
            )
            self.initial_separation[slot] = self.separation[slot] = self.previous_separation[slot] = initial
            if self._twins is not None:
                # The twin starts from the agent's very weights, so its initial separation is the agent's.
                self._twin_trackers[slot] = SeparationTracker(
                    self.separation_labels, cfg.reward, max_columns=max_columns
                )
                self.twin_separation[slot] = self.previous_twin_separation[slot] = initial
            self.n_recent[slot] = 0
            self.recent_counts[slot] = 0
            self.position_counts[slot] = 0
            self.batch_loss[slot] = float(self.patch_loss[slot].mean())
            self.last_profiles[slot] = None
            self.composition[slot] = self.groups.sizes / self.groups.sizes.sum()
            self.snapshot_in_step[slot] = False
        self.levels_at_snapshot[slots] = self._levels(np.asarray(slots, dtype=np.int64))

    def compositions(self, actions: Any) -> np.ndarray:
        """Probability of each group for the next batches of every sub-environment, (N, S).

        Raises:
            IndexedActionError: An action is not one of the action space; ``index`` is the first such
                sub-environment's.
        """
        cfg = self.config
        if cfg.action_mode == "quantile":
            return self._quantile_compositions(self._admitted_of(actions))
        if cfg.action_mode in ("strata", "spatial"):
            try:
                values = np.asarray(actions, dtype=np.float64)
            except (TypeError, ValueError):
                values = None
            shape = (self.n_envs, cfg.n_groups)
            if values is not None and values.shape == shape and np.isfinite(values).all():
                if (np.abs(values) <= 1.0 + 1e-6).all():
                    logits = values / cfg.temperature + np.log(self.groups.sizes)
                    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
                    return weights / weights.sum(axis=1, keepdims=True)
        # One at a time: the discrete mode, and every batch with a bad action in it.
        return np.stack([self.composition_of(i, action) for i, action in enumerate(actions)])

    def composition_of(self, slot: int, action: Any) -> np.ndarray:
        """Probability of each group for the next batch of sub-environment ``slot``, from its action.

        Raises:
            IndexedActionError: The action is not one of the action space.
        """
        cfg = self.config
        n_groups, sizes = cfg.n_groups, self.groups.sizes
        try:
            if cfg.action_mode == "discrete":
                value = np.asarray(action)
                if value.size != 1 or not np.issubdtype(value.dtype, np.integer) or not 0 <= value.item() <= n_groups:
                    raise ValueError(
                        f"action: expected an integer in [0, {n_groups}] for Discrete({n_groups + 1}), got {action!r}"
                    )
                choice = int(value.item())
                if choice == n_groups:
                    return sizes / sizes.sum()
                composition = np.zeros(n_groups)
                composition[choice] = 1.0
                return composition
            if cfg.action_mode == "quantile":
                return self._quantile_compositions(np.array([self.admitted_patches(action)]))[0]
            value = _box_action(action, n_groups)
        except ValueError as error:
            raise IndexedActionError(slot, str(error)) from None
        logits = value / cfg.temperature + np.log(sizes)
        weights = np.exp(logits - logits.max())
        return weights / weights.sum()

    def admitted_patches(self, action: Any) -> int:
        """Quantile mode: how many of the lowest-loss pool patches an action admits to the next batches,
        ``round((a + 1) / 2 * P)`` but at least ``batch_size``; a bad action is a ValueError."""
        if self.config.action_mode != "quantile":
            raise ValueError(f"admitted_patches: the action mode is {self.config.action_mode!r}, not 'quantile'")
        share = (float(np.clip(_box_action(action, 1)[0], -1.0, 1.0)) + 1.0) / 2.0
        n_patches = self.pool.n_patches
        return int(min(n_patches, max(self.config.batch_size, round(share * n_patches))))

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One env step of every sub-environment: ``decision_interval`` batched updates, each on the
        batches its action composes (:meth:`compositions`).

        Returns:
            The rewards (N,), the terminations (N,) and the reward terms: (N,) arrays by name, as
            ``info["rewards"]`` holds them.

        Raises:
            IndexedActionError: An action is not one of the action space; every action is checked
                before any state changes.
        """
        cfg = self.config
        if cfg.action_mode == "quantile":
            self.admitted[:] = self._admitted_of(actions)
            compositions = self._quantile_compositions(self.admitted)
        else:
            compositions = self.compositions(actions)
        self.previous_separation[:] = self.separation
        self.previous_twin_separation[:] = self.twin_separation
        self.snapshot_in_step[:] = False
        self.composition[:] = compositions
        every = np.arange(self.n_envs)
        for _ in range(cfg.decision_interval):
            patch_ids = self._draw(compositions)
            per_patch = self.trainer.update(self.pool.gather(patch_ids)).cpu().numpy()
            self.last_patch_ids[:] = patch_ids
            np.put_along_axis(self.patch_loss, patch_ids, per_patch, axis=1)
            # Row by row: numpy's reduction along the last axis of (N, B) rounds differently from a row's.
            self.batch_loss[:] = [row.mean() for row in per_patch]
            if self._twins is not None:
                for slot, twin in enumerate(self._twins):
                    rng = self._twin_rngs[slot]
                    assert rng is not None  # set at reset
                    twin.update(self.pool.gather(rng.integers(0, self.pool.n_patches, size=cfg.batch_size)))
            self.step_count += 1
            # Sub-environments snapshot at the same steps unless a partial reset put them out of step.
            due = every[self._snapshot_after[self.step_count]]
            for slot in np.setdiff1d(every, due, assume_unique=True):
                self.groups.refresh(int(slot), self.patch_loss[slot])
            if due.size:
                self._snapshot(due)
        terms = self._reward_terms()
        term = REWARD_TERM[cfg.reward_baseline, cfg.reward_mode]
        terminated = self.step_count == cfg.episode_length
        for finished in np.flatnonzero(terminated).tolist():
            self.last_profiles[finished] = self.episode_profiles(finished)
        return terms[term], terminated, terms

    # ------------------------------------------------------------------ what the agent sees

    def observations(self) -> np.ndarray:
        """Every sub-environment's observation, (N, 3S + 3) float32 (layout: :mod:`nbs_gym.spaces`)."""
        cfg, layout = self.config, self.layout
        every = np.arange(self.n_envs)
        levels = self._levels(every)
        observation = np.empty((self.n_envs, layout.size))
        observation[:, layout.levels] = levels
        observation[:, layout.level_changes] = levels - self.levels_at_snapshot
        filled = np.minimum(self.n_recent, cfg.history)
        counts = self.recent_counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = counts / (filled * cfg.batch_size)[:, None]
        observation[:, layout.batch_shares] = np.where(filled[:, None] > 0, shares, 0.0)
        observation[:, layout.progress] = self.step_count / cfg.episode_length
        observation[:, layout.batch_log_loss] = np.log10(np.maximum(self.batch_loss, _LOSS_FLOOR))
        observation[:, layout.pool_log_loss] = np.log10(np.maximum(self.patch_loss.mean(axis=1), _LOSS_FLOOR))
        return np.clip(observation, -OBS_BOUND, OBS_BOUND).astype(np.float32)

    def info_fields(self, terms: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Every key of ``info`` (see the env's Info section) for all N sub-environments as arrays (N, ...),
        the reward terms in a nested dict; without ``terms``, those of a step that changed nothing."""
        fields: dict[str, Any] = {
            "step": self.step_count.copy(),
            "separation": self.separation.copy(),
            "initial_separation": self.initial_separation.copy(),
            "rewards": terms if terms is not None else self._reward_terms(),
            "ae_loss": self.batch_loss.copy(),
            "batch_composition": self.composition.astype(np.float32),
            "snapshot": self.snapshot_in_step.copy(),
            "n_snapshots": self.n_snapshots.copy(),
        }
        if self._twins is not None:
            fields["twin_separation"] = self.twin_separation.copy()
        return fields

    def episode_profiles(self, slot: int) -> LossProfiles:
        """The profiles of sub-environment ``slot``'s episode so far. They take over the episode's loss
        maps, which the next reset replaces with a new array, and share one read-only array of the probe
        images, instead of copying both."""
        probe = np.asarray(self.split.probe, dtype=np.int64)
        return LossProfiles(
            loss_maps=self.loss_maps[slot],
            snapshot_steps=np.asarray(self.config.snapshot_steps, dtype=np.int64),
            images=self.probe_images,
            probe_indices=probe,
            labeled_masks=self.labeled_masks,
            split=self.split,
            metadata={
                "config": self.config.to_dict(),
                "dataset": self.dataset_spec,
                "dataset_fingerprint": self.fingerprint,
                "episode": int(self.episode[slot]),
                "episode_seed": int(self.episode_seed[slot]),
                "separation": float(self.separation[slot]),
                "initial_separation": float(self.initial_separation[slot]),
            },
        )

    def save_profiles(self, slot: int) -> str | None:
        """Write sub-environment ``slot``'s finished episode's profiles to its folder; the path, or None."""
        folder, profiles = self.profile_dirs[slot], self.last_profiles[slot]
        if folder is None or profiles is None:
            return None
        return str(profiles.save(folder / f"episode_{int(self.episode[slot]):05d}.npz"))

    def render(self, slot: int) -> np.ndarray:
        """``rgb_array`` of ``slot``: probe image | its latest loss map | where the batches came from."""
        from matplotlib import colormaps

        image = self.images[self.split.probe[self.display_probe]]
        gray = image.mean(axis=0) if image.shape[0] == 1 else None
        panel_image = np.repeat(gray[..., None], 3, axis=2) if gray is not None else image.transpose(1, 2, 0)
        display = self.display_maps[slot]
        loss = display / max(float(display.max()), _LOSS_FLOOR)
        coverage = self.pool.coverage(self.position_counts[slot])
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

    def groups_of(self, slot: int, patch_ids: np.ndarray) -> np.ndarray:
        """The group (stratum or cell) each of the given patches of sub-environment ``slot`` is in now."""
        return self.groups.groups_of(slot, patch_ids)

    def reward_features(self, labeled_maps: np.ndarray) -> np.ndarray:
        """One snapshot's reward features of the separation pixels of L's loss maps (n_labeled, H, W):
        each pixel's loss, and with ``context_window`` the mean loss of the box around it."""
        return self._reward_features(labeled_maps)

    # ------------------------------------------------------------------ internals

    def _admitted_of(self, actions: Any) -> np.ndarray:
        """Quantile mode: :meth:`admitted_patches` of every action, (N,); names a bad one's index."""
        admitted = np.empty(len(actions), dtype=np.int64)
        for i, action in enumerate(actions):
            try:
                admitted[i] = self.admitted_patches(action)
            except ValueError as error:
                raise IndexedActionError(i, str(error)) from None
        return admitted

    def _quantile_compositions(self, admitted: np.ndarray) -> np.ndarray:
        """Quantile mode: each stratum's share of the admitted patches, (n, S), from admitted counts (n,)."""
        counts = admitted[:, None]
        return np.clip(counts - self.groups.starts.astype(np.float64), 0.0, self.groups.sizes) / counts

    def _draw(self, compositions: np.ndarray) -> np.ndarray:
        """Patch ids of every sub-environment's next batch, (N, B), each from its own generator; records
        the batches' group counts and grid positions."""
        cfg, groups = self.config, self.groups
        batch = cfg.batch_size
        patch_ids = np.empty((self.n_envs, batch), dtype=np.int64)
        counts = np.empty((self.n_envs, cfg.n_groups), dtype=np.int64)
        for slot in range(self.n_envs):
            rng, draw = self.rngs[slot], self.patch_draws[slot]
            assert rng is not None  # set at reset
            if draw is not None:
                ids = np.asarray(draw(rng, batch), dtype=np.int64)
                patch_ids[slot] = ids
                counts[slot] = np.bincount(groups.groups_of(slot, ids), minlength=cfg.n_groups)
            elif cfg.action_mode == "quantile":  # the order is sorted by loss: its first ranks are admitted
                ranks = rng.integers(0, self.admitted[slot], size=batch)
                patch_ids[slot] = groups.order[slot, ranks]
                in_group = np.searchsorted(groups.starts, ranks, side="right") - 1
                counts[slot] = np.bincount(in_group, minlength=cfg.n_groups)
            else:
                chosen = draw_groups(rng, compositions[slot], batch)
                within = rng.integers(0, groups.sizes[chosen].astype(np.int64))
                patch_ids[slot] = groups.order[slot, groups.starts[chosen] + within]
                counts[slot] = np.bincount(chosen, minlength=cfg.n_groups)
        self.recent_counts[np.arange(self.n_envs), self.n_recent % cfg.history] = counts
        self.n_recent += 1
        positions = self.pool.patch_position[patch_ids] + self.pool.n_positions * np.arange(self.n_envs)[:, None]
        self.position_counts += np.bincount(positions.ravel(), minlength=self.position_counts.size).reshape(
            self.position_counts.shape
        )
        return patch_ids

    def _snapshot(self, slots: np.ndarray) -> None:
        """Loss maps of the snapshot images under the models of ``slots``: new patch losses, the strata,
        the profiles' next column and the separation."""
        maps = self.trainer.loss_maps(self.pool.snapshot_images, models=slots.tolist())
        losses = self.pool.patch_losses(maps)
        for row, slot in enumerate(slots):
            k = self.n_snapshots[slot]
            self.patch_loss[slot] = losses[row]
            self.groups.refresh(int(slot), self.patch_loss[slot])
            probe_maps = self.loss_maps[slot][k]
            self.pool.probe_maps_into(maps[row], probe_maps)
            self.display_maps[slot] = probe_maps[self.display_probe]
            self.n_snapshots[slot] += 1
            tracker = self._trackers[slot]
            assert tracker is not None  # set at reset
            self.separation[slot] = tracker.add(self._reward_features(probe_maps[: self.n_labeled]))
            if self._twins is not None:
                twin_maps = self._twins[slot].loss_maps(self._labeled_images).cpu().numpy()
                twin_tracker = self._twin_trackers[slot]
                assert twin_tracker is not None
                self.twin_separation[slot] = twin_tracker.add(self._reward_features(twin_maps))
        self.snapshot_in_step[slots] = True
        self.levels_at_snapshot[slots] = self._levels(slots)

    def _levels(self, slots: np.ndarray) -> np.ndarray:
        means = self.groups.levels(slots, self.patch_loss[slots])
        return np.log10(np.maximum(means, _LOSS_FLOOR))

    def _reward_features(self, labeled_maps: np.ndarray) -> np.ndarray:
        return snapshot_features(labeled_maps, self.separation_pixels, self.config.context_window)

    def _reward_terms(self) -> dict[str, np.ndarray]:
        terminated = self.step_count == self.config.episode_length
        gain = self.separation - self.previous_separation
        terms = {"separation_gain": gain, "final_separation": np.where(terminated, self.separation, 0.0)}
        if self._twins is not None:
            twin_gain = self.twin_separation - self.previous_twin_separation
            terms["twin_separation_gain"] = twin_gain
            terms["paired_gain"] = gain - twin_gain
            terms["final_paired_separation"] = np.where(terminated, self.separation - self.twin_separation, 0.0)
        return terms


class IndexedActionError(ValueError):
    """A bad action, with the index of the sub-environment whose action it is."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def _box_action(action: Any, size: int) -> np.ndarray:
    value = np.asarray(action, dtype=np.float64)
    if value.shape != (size,):
        raise ValueError(f"action: expected shape ({size},) in [-1, 1], got shape {value.shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"action: expected finite values in [-1, 1] of shape ({size},), got {value}")
    if (np.abs(value) > 1.0 + 1e-6).any():
        raise ValueError(f"action: expected values in [-1, 1] of shape ({size},), got {value}")
    return value


class EngineSlot:
    """The public accessors of one sub-environment of an :class:`EpisodeEngine`.

    The single env is slot 0 of an engine of one; the vector env's ``envs[i]`` is slot ``i`` of its
    engine. Samplers that read the pool (the per-patch rules of :mod:`agents.published`, the ``oracle``)
    use these.
    """

    engine: EpisodeEngine
    slot: int

    @property
    def config(self) -> EnvConfig:
        return self.engine.config

    @property
    def split(self) -> SemiSupervisedSplit:
        return self.engine.split

    @property
    def image_size(self) -> int:
        return self.engine.image_size

    @property
    def dataset_spec(self) -> str:
        return self.engine.dataset_spec

    @property
    def layout(self) -> ObservationLayout:
        return self.engine.layout

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def profile_dir(self) -> Path | None:
        """Where this sub-environment writes each finished episode's profiles (None: nowhere)."""
        return self.engine.profile_dirs[self.slot]

    @profile_dir.setter
    def profile_dir(self, folder: str | os.PathLike[str] | None) -> None:
        self.engine.profile_dirs[self.slot] = Path(folder) if folder is not None else None

    @property
    def last_profiles(self) -> LossProfiles | None:
        """The profiles of the last finished episode (None before one finishes, and after a reset)."""
        return self.engine.last_profiles[self.slot]

    def batch_composition(self, action: Any) -> np.ndarray:
        """Probability of each group for the next batch, from an action; a bad action is a ValueError."""
        try:
            return self.engine.composition_of(self.slot, action)
        except IndexedActionError as error:
            raise ValueError(str(error)) from None

    def admitted_patches(self, action: Any) -> int:
        """Quantile mode: how many of the lowest-loss pool patches an action admits to the next batches,
        ``round((a + 1) / 2 * P)`` but at least ``batch_size``; a bad action is a ValueError."""
        return self.engine.admitted_patches(action)

    @property
    def patch_windows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each pool patch (by patch id) lies: its image's index in the dataset, its top row and its
        left column. A patch is ``patch_size`` pixels square."""
        pool = self.engine.pool
        return pool.snapshot_index[pool.patch_image], pool.patch_y.copy(), pool.patch_x.copy()

    def set_patch_draw(self, draw: PatchDraw | None) -> None:
        """Draw every batch with ``draw(np_random, batch_size)`` (patch ids, see :attr:`patch_windows`)
        instead of the action's composition; ``None`` restores the composition's draw.

        For samplers that choose patch by patch rather than group by group: the published per-patch
        rules of :mod:`agents.published`, which read :attr:`patch_losses` and :attr:`progress`, and the
        ``oracle``. The env's own ``np_random`` is passed, so an episode stays a function of its seed. A
        sampler that chooses patches by what the agent cannot observe (the masks, as the ``oracle`` does)
        is a reference for what batch composition can buy, never a result of a labeled-only method.
        """
        self.engine.patch_draws[self.slot] = draw

    @property
    def patch_losses(self) -> np.ndarray:
        """The current loss estimate of every pool patch, by patch id (see :attr:`patch_windows`); read-only.

        A patch's estimate is its loss at the latest snapshot of the loss maps, or in the latest batch
        that held it when that came later: the label-free signal the strata are cut from, and the one
        the per-patch rules of :mod:`agents.published` read from their draw (:meth:`set_patch_draw`).
        """
        view = self.engine.patch_loss[self.slot].view()
        view.flags.writeable = False
        return view

    @property
    def strata(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Loss-strata modes: the pool's patch ids sorted by current loss, lowest first, and the first
        place of each stratum in that order (copies); ``None`` in the spatial mode."""
        groups = self.engine.groups
        if not groups.sorted_by_loss:
            return None
        return groups.order[self.slot].copy(), groups.starts.copy()

    def groups_of(self, patch_ids: np.ndarray) -> np.ndarray:
        """The group (stratum or cell) each of the given patches is in now."""
        return self.engine.groups_of(self.slot, np.asarray(patch_ids, dtype=np.int64))

    @property
    def last_patch_ids(self) -> np.ndarray:
        """Patch ids of the latest update's batch (a copy; empty before the first update of an episode)."""
        if self.engine.step_count[self.slot] == 0:
            return np.empty(0, dtype=np.int64)
        return self.engine.last_patch_ids[self.slot].copy()

    @property
    def progress(self) -> float:
        """Updates done this episode over ``episode_length``, in [0, 1] (the observation's progress entry)."""
        return int(self.engine.step_count[self.slot]) / self.config.episode_length

    @property
    def separation(self) -> float:
        """Current separation S_t of L's profiles (the reward's potential)."""
        return float(self.engine.separation[self.slot])

    @property
    def episode_loss_maps(self) -> np.ndarray:
        """The probe images' loss maps of the episode so far, (profile_length, probes, H, W), read-only;
        snapshots not yet taken are zeros. The labeled images come first."""
        view = self.engine.loss_maps[self.slot].view()
        view.flags.writeable = False
        return view

    def render(self) -> np.ndarray | None:
        """``rgb_array``: probe image | its latest loss map | where the batches came from (pool average)."""
        return self.engine.render(self.slot)
