"""The ceiling that per-environment bookkeeping puts on the batched vector env, whatever the device.

Runs ``NeuralBatchSamplingVectorEnv`` with its autoencoder work replaced by stand-ins that cost next to
nothing: updates return random per-patch losses, snapshots return the loss maps of the freshly
initialised first model (one contiguous batch of them, made once). What is left is the engine's
bookkeeping of every sub-environment in Python and numpy on the host at each step: drawing the batch,
gathering its patches, restratifying the pool, the observation and the info, and at snapshots the
pooled patch losses, the profiles' copy of the probe maps, the strata refresh and the separation reward.
On a GPU this part does not shrink, so its rate bounds the vector env's env steps per second from above.

With ``--device cuda`` the stand-ins live on the GPU, so that pooling the snapshot maps runs there and
their copies to the host cost what they cost on that machine.

    python benchmarks/bookkeeping.py [--n-envs 64] [--episodes 1] [--device cpu] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import gymnasium as gym
import numpy as np
import torch

import nbs_gym  # noqa: F401  (registers the env ids)

ENV_ID = "nbs_gym/NeuralBatchSampling-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=1, help="timed episodes after one warm-up episode")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the stand-in maps live")
    parser.add_argument("--profile", action="store_true", help="print the top functions by own and by cumulative time")
    args = parser.parse_args()

    venv = gym.make_vec(ENV_ID, num_envs=args.n_envs, vectorization_mode="vector_entry_point", device=args.device)
    env = venv.unwrapped
    engine = env.engine.trainer
    venv.reset(seed=0)
    fresh_maps = engine.loss_maps(env.engine.pool.snapshot_images, models=[0])[0]
    scale = float(fresh_maps.mean())
    generator = torch.Generator().manual_seed(0)

    def update(patches: torch.Tensor) -> torch.Tensor:
        return (torch.rand(patches.shape[:2], generator=generator) * 2 * scale).to(patches.device)

    # A contiguous batch of maps, as the trainer returns, made once: the stand-in itself costs nothing.
    all_maps = fresh_maps.expand(args.n_envs, *fresh_maps.shape).contiguous()

    def loss_maps(images: torch.Tensor, chunk: int | None = None, models: list[int] | None = None) -> torch.Tensor:
        return all_maps[: len(models) if models is not None else args.n_envs]

    engine.update, engine.loss_maps = update, loss_maps
    actions = np.zeros((args.n_envs, *venv.single_action_space.shape), np.float32)
    length = env.config.episode_length
    for _ in range(length):  # warm-up episode
        venv.step(actions)

    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    for _ in range(args.episodes * length):
        venv.step(actions)
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    env_steps = args.episodes * length * args.n_envs
    print(
        f"N={args.n_envs}, torch threads {torch.get_num_threads()}: bookkeeping alone runs "
        f"{env_steps / seconds:.0f} env steps/s ({seconds / env_steps * 1e6:.0f} us per env step)"
    )
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats(r"nbs_gym|vector_env", 20)  # the phases, nested


if __name__ == "__main__":
    main()
