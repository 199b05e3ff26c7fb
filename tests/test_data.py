"""Tests of nbs_gym.data: the synthetic dataset, MVTec-style folders, and the semi-supervised split."""

from __future__ import annotations

import json
import shutil
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from nbs_gym.data import (
    SYNTHETIC_CATEGORIES,
    AnomalyDataset,
    DatasetError,
    SemiSupervisedSplit,
    load_dataset,
    make_split,
    write_mvtec_folder,
)
from nbs_gym.data.photos import PHOTOS
from nbs_gym.data.split import labeled_shortfall
from nbs_gym.data.synthetic import (
    DEFECT_TYPES,
    IC_DEFECT_TYPES,
    MAX_COVERAGE,
    MIN_COVERAGE,
    TEXTURES,
    Texture,
    add_defect,
    category_defect_types,
)

SMALL = {"n_train": 4, "n_test_good": 3, "n_test_per_defect": 3}


@pytest.fixture(scope="module")
def fabric() -> AnomalyDataset:
    return load_dataset("synthetic")


# --- synthetic -------------------------------------------------------------------------------------------


def test_default_synthetic_is_fabric_with_documented_layout(fabric: AnomalyDataset) -> None:
    assert fabric.spec == "synthetic:fabric"
    assert fabric.images.shape == (130, 1, 64, 64)
    assert fabric.images.dtype == np.float32
    assert fabric.masks.shape == (130, 64, 64) and fabric.masks.dtype == np.bool_
    assert 0.0 <= fabric.images.min() and fabric.images.max() <= 1.0
    assert (fabric.n_images, fabric.image_size, fabric.channels) == (130, 64, 1)
    assert int(fabric.is_train.sum()) == 60 and not fabric.is_anomalous[fabric.is_train].any()
    counts = Counter(fabric.defect_types)
    assert counts == {"good": 80, **dict.fromkeys(DEFECT_TYPES, 10)}
    assert fabric.defect_type_names == tuple(sorted(DEFECT_TYPES))
    assert fabric.names[0] == "train/good/000" and fabric.names[60] == "test/good/000"
    assert "test/tear/003" in fabric.names


def test_synthetic_is_deterministic_per_seed() -> None:
    first = load_dataset("synthetic:grid", seed=3, **SMALL)
    again = load_dataset("synthetic:grid", seed=3, **SMALL)
    other = load_dataset("synthetic:grid", seed=4, **SMALL)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.masks, again.masks)
    assert first.names == again.names
    assert not np.array_equal(first.images, other.images)


def test_synthetic_image_does_not_depend_on_other_groups_counts() -> None:
    small = load_dataset("synthetic:stochastic", n_train=2, n_test_good=1, n_test_per_defect=1)
    large = load_dataset("synthetic:stochastic", n_train=5, n_test_good=4, n_test_per_defect=2)
    for name in small.names:
        i, j = small.names.index(name), large.names.index(name)
        assert np.array_equal(small.images[i], large.images[j]), name


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_every_category_has_every_defect_with_small_masks(category: str) -> None:
    dataset = load_dataset(f"synthetic:{category}", seed=1)
    assert dataset.defect_type_names == tuple(sorted(category_defect_types(category)))
    assert category_defect_types(category) == (IC_DEFECT_TYPES if category == "ic" else DEFECT_TYPES)
    coverage = dataset.masks.mean(axis=(1, 2))
    anomalous = dataset.is_anomalous
    assert np.all(coverage[~anomalous] == 0.0)
    assert np.all((coverage[anomalous] >= MIN_COVERAGE) & (coverage[anomalous] <= MAX_COVERAGE))
    assert (MIN_COVERAGE, MAX_COVERAGE) == (0.005, 0.05)


@pytest.mark.parametrize(
    ("category", "defect"), [(c, d) for c in SYNTHETIC_CATEGORIES for d in category_defect_types(c)]
)
def test_defect_mask_is_exactly_the_changed_pixels(category: str, defect: str) -> None:
    """Against the defect-free texture (private helpers): visible, exactly masked, never saturated."""
    for index in range(5):
        rng = np.random.default_rng([11, index])
        texture = TEXTURES[category](rng, 64)
        image, mask = add_defect(rng, defect, texture)
        change = np.abs(image.astype(np.float32) - texture.image.astype(np.float32))
        assert np.array_equal(change > 0, mask)
        assert 0.05 < change[mask].mean() < 0.6, (index, change[mask].mean())
        # Only a bright stain over the brightest texture clips, and only on a small part of the stain.
        saturated = (image[mask] >= 0.999) | (image[mask] <= 0.001)
        assert saturated.mean() < 0.25


