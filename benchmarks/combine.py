"""One table from runs of several ``nbs_gym.compare`` folders: ratios to uniform and normalised scores.

A sampler row is ``LABEL=SOURCE:AGENT``: the finished runs of ``AGENT`` under ``SOURCE/runs``, where a
source may also be ``FILE.json:ROW`` (a row of an earlier ``--out``, for runs whose folders are gone) and
sources of different seeds join with ``+`` (:func:`source_values`). Each row is
paired seed by seed with the ``uniform`` runs of ``--uniform`` (a source too) and with an oracle,
either the ``oracle`` runs of a compare folder or headroom cells (``benchmarks/headroom.py``), whose
evaluation episodes are the same. Ratios are per seed, then averaged with a Student-t 95 % interval (as
``nbs_gym.compare``); the normalised score is ``nbs_gym.study.normalized_within``'s (0 = uniform,
1 = oracle, paired percentile bootstrap).

    python benchmarks/combine.py --uniform results/quantile_v1/ppo_sde \\
        --oracle-cells docs/headroom/cells/v1__clean__e1 \\
        --rows self_paced=results/quantile_v1/ppo_sde:self_paced ppo=results/quantile_v1/ppo_sde:ppo \\
        --out docs/tuning/v1_quantile.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nbs_gym.io import write_text_atomic
from nbs_gym.reporting import RATIO_COLUMNS, collect_runs, mean_ci
from nbs_gym.study import NORMALIZED_COLUMNS, normalized_within

COLUMNS = RATIO_COLUMNS  # the values kept per seed: those the ratios are taken of


def agent_values(folder: str, agent: str) -> dict[int, dict[str, float]]:
    """Seed -> column -> value of ``agent``'s finished runs under ``folder/runs``."""
    return {run.seed: run.values for run in collect_runs(Path(folder) / "runs", agents=[agent])}


def source_values(source: str, agent: str) -> dict[int, dict[str, float]]:
    """Seed -> column -> value from ``SOURCE[+SOURCE...]``: each a compare folder (``agent``'s runs there),
    or ``FILE.json:ROW``, a row of an earlier ``--out`` of this script (its per-seed values, or with
    ``agent`` ``uniform`` that row's uniform values), for runs whose folders are gone. The sources must
    hold different seeds.

    Raises:
        ValueError: A seed in two sources, or a missing row.
    """
    merged: dict[int, dict[str, float]] = {}
    for part in source.split("+"):
        file, colon, row = part.rpartition(":")
        if colon and file.endswith(".json"):
            rows = json.loads(Path(file).read_text())["rows"]
            if row not in rows:
                raise ValueError(f"{part}: no row {row!r} (rows: {', '.join(rows)})")
            values = {int(seed): v for seed, v in rows[row]["uniform" if agent == "uniform" else "values"].items()}
        else:
            values = agent_values(part, agent)
        shared = sorted(set(values) & set(merged))
        if shared:
            raise ValueError(f"{source}: seed {shared[0]} is in two of its sources")
        merged |= values
    return merged


def cell_values(prefix: str) -> dict[int, dict[str, float]]:
    """Seed -> column -> value of the headroom cells ``<prefix>__<seed>.json``."""
    values = {}
    for path in sorted(Path(prefix).parent.glob(Path(prefix).name + "__*.json")):
        cell = json.loads(path.read_text())
        values[int(cell["seed"])] = {column: float(cell["metrics"][column]) for column in COLUMNS}
    if not values:
        raise ValueError(f"--oracle-cells {prefix}: no cells {prefix}__<seed>.json")
    return values


