"""TensorRT <= 10 only: implicit INT8 calibration with IInt8EntropyCalibrator2, fed by the same
dataset reader and reading/writing the same calibration cache file as trtbuild's own
calibrator (`--calibrator trt`). TensorRT 11 and TensorRT-RTX removed implicit calibration.

TensorRT API used (TensorRT 10 Python API, "IInt8EntropyCalibrator2"): subclass
`trt.IInt8EntropyCalibrator2`, implement `get_batch_size()`, `get_batch(names)` -> list of
device pointers or None at the end, `read_calibration_cache()` -> bytes or None,
`write_calibration_cache(cache)`; then `IBuilderConfig.set_flag(BuilderFlag.INT8)` and
`IBuilderConfig.int8_calibrator = calibrator`. Device buffers come from torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MISSING_CAPABILITY, TrtBuildError
from ..files import write_bytes


def make_calibrator(trt: Any, data: Any, cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 over `data` (a trtbuild.data.Dataset). Exceptions inside
    callbacks are kept in `.error` (TensorRT must never see them) and re-raised by the caller
    after the build."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise TrtBuildError("--calibrator trt needs TensorRT <= 10 (TensorRT 11 and RTX have no "
                            "implicit calibrators; use the default Q/DQ path)", MISSING_CAPABILITY)
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(data.batches())
            self.device: list[Any] = []
            self.error: BaseException | None = None

        def get_batch_size(self) -> int:
            return data.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                feed = next(self.batches, None)
                if feed is None:
                    return None
                self.device = [torch.from_numpy(feed[n]).cuda() for n in names]
                return [int(t.data_ptr()) for t in self.device]
            except BaseException as e:  # noqa: BLE001 - never into TensorRT
                self.error = e
                return None

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                write_bytes(cache_path, bytes(cache))
            except BaseException as e:  # noqa: BLE001
                self.error = e
    return Calibrator()
