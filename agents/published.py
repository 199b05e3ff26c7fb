"""Published batch-selection rules as built-in samplers, each choosing every batch patch by patch.

They are the hand-made rules a learned sampler has to beat. Each reads the env's current loss estimate
of every pool patch (:attr:`~nbs_gym.env.NeuralBatchSamplingEnv.patch_losses`: a patch's loss at the
latest snapshot, or in the latest batch that held it), never a mask of E:

==================  ===============================================  =========================================
name                rule, after                                      signal it reads
==================  ===============================================  =========================================
``loss_rank``       online batch selection (Loshchilov & Hutter,     the rank of each patch's latest loss
                    2015): a patch's selection probability decays
                    exponentially with the rank of its latest loss,
                    highest loss first
``reducible_loss``  RHO-LOSS (Mindermann et al., 2022): of a         latest loss minus the loss under a
                    uniform candidate set ``candidates`` times the   reference autoencoder trained on L's
                    batch, train on the patches of highest           normal images (the labeled set's, which
                    reducible loss                                   the reward also reads; E's never)
``self_paced``      self-paced learning (Kumar, Packer & Koller,     the latest loss against a threshold that
                    2010): train only on patches whose loss is       rises over the episode
                    under a threshold that rises over the episode
==================  ===============================================  =========================================

Like the ``oracle`` they act through the env's patch draw
(:meth:`~nbs_gym.env.NeuralBatchSamplingEnv.set_patch_draw`), installed by :meth:`PatchRuleSampler.prepare_env`,
which ``nbs_gym.train`` calls with each evaluation env; their actions are uniform's, so they run in every
action mode. Driving an env by hand::

    env = gym.make("nbs_gym/NeuralBatchSampling-v1")
    sampler = make_agent("loss_rank", env)
    sampler.prepare_env(env)
    observation, _ = env.reset(seed=0)
    ...  # step with sampler.predict(observation)[0] as with any sampler

Deviations from the papers, where the env differs from supervised classification: the "loss" is a
patch's reconstruction error; ``reducible_loss``'s reference model is trained on the labeled normal
images (the only images known to be defect-free in this semi-supervised setting) rather than on a
held-out share of the training images, which in the v1 task are contaminated; ``self_paced``'s threshold
is a quantile of the current patch losses (a share of the pool that grows from ``start_share`` to
``end_share``), so that it needs no loss scale per dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.baselines import HasSpaces, UniformSampler, env_dataset, window_sums
from nbs_gym.autoencoder import AutoencoderTrainer
from nbs_gym.data import AnomalyDataset
from nbs_gym.env import PatchDraw

__all__ = ["LossRankSampler", "PatchRuleSampler", "ReducibleLossSampler", "SelfPacedSampler", "lowest_loss_draw"]


class PatchRuleSampler(UniformSampler):
    """Common part of the per-patch rules: uniform actions, a patch draw installed by :meth:`prepare_env`."""

    name = ""

    def prepare_env(self, env: Any, dataset: AnomalyDataset | None = None) -> None:
        """Make ``env`` (a :class:`~nbs_gym.env.NeuralBatchSamplingEnv`, possibly wrapped) draw by the rule.

        Args:
            env: The env.
            dataset: Its dataset, when already loaded (only ``reducible_loss`` reads it).
        """
        base = env.unwrapped
        base.set_patch_draw(self.patch_draw(base, dataset))

    def patch_draw(self, env: Any, dataset: AnomalyDataset | None) -> PatchDraw:
        """The draw ``(rng, batch_size) -> patch ids`` of the rule on the unwrapped ``env``."""
        raise NotImplementedError


class LossRankSampler(PatchRuleSampler):
    """Online batch selection by loss rank (Loshchilov & Hutter, 2015, "Online batch selection for faster
    training of neural networks").

    The pool's ``N`` patches are ranked by their latest loss, highest first (rank 0); each batch patch is
    drawn with probability proportional to ``exp(-log(selection_pressure) * rank / N)``, so the
    highest-loss patch is about ``selection_pressure`` times as likely as the lowest-loss one.

    Args:
        env: The env whose spaces the sampler acts in.
        seed: Unused (the draws come from the env's ``np_random``).
        selection_pressure: ``s_e`` of the paper, at least 1 (1 is uniform sampling); the paper's
            experiments found values around 100 best.
    """

    name = "loss_rank"

    def __init__(self, env: HasSpaces, seed: int | None = None, selection_pressure: float = 100.0) -> None:
        super().__init__(env, seed)
        if isinstance(selection_pressure, bool) or not isinstance(selection_pressure, (int, float)):
            raise ValueError(f"loss_rank: selection_pressure must be a number >= 1, got {selection_pressure!r}")
        if not 1.0 <= selection_pressure < float("inf"):
            raise ValueError(f"loss_rank: selection_pressure must be a number >= 1, got {selection_pressure!r}")
        self.selection_pressure = float(selection_pressure)

    def params(self) -> dict[str, Any]:
        return {"selection_pressure": self.selection_pressure}

    def rank_probabilities(self, n_patches: int) -> np.ndarray:
        """Selection probability of each rank ``0 .. n_patches - 1`` (rank 0: the highest loss)."""
        weights = np.exp(-np.log(self.selection_pressure) * np.arange(n_patches) / n_patches)
        return weights / weights.sum()

    def patch_draw(self, env: Any, dataset: AnomalyDataset | None) -> PatchDraw:
        probabilities = self.rank_probabilities(len(env.patch_losses))

        def draw(rng: np.random.Generator, batch: int) -> np.ndarray:
            by_loss = np.argsort(-env.patch_losses, kind="stable")  # highest loss first; ties by patch id
            return by_loss[rng.choice(len(by_loss), size=batch, p=probabilities)]

        return draw


class SelfPacedSampler(PatchRuleSampler):
    """Self-paced learning (Kumar, Packer & Koller, 2010, "Self-paced learning for latent variable models").

    Only the easy patches are trained on: those whose latest loss is under a threshold, the
    ``share``-quantile of the pool's current losses, with ``share`` rising linearly over the episode from
    ``start_share`` to ``end_share``. Each batch patch is drawn uniformly from them.

    Args:
        env: The env whose spaces the sampler acts in.
        seed: Unused (the draws come from the env's ``np_random``).
        start_share: Share of the pool admitted at the first update, in (0, 1].
        end_share: Share admitted at the last update, in [start_share, 1].
    """

    name = "self_paced"

    def __init__(
        self, env: HasSpaces, seed: int | None = None, start_share: float = 0.5, end_share: float = 1.0
    ) -> None:
        super().__init__(env, seed)
        for key, value in (("start_share", start_share), ("end_share", end_share)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"self_paced: {key} must be a number in (0, 1], got {value!r}")
        if end_share < start_share:
            raise ValueError(f"self_paced: end_share ({end_share}) must be >= start_share ({start_share})")
        self.start_share, self.end_share = float(start_share), float(end_share)

    def params(self) -> dict[str, Any]:
        return {"start_share": self.start_share, "end_share": self.end_share}

    def admitted(self, progress: float, n_patches: int) -> int:
        """How many of the lowest-loss patches are admitted at ``progress`` (updates done / episode length)."""
        share = self.start_share + (self.end_share - self.start_share) * min(max(progress, 0.0), 1.0)
        return max(1, int(np.ceil(share * n_patches)))

    def patch_draw(self, env: Any, dataset: AnomalyDataset | None) -> PatchDraw:
        return lowest_loss_draw(env, self.admitted)


def lowest_loss_draw(env: Any, admitted: Callable[[float, int], int]) -> PatchDraw:
    """Every batch patch drawn uniformly from the lowest-loss patches of the unwrapped ``env``'s pool, as
    many as ``admitted(progress, n_patches)`` says at the time of the draw (self-paced learning's draw)."""

    def draw(rng: np.random.Generator, batch: int) -> np.ndarray:
        losses = env.patch_losses
        easy = np.argsort(losses, kind="stable")[: admitted(env.progress, len(losses))]
        return easy[rng.integers(0, len(easy), size=batch)]

    return draw


class ReducibleLossSampler(PatchRuleSampler):
    """A reducible-loss rule after RHO-LOSS (Mindermann et al., 2022, "Prioritized training on points that
    are learnable, worth learning, and not yet learnt").

    Before the first episode, a reference autoencoder (the env's architecture and learning rate, fresh
    weights) trains for ``reference_updates`` Adam updates on uniform batches of patches of L's normal
    images; its loss on every pool patch is that patch's *irreducible loss* (:attr:`irreducible_losses`).
    Each batch is then chosen as RHO-LOSS chooses: ``candidates x batch_size`` patches drawn uniformly
    without replacement, and of them the ``batch_size`` of highest reducible loss, the latest loss minus
    the irreducible one. A patch the reference cannot reconstruct either (a defect unlike every normal
    image) has a low reducible loss and is seldom trained on.

    Args:
        env: The env whose spaces the sampler acts in.
        seed: Seed of the reference autoencoder's weights and batches (``None``: 0).
        candidates: Candidate set size over the batch size, at least 1 (the paper's 10; 1 is uniform).
        reference_updates: Updates of the reference autoencoder; ``None``: the env's episode length.

    Raises:
        ValueError: (from :meth:`prepare_env`) L holds no normal image.
    """

    name = "reducible_loss"

    def __init__(
        self, env: HasSpaces, seed: int | None = None, candidates: int = 10, reference_updates: int | None = None
    ) -> None:
        super().__init__(env, seed)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"reducible_loss: candidates must be an integer >= 1, got {candidates!r}")
        if reference_updates is not None and (
            isinstance(reference_updates, bool) or not isinstance(reference_updates, int) or reference_updates < 1
        ):
            raise ValueError(f"reducible_loss: reference_updates must be an integer >= 1, got {reference_updates!r}")
        self.candidates = candidates
        self.reference_updates = reference_updates
        self.irreducible_losses: np.ndarray | None = None
        """Each pool patch's loss under the reference autoencoder, set by :meth:`prepare_env`."""

    def params(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "reference_updates": self.reference_updates}

    def patch_draw(self, env: Any, dataset: AnomalyDataset | None) -> PatchDraw:
        irreducible = self.reference_losses(env, env_dataset(env, dataset))
        self.irreducible_losses = irreducible

        def draw(rng: np.random.Generator, batch: int) -> np.ndarray:
            n_patches = len(irreducible)
            ids = rng.choice(n_patches, size=min(n_patches, self.candidates * batch), replace=False)
            reducible = env.patch_losses[ids] - irreducible[ids]
            return ids[np.argsort(-reducible, kind="stable")[:batch]]

        return draw

    def reference_losses(self, env: Any, dataset: AnomalyDataset) -> np.ndarray:
        """Train the reference autoencoder on L's normal images; its loss on every pool patch (by patch id).

        Raises:
            ValueError: L holds no normal image.
        """
        cfg = env.config
        labeled = np.asarray(env.split.labeled, dtype=np.int64)
        normal = labeled[~dataset.masks[labeled].any(axis=(1, 2))]
        if not normal.size:
            raise ValueError(
                "reducible_loss: the labeled set L holds no normal image to train the reference autoencoder on; "
                "set n_labeled_normal >= 1"
            )
        seed = 0 if self.seed is None else int(self.seed)
        trainer = AutoencoderTrainer(dataset.channels, cfg.autoencoder)
        trainer.reset(torch.Generator().manual_seed(seed))
        rng = np.random.default_rng(seed)
        size, stride = cfg.patch_size, cfg.stride
        offsets = np.arange(0, dataset.image_size - size + 1, stride)
        images = torch.as_tensor(dataset.images[normal], device=trainer.device)
        span = torch.arange(size, device=trainer.device)
        for _ in range(self.reference_updates or cfg.episode_length):
            image = torch.as_tensor(rng.integers(0, len(normal), size=cfg.batch_size), device=trainer.device)
            top = torch.as_tensor(rng.choice(offsets, size=cfg.batch_size), device=trainer.device)
            left = torch.as_tensor(rng.choice(offsets, size=cfg.batch_size), device=trainer.device)
            rows, cols = top[:, None] + span, left[:, None] + span
            patches = images[image[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
            trainer.update(patches)
        patch_image, patch_top, patch_left = env.patch_windows
        pool_images, image_row = np.unique(patch_image, return_inverse=True)
        maps = trainer.loss_maps(torch.as_tensor(dataset.images[pool_images], device=trainer.device))
        maps_host = maps.cpu().numpy().astype(np.float64)
        return window_sums(maps_host, image_row, patch_top, patch_left, size) / (size * size)
