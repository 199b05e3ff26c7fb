"""One entry point from a dataset spec string to an :class:`~nbs_gym.data.base.AnomalyDataset`."""

from __future__ import annotations

from typing import Any

from nbs_gym.data.base import AnomalyDataset, DatasetError
from nbs_gym.data.mvtec import load_mvtec
from nbs_gym.data.photos import PHOTO_SPEC_OPTIONS, PHOTOS, load_photos
from nbs_gym.data.synthetic import DEFAULT_CATEGORY, SPEC_OPTIONS, SYNTHETIC_CATEGORIES, generate_synthetic

__all__ = ["load_dataset"]

_VALID_SPECS = (
    f"'synthetic' (= 'synthetic:{DEFAULT_CATEGORY}'), "
    f"'synthetic:<category>' with category one of {', '.join(SYNTHETIC_CATEGORIES)}, "
    f"optionally followed by '?key=value&...' with keys among {', '.join(SPEC_OPTIONS)}, "
    f"'photo:<name>' with name one of {', '.join(PHOTOS)} (tiles of a photograph scikit-image ships, "
    f"options {', '.join(PHOTO_SPEC_OPTIONS)}), "
    "or 'mvtec:<path to a category folder>'"
)


def load_dataset(
    spec: str = "synthetic",
    image_size: int = 64,
    seed: int = 0,
    channels: int | None = None,
    **synthetic_options: Any,
) -> AnomalyDataset:
    """Load the dataset a spec string names.

    Args:
        spec: ``"synthetic"``, ``"synthetic:<category>"`` (see
            :data:`~nbs_gym.data.synthetic.SYNTHETIC_CATEGORIES`), optionally with generator options as
            a query (``"synthetic:fabric?contamination=0.2&contaminating_defect=stain"``, see
            :data:`~nbs_gym.data.synthetic.SPEC_OPTIONS`), ``"photo:<name>"`` (see
            :mod:`nbs_gym.data.photos`, options :data:`~nbs_gym.data.photos.PHOTO_SPEC_OPTIONS`) or
            ``"mvtec:<path>"``.
        image_size: Side length of the returned images, in pixels (synthetic: at least 32).
        seed: Seed of the synthetic generator; folder datasets ignore it.
        channels: 1 or 3 to convert, None to keep the source's channels (synthetic: 1).
        **synthetic_options: Keyword arguments of :func:`~nbs_gym.data.synthetic.generate_synthetic`
            (``n_train``, ``n_test_good``, ``n_test_per_defect``, ``contamination``,
            ``contaminating_defect``, ``defect_contrast``, ``defect_softness``); generated datasets only.

    Returns:
        The dataset, its ``spec`` in canonical form (``"synthetic:fabric"``, options that differ from their
        defaults in a fixed order, ``"mvtec:/abs/path"``).

    Raises:
        DatasetError: If the spec is malformed or names an unknown scheme or category (the message lists
            the valid ones), or the source itself is broken.

    Example:
        >>> dataset = load_dataset("synthetic:grid", image_size=32, n_train=4, n_test_good=2,
        ...                        n_test_per_defect=2)
        >>> dataset.spec, dataset.images.shape, dataset.defect_type_names
        ('synthetic:grid', (16, 1, 32, 32), ('hole', 'missing', 'scratch', 'stain', 'tear'))
    """
    if not isinstance(spec, str):
        raise DatasetError(f"dataset spec must be a string, got {spec!r}; valid specs: {_VALID_SPECS}")
    scheme, separator, argument = spec.partition(":")
    if scheme == "synthetic":
        category, _, query = (argument if separator else DEFAULT_CATEGORY).partition("?")
        options = {**_spec_options(spec, query, SPEC_OPTIONS), **synthetic_options}
        dataset = generate_synthetic(category, image_size=image_size, seed=seed, **options)
    elif scheme == "photo" and argument:
        name, _, query = argument.partition("?")
        options = {**_spec_options(spec, query, PHOTO_SPEC_OPTIONS), **synthetic_options}
        dataset = load_photos(name, image_size=image_size, seed=seed, **options)
    elif scheme == "mvtec" and argument:
        if synthetic_options:
            names = ", ".join(sorted(synthetic_options))
            raise DatasetError(f"{names} only apply to synthetic datasets, not {spec!r}")
        dataset = load_mvtec(argument, image_size=image_size)
    else:
        raise DatasetError(f"unknown dataset spec {spec!r}; valid specs: {_VALID_SPECS}")
    return dataset if channels is None else dataset.with_channels(channels)


def _spec_options(spec: str, query: str, table: dict[str, tuple[type, object]]) -> dict[str, Any]:
    """The generator options of a spec's query (``key=value&...``), typed as ``table`` says."""
    options: dict[str, Any] = {}
    for pair in query.split("&") if query else []:
        key, separator, text = pair.partition("=")
        if not separator or key not in table:
            raise DatasetError(
                f"dataset spec {spec!r}: {pair!r} is not an option; expected key=value with a key among "
                f"{', '.join(table)}"
            )
        kind = table[key][0]
        try:
            options[key] = kind(text)
        except ValueError:
            raise DatasetError(f"dataset spec {spec!r}: {key} must be a {kind.__name__}, got {text!r}") from None
    return options
