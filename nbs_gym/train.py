"""``python -m nbs_gym.train``: train a batch sampler, log to TensorBoard, checkpoint, evaluate.

Examples::

    python -m nbs_gym.train --agent ppo
    python -m nbs_gym.train --agent dqn --timesteps 20000 --seed 1
    python -m nbs_gym.train --agent sac --env-kwargs episode_length=100 reward=fisher
    python -m nbs_gym.train --agent mypackage.samplers:MySampler --hyperparams learning_rate=0.01
    python -m nbs_gym.train --resume runs/ppo__synthetic__0__20250101-120000 --timesteps 80000

After training, the sampler (deterministic) and the ``uniform`` baseline (unless ``--no-eval-uniform``)
each run ``--eval-episodes`` episodes under the same env seeds; the anomaly classifier is trained on
each episode's loss profiles with the same seed and scored on the evaluation set E. A run directory
holds:

=====================================  ==========================================================
``config.yaml``                        the resolved arguments; ``--config`` on it repeats the run
``split.json``                         the semi-supervised split
``events.out.tfevents.*``              TensorBoard: SB3's scalars, ``nbs/*``, ``eval/*``, figures
``checkpoints/agent_<N>_steps.zip``    checkpoints every --checkpoint-freq steps, every
                                       --checkpoint-minutes and at Ctrl-C (SB3 agents; a plug-in's
                                       at the episode boundary after each is due, in its suffix)
``agent.zip`` / ``agent.json``         the trained agent (SB3 / built-in baseline; a plug-in's suffix)
``*_replay_buffer.pkl``                off-policy agents' replay buffer, beside the newest checkpoint
                                       and the trained agent, so that ``--resume`` continues with it
``*_vecnormalize.pkl``                 with ``--hyperparams normalize=...``: the VecNormalize
                                       statistics beside each checkpoint and the trained agent
``profiles/{agent,uniform}/*.npz``     loss profiles of the evaluation episodes
``figures/*.png``                      loss profiles of L and segmentations of E, per sampler
``metrics.json``                       ``{"agent": ..., "uniform": ...}`` (no ``"uniform"`` with
                                       ``--no-eval-uniform``): classifier metrics on E, and
                                       (on a task's own settings) the normalised scores
                                       (``nbs_gym.scores``: 0 = uniform, 1 = oracle)
=====================================  ==========================================================

Exit status: 0 done, 2 bad arguments (one ``error:`` line on stderr), 130 interrupted (Ctrl-C saves
a checkpoint first: an SB3 agent's training stops after the env step the Ctrl-C comes in, a second
Ctrl-C stops at once). From Python, :func:`run` does the same with typed :class:`Args` and returns a
:class:`RunResult`. ``--resume RUN_DIR`` continues a run however it stopped, even killed: from the
newest checkpoint (or trained agent) that loads, skipping damaged ones with a warning naming them, or
from step 0 when it has none; its evaluation replaces the run's ``metrics.json`` and profile files and
leaves other files (``nbs_gym.classify``'s outputs beside the profiles) alone.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import json
import math
import re
import sys
import tempfile
import textwrap
import time
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Figure, HParam, Image, Logger, configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize

from agents.baselines import UniformSampler
from agents.protocol import PluginError
from agents.registry import AgentSpec, get_spec
from nbs_gym.callbacks import (
    AtomicCheckpointCallback,
    CheckpointingEnv,
    CheckpointingVectorEnv,
    CheckpointSchedule,
    EpisodeStatsCallback,
    PeriodicEvaluation,
    StepProgressBar,
    checkpoint_path,
    checkpoints_newest_first,
    replay_buffer_path,
    save_checkpoint,
    vec_normalize_path,
)
from nbs_gym.classifier import ClassifierConfig
from nbs_gym.cli import Interrupted, Parser, StopRequest, check_device, exit_process, run_resumable
from nbs_gym.config import EnvConfig
from nbs_gym.data import AnomalyDataset, load_dataset, make_split
from nbs_gym.data.split import labeled_shortfall
from nbs_gym.env import NeuralBatchSamplingEnv
from nbs_gym.evaluation import Evaluation, evaluate_profiles
from nbs_gym.figures import profile_figure, segmentation_figure
from nbs_gym.io import path_safe, remove_temporaries, write_text_atomic
from nbs_gym.metrics import METRIC_NAMES, metric_at
from nbs_gym.profiles import LossProfiles, load_profiles
from nbs_gym.scores import normalized_scores
from nbs_gym.tasks import DEFAULT_ENV_ID, parse_env_id, task_config
from nbs_gym.vector import SB3VecEnv

__all__ = [
    "Args",
    "RunResult",
    "RunWarning",
    "agent_profile_files",
    "main",
    "parse_args",
    "planned_end",
    "resume_args",
    "run",
]

DEFAULT_TIMESTEPS = 10_000
"""Env steps of a run by default: 50 episodes of the v1 task (200 env steps of 5 updates each)."""
CONFIG_FILE = "config.yaml"
# Evaluation episodes use env seeds disjoint from the training envs' (seed .. seed + n_envs - 1).
EVAL_SEED_OFFSET = 1_000_000
# Settings with their own flag, so that each has one source of truth.
_DEDICATED_ENV_KWARGS = {
    "dataset": "--dataset",
    "n_labeled_anomalous_per_type": "--n-labeled-anomalous-per-type",
    "n_labeled_normal": "--n-labeled-normal",
    "device": "--device",
}
# What --resume lets the command line change; the rest comes from the run's config.yaml.
_RESUME_OVERRIDES = (
    "timesteps",
    "eval_episodes",
    "eval_uniform",
    "eval_freq",
    "checkpoint_freq",
    "checkpoint_minutes",
    "progress",
    "device",
)
_TB_EXCLUDE = ("stdout", "log", "json", "csv")
_METAVARS = {"agent": "NAME|MODULE:CLASS", "run_dir": "DIR", "config": "FILE", "resume": "RUN_DIR"}
# Arguments that locate a run rather than define it: config.yaml leaves them out.
_NOT_SAVED = ("config", "resume", "run_dir")
# The standard deviation of the predictor's pixel F1-max over classifier seeds refitted on the same loss
# profiles, by ensemble size (benchmarks/classifier_noise.py on v0's fabric, docs/RESULTS_v0.md): a
# difference between two samplers smaller than about twice this is not evidence of either.
CLASSIFIER_NOISE_F1 = {1: 0.046, 4: 0.021}
NORMALIZE_KEY = "normalize"
"""The ``--hyperparams`` entry that wraps an SB3 agent's training envs in ``VecNormalize`` (rl-zoo3's name)."""
VEC_NORMALIZE_KEYWORDS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "epsilon")
"""The ``VecNormalize`` settings a ``normalize`` mapping may set (its ``gamma`` is the agent's)."""


class RunWarning(UserWarning):
    """Something a run did differently from what its user may expect, shown as one ``warning:`` line."""


@dataclass(frozen=True)
class Args:
    """Arguments of ``python -m nbs_gym.train``; every field is a ``--flag`` (underscores as dashes)."""

    env_id: str = DEFAULT_ENV_ID
    """Registered task id (nbs_gym/NeuralBatchSampling-v1, ...-v0, ...); its version fixes the dataset,
    episode and reward settings, which the flags below override. A plain id leaves the action mode to the
    agent (dqn and qrdqn act in ...Discrete-v1, ppo and a2c on v1 in ...Quantile-v1 with their tuned
    settings, the others in the strata mode); a ...Spatial-...,
    ...Discrete-... or ...Quantile-... id fixes it."""
    agent: str = "ppo"
    """Sampler: ppo, a2c, sac, td3, ddpg, dqn, the sb3-contrib ones when installed (recurrent_ppo, trpo,
    qrdqn, tqc, ars), the fixed rules uniform, random, hard_mining, curriculum, the published rules
    loss_rank, reducible_loss, self_paced, the mask-reading reference oracle, or package.module:ClassName.
    The env action mode follows the agent (dqn, qrdqn: discrete; ppo, a2c on v1: quantile; others: strata)
    unless env_kwargs sets it."""
    timesteps: int = DEFAULT_TIMESTEPS
    """Env steps (agent decisions; each is decision_interval autoencoder updates) to train for, summed over
    the envs."""
    seed: int = 0
    """Seed of the agent, the training envs (seed, seed + 1, ...), the evaluation episodes and the classifier."""
    dataset: str | None = None
    """Dataset: synthetic, synthetic:CATEGORY, photo:NAME or mvtec:PATH (an MVTec-style category folder);
    default the task's."""
    n_labeled_anomalous_per_type: int | None = None
    """Labeled anomalous images per defect type (the set L); default the task's."""
    n_labeled_normal: int | None = None
    """Labeled normal test images (in L); default the task's."""
    n_envs: int | None = None
    """Training envs, with seeds seed, seed + 1, ... (see --vec-env); default the agent's on the task: 4 for
    ppo and a2c in v1's quantile mode (their best settings found, agents.registry.TUNED), else 1."""
    vec_env: str = "auto"
    """How the training envs run: batched (one NeuralBatchSamplingVectorEnv whose autoencoders train as one
    batched network, the fast choice on a GPU), dummy (SB3 DummyVecEnv of single envs) or auto (batched
    when --n-envs > 1, else dummy)."""
    device: str = "auto"
    """Device of the autoencoder, the agent and the classifier: cpu, cuda, cuda:N or auto."""
    run_dir: str | None = None
    """Run directory; default runs/<agent>__<task version>__<dataset>__<seed>__<time>."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env settings as KEY=VALUE (values parsed as YAML), e.g. episode_length=100 reward=fisher."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """Agent constructor overrides as KEY=VALUE (values parsed as YAML), e.g. n_steps=400 learning_rate=1e-4;
    and, as in rl-zoo3's files, normalize=true (SB3 agents: train on a VecNormalize of the envs, which
    normalises observations and rewards by running statistics; the evaluation episodes see observations
    normalised by the statistics at the end of training) or normalize={norm_obs: true, norm_reward: false}
    (any of VecNormalize's norm_obs, norm_reward, clip_obs, clip_reward, epsilon)."""
    classifier_kwargs: dict[str, Any] = field(default_factory=dict)
    """Anomaly classifier settings as KEY=VALUE (nbs_gym.classifier.ClassifierConfig), e.g. kind=per_pixel
    max_epochs=100; its seed and device default to --seed and --device."""
    config: str | None = None
    """YAML file of defaults for these arguments (keys as the field names: agent, timesteps, env_kwargs,
    hyperparams, ...); flags given on the command line win."""
    eval_episodes: int = 1
    """Evaluation episodes per sampler (the trained one and uniform)."""
    eval_uniform: bool = True
    """Also evaluate uniform sampling on the same evaluation seeds, as the run's reference
    (--no-eval-uniform skips it, which halves the evaluation's cost when uniform's own runs are the
    reference, as in nbs_gym.compare)."""
    checkpoint_freq: int = 10_000
    """Environment steps between checkpoints (SB3 agents); 0 disables checkpoints by steps."""
    eval_freq: int = 0
    """Environment steps between evaluations during training (SB3 agents): one deterministic episode of
    the sampler being trained, on the first evaluation seed, then the anomaly classifier on its profiles;
    the predictor's metrics on E go to TensorBoard as eval/during_training/predictor/<metric> (the
    classifier's learning curve), with eval/during_training/final_separation. Each costs about as much
    as one evaluation; training is the same with and without them. 0: none."""
    checkpoint_minutes: float = 5.0
    """Minutes between checkpoints (SB3 agents), so that a killed run loses at most this much; 0 disables
    checkpoints by time."""
    resume: str | None = None
    """Run directory to continue, however it stopped: its config and newest loadable checkpoint are loaded
    (from step 0 if it has none) and training goes on to --timesteps (which may be raised); only
    --timesteps, --eval-episodes, --checkpoint-freq, --checkpoint-minutes, --[no-]progress and --device
    may be given with it."""
    progress: bool = True
    """Show a progress bar while training (--no-progress hides it)."""

    def __post_init__(self) -> None:
        for name, minimum in (
            ("timesteps", 0),
            ("seed", 0),
            ("n_labeled_anomalous_per_type", 1),
            ("n_labeled_normal", 0),
            ("n_envs", 1),
            ("eval_episodes", 1),
            ("eval_freq", 0),
            ("checkpoint_freq", 0),
        ):
            value = getattr(self, name)
            if value is None and (name.startswith("n_labeled") or name == "n_envs"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{_flag(name)}: must be an integer >= {minimum}, got {value!r}")
        minutes = self.checkpoint_minutes
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes >= 0:
            raise ValueError(f"--checkpoint-minutes: must be a number >= 0, got {minutes!r}")
        if self.vec_env not in ("auto", "batched", "dummy"):
            raise ValueError(f"--vec-env: expected auto, batched or dummy, got {self.vec_env!r}")
        if not (self.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise ValueError(f"--device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name in ("env_kwargs", "hyperparams", "classifier_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{_flag(name)}: expected KEY=VALUE pairs (a mapping), got {getattr(self, name)!r}")
        clashes = sorted(set(self.env_kwargs) & set(_DEDICATED_ENV_KWARGS))
        if clashes:
            raise ValueError(f"--env-kwargs {clashes[0]}: use {_DEDICATED_ENV_KWARGS[clashes[0]]} instead")


@dataclass(frozen=True)
class RunResult:
    """What a finished :func:`run` gives back.

    Attributes:
        run_dir: The run directory (every file the run wrote is in it).
        metrics: The content of its ``metrics.json``: ``"agent"`` (and ``"uniform"`` unless the run was
            made with ``eval_uniform=False``) -> the classifier's metrics on E.
        num_timesteps: Env steps the agent has trained for.
    """

    run_dir: Path
    metrics: dict[str, Any]
    num_timesteps: int


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m nbs_gym.train`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    # run() says how to go on when it is interrupted; nothing is added to that.
    return run_resumable(lambda: _main(argv), interrupted=None)


def _main(argv: Sequence[str] | None) -> int:
    run(parse_args(argv))
    return 0


def run(args: Args, *, report: bool = True, callbacks: Sequence[BaseCallback] = ()) -> RunResult:
    """Train and evaluate one run, as ``python -m nbs_gym.train`` does with the same arguments.

    Validates every setting before any work, trains (or resumes, with ``args.resume``), checkpoints,
    evaluates the agent (and ``uniform``) with the anomaly classifier on E and writes the run directory.

    Args:
        args: The run's arguments (:func:`parse_args` makes them from a command line, :func:`resume_args`
            for a run directory).
        report: Print where the run writes, the comparison table and the files written (stdout), and
            the evaluation's progress (stderr).
        callbacks: More SB3 callbacks for an SB3 agent's ``learn`` (after the run's own: episode
            statistics, checkpoints, evaluations, progress); other agents ignore them. A hyperparameter
            search reports the reward to its scheduler with one (:mod:`nbs_gym.tune`).

    Raises:
        ValueError: A bad setting (named), or a sampler whose predictions the env cannot take
            (:class:`agents.protocol.PluginError`, naming where the trained agent is).
        OSError: A file that cannot be read or written.
        nbs_gym.cli.Interrupted: Ctrl-C; during training a checkpoint is saved first. Its message (also
            printed on stderr) says how to continue.
    """
    try:
        prepared = _prepare(args)
    except KeyboardInterrupt:
        raise _interrupted("interrupted before training started") from None
    phase = "training"
    try:
        try:
            # An SB3 agent stops between env steps on Ctrl-C (a plug-in's own learn loop cannot be asked to:
            # it gets the KeyboardInterrupt where it lands). The run directory is printed inside the
            # handler, so that Ctrl-C right after it still checkpoints and says how to go on.
            with _stop_request(prepared.agent) as stop:
                if report:
                    print(
                        f"run directory: {prepared.run_dir}\nTensorBoard:   tensorboard --logdir {prepared.run_dir}",
                        flush=True,
                    )
                _train(prepared, callbacks, stop)
        except KeyboardInterrupt:
            phase = "checkpoint"
            steps = _num_timesteps(prepared.agent)
            path = save_checkpoint(prepared.agent, checkpoint_path(prepared.checkpoint_dir, steps, prepared.suffix))
            raise _interrupted(f"interrupted: checkpoint {path}; continue with --resume {prepared.run_dir}") from None
        phase = "evaluation"
        metrics = _evaluate(prepared, report)
    except PluginError as error:  # a sampler whose predictions the env cannot take
        raise PluginError(f"{error}; the trained agent is in {prepared.run_dir}") from error
    except Interrupted:
        raise
    except KeyboardInterrupt:
        if phase == "checkpoint":
            message = (
                f"interrupted again while saving a checkpoint; --resume {prepared.run_dir} continues from the last one"
            )
        else:
            message = f"interrupted during evaluation; --resume {prepared.run_dir} evaluates the trained agent again"
        raise _interrupted(message) from None
    finally:
        prepared.close()
    if report:
        _print_summary(prepared, metrics)
    return RunResult(prepared.run_dir, metrics, _num_timesteps(prepared.agent))


def _interrupted(message: str) -> Interrupted:
    """An :class:`Interrupted` with ``message``, printed on stderr first."""
    print(f"\n{message}", file=sys.stderr, flush=True)
    return Interrupted(message)


def resume_args(run_dir: str | Path, **overrides: Any) -> Args:
    """The arguments that continue the run in ``run_dir``: its ``config.yaml``, with ``overrides``.

    Raises:
        ValueError: ``run_dir`` holds no readable config, or an override that ``--resume`` does not allow.
    """
    fixed = sorted(set(overrides) - set(_RESUME_OVERRIDES))
    if fixed:
        allowed = ", ".join(_flag(name) for name in _RESUME_OVERRIDES)
        raise ValueError(f"{_flag(fixed[0])}: cannot change when resuming; only {allowed} can")
    values = _read_config(Path(run_dir) / CONFIG_FILE, "--resume") | {"run_dir": str(run_dir)}
    # Runs saved before task versions existed ran v0, whose defaults they relied on.
    values.setdefault("env_id", "nbs_gym/NeuralBatchSampling-v0")
    for name in ("dataset", "n_labeled_anomalous_per_type", "n_labeled_normal"):
        values.setdefault(name, None)
    return Args(**(values | {"resume": str(run_dir)} | overrides))


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Resolve the arguments: dataclass defaults < ``--config`` file < ``--resume`` run < command line.

    Raises:
        ValueError: An unknown or malformed flag, a bad value, a config file with unknown keys, or a
            flag that ``--resume`` does not allow.
        OSError: A config file that cannot be read.
    """
    given = vars(_build_parser().parse_args(argv))
    for name in ("env_kwargs", "hyperparams", "classifier_kwargs"):
        if name in given:
            given[name] = dict(given[name])
    values: dict[str, Any] = {}
    if "config" in given:
        values |= _read_config(Path(given["config"]), "--config")
    if "resume" in given:
        overrides = {key: value for key, value in given.items() if key != "resume"}
        return resume_args(given["resume"], **overrides)
    return Args(**(values | given))


# ---------------------------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`Args` field, its docstring as the help."""
    parser = Parser(
        prog="python -m nbs_gym.train",
        description="Train a neural batch sampler on nbs_gym, log to TensorBoard, checkpoint, then evaluate "
        "it against uniform sampling with the anomaly classifier.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Only flags given on the command line appear in the namespace, so that they can override
        # --config and --resume without a default masking the file's value.
        argument_default=argparse.SUPPRESS,
    )
    docs = _field_docs(Args)
    hints = typing.get_type_hints(Args)
    for item in dataclasses.fields(Args):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        help_text = f"{docs[item.name]} (default: {default})"
        flag = _flag(item.name)
        kind = hints[item.name]
        # An optional setting (int | None: the task's value unless given) takes its flag as the type.
        given = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(given) == 1:
            kind = given[0]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(flag, nargs="*", type=_key_value, metavar="KEY=VALUE", help=help_text)
        else:
            metavar = {int: "N", float: "X"}.get(kind, _METAVARS.get(item.name))
            parser.add_argument(flag, type=kind if kind in (int, float) else str, metavar=metavar, help=help_text)
    return parser


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (attribute docstrings are not kept at run time)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _key_value(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{key}: value {value!r} is not valid YAML ({error})") from error
    # YAML 1.1 reads exponents without a dot (1e-4) as strings; they are meant as numbers.
    if isinstance(parsed, str) and _EXPONENT_NUMBER.fullmatch(parsed):
        parsed = float(parsed)
    return key, parsed


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _read_config(path: Path, source: str) -> dict[str, Any]:
    """Arguments from a YAML mapping; ``source`` names the flag in error messages."""
    if not path.is_file():
        raise ValueError(f"{source}: no such file {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: {path} is not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{source}: {path} must hold a mapping of argument names to values")
    accepted = {item.name for item in dataclasses.fields(Args)} - {"config", "resume"}
    unknown = sorted(set(values) - accepted)
    if unknown:
        raise ValueError(f"{source}: {path}: unknown key {unknown[0]!r}; accepted: {', '.join(sorted(accepted))}")
    return values


# ---------------------------------------------------------------------------------------------- run


@dataclass
class _Run:
    """Everything a run builds once: resolved arguments, data, envs, agent, logger, paths."""

    args: Args
    spec: AgentSpec
    env_id: str
    env_kwargs: dict[str, Any]
    classifier_config: ClassifierConfig
    dataset: AnomalyDataset
    run_dir: Path
    train_env: Any
    """What the agent trains on: an SB3 ``VecEnv``, or for a plug-in a Gymnasium env or vector env."""
    agent: Any
    logger: Logger

    @property
    def suffix(self) -> str:
        return self.spec.file_suffix

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def agent_path(self) -> Path:
        return self.run_dir / f"agent{self.suffix}"

    def close(self) -> None:
        self.train_env.close()
        self.logger.close()


def validated_settings(args: Args) -> tuple[AgentSpec, dict[str, Any], EnvConfig, ClassifierConfig]:
    """A run's agent spec, env keyword arguments, env config and classifier config, each validated.

    Nothing is loaded or built, so that a caller (``nbs_gym.compare``) can check many runs up front.

    Raises:
        ValueError: An unknown agent, an action mode it cannot act in, or a bad env or classifier setting.
    """
    spec = get_spec(args.agent)
    _, task_mode = parse_env_id(args.env_id)
    # A Spatial, Discrete or Quantile id fixes the mode; a plain id leaves it to the agent (dqn: discrete;
    # ppo and a2c on v1: their tuned quantile mode).
    mode = args.env_kwargs.get("action_mode", None if task_mode == "strata" else task_mode)
    env_kwargs = {**args.env_kwargs, "action_mode": spec.resolve_action_mode(mode, args.env_id), "device": args.device}
    for name in ("dataset", "n_labeled_anomalous_per_type", "n_labeled_normal"):
        if getattr(args, name) is not None:
            env_kwargs[name] = getattr(args, name)
    return spec, env_kwargs, task_config(args.env_id, **env_kwargs), classifier_config(args)


def check_settings(args: Args) -> None:
    """Check the settings a run would reject only once it starts: env and classifier settings, hyperparameter
    names (for a grid or a search to reject before any run starts).

    Raises:
        ValueError: The first bad setting, named.
    """
    spec, *_ = validated_settings(args)
    names = hyperparameter_names(spec)
    unknown = sorted(set(args.hyperparams) - names) if names is not None else []
    if unknown:
        raise ValueError(f"--hyperparams {unknown[0]}: agent {args.agent!r} takes no such setting")
    normalization(args, spec)


def hyperparameter_names(spec: AgentSpec) -> set[str] | None:
    """The ``--hyperparams`` names a run of ``spec`` takes: its constructor's keywords, and ``normalize``
    for an SB3 algorithm; ``None`` if the constructor takes any keyword."""
    names = constructor_keywords(spec)
    return None if names is None else names | ({NORMALIZE_KEY} if _normalizable(spec) else set())


def _normalizable(spec: AgentSpec) -> bool:
    """Whether ``spec`` is an SB3 algorithm, which ``normalize`` trains on a ``VecNormalize`` (for any other
    agent ``normalize`` is a constructor keyword like the rest)."""
    return spec.env_api == "sb3" and issubclass(spec.agent_class, BaseAlgorithm)


def normalization(args: Args, spec: AgentSpec) -> dict[str, Any] | None:
    """The ``VecNormalize`` keywords that ``--hyperparams normalize=...`` asks for; ``None`` for none.

    ``true`` is VecNormalize's defaults (observations and rewards); a mapping sets some of
    :data:`VEC_NORMALIZE_KEYWORDS` over them.

    Raises:
        ValueError: A value that is neither a boolean nor such a mapping.
    """
    if not _normalizable(spec):
        return None  # a baseline or plug-in: a ``normalize`` keyword is its constructor's
    value = args.hyperparams.get(NORMALIZE_KEY, False)
    where = f"--hyperparams {NORMALIZE_KEY}"
    expected = f"expected true, false or a mapping of {', '.join(VEC_NORMALIZE_KEYWORDS)}"
    if value is False or value is None:
        return None
    if value is True:
        keywords: dict[str, Any] = {}
    elif isinstance(value, dict):
        unknown = sorted(set(map(str, value)) - set(VEC_NORMALIZE_KEYWORDS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; {expected}")
        for key, setting in value.items():
            flag = key in ("norm_obs", "norm_reward")
            number = isinstance(setting, (int, float)) and not isinstance(setting, bool) and setting > 0
            if not (isinstance(setting, bool) if flag else number):
                kind = "true or false" if flag else "a number > 0"
                raise ValueError(f"{where}: {key} must be {kind}, got {setting!r}")
        keywords = dict(value)
    else:
        raise ValueError(f"{where}: {expected}, got {value!r}")
    return keywords


def constructor_keywords(spec: AgentSpec) -> set[str] | None:
    """The keywords the agent's constructor takes (``--hyperparams`` names); ``None`` if it takes any."""
    parameters = inspect.signature(spec.agent_class).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return {parameter.name for parameter in parameters}


def _prepare(args: Args) -> _Run:
    """Validate the whole configuration and build data, envs, agent and logger; writes config and split."""
    spec, env_kwargs, env_config, classifier_config = validated_settings(args)  # before any work
    normalize = normalization(args, spec)
    check_device("--device", args.device)
    run_dir = _run_dir(args)
    data = env_config.data
    # Loaded once and shared by all envs (training and evaluation), rather than once per env.
    dataset = load_dataset(data.dataset, image_size=data.image_size, seed=data.dataset_seed, channels=data.channels)
    _check_labeled_counts(args, env_config, dataset)
    env_id = spec.env_id(env_config.action_mode, task=args.env_id)
    # config.yaml keeps --n-envs as given: a default is resolved here again on --resume.
    n_envs = args.n_envs if args.n_envs is not None else spec.n_envs(env_id)
    env_kwargs_with_data = {**env_kwargs, "dataset_object": dataset}
    train_env: Any
    if spec.env_api == "sb3":
        train_env = _training_envs(args, env_id, n_envs, env_kwargs_with_data)
        if normalize is not None:
            train_env = VecNormalize(train_env, **normalize)
    else:
        train_env = _gymnasium_training_env(args, run_dir, spec.file_suffix, env_id, n_envs, env_kwargs_with_data)
    try:
        if args.resume:
            agent = _load_agent(spec, args, run_dir, train_env, env_id)
        else:
            agent = _new_agent(spec, args, train_env, env_id)
    except BaseException:
        train_env.close()
        raise
    if isinstance(train_env, VecNormalize):
        train_env.gamma = float(getattr(agent, "gamma", train_env.gamma))  # returns discounted as the agent's
    if isinstance(train_env, (CheckpointingEnv, CheckpointingVectorEnv)):
        train_env.attach(agent)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        _clear_for_resumption(run_dir)
    logger = configure(str(run_dir), ["tensorboard"])
    if isinstance(agent, BaseAlgorithm):
        agent.set_logger(logger)
    saved = {key: value for key, value in dataclasses.asdict(args).items() if key not in _NOT_SAVED}
    header = "# Resolved arguments of nbs_gym.train; `--config` on this file repeats the run.\n"
    write_text_atomic(run_dir / CONFIG_FILE, header + yaml.safe_dump(saved, sort_keys=False))
    _split_of(train_env).save(run_dir / "split.json")
    return _Run(args, spec, env_id, env_kwargs, classifier_config, dataset, run_dir, train_env, agent, logger)


def _split_of(env: Any) -> Any:
    """The semi-supervised split of a training env (every sub-environment shares it)."""
    inner = env.unwrapped
    return inner.split if hasattr(inner, "split") else inner.get_attr("split")[0]


def _check_labeled_counts(args: Args, config: EnvConfig, dataset: AnomalyDataset) -> None:
    """An error naming the flag when the data cannot give L as many images as it asks for (a warning when
    the count is the task's default): the split labels at most half of each defect type's test images and
    leaves one normal test image to E."""
    data = config.data
    split = make_split(
        dataset,
        n_labeled_anomalous_per_type=data.n_labeled_anomalous_per_type,
        n_labeled_normal=data.n_labeled_normal,
        seed=data.split_seed,
        transductive=data.transductive,
    )
    shortfall = labeled_shortfall(split, dataset)
    labeled_normal = sum(not dataset.is_anomalous[i] for i in split.labeled)
    problems = []
    if shortfall:
        counts = ", ".join(f"{defect}: {count}" for defect, count in shortfall.items())
        problems.append(
            (
                "n_labeled_anomalous_per_type",
                data.n_labeled_anomalous_per_type,
                f"dataset {dataset.spec} can label only {counts} anomalous image(s) per defect type "
                "(at most half of each type's test images, so that E keeps the rest)",
            )
        )
    if labeled_normal < data.n_labeled_normal:
        problems.append(
            (
                "n_labeled_normal",
                data.n_labeled_normal,
                f"dataset {dataset.spec} can label only {labeled_normal} normal test image(s) (one stays in E)",
            )
        )
    for name, value, reason in problems:
        if getattr(args, name) is not None:
            raise ValueError(f"{_flag(name)} {value}: {reason}")
        warnings.warn(f"the task's {name}={value}: {reason}", RunWarning, stacklevel=2)


def _clear_for_resumption(run_dir: Path) -> None:
    """Delete what a stopped run leaves that the resumed one writes anew: half-written temporary files,
    the previous evaluation's ``metrics.json`` and profile files; never other files in the folder."""
    for path in remove_temporaries(run_dir):
        print(f"resume: removed {path}, a file a killed write left half-written", file=sys.stderr)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    for who in ("agent", "uniform"):
        for path in (run_dir / "profiles" / who).glob("episode_*.npz"):
            path.unlink()


def _training_envs(args: Args, env_id: str, n_envs: int, env_kwargs: dict[str, Any]) -> VecEnv:
    """The SB3 VecEnv of ``n_envs`` envs the agent trains on; env ``i`` is seeded with ``seed + i`` either way."""
    batched = args.vec_env == "batched" or (args.vec_env == "auto" and n_envs > 1)
    if not batched:
        return make_vec_env(env_id, n_envs=n_envs, seed=args.seed, env_kwargs=env_kwargs, vec_env_cls=DummyVecEnv)
    venv = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **env_kwargs)
    vec_env = VecMonitor(SB3VecEnv(venv.unwrapped))  # VecMonitor: SB3's episode return/length logging
    vec_env.seed(args.seed)
    return vec_env


def _gymnasium_training_env(
    args: Args, run_dir: Path, suffix: str, env_id: str, n_envs: int, env_kwargs: dict[str, Any]
) -> gym.Env | gym.vector.VectorEnv:
    """The Gymnasium env a plug-in trains on: the registered env in SB3's ``Monitor`` with ``--n-envs 1``,
    else a ``gymnasium.vector.VectorEnv`` (the batched one, or ``SyncVectorEnv`` with ``--vec-env dummy``)
    in ``RecordEpisodeStatistics``; either in a wrapper that checkpoints the plug-in as it steps the env
    when ``--checkpoint-freq`` or ``--checkpoint-minutes`` is set.

    The env is reset once with ``--seed`` (sub-environment ``i`` with ``seed + i``), and its action
    space seeded, so that a plug-in that calls ``reset()`` without a seed still runs reproducibly.
    """
    schedule = None
    if args.checkpoint_freq or args.checkpoint_minutes:
        schedule = CheckpointSchedule(args.checkpoint_freq, run_dir / "checkpoints", suffix, args.checkpoint_minutes)
    if n_envs == 1:
        env: gym.Env = Monitor(gym.make(env_id, **env_kwargs))
        env.reset(seed=args.seed)
        env.action_space.seed(args.seed)
        return env if schedule is None else CheckpointingEnv(env, schedule)
    mode = "sync" if args.vec_env == "dummy" else "vector_entry_point"
    venv: gym.vector.VectorEnv = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.make_vec(env_id, num_envs=n_envs, vectorization_mode=mode, **env_kwargs)
    )
    venv.reset(seed=args.seed)
    venv.action_space.seed(args.seed)
    return venv if schedule is None else CheckpointingVectorEnv(venv, schedule)


def classifier_config(args: Args) -> ClassifierConfig:
    """The anomaly classifier's settings of a run: ``--classifier-kwargs`` over seed and device.

    Raises:
        ValueError: An unknown setting (the accepted ones listed).
    """
    settings = {"seed": args.seed, "device": args.device, **args.classifier_kwargs}
    try:
        return ClassifierConfig(**settings)
    except TypeError as error:  # an unknown key
        accepted = ", ".join(item.name for item in dataclasses.fields(ClassifierConfig))
        raise ValueError(f"--classifier-kwargs: {error}; accepted: {accepted}") from error


def _run_dir(args: Args) -> Path:
    if args.resume:
        return Path(args.resume)
    if args.run_dir is not None:
        run_dir = Path(args.run_dir)
    else:
        version, _ = parse_env_id(args.env_id)
        dataset = args.dataset or task_config(args.env_id).data.dataset
        name = "__".join([args.agent, version, dataset, str(args.seed), time.strftime("%Y%m%d-%H%M%S")])
        run_dir = Path("runs") / path_safe(name)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir}: is a file, not a folder")
    if (run_dir / CONFIG_FILE).exists():
        raise ValueError(f"--run-dir {run_dir}: holds a run already; continue it with --resume {run_dir}")
    return run_dir


def _new_agent(spec: AgentSpec, args: Args, env: Any, env_id: str) -> Any:
    hyperparams = dict(args.hyperparams)
    if _normalizable(spec):
        hyperparams.pop(NORMALIZE_KEY, None)  # the training envs' wrapper, not a constructor keyword
    if spec.kind == "sb3":
        hyperparams.setdefault("device", args.device)
    return spec.build(env, seed=args.seed, env_id=env_id, **hyperparams)


def _load_agent(spec: AgentSpec, args: Args, run_dir: Path, env: Any, env_id: str) -> Any:
    """The run's final agent or its newest checkpoint, whichever has more steps; a new agent if neither.

    A file that does not load (a truncated or empty checkpoint) is skipped with a warning naming it, and
    the next newest is tried. On a tie the final agent wins: a checkpoint is taken before the step's
    transition reaches the replay buffer, so the final agent's buffer holds one transition more.
    """
    final = _loaded(spec, args, run_dir / f"agent{spec.file_suffix}", env)
    checkpoint = None
    for path in checkpoints_newest_first(run_dir / "checkpoints"):
        if final is not None and _steps_in_name(path) <= _num_timesteps(final[1]):
            break  # no newer than the final agent
        if (checkpoint := _loaded(spec, args, path, env)) is not None:
            break
    found = [item for item in (final, checkpoint) if item is not None]
    if not found:
        warnings.warn(
            f"--resume {run_dir}: no checkpoint or saved agent loads (the run stopped before its first "
            "checkpoint); training starts again from step 0",
            RunWarning,
            stacklevel=2,
        )
        return _new_agent(spec, args, env, env_id)
    path, agent, statistics = max(found, key=lambda item: _num_timesteps(item[1]))
    if statistics is not None:  # the normalisation the agent was trained with, as it was at that step
        env.obs_rms, env.ret_rms = statistics.obs_rms, statistics.ret_rms
    print(f"resume: from {path} ({_num_timesteps(agent):,} steps)", file=sys.stderr)
    if getattr(agent, "replay_buffer", None) is not None and hasattr(agent, "load_replay_buffer"):
        buffer = replay_buffer_path(path)
        try:
            agent.load_replay_buffer(buffer)
        except Exception as error:  # missing, truncated or from another agent
            warnings.warn(
                f"replay buffer {buffer} does not load ({type(error).__name__}); training goes on with an empty one",
                RunWarning,
                stacklevel=2,
            )
    if isinstance(agent, BaseAlgorithm):
        # Loading restores weights, not random streams; seeding by the step count keeps a resumed run
        # reproducible (though not identical to one that never stopped).
        agent.set_random_seed(args.seed + agent.num_timesteps)
    return agent


def _loaded(spec: AgentSpec, args: Args, path: Path, env: Any) -> tuple[Path, Any, Any] | None:
    """``(path, agent, statistics)`` loaded from ``path``; ``None`` if it is absent, or damaged (with a
    warning).

    On a ``VecNormalize`` env the statistics saved beside ``path`` are part of the checkpoint (else
    ``statistics`` is ``None``): a checkpoint without loadable statistics counts as damaged.
    """
    if not path.is_file():
        return None
    try:
        normalized = isinstance(env, VecNormalize)
        statistics = VecNormalize.load(str(vec_normalize_path(path)), env.venv) if normalized else None
        agent = spec.load(path, env=env, device=args.device)
    except Exception as error:  # SB3 raises whatever its zip, torch and pickle readers raise
        reason = f"{type(error).__name__}: {error}".strip().rstrip(":")
        warnings.warn(f"skipping {path}: it does not load ({reason})", RunWarning, stacklevel=2)
        return None
    return path, agent, statistics


def _steps_in_name(path: Path) -> int:
    return int(path.name.split("_")[1])


def _num_timesteps(agent: Any) -> int:
    return int(getattr(agent, "num_timesteps", 0))


def _stop_request(agent: Any) -> contextlib.AbstractContextManager[StopRequest | None]:
    """Ctrl-C as a request that an SB3 agent's training stops after the env step it is in; nothing for a plug-in."""
    if isinstance(agent, BaseAlgorithm):
        return StopRequest("Ctrl-C: stopping after this env step to save a checkpoint")
    return contextlib.nullcontext()


def _train(run: _Run, extra_callbacks: Sequence[BaseCallback] = (), stop: StopRequest | None = None) -> None:
    """Log the hyperparameters, train up to ``--timesteps``, save the agent.

    Raises:
        KeyboardInterrupt: Ctrl-C, or ``stop`` requested (checked between env steps and before the agent
            is saved as trained).
    """
    args, agent = run.args, run.agent
    run.logger.record("hyperparameters", _markdown_table(_hparams(run)), exclude=_TB_EXCLUDE)
    run.logger.dump(_num_timesteps(agent))
    start = _num_timesteps(agent)
    remaining = args.timesteps - start
    if remaining > 0:
        if isinstance(agent, BaseAlgorithm):
            end = planned_end(agent, start, args.timesteps)
            if end > args.timesteps:
                print(
                    f"note: {args.agent} trains in whole rollouts of {_rollout_steps(agent):,} env steps, so "
                    f"training runs from step {start:,} to {end:,}, {end - args.timesteps:,} past "
                    f"--timesteps {args.timesteps:,}",
                    file=sys.stderr,
                )
            callbacks: list[Any] = [EpisodeStatsCallback()]
            if stop is not None:
                callbacks.append(ConvertCallback(lambda _locals, _globals: not stop.requested))
            if args.checkpoint_freq or args.checkpoint_minutes:
                callbacks.append(
                    AtomicCheckpointCallback(
                        args.checkpoint_freq, run.checkpoint_dir, run.suffix, save_minutes=args.checkpoint_minutes
                    )
                )
            if args.eval_freq:
                callbacks.append(PeriodicEvaluation(args.eval_freq, lambda model: _evaluate_now(run, model)))
            if args.progress:
                callbacks.append(StepProgressBar(start, end))
            callbacks.extend(extra_callbacks)
            learn_kwargs: dict[str, Any] = (
                {"log_interval": _log_interval(run)} if isinstance(agent, OnPolicyAlgorithm) else {}
            )
            agent.learn(remaining, callback=callbacks, progress_bar=False, reset_num_timesteps=False, **learn_kwargs)
            # SB3 records an update's train/* scalars after it dumps the logs of the rollout before it, so
            # those of the last update are pending at the step already dumped: logging them there would
            # give each train/* scalar two values at that step. They are dropped, as a plain learn() does.
            run.logger.name_to_value.clear()
            run.logger.name_to_count.clear()
            run.logger.name_to_excluded.clear()
        else:
            agent.learn(remaining, callback=None, progress_bar=args.progress)
    if stop is not None and stop.requested:
        raise KeyboardInterrupt
    save_checkpoint(agent, run.agent_path)


def _evaluation_env(run: _Run, profile_dir: Path) -> gym.Env:
    """An env of the run's task on its loaded dataset that renders frames and writes profiles to ``profile_dir``."""
    return gym.make(
        run.env_id, render_mode="rgb_array", profile_dir=profile_dir, dataset_object=run.dataset, **run.env_kwargs
    )


def _evaluate_now(run: _Run, sampler: Any) -> dict[str, float]:
    """One evaluation episode of ``sampler`` and the classifier's metrics on E, as TensorBoard scalars."""
    with tempfile.TemporaryDirectory(prefix="nbs_gym_eval_") as scratch:
        env = _evaluation_env(run, Path(scratch))
        try:
            episode = _run_episode(
                env, acting_as_trained(sampler, run.agent, run.train_env), run.args.seed + EVAL_SEED_OFFSET
            )
        finally:
            env.close()
        profiles = load_profiles(episode.profile_path)
    result = evaluate_profiles(profiles, run.classifier_config, run.dataset).metrics
    tag = "eval/during_training"
    scalars = {f"{tag}/predictor/{metric}": float(result["predictor"][metric]) for metric in METRIC_NAMES}
    return {**scalars, f"{tag}/final_separation": episode.final_separation}


class NormalizedObservations:
    """A trained SB3 agent acting on an evaluation env's raw observations through the ``VecNormalize``
    statistics of its training envs (as they stand: frozen once training is over)."""

    def __init__(self, agent: BaseAlgorithm, statistics: VecNormalize) -> None:
        self.agent, self.statistics = agent, statistics

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[Any, Any]:
        normalized = self.statistics.normalize_obs(observation)
        return self.agent.predict(normalized, state=state, episode_start=episode_start, deterministic=deterministic)


def acting_as_trained(sampler: Any, agent: Any, train_env: Any) -> Any:
    """``sampler`` as it acts on an evaluation env: the trained ``agent`` sees observations normalised by the
    ``VecNormalize`` statistics of ``train_env`` when it trained on normalised observations; any other
    sampler acts on raw ones."""
    if sampler is agent and isinstance(train_env, VecNormalize) and train_env.norm_obs:
        return NormalizedObservations(agent, train_env)
    return sampler


def _log_interval(run: _Run) -> int:
    """Rollouts between two dumps of an on-policy agent's logs: about one episode of the envs' steps.

    SB3's A2C dumps every 100 rollouts, which with one-episode rollouts (``n_steps=200``) is never within
    a default run, and its episode statistics would not reach TensorBoard.
    """
    agent = run.agent
    episode_steps = task_config(run.env_id, **run.env_kwargs).n_steps * agent.n_envs
    return max(1, episode_steps // _rollout_steps(agent))


def planned_end(agent: BaseAlgorithm, start: int, target: int) -> int:
    """The step count at which SB3's ``learn`` from ``start`` towards ``target`` stops.

    On-policy algorithms collect whole rollouts (``n_steps`` per env) and off-policy ones whole
    ``train_freq`` chunks before they check the count; others stop at ``target`` or just after it.
    """
    if target <= start:
        return start
    chunk = _rollout_steps(agent)
    return start + math.ceil((target - start) / chunk) * chunk


def _rollout_steps(agent: BaseAlgorithm) -> int:
    """Env steps (over all envs) that ``agent`` collects between two checks of its step count."""
    if isinstance(agent, OnPolicyAlgorithm):
        return int(agent.n_steps * agent.n_envs)
    if isinstance(agent, OffPolicyAlgorithm):
        frequency = agent.train_freq  # a TrainFreq once the algorithm is built
        if isinstance(frequency, TrainFreq) and frequency.unit == TrainFrequencyUnit.STEP:
            return int(frequency.frequency * agent.n_envs)
    return int(agent.n_envs)


# ---------------------------------------------------------------------------------------------- evaluation


def _evaluate(run: _Run, report: bool = True) -> dict[str, Any]:
    """Evaluate the agent and ``uniform``; write metrics.json and figures; log to TensorBoard."""
    args = run.args
    # --agent uniform is the baseline itself: evaluated once, its result stands for both.
    samplers: dict[str, Any] = {"agent": run.agent, "uniform": None} if args.eval_uniform else {"agent": run.agent}
    if _is_uniform(run):
        samplers = {"uniform": None}
    metrics: dict[str, Any] = {}
    for number, (key, sampler) in enumerate(samplers.items(), start=1):
        name = args.agent if key == "agent" else "uniform"
        steps = run.env_kwargs.get("episode_length", task_config(args.env_id).episode_length)
        if report:
            print(
                f"evaluation {number}/{len(samplers)}: {name}, {args.eval_episodes} episode(s) of {steps:,} updates, "
                "then the anomaly classifier on each episode's loss profiles ...",
                file=sys.stderr,
                flush=True,
            )
        start = time.perf_counter()
        env = _evaluation_env(run, run.run_dir / "profiles" / key)
        try:
            if sampler is None:
                sampler = UniformSampler(env)
            else:
                sampler = acting_as_trained(sampler, run.agent, run.train_env)
            if hasattr(sampler, "prepare_env"):  # a reference sampler that changes the env's draw (oracle)
                sampler.prepare_env(env, run.dataset)
            episodes = [
                _run_episode(env, sampler, args.seed + EVAL_SEED_OFFSET + episode)
                for episode in range(args.eval_episodes)
            ]
        finally:
            env.close()
        metrics[key] = _score(run, key, episodes)
        if _on_reference_settings(run):
            metrics[key]["normalized"] = normalized_scores(run.env_id, metrics[key])
        if report:
            print(f"evaluation {number}/{len(samplers)}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if "agent" not in metrics:
        metrics = {"agent": metrics["uniform"], **metrics}
    write_text_atomic(run.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _log_evaluation(run, metrics)
    return metrics


def _is_uniform(run: _Run) -> bool:
    return run.spec.agent_class is UniformSampler and not run.args.hyperparams


def _on_reference_settings(run: _Run) -> bool:
    """Whether the run is scored as the task's reference scores were: the task's own settings, the
    default classifier, and one evaluation episode."""
    args = run.args
    own_task = not set(args.env_kwargs) - {"action_mode"} and args.dataset is None
    own_task = own_task and args.n_labeled_anomalous_per_type is None and args.n_labeled_normal is None
    default_classifier = ClassifierConfig(seed=args.seed, device=args.device) == run.classifier_config
    return own_task and default_classifier and args.eval_episodes == 1


@dataclass
class _Episode:
    seed: int
    profile_path: Path
    final_separation: float
    frame: np.ndarray


def _run_episode(env: gym.Env, sampler: Any, seed: int) -> _Episode:
    """One deterministic episode; its profiles are written by the env (``profile_dir``)."""
    observation, _ = env.reset(seed=seed)
    state, episode_start = None, True
    while True:
        result = sampler.predict(observation, state=state, episode_start=np.array([episode_start]), deterministic=True)
        action, state = _checked_prediction(sampler, result, env)
        episode_start = False
        observation, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return _Episode(seed, Path(info["profile_path"]), float(info["separation"]), cast(np.ndarray, env.render()))


def _checked_prediction(sampler: Any, result: Any, env: gym.Env) -> tuple[Any, Any]:
    """``(action, state)`` from ``sampler.predict``, or a :class:`PluginError` naming the sampler's class."""
    name = type(sampler).__name__
    if not (isinstance(result, tuple) and len(result) == 2):
        raise PluginError(f"{name}.predict returned {type(result).__name__}; expected a tuple (action, state)")
    try:
        cast(NeuralBatchSamplingEnv, env.unwrapped).batch_composition(result[0])
    except ValueError as error:
        raise PluginError(f"{name}.predict returned an action the env rejects: {error}") from None
    return result


def _score(run: _Run, key: str, episodes: list[_Episode]) -> dict[str, Any]:
    """Classifier metrics on E per episode (same classifier seed), averaged; figures of the first episode."""
    per_episode = []
    for index, episode in enumerate(episodes):
        profiles = load_profiles(episode.profile_path)
        evaluation = evaluate_profiles(profiles, run.classifier_config, run.dataset)
        result = evaluation.metrics
        per_episode.append({"predictor": result["predictor"], "final_loss": result["final_loss"]})
        if evaluation.validation is not None:  # L's held-out images: what nbs_gym.tune scores a trial by
            per_episode[-1]["validation"] = evaluation.validation
        if index == 0:
            _draw_figures(run, key, profiles, evaluation, episode.frame)
    summary: dict[str, Any] = _mean_tree(per_episode)
    summary["final_separation"] = float(np.mean([episode.final_separation for episode in episodes]))
    summary["episodes"] = [
        {
            "seed": episode.seed,
            "final_separation": episode.final_separation,
            "profiles": episode.profile_path.relative_to(run.run_dir).as_posix(),
        }
        for episode in episodes
    ]
    return summary


def _mean_tree(trees: list[Any]) -> Any:
    """Element-wise mean of equally shaped nested dicts of numbers (other leaves: the first one's)."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: _mean_tree([tree[key] for tree in trees]) for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return float(np.mean(trees))
    return first


def _draw_figures(run: _Run, key: str, profiles: LossProfiles, evaluation: Evaluation, frame: np.ndarray) -> None:
    """PNG figures under ``figures/`` and the same in TensorBoard, logged at the next dump."""
    folder = run.run_dir / "figures"
    loss_maps, masks = profiles.labeled_profiles()
    profile = profile_figure(
        loss_maps,
        masks,
        profiles.snapshot_steps,
        title=f"{key}: loss profiles of L",
        path=folder / f"{key}_profiles.png",
    )
    maps = evaluation.maps
    segmentation = segmentation_figure(
        profiles.images[profiles.n_labeled :],
        evaluation.masks,
        {"predictor": maps["predictor"], "final loss": maps["final_loss"]},
        defect_types=evaluation.defect_types,
        path=folder / f"{key}_segmentation.png",
    )
    run.logger.record(f"eval/{key}/profiles", Figure(profile, close=False), exclude=_TB_EXCLUDE)
    run.logger.record(f"eval/{key}/segmentation", Figure(segmentation, close=False), exclude=_TB_EXCLUDE)
    run.logger.record(f"eval/{key}/render", Image(frame, "HWC"), exclude=_TB_EXCLUDE)


def _log_evaluation(run: _Run, metrics: dict[str, Any]) -> None:
    """Evaluation scalars, and the hyperparameters with them for TensorBoard's HParams view."""
    scalars = {}
    for key, result in metrics.items():
        scalars[f"eval/{key}/final_separation"] = result["final_separation"]
        for source in ("predictor", "final_loss"):
            for metric in METRIC_NAMES:
                scalars[f"eval/{key}/{source}/{metric}"] = result[source][metric]
    for name, value in scalars.items():
        run.logger.record(name, value)
    run.logger.record("hparams", HParam(_hparams(run), scalars), exclude=_TB_EXCLUDE)
    run.logger.dump(_num_timesteps(run.agent))


def _hparams(run: _Run) -> dict[str, Any]:
    """Flat hyperparameters: the arguments, each env setting and each agent setting."""
    args = dataclasses.asdict(run.args)
    flat: dict[str, Any] = {
        key: value
        for key, value in args.items()
        if key not in ("env_kwargs", "hyperparams", "classifier_kwargs", "config", "resume")
    }
    flat |= {f"env/{key}": value for key, value in run.env_kwargs.items()}
    flat |= {f"agent/{key}": value for key, value in {**run.spec.settings(run.env_id), **run.args.hyperparams}.items()}
    flat |= {f"classifier/{key}": value for key, value in run.classifier_config.to_dict().items()}
    # TensorBoard's HParams accept numbers, strings and booleans only.
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()}


def _markdown_table(values: dict[str, Any]) -> str:
    rows = "\n".join(f"|{key}|{value}|" for key, value in values.items())
    return f"|parameter|value|\n|-|-|\n{rows}"


def _print_summary(run: _Run, metrics: dict[str, Any]) -> None:
    """The comparison table (what each column is), the classifier's own noise, and the files written."""
    name = run.args.agent.rpartition(":")[2]  # a plug-in's class name, not its whole module path
    uniform_only = _is_uniform(run)
    with_uniform = "uniform" in metrics
    table = Table(title="evaluation on E: the anomaly classifier trained on L's loss profiles, scored on E")
    table.add_column("metric", no_wrap=True)
    if not uniform_only:
        table.add_column(name, justify="right")
    if with_uniform:
        table.add_column("uniform", justify="right")
    if with_uniform and not uniform_only:
        table.add_column(f"{name}\n− uniform", justify="right")
    rows: list[tuple[str, tuple[str, ...]]] = [
        (f"{source}/{metric}", (source, metric)) for source in ("predictor", "final_loss") for metric in METRIC_NAMES
    ]
    rows.append(("final_separation", ("final_separation",)))
    for label, path in rows:
        agent_value = float(metric_at(metrics["agent"], path))
        if not with_uniform or uniform_only:
            table.add_row(label, f"{agent_value:.4f}")
        else:
            uniform_value = float(metric_at(metrics["uniform"], path))
            table.add_row(label, f"{agent_value:.4f}", f"{uniform_value:.4f}", f"{agent_value - uniform_value:+.4f}")
    console = Console()
    console.print(table)
    ensemble = run.classifier_config.ensemble
    noise = CLASSIFIER_NOISE_F1.get(ensemble) if run.classifier_config.kind == ClassifierConfig().kind else None
    if noise is not None and with_uniform and not uniform_only:
        networks = "1 network" if ensemble == 1 else f"an ensemble of {ensemble}"
        print(
            f"classifier noise: refitted on the same profiles, the predictor's pixel_f1_max varies by about "
            f"{noise:.3f} (sd over classifier seeds, {networks}; docs/RESULTS_v0.md), so a difference under about "
            f"{2 * noise:.2f} is within the classifier's own noise"
        )
    if "normalized" in metrics["agent"] and not uniform_only:
        score = metrics["agent"]["normalized"].get("predictor/pixel_f1_max")
        if score is not None:
            print(f"normalised score (0 = uniform, 1 = oracle; nbs_gym.scores): pixel_f1_max {score:+.3f}")
    written = [
        run.run_dir / "metrics.json",
        run.agent_path,
        run.run_dir / "figures",
        run.run_dir / "profiles",
        run.run_dir / CONFIG_FILE,
    ]
    print("wrote: " + ", ".join(str(path) for path in written))
    print(f"TensorBoard logs: tensorboard --logdir {run.run_dir}")


def agent_profile_files(run_dir: str | Path) -> list[Path]:
    """The profile files of a finished run's evaluation episodes of its agent, from its ``metrics.json``
    (a ``--agent uniform`` run's are uniform's, under ``profiles/uniform``).

    Raises:
        OSError: The run has no ``metrics.json`` (it did not finish).
    """
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return [run_dir / episode["profiles"] for episode in metrics["agent"]["episodes"]]


if __name__ == "__main__":
    exit_process(main())
