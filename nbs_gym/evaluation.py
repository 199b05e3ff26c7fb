"""Evaluation: from one episode's loss profiles to the metrics of every scorer on the evaluation set E.

The one path every command takes (``nbs_gym.train``, ``nbs_gym.classify``, the benchmarks): fit the
anomaly classifier on L's profiles (:func:`nbs_gym.classifier.fit_predictor`), map E with it and with
the label-free baselines (:func:`nbs_gym.classifier.score_maps`), and score the maps against E's masks
(:func:`nbs_gym.classifier.score_metrics`). E's masks are read here and nowhere else: from the dataset
the profiles were recorded on (checked by its fingerprint), never from the profile file. A caller that
has the dataset loaded passes it, so that a run loads its dataset once.

Example (``profiles`` from :func:`nbs_gym.profiles.load_profiles`)::

    result = evaluate_profiles(profiles, ClassifierConfig(seed=0))
    result.metrics["predictor"]["pixel_f1_max"]
    result.maps["predictor"]  # (n_E, H, W) anomaly probabilities
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nbs_gym.classifier import ClassifierConfig, Predictor, fit_predictor, score_maps, score_metrics
from nbs_gym.data import AnomalyDataset, dataset_fingerprint, load_dataset
from nbs_gym.metrics import segmentation_metrics
from nbs_gym.profiles import LossProfiles

__all__ = ["Evaluation", "evaluate", "evaluate_profiles", "evaluation_masks", "validation_metrics"]


@dataclass(frozen=True)
class Evaluation:
    """One episode's profiles, evaluated.

    Attributes:
        predictor: The anomaly classifier fitted on L's profiles.
        maps: Scorer (``"predictor"``, ``"final_loss"``, ``"mean_profile"``) -> ``(n_E, H, W)`` anomaly map.
        masks: E's ground truth ``(n_E, H, W)``, in E's probe order.
        defect_types: E's defect type per image (``"good"`` for a normal one).
        metrics: Scorer -> metrics on E (:func:`nbs_gym.classifier.score_metrics`).
        validation: The predictor's metrics on the images of L it held out (:func:`validation_metrics`);
            ``None`` when it held none out.
    """

    predictor: Predictor
    maps: dict[str, np.ndarray]
    masks: np.ndarray
    defect_types: tuple[str, ...]
    metrics: dict[str, dict[str, Any]]
    validation: dict[str, Any] | None = None


def evaluation_masks(
    profiles: LossProfiles, dataset: AnomalyDataset | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Masks and defect types of the evaluation set E, read from the dataset the profiles came from.

    Args:
        profiles: The loss profiles of one episode.
        dataset: The run's dataset when already loaded; otherwise it is reloaded from the data config
            in the profiles' metadata. Either way it must be the very dataset of the run (same fingerprint).

    Returns:
        ``(masks, defect_types)``: ``(n_E, H, W)`` bool and one type per image, in E's probe order.

    Raises:
        ProfileFileError: The metadata lacks the data config, or the dataset is not the one the profiles
            were recorded on.
    """
    try:
        data = profiles.metadata["config"]["data"]
        expected = profiles.metadata["dataset_fingerprint"]
        spec, image_size, seed, channels = data["dataset"], data["image_size"], data["dataset_seed"], data["channels"]
    except (KeyError, TypeError) as error:
        raise profiles.error(f"metadata: no dataset config to reload E's masks from (missing {error})") from error
    if dataset is None:
        dataset = load_dataset(spec, image_size=image_size, seed=seed, channels=channels)
        source = f"{spec!r} (image_size={image_size}, seed={seed}) now loads as"
    else:
        source = "the dataset given has fingerprint"
    found = dataset_fingerprint(dataset)
    if found != expected:
        raise profiles.error(
            f"dataset_fingerprint: the profiles were recorded on a dataset with fingerprint {expected}, but "
            f"{source} {found}; the profile file comes from another dataset or the dataset changed since the run"
        )
    evaluation = np.asarray(profiles.split.evaluation, dtype=np.int64)
    return dataset.masks[evaluation], tuple(dataset.defect_types[i] for i in evaluation)


def evaluate(
    profiles: LossProfiles, predictor: Predictor, dataset: AnomalyDataset | None = None
) -> dict[str, dict[str, Any]]:
    """Segmentation metrics on E of an already fitted predictor and of the baselines, on the same profiles.

    Returns:
        ``{"predictor": m, "final_loss": m, "mean_profile": m}``, see :func:`nbs_gym.classifier.score_metrics`.
    """
    masks, defect_types = evaluation_masks(profiles, dataset)
    return score_metrics(score_maps(profiles, predictor), masks, defect_types)


def evaluate_profiles(
    profiles: LossProfiles, config: ClassifierConfig | None = None, dataset: AnomalyDataset | None = None
) -> Evaluation:
    """Fit the anomaly classifier on L's profiles, then map and score E with it and every baseline.

    E's masks are read (and the dataset checked) before the classifier trains, so that a mismatched
    dataset fails at once; the classifier never sees them.

    Args:
        profiles: The loss profiles of one episode.
        config: The classifier's settings (default: :class:`~nbs_gym.classifier.ClassifierConfig`'s).
        dataset: The run's dataset when already loaded (see :func:`evaluation_masks`).
    """
    masks, defect_types = evaluation_masks(profiles, dataset)
    predictor = fit_predictor(profiles, config)
    maps = score_maps(profiles, predictor)
    metrics = score_metrics(maps, masks, defect_types)
    return Evaluation(predictor, maps, masks, defect_types, metrics, validation_metrics(profiles, predictor))


def validation_metrics(profiles: LossProfiles, predictor: Predictor) -> dict[str, Any] | None:
    """The predictor's pixel AUROC, AUPRO and F1-max (and image AUROC) on the images of L that its
    training held out for early stopping: a score of an episode's profiles that reads no mask of E, as a
    hyperparameter search needs (``nbs_gym.tune``). ``"images"`` counts them.

    Returns ``None`` when nothing was held out (``kind="per_pixel"`` or ``validation_fraction=0``; for an
    ensemble, no image that every member held out) or nothing anomalous was (an ensemble's shared
    held-out images may all be normal).
    Optimistic as a test score (the classifier stopped at its best epoch on these images), and noisier
    than E's metrics (a few images), but the same for every sampler compared.
    """
    fits = predictor.training.get("members", [predictor.training])  # an ensemble: the images none trained on
    held_out = np.asarray(
        sorted(set.intersection(*(set(fit.get("validation_images", [])) for fit in fits))), dtype=np.int64
    )
    loss_maps, masks = profiles.labeled_profiles()
    if held_out.size == 0 or not masks[held_out].any():
        return None
    images = profiles.images[: profiles.n_labeled][held_out] if predictor.config.use_image else None
    scores = predictor.predict(loss_maps[:, held_out], images)
    metrics: dict[str, Any] = dict(segmentation_metrics(scores, masks[held_out]))
    metrics["images"] = int(held_out.size)
    return metrics
