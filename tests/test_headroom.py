"""The headroom map's scheduled and privileged samplers: each draw follows its spec, update by update."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from test_compare import load_benchmark
from test_published import ENV_ID, TINY  # one update per env step: a batch is drawn from the losses read before it

import nbs_gym  # noqa: F401  (registers the ids)
from agents.baselines import defective_patches

headroom = load_benchmark("headroom")


@pytest.fixture
def env() -> Iterator[gym.Env]:
    made = gym.make(ENV_ID, **TINY)
    yield made
    made.close()


def _episode(env: gym.Env, sampler: str) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(patch losses before the update, progress before it, the batch's patch ids) of every update."""
    base = env.unwrapped
    base.set_patch_draw(headroom.schedule_draw(sampler, base, None))
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    records, terminated = [], False
    while not terminated:
        losses, progress = base.patch_losses.copy(), base.progress
        _, _, terminated, _, _ = env.step(action)
        records.append((losses, progress, base.last_patch_ids.copy()))
    return records


def test_a_schedule_is_a_value_or_a_switch_or_turns_over_the_episode() -> None:
    constant = headroom.schedule("0.3", "share:0.3")
    assert [constant(p) for p in (0.0, 0.5, 0.99)] == [0.3, 0.3, 0.3]
    switch = headroom.schedule("1>0.5@0.8", "share:1>0.5@0.8")
    assert [switch(p) for p in (0.0, 0.79, 0.8, 0.95)] == [1.0, 1.0, 0.5, 0.5]
    turns = headroom.schedule("0.5/1@0.1", "share:0.5/1@0.1")
    # 0.3 is 0.30000000000000004 / 0.1 = 2.9999999999999996 turns: still the fourth turn.
    assert [turns(p) for p in (0.0, 0.09, 0.1, 0.19, 0.2, 0.3, 0.95)] == [0.5, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1.5", "the value must be a number in [0, 1], got '1.5'"),
        ("half", "the value must be a number in [0, 1], got 'half'"),
        ("0.5-1@0.1", "expected V, V1>V2@T or V1/V2@F, got '0.5-1@0.1'"),
        ("0.5/1@0", "the turn length F must be a number in (0, 1], got '0'"),
        ("1>0.5@soon", "the switch point T must be a number in (0, 1], got 'soon'"),
        ("0.5/-1@0.1", "a value must be a number in [0, 1], got '-1'"),
    ],
)
def test_a_bad_schedule_is_an_error_naming_the_sampler(spec: str, message: str) -> None:
    with pytest.raises(SystemExit, match=f"--samplers share:{spec}: {message}".replace("[", r"\[").replace("(", r"\(")):
        headroom.schedule(spec, f"share:{spec}")


def test_share_draws_only_from_the_lowest_loss_share_its_schedule_admits(env: gym.Env) -> None:
    records = _episode(env, "share:0.25/1@0.25")
    n_patches = len(records[0][0])
    narrow = 0
    for losses, progress, ids in records:
        share = 0.25 if int(progress / 0.25 + 1e-9) % 2 == 0 else 1.0
        admitted = int(np.ceil(share * n_patches))
        assert (losses[ids] <= np.sort(losses, kind="stable")[admitted - 1]).all()
        narrow += share == 0.25
    assert narrow == len(records) // 2
    # Under the full share the batches reach above the quarter: the schedule switched.
    wide = [(losses, ids) for losses, progress, ids in records if int(progress / 0.25 + 1e-9) % 2 == 1]
    assert any((losses[ids] > np.quantile(losses, 0.25)).any() for losses, ids in wide)


def test_band_draws_within_its_share_and_favours_its_highest_losses(env: gym.Env) -> None:
    records = _episode(env, "band:0.5@100")
    n_patches = len(records[0][0])
    admitted = int(np.ceil(0.5 * n_patches))
    ranks_within = []
    for losses, _, ids in records:
        order = np.argsort(losses, kind="stable")
        rank = np.empty(n_patches, np.int64)
        rank[order] = np.arange(n_patches)
        assert (rank[ids] < admitted).all()
        ranks_within.append(rank[ids] / admitted)
    # loss_rank's law at pressure 100 puts a drawn patch above about 79 % of the band, uniform at 50 %.
    assert np.mean(ranks_within) > 0.7


