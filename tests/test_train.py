"""Smoke tests of ``python -m nbs_gym.train`` through a subprocess, with tiny settings."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents import TUNED
from agents.baselines import UniformSampler
from agents.registry import get_spec
from nbs_gym import train as train_module
from nbs_gym.callbacks import EpisodeStatsCallback
from nbs_gym.cli import Interrupted
from nbs_gym.tasks import TASK_SETTINGS
from nbs_gym.train import RunResult, main, parse_args, resume_args, run, validated_settings

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--env-kwargs", "episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8",
    "--classifier-kwargs", "kind=per_pixel",
    "--device", "cpu", "--seed", "3", "--no-progress",
    "--n-envs", "1",  # one env whatever the agent's default (ppo and a2c train on 4 on v1)
]  # fmt: skip
ANY_ENVS = TINY[: TINY.index("--n-envs")]  # for the tests that set --n-envs themselves
PPO_TINY = ["--agent", "ppo", "--timesteps", "40", "--hyperparams", "n_steps=20", "batch_size=10"]
OBSERVATION = np.zeros(18, dtype=np.float32)  # 3 * 5 strata + 3
BOX = spaces.Box(-1.0, 1.0, (5,), dtype=np.float32)
QUANTILE_BOX = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)  # where ppo and a2c act on v1 by default
# Tiny networks gain nothing from intra-op threads, and on a shared machine they oversubscribe the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def default_sigint() -> None:
    """``preexec_fn`` of a command a test sends Ctrl-C: SIGINT's default disposition in the child.

    A shell without job control starts background jobs with SIGINT ignored, and Python keeps an ignored
    SIGINT ignored; the child must see Ctrl-C however pytest was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ConstantSampler:
    """A plug-in sampler for these tests: one fixed action, saved as JSON."""

    file_suffix = ".json"
    action_modes = ("strata", "spatial")

    def __init__(self, env: Any, seed: int | None = None, value: float = 0.5) -> None:
        self.action_space = env.action_space
        self.value = value
        self.num_timesteps = 0

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> ConstantSampler:
        self.num_timesteps += total_timesteps
        return self

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        rows = np.shape(observation)[:-1]
        return np.full((*rows, *self.action_space.shape), self.value, dtype=np.float32), state

    def save(self, path: str | os.PathLike[str]) -> None:
        record = {"value": self.value, "n_groups": self.action_space.shape[0], "num_timesteps": self.num_timesteps}
        Path(path).write_text(json.dumps(record))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None) -> ConstantSampler:
        record = json.loads(Path(path).read_text())
        if env is None:
            env = type("Spaces", (), {"action_space": spaces.Box(-1.0, 1.0, (record["n_groups"],), dtype=np.float32)})
        sampler = cls(env, value=record["value"])
        sampler.num_timesteps = record["num_timesteps"]
        return sampler


class BareActionSampler(ConstantSampler):
    """A plug-in whose predict forgets the state: it returns the action alone."""

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return super().predict(observation, state, episode_start, deterministic)[0]


