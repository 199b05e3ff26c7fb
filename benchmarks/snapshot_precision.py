"""Loss-map snapshots at lower precision: their time, and how far their numbers move, against float32.

A snapshot maps every pool and probe image through each sub-environment's autoencoder; its maps feed
the strata and the reward. This times one snapshot of the batched engine's N models, after some
training, in three variants:

``float32``  TF32 off: the reference
``tf32``     float32 tensors, TF32 convolutions and matrix products (cuDNN's default for convolutions)
``bf16``     ``torch.autocast`` to bfloat16

and reports, against the reference, the relative error of the loss maps (median and 99th percentile)
and the share of pool patches whose stratum changes, which is what would change the batches drawn.
TF32 exists only on CUDA; on a CPU the ``tf32`` row repeats float32, and the ``bf16`` row runs the
plain (unfused) convolutions, since the fused CPU kernels take no autocast.

    python benchmarks/snapshot_precision.py --device cuda [--n-envs 64] [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import torch

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym import autoencoder

ENV_ID = "nbs_gym/NeuralBatchSampling-v0"


@contextlib.contextmanager
def precision(variant: str, device: str) -> Iterator[None]:
    """Run the block in one of the three precisions, restoring torch's settings afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = variant == "tf32"
    fused = autoencoder.fused_cpu_ops
    try:
        if variant == "bf16":
            autoencoder.fused_cpu_ops = lambda: False  # type: ignore[assignment]
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        autoencoder.fused_cpu_ops = fused  # type: ignore[assignment]


def strata(patch_losses: np.ndarray, group_starts: np.ndarray) -> np.ndarray:
    """Each patch's stratum (rows: models): its rank in the sorted pool, cut at the env's group starts."""
    n_patches = patch_losses.shape[1]
    ranks = np.empty_like(patch_losses, dtype=np.int64)
    np.put_along_axis(ranks, np.argsort(patch_losses, axis=1, kind="stable"), np.arange(n_patches), axis=1)
    return np.searchsorted(group_starts, ranks, side="right") - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--n-envs", type=int, default=None, help="models (default 64 on cuda, 4 on cpu)")
    parser.add_argument("--steps", type=int, default=50, help="training steps before the snapshots")
    parser.add_argument("--repeats", type=int, default=5, help="timed snapshots per variant, interleaved")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    n_envs = args.n_envs or (64 if cuda else 4)

    venv = gym.make_vec(ENV_ID, num_envs=n_envs, vectorization_mode="vector_entry_point", device=args.device)
    env = venv.unwrapped
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(args.steps):
        venv.step(rng.uniform(-1, 1, (n_envs, *env.single_action_space.shape)).astype(np.float32))

    def snapshot(variant: str) -> tuple[float, torch.Tensor]:
        with precision(variant, args.device):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            maps = env.engine.trainer.loss_maps(env.engine.pool.snapshot_images)
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start, maps.float()

    variants = ("float32", "tf32", "bf16")
    for variant in variants:  # warm-up: kernel choice, autocast caches
        snapshot(variant)
    seconds: dict[str, list[float]] = {variant: [] for variant in variants}
    maps: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for variant in variants:
            elapsed, maps[variant] = snapshot(variant)
            seconds[variant].append(elapsed)

    reference = maps["float32"]
    group_starts = env.engine.groups.starts
    reference_strata = strata(env.engine.pool.patch_losses(reference), group_starts)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    n_images = len(env.engine.pool.snapshot_images)
    print(f"device: {args.device} ({name}), models: {n_envs}, images per snapshot: {n_images}")
    print(
        f"{'variant':8s} {'ms per model':>13s} {'speed-up':>10s} {'rel. error median':>18s} "
        f"{'rel. error p99':>15s} {'patches changing stratum':>25s}"
    )
    base = statistics.median(seconds["float32"])
    for variant in variants:
        median = statistics.median(seconds[variant])
        relative = ((maps[variant] - reference).abs() / reference.abs().clamp_min(1e-12)).flatten().cpu().numpy()
        losses = env.engine.pool.patch_losses(maps[variant])
        changed = float((strata(losses, group_starts) != reference_strata).mean())
        print(
            f"{variant:8s} {median / n_envs * 1e3:13.3f} {base / median:10.2f} {np.median(relative):18.2e} "
            f"{np.quantile(relative, 0.99):15.2e} {changed:25.4f}"
        )
    venv.close()


if __name__ == "__main__":
    main()
