"""Where the runs of ``nbs_gym.compare`` and ``nbs_gym.study`` are made: in this process, or as Ray tasks.

A :class:`RunPlan` is one (dataset, agent, seed) run: its folder and its :class:`nbs_gym.train.Args`.
Both backends make a plan the same way (:func:`make_run`): a run whose ``metrics.json`` exists is done;
one with a checkpoint (or a saved agent) continues from it; one interrupted before its first checkpoint
starts again; so that the same command resumes a grid, whichever backend made its runs.

:class:`InProcess` makes the runs one after another, and stops at the first that fails. :class:`RayBackend`
submits every run as one Ray task (``num_cpus``/``num_gpus`` per run, fractions allowed), on a local Ray
with this machine's cores or on the cluster at ``address``; a worker that dies is retried by Ray and its
run resumes from its last checkpoint; a run that fails is reported once, with its error, and the others
go on. Workers that see the driver's output folder (a local Ray, or a cluster on shared storage) write the
run folder in place; the others make the run in a temporary folder and return it to the driver, which
moves it into place whole.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from stable_baselines3.common.callbacks import BaseCallback

from nbs_gym import train
from nbs_gym.callbacks import latest_checkpoint
from nbs_gym.cli import Interrupted
from nbs_gym.io import remove_temporaries

__all__ = [
    "BACKENDS",
    "Backend",
    "InProcess",
    "RayBackend",
    "RunFailure",
    "RunPlan",
    "check_address",
    "make_run",
    "pack_run",
    "ray_available",
    "run_on_worker",
    "unpack_run",
]

BACKENDS = ("inprocess", "ray")
"""The names ``--backend`` takes."""

METRICS_FILE = "metrics.json"
_MARKER_PREFIX = ".driver-"
_RAY_EXTRA = "pip install -e \".[ray]\" (or pip install 'ray[tune]')"


@dataclass(frozen=True)
class RunPlan:
    """One run of a grid: its label (for messages), its folder and the arguments that make it."""

    label: str
    run_dir: Path
    args: train.Args


@dataclass(frozen=True)
class RunFailure:
    """A run that did not finish: its plan and the error, as one line."""

    plan: RunPlan
    error: str


class Backend(Protocol):
    """Makes every unfinished run of a grid."""

    def start(self) -> None:
        """Get ready to make runs (for Ray: start or join it); :meth:`execute` calls it when a run is left.

        Raises:
            ValueError: The backend cannot start (one line naming the setting at fault).
        """
        ...

    def execute(self, plans: Sequence[RunPlan], *, progress: bool = True) -> list[RunFailure]:
        """Make (or resume) each plan's run; returns the runs that failed, each with its error."""
        ...


def finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` has its ``metrics.json`` (written last, atomically)."""
    return (run_dir / METRICS_FILE).is_file()


def make_run(
    plan: RunPlan,
    *,
    progress: bool = True,
    report: bool = True,
    callbacks: Sequence[BaseCallback] = (),
    announce: Callable[[str], None] | None = None,
) -> str:
    """Make, continue or skip the run of ``plan``; returns what was done, for the grid's log.

    ``progress=False`` hides the training progress bar of a continued run too (its saved settings may
    have shown it); ``report`` and ``callbacks`` are :func:`nbs_gym.train.run`'s. ``announce`` is told
    what is about to happen ("training in ...", "continuing ...", "restarting ...", "done already ...")
    before the run starts.

    Raises:
        ValueError, OSError: The run failed on its settings or its files (named).
        nbs_gym.cli.Interrupted: Ctrl-C; the run continues from its checkpoint next time.
    """
    run_dir = plan.run_dir
    tell = announce or (lambda _: None)
    if finished(run_dir):
        tell(f"done already ({run_dir})")
        return f"done already ({run_dir})"
    args = plan.args
    if (run_dir / train.CONFIG_FILE).is_file():
        if _resumable(run_dir):
            # The rest of the settings are in the run's config.yaml, checked equal to the plan's.
            args = train.resume_args(run_dir, **({} if progress else {"progress": False}))
            tell(f"continuing the interrupted run in {run_dir}")
            action = f"continued the interrupted run in {run_dir}"
        else:
            tell(f"restarting {run_dir}, interrupted before its first checkpoint")
            shutil.rmtree(run_dir)
            action = f"restarted {run_dir}, interrupted before its first checkpoint"
    else:
        tell(f"training in {run_dir}")
        action = f"trained in {run_dir}"
    if not progress:
        args = replace(args, progress=False)
    train.run(args, report=report, callbacks=callbacks)
    return action


def _resumable(run_dir: Path) -> bool:
    """Whether ``nbs_gym.train --resume`` can continue the run: it has a checkpoint or a saved agent."""
    return latest_checkpoint(run_dir / "checkpoints") is not None or any(run_dir.glob("agent.*"))


@dataclass(frozen=True)
class InProcess:
    """The runs one after another in this process; the first failure stops the grid (it is raised)."""

    def start(self) -> None:
        """Nothing to start."""

    def execute(self, plans: Sequence[RunPlan], *, progress: bool = True) -> list[RunFailure]:
        """Make each unfinished run in turn.

        Raises:
            ValueError, OSError: A run that failed on its settings (named); the runs after it are not made.
            KeyboardInterrupt: Ctrl-C; the interrupted run resumes when the grid is run again.
        """
        for index, plan in enumerate(plans, start=1):
            label = f"[{index}/{len(plans)}] {plan.label}"

            def announce(doing: str, label: str = label) -> None:
                print(f"{label}: {doing}", flush=True)

            make_run(plan, progress=progress, announce=announce)
        return []


def ray_available() -> bool:
    """Whether Ray (the ``ray`` extra) is installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class RayBackend:
    """Each run is one Ray task; the grid's runs share the cluster's CPUs and GPUs.

    Attributes:
        address: A running Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); ``None`` starts a
            local Ray with this machine's cores (or uses the one this process has already started).
        cpus_per_run: CPUs each run holds (Ray's ``num_cpus``; a fraction lets runs share a core). A run
            uses that many torch threads (at least one).
        gpus_per_run: GPUs each run holds (``num_gpus``; ``0.25`` puts four runs on one GPU). With a GPU,
            give the runs ``device=cuda`` or ``auto``.
        max_retries: Times Ray runs a task again after its worker died; the run resumes from its last
            checkpoint each time.

    Raises:
        ValueError: Ray is not installed, or a bad resource figure (each named).
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if not ray_available():
            raise ValueError(f"--backend ray: Ray is not installed; {_RAY_EXTRA}")
        for flag, value in (("--cpus-per-run", self.cpus_per_run), ("--gpus-per-run", self.gpus_per_run)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{flag}: must be a number >= 0, got {value!r}")
        if not self.cpus_per_run > 0:
            raise ValueError(f"--cpus-per-run: must be > 0, got {self.cpus_per_run!r}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise ValueError(f"--gpus-per-run: a figure above 1 must be whole, got {self.gpus_per_run!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"--max-retries: must be an integer >= 0, got {self.max_retries!r}")
        if self.address is not None:
            _host_port(self.address)

    def start(self) -> None:
        """Start a local Ray or join the one at ``address``, unless this process has already joined one.

        Raises:
            ValueError: Nothing answers at ``address`` (one line naming it).
        """
        import ray

        if self.address is not None:
            check_address(self.address)
        if ray.is_initialized():
            return
        try:
            if self.address is None:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
            else:
                ray.init(address=self.address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            reason = " ".join(str(error).split())
            where = f"--address {self.address}" if self.address else "--backend ray"
            raise ValueError(f"{where}: cannot start or join Ray ({reason})") from None

    def execute(self, plans: Sequence[RunPlan], *, progress: bool = True) -> list[RunFailure]:
        """Submit every unfinished run, wait for all of them, and return those that failed.

        A finished run is skipped; the others resume as :func:`make_run` says. On Ctrl-C the runs in
        flight are cancelled (each saves a checkpoint first where it can) and :class:`Interrupted` is raised.
        """
        import ray
        from tqdm.auto import tqdm

        todo = [plan for plan in plans if not finished(plan.run_dir)]
        for plan in plans:
            if finished(plan.run_dir):
                print(f"{plan.label}: done already ({plan.run_dir})")
        if not todo:
            return []
        self.start()
        task = ray.remote(run_on_worker).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,  # an error in a run's settings is not cured by running it again
        )
        threads = max(1, int(self.cpus_per_run))
        failures: list[RunFailure] = []
        with _driver_markers(todo) as marker:
            pending = {task.remote(_absolute(plan), marker, os.getcwd(), threads): plan for plan in todo}
            bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress, file=sys.stderr)
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    plan = pending.pop(done[0])
                    try:
                        action, archive = ray.get(done[0])
                    except Exception as error:  # noqa: BLE001 — every way a task fails is reported, once
                        failure = RunFailure(plan, _task_error(error))
                        failures.append(failure)
                        bar.write(f"error: {plan.label}: {failure.error}", file=sys.stderr)
                    else:
                        try:
                            if archive is not None:
                                unpack_run(archive, plan.run_dir)
                        except (OSError, ValueError, tarfile.TarError) as error:
                            failures.append(RunFailure(plan, f"returning the run folder: {error}"))
                            bar.write(f"error: {plan.label}: returning the run folder: {error}", file=sys.stderr)
                        else:
                            bar.write(f"{plan.label}: {action}")
                    bar.update()
            except KeyboardInterrupt:
                for reference in pending:
                    ray.cancel(reference)  # a KeyboardInterrupt in the task: train checkpoints, then stops
                with contextlib.suppress(Exception):
                    ray.wait(list(pending), num_returns=len(pending), timeout=60)
                raise Interrupted("interrupted; run the same command again to resume") from None
            finally:
                bar.close()
        return failures


def check_address(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) address must accept a connection.

    Raises:
        ValueError: It does not, or it is not such an address (``auto`` is left to Ray).
    """
    where = _host_port(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout):
            pass
    except OSError as error:
        raise ValueError(f"--address {address}: no Ray cluster answers there ({error.strerror or error})") from None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; ``None`` for ``auto``.

    Raises:
        ValueError: Neither form.
    """
    if address == "auto":
        return None
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


@contextlib.contextmanager
def _driver_markers(plans: Sequence[RunPlan]) -> Iterator[str]:
    """A file beside the plans' run folders that a worker sharing the driver's storage can see."""
    name = f"{_MARKER_PREFIX}{uuid.uuid4().hex}"
    folders = sorted({plan.run_dir.absolute().parent for plan in plans})
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    try:
        yield name
    finally:
        for folder in folders:
            (folder / name).unlink(missing_ok=True)


def _absolute(plan: RunPlan) -> RunPlan:
    run_dir = plan.run_dir.absolute()
    return replace(plan, run_dir=run_dir, args=replace(plan.args, run_dir=str(run_dir)))


def run_on_worker(plan: RunPlan, marker: str | None, driver_cwd: str, threads: int) -> tuple[str, bytes | None]:
    """What each Ray task runs: :func:`make_run` with ``threads`` torch threads; returns what was done
    and, unless the run was made in place, the run folder as an archive for :func:`unpack_run`.

    Where the file ``marker`` beside the plan's run folder is visible, the worker shares the driver's
    storage: it works in ``driver_cwd`` (relative dataset paths mean the same there) and writes the run in
    place. Elsewhere (``marker`` ``None`` or not found) it makes the run in a temporary folder.
    """
    import torch

    torch.set_num_threads(threads)
    shared = marker is not None and (plan.run_dir.parent / marker).is_file()
    if shared:
        here = os.getcwd()
        os.chdir(driver_cwd if Path(driver_cwd).is_dir() else here)
        try:
            return make_run(plan, progress=False, report=False), None
        finally:
            os.chdir(here)
    with tempfile.TemporaryDirectory(prefix="nbs_gym_run_") as scratch:
        local = Path(scratch) / plan.run_dir.name
        action = make_run(
            replace(plan, run_dir=local, args=replace(plan.args, run_dir=str(local))), progress=False, report=False
        )
        return f"{action.replace(str(local), str(plan.run_dir))} (on a worker, returned)", pack_run(local)


def pack_run(run_dir: Path) -> bytes:
    """The run folder as a gzip'd tar (names relative to it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(run_dir, arcname=".")
    return buffer.getvalue()


def unpack_run(archive: bytes, run_dir: Path) -> None:
    """Put a returned run folder at ``run_dir`` whole: unpacked beside it, then renamed into place."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp", dir=run_dir.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as bundle:
            bundle.extractall(staging, filter="data")
        remove_temporaries(staging)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished attempt (finished runs are never resubmitted)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _task_error(error: BaseException) -> str:
    """One line for a failed task: the run's own error where there is one, else what Ray reports."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"
