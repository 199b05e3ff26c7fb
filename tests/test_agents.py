"""The agent registry, the built-in baselines and the plug-in protocol, on a tiny env."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium import spaces

import nbs_gym
from agents import (
    AGENTS,
    BASELINES,
    ENV_ID_BY_MODE,
    TUNED,
    AgentError,
    BaselineSampler,
    CurriculumSampler,
    HardMiningSampler,
    OracleSampler,
    PluginError,
    RandomSampler,
    UniformSampler,
    get_spec,
    make_agent,
    registry,
)
from agents.baselines import HasSpaces
from nbs_gym.config import ConfigError
from nbs_gym.data import load_dataset

TINY = {"episode_length": 20, "profile_length": 4, "image_size": 32, "patch_size": 8, "batch_size": 8, "device": "cpu"}
# Replay buffers default to 10^6 transitions; a test needs a handful.
SMALL_BUFFER = {"buffer_size": 500, "learning_starts": 10}


@pytest.fixture(scope="module")
def envs() -> Iterator[dict[str, gym.Env]]:
    made = {mode: gym.make(env_id, **TINY) for mode, env_id in ENV_ID_BY_MODE.items()}
    yield made
    for env in made.values():
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(AGENTS))
def test_every_registry_entry_builds_and_acts_on_its_default_mode(name: str, envs: dict[str, gym.Env]) -> None:
    spec = AGENTS[name]
    env = envs[spec.resolve_action_mode(None)]
    hyperparams = SMALL_BUFFER if "buffer_size" in _init_parameters(spec.agent_class) else {}
    agent = make_agent(name, env, seed=0, **hyperparams)
    observation, _ = env.reset(seed=0)
    action, _ = agent.predict(observation, deterministic=True)
    assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype))
    env.step(action)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, spec in AGENTS.items() if spec.kind == "sb3"])
def test_the_return_an_agent_discounts_is_the_documented_objective(name: str, envs: dict[str, gym.Env]) -> None:
    """Whatever an SB3 agent optimises, sum_t gamma^t r_t, equals the env's documented return S_T - S_0."""
    spec = AGENTS[name]
    env = envs[spec.resolve_action_mode(None)]
    hyperparams = SMALL_BUFFER if "buffer_size" in _init_parameters(spec.agent_class) else {}
    agent = make_agent(name, env, seed=0, **hyperparams)
    # ARS searches parameters by undiscounted episode returns; it has no discount to set.
    gamma = getattr(agent, "gamma", 1.0)
    observation, info = env.reset(seed=3)
    rewards, terminated, truncated = [], False, False
    while not (terminated or truncated):
        action, _ = agent.predict(observation, deterministic=False)
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
    discounted = sum(gamma**t * reward for t, reward in enumerate(rewards))
    assert terminated and not truncated
    assert any(reward != 0.0 for reward in rewards)
    assert discounted == pytest.approx(info["separation"] - info["initial_separation"], abs=1e-12)


def test_agents_pick_their_env_mode() -> None:
    # On v1, PPO and A2C take their tuned mode (quantile); on v0, which has none, the strata mode.
    assert get_spec("ppo").resolve_action_mode(None) == "quantile"
    assert get_spec("a2c").resolve_action_mode(None) == "quantile"
    assert get_spec("ppo").resolve_action_mode(None, "nbs_gym/NeuralBatchSampling-v0") == "strata"
    assert get_spec("sac").resolve_action_mode(None) == "strata"
    assert get_spec("dqn").resolve_action_mode(None) == "discrete"
    assert get_spec("ppo").resolve_action_mode("spatial") == "spatial"
    assert ENV_ID_BY_MODE["discrete"] == "nbs_gym/NeuralBatchSamplingDiscrete-v1"
    assert (
        get_spec("dqn").env_id(None, task="nbs_gym/NeuralBatchSampling-v0") == "nbs_gym/NeuralBatchSamplingDiscrete-v0"
    )
    assert get_spec("ppo").env_id("spatial", task="nbs_gym/NeuralBatchSampling-v1") == (
        "nbs_gym/NeuralBatchSamplingSpatial-v1"
    )


