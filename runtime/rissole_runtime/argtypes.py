"""argparse `type=` functions for every numeric option of rissole, rissole-export and rissole-run.

A value outside its range, or not finite (nan, inf), is refused while the command line is parsed, with
a message that states the valid range: `argument --guidance: expected a finite number, found 'nan'`.
Standard library only, so the torch-free runtime parses its options with the same functions.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_num(hi)}"
    return ""


def _inside(x: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (x < lo or (lo_open and x == lo)):
        return False
    return hi is None or not (x > hi or (hi_open and x == hi))


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """A finite float in the given (optionally open) range."""
    want = " ".join(filter(None, ["a finite number", _bounds(lo, hi, lo_open, hi_open)]))

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, found {text!r}") from None
        if not math.isfinite(x) or not _inside(x, lo, hi, lo_open, hi_open):
            raise argparse.ArgumentTypeError(f"expected {want}, found {text!r}")
        return x

    parse.__name__ = "number"  # argparse names the type in some messages
    return parse


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (either end open-ended when None)."""
    want = " ".join(filter(None, ["an integer", _bounds(lo, hi, False, False)]))

    def parse(text: str) -> int:
        try:
            x = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, found {text!r}") from None
        if not _inside(x, lo, hi, False, False):
            raise argparse.ArgumentTypeError(f"expected {want}, found {text!r}")
        return x

    parse.__name__ = "integer"
    return parse


finite_float = float_range()
non_negative_float = float_range(0.0)
positive_float = float_range(0.0, lo_open=True)
fraction = float_range(0.0, 1.0, lo_open=True)  # top-m: a share of p_D, (0, 1]
positive_int = int_range(1)
non_negative_int = int_range(0)
seed = int_range(0, 2**32 - 1)  # numpy and torch generators take 32-bit non-negative seeds everywhere
steps = int_range(1, 1000)  # DDIM steps: at least one, at most the schedule's T = 1000 timesteps
# sampling knobs whose useful range is known: DDIM eta interpolates DDIM (0) and DDPM (1); a guidance scale
# beyond 100 or a temperature outside [1e-3, 100] only saturates (black images, one code everywhere)
ETA = float_range(0.0, 1.0)
GUIDANCE = float_range(0.0, 100.0)
TEMPERATURE = float_range(1e-3, 100.0)
