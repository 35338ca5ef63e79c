"""Generative heads on the shared retrieval core: RISSOLE (block diffusion), RDM (latent diffusion with
cross-attention to neighbour embeddings) and RARM (autoregressive over VQ codes); rissole.heads.registry
names each one's parts."""
