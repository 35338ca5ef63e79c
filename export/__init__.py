"""rissole-export: a trained RISSOLE, RDM or RARM checkpoint and its database as a self-contained edge bundle
(ONNX, TensorRT)."""
