"""``python -m nbs_gym.compare``: several samplers x seeds on one dataset, as tables of mean ± 95 % CI.

Examples::

    python -m nbs_gym.compare --agents ppo a2c uniform random --seeds 0 1 2 --out results/fabric
    python -m nbs_gym.compare --agents ppo uniform --seeds 0 1 --timesteps 4000 --out results/quick \\
        --env-kwargs episode_length=50 --hyperparams ppo.n_steps=50 ppo.batch_size=25
    python -m nbs_gym.compare --out results/fabric --collect        # tables and plots of the runs there
    python -m nbs_gym.compare --agents ppo uniform --seeds 0 1 2 3 --out results/fabric --backend ray

Each (agent, seed) is one ``python -m nbs_gym.train`` run in ``OUT/runs/<agent>__<seed>/``, made in this
process one after another, or with ``--backend ray`` as one Ray task each, as many at once as a local Ray
or the cluster at ``--address`` holds (``--cpus-per-run``, ``--gpus-per-run``; :mod:`nbs_gym.backends`,
docs/USAGE.md). A run whose ``metrics.json`` exists is finished and skipped, and an
interrupted one continues from its checkpoint, so that the same command resumes an interrupted
comparison; a finished run made with other settings is an error rather than silently mixed in.
``--collect`` runs nothing and aggregates every finished run under ``OUT/runs`` (``--agents`` and
``--seeds`` then select among them).

Each run's ``metrics.json["agent"]`` gives a row's values (for a baseline such as ``uniform``, its own
evaluation): pixel AUROC, AUPRO, F1-max and image AUROC on the evaluation set E of the classifier
trained on the loss profiles (``predictor``) and of the last loss map (``final_loss``), and the final
separation of L's profiles. Rows list ``uniform`` (the reference) first, then the other agents by
name, whatever the order of ``--agents``, so that ``--collect`` reproduces a comparison's tables.

Written to ``OUT`` (atomically):

========================  ===============================================================================
``results.md``            the table, mean ± half-width of the 95 % CI over seeds, and each agent's ratio
                          to ``uniform`` (paired by seed) for the predictor's pixel F1-max, AUPRO and
                          AUROC
``results.csv``           the same numbers, one row per agent, columns ``<metric>_mean|ci_low|ci_high``
``results.json``          the same plus every run's values, for scripts
``learning_curves.png``   ``nbs/separation`` against timesteps from each run's TensorBoard events (moving
                          average of 10 episodes), mean ± CI over seeds; fixed-rule samplers, which do
                          not train, as their evaluated level; beside it, for runs trained with
                          ``--eval-freq``, the predictor's F1-max on E over training
``metrics.png``           the table's columns as bars with CI error bars and each seed's value as a dot
========================  ===============================================================================

Confidence intervals are Student t over seeds (n - 1 degrees of freedom); with one seed there is none,
shown as "–". Exit status: 0 done, 2 bad arguments or run folders (one ``error:`` line on stderr; a
failing run prints its own; on Ray, runs that failed while the others finished, each named with its
error), 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from agents.registry import get_spec
from nbs_gym import train
from nbs_gym.backends import BACKENDS, Backend, InProcess, RayBackend, RunFailure, RunPlan
from nbs_gym.cli import Parser, UsageError, exit_process, run_resumable
from nbs_gym.reporting import (
    REFERENCE_AGENT,
    AgentSummary,
    FinishedRun,
    collect_runs,
    markdown_tables,
    read_run,
    run_dir_name,
    summarize,
    write_results,
)

__all__ = [
    "Comparison",
    "RunsFailed",
    "add_backend_flags",
    "backend_of",
    "finished_runs",
    "main",
    "plan",
    "report",
    "run",
]

# Flags that define runs; --collect only reads runs, so giving one with it is a mistake worth reporting.
_RUN_FLAGS = (
    "timesteps",
    "env_id",
    "dataset",
    "env_kwargs",
    "hyperparams",
    "classifier_kwargs",
    "device",
    "n_envs",
    "eval_freq",
    "checkpoint_freq",
    "progress",
)
# Saved settings that do not change a run's results (evaluations during training and checkpoints leave
# it as it is).
_COSMETIC = ("progress", "eval_freq", "eval_uniform", "checkpoint_freq")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m nbs_gym.compare`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return run_resumable(lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    settings, backend = _parse(argv)
    run(settings, backend)
    return 0


@dataclass(frozen=True)
class Comparison:
    """The settings of one comparison: ``python -m nbs_gym.compare``'s flags, as :func:`run` takes them.

    ``None`` is a flag not given (``nbs_gym.train``'s default). ``env_kwargs``, ``hyperparams`` and
    ``classifier_kwargs`` are ``KEY=VALUE`` strings as on the command line (``hyperparams`` entries may be
    ``AGENT.KEY=VALUE``). Without ``collect``, ``agents`` defaults to ppo, a2c, uniform, random and
    ``seeds`` to 0, 1, 2; with it, both select among the runs found (``None``: all).

    Raises:
        UsageError: An agent or seed given twice, a negative seed, or a run-defining setting with ``collect``.
    """

    out: str | Path
    agents: Sequence[str] | None = None
    seeds: Sequence[int] | None = None
    collect: bool | None = None
    timesteps: int | None = None
    env_id: str | None = None
    dataset: str | None = None
    env_kwargs: Sequence[str] | None = None
    hyperparams: Sequence[str] | None = None
    classifier_kwargs: Sequence[str] | None = None
    device: str | None = None
    n_envs: int | None = None
    eval_freq: int | None = None
    checkpoint_freq: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.collect:
            given = [name for name in _RUN_FLAGS if getattr(self, name) is not None]
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')}: has no effect with --collect, which only reads runs")
        else:
            object.__setattr__(self, "agents", list(self.agents or ["ppo", "a2c", "uniform", "random"]))
            object.__setattr__(self, "seeds", list(self.seeds) if self.seeds is not None else [0, 1, 2])
        for name in ("agents", "seeds"):
            values = list(getattr(self, name) or [])
            repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
            if repeated:
                raise UsageError(f"--{name}: {repeated[0]} given twice")
        if any(seed < 0 for seed in self.seeds or []):
            raise UsageError("--seeds: must be integers >= 0")


class RunsFailed(ValueError):
    """Runs of a grid that failed while the others finished (the Ray backend), each reported with its error
    as it failed; the message names them."""

    def __init__(self, failures: Sequence[RunFailure]) -> None:
        self.failures = list(failures)
        listed = ", ".join(failure.plan.label for failure in self.failures)
        super().__init__(
            f"{len(self.failures)} run(s) failed, each with its error above ({listed}); the same command "
            "again retries them and keeps the finished ones"
        )


def run(settings: Comparison, backend: Backend | None = None) -> list[AgentSummary]:
    """Make (or resume) every run of ``settings`` with ``backend``, or only collect the finished ones,
    then write and print the tables and figures; returns the per-agent summaries.

    Args:
        settings: The comparison.
        backend: Where the runs are made (default :class:`nbs_gym.backends.InProcess`, one after another
            in this process; :class:`nbs_gym.backends.RayBackend` for Ray tasks).

    Raises:
        ValueError: A bad setting, a run folder made with other settings, or a run that failed on its
            settings (named); in process, nothing after it runs.
        RunsFailed: Runs that failed on Ray while the others finished; the tables of those that
            finished are written first.
        KeyboardInterrupt: Ctrl-C; the same settings again resume where it stopped.
    """
    out = Path(settings.out)
    if settings.collect:
        runs = collect_runs(out / "runs", agents=settings.agents, seeds=settings.seeds)
        return report(runs, out)
    plans = plan(settings)
    failures = (backend or InProcess()).execute(plans, progress=settings.progress is not False)
    summaries = report(finished_runs(plans, failures), out)
    if failures:
        raise RunsFailed(failures)
    return summaries


def finished_runs(plans: Sequence[RunPlan], failures: Sequence[RunFailure]) -> list[FinishedRun]:
    """The runs of ``plans`` that did not fail, read back."""
    failed = {failure.plan.run_dir for failure in failures}
    return [read_run(item.run_dir) for item in plans if item.run_dir not in failed]


def report(runs: Sequence[FinishedRun], out: str | Path) -> list[AgentSummary]:
    """Write and print the tables and figures of finished ``runs`` into ``out``; returns the summaries."""
    if not runs:
        return []
    summaries = summarize(list(runs))
    written = write_results(summaries, list(runs), Path(out))
    print(markdown_tables(summaries))
    print("wrote " + ", ".join(str(path) for path in written))
    return summaries


def backend_of(options: argparse.Namespace) -> Backend:
    """The backend that ``--backend``, ``--address``, ``--cpus-per-run``, ``--gpus-per-run`` and
    ``--max-retries`` ask for (``add_backend_flags``'s flags).

    Raises:
        UsageError: A Ray flag without ``--backend ray``.
        ValueError: Ray is not installed, or a bad figure.
    """
    if options.backend != "ray":
        given = [
            name
            for name in ("address", "cpus_per_run", "gpus_per_run", "max_retries")
            if getattr(options, name) is not None
        ]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')}: only with --backend ray")
        return InProcess()
    resources = {name: getattr(options, name) for name in ("cpus_per_run", "gpus_per_run", "max_retries")}
    return RayBackend(address=options.address, **{key: value for key, value in resources.items() if value is not None})


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of :func:`backend_of` (shared by ``nbs_gym.compare`` and ``nbs_gym.study``)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="inprocess",
        help="where the runs are made: inprocess (one after another, the default) or ray (one Ray task each, "
        "as many at once as the cluster's CPUs and GPUs hold; the ray extra)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        default=None,
        help="with --backend ray: a running Ray cluster (auto, HOST:PORT, ray://HOST:PORT); default: a local "
        "Ray with this machine's cores",
    )
    parser.add_argument(
        "--cpus-per-run", type=float, metavar="X", default=None, help="with --backend ray: CPUs per run (default: 1)"
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        metavar="X",
        default=None,
        help="with --backend ray: GPUs per run, a fraction shares a GPU, e.g. 0.25 (default: 0)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        default=None,
        help="with --backend ray: times a run whose worker died is run again, from its last checkpoint (default: 3)",
    )


# ---------------------------------------------------------------------------------------------- CLI


def _parse(argv: Sequence[str] | None) -> tuple[Comparison, Backend]:
    parser = Parser(
        prog="python -m nbs_gym.compare",
        description="Train and evaluate several batch samplers over several seeds with nbs_gym.train, then "
        "tabulate mean ± 95 % CI per metric and plot learning curves.",
        # None marks a flag as not given, so that --collect can reject run-defining flags.
        argument_default=None,
    )
    parser.add_argument(
        "--agents",
        nargs="+",
        metavar="AGENT",
        help="agents as nbs_gym.train's --agent takes them "
        "(default: ppo a2c uniform random; with --collect: every agent found)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="N",
        help="seeds of each agent (default: 0 1 2; with --collect: every seed found)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; runs go to DIR/runs")
    parser.add_argument("--collect", action="store_true", help="run nothing: aggregate the finished runs in DIR/runs")
    parser.add_argument(
        "--timesteps", type=int, metavar="N", help=f"environment steps per run (default: {train.DEFAULT_TIMESTEPS})"
    )
    parser.add_argument(
        "--env-id", help=f"registered task id of every run (default: {train.DEFAULT_ENV_ID}); see nbs_gym.tasks"
    )
    parser.add_argument(
        "--dataset", help="synthetic, synthetic:CATEGORY, photo:NAME or mvtec:PATH (default: the task's dataset)"
    )
    parser.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="env settings for every run")
    parser.add_argument(
        "--hyperparams",
        nargs="*",
        metavar="[AGENT.]KEY=VALUE",
        help="agent constructor settings: KEY=VALUE for every RL algorithm (the fixed-rule "
        "baselines take none), AGENT.KEY=VALUE for that agent only, e.g. ppo.n_steps=400",
    )
    parser.add_argument(
        "--classifier-kwargs", nargs="*", metavar="KEY=VALUE", help="anomaly classifier settings for every run"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument(
        "--n-envs",
        type=int,
        metavar="N",
        help="training envs of each learned agent (nbs_gym.train --n-envs, the batched vector env; default: its own)",
    )
    parser.add_argument(
        "--eval-freq",
        type=int,
        metavar="N",
        help="evaluate each learned agent every N env steps while it trains (nbs_gym.train --eval-freq): the "
        "classifier's learning curve beside the reward's in learning_curves.png (default: none)",
    )
    parser.add_argument(
        "--checkpoint-freq",
        type=int,
        metavar="N",
        help="env steps between checkpoints of each run (nbs_gym.train --checkpoint-freq; default: train's)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="show a progress bar while training (default: on)"
    )
    add_backend_flags(parser)
    options = vars(parser.parse_args(argv))
    backend_options = argparse.Namespace(
        **{name: options.pop(name) for name in ("backend", "address", "cpus_per_run", "gpus_per_run", "max_retries")}
    )
    settings = Comparison(**options)
    if settings.collect and backend_options.backend != "inprocess":
        raise UsageError("--backend: has no effect with --collect, which only reads runs")
    return settings, backend_of(backend_options)


def plan(options: Comparison) -> list[RunPlan]:
    """Every run of ``options``, each validated (and each finished run's settings checked) before any runs.

    Raises:
        ValueError: A bad agent or flag, or a run folder made with other settings.
    """
    if options.collect:
        raise ValueError("a comparison with collect=True makes no runs")
    agents, seeds = list(options.agents or []), list(options.seeds or [])  # set by Comparison without collect
    for agent in agents:
        get_spec(agent)
    hyperparams = _hyperparams_by_agent(agents, options.hyperparams or [])
    plans = []
    for agent in agents:
        for seed in seeds:
            run_dir = Path(options.out) / "runs" / run_dir_name(agent, seed)
            argv = ["--agent", agent, "--seed", str(seed), "--run-dir", str(run_dir)]
            if options.timesteps is not None:
                argv += ["--timesteps", str(options.timesteps)]
            for flag, values in (
                ("--env-kwargs", options.env_kwargs),
                ("--hyperparams", hyperparams[agent]),
                ("--classifier-kwargs", options.classifier_kwargs),
            ):
                if values:
                    argv += [flag, *values]
            for flag in ("env_id", "dataset", "device"):
                if getattr(options, flag) is not None:
                    argv += [f"--{flag.replace('_', '-')}", getattr(options, flag)]
            if options.eval_freq is not None and get_spec(agent).kind == "sb3":
                argv += ["--eval-freq", str(options.eval_freq)]
            if options.n_envs is not None and get_spec(agent).kind == "sb3":
                argv += ["--n-envs", str(options.n_envs)]
            if options.checkpoint_freq is not None:
                argv += ["--checkpoint-freq", str(options.checkpoint_freq)]
            if options.progress is False:
                argv.append("--no-progress")
            if agent != REFERENCE_AGENT:
                argv.append("--no-eval-uniform")  # the reference's own runs are the table's uniform row
            args = train.parse_args(argv)
            item = RunPlan(f"{agent} seed {seed}", run_dir, args)
            train.check_settings(args)
            _check_existing(item, args)
            plans.append(item)
    return plans


def _hyperparams_by_agent(agents: Sequence[str], entries: Sequence[str]) -> dict[str, list[str]]:
    """Each agent's ``KEY=VALUE`` list: plain entries for the RL algorithms, ``AGENT.KEY=VALUE`` for one agent."""
    rl_agents = [agent for agent in agents if get_spec(agent).kind == "sb3"]
    by_agent: dict[str, list[str]] = {agent: [] for agent in agents}
    for entry in entries:
        key, separator, value = entry.partition("=")
        if not separator or not key:
            raise UsageError(f"--hyperparams: expected [AGENT.]KEY=VALUE, got {entry!r}")
        # Plug-in names hold dots too; the key is what follows the last one.
        target, dot, name = key.rpartition(".")
        if not dot:
            for agent in rl_agents:
                by_agent[agent].append(entry)
        elif target in by_agent:
            by_agent[target].append(f"{name}={value}")
        else:
            raise UsageError(f"--hyperparams {entry}: {target!r} is not one of --agents ({', '.join(agents)})")
    return by_agent


def _check_existing(plan: RunPlan, args: train.Args) -> None:
    """A run folder left by an earlier comparison must have been made with ``args``.

    Raises:
        ValueError: It was not; the message names the first differing setting.
    """
    config_path = plan.run_dir / train.CONFIG_FILE
    if not config_path.is_file():
        return
    try:
        saved = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())  # YAML errors span lines; bad input is reported on one
        raise ValueError(f"{config_path}: not valid YAML ({reason}); remove the run folder to redo it") from error
    if not isinstance(saved, dict):
        raise ValueError(f"{config_path}: expected a mapping of settings; remove the run folder to redo it")
    try:
        made = train.resume_args(plan.run_dir)  # the run's arguments, as --resume would continue it
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: {error}; remove the run folder to redo it") from error
    for item in dataclasses.fields(train.Args):
        key = item.name
        if key in (*_COSMETIC, "config", "resume", "run_dir"):
            continue
        if getattr(made, key) != getattr(args, key):
            raise ValueError(
                f"{plan.run_dir}: made with {key}={getattr(made, key)!r}, this comparison asks for "
                f"{getattr(args, key)!r}; use another --out or remove that folder"
            )


if __name__ == "__main__":
    exit_process(main())