def test_tuned_settings_apply_on_their_task_and_mode_only() -> None:
    ppo = get_spec("ppo")
    tuned = TUNED["ppo"]["v1"]
    assert ppo.settings("nbs_gym/NeuralBatchSamplingQuantile-v1") == {**ppo.defaults, **tuned.hyperparams}
    assert ppo.n_envs("nbs_gym/NeuralBatchSamplingQuantile-v1") == tuned.n_envs == 4
    for env_id in ("nbs_gym/NeuralBatchSampling-v1", "nbs_gym/NeuralBatchSamplingQuantile-v0"):
        assert ppo.settings(env_id) == dict(ppo.defaults) and ppo.n_envs(env_id) == 1
    env = gym.make("nbs_gym/NeuralBatchSamplingQuantile-v1", **TINY)
    agent = make_agent("ppo", env, env_id="nbs_gym/NeuralBatchSamplingQuantile-v1", n_steps=16, batch_size=16)
    assert agent.use_sde and agent.sde_sample_freq == -1 and agent.gae_lambda == 1.0
    assert agent.batch_size == 16  # the user's settings win over the tuned ones
    assert not make_agent("ppo", env, n_steps=16, batch_size=16).use_sde  # without the id: the defaults


@pytest.mark.parametrize(("name", "mode"), [("sac", "discrete"), ("td3", "discrete"), ("dqn", "strata")])
def test_impossible_pairing_is_a_clear_error(name: str, mode: str) -> None:
    with pytest.raises(AgentError, match=rf"'{name}'.*action_mode='{mode}'"):
        get_spec(name).resolve_action_mode(mode)


def test_agent_on_an_env_it_cannot_act_in(envs: dict[str, gym.Env]) -> None:
    with pytest.raises(AgentError, match="'sac' cannot act in Discrete"):
        make_agent("sac", envs["discrete"], **SMALL_BUFFER)


def test_unknown_agent_mode_and_hyperparameter() -> None:
    with pytest.raises(AgentError, match="unknown agent 'nope'.*ppo"):
        get_spec("nope")
    with pytest.raises(ConfigError, match="action_mode"):
        get_spec("ppo").resolve_action_mode("diagonal")


def test_an_agent_of_a_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._NOT_INSTALLED, "qrdqn_missing", "sb3-contrib")
    with pytest.raises(AgentError, match=r"'qrdqn_missing' needs sb3-contrib.*pip install"):
        get_spec("qrdqn_missing")


def test_verbose_is_a_hyperparameter_like_any_other(envs: dict[str, gym.Env]) -> None:
    assert make_agent("ppo", envs["strata"], verbose=1, n_steps=16, batch_size=16).verbose == 1


@pytest.mark.parametrize("algorithm", ["ppo", "a2c", "dqn"])
def test_shipped_zoo_hyperparameters_are_the_ones_train_uses(algorithm: str) -> None:
    path = Path(nbs_gym.__file__).parent / "hyperparams" / f"{algorithm}.yml"
    spec = get_spec(algorithm)
    entries = yaml.safe_load(path.read_text())
    assert {spec.env_id(None, task=task) for task in nbs_gym.ENV_IDS} <= set(entries)  # every task version
    for env_id, entry in entries.items():
        assert env_id in {spec.env_id(mode, task=task) for mode in spec.action_modes for task in nbs_gym.ENV_IDS}
        settings = {key: value for key, value in entry.items() if key not in ("n_timesteps", "n_envs")}
        assert settings.pop("policy") == spec.policy
        assert settings == spec.settings(env_id), env_id
        assert entry["n_envs"] == spec.n_envs(env_id), env_id


def test_bad_hyperparameter_names_the_agent(envs: dict[str, gym.Env]) -> None:
    with pytest.raises(AgentError, match="'ppo'.*no_such_setting"):
        make_agent("ppo", envs["strata"], no_such_setting=1)


def _observation(n_groups: int, levels: list[float], progress: float) -> np.ndarray:
    observation = np.zeros(3 * n_groups + 3, dtype=np.float32)
    observation[:n_groups] = levels
    observation[3 * n_groups] = progress
    return observation


def test_hard_mining_action_increases_with_stratum_index(envs: dict[str, gym.Env]) -> None:
    env = envs["strata"]
    observation, _ = env.reset(seed=1)
    action, _ = HardMiningSampler(env, strength=0.8).predict(observation)
    assert np.all(np.diff(action) > 0)
    assert action[-1] == pytest.approx(0.8) and action[0] == pytest.approx(-0.8)
    composition = env.unwrapped.batch_composition(action)
    assert np.all(np.diff(composition) > 0)  # strata are equally large: weights follow the action


def test_hard_mining_follows_the_loss_levels_not_the_index() -> None:
    sampler = HardMiningSampler(_spaces(4), strength=1.0)
    action, _ = sampler.predict(_observation(4, [-1.0, -3.0, -0.5, -2.0], 0.3))
    assert np.argsort(action).tolist() == [1, 3, 0, 2]
    discrete = HardMiningSampler(_spaces(4, discrete=True))
    assert int(discrete.predict(_observation(4, [-1.0, -3.0, -0.5, -2.0], 0.3))[0]) == 2


