"""Drive the environment by hand: ``gymnasium.make``, a hand-written policy, ``info`` and a rendered frame.

    python examples/drive_env_by_hand.py            # two v1 episodes (1,000 updates each): ~30 s on 2 CPU cores
    python examples/drive_env_by_hand.py --quick    # 20-step episodes on 32x32 images: ~5 s

The policy is hard-example mining written out by hand: weight each loss stratum by its rank, so that
the batches lean towards the patches the autoencoder reconstructs worst. It runs against the zero
action (plain uniform SGD) from the same seed, printing the separation of the labeled images' loss
profiles at every snapshot, and saves the last frame (image | loss map | where batches came from).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

import nbs_gym  # noqa: F401  (registers the env ids)

QUICK = {"episode_length": 20, "profile_length": 4, "image_size": 32, "patch_size": 8, "batch_size": 8}


def hard_mining(observation: np.ndarray, n_strata: int) -> np.ndarray:
    """Action from -1 (lowest-loss stratum) to +1 (highest), by the loss levels of observation[0 .. S-1]."""
    rank = np.argsort(np.argsort(observation[:n_strata]))
    return (2.0 * rank / (n_strata - 1) - 1.0).astype(np.float32)


def uniform(observation: np.ndarray, n_strata: int) -> np.ndarray:
    """The zero action: every patch equally likely."""
    return np.zeros(n_strata, dtype=np.float32)


def run_episode(env: gym.Env, policy: Any, seed: int) -> float:
    """One episode; prints the separation at each snapshot and returns the episode's return."""
    observation, info = env.reset(seed=seed)
    n_strata = env.action_space.shape[0]
    print(f"  step {info['step']:4d}  separation {info['separation']:.4f}  (fresh autoencoder)")
    episode_return, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        observation, reward, terminated, truncated, info = env.step(policy(observation, n_strata))
        episode_return += reward
        if info["snapshot"]:
            composition = " ".join(f"{share:.2f}" for share in info["batch_composition"])
            print(
                f"  step {info['step']:4d}  separation {info['separation']:.4f}  "
                f"ae_loss {info['ae_loss']:.4f}  batch composition [{composition}]"
            )
    # Dense rewards are potential-based: the return is the final minus the initial separation.
    print(f"  return {episode_return:+.4f} = {info['separation']:.4f} - {info['initial_separation']:.4f}")
    return episode_return


def main(argv: list[str] | None = None) -> int:
    """Run both policies and save a frame; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    parser.add_argument("--out", type=Path, default=Path("drive_env_by_hand.png"), help="where the frame goes")
    args = parser.parse_args(argv)
    env = gym.make(
        "nbs_gym/NeuralBatchSampling-v1", render_mode="rgb_array", device="cpu", **(QUICK if args.quick else {})
    )
    returns = {}
    for name, policy in (("uniform", uniform), ("hard mining", hard_mining)):
        print(f"{name}:")
        returns[name] = run_episode(env, policy, seed=0)
    frame = env.render()
    env.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(args.out)
    for name, value in returns.items():
        print(f"return of {name}: {value:+.4f}")
    print(f"frame of the last episode ({frame.shape[1]}x{frame.shape[0]}): {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
