"""ONNX (FP32, FP16 graph, or INT8 Q/DQ) -> serialized TensorRT engine.

`tensorrt` and `tensorrt_rtx` (imported by backend.py) both expose the same builder API
(TensorRT 10/11 Python API, "Builder", "IBuilderConfig", "OnnxParser"; TensorRT-RTX 1.7 is its
strongly typed subset plus compute-capability targeting), so one code path serves both and
asks the imported module what it can do:

- `trt.Builder(logger)`, `Builder.create_network(flags)` with
  `NetworkDefinitionCreationFlag.STRONGLY_TYPED` where it exists (TensorRT >= 10 and RTX:
  precision comes from the graph; TensorRT 11 and RTX have no other mode);
- `trt.OnnxParser(network, logger)`, `OnnxParser.parse_from_file(path)`,
  `OnnxParser.num_errors` / `get_error(i)` -> `ParserError.desc()/node_name()/node_operator()`;
- `Builder.create_builder_config()`, `IBuilderConfig.set_memory_pool_limit(
  MemoryPoolType.WORKSPACE, bytes)`, `.builder_optimization_level`,
  `.hardware_compatibility_level = HardwareCompatibilityLevel.AMPERE_PLUS`,
  `.set_flag(BuilderFlag.VERSION_COMPATIBLE)`, `.progress_monitor = IProgressMonitor`;
- `Builder.create_optimization_profile()`, `IOptimizationProfile.set_shape(name, min, opt,
  max)`, `IBuilderConfig.add_optimization_profile(profile)`;
- timing cache (TensorRT only; a no-op in RTX): `IBuilderConfig.create_timing_cache(bytes)`,
  `set_timing_cache(cache, ignore_mismatch=False)`, `get_timing_cache()`,
  `ITimingCache.combine(other, ignore_mismatch)`, `ITimingCache.serialize()`;
- RTX: `IBuilderConfig.num_compute_capabilities = 1`,
  `set_compute_capability(ComputeCapability.SM86, 0)`;
- plugins: `Builder.get_plugin_registry().load_library(path)`;
- `IBuilderConfig.set_flag(BuilderFlag.REFIT)`, `STRIP_PLAN` with `REFIT_IDENTICAL` (trtexec's
  `--stripWeights` default) or `REFIT`, `WEIGHT_STREAMING` (strongly typed networks only);
- `Builder.build_serialized_network(network, config)` -> IHostMemory, or None on failure.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import EngineSettings
from ..errors import MISSING_CAPABILITY, TrtBuildError
from ..onnx.shapes import Profile, default_profile
from .backend import Backend, make_logger

log = logging.getLogger(__name__)

STREAMING_NEEDS_TYPED = ("--weight-streaming needs a strongly typed network: not with "
                         "--fp16-mode flag or --calibrator trt")
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}


@dataclass
class BuildOutput:
    engine: bytes
    seconds: float
    timing_cache: bytes | None = None
    phases: list[str] = field(default_factory=list)
    layer_dtypes: dict[str, int] = field(default_factory=dict)
    io: list[dict[str, Any]] = field(default_factory=list)  # network_io(): the engine's I/O


def _progress_monitor(trt: Any, on_phase: Callable[[str], None]) -> Any:
    """IProgressMonitor -> `on_phase(phase)`. Exceptions never cross into TensorRT: they are
    kept and re-raised after the build call."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.error: BaseException | None = None
            self.phases: list[str] = []
            self.lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self.lock:
                    self.phases.append(phase_name)
                on_phase(phase_name)
            except BaseException as e:  # noqa: BLE001 - recorded, re-raised after the build
                self.error = e

        def step_complete(self, phase_name: str, step: int) -> bool:
            return self.error is None  # False cancels the build

        def phase_finish(self, phase_name: str) -> None:
            pass
    return Monitor()


