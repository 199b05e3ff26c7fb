"""Tests of ``python -m nbs_gym.compare``: a tiny in-process comparison, its tables, resume, --collect."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import shutil
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nbs_gym.compare import main
from nbs_gym.reporting import (
    COLUMNS,
    CURVE_SMOOTHING,
    RATIO_COLUMNS,
    FinishedRun,
    collect_runs,
    mean_ci,
    smoothed_curve,
    summarize,
    write_results,
)

# Every test here trains or runs commands end to end: the fast tier (-m "not slow") leaves them out.
pytestmark = pytest.mark.slow

AGENTS = ["uniform", "random", "ppo"]
SEEDS = ["0", "1"]
COMMAND = [
    "--agents", *AGENTS, "--seeds", *SEEDS, "--timesteps", "40", "--n-envs", "1",
    "--env-kwargs", "episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8",
    "--classifier-kwargs", "kind=per_pixel",
    # Plain KEY=VALUE reaches the RL agents only: uniform and random would reject n_steps.
    "--hyperparams", "n_steps=20", "batch_size=10",
    "--eval-freq", "20",  # the learned agent's classifier curve; the fixed rules do not train
    "--device", "cpu", "--no-progress",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("results.md", "results.csv", "results.json", "learning_curves.png", "metrics.png")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny networks gain nothing from intra-op threads; on a shared machine they oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    out = tmp_path_factory.mktemp("compare") / "out"
    assert main([*COMMAND, "--out", str(out)]) == 0
    return out


def read_outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def metrics_mtimes(out: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*/metrics.json")}


def test_every_agent_and_column_has_finite_values(comparison: Path) -> None:
    report = json.loads((comparison / "results.json").read_text())
    assert list(report["agents"]) == ["uniform", "ppo", "random"]  # the reference first, then by name
    for agent, row in report["agents"].items():
        assert row["seeds"] == [0, 1]
        assert set(row["columns"]) == set(COLUMNS)
        for interval in row["columns"].values():
            assert interval["n"] == 2
            assert interval["ci_low"] <= interval["mean"] <= interval["ci_high"]
            assert all(math.isfinite(interval[key]) for key in ("mean", "ci_low", "ci_high"))
        ratios = row["ratio_to_uniform"]
        assert set(ratios) == (set() if agent == "uniform" else set(RATIO_COLUMNS))
        assert all(0.0 < ratio["mean"] < 10.0 for ratio in ratios.values())
    assert len(report["runs"]) == len(AGENTS) * len(SEEDS)


def test_markdown_csv_and_figures_are_written(comparison: Path) -> None:
    markdown = (comparison / "results.md").read_text()
    for name in (*COLUMNS, *AGENTS, "Ratio to `uniform`", "±"):
        assert name in markdown, name
    with (comparison / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["agent"] for row in rows] == ["uniform", "ppo", "random"]
    for row in rows:
        for column in COLUMNS:
            low, mean, high = (float(row[f"{column}_{key}"]) for key in ("ci_low", "mean", "ci_high"))
            assert low <= mean <= high
    assert rows[0]["predictor/pixel_f1_max_ratio_to_uniform_mean"] == ""  # uniform has no ratio to itself
    assert float(rows[1]["predictor/pixel_f1_max_ratio_to_uniform_mean"]) > 0
    for name in ("learning_curves.png", "metrics.png"):
        image = imread(comparison / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
        assert image[..., :3].std() > 0.05  # something is drawn
    assert not list(comparison.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_runs_hold_what_the_comparison_asked_for(comparison: Path) -> None:
    runs = collect_runs(comparison / "runs")
    assert sorted((run.agent, run.seed) for run in runs) == sorted((a, int(s)) for a in AGENTS for s in SEEDS)
    for run in runs:
        config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
        assert config["timesteps"] == 40 and config["env_kwargs"]["episode_length"] == 20
        assert config["hyperparams"] == ({"n_steps": 20, "batch_size": 10} if run.agent == "ppo" else {})
        # Only the RL agent trains, so only it has a learning curve.
        if run.agent == "ppo":
            assert run.curve is not None and run.curve[0][-1] == 40
            assert run.classifier_curve is not None and list(run.classifier_curve[0]) == [20, 40]
            assert config["eval_freq"] == 20
        else:
            assert run.curve is None and run.classifier_curve is None and config["eval_freq"] == 0
        # uniform's own runs are the reference: no other run evaluates uniform again.
        assert config["eval_uniform"] == (run.agent == "uniform")
        assert (run.run_dir / "profiles" / "uniform").exists() == (run.agent == "uniform")


def test_collect_reproduces_the_tables_without_running(comparison: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(comparison, out)
    before, mtimes = read_outputs(out), metrics_mtimes(out)
    for name in OUTPUTS:
        (out / name).unlink()
    assert main(["--out", str(out), "--collect"]) == 0
    after = read_outputs(out)
    for name in ("results.md", "results.csv", "results.json"):
        assert after[name] == before[name], name
    assert metrics_mtimes(out) == mtimes


def test_collect_selects_agents_and_seeds(comparison: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(comparison, out)
    assert main(["--out", str(out), "--collect", "--agents", "ppo", "random", "--seeds", "1"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert list(report["agents"]) == ["ppo", "random"]
    assert report["agents"]["ppo"]["columns"]["final_separation"]["ci_low"] is None  # one seed: no interval
    assert "No ratios: `uniform` is not among the agents." in (out / "results.md").read_text()


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(comparison: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(comparison, out)
    before, mtimes = read_outputs(out), metrics_mtimes(out)
    # A run interrupted after training, before evaluation: its agent is saved, metrics.json is not.
    (out / "runs" / "ppo__1" / "metrics.json").unlink()
    # One interrupted before anything was saved to continue from: it starts again.
    for name in ("metrics.json", "agent.json"):
        (out / "runs" / "uniform__0" / name).unlink()
    assert main([*COMMAND, "--out", str(out)]) == 0
    after = metrics_mtimes(out)
    for remade in ("ppo__1", "uniform__0"):
        assert after.pop(remade) > mtimes.pop(remade)
    assert after == mtimes  # the finished runs were not touched
    # Training and evaluation are deterministic, so the remade runs reproduce the table.
    assert read_outputs(out)["results.csv"] == before["results.csv"]


def test_a_finished_run_with_other_settings_is_an_error(
    comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(comparison, out)
    command = [*COMMAND, "--out", str(out)]
    command[command.index("--timesteps") + 1] = "80"
    assert main(command) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "made with timesteps=40, this comparison asks for 80" in error[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agents", "nope"], "unknown agent 'nope'"),
        (["--agents", "uniform", "uniform"], "--agents: uniform given twice"),
        (["--seeds", "-1"], "--seeds: must be integers >= 0"),
        (["--agents", "uniform", "--hyperparams", "ppo.n_steps=5"], "'ppo' is not one of --agents"),
        (["--agents", "ppo", "--hyperparams", "n_steps"], "expected [AGENT.]KEY=VALUE"),
        (["--agents", "ppo", "--env-kwargs", "novalue"], "expected KEY=VALUE"),
        (["--collect", "--timesteps", "5"], "--timesteps: has no effect with --collect"),
        (["--collect"], "no such folder"),
        (["--agents", "uniform", "ppo", "--hyperparams", "ppo.bogus_key=1"], "--hyperparams bogus_key: agent 'ppo'"),
        (["--agents", "uniform", "--env-kwargs", "episode_length=long"], "episode_length: expected an integer"),
        (["--agents", "uniform", "--classifier-kwargs", "nope=1"], "--classifier-kwargs"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out" / "runs").exists()  # validated before anything ran


def test_missing_out_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--collect"]) == 2
    assert "--out" in capsys.readouterr().err


def test_mean_ci_is_the_student_t_interval() -> None:
    # Hand case: mean 2, s = sqrt(2), standard error 1, t(0.975, 1 dof) = 12.7062.
    interval = mean_ci([1.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 2
    assert interval.half_width == pytest.approx(12.7062047, rel=1e-6)
    values = [0.61, 0.72, 0.55, 0.68, 0.70]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    interval = mean_ci(values)
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
    assert mean_ci(values, confidence=0.9).half_width < interval.half_width


def test_mean_ci_degenerate_cases() -> None:
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.half_width)
    equal = mean_ci([0.25, 0.25, 0.25])
    assert equal.low == equal.high == 0.25
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_curve_smoothing_spans_the_same_episodes_with_one_env_or_several() -> None:
    episodes = np.random.default_rng(0).random(40)  # one value per finished episode of 100 env steps
    one_env = (np.arange(1, 41) * 100.0, episodes)  # one point per episode
    two_envs = (np.arange(1, 21) * 200.0, episodes.reshape(20, 2).mean(axis=1))  # two episodes per point
    steps, values = smoothed_curve(*one_env, episode_steps=100)
    steps_2, values_2 = smoothed_curve(*two_envs, episode_steps=100)
    assert steps[0] == steps_2[0] == CURVE_SMOOTHING * 100  # shown once a whole window lies past step 0
    assert values[-1] == pytest.approx(episodes[-CURVE_SMOOTHING:].mean())
    np.testing.assert_allclose(values_2, values[::2])  # the same episodes' mean at every shared step
    # Counting points as episodes, the two-env curve would average twice as many episodes.
    _, by_points = smoothed_curve(*two_envs, episode_steps=None)
    assert by_points[-1] == pytest.approx(episodes[-2 * CURVE_SMOOTHING :].mean())
    # A curve shorter than a window is averaged whole, into one point.
    short_steps, short = smoothed_curve(one_env[0][:3], episodes[:3], episode_steps=100)
    assert list(short_steps) == [300.0] and short[0] == pytest.approx(episodes[:3].mean())


def test_a_runs_episode_steps_come_from_its_task_and_settings() -> None:
    config = {"env_id": "nbs_gym/NeuralBatchSampling-v1", "env_kwargs": {"episode_length": 60, "decision_interval": 3}}
    assert dataclasses.replace(fake_run("ppo", 0, 0.5), config=config).episode_steps == 20
    assert fake_run("ppo", 0, 0.5).episode_steps is None  # a config without env_id


def fake_run(agent: str, seed: int, value: float) -> FinishedRun:
    return FinishedRun(
        agent, seed, Path(f"runs/{agent}__{seed}"), {"dataset": "synthetic"}, dict.fromkeys(COLUMNS, value), None
    )


def test_ratios_are_paired_by_seed() -> None:
    runs = [fake_run("uniform", 0, 0.2), fake_run("uniform", 1, 0.8), fake_run("ppo", 0, 0.4), fake_run("ppo", 1, 0.8)]
    runs.append(fake_run("ppo", 2, 0.9))  # no uniform run with seed 2: not paired
    ppo = next(row for row in summarize(runs) if row.agent == "ppo")
    ratio = ppo.ratios["predictor/pixel_f1_max"]
    # Per-seed ratios 2.0 and 1.0, not the ratio of the means (0.7 / 0.5 = 1.4).
    assert ratio.n == 2 and ratio.mean == pytest.approx(1.5)
    assert ratio.half_width == pytest.approx(stats.t.ppf(0.975, 1) * 0.5)
    assert ppo.columns["final_separation"].n == 3


def test_a_reference_of_zero_leaves_that_seed_out_of_the_ratio() -> None:
    runs = [fake_run("uniform", 0, 0.0), fake_run("uniform", 1, 0.5), fake_run("ppo", 0, 0.3), fake_run("ppo", 1, 0.6)]
    ratio = next(row for row in summarize(runs) if row.agent == "ppo").ratios["predictor/pixel_f1_max"]
    assert ratio.n == 1 and ratio.mean == pytest.approx(1.2)
    only_zero = [fake_run("uniform", 0, 0.0), fake_run("ppo", 0, 0.3)]
    ratio = next(row for row in summarize(only_zero) if row.agent == "ppo").ratios["predictor/pixel_f1_max"]
    assert ratio.n == 0 and math.isnan(ratio.mean)


def test_a_damaged_run_config_is_one_error_line(
    comparison: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(comparison, out)
    damaged = next((out / "runs").iterdir()) / "config.yaml"
    damaged.write_text("agent: [\n")
    assert main([*COMMAND, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{damaged}: not valid YAML" in error[0]


def test_the_classifier_curve_is_tabulated_per_evaluation_step_with_its_ratio_to_uniform(tmp_path: Path) -> None:
    runs = [fake_run("uniform", 0, 0.5), fake_run("uniform", 1, 0.4), fake_run("ppo", 0, 0.6), fake_run("ppo", 1, 0.6)]
    steps = np.array([2000.0, 4000.0])
    runs[2] = dataclasses.replace(runs[2], classifier_curve=(steps, np.array([0.5, 0.6])))
    runs[3] = dataclasses.replace(runs[3], classifier_curve=(steps[:1], np.array([0.6])))  # stopped after one
    uniform, ppo = summarize(runs)
    assert uniform.classifier_curve == ()
    first, second = ppo.classifier_curve
    assert (first.step, first.f1_max.n, second.step, second.f1_max.n) == (2000, 2, 4000, 1)
    assert first.f1_max.mean == pytest.approx(0.55)
    assert first.ratio is not None and first.ratio.mean == pytest.approx((0.5 / 0.5 + 0.6 / 0.4) / 2)
    assert second.ratio is not None and second.ratio.mean == pytest.approx(1.2) and second.ratio.n == 1
    write_results([uniform, ppo], runs, tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "| ppo | 2,000 | 2 | 0.5500 ± " in markdown and "| ppo | 4,000 | 1 | 0.6000 ± – | 1.200 [–] |" in markdown
    curve = json.loads((tmp_path / "results.json").read_text())["agents"]["ppo"]["classifier_curve"]
    assert [point["step"] for point in curve] == [2000, 4000] and curve[1]["ratio_to_uniform"]["mean"] == 1.2


def test_one_seed_shows_a_dash_and_a_note(tmp_path: Path) -> None:
    runs = [fake_run("uniform", 0, 0.5), fake_run("random", 0, 0.6)]
    write_results(summarize(runs), runs, tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "| uniform | 1 | 0.5000 ± – |" in markdown and "–: one seed, no interval" in markdown
    assert "| random | 1 | 1.200 [–] | 1.200 [–] |" in markdown
    with (tmp_path / "results.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["final_separation_mean"] == "0.5" and row["final_separation_ci_low"] == ""
    assert json.loads((tmp_path / "results.json").read_text())["agents"]["uniform"]["columns"]["final_separation"] == {
        "mean": 0.5,
        "ci_low": None,
        "ci_high": None,
        "n": 1,
    }


def test_two_runs_of_one_agent_and_seed_are_an_error() -> None:
    with pytest.raises(ValueError, match="two runs of ppo with seed 0"):
        summarize([fake_run("ppo", 0, 0.1), fake_run("ppo", 0, 0.2)])


def test_normalised_scores_are_averaged_per_agent_and_reported_in_every_table() -> None:
    from nbs_gym.reporting import csv_table, markdown_tables
    from nbs_gym.scores import REFERENCE_METRICS

    def scored(agent: str, seed: int, score: float) -> FinishedRun:
        run = fake_run(agent, seed, 0.5)
        return FinishedRun(*dataclasses.astuple(run)[:-1], normalized=dict.fromkeys(REFERENCE_METRICS, score))

    runs = [scored("uniform", 0, -0.1), scored("uniform", 1, 0.1), scored("ppo", 0, 0.4), scored("ppo", 1, 0.8)]
    runs.append(fake_run("random", 0, 0.5))  # a run without normalised scores: its agent gets none
    rows = {row.agent: row for row in summarize(runs)}
    assert rows["ppo"].normalized[REFERENCE_METRICS[0]].mean == pytest.approx(0.6)
    assert rows["uniform"].normalized[REFERENCE_METRICS[0]].mean == pytest.approx(0.0)
    assert rows["random"].normalized == {}
    tables = markdown_tables(list(rows.values()))
    assert "Normalised score" in tables and "0.600 [" in tables
    header = csv_table(list(rows.values())).splitlines()[0]
    assert f"{REFERENCE_METRICS[0]}_normalized_mean" in header


def load_benchmark(name: str) -> types.ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rescore_with_a_run_s_own_classifier_gives_its_scores_and_a_comparison_folder(
    comparison: Path, tmp_path: Path
) -> None:
    rescore = load_benchmark("rescore")
    out = tmp_path / "rescored"
    assert rescore.main([str(comparison), "--out", str(out), "--classifier-kwargs", "kind=per_pixel"]) == 0
    names = sorted(path.name for path in (comparison / "runs").iterdir())
    assert sorted(path.name for path in (out / "runs").iterdir()) == names
    for name in names:  # the runs' own classifier settings and seeds give their numbers again
        before = json.loads((comparison / "runs" / name / "metrics.json").read_text())["agent"]["predictor"]
        after = json.loads((out / "runs" / name / "metrics.json").read_text())["agent"]["predictor"]
        assert after["pixel_f1_max"] == pytest.approx(before["pixel_f1_max"], rel=1e-6)
        assert after["pixel_aupro"] == pytest.approx(before["pixel_aupro"], rel=1e-6)
    assert main(["--out", str(out), "--collect"]) == 0  # the re-scored runs are a comparison folder
    assert {row.agent for row in summarize(collect_runs(out / "runs"))} == set(AGENTS)
    assert yaml.safe_load((out / "runs" / names[0] / "config.yaml").read_text())["classifier_kwargs"] == {
        "kind": "per_pixel"
    }


def test_compositions_are_the_mean_of_each_learned_run_s_last_logged_shares(
    comparison: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compositions = load_benchmark("compositions")
    runs = comparison / "runs"
    assert compositions.main([str(runs), "--last", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    learned = sorted(path.name for path in runs.iterdir() if path.name.startswith("ppo"))
    assert [line.split()[0] for line in lines[1:]] == learned  # the fixed rules log no compositions
    for name in learned:
        events = EventAccumulator(str(runs / name), size_guidance={"scalars": 0})
        events.Reload()
        shares = compositions.last_composition(runs / name, 1)
        assert shares is not None and shares.sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over strata
        assert shares[0] == pytest.approx(events.Scalars("nbs/composition/group_0")[-1].value)
        assert int(next(line for line in lines if line.startswith(name)).split()[-1]) == int(np.argmax(shares))
    with pytest.raises(SystemExit) as usage:
        compositions.main([str(runs), "--last", "0"])
    assert usage.value.code == 2 and "--last: must be >= 1, got 0" in capsys.readouterr().err


def test_learned_shares_replays_a_run_in_the_action_mode_its_agent_chose(
    comparison: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The comparison's ppo ran on the plain v1 id, in the quantile mode its registry entry picks there.
    learned_shares = load_benchmark("learned_shares")
    runs = comparison / "runs"
    assert learned_shares.main([str(runs), "--uniform", str(runs)]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert sorted(row[0].strip() for row in rows) == [f"ppo__{seed}" for seed in SEEDS]
    for row in rows:
        start, middle, end, noise_sd, f1_ratio, _ = (float(cell) for cell in row[1:])
        assert all(0.0 <= share <= 1.0 for share in (start, middle, end)) and noise_sd > 0
        run, uniform = (json.loads((runs / name / "metrics.json").read_text())["agent"]["predictor"]
                        for name in (row[0].strip(), f"uniform__{row[0].strip().split('__')[1]}"))  # fmt: skip
        assert f1_ratio == pytest.approx(run["pixel_f1_max"] / uniform["pixel_f1_max"], abs=5e-4)
