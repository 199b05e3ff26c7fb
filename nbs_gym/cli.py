"""What the package's command lines share: bad input is one ``error:`` line, not a usage block."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable

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


def run_resumable(body: Callable[[], int]) -> int:
    """Run a resumable command's ``body`` and map its ways out to exit statuses.

    ``--help`` (argparse's ``SystemExit``) returns its code, bad input (``ValueError``/``OSError``) is one
    ``error:`` line and :data:`EXIT_BAD_INPUT`, Ctrl-C prints how to resume and returns 130.
    """
    try:
        return body()
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    except (ValueError, OSError) as error:
        return bad_input(str(error))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
