"""Everything TensorRT: the only package that imports `tensorrt` or `tensorrt_rtx`.

backend (which builder is installed, which architectures it can target), builder (ONNX ->
serialized engine), calibrator (TensorRT <= 10 implicit INT8), runtime (load, run and time an
engine with the runtime that built it), gpu (nvidia-smi facts; no CUDA import).
"""
