"""RDM (the RDM paper, Sec. 3.2.1): latent diffusion with cross-attention to neighbour embeddings."""
