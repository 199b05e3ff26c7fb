"""A training run survives being killed, leaves only whole files, and says what it does (``nbs_gym.train``)."""

from __future__ import annotations

import collections
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import unittest.mock
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import PPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import ONE_THREAD, PPO_TINY, REPO, TINY, check_run_dir, run_train

from nbs_gym.callbacks import AtomicCheckpointCallback, StepProgressBar
from nbs_gym.cli import StopRequest
from nbs_gym.data import load_dataset, write_mvtec_folder
from nbs_gym.train import agent_profile_files, main, planned_end

# Every test here trains or runs commands end to end: the fast tier (-m "not slow") leaves them out.
pytestmark = pytest.mark.slow

KILLER = REPO / "tests" / "killing_train.py"


def run_killed(fault: str, *args: str, path: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
    """``nbs_gym.train`` with ``args``, killed by SIGKILL at ``fault`` (see tests/killing_train.py)."""
    folders = [REPO, REPO / "tests", *path]
    environment = {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join(map(str, folders))}
    return subprocess.run(
        [sys.executable, str(KILLER), fault, *args], capture_output=True, text=True, cwd=REPO, env=environment
    )


def partial_files(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes: what a write cut short leaves behind."""
    return [path for path in run_dir.rglob(".*") if ".tmp" in path.name]


@pytest.mark.parametrize(
    ("fault", "checkpoint_freq", "killed_with"),
    [
        ("checkpoint=2", "20", "a half-written checkpoint"),  # mid-write of agent_40_steps.zip
        ("evaluation", "20", "the agent's profiles but no metrics"),
    ],
)
def test_a_run_killed_at_any_point_resumes_to_completion(
    fault: str, checkpoint_freq: str, killed_with: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    killed = run_killed(fault, *PPO_TINY, *TINY, "--checkpoint-freq", checkpoint_freq, "--run-dir", str(run_dir))
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    assert not (run_dir / "metrics.json").exists()
    if fault.startswith("checkpoint"):
        assert partial_files(run_dir), "the fault left no half-written file to test with"

    resumed = run_train("--resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    check_run_dir(run_dir)
    assert partial_files(run_dir) == []
    assert PPO.load(run_dir / "agent.zip", device="cpu").num_timesteps == 40


def test_a_resumed_run_that_was_killed_before_its_first_checkpoint_equals_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    args = [*PPO_TINY, *TINY, "--checkpoint-freq", "1000"]
    assert run_killed("step=10", *args, "--run-dir", str(killed_dir)).returncode == -9
    assert not (killed_dir / "checkpoints").exists()
    resumed = run_train("--resume", str(killed_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "training starts again from step 0" in resumed.stderr and "Traceback" not in resumed.stderr
    check_run_dir(killed_dir)
    assert partial_files(killed_dir) == []
    assert run_train(*args, "--run-dir", str(whole_dir)).returncode == 0
    assert (killed_dir / "metrics.json").read_text() == (whole_dir / "metrics.json").read_text()


BANDIT = ["--agent", "bandit_sampler:EpsilonGreedyBandit", "--timesteps", "32", "--checkpoint-freq", "8"]
# TINY's episodes are 20 updates of 5 per env step: 4 env steps, so 32 steps are 8 episodes.


def test_a_plugin_that_steps_its_gymnasium_env_trains_checkpoints_resumes_and_evaluates(tmp_path: Path) -> None:
    examples = [REPO / "examples"]
    killed_dir = tmp_path / "killed"
    killed = run_killed("step=20", *BANDIT, *TINY, "--run-dir", str(killed_dir), path=examples)
    assert killed.returncode == -9, killed.stderr
    checkpoints = sorted(path.name for path in (killed_dir / "checkpoints").iterdir())
    assert checkpoints == ["agent_16_steps.json", "agent_8_steps.json"]
    assert json.loads((killed_dir / "checkpoints" / "agent_16_steps.json").read_text())["num_timesteps"] == 16

    resumed = run_train("--resume", str(killed_dir), "--no-progress", path=examples)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: from {killed_dir / 'checkpoints' / 'agent_16_steps.json'} (16 steps)" in resumed.stderr
    check_run_dir(killed_dir)
    assert partial_files(killed_dir) == []
    bandit = json.loads((killed_dir / "agent.json").read_text())
    assert bandit["num_timesteps"] == 32 and sum(bandit["counts"]) == 8  # every episode of the budget counted

    # The same seed gives the same run: the env is seeded before the plug-in's first unseeded reset.
    first, second = tmp_path / "first", tmp_path / "second"
    for run_dir in (first, second):
        assert run_train(*BANDIT, *TINY, "--run-dir", str(run_dir), path=examples).returncode == 0
    assert (first / "agent.json").read_text() == (second / "agent.json").read_text()
    assert (first / "metrics.json").read_text() == (second / "metrics.json").read_text()


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    killed = run_killed(
        "step=50", *PPO_TINY, *TINY, "--timesteps", "60", "--checkpoint-freq", "20", "--run-dir", str(run_dir)
    )
    assert killed.returncode == -9, killed.stderr
    newest, previous = run_dir / "checkpoints" / "agent_40_steps.zip", run_dir / "checkpoints" / "agent_20_steps.zip"
    newest.write_bytes(newest.read_bytes()[:300])  # truncated
    empty = run_dir / "checkpoints" / "agent_45_steps.zip"
    empty.write_bytes(b"")  # as a full disk leaves one
    resumed = run_train("--resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert f"skipping {empty}: it does not load" in warnings[0] and f"skipping {newest}" in warnings[1]
    assert f"resume: from {previous} (20 steps)" in resumed.stderr
    assert PPO.load(run_dir / "agent.zip", device="cpu").num_timesteps == 60


def test_resume_removes_only_the_files_the_run_writes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_train("--agent", "uniform", "--timesteps", "20", *TINY, "--run-dir", str(run_dir)).returncode == 0
    beside_profiles = run_dir / "profiles" / "uniform"
    user_files = {name: f"{name} of nbs_gym.classify" for name in ("metrics.json", "predictor.pt", "segmentation.png")}
    for name, text in user_files.items():
        (beside_profiles / name).write_text(text)
    (run_dir / "notes.txt").write_text("mine")
    assert run_train("--resume", str(run_dir), "--timesteps", "60", "--no-progress").returncode == 0
    check_run_dir(run_dir)
    for name, text in user_files.items():
        assert (beside_profiles / name).read_text() == text
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_the_progress_bar_counts_a_resumed_model_s_steps_to_where_it_stops() -> None:
    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(40)  # a first run: 64 steps, two whole rollouts
    start, target = model.num_timesteps, 100
    bar = StepProgressBar(start, planned_end(model, start, target))
    model.learn(target - start, callback=bar, reset_num_timesteps=False)
    assert (bar.start, bar.end) == (64, 128)
    assert bar.bar.n == bar.bar.total == model.num_timesteps


def test_checkpoints_are_also_taken_at_a_time_interval(tmp_path: Path) -> None:
    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    by_time = AtomicCheckpointCallback(0, tmp_path / "time", save_minutes=1e-9)  # due at every step
    model.learn(16, callback=by_time)
    assert len(list((tmp_path / "time").glob("agent_*_steps.zip"))) == 16
    never = AtomicCheckpointCallback(0, tmp_path / "never", save_minutes=0)
    model.learn(16, callback=never)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-labeled-anomalous-per-type", "1000"], "--n-labeled-anomalous-per-type 1000: dataset synthetic"),
        (["--n-labeled-normal", "1000"], "--n-labeled-normal 1000: dataset synthetic"),
        (["--checkpoint-minutes", "-1"], "--checkpoint-minutes: must be a number >= 0"),
    ],
)
def test_a_setting_that_cannot_take_effect_is_an_error_naming_it(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_an_error_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "taken"
    file.write_text("a user's file")
    assert main(["--run-dir", str(file), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"error: --run-dir {file}: is a file, not a folder\n"
    assert file.read_text() == "a user's file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_cuda_device_is_an_error_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda", "--run-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda: no CUDA device is available")


def test_data_with_too_few_images_is_an_error_naming_the_data_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "category"
    write_mvtec_folder(load_dataset("synthetic", image_size=32, n_train=4, n_test_good=3, n_test_per_defect=1), folder)
    defect_folders = sorted(path for path in (folder / "test").iterdir() if path.name != "good")
    for extra in defect_folders[1:]:  # one defect folder, of one image, is left
        for path in [*extra.iterdir(), *(folder / "ground_truth" / extra.name).iterdir()]:
            path.unlink()
        extra.rmdir()
        (folder / "ground_truth" / extra.name).rmdir()
    result = run_train("--dataset", f"mvtec:{folder}", *TINY, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset mvtec:{folder}: no defect type has two"), lines


def test_a_run_says_where_it_writes_how_far_it_trains_and_what_it_wrote(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(*PPO_TINY, *TINY, "--timesteps", "50", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "training runs from step 0 to 60, 10 past --timesteps 50" in result.stderr
    assert PPO.load(run_dir / "agent.zip", device="cpu").num_timesteps == 60
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any(tag.startswith("train/") for tag in tags)
    for tag in tags:  # each scalar once per step
        repeated = [
            step for step, count in collections.Counter(e.step for e in events.Scalars(tag)).items() if count > 1
        ]
        assert repeated == [], f"{tag} logged more than once at steps {repeated}"
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"run directory: {run_dir}", f"TensorBoard:   tensorboard --logdir {run_dir}"]
    assert "evaluation 1/2: ppo" in result.stderr and "evaluation 2/2: uniform" in result.stderr
    assert "− uniform" in result.stdout and "predictor/pixel_f1_max" in result.stdout
    assert f"wrote: {run_dir / 'metrics.json'}" in result.stdout
    assert agent_profile_files(run_dir) == [run_dir / "profiles" / "agent" / "episode_00000.npz"]


def test_the_uniform_agent_is_evaluated_once_and_shown_in_one_column(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train("--agent", "uniform", "--timesteps", "20", *TINY, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "evaluation 1/1: uniform" in result.stderr and "2/2" not in result.stderr
    assert "− uniform" not in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["agent"] == metrics["uniform"]
    assert not (run_dir / "profiles" / "agent").exists()
    # What the benchmarks that refit the classifier read: the agent's profiles, wherever they are.
    assert agent_profile_files(run_dir) == [run_dir / "profiles" / "uniform" / "episode_00000.npz"]


def test_without_the_uniform_evaluation_the_agent_s_results_are_the_same(tmp_path: Path) -> None:
    plugin = ["--agent", "test_train:ConstantSampler", "--timesteps", "0", *TINY]
    alone, beside = tmp_path / "alone", tmp_path / "beside"
    result = run_train(*plugin, "--no-eval-uniform", "--run-dir", str(alone))
    assert result.returncode == 0, result.stderr
    assert "evaluation 1/1: test_train:ConstantSampler" in result.stderr and "uniform" not in result.stderr
    assert "− uniform" not in result.stdout and "predictor/pixel_f1_max" in result.stdout
    assert not (alone / "profiles" / "uniform").exists()
    assert run_train(*plugin, "--run-dir", str(beside)).returncode == 0
    metrics = json.loads((alone / "metrics.json").read_text())
    assert set(metrics) == {"agent"}
    assert metrics["agent"] == json.loads((beside / "metrics.json").read_text())["agent"]


@pytest.mark.parametrize(("status", "finalized"), [(130, False), (0, True), (2, True)])
def test_an_interrupted_command_exits_with_its_output_flushed_and_without_interpreter_shutdown(
    status: int, finalized: bool
) -> None:
    # After Ctrl-C the process ends at once: atexit and finalizers (where torch's can hang) do not run,
    # and what was printed, unflushed, still arrives. Other statuses exit normally.
    code = (
        "import atexit, sys\n"
        "from nbs_gym.cli import exit_process\n"
        "atexit.register(lambda: print('finalized', flush=True))\n"
        "print('saved', end='')\n"
        "print('interrupted', end='', file=sys.stderr)\n"
        f"exit_process({status})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == status
    assert result.stdout == ("savedfinalized\n" if finalized else "saved")
    assert result.stderr == "interrupted"


def test_the_console_scripts_run_each_command_s_main() -> None:
    scripts = [
        point for point in importlib.metadata.entry_points(group="console_scripts") if point.module == "nbs_gym.cli"
    ]
    assert sorted(point.name for point in scripts) == [
        f"nbs-gym-{c}" for c in ("classify", "compare", "study", "train", "tune")
    ]
    for point in scripts:
        name, script = point.name, point.load()
        command = name.removeprefix("nbs-gym-")
        assert script.__doc__.startswith(f":func:`nbs_gym.{command}.main`")
        with pytest.raises(SystemExit) as exit_request:  # --help exits 0 through exit_process
            with unittest.mock.patch.object(sys, "argv", [name, "--help"]):
                script()
        assert exit_request.value.code == 0


def test_a_stop_request_turns_the_first_ctrl_c_into_a_flag_and_the_second_into_an_interrupt(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopRequest("stopping soon") as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert capfd.readouterr().err == "\nstopping soon (Ctrl-C again stops at once)\n"
    with StopRequest("stopping soon") as stop:
        pass  # no Ctrl-C: nothing requested, the handler put back
    assert not stop.requested and signal.getsignal(signal.SIGINT) is before


def test_a_stop_request_changes_nothing_off_the_main_thread_or_where_ctrl_c_is_ignored() -> None:
    handlers: list[object] = []

    def on_a_thread() -> None:
        with StopRequest("never shown"):
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=on_a_thread)
    thread.start()
    thread.join()
    assert handlers == [signal.getsignal(signal.SIGINT)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest("never shown") as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # ignored, as before
        assert not stop.requested
    finally:
        signal.signal(signal.SIGINT, previous)
