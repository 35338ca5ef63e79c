"""The retrieval core shared by RISSOLE, RDM and RARM: block database, searchers, neighbour tables, proposal.

Numpy only (no torch), so the edge runtime uses it as it is.
"""

from rissole.retrieval.blocks import merge_blocks, split_blocks
from rissole.retrieval.database import BlockDatabase, build_database, open_database

__all__ = ["BlockDatabase", "build_database", "merge_blocks", "open_database", "split_blocks"]
