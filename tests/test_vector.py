"""The batched engine and the vector env: same numbers as separate autoencoders and single envs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import nbs_gym
from nbs_gym import autoencoder
from nbs_gym.autoencoder import AutoencoderTrainer, BatchedAutoencoderTrainer, ConvAutoencoder
from nbs_gym.config import AutoencoderConfig
from nbs_gym.profiles import load_profiles
from nbs_gym.vector import NeuralBatchSamplingVectorEnv, SB3VecEnv

SMALL = {
    "episode_length": 12,
    "profile_length": 3,
    "batch_size": 8,
    "image_size": 32,
    "patch_size": 8,
    "device": "cpu",
}


def make_vec(num_envs: int, env_id: str = "nbs_gym/NeuralBatchSampling-v0", **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **{**SMALL, **kwargs})


def assert_engine_matches_separate_trainers(
    device: str, models_per_pass: int, rtol: float, atol: float, channels: int = 1
) -> None:
    config = AutoencoderConfig(device=device)
    n = 3
    batched = BatchedAutoencoderTrainer(n, channels, config, models_per_pass=models_per_pass)
    singles = [AutoencoderTrainer(channels, config) for _ in range(n)]
    batched.reset(list(range(n)), [torch.Generator().manual_seed(seed) for seed in range(n)])
    for seed, single in enumerate(singles):
        single.reset(torch.Generator().manual_seed(seed))
    data = torch.Generator().manual_seed(42)
    for _ in range(15):
        patches = torch.rand(n, 8, channels, 16, 16, generator=data).to(device)
        batched_losses = batched.update(patches)
        single_losses = torch.stack([single.update(patches[i]) for i, single in enumerate(singles)])
        torch.testing.assert_close(batched_losses, single_losses, rtol=rtol, atol=atol)
    images = torch.rand(4, channels, 32, 32, generator=data).to(device)
    expected = torch.stack([single.loss_maps(images) for single in singles])
    torch.testing.assert_close(batched.loss_maps(images), expected, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("models_per_pass", [1, 2, 3])
def test_batched_engine_equals_separate_autoencoders(
    models_per_pass: int, layout: str, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The contiguous layout is the one a GPU uses; forcing it here runs that code path on the CPU.
    formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    monkeypatch.setattr(autoencoder, "memory_format", lambda device: formats[layout])
    assert_engine_matches_separate_trainers("cpu", models_per_pass, rtol=1e-5, atol=1e-7, channels=channels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_engine_equals_separate_autoencoders_on_cuda() -> None:
    # cuDNN may run these convolutions in TF32, whose rounding differs between grouped and single calls.
    assert_engine_matches_separate_trainers("cuda", models_per_pass=3, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_trainer_matches_a_plain_float64_module(channels: int, fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels-last, in-place activations, the depthwise output layer and the fused CPU kernels change
    the speed, not the numbers: losses, gradients and loss maps are those of a plain NCHW module in
    float64, to float32 rounding."""
    if fused and not autoencoder.fused_cpu_ops():
        pytest.skip("this torch build has no usable fused oneDNN convolutions")
    if not fused:
        monkeypatch.setattr(autoencoder, "fused_cpu_ops", lambda: False)
    config = AutoencoderConfig(device="cpu")
    trainer = AutoencoderTrainer(channels, config)
    trainer.reset(torch.Generator().manual_seed(4))
    reference = ConvAutoencoder(channels, config.width, config.depth, config.latent_channels).double()
    for module in reference.modules():
        if isinstance(module, torch.nn.LeakyReLU):
            module.inplace = False
    data = torch.Generator().manual_seed(0)
    # The weights are synced before each step: Adam's first steps move a parameter by about the learning
    # rate whatever the size of its gradient, so rounding alone would let two copies drift apart.
    for _ in range(5):
        reference.load_state_dict(trainer.state_dict())
        patches = torch.rand(8, channels, 16, 16, generator=data)
        expected = (reference(patches.double()) - patches.double()).square().mean(dim=(1, 2, 3))
        reference.zero_grad()
        expected.mean().backward()
        losses, gradients = trainer.batched.gradients(patches[None])
        torch.testing.assert_close(losses[0].double(), expected.detach(), rtol=1e-5, atol=1e-7)
        for name, parameter in reference.named_parameters():
            scale = parameter.grad.abs().max().item()
            trained = gradients[name][0].double()
            torch.testing.assert_close(trained, parameter.grad, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(trainer.update(patches), losses[0], rtol=0, atol=0)
    reference.load_state_dict(trainer.state_dict())
    images = torch.rand(5, channels, 32, 32, generator=data)
    with torch.no_grad():
        expected_maps = (reference(images.double()) - images.double()).square().mean(dim=1)
    torch.testing.assert_close(trainer.loss_maps(images, chunk=2).double(), expected_maps, rtol=1e-5, atol=1e-7)


def test_missing_fused_kernels_fall_back_to_plain_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args, **kwargs):
        raise RuntimeError("no such kernel")

    trainer = AutoencoderTrainer(1, AutoencoderConfig(device="cpu"))
    trainer.reset(torch.Generator().manual_seed(0))
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = trainer.loss_maps(images)
    autoencoder.fused_cpu_ops.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", missing)
    try:
        assert not autoencoder.fused_cpu_ops()
        torch.testing.assert_close(trainer.loss_maps(images), expected, rtol=1e-5, atol=1e-7)
    finally:
        autoencoder.fused_cpu_ops.cache_clear()


