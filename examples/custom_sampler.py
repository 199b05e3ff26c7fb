"""A custom batch sampler through the plug-in protocol, trained and evaluated by ``nbs_gym.train``.

    python examples/custom_sampler.py            # 40-step episodes on 32x32 images: ~10 s on a laptop CPU
    python examples/custom_sampler.py --quick    # 20-step episodes: ~5 s

The class below needs no base class: SB3's surface (``learn``, ``predict``, ``save``, ``load``) is the
whole contract (see :mod:`agents.protocol`). ``--agent custom_sampler:SlowLearnerSampler`` imports it
because this script's folder is on ``sys.path``; from anywhere else, use its importable module path.
The sampler follows a fixed rule, so training is a no-op; the run evaluates it against uniform sampling.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from nbs_gym import train
from nbs_gym.io import write_text_atomic
from nbs_gym.spaces import ObservationLayout

SETTINGS = ["episode_length=40", "profile_length=5", "image_size=32", "patch_size=8"]
QUICK = ["episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8"]


class SlowLearnerSampler:
    """Favour the groups whose loss fell least since the previous snapshot.

    Normal texture is learnt quickly; patches that stay hard to reconstruct are where defects hide.
    Reads the observation's ``level_changes`` (the change of each group's log-loss level since the
    previous snapshot; :class:`nbs_gym.spaces.ObservationLayout` says where each entry is).

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
        self.changes = ObservationLayout(self.n_groups).level_changes
        self.strength = float(strength)
        self.num_timesteps = 0

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> SlowLearnerSampler:
        return self  # a fixed rule: nothing to learn

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        change = np.asarray(observation, dtype=np.float32)[..., self.changes]
        centred = change - change.mean(axis=-1, keepdims=True)
        scale = np.maximum(np.abs(centred).max(axis=-1, keepdims=True), 1e-6)
        return (self.strength * centred / scale).astype(np.float32), state

    def save(self, path: str | os.PathLike[str]) -> None:
        write_text_atomic(path, json.dumps({"n_groups": self.n_groups, "strength": self.strength}))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None) -> SlowLearnerSampler:
        record = json.loads(Path(path).read_text())
        if env is None:
            box = spaces.Box(-1.0, 1.0, (record["n_groups"],), dtype=np.float32)
            env = type("Spaces", (), {"action_space": box})
        return cls(env, strength=record["strength"])


def main(argv: list[str] | None = None) -> int:
    """Train (a no-op) and evaluate the sampler with ``nbs_gym.train``; returns its exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    parser.add_argument("--run-dir", help="run directory (default: runs/<agent>__<dataset>__<seed>__<time>)")
    args = parser.parse_args(argv)
    command = ["--agent", "custom_sampler:SlowLearnerSampler", "--hyperparams", "strength=0.8"]
    command += ["--env-kwargs", *(QUICK if args.quick else SETTINGS), "--classifier-kwargs", "kind=per_pixel"]
    command += ["--device", "cpu", "--no-progress"] if args.quick else []
    command += ["--run-dir", args.run_dir] if args.run_dir else []
    return train.main(command)


if __name__ == "__main__":
    raise SystemExit(main())
