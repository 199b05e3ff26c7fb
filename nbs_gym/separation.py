"""How well loss profiles separate anomalous from normal pixels: the environment's reward measures.

A pixel's loss profile is the vector of its reconstruction losses at the snapshots taken so far.
Every measure here reads profiles of labeled pixels only, as features ``(n_pixels, k)`` with boolean
labels, and works on log-losses (reconstruction losses span orders of magnitude):

``auroc``
    AUROC of Fisher's linear discriminant of the standardised log-profiles; 0.5 is chance, 1.0 a
    perfect linear read-out. Cheap enough for every snapshot.
``fisher``
    Fisher's criterion of that discriminant, (difference of class means)^2 / (sum of class
    variances), in [0, inf).
``prediction_loss``
    The paper's reward: minus the class-balanced binary cross-entropy of a logistic-regression
    predictor fitted to the profiles (higher is better; 0 is a perfect fit, ``-log 2`` is chance).

All are in-sample measures of separability, not estimates of test performance: the downstream
classifier (:mod:`nbs_gym.classifier`) is what is evaluated on held-out images.

:func:`separation_pixels`, :func:`snapshot_features` and :func:`profile_separation` build those features
from loss maps as the environment's reward does, so that saved profiles can be scored the same way.
:class:`SeparationTracker` scores profiles that grow by one snapshot at a time, as the reward does at
each snapshot; :func:`separation` and :func:`profile_separation` go through it too.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter
from sklearn.linear_model import LogisticRegression

from nbs_gym.config import REWARD_MEASURES

_EPS = 1e-10
_SHRINKAGE = 1e-3
MAX_ANOMALOUS_PIXELS = 4096
"""Most anomalous pixels the reward reads (a random subset beyond), to keep a snapshot's reward cheap."""
NORMAL_PER_ANOMALOUS = 4
"""Normal pixels the reward reads per anomalous one (a random subset)."""
MEASURES = REWARD_MEASURES
"""The separation measures, by name."""


