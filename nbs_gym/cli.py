"""What the package's command lines share: bad input is one ``error:`` line, not a usage block."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import typing
import warnings
from collections.abc import Callable, Iterator
from types import FrameType

EXIT_BAD_INPUT = 2
"""Exit status of a command given bad input (flags, files, settings)."""


class UsageError(ValueError):
    """A malformed command line; reported as one ``error:`` line instead of argparse's usage block."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def bad_input(message: str) -> int:
    """Print ``message`` as the one ``error:`` line on stderr; returns :data:`EXIT_BAD_INPUT`."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def check_device(flag: str, device: str) -> None:
    """Raise a :class:`ValueError` naming ``flag`` if ``device`` asks for a CUDA device this machine lacks."""
    import torch  # here, so that the parsers stay fast to import

    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ValueError(f"{flag} {device}: no CUDA device is available here (use cpu or auto)")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show each warning as one ``warning: MESSAGE`` line on stderr, without the source line under it."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: typing.TextIO | None = None,
        line: str | None = None,
    ) -> None:
        print(f"warning: {message}", file=sys.stderr if file is None else file)

    original = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


EXIT_INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)."""

RESUME_NOTE = "interrupted; run the same command again to resume"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command saved what it could; the message (already printed) says how to go on."""


class StopRequest:
    """Ctrl-C as a request to stop at the next safe point, instead of a ``KeyboardInterrupt`` wherever it lands.

    Inside ``with StopRequest(note) as stop:`` the first Ctrl-C sets :attr:`requested` and prints ``note`` on
    stderr; the code polls it where stopping leaves everything whole (training: between env steps, so that
    no interrupt lands inside torch's, SB3's or TensorBoard's own code and leaves a lock held). A second
    Ctrl-C raises ``KeyboardInterrupt`` at once, as without it. Ray's ``ray.cancel`` of a task is a Ctrl-C
    in the task's process and is handled the same way.

    Python runs signal handlers on the main thread only: elsewhere (a Ray Tune trial runs on its own
    thread), and where Ctrl-C is ignored, it changes nothing and :attr:`requested` stays ``False``.
    """

    def __init__(self, note: str) -> None:
        self.note = note
        self.requested = False
        self._previous: Callable[[int, FrameType | None], object] | int | None = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGINT, self._request)
                self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self._restore()  # the next Ctrl-C interrupts at once
        message = f"\n{self.note} (Ctrl-C again stops at once)\n"
        try:
            sys.stderr.write(message)
            sys.stderr.flush()
        except (RuntimeError, OSError, ValueError):  # the signal came inside a write to stderr: no reentry
            os.write(2, message.encode())

    def _restore(self) -> None:
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


def run_resumable(body: Callable[[], int], interrupted: str | None = RESUME_NOTE) -> int:
    """Run a command's ``body`` and map its ways out to exit statuses: every command's one handler.

    ``--help`` (argparse's ``SystemExit``) returns its code, bad input (``ValueError``/``OSError``) is one
    ``error:`` line and :data:`EXIT_BAD_INPUT`, Ctrl-C prints ``interrupted`` (how to resume; ``None``:
    nothing, for a body that says it itself) and returns :data:`EXIT_INTERRUPTED`. Warnings are one line.
    """
    try:
        with one_line_warnings():
            return body()
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    except (ValueError, OSError) as error:
        return bad_input(str(error))
    except KeyboardInterrupt:
        if interrupted is not None:
            print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED


def exit_process(status: int) -> typing.NoReturn:
    """End a command's process with ``status``; after Ctrl-C at once, without the interpreter's shutdown.

    What Ctrl-C interrupted is saved and closed by then (checkpoints are atomic, the message is printed).
    An interrupt can land inside torch's or TensorBoard's own code, and about one exit in twenty after
    that then hangs in torch's operator-library finalizers at interpreter shutdown; skipping shutdown
    (``os._exit`` once stdout and stderr are flushed) ends the process as the status says. A local Ray
    cluster the command started (compare's and study's ``--backend ray``, tune) is shut down first, as
    its exit handler would have.
    """
    if status == EXIT_INTERRUPTED:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _console_script(module: str) -> Callable[[], typing.NoReturn]:
    """The console script of ``module``'s ``main`` (``pyproject.toml``'s ``[project.scripts]``)."""

    def run() -> typing.NoReturn:
        exit_process(importlib.import_module(module).main())

    run.__doc__ = f":func:`{module}.main` as a console script, ended by :func:`exit_process`."
    return run


train_script = _console_script("nbs_gym.train")
classify_script = _console_script("nbs_gym.classify")
compare_script = _console_script("nbs_gym.compare")
study_script = _console_script("nbs_gym.study")
tune_script = _console_script("nbs_gym.tune")
