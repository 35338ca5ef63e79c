"""RISSOLE (the RISSOLE paper): block-wise retrieval-guided latent diffusion, one denoiser for all blocks."""
