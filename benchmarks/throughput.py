"""Env steps per second: bare loop, single env, SB3 vec envs of single envs, and the batched vector env.

Every variant does the same work per env step (one autoencoder update on a batch of patches, loss-map
snapshots of the pool and probe images at the configured steps and at each reset). Ratios are to (a),
the bare PyTorch loop of one env, all measured in this one run:

    (a) bare PyTorch loop, one env        (b) the single env
    (c) SB3 DummyVecEnv / SubprocVecEnv of N single envs
    (d) NeuralBatchSamplingVectorEnv of N (one batched network)

All variants are built and warmed up first; then ``--rounds`` rounds each time one episode of every
variant in turn, and each rate is the median over the rounds. Interleaving keeps a slow spell of a
shared machine from landing on one variant only. For (d) it also prints the share of step time spent
in loss-map snapshots. Memory is what building and warming up a variant added: resident set of this
process on the CPU (SubprocVecEnv workers are other processes: not counted), device memory allocated
plus the peak of one episode above it on a GPU.

    python benchmarks/throughput.py                      # CPU: N in 1 4 16
    python benchmarks/throughput.py --device cuda        # GPU: N in 1 8 64 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from env_step import BareLoop, time_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import nbs_gym  # noqa: F401  (registers the env ids)

ENV_ID = "nbs_gym/NeuralBatchSampling-v0"


class Variant:
    """One way of running the env: ``episode()`` times one episode of every env it holds."""

    def __init__(self, name: str, env_steps: int, run: Callable[[], object], close: Callable[[], None] = lambda: None):
        self.name, self.env_steps, self._run, self.close = name, env_steps, run, close
        self.rates: list[float] = []
        self.snapshot_shares: list[float] = []
        self.memory_mib = float("nan")
        self.snapshot_seconds = 0.0

    def episode(self, device: str) -> None:
        self.snapshot_seconds = 0.0
        synchronize(device)
        start = time.perf_counter()
        self._run()
        synchronize(device)
        seconds = time.perf_counter() - start
        self.rates.append(self.env_steps / seconds)
        self.snapshot_shares.append(self.snapshot_seconds / seconds)


def sb3_variant(name: str, vec_env: Any, episode_length: int) -> Variant:
    actions = np.zeros((vec_env.num_envs, *vec_env.action_space.shape), np.float32)
    vec_env.reset()

    def run() -> None:
        for _ in range(episode_length):
            vec_env.step(actions)

    return Variant(name, episode_length * vec_env.num_envs, run, vec_env.close)


def vector_variant(num_envs: int, device: str) -> Variant:
    venv = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", device=device)
    engine = venv.unwrapped.engine.trainer
    loss_maps: Callable[..., torch.Tensor] = engine.loss_maps
    length = venv.unwrapped.config.episode_length
    actions = np.zeros((num_envs, *venv.single_action_space.shape), np.float32)

    def timed_loss_maps(*args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        maps = loss_maps(*args, **kwargs)
        synchronize(device)
        variant.snapshot_seconds += time.perf_counter() - start
        return maps

    def run() -> None:
        for _ in range(length):
            venv.step(actions)

    variant = Variant(f"(d) batched vector env N={num_envs}", length * num_envs, run, venv.close)
    engine.loss_maps = timed_loss_maps
    venv.reset(seed=0)
    return variant


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resident_mib() -> float:
    """Current resident set of this process (Linux), NaN where /proc is missing."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return float("nan")
    pages = int(statm.read_text().split()[1])
    return pages * 4096 / 2**20


def build(make: Callable[[], Variant], device: str) -> Variant:
    """Build a variant and run its warm-up episode, recording the memory that took."""
    if device.startswith("cuda"):
        synchronize(device)
        before = torch.cuda.memory_allocated()
        variant = make()
        torch.cuda.reset_peak_memory_stats()
        variant.episode(device)
        variant.memory_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = resident_mib()
        variant = make()
        variant.episode(device)
        variant.memory_mib = resident_mib() - before
    variant.rates.clear()
    variant.snapshot_shares.clear()
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rounds", type=int, default=3, help="timed episodes per variant, interleaved")
    parser.add_argument("--n-envs", type=int, nargs="+", default=None, help="N values (default 1 4 16 / 1 8 64 256)")
    parser.add_argument("--no-subproc", action="store_true", help="skip SubprocVecEnv")
    args = parser.parse_args()
    device = args.device
    cuda = device.startswith("cuda")
    sizes = args.n_envs or ([1, 8, 64, 256] if cuda else [1, 4, 16])

    single = gym.make(ENV_ID, device=device)
    length = single.unwrapped.config.episode_length
    print(
        f"device: {device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), "
        f"torch threads: {torch.get_num_threads()}, episode_length: {length}, rounds: {args.rounds}",
        flush=True,
    )

    def make_single() -> gym.Env:
        return gym.make(ENV_ID, device=device)

    def make_single_one_thread() -> gym.Env:
        # A worker process per env: intra-op threads of N workers on a few cores only fight each other.
        torch.set_num_threads(1)
        return gym.make(ENV_ID, device=device)

    bare = BareLoop(single)
    makers: list[Callable[[], Variant]] = [
        lambda: Variant("(a) bare PyTorch loop, 1 env", length, lambda: bare.run(1)),
        lambda: Variant("(b) single env", length, lambda: time_env(single, 1), single.close),
    ]
    for n in sizes:
        if not cuda or n <= 8:  # N separate GPU envs are the slow path being replaced
            makers.append(lambda n=n: sb3_variant(f"(c) DummyVecEnv N={n}", DummyVecEnv([make_single] * n), length))
            if not args.no_subproc and n > 1:
                makers.append(
                    lambda n=n: sb3_variant(
                        f"(c) SubprocVecEnv N={n}",
                        SubprocVecEnv([make_single_one_thread] * n, start_method="spawn"),
                        length,
                    )
                )
        makers.append(lambda n=n: vector_variant(n, device))
    variants = []
    for make in makers:
        variants.append(build(make, device))
        print(f"built and warmed up: {variants[-1].name}", flush=True)
    for round_index in range(args.rounds):
        for variant in variants:
            variant.episode(device)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    for variant in variants:
        variant.close()

    memory_label = "MiB (device)" if cuda else "MiB (RSS)"
    print(f"\n{'variant':34s} {'steps/s':>10s} {'min':>8s} {'max':>8s} {'x (a)':>7s} {memory_label:>13s}")
    rate = {variant.name: statistics.median(variant.rates) for variant in variants}
    base = rate[variants[0].name]
    for variant in variants:
        memory = "–" if variant.name.startswith("(c) Subproc") else f"{variant.memory_mib:.0f}"
        print(
            f"{variant.name:34s} {rate[variant.name]:10.1f} {min(variant.rates):8.1f} {max(variant.rates):8.1f} "
            f"{rate[variant.name] / base:7.2f} {memory:>13s}"
        )
    print()
    for variant in variants:
        if variant.name.startswith("(d)"):
            print(f"snapshot share of step time, {variant.name[4:]}: {statistics.median(variant.snapshot_shares):.2f}")
    largest = sizes[-1]
    batched = rate[f"(d) batched vector env N={largest}"]
    dummy_key = f"(c) DummyVecEnv N={largest}"
    if dummy_key in rate:
        print(f"batched / DummyVecEnv at N={largest}: {batched / rate[dummy_key]:.2f}")
    print(f"batched N={largest} / single env: {batched / rate['(b) single env']:.2f}")


if __name__ == "__main__":
    main()
