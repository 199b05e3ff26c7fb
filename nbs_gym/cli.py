"""What the package's command lines share: bad input is one ``error:`` line, not a usage block."""

from __future__ import annotations

import argparse
import typing


class UsageError(ValueError):
    """A malformed command line; reported as one ``error:`` line instead of argparse's usage block."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)
