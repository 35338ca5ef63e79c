"""The read side of the retrieval core (numpy only): block split/merge, the memory-mapped block database,
its neighbour tables and the proposal p_D with its pseudo-query sampler."""
