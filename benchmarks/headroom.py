"""The headroom map: on which task does batch composition change the anomaly classifier's result?

A sampler acts only through which pool patches the autoencoder trains on. For each *task* (a set of
environment settings and dataset-generator settings), this script runs evaluation episodes as
``nbs_gym.train`` does (env seed 1,000,000 + seed, classifier seed = seed) with these samplers:

``uniform``        plain uniform sampling over the pool (the reference, normalised score 0)
``random``         a uniformly random action each step (the ``random`` baseline, seeded by the seed)
``clean``          the ``oracle`` reference (:class:`agents.baselines.OracleSampler`), reading every
                   mask: only patches without an anomalous pixel (normalised score 1)
``defects=F``      the oracle with ``defect_share=F``: a share F of each batch from patches that hold
                   anomalous pixels
``NAME``           a built-in rule by its registry name, with its default settings (``loss_rank``,
                   ``reducible_loss``, ``self_paced``, ``hard_mining``, ``curriculum``; seeded by the seed)
``fixed:NAME``     a fixed label-free strata composition (an action held for the whole episode):
                   ``no_top`` (all strata but the highest-loss one), ``bottom``, ``top``, ``middle``,
                   or ``fixed:a0,a1,...`` for any action
``share:SCHEDULE`` label-free, patch by patch: every batch uniform over the lowest-loss share of the
                   pool (the patch losses the published rules read), the share following SCHEDULE
``band:Q@P``       label-free: the lowest-loss share Q admitted, drawn by loss rank within it, its
                   highest-loss patch P times as likely as its lowest (``loss_rank``'s law in the band)
``clean_rank:P``   the oracle's defect-free patches drawn by loss rank, the highest P times as likely
                   as the lowest: whether hard normal patches buy anything beyond the oracle
``defects=SCHEDULE`` the oracle with a defect share that follows SCHEDULE

A SCHEDULE is a value over the episode's progress (updates done / episode length): ``V`` throughout,
``V1>V2@T`` (V1 before progress T, V2 from it), or ``V1/V2@F`` (V1 and V2 in turns, each for a
fraction F of the episode, V1 first: with F = 1 / profile_length the turns end at the snapshots).

and scores each episode's saved profiles with the predictor (an ensemble of ``--ensemble`` networks)
and the ``final_loss`` baseline on E. Every (task, sampler, seed) is one small JSON file under
``--out/cells``, written atomically, so a map grows over several invocations, two can run at once
(one torch thread each) and an interrupted one resumes where it stopped. ``report`` prints the map
as a Markdown table: per task, each sampler's metrics, its per-seed F1-max and AUPRO ratios to
uniform with 95 % CIs, its episode return ``S_T - S_0`` and the compute it took.

    python benchmarks/headroom.py run --out docs/headroom --task t1000 episode_length=1000 --seeds 0 1 2 3 4
    python benchmarks/headroom.py run --out docs/headroom --task stain20 episode_length=1000 \\
        "dataset=synthetic:fabric?contamination=0.2&contaminating_defect=stain" --samplers uniform clean
    python benchmarks/headroom.py report --out docs/headroom > docs/headroom/README.md

Task settings are ``key=value`` pairs of :class:`nbs_gym.config.EnvConfig` (flat, as ``gymnasium.make``
takes them) over its defaults, or over a registered task's with ``env_id=ID``; the synthetic
generator's options travel in the dataset spec's query. ``reference`` turns a registered task's
``uniform``, ``random`` and ``clean`` cells into the package's reference scores
(``nbs_gym/reference_scores.json``, read by :mod:`nbs_gym.scores`):

    python benchmarks/headroom.py run --out docs/headroom --task v1 env_id=nbs_gym/NeuralBatchSampling-v1 \\
        --samplers uniform random clean --ensemble 1
    python benchmarks/headroom.py reference --out docs/headroom --task v1 --env-id nbs_gym/NeuralBatchSampling-v1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents.baselines import BASELINES, OracleSampler, defect_share_draw, defective_patches
from agents.published import LossRankSampler, lowest_loss_draw
from nbs_gym.classifier import ClassifierConfig, fit_predictor, score_maps, score_metrics
from nbs_gym.config import EnvConfig
from nbs_gym.data import load_dataset
from nbs_gym.env import NeuralBatchSamplingEnv, PatchDraw
from nbs_gym.io import write_text_atomic
from nbs_gym.profiles import load_profiles
from nbs_gym.reporting import bracketed, mean_ci, plus_minus
from nbs_gym.scores import REFERENCE_METRICS
from nbs_gym.tasks import parse_env_id, task_config
from nbs_gym.train import EVAL_SEED_OFFSET

METRICS = (
    "predictor/pixel_auroc",
    "predictor/pixel_aupro",
    "predictor/pixel_f1_max",
    "final_loss/pixel_auroc",
    "final_loss/pixel_f1_max",
)
RATIO_METRICS = ("predictor/pixel_f1_max", "predictor/pixel_aupro")
NAMED_COMPOSITIONS = {
    "no_top": (1.0, 1.0, 1.0, 1.0, -1.0),
    "bottom": (1.0, -1.0, -1.0, -1.0, -1.0),
    "top": (-1.0, -1.0, -1.0, -1.0, 1.0),
    "middle": (-1.0, 1.0, 1.0, 1.0, -1.0),
}


def sampler_action(sampler: str, n_groups: int) -> np.ndarray:
    """The action a sampler holds for the whole episode (zero for uniform and the oracles)."""
    if not sampler.startswith("fixed:"):
        return np.zeros(n_groups, np.float32)
    spec = sampler.removeprefix("fixed:")
    values = NAMED_COMPOSITIONS.get(spec) or tuple(float(v) for v in spec.split(","))
    if len(values) != n_groups:
        raise SystemExit(f"error: {sampler}: {len(values)} weights, but the task has {n_groups} strata")
    return np.asarray(values, np.float32)


def schedule(spec: str, what: str) -> Callable[[float], float]:
    """A value in [0, 1] over the episode's progress, from ``V``, ``V1>V2@T`` or ``V1/V2@F`` (module docstring).

    Raises:
        SystemExit: A malformed spec, or a value, switch point or turn length out of its range; the
            message names the sampler ``what``.
    """

    def number(text: str, low: float, high: float, name: str, open_low: bool = False) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low < value <= high if open_low else low <= value <= high):
            bounds = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
            raise SystemExit(f"error: --samplers {what}: {name} must be a number in {bounds}, got {text!r}")
        return value

    body, at, point = spec.partition("@")
    if not at:
        value = number(spec, 0.0, 1.0, "the value")
        return lambda progress: value
    separator = ">" if ">" in body else "/"
    first, found, second = body.partition(separator)
    if not found:
        raise SystemExit(f"error: --samplers {what}: expected V, V1>V2@T or V1/V2@F, got {spec!r}")
    a, b = number(first, 0.0, 1.0, "a value"), number(second, 0.0, 1.0, "a value")
    if separator == ">":
        switch = number(point, 0.0, 1.0, "the switch point T", open_low=True)
        return lambda progress: a if progress < switch else b
    turn = number(point, 0.0, 1.0, "the turn length F", open_low=True)
    # The small offset keeps a progress of exactly k * F in turn k despite its float rounding.
    return lambda progress: a if int(progress / turn + 1e-9) % 2 == 0 else b


def schedule_draw(sampler: str, env: NeuralBatchSamplingEnv, dataset: Any) -> PatchDraw | None:
    """The patch draw of a ``share:``, ``band:``, ``clean_rank:`` or scheduled ``defects=`` sampler; None
    for any other sampler."""
    if sampler.startswith("share:"):
        share = schedule(sampler.removeprefix("share:"), sampler)
        return lowest_loss_draw(env, lambda progress, n_patches: max(1, int(np.ceil(share(progress) * n_patches))))
    if sampler.startswith("band:"):
        admit, pressure = _band(sampler)
        probabilities = LossRankSampler(env, selection_pressure=pressure).rank_probabilities(
            max(1, int(np.ceil(admit * len(env.patch_losses))))
        )

        def by_band(rng: np.random.Generator, batch: int) -> np.ndarray:
            losses = env.patch_losses
            admitted = np.argsort(losses, kind="stable")[: len(probabilities)]
            by_loss = admitted[np.argsort(-losses[admitted], kind="stable")]  # highest admitted loss first
            return by_loss[rng.choice(len(by_loss), size=batch, p=probabilities)]

        return by_band
    if sampler.startswith("clean_rank:"):
        pressure = _pressure(sampler.removeprefix("clean_rank:"), sampler)
        clean = np.flatnonzero(~defective_patches(env, dataset))
        probabilities = LossRankSampler(env, selection_pressure=pressure).rank_probabilities(len(clean))

        def by_clean_rank(rng: np.random.Generator, batch: int) -> np.ndarray:
            by_loss = clean[np.argsort(-env.patch_losses[clean], kind="stable")]
            return by_loss[rng.choice(len(by_loss), size=batch, p=probabilities)]

        return by_clean_rank
    if sampler.startswith("defects=") and "@" in sampler:
        defective = defective_patches(env, dataset)
        defect_share = schedule(sampler.removeprefix("defects="), sampler)
        return defect_share_draw(env, np.flatnonzero(defective), np.flatnonzero(~defective), defect_share)
    return None


def check_sampler(sampler: str) -> None:
    """Exit with an error naming a malformed ``share:``, ``band:``, ``clean_rank:`` or scheduled ``defects=``
    sampler, before any cell runs."""
    if sampler.startswith("share:"):
        schedule(sampler.removeprefix("share:"), sampler)
    elif sampler.startswith("band:"):
        _band(sampler)
    elif sampler.startswith("clean_rank:"):
        _pressure(sampler.removeprefix("clean_rank:"), sampler)
    elif sampler.startswith("defects=") and "@" in sampler:
        schedule(sampler.removeprefix("defects="), sampler)


def _band(sampler: str) -> tuple[float, float]:
    """The admitted share and the selection pressure of ``band:Q@P``."""
    band, at, pressure = sampler.removeprefix("band:").partition("@")
    if not at:
        raise SystemExit(f"error: --samplers {sampler}: expected band:Q@P, e.g. band:0.7@10")
    return schedule(band, sampler)(0.0), _pressure(pressure, sampler)


def _pressure(text: str, sampler: str) -> float:
    """A selection pressure of ``loss_rank``'s law: a finite number >= 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1.0 <= value < float("inf"):
        raise SystemExit(f"error: --samplers {sampler}: the selection pressure must be a number >= 1, got {text!r}")
    return value


