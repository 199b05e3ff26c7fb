"""Seconds to generate each synthetic category, against one episode of the default env on its data.

Generation runs once per process (``load_dataset`` is called once per run and shared by its envs), so
what matters is its share of a run's fixed cost: the printed ratio is generation time over the time of
one uniform-sampling episode of ``nbs_gym/NeuralBatchSampling-v0`` on the same machine, in the same run.

    python benchmarks/data_generation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.data import load_dataset
from nbs_gym.data.synthetic import SYNTHETIC_CATEGORIES


def seconds(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def episode(env: gym.Env) -> None:
    env.reset(seed=0)
    action, terminated = np.zeros(env.action_space.shape, np.float32), False
    while not terminated:
        terminated = env.step(action)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    args = parser.parse_args()
    env = gym.make("nbs_gym/NeuralBatchSampling-v0", device="cpu")
    episode(env)  # warm-up
    reference = seconds(lambda: episode(env), args.repeats)
    print(f"one v0 episode (200 updates, uniform): {reference:.2f} s")
    print(f"{'dataset':<12} {'seconds':>8} {'ratio to an episode':>20}")
    for category in SYNTHETIC_CATEGORIES:
        spec = f"synthetic:{category}"
        took = seconds(lambda spec=spec: load_dataset(spec), args.repeats)
        print(f"{category:<12} {took:8.3f} {took / reference:20.3f}")


if __name__ == "__main__":
    main()
