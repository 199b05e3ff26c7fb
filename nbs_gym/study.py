"""``python -m nbs_gym.study``: the results study, every sampler x seed on several datasets, in one report.

Examples::

    python -m nbs_gym.study --out results/study                          # fabric grid_stain ic_stain grass, 5 seeds
    python -m nbs_gym.study --out results/study --datasets grid stochastic mvtec --timesteps 10000
    python -m nbs_gym.study --out results/study --datasets mvtec --mvtec /data/mvtec_ad/carpet
    python -m nbs_gym.study --out results/study --collect                # the report of the finished runs

Each dataset is one ``python -m nbs_gym.compare`` into ``OUT/<dataset>/`` (its tables, learning curves and
bar charts are written there), so an interrupted study resumes where it stopped and finished runs are
never redone. With ``--backend ray`` every dataset's runs are submitted as one grid of Ray tasks (the
flags as ``nbs_gym.compare``'s; docs/USAGE.md). Datasets, by name (the first four are the default, the v1 study's):

==============  ================================================================================
``fabric``      the task's own dataset: v1's stain-contaminated ``fabric``, v0's clean ``synthetic``
``grid_stain``  ``synthetic:grid`` with v1's contamination (a fifth of the training images hold an
                unlabeled stain)
``ic_stain``    the object category ``synthetic:ic`` with the same contamination
``grass``       the photograph-based case ``photo:grass?zoom=0.25`` (a reporting photograph)
``grid``        ``synthetic:grid``, clean (the v0 study's)
``stochastic``  ``synthetic:stochastic``, clean (the v0 study's)
``mvtec``       ``mvtec:PATH`` with ``--mvtec PATH``; without it, a folder in the MVTec AD layout
                generated once into ``OUT/mvtec_folder/grid`` (8-bit PNGs of the synthetic ``grid``
                category drawn with another seed), which exercises the folder reader end to end
==============  ================================================================================

``OUT/study.md`` gathers every dataset's table, a summary of each sampler's ratio to ``uniform``
(pixel F1-max, AUPRO and AUROC of the loss-profile predictor, paired by seed, mean [95 % CI]) and, where
the ``oracle`` ran, each sampler's normalised score on that dataset: ``(mean - uniform's mean) /
(oracle's mean - uniform's mean)`` over the paired seeds (0 = ``uniform``, 1 = ``oracle``), with a 95 %
paired bootstrap interval over the seeds. ``OUT/study.json`` holds the same for scripts. Exit status as
``nbs_gym.compare``'s: 0 done, 2 bad arguments, 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from nbs_gym import compare
from nbs_gym.backends import RayBackend
from nbs_gym.cli import Parser, UsageError, exit_process, run_resumable
from nbs_gym.data import write_mvtec_folder
from nbs_gym.data.synthetic import generate_synthetic
from nbs_gym.io import write_text_atomic
from nbs_gym.reporting import (
    RATIO_COLUMNS,
    REFERENCE_AGENT,
    Interval,
    bracketed,
    markdown_rows,
    plus_minus,
)

__all__ = [
    "AGENTS",
    "DATASETS",
    "DEFAULT_DATASETS",
    "MVTEC_FOLDER_SEED",
    "NORMALIZED_COLUMNS",
    "SEEDS",
    "dataset_spec",
    "main",
    "normalized_within",
    "write_report",
]

_STAIN = "contamination=0.2&contaminating_defect=stain"
DATASETS: dict[str, str | None] = {
    "fabric": "",  # the task's own dataset (no --dataset)
    "grid_stain": f"synthetic:grid?{_STAIN}",
    "ic_stain": f"synthetic:ic?{_STAIN}",
    "grass": "photo:grass?zoom=0.25",
    "grid": "synthetic:grid",
    "stochastic": "synthetic:stochastic",
    "mvtec": None,
}
"""Dataset names of the study and their ``--dataset`` specs (``""``: the task's own; ``mvtec``: given by
``--mvtec`` or generated)."""
DEFAULT_DATASETS: tuple[str, ...] = ("fabric", "grid_stain", "ic_stain", "grass")
"""The datasets a study runs unless ``--datasets`` says otherwise."""
AGENTS: tuple[str, ...] = (
    "ppo",
    "a2c",
    "uniform",
    "random",
    "hard_mining",
    "curriculum",
    "loss_rank",
    "reducible_loss",
    "self_paced",
    "oracle",
)
"""The samplers of the study: the two learned ones, the fixed and the published rules, the oracle reference."""
ORACLE = "oracle"
"""The reference whose mean is a normalised score's 1."""
NORMALIZED_COLUMNS: tuple[str, ...] = ("predictor/pixel_f1_max", "predictor/pixel_aupro")
"""Columns of the study's own normalised scores."""
SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
"""The study's fixed seed list."""
MVTEC_FOLDER_SEED = 1
"""Generator seed of the generated MVTec-layout folder (the ``grid`` row uses seed 0)."""


