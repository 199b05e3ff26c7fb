"""What a learned sampler's batches were made of at the end of its training, run by run.

For every run under ``RUNS`` (``nbs_gym.compare``'s ``OUT/runs``) that logged batch compositions
(``nbs/composition/group_<g>`` in TensorBoard: each training episode's mean probability of loss stratum
``g``, 0 the lowest-loss stratum), prints the mean over its last ``--last`` logged points of each
stratum's share, and the stratum it favoured most. With four envs a logged point is the mean of the
episodes that ended together.

    python benchmarks/compositions.py results/study_v1_strata/ic_stain/runs --last 10
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAG = re.compile(r"nbs/composition/group_(\d+)")


def last_composition(run_dir: Path, last: int) -> np.ndarray | None:
    """Per stratum, the mean of its share over the run's last ``last`` logged points; ``None`` if none logged."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    groups = sorted(
        (int(match.group(1)), tag) for tag in events.Tags()["scalars"] if (match := TAG.fullmatch(tag)) is not None
    )
    if not groups:
        return None
    shares = []
    for _, tag in groups:
        by_step = {event.step: event.value for event in events.Scalars(tag)}  # a resumed run's later value wins
        shares.append(float(np.mean([by_step[step] for step in sorted(by_step)[-last:]])))
    return np.array(shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of run folders (nbs_gym.compare's OUT/runs)")
    parser.add_argument("--last", type=int, default=10, help="logged points averaged, from the end (default 10)")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"--last: must be >= 1, got {args.last}")
    if not args.runs.is_dir():
        print(f"error: {args.runs}: no such folder", file=sys.stderr)
        return 2
    rows = [(run.name, last_composition(run, args.last)) for run in sorted(args.runs.iterdir()) if run.is_dir()]
    rows = [(name, shares) for name, shares in rows if shares is not None]
    if not rows:
        print(f"error: {args.runs}: no run logged nbs/composition/group_*", file=sys.stderr)
        return 2
    width = max(len(shares) for _, shares in rows)
    print(f"{'run':24s}" + "".join(f"{f'group_{g}':>10s}" for g in range(width)) + f"{'most':>8s}")
    for name, shares in rows:
        cells = "".join(f"{share:10.3f}" for share in shares)
        print(f"{name:24s}{cells}{int(np.argmax(shares)):8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