def run_cell(task: str, settings: dict[str, Any], sampler: str, seed: int, ensemble: int) -> dict[str, Any]:
    """One evaluation episode of ``sampler`` on a task and the classifier's metrics on E."""
    config = _config(settings)
    data = config.data
    dataset = load_dataset(data.dataset, image_size=data.image_size, seed=data.dataset_seed, channels=data.channels)
    with tempfile.TemporaryDirectory(prefix="nbs_gym_headroom_") as scratch:
        env = NeuralBatchSamplingEnv(config=config, dataset_object=dataset, profile_dir=scratch)
        policy: Any = None
        draw = schedule_draw(sampler, env, dataset)
        if draw is not None:
            env.set_patch_draw(draw)
        elif sampler == "clean" or sampler.startswith("defects="):
            share = 0.0 if sampler == "clean" else float(sampler.removeprefix("defects="))
            OracleSampler(env, defect_share=share).prepare_env(env, dataset)
        elif sampler in BASELINES and sampler != "uniform":
            policy = BASELINES[sampler](env, seed=seed)
            if hasattr(policy, "prepare_env"):
                policy.prepare_env(env, dataset)
        elif sampler != "uniform" and not sampler.startswith("fixed:"):
            raise SystemExit(f"error: --samplers: unknown sampler {sampler!r}")
        action = sampler_action(sampler, config.n_groups)
        start = time.perf_counter()
        observation, _ = env.reset(seed=seed + EVAL_SEED_OFFSET)
        terminated, episode_return = False, 0.0
        while not terminated:
            if policy is not None:
                action, _ = policy.predict(observation, deterministic=True)
            observation, reward, terminated, _, info = env.step(action)
            episode_return += float(reward)
        episode_seconds = time.perf_counter() - start
        profiles = load_profiles(info["profile_path"])  # float16 on disk, as nbs_gym.train scores them
    start = time.perf_counter()
    predictor = fit_predictor(profiles, ClassifierConfig(seed=seed, device="cpu", ensemble=ensemble))
    evaluation = np.asarray(env.split.evaluation, dtype=np.int64)
    defect_types = tuple(dataset.defect_types[i] for i in evaluation)
    result = score_metrics(score_maps(profiles, predictor), dataset.masks[evaluation], defect_types)
    classifier_seconds = time.perf_counter() - start
    metrics = {key: float(result[key.split("/")[0]][key.split("/")[1]]) for key in METRICS}
    return {
        "task": task,
        "settings": settings,
        "sampler": sampler,
        "seed": seed,
        "ensemble": ensemble,
        "metrics": metrics,
        "separation": float(info["separation"]),
        "initial_separation": float(info["initial_separation"]),
        "return": episode_return,
        "episode_seconds": episode_seconds,
        "classifier_seconds": classifier_seconds,
    }


