"""The bench stage of `build --bench`: every model the build produced, at each profile
shape, plus the PyTorch eager baseline; optionally compared with an earlier report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import bench
from .engine import default_profile
from .shapes import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchStageSettings:
    enabled: bool = False
    warmup: int = 5
    iterations: int = 50
    baseline: Path | None = None
    max_regression: float = 0.05


def profile_shapes(model: Any, profiles: tuple[Profile, ...]) -> list[dict[str, tuple]]:
    """[{input: shape}] for the min, opt and max shapes (one entry for static models)."""
    from .data import model_inputs

    given = {p.name: p for p in profiles}
    tiers: list[dict[str, tuple]] = [{}, {}, {}]
    for spec in model_inputs(model):
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in spec.shape)
        p = given.get(spec.name) or default_profile(spec.name, dims) or Profile(spec.name, dims, dims, dims)
        for tier, shape in zip(tiers, (p.min, p.opt, p.max)):
            tier[spec.name] = tuple(shape)
    unique = []
    for t in tiers:
        if t not in unique:
            unique.append(t)
    return unique


def _label(shapes: dict[str, tuple]) -> str:
    return ",".join("x".join(map(str, s)) for s in shapes.values())


def run_bench(models: dict[str, Path], engines: list[dict], torch_src: Any, reference: Any,
              profiles: tuple[Profile, ...], s: BenchStageSettings) -> dict[str, Any]:
    """Latency runs; engines on the GPU when this machine can run them, else the ONNX models
    with ONNX Runtime on the CPU. Gate failures list the regressions beyond the baseline."""
    from . import onnxio

    cfg = bench.BenchSettings(s.warmup, s.iterations)
    runnable = _runnable_engines(engines)
    sess = onnxio.session(reference)
    runs = []
    for shapes in profile_shapes(reference, profiles):
        feeds = onnxio.random_feed(sess, shapes=shapes)
        label = _label(shapes)
        if runnable:
            for e in runnable:
                runs.append({**bench.bench_engine(Path(e["path"]), shapes, cfg),
                             "model": e["precision"], "shape": label})
        else:
            for precision, path in models.items():
                runs.append({**bench.bench_onnxruntime(path, feeds, cfg), "model": precision,
                             "shape": label})
        if torch_src is not None:
            runs.append({**bench.bench_torch(torch_src.module, _torch_inputs(feeds), cfg),
                         "model": "fp32", "shape": label})
    record: dict[str, Any] = {"runs": runs, "warmup": s.warmup, "iterations": s.iterations,
                              "device": "gpu" if runnable else "cpu"}
    if s.baseline:
        rows = bench.compare(runs, bench.baseline_runs(s.baseline), s.max_regression)
        record.update(baseline=str(s.baseline), max_regression=s.max_regression, comparison=rows)
        record["gate_failures"] = [
            f"{r['runner']} {r['model']} {r['shape']}: p50 {r['p50_ms']:.3f} ms is "
            f"{100 * r['change']:+.1f}% vs {r['baseline_p50_ms']:.3f} ms" for r in rows if r["regressed"]]
        if not rows:
            log.warning("%s: no bench run matches this build's runners and shapes", s.baseline)
    return record


def _runnable_engines(engines: list[dict]) -> list[dict]:
    """Engines for this machine's GPU, if it has one and `tensorrt` can run them."""
    from .gpuinfo import gpu_info

    gpu = gpu_info()
    if not gpu:
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
    except ImportError:
        return []
    return [e for e in engines if e["arch"] in (gpu["arch"], "native", "ampere+")]


def _torch_inputs(feeds: dict[str, np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in feeds.values())
