"""Category folders in the MVTec AD layout, and BTAD-style variants of it.

Expected layout of one category::

    <root>/train/good/*.png                       normal training images
    <root>/test/good/*.png                        normal test images
    <root>/test/<defect>/*.png                    anomalous test images, one folder per defect type
    <root>/ground_truth/<defect>/<stem>_mask.png  pixel mask of test/<defect>/<stem>.*

BTAD's variants are read the same way: ``ok`` for ``good`` and masks named ``<stem>.*``. Images and masks
may be PNG, JPEG, BMP or TIFF. Parsing (:func:`parse_mvtec_folder`, a sample table from the directory tree
alone) is kept apart from loading (:func:`load_samples`, which opens the files).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nbs_gym.data.base import GOOD, AnomalyDataset, DatasetError, check_int
from nbs_gym.io import current_umask

__all__ = [
    "IMAGE_SUFFIXES",
    "NORMAL_FOLDERS",
    "MVTecSample",
    "load_mvtec",
    "load_samples",
    "parse_mvtec_folder",
    "write_mvtec_folder",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File suffixes read as images (case-insensitive); other files are ignored."""

NORMAL_FOLDERS: tuple[str, ...] = ("good", "ok")
"""Folder names of normal images: MVTec AD's ``good`` and BTAD's ``ok``."""

# Modes PIL reads from single-channel files; everything else is converted to RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


@dataclass(frozen=True)
class MVTecSample:
    """One image of a category folder, before any file is opened.

    Attributes:
        name: Stable id ``"<train|test>/<folder>/<stem>"``, e.g. ``"test/crack/003"``.
        image_path: The image file.
        defect_type: ``"good"`` for normal images, else the test sub-folder's name.
        is_train: True for the normal training images.
        mask_path: The ground-truth mask of an anomalous image; None for normal images.
    """

    name: str
    image_path: Path
    defect_type: str
    is_train: bool
    mask_path: Path | None


def load_mvtec(path: str | Path, image_size: int = 64) -> AnomalyDataset:
    """Read a category folder in the MVTec AD layout.

    Args:
        path: The category folder (the one holding ``train/`` and ``test/``).
        image_size: Side length every image and mask is resized to.

    Returns:
        The dataset, spec ``"mvtec:<absolute path>"``, in the sample table's order.

    Raises:
        DatasetError: If the layout is broken or a file cannot be read; the message names the path.
    """
    root = Path(path).expanduser().resolve()
    return load_samples(parse_mvtec_folder(root), spec=f"mvtec:{root}", image_size=image_size)