def test_batched_engine_rejects_patches_of_the_wrong_shape() -> None:
    batched = BatchedAutoencoderTrainer(2, 1, AutoencoderConfig(device="cpu"))
    with pytest.raises(ValueError, match=r"patches: expected shape \(2, B, 1, p, p\)"):
        batched.update(torch.rand(3, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="models_per_pass: must be >= 1, got 0"):
        BatchedAutoencoderTrainer(2, 1, AutoencoderConfig(device="cpu"), models_per_pass=0)


@pytest.mark.parametrize("models_per_pass", [1, 3])
def test_loss_maps_of_chosen_models_are_those_models_maps(models_per_pass: int) -> None:
    batched = BatchedAutoencoderTrainer(3, 1, AutoencoderConfig(device="cpu"), models_per_pass=models_per_pass)
    batched.reset([0, 1, 2], [torch.Generator().manual_seed(seed) for seed in range(3)])
    images = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    everything = batched.loss_maps(images)
    torch.testing.assert_close(batched.loss_maps(images, models=[2, 0]), everything[[2, 0]], rtol=1e-5, atol=1e-7)
    assert batched.loss_maps(images, models=[]).shape == (0, 5, 32, 32)
    with pytest.raises(ValueError, match=r"models: expected indices in \[0, 3\), got \[3\]"):
        batched.loss_maps(images, models=[3])


def test_partial_reset_restarts_only_the_masked_sub_environments() -> None:
    venv = make_vec(3)
    venv.reset(seed=0)
    actions = np.zeros((3, 5), np.float32)
    for _ in range(3):
        before, *_ = venv.step(actions)
    observations, infos = venv.reset(seed=[None, 42, None], options={"reset_mask": np.array([False, True, False])})
    single = gym.make("nbs_gym/NeuralBatchSampling-v0", **SMALL)
    expected, _ = single.reset(seed=42)
    np.testing.assert_allclose(observations[1], expected, atol=1e-5)
    np.testing.assert_array_equal(observations[[0, 2]], before[[0, 2]])
    assert infos["_step"].tolist() == [False, True, False]
    # The others snapshot and finish 3 steps earlier than sub-environment 1, which must not notice.
    for step in range(1, SMALL["episode_length"] + 1):
        after, rewards, terminations, _, infos = venv.step(actions)
        single_obs, single_reward, single_terminated, _, single_info = single.step(actions[1])
        assert terminations.tolist() == [step == 9, step == SMALL["episode_length"], step == 9]
        np.testing.assert_allclose(infos["final_obs"][1] if single_terminated else after[1], single_obs, atol=1e-4)
        np.testing.assert_allclose(rewards[1], single_reward, atol=1e-6)
    assert single_info["n_snapshots"] == SMALL["profile_length"]
    assert infos["final_info"]["n_snapshots"][1] == SMALL["profile_length"]
    with pytest.raises(ValueError, match=r"reset_mask.*shape \(3,\)"):
        venv.reset(options={"reset_mask": np.array([True, False])})


def test_updates_train_inside_a_callers_no_grad_block() -> None:
    """ARS evaluates its candidate policies under ``torch.no_grad()``; the env's updates must still learn."""
    single = AutoencoderTrainer(1, AutoencoderConfig(device="cpu"))
    batched = BatchedAutoencoderTrainer(2, 1, AutoencoderConfig(device="cpu"))
    single.reset(torch.Generator().manual_seed(0))
    batched.reset([0, 1], [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    patches = torch.rand(2, 4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    before = single.state_dict(), batched.params["encoder.0.weight"].clone()
    with torch.no_grad():
        single.update(patches[0])
        batched.update(patches)
    assert all(not torch.equal(old, single.params[name]) for name, old in before[0].items())
    assert not torch.equal(before[1], batched.params["encoder.0.weight"])


def test_resetting_one_slot_leaves_the_others_untouched() -> None:
    batched = BatchedAutoencoderTrainer(2, 1, AutoencoderConfig(device="cpu"))
    batched.reset([0, 1], [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    batched.update(torch.rand(2, 4, 1, 16, 16))
    before = {name: p.detach().clone() for name, p in batched.params.items()}
    batched.reset([0], [torch.Generator().manual_seed(7)])
    fresh = AutoencoderTrainer(1, AutoencoderConfig(device="cpu"))
    fresh.reset(torch.Generator().manual_seed(7))
    for (name, value), (_, reference) in zip(batched.params.items(), fresh.params.items(), strict=True):
        torch.testing.assert_close(value[1], before[name][1], rtol=0, atol=0)
        torch.testing.assert_close(value[0], reference.detach(), rtol=0, atol=0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: with several, the grouped convolutions split their sums unlike single ones do, and a
    patch loss ~1e-9 off can cross a stratum boundary, after which the two draws, and so the trainings,
    part. On one thread they stay within rounding over the compared steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_info(infos: dict, expected: dict) -> None:
    """Batched infos hold the same values: exactly for counts and flags, to float tolerance otherwise."""
    for key, value in expected.items():
        if key in ("final_obs", "final_info"):
            continue
        if isinstance(value, dict):
            assert_same_info(infos[key], value)
        elif np.asarray(value).dtype.kind in "biu":
            np.testing.assert_array_equal(infos[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(np.stack(infos[key]), np.stack(value), atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "env_id",
    [
        env_id if env_id.endswith(("Sampling-v1", "Quantile-v1")) else pytest.param(env_id, marks=pytest.mark.slow)
        for env_id in sorted(nbs_gym.ENV_IDS)
    ],
)
def test_vector_env_matches_gymnasiums_sync_vector_env_of_single_envs(env_id: str, one_thread: None) -> None:
    """Same observations, rewards, flags and info layout as Gymnasium's own SAME_STEP vector env."""
    n, seed = 3, 20
    k = nbs_gym.ENV_IDS[env_id].get("decision_interval", 1)
    length = k * -(-SMALL["episode_length"] // k)  # the small episode, rounded up to whole env steps
    venv = make_vec(n, env_id, episode_length=length)
    sync = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **{**SMALL, "episode_length": length}) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    observations, infos = venv.reset(seed=seed)
    expected_obs, expected_infos = sync.reset(seed=seed)
    np.testing.assert_allclose(observations, expected_obs, atol=1e-5)
    assert sorted(infos) == sorted(expected_infos)
    venv.action_space.seed(0)
    n_steps = venv.unwrapped.config.n_steps
    # The batched autoencoders round differently from single ones (grouped convolutions), by ~1e-9 in a
    # loss at first; training amplifies that tenfold or more per env step, so the comparison stops one
    # step into the episode after the autoreset. The rewards are AUROC gains: a rounding that flips the
    # order of one anomalous-normal pixel pair of the ~1e4 moves one by ~6e-5, hence their 2e-4.
    for step in range(n_steps + 1):  # crosses one autoreset
        actions = venv.action_space.sample()
        observations, rewards, terminations, truncations, infos = venv.step(actions)
        expected_obs, expected_rewards, expected_terminations, expected_truncations, expected_infos = sync.step(actions)
        np.testing.assert_allclose(observations, expected_obs, atol=1e-4)
        np.testing.assert_allclose(rewards, expected_rewards, atol=2e-4)
        np.testing.assert_array_equal(terminations, expected_terminations)
        np.testing.assert_array_equal(truncations, expected_truncations)
        assert sorted(infos) == sorted(expected_infos)
        assert_same_info(infos, expected_infos)
        if step == n_steps - 1:
            assert terminations.all() and infos["_final_obs"].all()
            np.testing.assert_allclose(np.stack(infos["final_obs"]), np.stack(expected_infos["final_obs"]), atol=1e-4)
            assert sorted(infos["final_info"]) == sorted(expected_infos["final_info"])
            assert_same_info(infos["final_info"], expected_infos["final_info"])
            assert infos["final_info"]["step"].tolist() == [length] * n
            assert infos["step"].tolist() == [0] * n  # the info of the next episode's start
        else:
            assert not terminations.any()


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", [{"reward_baseline": "uniform_twin"}, {"decision_interval": 4, "reward_baseline": "uniform_twin"}]
)
def test_vector_env_with_the_twin_and_an_interval_matches_single_envs(options: dict) -> None:
    n, seed = 2, 30
    venv = make_vec(n, **options)
    singles = [gym.make("nbs_gym/NeuralBatchSampling-v0", **SMALL, **options) for _ in range(n)]
    observations, _ = venv.reset(seed=seed)
    expected = [single.reset(seed=seed + i)[0] for i, single in enumerate(singles)]
    np.testing.assert_allclose(observations, np.stack(expected), atol=1e-5)
    venv.action_space.seed(1)
    for _ in range(SMALL["episode_length"] // options.get("decision_interval", 1)):
        actions = venv.action_space.sample()
        observations, rewards, terminations, _, infos = venv.step(actions)
        steps = [single.step(action) for single, action in zip(singles, actions, strict=True)]
        np.testing.assert_allclose(rewards, [step[1] for step in steps], atol=1e-6)
        np.testing.assert_array_equal(terminations, [step[2] for step in steps])
    finals = infos["final_info"]
    np.testing.assert_allclose(finals["twin_separation"], [step[4]["twin_separation"] for step in steps], atol=1e-6)
    assert terminations.all()


def test_vector_env_spaces_and_seeded_reset_are_consistent() -> None:
    venv = make_vec(2)
    assert isinstance(venv.unwrapped, NeuralBatchSamplingVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    first, info = venv.reset(seed=3)
    assert venv.observation_space.contains(first)
    assert info["_separation"].all() and info["separation"].shape == (2,)
    second, _ = venv.reset(seed=3)
    np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="one action per sub-environment"):
        venv.step(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="expected 2 seeds"):
        venv.reset(seed=[1, 2, 3])


def test_a_bad_action_for_one_sub_environment_changes_no_state() -> None:
    venv, reference = make_vec(3), make_vec(3)
    venv.reset(seed=4)
    reference.reset(seed=4)
    bad = np.zeros((3, 5), np.float32)
    bad[2, 0] = 2.0
    with pytest.raises(ValueError, match=r"^actions\[2\]: action: expected values in \[-1, 1\]"):
        venv.step(bad)
    actions = np.full((3, 5), 0.5, np.float32)
    for _ in range(3):
        observations, rewards, *_ = venv.step(actions)
        expected_obs, expected_rewards, *_ = reference.step(actions)
        np.testing.assert_array_equal(observations, expected_obs)
        np.testing.assert_array_equal(rewards, expected_rewards)


def test_stepping_or_partly_resetting_before_a_full_reset_is_an_error() -> None:
    venv = make_vec(2)
    with pytest.raises(gym.error.ResetNeeded, match="before reset"):
        venv.step(np.zeros((2, 5), np.float32))
    with pytest.raises(gym.error.ResetNeeded, match=r"sub-environments \[1\] have never been reset"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    venv.reset(seed=0)
    venv.reset(seed=0, options={"reset_mask": np.array([True, False])})
    venv.step(np.zeros((2, 5), np.float32))


def test_each_sub_environment_writes_its_own_profiles(tmp_path: Path) -> None:
    venv = make_vec(2, profile_dir=tmp_path)
    venv.reset(seed=0)
    for _ in range(SMALL["episode_length"]):
        _, _, terminations, _, infos = venv.step(np.zeros((2, 5), np.float32))
    assert terminations.all()
    paths = list(infos["final_info"]["profile_path"])
    assert [Path(p).parent.name for p in paths] == ["env_000", "env_001"]
    maps = [load_profiles(p).loss_maps for p in paths]
    assert not np.array_equal(maps[0], maps[1])  # different seeds, different autoencoders


def test_sb3_adapter_keeps_reset_infos_and_truncation_flags_as_sb3s_vec_envs_do() -> None:
    vec_env = SB3VecEnv(make_vec(2).unwrapped)
    vec_env.seed(1)
    vec_env.reset()
    first_episode = [info["initial_separation"] for info in vec_env.reset_infos]
    for _ in range(SMALL["episode_length"]):
        _, _, dones, infos = vec_env.step(np.zeros((2, 5), np.float32))
        assert all(info["TimeLimit.truncated"] is False for info in infos)
    assert dones.all()
    assert [info["step"] for info in vec_env.reset_infos] == [0, 0]  # the episodes that just began
    assert [info["initial_separation"] for info in vec_env.reset_infos] != first_episode


def test_sb3_adapter_looks_through_the_wrappers_of_other_vector_envs() -> None:
    from stable_baselines3.common.monitor import Monitor

    sync = gym.vector.SyncVectorEnv(
        [lambda: Monitor(gym.make("CartPole-v1")) for _ in range(2)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    vec_env = SB3VecEnv(sync)
    assert vec_env.env_is_wrapped(Monitor) == [True, True]
    assert vec_env.get_attr("gravity", indices=[1]) == [9.8]
    assert SB3VecEnv(make_vec(2).unwrapped).env_is_wrapped(Monitor) == [False, False]


@pytest.mark.slow
def test_sb3_adapter_meets_the_vecenv_contract_and_ppo_learns_on_it() -> None:
    vec_env = SB3VecEnv(make_vec(2).unwrapped)
    vec_env.seed(5)
    observations = vec_env.reset()
    assert observations.shape == (2, *vec_env.observation_space.shape)
    again = SB3VecEnv(make_vec(2).unwrapped)
    again.seed(5)
    np.testing.assert_array_equal(observations, again.reset())
    dones_seen = 0
    for _ in range(SMALL["episode_length"]):
        observations, rewards, dones, infos = vec_env.step(np.zeros((2, 5), np.float32))
        assert rewards.dtype == np.float32 and len(infos) == 2
        for done, info in zip(dones, infos, strict=True):
            if done:
                dones_seen += 1
                assert vec_env.observation_space.contains(info["terminal_observation"])
                assert info["TimeLimit.truncated"] is False
    assert dones_seen == 2
    assert vec_env.get_attr("image_size") == [32, 32]
    model = PPO("MlpPolicy", vec_env, n_steps=24, batch_size=24, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=288)
    assert model.num_timesteps == 288
