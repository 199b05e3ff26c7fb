"""PPO against A2C as batch samplers, with uniform sampling as the reference, through ``nbs_gym.compare``.

    python examples/ppo_vs_a2c.py            # 3 agents x 3 seeds, 40 short v1 episodes each: ~20 min on 2 CPU cores
    python examples/ppo_vs_a2c.py --quick    # tiny settings, 2 seeds: ~30 s

Runs the comparison (resumable: run it again after Ctrl-C), then reads the results back through the
module's API to say whether the seeds show a difference between the two algorithms. Tables and plots
land in ``--out`` (``results.md``, ``results.csv``, ``learning_curves.png``, ``metrics.png``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nbs_gym import compare, reporting

METRIC = "predictor/pixel_f1_max"
FULL = [
    "--seeds", "0", "1", "2", "--timesteps", "800",
    # Episodes of 100 updates, 20 env steps of 5 updates (v1's decision interval).
    "--env-kwargs", "episode_length=100",
    # One PPO rollout per episode; A2C keeps SB3's 5-step rollouts.
    "--hyperparams", "ppo.n_steps=20", "ppo.batch_size=10",
]  # fmt: skip
QUICK = [
    "--seeds", "0", "1", "--timesteps", "40",
    "--env-kwargs", "episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8",
    "--hyperparams", "ppo.n_steps=20", "ppo.batch_size=10",
    "--classifier-kwargs", "kind=per_pixel",
    "--device", "cpu", "--no-progress",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the verdict; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/ppo_vs_a2c[_quick])")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / ("ppo_vs_a2c_quick" if args.quick else "ppo_vs_a2c")
    settings = QUICK if args.quick else FULL
    status = compare.main(["--agents", "ppo", "a2c", "uniform", *settings, "--out", str(out)])
    if status:
        return status

    runs = reporting.collect_runs(out / "runs", agents=["ppo", "a2c"])
    rows = {row.agent: row.columns[METRIC] for row in reporting.summarize(runs)}
    print(f"\n{METRIC}, mean [{reporting.CONFIDENCE:.0%} CI] over seeds:")
    for agent, interval in rows.items():
        print(f"  {agent}: {interval.mean:.4f} [{interval.low:.4f}, {interval.high:.4f}]")
    ppo, a2c = rows["ppo"], rows["a2c"]
    if ppo.low > a2c.high or a2c.low > ppo.high:
        print("the intervals do not overlap: the seeds show a difference")
    else:
        print(f"the intervals overlap: no difference shown with {ppo.n} seeds; add seeds or steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
