"""What a learned sampler settled on in the quantile action mode: its admitted share over the evaluation episode.

For every finished run of an SB3 agent under ``RUNS`` (``nbs_gym.compare``'s ``OUT/runs``) on a quantile
id, replays the run's evaluation episode (env seed 1,000,000 + seed) with the trained policy acting
deterministically, and prints the admitted share q = (a + 1) / 2 at the start, middle and end of the
episode, the spread of the policy's exploration noise at the start (gSDE or a diagonal Gaussian, in
action units), and, with ``--uniform``, the run's predictor F1-max and AUPRO as ratios to the uniform run
of the same seed there.

    python benchmarks/learned_shares.py results/quantile_v1/ppo_n4/runs --uniform results/quantile_v1/ppo_sde/runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.callbacks import vec_normalize_path
from nbs_gym.train import EVAL_SEED_OFFSET, resume_args, validated_settings


def exploration_sd(model: object, observation: np.ndarray) -> float:
    """The standard deviation, in action units, of the policy's sampled action around its mean."""
    policy = model.policy  # type: ignore[attr-defined]
    with torch.no_grad():
        features = policy.extract_features(torch.as_tensor(observation[None]), policy.pi_features_extractor)
        latent = policy.mlp_extractor.forward_actor(features)
        std = policy.action_dist.get_std(policy.log_std)
        if getattr(policy, "use_sde", False):  # gSDE: a = mean + latent . W, W ~ N(0, std^2)
            return float(torch.sqrt((latent**2) @ (std**2)).squeeze())
        return float(std.squeeze())


def shares(run_dir: Path) -> dict[str, float]:
    """Admitted shares at the start, middle and end of the run's evaluation episode, and the noise sd."""
    args = dataclasses.replace(resume_args(run_dir), device="cpu")
    # The env as the run resolved it: its dataset, and the action mode its agent chose on a plain id.
    spec, env_kwargs, env_config, _ = validated_settings(args)
    if env_config.action_mode != "quantile":
        raise SystemExit(f"error: {run_dir}: its agent acted in the {env_config.action_mode!r} mode, not 'quantile'")
    model = spec.load(run_dir / "agent.zip", device="cpu")
    statistics = vec_normalize_path(run_dir / "agent.zip")  # a run with --hyperparams normalize=...
    if statistics.is_file():
        with statistics.open("rb") as file:
            normalize = pickle.load(file).normalize_obs  # VecNormalize pickles without its envs
    else:
        normalize = np.asarray
    env = gym.make(spec.env_id(env_config.action_mode, task=args.env_id), **env_kwargs)
    observation, _ = env.reset(seed=args.seed + EVAL_SEED_OFFSET)
    sd = exploration_sd(model, normalize(observation))
    taken, terminated = [], False
    while not terminated:
        action, _ = model.predict(normalize(observation), deterministic=True)
        taken.append((float(np.clip(action[0], -1.0, 1.0)) + 1.0) / 2.0)
        observation, _, terminated, _, _ = env.step(action)
    env.close()
    return {"start": taken[0], "middle": taken[len(taken) // 2], "end": taken[-1], "noise_sd": sd}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a compare folder's runs/")
    parser.add_argument("--uniform", type=Path, help="runs/ folder holding uniform__<seed> runs on the same id")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | share at start | middle | end | exploration sd | F1-max ratio | AUPRO ratio |")
    print("|---|---|---|---|---|---|---|")
    for run_dir in sorted(path for path in args.runs.iterdir() if (path / "agent.zip").is_file()):
        if not (run_dir / "metrics.json").is_file():
            continue
        found = shares(run_dir)
        ratios = ["", ""]
        seed = yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
        reference = args.uniform / f"uniform__{seed}" / "metrics.json" if args.uniform else None
        if reference is not None and reference.is_file():
            agent = json.loads((run_dir / "metrics.json").read_text())["agent"]["predictor"]
            uniform = json.loads(reference.read_text())["agent"]["predictor"]
            ratios = [f"{agent[m] / uniform[m]:.3f}" for m in ("pixel_f1_max", "pixel_aupro")]
        cells = [f"{found[key]:.2f}" for key in ("start", "middle", "end", "noise_sd")]
        print(f"| {run_dir.name} | " + " | ".join([*cells, *ratios]) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
