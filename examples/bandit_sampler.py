"""A custom batch sampler that learns by stepping its env: an epsilon-greedy bandit over fixed compositions.

    python examples/bandit_sampler.py            # 16 episodes of 40 updates on 32x32 images: ~30 s on a laptop CPU
    python examples/bandit_sampler.py --quick    # 8 episodes of 20 updates: ~10 s

Each episode the sampler plays one arm, a fixed action, for the whole episode, and keeps the mean return
of each arm; with probability ``epsilon`` it plays a random arm, else the best so far (every arm is
played once first). ``predict`` acts with the best arm. It needs no base class: ``nbs_gym.train`` hands
a plug-in a Gymnasium env (in SB3's ``Monitor``), and ``learn`` drives it with ``reset`` and the 5-tuple
``step`` as any Gymnasium loop does (see :mod:`agents.protocol`). ``--resume`` continues from the saved
arm statistics and random state.

In the strata mode the arms are uniform sampling and "the k lowest-loss strata only" for each k; in the
quantile mode, admitted shares of a quarter, a half, three quarters and all of the pool.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nbs_gym import train
from nbs_gym.io import write_text_atomic
from nbs_gym.tasks import DEFAULT_ENV_ID, task_config

SETTINGS = ["episode_length=40", "profile_length=5", "image_size=32", "patch_size=8"]
QUICK = ["episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8"]


class EpsilonGreedyBandit:
    """Play one fixed action per episode; learn the mean return of each; act with the best.

    Args:
        env: A Gymnasium env of the strata or quantile action mode (one env: ``--n-envs 1``).
        seed: Seed of the arm draws.
        epsilon: Probability of a random arm once every arm has been played.
    """

    action_modes = ("strata", "quantile")
    file_suffix = ".json"

    def __init__(self, env: Any, seed: int | None = None, epsilon: float = 0.2) -> None:
        if hasattr(env, "num_envs"):
            raise ValueError("EpsilonGreedyBandit steps one env: run it with --n-envs 1")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon: expected a probability in [0, 1], got {epsilon}")
        self.env, self.epsilon, self.num_timesteps = env, float(epsilon), 0
        n = int(env.action_space.shape[0])
        if n == 1:  # quantile mode: admitted share q = (a + 1) / 2; the last arm (q = 1) is uniform
            self.arms = [np.array([2.0 * q - 1.0], np.float32) for q in (0.25, 0.5, 0.75, 1.0)]
        else:  # strata mode, lowest loss first: uniform first, then the k lowest strata for k = 1 .. n-1
            lowest = [np.where(np.arange(n) < k, 1.0, -1.0).astype(np.float32) for k in range(1, n)]
            self.arms = [np.zeros(n, np.float32), *lowest]
        self.uniform_arm = len(self.arms) - 1 if n == 1 else 0
        self.sums, self.counts = np.zeros(len(self.arms)), np.zeros(len(self.arms), np.int64)
        self.rng = np.random.default_rng(seed)

    def choose(self) -> int:
        """The arm of the next episode: an unplayed one, a random one (epsilon) or the best so far."""
        if (self.counts == 0).any():
            return int(np.flatnonzero(self.counts == 0)[0])
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(len(self.arms)))
        return self.best()

    def best(self) -> int:
        return int(np.argmax(np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), -np.inf)))

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> EpsilonGreedyBandit:
        end = self.num_timesteps + total_timesteps
        while self.num_timesteps < end:
            arm, episode_return, done = self.choose(), 0.0, False
            self.env.reset()
            while not done and self.num_timesteps < end:
                _, reward, terminated, truncated, _ = self.env.step(self.arms[arm])
                episode_return, done = episode_return + float(reward), terminated or truncated
                self.num_timesteps += 1
            if done:  # an episode cut short by the step budget teaches nothing
                self.sums[arm] += episode_return
                self.counts[arm] += 1
        return self

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        batch = np.ndim(observation) == 2
        action = self.arms[self.best() if self.counts.any() else self.uniform_arm]
        return (np.tile(action, (len(observation), 1)) if batch else action.copy()), state

    def save(self, path: str | os.PathLike[str]) -> None:
        record = {"epsilon": self.epsilon, "num_timesteps": self.num_timesteps, "sums": self.sums.tolist()}
        record |= {"counts": self.counts.tolist(), "rng": self.rng.bit_generator.state}
        write_text_atomic(path, json.dumps(record))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None) -> EpsilonGreedyBandit:
        if env is None:
            raise ValueError("EpsilonGreedyBandit.load needs the env it acts in (its arms come from the action space)")
        record = json.loads(Path(path).read_text())
        sampler = cls(env, epsilon=record["epsilon"])
        if len(record["sums"]) != len(sampler.arms):
            saved, arms = len(record["sums"]), len(sampler.arms)
            raise ValueError(f"{path}: {saved} arms saved, the env's action space gives {arms}")
        sampler.num_timesteps = int(record["num_timesteps"])
        sampler.sums, sampler.counts = np.asarray(record["sums"], float), np.asarray(record["counts"], np.int64)
        sampler.rng.bit_generator.state = record["rng"]
        return sampler


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate the bandit with ``nbs_gym.train``; returns its exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    parser.add_argument("--run-dir", help="run directory (default: runs/<agent>__<dataset>__<seed>__<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else SETTINGS
    values = {key: int(value) for key, _, value in (item.partition("=") for item in settings)}
    steps = task_config(DEFAULT_ENV_ID, **values).n_steps  # env steps per episode
    command = ["--agent", "bandit_sampler:EpsilonGreedyBandit", "--timesteps", str((8 if args.quick else 16) * steps)]
    command += ["--env-kwargs", *settings, "--classifier-kwargs", "kind=per_pixel", "--checkpoint-freq", str(2 * steps)]
    command += ["--device", "cpu", "--no-progress"] if args.quick else []
    command += ["--run-dir", args.run_dir] if args.run_dir else []
    return train.main(["--resume", args.resume] if args.resume else command)


if __name__ == "__main__":
    raise SystemExit(main())