def dataset_spec(name: str, out: Path, mvtec: Path | None) -> str:
    """The ``--dataset`` spec of a study dataset (``""``: the task's own); writes the generated MVTec-layout
    folder if it is needed."""
    spec = DATASETS[name]
    if spec is not None:
        return spec
    if mvtec is not None:
        return f"mvtec:{mvtec.resolve()}"
    folder = out / "mvtec_folder" / "grid"
    if not folder.exists():
        write_mvtec_folder(generate_synthetic("grid", seed=MVTEC_FOLDER_SEED), folder)
    return f"mvtec:{folder.resolve()}"


def write_report(out: Path, datasets: Sequence[str]) -> list[Path]:
    """``OUT/study.md`` and ``OUT/study.json`` from each dataset's ``results.json``; returns their paths."""
    reports = {name: json.loads((out / name / "results.json").read_text()) for name in datasets}
    lines = [
        "# Results study",
        "",
        f"Ratio of each sampler to `{REFERENCE_AGENT}`, per seed then mean [95 % CI] over paired seeds, "
        "of the loss-profile predictor's pixel F1-max, AUPRO and pixel AUROC on the evaluation set E:",
        "",
    ]
    header = ["agent"] + [f"{name}: {column.split('/')[1]}" for name in datasets for column in RATIO_COLUMNS]
    agents = sorted({agent for report in reports.values() for agent in report["agents"]} - {REFERENCE_AGENT})
    rows = [[agent] + [_ratio_cell(reports[name], agent, column) for name in datasets for column in RATIO_COLUMNS]
            for agent in agents]  # fmt: skip
    lines += markdown_rows(header, rows, numeric_from=1)
    normalized = {name: normalized_within(reports[name]) for name in datasets}
    with_oracle = [name for name in datasets if normalized[name]]
    if with_oracle:
        lines += [
            "",
            f"Normalised score on each dataset (0 = `{REFERENCE_AGENT}`, 1 = `{ORACLE}`, means over the paired "
            "seeds) [95 % paired bootstrap interval over seeds]:",
            "",
        ]
        header = ["agent"] + [f"{name}: {c.split('/')[1]}" for name in with_oracle for c in NORMALIZED_COLUMNS]
        rows = [
            [agent] + [_bootstrap_cell(normalized[name].get(agent, {}).get(c)) for name in with_oracle
                       for c in NORMALIZED_COLUMNS]
            for agent in agents if agent != ORACLE
        ]  # fmt: skip
        lines += markdown_rows(header, rows, numeric_from=1)
    for name in datasets:
        settings = reports[name]["settings"]
        lines += [
            "",
            f"## {name}",
            "",
            f"Dataset {_listed(settings['dataset'])}; timesteps per run {_listed(settings['timesteps'])}; "
            f"env settings {_listed(settings['env_kwargs'])}; "
            f"classifier settings {_listed(settings['classifier_kwargs'])}. "
            f"Learning curves: `{name}/learning_curves.png`; bars: `{name}/metrics.png`.",
            "",
        ]
        columns = reports[name]["columns"]
        table = [
            [agent, str(len(row["seeds"]))] + [plus_minus(Interval.from_dict(row["columns"][c])) for c in columns]
            for agent, row in reports[name]["agents"].items()
        ]
        lines += markdown_rows(["agent", "seeds", *columns], table, numeric_from=1)
    written = [
        write_text_atomic(out / "study.md", "\n".join(lines) + "\n"),
        write_text_atomic(
            out / "study.json", json.dumps({"datasets": reports, "normalized": normalized}, indent=2) + "\n"
        ),
    ]
    return written


