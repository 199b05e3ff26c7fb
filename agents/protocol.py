"""The plug-in protocol: what a custom batch sampler must offer to run under ``nbs_gym.train``.

A batch sampler is any class with Stable-Baselines3's public surface. ``--agent package.module:Class``
imports ``Class`` and builds it as ``Class(env, seed=<--seed>, **hyperparams)``; nothing else is required,
no base class and no registration. A minimal sampler::

    class AlwaysHardest:
        def __init__(self, env, seed=None):
            self.action_space = env.action_space

        def learn(self, total_timesteps, callback=None, progress_bar=False):
            return self

        def predict(self, observation, state=None, episode_start=None, deterministic=False):
            ...  # an action of the env's action space per observation row
            return action, state

        def save(self, path):
            ...  # write exactly one file at ``path``

        @classmethod
        def load(cls, path, env=None):
            ...

The ``env`` a sampler is built on (and ``load`` receives) is what its ``learn`` trains on:

* by default a Gymnasium env: the registered env wrapped in SB3's ``Monitor`` (``info["episode"]`` at
  each episode's end), reset once with ``--seed`` and its action space seeded, so that ``learn`` may
  call ``env.reset()`` with or without a seed and ``env.step(action)`` (the 5-tuple); with
  ``--n-envs N > 1`` a ``gymnasium.vector.VectorEnv`` of N sub-environments (the batched one, or
  ``SyncVectorEnv`` with ``--vec-env dummy``; its ``single_action_space`` is one sub-environment's);
* with ``--checkpoint-freq`` or ``--checkpoint-minutes`` that env sits in a wrapper that saves the
  sampler (``save``) to ``checkpoints/`` as the env steps; ``--resume`` loads the newest of those files
  (or the final one) and calls ``learn`` with the steps left, counted from ``num_timesteps``;
* an SB3 ``VecEnv`` (as SB3 algorithms take) when the class subclasses SB3's ``BaseAlgorithm`` or
  sets ``env_api = "sb3"``.

Optional attributes that ``nbs_gym.train`` reads when present:

* ``env_api``: ``"gymnasium"`` (default) or ``"sb3"``, the training env above.

* ``action_modes``: the env action modes the class supports (default: all of them).
* ``default_action_mode``: the mode picked when the user does not set one (default ``"strata"``, or
  the first of ``action_modes`` when it lacks ``"strata"``).
* ``file_suffix``: suffix of the file ``save`` writes (default ``".zip"``).
* ``num_timesteps``: environment steps trained so far, used by ``--resume`` and to number checkpoints
  (default 0).
* ``prepare_env(env, dataset)``: called with each evaluation env (and its loaded dataset) before the
  sampler acts in it, for reference samplers that change the env's draw (``oracle``).

Training callbacks (TensorBoard episode statistics, periodic checkpoints) are Stable-Baselines3
callbacks; a plug-in's ``learn`` receives them only if the class is a subclass of SB3's
``BaseAlgorithm``, otherwise ``callback=None``. ``nbs_gym.train`` saves it at the end and on Ctrl-C.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["REQUIRED_METHODS", "BatchSampler", "PluginError", "load_sampler_class"]

REQUIRED_METHODS: tuple[str, ...] = ("learn", "predict", "save", "load")
"""Methods a class needs to be loaded by ``--agent module:Class``."""


class PluginError(ValueError):
    """A custom sampler that cannot be imported or lacks part of the protocol; names the class."""


@runtime_checkable
class BatchSampler(Protocol):
    """An agent that picks the batch composition of each autoencoder update (SB3's surface)."""

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> BatchSampler:
        """Train for ``total_timesteps`` environment steps; returns ``self``."""
        ...

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The action for one observation ``(obs_dim,)`` or a batch ``(n_envs, obs_dim)``, and the next state."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the sampler to exactly one file at ``path``."""
        ...

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None) -> BatchSampler:
        """Read a sampler written by :meth:`save`; ``env`` supplies the spaces when given."""
        ...


def load_sampler_class(target: str) -> type:
    """Import the class named by ``"package.module:ClassName"`` and check it follows the protocol.

    Args:
        target: Module path and class name separated by a colon.

    Returns:
        The class itself (not an instance).

    Raises:
        PluginError: The string is malformed, the module cannot be imported, the class does not exist,
            lacks one of :data:`REQUIRED_METHODS`, has a ``load`` that is not a classmethod, or a method
            (or ``__init__``) whose signature cannot take the calls nbs_gym makes; the message names the
            class and the method.
    """
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise PluginError(f"--agent {target!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(
            f"--agent {target}: cannot import module {module_name!r} for class {class_name} ({error})"
        ) from error
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        raise PluginError(f"--agent {target}: module {module_name!r} has no class {class_name}")
    sampler_class: Any = found  # a user's class: its methods are checked below
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(sampler_class, name, None))]
    if missing:
        raise PluginError(
            f"--agent {target}: class {class_name} lacks {', '.join(missing)}; a batch sampler needs "
            f"{', '.join(REQUIRED_METHODS)} (see agents.protocol.BatchSampler)"
        )
    if not isinstance(inspect.getattr_static(sampler_class, "load"), (classmethod, staticmethod)):
        raise PluginError(f"--agent {target}: {class_name}.load must be a classmethod, load(path, env=None)")
    # How nbs_gym calls each method (``None`` stands for the instance); a signature that cannot take the
    # call is reported now rather than after training.
    calls: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {
        "__init__": (sampler_class, ("env",), {"seed": 0}),
        "learn": (sampler_class.learn, (None, 1), {"callback": None, "progress_bar": False}),
        "predict": (
            sampler_class.predict,
            (None, "observation"),
            {"state": None, "episode_start": None, "deterministic": True},
        ),
        "save": (sampler_class.save, (None, "path"), {}),
        "load": (sampler_class.load, ("path",), {"env": None}),
    }
    for name, (function, args, kwargs) in calls.items():
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check
            continue
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            expected = ", ".join([*map(str, args[1:] if name != "__init__" else args), *kwargs])
            raise PluginError(
                f"--agent {target}: {class_name}.{name}{signature} cannot be called as {name}({expected}) ({error})"
            ) from None
    return sampler_class