def test_curriculum_moves_from_easy_to_hard_strata_with_progress() -> None:
    sampler = CurriculumSampler(_spaces(5), strength=1.0)
    levels = [-3.0, -2.5, -2.0, -1.5, -1.0]  # sorted, as in the strata mode
    start, _ = sampler.predict(_observation(5, levels, 0.0))
    middle, _ = sampler.predict(_observation(5, levels, 0.5))
    end, _ = sampler.predict(_observation(5, levels, 1.0))
    assert np.all(np.diff(start) < 0) and np.all(np.diff(end) > 0)
    np.testing.assert_allclose(middle, 0.0, atol=1e-6)
    discrete = CurriculumSampler(_spaces(5, discrete=True))
    chosen = [int(discrete.predict(_observation(5, levels, p))[0]) for p in (0.0, 0.5, 1.0)]
    assert chosen == [0, 2, 4]


def test_uniform_is_the_zero_action_and_the_discrete_uniform_choice() -> None:
    action, _ = UniformSampler(_spaces(3)).predict(_observation(3, [0, 1, 2], 0.1))
    np.testing.assert_array_equal(action, np.zeros(3, dtype=np.float32))
    assert int(UniformSampler(_spaces(3, discrete=True)).predict(_observation(3, [0, 1, 2], 0.1))[0]) == 3


def test_nested_hyperparameters_reach_the_agent_and_stay_as_given(envs: dict[str, gym.Env]) -> None:
    policy_kwargs = {"log_std_init": -2.0}
    agent = make_agent("a2c", envs["strata"], seed=0, policy_kwargs=policy_kwargs)
    assert policy_kwargs == {"log_std_init": -2.0}  # A2C adds its optimizer to the dict it gets, not to this one
    assert agent.policy.log_std.detach().numpy() == pytest.approx(np.full(5, -2.0))


@pytest.mark.parametrize("discrete", [False, True])
def test_random_is_in_the_space_and_seeded(discrete: bool) -> None:
    batch = np.stack([_observation(4, [0, 1, 2, 3], 0.2)] * 6)
    first, _ = RandomSampler(_spaces(4, discrete), seed=3).predict(batch)
    second, _ = RandomSampler(_spaces(4, discrete), seed=3).predict(batch)
    np.testing.assert_array_equal(first, second)
    assert not all(np.array_equal(first[0], action) for action in first[1:])
    space = _spaces(4, discrete).action_space
    assert all(space.contains(action) for action in first)


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("discrete", [False, True])
def test_baselines_take_batched_observations(name: str, discrete: bool) -> None:
    sampler = BASELINES[name](_spaces(4, discrete), seed=0)
    batch = np.stack([_observation(4, [0, 1, 2, 3], p) for p in (0.0, 0.4, 1.0)])
    actions, state = sampler.predict(batch, state="kept")
    assert state == "kept"
    assert actions.shape == ((3,) if discrete else (3, 4))
    single, _ = sampler.predict(batch[0])
    assert single.shape == (() if discrete else (4,))
    with pytest.raises(ValueError, match=r"shape \(15,\)"):
        sampler.predict(np.zeros(7))


def test_samplers_in_the_quantile_mode_act_with_its_one_admitted_share(
    envs: dict[str, gym.Env], tmp_path: Path
) -> None:
    env = envs["quantile"]
    observation, _ = env.reset(seed=0)
    uniform = UniformSampler(env)
    np.testing.assert_array_equal(uniform.predict(observation)[0], np.ones(1, np.float32))
    np.testing.assert_array_equal(uniform.predict(np.stack([observation] * 3))[0], np.ones((3, 1), np.float32))
    assert env.unwrapped.admitted_patches(uniform.predict(observation)[0]) == len(env.unwrapped.patch_losses)
    actions = RandomSampler(env, seed=1).predict(np.stack([observation] * 4))[0]
    assert actions.shape == (4, 1) and len(set(actions[:, 0].tolist())) == 4
    for sampler_class in (HardMiningSampler, CurriculumSampler):
        with pytest.raises(ValueError, match="cannot act in the quantile mode"):
            sampler_class(env)
        with pytest.raises(AgentError, match=rf"agent '{sampler_class.name}' cannot act in Box.*strata or spatial"):
            make_agent(sampler_class.name, env)
        with pytest.raises(AgentError, match="cannot act in action_mode='quantile'"):
            get_spec(sampler_class.name).resolve_action_mode("quantile")
    uniform.save(tmp_path / "agent.json")
    loaded = BaselineSampler.load(tmp_path / "agent.json")
    assert loaded.quantile and loaded.action_space.shape == (1,) and loaded.observation_space == env.observation_space


