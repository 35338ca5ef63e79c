"""Exceptions that carry a message a user can act on (file, expected, found, fix), and the one way
the three commands (rissole, rissole-export, rissole-run) turn them into an exit status."""

from __future__ import annotations

import sys
from typing import Callable


class RissoleError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(RissoleError):
    """A data file is missing, truncated, corrupt or of the wrong shape."""


class CheckpointError(RissoleError):
    """A checkpoint is missing, corrupt, or does not match the model or database."""


class ConfigError(RissoleError):
    """A configuration file has a missing or invalid entry."""


def run_command(prog: str, run: Callable[[], int | None], interrupted: str) -> int:
    """Run a command's body: a RissoleError prints `prog: error: message` without a traceback (exit 2),
    Ctrl-C prints `prog: interrupted; <interrupted>` (exit 130, what is on disk is said by the caller)."""
    try:
        return int(run() or 0)
    except RissoleError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
