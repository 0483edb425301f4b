"""trtbuild: PyTorch/ONNX -> cleaned, calibrated, quantized TensorRT engines, with proof.

    import trtbuild
    result = trtbuild.build("torchvision:resnet18", out="out/r18", int8=True, calib="data/")
    result.report     # report.json's content
    result.engines    # [Engine(path, arch, precision, builder, version)]

Importing trtbuild loads no torch, onnxruntime or TensorRT; each function does when needed.
"""

from .api import Result, bench, build, calibrate, clean, export, validate  # noqa: E402
from .context import Engine  # noqa: E402
from .errors import TrtBuildError  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["Engine", "Result", "TrtBuildError", "bench", "build", "calibrate", "clean",
           "export", "validate", "__version__"]
