"""Facts about the machine a benchmark ran on, recorded beside every result."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone


def machine_info() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import torch

    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }


def write_results(res: dict, out: str | os.PathLike, markdown: str) -> None:
    """A benchmark's results: the JSON at `out`, its markdown table beside it (.md), the table printed."""
    from pathlib import Path

    from rissole.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(Path(out), res)
    write_text_atomic(Path(out).with_suffix(".md"), markdown)
    print(markdown)