def test_a_sampler_whose_spaces_do_not_fit_is_a_clear_error() -> None:
    class Spaces:
        action_space = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        observation_space = spaces.Box(-20.0, 20.0, (15,), dtype=np.float32)

    with pytest.raises(ValueError, match=r"does not fit the observation's 4 groups; expected a Box of shape \(4,\)"):
        UniformSampler(Spaces())
    Spaces.observation_space = spaces.Box(-20.0, 20.0, (7,), dtype=np.float32)
    with pytest.raises(ValueError, match=r"expected an observation of shape \(3 \* S \+ 3,\) with S >= 1, got \(7,\)"):
        UniformSampler(Spaces())


@pytest.mark.parametrize("sampler_class", [HardMiningSampler, CurriculumSampler])
def test_loss_rank_samplers_are_neutral_with_one_group(sampler_class: type[BaselineSampler]) -> None:
    action, _ = sampler_class(_spaces(1), strength=1.0).predict(_observation(1, [-2.0], 0.3))
    np.testing.assert_array_equal(action, np.zeros(1, np.float32))


def test_an_incomplete_saved_sampler_is_a_value_error(tmp_path) -> None:
    path = tmp_path / "agent.json"
    path.write_text('{"sampler": "uniform"}')
    with pytest.raises(ValueError, match="not a saved baseline sampler .KeyError"):
        BaselineSampler.load(path)


@pytest.mark.parametrize("with_env", [False, True])
def test_baseline_save_load_round_trip(tmp_path, with_env: bool) -> None:
    sampler = HardMiningSampler(_spaces(4), seed=2, strength=0.25)
    assert sampler.learn(1000) is sampler
    sampler.save(tmp_path / "agent.json")
    loaded = BaselineSampler.load(tmp_path / "agent.json", env=_spaces(4) if with_env else None)
    assert isinstance(loaded, HardMiningSampler) and loaded.strength == 0.25 and loaded.seed == 2
    observation = _observation(4, [3, 1, 2, 0], 0.6)
    np.testing.assert_array_equal(loaded.predict(observation)[0], sampler.predict(observation)[0])
    with pytest.raises(ValueError, match="HardMiningSampler, not a CurriculumSampler"):
        CurriculumSampler.load(tmp_path / "agent.json")


def test_strength_out_of_range() -> None:
    with pytest.raises(ValueError, match="strength"):
        HardMiningSampler(_spaces(3), strength=2.0)


# ------------------------------------------------------------------------------- plug-in protocol


class GoodPlugin:
    """A minimal custom sampler following the protocol."""

    action_modes = ("strata", "spatial")

    def __init__(self, env, seed=None, scale: float = 0.5) -> None:
        self.action_space, self.scale = env.action_space, scale

    def learn(self, total_timesteps, callback=None, progress_bar=False):
        return self

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return np.full(self.action_space.shape, self.scale, dtype=np.float32), state

    def save(self, path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path, env=None):
        raise NotImplementedError


class NoPredict:
    def learn(self, total_timesteps, callback=None, progress_bar=False):
        return self

    def save(self, path) -> None: ...

    @classmethod
    def load(cls, path, env=None): ...


class LoadWithoutClassmethod(GoodPlugin):
    def load(self, path, env=None):  # type: ignore[override]
        raise NotImplementedError


class InitWithoutSeed(GoodPlugin):
    def __init__(self, env) -> None:
        self.action_space = env.action_space


class PredictWithoutDeterministic(GoodPlugin):
    def predict(self, observation, state=None, episode_start=None):  # type: ignore[override]
        raise NotImplementedError


class ModesAsAString(GoodPlugin):
    action_modes = "strata"  # type: ignore[assignment]


class SuffixWithoutDot(GoodPlugin):
    file_suffix = "json"


