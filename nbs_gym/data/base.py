"""The in-memory dataset every source produces, and the error every source raises."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["GOOD", "AnomalyDataset", "DatasetError", "check_int", "dataset_fingerprint"]

GOOD = "good"
"""Defect type of a normal image."""

# ITU-R 601-2 luma weights, the ones PIL's ``convert("L")`` uses, so that an RGB folder converted here
# matches the same folder read as grayscale by PIL.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DatasetError(ValueError):
    """Bad dataset input; the message names the path or field at fault."""


@dataclass(frozen=True, eq=False)
class AnomalyDataset:
    """Images of one texture or object category with their per-pixel anomaly masks.

    All images share one square size and one channel count. Training images (``is_train``) are meant to
    be normal: folder datasets hold only good ones, while a synthetic dataset can be *contaminated*
    (training images with a defect nobody labeled, whose type and mask are kept for mask-reading
    references only). Test images are good or carry one defect type and a pixel mask.

    Attributes:
        spec: The spec string the dataset was loaded from, in canonical form (``"synthetic:fabric"``,
            ``"mvtec:/abs/path"``).
        images: ``(N, C, H, W)`` float32 in ``[0, 1]``; ``C`` is 1 (grayscale) or 3 (RGB), ``H == W``.
        masks: ``(N, H, W)`` bool, True on anomalous pixels; all False for good images.
        is_train: ``(N,)`` bool, True for the training images (``train/good``).
        defect_types: Per image, ``"good"`` or the defect type name.
        names: Per image, a stable unique id such as ``"train/good/000"`` or ``"test/hole/003"``.

    Raises:
        DatasetError: If shapes, dtypes or values are inconsistent; the message names the field.
    """

    spec: str
    images: np.ndarray
    masks: np.ndarray
    is_train: np.ndarray
    defect_types: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        images, masks, is_train = self.images, self.masks, self.is_train
        _check(isinstance(self.spec, str) and bool(self.spec), "spec", "must be a non-empty string")
        _check(isinstance(images, np.ndarray), "images", f"must be a numpy array, got {type(images).__name__}")
        _check(
            images.ndim == 4 and images.shape[0] >= 1,
            "images",
            f"must have shape (N, C, H, W) with N >= 1, got {images.shape}",
        )
        n, channels, height, width = images.shape
        _check(channels in (1, 3), "images", f"must have 1 or 3 channels, got {channels}")
        _check(height == width and height >= 1, "images", f"must be square, got H={height}, W={width}")
        _check(images.dtype == np.float32, "images", f"must be float32, got {images.dtype}")
        # min/max rather than a boolean mask: one pass each, and NaN fails both comparisons.
        _check(
            bool(images.min() >= 0.0) and bool(images.max() <= 1.0),
            "images",
            "values must be finite and within [0, 1]",
        )
        _check(
            isinstance(masks, np.ndarray) and masks.dtype == np.bool_ and masks.shape == (n, height, width),
            "masks",
            f"must be a bool array of shape {(n, height, width)}, got "
            f"{getattr(masks, 'dtype', type(masks).__name__)} {getattr(masks, 'shape', '')}",
        )
        _check(
            isinstance(is_train, np.ndarray) and is_train.dtype == np.bool_ and is_train.shape == (n,),
            "is_train",
            f"must be a bool array of shape ({n},)",
        )
        for field_name in ("defect_types", "names"):
            value = getattr(self, field_name)
            _check(
                isinstance(value, tuple) and len(value) == n and all(isinstance(v, str) and v for v in value),
                field_name,
                f"must be a tuple of {n} non-empty strings",
            )
        repeated = sorted(name for name, count in Counter(self.names).items() if count > 1)
        _check(not repeated, "names", f"must be unique, repeated: {repeated[:5]}")
        good = ~self.is_anomalous
        bad_masks = [self.names[i] for i in np.flatnonzero(good & masks.any(axis=(1, 2)))]
        _check(not bad_masks, "masks", f"good images must have empty masks, not: {bad_masks[:5]}")

    @property
    def n_images(self) -> int:
        """Number of images N."""
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Side length H (= W) of every image, in pixels."""
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        """Channel count C: 1 (grayscale) or 3 (RGB)."""
        return int(self.images.shape[1])

    @property
    def is_anomalous(self) -> np.ndarray:
        """``(N,)`` bool: True where the defect type is not ``"good"``."""
        return np.array([t != GOOD for t in self.defect_types], dtype=bool)

    @property
    def defect_type_names(self) -> tuple[str, ...]:
        """Sorted unique defect types, ``"good"`` excluded."""
        return tuple(sorted(set(self.defect_types) - {GOOD}))

    def with_channels(self, channels: int) -> AnomalyDataset:
        """Return the dataset with ``channels`` channels (1: luma of RGB; 3: grayscale repeated).

        Args:
            channels: 1 or 3.

        Returns:
            ``self`` if it already has that many channels, else a converted copy.

        Raises:
            DatasetError: If ``channels`` is not 1 or 3.
        """
        _check(channels in (1, 3), "channels", f"must be 1 or 3, got {channels!r}")
        if channels == self.channels:
            return self
        if channels == 3:
            images = np.repeat(self.images, 3, axis=1)
        else:
            luma = np.tensordot(_LUMA, self.images, axes=([0], [1]))[:, None]
            # Rounding can push a white pixel a few ulps above 1.
            images = np.clip(luma, 0.0, 1.0).astype(np.float32)
        return dataclasses.replace(self, images=images)


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise DatasetError(f"AnomalyDataset.{field_name}: {message}")


def check_int(value: object, name: str, minimum: int) -> None:
    """Raise :class:`DatasetError` naming ``name`` unless ``value`` is an integer >= ``minimum``.

    Booleans are rejected although Python counts them as integers: ``image_size=True`` is a mistake.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"{name} must be an integer >= {minimum}, got {value!r}")


def dataset_fingerprint(dataset: AnomalyDataset) -> str:
    """A short digest of a dataset's images and masks, stored in profile files to catch a mismatched dataset."""
    digest = hashlib.sha1(np.ascontiguousarray(dataset.images).tobytes())
    digest.update(np.packbits(dataset.masks).tobytes())
    return digest.hexdigest()[:16]
