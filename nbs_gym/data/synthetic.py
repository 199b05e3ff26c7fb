"""The embedded default dataset: procedural grayscale textures and objects with small, exactly masked defects.

Three categories mimic the texture classes of MVTec AD: ``fabric`` (a woven cloth), ``grid`` (a lattice of
pins joined by bars) and ``stochastic`` (a smooth random surface); each anomalous image holds one of five
defect types (:data:`DEFECT_TYPES`). One category mimics its object classes: ``ic``, an integrated
circuit on a circuit board, its pose a little different in every image, with defects of its own
(:data:`IC_DEFECT_TYPES`: a bent pin, a missing pin, a scratch, a stain). A mask is exactly the set of
pixels the defect changed.

Everything is drawn from ``numpy.random.default_rng`` streams keyed by ``(seed, category, group, index)``, so
a dataset is a pure function of its arguments and an image does not change when other groups' counts do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter

from nbs_gym.data.base import GOOD, AnomalyDataset, DatasetError, check_int

__all__ = [
    "DEFAULT_CATEGORY",
    "SPEC_OPTIONS",
    "DEFECT_TYPES",
    "IC_DEFECT_TYPES",
    "MAX_COVERAGE",
    "MIN_COVERAGE",
    "MIN_IMAGE_SIZE",
    "SYNTHETIC_CATEGORIES",
    "TEXTURES",
    "Texture",
    "add_defect",
    "assemble_dataset",
    "category_defect_types",
    "check_generator_arguments",
    "generate_synthetic",
    "spec_with_options",
]

SYNTHETIC_CATEGORIES: tuple[str, ...] = ("fabric", "grid", "stochastic", "ic")
"""Categories of the synthetic dataset: three textures, then an object."""

DEFAULT_CATEGORY = "fabric"

DEFECT_TYPES: tuple[str, ...] = ("tear", "hole", "stain", "scratch", "missing")
"""Defect types of the texture categories, one folder each in the test set."""
IC_DEFECT_TYPES: tuple[str, ...] = ("bent_pin", "missing_pin", "scratch", "stain")
"""Defect types of the ``ic`` object category."""

MIN_IMAGE_SIZE = 32
MAX_SOFTNESS = 1.5
"""Widest edge fade of a defect (``defect_softness``), in pixels of a 64-pixel image."""

SPEC_OPTIONS: dict[str, tuple[type, object]] = {
    "contamination": (float, 0.0),
    "contaminating_defect": (str, None),
    "defect_contrast": (float, 1.0),
    "defect_softness": (float, 0.0),
}
"""Generator options that change the images, with their types and defaults. A dataset's spec names
those set to other values, as a query (``"synthetic:fabric?contamination=0.2&defect_contrast=0.5"``), so
that the spec alone rebuilds the dataset."""

# Share of the image every defect mask covers. Shapes are drawn to land well inside the range (about
# 1-4 %); the rare draw outside it (a defect over a spot it barely changes) is redrawn.
MIN_COVERAGE = 0.005
MAX_COVERAGE = 0.05

# A pixel counts as changed when it moves by at least 2.5 grey levels of 255; smaller moves are undone, so
# that the mask is exactly the set of pixels that differ from the defect-free texture.
_MIN_CHANGE = 0.01
_MAX_DRAWS = 100
# A soft edge's fade ends where it is under a tenth of the defect's change (about 2 widths out).
_FADE_FLOOR = 0.1
# Texture periods and defect sizes are given for a 64-pixel image and scale with the image, so that a
# dataset looks the same at every resolution.
_REFERENCE_SIZE = 64.0


def generate_synthetic(
    category: str = DEFAULT_CATEGORY,
    *,
    image_size: int = 64,
    seed: int = 0,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_per_defect: int = 10,
    contamination: float = 0.0,
    contaminating_defect: str | None = None,
    defect_contrast: float = 1.0,
    defect_softness: float = 0.0,
) -> AnomalyDataset:
    """Generate a synthetic texture dataset.

    Args:
        category: One of :data:`SYNTHETIC_CATEGORIES`.
        image_size: Side length in pixels, at least 32.
        seed: Non-negative generator seed; the same arguments always give the same arrays.
        n_train: Normal training images (``train/good/*``), at least 1.
        n_test_good: Normal test images (``test/good/*``).
        n_test_per_defect: Anomalous test images per defect type (``test/<defect>/*``).
        contamination: Share of the training images that hold a defect nobody labeled, as a training
            set collected without inspection does (their masks are kept, for mask-reading references
            only; the split treats them as normal training images). 0 keeps ``train/good`` clean.
        contaminating_defect: The defect type of every contaminated training image (one frequent type
            that an autoencoder trained on uniform batches learns to reconstruct); ``None`` cycles
            through the category's defect types.
        defect_contrast: Factor in (0, 1] on the intensity change of every defect (test images and
            contaminated training images alike): 1 gives the defects as drawn, smaller values fainter
            ones. The mask stays the set of pixels that changed by at least 2.5 grey levels.
        defect_softness: Width, in pixels of a 64-pixel image, of a Gaussian fade at every defect's
            edge (0: sharp edges, as drawn); the mask is again exactly the pixels that changed.

    Returns:
        A grayscale dataset with spec ``"synthetic:<category>"`` (followed by the :data:`SPEC_OPTIONS`
        that differ from their defaults, as a query): the training images, then the good test
        images, then each defect type's images in the order of :func:`category_defect_types`.

    Raises:
        DatasetError: If the category is unknown or a size or the seed is out of range.
    """
    if category not in SYNTHETIC_CATEGORIES:
        raise DatasetError(f"unknown synthetic category {category!r}; choose one of {', '.join(SYNTHETIC_CATEGORIES)}")
    check_generator_arguments(
        image_size, seed, n_train, n_test_good, n_test_per_defect, defect_contrast, defect_softness
    )
    if not (isinstance(contamination, (int, float)) and 0.0 <= contamination <= 1.0):
        raise DatasetError(f"contamination: must be a share in [0, 1], got {contamination!r}")
    defect_types_of_category = category_defect_types(category)
    if contaminating_defect is not None and contaminating_defect not in defect_types_of_category:
        raise DatasetError(
            f"contaminating_defect: unknown defect type {contaminating_defect!r} for {category!r}; "
            f"choose one of {', '.join(defect_types_of_category)}"
        )
    n_contaminated = round(contamination * n_train)
    draw_texture = TEXTURES[category]
    category_key = SYNTHETIC_CATEGORIES.index(category)

    def draw(group_key: int, split: str, defect: str, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng([seed, category_key, group_key, index])
        texture = draw_texture(rng, image_size)
        hidden = split == "train" and index < n_contaminated
        if defect == GOOD and not hidden:
            return texture.image, np.zeros((image_size, image_size), dtype=bool), defect
        if hidden:  # a stream of its own, so the texture is the clean training image's
            rng = np.random.default_rng([seed, category_key, group_key, index, 1])
            cycled = defect_types_of_category[index % len(defect_types_of_category)]
            defect = contaminating_defect if contaminating_defect is not None else cycled
        return (*add_defect(rng, defect, texture, defect_contrast, defect_softness), defect)

    options = {
        "contamination": contamination,
        "contaminating_defect": contaminating_defect,
        "defect_contrast": defect_contrast,
        "defect_softness": defect_softness,
    }
    return assemble_dataset(
        spec_with_options(f"synthetic:{category}", options, SPEC_OPTIONS),
        (n_train, n_test_good, n_test_per_defect),
        defect_types_of_category,
        draw,
    )


def check_generator_arguments(
    image_size: int,
    seed: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    defect_contrast: float,
    defect_softness: float = 0.0,
) -> None:
    """Check what every generated dataset takes (the synthetic and the photograph source).

    Raises:
        DatasetError: A size, count or seed out of range, a contrast outside (0, 1] or a softness outside
            [0, MAX_SOFTNESS]; names it.
    """
    check_int(image_size, "image_size", MIN_IMAGE_SIZE)
    check_int(seed, "seed", 0)
    check_int(n_train, "n_train", 1)
    check_int(n_test_good, "n_test_good", 0)
    check_int(n_test_per_defect, "n_test_per_defect", 0)
    if not (isinstance(defect_contrast, (int, float)) and 0.0 < defect_contrast <= 1.0):
        raise DatasetError(f"defect_contrast: must be in (0, 1], got {defect_contrast!r}")
    if not (isinstance(defect_softness, (int, float)) and 0.0 <= defect_softness <= MAX_SOFTNESS):
        raise DatasetError(f"defect_softness: must be in [0, {MAX_SOFTNESS:g}] pixels, got {defect_softness!r}")


def spec_with_options(base: str, options: Mapping[str, object], table: dict[str, tuple[type, object]]) -> str:
    """``base`` followed by the options that differ from their defaults in ``table``, as a query."""
    query = "&".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in options.items()
        if value != table[key][1]
    )
    return base + (f"?{query}" if query else "")


def assemble_dataset(
    spec: str,
    counts: tuple[int, int, int],
    defect_types: tuple[str, ...],
    draw: Callable[[int, str, str, int], tuple[np.ndarray, np.ndarray, str]],
) -> AnomalyDataset:
    """A generated dataset in the layout every generated source shares.

    Args:
        spec: The dataset's spec.
        counts: Training images, good test images, and test images per defect type.
        defect_types: The test folders' defect types, in order.
        draw: ``(group_key, split, folder's defect type, index) -> (image, mask, its defect type)``;
            ``group_key`` numbers the groups (train, good test, then each defect type) for seeding.

    Returns:
        The training images, then the good test images, then each defect type's images.
    """
    n_train, n_test_good, n_test_per_defect = counts
    groups: list[tuple[str, str, int]] = [("train", GOOD, n_train), ("test", GOOD, n_test_good)]
    groups += [("test", defect, n_test_per_defect) for defect in defect_types]
    images, masks, names, types, is_train = [], [], [], [], []
    for group_key, (split, defect, count) in enumerate(groups):
        digits = max(3, len(str(count - 1)))
        for index in range(count):
            image, mask, drawn = draw(group_key, split, defect, index)
            images.append(image)
            masks.append(mask)
            names.append(f"{split}/{defect}/{index:0{digits}d}")
            types.append(drawn)
            is_train.append(split == "train")
    return AnomalyDataset(
        spec=spec,
        images=np.stack(images)[:, None].astype(np.float32),
        masks=np.stack(masks),
        is_train=np.array(is_train, dtype=bool),
        defect_types=tuple(types),
        names=tuple(names),
    )


def category_defect_types(category: str) -> tuple[str, ...]:
    """The defect types of a synthetic category, in the order of its test folders."""
    return IC_DEFECT_TYPES if category == "ic" else DEFECT_TYPES


class Texture(NamedTuple):
    """A defect-free texture and what a defect needs to know about it (the photograph source builds
    these from photographs, too)."""

    image: np.ndarray  # (H, W) float64 in [0, 1]
    surface: np.ndarray  # the image with its elements (threads, pins, relief) removed: level + grain
    period: float  # size of one texture element, in pixels
    # Objects only: renders the same object with one pin changed, render(pin, angle, present).
    render: Callable[[int, float, bool], np.ndarray] | None = None


def _fabric(rng: np.random.Generator, size: int) -> Texture:
    """Plain weave: warp and weft threads alternate on top from one crossing to the next."""
    scale = size / _REFERENCE_SIZE
    period = 8.0 * scale * rng.uniform(0.95, 1.05)
    angle = rng.normal(0.0, 0.03)
    y, x = _coordinates(size)
    u = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0.0, 2.0)
    v = (y * np.cos(angle) - x * np.sin(angle)) / period + rng.uniform(0.0, 2.0)
    column, across_u = np.divmod(u, 1.0)
    row, across_v = np.divmod(v, 1.0)
    warp_on_top = (column + row) % 2 == 0
    # Each thread is brightest on its axis and dark in the gaps, and darkens where it dives under the
    # crossing thread, which gives the weave its relief.
    warp = np.sin(np.pi * across_u) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * across_v))
    weft = 0.9 * np.sin(np.pi * across_v) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * across_u))
    surface = 0.18 + rng.uniform(-0.03, 0.03) + rng.normal(0.0, 0.015, (size, size))
    image = surface + 0.6 * rng.uniform(0.93, 1.07) * np.where(warp_on_top, warp, weft)
    return Texture(np.clip(image, 0.0, 1.0), np.clip(surface, 0.0, 1.0), period)


def _grid(rng: np.random.Generator, size: int) -> Texture:
    """Lattice of dome-shaded pins joined by thin horizontal bars; each pin is slightly misplaced."""
    scale = size / _REFERENCE_SIZE
    period = 10.0 * scale * rng.uniform(0.97, 1.03)
    y, x = _coordinates(size)
    row, within_y = np.divmod(y / period + rng.uniform(0.0, 1.0), 1.0)
    column, within_x = np.divmod(x / period + rng.uniform(0.0, 1.0), 1.0)
    n_cells = int(size / period) + 3
    jitter = rng.normal(0.0, 0.04 * period, (2, n_cells, n_cells))
    cell = (row.astype(int), column.astype(int))
    dy = (within_y - 0.5) * period - jitter[0][cell]
    dx = (within_x - 0.5) * period - jitter[1][cell]
    radius = 0.27 * period
    distance = np.hypot(dy, dx)
    edge = 0.6 * scale  # soft edges about a pixel wide, as an optical image has
    pin = np.clip((radius - distance) / edge + 0.5, 0.0, 1.0) * (1.0 - 0.3 * (distance / radius) ** 2)
    bar = 0.45 * np.clip((0.07 * period - np.abs(dy)) / edge + 0.5, 0.0, 1.0)
    surface = 0.25 + rng.uniform(-0.03, 0.03) + rng.normal(0.0, 0.015, (size, size))
    image = surface + 0.55 * rng.uniform(0.93, 1.07) * np.maximum(pin, bar)
    return Texture(np.clip(image, 0.0, 1.0), np.clip(surface, 0.0, 1.0), period)


def _stochastic(rng: np.random.Generator, size: int) -> Texture:
    """Smooth random surface: white noise low-pass filtered at two scales, a fresh draw per image."""
    scale = size / _REFERENCE_SIZE
    freq_y = np.fft.fftfreq(size)[:, None]
    freq_x = np.fft.rfftfreq(size)[None, :]
    squared_freq = freq_y**2 + freq_x**2
    field = np.zeros((size, size))
    for correlation_length, weight in ((2.0, 1.0), (6.0, 0.7)):
        sigma = correlation_length * scale * rng.uniform(0.85, 1.15)
        # Transfer function of a Gaussian blur with standard deviation sigma (pixels).
        gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * squared_freq)
        layer = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * gain, s=(size, size))
        field += weight * layer / layer.std()
    level = 0.5 + rng.uniform(-0.04, 0.04)
    grain = rng.normal(0.0, 0.01, (size, size))
    image = level + grain + 0.12 * field / field.std()
    # The bare substrate under the relief is darker than its mean, so that a missing patch of relief shows
    # as a flat dull area rather than as an invisible flat patch at the texture's own mean level.
    surface = level - 0.12 + grain
    return Texture(np.clip(image, 0.0, 1.0), np.clip(surface, 0.0, 1.0), 8.0 * scale)


def _ic(rng: np.random.Generator, size: int) -> Texture:
    """An integrated circuit: a dark body with a pin-1 mark and 4 shaded metal pins on each long side, on
    a circuit board with a faint copper trace; position, rotation and size vary a little per image."""
    scale = size / _REFERENCE_SIZE
    y, x = _coordinates(size)
    centre = size / 2 + rng.normal(0.0, 1.5 * scale, 2)
    angle = rng.normal(0.0, 0.05)
    half_u, half_v = 11.0 * scale * rng.uniform(0.97, 1.03), 13.0 * scale * rng.uniform(0.97, 1.03)
    # Body frame: u across (pins stick out along u), v along the pin rows.
    u = (x - centre[1]) * np.cos(angle) + (y - centre[0]) * np.sin(angle)
    v = -(x - centre[1]) * np.sin(angle) + (y - centre[0]) * np.cos(angle)
    edge = 0.6 * scale
    board = 0.42 + rng.uniform(-0.03, 0.03) + rng.normal(0.0, 0.012, (size, size))
    trace_row = rng.uniform(0.15, 0.3) * size * rng.choice([-1.0, 1.0])
    trace = 0.08 * np.clip((1.2 * scale - np.abs(v - trace_row)) / edge + 0.5, 0.0, 1.0)
    surface = np.clip(board + trace, 0.0, 1.0)
    body = np.clip((half_u - np.abs(u)) / edge + 0.5, 0.0, 1.0) * np.clip((half_v - np.abs(v)) / edge + 0.5, 0.0, 1.0)
    mark = np.clip((1.6 * scale - np.hypot(u + 0.55 * half_u, v + 0.65 * half_v)) / edge + 0.5, 0.0, 1.0)
    body_level = 0.12 + 0.03 * (v / half_v) + rng.normal(0.0, 0.006, (size, size))
    pin_length, pin_width = 7.0 * scale, 3.2 * scale
    rows = (np.arange(4) - 1.5) * (2.0 * half_v / 4.0)
    roots = [(-half_u, row, np.pi) for row in rows] + [(half_u, row, 0.0) for row in rows]
    brightness = 0.78 * rng.uniform(0.95, 1.05)

    def render(changed_pin: int = -1, bend: float = 0.0, present: bool = True) -> np.ndarray:
        pins = np.zeros((size, size))
        for k, (root_u, root_v, direction) in enumerate(roots):
            if k == changed_pin and not present:
                continue
            heading = direction + (bend if k == changed_pin else 0.0)
            along = (u - root_u) * np.cos(heading) + (v - root_v) * np.sin(heading)
            across = -(u - root_u) * np.sin(heading) + (v - root_v) * np.cos(heading)
            inside = np.clip((pin_length - np.abs(along - pin_length / 2) * 2) / edge / 2 + 0.5, 0.0, 1.0)
            inside = np.minimum(inside, np.clip((pin_width / 2 - np.abs(across)) / edge + 0.5, 0.0, 1.0))
            shade = 1.0 - 0.35 * (across / (pin_width / 2)) ** 2  # a rounded metal lead: bright on its axis
            pins = np.maximum(pins, inside * np.clip(shade, 0.0, 1.0))
        image = surface * (1.0 - pins) + brightness * pins
        image = image * (1.0 - body) + body_level * body
        return np.clip(image + 0.25 * mark * body, 0.0, 1.0)

    return Texture(render(), surface, 2.0 * pin_width, render)


TEXTURES: dict[str, Callable[[np.random.Generator, int], Texture]] = {  # category -> its drawer
    "fabric": _fabric,
    "grid": _grid,
    "stochastic": _stochastic,
    "ic": _ic,
}


def add_defect(
    rng: np.random.Generator, defect: str, texture: Texture, contrast: float = 1.0, softness: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Return the texture with one ``defect`` and the mask of exactly the pixels it changed.

    The defect's change is scaled by ``contrast``; with ``softness`` > 0 it fades out over a Gaussian of
    that width (pixels of a 64-pixel image) at its edge instead of ending sharply, its core unchanged.
    """
    draw = _DEFECTS[defect]
    size = texture.image.shape[0]
    for _ in range(_MAX_DRAWS):
        candidate, region = draw(rng, texture)
        weight: float | np.ndarray = float(contrast)
        if softness > 0.0:
            fade = gaussian_filter(region.astype(np.float64), softness * size / _REFERENCE_SIZE, mode="constant")
            fade = np.maximum(region, fade / fade.max())
            region = fade >= _FADE_FLOOR  # where the fade is fainter, it ends
            weight = contrast * np.where(region, fade, 0.0)
        if softness > 0.0 or contrast != 1.0:
            candidate = texture.image + weight * (candidate - texture.image)
        candidate = np.clip(candidate, 0.0, 1.0)
        changed = region & (np.abs(candidate - texture.image) >= _MIN_CHANGE)
        if MIN_COVERAGE <= changed.mean() <= MAX_COVERAGE:
            return np.where(changed, candidate, texture.image), changed
    # Unreachable with the shape ranges below; a clear failure beats a silently mislabeled dataset.
    raise RuntimeError(
        f"could not draw a {defect!r} defect covering {MIN_COVERAGE:.1%}-{MAX_COVERAGE:.1%} "
        f"of a {size}x{size} image in {_MAX_DRAWS} draws"
    )


def _tear(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """Irregular thin line, darker (a split) or brighter (frayed fibres) than the texture."""
    image = texture.image
    size = image.shape[0]
    n_steps = 8
    step = rng.uniform(0.3, 0.45) * size / n_steps
    heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, 0.45, n_steps))
    steps = step * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    points = _place(rng, np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)]), size)
    region = _polyline_distance(points, size) <= max(0.9, 1.2 * size / _REFERENCE_SIZE)
    if rng.random() < 0.5:
        return image * rng.uniform(0.3, 0.45), region
    return image + (1.0 - image) * rng.uniform(0.45, 0.6), region


def _hole(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """Irregular blob where the material is gone and a dark backing shows through."""
    size = texture.image.shape[0]
    radius = np.sqrt(rng.uniform(0.012, 0.03) * size**2 / np.pi)
    centre = rng.uniform(1.5 * radius + 1.0, size - 1.5 * radius - 1.0, 2)
    y, x = _coordinates(size)
    dy, dx = y - centre[0], x - centre[1]
    theta = np.arctan2(dy, dx)
    phases = rng.uniform(0.0, 2.0 * np.pi, 2)
    boundary = radius * (1.0 + 0.18 * np.sin(3.0 * theta + phases[0]) + 0.1 * np.sin(5.0 * theta + phases[1]))
    return 0.35 * texture.surface, np.hypot(dy, dx) <= boundary


def _stain(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic smooth shift of intensity, strongest at its centre and fading to nothing at its rim."""
    size = texture.image.shape[0]
    area = rng.uniform(0.015, 0.035) * size**2
    aspect = rng.uniform(1.0, 2.0)
    semi_major = np.sqrt(area * aspect / np.pi)
    semi_minor = semi_major / aspect
    centre = rng.uniform(semi_major + 1.0, size - semi_major - 1.0, 2)
    angle = rng.uniform(0.0, np.pi)
    y, x = _coordinates(size)
    dy, dx = y - centre[0], x - centre[1]
    along = (dx * np.cos(angle) + dy * np.sin(angle)) / semi_major
    across = (dy * np.cos(angle) - dx * np.sin(angle)) / semi_minor
    radius_sq = along**2 + across**2
    amplitude = rng.uniform(0.2, 0.3) * rng.choice([-1.0, 1.0])
    # The mask follows from the change threshold: the faint rim below it is not part of the defect.
    return texture.image + amplitude * np.clip(1.0 - radius_sq, 0.0, None), radius_sq < 1.0


def _scratch(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """Thin straight bright line."""
    image = texture.image
    size = image.shape[0]
    half_length = rng.uniform(0.35, 0.6) * size / 2.0
    angle = rng.uniform(0.0, np.pi)
    ends = np.array([[-1.0], [1.0]]) * half_length * np.array([np.sin(angle), np.cos(angle)])
    points = _place(rng, ends, size)
    # At least ~0.75 px either side keeps a diagonal line connected at small image sizes.
    region = _polyline_distance(points, size) <= max(0.75, 0.8 * size / _REFERENCE_SIZE)
    return image + (1.0 - image) * rng.uniform(0.45, 0.6), region


def _missing(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """Rectangle, about one element wide, where the texture's elements are missing: bare surface shows."""
    size = texture.image.shape[0]
    thickness = texture.period * rng.uniform(0.7, 1.0)
    length = texture.period * rng.uniform(1.6, 2.6)
    height, width = (thickness, length) if rng.random() < 0.5 else (length, thickness)
    top = rng.uniform(1.0, size - height - 1.0)
    left = rng.uniform(1.0, size - width - 1.0)
    y, x = _coordinates(size)
    region = (y >= top) & (y < top + height) & (x >= left) & (x < left + width)
    return texture.surface, region


def _bent_pin(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """One pin bent sideways about its root by 25-50 degrees."""
    assert texture.render is not None, "bent_pin needs an object"
    bend = rng.uniform(0.45, 0.9) * rng.choice([-1.0, 1.0])
    return texture.render(int(rng.integers(8)), bend, True), np.ones(texture.image.shape, dtype=bool)


def _missing_pin(rng: np.random.Generator, texture: Texture) -> tuple[np.ndarray, np.ndarray]:
    """One pin gone: the board shows where it was."""
    assert texture.render is not None, "missing_pin needs an object"
    return texture.render(int(rng.integers(8)), 0.0, False), np.ones(texture.image.shape, dtype=bool)


_DEFECTS: dict[str, Callable[[np.random.Generator, Texture], tuple[np.ndarray, np.ndarray]]] = {
    "bent_pin": _bent_pin,
    "missing_pin": _missing_pin,
    "tear": _tear,
    "hole": _hole,
    "stain": _stain,
    "scratch": _scratch,
    "missing": _missing,
}


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinate of every pixel, as float arrays of shape (size, size)."""
    y, x = np.mgrid[0:size, 0:size]
    return y.astype(np.float64), x.astype(np.float64)


def _place(rng: np.random.Generator, points: np.ndarray, size: int) -> np.ndarray:
    """Translate (y, x) points to a random position where their bounding box lies inside the image."""
    low, high = points.min(axis=0), points.max(axis=0)
    margin = 2.0
    target_low = rng.uniform(margin, size - margin - (high - low))
    return points - low + target_low


def _polyline_distance(points: np.ndarray, size: int) -> np.ndarray:
    """Distance of every pixel to the polyline through ``points`` ((n, 2) array of (y, x))."""
    pixels = np.stack(_coordinates(size))[None]  # (1, 2, H, W)
    start = points[:-1, :, None, None]
    segment = points[1:, :, None, None] - start
    offset = pixels - start
    t = np.clip((offset * segment).sum(axis=1) / (segment**2).sum(axis=1), 0.0, 1.0)
    closest = start + t[:, None] * segment
    return np.sqrt(((pixels - closest) ** 2).sum(axis=1)).min(axis=0)
