"""rissole: compact retrieval-guided image generation (RISSOLE, RDM, RARM)."""

__version__ = "0.1.0"
