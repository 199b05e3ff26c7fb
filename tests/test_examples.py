"""Every example runs with ``--quick`` in a subprocess and produces what its docstring promises."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Every test here trains or runs commands end to end: the fast tier (-m "not slow") leaves them out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
# Tiny networks gain nothing from intra-op threads, and on a shared machine they oversubscribe the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TABLE_ROW = re.compile(r"^(predictor|final_loss)\s+((?:[01]\.\d{4}\s*){4})$", re.MULTILINE)


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run ``examples/<name>.py --quick ARGS`` in ``cwd``; returns stdout, failing on a non-zero exit."""
    environment = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_scores(output: str) -> dict[str, list[float]]:
    """The rows of ``nbs_gym.classify.format_table`` in an example's output."""
    return {match[1]: [float(value) for value in match[2].split()] for match in TABLE_ROW.finditer(output)}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.stem)
def test_every_example_says_what_it_shows_and_how_long_it_takes(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring and f"python examples/{path.name}" in docstring
    assert "--quick" in docstring and re.search(r"~\d+ (s|min)", docstring)


def test_ppo_vs_a2c(tmp_path: Path) -> None:
    output = run_example("ppo_vs_a2c", "--out", "comparison", cwd=tmp_path)
    assert re.search(r"  ppo: [01]\.\d{4} \[", output) and re.search(r"  a2c: [01]\.\d{4} \[", output)
    assert "the intervals" in output
    markdown = (tmp_path / "comparison" / "results.md").read_text()
    assert all(f"| {agent} | 2 |" in markdown for agent in ("uniform", "ppo", "a2c"))
    assert (tmp_path / "comparison" / "learning_curves.png").is_file()


def test_custom_sampler(tmp_path: Path) -> None:
    output = run_example("custom_sampler", "--run-dir", "run", cwd=tmp_path)
    assert "predictor/pixel_auroc" in output
    assert (tmp_path / "run" / "agent.json").read_text().startswith('{"n_groups": 5')
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_bandit_sampler_learns_by_stepping_its_env_and_resumes(tmp_path: Path) -> None:
    output = run_example("bandit_sampler", "--run-dir", "run", cwd=tmp_path)
    assert "predictor/pixel_auroc" in output
    bandit = json.loads((tmp_path / "run" / "agent.json").read_text())
    assert sum(bandit["counts"]) == 8 and min(bandit["counts"]) >= 1  # 8 episodes, every arm played
    # Due every 2 episodes, taken at the next episode's reset: after episodes 2, 4 and 6 (the final
    # agent.json holds the 8th).
    checkpoints = sorted(path.name for path in (tmp_path / "run" / "checkpoints").glob("agent_*_steps.json"))
    assert checkpoints == ["agent_16_steps.json", "agent_24_steps.json", "agent_8_steps.json"]
    (tmp_path / "run" / "metrics.json").unlink()  # as a run killed in its evaluation leaves it
    run_example("bandit_sampler", "--resume", "run", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "agent.json").read_text()) == bandit  # nothing left to train
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_drive_env_by_hand(tmp_path: Path) -> None:
    output = run_example("drive_env_by_hand", "--out", "frame.png", cwd=tmp_path)
    assert "return of uniform" in output and "return of hard mining" in output
    assert len(re.findall(r"step +20 +separation", output)) == 2  # both episodes ran to the end
    frame = np.asarray(Image.open(tmp_path / "frame.png"))
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[1] > 2 * frame.shape[0]  # three panels
    assert frame.std() > 10


def test_classifier_on_saved_profiles(tmp_path: Path) -> None:
    output = run_example("classifier_on_saved_profiles", "--out", "profiles", cwd=tmp_path)
    assert (tmp_path / "profiles" / "episode_00000.npz").is_file()
    assert "4 snapshots at updates [5, 10, 15, 20]" in output
    scores = table_scores(output)
    assert set(scores) == {"predictor", "final_loss"} and scores["predictor"][0] > 0.5


def test_mvtec_folder(tmp_path: Path) -> None:
    output = run_example("mvtec_folder", cwd=tmp_path)
    assert re.search(r"mvtec:\S+/grid: 58 images of size 32", output)
    assert set(table_scores(output)) == {"predictor", "final_loss"}
