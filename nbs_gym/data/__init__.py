"""Datasets of images with pixel anomaly masks, and the semi-supervised split over them.

- :func:`load_dataset` turns a spec string (``"synthetic"``, ``"synthetic:grid"``, ``"mvtec:/data/bottle"``)
  into an :class:`AnomalyDataset`.
- :func:`write_mvtec_folder` writes a dataset as a category folder in the MVTec AD layout.
- :func:`dataset_fingerprint` is the digest that ties a profile file to the dataset it was recorded on.
- :func:`make_split` draws the labeled set L and the evaluation set E as a :class:`SemiSupervisedSplit`.
"""

from nbs_gym.data.base import AnomalyDataset, DatasetError, dataset_fingerprint
from nbs_gym.data.loading import load_dataset
from nbs_gym.data.mvtec import write_mvtec_folder
from nbs_gym.data.split import SemiSupervisedSplit, make_split
from nbs_gym.data.synthetic import SYNTHETIC_CATEGORIES

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "AnomalyDataset",
    "DatasetError",
    "SemiSupervisedSplit",
    "dataset_fingerprint",
    "load_dataset",
    "make_split",
    "write_mvtec_folder",
]
