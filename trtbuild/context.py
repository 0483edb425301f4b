"""What the stages hand each other: settings, output directory, report, typed artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import BuildSettings
from .report import Report

PROBE_SAMPLES = 4  # samples the FP16 range probe runs (every FP16 node observed)


@dataclass(frozen=True)
class Engine:
    """One built engine: where it is, what it targets, and the runtime that can load it."""

    path: Path
    arch: str
    precision: str
    builder: str        # tensorrt | tensorrt-rtx
    version: str        # the builder's full version, build number included
    refit_from: Path | None = None  # a weight-stripped engine's ONNX model (its weights)
    weight_budget: str = "auto"     # --weight-streaming-budget, for a streaming engine


@dataclass
class Artifacts:
    """The files a run has produced so far (None: that stage has not run)."""

    model: Path | None = None        # exported or copied ONNX
    clean: Path | None = None        # the FP32 reference every check compares against
    fp16: Path | None = None
    calib_cache: Path | None = None
    int8: Path | None = None
    int4: Path | None = None         # weight-only INT4
    fp8: Path | None = None
    engines: list[Engine] = field(default_factory=list)

    def precision_models(self) -> dict[str, Path]:
        """{'fp32': clean, 'fp16': ..., 'int8': ..., 'int4': ...} for the models that exist."""
        found = {"fp32": self.clean, "fp16": self.fp16, "int8": self.int8, "int4": self.int4,
                 "fp8": self.fp8}
        return {p: path for p, path in found.items() if path is not None}


@dataclass
class Int8Work:
    """What the INT8 stages hand each other within one run, calibrate -> quantize ->
    sensitivity -> validate (the stage cache restores the parts a reused stage made)."""

    amaxes: dict[str, float] = field(default_factory=dict)  # tensor -> calibrated threshold
    moments: Any = None  # rounding.Moments of GPTQ's layer inputs, gathered while calibrating
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # GPTQ's
    check: Any = None  # what the INT8 CPU check runs: the serialized FP16 emulation, or None
    fp16_ranges: dict[str, str | None] = field(default_factory=dict)  # tensor -> why not FP16
    qdq_base: Any = None  # the clean model (BatchNorm folded) that Q/DQ goes into
    smooth: dict[str, np.ndarray] = field(default_factory=dict)  # activation -> SmoothQuant s
    smoothed: Any = None  # the clean model with `smooth` applied (calibrated, quantized)


@dataclass
class Context:
    """Built by pipeline.run (or a single command) and passed to every stage's run(ctx)."""

    settings: BuildSettings
    out: Path
    report: Report
    owns_out: bool = True  # False: `out` is the user's folder (validate, bench): never cleaned
    artifacts: Artifacts = field(default_factory=Artifacts)
    int8: Int8Work = field(default_factory=Int8Work)
    torch_module: Any = None                                # torch SRCs: the eager baseline
    source: Any = None  # the loaded onnx.source.Source when the pre-checks loaded it
    stage_cache: Any = None  # a stagecache.StageCache where stages may be reused
    _clean_model: Any = None
    _first_samples: dict[bytes, tuple[dict, str] | None] = field(default_factory=dict)
    _probe_feeds: list[dict] | None = None

    def take_source(self, load: Callable[[], Any] | None = None) -> Any:
        """The SRC the pre-checks loaded (else `load()`), no longer held here (vit_h_14's
        weights are 2.5 GB the later stages need for their own copies); a torch module stays
        only as --bench's eager baseline. Called by the export stage, or by its cache hit."""
        src, self.source = self.source, None
        if src is None and load is not None:
            src = load()
        self.torch_module = (src.module if src is not None and src.kind == "torch"
                             and self.settings.bench.enabled else None)
        return src

    def set_clean(self, path: Path) -> None:
        """The FP32 reference model every later stage reads."""
        self.artifacts.clean, self._clean_model = path, None
        self.int8 = Int8Work()

    def clean_model(self) -> Any:
        """The cleaned ModelProto, loaded once for all later stages (read-only: stages that
        rewrite it work on copies)."""
        if self._clean_model is None:
            from .onnx import io

            self._clean_model = io.load(self.artifacts.clean)
        return self._clean_model

    def dataset(self, source: str, calibration: bool = True) -> Any:
        """`source` (a directory or FILE.py:FN) read with the data settings; --max-samples
        limits calibration data only, never what accuracy is judged on."""
        from dataclasses import replace

        from .data import open_dataset

        s = self.settings.data if calibration else replace(self.settings.data, max_samples=0)
        return open_dataset(source, self.clean_model(), s)

    def first_sample(self, model: Any) -> tuple[dict, str] | None:
        """(feed, description) of the first calibration (else validation) sample, read once;
        None without data. `model` gives the input names and shapes."""
        from .data import open_dataset

        source = self.settings.calib.data or self.settings.val
        if not source:
            return None
        key = b"".join(i.SerializeToString() for i in model.graph.input)  # read once per
        if key not in self._first_samples:  # input signature (names, types, shapes)
            self._first_samples[key] = None
            for _, feed in open_dataset(source, model, self.settings.data).samples():
                self._first_samples[key] = (feed, f"first sample of {source}")
                break
        return self._first_samples[key]

    def probe_feeds(self) -> list[dict]:
        """The first PROBE_SAMPLES evaluation samples, read once: what the FP16 range probe
        runs (the fp16 stage, and the INT8 model's FP16 parts)."""
        if self._probe_feeds is None:
            import itertools

            data, _, _ = self.eval_data()
            self._probe_feeds = [f for _, f in itertools.islice(data.samples(), PROBE_SAMPLES)]
        return self._probe_feeds

    def given_shapes(self) -> dict[str, tuple]:
        """Input shapes the user gave: --input, overridden by --shapes' opt shape."""
        s = self.settings
        return {**dict(s.export.inputs), **{p.name: p.opt for p in s.engine.profiles}}

    def eval_data(self) -> tuple[Any, Path | None, str]:
        """(dataset, labels directory, description) for accuracy checks: --val, else the
        calibration data, else seeded random inputs."""
        from .metrics import RandomData

        source = self.settings.val or self.settings.calib.data
        if not source:
            return (RandomData(self.clean_model(), shapes=self.given_shapes() or None), None,
                    "random inputs")
        labels = Path(source) if Path(source).is_dir() else None
        # without --val the calibration data is judged on, as capped for calibration
        return self.dataset(source, calibration=not self.settings.val), labels, str(source)
