"""rissole-run: the torch-free edge sampler (numpy + onnxruntime) over a RISSOLE or RDM bundle written by
rissole-export."""
