"""rissole: compact retrieval-guided image generation (RISSOLE, RDM, RARM).

The numpy code the torch-free runtime shares with training lives in the `rissole-runtime`
distribution (import name rissole_runtime). Modules that moved there keep their old import paths
(`rissole.errors`, `rissole.diffusion.schedule`, ...) as aliases of the same module objects, so an
exception class or a sampler is one object whichever path imported it.
"""

import importlib as _importlib
import sys as _sys

__version__ = "0.1.0"

_MOVED = {  # old import path -> the module in rissole_runtime
    "rissole.errors": "rissole_runtime.errors",
    "rissole.fileio": "rissole_runtime.fileio",
    "rissole.images": "rissole_runtime.images",
    "rissole.diffusion.schedule": "rissole_runtime.diffusion.schedule",
    "rissole.diffusion.loop": "rissole_runtime.diffusion.loop",
    "rissole.diffusion.solvers": "rissole_runtime.diffusion.solvers",
    "rissole.diffusion.noise": "rissole_runtime.diffusion.noise",
    "rissole.retrieval.blocks": "rissole_runtime.retrieval.blocks",
    "rissole.retrieval.proposal": "rissole_runtime.retrieval.proposal",
}
for _old, _new in _MOVED.items():
    _sys.modules.setdefault(_old, _importlib.import_module(_new))
