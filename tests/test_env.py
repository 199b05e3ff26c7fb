"""The environment contract of DESIGN.md, for every registered id."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import nbs_gym
from nbs_gym.config import ConfigError, EnvConfig
from nbs_gym.env import NeuralBatchSamplingEnv
from nbs_gym.profiles import load_profiles
from nbs_gym.separation import profile_separation

# Small enough for a few seconds per episode on two CPU cores, large enough to be the real thing.
SMALL = {
    "episode_length": 20,
    "profile_length": 4,
    "batch_size": 8,
    "image_size": 32,
    "patch_size": 8,
    "device": "cpu",
}
ENV_IDS = sorted(nbs_gym.ENV_IDS)
# Every id in the full tier; the default id and the quantile mode's in the fast one (-m "not slow").
FAST_IDS = ("nbs_gym/NeuralBatchSampling-v1", "nbs_gym/NeuralBatchSamplingQuantile-v1")
EACH_ID = [env_id if env_id in FAST_IDS else pytest.param(env_id, marks=pytest.mark.slow) for env_id in ENV_IDS]


def make(env_id: str = "nbs_gym/NeuralBatchSampling-v0", **kwargs) -> gym.Env:
    return gym.make(env_id, **{**SMALL, **kwargs})


def rollout(env: gym.Env, seed: int, actions: list) -> tuple[list, list, list[dict]]:
    observation, info = env.reset(seed=seed)
    observations, rewards, infos = [observation], [], [info]
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        observations.append(observation)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return observations, rewards, infos


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id: str) -> None:
    env = make(env_id, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure here
        gym_check_env(env, skip_render_check=False)
        sb3_check_env(env, warn=True)


@pytest.mark.parametrize("env_id", EACH_ID)
def test_random_episode_terminates_after_exactly_episode_length_updates(env_id: str) -> None:
    env = make(env_id)
    k = env.unwrapped.config.decision_interval
    n_steps = SMALL["episode_length"] // k
    assert n_steps == env.unwrapped.config.n_steps
    env.reset(seed=3)
    env.action_space.seed(3)
    for step in range(1, n_steps + 1):
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(observation)
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert not truncated
        assert terminated == (step == n_steps)
        assert info["step"] == step * k
    assert info["n_snapshots"] == SMALL["profile_length"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


@pytest.mark.parametrize("env_id", EACH_ID)
def test_same_seed_and_actions_give_identical_rollouts_and_profiles(env_id: str, tmp_path: Path) -> None:
    envs = [make(env_id, profile_dir=tmp_path / name) for name in ("a", "b")]
    space = envs[0].action_space
    space.seed(11)
    actions = [space.sample() for _ in range(SMALL["episode_length"])]
    (obs_a, rew_a, info_a), (obs_b, rew_b, info_b) = (rollout(env, 5, actions) for env in envs)
    np.testing.assert_array_equal(np.stack(obs_a), np.stack(obs_b))
    assert rew_a == rew_b
    profiles = [load_profiles(info[-1]["profile_path"]) for info in (info_a, info_b)]
    np.testing.assert_array_equal(profiles[0].loss_maps, profiles[1].loss_maps)
    assert profiles[0].metadata["episode_seed"] == profiles[1].metadata["episode_seed"]


def test_different_seeds_give_different_autoencoder_initialisations() -> None:
    env = make().unwrapped
    env.reset(seed=0)
    first = env.engine.trainer.state_dict(0)
    env.reset(seed=1)
    second = env.engine.trainer.state_dict(0)
    assert any(not torch.equal(first[name], second[name]) for name in first)
    env.reset(seed=0)
    again = env.engine.trainer.state_dict(0)
    assert all(torch.equal(first[name], again[name]) for name in first)


@pytest.mark.parametrize(("measure", "window"), [("auroc", 0), ("fisher", 0), ("prediction_loss", 0), ("auroc", 5)])
def test_dense_return_equals_final_minus_initial_separation(measure: str, window: int) -> None:
    env = make(reward=measure, context_window=window)
    _, rewards, infos = rollout(env, 2, [env.action_space.sample() for _ in range(SMALL["episode_length"])])
    final, initial = infos[-1]["separation"], infos[0]["initial_separation"]
    assert sum(rewards) == pytest.approx(final - initial, abs=1e-9)
    assert any(abs(r) > 0 for r in rewards), "the separation never changed"
    assert all(set(info["rewards"]) == {"separation_gain", "final_separation"} for info in infos)


def test_terminal_reward_is_the_final_separation_at_the_last_step_only() -> None:
    env = make(reward_mode="terminal")
    actions = [np.zeros(env.action_space.shape, np.float32)] * SMALL["episode_length"]
    _, rewards, infos = rollout(env, 0, actions)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == pytest.approx(infos[-1]["separation"])


def test_context_window_adds_the_box_mean_of_the_loss_map_as_a_reward_feature() -> None:
    env = make(context_window=5).unwrapped
    env.reset(seed=0)
    n_labeled, size = len(env.split.labeled), SMALL["image_size"]
    maps = np.random.default_rng(0).random((n_labeled, size, size)).astype(np.float32)
    features = env.engine.reward_features(maps)
    pixels = env.engine.separation_pixels
    assert features.shape == (len(pixels), 2)
    np.testing.assert_array_equal(features[:, 0], maps.reshape(-1)[pixels])
    # An interior pixel's context feature is the plain mean of the 5 x 5 box around it.
    image, y, x = np.unravel_index(pixels, maps.shape)
    row = int(np.flatnonzero((y >= 2) & (y < size - 2) & (x >= 2) & (x < size - 2))[0])
    box = maps[image[row], y[row] - 2 : y[row] + 3, x[row] - 2 : x[row] + 3]
    assert features[row, 1] == pytest.approx(box.mean(), rel=1e-5)
    assert make().unwrapped.engine.reward_features(maps).shape == (len(pixels), 1)


@pytest.mark.parametrize("window", [0, 5])
def test_saved_profiles_score_the_same_final_separation_as_the_reward(window: int, tmp_path: Path) -> None:
    env = make(context_window=window, profile_dir=tmp_path)
    _, _, infos = rollout(env, 1, [env.action_space.sample() for _ in range(SMALL["episode_length"])])
    profiles = load_profiles(infos[-1]["profile_path"])  # float16 on disk: equal up to its rounding
    maps, masks = profiles.labeled_profiles()
    seed = env.unwrapped.config.data.split_seed
    score = profile_separation(maps.astype(np.float32), masks, "auroc", window, seed)
    assert score == pytest.approx(infos[-1]["separation"], abs=2e-3)
    exact = profile_separation(env.unwrapped.episode_loss_maps[:, : profiles.n_labeled], masks, "auroc", window, seed)
    assert exact == pytest.approx(infos[-1]["separation"], abs=1e-12)


def test_zero_action_is_uniform_sampling_over_patches() -> None:
    env = make().unwrapped
    env.reset(seed=0)
    composition = env.batch_composition(np.zeros(env.action_space.shape, np.float32))
    sizes = env.engine.groups.sizes
    np.testing.assert_allclose(composition, sizes / sizes.sum())


def test_one_hot_discrete_action_draws_only_from_that_stratum() -> None:
    env = make("nbs_gym/NeuralBatchSamplingDiscrete-v0").unwrapped
    env.reset(seed=0)
    highest = env.config.n_strata - 1
    observation, _, _, _, info = env.step(highest)
    np.testing.assert_array_equal(info["batch_composition"], np.eye(env.config.n_strata)[highest])
    # The batch was drawn from the highest stratum (training then moved its patches' losses).
    assert observation[env.layout.batch_shares][highest] == 1.0


def test_strata_are_equal_runs_of_the_pool_sorted_by_current_patch_loss() -> None:
    env = make("nbs_gym/NeuralBatchSamplingDiscrete-v0").unwrapped
    env.reset(seed=0)
    n_strata, n_patches = env.config.n_strata, len(env.patch_losses)
    for action in [n_strata - 1, 0, n_strata] * 4:  # twelve steps, two of them followed by snapshots
        _, _, _, _, info = env.step(action)
        order, starts = env.strata
        losses = env.patch_losses[order]
        np.testing.assert_array_equal(np.sort(order), np.arange(n_patches))
        assert (np.diff(losses) >= 0).all()
        groups = env.groups_of(order)
        np.testing.assert_array_equal(np.bincount(groups, minlength=n_strata), np.diff([*starts, n_patches]))
        assert (np.diff(groups) >= 0).all()
    assert info["n_snapshots"] == 2


def test_level_changes_count_from_the_strata_of_the_latest_snapshot() -> None:
    env = make()
    n_strata = env.unwrapped.config.n_strata
    observation, _ = env.reset(seed=2)
    np.testing.assert_array_equal(observation[n_strata : 2 * n_strata], 0.0)
    action = np.ones(env.action_space.shape, np.float32)
    changes = []
    for _ in range(env.unwrapped.config.snapshot_steps[0] + 1):
        observation, _, _, _, info = env.step(action)
        changes.append((info["snapshot"], observation[n_strata : 2 * n_strata]))
    assert [snapshot for snapshot, _ in changes] == [False] * (len(changes) - 2) + [True, False]
    np.testing.assert_array_equal(changes[-2][1], 0.0)  # the snapshot step: levels and strata both fresh
    assert np.abs(changes[-3][1]).max() > 0 and np.abs(changes[-1][1]).max() > 0


def test_strata_after_a_seeded_reset_do_not_depend_on_earlier_episodes() -> None:
    fresh, used = make().unwrapped, make().unwrapped
    used.reset(seed=3)
    for _ in range(7):
        used.step(np.ones(used.action_space.shape, np.float32))
    fresh.reset(seed=5)
    used.reset(seed=5)
    # Some pool patches have equal losses, and the order must break those ties the same way.
    assert len(np.unique(fresh.patch_losses)) < len(fresh.patch_losses)
    np.testing.assert_array_equal(used.strata[0], fresh.strata[0])


def test_quantile_action_draws_every_batch_from_the_admitted_lowest_loss_patches() -> None:
    env = make("nbs_gym/NeuralBatchSamplingQuantile-v0").unwrapped
    env.reset(seed=0)
    n_patches, n_strata = len(env.patch_losses), env.config.n_strata
    assert env.action_space.shape == (1,) and env.observation_space.shape == (3 * n_strata + 3,)
    for value in [-0.5, 0.0, 0.6, -1.0, 1.0] * 2:
        action = np.array([value], np.float32)
        admitted = env.admitted_patches(action)
        assert admitted == max(SMALL["batch_size"], round((value + 1) / 2 * n_patches))
        before = env.patch_losses.copy()
        _, _, _, _, info = env.step(action)
        # Every drawn patch is among the `admitted` lowest losses at the time of the draw.
        assert (before[env.last_patch_ids] <= np.sort(before)[admitted - 1]).all()
        composition = info["batch_composition"]
        assert composition.sum() == pytest.approx(1.0)
        # The admitted strata: the lowest ones, whole, then part of one.
        assert np.count_nonzero(composition) == int(np.ceil(admitted / (n_patches / n_strata) - 1e-9))
        assert (np.diff(composition) <= 1e-6).all()
    assert env.admitted_patches(np.ones(1)) == n_patches
    np.testing.assert_allclose(env.batch_composition(np.ones(1)), np.full(n_strata, 1 / n_strata))


def test_quantile_draws_the_low_loss_patches_more_often_than_uniform() -> None:
    shares = {}
    for value in (-0.6, 1.0):
        env = make("nbs_gym/NeuralBatchSamplingQuantile-v0").unwrapped
        env.reset(seed=4)
        drawn = []
        for _ in range(10):
            before = env.patch_losses.copy()
            env.step(np.array([value], np.float32))
            drawn.append((before[env.last_patch_ids][:, None] > before[None, :]).mean(axis=1))
        shares[value] = float(np.mean(drawn))  # mean loss percentile of the drawn patches
    assert shares[-0.6] < 0.25 < 0.4 < shares[1.0]


def test_quantile_action_errors_name_its_shape_and_the_mode() -> None:
    env = make("nbs_gym/NeuralBatchSamplingQuantile-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected shape \(1,\) in \[-1, 1\], got shape \(5,\)"):
        env.step(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"expected values in \[-1, 1\]"):
        env.step(np.array([1.5], np.float32))
    strata = make().unwrapped
    strata.reset(seed=0)
    with pytest.raises(ValueError, match="admitted_patches: the action mode is 'strata', not 'quantile'"):
        strata.admitted_patches(np.zeros(1))


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(3, np.float32), r"expected shape \(5,\) in \[-1, 1\], got shape \(3,\)"),
        (np.array([0, 0, np.nan, 0, 0], np.float32), "expected finite values"),
        (np.array([0, 0, np.inf, 0, 0], np.float32), "expected finite values"),
        (np.array([0, 0, 1.5, 0, 0], np.float32), r"expected values in \[-1, 1\]"),
    ],
)
def test_bad_box_action_is_a_value_error_stating_shape_and_bounds(action: np.ndarray, message: str) -> None:
    env = make().unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_discrete_action_of_one_element_acts_as_its_value() -> None:
    env = make("nbs_gym/NeuralBatchSamplingDiscrete-v0").unwrapped
    env.reset(seed=0)
    for action in (2, np.int64(2), np.array(2), np.array([2])):
        np.testing.assert_array_equal(env.batch_composition(action), np.eye(6)[2, :5])
    assert env.step(np.array([5]))[4]["batch_composition"].tolist() == pytest.approx([0.2] * 5)


@pytest.mark.parametrize("action", [6, -1, 2.5, np.array([1, 2]), np.array([7]), np.array([2.0])])
def test_bad_discrete_action_is_a_value_error(action) -> None:
    env = make("nbs_gym/NeuralBatchSamplingDiscrete-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"integer in \[0, 5\] for Discrete\(6\)"):
        env.step(action)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 10**6}, "batch_size"),
        ({"profile_length": 1}, "profile_length"),
        ({"episode_length": 3}, "episode_length"),
        ({"patch_size": 6}, "patch_size"),
        ({"reward": "accuracy"}, "reward"),
        ({"action_mode": "grid"}, "action_mode"),
        ({"temperature": 0.0}, "temperature"),
        ({"context_window": 4}, "context_window"),
        ({"context_window": 65}, "context_window"),
        ({"context_window": -1}, "context_window"),
        ({"action_mode": "spatial", "spatial_grid": 30, "patch_size": 32}, "spatial_grid"),
        ({"batchsize": 8}, "batchsize"),
        ({"device": "tpu"}, "device"),
        ({"decision_interval": 0}, "decision_interval"),
        ({"decision_interval": 3}, "decision_interval"),  # does not divide episode_length 20
        ({"reward_baseline": "twin"}, "reward_baseline"),
    ],
)
def test_invalid_config_is_rejected_at_construction_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        make(**kwargs)


@pytest.mark.parametrize("vector", [False, True])
def test_a_whole_config_passes_through_make_and_flat_settings_override_it(vector: bool) -> None:
    config = EnvConfig.from_kwargs(**SMALL, n_strata=4, action_mode="strata")
    env_id = "nbs_gym/NeuralBatchSamplingDiscrete-v0"
    if vector:
        env = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", config=config, batch_size=4)
        space = env.single_action_space
    else:
        env = gym.make(env_id, config=config, batch_size=4)
        space = env.action_space
    built = env.unwrapped.config
    assert (built.action_mode, built.n_strata, built.batch_size, built.episode_length) == ("discrete", 4, 4, 20)
    assert space == gym.spaces.Discrete(5)
    assert config.batch_size == 8  # the caller's config is left as it was


def test_bad_dataset_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_category"
    with pytest.raises(ValueError, match=str(missing)):
        make(dataset=f"mvtec:{missing}")


def test_render_shows_image_loss_map_and_sampling_coverage() -> None:
    env = make(render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(5):
        env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[1] > 3 * frame.shape[0] - 1  # three square panels side by side
    assert frame.std() > 0


def test_profiles_on_disk_match_the_episode_and_hide_evaluation_masks(tmp_path: Path) -> None:
    env = make(profile_dir=tmp_path)
    _, _, infos = rollout(env, 0, [np.zeros(env.action_space.shape, np.float32)] * SMALL["episode_length"])
    profiles = load_profiles(infos[-1]["profile_path"])
    unwrapped = env.unwrapped
    assert profiles.loss_maps.shape == (SMALL["profile_length"], len(unwrapped.split.probe), 32, 32)
    np.testing.assert_allclose(profiles.loss_maps, unwrapped.last_profiles.loss_maps, rtol=1e-3, atol=1e-6)
    assert profiles.labeled_masks.shape[0] == len(unwrapped.split.labeled)
    assert list(profiles.snapshot_steps) == list(unwrapped.config.snapshot_steps)
    assert profiles.snapshot_steps[-1] == SMALL["episode_length"]
    assert profiles.split == unwrapped.split
    with np.load(infos[-1]["profile_path"]) as archive:
        assert "evaluation_masks" not in archive.files and archive["loss_maps"].dtype == np.float16


def test_an_episodes_profiles_stay_as_they_were_after_the_next_episode() -> None:
    env = make()
    actions = [np.zeros(env.action_space.shape, np.float32)] * SMALL["episode_length"]
    rollout(env, 0, actions)
    first = env.unwrapped.last_profiles
    kept = first.loss_maps.copy()
    assert not first.images.flags.writeable  # shared by every episode's profiles
    rollout(env, 1, actions)
    second = env.unwrapped.last_profiles
    np.testing.assert_array_equal(first.loss_maps, kept)
    assert not np.array_equal(second.loss_maps, kept)
    np.testing.assert_array_equal(first.images, second.images)


@pytest.mark.slow
def test_uniform_episode_profiles_carry_the_anomaly_signal() -> None:
    """Sanity of the science: the autoencoder reconstructs L's defects worse than L's normal pixels."""
    env = gym.make("nbs_gym/NeuralBatchSampling-v0", device="cpu")
    _, _, infos = rollout(env, 0, [np.zeros(env.action_space.shape, np.float32)] * 10**6)
    maps, masks = env.unwrapped.last_profiles.labeled_profiles()
    final = maps[-1]
    assert final[masks].mean() > 1.5 * final[~masks].mean()
    assert infos[-1]["separation"] > 0.6


OPTIONS = [
    {"reward_baseline": "uniform_twin"},
    {"decision_interval": 4},
    {"reward_baseline": "uniform_twin", "decision_interval": 5},
]


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_checkers_pass_with_the_twin_and_a_decision_interval(options: dict) -> None:
    env = make(**options).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env)
        sb3_check_env(env, warn=True)


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_same_seed_and_actions_give_identical_rewards_with_the_twin_and_an_interval(options: dict) -> None:
    actions = [make(**options).action_space.sample() for _ in range(SMALL["episode_length"])]
    first, second = (rollout(make(**options), 5, actions) for _ in range(2))
    assert first[1] == second[1]
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert [i.get("twin_separation") for i in first[2]] == [i.get("twin_separation") for i in second[2]]


@pytest.mark.slow
def test_the_uniform_twin_never_sees_the_agents_batches() -> None:
    """Under two very different action sequences the twin's separation is the same, step for step."""
    n = SMALL["episode_length"]
    top_only, bottom_only = np.array([-1, -1, -1, -1, 1.0]), np.array([1, -1, -1, -1, -1.0])
    runs = [rollout(make(reward_baseline="uniform_twin"), 2, [action] * n) for action in (top_only, bottom_only)]
    twin = [[info["twin_separation"] for info in infos] for _, _, infos in runs]
    agent = [[info["separation"] for info in infos] for _, _, infos in runs]
    assert twin[0] == twin[1]
    assert agent[0] != agent[1]
    # And the twin is uniform sampling itself: with the zero action the agent's autoencoder and the
    # twin start alike but draw different batches, so their separations part.
    _, _, infos = rollout(make(reward_baseline="uniform_twin"), 2, [np.zeros(5)] * n)
    assert infos[0]["twin_separation"] == infos[0]["separation"]
    assert infos[-1]["twin_separation"] == twin[0][-1]
    assert infos[-1]["separation"] != infos[-1]["twin_separation"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "terminal"])
