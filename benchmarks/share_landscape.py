"""The return of fixed admitted shares in the quantile action mode: is there a gap an agent can find?

Runs whole episodes of a quantile id with a constant action (admitted share q = (a + 1) / 2, lowest
loss first; q = 1 is uniform sampling) on the same env seeds, and prints per share the mean return, its
sd over seeds, and two signal-to-noise ratios of its gap to uniform:

* unpaired: gap / sd of the share's return over seeds — what an agent that meets a new env seed every
  episode (as ``nbs_gym.train`` does) has to see through;
* paired: mean / sd over seeds of (share's return - uniform's return on the same seed) — the noise left
  once the seed's own luck (autoencoder initialisation, data draws) is taken out.

    python benchmarks/share_landscape.py --shares 0.2 0.35 0.5 0.65 0.8 1 --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gymnasium as gym
import numpy as np
import torch

import nbs_gym  # noqa: F401  (registers the env ids)


def episode_return(env: gym.Env, seed: int, action: np.ndarray) -> float:
    """The undiscounted return of one episode with a constant action."""
    env.reset(seed=seed)
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="nbs_gym/NeuralBatchSamplingQuantile-v1")
    parser.add_argument("--shares", nargs="+", type=float, default=[0.2, 0.35, 0.5, 0.65, 0.8, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the per-seed returns to this file")
    args = parser.parse_args(argv)
    if not all(0.0 < share <= 1.0 for share in args.shares) or 1.0 not in args.shares:
        parser.error("--shares: every share must lie in (0, 1], and 1 (uniform sampling) must be among them")
    torch.set_num_threads(args.threads)
    env = gym.make(args.env_id, device="cpu")
    if env.unwrapped.config.action_mode != "quantile":
        parser.error(f"--env-id {args.env_id}: not a quantile id (action mode {env.unwrapped.config.action_mode!r})")
    start = time.perf_counter()
    returns: dict[float, list[float]] = {}
    for share in args.shares:
        action = np.asarray([2.0 * share - 1.0], np.float32)
        returns[share] = [episode_return(env, seed, action) for seed in args.seeds]
        print(f"share {share:.2f}: " + " ".join(f"{v:+.4f}" for v in returns[share]), file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - start) / 60

    uniform = np.asarray(returns[1.0])
    print(f"{args.env_id}, seeds {args.seeds}, {minutes:.1f} min")
    print()
    print("| admitted share | return, mean (sd over seeds) | gap to uniform | unpaired SNR | paired SNR |")
    print("|---|---|---|---|---|")
    for share in args.shares:
        values = np.asarray(returns[share])
        if share == 1.0:
            print(f"| 1 (uniform) | {values.mean():+.4f} ({values.std(ddof=1):.4f}) | | | |")
            continue
        gap = values.mean() - uniform.mean()
        paired = values - uniform
        print(
            f"| {share:g} | {values.mean():+.4f} ({values.std(ddof=1):.4f}) | {gap:+.4f} "
            f"| {gap / values.std(ddof=1):.2f} | {paired.mean() / paired.std(ddof=1):.2f} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            record = {"env_id": args.env_id, "seeds": args.seeds, "returns": {str(k): v for k, v in returns.items()}}
            json.dump(record, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