def parse_mvtec_folder(root: Path) -> list[MVTecSample]:
    """List a category folder's samples without opening any file.

    Args:
        root: The category folder.

    Returns:
        Training images, then test images by folder name, each group sorted by file name.

    Raises:
        DatasetError: If ``root``, its normal training images or ``test/`` are missing, if ``test/`` holds
            no images, if two files share a stem, or if an anomalous image has no mask.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    train_dir = next((root / "train" / n for n in NORMAL_FOLDERS if (root / "train" / n).is_dir()), None)
    if train_dir is None:
        raise DatasetError(f"normal training images not found: {root / 'train' / 'good'} is not a folder")
    train_images = _image_files(train_dir)
    if not train_images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {train_dir}")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"test images not found: {test_dir} is not a folder")

    samples = [MVTecSample(f"train/{train_dir.name}/{p.stem}", p, GOOD, True, None) for p in train_images]
    for folder in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        is_normal = folder.name in NORMAL_FOLDERS
        mask_dir = root / "ground_truth" / folder.name
        masks = {} if is_normal else _masks_by_stem(mask_dir)
        for image_path in _image_files(folder):
            name = f"test/{folder.name}/{image_path.stem}"
            if is_normal:
                samples.append(MVTecSample(name, image_path, GOOD, False, None))
            else:
                mask_path = _find_mask(masks, image_path, mask_dir)
                samples.append(MVTecSample(name, image_path, folder.name, False, mask_path))
    if len(samples) == len(train_images):
        raise DatasetError(f"no test images in the sub-folders of {test_dir}")
    return samples


def load_samples(samples: Sequence[MVTecSample], spec: str, image_size: int = 64) -> AnomalyDataset:
    """Open, resize and stack the samples' images and masks.

    Images are resized bilinearly (16- and 32-bit integer files as 16-bit intensities, floating-point
    ones as intensities in [0, 1]). Masks are binarised at half their largest value, alpha ignored,
    and a resized pixel is anomalous when the mask covers at least half of it, or, for a mask too
    small to cover half of any, when the mask touches it. If any image is in colour, grayscale
    ones are repeated to three channels.

    Args:
        samples: The sample table, e.g. from :func:`parse_mvtec_folder`.
        spec: Spec string recorded in the dataset.
        image_size: Side length of the output images and masks.

    Returns:
        The dataset, in the order of ``samples``.

    Raises:
        DatasetError: If ``samples`` is empty, a file cannot be read, a mask's size differs from its
            image's or a mask marks no pixel; the message names the file.
    """
    check_int(image_size, "image_size", 1)
    if not samples:
        raise DatasetError(f"no samples to load for {spec}")
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for sample in samples:
        image, original_size = _read_image(sample.image_path, image_size)
        images.append(image)
        if sample.mask_path is None:
            masks.append(np.zeros((image_size, image_size), dtype=bool))
        else:
            masks.append(_read_mask(sample.mask_path, sample.image_path, original_size, image_size))
    channels = max(image.shape[0] for image in images)
    return AnomalyDataset(
        spec=spec,
        images=np.stack([np.repeat(image, channels // image.shape[0], axis=0) for image in images]),
        masks=np.stack(masks),
        is_train=np.array([s.is_train for s in samples], dtype=bool),
        defect_types=tuple(s.defect_type for s in samples),
        names=tuple(s.name for s in samples),
    )


def _image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by name; hidden files (e.g. macOS ``._*`` forks) are skipped."""
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise DatasetError(f"two images share the name {path.stem!r}: {by_stem[path.stem]} and {path}")
        by_stem[path.stem] = path
    return files


def _masks_by_stem(mask_dir: Path) -> dict[str, Path]:
    """Mask files of one defect type by stem; empty if the folder is missing (reported per image)."""
    return {p.stem: p for p in _image_files(mask_dir)} if mask_dir.is_dir() else {}


def _find_mask(masks: dict[str, Path], image_path: Path, mask_dir: Path) -> Path:
    """The mask of ``image_path``: ``<stem>_mask.*`` (MVTec AD) or else ``<stem>.*`` (BTAD)."""
    stem = image_path.stem
    mask = masks.get(f"{stem}_mask", masks.get(stem))
    if mask is None:
        expected = mask_dir / f"{stem}_mask.png"
        raise DatasetError(f"mask not found for anomalous image {image_path}: expected {expected}")
    return mask


