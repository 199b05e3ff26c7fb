"""One table over several draws of the same seeds: rows of ``combine.py`` outputs pooled, each (draw, seed) one sample.

Runs of one seed on two machines are two trajectories (float kernels differ; ``docs/RESULTS.md``, "A second
machine"), so each machine's ``combine.py --out`` file is a draw of its own, with its own ``uniform`` and
oracle runs. This pools them: every (draw, seed) pair is one sample, paired with the ``uniform`` and oracle
of its own draw, and the ratios, normalised scores and ``--versus`` ratios are ``combine.py``'s over all
samples. A pooled row names its row in each draw, in the order of ``--draws`` (``-`` where a draw lacks it):

    python benchmarks/pool_draws.py --draws docs/tuning/v1_quantile_n4.json docs/curves_v1/combined.json \\
        --rows ppo=ppo_4_envs,ppo self_paced=self_paced,self_paced --versus self_paced
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nbs_gym.io import write_text_atomic

SEEDS_PER_DRAW = 1000
"""Sample ``d * SEEDS_PER_DRAW + seed`` is seed ``seed`` of draw ``d`` (the ``--draws`` position)."""


def _combine() -> Any:
    spec = importlib.util.spec_from_file_location("combine", Path(__file__).with_name("combine.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pooled(draws: list[dict[str, Any]], rows: dict[str, list[str]]) -> tuple[dict[str, Any], ...]:
    """``(rows, uniform, oracle)``: seed -> column -> value of each pooled row and of the references.

    Args:
        draws: The ``rows`` of each draw's ``combine.py`` output.
        rows: Label -> the row's name in each draw (``"-"``: none there).

    Raises:
        ValueError: A row name a draw does not have, a list of the wrong length, or rows of one draw whose
            ``uniform`` values differ (they were not made against one reference).
    """
    values: dict[str, dict[int, dict[str, float]]] = {label: {} for label in rows}
    uniform: dict[int, dict[str, float]] = {}
    oracle: dict[int, dict[str, float]] = {}
    for number, draw in enumerate(draws):
        if "oracle" not in draw:
            raise ValueError(f"draw {number + 1}: no oracle row")
        references: dict[int, dict[str, float]] = {}
        for label, names in {"oracle": ["oracle"] * len(draws), **rows}.items():
            if len(names) != len(draws):
                raise ValueError(f"--rows {label}: {len(names)} names for {len(draws)} draws")
            name = names[number]
            if name == "-":
                continue
            if name not in draw:
                raise ValueError(f"--rows {label}: draw {number + 1} has no row {name!r} (rows: {', '.join(draw)})")
            for seed, reference in draw[name]["uniform"].items():
                if references.setdefault(int(seed), reference) != reference:
                    raise ValueError(f"draw {number + 1}: rows {name!r} and others have different uniform runs")
            target = oracle if label == "oracle" else values[label]
            for seed, row_values in draw[name]["values"].items():
                target[number * SEEDS_PER_DRAW + int(seed)] = row_values
        uniform |= {number * SEEDS_PER_DRAW + seed: reference for seed, reference in references.items()}
    return values, uniform, oracle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", nargs="+", required=True, type=Path, metavar="FILE.json")
    parser.add_argument("--rows", nargs="+", required=True, metavar="LABEL=ROW,ROW,...")
    parser.add_argument("--versus", metavar="LABEL", help="also each row's per-sample F1-max ratio to this row's")
    parser.add_argument("--out", type=Path, help="JSON file to write (the table is printed either way)")
    args = parser.parse_args(argv)
    combine = _combine()
    draws = []
    for path in args.draws:
        if not path.is_file():
            print(f"error: --draws {path}: no such file", file=sys.stderr)
            return 2
        draws.append(json.loads(path.read_text())["rows"])
    rows = {}
    for entry in args.rows:
        label, _, names = entry.partition("=")
        if not label or not names:
            parser.error(f"--rows: expected LABEL=ROW,ROW,..., got {entry!r}")
        if label in ("uniform", "oracle"):
            parser.error(f"--rows: {label!r} names a reference; give the row another label")
        rows[label] = names.split(",")
    if args.versus is not None and args.versus not in rows:
        parser.error(f"--versus {args.versus}: not a label of --rows ({', '.join(rows)})")
    try:
        values, uniform, oracle = pooled(draws, rows)
        table = combine.combine(values, uniform, oracle)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(draws)} draws; a sample is (draw, seed), numbered draw * {SEEDS_PER_DRAW} + seed\n")
    print(combine.markdown(table))
    if args.versus is not None:
        print()
        print(combine.versus(table, values, args.versus))
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/pool_draws.py", *(sys.argv[1:] if argv is None else argv)])
        write_text_atomic(args.out, json.dumps({"command": command, "rows": table}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
