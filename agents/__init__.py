"""Batch samplers for ``nbs_gym``: SB3 agents by name, built-in rules, published rules, the plug-in protocol.

::

    import gymnasium as gym
    import nbs_gym  # noqa: F401
    from agents import make_agent

    env = gym.make("nbs_gym/NeuralBatchSampling-v1")
    agent = make_agent("hard_mining", env, seed=0, strength=0.5)
    action, _ = agent.predict(env.reset(seed=0)[0], deterministic=True)
"""

from agents.baselines import (
    BASELINES,
    BaselineSampler,
    CurriculumSampler,
    HardMiningSampler,
    OracleSampler,
    RandomSampler,
    UniformSampler,
)
from agents.protocol import BatchSampler, PluginError, load_sampler_class
from agents.published import LossRankSampler, PatchRuleSampler, ReducibleLossSampler, SelfPacedSampler
from agents.registry import AGENTS, ENV_ID_BY_MODE, TUNED, AgentError, AgentSpec, TaskDefaults, get_spec, make_agent

__all__ = [
    "AGENTS",
    "BASELINES",
    "ENV_ID_BY_MODE",
    "AgentError",
    "AgentSpec",
    "BaselineSampler",
    "BatchSampler",
    "CurriculumSampler",
    "HardMiningSampler",
    "LossRankSampler",
    "OracleSampler",
    "PatchRuleSampler",
    "PluginError",
    "RandomSampler",
    "ReducibleLossSampler",
    "SelfPacedSampler",
    "TUNED",
    "TaskDefaults",
    "UniformSampler",
    "get_spec",
    "load_sampler_class",
    "make_agent",
]
