"""Generative heads on the shared retrieval core: RISSOLE (block diffusion); RDM and RARM later."""
