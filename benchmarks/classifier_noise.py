"""How much of a run's predictor score is the classifier's own training noise? Refits on the same profiles.

For each run folder given (``nbs_gym.train`` or ``nbs_gym.compare`` runs), the loss profiles of the
run's own evaluation episode are classified again with K classifier seeds, and the spread of the
predictor's metrics on E is printed: the part of a sampler-to-sampler difference that any reward, and
any sampler, cannot control. With ``--ensemble M``, each of the K predictors is an ensemble of M
networks (disjoint seeds), which shows how much of that noise the ensemble removes.

    python benchmarks/classifier_noise.py results/study/fabric/runs/uniform__0 results/study/fabric/runs/ppo__0
    python benchmarks/classifier_noise.py results/study/fabric/runs/uniform__0 --classifier-seeds 3 --ensemble 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nbs_gym.classifier import ClassifierConfig
from nbs_gym.evaluation import evaluate_profiles
from nbs_gym.profiles import load_profiles
from nbs_gym.train import agent_profile_files

METRICS = ("pixel_auroc", "pixel_f1_max")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="finished run folders (their metrics.json names the profiles)",
    )
    parser.add_argument("--classifier-seeds", type=int, default=5, metavar="K")
    parser.add_argument("--ensemble", type=int, default=1, metavar="M", help="networks per predictor")
    args = parser.parse_args(argv)
    print(f"{'run':28s}" + "".join(f"{m + ' mean':>18s}{m + ' sd':>16s}" for m in METRICS) + "   per seed F1-max")
    spreads = []
    for run in args.runs:
        try:
            files = agent_profile_files(run)
        except OSError:
            print(f"error: {run}: no metrics.json (not a finished nbs_gym.train run)", file=sys.stderr)
            return 2
        profiles = load_profiles(files[0])
        scores = []
        for repeat in range(args.classifier_seeds):
            config = ClassifierConfig(seed=repeat * args.ensemble, ensemble=args.ensemble, device="cpu")
            result = evaluate_profiles(profiles, config).metrics["predictor"]
            scores.append([result[m] for m in METRICS])
        values = np.array(scores)
        spreads.append(values.std(axis=0, ddof=1))
        cells = "".join(f"{values[:, i].mean():18.4f}{values[:, i].std(ddof=1):16.4f}" for i in range(len(METRICS)))
        print(f"{run.name:28s}{cells}   {' '.join(f'{v:.3f}' for v in values[:, 1])}", flush=True)
    mean_spread = np.mean(spreads, axis=0)
    print("mean sd over runs: " + ", ".join(f"{m} {s:.4f}" for m, s in zip(METRICS, mean_spread, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
