"""Precision rewrites of a cleaned ONNX graph: Q/DQ placement and insertion (qdq), FP16
conversion and its FP32 simulation (fp16)."""
