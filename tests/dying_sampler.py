"""A plug-in for the Ray backend's fault tests: the example bandit, whose process dies once on cue.

``die_at=N`` kills the process running it (SIGKILL: no Python cleanup, as under the OOM killer or a lost
node) when it starts an episode at or past N env steps, unless the file ``marker`` exists; it creates
the file first, so that the run Ray retries lives. ``fail_with=TEXT`` raises a ``ValueError`` instead,
as a run whose settings are wrong does. A resumed bandit is loaded with neither.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from bandit_sampler import EpsilonGreedyBandit


class DyingBandit(EpsilonGreedyBandit):
    def __init__(
        self,
        env: Any,
        seed: int | None = None,
        epsilon: float = 0.2,
        die_at: int = -1,
        marker: str = "",
        fail_with: str = "",
    ) -> None:
        super().__init__(env, seed=seed, epsilon=epsilon)
        self.die_at, self.marker, self.fail_with = die_at, marker, fail_with

    def choose(self) -> int:
        if self.fail_with:
            raise ValueError(self.fail_with)
        if 0 <= self.die_at <= self.num_timesteps and not Path(self.marker).exists():
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().choose()
