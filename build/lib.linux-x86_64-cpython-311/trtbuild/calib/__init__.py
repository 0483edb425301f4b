"""INT8 calibration: streaming |x| observers (observer, the optional C kernel _hist.c),
thresholds from histograms (thresholds), the ONNX Runtime streaming loop (stream) and the
TensorRT calibration-cache file (cachefile)."""
