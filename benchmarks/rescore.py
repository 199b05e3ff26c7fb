"""Score finished comparison runs again with another anomaly classifier, without training any sampler again.

Every run of ``nbs_gym.compare`` keeps the loss profiles of its evaluation episode. This refits the
predictor on them with the given classifier settings (e.g. an ensemble) and writes the comparison's
tables for the new scores to ``--out`` (the ``final_loss`` and ``final_separation`` columns do not
depend on the classifier and are copied). Each run's new scores are kept in ``OUT/scores/<run>.json``
with the settings they were made with, so that a later call (more agents, more seeds) reuses them, and
``OUT/runs/<run>/`` holds the run's ``config.yaml`` (its classifier settings replaced) and its
``metrics.json`` with the new predictor scores, so that ``OUT`` is a compare folder again for
``nbs_gym.compare --collect`` and ``benchmarks/combine.py``. The classifier's seed is the run's, as
``nbs_gym.train`` seeds it: with a run's own settings the scores are the run's own.

    python benchmarks/rescore.py results/study/fabric --out results/exp/fabric_ensemble4 \\
        --agents uniform ppo a2c --classifier-kwargs ensemble=4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from nbs_gym.classifier import ClassifierConfig
from nbs_gym.evaluation import evaluate_profiles
from nbs_gym.io import write_text_atomic
from nbs_gym.metrics import METRIC_NAMES
from nbs_gym.profiles import load_profiles
from nbs_gym.reporting import collect_runs, summarize, write_results
from nbs_gym.train import agent_profile_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="a compare --out folder (its runs/ are read)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the new tables")
    parser.add_argument("--agents", nargs="+", help="agents to score (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds to score (default: all)")
    parser.add_argument("--classifier-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.classifier_kwargs)}
    runs = collect_runs(args.comparison / "runs", agents=args.agents, seeds=args.seeds)
    rescored = []
    for run in runs:
        config = ClassifierConfig(**{"seed": run.seed, "device": "cpu", **settings})
        cache = args.out / "scores" / f"{run.run_dir.name}.json"
        stored = json.loads(cache.read_text()) if cache.exists() else None
        if stored is not None and stored["config"] == config.to_dict():
            result = stored["predictor"]
        else:
            profiles = load_profiles(agent_profile_files(run.run_dir)[0])
            result = evaluate_profiles(profiles, config).metrics["predictor"]
            result = {name: float(result[name]) for name in METRIC_NAMES}
            write_text_atomic(cache, json.dumps({"config": config.to_dict(), "predictor": result}, indent=2) + "\n")
        values = dict(run.values)
        for name in METRIC_NAMES:
            values[f"predictor/{name}"] = float(result[name])
        _write_run(run.run_dir, args.out / "runs" / run.run_dir.name, result, settings, run.agent == "uniform")
        print(f"{run.agent} seed {run.seed}: predictor F1-max {result['pixel_f1_max']:.4f}", flush=True)
        # The tables' header reads the classifier settings from each run's config: those of the new scores.
        rescored.append(dataclasses.replace(run, values=values, config={**run.config, "classifier_kwargs": settings}))
    for path in write_results(summarize(rescored), rescored, args.out):
        print(f"wrote {path}")
    return 0


def _write_run(
    source: Path, target: Path, predictor: dict[str, float], settings: dict[str, object], uniform_run: bool
) -> None:
    """``target``: ``source``'s config and metrics with the new predictor scores (atomic writes)."""
    metrics = json.loads((source / "metrics.json").read_text(encoding="utf-8"))
    for entry in [key for key in ("agent", "uniform") if key in metrics]:
        if entry == "uniform" and not uniform_run:
            del metrics[entry]  # another run's uniform evaluation (--eval-uniform) was not scored again
            continue
        metrics[entry]["predictor"] = dict(predictor)  # the new scores only, none of the old classifier's
        metrics[entry].pop("normalized", None)  # made against reference scores of the old classifier
    config = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    config["classifier_kwargs"] = settings
    write_text_atomic(target / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_text_atomic(target / "metrics.json", json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