@pytest.mark.parametrize("defect", [None, "stain"])
def test_contaminated_training_images_hold_exactly_masked_unlabeled_defects(
    fabric: AnomalyDataset, defect: str | None
) -> None:
    dirty = load_dataset("synthetic", contamination=0.2, contaminating_defect=defect)
    train = np.flatnonzero(fabric.is_train)
    hidden = train[:12]  # round(0.2 * 60) training images, the first ones
    assert np.array_equal(dirty.is_train, fabric.is_train) and dirty.names == fabric.names
    assert dirty.masks[hidden].any(axis=(1, 2)).all() and not dirty.masks[train[12:]].any()
    expected = [defect or DEFECT_TYPES[i % len(DEFECT_TYPES)] for i in range(12)]
    assert [dirty.defect_types[i] for i in hidden] == expected
    # Each is the clean training image with one defect: the mask is exactly the pixels that changed.
    changed = dirty.images[hidden, 0] != fabric.images[hidden, 0]
    assert np.array_equal(changed, dirty.masks[hidden])
    np.testing.assert_array_equal(
        dirty.images[~np.isin(np.arange(fabric.n_images), hidden)],
        fabric.images[~np.isin(np.arange(fabric.n_images), hidden)],
    )
    # The split labels test images only, and the same ones as without contamination.
    assert make_split(dirty).labeled == make_split(fabric).labeled
    assert make_split(dirty).train == make_split(fabric).train


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_contrast_scales_the_change_and_keeps_the_mask_exact(defect: str) -> None:
    """Against the defect-free texture (private helpers): half the contrast, half the change."""
    for index in range(3):
        texture = TEXTURES["fabric"](np.random.default_rng([12, index]), 64)
        full, full_mask = add_defect(np.random.default_rng([13, index]), defect, texture)
        faint, faint_mask = add_defect(np.random.default_rng([13, index]), defect, texture, 0.5)
        change = np.abs(faint.astype(np.float32) - texture.image.astype(np.float32))
        assert np.array_equal(change > 0, faint_mask)
        both = full_mask & faint_mask
        assert both.sum() >= 0.8 * faint_mask.sum()
        ratio = change[both] / np.abs(full - texture.image)[both]
        assert abs(float(np.median(ratio)) - 0.5) < 0.05, (index, float(np.median(ratio)))


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_soft_defect_edges_fade_out_and_keep_the_mask_exact(defect: str) -> None:
    """Against the defect-free texture: the mask is the changed pixels, and a soft edge spreads the change
    over more pixels, most of them changed less than the defect's strongest change."""
    sharp_sizes, soft_sizes, sharp_faint, soft_faint = [], [], [], []
    for index in range(6):
        texture = TEXTURES["fabric"](np.random.default_rng([14, index]), 64)
        for softness, sizes, faint in ((0.0, sharp_sizes, sharp_faint), (1.5, soft_sizes, soft_faint)):
            image, mask = add_defect(np.random.default_rng([15, index]), defect, texture, softness=softness)
            change = np.abs(image.astype(np.float32) - texture.image.astype(np.float32))
            assert np.array_equal(change > 0, mask)
            sizes.append(mask.sum())
            faint.append(np.mean(change[mask] < 0.5 * change.max()))
    if defect == "stain":  # already soft: its change fades to nothing at its rim, and no further
        assert soft_sizes == sharp_sizes
        return
    assert np.mean(soft_sizes) > 1.3 * np.mean(sharp_sizes)
    assert np.mean(soft_faint) > np.mean(sharp_faint) + 0.1


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_soft_defects_are_drawn_in_every_category(category: str) -> None:
    soft = load_dataset(f"synthetic:{category}?defect_softness=1.5", image_size=32, **SMALL)
    assert soft.spec == f"synthetic:{category}?defect_softness=1.5"
    coverage = soft.masks[soft.is_anomalous].mean(axis=(1, 2))
    assert ((MIN_COVERAGE <= coverage) & (coverage <= MAX_COVERAGE)).all()


