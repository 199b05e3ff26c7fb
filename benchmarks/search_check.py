"""Does a search's score track the test? Each scored trial of an ``nbs_gym.tune`` search, after the fact.

``nbs_gym.tune`` scores a trial on the images of the labeled set L that the anomaly classifier held out
(``metrics.json["agent"]["validation"]``), never on the evaluation set E. This prints, for every trial
under ``OUT/trials`` that trained to the end, that score and the same metric on E, ranked by the score,
and the Spearman correlation between the two over the trials: near 1, the search's best trial is also
best on the test; near 0 or below, the search picks by the noise of a few held-out images. Run it only
once a search is over: choosing settings by its E column would make E part of the search.

    python benchmarks/search_check.py results/tune_ppo_v1 --metric pixel_f1_max
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from scipy.stats import spearmanr

METRICS = ("pixel_f1_max", "pixel_aupro", "pixel_auroc")


def scored_trials(out: Path, metric: str) -> list[dict[str, object]]:
    """``{"trial", "settings", "score", "test"}`` of each trial in ``out/trials`` that has a score, best score first."""
    rows = []
    for run_dir in sorted((out / "trials").iterdir()):
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            continue  # stopped early by the scheduler, or unfinished
        agent = json.loads(metrics_file.read_text())["agent"]
        score = (agent.get("validation") or {}).get(metric)
        if score is None:
            continue
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        settings = {**config.get("hyperparams", {}), **{f"env.{k}": v for k, v in config.get("env_kwargs", {}).items()}}
        rows.append({"trial": run_dir.name, "settings": settings, "score": score, "test": agent["predictor"][metric]})
    return sorted(rows, key=lambda row: -float(row["score"]))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the search's --out folder")
    parser.add_argument("--metric", choices=METRICS, default="pixel_f1_max", help="default: pixel_f1_max")
    args = parser.parse_args(argv)
    if not (args.out / "trials").is_dir():
        print(f"error: {args.out}: no trials/ folder (not an nbs_gym.tune --out folder)", file=sys.stderr)
        return 2
    rows = scored_trials(args.out, args.metric)
    if not rows:
        print(f"error: {args.out}: no trial trained to the end with a {args.metric} score", file=sys.stderr)
        return 2
    print(f"| trial | settings | score on L's held-out images | {args.metric} on E |")
    print("|---|---|---|---|")
    for row in rows:
        settings = ", ".join(f"{key}={_short(value)}" for key, value in row["settings"].items())  # type: ignore[attr-defined]
        print(f"| {row['trial']} | {settings} | {row['score']:.4f} | {row['test']:.4f} |")
    if len(rows) >= 3:
        rho = spearmanr([row["score"] for row in rows], [row["test"] for row in rows]).statistic
        print(f"\nSpearman correlation of score and test over {len(rows)} trials: {rho:.2f}")
    else:
        print(f"\n{len(rows)} scored trial(s): too few for a correlation")
    return 0


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