def separation(features: np.ndarray, labels: np.ndarray, measure: str = "auroc") -> float:
    """Separation of anomalous from normal pixels by the named measure.

    Args:
        features: Loss profiles, shape (n_pixels, k), finite non-negative losses.
        labels: Boolean (or 0/1) anomaly labels, shape (n_pixels,); both classes must be present.
        measure: ``"auroc"``, ``"fisher"`` or ``"prediction_loss"``.

    Returns:
        The separation as a Python float (higher is better for every measure).

    Raises:
        ValueError: Shapes that do not fit, a missing class, non-boolean labels, or a loss that is
            negative or not finite (a diverged autoencoder).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"features must be (n_pixels, k) with k >= 1 and labels (n_pixels,); got {features.shape} and "
            f"{np.shape(labels)}"
        )
    return SeparationTracker(labels, measure, max_columns=features.shape[1]).add(features)


class SeparationTracker:
    """The separation of loss profiles that grow by a snapshot at a time, as the env's reward reads them.

    :func:`separation` of all columns so far, computed incrementally: each column's standardised
    log-losses are computed once, when it is added, and the within-class covariance of the Fisher
    discriminant grows by the new columns' rows only, instead of scoring the whole profile from scratch
    at each snapshot (docs/PERFORMANCE.md). :func:`separation` and :func:`profile_separation` use it
    too, so all three give the same numbers.

    Args:
        labels: Boolean anomaly labels, shape (n_pixels,); both classes must be present.
        measure: A measure of :data:`MEASURES`.
        max_columns: Columns to reserve room for (more are taken, at the cost of a copy).
    """

    def __init__(self, labels: np.ndarray, measure: str = "auroc", max_columns: int = 16) -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure: got {measure!r}, expected one of {', '.join(MEASURES)}")
        given = np.asarray(labels)
        if given.dtype != np.bool_ and not np.isin(given, (0, 1)).all():
            raise ValueError("labels: expected booleans (or 0 and 1)")
        labels = given.astype(bool)
        if labels.ndim != 1:
            raise ValueError(f"labels must be (n_pixels,); got shape {labels.shape}")
        if labels.all() or not labels.any():
            raise ValueError("labels: separation needs both anomalous and normal pixels")
        self.labels, self.measure = labels, measure
        self.n_columns = 0
        self.value = float("nan")
        """The separation of all columns added so far (NaN before the first)."""
        self._rows = (np.flatnonzero(labels), np.flatnonzero(~labels))
        capacity = max(int(max_columns), 1)
        self._columns = np.empty((capacity, labels.size))  # standardised log-losses, one row per column
        self._centred = [np.empty((capacity, rows.size)) for rows in self._rows]  # the same, centred per class
        self._means = np.empty((2, capacity))  # class means, anomalous then normal
        self._within = np.empty((capacity, capacity))  # sum of the two classes' covariances

    def add(self, features: np.ndarray) -> float:
        """Append profile columns (n_pixels, c) and return the separation of all columns so far."""
        features = np.asarray(features, dtype=np.float64)
        n_pixels = self.labels.size
        if features.ndim != 2 or features.shape[0] != n_pixels or features.shape[1] == 0:
            raise ValueError(
                f"features must be (n_pixels, k) with k >= 1 and labels (n_pixels,); got {features.shape} and "
                f"({n_pixels},)"
            )
        if not (np.isfinite(features).all() and (features >= 0).all()):
            raise ValueError(
                "features: losses must be finite and >= 0; a non-finite loss means the autoencoder diverged "
                "(a lower learning_rate helps)"
            )
        start, stop = self.n_columns, self.n_columns + features.shape[1]
        if stop > len(self._columns):
            self._grow(max(stop, 2 * len(self._columns)))
        for column in range(features.shape[1]):
            standardised = _standardised_log(features[:, column])
            self._columns[start + column] = standardised
            for label, rows in enumerate(self._rows):
                values = standardised[rows]
                self._means[label, start + column] = values.mean()
                self._centred[label][start + column] = values - self._means[label, start + column]
        new = np.zeros((stop, stop - start))
        for centred, rows in zip(self._centred, self._rows, strict=True):
            new += centred[:stop] @ centred[start:stop].T / max(rows.size - 1, 1)
        self._within[:stop, start:stop] = new
        self._within[start:stop, :stop] = new.T
        self.n_columns = stop
        self.value = self._measure()
        return self.value

    def _measure(self) -> float:
        k = self.n_columns
        if self.measure == "prediction_loss":
            return prediction_loss_separation(self._columns[:k].T, self.labels)
        within = self._within[:k, :k] + _SHRINKAGE * np.eye(k)
        direction = np.linalg.solve(within, self._means[0, :k] - self._means[1, :k])
        projected = direction @ self._columns[:k]
        anomalous, normal = projected[self._rows[0]], projected[self._rows[1]]
        if self.measure == "fisher":
            return fisher_criterion(anomalous, normal)
        return auroc(anomalous, normal)

    def _grow(self, capacity: int) -> None:
        def grown(array: np.ndarray, rows: int) -> np.ndarray:
            bigger = np.empty((capacity, array.shape[1]))
            bigger[:rows] = array[:rows]
            return bigger

        k = self.n_columns
        self._columns = grown(self._columns, k)
        self._centred = [grown(centred, k) for centred in self._centred]
        means = np.empty((2, capacity))
        means[:, :k] = self._means[:, :k]
        self._means = means
        within = np.empty((capacity, capacity))
        within[:k, :k] = self._within[:k, :k]
        self._within = within


def auroc(anomalous: np.ndarray, normal: np.ndarray) -> float:
    """AUROC of scores where higher means anomalous, NaN if any score is not finite.

    Computed as the Mann-Whitney U statistic over the product of the class sizes (the same number,
    ties counted half): for each anomalous score, the normal scores below it plus half of those equal
    to it, counted by binary search in the sorted normal scores. This runs at every snapshot of every
    environment, where it is several times faster than ``scipy.stats.mannwhitneyu`` (docs/PERFORMANCE.md)
    and gives the same number (``tests/test_separation.py`` checks it against
    ``sklearn.metrics.roc_auc_score``).
    """
    if not (np.isfinite(anomalous).all() and np.isfinite(normal).all()):
        return float("nan")
    anomalous, normal = np.sort(anomalous), np.sort(normal)
    below = np.searchsorted(normal, anomalous, side="left")
    at_or_below = np.searchsorted(normal, anomalous, side="right")
    u = below.sum() + 0.5 * (at_or_below - below).sum()
    return float(u / (anomalous.size * normal.size))


def fisher_criterion(anomalous: np.ndarray, normal: np.ndarray) -> float:
    """Fisher's criterion of one-dimensional scores: (difference of class means)^2 / (sum of class variances)."""
    spread = anomalous.var() + normal.var()
    return float((anomalous.mean() - normal.mean()) ** 2 / max(spread, _EPS))