def test_ic_pin_defects_change_one_pin_only() -> None:
    """A missing pin shows the board where the pin was; a bent pin leaves its place."""
    for index in range(4):
        texture = TEXTURES["ic"](np.random.default_rng([21, index]), 64)
        assert texture.render is not None
        np.testing.assert_array_equal(texture.render(-1, 0.0, True), texture.image)
        for pin in range(8):
            gone = texture.render(pin, 0.0, False)
            changed = np.abs(gone - texture.image) >= 0.01
            # Where the pin was, the board (surface) shows, up to the soft edge.
            assert 15 <= changed.sum() <= 60, (index, pin, changed.sum())
            np.testing.assert_allclose(gone[changed].mean(), texture.surface[changed].mean(), atol=0.08)
            bent = texture.render(pin, 0.7, True)
            assert (np.abs(bent - texture.image) >= 0.01).sum() > 10
            assert np.abs(bent - texture.image)[changed].max() > 0.2  # the bent pin left its place


def test_synthetic_good_test_images_are_fresh_draws(fabric: AnomalyDataset) -> None:
    goods = fabric.images[~fabric.is_anomalous, 0]
    assert len({g.tobytes() for g in goods}) == len(goods)


@pytest.mark.parametrize("image_size", [32, 48, 96])
def test_synthetic_image_size(image_size: int) -> None:
    dataset = load_dataset("synthetic:fabric", image_size=image_size, **SMALL)
    assert dataset.images.shape == (4 + 3 + 15, 1, image_size, image_size)
    assert dataset.masks.shape == (22, image_size, image_size)
    coverage = dataset.masks[dataset.is_anomalous].mean(axis=(1, 2))
    assert np.all((coverage >= MIN_COVERAGE) & (coverage <= MAX_COVERAGE))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"n_train": 0}, "n_train"),
        ({"n_test_per_defect": -2}, "n_test_per_defect"),
        ({"contamination": 1.5}, "contamination"),
        ({"contaminating_defect": "dent"}, "contaminating_defect"),
        ({"defect_contrast": 0.0}, "defect_contrast"),
        ({"defect_softness": -1.0}, "defect_softness"),
        ({"defect_softness": 2.0}, "defect_softness"),
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(DatasetError, match=field):
        load_dataset("synthetic", **kwargs)


@pytest.mark.parametrize("spec", ["synthetic:carpet", "synthetic:", "imagenet:/x", "mvtec:", "fabric"])
def test_unknown_spec_lists_valid_choices(spec: str) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(spec)
    assert all(category in str(error.value) for category in SYNTHETIC_CATEGORIES)


def test_channels_conversion(fabric: AnomalyDataset) -> None:
    rgb = load_dataset("synthetic", channels=3, **SMALL)
    assert rgb.images.shape[1] == 3 and np.array_equal(rgb.images[:, 0], rgb.images[:, 2])
    gray = rgb.with_channels(1)
    np.testing.assert_allclose(gray.images[:, 0], rgb.images[:, 0], atol=1e-6)
    assert fabric.with_channels(1) is fabric
    with pytest.raises(DatasetError, match="channels"):
        fabric.with_channels(2)


def test_dataset_validation_names_the_field(fabric: AnomalyDataset) -> None:
    fields = {
        "spec": fabric.spec,
        "images": fabric.images,
        "masks": fabric.masks,
        "is_train": fabric.is_train,
        "defect_types": fabric.defect_types,
        "names": fabric.names,
    }
    broken = {
        "images": fabric.images.astype(np.float64),
        "masks": fabric.masks[:, :10],
        "is_train": fabric.is_train.astype(np.int64),
        "names": fabric.names[:-1] + fabric.names[:1],  # a repeated name
        "defect_types": fabric.defect_types[:-1],
    }
    for field, value in broken.items():
        with pytest.raises(DatasetError, match=field):
            AnomalyDataset(**{**fields, field: value})
    above_one = fabric.images.copy()
    above_one[0, 0, 0, 0] = 1.5
    with pytest.raises(DatasetError, match="images"):
        AnomalyDataset(**{**fields, "images": above_one})
    good_with_mask = fabric.masks.copy()
    good_with_mask[0, 0, 0] = True
    with pytest.raises(DatasetError, match="masks"):
        AnomalyDataset(**{**fields, "masks": good_with_mask})


# --- MVTec-style folders -----------------------------------------------------------------------------------


