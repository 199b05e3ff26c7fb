"""``benchmarks/pool_draws.py``: rows of several ``combine.py`` outputs pooled, each (draw, seed) one sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_compare import load_benchmark

COLUMNS = ("predictor/pixel_f1_max", "predictor/pixel_aupro", "predictor/pixel_auroc")


def draw(uniform: dict[int, float], rows: dict[str, dict[int, float]]) -> dict[str, Any]:
    """A ``combine.py`` output whose rows have these F1-max values per seed (the other metrics 0.9)."""

    def values(f1: float) -> dict[str, float]:
        return {COLUMNS[0]: f1, COLUMNS[1]: 0.9, COLUMNS[2]: 0.9}

    return {
        "rows": {
            name: {
                "values": {str(seed): values(f1) for seed, f1 in by_seed.items()},
                "uniform": {str(seed): values(uniform[seed]) for seed in by_seed},
            }
            for name, by_seed in rows.items()
        }
    }


def test_pooled_samples_are_paired_with_their_own_draws_references(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = load_benchmark("pool_draws")
    # Seed 0 and 1 on two machines: the same seeds, other runs; the learned row is called otherwise in draw 2.
    first = draw({0: 0.5, 1: 0.4}, {"oracle": {0: 0.6, 1: 0.5}, "ppo_4_envs": {0: 0.55, 1: 0.44}})
    second = draw({0: 0.8, 1: 0.5}, {"oracle": {0: 0.88, 1: 0.6}, "ppo": {0: 0.8, 1: 0.6}, "rule": {0: 0.84, 1: 0.5}})
    paths = []
    for number, content in enumerate((first, second)):
        paths.append(tmp_path / f"draw{number}.json")
        paths[-1].write_text(json.dumps(content))
    out = tmp_path / "pooled.json"
    argv = ["--draws", *map(str, paths), "--rows", "ppo=ppo_4_envs,ppo", "rule=-,rule", "--versus", "ppo"]
    assert pool.main([*argv, "--out", str(out)]) == 0
    table = json.loads(out.read_text())["rows"]
    assert table["ppo"]["seeds"] == [0, 1, 1000, 1001]
    ratios = [0.55 / 0.5, 0.44 / 0.4, 0.8 / 0.8, 0.6 / 0.5]  # each against its own draw's uniform
    assert table["ppo"]["ratio_to_uniform"][COLUMNS[0]]["mean"] == pytest.approx(np.mean(ratios))
    assert table["oracle"]["ratio_to_uniform"][COLUMNS[0]]["mean"] == pytest.approx(np.mean([1.2, 1.25, 1.1, 1.2]))
    assert table["rule"]["seeds"] == [1000, 1001]  # only where a draw has it
    assert table["rule"]["f1_ratio_to_ppo"]["mean"] == pytest.approx(np.mean([0.84 / 0.8, 0.5 / 0.6]))
    assert "| rule | 0.942" in capsys.readouterr().out

    assert pool.main(["--draws", *map(str, paths), "--rows", "ppo=ppo,ppo"]) == 2
    assert "draw 1 has no row 'ppo'" in capsys.readouterr().err
    assert pool.main(["--draws", *map(str, paths), "--rows", "ppo=ppo"]) == 2
    assert "1 names for 2 draws" in capsys.readouterr().err
    second["rows"]["rule"]["uniform"]["0"][COLUMNS[0]] = 0.7  # made against another uniform run
    paths[1].write_text(json.dumps(second))
    assert pool.main(["--draws", *map(str, paths), "--rows", "ppo=ppo_4_envs,ppo", "rule=-,rule"]) == 2
    assert "different uniform runs" in capsys.readouterr().err


def test_combine_joins_earlier_outputs_of_other_seeds_for_rows_and_both_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    combine = load_benchmark("combine")
    # Seeds 0-1 in one earlier output, 2-3 in another (runs whose folders are gone).
    first = draw({0: 0.5, 1: 0.4}, {"oracle": {0: 0.6, 1: 0.5}, "ppo": {0: 0.55, 1: 0.44}})
    second = draw({2: 0.8, 3: 0.5}, {"oracle": {2: 0.88, 3: 0.6}, "ppo": {2: 0.8, 3: 0.6}})
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "joined.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    argv = ["combine.py", "--uniform", f"{a}:ppo+{b}:ppo", "--oracle", f"{a}:oracle+{b}:oracle"]
    # A row is LABEL=SOURCE:AGENT, its SOURCE here two earlier outputs' rows.
    monkeypatch.setattr("sys.argv", [*argv, "--rows", f"ppo={a}:ppo+{b}:ppo:ppo", "--out", str(out)])
    combine.main()
    table = json.loads(out.read_text())["rows"]
    assert table["ppo"]["seeds"] == [0, 1, 2, 3]
    ratios = [0.55 / 0.5, 0.44 / 0.4, 0.8 / 0.8, 0.6 / 0.5]
    assert table["ppo"]["ratio_to_uniform"][COLUMNS[0]]["mean"] == pytest.approx(np.mean(ratios))
    assert table["oracle"]["ratio_to_uniform"][COLUMNS[0]]["mean"] == pytest.approx(np.mean([1.2, 1.25, 1.1, 1.2]))
    assert "| ppo |" in capsys.readouterr().out
