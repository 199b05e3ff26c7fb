"""Train the anomaly classifier on a saved profile file, without the environment.

    python examples/classifier_on_saved_profiles.py            # a v1 episode, dilated CNN: ~1 min on 2 CPU cores
    python examples/classifier_on_saved_profiles.py --quick    # 20 steps, per-pixel classifier: ~5 s

One uniform-sampling episode writes its loss profiles to ``--out`` (``profile_dir``); the file is then
read back on its own, the predictor is trained on the labeled set L's profiles and masks, and it and
the label-free baselines are scored on the evaluation set E. The same as ``python -m nbs_gym.classify``
on the file, as a few calls.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.classifier import ClassifierConfig, fit_predictor
from nbs_gym.classify import format_table
from nbs_gym.evaluation import evaluate
from nbs_gym.profiles import load_profiles

QUICK = {"episode_length": 20, "profile_length": 4, "image_size": 32, "patch_size": 8, "batch_size": 8}


def write_profiles(profile_dir: Path, quick: bool) -> Path:
    """Run one episode of plain uniform SGD; returns the profile file the env wrote."""
    env = gym.make("nbs_gym/NeuralBatchSampling-v1", profile_dir=profile_dir, device="cpu", **(QUICK if quick else {}))
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(zero)
    env.close()
    return Path(info["profile_path"])


def main(argv: list[str] | None = None) -> int:
    """Write a profile file, classify from it, print the table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    parser.add_argument("--out", type=Path, default=Path("profiles"), help="folder of the profile file")
    args = parser.parse_args(argv)
    path = write_profiles(args.out, args.quick)

    profiles = load_profiles(path)  # from here on, only the file is needed
    print(
        f"{path}: {profiles.profile_length} snapshots at updates {profiles.snapshot_steps.tolist()}, "
        f"{profiles.n_labeled} labeled and {len(profiles.probe_indices) - profiles.n_labeled} evaluation images"
    )
    config = ClassifierConfig(kind="per_pixel" if args.quick else "dilated_cnn", seed=0, device="cpu")
    predictor = fit_predictor(profiles, config)
    metrics = evaluate(profiles, predictor)
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