def _config(settings: dict[str, Any]) -> EnvConfig:
    """A task's env config: its settings over EnvConfig's defaults, or over a registered id's (``env_id``)."""
    rest = {key: value for key, value in settings.items() if key != "env_id"}
    if "env_id" in settings:
        return task_config(settings["env_id"], device="cpu", **rest)
    return EnvConfig.from_kwargs(device="cpu", **rest)


def cell_path(out: Path, task: str, sampler: str, seed: int, ensemble: int) -> Path:
    safe = sampler.translate(str.maketrans({":": "-", ",": "_", "/": "~", ">": "+", "@": "_at_"}))
    return out / "cells" / f"{task}__{safe}__e{ensemble}__{seed}.json"


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    task, *pairs = args.task
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"error: --task: expected key=value after the task's name, got {pair!r}")
        settings[key] = yaml.safe_load(value)
    for sampler in args.samplers:
        check_sampler(sampler)
    (args.out / "cells").mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for sampler in args.samplers:
            path = cell_path(args.out, task, sampler, seed, args.ensemble)
            if path.exists():
                saved = json.loads(path.read_text())
                if saved["settings"] != settings:
                    raise SystemExit(f"error: {path} holds task {task!r} with settings {saved['settings']}")
                continue
            cell = run_cell(task, settings, sampler, seed, args.ensemble)
            write_text_atomic(path, json.dumps(cell, indent=1) + "\n")
            f1 = cell["metrics"]["predictor/pixel_f1_max"]
            print(f"{task} {sampler} seed {seed}: F1-max {f1:.4f}, return {cell['return']:+.4f}", flush=True)
    return 0


