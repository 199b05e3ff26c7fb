"""Loss profiles of one episode: K snapshots of the loss maps of every probe image, and their files.

A profile file is a NumPy ``.npz`` archive written atomically (a temporary file in the same folder,
then ``os.replace``), holding:

==================  =====================  ===================================================
key                 dtype, shape           meaning
==================  =====================  ===================================================
``loss_maps``       float16 (K, N, H, W)   loss map of each probe image at each snapshot
``snapshot_steps``  int64 (K,)             autoencoder updates done at each snapshot
``images``          float16 (N, C, H, W)   the probe images (for figures and image-aware models)
``probe_indices``   int64 (N,)             dataset index of each probe image
``labeled_masks``   bool (n_L, H, W)       masks of the labeled images (the first n_L probes)
``metadata``        0-d unicode            JSON: format version, split, env config, seed, episode
==================  =====================  ===================================================

Probe images are the labeled set L followed by the evaluation set E, in the split's order. The
masks of E are not in the file: only the evaluator reads them, from the dataset itself.

float16 keeps losses from about 6e-8 (smaller ones, a near-perfect reconstruction, lose precision
and the smallest become 0, which the classifier's log floors) up to 65504; a loss map outside
[0, 65504] or not finite is an error at saving, as it is at loading.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nbs_gym.data import SemiSupervisedSplit
from nbs_gym.io import write_atomic

FORMAT_VERSION = 1
_KEYS = ("loss_maps", "snapshot_steps", "images", "probe_indices", "labeled_masks", "metadata")


class ProfileFileError(ValueError):
    """A profile file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class LossProfiles:
    """The loss profiles recorded during one episode.

    Attributes:
        loss_maps: (K, N, H, W) loss map of each probe image at each of the K snapshots.
        snapshot_steps: (K,) updates done at each snapshot.
        images: (N, C, H, W) the probe images.
        probe_indices: (N,) dataset index of each probe image (L first, then E).
        labeled_masks: (n_L, H, W) masks of the labeled probes.
        split: The semi-supervised split of the run.
        metadata: Everything else worth keeping: env config, seed, episode index, dataset spec.
        source: The file the profiles were loaded from (set by :func:`load_profiles`, not saved).
    """

    loss_maps: np.ndarray
    snapshot_steps: np.ndarray
    images: np.ndarray
    probe_indices: np.ndarray
    labeled_masks: np.ndarray
    split: SemiSupervisedSplit
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        if self.loss_maps.ndim != 4:
            raise ProfileFileError(f"loss_maps: expected shape (K, N, H, W), got {self.loss_maps.shape}")
        k, n, h, w = self.loss_maps.shape
        checks = {
            "snapshot_steps": (self.snapshot_steps.shape, (k,)),
            "images": (self.images.shape[:1] + self.images.shape[2:], (n, h, w)),
            "probe_indices": (self.probe_indices.shape, (n,)),
            "labeled_masks": (self.labeled_masks.shape, (len(self.split.labeled), h, w)),
        }
        for name, (got, expected) in checks.items():
            if tuple(got) != tuple(expected):
                raise ProfileFileError(f"{name}: shape {tuple(got)} does not match the loss maps, expected {expected}")
        if len(self.split.probe) != n or not np.array_equal(self.split.probe, self.probe_indices):
            raise ProfileFileError("probe_indices: do not match the split's labeled + evaluation images")
        if not (np.isfinite(self.loss_maps).all() and (self.loss_maps >= 0).all()):
            raise ProfileFileError("loss_maps: expected finite losses >= 0")
        if self.labeled_masks.dtype != np.bool_:
            raise ProfileFileError(f"labeled_masks: expected bool, got {self.labeled_masks.dtype}")
        if not np.issubdtype(self.snapshot_steps.dtype, np.integer):
            raise ProfileFileError(f"snapshot_steps: expected integers, got {self.snapshot_steps.dtype}")
        channels = self.metadata.get("config", {}).get("data", {}).get("channels")
        if channels is not None and self.images.shape[1] != channels:
            raise ProfileFileError(f"images: {self.images.shape[1]} channels, but the run's config has {channels}")

    def error(self, message: str) -> ProfileFileError:
        """A :class:`ProfileFileError` whose message names the file the profiles came from, when known."""
        return ProfileFileError(f"{self.source}: {message}" if self.source else message)

    @property
    def n_labeled(self) -> int:
        """Number of labeled probe images (the first ``n_labeled`` of every probe axis)."""
        return len(self.split.labeled)

    @property
    def profile_length(self) -> int:
        """Number of snapshots K."""
        return int(self.loss_maps.shape[0])

    def labeled_profiles(self) -> tuple[np.ndarray, np.ndarray]:
        """Loss maps (K, n_L, H, W) and masks (n_L, H, W) of the labeled set L."""
        return self.loss_maps[:, : self.n_labeled], self.labeled_masks

    def evaluation_profiles(self) -> np.ndarray:
        """Loss maps (K, n_E, H, W) of the evaluation set E."""
        return self.loss_maps[:, self.n_labeled :]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profiles to ``path`` (``.npz``) atomically; returns the path written."""
        path = Path(path)
        largest, limit = float(self.loss_maps.max(initial=0.0)), float(np.finfo(np.float16).max)
        if largest > limit:
            raise ProfileFileError(f"{path}: loss_maps: a loss of {largest:.4g} is beyond float16's {limit:.0f}")
        metadata = {"format_version": FORMAT_VERSION, "split": json.loads(self.split.to_json()), **self.metadata}
        arrays: dict[str, np.ndarray] = {
            "loss_maps": self.loss_maps.astype(np.float16),
            "snapshot_steps": self.snapshot_steps.astype(np.int64),
            "images": self.images.astype(np.float16),
            "probe_indices": self.probe_indices.astype(np.int64),
            "labeled_masks": self.labeled_masks.astype(bool),
            "metadata": np.array(json.dumps(metadata)),
        }
        write_atomic(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]  # the stub takes any keyword for allow_pickle
        return path


def load_profiles(path: str | os.PathLike[str]) -> LossProfiles:
    """Read a profile file written by :meth:`LossProfiles.save`; needs no environment.

    Raises:
        ProfileFileError: The file is missing, truncated, of another format version or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise ProfileFileError(f"{path}: no such profile file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ProfileFileError(f"{path}: not a profile file, a single array rather than an .npz archive")
        with loaded as archive:
            missing = [key for key in _KEYS if key not in archive.files]
            if missing:
                raise ProfileFileError(f"{path}: not a profile file, missing {', '.join(missing)}")
            arrays = {key: archive[key] for key in _KEYS}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        if isinstance(error, ProfileFileError):
            raise
        if "allow_pickle" in str(error):  # neither an .npz nor an .npy file: numpy falls back to pickle
            raise ProfileFileError(f"{path}: not a profile file (not an .npz archive)") from None
        raise ProfileFileError(f"{path}: unreadable or truncated profile file ({error})") from error
    try:
        metadata = json.loads(str(arrays["metadata"]))
        if not isinstance(metadata, dict):
            raise ValueError(f"expected a JSON object, got {type(metadata).__name__}")
        version = metadata.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ProfileFileError(f"{path}: format version {version}, this nbs_gym reads {FORMAT_VERSION}")
        if "split" not in metadata:
            raise ValueError("no split")
        split = SemiSupervisedSplit.from_json(json.dumps(metadata.pop("split")))
    except ProfileFileError:
        raise
    except ValueError as error:  # JSONDecodeError and DatasetError are ValueErrors
        raise ProfileFileError(f"{path}: metadata: {error}") from error
    try:
        return LossProfiles(
            loss_maps=arrays["loss_maps"].astype(np.float32),
            snapshot_steps=arrays["snapshot_steps"],
            images=arrays["images"].astype(np.float32),
            probe_indices=arrays["probe_indices"],
            labeled_masks=arrays["labeled_masks"],
            split=split,
            metadata=metadata,
            source=str(path),
        )
    except ProfileFileError as error:
        raise ProfileFileError(f"{path}: {error}") from error
