"""Latency: warm-up, then timed runs; percentiles and throughput; comparison against a
baseline report. Each run records its runner and the device it ran on.

Runners (engines are timed by trtbuild.trt.runtime with `timed_cuda`):
- `torch`: the PyTorch module in eager mode (the baseline a user would otherwise deploy), on
  the GPU with CUDA events when there is one, else on the CPU;
- `onnxruntime`: an ONNX model on the CPU (what build hosts without a GPU can measure).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import BenchSettings
from .errors import TrtBuildError


def stats(times_ms: list[float], batch: int) -> dict[str, float]:
    t = np.asarray(times_ms, np.float64)
    mean = float(t.mean())
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": mean, "min_ms": float(t.min()),
            "iterations": len(t), "batch": batch,
            "throughput_per_s": batch * 1000.0 / mean if mean > 0 else 0.0}


def bounded(warm: Callable[[], Any], once: Callable[[], float], s: BenchSettings
            ) -> list[float]:
    """Warm-up, then timed runs (`once` returns one run's milliseconds): each phase ends at
    its count (s.warmup, s.iterations) or its share of s.duration (warm-up a fifth),
    whichever comes first; at least one timed run."""
    end = time.perf_counter() + s.duration / 5
    for _ in range(s.warmup):
        if time.perf_counter() >= end:
            break
        warm()
    out: list[float] = []
    end = time.perf_counter() + s.duration
    while len(out) < s.iterations and (not out or time.perf_counter() < end):
        out.append(once())
    return out


def timed_cpu(run: Callable[[], Any], s: BenchSettings) -> list[float]:
    def once() -> float:
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1000.0

    return bounded(run, once, s)


def timed_cuda(run: Callable[[Any], Any], s: BenchSettings) -> list[float]:
    """run(stream) enqueues work on `stream`; timed with CUDA events on that stream."""
    import torch

    stream = torch.cuda.Stream()

    def warm() -> None:
        run(stream)
        stream.synchronize()

    def once() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        run(stream)
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)

    return bounded(warm, once, s)


def bench_onnxruntime(model: Path, feeds: dict[str, np.ndarray], s: BenchSettings,
                      disabled: list[str] | None = None) -> dict:
    """`disabled`: ONNX Runtime optimizers to turn off (io.ort_workarounds of the model)."""
    from .onnx import io

    sess = io.session(model, disabled=list(disabled or []))  # ORT's defaults where safe
    batch = len(next(iter(feeds.values())))
    return {"runner": "onnxruntime-cpu", "device": "cpu",
            **stats(timed_cpu(lambda: sess.run(None, feeds), s), batch)}


def bench_torch(module: Any, inputs: tuple, s: BenchSettings) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    module = module.to(device).eval()
    inputs = tuple(x.to(device) for x in inputs)
    batch = len(inputs[0])
    with torch.inference_mode():
        if cuda:
            def run(stream: Any) -> None:
                with torch.cuda.stream(stream):
                    module(*inputs)
            times = timed_cuda(run, s)
        else:
            times = timed_cpu(lambda: module(*inputs), s)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"runner": f"torch-eager-{device}", "device": name, **stats(times, batch)}


def compare(current: list[dict], baseline: list[dict], max_regression: float) -> list[dict]:
    """Rows matched on (runner, model, shape): baseline and current p50, the change, and
    whether it regressed by more than `max_regression` (0.05 = 5%)."""
    key = lambda r: (r["runner"], r.get("model"), r.get("shape"))  # noqa: E731
    old = {key(r): r for r in baseline}
    rows = []
    for r in current:
        b = old.get(key(r))
        if b is None:
            continue
        change = r["p50_ms"] / b["p50_ms"] - 1.0 if b["p50_ms"] > 0 else 0.0
        rows.append({"runner": r["runner"], "model": r.get("model"), "shape": r.get("shape"),
                     "baseline_p50_ms": b["p50_ms"], "p50_ms": r["p50_ms"],
                     "change": change, "regressed": change > max_regression})
    return rows


def baseline_runs(path: Path) -> list[dict]:
    """The bench runs recorded in an earlier report.json (`bench` stage or command)."""
    import json

    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TrtBuildError(f"{path}: cannot read baseline report ({e})")
    stages = data.get("stages", []) if isinstance(data, dict) else []
    stages = stages if isinstance(stages, list) else []
    bench = next((s for s in stages if isinstance(s, dict) and s.get("stage") == "bench"), None)
    runs = bench.get("runs") if bench else None
    if not isinstance(runs, list) or not runs:
        raise TrtBuildError(f"{path}: baseline report has no bench results")
    good = [r for r in runs if isinstance(r, dict) and isinstance(r.get("runner"), str)
            and isinstance(r.get("p50_ms"), (int, float)) and r["p50_ms"] > 0]
    if len(good) != len(runs):
        raise TrtBuildError(f"{path}: baseline bench runs are malformed ({len(runs) - len(good)} "
                            "without a runner and a positive p50_ms)")
    return good


def table(rows: list[dict]) -> list[str]:
    out = [f"  {'runner':<18}{'model':<8}{'shape':<16}{'baseline p50':>13}{'p50':>10}{'change':>9}"]
    for r in rows:
        flag = "  REGRESSED" if r["regressed"] else ""
        out.append(f"  {r['runner']:<18}{str(r['model']):<8}{str(r['shape']):<16}"
                   f"{r['baseline_p50_ms']:>11.3f}ms{r['p50_ms']:>8.3f}ms{100 * r['change']:>+8.1f}%{flag}")
    return out
