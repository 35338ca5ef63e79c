"""Where the shipped checkpoints live (in the repository checkout; override with RISSOLE_CHECKPOINTS)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("RISSOLE_CHECKPOINTS", REPO_ROOT / "checkpoints"))
SHIPPED_VQGAN = CHECKPOINTS / "vqgan-fmnist-f4"
