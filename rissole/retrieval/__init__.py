"""The retrieval core shared by RISSOLE, RDM and RARM: block database, searchers, neighbour tables, proposal.

Numpy only (no torch). Its read side (split/merge, the memory-mapped database and tables, p_D) is
the runtime distribution's, rissole_runtime.retrieval; building and searching are here.
"""

from rissole_runtime.retrieval.blocks import merge_blocks, split_blocks
from rissole.retrieval.database import BlockDatabase, build_database, open_database

__all__ = ["BlockDatabase", "build_database", "merge_blocks", "open_database", "split_blocks"]