def test_clean_rank_draws_only_defect_free_patches_and_the_scheduled_oracle_follows_its_share(
    env: gym.Env,
) -> None:
    defective = defective_patches(env.unwrapped)
    assert defective.any() and not defective.all()
    for _, _, ids in _episode(env, "clean_rank:10"):
        assert not defective[ids].any()
    shares = [(progress, defective[ids].mean()) for _, progress, ids in _episode(env, "defects=0/1@0.5")]
    assert all(share == (0.0 if progress < 0.5 else 1.0) for progress, share in shares)


def test_other_samplers_have_no_scheduled_draw_and_new_cells_get_file_names(env: gym.Env) -> None:
    for sampler in ("uniform", "clean", "defects=0.5", "fixed:no_top", "self_paced"):
        assert headroom.schedule_draw(sampler, env.unwrapped, None) is None
    path = headroom.cell_path(Path("map"), "v1", "share:0.5/1@0.1", 3, 1)
    assert path == Path("map/cells/v1__share-0.5~1_at_0.1__e1__3.json")
    with pytest.raises(SystemExit, match="band:0.7@x: the selection pressure must be a number >= 1"):
        headroom.schedule_draw("band:0.7@x", env.unwrapped, None)
    with pytest.raises(SystemExit, match=r"expected band:Q@P"):
        headroom.schedule_draw("band:0.7", env.unwrapped, None)


def test_a_bad_sampler_stops_the_run_before_any_cell(tmp_path: Path) -> None:
    argv = ["run", "--out", str(tmp_path), "--task", "tiny", "episode_length=20", "--seeds", "0", "--samplers"]
    for bad, message in [
        ("clean_rank:0.5", "clean_rank:0.5: the selection pressure must be a number >= 1, got '0.5'"),
        ("defects=0/2@0.1", "defects=0/2@0.1: a value must be a number in [0, 1], got '2'"),
    ]:
        with pytest.raises(SystemExit, match=message.replace("[", r"\[")):
            headroom.main([*argv, "uniform", bad])
        assert not (tmp_path / "cells").exists()  # not even the uniform cell before it ran


def test_the_report_pairs_each_sampler_with_uniform_and_the_versus_sampler_of_its_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f1 = {
        ("a", "uniform"): [0.5, 0.4],
        ("a", "rule"): [0.6, 0.5],
        ("a", "share:0.5"): [0.66, 0.45],
        ("b", "uniform"): [0.9, 0.9],
    }
    (tmp_path / "cells").mkdir()
    for (task, sampler), values in f1.items():
        for seed, value in enumerate(values):
            metrics = dict.fromkeys(headroom.METRICS, 0.9) | {"predictor/pixel_f1_max": value}
            cell = {"task": task, "settings": {}, "sampler": sampler, "seed": seed, "ensemble": 1, "metrics": metrics,
                    "return": 0.0, "episode_seconds": 1.0, "classifier_seconds": 1.0}  # fmt: skip
            headroom.cell_path(tmp_path, task, sampler, seed, 1).write_text(json.dumps(cell))
    headroom.main(["report", "--out", str(tmp_path), "--seeds", "0", "1", "--tasks", "a", "--versus", "rule"])
    lines = capsys.readouterr().out.splitlines()
    assert "| F1-max ratio to rule [95 % CI] | AUPRO ratio to rule [95 % CI] |" in lines[0]
    rows = {line.split(" | ")[3]: line.split(" | ") for line in lines[2:]}
    assert set(rows) == {"uniform", "rule", "share:0.5"}  # task b left out
    # share:0.5 against rule, seed by seed: 0.66 / 0.6 = 1.1 and 0.45 / 0.5 = 0.9, mean 1.0
    assert rows["share:0.5"][11].startswith("1.000 [") and rows["share:0.5"][9].startswith("1.223 [")
    assert rows["rule"][11] == "1" and rows["uniform"][11].startswith("0.817 [")
