"""Loading, running and timing a serialized engine with the runtime that built it.

TensorRT 10/11 and TensorRT-RTX runtime API: `Runtime(logger)`,
`Runtime.deserialize_cuda_engine(bytes)` (None when the runtime refuses the engine, e.g.
TensorRT-RTX on an unsupported compute capability: "TensorRT-RTX does not support this
compute capability"), `ICudaEngine.create_execution_context()`,
`IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3`. Device buffers
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
    return loaded


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
