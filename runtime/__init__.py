"""rissole-run: the torch-free edge sampler (numpy + onnxruntime) over a bundle written by rissole-export."""