def prediction_loss_separation(x: np.ndarray, labels: np.ndarray) -> float:
    """Minus the class-balanced cross-entropy of logistic regression fitted on standardised features ``x``."""
    weights = np.where(labels, 0.5 / labels.mean(), 0.5 / (1.0 - labels.mean()))
    model = LogisticRegression(C=1.0, max_iter=200)
    model.fit(x, labels, sample_weight=weights)
    probability = np.clip(model.predict_proba(x)[:, 1], _EPS, 1.0 - _EPS)
    nll = -(labels * np.log(probability) + (~labels) * np.log1p(-probability))
    return float(-(weights * nll).sum() / weights.sum())


def separation_pixels(masks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of labeled images a reward reads, and their labels.

    All anomalous pixels up to :data:`MAX_ANOMALOUS_PIXELS` and :data:`NORMAL_PER_ANOMALOUS` times as many
    normal ones, drawn with ``seed``.

    Args:
        masks: Boolean anomaly masks of the labeled images, shape (n, H, W).
        seed: Seed of the subsets.

    Returns:
        Sorted flat indices into ``masks`` (anomalous first, then normal) and their boolean labels.

    Raises:
        ValueError: The masks lack anomalous or normal pixels.
    """
    flat = np.asarray(masks, dtype=bool).ravel()
    anomalous, normal = np.flatnonzero(flat), np.flatnonzero(~flat)
    if anomalous.size == 0 or normal.size == 0:
        raise ValueError("masks: the labeled images need both anomalous and normal pixels")
    rng = np.random.default_rng(seed)
    if anomalous.size > MAX_ANOMALOUS_PIXELS:
        anomalous = np.sort(rng.choice(anomalous, MAX_ANOMALOUS_PIXELS, replace=False))
    n_normal = min(normal.size, NORMAL_PER_ANOMALOUS * anomalous.size)
    normal = np.sort(rng.choice(normal, n_normal, replace=False))
    labels = np.concatenate([np.ones(anomalous.size, bool), np.zeros(n_normal, bool)])
    return np.concatenate([anomalous, normal]), labels


def snapshot_features(maps: np.ndarray, pixels: np.ndarray, context_window: int = 0) -> np.ndarray:
    """One snapshot's features of the given pixels, shape (n_pixels, 1), or (n_pixels, 2) with a context.

    Args:
        maps: Loss maps of the labeled images at one snapshot, shape (n, H, W).
        pixels: Flat indices into ``maps`` (from :func:`separation_pixels`).
        context_window: 0 for each pixel's loss only; an odd side w adds the mean loss of the w x w box
            around the pixel (reflected at the image border).
    """
    columns = [maps]
    if context_window:
        columns.append(uniform_filter(maps, size=(1, context_window, context_window), mode="reflect"))
    return np.stack([column.reshape(-1)[pixels] for column in columns], axis=1)


def profile_separation(
    loss_maps: np.ndarray, masks: np.ndarray, measure: str = "auroc", context_window: int = 0, seed: int = 0
) -> float:
    """The separation of labeled images' loss profiles, as the environment's reward potential computes it.

    Args:
        loss_maps: Snapshots of the labeled images' loss maps, shape (K, n, H, W).
        masks: Their anomaly masks, shape (n, H, W).
        measure: A measure of :data:`MEASURES`.
        context_window: As in :func:`snapshot_features`.
        seed: Seed of the pixel subsets (the env uses its split seed).
    """
    pixels, labels = separation_pixels(masks, seed)
    tracker = SeparationTracker(labels, measure, max_columns=len(loss_maps) * (2 if context_window else 1))
    for maps in loss_maps:
        tracker.add(snapshot_features(maps, pixels, context_window))
    return tracker.value


def _standardised_log(values: np.ndarray) -> np.ndarray:
    """Log-losses of one profile column, shifted and scaled to mean 0 and standard deviation 1."""
    logs = np.log(values + _EPS)
    return (logs - logs.mean()) / max(float(logs.std()), _EPS)
