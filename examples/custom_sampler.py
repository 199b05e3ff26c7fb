"""A custom batch sampler through the plug-in protocol, trained and evaluated by ``nbs_gym.train``.

    python examples/custom_sampler.py

The class below needs no base class: SB3's surface (``learn``, ``predict``, ``save``, ``load``) is the
whole contract (see :mod:`agents.protocol`). ``--agent custom_sampler:SlowLearnerSampler`` imports it
because this script's folder is on ``sys.path``; from anywhere else, use its importable module path.
The settings are tiny so that the example finishes in well under a minute on a laptop CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from nbs_gym.train import main


class SlowLearnerSampler:
    """Favour the groups whose loss fell least since the previous snapshot.

    Normal texture is learnt quickly; patches that stay hard to reconstruct are where defects hide.
    Reads observation entries ``S .. 2S-1`` (the change of each group's log-loss level).

    Args:
        env: The env whose action space the sampler acts in (strata or spatial mode).
        seed: Unused: the rule is deterministic.
        strength: Largest action magnitude, in ``[0, 1]``.
    """

    action_modes = ("strata", "spatial")
    file_suffix = ".json"

    def __init__(self, env: Any, seed: int | None = None, strength: float = 1.0) -> None:
        self.action_space = env.action_space
        self.n_groups = int(self.action_space.shape[0])
        self.strength = float(strength)
        self.num_timesteps = 0

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> SlowLearnerSampler:
        return self  # a fixed rule: nothing to learn

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        change = np.asarray(observation, dtype=np.float32)[..., self.n_groups : 2 * self.n_groups]
        centred = change - change.mean(axis=-1, keepdims=True)
        scale = np.maximum(np.abs(centred).max(axis=-1, keepdims=True), 1e-6)
        return (self.strength * centred / scale).astype(np.float32), state

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps({"n_groups": self.n_groups, "strength": self.strength}))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None) -> SlowLearnerSampler:
        record = json.loads(Path(path).read_text())
        if env is None:
            box = spaces.Box(-1.0, 1.0, (record["n_groups"],), dtype=np.float32)
            env = type("Spaces", (), {"action_space": box})
        return cls(env, strength=record["strength"])


if __name__ == "__main__":
    raise SystemExit(
        main(
            [
                "--agent", "custom_sampler:SlowLearnerSampler",
                "--hyperparams", "strength=0.8",
                "--env-kwargs", "episode_length=40", "profile_length=5", "image_size=32", "patch_size=8",
                "--classifier-kwargs", "kind=per_pixel",
            ]
        )
    )  # fmt: skip
