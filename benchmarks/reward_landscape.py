"""What return do fixed batch compositions earn? The reward landscape an agent searches, on a few seeds.

Runs whole default episodes with constant actions (weights over the loss strata, lowest loss first) on
the same env seeds, and prints, per composition, the initial and final separation and the episode's
return (final minus initial) under the reward with ``--context-window``, and the final separation of
the default reward (no context) from the same episode's loss maps.

    python benchmarks/reward_landscape.py --context-window 7 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym
import numpy as np

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.separation import profile_separation

COMPOSITIONS: dict[str, list[float]] = {
    "uniform": [0, 0, 0, 0, 0],
    "no_top_stratum": [1, 1, 1, 1, -1],
    "top_only": [-1, -1, -1, -1, 1],
    "bottom_only": [1, -1, -1, -1, -1],
    "middle_three": [-1, 1, 1, 1, -1],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-window", type=int, default=0, metavar="W")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    env = gym.make("nbs_gym/NeuralBatchSampling-v0", device="cpu", context_window=args.context_window).unwrapped
    n_labeled, split_seed = len(env.split.labeled), env.config.data.split_seed
    print(f"context_window={args.context_window}, seeds {args.seeds}: mean (sd over seeds)")
    print(f"{'composition':16s}{'S_0':>18s}{'S_T':>18s}{'return':>18s}{'S_T without context':>24s}")
    for name, action in COMPOSITIONS.items():
        rows = []
        for seed in args.seeds:
            _, info = env.reset(seed=seed)
            terminated = False
            while not terminated:
                _, _, terminated, _, info = env.step(np.asarray(action, np.float32))
            plain = profile_separation(
                env.episode_loss_maps[:, :n_labeled], env.engine.labeled_masks, "auroc", 0, split_seed
            )
            rows.append((info["initial_separation"], info["separation"], plain))
        values = np.array(rows)
        gain = values[:, 1] - values[:, 0]
        cells = [values[:, 0], values[:, 1], gain, values[:, 2]]
        text = [f"{c.mean():.4f} ({c.std(ddof=1):.4f})" for c in cells]
        print(f"{name:16s}" + "".join(f"{t:>{w}s}" for t, w in zip(text, [18, 18, 18, 24], strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
