"""Wall time of one grid of default-size runs: in this process, one after another, against a local Ray.

    python benchmarks/ray_grid.py                      # 4 fixed-rule runs of the default task: ~4 min on 2 cores
    python benchmarks/ray_grid.py --agents uniform random --timesteps 0 --env-kwargs episode_length=200

Runs ``nbs_gym.compare``'s grid three times into a temporary folder: with the in-process backend
(torch's default threads, all cores), with ``--backend ray`` on a local Ray of this machine's cores (one
CPU and one torch thread per run), and in process on one torch thread (the same runs as Ray's). Prints
the wall times, the ratios Ray / in process (the goal: at most 0.6 on 2 cores) and how far apart the
grids' predictor F1-max values are: equal at equal thread counts, apart as another seed's would be at
others. Meaningful only on an otherwise idle machine. The Ray time includes starting Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from nbs_gym import compare
from nbs_gym.backends import RayBackend


def _grid(out: Path, options: argparse.Namespace) -> compare.Comparison:
    return compare.Comparison(
        out=out,
        agents=options.agents,
        seeds=options.seeds,
        timesteps=options.timesteps,
        env_kwargs=options.env_kwargs or None,
        device="cpu",
        progress=False,
    )


def _f1(out: Path) -> dict[str, float]:
    return {
        path.parent.name: json.loads(path.read_text())["agent"]["predictor"]["pixel_f1_max"]
        for path in sorted(out.glob("runs/*/metrics.json"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["uniform", "random", "hard_mining", "curriculum"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--timesteps", type=int, default=None, help="env steps per run (default: train's)")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    options = parser.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="nbs_gym_ray_grid_") as scratch:
        folder = Path(scratch)
        start = time.perf_counter()
        compare.run(_grid(folder / "inprocess", options))
        in_process = time.perf_counter() - start
        start = time.perf_counter()
        compare.run(_grid(folder / "ray", options), RayBackend())
        on_ray = time.perf_counter() - start
        torch.set_num_threads(1)
        start = time.perf_counter()
        compare.run(_grid(folder / "inprocess_1", options))
        one_thread = time.perf_counter() - start
        torch.set_num_threads(threads)
        default, ray, single = (_f1(folder / name) for name in ("inprocess", "ray", "inprocess_1"))
    runs = len(options.agents) * len(options.seeds)
    print(f"\n{runs} runs on {os.cpu_count()} cores")
    print(f"in process, {threads} torch threads: {in_process:7.1f} s")
    print(f"local Ray, 1 CPU and 1 thread per run: {on_ray:7.1f} s (Ray's start included)")
    print(f"in process, 1 torch thread: {one_thread:7.1f} s")
    print(f"ratio Ray / in process ({threads} threads): {on_ray / in_process:.2f}")
    print(f"ratio Ray / in process (1 thread, the same runs): {on_ray / one_thread:.2f}")
    print(f"largest |F1-max difference|, Ray vs in process with 1 thread: {_largest(ray, single):.2e}")
    print(f"largest |F1-max difference|, Ray vs in process with {threads} threads: {_largest(ray, default):.2e}")


def _largest(first: dict[str, float], second: dict[str, float]) -> float:
    return max(abs(first[key] - second[key]) for key in first)


if __name__ == "__main__":
    main()
