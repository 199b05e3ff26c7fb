"""Signal-to-noise of the reward: can an agent tell fixed batch compositions apart from one episode's return?

Runs whole episodes with constant actions (weights over the loss strata, lowest loss first) on the same
env seeds, once with the plain reward (``reward_baseline="none"``, return ``S_T - S_0``) and once with
the uniform twin (``reward_baseline="uniform_twin"``, return ``S_T - S_T^twin``), and prints per
composition the mean return and its standard deviation over seeds. The signal-to-noise ratio of a
reward is

    SNR = (mean return of the best fixed composition - mean return of uniform) / (sd of the best's return)

the gap an agent is to find, in units of the noise one episode's return carries. The last column is
the wall time per env step, so that the twin's cost is read off the same run.

    python benchmarks/reward_snr.py --seeds 0 1 2 3 4 --env-kwargs episode_length=1000
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import yaml

from nbs_gym.env import NeuralBatchSamplingEnv

COMPOSITIONS: dict[str, tuple[float, ...]] = {
    "uniform": (0, 0, 0, 0, 0),
    "no_top": (1, 1, 1, 1, -1),
    "bottom": (1, -1, -1, -1, -1),
    "middle": (-1, 1, 1, 1, -1),
    "top": (-1, -1, -1, -1, 1),
}
BASELINES = ("none", "uniform_twin")


def episode_return(env: NeuralBatchSamplingEnv, seed: int, action: np.ndarray) -> tuple[float, float]:
    """The return of one episode with a constant action, and the seconds per env step it took."""
    env.reset(seed=seed)
    start, steps, total, terminated = time.perf_counter(), 0, 0.0, False
    while not terminated:
        _, reward, terminated, _, _ = env.step(action)
        total += float(reward)
        steps += 1
    return total, (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {"device": "cpu"}
    for pair in args.env_kwargs:
        key, _, value = pair.partition("=")
        settings[key] = yaml.safe_load(value)
    envs = {baseline: NeuralBatchSamplingEnv(reward_baseline=baseline, **settings) for baseline in BASELINES}
    returns: dict[tuple[str, str], list[float]] = {}
    seconds: dict[str, list[float]] = {baseline: [] for baseline in BASELINES}
    for baseline, env in envs.items():
        for name, action in COMPOSITIONS.items():
            values = []
            for seed in args.seeds:
                value, per_step = episode_return(env, seed, np.asarray(action, np.float32))
                values.append(value)
                seconds[baseline].append(per_step)
            returns[(baseline, name)] = values
            print(f"{baseline:13s} {name:8s} " + " ".join(f"{v:+.4f}" for v in values), file=sys.stderr, flush=True)

    print(f"settings {settings}, seeds {args.seeds}")
    print()
    print("| reward_baseline | composition | return, mean (sd over seeds) | gap to uniform | SNR |")
    print("|---|---|---|---|---|")
    for baseline in BASELINES:
        uniform = np.mean(returns[(baseline, "uniform")])
        gaps = {name: np.mean(returns[(baseline, name)]) - uniform for name in COMPOSITIONS if name != "uniform"}
        best = max(gaps, key=lambda name: gaps[name])
        for name in COMPOSITIONS:
            values = np.asarray(returns[(baseline, name)])
            gap = "" if name == "uniform" else f"{gaps[name]:+.4f}"
            snr = f"**{gaps[name] / values.std(ddof=1):.2f}**" if name == best else ""
            print(f"| {baseline} | {name} | {values.mean():+.4f} ({values.std(ddof=1):.4f}) | {gap} | {snr} |")
    cost = {baseline: 1e3 * float(np.median(seconds[baseline])) for baseline in BASELINES}
    print()
    print(
        f"median ms per env step: none {cost['none']:.1f}, uniform_twin {cost['uniform_twin']:.1f} "
        f"(ratio {cost['uniform_twin'] / cost['none']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
