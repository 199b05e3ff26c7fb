"""Realistic cases from real photographs: tiles of texture photographs with synthesised, exactly masked defects.

No real anomaly dataset can be downloaded everywhere the package runs, but scikit-image ships a few
photographs of real surfaces. This source cuts square tiles from one of them and adds the defects of
:mod:`nbs_gym.data.synthetic` (tear, hole, stain, scratch, missing) to some, so that the texture has the
statistics of a photograph (its noise, lighting, irregular structure) and every mask is exact.

- Training tiles come from the upper half of the photograph, test tiles from the lower half: a test
  image shows material the autoencoder's normal training images never held, as in MVTec AD.
- Each tile is a seeded random crop of the photograph, downscaled by ``zoom`` first, in one of the 8
  orientations of the square; colour photographs are read as their luma.
- ``hole`` shows a dark backing under the local mean of the tile; ``missing`` replaces the texture by
  that local mean (a smear); the others change the photographed texture itself.

:data:`TUNING_PHOTOS` are the photographs task settings may be tuned on; :data:`REPORTING_PHOTOS` are
kept apart for reporting. The photographs are scikit-image's (``pip install scikit-image``, or the
package's ``photos`` extra), read from its installed data folder, never downloaded.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from nbs_gym.data.base import GOOD, AnomalyDataset, DatasetError
from nbs_gym.data.synthetic import (
    DEFECT_TYPES,
    Texture,
    add_defect,
    assemble_dataset,
    check_generator_arguments,
    spec_with_options,
)

__all__ = ["PHOTOS", "PHOTO_SPEC_OPTIONS", "REPORTING_PHOTOS", "TUNING_PHOTOS", "load_photos"]

PHOTOS: dict[str, str] = {
    "brick": "brick.png",  # a brick wall
    "grass": "grass.png",  # a lawn
    "gravel": "gravel.png",  # gravel
    "ihc": "ihc.png",  # a stained tissue section (immunohistochemistry), in colour
}
"""Photograph name -> its file in scikit-image's data folder."""

TUNING_PHOTOS: tuple[str, ...] = ("brick",)
"""Photographs that settings may be chosen on."""
REPORTING_PHOTOS: tuple[str, ...] = ("grass", "gravel", "ihc")
"""Photographs kept apart from any tuning, for reporting."""

PHOTO_SPEC_OPTIONS: dict[str, tuple[type, object]] = {
    "defect_contrast": (float, 1.0),
    "defect_softness": (float, 0.0),
    "zoom": (float, 0.5),
}
"""Options of a photograph dataset's spec query (``"photo:grass?defect_contrast=0.5"``), with defaults."""

# A smooth "surface" under the texture: the local mean over about a texture element.
_SURFACE_SIGMA = 4.0
_PERIOD = 8.0


def load_photos(
    name: str,
    *,
    image_size: int = 64,
    seed: int = 0,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_per_defect: int = 10,
    defect_contrast: float = 1.0,
    zoom: float = 0.5,
    defect_softness: float = 0.0,
) -> AnomalyDataset:
    """Tiles of one photograph, some with a synthesised defect.

    Args:
        name: A key of :data:`PHOTOS`.
        image_size: Side of each tile, in pixels of the downscaled photograph (at least 32).
        seed: Seed of the crops, orientations and defects; the same arguments give the same arrays.
        n_train: Normal training tiles (upper half of the photograph).
        n_test_good: Normal test tiles (lower half).
        n_test_per_defect: Anomalous test tiles per defect type (lower half).
        defect_contrast: Factor in (0, 1] on each defect's intensity change.
        defect_softness: Width of each defect's Gaussian edge fade (see
            :func:`~nbs_gym.data.synthetic.add_defect`); 0 for sharp edges.
        zoom: Scale factor in (0, 1] applied to the photograph before cropping.

    Returns:
        A grayscale dataset with spec ``"photo:<name>"`` (and the options that differ from their
        defaults as a query), training tiles first, then good test tiles, then each defect type's.

    Raises:
        DatasetError: An unknown photograph, scikit-image not installed, or an argument out of range.
    """
    if name not in PHOTOS:
        raise DatasetError(f"unknown photograph {name!r}; choose one of {', '.join(PHOTOS)}")
    check_generator_arguments(
        image_size, seed, n_train, n_test_good, n_test_per_defect, defect_contrast, defect_softness
    )
    if not (isinstance(zoom, (int, float)) and 0.0 < zoom <= 1.0):
        raise DatasetError(f"zoom: must be in (0, 1], got {zoom!r}")
    photo = _read_photo(name, zoom)
    half = photo.shape[0] // 2
    if half < image_size or photo.shape[1] < image_size:
        raise DatasetError(
            f"image_size: {image_size} does not fit in half of photograph {name!r} at zoom {zoom:g} "
            f"({photo.shape[1]}x{photo.shape[0]} pixels)"
        )
    regions = {"train": photo[:half], "test": photo[half:]}
    photo_key = list(PHOTOS).index(name)
    scale = image_size / 64.0

    def draw(group_key: int, split: str, defect: str, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng([seed, 100 + photo_key, group_key, index])
        tile = _crop(rng, regions[split], image_size)
        if defect == GOOD:
            return tile, np.zeros(tile.shape, dtype=bool), defect
        surface = gaussian_filter(tile, _SURFACE_SIGMA * scale, mode="reflect")
        return (
            *add_defect(rng, defect, Texture(tile, surface, _PERIOD * scale), defect_contrast, defect_softness),
            defect,
        )

    spec = spec_with_options(
        f"photo:{name}",
        {"defect_contrast": defect_contrast, "defect_softness": defect_softness, "zoom": zoom},
        PHOTO_SPEC_OPTIONS,
    )
    return assemble_dataset(spec, (n_train, n_test_good, n_test_per_defect), DEFECT_TYPES, draw)


def _read_photo(name: str, zoom: float) -> np.ndarray:
    """The photograph as float64 luma in [0, 1], downscaled by ``zoom`` (area averaging)."""
    try:
        folder = importlib.resources.files("skimage") / "data"
    except ModuleNotFoundError:
        raise DatasetError(
            f"photograph {name!r}: the photo datasets read the photographs scikit-image ships; "
            'install it with pip install scikit-image (or pip install -e ".[photos]")'
        ) from None
    path = folder / PHOTOS[name]
    try:
        with path.open("rb") as handle:
            picture: Any = Image.open(handle)
            picture = picture.convert("L")
            if zoom != 1.0:
                size = (max(1, round(picture.width * zoom)), max(1, round(picture.height * zoom)))
                picture = picture.resize(size, Image.Resampling.BOX)
            return np.asarray(picture, dtype=np.float64) / 255.0
    except OSError as error:
        raise DatasetError(f"photograph {name!r}: cannot read {path}: {error}") from error


def _crop(rng: np.random.Generator, region: np.ndarray, size: int) -> np.ndarray:
    """A random ``size`` x ``size`` crop of ``region`` in a random one of the square's 8 orientations."""
    top = int(rng.integers(0, region.shape[0] - size + 1))
    left = int(rng.integers(0, region.shape[1] - size + 1))
    tile = region[top : top + size, left : left + size]
    tile = np.rot90(tile, int(rng.integers(4)))
    return np.ascontiguousarray(tile[:, ::-1] if rng.random() < 0.5 else tile)
