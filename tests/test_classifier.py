"""Tests of the anomaly classifier on real loss profiles of one default uniform-sampling episode."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import nbs_gym  # noqa: F401  (registers the env ids)
from nbs_gym import classifier
from nbs_gym import evaluation as evaluation_module
from nbs_gym.classifier import (
    ClassifierConfig,
    ClassifierWarning,
    Predictor,
    fit_predictor,
    score_maps,
)
from nbs_gym.classify import TABLE_METRICS, main
from nbs_gym.config import ConfigError
from nbs_gym.data import load_dataset
from nbs_gym.evaluation import evaluate, evaluate_profiles, evaluation_masks, validation_metrics
from nbs_gym.figures import profile_figure, segmentation_figure
from nbs_gym.metrics import MetricWarning, pixel_auroc, segmentation_metrics
from nbs_gym.profiles import LossProfiles, ProfileFileError, load_profiles

# A few epochs of a narrow network: enough to exercise every code path quickly. (Widths below 16 are
# slower on CPU, not faster: oneDNN skips dilated convolutions with so few channels.)
TINY = ClassifierConfig(width=16, max_epochs=3, patience=1, device="cpu")
SCORERS = ("predictor", "final_loss", "mean_profile")


@pytest.fixture(scope="session")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The profile file of one default episode with the zero action (uniform sampling), seed 0."""
    folder = tmp_path_factory.mktemp("profiles")
    env = gym.make("nbs_gym/NeuralBatchSampling-v0", profile_dir=folder, device="cpu")
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(action)
    env.close()
    return Path(info["profile_path"])


@pytest.fixture(scope="session")
def profiles(profile_path: Path) -> LossProfiles:
    return load_profiles(profile_path)


@pytest.fixture(scope="session")
def evaluation(profiles: LossProfiles) -> dict[str, dict]:
    """Metrics on E of the default predictor and the baselines."""
    predictor = fit_predictor(profiles, ClassifierConfig(device="cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return evaluate(profiles, predictor)


@pytest.mark.slow
def test_predictor_beats_final_loss_on_evaluation_set(evaluation: dict[str, dict]) -> None:
    predictor, final_loss = evaluation["predictor"], evaluation["final_loss"]
    assert predictor["pixel_auroc"] > final_loss["pixel_auroc"]
    assert predictor["pixel_f1_max"] > final_loss["pixel_f1_max"]


def test_evaluate_reports_every_scorer_and_defect_type_as_json(
    evaluation: dict[str, dict], profiles: LossProfiles
) -> None:
    _, defect_types = evaluation_masks(profiles)
    expected_types = sorted(set(defect_types) - {"good"})
    assert tuple(evaluation) == SCORERS
    for metrics in evaluation.values():
        assert {"pixel_auroc", "pixel_aupro", "pixel_f1_max", "pixel_f1_threshold", "image_auroc"} <= set(metrics)
        assert sorted(metrics["per_defect_type"]) == expected_types
        for per_type in metrics["per_defect_type"].values():
            assert set(per_type) == set(TABLE_METRICS)
            assert all(type(value) is float and 0.0 <= value <= 1.0 for value in per_type.values())
    assert json.loads(json.dumps(evaluation)) == evaluation


@pytest.mark.slow
def test_baselines_are_the_last_and_the_mean_loss_map(profiles: LossProfiles) -> None:
    predictor = fit_predictor(profiles, dataclasses.replace(TINY, kind="per_pixel"))
    scores = score_maps(profiles, predictor)
    n_labeled = profiles.n_labeled
    np.testing.assert_array_equal(scores["final_loss"], profiles.loss_maps[-1, n_labeled:])
    np.testing.assert_allclose(
        scores["mean_profile"], profiles.loss_maps[:, n_labeled:].sum(axis=0) / profiles.profile_length, rtol=1e-6
    )
    masks, _ = evaluation_masks(profiles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        reported = evaluate(profiles, predictor)["final_loss"]
        by_hand = segmentation_metrics(profiles.loss_maps[-1, n_labeled:], masks)
    assert {key: reported[key] for key in by_hand} == by_hand


def test_evaluation_masks_are_those_of_the_split(profiles: LossProfiles) -> None:
    masks, defect_types = evaluation_masks(profiles)
    assert masks.shape == profiles.evaluation_profiles().shape[1:]
    assert len(defect_types) == len(profiles.split.evaluation)
    anomalous = masks.any(axis=(1, 2))
    assert np.array_equal(anomalous, np.array([t != "good" for t in defect_types]))
    assert anomalous.any() and not anomalous.all()


def test_training_never_reads_evaluation_masks(profiles: LossProfiles, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("training reached for the dataset, where E's masks are")

    # The classifier's module cannot reach the dataset at all; only nbs_gym.evaluation reads E's masks.
    assert not hasattr(classifier, "load_dataset") and not hasattr(classifier, "evaluation_masks")
    monkeypatch.setattr(evaluation_module, "load_dataset", forbidden)
    monkeypatch.setattr(evaluation_module, "evaluation_masks", forbidden)
    predictor = fit_predictor(profiles, TINY)
    # Whatever E holds, the predictor trained on L is the same.
    loss_maps = profiles.loss_maps.copy()
    loss_maps[:, profiles.n_labeled :] = np.random.default_rng(1).random(loss_maps[:, profiles.n_labeled :].shape)
    other = fit_predictor(dataclasses.replace(profiles, loss_maps=loss_maps), TINY)
    probe = profiles.loss_maps
    np.testing.assert_array_equal(predictor.predict(probe), other.predict(probe))


@pytest.mark.slow
def test_same_seed_same_predictions_other_seed_other_predictions(profiles: LossProfiles) -> None:
    maps = profiles.evaluation_profiles()[:, :4]
    first = fit_predictor(profiles, TINY).predict(maps)
    again = fit_predictor(profiles, TINY).predict(maps)
    other = fit_predictor(profiles, dataclasses.replace(TINY, seed=1)).predict(maps)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == maps.shape[1:] and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0


@pytest.mark.slow
def test_ensemble_is_the_mean_probability_of_its_seeded_members(profiles: LossProfiles, tmp_path: Path) -> None:
    maps = profiles.evaluation_profiles()[:, :3]
    ensemble = fit_predictor(profiles, dataclasses.replace(TINY, ensemble=3))
    members = [fit_predictor(profiles, dataclasses.replace(TINY, seed=TINY.seed + k)).predict(maps) for k in range(3)]
    np.testing.assert_allclose(ensemble.predict(maps), np.mean(members, axis=0), atol=1e-5)
    assert [m["validation_images"] for m in ensemble.training["members"]] == [
        fit_predictor(profiles, dataclasses.replace(TINY, seed=TINY.seed + k)).training["validation_images"]
        for k in range(3)
    ]
    loaded = Predictor.load(ensemble.save(tmp_path / "ensemble.pt"))
    np.testing.assert_array_equal(loaded.predict(maps), ensemble.predict(maps))
    assert loaded.config.ensemble == 3


def test_training_restores_the_best_validation_epoch(profiles: LossProfiles) -> None:
    predictor = fit_predictor(profiles, dataclasses.replace(TINY, max_epochs=5))
    training = predictor.training
    held_out = np.array(training["validation_images"])
    loss_maps, masks = profiles.labeled_profiles()
    # Stratified: a fifth of L's anomalous and of L's normal images.
    anomalous = masks.any(axis=(1, 2))
    assert anomalous[held_out].sum() == round(0.2 * anomalous.sum())
    assert (~anomalous[held_out]).sum() == round(0.2 * (~anomalous).sum())
    assert training["n_train_images"] + len(held_out) == profiles.n_labeled
    # The weights kept are those of the best validation epoch, not the last one's.
    assert 1 <= training["best_epoch"] <= training["epochs"] <= 5
    scores = predictor.predict(loss_maps[:, held_out])
    assert pixel_auroc(scores, masks[held_out]) == pytest.approx(training["best_validation_auroc"], abs=1e-6)


def test_the_validation_score_is_the_predictor_on_l_s_held_out_images_only(profiles: LossProfiles) -> None:
    predictor = fit_predictor(profiles, TINY)
    held_out = np.array(predictor.training["validation_images"])
    loss_maps, masks = profiles.labeled_profiles()
    validation = validation_metrics(profiles, predictor)
    assert validation is not None and validation["images"] == len(held_out) > 0
    expected = segmentation_metrics(predictor.predict(loss_maps[:, held_out]), masks[held_out])
    assert {key: validation[key] for key in expected} == expected
    assert validation["pixel_auroc"] == pytest.approx(predictor.training["best_validation_auroc"], abs=1e-6)
    # Nothing held out, no score: the per-pixel regression trains on all of L.
    assert validation_metrics(profiles, fit_predictor(profiles, dataclasses.replace(TINY, kind="per_pixel"))) is None
    # An ensemble is scored on the images that none of its members trained on.
    ensemble = fit_predictor(profiles, dataclasses.replace(TINY, ensemble=2))
    shared = set.intersection(*(set(member["validation_images"]) for member in ensemble.training["members"]))
    scored = validation_metrics(profiles, ensemble)
    anomalous = bool(masks[sorted(shared)].any()) if shared else False
    assert (scored is None) == (not anomalous)
    assert scored is None or scored["images"] == len(shared)


def test_per_pixel_predictor_is_the_balanced_logistic_regression(profiles: LossProfiles) -> None:
    predictor = fit_predictor(profiles, dataclasses.replace(TINY, kind="per_pixel"))
    loss_maps, masks = profiles.labeled_profiles()
    features = np.log(np.maximum(loss_maps, 6e-8)).reshape(profiles.profile_length, -1).T
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    reference = LogisticRegression(class_weight="balanced", max_iter=1000).fit(features, masks.ravel())
    expected = reference.predict_proba(features)[:, 1].reshape(masks.shape)
    np.testing.assert_allclose(predictor.predict(loss_maps), expected, atol=1e-4)


def test_image_channels_are_required_when_trained_with_them(profiles: LossProfiles) -> None:
    predictor = fit_predictor(profiles, dataclasses.replace(TINY, use_image=True))
    maps, images = profiles.evaluation_profiles()[:, :2], profiles.images[profiles.n_labeled :][:2]
    assert predictor.predict(maps, images).shape == maps.shape[1:]
    with pytest.raises(ValueError, match="images"):
        predictor.predict(maps)


def test_predict_rejects_another_profile_length(profiles: LossProfiles) -> None:
    predictor = fit_predictor(profiles, dataclasses.replace(TINY, kind="per_pixel"))
    with pytest.raises(ValueError, match="loss_maps"):
        predictor.predict(profiles.loss_maps[1:, :2])


def test_save_load_round_trip(profiles: LossProfiles, tmp_path: Path) -> None:
    predictor = fit_predictor(profiles, TINY)
    path = predictor.save(tmp_path / "predictor.pt")
    loaded = Predictor.load(path)
    maps = profiles.evaluation_profiles()[:, :3]
    np.testing.assert_array_equal(loaded.predict(maps), predictor.predict(maps))
    assert loaded.config == predictor.config and loaded.training == predictor.training
    assert os.listdir(tmp_path) == ["predictor.pt"]  # the atomic write left no temporary file
    torch.save({"format_version": 99}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        Predictor.load(tmp_path / "other.pt")
    state = torch.load(path, weights_only=True)
    tampered = {
        "unknown_setting": {**state, "config": {**state["config"], "depth": 3}},
        "short_mean": {**state, "feature_mean": state["feature_mean"][:1]},
        "long_profile": {**state, "profile_length": 99},
    }
    for name, bad in tampered.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=f"{name}.pt: inconsistent predictor file"):
            Predictor.load(tmp_path / f"{name}.pt")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "forest"),
        ("width", 0),
        ("patience", 0),
        ("learning_rate", -1.0),
        ("validation_fraction", 1.0),
        ("early_stopping", "f1"),
        ("seed", -1),
        ("device", "tpu"),
        ("max_epochs", 2.5),
        ("ensemble", 0),
    ],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"ClassifierConfig.{field}:"):
        ClassifierConfig(**{field: value})


def test_per_pixel_ensemble_is_rejected() -> None:
    with pytest.raises(ConfigError, match="ClassifierConfig.ensemble: must be 1 for the deterministic 'per_pixel'"):
        ClassifierConfig(kind="per_pixel", ensemble=2)


def test_labeled_set_without_anomalous_pixels_is_an_error(profiles: LossProfiles) -> None:
    empty = dataclasses.replace(profiles, labeled_masks=np.zeros_like(profiles.labeled_masks))
    with pytest.raises(ProfileFileError, match="no anomalous pixels"):
        fit_predictor(empty, TINY)


def test_library_errors_name_the_profile_file(profiles: LossProfiles, profile_path: Path, tmp_path: Path) -> None:
    path = _bad_file("unlabeled", profiles, profile_path, tmp_path)
    with pytest.raises(ProfileFileError, match=f"^{re.escape(str(path))}: labeled_masks: .*no anomalous pixels"):
        fit_predictor(load_profiles(path), TINY)


def test_single_labeled_anomalous_image_trains_without_validation(profiles: LossProfiles) -> None:
    masks = np.zeros_like(profiles.labeled_masks)
    first = int(np.flatnonzero(profiles.labeled_masks.any(axis=(1, 2)))[0])
    masks[first] = profiles.labeled_masks[first]
    with pytest.warns(ClassifierWarning, match="fewer than 2 anomalous images"):
        predictor = fit_predictor(dataclasses.replace(profiles, labeled_masks=masks), TINY)
    assert predictor.training["validation_images"] == []
    assert predictor.training["epochs"] == TINY.max_epochs


def test_fingerprint_mismatch_is_an_error(profiles: LossProfiles) -> None:
    other = dataclasses.replace(profiles, metadata={**profiles.metadata, "dataset_fingerprint": "0" * 16})
    with pytest.raises(ProfileFileError, match="another dataset"):
        evaluation_masks(other)


def test_a_loaded_dataset_gives_the_same_evaluation_and_must_be_the_profiles_own(profiles: LossProfiles) -> None:
    data = profiles.metadata["config"]["data"]
    dataset = load_dataset(data["dataset"], image_size=data["image_size"], seed=data["dataset_seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        given, reloaded = (evaluate_profiles(profiles, TINY, dataset=d) for d in (dataset, None))
    assert given.metrics == reloaded.metrics
    assert set(given.maps) == set(SCORERS) and given.masks.shape == given.maps["predictor"].shape
    np.testing.assert_array_equal(given.maps["predictor"], score_maps(profiles, given.predictor)["predictor"])
    assert given.defect_types == evaluation_masks(profiles)[1]
    other = load_dataset(data["dataset"], image_size=data["image_size"], seed=data["dataset_seed"] + 1)
    with pytest.raises(ProfileFileError, match="the dataset given has fingerprint"):
        evaluate_profiles(profiles, TINY, dataset=other)


@pytest.mark.slow
def test_cli_trains_evaluates_and_draws_the_newest_file(
    profile_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "profiles").mkdir(parents=True)
    older, newest = run / "profiles" / "episode_00000.npz", run / "profiles" / "episode_00001.npz"
    shutil.copy(profile_path, older)
    shutil.copy(profile_path, newest)
    os.utime(older, (1_000_000, 1_000_000))
    out = tmp_path / "out"

    assert main([str(run), "--out", str(out), "--device", "cpu", "--max-epochs", "3"]) == 0

    printed = capsys.readouterr().out
    assert f"profile file: {newest}" in printed
    assert all(any(line.startswith(scorer) for line in printed.splitlines()) for scorer in SCORERS)
    report = json.loads((out / "metrics.json").read_text())
    assert report["profile_file"] == str(newest)
    for scorer in SCORERS:
        assert set(TABLE_METRICS) <= set(report[scorer])
    for name in ("segmentation.png", "profiles.png", "predictor.pt"):
        assert (out / name).stat().st_size > 0


def test_cli_defaults_to_the_file_folder_and_can_skip_figures(profile_path: Path, tmp_path: Path) -> None:
    path = Path(shutil.copy(profile_path, tmp_path / "episode.npz"))
    assert main([str(path), "--kind", "per_pixel", "--no-figures"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["episode.npz", "metrics.json", "predictor.pt"]


def _bad_file(kind: str, profiles: LossProfiles, profile_path: Path, folder: Path) -> Path:
    path = folder / f"{kind}.npz"
    if kind == "truncated":
        path.write_bytes(profile_path.read_bytes()[:5000])
    elif kind == "unlabeled":
        dataclasses.replace(profiles, labeled_masks=np.zeros_like(profiles.labeled_masks)).save(path)
    elif kind == "single array":
        with path.open("wb") as handle:
            np.save(handle, np.zeros(3))
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind in TAMPERED:
        with np.load(profile_path) as archive:
            arrays = dict(archive)
        TAMPERED[kind](arrays)
        np.savez(path, **arrays)
    else:
        dataclasses.replace(profiles, metadata={**profiles.metadata, "dataset_fingerprint": "0" * 16}).save(path)
    return path


def _without_split(arrays: dict[str, np.ndarray]) -> None:
    metadata = json.loads(str(arrays["metadata"]))
    del metadata["split"]
    arrays["metadata"] = np.array(json.dumps(metadata))


TAMPERED = {
    "no split": _without_split,
    "list metadata": lambda arrays: arrays.update(metadata=np.array("[]")),
    "broken metadata": lambda arrays: arrays.update(metadata=np.array("{not json")),
    "negative losses": lambda arrays: arrays.update(loss_maps=-arrays["loss_maps"] - 1),
    "3-d loss maps": lambda arrays: arrays.update(loss_maps=arrays["loss_maps"][0]),
    "integer masks": lambda arrays: arrays.update(labeled_masks=arrays["labeled_masks"].astype(np.uint8) * 7),
}


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "truncated"),
        ("unlabeled", "no anomalous pixels"),
        ("mismatch", "another dataset"),
        ("single array", "not a profile file"),
        ("random bytes", "not a profile file (not an .npz archive)"),
        ("no split", "metadata: no split"),
        ("list metadata", "metadata: expected a JSON object"),
        ("broken metadata", "metadata: "),
        ("negative losses", "loss_maps: expected finite losses >= 0"),
        ("3-d loss maps", "loss_maps: expected shape (K, N, H, W)"),
        ("integer masks", "labeled_masks: expected bool"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_naming_the_file(
    kind: str,
    message: str,
    profiles: LossProfiles,
    profile_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _bad_file(kind, profiles, profile_path, tmp_path)
    assert main([str(path), "--device", "cpu", "--max-epochs", "1", "--no-figures"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.count(str(path)) == 1 and message in error
    assert "Traceback" not in error


def test_cli_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles.npz", "--kind", "bogus"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: argument --kind: invalid choice: 'bogus'")


def test_losses_beyond_float16_are_an_error_at_saving(profiles: LossProfiles, tmp_path: Path) -> None:
    loud = dataclasses.replace(profiles, loss_maps=profiles.loss_maps * 0 + 1e5)
    with pytest.raises(ProfileFileError, match=r"loud.npz: loss_maps: a loss of 1e\+05 is beyond float16's 65504"):
        loud.save(tmp_path / "loud.npz")
    assert not list(tmp_path.iterdir())


def test_cli_run_dir_without_profiles_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no *.npz profile file" in capsys.readouterr().err


def test_cli_names_the_flag_of_a_file_given_as_out_folder(
    profile_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "taken"
    file.write_text("a user's file")
    assert main([str(profile_path), "--out", str(file), "--device", "cpu", "--max-epochs", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --out {file}: is a file") and error.count("\n") == 1
    assert file.read_text() == "a user's file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_names_the_device_flag_when_cuda_is_missing(profile_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(profile_path), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda: no CUDA device is available")


def test_cli_rejects_a_bad_setting_with_exit_2(profile_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(profile_path), "--device", "tpu"]) == 2
    assert "ClassifierConfig.device" in capsys.readouterr().err


@pytest.mark.slow
def test_figures_show_anomalous_types_first_and_survive_a_missing_class(profiles: LossProfiles, tmp_path: Path) -> None:
    masks, defect_types = evaluation_masks(profiles)
    maps = profiles.evaluation_profiles()
    figure = segmentation_figure(
        profiles.images[profiles.n_labeled :],
        masks,
        {"final loss": maps[-1]},
        names=list(defect_types),
        defect_types=defect_types,
        path=tmp_path / "segmentation.png",
    )
    panels = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    rows = [axis.get_ylabel() for axis in panels[::3]]
    anomalous_types = {t for t, mask in zip(defect_types, masks, strict=True) if mask.any()}
    # One row per defect type, labeled, then one normal image; one colour bar per map column.
    assert len(panels) == 3 * (len(anomalous_types) + 1) and set(rows) == anomalous_types | {"good"}
    assert len(figure.axes) - len(panels) == 1
    figure = segmentation_figure(profiles.images[profiles.n_labeled :], masks, {"final loss": maps[-1]}, max_rows=2)
    assert len([axis for axis in figure.axes if axis.get_label() != "<colorbar>"]) == 2 * 3
    normal = ~masks.any(axis=(1, 2))
    figure = profile_figure(maps[:, normal], masks[normal], profiles.snapshot_steps, path=tmp_path / "profiles.png")
    assert figure.axes[0].get_yscale() == "log" and len(figure.axes[0].lines) == 1
    assert sorted(os.listdir(tmp_path)) == ["profiles.png", "segmentation.png"]