def combine(rows: dict[str, dict[int, dict[str, float]]], uniform: dict[int, dict[str, float]],
            oracle: dict[int, dict[str, float]]) -> dict[str, Any]:  # fmt: skip
    """Per row: seeds, per-seed values, ratio intervals and normalised scores against the shared references."""
    report_runs = [
        {"agent": name, "seed": seed, "values": values}
        for name, by_seed in {**rows, "uniform": uniform, "oracle": oracle}.items()
        for seed, values in by_seed.items()
    ]
    normalized = normalized_within({"runs": report_runs})
    table: dict[str, Any] = {}
    for name, by_seed in {"oracle": oracle, **rows}.items():
        seeds = sorted(set(by_seed) & set(uniform) & set(oracle))
        if not seeds:
            raise ValueError(f"{name}: no seed shared with the uniform and oracle references")
        ratios = {
            column: mean_ci(by_seed[seed][column] / uniform[seed][column] for seed in seeds).to_dict()
            for column in RATIO_COLUMNS
        }
        table[name] = {
            "seeds": seeds,
            "values": {seed: {column: by_seed[seed][column] for column in COLUMNS} for seed in seeds},
            "uniform": {seed: {column: uniform[seed][column] for column in COLUMNS} for seed in seeds},
            "ratio_to_uniform": ratios,
            "normalized": {column: normalized.get(name, {}).get(column) for column in NORMALIZED_COLUMNS},
        }
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = [
        "| sampler | seeds | F1-max ratio [95 % CI] | AUPRO ratio [95 % CI] | normalised F1-max [bootstrap] |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        f1, aupro = (row["ratio_to_uniform"][column] for column in RATIO_COLUMNS[:2])
        score = row["normalized"].get("predictor/pixel_f1_max")
        score_text = (
            f"{score['mean']:.2f} [{score['ci_low']:.2f}, {score['ci_high']:.2f}]"
            if score and score["mean"] is not None
            else "–"
        )
        lines.append(
            f"| {name} | {row['seeds'][0]}–{row['seeds'][-1]} ({len(row['seeds'])}) | "
            f"{f1['mean']:.3f} [{f1['ci_low']:.3f}, {f1['ci_high']:.3f}] | "
            f"{aupro['mean']:.3f} [{aupro['ci_low']:.3f}, {aupro['ci_high']:.3f}] | {score_text} |"
        )
    return "\n".join(lines)


def versus(table: dict[str, Any], rows: dict[str, dict[int, dict[str, float]]], label: str) -> str:
    """Each other row's per-seed F1-max ratio to row ``label``'s, as a markdown table; each interval is also
    added to ``table`` (``f1_ratio_to_<label>``)."""
    lines = [f"| sampler | F1-max ratio to {label} [95 % CI] | seeds above / below |", "|---|---|---|"]
    reference = rows[label]
    column = RATIO_COLUMNS[0]
    for name, by_seed in rows.items():
        if name == label:
            continue
        seeds = sorted(set(by_seed) & set(reference))
        ratios = [by_seed[seed][column] / reference[seed][column] for seed in seeds]
        interval = mean_ci(ratios)
        above, below = sum(r > 1 for r in ratios), sum(r < 1 for r in ratios)
        table[name]["f1_ratio_to_" + label] = interval.to_dict()
        lines.append(f"| {name} | {interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}] | {above} / {below} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--uniform",
        required=True,
        metavar="SOURCE",
        help="compare folder whose uniform runs are the reference, FILE.json:ROW, or several joined with +",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--oracle", metavar="SOURCE", help="compare folder holding oracle runs (a source, as --uniform's)"
    )
    source.add_argument("--oracle-cells", help="headroom cell prefix, e.g. docs/headroom/cells/v1__clean__e1")
    parser.add_argument("--rows", nargs="+", required=True, metavar="LABEL=SOURCE:AGENT")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds, in every row and reference")
    parser.add_argument(
        "--versus", metavar="LABEL", help="also each row's per-seed F1-max ratio to this row's (e.g. the best rule)"
    )
    parser.add_argument("--out", type=Path, help="JSON file to write (the table is printed either way)")
    args = parser.parse_args()
    rows = {}
    for entry in args.rows:
        label, _, target = entry.partition("=")
        folder, _, agent = target.rpartition(":")
        if not label or not folder or not agent:
            parser.error(f"--rows: expected LABEL=SOURCE:AGENT, got {entry!r}")
        if label in ("uniform", "oracle"):
            parser.error(f"--rows: {label!r} names a reference; give the row another label")
        rows[label] = source_values(folder, agent)
    uniform = source_values(args.uniform, "uniform")
    oracle = source_values(args.oracle, "oracle") if args.oracle else cell_values(args.oracle_cells)
    if args.seeds is not None:
        keep = set(args.seeds)
        rows = {label: {s: v for s, v in by_seed.items() if s in keep} for label, by_seed in rows.items()}
        uniform = {s: v for s, v in uniform.items() if s in keep}
        oracle = {s: v for s, v in oracle.items() if s in keep}
    if args.versus is not None and args.versus not in rows:
        parser.error(f"--versus {args.versus}: not a label of --rows ({', '.join(rows)})")
    table = combine(rows, uniform, oracle)
    print(markdown(table))
    if args.versus is not None:
        print()
        print(versus(table, rows, args.versus))
    if args.out is not None:
        record = {"command": shlex.join(["python", "benchmarks/combine.py", *sys.argv[1:]]), "rows": table}
        write_text_atomic(args.out, json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
