"""Loading, running and timing a serialized engine with the runtime that built it.

TensorRT 10/11 and TensorRT-RTX runtime API: `Runtime(logger)`,
`Runtime.deserialize_cuda_engine(bytes)` (None when the runtime refuses the engine, e.g.
TensorRT-RTX on an unsupported compute capability: "TensorRT-RTX does not support this
compute capability"), `ICudaEngine.create_execution_context()`,
`IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3`. A
weight-stripped engine is refitted from its ONNX model before use (`Refitter(engine,
logger)`, `OnnxParserRefitter(refitter, logger).refit_from_file(path)`,
`Refitter.refit_cuda_engine()`); a weight-streaming engine gets its budget
(`ICudaEngine.streamable_weights_size`, `get_weight_streaming_automatic_budget()`,
`weight_streaming_budget_v2 = bytes`) before its execution context. Device buffers
and CUDA events come from torch, on a dedicated stream. Accuracy runs go through
Polygraphy's `TrtRunner`, which drives tensorrt_rtx only when POLYGRAPHY_USE_TENSORRT_RTX=1
was set before polygraphy's first import (trtbuild.thirdparty.polygraphy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import BenchSettings
from ..context import Engine
from ..timing import stats, timed_cuda
from .backend import load_backend, make_logger
from .gpu import gpu_info


class EngineRefused(Exception):
    """This machine's runtime cannot load or run the engine; the message says why."""


def machine_refusal() -> str | None:
    """Why no engine can run on this machine at all (no GPU, no CUDA torch), or None."""
    if not gpu_info():
        return "no engine can run here: no CUDA GPU (nvidia-smi found none)"
    try:
        import torch
    except ImportError:
        return "no engine can run here: torch is not installed"
    if not torch.cuda.is_available():
        return "no engine can run here: torch sees no CUDA device"
    return None


def load(engine: Engine) -> Any:
    """The deserialized ICudaEngine, loaded by the runtime of the builder that made it.
    Raises EngineRefused (runtime missing, other GPU, engine refused) with TensorRT's words."""
    from ..errors import TrtBuildError

    gpu = gpu_info()
    if gpu and engine.arch.startswith("sm_") and engine.arch != gpu["arch"]:
        raise EngineRefused(f"built for {engine.arch}, this GPU is {gpu['arch']}")
    try:
        backend = load_backend(engine.builder)
    except TrtBuildError as e:
        raise EngineRefused(e.message)
    trt = backend.trt
    logger = make_logger(trt)
    loaded = trt.Runtime(logger).deserialize_cuda_engine(Path(engine.path).read_bytes())
    if loaded is None:
        detail = "; ".join(logger.errors[-2:]) or "no error message"
        raise EngineRefused(f"{backend.name} {backend.version} refused the engine: {detail}")
    if engine.refit_from is not None:
        refit(trt, loaded, Path(engine.refit_from), logger)
    if loaded.streamable_weights_size > 0:
        loaded.weight_streaming_budget_v2 = stream_budget(loaded, engine.weight_budget)
    return loaded


def refit(trt: Any, loaded: Any, onnx_path: Path, logger: Any) -> None:
    """Give a weight-stripped engine its weights from the ONNX model it was built from.
    Raises EngineRefused when the file is gone or its weights do not fit."""
    if not onnx_path.is_file():
        raise EngineRefused(f"weight-stripped engine: its weights' model {onnx_path} is gone")
    refitter = trt.Refitter(loaded, logger)
    if not (trt.OnnxParserRefitter(refitter, logger).refit_from_file(str(onnx_path))
            and refitter.refit_cuda_engine()):
        detail = "; ".join(logger.errors[-2:]) or "no error message"
        raise EngineRefused(f"refit from {onnx_path} failed: {detail}")


