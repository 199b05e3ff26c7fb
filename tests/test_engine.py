"""The episode engine's own contract: its draws, the numbers it keeps, and the package's module seams."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym.engine import draw_groups

SMALL = {"episode_length": 20, "profile_length": 4, "batch_size": 8, "image_size": 32, "patch_size": 8, "device": "cpu"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("composition", [[0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]])
def test_group_draws_are_numpys_choice_from_the_same_stream(composition: list[float]) -> None:
    p = np.asarray(composition)
    ours, numpys = np.random.default_rng(4), np.random.default_rng(4)
    for size in (1, 8, 257):
        np.testing.assert_array_equal(draw_groups(ours, p, size), numpys.choice(len(p), size=size, p=p))
    assert ours.random() == numpys.random()  # both streams moved by the same draws


# One short episode per id, at a fixed share of 0.5 (strata: the action 0.5 for every stratum), one torch
# thread. The numbers are those of revision b34ca80, before the episode engine: the engine changed the
# code, not a single trajectory. On another CPU the kernels may round differently by ~1e-7 in a loss;
# the tolerances allow that, not a different episode.
PINNED = {
    "nbs_gym/NeuralBatchSampling-v1": (0.9031475648966133, 0.8832535195082656, 0.02300284057855606, 169.46100200340152),
    "nbs_gym/NeuralBatchSamplingQuantile-v1": (
        0.9031475648966133, 0.8841083326102404, 0.018946977332234383, 167.68741594348103,
    ),
}  # fmt: skip


@pytest.mark.parametrize("env_id", sorted(PINNED))
def test_a_short_episode_keeps_its_numbers(env_id: str) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = gym.make(env_id, **SMALL)
        env.reset(seed=7)
        action = np.full(env.action_space.shape, 0.5, np.float32)
        rewards, terminated = [], False
        while not terminated:
            _, reward, terminated, _, info = env.step(action)
            rewards.append(reward)
    finally:
        torch.set_num_threads(threads)
    initial, final, ae_loss, pool_loss = PINNED[env_id]
    assert info["initial_separation"] == pytest.approx(initial, rel=1e-6)
    assert info["separation"] == pytest.approx(final, rel=1e-5)
    assert sum(rewards) == pytest.approx(final - initial, abs=1e-9)
    assert info["ae_loss"] == pytest.approx(ae_loss, rel=1e-4)
    assert float(env.unwrapped.patch_losses.sum()) == pytest.approx(pool_loss, rel=1e-5)


# Private names of other libraries that the package reads on purpose, each for a reason given where it is.
THIRD_PARTY_PRIVATES = {
    "torch.ops.mkldnn._convolution_pointwise",  # torch's fused oneDNN kernels (autoencoder.fused_cpu_ops)
    "torch.ops.mkldnn._convolution_transpose_pointwise",
    "nn.init._calculate_fan_in_and_fan_out",  # torch's default initialisation, drawn from a seeded generator
    "callback._on_step",  # SB3's callback hook, called as the agent calls it (tests/test_train.py)
    "os._exit",  # the standard library's exit without interpreter shutdown (cli.exit_process), public
}
# An expression (a name, then attributes, calls or indexing) and the private attribute read on it.
PRIVATE_READ = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\([^()]*\)|\[[^\]]*\]|\.\w+)*?)\.(_[a-z]\w*)")


def test_no_module_reads_another_modules_private_attributes() -> None:
    """A private attribute (a name with a leading underscore) is read only on ``self`` or ``cls``."""
    found = []
    for folder in ("nbs_gym", "agents", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for owner, name in PRIVATE_READ.findall(code):
                    if owner in ("self", "cls", "super()") or f"{owner}.{name}" in THIRD_PARTY_PRIVATES:
                        continue
                    found.append(f"{path.relative_to(ROOT)}:{number}: {owner}.{name}")
    assert not found, "private attributes read across modules:\n" + "\n".join(found)