class VectorStepper(ConstantSampler):
    """A plug-in that steps the Gymnasium vector env it gets with ``--n-envs > 1``, as a user's loop would."""

    def __init__(self, env: Any, seed: int | None = None, value: float = 0.5) -> None:
        if not isinstance(env.unwrapped, gym.vector.VectorEnv):
            raise TypeError(f"expected a Gymnasium VectorEnv, got {type(env).__name__}")
        super().__init__(type("Spaces", (), {"action_space": env.single_action_space}), seed, value)
        self.env = env

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> VectorStepper:
        self.env.reset()
        for _ in range(total_timesteps // self.env.num_envs):
            _, rewards, _, _, _ = self.env.step(np.full(self.env.action_space.shape, self.value, np.float32))
            assert rewards.shape == (self.env.num_envs,)
            self.num_timesteps += self.env.num_envs
        return self


def run_train(*args: str, timeout: float = 300, path: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m nbs_gym.train ARGS`` with the repo, ``tests/`` and ``path`` importable."""
    folders = [REPO, REPO / "tests", *path]
    environment = {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join(map(str, folders))}
    return subprocess.run(
        [sys.executable, "-m", "nbs_gym.train", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    result = run_train(*PPO_TINY, *TINY, "--checkpoint-freq", "20", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "predictor/pixel_auroc" in result.stdout  # the comparison table
    return run_dir


def check_run_dir(run_dir: Path) -> dict[str, Any]:
    """Files every finished run has; returns metrics.json."""
    for name in ("config.yaml", "split.json", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (run_dir / "profiles" / "uniform" / "episode_00000.npz").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"agent", "uniform"}
    for result in metrics.values():
        assert all((run_dir / episode["profiles"]).is_file() for episode in result["episodes"])
        for source in ("predictor", "final_loss"):
            assert 0.0 <= result[source]["pixel_auroc"] <= 1.0
            assert "per_defect_type" in result[source]
        assert isinstance(result["final_separation"], float)
        assert result["episodes"][0]["profiles"].startswith("profiles/")
    return metrics


@pytest.mark.slow
def test_ppo_run_logs_checkpoints_and_evaluates(ppo_run: Path) -> None:
    check_run_dir(ppo_run)
    assert sorted(path.name for path in (ppo_run / "checkpoints").iterdir()) == [
        "agent_20_steps.zip",
        "agent_40_steps.zip",
    ]
    agent = PPO.load(ppo_run / "agent.zip", device="cpu")
    assert agent.num_timesteps == 40
    assert QUANTILE_BOX.contains(agent.predict(OBSERVATION, deterministic=True)[0])

    events = EventAccumulator(str(ppo_run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for scalar in ("nbs/separation", "nbs/ae_loss", "nbs/reward/separation_gain", "nbs/composition/group_4"):
        assert scalar in tags["scalars"], scalar
    assert "rollout/ep_rew_mean" in tags["scalars"] and "eval/agent/predictor/pixel_auroc" in tags["scalars"]
    assert {"eval/agent/render", "eval/uniform/profiles", "eval/agent/segmentation"} <= set(tags["images"])
    assert any(tag.startswith("hyperparameters") for tag in tags["tensors"])


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_with_or_without_evaluations_during_training(
    ppo_run: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    result = run_train(*PPO_TINY, *TINY, "--checkpoint-freq", "20", "--eval-freq", "20", "--run-dir", str(again))
    assert result.returncode == 0, result.stderr
    assert (again / "metrics.json").read_text() == (ppo_run / "metrics.json").read_text()
    events = EventAccumulator(str(again), size_guidance={"scalars": 0})
    events.Reload()
    curve = events.Scalars("eval/during_training/predictor/pixel_f1_max")
    assert [event.step for event in curve] == [20, 40]
    assert all(0.0 <= event.value <= 1.0 for event in curve)
    assert "eval/during_training/final_separation" in events.Tags()["scalars"]


@pytest.mark.slow
def test_resume_continues_to_the_requested_timesteps(ppo_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(ppo_run, run_dir)
    result = run_train("--resume", str(run_dir), "--timesteps", "80", "--no-progress")
    assert result.returncode == 0, result.stderr
    check_run_dir(run_dir)
    assert PPO.load(run_dir / "agent.zip", device="cpu").num_timesteps == 80
    assert (run_dir / "checkpoints" / "agent_80_steps.zip").is_file()
    assert "timesteps: 80" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_resume_drops_the_previous_evaluation_before_training(
    ppo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(ppo_run, run_dir)

    def interrupted(self: PPO, *args: Any, **kwargs: Any) -> PPO:
        raise KeyboardInterrupt

    monkeypatch.setattr(PPO, "learn", interrupted)  # Ctrl-C as training starts again
    with pytest.raises(Interrupted, match=f"continue with --resume {run_dir}"):
        run(resume_args(run_dir, timesteps=80, progress=False))
    # The interruption must not leave the 40-step metrics beside an 80-step config.
    assert not (run_dir / "metrics.json").exists() and not list((run_dir / "profiles").rglob("episode_*.npz"))
    assert (run_dir / "agent.zip").is_file() and (run_dir / "checkpoints" / "agent_40_steps.zip").is_file()
    assert "timesteps: 80" in (run_dir / "config.yaml").read_text()


class CtrlCAt(BaseCallback):
    """Sends this process Ctrl-C (SIGINT) in the env step that reaches ``steps``, once."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        if self.num_timesteps == self.steps:
            signal.raise_signal(signal.SIGINT)
        return True


def test_ctrl_c_in_training_stops_after_that_env_step_with_a_checkpoint_there(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    args = parse_args([*PPO_TINY, *TINY, "--run-dir", str(run_dir)])
    # The signal arrives in the callbacks of step 8, after the stop check of that step: training stops
    # after step 9, between env steps, instead of wherever a KeyboardInterrupt would have landed.
    with pytest.raises(Interrupted, match=f"checkpoint .*agent_9_steps.zip; continue with --resume {run_dir}"):
        run(args, report=False, callbacks=[CtrlCAt(8)])
    assert (
        "Ctrl-C: stopping after this env step to save a checkpoint (Ctrl-C again stops at once)"
        in capfd.readouterr().err
    )
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == ["agent_9_steps.zip"]
    assert not (run_dir / "agent.zip").exists()  # not saved as trained
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C interrupts again
    resumed = run(resume_args(run_dir, progress=False), report=False)
    # Training goes on in whole rollouts of 20 steps from step 9, as from any checkpoint.
    assert resumed.num_timesteps == 49 and (run_dir / "agent.zip").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [PPO, A2C])
def test_ppo_and_a2c_train_with_their_best_settings_by_default(algorithm: type, tmp_path: Path) -> None:
    """Without --n-envs, --env-id or --hyperparams, PPO and A2C on v1 train as docs/RESULTS.md's best
    runs did: the quantile mode, four batched envs, exploration drawn once per episode."""
    name = algorithm.__name__.lower()
    tiny = ANY_ENVS  # the agent's own number of envs
    run_dir = tmp_path / name
    # One rollout: 20 env steps in each of the 4 envs (five tiny episodes each).
    result = run_train(
        "--agent", name, "--timesteps", "80", "--hyperparams", "n_steps=20", *tiny, "--run-dir", str(run_dir)
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["n_envs"] is None and config["hyperparams"] == {"n_steps": 20}  # as given; resolved at each start
    agent = algorithm.load(run_dir / "agent.zip", device="cpu")
    assert agent.n_envs == 4 and agent.num_timesteps == 80
    assert agent.use_sde and agent.sde_sample_freq == -1 and agent.gae_lambda == 1.0
    assert agent.action_space.shape == (1,)  # the quantile mode
    tuned = TUNED[name]["v1"].hyperparams
    stored = {key: value for key, value in tuned.items() if key not in ("policy_kwargs", "n_steps", "use_rms_prop")}
    assert all(getattr(agent, key) == value for key, value in stored.items())
    assert type(agent.policy.optimizer).__name__ == "Adam"  # A2C's tuned use_rms_prop=False; PPO's own


@pytest.mark.slow
def test_the_run_api_returns_what_the_command_writes(ppo_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "again"
    args = parse_args([*PPO_TINY, *TINY, "--checkpoint-freq", "20", "--run-dir", str(run_dir)])
    result = run(args, report=False)
    assert isinstance(result, RunResult) and result.run_dir == run_dir and result.num_timesteps == 40
    assert result.metrics == json.loads((run_dir / "metrics.json").read_text())
    assert set(result.metrics) == {"agent", "uniform"}
    assert (run_dir / "config.yaml").read_text() == (ppo_run / "config.yaml").read_text()  # the CLI's settings


@pytest.mark.slow
def test_off_policy_resume_continues_with_the_replay_buffer(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    dqn = ["--agent", "dqn", "--hyperparams", "learning_starts=10", "buffer_size=500", "--checkpoint-freq", "20"]
    result = run_train(*dqn, "--timesteps", "40", *TINY, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert [path.name for path in (run_dir / "checkpoints").glob("*.pkl")] == ["agent_40_steps_replay_buffer.pkl"]
    result = run_train("--resume", str(run_dir), "--timesteps", "60", "--no-progress")
    assert result.returncode == 0, result.stderr
    agent = DQN.load(run_dir / "agent.zip", device="cpu")
    agent.load_replay_buffer(run_dir / "agent_replay_buffer.pkl")
    assert agent.num_timesteps == 60 and agent.replay_buffer.size() == 60  # 40 before the resumption, 20 after


@pytest.mark.slow
def test_normalize_trains_on_running_statistics_that_checkpoints_keep_and_resume_restores(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    normalized = [*PPO_TINY, "normalize=true", *TINY, "--checkpoint-freq", "20", "--run-dir", str(run_dir)]
    result = run_train(*normalized)
    assert result.returncode == 0, result.stderr
    check_run_dir(run_dir)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == [
        "agent_20_steps.zip",
        "agent_20_steps_vecnormalize.pkl",
        "agent_40_steps.zip",
        "agent_40_steps_vecnormalize.pkl",
    ]
    statistics = VecNormalize.load(str(run_dir / "agent_vecnormalize.pkl"), DummyVecEnv([lambda: Monitor(_Box())]))
    # One observation per step and per reset (the first one), one return per step; discounted as the agent.
    assert round(statistics.obs_rms.count) == 41 and round(statistics.ret_rms.count) == 40
    assert statistics.norm_obs and statistics.norm_reward and statistics.gamma == 1.0

    # A checkpoint whose statistics are missing counts as damaged: the run resumes from the one before.
    (run_dir / "agent.zip").unlink()
    (run_dir / "checkpoints" / "agent_40_steps_vecnormalize.pkl").unlink()
    result = run_train("--resume", str(run_dir), "--timesteps", "60", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "agent_40_steps_vecnormalize.pkl" in result.stderr
    assert "resume: from" in result.stderr and "agent_20_steps.zip (20 steps)" in result.stderr
    resumed = VecNormalize.load(str(run_dir / "agent_vecnormalize.pkl"), DummyVecEnv([lambda: Monitor(_Box())]))
    assert round(resumed.obs_rms.count) == 21 + 41  # the 20-step statistics, then a reset and 40 steps


class _Box(gym.Env[np.ndarray, np.ndarray]):
    """An env with the quantile mode's spaces, for loading saved VecNormalize statistics."""

    observation_space = spaces.Box(-np.inf, np.inf, (18,), dtype=np.float32)
    action_space = QUANTILE_BOX


def test_an_agent_on_normalised_envs_is_evaluated_on_observations_normalised_as_in_training() -> None:
    statistics = VecNormalize(DummyVecEnv([lambda: Monitor(_Box())]), norm_reward=False)
    statistics.obs_rms.mean = np.full(18, 2.0)
    statistics.obs_rms.var = np.full(18, 4.0)
    seen: list[np.ndarray] = []

    class Agent:
        def predict(self, observation: np.ndarray, **_: Any) -> tuple[np.ndarray, None]:
            seen.append(observation)
            return np.zeros(1, dtype=np.float32), None

    agent = Agent()
    acting = train_module.acting_as_trained(agent, agent, statistics)
    action, _ = acting.predict(np.full(18, 4.0, dtype=np.float32), deterministic=True)
    assert action.shape == (1,)
    np.testing.assert_allclose(seen[0], np.ones(18), rtol=1e-6)  # (4 - 2) / sqrt(4)
    other = UniformSampler(_Box())
    assert train_module.acting_as_trained(other, agent, statistics) is other  # uniform acts on raw observations
    statistics.norm_obs = False
    assert train_module.acting_as_trained(agent, agent, statistics) is agent


def test_normalize_is_an_sb3_algorithms_env_setting_and_any_other_agents_own_keyword() -> None:
    ppo = parse_args(["--agent", "ppo", "--hyperparams", "normalize={norm_reward: false}"])
    spec = get_spec("ppo")
    assert train_module.normalization(ppo, spec) == {"norm_reward": False}
    assert "normalize" in (train_module.hyperparameter_names(spec) or set())
    plugin = parse_args(["--agent", "test_train:NormalizingSampler", "--hyperparams", "normalize=maybe"])
    plugin_spec = get_spec(plugin.agent)
    assert train_module.normalization(plugin, plugin_spec) is None  # the plug-in's own keyword, passed on
    train_module.check_settings(plugin)
    assert train_module.hyperparameter_names(get_spec("uniform")) == {"env", "seed"}


class NormalizingSampler(ConstantSampler):
    """A plug-in with a ``normalize`` keyword of its own."""

    def __init__(self, env: Any, seed: int | None = None, normalize: str = "no") -> None:
        super().__init__(env, seed)
        self.normalize = normalize


def test_episode_stats_pass_over_steps_that_report_no_infos() -> None:
    callback = EpisodeStatsCallback()
    callback.locals = {"candidate_weights": None}  # what ARS hands its callbacks: no infos, no dones
    assert callback._on_step() is True  # SB3's hook, as the agent calls it (on_step needs a model)


def test_number_values_with_exponents_are_numbers_and_wrong_types_are_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args(["--hyperparams", "learning_rate=1e-4", "gamma=.99", "--env-kwargs", "learning_rate=2E-3"])
    assert args.hyperparams == {"learning_rate": 1e-4, "gamma": 0.99}
    assert args.env_kwargs == {"learning_rate": 2e-3}
    assert main(["--env-kwargs", "episode_length=long"]) == 2
    assert "episode_length: expected an integer, got 'long'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("agent", "extra", "load"),
    [
        # 5-step rollouts (SB3's default; the tuned 200 would make one rollout of the whole run)
        ("a2c", ["--hyperparams", "n_steps=5"], lambda path: A2C.load(path, device="cpu")),
        ("uniform", [], UniformSampler.load),
        ("test_train:ConstantSampler", ["--hyperparams", "value=0.25"], ConstantSampler.load),
    ],
)
def test_other_agents_train_and_load_back(agent: str, extra: list[str], load: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train("--agent", agent, "--timesteps", "40", *extra, *TINY, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    check_run_dir(run_dir)
    saved = next(path for path in run_dir.glob("agent.*"))
    action, _ = load(saved).predict(OBSERVATION, deterministic=True)
    assert (QUANTILE_BOX if agent == "a2c" else BOX).contains(np.asarray(action, dtype=np.float32))
    if agent == "a2c":  # its episode statistics reach TensorBoard (SB3's A2C alone would dump every 500 steps)
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        assert len(events.Scalars("nbs/separation")) >= 2
    if agent == "uniform":
        assert saved.name == "agent.json" and not np.any(action)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key in ("predictor", "final_loss", "final_separation"):  # the same sampler under the same seeds
            assert metrics["agent"][key] == metrics["uniform"][key]


@pytest.mark.slow
def test_a_plugin_whose_predictions_the_env_rejects_is_one_error_line(tmp_path: Path) -> None:
    plugin = ["--agent", "test_train:BareActionSampler", "--timesteps", "20"]
    result = run_train(*plugin, *TINY, "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith("evaluation ")] == [
        f"error: BareActionSampler.predict returned ndarray; expected a tuple (action, state); "
        f"the trained agent is in {tmp_path}"
    ]


@pytest.mark.slow
def test_several_envs_train_on_the_batched_vector_env(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ppo = ["--agent", "ppo", "--timesteps", "80", "--hyperparams", "n_steps=20", "batch_size=20"]
    result = run_train(*ppo, "--n-envs", "2", *ANY_ENVS, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    check_run_dir(run_dir)
    assert "vec_env: auto" in (run_dir / "config.yaml").read_text()
    assert PPO.load(run_dir / "agent.zip", device="cpu").num_timesteps == 80
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert {"rollout/ep_rew_mean", "nbs/separation"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
@pytest.mark.parametrize("vec_env", ["batched", "dummy"])
def test_a_plugin_steps_a_gymnasium_vector_env_with_several_envs(vec_env: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    plugin = ["--agent", "test_train:VectorStepper", "--timesteps", "8", "--n-envs", "2", "--vec-env", vec_env]
    result = run_train(*plugin, *ANY_ENVS, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    check_run_dir(run_dir)
    assert json.loads((run_dir / "agent.json").read_text())["num_timesteps"] == 8


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # faulthandler: a run that hangs after Ctrl-C is sent SIGABRT and prints every thread's stack.
    environment = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
    command = [
        sys.executable,
        "-m",
        "nbs_gym.train",
        *PPO_TINY,
        *TINY,
        "--run-dir",
        str(run_dir),
        "--timesteps",
        "1000000",
    ]
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr_file:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            preexec_fn=default_sigint,
        )
    # train prints the run directory once the run is set up, as the last thing before training starts;
    # the lines are read on a thread so that a run that never prints fails the test instead of hanging it.
    stdout = process.stdout
    assert stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()

    def read_lines() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()
    try:
        started = [lines.get(timeout=300) for _ in range(2)]
    except queue.Empty:
        process.kill()
        pytest.fail(f"train printed no run directory; stderr: {log.read_text()}")
    assert started[1].startswith(b"TensorBoard:"), (started, log.read_text())
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        # Without pytest's traceback above it, the stacks faulthandler printed are what a CI log shows.
        pytest.fail(f"train did not stop within 120 s of Ctrl-C; stderr: {log.read_text()}", pytrace=False)
    stderr = log.read_bytes()
    assert process.returncode == 130, stderr.decode()
    assert "--resume" in stderr.decode() and b"Traceback" not in stderr
    assert b"Ctrl-C: stopping after this env step" in stderr
    checkpoints = list((run_dir / "checkpoints").glob("agent_*_steps.zip"))
    assert checkpoints and not list((run_dir / "checkpoints").glob(".*"))  # no temporary file left


@pytest.mark.slow
def test_bad_flag_in_a_subprocess_is_one_line_without_traceback() -> None:
    result = run_train("--agent", "sac", "--env-kwargs", "action_mode=discrete", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: agent 'sac' cannot act in action_mode='discrete'; it supports action_mode strata or spatial or quantile"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent", "nope"], "unknown agent 'nope'"),
        (["--timesteps", "-5"], "--timesteps: must be an integer >= 0"),
        (["--dataset", "mvtec:/does/not/exist"], "/does/not/exist"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--env-kwargs", "dataset=synthetic"], "use --dataset"),
        (["--env-kwargs", "episode_lenght=20"], "episode_lenght: unknown setting"),
        (["--env-kwargs", "novalue"], "expected KEY=VALUE"),
        (["--agent", "test_train:Nowhere"], "no class Nowhere"),
        (["--agent", "no_such_package.sampler:Sampler"], "for class Sampler"),
        (["--classifier-kwargs", "nope=1"], "--classifier-kwargs"),
        (["--config", "/does/not/exist.yaml"], "--config: no such file"),
        (["--resume", "/does/not/exist"], "--resume: no such file"),
        (["--env-id", "nbs_gym/NeuralBatchSampling-v9"], "env_id: unknown id"),
        (["--agent", "sac", "--env-id", "nbs_gym/NeuralBatchSamplingDiscrete-v1"], "'sac' cannot act"),
        (["--hyperparams", "normalize=maybe"], "--hyperparams normalize: expected true, false or a mapping"),
        (["--hyperparams", "normalize={norm_obs: true, scale: 2}"], "normalize: unknown key 'scale'"),
        (["--hyperparams", "normalize={clip_obs: -1}"], "clip_obs must be a number > 0"),
        (["--agent", "uniform", "--hyperparams", "normalize=true"], "bad hyperparameters {'normalize': True}"),
    ],
)
def test_bad_flags_exit_2_with_one_error_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.slow
def test_resume_refuses_to_change_the_agent(ppo_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--resume", str(ppo_run), "--agent", "a2c"]) == 2
    assert "--agent: cannot change when resuming" in capsys.readouterr().err


def test_config_file_sets_defaults_and_flags_win(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("agent: a2c\ntimesteps: 100\nenv_kwargs: {episode_length: 30}\nhyperparams: {n_steps: 10}\n")
    args = parse_args(["--config", str(config), "--timesteps", "50"])
    assert (args.agent, args.timesteps, args.env_kwargs, args.hyperparams) == (
        "a2c",
        50,
        {"episode_length": 30},
        {"n_steps": 10},
    )
    config.write_text("agnet: a2c\n")
    assert main(["--config", str(config)]) == 2
    assert "unknown key 'agnet'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env_id"),
    [
        ([], "nbs_gym/NeuralBatchSamplingQuantile-v1"),  # ppo's tuned mode on v1
        (["--agent", "uniform"], "nbs_gym/NeuralBatchSampling-v1"),
        (["--env-kwargs", "action_mode=strata"], "nbs_gym/NeuralBatchSampling-v1"),
        (["--agent", "dqn"], "nbs_gym/NeuralBatchSamplingDiscrete-v1"),
        (["--agent", "dqn", "--env-id", "nbs_gym/NeuralBatchSampling-v0"], "nbs_gym/NeuralBatchSamplingDiscrete-v0"),
        (["--env-id", "nbs_gym/NeuralBatchSamplingSpatial-v0"], "nbs_gym/NeuralBatchSamplingSpatial-v0"),
    ],
)
def test_the_task_id_sets_the_runs_settings_and_the_agent_its_mode(argv: list[str], env_id: str) -> None:
    args = parse_args(argv)
    spec, env_kwargs, config, _ = validated_settings(args)
    assert spec.env_id(config.action_mode, task=args.env_id) == env_id
    version = env_id.rsplit("-", 1)[1]
    for key, value in TASK_SETTINGS[version].items():
        assert config.to_dict().get(key, config.to_dict()["data"].get(key)) == value
    # What the run makes is what validated_settings says: gymnasium applies the id's settings.
    made = gym.make(env_id, **{**env_kwargs, "device": "cpu"}).unwrapped.config
    assert made == dataclasses.replace(config, autoencoder=dataclasses.replace(config.autoencoder, device="cpu"))


def test_a_run_saved_before_task_versions_resumes_as_v0(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("agent: uniform\ndataset: synthetic\ntimesteps: 0\n")
    args = parse_args(["--resume", str(tmp_path)])
    assert args.env_id == "nbs_gym/NeuralBatchSampling-v0"
    assert validated_settings(args)[2].episode_length == 200


@pytest.mark.slow
def test_the_oracle_reference_runs_end_to_end_with_its_own_draw(tmp_path: Path) -> None:
    run_dir = tmp_path / "oracle"
    assert main(["--agent", "oracle", "--timesteps", "0", "--run-dir", str(run_dir), *TINY]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    agent, uniform = (np.load(run_dir / metrics[key]["episodes"][0]["profiles"])["loss_maps"] for key in metrics)
    assert agent.shape == uniform.shape and not np.array_equal(agent, uniform)
