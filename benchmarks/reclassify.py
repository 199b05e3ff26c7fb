"""Train the anomaly classifier again, with other settings, on the saved profiles of a comparison's runs.

A run's episode (and so its loss profiles) does not depend on the classifier; this re-scores a finished
``nbs_gym.compare`` folder's runs with other classifier settings without training any sampler again::

    python benchmarks/reclassify.py --source results/study_v1/grass --out results/study_v1/grass_ensemble3 \\
        --agents uniform oracle self_paced ppo a2c --ensemble 3

Each run ``SOURCE/runs/<agent>__<seed>`` gets ``OUT/runs/<agent>__<seed>/``: its ``config.yaml`` and a
``metrics.json`` equal to the run's but for the agent's ``predictor`` entry, which is the new classifier's
(seed = the run's seed, as ``nbs_gym.train`` seeds it). ``OUT`` is then a compare folder for
``nbs_gym.compare --collect`` and ``benchmarks/combine.py``. Finished runs are skipped, so an interrupted
call resumes; every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from nbs_gym import classify
from nbs_gym.io import write_text_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a finished nbs_gym.compare folder")
    parser.add_argument("--out", type=Path, required=True, help="folder of the re-scored runs")
    parser.add_argument("--agents", nargs="+", default=None, help="only these agents' runs (default: all)")
    parser.add_argument("--ensemble", type=int, default=1, help="classifier members (nbs_gym.classify --ensemble)")
    parser.add_argument("--kind", default=None, help="predictor kind (nbs_gym.classify --kind)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    runs = sorted(path for path in (args.source / "runs").glob("*__*") if (path / "metrics.json").is_file())
    if args.agents is not None:
        runs = [path for path in runs if path.name.rsplit("__", 1)[0] in args.agents]
    if not runs:
        parser.error(f"--source: no finished runs in {args.source / 'runs'}")
    for number, run in enumerate(runs, start=1):
        target = args.out / "runs" / run.name
        if (target / "metrics.json").is_file():
            continue
        seed = int(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["seed"])
        with tempfile.TemporaryDirectory() as scratch:
            flags = ["--seed", str(seed), "--ensemble", str(args.ensemble), "--device", args.device]
            flags += ["--kind", args.kind] if args.kind is not None else []
            # An agent's episode is in profiles/agent; a uniform run's is its uniform evaluation.
            profiles = next(folder for name in ("agent", "uniform") if (folder := run / "profiles" / name).is_dir())
            status = classify.main([str(profiles), *flags, "--no-figures", "--out", scratch])
            if status != 0:
                return status
            predictor = json.loads((Path(scratch) / "metrics.json").read_text(encoding="utf-8"))["predictor"]
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        metrics["agent"]["predictor"] = predictor
        if profiles.name == "uniform":  # a uniform run: both entries are its one evaluation
            metrics["uniform"]["predictor"] = predictor
        else:  # another run's uniform evaluation (--eval-uniform) was not re-scored
            metrics.pop("uniform", None)
        metrics["agent"].pop("normalized", None)  # scored against reference runs of the old classifier
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "config.yaml", target / "config.yaml")
        write_text_atomic(target / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"{number}/{len(runs)} {run.name}: F1-max {predictor['pixel_f1_max']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
