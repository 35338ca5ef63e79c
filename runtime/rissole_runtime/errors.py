"""Exceptions that carry a message a user can act on (file, expected, found, fix), and the one way
the three commands (rissole, rissole-export, rissole-run) turn them into an exit status.

Standard library only: the torch-free runtime raises these too."""

from __future__ import annotations

import errno
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
    """Run a command's body: a RissoleError prints `prog: error: message` without a traceback (exit 2), so does a
    full disk (ENOSPC) that no writer turned into a RissoleError first; Ctrl-C prints `prog: interrupted; <interrupted>` (exit 130, what is on disk is said by the caller)."""
    try:
        return int(run() or 0)
    except RissoleError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}no space left on device while writing. Free some space and run the command "
              "again; what was there before is unchanged.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
