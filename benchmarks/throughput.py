"""Env steps per second: bare loop, single env, SB3 vec envs of single envs, and the batched vector env.

Every variant does the same work per env step (one autoencoder update on a batch of patches, loss-map
snapshots of the pool and probe images at the configured steps). Ratios are to (a), the bare PyTorch
loop of one env, all measured in this one run:

    (a) bare PyTorch loop, one env        (b) the single env
    (c) SB3 DummyVecEnv / SubprocVecEnv of N single envs
    (d) NeuralBatchSamplingVectorEnv of N (one batched network)

For (d) it also prints the share of step time spent in loss-map snapshots, and peak memory (CUDA:
peak allocated on the device; CPU: peak resident set size of the process so far, which only grows).

    python benchmarks/throughput.py                      # CPU: N in 1 4 16
    python benchmarks/throughput.py --device cuda        # GPU: N in 1 8 64 256
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from env_step import time_bare_loop, time_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import nbs_gym  # noqa: F401  (registers the env ids)

ENV_ID = "nbs_gym/NeuralBatchSampling-v0"


def time_sb3_vec(vec_env: Any, episode_length: int, episodes: int) -> tuple[float, int]:
    actions = np.zeros((vec_env.num_envs, *vec_env.action_space.shape), np.float32)
    vec_env.reset()
    for _ in range(episode_length):  # warm-up episode
        vec_env.step(actions)
    start = time.perf_counter()
    for _ in range(episodes * episode_length):
        vec_env.step(actions)
    return time.perf_counter() - start, episodes * episode_length * vec_env.num_envs


def time_vector(num_envs: int, device: str, episodes: int) -> tuple[float, int, float]:
    """Seconds, env steps and the share of the time spent in snapshots for the batched vector env."""
    venv = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", device=device)
    engine = venv.unwrapped.engine
    snapshot_seconds = [0.0]
    loss_maps: Callable[..., torch.Tensor] = engine.loss_maps

    def timed_loss_maps(*args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        maps = loss_maps(*args, **kwargs)
        synchronize(device)
        snapshot_seconds[0] += time.perf_counter() - start
        return maps

    engine.loss_maps = timed_loss_maps
    actions = np.zeros((num_envs, *venv.single_action_space.shape), np.float32)
    length = venv.unwrapped.config.episode_length
    venv.reset(seed=0)
    for _ in range(length):  # warm-up episode
        venv.step(actions)
    synchronize(device)
    snapshot_seconds[0] = 0.0
    start = time.perf_counter()
    for _ in range(episodes * length):
        venv.step(actions)
    synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, episodes * length * num_envs, snapshot_seconds[0] / seconds


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--episodes", type=int, default=1, help="timed episodes per variant (after one warm-up)")
    parser.add_argument("--n-envs", type=int, nargs="+", default=None, help="N values (default 1 4 16 / 1 8 64 256)")
    parser.add_argument("--no-subproc", action="store_true", help="skip SubprocVecEnv")
    args = parser.parse_args()
    device = args.device
    sizes = args.n_envs or ([1, 8, 64, 256] if device.startswith("cuda") else [1, 4, 16])

    single = gym.make(ENV_ID, device=device)
    length = single.unwrapped.config.episode_length
    time_env(single, 1)
    rows: list[tuple[str, float, float]] = []
    print(f"device: {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}), "
          f"torch threads: {torch.get_num_threads()}, episode_length: {length}")
    print(f"{'variant':34s} {'steps/s':>10s} {'x (a)':>8s} {'peak MiB':>10s}")

    def record(name: str, rate: float, memory: float) -> None:
        rows.append((name, rate, memory))
        print(f"{name:34s} {rate:10.1f} {rate / rows[0][1]:8.2f} {memory:10.0f}", flush=True)

    seconds, steps = time_bare_loop(single, args.episodes)
    base = steps / seconds
    record("(a) bare PyTorch loop, 1 env", base, peak_memory_mib(device))
    seconds, steps = time_env(single, args.episodes)
    record("(b) single env", steps / seconds, peak_memory_mib(device))
    single.close()

    def make_single() -> gym.Env:
        return gym.make(ENV_ID, device=device)

    def make_single_one_thread() -> gym.Env:
        # A worker process per env: intra-op threads of N workers on a few cores only fight each other.
        torch.set_num_threads(1)
        return gym.make(ENV_ID, device=device)

    shares = {}
    for n in sizes:
        if not device.startswith("cuda") or n <= 8:  # N separate GPU envs are the slow path being replaced
            dummy = DummyVecEnv([make_single] * n)
            seconds, steps = time_sb3_vec(dummy, length, args.episodes)
            record(f"(c) DummyVecEnv N={n}", steps / seconds, peak_memory_mib(device))
            dummy.close()
            if not args.no_subproc and n > 1:
                subproc = SubprocVecEnv([make_single_one_thread] * n, start_method="spawn")
                seconds, steps = time_sb3_vec(subproc, length, args.episodes)
                record(f"(c) SubprocVecEnv N={n}", steps / seconds, float("nan"))
                subproc.close()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds, steps, shares[n] = time_vector(n, device, args.episodes)
        record(f"(d) batched vector env N={n}", steps / seconds, peak_memory_mib(device))

    for n, share in shares.items():
        print(f"snapshot share of step time, batched N={n}: {share:.2f}")
    rates = dict((name, rate) for name, rate, _ in rows)
    largest = sizes[-1]
    dummy_key = f"(c) DummyVecEnv N={largest}"
    if dummy_key in rates:
        ratio = rates[f"(d) batched vector env N={largest}"] / rates[dummy_key]
        print(f"batched / DummyVecEnv at N={largest}: {ratio:.2f}")
    print(f"batched N={largest} / single env: {rates[f'(d) batched vector env N={largest}'] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
