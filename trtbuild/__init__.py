"""trtbuild: PyTorch/ONNX -> cleaned, calibrated, quantized TensorRT engines, with proof."""

__version__ = "0.1.0"
