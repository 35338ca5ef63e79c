"""rissole-export: a trained RISSOLE or RDM checkpoint and its database as a self-contained edge bundle (ONNX,
TensorRT). RARM export is a follow-up."""
