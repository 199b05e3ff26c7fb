"""``python -m nbs_gym.tune``: a hyperparameter search for a batch sampler with Ray Tune.

Examples::

    python -m nbs_gym.tune --agent ppo --trials 16 --out results/tune_ppo        # the shipped PPO space
    python -m nbs_gym.tune --agent a2c --space my_space.yml --trials 32 --out results/tune_a2c \\
        --env-id nbs_gym/NeuralBatchSamplingQuantile-v1 --n-envs 4 --address auto
    python -m nbs_gym.train --config results/tune_ppo/best.yml                   # train the best one

Each trial is one ``nbs_gym.train`` run with the trial's settings over the fixed ones (the flags below,
as ``nbs_gym.train`` takes them), made in ``OUT/trials/<trial id>/`` with the same seed for every trial.
While an SB3 agent trains, each rollout from its first update on reports the mean return of its latest
episodes (``reward``) and the env steps so far (``timesteps``) to the scheduler: ASHA (``--scheduler
asha``, the default) stops the trials whose reward trails the others' at the same step. A trial that
trains to the end is scored by its predictor's metric (``--metric``, pixel F1-max by default) on the
images of the labeled set L that the anomaly classifier held out
(:func:`nbs_gym.evaluation.validation_metrics`): never on E's masks, which stay the test. The search
algorithm proposes each trial's settings from the scores so far: Optuna's TPE (``--search optuna``, the
default where optuna is installed) or random sampling.

The search space is a YAML file, one entry per setting: an agent constructor keyword, or ``env.KEY``
for an env setting (``decision_interval``, ``batch_size``, ...)::

    learning_rate: {loguniform: [1.0e-5, 1.0e-3]}   # low, high (YAML reads 1e-5 as text: write 1.0e-5)
    n_steps: {choice: [100, 200, 400]}
    gae_lambda: {uniform: [0.9, 1.0]}
    n_epochs: {randint: [3, 11]}                     # integers low .. high - 1
    env.decision_interval: {choice: [1, 5]}

The shipped spaces, for ``ppo`` and ``a2c``, are ``nbs_gym/hyperparams/tune_<agent>.yml``.

Written to ``OUT`` (atomically): ``best.yml`` (the best trial's settings, as ``nbs_gym.train --config``
reads them), ``trials.md`` and ``trials.csv`` (every trial: its settings, status, steps, reward and
score), ``search.json`` (what defines the search), and Tune's own state under ``OUT/search/``, from
which the same command resumes a stopped search: finished trials are kept, unfinished ones continue
from their run's last checkpoint; other settings for a search there are an error. ``best.yml`` keeps
the search's ``--seed``, so it trains the best trial again.

Exit status: 0 done; 2 bad input (one ``error:`` line: a flag, the space file, the address, a resumed
search's changed settings; nothing started), or a search that ended with failed trials or none scored
(``trials.md`` lists them; Tune's log under ``OUT/search`` has the errors); 130 interrupted (run the
same command again to resume).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback

from agents.registry import get_spec
from nbs_gym import train
from nbs_gym.backends import RayBackend, RunPlan, make_run, ray_available
from nbs_gym.cli import Interrupted, Parser, UsageError, exit_process, run_resumable
from nbs_gym.config import EnvConfig
from nbs_gym.io import write_text_atomic

__all__ = [
    "DISTRIBUTIONS",
    "METRICS",
    "SearchSpace",
    "TuneReport",
    "best_config",
    "default_space_path",
    "load_space",
    "main",
    "write_outputs",
]

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
"""The distributions a search-space entry may name."""
METRICS = ("pixel_f1_max", "pixel_aupro", "pixel_auroc")
"""Predictor metrics on L's held-out images that ``--metric`` may score trials by."""
ENV_PREFIX = "env."
"""Prefix of a search-space key that is an env setting rather than an agent's."""
# Run settings that a search's trials share; given as nbs_gym.train flags.
_RUN_FLAGS = ("timesteps", "env_id", "dataset", "n_envs", "device", "checkpoint_freq")
_RAY_EXTRA = "pip install -e \".[ray]\" (or pip install 'ray[tune]' optuna)"
SETTINGS_FILE = "search.json"
"""The file in ``OUT`` that records what defines a search, checked when it resumes."""


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file: setting -> ``(distribution, arguments)``.

    ``hyperparams`` are agent constructor keywords, ``env`` env settings (the ``env.`` keys, prefix
    dropped).
    """

    source: Path
    hyperparams: dict[str, tuple[str, list[Any]]]
    env: dict[str, tuple[str, list[Any]]]

    def to_tune(self) -> dict[str, Any]:
        """The space as Ray Tune's ``param_space`` (env settings keep their ``env.`` prefix)."""
        from ray import tune

        domains = {
            "uniform": lambda args: tune.uniform(*args),
            "loguniform": lambda args: tune.loguniform(*args),
            "choice": lambda args: tune.choice(args),
            "randint": lambda args: tune.randint(*args),
        }
        space = {key: domains[kind](args) for key, (kind, args) in self.hyperparams.items()}
        space |= {ENV_PREFIX + key: domains[kind](args) for key, (kind, args) in self.env.items()}
        return space

    def examples(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``(hyperparams, env settings)`` to check the space against a run with: the low end of every
        range and the first of every choice, then each other choice and each range's high end in turn."""
        entries = [(key, kind, args, False) for key, (kind, args) in self.hyperparams.items()]
        entries += [(key, kind, args, True) for key, (kind, args) in self.env.items()]
        first = {(key, is_env): args[0] for key, _, args, is_env in entries}
        variants = [first]
        for key, kind, args, is_env in entries:
            others = args[1:] if kind == "choice" else [args[1] - (1 if kind == "randint" else 0)]
            variants += [first | {(key, is_env): value} for value in others]
        return [
            (
                {key: value for (key, is_env), value in variant.items() if not is_env},
                {key: value for (key, is_env), value in variant.items() if is_env},
            )
            for variant in variants
        ]


def default_space_path(agent: str) -> Path | None:
    """The shipped search space of ``agent`` (``nbs_gym/hyperparams/tune_<agent>.yml``), if there is one."""
    path = Path(str(resources.files("nbs_gym") / "hyperparams" / f"tune_{agent}.yml"))
    return path if path.is_file() else None


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space file (the entries' form; :func:`check_space` checks the names).

    Raises:
        ValueError: The file is not a mapping of ``KEY: {DISTRIBUTION: [ARGS]}``, names an unknown
            distribution, or gives arguments that distribution cannot take (the entry named).
        OSError: The file cannot be read.
    """
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"--space {path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"--space {path}: expected a mapping of SETTING: {{DISTRIBUTION: [ARGS]}}")
    hyperparams, env = {}, {}
    for key, entry in entries.items():
        where = f"--space {path}: {key}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"{where}: expected one of {', '.join(DISTRIBUTIONS)} with its arguments, got {entry!r}")
        ((kind, args),) = entry.items()
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"{where}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
        _check_arguments(where, kind, args)
        if str(key).startswith(ENV_PREFIX):
            env[str(key)[len(ENV_PREFIX) :]] = (kind, list(args))
        else:
            hyperparams[str(key)] = (kind, list(args))
    return SearchSpace(path, hyperparams, env)


def _check_arguments(where: str, kind: str, args: Any) -> None:
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: choice takes a non-empty list of values, got {args!r}")
        return
    numbers = isinstance(args, list) and len(args) == 2
    numbers = numbers and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in args)
    if not numbers:
        hint = " (YAML reads 1e-5 as text: write 1.0e-5)" if "e" in str(args) else ""
        raise ValueError(f"{where}: {kind} takes [low, high], two numbers, got {args!r}{hint}")
    low, high = args
    if not low < high:
        raise ValueError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(value, int) for value in args):
        raise ValueError(f"{where}: randint takes two integers, got {args!r}")


def check_space(space: SearchSpace, base: train.Args) -> None:
    """Every setting of ``space`` must be one the run takes: the agent's constructor keywords, the
    env's settings (and not one the base settings already fix).

    Raises:
        ValueError: The first unknown or clashing setting, named with the file.
    """
    for key in space.hyperparams:
        if key in base.hyperparams:
            raise ValueError(f"--space {space.source}: {key} is searched, so --hyperparams cannot fix it")
    for key in space.env:
        if key in base.env_kwargs:
            raise ValueError(f"--space {space.source}: env.{key} is searched, so --env-kwargs cannot fix it")
    where = f"--space {space.source}"
    names = train.hyperparameter_names(get_spec(base.agent))
    for key in space.hyperparams:
        if names is not None and key not in names:
            raise ValueError(f"{where}: {key}: agent {base.agent!r} takes no such setting")
    env_settings = {item.name for item in dataclasses.fields(EnvConfig)}
    for key in space.env:
        if key not in env_settings:
            raise ValueError(f"{where}: env.{key}: the env has no such setting (see nbs_gym.config.EnvConfig)")
    for hyperparams, env_kwargs in space.examples():
        probe = dataclasses.replace(
            base, hyperparams=base.hyperparams | hyperparams, env_kwargs=base.env_kwargs | env_kwargs
        )
        try:
            train.check_settings(probe)
        except ValueError as error:
            values = ", ".join(f"{key}={value!r}" for key, value in {**hyperparams, **env_kwargs}.items())
            raise ValueError(f"{where}: with {values}: {error}") from None


class TuneReport(BaseCallback):
    """Reports ``reward`` (mean return of the latest finished episodes) and ``timesteps`` to Ray Tune at
    each rollout's end, for the scheduler to stop trials that trail.

    Nothing is reported before the agent's first update: until then its episodes are those of its
    initial policy, which with the search's one seed is the same for every trial of an architecture, so
    a scheduler would compare trials by nothing their settings did.
    """

    def __init__(self, episodes: int = 4) -> None:
        super().__init__()
        self.episodes = episodes
        self.reward = math.nan

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        from ray import tune

        if getattr(self.model, "_n_updates", 1) == 0:
            return
        buffer = list(self.model.ep_info_buffer or [])[-self.episodes :]
        if buffer:
            self.reward = float(np.mean([info["r"] for info in buffer]))
            # No score until the trial's evaluation: NaN, which the search algorithm is not told of.
            tune.report({"timesteps": int(self.model.num_timesteps), "reward": self.reward, "score": math.nan})


def _trial(config: dict[str, Any], base: train.Args, trials_dir: str, metric: str, driver_cwd: str) -> None:
    """One trial in a Tune worker: its run (resumed where one was interrupted), then its score. It works in
    the driver's folder where that exists (Tune starts it in the trial's own), so that relative paths in
    the settings mean what they meant there."""
    from ray import tune

    if Path(driver_cwd).is_dir():
        os.chdir(driver_cwd)
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(trials_dir) / trial_id
    args = dataclasses.replace(_with_config(base, config), run_dir=str(run_dir), progress=False)
    reporter = TuneReport()
    make_run(RunPlan(f"trial {trial_id}", run_dir, args), progress=False, report=False, callbacks=[reporter])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    validation = metrics["agent"].get("validation") or {}
    result = {"timesteps": int(args.timesteps), "reward": reporter.reward, "score": validation.get(metric, math.nan)}
    result |= {f"validation_{key}": value for key, value in validation.items()}
    tune.report(result)


def _with_config(base: train.Args, config: dict[str, Any]) -> train.Args:
    """``base`` with a trial's settings: agent keywords into ``hyperparams``, ``env.KEY`` into ``env_kwargs``."""
    hyperparams = {key: value for key, value in config.items() if not key.startswith(ENV_PREFIX)}
    env_kwargs = {key[len(ENV_PREFIX) :]: value for key, value in config.items() if key.startswith(ENV_PREFIX)}
    return dataclasses.replace(
        base, hyperparams=base.hyperparams | _plain(hyperparams), env_kwargs=base.env_kwargs | _plain(env_kwargs)
    )


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Numpy scalars from the search algorithms as Python numbers (they go to YAML and JSON)."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in values.items()}


def best_config(base: train.Args, config: dict[str, Any]) -> dict[str, Any]:
    """The settings of the run that ``config`` (a trial's) gives over ``base``, as ``--config`` reads them."""
    settings = dataclasses.asdict(_with_config(base, config))
    for name in ("run_dir", "resume", "config", "progress", "eval_uniform"):
        settings.pop(name)
    return settings


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m nbs_gym.tune`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return run_resumable(lambda: _run(argv))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="python -m nbs_gym.tune",
        description="Search an agent's hyperparameters with Ray Tune: ASHA stops trials on the reward, each "
        "finished trial is scored on the labeled set's held-out images, and the best settings are written as "
        "a file that nbs_gym.train --config reads.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (resumes a search there)")
    parser.add_argument("--agent", default="ppo", help="the agent to tune, as nbs_gym.train --agent (default: ppo)")
    parser.add_argument(
        "--space", type=Path, metavar="FILE", help="search-space YAML (default: nbs_gym/hyperparams/tune_AGENT.yml)"
    )
    parser.add_argument("--trials", type=int, default=16, metavar="N", help="trials to run (default: 16)")
    parser.add_argument("--metric", choices=METRICS, default="pixel_f1_max", help="the score (default: pixel_f1_max)")
    parser.add_argument(
        "--search", choices=("optuna", "random"), help="search algorithm (default: optuna where installed, else random)"
    )
    parser.add_argument(
        "--scheduler", choices=("asha", "fifo"), default="asha", help="asha stops trailing trials; fifo runs all"
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        metavar="N",
        help="env steps every trial trains before ASHA may stop it (default: an eighth of --timesteps)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every trial's run and of the search (default: 0)")
    parser.add_argument("--max-concurrent", type=int, metavar="N", help="trials at once (default: as resources allow)")
    parser.add_argument("--address", help="a running Ray cluster (auto, HOST:PORT); default: a local Ray")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="X", help="CPUs per trial (default: 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="X", help="GPUs per trial (default: 0)")
    parser.add_argument("--timesteps", type=int, help=f"env steps per trial (default: {train.DEFAULT_TIMESTEPS})")
    parser.add_argument("--env-id", help=f"registered task id (default: {train.DEFAULT_ENV_ID})")
    parser.add_argument("--dataset", help="synthetic, synthetic:CATEGORY, photo:NAME or mvtec:PATH")
    parser.add_argument(
        "--n-envs", type=int, metavar="N", help="training envs per trial (default: the agent's, as nbs_gym.train's)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--checkpoint-freq", type=int, metavar="N", help="env steps between a trial's checkpoints")
    for flag in ("--env-kwargs", "--hyperparams", "--classifier-kwargs"):
        parser.add_argument(flag, nargs="*", default=[], metavar="KEY=VALUE", help="fixed for every trial")
    options = parser.parse_args(argv)
    if options.trials < 1:
        raise UsageError(f"--trials: must be >= 1, got {options.trials}")
    if options.max_concurrent is not None and options.max_concurrent < 1:
        raise UsageError(f"--max-concurrent: must be >= 1, got {options.max_concurrent}")
    for flag in ("cpus_per_trial", "gpus_per_trial"):
        if not getattr(options, flag) >= 0 or (flag == "cpus_per_trial" and not options.cpus_per_trial > 0):
            bound = "> 0" if flag == "cpus_per_trial" else ">= 0"
            raise UsageError(f"--{flag.replace('_', '-')}: must be a number {bound}, got {getattr(options, flag)}")
    return options


def _base_args(options: argparse.Namespace) -> train.Args:
    argv = ["--agent", options.agent, "--seed", str(options.seed), "--no-eval-uniform", "--no-progress"]
    for name in _RUN_FLAGS:
        if getattr(options, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(options, name))]
    for flag in ("env_kwargs", "hyperparams", "classifier_kwargs"):
        if getattr(options, flag):
            argv += [f"--{flag.replace('_', '-')}", *getattr(options, flag)]
    return train.parse_args(argv)


def _run(argv: Sequence[str] | None) -> int:
    options = _parse(argv)
    if not ray_available():
        raise ValueError(f"nbs_gym.tune needs Ray Tune, which is not installed; {_RAY_EXTRA}")
    base = _base_args(options)
    path = options.space or default_space_path(options.agent)
    if path is None:
        raise UsageError(f"--space: no shipped search space for agent {options.agent!r}; give a YAML file")
    space = load_space(path)
    check_space(space, base)
    _check_scored(base)
    search = options.search or ("optuna" if _optuna_available() else "random")
    if search == "optuna" and not _optuna_available():
        raise ValueError(f"--search optuna: optuna is not installed; {_RAY_EXTRA}")
    out = options.out.absolute()
    results = _search(options, base, space, search, out)
    return write_outputs(results, base, out, options.metric)


def _check_scored(base: train.Args) -> None:
    """Trials are scored on L's held-out images, so the classifier must hold some out."""
    config = train.classifier_config(base)
    if config.kind != "dilated_cnn" or config.validation_fraction == 0:
        raise ValueError(
            "--classifier-kwargs: nbs_gym.tune scores a trial on the images of L the classifier holds out, so it "
            "needs kind=dilated_cnn with validation_fraction > 0"
        )


def _optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def _search_settings(options: argparse.Namespace, base: train.Args, space: SearchSpace, search: str) -> dict[str, Any]:
    """What defines a search, as JSON: a resumed one must be the same (where it runs may change)."""
    return {
        "run": json.loads(json.dumps(dataclasses.asdict(base))),
        "space": {"hyperparams": space.hyperparams, "env": space.env},
        "trials": options.trials,
        "metric": options.metric,
        "search": search,
        "scheduler": options.scheduler,
        "grace_period": options.grace_period,
        "max_concurrent": options.max_concurrent,
    }


def _check_same_search(out: Path, settings: dict[str, Any]) -> None:
    """A search resumed in ``out`` must have the settings it started with.

    Raises:
        ValueError: It has other settings (the first named), or its saved settings are missing.
    """
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise ValueError(f"--out {out}: holds a search without {SETTINGS_FILE}; use another --out")
    saved = json.loads(path.read_text(encoding="utf-8"))
    for key in settings:
        if saved.get(key) != json.loads(json.dumps(settings[key])):
            raise ValueError(
                f"--out {out}: the search there was started with other {key} settings ({path}); give them again "
                "to resume it, or use another --out"
            )


def _search(options: argparse.Namespace, base: train.Args, space: SearchSpace, search: str, out: Path) -> Any:
    """Run (or resume) the Tune experiment in ``OUT/search``; returns its ``ResultGrid``."""
    settings = _search_settings(options, base, space, search)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    experiment = out / "search"
    resuming = tune.Tuner.can_restore(experiment)
    if resuming:
        _check_same_search(out, settings)
    # Ray before the trainable, whose parameters go to Ray's object store.
    RayBackend(address=options.address).start()  # a local Ray, or the cluster at --address (one error line)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, base=base, trials_dir=str(out / "trials"), metric=options.metric, driver_cwd=os.getcwd()
        ),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    if resuming:
        print(f"resuming the search in {experiment}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        if search == "optuna":
            algorithm: Any = _final_score_optuna()(metric="score", mode="max", seed=options.seed)
        else:
            algorithm = BasicVariantGenerator(random_state=options.seed)
        if options.max_concurrent is not None:
            algorithm = ConcurrencyLimiter(algorithm, max_concurrent=options.max_concurrent)
        if options.scheduler == "asha":
            grace = options.grace_period or max(1, base.timesteps // 8)
            scheduler: Any = ASHAScheduler(
                time_attr="timesteps",
                metric="reward",
                mode="max",
                max_t=max(base.timesteps, grace),
                grace_period=grace,
                reduction_factor=3,
                stop_last_trials=False,  # a trial at its last step still has its evaluation to report
            )
        else:
            scheduler = FIFOScheduler()
        write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(search_alg=algorithm, scheduler=scheduler, num_samples=options.trials),
            run_config=tune.RunConfig(name="search", storage_path=str(out), verbose=1),
        )
    results = tuner.fit()
    if results.num_terminated + results.num_errors < options.trials:  # Ctrl-C: Tune saved its state and returned
        raise Interrupted("interrupted; run the same command again to resume the search")
    return results


def _final_score_optuna() -> type:
    """Ray Tune's Optuna search, told only each trial's final score: ASHA, not Optuna, stops trials on the
    reward, and the reports during training carry no score."""
    from ray.tune.search.optuna import OptunaSearch

    class FinalScoreOptuna(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            pass

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if result is not None and not _finite(result.get("score")):
                result = None  # stopped by ASHA before its evaluation: pruned, not failed
            super().on_trial_complete(trial_id, result, error)

    return FinalScoreOptuna


def write_outputs(results: Any, base: train.Args, out: Path, metric: str) -> int:
    """Write ``trials.md``, ``trials.csv`` and the best-scored trial's ``best.yml`` to ``out`` from a search's
    ``results`` (Tune's ``ResultGrid``, or any iterable of results with ``metrics``, ``config``, ``error`` and
    ``path``); returns the exit status (2 when a trial failed or none was scored)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        config = {key: value for key, value in (result.config or {}).items()}
        if result.error:
            status = "error"
        elif _finite(metrics.get("score")):
            status = "scored"
        else:  # trained to the end without a score (nothing anomalous held out), or stopped by ASHA
            status = "unscored" if metrics.get("timesteps", 0) >= base.timesteps else "stopped"
        rows.append(
            {
                "trial": metrics.get("trial_id", Path(result.path).name if result.path else ""),
                "status": status,
                "timesteps": metrics.get("timesteps"),
                "reward": metrics.get("reward"),
                "score": metrics.get("score"),
                **{f"config/{key}": value for key, value in sorted(config.items())},
                "_config": config,
            }
        )
    failed = [row for row in rows if row["status"] == "error"]
    for row in failed:
        print(
            f"error: trial {row['trial']} failed (its error is in Tune's log under {out / 'search'})", file=sys.stderr
        )
    rows.sort(key=lambda row: (-(row["score"] if row["status"] == "scored" else -math.inf), str(row["trial"])))
    written = [_write_tables(rows, out, metric)]
    scored = [row for row in rows if row["status"] == "scored"]  # best first
    if not scored:
        print("error: no trial was scored (each stopped early, failed or had no score); no best.yml", file=sys.stderr)
        return 2
    best = scored[0]
    settings = best_config(base, best["_config"])
    header = (
        f"# Best of {len(rows)} trials of python -m nbs_gym.tune (score: predictor {metric} on L's "
        f"held-out images, {best['score']:.4f}).\n"
        f"# Train it with: python -m nbs_gym.train --config {out / 'best.yml'}\n"
    )
    written.append(write_text_atomic(out / "best.yml", header + yaml.safe_dump(settings, sort_keys=False)))
    print(f"best trial {best['trial']}: {metric} {best['score']:.4f} on L's held-out images")
    print("wrote " + ", ".join(str(path) for path in [*written[0:1], *written[1:]] if path))
    return 2 if failed else 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _write_tables(rows: list[dict[str, Any]], out: Path, metric: str) -> Path:
    """``trials.csv`` and ``trials.md`` (best first); returns the markdown's path."""
    columns = [key for key in rows[0] if key != "_config"] if rows else []
    for row in rows[1:]:
        columns += [key for key in row if key not in columns and key != "_config"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "trials.csv", buffer.getvalue())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if not math.isfinite(value) else f"{value:.4g}"
        return "–" if value is None else str(value)

    lines = [
        f"# Trials (score: the predictor's {metric} on the labeled set's held-out images; best first)",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]
    return write_text_atomic(out / "trials.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    exit_process(main())
