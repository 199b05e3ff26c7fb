"""``python tests/killing_train.py FAULT TRAIN_ARGS...``: ``nbs_gym.train`` killed by SIGKILL at one point.

The fault-injection tests run training through this script, which patches one function so that the
process kills itself (no Python cleanup runs, as under ``kill -9`` or the OOM killer) at:

``step=N``          the first env step at or past N (with no checkpoint yet, if --checkpoint-freq > N); for a
                    plug-in that steps a Gymnasium env itself, the env step after N steps (needs
                    --checkpoint-freq, whose wrapper counts the steps)
``checkpoint=K``    the K-th checkpoint save, after half its file is written, before it is moved into place
``evaluation``      the first classifier fit of the evaluation, after the agent's profiles are written
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import nbs_gym.callbacks
import nbs_gym.evaluation
import nbs_gym.train


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_step(limit: int) -> None:
    on_step = nbs_gym.callbacks.EpisodeStatsCallback.on_step
    env_step = nbs_gym.callbacks.CheckpointingEnv.step

    def patched(self: Any) -> bool:
        if self.num_timesteps >= limit:
            _die()
        return on_step(self)

    def patched_env_step(self: Any, action: Any) -> Any:  # a plug-in that steps a Gymnasium env itself
        if self.num_timesteps >= limit:
            _die()
        return env_step(self, action)

    nbs_gym.callbacks.EpisodeStatsCallback.on_step = patched  # type: ignore[method-assign]
    nbs_gym.callbacks.CheckpointingEnv.step = patched_env_step


def _kill_in_checkpoint(number: int) -> None:
    save_through_temporary = nbs_gym.callbacks.save_through_temporary
    calls = 0

    def patched(save: Any, path: Path) -> Path:
        nonlocal calls
        calls += 1
        if calls < number:
            return save_through_temporary(save, path)
        temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
        save(temporary)
        temporary.write_bytes(temporary.read_bytes()[: temporary.stat().st_size // 2])
        _die()
        raise AssertionError("unreachable")

    nbs_gym.callbacks.save_through_temporary = patched


def _kill_in_evaluation() -> None:
    def patched(*args: Any, **kwargs: Any) -> Any:
        _die()

    nbs_gym.evaluation.fit_predictor = patched


if __name__ == "__main__":
    fault, *argv = sys.argv[1:]
    name, _, value = fault.partition("=")
    if name == "step":
        _kill_at_step(int(value))
    elif name == "checkpoint":
        _kill_in_checkpoint(int(value))
    elif name == "evaluation":
        _kill_in_evaluation()
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    sys.exit(nbs_gym.train.main(argv))
