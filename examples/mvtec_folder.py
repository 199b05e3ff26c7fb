"""Run the environment and the classifier on a folder in the MVTec AD layout.

    python examples/mvtec_folder.py --path /data/mvtec/carpet    # a real category folder
    python examples/mvtec_folder.py                              # a small generated folder: ~1 min on a CPU
    python examples/mvtec_folder.py --quick                      # tiny images and episode: ~5 s

Without ``--path``, a small category folder is written to a temporary directory from the synthetic
generator, as PNG files in the layout ``train/good``, ``test/<defect>``,
``ground_truth/<defect>/<name>_mask.png``; any folder laid out like that (MVTec AD, BTAD, your own
data) is read the same way, as ``dataset="mvtec:PATH"``. One uniform-sampling episode then writes its
loss profiles, and the classifier trained on them is scored on the evaluation images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.classifier import ClassifierConfig
from nbs_gym.classify import format_table
from nbs_gym.data import load_dataset, write_mvtec_folder
from nbs_gym.data.synthetic import generate_synthetic
from nbs_gym.evaluation import evaluate_profiles
from nbs_gym.profiles import load_profiles

QUICK = {"episode_length": 20, "profile_length": 4, "image_size": 32, "patch_size": 8, "batch_size": 8}


def classify_folder(path: Path, profile_dir: Path, quick: bool) -> dict[str, dict[str, float]]:
    """One uniform episode on ``mvtec:path``, then the classifier on its profiles; returns the metrics."""
    env_kwargs = QUICK if quick else {}
    dataset = load_dataset(f"mvtec:{path}", image_size=env_kwargs.get("image_size", 64))
    counts = {defect: dataset.defect_types.count(defect) for defect in sorted(set(dataset.defect_types))}
    print(f"{dataset.spec}: {dataset.n_images} images of size {dataset.image_size}; per type {counts}")
    env = gym.make(
        "nbs_gym/NeuralBatchSampling-v1", dataset=f"mvtec:{path}", profile_dir=profile_dir, device="cpu", **env_kwargs
    )
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(zero)
    env.close()
    profiles = load_profiles(info["profile_path"])
    config = ClassifierConfig(kind="per_pixel" if quick else "dilated_cnn", seed=0, device="cpu")
    return evaluate_profiles(profiles, config).metrics


def main(argv: list[str] | None = None) -> int:
    """Classify a real or generated MVTec-layout folder and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    parser.add_argument("--path", type=Path, help="an MVTec-layout category folder (default: generate one)")
    args = parser.parse_args(argv)
    # The evaluator re-reads E's masks from the folder, so it must outlive the evaluation.
    with tempfile.TemporaryDirectory(prefix="nbs_gym_mvtec_") as scratch:
        if args.path is None:
            size = QUICK["image_size"] if args.quick else 64
            dataset = generate_synthetic("grid", image_size=size, n_train=30, n_test_good=8, n_test_per_defect=4)
            folder = write_mvtec_folder(dataset, Path(scratch) / "grid")
        else:
            folder = args.path
        metrics = classify_folder(folder, Path(scratch) / "profiles", args.quick)
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