def build(backend: Backend, onnx_path: Path, arch: str, settings: EngineSettings,
          timing_cache: bytes | None = None,
          on_phase: Callable[[str], None] = lambda phase: None,
          calibrator: Any = None) -> BuildOutput:
    """One engine for `arch`, already resolved by backend.resolve_arch ('sm_86', ... or
    'ampere+'). `on_phase(name)` is called as TensorRT starts each build phase.

    Raises TrtBuildError(3) when TensorRT cannot parse the model (naming node and op: the
    model already passed onnx.checker and ONNX Runtime, so an op TensorRT lacks is a missing
    capability, e.g. NonZero needs a plugin in TensorRT-RTX), cannot target the arch, or
    builds no engine.
    """
    trt = backend.trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    for lib in settings.plugins:
        builder.get_plugin_registry().load_library(str(lib))
    network = builder.create_network(_network_flags(trt, settings, calibrator is not None))
    parser = trt.OnnxParser(network, logger)
    with _native_stderr_to_debug():
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        raise TrtBuildError(f"{onnx_path}: TensorRT ({backend.name} {backend.version}) cannot "
                            f"parse: {_parser_errors(parser)}", MISSING_CAPABILITY)
    dtypes = layer_output_dtypes(network)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.opt_level
    _target(backend, config, arch, settings)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.fp16_flag:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise TrtBuildError(f"{backend.name} {backend.version} has no FP16 builder flag "
                                "(TensorRT 11 and RTX take precision from the graph: use "
                                "--fp16-mode graph)", MISSING_CAPABILITY)
        config.set_flag(trt.BuilderFlag.FP16)
    for flag in refit_flags(settings):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.weight_streaming:
        if _network_flags(trt, settings, calibrator is not None) == 0:
            raise TrtBuildError(STREAMING_NEEDS_TYPED)
        config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    if calibrator is not None:  # TensorRT <= 10 implicit INT8 (calibrator.py)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    shapes = _add_profiles(builder, network, config, settings.profiles)
    cache = _timing_cache(backend, config, timing_cache)
    monitor = _progress_monitor(trt, on_phase)
    config.progress_monitor = monitor
    start = time.perf_counter()
    with _native_stderr_to_debug():  # Myelin prints "Internal Error: ..." beside the log
        engine = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    for callback in (monitor, calibrator):
        if callback is not None and callback.error is not None:
            raise callback.error
    if engine is None:
        detail = "; ".join(logger.errors[-3:]) or "no error message"
        raise TrtBuildError(f"{onnx_path}: {backend.name} {backend.version} cannot build this "
                            f"model for {arch}: {detail}{memory_hint(detail, settings)}",
                            MISSING_CAPABILITY)
    merged = bytes(cache.serialize()) if cache is not None else None
    return BuildOutput(bytes(engine), seconds, merged, list(monitor.phases), dtypes,
                       network_io(network, shapes))


def refit_flags(settings: EngineSettings) -> list[str]:
    """BuilderFlag names for --refittable / --strip-weights."""
    flags = ["REFIT"] if settings.refittable else []
    if settings.strip_weights:
        flags += ["STRIP_PLAN"] + ([] if settings.refittable else ["REFIT_IDENTICAL"])
    return flags


def check_refit(backend: Backend, arch: str, settings: EngineSettings) -> None:
    """Before any work: can this builder make refittable engines here? A one-layer network
    (`INetworkDefinition.add_input`, `add_constant`, `add_elementwise`, `mark_output`) is
    built with the refit flags: TensorRT-RTX 1.7 needs a CUDA driver for them (its CPU-only
    build stops in Myelin's JIT: "CHECK(status == CUDA_SUCCESS) failed"), which its plain
    builds do not. Raises TrtBuildError(3) with the builder's words."""
    flags = refit_flags(settings)
    if not flags:
        return
    import numpy as np

    trt = backend.trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, settings))
    x = network.add_input("x", trt.float32, (1, 4))
    w = network.add_constant((1, 4), trt.Weights(np.ones((1, 4), np.float32)))
    network.mark_output(network.add_elementwise(
        x, w.get_output(0), trt.ElementWiseOperation.SUM).get_output(0))
    config = builder.create_builder_config()
    _target(backend, config, arch, settings)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    with _native_stderr_to_debug():
        built = builder.build_serialized_network(network, config)
    if built is None:
        option = "--strip-weights" if settings.strip_weights else "--refittable"
        detail = "; ".join(logger.errors[-1:]) or "no error message"
        cuda = " (no CUDA driver here: build them on a machine with an NVIDIA GPU)" \
            if "CUDA_SUCCESS" in detail else ""
        raise TrtBuildError(f"{option}: {backend.name} {backend.version} cannot build "
                            f"refittable engines for {arch} on this machine{cuda}: {detail}",
                            MISSING_CAPABILITY)


def memory_hint(detail: str, settings: EngineSettings) -> str:
    """What to change when the builder ran out of memory (it names only the bytes asked for)."""
    text = detail.lower()
    if "outofmemory" not in text and "out of memory" not in text:
        return ""
    largest = max(settings.profiles, key=lambda p: math.prod(p.max), default=None)
    shapes = (f" (largest now {largest.name}:{'x'.join(map(str, largest.max))})"
              if largest else "")
    return (f" -- the builder ran out of memory: lower --workspace (now "
            f"{settings.workspace_mb} MiB) or the max shapes of --shapes{shapes}")


DTYPES = {"float": "float32", "half": "float16", "bf16": "bfloat16"}  # numpy's names


