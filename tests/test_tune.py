"""``python -m nbs_gym.tune``: a tiny search finishes, resumes after being stopped, and writes a config train reads."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_compare import load_benchmark
from test_train import default_sigint

from nbs_gym import train, tune
from nbs_gym.tune import TuneReport, check_space, default_space_path, load_space

pytest.importorskip("ray.tune")

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--timesteps", "16", "--checkpoint-freq", "8", "--grace-period", "8", "--n-envs", "1",
    "--env-kwargs", "episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8",
    "--hyperparams", "batch_size=4", "--classifier-kwargs", "max_epochs=3", "--device", "cpu",
]  # fmt: skip
# Episodes of 20 updates of 5 per env step: 4 env steps; 16 steps are 4 episodes. A trial reports from
# its first update on, at step 4 or 8, so ASHA decides at its 8-step rung before the last step.
SPACE = "learning_rate: {loguniform: [1.0e-4, 1.0e-3]}\nn_steps: {choice: [2, 4]}\n"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tune_command(out: Path, space: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nbs_gym.tune", "--out", str(out), "--space", str(space), *TINY, *extra]


@pytest.mark.slow
def test_a_search_stopped_after_its_first_trial_resumes_and_writes_a_config_train_reads(tmp_path: Path) -> None:
    space = tmp_path / "space.yml"
    space.write_text(SPACE)
    out = tmp_path / "search"
    command = tune_command(out, space, "--trials", "3", "--max-concurrent", "1", "--scheduler", "fifo")
    environment = {**os.environ, **ONE_THREAD}
    search = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("trials/*/metrics.json")) and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # polls for the first finished trial; the signal waits on it, not on a fixed time
    search.send_signal(signal.SIGINT)
    output = search.communicate(timeout=300)[0].decode()
    assert search.returncode == 130, output
    assert "run the same command again to resume" in output
    first = {path.parent.name: path.stat().st_mtime_ns for path in out.glob("trials/*/metrics.json")}
    assert len(first) == 1

    resumed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming the search" in resumed.stderr
    finished = {path.parent.name: path.stat().st_mtime_ns for path in out.glob("trials/*/metrics.json")}
    assert len(finished) == 3 and all(finished[trial] == mtime for trial, mtime in first.items())  # kept, not redone
    table = (out / "trials.md").read_text()
    assert table.count("| scored |") == 3
    # The same folder with other settings is not the same search.
    other = subprocess.run(
        [*command, "--metric", "pixel_aupro"], cwd=REPO, env=environment, capture_output=True, text=True
    )
    assert other.returncode == 2 and other.stderr.strip().endswith(
        "the search there was started with other metric settings (" + str(out / "search.json") + "); give them "
        "again to resume it, or use another --out"
    ), other.stderr

    best = yaml.safe_load((out / "best.yml").read_text())
    assert set(best["hyperparams"]) == {"batch_size", "learning_rate", "n_steps"} and best["seed"] == 0
    with (out / "trials.csv").open() as file:
        rows = list(csv.DictReader(file))
    top = max(rows, key=lambda row: float(row["score"]))  # the best score, wherever Tune listed that trial
    assert best["hyperparams"]["learning_rate"] == pytest.approx(float(top["config/learning_rate"]), rel=1e-3)
    run_dir = tmp_path / "best_run"
    args = train.parse_args(["--config", str(out / "best.yml"), "--run-dir", str(run_dir), "--no-progress"])
    assert args.hyperparams == best["hyperparams"] and args.env_kwargs == best["env_kwargs"]
    assert train.main(["--config", str(out / "best.yml"), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_under_asha_a_trial_is_scored_exactly_when_it_trained_to_the_end(tmp_path: Path) -> None:
    space = tmp_path / "space.yml"
    space.write_text(SPACE)
    out = tmp_path / "search"
    result = subprocess.run(
        tune_command(out, space, "--trials", "3", "--max-concurrent", "1"),
        cwd=REPO,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with (out / "trials.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3 and rows[0]["status"] == "scored"  # best first
    for row in rows:
        scored = row["status"] == "scored"
        assert row["status"] in ("scored", "stopped")
        assert (int(row["timesteps"]) == 16) == scored  # ASHA stops a trailing trial at its 8-step rung
        assert (out / "trials" / row["trial"] / "metrics.json").is_file() == scored
        assert math.isfinite(float(row["score"])) == scored


def test_the_reward_is_reported_from_the_agents_first_update_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.tune

    reported: list[dict[str, Any]] = []
    monkeypatch.setattr(ray.tune, "report", reported.append)
    callback = TuneReport()
    # SB3's count of gradient updates is the private _n_updates, which TuneReport reads
    episodes = [{"r": 0.5}, {"r": 0.25}]
    callback.model = types.SimpleNamespace(**{"_n_updates": 0, "num_timesteps": 800, "ep_info_buffer": episodes})
    callback.on_rollout_end()  # the initial policy's episodes: the same for every trial of one seed
    assert reported == []
    callback.model = types.SimpleNamespace(**{"_n_updates": 10, "num_timesteps": 1600, "ep_info_buffer": episodes})
    callback.on_rollout_end()
    assert len(reported) == 1 and reported[0]["timesteps"] == 1600 and reported[0]["reward"] == 0.375
    assert math.isnan(reported[0]["score"])


def test_a_space_may_search_observation_and_reward_normalisation(tmp_path: Path) -> None:
    space = tmp_path / "space.yml"
    space.write_text("normalize: {choice: [false, true]}\n")
    searched = load_space(space)
    assert searched.hyperparams == {"normalize": ("choice", [False, True])} and not searched.env
    check_space(searched, train.parse_args(["--agent", "ppo"]))  # an SB3 algorithm's env setting: accepted
    with pytest.raises(ValueError, match="normalize: agent 'uniform' takes no such setting"):
        check_space(searched, train.parse_args(["--agent", "uniform"]))  # a built-in sampler has no such keyword


def test_the_shipped_spaces_name_settings_their_agents_take() -> None:
    for agent in ("ppo", "a2c"):
        path = default_space_path(agent)
        assert path is not None
        space = load_space(path)
        check_space(space, train.parse_args(["--agent", agent]))
        assert space.hyperparams and space.env


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: {loguniform: [1.0e-4, 1.0e-3]}\n", ": lr: agent 'ppo' takes no such setting"),
        ("env.no_such: {choice: [1, 2]}\n", ": env.no_such: the env has no such setting"),
        ("env.decision_interval: {choice: [5, 7]}\n", ": with decision_interval=7: "),
        ("learning_rate: {normal: [0, 1]}\n", "learning_rate: unknown distribution 'normal'"),
        ("learning_rate: {loguniform: [1e-4, 1e-3]}\n", "(YAML reads 1e-5 as text: write 1.0e-5)"),
        ("learning_rate: {loguniform: [0.0, 1.0]}\n", "loguniform needs low > 0"),
        ("n_steps: {randint: [8, 4]}\n", "randint needs low < high"),
        ("[1, 2]\n", "expected a mapping of SETTING"),
        ("normalize: {choice: [false, maybe]}\n", ": with normalize='maybe': --hyperparams normalize: expected true"),
    ],
)
def test_a_bad_search_space_is_one_error_line_and_starts_nothing(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.yml"
    space.write_text(text)
    assert tune.main(["--out", str(tmp_path / "out"), "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --space {space}: ") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--address", "127.0.0.1:9"], "error: --address 127.0.0.1:9: no Ray cluster answers there"),
        (["--classifier-kwargs", "kind=per_pixel"], "needs kind=dilated_cnn with validation_fraction > 0"),
        (["--agent", "uniform"], "--space: no shipped search space for agent 'uniform'"),
        (["--hyperparams", "learning_rate=0.1"], "learning_rate is searched, so --hyperparams cannot fix it"),
        (["--trials", "0"], "--trials: must be >= 1"),
    ],
)
def test_bad_flags_are_one_error_line_and_start_nothing(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune.main(["--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_without_ray_the_search_is_one_error_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    assert tune.main(["--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "error: nbs_gym.tune needs Ray Tune, which is not installed; "
        "pip install -e \".[ray]\" (or pip install 'ray[tune]' optuna)\n"
    )


def test_the_search_check_ranks_scored_trials_by_score_beside_their_test_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check = load_benchmark("search_check")
    # (score on L's held-out images, F1-max on E): the test order is the reverse of the score's
    trials = {"t1": (0.5, 0.60), "t2": (0.7, 0.55), "t3": (0.6, 0.58), "stopped": None}
    for name, values in trials.items():
        run_dir = tmp_path / "trials" / name
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump({"hyperparams": {"learning_rate": 0.001}, "env_kwargs": {}})
        )
        if values is not None:
            agent = {"validation": {"pixel_f1_max": values[0]}, "predictor": {"pixel_f1_max": values[1]}}
            (run_dir / "metrics.json").write_text(json.dumps({"agent": agent}))
    rows = check.scored_trials(tmp_path, "pixel_f1_max")
    assert [row["trial"] for row in rows] == ["t2", "t3", "t1"]  # best score first; the stopped trial left out
    assert check.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| t2 | learning_rate=0.001 | 0.7000 | 0.5500 |" in out
    assert "Spearman correlation of score and test over 3 trials: -1.00" in out
    assert check.main([str(tmp_path / "nowhere")]) == 2
    assert "no trials/ folder" in capsys.readouterr().err


def test_best_yml_holds_the_best_scored_trial_whatever_order_tune_lists_them_in(tmp_path: Path) -> None:
    def result(trial: str, score: float, learning_rate: float) -> types.SimpleNamespace:
        metrics = {"trial_id": trial, "timesteps": 16, "reward": 0.0, "score": score}
        return types.SimpleNamespace(metrics=metrics, config={"learning_rate": learning_rate}, error=None, path=None)

    results = [result("first", 0.40, 1.0e-4), result("best", 0.55, 2.0e-4), result("stopped", math.nan, 3.0e-4)]
    base = train.parse_args(["--agent", "ppo"])
    assert tune.write_outputs(results, base, tmp_path, "pixel_f1_max") == 0
    best = yaml.safe_load((tmp_path / "best.yml").read_text())
    assert best["hyperparams"]["learning_rate"] == 2.0e-4
    assert "(score: predictor pixel_f1_max on L's held-out images, 0.5500)" in (tmp_path / "best.yml").read_text()