def test_the_twin_return_is_the_final_separation_gained_over_the_twin(mode: str) -> None:
    env = make(reward_baseline="uniform_twin", reward_mode=mode)
    _, rewards, infos = rollout(env, 1, [env.action_space.sample() for _ in range(SMALL["episode_length"])])
    last = infos[-1]
    assert sum(rewards) == pytest.approx(last["separation"] - last["twin_separation"], abs=1e-12)
    terms = last["rewards"]
    assert terms["paired_gain"] == pytest.approx(terms["separation_gain"] - terms["twin_separation_gain"])
    assert terms["final_paired_separation"] == pytest.approx(last["separation"] - last["twin_separation"])
    if mode == "terminal":
        assert all(reward == 0.0 for reward in rewards[:-1])


def test_a_decision_interval_holds_the_composition_for_k_updates_and_keeps_the_return() -> None:
    k, length = 4, SMALL["episode_length"]
    env = make(decision_interval=k)
    observation, _ = env.reset(seed=0)
    progress_index = 3 * 5
    steps, rewards = 0, []
    terminated = False
    while not terminated:
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        rewards.append(reward)
        assert info["step"] == steps * k
        assert observation[progress_index] == pytest.approx(steps * k / length)
    assert steps == length // k
    assert sum(rewards) == pytest.approx(info["separation"] - info["initial_separation"], abs=1e-12)
    assert info["n_snapshots"] == SMALL["profile_length"]