def network_io(network: Any, profile: dict[str, Profile]) -> list[dict[str, Any]]:
    """The engine's inputs and outputs as the network defines them (INetworkDefinition
    .num_inputs / get_input(i) / num_outputs / get_output(i); ITensor .name .dtype .shape,
    -1 for a dynamic dim) with the optimization profile's min/opt/max of each input."""
    def tensor(t: Any, mode: str) -> dict[str, Any]:
        dtype = str(t.dtype).split(".")[-1].lower()
        found = {"name": t.name, "mode": mode, "dtype": DTYPES.get(dtype, dtype),
                 "shape": list(t.shape)}
        p = profile.get(t.name)
        return {**found, "profile": [list(p.min), list(p.opt), list(p.max)]} if p else found

    return ([tensor(network.get_input(i), "input") for i in range(network.num_inputs)]
            + [tensor(network.get_output(i), "output") for i in range(network.num_outputs)])


def layer_output_dtypes(network: Any) -> dict[str, int]:
    """How many network layers output each data type (INetworkDefinition.get_layer(i)
    .get_output(0).dtype): the precision a strongly typed network was given by the graph."""
    counts: dict[str, int] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.num_outputs:
            name = str(layer.get_output(0).dtype).split(".")[-1]
            counts[name] = counts.get(name, 0) + 1
    return counts


def _network_flags(trt: Any, settings: EngineSettings, implicit_int8: bool = False) -> int:
    flags = trt.NetworkDefinitionCreationFlag
    if settings.fp16_flag or implicit_int8 or not hasattr(flags, "STRONGLY_TYPED"):
        return 0  # TensorRT <= 10 weakly typed: precision from builder flags
    return 1 << int(flags.STRONGLY_TYPED)


def _parser_errors(parser: Any) -> str:
    msgs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node '{e.node_name()}' ({e.node_operator()})" if e.node_name() else "model"
        msgs.append(f"{where}: {e.desc().strip()}")
    return "; ".join(msgs) or "unknown parser error"


def _target(backend: Backend, config: Any, arch: str, settings: EngineSettings) -> None:
    trt = backend.trt
    level = HARDWARE_COMPAT[settings.hardware_compat]
    if level != "NONE":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    if backend.is_rtx:
        cc = getattr(trt.ComputeCapability, arch.replace("sm_", "SM"), None)
        if cc is None:
            raise TrtBuildError(f"--arch {arch}: TensorRT-RTX {backend.version} has no "
                                "ComputeCapability for it", MISSING_CAPABILITY)
        config.num_compute_capabilities = 1
        config.set_compute_capability(cc, 0)


def _add_profiles(builder: Any, network: Any, config: Any,
                  profiles: tuple[Profile, ...]) -> dict[str, Profile]:
    """One optimization profile: given shapes, else a default for every dynamic input
    (static dims kept; a dynamic batch gets 1/8/32; other dynamic dims fail clearly).
    Returns the profile set, by input name."""
    given = {p.name: p for p in profiles}
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    unknown = set(given) - set(names)
    if unknown:
        raise TrtBuildError(f"--shapes: no model input named {sorted(unknown)} (inputs: {names})")
    profile = builder.create_optimization_profile()
    chosen: dict[str, Profile] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = tuple(t.shape)
        if t.name in given and len(given[t.name].min) != len(dims):
            raise TrtBuildError(f"--shapes {t.name}: rank {len(given[t.name].min)} given, the "
                                f"input has rank {len(dims)} {dims}")
        if t.name in given and any(d >= 0 and d != g for d, g in zip(dims, given[t.name].opt)):
            raise TrtBuildError(f"--shapes {t.name}: {given[t.name].opt} does not keep the "
                                f"input's static dims {dims}")
        p = given.get(t.name) or default_profile(t.name, dims)
        if p is None:
            continue
        profile.set_shape(t.name, p.min, p.opt, p.max)
        chosen[t.name] = p
    if chosen:
        config.add_optimization_profile(profile)
    return chosen


def _timing_cache(backend: Backend, config: Any, data: bytes | None) -> Any:
    if backend.is_rtx:  # timing caches are no-ops in TensorRT-RTX (deprecated since 1.2)
        return None
    cache = config.create_timing_cache(data or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


@contextmanager
def _native_stderr_to_debug():
    """TensorRT's ONNX parser prints some failures straight to file descriptor 2 ("Unsupported
    ONNX data type: INT16 (5)") beside what get_error reports: kept off the terminal, so a
    failure stays one line, and logged at debug level (-v)."""
    import tempfile

    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace").strip()
        if text:
            log.debug("TensorRT ONNX parser printed: %s", text)