def normalized_within(report: dict[str, Any], resamples: int = 10_000) -> dict[str, dict[str, dict[str, Any]]]:
    """Each agent's normalised score on one dataset, against that dataset's own ``uniform`` and ``oracle``.

    Args:
        report: A dataset's ``results.json`` (its ``runs``).
        resamples: Bootstrap resamples.

    Returns:
        Agent -> column of :data:`NORMALIZED_COLUMNS` -> ``{"mean", "ci_low", "ci_high", "n"}``: the score
        ``(mean(agent) - mean(uniform)) / (mean(oracle) - mean(uniform))`` over the seeds all three ran,
        and its 95 % percentile bootstrap interval (seeds resampled together, so the pairing holds; seed 0
        of the resampling); ``None`` for a value that is not finite (no gap between uniform's and the
        oracle's means). Empty when ``uniform`` or ``oracle`` lacks runs, and an agent with fewer than
        two paired seeds is left out.
    """
    values: dict[str, dict[int, dict[str, float]]] = {}
    for run in report["runs"]:
        values.setdefault(run["agent"], {})[run["seed"]] = run["values"]
    if REFERENCE_AGENT not in values or ORACLE not in values:
        return {}
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    for agent, by_seed in sorted(values.items()):
        seeds = sorted(set(by_seed) & set(values[REFERENCE_AGENT]) & set(values[ORACLE]))
        if len(seeds) < 2:
            continue
        scores[agent] = {}
        for column in NORMALIZED_COLUMNS:
            samples = [
                np.array([values[key][seed][column] for seed in seeds]) for key in (agent, REFERENCE_AGENT, ORACLE)
            ]
            with warnings.catch_warnings():  # uniform's and the oracle's own scores are constants (0 and 1)
                warnings.simplefilter("ignore", stats.DegenerateDataWarning)
                interval = stats.bootstrap(
                    samples, _normalized, paired=True, vectorized=True, n_resamples=resamples, method="percentile",
                    confidence_level=0.95, random_state=np.random.default_rng(0),
                ).confidence_interval  # fmt: skip
            scores[agent][column] = {
                "mean": _finite(float(_normalized(samples[0], samples[1], samples[2]))),
                "ci_low": _finite(float(interval.low)),
                "ci_high": _finite(float(interval.high)),
                "n": len(seeds),
            }
    return scores


