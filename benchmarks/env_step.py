"""Env steps per second of the default environment versus a bare PyTorch loop doing the same work.

The bare loop trains the same autoencoder with the same batch size and patch size on uniformly drawn
patches of the same pool, and computes the same loss-map snapshots (pool and probe images, at the same
steps). The ratio env / bare tells what the environment's bookkeeping (strata, observation, reward,
checks) costs on top of the unavoidable work. The two alternate episode by episode, so that a slow
spell of a shared machine lands on both.

    python benchmarks/env_step.py [--episodes 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.autoencoder import AutoencoderTrainer


def time_env(env: gym.Env, episodes: int) -> tuple[float, int]:
    action = np.zeros(env.action_space.shape, np.float32)
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=episode)
        terminated = False
        while not terminated:
            _, _, terminated, _, _ = env.step(action)
            steps += 1
    return time.perf_counter() - start, steps


class BareLoop:
    """The env's updates and snapshots with no environment around them."""

    def __init__(self, env: gym.Env) -> None:
        pool = env.unwrapped.engine.pool
        self.config = cfg = env.unwrapped.config
        self.trainer = AutoencoderTrainer(pool.channels, cfg.autoencoder)
        device = self.trainer.device
        self.images = pool.snapshot_images
        self.n_patches = pool.n_patches
        self.image_of = torch.as_tensor(pool.patch_image, device=device)
        self.y_of = torch.as_tensor(pool.patch_y, device=device)
        self.x_of = torch.as_tensor(pool.patch_x, device=device)
        self.offsets = torch.arange(cfg.patch_size, device=device)
        self.snapshots = set(cfg.snapshot_steps)
        self.generator = torch.Generator().manual_seed(0)

    def run(self, episodes: int) -> tuple[float, int]:
        """Seconds and steps for ``episodes`` whole episodes (initial snapshot included)."""
        cfg, trainer = self.config, self.trainer
        steps, start = 0, time.perf_counter()
        for _ in range(episodes):
            trainer.reset(self.generator)
            trainer.loss_maps(self.images).cpu()
            for step in range(1, cfg.episode_length + 1):
                ids = torch.randint(self.n_patches, (cfg.batch_size,), generator=self.generator).to(trainer.device)
                rows = self.y_of[ids][:, None] + self.offsets
                cols = self.x_of[ids][:, None] + self.offsets
                image = self.image_of[ids][:, None, None]
                patches = self.images[image, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
                trainer.update(patches).cpu()
                if step in self.snapshots:
                    trainer.loss_maps(self.images).cpu()
                steps += 1
        return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=3, help="episodes timed for each variant, alternating")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    env = gym.make("nbs_gym/NeuralBatchSampling-v0", device=args.device)
    bare = BareLoop(env)
    time_env(env, 1)  # warm-up: allocator, kernels, imports
    bare.run(1)
    bare_rates, env_rates = [], []
    for _ in range(args.episodes):  # interleaved, so that a slow spell of the machine hits both alike
        seconds, steps = bare.run(1)
        bare_rates.append(steps / seconds)
        seconds, steps = time_env(env, 1)
        env_rates.append(steps / seconds)
    ratios = [env_rate / bare_rate for env_rate, bare_rate in zip(env_rates, bare_rates, strict=True)]
    print(f"device: {env.unwrapped.device}  torch threads: {torch.get_num_threads()}  episodes each: {args.episodes}")
    print(f"bare PyTorch loop : {statistics.median(bare_rates):8.1f} steps/s (median)")
    print(f"environment       : {statistics.median(env_rates):8.1f} steps/s (median)")
    spread = f"{min(ratios):.3f} to {max(ratios):.3f}"
    print(f"ratio env / bare  : {statistics.median(ratios):8.3f} (median over episode pairs; {spread})")


if __name__ == "__main__":
    main()
