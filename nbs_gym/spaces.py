"""The observation layout and the action and observation spaces of the env, defined once.

The env builds its observation with :meth:`ObservationLayout.assemble` and its spaces with
:meth:`ObservationLayout.observation_space` and :func:`action_space`; samplers that read the observation
(the built-in rules, a plug-in) take the layout back from the observation space with
:meth:`ObservationLayout.of` rather than counting entries themselves. With S groups (loss strata, or
the cells of the spatial grid) the observation is ``3 * S + 3`` float32 entries, clipped to
``[-OBS_BOUND, OBS_BOUND]``:

==========================  =====================================================================
``levels``      (S)         each group's mean log10 loss
``level_changes`` (S)       its change since the previous snapshot
``batch_shares``  (S)       the share of each group in the recent batches
``progress``                updates done / episode length
``batch_log_loss``          log10 of the last batch's training loss
``pool_log_loss``           log10 of the pool's mean patch loss
==========================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["OBS_BOUND", "ObservationLayout", "action_space"]

OBS_BOUND = 20.0
"""Every observation entry is clipped to ``[-OBS_BOUND, OBS_BOUND]``."""


@dataclass(frozen=True)
class ObservationLayout:
    """Where each quantity sits in the observation of an env with ``n_groups`` groups."""

    n_groups: int

    @classmethod
    def of(cls, observation_space: Any) -> ObservationLayout:
        """The layout of an env's (single) observation space.

        Raises:
            ValueError: The space is not a flat Box of ``3 * S + 3`` entries, S >= 1.
        """
        shape = getattr(observation_space, "shape", None)
        if shape is None or len(shape) != 1 or shape[0] < 6 or shape[0] % 3:
            raise ValueError(f"expected an observation of shape (3 * S + 3,) with S >= 1, got {shape}")
        return cls(shape[0] // 3 - 1)

    @property
    def size(self) -> int:
        return 3 * self.n_groups + 3

    @property
    def levels(self) -> slice:
        return slice(0, self.n_groups)

    @property
    def level_changes(self) -> slice:
        return slice(self.n_groups, 2 * self.n_groups)

    @property
    def batch_shares(self) -> slice:
        return slice(2 * self.n_groups, 3 * self.n_groups)

    @property
    def progress(self) -> int:
        return 3 * self.n_groups

    @property
    def batch_log_loss(self) -> int:
        return 3 * self.n_groups + 1

    @property
    def pool_log_loss(self) -> int:
        return 3 * self.n_groups + 2

    def observation_space(self) -> spaces.Box:
        return spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(self.size,), dtype=np.float32)

    def assemble(
        self,
        levels: np.ndarray,
        level_changes: np.ndarray,
        batch_shares: np.ndarray,
        progress: float,
        batch_log_loss: float,
        pool_log_loss: float,
    ) -> np.ndarray:
        """One observation from its parts, clipped and as float32."""
        observation = np.concatenate([levels, level_changes, batch_shares, [progress, batch_log_loss, pool_log_loss]])
        if observation.shape != (self.size,):
            raise ValueError(f"observation parts: expected {self.size} entries in all, got {observation.shape[0]}")
        return np.clip(observation, -OBS_BOUND, OBS_BOUND).astype(np.float32)


def action_space(action_mode: str, n_groups: int) -> spaces.Space[Any]:
    """The action space of ``action_mode`` over ``n_groups`` groups.

    ``strata`` and ``spatial``: a Box of one weight per group in ``[-1, 1]``; ``quantile``: a Box of one
    entry (the admitted share is ``(a + 1) / 2``); ``discrete``: ``Discrete(S + 1)`` (one group, or
    uniform sampling).
    """
    if action_mode == "discrete":
        return spaces.Discrete(n_groups + 1)
    if action_mode == "quantile":
        return spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    if action_mode in ("strata", "spatial"):
        return spaces.Box(-1.0, 1.0, shape=(n_groups,), dtype=np.float32)
    raise ValueError(f"action_mode: expected strata, spatial, quantile or discrete, got {action_mode!r}")
