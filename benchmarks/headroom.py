"""How much can any batch composition gain over uniform sampling? Oracle samplers that see every mask.

A sampler acts only through which pool patches the autoencoder trains on. This script bounds what that
can buy: it runs evaluation episodes, exactly as ``nbs_gym.train`` does (env seed 1,000,000 + seed,
classifier seed = seed), with samplers no agent could be, because they read the masks of every image:

``uniform``        plain uniform sampling over the pool (the study's reference; same numbers)
``clean``          only patches without an anomalous pixel: the autoencoder never sees a defect
``defects=F``      a share F of each batch from patches that hold anomalous pixels, the rest clean

and prints the classifier's metrics on E with 95 % CIs over seeds, and the per-seed ratio to uniform.

    python benchmarks/headroom.py --seeds 0 1 2 3 4
    python benchmarks/headroom.py --dataset synthetic:grid --defect-shares 0.25 0.5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nbs_gym.classifier import ClassifierConfig, evaluate, fit_predictor
from nbs_gym.compare import mean_ci
from nbs_gym.data import AnomalyDataset, load_dataset
from nbs_gym.env import NeuralBatchSamplingEnv
from nbs_gym.profiles import load_profiles
from nbs_gym.train import EVAL_SEED_OFFSET

METRICS = ("predictor/pixel_auroc", "predictor/pixel_f1_max", "final_loss/pixel_auroc", "final_loss/pixel_f1_max")


class OracleEnv(NeuralBatchSamplingEnv):
    """The env with batches drawn by the masks of all images: a share ``defect_share`` from patches that
    hold anomalous pixels, the rest from patches that hold none (the action is ignored)."""

    def __init__(self, dataset_object: AnomalyDataset, defect_share: float, **kwargs: Any) -> None:
        super().__init__(dataset_object=dataset_object, **kwargs)
        dataset = dataset_object
        self.defect_share = defect_share
        snapshot_index = np.union1d(self.split.pool, self.split.probe)
        image = snapshot_index[self._patch_image]
        size = self.config.patch_size
        corners = zip(image, self._patch_y, self._patch_x, strict=True)
        touched = np.array([dataset.masks[i, y : y + size, x : x + size].any() for i, y, x in corners])
        self._defect_patches, self._clean_patches = np.flatnonzero(touched), np.flatnonzero(~touched)

    def _draw(self, composition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = self.config.batch_size
        n_defect = int(self.np_random.binomial(batch, self.defect_share))
        ids = np.concatenate(
            [
                self.np_random.choice(self._defect_patches, n_defect),
                self.np_random.choice(self._clean_patches, batch - n_defect),
            ]
        )
        return ids, np.bincount(self._groups_of(ids), minlength=len(composition))


def episode_metrics(env: NeuralBatchSamplingEnv, seed: int) -> dict[str, float]:
    """One evaluation episode (zero action) and the classifier's metrics on E, from the saved profiles."""
    env.reset(seed=seed + EVAL_SEED_OFFSET)
    zero = np.zeros(env.action_space.shape, np.float32)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(zero)
    profiles = load_profiles(info["profile_path"])  # float16 on disk, as nbs_gym.train scores them
    result = evaluate(profiles, fit_predictor(profiles, ClassifierConfig(seed=seed, device="cpu")))
    return {key: float(result[key.split("/")[0]][key.split("/")[1]]) for key in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--defect-shares", nargs="*", type=float, default=[0.5], metavar="F")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset)
    with tempfile.TemporaryDirectory(prefix="nbs_gym_headroom_") as scratch:
        settings = {"device": "cpu", "dataset": args.dataset}
        uniform = NeuralBatchSamplingEnv(dataset_object=dataset, profile_dir=Path(scratch) / "uniform", **settings)
        samplers: dict[str, NeuralBatchSamplingEnv] = {"uniform": uniform}
        samplers["clean"] = OracleEnv(dataset, 0.0, profile_dir=Path(scratch) / "clean", **settings)
        for share in args.defect_shares:
            name = f"defects={share:g}"
            samplers[name] = OracleEnv(dataset, share, profile_dir=Path(scratch) / name, **settings)
        results = {name: [episode_metrics(env, seed) for seed in args.seeds] for name, env in samplers.items()}

    print(f"{args.dataset}, seeds {args.seeds}: mean ± half-width of the 95 % CI")
    print(f"{'sampler':14s}" + "".join(f"{key:>26s}" for key in METRICS) + f"{'F1 ratio to uniform':>26s}")
    for name, rows in results.items():
        cells = []
        for key in METRICS:
            interval = mean_ci([row[key] for row in rows])
            cells.append(f"{interval.mean:.4f} ± {interval.half_width:.4f}")
        key = "predictor/pixel_f1_max"
        ratio = mean_ci([row[key] / base[key] for row, base in zip(rows, results["uniform"], strict=True)])
        cells.append(f"{ratio.mean:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]")
        print(f"{name:14s}" + "".join(f"{cell:>26s}" for cell in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
