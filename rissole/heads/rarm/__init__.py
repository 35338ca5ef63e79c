"""RARM (the RDM paper, Sec. 3.2.2): an autoregressive transformer over VQ codes, cross-attending to neighbour
embeddings."""
