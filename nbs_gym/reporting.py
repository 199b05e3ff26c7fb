"""Reporting of a comparison: its finished runs read back, mean ± 95 % CI per agent, the tables and figures.

:func:`collect_runs` reads the runs under a folder (each ``nbs_gym.train`` run's ``config.yaml``,
``metrics.json`` and TensorBoard events) as :class:`FinishedRun` rows; :func:`summarize` gives each
agent's intervals over seeds (Student t, :func:`mean_ci`) and its per-seed ratios to
:data:`REFERENCE_AGENT`; :func:`write_results` writes ``results.md``, ``results.csv``, ``results.json``,
``learning_curves.png`` and ``metrics.png`` (described in :mod:`nbs_gym.compare`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nbs_gym import train
from nbs_gym.figures import save_figure
from nbs_gym.io import path_safe, write_text_atomic
from nbs_gym.metrics import METRIC_NAMES, metric_at
from nbs_gym.scores import REFERENCE_METRICS
from nbs_gym.tasks import task_config

__all__ = [
    "CLASSIFIER_CURVE_TAG",
    "COLUMNS",
    "CONFIDENCE",
    "CURVE_TAG",
    "RATIO_COLUMNS",
    "REFERENCE_AGENT",
    "AgentSummary",
    "CurvePoint",
    "FinishedRun",
    "Interval",
    "bracketed",
    "collect_runs",
    "markdown_rows",
    "mean_ci",
    "plus_minus",
    "read_run",
    "markdown_tables",
    "csv_table",
    "run_dir_name",
    "smoothed_curve",
    "summarize",
    "write_results",
]

SOURCES = ("predictor", "final_loss")
METRICS = METRIC_NAMES
COLUMNS: tuple[str, ...] = (*(f"{source}/{metric}" for source in SOURCES for metric in METRICS), "final_separation")
"""Table columns: ``<scorer>/<metric>`` keys of a run's ``metrics.json["agent"]``, then its final separation."""
REFERENCE_AGENT = "uniform"
"""The agent every other one is compared with: plain SGD, the paper's "no sampler" ablation."""
RATIO_COLUMNS: tuple[str, ...] = ("predictor/pixel_f1_max", "predictor/pixel_aupro", "predictor/pixel_auroc")
"""Columns reported as per-seed ratios to :data:`REFERENCE_AGENT`."""
CONFIDENCE = 0.95
CURVE_TAG = "nbs/separation"
"""TensorBoard scalar of the learning curves (logged by :class:`nbs_gym.callbacks.EpisodeStatsCallback`)."""
CLASSIFIER_CURVE_TAG = "eval/during_training/predictor/pixel_f1_max"
"""TensorBoard scalar of the classifier's learning curves (``nbs_gym.train --eval-freq``)."""
CURVE_SMOOTHING = 10
"""Episodes in the trailing moving average of each run's curve before the mean over seeds is taken.

The window spans ``CURVE_SMOOTHING`` episodes' worth of env steps, so that it covers as many episodes
whether each logged point is one episode or the mean of several (several envs ending together)."""

