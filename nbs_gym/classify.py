"""``python -m nbs_gym.classify``: train the anomaly classifier on a profile file and evaluate it on E.

Usage::

    python -m nbs_gym.classify runs/ppo__0/profiles/agent/episode_00000.npz
    python -m nbs_gym.classify runs/ppo__0/profiles/agent --out results/ --kind per_pixel

Given a folder, the newest ``*.npz`` profile file anywhere under it (by modification time) is used; the
file used is printed. A training run evaluates the ``uniform`` baseline after its sampler, so for the
sampler's profiles point at ``RUN/profiles/agent``, not at the run itself.

The predictor is trained on the labeled set L of the file, then it and the two label-free baselines
(``final_loss``, ``mean_profile``) are scored on the evaluation set E. Written to ``--out`` (default: the
profile file's folder): ``metrics.json``, ``predictor.pt`` and, unless ``--no-figures``,
``segmentation.png`` and ``profiles.png``. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from nbs_gym.classifier import PREDICTOR_KINDS, ClassifierConfig
from nbs_gym.cli import Parser, bad_input, check_device, exit_process, one_line_warnings
from nbs_gym.evaluation import evaluate_profiles
from nbs_gym.figures import profile_figure, segmentation_figure
from nbs_gym.metrics import METRIC_NAMES
from nbs_gym.profiles import LossProfiles, load_profiles, write_atomic

__all__ = ["TABLE_METRICS", "format_table", "main", "newest_profile_file"]

TABLE_METRICS = METRIC_NAMES
"""Columns of the printed table."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_request:  # --help
        return int(exit_request.code or 0)
    except ValueError as error:
        return bad_input(str(error))
    try:
        config = ClassifierConfig(
            kind=args.kind, seed=args.seed, device=args.device, max_epochs=args.max_epochs, ensemble=args.ensemble
        )
        check_device("--device", args.device)
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: is a file; expected a folder for the outputs")
        path = newest_profile_file(args.profiles) if args.profiles.is_dir() else args.profiles
        profiles = load_profiles(path)
    except (ValueError, OSError) as error:
        return bad_input(str(error))
    if args.profiles.is_dir():
        print(f"profile file: {path} (the newest *.npz under {args.profiles})")
    else:
        print(f"profile file: {path}")
    out = args.out if args.out is not None else path.parent
    try:
        with one_line_warnings():
            results = _classify(profiles, path, config, out, figures=not args.figures_off)
    except (ValueError, OSError) as error:
        # Errors about the profiles already name the file; others (a config, the output folder) do not.
        message = str(error)
        return bad_input(message if message.startswith(str(path)) else f"{path}: {message}")
    print(format_table(results["metrics"]))
    print(f"wrote {', '.join(str(p) for p in results['written'])}")
    return 0


def newest_profile_file(folder: Path) -> Path:
    """The most recently modified ``*.npz`` file anywhere under ``folder`` (ties: the last path).

    Raises:
        FileNotFoundError: The folder holds no ``*.npz`` file.
    """
    candidates = [p for p in folder.rglob("*.npz") if p.is_file()]
    if not candidates:
        raise FileNotFoundError(f"{folder}: no *.npz profile file under this folder")
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table: one row per scorer, one column per metric of :data:`TABLE_METRICS`."""
    width = max(len(name) for name in metrics)
    lines = [" ".join([f"{'scorer':<{width}}", *(f"{m:>12}" for m in TABLE_METRICS)])]
    for name, values in metrics.items():
        lines.append(" ".join([f"{name:<{width}}", *(f"{values[m]:>12.4f}" for m in TABLE_METRICS)]))
    return "\n".join(lines)


def _classify(profiles: LossProfiles, path: Path, config: ClassifierConfig, out: Path, figures: bool) -> dict[str, Any]:
    """Train, evaluate, write the outputs; returns the metrics and the paths written."""
    # Degenerate subsets warn inside the metrics; "once" shows each message once, not once per subset.
    with warnings.catch_warnings():
        warnings.simplefilter("once")
        evaluation = evaluate_profiles(profiles, config)
    predictor, scores, metrics = evaluation.predictor, evaluation.maps, evaluation.metrics
    masks, defect_types = evaluation.masks, evaluation.defect_types
    report = {"profile_file": str(path), "classifier": config.to_dict(), "training": predictor.training, **metrics}
    text = json.dumps(report, indent=2) + "\n"
    metrics_path = out / "metrics.json"
    write_atomic(metrics_path, lambda handle: handle.write(text.encode()))
    written = [metrics_path, predictor.save(out / "predictor.pt")]
    if figures:
        images = profiles.images[profiles.n_labeled :]
        names = [f"{defect} ({index})" for defect, index in zip(defect_types, profiles.split.evaluation, strict=True)]
        segmentation_figure(
            images,
            masks,
            {"predictor": scores["predictor"], "final loss": scores["final_loss"]},
            names=names,
            defect_types=defect_types,
            path=out / "segmentation.png",
        )
        profile_figure(
            profiles.evaluation_profiles(),
            masks,
            profiles.snapshot_steps,
            title="loss profiles of the evaluation images",
            path=out / "profiles.png",
        )
        written += [out / "segmentation.png", out / "profiles.png"]
    return {"metrics": metrics, "written": written}


def _parser() -> Parser:
    defaults = ClassifierConfig()
    parser = Parser(
        prog="python -m nbs_gym.classify",
        description="Train the anomaly classifier on a profile file's labeled images, evaluate it on the rest.",
    )
    parser.add_argument(
        "profiles",
        type=Path,
        metavar="PROFILE_FILE_OR_RUN_DIR",
        help="a profile file (.npz), or a folder: its newest *.npz file (searched recursively) is used",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the profile file's folder)")
    parser.add_argument("--kind", choices=PREDICTOR_KINDS, default=defaults.kind, help="predictor kind")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the predictor's training")
    parser.add_argument(
        "--ensemble",
        type=int,
        default=defaults.ensemble,
        help="dilated_cnn members (seeds SEED, SEED + 1, ...) whose mean probability is the prediction",
    )
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--max-epochs", type=int, default=defaults.max_epochs, help="most training epochs (dilated_cnn)"
    )
    parser.add_argument(
        "--no-figures", dest="figures_off", action="store_true", help="skip segmentation.png and profiles.png"
    )
    return parser


if __name__ == "__main__":
    exit_process(main())
