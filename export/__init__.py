"""rissole-export: a trained RISSOLE checkpoint and its database as a self-contained edge bundle (ONNX, TensorRT)."""