def _normalized(sampler: np.ndarray, uniform: np.ndarray, oracle: np.ndarray, axis: int = -1) -> np.ndarray:
    """``(mean(sampler) - mean(uniform)) / (mean(oracle) - mean(uniform))`` along ``axis``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (sampler.mean(axis=axis) - uniform.mean(axis=axis)) / (oracle.mean(axis=axis) - uniform.mean(axis=axis))


def _finite(value: float) -> float | None:
    """JSON-ready: a score without a finite value (no gap between uniform and the oracle) is ``None``."""
    return value if np.isfinite(value) else None


def _bootstrap_cell(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["mean"] is None:
        return ""
    low, high = (f"{entry[key]:.2f}" if entry[key] is not None else "–" for key in ("ci_low", "ci_high"))
    return f"{entry['mean']:.2f} [{low}, {high}]"


def _listed(values: list[Any]) -> str:
    """The distinct values a setting took over a dataset's runs, e.g. ``40000`` or ``episode_length=20``."""

    def one(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{key}={item}" for key, item in value.items()) or "defaults"
        return f"`{value}`"

    return "; ".join(one(value) for value in values)


def _ratio_cell(report: dict[str, Any], agent: str, column: str) -> str:
    row = report["agents"].get(agent)
    if row is None or column not in row[f"ratio_to_{REFERENCE_AGENT}"]:
        return ""
    return bracketed(Interval.from_dict(row[f"ratio_to_{REFERENCE_AGENT}"][column]))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="python -m nbs_gym.study",
        description="Run nbs_gym.compare on each dataset of the results study and gather one report.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder; dataset D goes to OUT/D")
    parser.add_argument(
        "--datasets", nargs="+", choices=list(DATASETS), default=None, metavar="NAME",
        help=f"datasets to run: {', '.join(DATASETS)} (default: {' '.join(DEFAULT_DATASETS)}; with --collect, all "
        "that have runs)",
    )  # fmt: skip
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), metavar="AGENT",
                        help=f"samplers (default: {' '.join(AGENTS)})")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="N",
                        help=f"seeds (default: {' '.join(map(str, SEEDS))})")  # fmt: skip
    parser.add_argument("--mvtec", type=Path, metavar="PATH", help="an MVTec-layout category folder for 'mvtec'")
    parser.add_argument("--collect", action="store_true", help="run nothing: report the finished runs")
    parser.add_argument("--timesteps", type=int, help="environment steps per run, of every sampler (compare's default)")
    parser.add_argument("--env-id", help="registered task id of every run (compare's default); the datasets "
                        "above replace the task's own")  # fmt: skip
    for flag in ("--env-kwargs", "--hyperparams", "--classifier-kwargs"):
        parser.add_argument(flag, nargs="*", default=[], metavar="KEY=VALUE", help="passed on to nbs_gym.compare")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument(
        "--n-envs",
        type=int,
        metavar="N",
        help="passed on to nbs_gym.compare: training envs of "
        "each learned agent (default: its own; 4 for ppo and a2c on v1)",
    )
    parser.add_argument("--eval-freq", type=int, metavar="N", help="passed on to nbs_gym.compare: the classifier's "
                        "learning curves of the learned agents (default: none)")  # fmt: skip
    parser.add_argument("--checkpoint-freq", type=int, metavar="N", help="passed on to nbs_gym.compare: env steps "
                        "between checkpoints of each run (default: train's)")  # fmt: skip
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    compare.add_backend_flags(parser)
    options = parser.parse_args(argv)
    if options.collect and options.backend != "inprocess":
        raise UsageError("--backend: has no effect with --collect, which only reads runs")
    if options.mvtec is not None and not options.mvtec.is_dir():
        raise UsageError(f"--mvtec: {options.mvtec} is not a folder")
    if options.datasets is None:
        options.datasets = list(DEFAULT_DATASETS)
        if options.collect:
            options.datasets = [name for name in DATASETS if (options.out / name / "runs").is_dir()]
            if not options.datasets:
                raise UsageError(f"--collect: no dataset under {options.out} has runs")
    return options


def _comparison(options: argparse.Namespace, name: str) -> compare.Comparison:
    """The comparison of the study's samplers and seeds on dataset ``name``."""
    selection = {"out": options.out / name, "agents": options.agents, "seeds": options.seeds}
    if options.collect:
        return compare.Comparison(**selection, collect=True)
    return compare.Comparison(
        **selection,
        dataset=dataset_spec(name, options.out, options.mvtec) or None,
        device=options.device,
        timesteps=options.timesteps,
        env_id=options.env_id,
        eval_freq=options.eval_freq,
        checkpoint_freq=options.checkpoint_freq,
        n_envs=options.n_envs,
        env_kwargs=options.env_kwargs or None,
        hyperparams=options.hyperparams or None,
        classifier_kwargs=options.classifier_kwargs or None,
        progress=options.progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m nbs_gym.study`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return run_resumable(lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    options = _parse(argv)
    backend = compare.backend_of(options)
    if isinstance(backend, RayBackend):
        _run_on_ray(options, backend)
    else:
        for name in options.datasets:
            print(f"== {name}", flush=True)
            compare.run(_comparison(options, name), backend)
    written = write_report(options.out, options.datasets)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _run_on_ray(options: argparse.Namespace, backend: RayBackend) -> None:
    """Every dataset's runs as one grid of Ray tasks (planned, and so checked, before any starts); then
    each dataset's tables.

    Raises:
        compare.RunsFailed: Runs that failed while the others finished; the report of the rest is written.
    """
    comparisons = {name: _comparison(options, name) for name in options.datasets}
    plans = {
        name: [dataclasses.replace(plan, label=f"{name}: {plan.label}") for plan in compare.plan(comparison)]
        for name, comparison in comparisons.items()
    }
    failures = backend.execute([plan for group in plans.values() for plan in group], progress=options.progress)
    reported = []
    for name, comparison in comparisons.items():
        print(f"== {name}", flush=True)
        if compare.report(compare.finished_runs(plans[name], failures), comparison.out):
            reported.append(name)
    if failures:
        if reported:
            write_report(options.out, reported)
        raise compare.RunsFailed(failures)


if __name__ == "__main__":
    exit_process(main())
