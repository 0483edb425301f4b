"""Streaming calibration: stream the dataset through ONNX Runtime (CPU), observe every tensor a
Q/DQ goes on, and turn each histogram into a threshold (entropy, max, percentile, mse, or auto: per tensor
the one of least quantization error).

Peak memory does not grow with the sample count: only two runs' observed tensors (one
being histogrammed, one computed) and the per-tensor histograms are alive at any time, and a
run's observed tensors stay near io.run_budget (a batch of a wide model runs in pieces).
"""

from __future__ import annotations

import queue
import resource
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..data import Batch, Dataset, rows
from .observer import Histogram
from .thresholds import choose


@dataclass
class CalibResult:
    amaxes: dict[str, float]
    samples: int
    ignored: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    methods: dict[str, str] = field(default_factory=dict)  # tensor -> method that set its amax

    def record(self) -> dict[str, Any]:
        chosen: dict[str, int] = {}
        for m in self.methods.values():
            chosen[m] = chosen.get(m, 0) + 1
        return {"samples": self.samples, "tensors": len(self.amaxes),
                "ignored_sentinels": self.ignored, "peak_rss_mb": round(self.peak_rss_mb, 1),
                "methods_chosen": chosen,
                "per_tensor": {t: {"amax": a, "method": self.methods.get(t)}
                               for t, a in self.amaxes.items()}}


def observed_model(model: Any, tensors: list[str]) -> Any:
    """A copy of `model` whose outputs are exactly `tensors` (float32)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in tensors)
    return m


class Pieces:
    """Batches cut so that one run's observed tensors stay under `budget` bytes (vit_b_16's
    97 at batch 16 were 2.1 GB), as many rows to a run as fit: the bytes of a row are
    estimated from the model's shapes (tensors of no known shape as 0) until a run measures
    them (`saw`). A batch that fits runs whole, so a small model keeps its batches (and its
    histograms); so does every batch of data without a stackable batch axis."""

    def __init__(self, budget: int, per_row: int) -> None:
        self.budget, self.per_row = budget, per_row

    def __call__(self, feed: Batch) -> Iterator[Batch]:
        n, start = rows(feed), 0
        while start < n:
            stop = min(n, start + max(1, self.budget // max(self.per_row, 1)))
            yield feed if (start, stop) == (0, n) else {
                k: a[start:stop] if np.ndim(a) and len(a) == n else a for k, a in feed.items()}
            start = stop

    def saw(self, outs: list, n: int) -> None:
        self.per_row = sum(np.asarray(o).nbytes for o in outs) // max(n, 1)

    @classmethod
    def of(cls, model: Any, names: list[str], data: Any) -> "Pieces":
        from ..onnx import io

        if getattr(data, "batch_size", 1) < 2:  # a sample's own axis 0 is no batch to cut
            return cls(1 << 62, 1)
        return cls(io.run_budget(model), sum(b or 0 for b in io.tensor_bytes(model, names)))


def layer_inputs(model: Any, widths: dict[str, int | None], data: Dataset, where: Any, source: Any,
                 limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Per batch of `data` (up to `limit` samples): (its sample count, {tensor: its values
    as float32 rows [-1, width]}) for the tensors `widths` names (each one's last axis; a
    width None: the array as it is), from one ONNX Runtime pass over `model` with those
    tensors as its outputs. Errors name the model `where` (loading) and the data `source`
    (running)."""
    from ..data import named_batches
    from ..onnx import io

    names = list(widths)
    sess = io.session(observed_model(model, names), where=where)
    pieces = Pieces.of(model, names, data)
    for feed in (p for _, batch in named_batches(data, limit) for p in pieces(batch)):
        values = io.run(sess, feed, str(source))
        pieces.saw(values, rows(feed))
        yield rows(feed), {n: np.asarray(v, np.float32) if widths[n] is None else
                           np.asarray(v, np.float32).reshape(-1, widths[n])
                           for n, v in zip(names, values)}