def _write_image(path: Path, size: tuple[int, int] = (40, 30), mode: str = "L", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _write_mask(path: Path, size: tuple[int, int] = (40, 30), box: tuple[int, int, int, int] = (0, 0, 20, 15)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    Image.fromarray(mask).save(path)


def _make_category(root: Path, rgb_image: str | None = None) -> Path:
    """A tiny MVTec AD category: 3 train, 2 test good, 2 test crack (top-left quarter masked)."""
    for i in range(3):
        _write_image(root / "train" / "good" / f"{i:03d}.png", value=i)
    for i in range(2):
        _write_image(root / "test" / "good" / f"{i:03d}.png", value=10 + i)
        _write_image(root / "test" / "crack" / f"{i:03d}.png", value=20 + i)
        _write_mask(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    if rgb_image is not None:
        _write_image(root / rgb_image, mode="RGB", value=99)
    return root


def test_mvtec_folder_loads_counts_types_masks(tmp_path: Path) -> None:
    root = _make_category(tmp_path / "bottle")
    dataset = load_dataset(f"mvtec:{root}", image_size=16)
    assert dataset.spec == f"mvtec:{root.resolve()}"
    assert dataset.images.shape == (7, 1, 16, 16) and dataset.images.dtype == np.float32
    assert dataset.names == (
        "train/good/000",
        "train/good/001",
        "train/good/002",
        "test/crack/000",
        "test/crack/001",
        "test/good/000",
        "test/good/001",
    )
    assert dataset.is_train.tolist() == [True] * 3 + [False] * 4
    assert dataset.defect_types == ("good",) * 3 + ("crack", "crack", "good", "good")
    assert dataset.defect_type_names == ("crack",)
    # The 40x30 mask's left half of the top half, resized to 16x16 by nearest neighbour.
    expected = np.zeros((16, 16), dtype=bool)
    expected[:8, :8] = True
    assert np.array_equal(dataset.masks[3], expected) and np.array_equal(dataset.masks[4], expected)
    assert not dataset.masks[[0, 1, 2, 5, 6]].any()
    # Bilinear resize of the source pixels, scaled to [0, 1].
    with Image.open(root / "train" / "good" / "001.png") as source:
        resized = np.asarray(source.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(dataset.images[1, 0], resized)


def test_mvtec_rgb_image_makes_the_dataset_rgb(tmp_path: Path) -> None:
    root = _make_category(tmp_path / "cable", rgb_image="test/good/002.png")
    dataset = load_dataset(f"mvtec:{root}", image_size=8)
    assert dataset.channels == 3 and dataset.n_images == 8
    gray = dataset.images[dataset.names.index("train/good/000")]
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[0], gray[2])
    assert load_dataset(f"mvtec:{root}", image_size=8, channels=1).channels == 1


def test_btad_layout_with_ok_folders_and_plain_mask_names(tmp_path: Path) -> None:
    root = tmp_path / "01"
    _write_image(root / "train" / "ok" / "0000.bmp")
    _write_image(root / "test" / "ok" / "0001.bmp")
    _write_image(root / "test" / "ko" / "0002.bmp")
    _write_mask(root / "ground_truth" / "ko" / "0002.png")
    dataset = load_dataset(f"mvtec:{root}", image_size=8)
    assert dataset.names == ("train/ok/0000", "test/ko/0002", "test/ok/0001")
    assert dataset.defect_types == ("good", "ko", "good")
    assert dataset.masks[1].any()


def test_mvtec_spec_rejects_synthetic_sizes(tmp_path: Path) -> None:
    root = _make_category(tmp_path / "bottle")
    with pytest.raises(DatasetError, match="n_train"):
        load_dataset(f"mvtec:{root}", n_train=3)


@pytest.mark.parametrize("channels", [1, 3])
def test_written_mvtec_folder_reads_back_the_dataset(tmp_path: Path, channels: int) -> None:
    dataset = load_dataset("synthetic:grid", image_size=32, channels=channels, **SMALL)
    root = write_mvtec_folder(dataset, tmp_path / "grid")
    again = load_dataset(f"mvtec:{root}", image_size=32)
    order = np.argsort(again.names)
    assert [again.names[i] for i in order] == sorted(dataset.names)
    original = np.argsort(dataset.names)
    np.testing.assert_array_equal(again.masks[order], dataset.masks[original])
    np.testing.assert_allclose(again.images[order], dataset.images[original], atol=0.5 / 255 + 1e-6)
    assert [again.defect_types[i] for i in order] == [dataset.defect_types[i] for i in original]
    assert not [path for path in tmp_path.iterdir() if path.name != "grid"]  # no scratch folder left


def test_write_mvtec_folder_refuses_an_existing_folder_and_foreign_names(tmp_path: Path) -> None:
    dataset = load_dataset("synthetic:grid", image_size=32, **SMALL)
    (tmp_path / "taken").mkdir()
    with pytest.raises(DatasetError, match="taken: already exists"):
        write_mvtec_folder(dataset, tmp_path / "taken")
    renamed = AnomalyDataset(
        images=dataset.images,
        masks=dataset.masks,
        defect_types=dataset.defect_types,
        names=tuple(f"img{i}" for i in range(dataset.n_images)),
        is_train=dataset.is_train,
        spec=dataset.spec,
    )
    with pytest.raises(DatasetError, match="'img0' does not fit"):
        write_mvtec_folder(renamed, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _missing_root(root: Path) -> Path:
    return root / "nowhere"


def _missing_train(root: Path) -> Path:
    shutil.rmtree(root / "train" / "good")
    return root / "train" / "good"


def _empty_train(root: Path) -> Path:
    for path in (root / "train" / "good").iterdir():
        path.unlink()
    return root / "train" / "good"


def _missing_test(root: Path) -> Path:
    shutil.rmtree(root / "test")
    return root / "test"


def _missing_mask(root: Path) -> Path:
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    return root / "ground_truth" / "crack" / "001_mask.png"


def _mask_of_other_size(root: Path) -> Path:
    _write_mask(root / "ground_truth" / "crack" / "000_mask.png", size=(20, 20))
    return root / "ground_truth" / "crack" / "000_mask.png"


def _corrupt_image(root: Path) -> Path:
    (root / "test" / "good" / "001.png").write_bytes(b"not a png at all")
    return root / "test" / "good" / "001.png"


def _truncated_image(root: Path) -> Path:
    path = root / "train" / "good" / "002.png"
    path.write_bytes(path.read_bytes()[:60])
    return path


def _empty_mask(root: Path) -> Path:
    _write_mask(root / "ground_truth" / "crack" / "001_mask.png", box=(0, 0, 0, 0))
    return root / "ground_truth" / "crack" / "001_mask.png"


def _corrupt_mask(root: Path) -> Path:
    (root / "ground_truth" / "crack" / "000_mask.png").write_bytes(b"\x89PNG garbage")
    return root / "ground_truth" / "crack" / "000_mask.png"


@pytest.mark.parametrize(
    "break_folder",
    [
        _missing_root,
        _missing_train,
        _empty_train,
        _missing_test,
        _missing_mask,
        _mask_of_other_size,
        _empty_mask,
        _corrupt_image,
        _truncated_image,
        _corrupt_mask,
    ],
)
def test_broken_folder_error_names_the_path(tmp_path: Path, break_folder: Callable[[Path], Path]) -> None:
    root = _make_category(tmp_path / "bottle")
    offending = break_folder(root)
    target = offending if break_folder is _missing_root else root
    with pytest.raises(DatasetError) as error:
        load_dataset(f"mvtec:{target}", image_size=8)
    assert str(offending.resolve()) in str(error.value)


def _category_with_mask(root: Path, mask: Image.Image, suffix: str = ".png") -> AnomalyDataset:
    """A one-defect category whose only mask is ``mask`` (40x30), loaded at 16x16."""
    _write_image(root / "train" / "good" / "000.png")
    _write_image(root / "test" / "good" / "000.png", value=1)
    _write_image(root / "test" / "crack" / "000.png", value=2)
    mask_path = root / "ground_truth" / "crack" / f"000_mask{suffix}"
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    mask.save(mask_path)
    dataset = load_dataset(f"mvtec:{root}", image_size=16)
    return dataset


def _box(value: float, dtype: type = np.uint8, background: float = 0) -> np.ndarray:
    pixels = np.full((30, 40), background, dtype=dtype)
    pixels[:15, :20] = value
    return pixels


def _rgba(red: int, alpha: int) -> np.ndarray:
    pixels = np.zeros((30, 40, 4), dtype=np.uint8)
    pixels[..., 3] = alpha
    pixels[:15, :20, 0] = red
    return pixels


def _ringing() -> np.ndarray:
    pixels = _box(255)
    pixels[15:17, :22] = pixels[:17, 20:22] = 40  # compression artefacts along the defect's edge
    return pixels


MASK_ENCODINGS = {
    "0/255": lambda: Image.fromarray(_box(255)),
    "0/1": lambda: Image.fromarray(_box(1)),
    "1-bit": lambda: Image.fromarray(_box(255)).convert("1"),
    "16-bit": lambda: Image.fromarray(_box(65535, np.uint16)),
    "palette": lambda: Image.fromarray(_box(255)).convert("P"),
    "RGBA, opaque": lambda: Image.fromarray(_rgba(200, 255)),
    "LA, opaque": lambda: Image.fromarray(np.stack([_box(255), np.full((30, 40), 255, np.uint8)], axis=2), "LA"),
    "ringing edges": lambda: Image.fromarray(_ringing()),
}


@pytest.mark.parametrize("encoding", sorted(MASK_ENCODINGS))
def test_mvtec_masks_read_alike_whatever_their_encoding(tmp_path: Path, encoding: str) -> None:
    dataset = _category_with_mask(tmp_path / "bottle", MASK_ENCODINGS[encoding]())
    expected = np.zeros((16, 16), dtype=bool)
    expected[:8, :8] = True  # the top-left quarter of the 40x30 mask
    np.testing.assert_array_equal(dataset.masks[dataset.names.index("test/crack/000")], expected)


def test_mvtec_mask_marks_pixels_at_least_half_covered(tmp_path: Path) -> None:
    # 40x30 read at 16x16: a resized pixel is 2.5 x 1.875 source pixels. Columns 0-5 cover resized
    # columns 0 and 1 fully and 2.4 of column 2's 2.5 source columns: 0.4 of it, under half.
    pixels = np.zeros((30, 40), dtype=np.uint8)
    pixels[:, :6] = 255
    dataset = _category_with_mask(tmp_path / "bottle", Image.fromarray(pixels))
    mask = dataset.masks[dataset.names.index("test/crack/000")]
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_mvtec_defect_smaller_than_a_resized_pixel_keeps_that_pixel(tmp_path: Path) -> None:
    pixels = np.zeros((30, 40), dtype=np.uint8)
    pixels[10, 10] = 255  # one source pixel: a fifth of the resized pixel (5, 4) that holds it
    dataset = _category_with_mask(tmp_path / "bottle", Image.fromarray(pixels))
    mask = dataset.masks[dataset.names.index("test/crack/000")]
    assert np.argwhere(mask).tolist() == [[5, 4]]


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("I", 30000, (30000 >> 8) / 255), ("I", 70000, 255 / 255), ("F", 0.25, 64 / 255), ("F", 3.0, 1.0)],
)
def test_mvtec_wide_integer_and_float_images_are_scaled(
    tmp_path: Path, mode: str, value: float, expected: float
) -> None:
    root = _make_category(tmp_path / "bottle")
    path = root / "train" / "good" / "000.tif"
    (root / "train" / "good" / "000.png").unlink()
    dtype = np.int32 if mode == "I" else np.float32
    Image.fromarray(np.full((30, 40), value, dtype=dtype), mode).save(path)
    dataset = load_dataset(f"mvtec:{root}", image_size=8)
    np.testing.assert_allclose(dataset.images[dataset.names.index("train/good/000")], expected, atol=1e-6)


def test_written_mvtec_folder_has_the_permissions_of_a_plain_folder(tmp_path: Path) -> None:
    dataset = load_dataset("synthetic:grid", image_size=32, **SMALL)
    plain = tmp_path / "plain"
    plain.mkdir()
    root = write_mvtec_folder(dataset, tmp_path / "grid")
    assert stat.S_IMODE(root.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


# --- semi-supervised split ---------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete(fabric: AnomalyDataset) -> None:
    split = make_split(fabric, n_labeled_anomalous_per_type=3, n_labeled_normal=4, seed=7)
    assert split == make_split(fabric, n_labeled_anomalous_per_type=3, n_labeled_normal=4, seed=7)
    assert split != make_split(fabric, n_labeled_anomalous_per_type=3, n_labeled_normal=4, seed=8)
    train, labeled, evaluation = set(split.train), set(split.labeled), set(split.evaluation)
    assert not (train & labeled or train & evaluation or labeled & evaluation)
    assert train == set(np.flatnonzero(fabric.is_train).tolist())
    assert labeled | evaluation == set(np.flatnonzero(~fabric.is_train).tolist())
    for group in (split.train, split.labeled, split.evaluation):
        assert list(group) == sorted(group)
    types = Counter(fabric.defect_types[i] for i in split.labeled)
    assert types == {"good": 4, **dict.fromkeys(DEFECT_TYPES, 3)}
    assert split.dataset == "synthetic:fabric" and split.seed == 7


def test_split_caps_labeled_counts() -> None:
    dataset = load_dataset("synthetic", n_train=2, n_test_good=3, n_test_per_defect=3)
    split = make_split(dataset, n_labeled_anomalous_per_type=10, n_labeled_normal=10)
    types = Counter(dataset.defect_types[i] for i in split.labeled)
    # Half of each type, rounded down; all good test images but one.
    assert types == {"good": 2, **dict.fromkeys(DEFECT_TYPES, 1)}
    evaluation_types = Counter(dataset.defect_types[i] for i in split.evaluation)
    assert evaluation_types == {"good": 1, **dict.fromkeys(DEFECT_TYPES, 2)}


def test_split_larger_counts_label_a_superset(fabric: AnomalyDataset) -> None:
    small = make_split(fabric, n_labeled_anomalous_per_type=1, n_labeled_normal=1, seed=2)
    large = make_split(fabric, n_labeled_anomalous_per_type=4, n_labeled_normal=3, seed=2)
    assert set(small.labeled) < set(large.labeled)


def test_a_split_that_could_label_no_anomalous_image_is_an_error_naming_the_dataset() -> None:
    dataset = load_dataset("synthetic", n_train=2, n_test_good=2, n_test_per_defect=1)
    with pytest.raises(DatasetError, match=r"dataset synthetic.*no defect type has two.*tear: 1"):
        make_split(dataset)
    split = make_split(dataset, n_labeled_anomalous_per_type=0)  # none requested: no error
    assert all(not dataset.is_anomalous[i] for i in split.labeled)


def test_the_shortfall_names_each_type_labeled_below_the_request(fabric: AnomalyDataset) -> None:
    split = make_split(fabric, n_labeled_anomalous_per_type=1000)
    shortfall = labeled_shortfall(split, fabric)
    assert set(shortfall) == set(fabric.defect_type_names) - {"good"}
    assert all(0 < count < 1000 for count in shortfall.values())
    assert labeled_shortfall(make_split(fabric, n_labeled_anomalous_per_type=1), fabric) == {}


def test_transductive_and_inductive_pools(fabric: AnomalyDataset) -> None:
    transductive = make_split(fabric, transductive=True)
    inductive = make_split(fabric, transductive=False)
    assert transductive.labeled == inductive.labeled
    assert sorted(transductive.pool.tolist()) == list(range(fabric.n_images))
    assert inductive.pool.tolist() == list(inductive.train + inductive.labeled)
    assert transductive.probe.tolist() == list(transductive.labeled + transductive.evaluation)
    assert transductive.pool.dtype == np.int64 and inductive.probe.dtype == np.int64


def test_split_json_round_trip_and_atomic_save(fabric: AnomalyDataset, tmp_path: Path) -> None:
    split = make_split(fabric, seed=5, transductive=False)
    assert SemiSupervisedSplit.from_json(split.to_json()) == split
    path = tmp_path / "split.json"
    split.save(path)
    split.save(path)  # overwriting goes through the same temporary-file-and-replace path
    assert SemiSupervisedSplit.load(path) == split
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]
    assert json.loads(path.read_text())["labeled"] == list(split.labeled)


def test_split_load_errors_name_the_file_or_field(fabric: AnomalyDataset, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="absent.json"):
        SemiSupervisedSplit.load(tmp_path / "absent.json")
    data = json.loads(make_split(fabric).to_json())
    del data["labeled"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"bad\.json.*labeled"):
        SemiSupervisedSplit.load(path)
    overlapping = json.loads(make_split(fabric).to_json())
    overlapping["evaluation"] = sorted(overlapping["evaluation"] + [overlapping["labeled"][0]])
    with pytest.raises(DatasetError, match="disjoint"):
        SemiSupervisedSplit.from_json(json.dumps(overlapping))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_labeled_anomalous_per_type": -1}, "n_labeled_anomalous_per_type"),
        ({"n_labeled_normal": -3}, "n_labeled_normal"),
        ({"n_labeled_normal": 1.5}, "n_labeled_normal"),
        ({"seed": -1}, "seed"),
    ],
)
def test_split_rejects_bad_counts(fabric: AnomalyDataset, kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(DatasetError, match=field):
        make_split(fabric, **kwargs)


def test_split_needs_anomalous_images() -> None:
    only_good = load_dataset("synthetic", n_train=2, n_test_good=2, n_test_per_defect=0)
    with pytest.raises(DatasetError, match="no anomalous test images"):
        make_split(only_good)


# ------------------------------------------------------------------ photographs


@pytest.mark.parametrize("name", PHOTOS)
def test_photo_tiles_hold_exactly_masked_defects_on_the_photographs_texture(name: str) -> None:
    dataset = load_dataset(f"photo:{name}", n_train=6, n_test_good=3, n_test_per_defect=2)
    assert dataset.spec == f"photo:{name}" and dataset.images.shape == (19, 1, 64, 64)
    assert dataset.defect_type_names == tuple(sorted(DEFECT_TYPES))
    anomalous = dataset.is_anomalous
    coverage = dataset.masks[anomalous].mean(axis=(1, 2))
    assert np.all((coverage >= MIN_COVERAGE) & (coverage <= MAX_COVERAGE))
    assert not dataset.masks[~anomalous].any()
    # The same arguments give the same tiles.
    again = load_dataset(f"photo:{name}", n_train=6, n_test_good=3, n_test_per_defect=2)
    np.testing.assert_array_equal(again.images, dataset.images)
    assert dataset.images.std(axis=(1, 2, 3)).min() > 0.02  # real texture, not a flat tile


def test_photo_defect_changes_exactly_its_mask() -> None:
    from nbs_gym.data.photos import _SURFACE_SIGMA, _crop, _read_photo

    region = _read_photo("brick", 0.5)[128:]
    for index, defect in enumerate(DEFECT_TYPES):
        tile = _crop(np.random.default_rng(index), region, 64)
        surface = gaussian_filter(tile, _SURFACE_SIGMA, mode="reflect")
        image, mask = add_defect(np.random.default_rng([5, index]), defect, Texture(tile, surface, 8.0), 0.7)
        change = np.abs(image.astype(np.float32) - tile.astype(np.float32))
        assert np.array_equal(change > 0, mask), defect


def test_photo_training_and_test_tiles_come_from_disjoint_halves() -> None:
    from nbs_gym.data.photos import _read_photo

    photo = _read_photo("gravel", 0.5)
    dataset = load_dataset("photo:gravel", n_train=4, n_test_good=4, n_test_per_defect=0)
    halves = photo[:128], photo[128:]
    for image, train in zip(dataset.images[:, 0], dataset.is_train, strict=True):
        found = [_holds_tile(half, image) for half in halves]
        assert found == [bool(train), not train]


def _holds_tile(region: np.ndarray, tile: np.ndarray) -> bool:
    """Whether some orientation of ``tile`` is a crop of ``region``."""
    size = tile.shape[0]
    for turned in (np.rot90(tile, k) for k in range(4)):
        for candidate in (turned, turned[::-1]):
            for top in range(region.shape[0] - size + 1):
                rows = np.flatnonzero(np.abs(region[top, : region.shape[1] - size + 1] - candidate[0, 0]) < 1e-6)
                for left in rows:
                    if np.allclose(region[top : top + size, left : left + size], candidate, atol=1e-6):
                        return True
    return False


def test_photo_spec_options_and_errors() -> None:
    faint = load_dataset("photo:grass?defect_contrast=0.5", n_train=2, n_test_good=1, n_test_per_defect=1)
    assert faint.spec == "photo:grass?defect_contrast=0.5"
    soft = load_dataset("photo:grass?defect_softness=1.5", n_train=2, n_test_good=1, n_test_per_defect=1)
    sharp = load_dataset("photo:grass", n_train=2, n_test_good=1, n_test_per_defect=1)
    assert soft.spec == "photo:grass?defect_softness=1.5"
    assert soft.masks[soft.is_anomalous].sum() > sharp.masks[sharp.is_anomalous].sum()
    with pytest.raises(DatasetError, match="unknown photograph 'lena'"):
        load_dataset("photo:lena")
    with pytest.raises(DatasetError, match="'size=3' is not an option"):
        load_dataset("photo:grass?size=3")
    with pytest.raises(DatasetError, match="image_size: 200 does not fit"):
        load_dataset("photo:grass", image_size=200)


def test_photo_source_without_scikit_image_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.resources

    def missing(package: str) -> None:
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(DatasetError, match="pip install scikit-image"):
        load_dataset("photo:brick")
