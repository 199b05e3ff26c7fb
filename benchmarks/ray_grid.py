"""Wall time of one grid of default-size runs: in this process, one after another, against a local Ray.

    python benchmarks/ray_grid.py                      # 4 fixed-rule runs, the default task: ~10 min on 2 cores
    python benchmarks/ray_grid.py --agents uniform random --timesteps 0 --env-kwargs episode_length=200

Runs ``nbs_gym.compare``'s grid twice into a temporary folder: with the in-process backend (torch's
default threads, all cores) and with ``--backend ray`` on a local Ray of this machine's cores (one CPU and
one torch thread per run). Prints both wall times, their ratio (Ray / in process; the issue's goal is at
most 0.6 on 2 cores) and how far apart the two grids' predictor F1-max values are (thread counts round
differently). Meaningful only on an otherwise idle machine. The Ray time includes starting Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

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
    with tempfile.TemporaryDirectory(prefix="nbs_gym_ray_grid_") as scratch:
        start = time.perf_counter()
        compare.run(_grid(Path(scratch) / "inprocess", options))
        in_process = time.perf_counter() - start
        start = time.perf_counter()
        compare.run(_grid(Path(scratch) / "ray", options), RayBackend())
        on_ray = time.perf_counter() - start
        here, there = _f1(Path(scratch) / "inprocess"), _f1(Path(scratch) / "ray")
    runs = len(options.agents) * len(options.seeds)
    print(f"\n{runs} runs on {os.cpu_count()} cores")
    print(f"in process:  {in_process:7.1f} s")
    print(f"local Ray:   {on_ray:7.1f} s (one CPU per run, Ray's start included)")
    print(f"ratio Ray / in process: {on_ray / in_process:.2f}")
    print(f"largest |F1-max difference| between the grids: {max(abs(here[k] - there[k]) for k in here):.2e}")


if __name__ == "__main__":
    main()