def _read_image(path: Path, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the image as (C, H, W) float32 in [0, 1] resized to ``image_size``, and its original size."""
    try:
        with Image.open(path) as source:
            source.load()
            original_size = source.size
            image: Image.Image = source
            if source.mode.startswith("I;16") or source.mode == "I":
                # PIL's convert("L") clips 16- and 32-bit values at 255 instead of rescaling them; "I" is how
                # PIL opens some 16-bit files, so both are read as 16-bit intensities.
                values = np.clip(np.asarray(source, dtype=np.int64), 0, 65535)
                image = Image.fromarray((values >> 8).astype(np.uint8))
            elif source.mode == "F":
                # Floating-point images are read as intensities in [0, 1].
                values = np.clip(np.nan_to_num(np.asarray(source, dtype=np.float64)), 0.0, 1.0)
                image = Image.fromarray(np.rint(values * 255).astype(np.uint8))
            converted = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    except (OSError, ValueError) as exc:  # PIL raises OSError subclasses for unknown or truncated files
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    resized = converted.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), original_size


def _read_mask(path: Path, image_path: Path, image_size_wh: tuple[int, int], image_size: int) -> np.ndarray:
    """Return the mask of an anomalous image binarised and resized to ``image_size``, as (H, W) bool.

    The file is binarised at half its largest value (any channel; an alpha channel is ignored), so
    0/1, 0/255 and 16-bit masks read alike and the ringing of a JPEG mask stays out. Resizing marks
    the pixels that are at least half covered by the mask; a mask too small for that (a thin scratch
    in a large image read small) keeps the pixels it touches, so that no anomalous image loses its
    mask.
    """
    try:
        with Image.open(path) as mask:
            mask.load()
            mask_size = mask.size
            defect = _binary_mask(mask)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    if mask_size != image_size_wh:
        raise DatasetError(
            f"mask {path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
            f"{image_size_wh[0]}x{image_size_wh[1]}"
        )
    if not defect.any():
        raise DatasetError(f"mask {path} marks no pixel, but its image {image_path} is in a defect folder")
    coverage = np.asarray(
        Image.fromarray(defect.astype(np.uint8) * 255).resize((image_size, image_size), Image.Resampling.BOX)
    )
    resized = coverage >= 128
    return resized if resized.any() else coverage > 0


def _binary_mask(mask: Image.Image) -> np.ndarray:
    """A mask file's pixels as (h, w) bool: above half the largest value of any colour channel."""
    if mask.mode in ("P", "PA"):  # palette indices say nothing about intensity
        mask = mask.convert("RGBA" if mask.mode == "PA" else "RGB")
    values = np.asarray(mask)
    if mask.mode in ("LA", "La", "RGBA", "RGBa"):
        values = values[..., :-1]
    if values.ndim == 3:
        values = values.max(axis=2)
    values = np.nan_to_num(values.astype(np.float64))
    peak = values.max()
    return values > peak / 2 if peak > 0 else np.zeros(values.shape, dtype=bool)


def write_mvtec_folder(dataset: AnomalyDataset, root: str | Path) -> Path:
    """Write a dataset as a category folder in the MVTec AD layout, as 8-bit PNG files.

    Image ``i`` goes to ``<root>/<names[i]>.png`` (names are ``"<train|test>/<defect>/<stem>"``), and the
    mask of an anomalous one to ``<root>/ground_truth/<defect>/<stem>_mask.png``, so that
    ``load_mvtec(root)`` reads the dataset back (up to 8-bit quantisation of the intensities). The folder
    is written next to ``root`` and renamed into place, so an interrupted call leaves no partial folder.

    Args:
        dataset: The dataset to write; its names must follow the layout above, as those of the
            synthetic generator and of :func:`load_mvtec` do.
        root: The category folder to create; it must not exist yet.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: If ``root`` exists or a name does not fit the layout.
    """
    root = Path(root)
    if root.exists():
        raise DatasetError(f"{root}: already exists; write_mvtec_folder creates a new category folder")
    for name, defect in zip(dataset.names, dataset.defect_types, strict=True):
        parts = name.split("/")
        if len(parts) != 3 or parts[0] not in ("train", "test") or parts[1] != defect:
            raise DatasetError(f"names: {name!r} does not fit '<train|test>/{defect}/<stem>'")
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        # mkdtemp creates the folder as 0700; give it the permissions a plain mkdir would have.
        os.chmod(scratch, 0o777 & ~current_umask())
        for image, mask, name, defect in zip(
            dataset.images, dataset.masks, dataset.names, dataset.defect_types, strict=True
        ):
            path = scratch / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
            Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(path)
            if defect != GOOD:
                mask_path = scratch / "ground_truth" / defect / f"{path.stem}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        scratch.rename(root)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return root
