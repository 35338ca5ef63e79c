"""rissole-runtime: the torch-free edge sampler (numpy + onnxruntime) over RISSOLE, RDM and RARM bundles
written by rissole-export, and the numpy code the training package shares with it (diffusion, retrieval
readers, file I/O, errors)."""

__version__ = "0.1.0"