def report(args: argparse.Namespace) -> int:
    cells: dict[tuple[str, int], dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted((args.out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        if cell["seed"] in args.seeds and (not args.tasks or cell["task"] in args.tasks):
            cells[(cell["task"], cell["ensemble"])][cell["sampler"]][cell["seed"]] = cell
    versus = [f"{name} ratio to {args.versus} [95 % CI]" for name in ("F1-max", "AUPRO")] if args.versus else []
    columns = [
        "task", "settings", "classifier", "sampler", "seeds", "predictor pixel AUROC", "predictor AUPRO",
        "predictor F1-max", "final_loss pixel AUROC", "F1-max ratio [95 % CI]", "AUPRO ratio [95 % CI]",
        *versus, "return S_T - S_0", "minutes per seed",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    references = ["uniform", *([args.versus] if args.versus else [])]
    for (task, ensemble), samplers in sorted(cells.items()):
        for sampler, by_seed in sorted(samplers.items(), key=lambda item: _sampler_order(item[0])):
            rows = [by_seed[seed] for seed in sorted(by_seed)]
            settings = " ".join(f"{k}={v}" for k, v in rows[0]["settings"].items()) or "defaults"
            cells_text = [plus_minus(mean_ci(row["metrics"][key] for row in rows)) for key in METRICS[:-1]]
            for name in references:
                reference = samplers.get(name, {})
                for key in RATIO_METRICS:
                    paired = [
                        by_seed[seed]["metrics"][key] / reference[seed]["metrics"][key]
                        for seed in by_seed
                        if seed in reference
                    ]
                    cells_text.append("1" if sampler == name else bracketed(mean_ci(paired)) if paired else "–")
            cells_text.append(plus_minus(mean_ci(row["return"] for row in rows)))
            minutes = np.mean([row["episode_seconds"] + row["classifier_seconds"] for row in rows]) / 60
            line = [task, settings, f"ensemble {ensemble}", sampler, str(len(rows)), *cells_text, f"{minutes:.1f}"]
            print("| " + " | ".join(line) + " |")
    return 0


def reference(args: argparse.Namespace) -> int:
    """Write the reference scores of a registered task's cells into the package's table."""
    cells = [json.loads(path.read_text()) for path in sorted((args.out / "cells").glob(f"{args.task}__*.json"))]
    cells = [c for c in cells if c["task"] == args.task and c["ensemble"] == args.ensemble and c["seed"] in args.seeds]
    env_id = args.env_id
    version, _ = parse_env_id(env_id)
    if not cells or _config(cells[0]["settings"]) != task_config(env_id, device="cpu"):
        raise SystemExit(f"error: --task {args.task}: no cells, or its settings are not those of {env_id}")
    names = {"uniform": "uniform", "random": "random", "clean": "oracle"}
    by_sampler: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        if cell["sampler"] in names:
            by_sampler[names[cell["sampler"]]].append(cell)
    seeds = {name: sorted(c["seed"] for c in rows) for name, rows in by_sampler.items()}
    if set(by_sampler) != set(names.values()) or len({tuple(v) for v in seeds.values()}) != 1:
        raise SystemExit(f"error: --task {args.task}: needs uniform, random and clean cells on one seed list: {seeds}")
    scores = {
        name: {metric: float(np.mean([c["metrics"][metric] for c in rows])) for metric in REFERENCE_METRICS}
        for name, rows in by_sampler.items()
    }
    table = json.loads(args.table.read_text()) if args.table.exists() else {"versions": {}}
    table["versions"][version] = {
        "env_id": env_id,
        "seeds": seeds["uniform"],
        "classifier": f"ClassifierConfig(ensemble={args.ensemble}), seed = run seed",
        "evaluation": "one episode per seed, env seed 1,000,000 + seed, as nbs_gym.train evaluates",
        "command": (
            " ".join(
                [f"python benchmarks/headroom.py run --out {args.out} --task {args.task}"]
                + [f"{k}={v}" for k, v in cells[0]["settings"].items()]
            )
            + f" --samplers uniform random clean --seeds {' '.join(map(str, seeds['uniform']))} "
            f"--ensemble {args.ensemble} && python benchmarks/headroom.py reference --out {args.out} "
            f"--task {args.task} --env-id {env_id} --ensemble {args.ensemble}"
        ),
        "scores": scores,
    }
    write_text_atomic(args.table, json.dumps(table, indent=2) + "\n")
    print(f"wrote the {version} reference scores to {args.table}")
    return 0


def _sampler_order(sampler: str) -> tuple[int, str]:
    return ({"uniform": 0, "random": 1, "clean": 2}.get(sampler, 3 if sampler.startswith("defects") else 4), sampler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the missing cells of one task")
    runner.add_argument("--out", type=Path, required=True, help="folder of the map (cells/ holds one file per cell)")
    runner.add_argument("--task", nargs="+", required=True, metavar="NAME [KEY=VALUE ...]")
    runner.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    runner.add_argument("--samplers", nargs="+", default=["uniform", "clean", "fixed:no_top"])
    runner.add_argument("--ensemble", type=int, default=4, help="networks in the classifier ensemble")
    runner.add_argument("--threads", type=int, default=1, help="torch threads (1 lets two maps run at once)")
    reporter = commands.add_parser("report", help="print the map as a Markdown table")
    reporter.add_argument("--out", type=Path, required=True)
    reporter.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="the cells' seeds to report")
    reporter.add_argument("--tasks", nargs="+", default=[], help="report only these tasks (default: every task)")
    reporter.add_argument(
        "--versus", metavar="SAMPLER", help="also each sampler's F1-max and AUPRO ratios to this one, seed by seed"
    )
    referencer = commands.add_parser("reference", help="write a registered task's reference scores")
    referencer.add_argument("--out", type=Path, required=True)
    referencer.add_argument("--task", required=True, help="a task of the map whose settings are the id's")
    referencer.add_argument("--env-id", required=True, help="the registered id (its task version gets the scores)")
    referencer.add_argument("--ensemble", type=int, default=1, help="the cells' classifier ensemble")
    referencer.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="the cells' seeds")
    referencer.add_argument(
        "--table", type=Path, default=Path(__file__).resolve().parents[1] / "nbs_gym" / "reference_scores.json"
    )
    args = parser.parse_args(argv)
    return {"run": run, "report": report, "reference": reference}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