def reservoir(kept: Any, x: Any, seen: int, rng: Any, size: int) -> Any:
    """A uniform sample of at most `size` of all rows so far (Algorithm R, a batch `x` at a
    time; `seen` rows came before it): the first `size` rows fill it, row i after that
    replaces a random slot with chance size / (i + 1)."""
    fill = max(0, min(len(x), size - seen))
    kept = x[:fill].copy() if kept is None else np.concatenate([kept, x[:fill]])
    later = np.arange(fill, len(x))
    slots = rng.integers(0, seen + later + 1) if len(later) else later
    kept[slots[slots < size]] = x[later[slots < size]]
    return kept


Extra = tuple[list[str], Callable[[dict, int], Any]]


def calibrate(model: Any, tensors: list[str], data: Dataset, method: str, percentile: float,
              progress: Callable[[int], None] | None = None, threads: int = 0,
              extra: Extra | None = None) -> CalibResult:
    """Thresholds for `tensors` of `model` over `data` with `method` for activations.
    `extra`: (more tensors, consume): fetched in the same pass and handed to
    consume({name: array}, rows) batch by batch (GPTQ's layer inputs: no second pass).

    Graph inputs always use their max: they are data of a known range, and a clipped input
    is lost to every layer after it (entropy on the digits input, whose 17 discrete levels
    leave a degenerate histogram, clipped it to 0.063 of 1.0 and the INT8 model fell to
    15% accuracy). Raises TrtBuildError on bad data.
    """
    from ..onnx import io

    names = tensors + [t for t in extra[0] if t not in tensors] if extra else tensors
    sess = io.session(observed_model(model, names), threads=threads)
    inputs = {i.name for i in data.inputs}  # graph inputs: max only
    hists = {t: Histogram(max_only=t in inputs) for t in tensors}
    samples = 0
    # histogramming of batch k overlaps inference of batch k+1 (ORT releases the GIL);
    # .result() re-raises the histogram thread's error here (a plain Thread printed and lost
    # it, and the thresholds came from the batches before it)
    pieces = Pieces.of(model, names, data)
    with ThreadPoolExecutor(1) as worker:
        observing = None
        for feed in (p for batch in _prefetched(data.batches()) for p in pieces(batch)):
            outs = sess.run(names, feed)
            pieces.saw(outs, rows(feed))
            if observing:
                observing.result()
            observing = worker.submit(_observe, hists, tensors, outs)
            n = rows(feed)
            if extra:
                extra[1](dict(zip(names, outs)), n)
            samples += n
            if progress:
                progress(n)
        if observing:
            observing.result()
    return result(hists, tensors, inputs, method, percentile, samples)


def result(hists: dict[str, Histogram], tensors: list[str], inputs: set[str], method: str,
           percentile: float, samples: int) -> CalibResult:
    """Each tensor's threshold from its histogram (graph inputs: their max)."""
    with ThreadPoolExecutor(2) as pool:  # the KL searches are numpy work that drops the GIL
        found = list(pool.map(lambda t: (hists[t].amax, "max") if t in inputs else
                              choose(hists[t], method, percentile), tensors))
    amaxes = {t: a for t, (a, _) in zip(tensors, found)}
    methods = {t: m for t, (_, m) in zip(tensors, found)}
    ignored = {t: h.ignored for t, h in hists.items() if h.ignored}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return CalibResult(amaxes, samples, ignored, rss, methods)


def _prefetched(batches: Iterator[dict], depth: int = 2) -> Iterator[dict]:
    """Read the next batches in a thread while ONNX Runtime runs this one; errors (bad
    samples) are re-raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def read() -> None:
        try:
            for b in batches:
                q.put(b)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    threading.Thread(target=read, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _observe(hists: dict[str, Histogram], tensors: list[str], outs: list) -> None:
    for t, x in zip(tensors, outs):
        hists[t].observe(x)
