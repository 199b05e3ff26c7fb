"""The Ray backend of ``nbs_gym.compare`` and ``nbs_gym.study``: same runs as in process, faults, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import default_sigint

from nbs_gym import compare, study
from nbs_gym.backends import RayBackend, RunPlan, run_on_worker, unpack_run
from nbs_gym.train import parse_args

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
IMPORTABLE = [REPO / "tests", REPO / "examples"]  # dying_sampler and the bandit it extends
BANDIT = "dying_sampler:DyingBandit"
SETTINGS = [
    "--timesteps", "40",
    "--env-kwargs", "episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8",
    "--classifier-kwargs", "kind=per_pixel", "--device", "cpu", "--no-progress", "--n-envs", "1",
]  # fmt: skip
# Episodes of 20 updates of 5 per env step: 4 env steps per episode.
TINY = ["--seeds", "0", "1", *SETTINGS]
PPO_TINY = ["--hyperparams", "ppo.n_steps=20", "ppo.batch_size=10"]
ONE_SEED = ["--seeds", "0", *SETTINGS, "--checkpoint-freq", "8"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray of 2 CPUs whose workers import the test plug-ins, with one torch thread in this process
    too, as each Ray run of one CPU has (other thread counts round the metrics differently)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sys.path[:0] = [str(folder) for folder in IMPORTABLE]
    path = ":".join(map(str, IMPORTABLE))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield
    finally:
        ray.shutdown()
        del sys.path[: len(IMPORTABLE)]
        torch.set_num_threads(threads)


def metrics(out: Path) -> dict[str, Any]:
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob("runs/*/metrics.json"))}


def partial_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if ".tmp" in path.name]


@pytest.mark.slow
def test_a_grid_on_ray_gives_the_runs_and_tables_of_the_in_process_grid(local_ray: None, tmp_path: Path) -> None:
    grid = ["--agents", "uniform", "ppo", *TINY, *PPO_TINY]
    assert compare.main([*grid, "--out", str(tmp_path / "inprocess")]) == 0
    assert compare.main([*grid, "--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    made = metrics(tmp_path / "ray")
    assert sorted(made) == ["ppo__0", "ppo__1", "uniform__0", "uniform__1"]
    assert made == metrics(tmp_path / "inprocess")
    assert (tmp_path / "ray" / "results.md").read_text() == (tmp_path / "inprocess" / "results.md").read_text()
    assert list((tmp_path / "ray" / "runs").glob(".driver-*")) == []  # the storage marker is gone


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_and_the_run_resumes_from_its_checkpoint(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "died"
    killed = ["--agents", BANDIT, *ONE_SEED, "--hyperparams", f"{BANDIT}.die_at=20", f"{BANDIT}.marker={marker}"]
    assert compare.main([*killed, "--out", str(tmp_path / "out"), "--backend", "ray", "--max-retries", "1"]) == 0
    assert marker.exists()  # the first attempt died at step 20, after checkpoints at 8 and 16 steps
    run_dir = tmp_path / "out" / "runs" / next(path.name for path in (tmp_path / "out" / "runs").iterdir())
    assert f"continued the interrupted run in {run_dir}" in capsys.readouterr().out
    checkpoints = {path.name for path in (run_dir / "checkpoints").iterdir()}
    assert {"agent_8_steps.json", "agent_16_steps.json"} <= checkpoints and "agent_20_steps.json" not in checkpoints
    bandit = json.loads((run_dir / "agent.json").read_text())
    assert bandit["num_timesteps"] == 40 and sum(bandit["counts"]) == 10  # every episode counted once
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"agent"}
    assert partial_files(tmp_path / "out") == []


@pytest.mark.slow
def test_a_worker_killed_before_its_first_checkpoint_gives_the_uninterrupted_result(
    local_ray: None, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    settings = ["--agents", BANDIT, *ONE_SEED]
    killed = [*settings, "--hyperparams", f"{BANDIT}.die_at=4", f"{BANDIT}.marker={marker}"]
    assert compare.main([*killed, "--out", str(tmp_path / "killed"), "--backend", "ray", "--max-retries", "1"]) == 0
    assert marker.exists()
    assert compare.main([*settings, "--out", str(tmp_path / "whole")]) == 0
    assert list(metrics(tmp_path / "killed").values()) == list(metrics(tmp_path / "whole").values())
    assert partial_files(tmp_path / "killed") == []


@pytest.mark.slow
def test_a_run_failing_on_its_settings_is_reported_once_and_the_others_finish(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    grid = ["--agents", "uniform", BANDIT, *TINY, "--hyperparams", f"{BANDIT}.fail_with=no such arm"]
    assert compare.main([*grid, "--out", str(out), "--backend", "ray", "--max-retries", "0"]) == 2
    stderr = capsys.readouterr().err
    for seed in (0, 1):  # each failing run once, with its error; then one line naming them
        assert stderr.count(f"error: {BANDIT} seed {seed}: ValueError: no such arm\n") == 1
    assert stderr.count("ValueError") == 2
    assert stderr.endswith(f"error: 2 run(s) failed, each with its error above ({BANDIT} seed 0, {BANDIT} seed 1); "
                           "the same command again retries them and keeps the finished ones\n")  # fmt: skip
    assert sorted(metrics(out)) == ["uniform__0", "uniform__1"]
    assert "| uniform |" in (out / "results.md").read_text()  # the tables of the runs that finished


@pytest.mark.slow
def test_a_study_on_ray_runs_every_dataset_as_one_grid(local_ray: None, tmp_path: Path) -> None:
    command = ["--datasets", "grid", "stochastic", "--agents", "uniform", "oracle", *TINY, "--backend", "ray"]
    assert study.main(["--out", str(tmp_path), *command]) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert list(report["datasets"]) == ["grid", "stochastic"]
    for name in ("grid", "stochastic"):
        assert sorted(report["datasets"][name]["agents"]) == ["oracle", "uniform"]
        assert len(list((tmp_path / name / "runs").glob("*/metrics.json"))) == 4


@pytest.mark.slow
def test_ctrl_c_cancels_the_runs_in_flight_which_checkpoint_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Runs long enough that on a loaded machine neither ends before both have checkpointed.
    steps = ["--timesteps", "1200", *SETTINGS[2:], "--checkpoint-freq", "20", *PPO_TINY]
    command = [sys.executable, "-m", "nbs_gym.compare", "--agents", "ppo", "--seeds", "0", "1", *steps]
    command += ["--out", str(out), "--backend", "ray"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    grid = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 300
    while (
        len({path.parts[-3] for path in out.glob("runs/*/checkpoints/agent_*_steps.zip")}) < 2 and grid.poll() is None
    ):
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)  # polls for both runs' first checkpoints; the signal waits on them, not on a fixed time
    grid.send_signal(signal.SIGINT)
    output = grid.communicate(timeout=300)[0].decode()
    assert grid.returncode == 130, output
    assert "run the same command again to resume" in output
    assert metrics(out) == {} and partial_files(out) == []
    resumed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("continued the interrupted run") == 2
    assert sorted(metrics(out)) == ["ppo__0", "ppo__1"]


@pytest.mark.slow
def test_a_run_made_where_the_driver_s_disk_is_not_seen_is_returned_and_lands_whole(tmp_path: Path) -> None:
    tiny = ["--agent", "uniform", *SETTINGS]
    shared = tmp_path / "shared" / "uniform__0"
    shared.parent.mkdir()
    (shared.parent / ".driver-x").touch()
    plan = RunPlan("uniform seed 0", shared, parse_args([*tiny, "--run-dir", str(shared)]))
    assert run_on_worker(plan, ".driver-x", str(tmp_path), 1) == (f"trained in {shared}", None)

    returned = tmp_path / "driver" / "uniform__0"  # no marker beside it: the worker cannot see it
    plan = RunPlan("uniform seed 0", returned, parse_args([*tiny, "--run-dir", str(returned)]))
    action, archive = run_on_worker(plan, ".driver-x", str(tmp_path), 1)
    assert action == f"trained in {returned} (on a worker, returned)" and archive is not None
    assert not returned.exists()
    returned.mkdir(parents=True)
    (returned / "config.yaml").write_text("agent: uniform\n")  # an attempt that stopped before a checkpoint
    unpack_run(archive, returned)
    assert (returned / "metrics.json").read_text() == (shared / "metrics.json").read_text()
    files = sorted(str(path.relative_to(shared)) for path in shared.rglob("*") if "events.out" not in path.name)
    assert (
        sorted(str(path.relative_to(returned)) for path in returned.rglob("*") if "events.out" not in path.name)
        == files
    )
    assert [path.name for path in returned.parent.iterdir()] == ["uniform__0"]  # no staging folder left


def test_an_unreachable_address_is_one_error_line_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    command = ["--agents", "uniform", "--seeds", "0", "--out", str(out), "--backend", "ray", "--address", "127.0.0.1:9"]
    assert compare.main(command) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address 127.0.0.1:9: no Ray cluster answers there")
    assert not out.exists()


def test_without_ray_the_ray_backend_is_one_error_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    out = tmp_path / "out"
    assert compare.main(["--agents", "uniform", "--out", str(out), "--backend", "ray"]) == 2
    assert capsys.readouterr().err == (
        "error: --backend ray: Ray is not installed; pip install -e \".[ray]\" (or pip install 'ray[tune]')\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--address", "auto"], "error: --address: only with --backend ray"),
        (["--backend", "ray", "--cpus-per-run", "0"], "error: --cpus-per-run: must be > 0, got 0.0"),
        (["--backend", "ray", "--gpus-per-run", "1.5"], "error: --gpus-per-run: a figure above 1 must be whole"),
        (["--backend", "ray", "--address", "nowhere"], "error: --address nowhere: expected auto, HOST:PORT"),
    ],
)
def test_bad_backend_flags_are_one_error_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert compare.main(["--agents", "uniform", "--out", str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "out").exists()


def test_the_backend_s_resources_are_checked_when_it_is_made() -> None:
    with pytest.raises(ValueError, match="--max-retries: must be an integer >= 0"):
        RayBackend(max_retries=-1)
    assert RayBackend(cpus_per_run=0.5, gpus_per_run=0.25).gpus_per_run == 0.25