_NO_INTERVAL = "–"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its confidence interval (``nan`` bounds with fewer than two values).

    Attributes:
        mean: Sample mean.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        n: Number of values.
    """

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width; ``nan`` without an interval."""
        return (self.high - self.low) / 2.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        """Inverse of :meth:`to_dict` (``None`` back to ``nan``)."""
        mean, low, high = (math.nan if data[key] is None else float(data[key]) for key in ("mean", "ci_low", "ci_high"))
        return cls(mean, low, high, int(data["n"]))

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: ``nan`` as ``None``."""
        return {
            "mean": _json_float(self.mean),
            "ci_low": _json_float(self.low),
            "ci_high": _json_float(self.high),
            "n": self.n,
        }


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and two-sided Student-t confidence interval of the mean of ``values``.

    The interval is ``mean ± t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)``, ``s`` the sample standard
    deviation; with one value it is undefined (``nan`` bounds), with equal values it is the mean itself.

    Raises:
        ValueError: ``values`` is empty.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_ci: no values")
    mean = float(array.mean())
    if array.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    # t.ppf times the standard error rather than t.interval: the latter returns nan when all values are
    # equal (scale 0), where the interval is exactly the mean.
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, array.size - 1) * stats.sem(array))
    return Interval(mean, mean - half, mean + half, int(array.size))


@dataclass(frozen=True)
class FinishedRun:
    """One finished ``nbs_gym.train`` run of a comparison, as its run directory holds it.

    Attributes:
        agent: The ``--agent`` of the run.
        seed: Its ``--seed``.
        run_dir: The run directory.
        config: Its resolved arguments (``config.yaml``).
        values: Column of :data:`COLUMNS` -> the agent's value on E.
        normalized: Metric of :data:`nbs_gym.scores.REFERENCE_METRICS` -> the agent's normalised score
            (0 = uniform, 1 = oracle), when ``metrics.json`` holds it (a run on its task's own settings).
        curve: ``(timesteps, separation)`` of the :data:`CURVE_TAG` events, or ``None`` when the run logged
            none (fixed-rule samplers do not train).
        classifier_curve: ``(timesteps, F1-max)`` of the :data:`CLASSIFIER_CURVE_TAG` events (a run with
            ``--eval-freq``), or ``None``.
    """

    agent: str
    seed: int
    run_dir: Path
    config: dict[str, Any]
    values: dict[str, float]
    curve: tuple[np.ndarray, np.ndarray] | None
    classifier_curve: tuple[np.ndarray, np.ndarray] | None = None
    normalized: dict[str, float] = field(default_factory=dict)

    @property
    def episode_steps(self) -> int | None:
        """Env steps per episode of the run's task and settings, or ``None`` where its config does not say."""
        try:
            return task_config(str(self.config["env_id"]), **(self.config.get("env_kwargs") or {})).n_steps
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class CurvePoint:
    """The classifier's F1-max at one evaluation during training (``--eval-freq``), over an agent's seeds.

    Attributes:
        step: Env steps trained by then (summed over the envs).
        f1_max: Mean and CI of the predictor's pixel F1-max on E over the seeds evaluated at ``step``.
        ratio: Mean and CI of the per-seed ratio to :data:`REFERENCE_AGENT`'s F1-max on E (its table
            value: the same evaluation episode seed and classifier seed), over the seeds both have;
            ``None`` without such seeds.
    """

    step: int
    f1_max: Interval
    ratio: Interval | None


@dataclass(frozen=True)
class AgentSummary:
    """One table row: an agent's values over its seeds.

    Attributes:
        agent: Agent name.
        seeds: Seeds of its runs, ascending.
        columns: Column of :data:`COLUMNS` -> mean and CI over the seeds.
        ratios: Column of :data:`RATIO_COLUMNS` -> mean and CI of the per-seed ratio to
            :data:`REFERENCE_AGENT` over the seeds both have; empty for the reference itself or without it.
        normalized: Metric of :data:`nbs_gym.scores.REFERENCE_METRICS` -> mean and CI of the per-seed
            normalised score; empty unless every run of the agent has one.
        classifier_curve: The classifier's learning curve, one point per evaluation step of its runs
            with ``--eval-freq``; empty without them.
    """

    agent: str
    seeds: tuple[int, ...]
    columns: dict[str, Interval]
    ratios: dict[str, Interval]
    normalized: dict[str, Interval] = field(default_factory=dict)
    classifier_curve: tuple[CurvePoint, ...] = ()


def run_dir_name(agent: str, seed: int) -> str:
    """Folder of one run under ``OUT/runs``: ``<agent>__<seed>``, the agent name made path-safe."""
    return f"{path_safe(agent)}__{seed}"


def collect_runs(
    runs_dir: str | Path, agents: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> list[FinishedRun]:
    """Every finished run (one with ``metrics.json``) directly under ``runs_dir``, optionally filtered.

    Agent and seed come from each run's ``config.yaml``, not from the folder name.

    Raises:
        ValueError: No finished run is left, a run folder is malformed, or the runs used different datasets.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"{runs_dir}: no such folder; run the comparison first (without --collect)")
    runs = [read_run(path.parent) for path in sorted(runs_dir.glob("*/metrics.json"))]
    runs = [run for run in runs if (agents is None or run.agent in agents) and (seeds is None or run.seed in seeds)]
    if not runs:
        raise ValueError(f"{runs_dir}: no finished run (a folder with metrics.json) of the selected agents and seeds")
    datasets = sorted({str(run.config.get("dataset")) for run in runs})
    if len(datasets) > 1:
        raise ValueError(f"{runs_dir}: runs on different datasets ({', '.join(datasets)}); compare one at a time")
    return runs


def summarize(runs: Sequence[FinishedRun], confidence: float = CONFIDENCE) -> list[AgentSummary]:
    """Table rows: per agent, mean and CI of each column, and the per-seed ratios to the reference.

    Rows are :data:`REFERENCE_AGENT` first, then the other agents by name.

    Raises:
        ValueError: Two runs of one agent share a seed.
    """
    by_agent: dict[str, dict[int, FinishedRun]] = {}
    for run in runs:
        seeds = by_agent.setdefault(run.agent, {})
        if run.seed in seeds:
            raise ValueError(
                f"{run.run_dir} and {seeds[run.seed].run_dir}: two runs of {run.agent} with seed {run.seed}"
            )
        seeds[run.seed] = run
    reference = by_agent.get(REFERENCE_AGENT, {})
    summaries = []
    for agent in sorted(by_agent, key=lambda name: (name != REFERENCE_AGENT, name)):
        seeds = dict(sorted(by_agent[agent].items()))
        columns = {column: mean_ci((run.values[column] for run in seeds.values()), confidence) for column in COLUMNS}
        paired = [seed for seed in seeds if seed in reference]
        ratios = {}
        if agent != REFERENCE_AGENT and paired:
            for column in RATIO_COLUMNS:
                # A reference of 0 (F1-max where E has no anomalous pixel) has no ratio: that seed is left out.
                values = [
                    seeds[seed].values[column] / reference[seed].values[column]
                    for seed in paired
                    if reference[seed].values[column] != 0
                ]
                ratios[column] = mean_ci(values, confidence) if values else Interval(math.nan, math.nan, math.nan, 0)
        normalized = {}
        if all(run.normalized for run in seeds.values()):
            normalized = {
                metric: mean_ci((run.normalized[metric] for run in seeds.values()), confidence)
                for metric in REFERENCE_METRICS
            }
        curve = _classifier_curve(seeds, reference, confidence)
        summaries.append(AgentSummary(agent, tuple(seeds), columns, ratios, normalized, curve))
    return summaries


def _classifier_curve(
    seeds: dict[int, FinishedRun], reference: dict[int, FinishedRun], confidence: float
) -> tuple[CurvePoint, ...]:
    """Per evaluation step of the runs' classifier curves: F1-max over the seeds, and its ratio to the reference."""
    by_step: dict[int, dict[int, float]] = {}
    for seed, run in seeds.items():
        if run.classifier_curve is not None:
            for step, value in zip(*run.classifier_curve, strict=True):
                by_step.setdefault(int(step), {})[seed] = float(value)
    column = RATIO_COLUMNS[0]
    points = []
    for step, values in sorted(by_step.items()):
        ratios = [
            value / reference[seed].values[column]
            for seed, value in values.items()
            if seed in reference and reference[seed].values[column] != 0
        ]
        points.append(
            CurvePoint(step, mean_ci(values.values(), confidence), mean_ci(ratios, confidence) if ratios else None)
        )
    return tuple(points)


def write_results(summaries: Sequence[AgentSummary], runs: Sequence[FinishedRun], out: str | Path) -> list[Path]:
    """Write ``results.{md,csv,json}``, ``learning_curves.png`` and ``metrics.png`` to ``out``; returns the paths."""
    out = Path(out)
    header = _settings(runs)
    report = {
        "settings": header,
        "confidence": CONFIDENCE,
        "columns": list(COLUMNS),
        "agents": {
            row.agent: {
                "seeds": list(row.seeds),
                "columns": {column: interval.to_dict() for column, interval in row.columns.items()},
                f"ratio_to_{REFERENCE_AGENT}": {column: interval.to_dict() for column, interval in row.ratios.items()},
                "normalized": {metric: interval.to_dict() for metric, interval in row.normalized.items()},
                "classifier_curve": [
                    {
                        "step": point.step,
                        "f1_max": point.f1_max.to_dict(),
                        f"ratio_to_{REFERENCE_AGENT}": None if point.ratio is None else point.ratio.to_dict(),
                    }
                    for point in row.classifier_curve
                ],
            }
            for row in summaries
        },
        "runs": [
            {
                "agent": run.agent,
                "seed": run.seed,
                "run_dir": run.run_dir.name,
                "values": {key: _json_float(value) for key, value in run.values.items()},
            }
            for run in sorted(runs, key=lambda run: (run.agent, run.seed))
        ],
    }
    written = [
        write_text_atomic(out / "results.json", json.dumps(report, indent=2) + "\n"),
        write_text_atomic(out / "results.csv", csv_table(summaries)),
        write_text_atomic(out / "results.md", _markdown_report(summaries, header)),
        save_figure(_learning_curve_figure(summaries, runs), out / "learning_curves.png"),
        save_figure(_metrics_figure(summaries, runs), out / "metrics.png"),
    ]
    return written


# ---------------------------------------------------------------------------------------------- reading runs


def read_run(run_dir: Path) -> FinishedRun:
    """A finished run's agent, seed, table values and learning curve.

    Raises:
        ValueError: ``config.yaml`` or ``metrics.json`` is missing or lacks a value of the table.
    """
    try:
        config = yaml.safe_load((run_dir / train.CONFIG_FILE).read_text(encoding="utf-8"))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["agent"]
        values = {column: float(metric_at(metrics, column)) for column in COLUMNS}
        normalized = {metric: float(value) for metric, value in metrics.get("normalized", {}).items()}
        agent, seed = str(config["agent"]), int(config["seed"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{run_dir}: not a finished nbs_gym.train run ({type(error).__name__}: {error})") from error
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    curve, classifier_curve = (_read_curve(events, tag) for tag in (CURVE_TAG, CLASSIFIER_CURVE_TAG))
    return FinishedRun(agent, seed, run_dir, config, values, curve, classifier_curve, normalized)


def _read_curve(events: EventAccumulator, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A run's ``tag`` scalars as ``(timesteps, values)``, the last value of a repeated step kept."""
    if tag not in events.Tags()["scalars"]:
        return None
    # A resumed run logs into a second event file and may repeat steps; the later value wins.
    by_step = {event.step: event.value for event in events.Scalars(tag)}
    steps = np.array(sorted(by_step), dtype=np.float64)
    return steps, np.array([by_step[step] for step in sorted(by_step)], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- tables


def _settings(runs: Sequence[FinishedRun]) -> dict[str, Any]:
    """What the runs share, read from their configs, so that --collect writes the same header."""

    def distinct(key: str) -> list[Any]:
        return sorted({json.dumps(run.config.get(key), sort_keys=True) for run in runs})

    return {
        "dataset": [json.loads(value) for value in distinct("dataset")],
        "timesteps": [json.loads(value) for value in distinct("timesteps")],
        "seeds": sorted({run.seed for run in runs}),
        "env_kwargs": [json.loads(value) for value in distinct("env_kwargs")],
        "classifier_kwargs": [json.loads(value) for value in distinct("classifier_kwargs")],
    }


def _markdown_report(summaries: Sequence[AgentSummary], settings: dict[str, Any]) -> str:
    def listed(values: list[Any]) -> str:
        return ", ".join(f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`" for value in values)

    lines = [
        "# Batch samplers compared",
        "",
        f"Dataset {listed(settings['dataset'])}; seeds {', '.join(map(str, settings['seeds']))}; "
        f"timesteps per run {listed(settings['timesteps'])}; env settings {listed(settings['env_kwargs'])}; "
        f"classifier settings {listed(settings['classifier_kwargs'])}.",
        "",
        "Metrics on the evaluation set E: `predictor` is the anomaly classifier trained on the loss profiles "
        "of the labeled set L, `final_loss` the last snapshot's loss map; `final_separation` is the separation "
        "of L's profiles at the end of the evaluation episode.",
        "",
        markdown_tables(summaries),
        "",
    ]
    return "\n".join(lines)


def markdown_tables(summaries: Sequence[AgentSummary]) -> str:
    """The main table, its note, and the ratio table when there is a reference."""
    header = ["agent", "seeds", *COLUMNS]
    rows = [[row.agent, str(len(row.seeds)), *(plus_minus(row.columns[c]) for c in COLUMNS)] for row in summaries]
    lines = markdown_rows(header, rows, numeric_from=1)
    lines += [
        "",
        f"Mean ± half-width of the {CONFIDENCE:.0%} confidence interval of the mean over seeds (Student t, "
        f"n - 1 degrees of freedom); {_NO_INTERVAL}: one seed, no interval.",
    ]
    with_ratios = [row for row in summaries if row.ratios]
    if with_ratios:
        lines += [
            "",
            f"Ratio to `{REFERENCE_AGENT}` (per seed, then mean [{CONFIDENCE:.0%} CI] over paired seeds):",
            "",
        ]
        ratio_rows = [
            [row.agent, str(row.ratios[RATIO_COLUMNS[0]].n), *(bracketed(row.ratios[c]) for c in RATIO_COLUMNS)]
            for row in with_ratios
        ]
        lines += markdown_rows(["agent", "paired seeds", *RATIO_COLUMNS], ratio_rows, numeric_from=1)
    elif not any(row.agent == REFERENCE_AGENT for row in summaries):
        lines += ["", f"No ratios: `{REFERENCE_AGENT}` is not among the agents."]
    with_scores = [row for row in summaries if row.normalized]
    if with_scores:
        lines += [
            "",
            f"Normalised score (0 = `uniform`, 1 = `oracle`, by the task's reference scores, `nbs_gym.scores`; "
            f"per seed, then mean [{CONFIDENCE:.0%} CI]):",
            "",
        ]
        score_rows = [[row.agent, *(bracketed(row.normalized[m]) for m in REFERENCE_METRICS)] for row in with_scores]
        lines += markdown_rows(["agent", *REFERENCE_METRICS], score_rows, numeric_from=1)
    with_curves = [row for row in summaries if row.classifier_curve]
    if with_curves:
        lines += [
            "",
            "The classifier during training (`--eval-freq`): predictor pixel F1-max on E after one evaluation "
            "episode of the sampler as trained by then (mean ± half-width over seeds), and its ratio to "
            f"`{REFERENCE_AGENT}`'s F1-max above (per seed, then mean [{CONFIDENCE:.0%} CI]):",
            "",
        ]
        curve_rows = [
            [
                row.agent,
                f"{point.step:,}",
                str(point.f1_max.n),
                plus_minus(point.f1_max),
                "" if point.ratio is None else bracketed(point.ratio),
            ]
            for row in with_curves
            for point in row.classifier_curve
        ]
        lines += markdown_rows(
            ["agent", "env steps", "seeds", "predictor/pixel_f1_max", f"ratio to {REFERENCE_AGENT}"],
            curve_rows,
            numeric_from=1,
        )
    return "\n".join(lines)


def markdown_rows(header: list[str], rows: list[list[str]], numeric_from: int) -> list[str]:
    """A Markdown table's lines; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if index < numeric_from else "---:" for index in range(len(header))]
    return ["| " + " | ".join(cells) + " |" for cells in (header, align, *rows)]


def plus_minus(interval: Interval) -> str:
    """``mean ± half-width`` of a table cell ("–" without an interval)."""
    half = _NO_INTERVAL if math.isnan(interval.half_width) else f"{interval.half_width:.4f}"
    return f"{interval.mean:.4f} ± {half}"


def bracketed(interval: Interval) -> str:
    """``mean [low, high]`` of a ratio cell ("–" without an interval)."""
    if math.isnan(interval.half_width):
        return f"{interval.mean:.3f} [{_NO_INTERVAL}]"
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def csv_table(summaries: Sequence[AgentSummary]) -> str:
    """One row per agent; an interval is three columns, empty where undefined."""
    ratio_names = [f"{column}_ratio_to_{REFERENCE_AGENT}" for column in RATIO_COLUMNS]
    score_names = [f"{metric}_normalized" for metric in REFERENCE_METRICS]
    header = ["agent", "n_seeds", "seeds"]
    for name in (*COLUMNS, *ratio_names, *score_names):
        header += [f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in summaries:
        cells: list[Any] = [row.agent, len(row.seeds), " ".join(map(str, row.seeds))]
        intervals = [row.columns[column] for column in COLUMNS] + [row.ratios.get(column) for column in RATIO_COLUMNS]
        intervals += [row.normalized.get(metric) for metric in REFERENCE_METRICS]
        for interval in intervals:
            bounds = (interval.mean, interval.low, interval.high) if interval is not None else (math.nan,) * 3
            cells += ["" if math.isnan(value) else repr(value) for value in bounds]
        writer.writerow(cells)
    return buffer.getvalue()


def _json_float(value: float) -> float | None:
    """``nan`` has no JSON spelling; ``None`` (``null``) stands for it."""
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------------------------- figures


def _learning_curve_figure(summaries: Sequence[AgentSummary], runs: Sequence[FinishedRun]) -> Figure:
    """Mean ± CI over seeds of each agent's training curve; a fixed rule's evaluated level as a dashed band.

    A second panel shows the classifier's F1-max over training where runs logged it (``--eval-freq``).
    """
    with_classifier = any(run.classifier_curve is not None for run in runs)
    figure = _new_figure(13.0 if with_classifier else 7.0, 4.5)
    axes = figure.subplots(1, 2 if with_classifier else 1, squeeze=False)[0]
    colours = _colours(summaries)
    panels = [("curve", "final_separation", True)] + ([("classifier_curve", "predictor/pixel_f1_max", False)]
                                                       if with_classifier else [])  # fmt: skip
    for axis, (attribute, column, smooth) in zip(axes, panels, strict=True):
        finite_steps = [curve[0] for run in runs if (curve := getattr(run, attribute)) is not None and len(curve[0])]
        right = max((float(steps[-1]) for steps in finite_steps), default=1.0)
        for row in summaries:
            curves = [
                (run, curve)
                for run in runs
                if run.agent == row.agent and (curve := getattr(run, attribute)) is not None and len(curve[0])
            ]
            colour = colours[row.agent]
            if curves:
                smoothed = [
                    smoothed_curve(curve[0], curve[1], run.episode_steps) if smooth else curve for run, curve in curves
                ]
                grid, mean, low, high = _mean_curve(smoothed)
                marker = "o" if len(grid) < 2 or not smooth else None  # a curve of one point draws no line
                axis.plot(grid, mean, color=colour, marker=marker, label=f"{row.agent} (n={len(curves)})")
                axis.fill_between(grid, low, high, color=colour, alpha=0.2, linewidth=0)
            else:
                level = row.columns[column]
                label = f"{row.agent} ({'fixed rule: ' if attribute == 'curve' else ''}evaluated level)"
                axis.axhline(level.mean, color=colour, linestyle="--", label=label)
                if not math.isnan(level.half_width):
                    axis.axhspan(level.low, level.high, color=colour, alpha=0.1, linewidth=0)
        axis.set_xlim(0, right)
        axis.set_xlabel("timesteps (env steps)")
        axis.legend(fontsize="small")
    axes[0].set_ylabel(f"separation of L at episode end\n({CURVE_TAG}, mean of the last {CURVE_SMOOTHING} episodes)")
    axes[0].set_title(f"learning curves, mean and {CONFIDENCE:.0%} CI over seeds")
    if with_classifier:
        axes[1].set_ylabel(f"predictor pixel F1-max on E, one evaluation episode\n({CLASSIFIER_CURVE_TAG})")
        axes[1].set_title("the classifier over training")
    figure.tight_layout()
    return figure


def smoothed_curve(steps: np.ndarray, values: np.ndarray, episode_steps: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving average over the last :data:`CURVE_SMOOTHING` episodes (all of a shorter curve).

    A logged point at step ``t`` is the mean of the episodes that ended since the point before, so the
    window is ``CURVE_SMOOTHING * episode_steps`` env steps ending at ``t``: the same number of episodes
    whether one env or several log together. A point is shown once its window lies past step 0. Without
    ``episode_steps`` the window is ``CURVE_SMOOTHING`` points.
    """
    if episode_steps is None:
        window = max(1, min(CURVE_SMOOTHING, len(values)))
        averaged = np.convolve(values, np.full(window, 1.0 / window), mode="valid")
        return steps[window - 1 :], averaged
    span = min(float(CURVE_SMOOTHING * episode_steps), float(steps[-1]))
    shown = np.flatnonzero(steps >= span)
    first = np.searchsorted(steps, steps[shown] - span, side="right")  # points in (t - span, t]
    sums = np.concatenate([[0.0], np.cumsum(values)])
    averaged = (sums[shown + 1] - sums[first]) / (shown + 1 - first)
    return steps[shown], averaged


def _mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Seeds log at different steps: interpolate each onto the union of steps where all have data."""
    start = max(float(steps[0]) for steps, _ in curves)
    stop = min(float(steps[-1]) for steps, _ in curves)
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    grid = grid[(grid >= start) & (grid <= stop)]
    values = np.stack([np.interp(grid, steps, curve) for steps, curve in curves])
    intervals = [mean_ci(column) for column in values.T]
    return (
        grid,
        np.array([interval.mean for interval in intervals]),
        np.array([interval.low for interval in intervals]),
        np.array([interval.high for interval in intervals]),
    )


def _metrics_figure(summaries: Sequence[AgentSummary], runs: Sequence[FinishedRun]) -> Figure:
    """One panel per column: a bar per agent (mean, CI error bar) and each seed's value as a dot."""
    n_columns = 3
    n_rows = math.ceil(len(COLUMNS) / n_columns)
    figure = _new_figure(3.2 * n_columns, 2.6 * n_rows)
    axes = figure.subplots(n_rows, n_columns, squeeze=False).ravel()
    colours = _colours(summaries)
    positions = np.arange(len(summaries))
    for axis, column in zip(axes, COLUMNS, strict=False):
        intervals = [row.columns[column] for row in summaries]
        errors = [0.0 if math.isnan(interval.half_width) else interval.half_width for interval in intervals]
        axis.bar(
            positions,
            [interval.mean for interval in intervals],
            yerr=errors,
            color=[colours[row.agent] for row in summaries],
            alpha=0.7,
            capsize=4,
        )
        for position, row in zip(positions, summaries, strict=True):
            seeds = [run.values[column] for run in runs if run.agent == row.agent]
            axis.plot(np.full(len(seeds), position), seeds, "k.", markersize=4)
        axis.set_xticks(positions, [row.agent for row in summaries], rotation=30, ha="right", fontsize="small")
        axis.set_title(column, fontsize="small")
    for axis in axes[len(COLUMNS) :]:
        axis.set_visible(False)
    figure.suptitle(f"metrics on E: mean, {CONFIDENCE:.0%} CI (bars) and seeds (dots)")
    figure.tight_layout()
    return figure


def _colours(summaries: Sequence[AgentSummary]) -> dict[str, str]:
    return {row.agent: f"C{index % 10}" for index, row in enumerate(summaries)}


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot state, no display needed."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure
