"""Typed configuration of the environment and its parts, validated on construction.

Every field has a default that gives the embedded synthetic task; a bad value raises
:class:`ConfigError` naming the field, so that a misspelt or out-of-range setting is caught
when the environment is built rather than hours into a run.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ActionMode = Literal["strata", "spatial", "discrete", "quantile"]
RewardMeasure = Literal["auroc", "fisher", "prediction_loss"]
RewardMode = Literal["dense", "terminal"]
RewardBaseline = Literal["none", "uniform_twin"]

ACTION_MODES: tuple[str, ...] = ("strata", "spatial", "discrete", "quantile")
REWARD_MEASURES: tuple[str, ...] = ("auroc", "fisher", "prediction_loss")
REWARD_MODES: tuple[str, ...] = ("dense", "terminal")
REWARD_BASELINES: tuple[str, ...] = ("none", "uniform_twin")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, f"got {value!r}, expected one of {', '.join(choices)}")


def _check_types(config: object) -> None:
    """Check every field's value against its annotation (int, float, bool, str, a Literal, optional ones)."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):  # type: ignore[arg-type]
        value, hint = getattr(config, item.name), hints[item.name]
        optional = _is_optional(hint)
        if value is None and optional:
            continue
        allowed = [arg for arg in typing.get_args(hint) if arg is not type(None)] if optional else [hint]
        if not any(_has_type(value, kind) for kind in allowed):
            expected = " or ".join(_type_name(kind) for kind in allowed)
            raise ConfigError(f"{item.name}: expected {expected}, got {value!r} ({type(value).__name__})")


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def _has_type(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is Literal:
        return isinstance(value, str)
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    return {int: "an integer", float: "a number", bool: "a bool", str: "a string"}.get(kind, kind.__name__)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split.

    Attributes:
        dataset: Dataset spec: ``"synthetic"``, ``"synthetic:<category>"`` or ``"mvtec:<path>"``.
        image_size: Side of the square images after resizing, in pixels.
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps the source's channels.
        dataset_seed: Seed of the synthetic generator (ignored by folder datasets).
        split_seed: Seed of the semi-supervised split.
        n_labeled_anomalous_per_type: Labeled anomalous images per defect type (capped at half of the type).
        n_labeled_normal: Labeled normal test images.
        transductive: Whether the evaluation images (without labels) join the autoencoder's pool.
    """

    dataset: str = "synthetic"
    image_size: int = 64
    channels: int | None = None
    dataset_seed: int = 0
    split_seed: int = 0
    n_labeled_anomalous_per_type: int = 5
    n_labeled_normal: int = 5
    transductive: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        _check(isinstance(self.dataset, str) and bool(self.dataset), "dataset", "must be a non-empty spec string")
        _check(self.image_size >= 16, "image_size", f"must be >= 16, got {self.image_size}")
        _check(self.channels in (None, 1, 3), "channels", f"must be None, 1 or 3, got {self.channels}")
        _check(
            self.n_labeled_anomalous_per_type >= 1,
            "n_labeled_anomalous_per_type",
            f"must be >= 1, got {self.n_labeled_anomalous_per_type}",
        )
        _check(self.n_labeled_normal >= 0, "n_labeled_normal", f"must be >= 0, got {self.n_labeled_normal}")


@dataclass(frozen=True)
class AutoencoderConfig:
    """The convolutional autoencoder trained inside each episode.

    Attributes:
        width: Channels of the first encoder layer; each further level doubles it.
        depth: Number of stride-2 levels; the patch size must be divisible by ``2**depth``.
        latent_channels: Channels of the bottleneck; few channels keep the autoencoder from learning the
            identity, so that rare content (defects) is reconstructed worse than the common texture.
        learning_rate: Adam step size.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (cuda when available).
    """

    width: int = 16
    depth: int = 2
    latent_channels: int = 4
    learning_rate: float = 1e-3
    device: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        _check(self.latent_channels >= 1, "latent_channels", f"must be >= 1, got {self.latent_channels}")
        _check(1 <= self.depth <= 5, "depth", f"must be in [1, 5], got {self.depth}")
        _check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            f"must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}",
        )


@dataclass(frozen=True)
class EnvConfig:
    """The reinforcement-learning task: episode, action, observation and reward.

    Attributes:
        data: Dataset and split.
        autoencoder: The autoencoder trained within an episode.
        episode_length: Autoencoder updates per episode (one update per env step).
        batch_size: Patches per autoencoder update.
        patch_size: Side of a training patch, in pixels.
        patch_stride: Stride of the patch grid; ``None`` means half the patch size.
        profile_length: Snapshots K of the loss maps per episode (the loss profile's length).
        action_mode: ``"strata"`` (weights over loss strata), ``"spatial"`` (weights over a grid of
            patch locations), ``"discrete"`` (one stratum, or uniform) or ``"quantile"`` (the share of
            the pool, lowest loss first, that a batch is drawn from uniformly; the strata are observed).
        n_strata: Number of label-free loss strata S.
        spatial_grid: Side G of the G x G grid of locations in the spatial mode.
        temperature: Softmax temperature mapping a Box action to sampling weights.
        reward: Separation measure used as the potential: ``"auroc"``, ``"fisher"`` or ``"prediction_loss"``.
        reward_mode: ``"dense"`` (difference of the potential each step) or ``"terminal"`` (final separation,
            given at the last step).
        context_window: Side (odd, in pixels) of a box around each pixel whose mean loss map joins the
            pixel's own loss profile as features of the reward's read-out, so that the reward sees a
            neighbourhood as the downstream classifier does; 0 reads each pixel's own profile only.
        history: Recent batches over which the sampled share per group is averaged in the observation.
        decision_interval: Autoencoder updates per env step k, all drawn with the step's batch
            composition; ``episode_length`` must be a multiple of it. An episode is
            ``episode_length / k`` env steps, so that long training runs stay short in agent steps.
        reward_baseline: ``"none"``, or ``"uniform_twin"``: a twin autoencoder from the same
            initialisation trains in lockstep on uniform batches from its own random stream, and the
            potential is the separation gained over the twin's, ``S_t - S_t^twin``. Most of the
            initialisation's effect on the separation cancels in the difference.
    """

    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    episode_length: int = 200
    batch_size: int = 32
    patch_size: int = 16
    patch_stride: int | None = None
    profile_length: int = 10
    action_mode: ActionMode = "strata"
    n_strata: int = 5
    spatial_grid: int = 3
    temperature: float = 0.5
    reward: RewardMeasure = "auroc"
    reward_mode: RewardMode = "dense"
    context_window: int = 0
    history: int = 10
    decision_interval: int = 1
    reward_baseline: RewardBaseline = "none"

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.profile_length >= 2, "profile_length", f"must be >= 2, got {self.profile_length}")
        _check(
            self.episode_length >= self.profile_length,
            "episode_length",
            f"must be >= profile_length ({self.profile_length}), got {self.episode_length}",
        )
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.patch_size >= 2**self.autoencoder.depth and self.patch_size % 2**self.autoencoder.depth == 0,
            "patch_size",
            f"must be a positive multiple of 2**depth = {2**self.autoencoder.depth}, got {self.patch_size}",
        )
        _check(
            self.patch_size <= self.data.image_size,
            "patch_size",
            f"must be <= image_size ({self.data.image_size}), got {self.patch_size}",
        )
        _check(
            self.data.image_size % 2**self.autoencoder.depth == 0,
            "image_size",
            f"must be a multiple of 2**depth = {2**self.autoencoder.depth}, got {self.data.image_size}",
        )
        if self.patch_stride is not None:
            _check(self.patch_stride >= 1, "patch_stride", f"must be >= 1, got {self.patch_stride}")
        _check_choice(self.action_mode, "action_mode", ACTION_MODES)
        _check(self.n_strata >= 2, "n_strata", f"must be >= 2, got {self.n_strata}")
        _check(self.spatial_grid >= 1, "spatial_grid", f"must be >= 1, got {self.spatial_grid}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check_choice(self.reward, "reward", REWARD_MEASURES)
        _check_choice(self.reward_mode, "reward_mode", REWARD_MODES)
        window = self.context_window
        _check(
            window == 0 or (0 < window <= self.data.image_size and window % 2 == 1),
            "context_window",
            f"must be 0 or an odd side <= image_size ({self.data.image_size}), got {self.context_window}",
        )
        _check(self.history >= 1, "history", f"must be >= 1, got {self.history}")
        _check(self.decision_interval >= 1, "decision_interval", f"must be >= 1, got {self.decision_interval}")
        _check(
            self.episode_length % self.decision_interval == 0,
            "decision_interval",
            f"episode_length ({self.episode_length}) must be a multiple of it, got {self.decision_interval}",
        )
        _check_choice(self.reward_baseline, "reward_baseline", REWARD_BASELINES)

    @property
    def stride(self) -> int:
        """Stride of the patch grid."""
        return self.patch_stride if self.patch_stride is not None else max(1, self.patch_size // 2)

    @property
    def n_steps(self) -> int:
        """Env steps per episode: ``episode_length / decision_interval``."""
        return self.episode_length // self.decision_interval

    @property
    def n_groups(self) -> int:
        """Number of groups of the patch pool the observation describes (strata or spatial cells); the
        strata and spatial actions weigh each, the discrete one picks one."""
        return self.spatial_grid**2 if self.action_mode == "spatial" else self.n_strata

    @property
    def snapshot_steps(self) -> tuple[int, ...]:
        """Env steps (1-based update counts) after which a snapshot of the loss maps is taken."""
        k, t = self.profile_length, self.episode_length
        return tuple(round((i + 1) * t / k) for i in range(k))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable nested dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EnvConfig:
        """Build a config from flat keyword arguments, as ``gymnasium.make(id, **kwargs)`` passes them.

        Keys of :class:`DataConfig` and :class:`AutoencoderConfig` are accepted at the top level
        (``dataset="mvtec:/data/bottle"``, ``device="cuda"``); an unknown key is a :class:`ConfigError`
        that lists the accepted ones.
        """
        return cls().replace(**kwargs)

    def replace(self, **kwargs: Any) -> EnvConfig:
        """This config with the fields named by flat keyword arguments (as :meth:`from_kwargs` takes them) replaced."""
        groups = {"data": DataConfig, "autoencoder": AutoencoderConfig}
        sub: dict[str, dict[str, Any]] = {name: {} for name in groups}
        own: dict[str, Any] = {}
        own_names = {f.name for f in dataclasses.fields(self)} - set(groups)
        for key, value in kwargs.items():
            if key in own_names:
                own[key] = value
                continue
            for name, klass in groups.items():
                if key in {f.name for f in dataclasses.fields(klass)}:
                    sub[name][key] = value
                    break
            else:
                accepted = sorted(own_names | {f.name for k in groups.values() for f in dataclasses.fields(k)})
                raise ConfigError(f"{key}: unknown setting; accepted: {', '.join(accepted)}")
        return dataclasses.replace(
            self,
            data=dataclasses.replace(self.data, **sub["data"]),
            autoencoder=dataclasses.replace(self.autoencoder, **sub["autoencoder"]),
            **own,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        return cls(
            data=DataConfig(**data.pop("data", {})),
            autoencoder=AutoencoderConfig(**data.pop("autoencoder", {})),
            **data,
        )