def stream_budget(loaded: Any, budget: str) -> int:
    """Bytes of streamable weights kept on the GPU for --weight-streaming-budget."""
    from ..config import parse_stream_budget

    kind, value = parse_stream_budget(budget)
    if kind == "auto":
        return int(loaded.get_weight_streaming_automatic_budget())
    size = int(loaded.streamable_weights_size)
    return int(size * value) if kind == "fraction" else min(size, int(value))


def polygraphy_runner(engine: Engine) -> Any:
    """A Polygraphy TrtRunner over the loaded engine. Raises EngineRefused when polygraphy
    in this process drives the other TensorRT flavour."""
    from ..thirdparty import polygraphy

    config = polygraphy(rtx=engine.builder == "tensorrt-rtx")
    if bool(config.USE_TENSORRT_RTX) != (engine.builder == "tensorrt-rtx"):
        raise EngineRefused(f"polygraphy in this process drives "
                            f"{'tensorrt_rtx' if config.USE_TENSORRT_RTX else 'tensorrt'}; "
                            f"validate {engine.builder} engines in a separate run")
    from polygraphy.backend.trt import TrtRunner

    return TrtRunner(load(engine), name=f"{engine.builder}-{engine.precision}")


def time_engine(engine: Engine, shapes: dict[str, tuple], s: BenchSettings) -> dict:
    """CUDA-event latency of one engine at `shapes`. Raises EngineRefused."""
    import torch

    loaded = load(engine)
    trt = load_backend(engine.builder).trt
    context = loaded.create_execution_context()
    buffers = []
    for i in range(loaded.num_io_tensors):
        name = loaded.get_tensor_name(i)
        if loaded.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, shapes[name])
    for i in range(loaded.num_io_tensors):
        name = loaded.get_tensor_name(i)
        dtype = torch.from_numpy(np.zeros(1, trt.nptype(loaded.get_tensor_dtype(name)))).dtype
        buf = torch.zeros(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, buf.data_ptr())
        buffers.append(buf)
    times = timed_cuda(lambda stream: context.execute_async_v3(stream.cuda_stream), s)
    return {"runner": engine.builder, "device": (gpu_info() or {}).get("name", "cuda"),
            **stats(times, next(iter(shapes.values()))[0])}


def engine_io(path: Path) -> dict[str, Any]:
    """Builder, I/O and compatibility read from the engine itself (needs a GPU): each
    installed runtime tries `Runtime.deserialize_cuda_engine`; from the one that loads it,
    `ICudaEngine.num_io_tensors`, `get_tensor_name(i)`, `get_tensor_mode`,
    `get_tensor_dtype`, `get_tensor_shape`, `get_tensor_profile_shape(name, 0)` (inputs),
    and `hardware_compatibility_level`. Raises EngineRefused when none loads it."""
    from .backend import installed_backends
    from .builder import DTYPES

    data = path.read_bytes()
    tried = []
    for name, found in installed_backends().items():
        if not found.get("version"):
            continue
        backend = load_backend(name)
        logger = make_logger(backend.trt)
        engine = backend.trt.Runtime(logger).deserialize_cuda_engine(data)
        if engine is None:
            tried.append(f"{name}: {'; '.join(logger.errors[-1:]) or 'refused'}")
            continue
        io = []
        for i in range(engine.num_io_tensors):
            t = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(t) == backend.trt.TensorIOMode.INPUT \
                else "output"
            dtype = str(engine.get_tensor_dtype(t)).split(".")[-1].lower()
            entry = {"name": t, "mode": mode, "dtype": DTYPES.get(dtype, dtype),
                     "shape": list(engine.get_tensor_shape(t))}
            if mode == "input" and engine.num_optimization_profiles:
                entry["profile"] = [list(s) for s in engine.get_tensor_profile_shape(t, 0)]
            io.append(entry)
        return {"builder": f"{name} {backend.version}", "io": io,
                "hardware_compat": str(engine.hardware_compatibility_level).split(".")[-1]}
    raise EngineRefused(f"{path}: no installed runtime loads it ({'; '.join(tried)})")

