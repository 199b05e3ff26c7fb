"""The semi-supervised protocol: which test images are labeled (L) and which only evaluate (E).

- **L, labeled**: a few anomalous test images per defect type plus a few normal test images; only their
  masks reach the reward and the classifier.
- **E, evaluation**: every other test image; its masks reach only the evaluator.
- **AE pool**: the normal training images, L and, in transductive mode, E's images (without labels).

A split is a pure function of (dataset, counts, seed) and is saved beside every run as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from nbs_gym.data.base import AnomalyDataset, DatasetError, check_int
from nbs_gym.io import write_text_atomic

__all__ = ["SemiSupervisedSplit", "labeled_shortfall", "make_split"]

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SemiSupervisedSplit:
    """Indices of one dataset's images in each role of the semi-supervised protocol.

    Attributes:
        dataset: Spec of the dataset the indices refer to.
        seed: Seed the labeled images were drawn with.
        transductive: Whether E's images join the autoencoder's training pool (without labels).
        train: Sorted indices of the normal training images.
        labeled: Sorted indices of L: labeled anomalous and labeled normal test images.
        evaluation: Sorted indices of E: all remaining test images.
        n_labeled_anomalous_per_type: Requested labeled anomalous images per defect type.
        n_labeled_normal: Requested labeled normal test images.

    Raises:
        DatasetError: If a field has the wrong type, a group is unsorted or holds negative or repeated
            indices, or two groups overlap; the message names the field.
    """

    dataset: str
    seed: int
    transductive: bool
    train: tuple[int, ...]
    labeled: tuple[int, ...]
    evaluation: tuple[int, ...]
    n_labeled_anomalous_per_type: int
    n_labeled_normal: int

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise DatasetError(f"SemiSupervisedSplit.dataset: must be a non-empty string, got {self.dataset!r}")
        if not isinstance(self.transductive, bool):
            raise DatasetError(f"SemiSupervisedSplit.transductive: must be a bool, got {self.transductive!r}")
        for name in ("seed", "n_labeled_anomalous_per_type", "n_labeled_normal"):
            check_int(getattr(self, name), f"SemiSupervisedSplit.{name}", 0)
        for name in ("train", "labeled", "evaluation"):
            group = getattr(self, name)
            valid = isinstance(group, tuple) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in group
            )
            if not valid or any(a >= b for a, b in pairwise(group)):
                raise DatasetError(
                    f"SemiSupervisedSplit.{name}: must be a tuple of strictly increasing non-negative ints"
                )
        overlap = (
            (set(self.train) & set(self.labeled))
            | (set(self.train) & set(self.evaluation))
            | (set(self.labeled) & set(self.evaluation))
        )
        if overlap:
            shared = sorted(overlap)[:10]
            raise DatasetError(f"SemiSupervisedSplit: groups must be disjoint, shared: {shared}")

    @property
    def pool(self) -> np.ndarray:
        """Indices the autoencoder trains on: train, then labeled, then (transductive only) evaluation."""
        groups = [self.train, self.labeled] + ([self.evaluation] if self.transductive else [])
        return np.concatenate([np.asarray(g, dtype=np.int64) for g in groups])

    @property
    def probe(self) -> np.ndarray:
        """Indices whose loss maps are recorded: labeled, then evaluation (``probe[:len(labeled)]`` is L)."""
        return np.asarray(self.labeled + self.evaluation, dtype=np.int64)

    def to_json(self) -> str:
        """Serialise to a JSON object holding every field and a format version."""
        fields = dataclasses.asdict(self)
        return json.dumps({"version": _FORMAT_VERSION, **fields}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SemiSupervisedSplit:
        """Parse the output of :meth:`to_json`.

        Raises:
            DatasetError: If the text is not such a JSON object; the message names the field at fault.
        """
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"split is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"split JSON must be an object, got {type(data).__name__}")
        version = data.pop("version", None)
        if version != _FORMAT_VERSION:
            raise DatasetError(f"split JSON field 'version': expected {_FORMAT_VERSION}, got {version!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - data.keys()), sorted(data.keys() - names)
        if missing or unknown:
            raise DatasetError(f"split JSON fields: missing {missing}, unknown {unknown}")
        for name in ("train", "labeled", "evaluation"):
            if not isinstance(data[name], list):
                raise DatasetError(f"split JSON field {name!r}: expected a list, got {data[name]!r}")
            data[name] = tuple(data[name])
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically: readers see the old file or the new one, never half.

        Args:
            path: Destination file; its folder must exist.
        """
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SemiSupervisedSplit:
        """Read a split written by :meth:`save`.

        Raises:
            DatasetError: If the file cannot be read or parsed; the message names the file.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DatasetError(f"cannot read split {path}: {exc}") from exc
        try:
            return cls.from_json(text)
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from exc


def make_split(
    dataset: AnomalyDataset,
    n_labeled_anomalous_per_type: int = 5,
    n_labeled_normal: int = 5,
    seed: int = 0,
    transductive: bool = True,
) -> SemiSupervisedSplit:
    """Draw the labeled set L; every other test image goes to the evaluation set E.

    Per defect type, ``min(n_labeled_anomalous_per_type, n_type // 2)`` images are labeled, so that E keeps
    at least half of every type (and a type with a single image stays wholly in E). Normal test images
    are labeled up to ``n_labeled_normal``, leaving at least one for E when there are two or more. Each
    group is drawn as a prefix of a seeded permutation, so a larger count labels a superset.

    Args:
        dataset: The dataset to split.
        n_labeled_anomalous_per_type: Labeled anomalous images requested per defect type, >= 0.
        n_labeled_normal: Labeled normal test images requested, >= 0.
        seed: Non-negative seed of the draw.
        transductive: Whether E's images join the autoencoder's training pool.

    Returns:
        The split; a pure function of the arguments.

    Raises:
        DatasetError: If a count or the seed is negative or not an integer, if the dataset has no
            anomalous test images, or if anomalous images are requested but no defect type has two (L
            would hold none and the reward would have nothing to separate).
    """
    check_int(n_labeled_anomalous_per_type, "n_labeled_anomalous_per_type", 0)
    check_int(n_labeled_normal, "n_labeled_normal", 0)
    check_int(seed, "seed", 0)
    if not isinstance(transductive, bool):
        raise DatasetError(f"transductive must be a bool, got {transductive!r}")
    anomalous = dataset.is_anomalous
    test = ~dataset.is_train
    if not (anomalous & test).any():
        raise DatasetError(f"dataset {dataset.spec}: no anomalous test images, so nothing can be labeled")

    rng = np.random.default_rng(seed)
    defect_types = np.array(dataset.defect_types)
    labeled: list[int] = []
    # Only test images are labeled: a contaminated training image's defect is, by definition, unknown.
    for defect in dataset.defect_type_names:
        members = rng.permutation(np.flatnonzero((defect_types == defect) & test))
        labeled += members[: min(n_labeled_anomalous_per_type, len(members) // 2)].tolist()
    if n_labeled_anomalous_per_type > 0 and not labeled:
        counts = Counter(dataset.defect_types[i] for i in np.flatnonzero(anomalous & test))
        listed = ", ".join(f"{defect}: {count}" for defect, count in sorted(counts.items()))
        raise DatasetError(
            f"dataset {dataset.spec}: no defect type has two anomalous test images (one to label, one to "
            f"evaluate on), so nothing can be labeled; anomalous test images per type: {listed}"
        )
    good_test = rng.permutation(np.flatnonzero(test & ~anomalous))
    n_normal = min(n_labeled_normal, len(good_test) - 1 if len(good_test) >= 2 else len(good_test))
    labeled += good_test[:n_normal].tolist()

    labeled_set = set(labeled)
    return SemiSupervisedSplit(
        dataset=dataset.spec,
        seed=int(seed),
        transductive=transductive,
        train=tuple(np.flatnonzero(dataset.is_train).tolist()),
        labeled=tuple(sorted(labeled)),
        evaluation=tuple(i for i in np.flatnonzero(test).tolist() if i not in labeled_set),
        n_labeled_anomalous_per_type=int(n_labeled_anomalous_per_type),
        n_labeled_normal=int(n_labeled_normal),
    )


def labeled_shortfall(split: SemiSupervisedSplit, dataset: AnomalyDataset) -> dict[str, int]:
    """Defect type -> anomalous images labeled, for the types where fewer than requested could be.

    :func:`make_split` labels at most half of each type's test images, so that E keeps the rest.
    """
    labeled = Counter(dataset.defect_types[i] for i in split.labeled if dataset.is_anomalous[i])
    test_types = {dataset.defect_types[i] for i in np.flatnonzero(dataset.is_anomalous & ~dataset.is_train)}
    return {
        defect: labeled.get(defect, 0)
        for defect in sorted(test_types)
        if labeled.get(defect, 0) < split.n_labeled_anomalous_per_type
    }
