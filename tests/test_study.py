"""The results study's pipeline at a tiny scale: every sampler, two seeds, a synthetic and an MVTec-layout folder."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nbs_gym.data import load_dataset
from nbs_gym.reporting import COLUMNS, RATIO_COLUMNS
from nbs_gym.study import AGENTS, MVTEC_FOLDER_SEED, main, normalized_within

# Every test here trains or runs commands end to end: the fast tier (-m "not slow") leaves them out.
pytestmark = pytest.mark.slow

DATASETS = ["grid", "mvtec"]
# Every sampler on the first dataset; on the second the three that the normalised scores need, to keep
# the test short.
MVTEC_AGENTS = ["uniform", "ppo", "oracle"]
TINY = [
    "--seeds", "0", "1", "--timesteps", "20", "--n-envs", "1",
    "--env-kwargs", "episode_length=20", "profile_length=4", "image_size=32", "patch_size=8", "batch_size=8",
    "--hyperparams", "ppo.n_steps=20", "ppo.batch_size=10",
    "--classifier-kwargs", "kind=per_pixel",
    "--device", "cpu", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study") / "out"
    try:
        assert main(["--out", str(out), "--datasets", "grid", *TINY]) == 0
        assert main(["--out", str(out), "--datasets", "mvtec", "--agents", *MVTEC_AGENTS, *TINY]) == 0
        assert main(["--out", str(out), "--collect", "--seeds", "0", "1"]) == 0  # one report of both
        yield out
    finally:
        torch.set_num_threads(threads)


def test_the_table_has_every_sampler_and_column_with_finite_values(study: Path) -> None:
    report = json.loads((study / "study.json").read_text())
    assert list(report["datasets"]) == DATASETS
    for name in DATASETS:
        agents = report["datasets"][name]["agents"]
        assert sorted(agents) == sorted(AGENTS if name == "grid" else MVTEC_AGENTS)
        for agent, row in agents.items():
            assert row["seeds"] == [0, 1]
            for column in COLUMNS:
                interval = row["columns"][column]
                assert all(math.isfinite(interval[key]) for key in ("mean", "ci_low", "ci_high")), (name, agent, column)
            if agent != "uniform":
                for column in RATIO_COLUMNS:
                    assert math.isfinite(row["ratio_to_uniform"][column]["mean"]), (name, agent, column)
        assert (study / name / "learning_curves.png").stat().st_size > 0


def test_the_report_lists_every_dataset_and_sampler(study: Path) -> None:
    text = (study / "study.md").read_text()
    for name in DATASETS:
        assert f"## {name}" in text
    for agent in AGENTS:
        assert f"| {agent} |" in text
    # Both datasets ran uniform and the oracle: each has its own normalised scores, every agent a row.
    assert "Normalised score on each dataset" in text and "| grid: pixel_f1_max | grid: pixel_aupro |" in text
    normalized = json.loads((study / "study.json").read_text())["normalized"]
    assert set(normalized["grid"]) == set(AGENTS) and set(normalized["mvtec"]) == set(MVTEC_AGENTS)


def test_the_generated_folder_is_read_through_the_mvtec_reader(study: Path) -> None:
    folder = study / "mvtec_folder" / "grid"
    dataset = load_dataset(f"mvtec:{folder}", image_size=32)
    assert dataset.spec == f"mvtec:{folder.resolve()}"
    assert (folder / "train" / "good").is_dir() and any((folder / "ground_truth").iterdir())
    config = json.loads((study / "mvtec" / "results.json").read_text())["settings"]
    assert config["dataset"] == [dataset.spec]
    assert MVTEC_FOLDER_SEED != 0  # another draw than the synthetic grid row's


def test_collect_rebuilds_the_report_without_running(study: Path) -> None:
    before = (study / "study.md").read_text()
    (study / "study.md").unlink()
    assert main(["--out", str(study), "--datasets", *DATASETS, "--collect", "--seeds", "0", "1"]) == 0
    assert (study / "study.md").read_text() == before


def test_collect_without_datasets_reports_those_that_have_runs(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    shutil.copytree(study, out)
    assert main(["--out", str(out), "--collect", "--seeds", "0", "1"]) == 0
    assert (out / "study.md").read_text() == (study / "study.md").read_text()
    assert main(["--out", str(tmp_path / "empty"), "--collect"]) == 2
    assert "no dataset under" in capsys.readouterr().err


def test_bad_mvtec_path_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--mvtec", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --mvtec: {tmp_path / 'missing'} is not a folder"]


def test_the_normalised_score_is_against_the_datasets_own_uniform_and_oracle() -> None:
    f1 = {"uniform": [0.50, 0.60, 0.55], "oracle": [0.70, 0.80, 0.75], "half": [0.60, 0.70, 0.65], "one": [0.9]}
    runs = [
        {"agent": agent, "seed": seed, "values": {"predictor/pixel_f1_max": value, "predictor/pixel_aupro": 0.9}}
        for agent, values in f1.items()
        for seed, value in enumerate(values)
    ]
    scores = normalized_within({"runs": runs}, resamples=200)
    assert set(scores) == {"uniform", "oracle", "half"}  # "one" has a single paired seed
    half = scores["half"]["predictor/pixel_f1_max"]
    assert half["mean"] == pytest.approx(0.5) and half["n"] == 3
    assert half["ci_low"] <= half["mean"] <= half["ci_high"]
    assert scores["oracle"]["predictor/pixel_f1_max"]["mean"] == pytest.approx(1.0)
    assert scores["uniform"]["predictor/pixel_f1_max"]["mean"] == pytest.approx(0.0)
    # Equal AUPRO everywhere: no gap to normalise by, no score.
    assert scores["half"]["predictor/pixel_aupro"]["mean"] is None
    assert normalized_within({"runs": [run for run in runs if run["agent"] != "oracle"]}) == {}