@pytest.mark.slow
def test_a_decision_interval_of_k_equals_k_repeated_single_update_steps() -> None:
    k, length = 5, SMALL["episode_length"]
    actions = [make().action_space.sample() for _ in range(length // k)]
    held = rollout(make(decision_interval=k), 9, actions)
    repeated = rollout(make(), 9, [action for action in actions for _ in range(k)])
    for j in range(len(actions) + 1):
        np.testing.assert_array_equal(held[0][j], repeated[0][j * k])
    assert held[2][-1]["separation"] == repeated[2][-1]["separation"]
    grouped = [sum(repeated[1][j * k : (j + 1) * k]) for j in range(len(actions))]
    np.testing.assert_allclose(held[1], grouped, atol=1e-12)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_each_id_is_its_task_versions_settings_and_v0_the_config_defaults(env_id: str) -> None:
    from nbs_gym.tasks import env_id_for, parse_env_id, task_config

    version, mode = parse_env_id(env_id)
    assert env_id_for(env_id, mode) == env_id
    config = gym.make(env_id, device="cpu").unwrapped.config
    assert config == task_config(env_id, device="cpu")
    if version == "v0":  # the first task stays what it always was
        assert config == EnvConfig.from_kwargs(action_mode=mode, device="cpu")
    with pytest.raises(ConfigError, match="unknown id"):
        parse_env_id(env_id.replace(version, "v99"))


@pytest.mark.slow  # a whole episode with the twin: the full tier
def test_the_docstring_s_info_table_names_every_info_key(tmp_path: Path) -> None:
    doc = NeuralBatchSamplingEnv.__doc__ or ""
    table = doc.split("## Info", 1)[1].split("##", 1)[0]
    documented = {line.split("|")[1].strip() for line in table.splitlines() if line.strip().startswith("| ")}
    documented -= {"key", ""}
    env = make(reward_baseline="uniform_twin", profile_dir=tmp_path)
    _, info = env.reset(seed=0)
    seen = set(info)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(env.action_space.sample())
        seen |= set(info)
    assert seen == documented
