"""Peer INT8 quantizers for bench/bench_accuracy.py, each writing one Q/DQ ONNX file from the
same FP32 model and the same calibration samples trtbuild gets.

- ONNX Runtime `quantize_static` in its TensorRT-compatible configuration: QDQ format,
  symmetric INT8 activations, symmetric per-channel INT8 weights; Entropy or MinMax (its
  Entropy as shipped equals MinMax: see ort_quantize; also Entropy at 2048 bins).
- NVIDIA ModelOpt ONNX PTQ (`modelopt.onnx.quantization.quantize`, INT8, entropy or max),
  run in a subprocess with another Python (its own venv: nvidia-modelopt pulls its own torch
  and onnxruntime), calibrating on ONNX Runtime's CPU provider. ModelOpt calibrates through
  ONNX Runtime's quantize_static, so its entropy has the same 128-bin limit. The calibration samples go to
  it as one .npz keyed by input name (samples concatenated along axis 0).

    python3 -m venv /work/peers-venv && /work/peers-venv/bin/pip install 'nvidia-modelopt[onnx]'
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np

Feed = dict[str, np.ndarray]
DEFAULT_MODELOPT_PYTHON = "/work/peers-venv/bin/python"


class PeerUnavailable(Exception):
    """A peer that cannot run here; the message is one line saying why."""


def batched(feeds: list[Feed], batch: int) -> Iterator[Feed]:
    """Consecutive samples concatenated along axis 0, `batch` at a time."""
    for k in range(0, len(feeds), batch):
        part = feeds[k:k + batch]
        yield {name: np.concatenate([f[name] for f in part]) for name in part[0]}


def write_calib_file(feeds: list[Feed], path: Path) -> Path:
    """All samples as one .npz, {input name: samples concatenated along axis 0}."""
    path = Path(path)
    np.savez(path, **next(batched(feeds, len(feeds))))
    return path


# ---- ONNX Runtime quantize_static -------------------------------------------------------
ORT_METHODS = {"entropy": "Entropy", "max": "MinMax", "minmax": "MinMax",
               "percentile": "Percentile"}


def ort_quantize(model: Path, feeds: list[Feed], out: Path, method: str = "entropy",
                 batch: int = 16, bins: int | None = None) -> Path:
    """ONNX Runtime's static INT8 quantization, TensorRT-compatible configuration: QDQ,
    activations QInt8 symmetric, weights QInt8 symmetric per channel.

    quantize_static's Entropy histograms have 128 bins searched with 128 quantized bins:
    one candidate threshold, the histogram's whole range, so it equals MinMax. `bins` (for
    entropy) computes the ranges first with ORT's own EntropyCalibrater at `bins` bins and
    128 quantized bins (TensorRT's 2048/128 with bins=2048), handed to quantize_static as its
    calibration cache."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = batched(feeds, batch)

        def get_next(self) -> Feed | None:
            return next(self.it, None)

    calibrate = getattr(CalibrationMethod, ORT_METHODS[method])
    with tempfile.TemporaryDirectory(prefix="ort-calib-") as tmp:
        cache = None
        if bins and calibrate == CalibrationMethod.Entropy:
            from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
            from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

            calibrator = create_calibrator(
                Path(model), list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=calibrate,
                extra_options={"num_bins": bins, "num_quantized_bins": 128, "symmetric": True})
            calibrator.collect_data(Reader())
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(calibrator.compute_data(), cache)
            del calibrator
        quantize_static(str(model), str(out), None if cache else Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate, calibration_cache_path=cache,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return Path(out)


# ---- NVIDIA ModelOpt ONNX PTQ ------------------------------------------------------------
_MODELOPT_SCRIPT = r"""
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
import modelopt
from modelopt.onnx.quantization import quantize
data = np.load(args["calib"])
data = {k: data[k] for k in data.files}
batch = min(args["batch"], len(next(iter(data.values()))))
shapes = ",".join(k + ":" + "x".join(str(d) for d in (batch, *v.shape[1:])) for k, v in data.items())
quantize(args["model"], quantize_mode="int8", calibration_data=data, calibration_shapes=shapes,
         calibration_method=args["method"], calibration_eps=["cpu"],
         high_precision_dtype=args["high_precision"], output_path=args["out"],
         log_level="WARNING")
print("MODELOPT_VERSION", modelopt.__version__)
"""


def modelopt_python(given: str | None) -> str | None:
    """The Python that has nvidia-modelopt: the given one, else the default venv's if present."""
    if given:
        return given
    return DEFAULT_MODELOPT_PYTHON if Path(DEFAULT_MODELOPT_PYTHON).is_file() else None


def modelopt_version(python: str | None) -> str:
    """nvidia-modelopt's version in `python`; PeerUnavailable saying why not."""
    if not python:
        raise PeerUnavailable(f"no Python with nvidia-modelopt ({DEFAULT_MODELOPT_PYTHON} "
                              "missing; give --modelopt-python)")
    if not Path(python).is_file():
        raise PeerUnavailable(f"{python}: no such file")
    proc = subprocess.run([python, "-c", "import modelopt, modelopt.onnx.quantization; "
                                         "print(modelopt.__version__)"],
                          capture_output=True, text=True, timeout=300, env=_env())
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
        raise PeerUnavailable(f"{python}: cannot import modelopt.onnx.quantization: {last}")
    return proc.stdout.strip().splitlines()[-1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CUDA_VISIBLE_DEVICES", "")   # CPU calibration, no GPU probing
    env.pop("PYTHONPATH", None)
    return env


def modelopt_quantize(python: str, model: Path, calib_file: Path, out: Path,
                      method: str = "entropy", high_precision: str = "fp32",
                      batch: int = 16, timeout: float = 1800,
                      log: Path | None = None) -> Path:
    """ModelOpt INT8 PTQ of `model` calibrated on `calib_file` (.npz) with ONNX Runtime's CPU
    provider, `batch` samples a step; the non-quantized part stays in `high_precision` (fp32:
    only ModelOpt's INT8 choices differ from the FP32 model). Raises PeerUnavailable with the
    last error line."""
    args = {"model": str(model), "calib": str(calib_file), "out": str(out), "method": method,
            "high_precision": high_precision, "batch": batch}
    try:
        proc = subprocess.run([python, "-c", _MODELOPT_SCRIPT, json.dumps(args)],
                              capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"modelopt {method}: no result within {timeout:.0f} s")
    if log is not None:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode or not Path(out).is_file():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit {proc.returncode}, no output file"
        raise PeerUnavailable(f"modelopt {method} failed: {last[:300]}")
    return Path(out)
