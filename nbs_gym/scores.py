"""Reference scores of each registered task, and the normalised score: 0 = uniform, 1 = oracle.

Results on different tasks compare only once they are put on one scale, as D4RL does with its random
and expert policies. Here the references are ``uniform`` (plain SGD, the paper's "no sampler"
ablation), ``random`` (a random composition each step) and ``oracle`` (the mask-reading reference of
:class:`agents.baselines.OracleSampler`: defect-free patches only). For a metric ``m`` of the
anomaly classifier on E,

    normalized_score(task, m, value) = (value - uniform_m) / (oracle_m - uniform_m)

so uniform sampling scores 0 and the oracle 1; a learned sampler at 0.5 has gained half of what
knowing every defect buys. The references are means over the seeds the table names, each scored as
``nbs_gym.train`` scores a run (evaluation episode seed 1,000,000 + seed, classifier seed = seed, the
default classifier, one torch thread), and ship with the package in ``reference_scores.json``; the
command that regenerates them is stored beside them. A run with another thread count sums in another
order and lands a few thousandths of F1-max away on the same seed, and one seed's uniform run is not
exactly 0: the references are means over seeds, so a normalised score is read over seeds too.

    >>> from nbs_gym.scores import normalized_score, reference_scores
    >>> refs = reference_scores("nbs_gym/NeuralBatchSampling-v1")
    >>> normalized_score("nbs_gym/NeuralBatchSampling-v1", "predictor/pixel_f1_max",
    ...                  refs["uniform"]["predictor/pixel_f1_max"])
    0.0
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
from typing import Any

from nbs_gym.tasks import parse_env_id

__all__ = ["REFERENCE_METRICS", "REFERENCE_SAMPLERS", "normalized_score", "normalized_scores", "reference_scores"]

REFERENCE_METRICS: tuple[str, ...] = ("predictor/pixel_f1_max", "predictor/pixel_aupro", "predictor/pixel_auroc")
"""Metrics with reference scores: ``<scorer>/<metric>`` keys of a run's ``metrics.json`` entry."""
REFERENCE_SAMPLERS: tuple[str, ...] = ("uniform", "random", "oracle")
"""Samplers each task has reference scores of."""
_FILE = "reference_scores.json"


def reference_scores(task: str) -> dict[str, dict[str, float]]:
    """``{sampler: {metric: mean score}}`` of a registered id's task version.

    Every action mode of a version shares the table: the oracle's episodes do not depend on the mode,
    uniform's do in their random stream only (the same in distribution, not seed by seed); ``random``
    is the strata mode's.

    Raises:
        ValueError: ``task`` is not a registered id, or its version has no reference scores.
    """
    version, _ = parse_env_id(task)
    table = _table()
    if version not in table:
        raise ValueError(f"{task}: no reference scores for task version {version}; versions with them: {sorted(table)}")
    return {sampler: dict(table[version]["scores"][sampler]) for sampler in REFERENCE_SAMPLERS}


def reference_metadata(task: str) -> dict[str, Any]:
    """How a task version's reference scores were made: command, seeds, classifier."""
    version, _ = parse_env_id(task)
    return {key: value for key, value in _table()[version].items() if key != "scores"}


def normalized_score(task: str, metric: str, value: float) -> float:
    """``(value - uniform) / (oracle - uniform)`` of ``metric`` on ``task``; NaN when the two references tie.

    Raises:
        ValueError: An unknown task or metric (the message lists the metrics).
    """
    if metric not in REFERENCE_METRICS:
        raise ValueError(f"metric: got {metric!r}, expected one of {', '.join(REFERENCE_METRICS)}")
    scores = reference_scores(task)
    low, high = scores["uniform"][metric], scores["oracle"][metric]
    return (float(value) - low) / (high - low) if high != low else math.nan


def normalized_scores(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The normalised score of every :data:`REFERENCE_METRICS` of one ``metrics.json`` entry
    (``{"predictor": {"pixel_f1_max": ...}, ...}``); empty when the task has no reference scores."""
    try:
        reference_scores(task)
    except ValueError:
        return {}
    result = {}
    for metric in REFERENCE_METRICS:
        scorer, name = metric.split("/")
        result[metric] = normalized_score(task, metric, metrics[scorer][name])
    return result


@functools.cache
def _table() -> dict[str, Any]:
    """Task version -> its reference scores and how they were made; empty when the table is missing."""
    try:
        text = (importlib.resources.files("nbs_gym") / _FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return json.loads(text)["versions"]
