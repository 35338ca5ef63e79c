"""Progress bars: tqdm's where it is installed (the training environment), else a plain one on stderr,
so the runtime distribution needs nothing beyond numpy, onnxruntime and pillow."""

from __future__ import annotations

import sys
from typing import Any


class PlainBar:
    """The part of tqdm's interface the runtime uses: a context manager with update(n)."""

    def __init__(self, total: int, desc: str, unit: str, disable: bool) -> None:
        self.total, self.desc, self.unit, self.disable, self.n = total, desc, unit, disable, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable:
            print(f"\r{self.desc}: {self.n}/{self.total} {self.unit}", end="", file=sys.stderr, flush=True)

    def __enter__(self) -> "PlainBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.disable and self.n:
            print(file=sys.stderr)


def progress_bar(total: int, desc: str, unit: str, disable: bool = False, **tqdm_options: Any) -> Any:
    """A bar over `total` units: tqdm(total, desc, unit, disable, **tqdm_options) if installed, else PlainBar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainBar(total, desc, unit, disable)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, **tqdm_options)