def test_plugin_builds_with_hyperparameters(envs: dict[str, gym.Env]) -> None:
    agent = make_agent(f"{__name__}:GoodPlugin", envs["strata"], seed=0, scale=0.25)
    assert isinstance(agent, GoodPlugin) and agent.scale == 0.25
    spec = get_spec(f"{__name__}:GoodPlugin")
    assert spec.kind == "plugin" and spec.default_action_mode == "strata"
    with pytest.raises(AgentError, match="GoodPlugin.*discrete"):
        spec.resolve_action_mode("discrete")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:Sampler", "cannot import module 'no_such_module_xyz' for class Sampler"),
        (f"{__name__}:Missing", "has no class Missing"),
        (f"{__name__}:NoPredict", "class NoPredict lacks predict"),
        ("just_a_module:", "expected 'package.module:ClassName'"),
        (f"{__name__}:LoadWithoutClassmethod", r"LoadWithoutClassmethod.load must be a classmethod"),
        (f"{__name__}:InitWithoutSeed", r"InitWithoutSeed.__init__\(env\).* cannot be called as __init__\(env, seed\)"),
        (f"{__name__}:PredictWithoutDeterministic", r"PredictWithoutDeterministic.predict.*deterministic"),
    ],
)
def test_plugin_errors_name_the_class(target: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        get_spec(target)


def test_plugin_action_modes_as_a_string_and_a_suffix_without_a_dot() -> None:
    assert get_spec(f"{__name__}:ModesAsAString").action_modes == ("strata",)
    with pytest.raises(AgentError, match="SuffixWithoutDot has file_suffix 'json'; expected '.ext'"):
        get_spec(f"{__name__}:SuffixWithoutDot")


class AsksForVecEnv(GoodPlugin):
    env_api = "sb3"


class UnknownEnvApi(GoodPlugin):
    env_api = "rllib"


def test_a_plugin_gets_a_gymnasium_env_unless_it_asks_for_sb3_s() -> None:
    assert get_spec(f"{__name__}:GoodPlugin").env_api == "gymnasium"
    assert get_spec(f"{__name__}:AsksForVecEnv").env_api == "sb3"
    assert get_spec("ppo").env_api == "sb3" and get_spec("uniform").env_api == "sb3"
    with pytest.raises(AgentError, match="UnknownEnvApi has env_api 'rllib'; expected one of 'gymnasium', 'sb3'"):
        get_spec(f"{__name__}:UnknownEnvApi")


def test_a_plugin_builds_on_a_gymnasium_vector_env_from_its_single_spaces() -> None:
    envs = gym.make_vec(ENV_ID_BY_MODE["strata"], num_envs=2, vectorization_mode="vector_entry_point", **TINY)
    try:
        agent = make_agent(f"{__name__}:GoodPlugin", envs, seed=0)
        assert isinstance(agent, GoodPlugin)
    finally:
        envs.close()
    quantile = gym.make_vec(ENV_ID_BY_MODE["quantile"], num_envs=2, vectorization_mode="vector_entry_point", **TINY)
    try:
        with pytest.raises(AgentError, match="hard_mining.*cannot act in"):
            make_agent("hard_mining", quantile)
    finally:
        quantile.close()


def _spaces(n_groups: int, discrete: bool = False) -> HasSpaces:
    """An object with the spaces of an env of ``n_groups`` groups (what the samplers read)."""

    class Spaces:
        action_space = (
            spaces.Discrete(n_groups + 1) if discrete else spaces.Box(-1.0, 1.0, (n_groups,), dtype=np.float32)
        )
        observation_space = spaces.Box(-20.0, 20.0, (3 * n_groups + 3,), dtype=np.float32)

    return Spaces()


def _init_parameters(agent_class: type) -> set[str]:
    return set(inspect.signature(agent_class.__init__).parameters)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_oracle_draws_by_every_mask(share: float) -> None:
    """With defect_share 0 no batch patch holds an anomalous pixel; with 1 every one does."""
    env = gym.make(ENV_ID_BY_MODE["strata"], **TINY)
    oracle = OracleSampler(env, defect_share=share)
    base = env.unwrapped
    dataset = load_dataset(base.config.data.dataset, image_size=32)
    image, top, left = base.patch_windows
    size = base.config.patch_size
    drawn: list[np.ndarray] = []
    installed: list = []
    base.set_patch_draw = lambda draw: installed.append(draw)  # type: ignore[method-assign]
    oracle.prepare_env(env)  # hands the draw it installs to the recorder below
    del base.set_patch_draw
    original = installed[0]

    def recording(rng: np.random.Generator, batch: int) -> np.ndarray:
        ids = original(rng, batch)
        drawn.append(ids)
        return ids

    base.set_patch_draw(recording)
    observation, _ = env.reset(seed=0)
    for _ in range(base.config.n_steps):
        action, _ = oracle.predict(observation)
        observation, *_ = env.step(action)
    ids = np.concatenate(drawn)
    assert len(ids) == base.config.episode_length * base.config.batch_size
    touched = np.array([dataset.masks[image[i], top[i] : top[i] + size, left[i] : left[i] + size].any() for i in ids])
    assert touched.all() if share == 1.0 else not touched.any()
    np.testing.assert_array_equal(oracle.predict(observation)[0], np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="defect_share"):
        OracleSampler(env, defect_share=1.5)
