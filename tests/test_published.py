"""The published batch-selection rules: each one's batches follow its rule, episode by episode."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest

import nbs_gym  # noqa: F401  (registers the ids)
from agents import (
    BASELINES,
    AgentError,
    BaselineSampler,
    LossRankSampler,
    ReducibleLossSampler,
    SelfPacedSampler,
    make_agent,
)
from nbs_gym.data import load_dataset

# One update per env step, so that the losses read before a step are those the step's one batch was
# drawn from.
TINY = {
    "episode_length": 24,
    "decision_interval": 1,
    "profile_length": 4,
    "image_size": 32,
    "patch_size": 8,
    "batch_size": 16,
    "device": "cpu",
}
ENV_ID = "nbs_gym/NeuralBatchSampling-v1"


def _episode(sampler: BaselineSampler, env: gym.Env, seed: int = 0) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(patch losses before the update, progress before it, the batch's patch ids) of every update."""
    base = env.unwrapped
    base.set_patch_draw(None)  # the env may have served another rule before
    if hasattr(sampler, "prepare_env"):
        sampler.prepare_env(env)
    observation, _ = env.reset(seed=seed)
    records, terminated = [], False
    while not terminated:
        losses, progress = base.patch_losses.copy(), base.progress
        observation, _, terminated, _, _ = env.step(sampler.predict(observation)[0])
        records.append((losses, progress, base.last_patch_ids))
    return records


def _loss_quantiles(records: list[tuple[np.ndarray, float, np.ndarray]], offset: np.ndarray | None = None) -> float:
    """Mean share of the pool whose loss (minus ``offset``) each batch patch's exceeds when it was drawn."""
    shares = []
    for losses, _, ids in records:
        values = losses if offset is None else losses - offset
        shares.append((values[ids][:, None] > values[None, :]).mean())
    return float(np.mean(shares))


@pytest.fixture
def env() -> Iterator[gym.Env]:
    made = gym.make(ENV_ID, **TINY)
    yield made
    made.close()


def test_the_published_rules_are_built_in_samplers() -> None:
    for name, sampler_class in [
        ("loss_rank", LossRankSampler),
        ("reducible_loss", ReducibleLossSampler),
        ("self_paced", SelfPacedSampler),
    ]:
        assert BASELINES[name] is sampler_class


def test_loss_rank_favours_the_high_loss_patches_by_its_rank_law(env: gym.Env) -> None:
    sampler = make_agent("loss_rank", env, seed=0)
    probabilities = sampler.rank_probabilities(1000)
    assert probabilities.sum() == pytest.approx(1.0)
    assert probabilities[0] / probabilities[-1] == pytest.approx(100.0, rel=0.01)
    records = _episode(sampler, env)
    assert all(len(ids) == TINY["batch_size"] for _, _, ids in records)
    # exp(-ln(100) x) on [0, 1] has mean 0.207: a drawn patch outranks about 79 % of the pool.
    assert _loss_quantiles(records) > 0.7
    uniform = _episode(make_agent("uniform", env), env)
    assert 0.35 < _loss_quantiles(uniform) < 0.65
    flat = _episode(make_agent("loss_rank", env, selection_pressure=1.0), env)
    assert 0.35 < _loss_quantiles(flat) < 0.65


def test_self_paced_draws_only_patches_under_its_rising_threshold(env: gym.Env) -> None:
    sampler = make_agent("self_paced", env, start_share=0.25, end_share=0.75)
    records = _episode(sampler, env)
    n_patches = len(records[0][0])
    admitted = []
    for losses, progress, ids in records:
        count = sampler.admitted(progress, n_patches)
        threshold = np.sort(losses, kind="stable")[count - 1]
        assert (losses[ids] <= threshold).all()
        admitted.append(count)
    assert admitted[0] == int(np.ceil(0.25 * n_patches))
    assert admitted == sorted(admitted) and admitted[-1] > admitted[0]
    assert sampler.admitted(1.0, n_patches) == int(np.ceil(0.75 * n_patches))


@pytest.mark.slow
def test_reducible_loss_trains_on_the_highest_reducible_loss_of_its_candidates(env: gym.Env) -> None:
    sampler = make_agent("reducible_loss", env, seed=0, reference_updates=300)
    records = _episode(sampler, env)
    irreducible = sampler.irreducible_losses
    assert irreducible is not None and irreducible.shape == records[0][0].shape and (irreducible >= 0).all()
    # The batch is the top 1/10 of a uniform candidate set: far above the pool's middle.
    assert _loss_quantiles(records, irreducible) > 0.8
    # The reference learned the normal images: their patches have a lower irreducible loss than the
    # patches that hold defects (checked here against every mask; the sampler reads only L's).
    base = env.unwrapped
    dataset = load_dataset(base.config.data.dataset, image_size=TINY["image_size"])
    image, top, left = base.patch_windows
    size = TINY["patch_size"]
    windows = zip(image, top, left, strict=True)
    defective = np.array([dataset.masks[i, y : y + size, x : x + size].any() for i, y, x in windows])
    assert irreducible[defective].mean() > irreducible[~defective].mean()


@pytest.mark.slow
def test_reducible_loss_is_reproducible_and_needs_normal_labeled_images(env: gym.Env) -> None:
    first = make_agent("reducible_loss", env, seed=3, reference_updates=50)
    second = make_agent("reducible_loss", env, seed=3, reference_updates=50)
    ids = [np.concatenate([batch for *_, batch in _episode(sampler, env, seed=1)]) for sampler in (first, second)]
    np.testing.assert_array_equal(first.irreducible_losses, second.irreducible_losses)
    np.testing.assert_array_equal(ids[0], ids[1])
    no_normal = gym.make(ENV_ID, **TINY, n_labeled_normal=0)
    with pytest.raises(ValueError, match="L holds no normal image .* n_labeled_normal >= 1"):
        make_agent("reducible_loss", no_normal).prepare_env(no_normal)
    no_normal.close()


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("loss_rank", {"selection_pressure": 0.5}, "selection_pressure must be a number >= 1"),
        ("loss_rank", {"selection_pressure": float("nan")}, "selection_pressure"),
        ("self_paced", {"start_share": 0.0}, "start_share must be a number in"),
        ("self_paced", {"start_share": 0.8, "end_share": 0.5}, r"end_share \(0.5\) must be >= start_share"),
        ("reducible_loss", {"candidates": 0}, "candidates must be an integer >= 1"),
        ("reducible_loss", {"reference_updates": 2.5}, "reference_updates must be an integer"),
    ],
)
def test_bad_rule_settings_name_the_setting(env: gym.Env, name: str, params: dict, message: str) -> None:
    with pytest.raises((ValueError, AgentError), match=message):
        make_agent(name, env, **params)


@pytest.mark.parametrize(
    ("name", "params"),
    [("loss_rank", {"selection_pressure": 10.0}), ("self_paced", {"start_share": 0.3, "end_share": 0.9}),
     ("reducible_loss", {"candidates": 4, "reference_updates": 20})],
)  # fmt: skip
def test_a_saved_rule_loads_with_its_settings(tmp_path, env: gym.Env, name: str, params: dict) -> None:
    make_agent(name, env, seed=5, **params).save(tmp_path / "agent.json")
    loaded = BaselineSampler.load(tmp_path / "agent.json")
    assert type(loaded) is BASELINES[name] and loaded.seed == 5
    assert {key: value for key, value in loaded.params().items() if key in params} == params
