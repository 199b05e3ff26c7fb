"""Does the reward's potential track what the anomaly classifier achieves? A check on finished runs.

For every run under ``RUNS`` (``nbs_gym.compare``'s ``OUT/runs``), the evaluation episode of the run's
own sampler gives one point: the final separation of L's loss profiles, recomputed from the saved
profiles as the reward would compute it for each ``--context-window``, against the classifier's metrics
on E from the run's ``metrics.json``. Prints the Spearman rank correlation over all points, and within
seeds (each point minus its seed's mean, which removes what every sampler of a seed shares: the
evaluation episode's autoencoder initialisation and draws); then each agent's mean separation (the
first window) and metrics, highest separation first, with the Spearman correlation over the agents.

    python benchmarks/reward_alignment.py results/study/fabric/runs --context-windows 0 7 15
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import spearmanr

from nbs_gym.profiles import load_profiles
from nbs_gym.separation import profile_separation
from nbs_gym.train import agent_profile_files

METRICS = ("predictor/pixel_f1_max", "predictor/pixel_auroc", "final_loss/pixel_auroc")


def points(runs: Path, windows: list[int]) -> list[dict[str, float | str | int]]:
    """One row per finished run: agent, seed, the separation per window and the metrics."""
    rows = []
    for metrics_path in sorted(runs.glob("*/metrics.json")):
        run = metrics_path.parent
        config = yaml.safe_load((run / "config.yaml").read_text())
        metrics = json.loads(metrics_path.read_text())["agent"]
        profiles = load_profiles(agent_profile_files(run)[0])
        maps, masks = profiles.labeled_profiles()
        seed = int(profiles.metadata["config"]["data"]["split_seed"])
        row: dict[str, float | str | int] = {"agent": str(config["agent"]), "seed": int(config["seed"])}
        for window in windows:
            row[f"S_T(w={window})"] = profile_separation(maps.astype(np.float32), masks, "auroc", window, seed)
        for key in METRICS:
            source, name = key.split("/")
            row[key] = float(metrics[source][name])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of run folders (nbs_gym.compare's OUT/runs)")
    parser.add_argument("--context-windows", nargs="+", type=int, default=[0, 7, 15], metavar="W")
    args = parser.parse_args(argv)
    rows = points(args.runs, args.context_windows)
    if len(rows) < 3:
        print(f"error: {args.runs}: need at least 3 finished runs, found {len(rows)}", file=sys.stderr)
        return 2
    by_seed: dict[int, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_seed[int(row["seed"])].append(index)

    def column(key: str, within: bool) -> np.ndarray:
        values = np.array([float(row[key]) for row in rows])
        if within:
            for members in by_seed.values():
                values[members] -= values[members].mean()
        return values

    agents = sorted({str(row["agent"]) for row in rows})
    print(f"{len(rows)} runs ({', '.join(agents)}), seeds {sorted(by_seed)}")
    print(f"{'Spearman rho':24s}" + "".join(f"{key:>26s}" for key in METRICS))
    for within in (False, True):
        for window in args.context_windows:
            key = f"S_T(w={window})"
            label = f"{key}{' within seed' if within else ''}"
            cells = [spearmanr(column(key, within), column(metric, within)).statistic for metric in METRICS]
            print(f"{label:24s}" + "".join(f"{cell:26.3f}" for cell in cells))
    # What a learner of the reward is pulled towards: the samplers ranked by their mean separation.
    key = f"S_T(w={args.context_windows[0]})"
    means = {
        agent: [float(np.mean([float(row[name]) for row in rows if row["agent"] == agent])) for name in (key, *METRICS)]
        for agent in agents
    }
    print(f"\nper agent, mean over seeds, by {key} (highest first)")
    print(f"{'agent':24s}{key:>26s}" + "".join(f"{metric:>26s}" for metric in METRICS))
    for agent, values in sorted(means.items(), key=lambda item: -item[1][0]):
        print(f"{agent:24s}" + "".join(f"{value:26.4f}" for value in values))
    if len(agents) >= 3:
        ranked = np.array(list(means.values()))
        cells = [spearmanr(ranked[:, 0], ranked[:, 1 + index]).statistic for index in range(len(METRICS))]
        print(f"{'Spearman over agents':24s}{'':26s}" + "".join(f"{cell:26.3f}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
