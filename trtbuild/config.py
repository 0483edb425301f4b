"""Every settings dataclass and every option, each declared once.

An option is a field of a settings dataclass declared with `option(...)`: its type (the
annotation), default, CLI flag and help, API name (= CLI dest = manifest key) and, for the
manifest, how a path in it resolves. The CLI parser (`cli/args.py`), `OPTIONS` (API name ->
section and field) and the release manifest's key checks are made from these fields. The
public API (`trtbuild.build(...)`) and the CLI both produce keyword options;
`build_settings` routes each to its section, and each section checks its own values (bad
values raise TrtBuildError(2)). Strings are accepted where the CLI would give them
('input:1x3x8x8', '5%').
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import OptionError, TrtBuildError
from .onnx.shapes import Profile, Shape, parse_input_spec, parse_profile_spec

DEFAULT_OPSET = 17  # widest TensorRT 8.6-11 / RTX parser support; Q/DQ later raises it to 19
CALIB_METHODS = ("entropy", "max", "percentile", "mse", "auto")
PRECISIONS = ("fp32", "fp16", "int8")  # a release's precisions (manifest `precisions`)
VALIDATE_PRECISIONS = (*PRECISIONS, "fp8", "int4")  # what `trtbuild validate --precision` takes
FP16_MODES = ("graph", "flag")
CALIBRATORS = ("qdq", "trt")
LAYOUTS = ("NCHW", "NHWC")
BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")
TARGETS = ("auto", "onnx", "engine")
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")
# Reductions inside normalisation/softmax, and math whose range overflows FP16.
KEEP_FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceL2",
    "ReduceLogSumExp", "ReduceSumSquare", "Exp", "Log", "Pow", "Range", "RandomNormal",
    "RandomUniform", "RandomNormalLike", "RandomUniformLike", "ConstantOfShape", "Constant",
    "EyeLike", "NonMaxSuppression", "TopK", "CumSum", "Einsum",
})


@dataclass(frozen=True)
class Flag:
    """How an option is given on the command line: its flags, help (`{default}` is the
    field's default) and other argparse keywords; its API name when not the first flag's
    (`--calib-method` -> calib_method); `path`: how a manifest resolves a value given
    relative to it (path, data: a directory or FILE.py:FN(...), script: FILE.py:FN, paths)."""

    flags: tuple[str, ...]
    help: str | None = None
    name: str | None = None
    path: str | None = None
    kwargs: dict = field(default_factory=dict)

    @property
    def api_name(self) -> str:
        return self.name or self.flags[0].lstrip("-").replace("-", "_")


def option(default: Any = MISSING, *flags: str, help: str | None = None,
           name: str | None = None, path: str | None = None, factory: Any = None,
           **kwargs: Any) -> Any:
    """A settings field that is an option (see Flag; `factory` for a mutable default)."""
    meta = {"option": Flag(flags, help, name, path, kwargs)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _many(value: Any) -> tuple:
    """A single string or path given where a list is expected is one item, not letters."""
    return (value,) if isinstance(value, (str, Path)) else tuple(value)


def _finite(name: str, value: float | None, low: float | None = None,
            high: float | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(f"--{name}", f"{value!r} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise OptionError(f"--{name}", f"{value} is outside [{low}, {high}]")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"--{name}", f"'{value}' is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ExportSettings:
    inputs: tuple[tuple[str, Shape], ...] = option(
        (), "--input", name="inputs", action="append", metavar="NAME:SHAPE",
        help="input name and example shape, e.g. input:1x3x224x224 (repeatable, in the "
             "model's input order); random example data of that shape is used")
    dynamic_batch: bool = option(
        True, "--dynamic-batch", action="boolean",
        help="make the first axis of every input and output symbolic (default: on)")
    opset: int = option(DEFAULT_OPSET, "--opset", help="ONNX opset (default {default})")
    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        specs = tuple(parse_input_spec(s) if isinstance(s, str) else (s[0], tuple(s[1]))
                      for s in _many(self.inputs))
        if len({n for n, _ in specs}) != len(specs):
            raise OptionError("--input", "an input name is given twice")
        object.__setattr__(self, "inputs", specs)
        if not isinstance(self.opset, int) or not 7 <= self.opset <= 25:
            raise OptionError("--opset", f"{self.opset} is outside the supported 7-25")


# DataSettings.preprocess (a manifest's preprocess table): keys over DIR/preprocess.json,
# a flag each (checked by data.images.Preprocess)
PREPROCESS: dict[str, Flag] = {
    "resize": Flag(("--resize",), "resize the shorter side to PX", kwargs={"type": int,
                                                                         "metavar": "PX"}),
    "crop": Flag(("--crop",), "center crop PX x PX", kwargs={"type": int, "metavar": "PX"}),
    "grayscale": Flag(("--grayscale",), kwargs={"action": "boolean"}),
    "scale": Flag(("--scale",), "multiply pixel values (default 1/255)", kwargs={"type": float}),
    "mean": Flag(("--mean",), "per-channel mean, after scaling", kwargs={"type": float,
                                                                        "nargs": "+"}),
    "std": Flag(("--std",), "per-channel std, after scaling", kwargs={"type": float,
                                                                     "nargs": "+"}),
    "layout": Flag(("--layout",), kwargs={"choices": LAYOUTS}),
    "dtype": Flag(("--dtype",), kwargs={"choices": ("float32", "float16")}),
}
PREPROCESS_KEYS = tuple(PREPROCESS)


@dataclass(frozen=True)
class DataSettings:
    """How samples are read, wherever calibration (--calib) or validation (--val) data is."""

    batch_size: int = option(16, "--calib-batch-size", metavar="N",
                             help="samples per ONNX Runtime run (default {default})")
    max_samples: int = option(
        0, "--max-samples", metavar="N",
        help="calibrate on at most N samples (default: all); --val is always read whole "
             "(without --val, the capped calibration data is judged)")
    # overrides of DIR/preprocess.json: a table of PREPROCESS keys (a flag each)
    preprocess: dict = option(name="preprocess", factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError("--calib-batch-size", f"{self.batch_size} must be >= 1")
        if not isinstance(self.max_samples, int) or self.max_samples < 0:
            raise OptionError("--max-samples", f"{self.max_samples} must be >= 0 (0 = all)")
        unknown = set(self.preprocess) - set(PREPROCESS_KEYS)
        if unknown:
            raise TrtBuildError(f"preprocess: unknown keys {sorted(unknown)}")
        object.__setattr__(self, "preprocess",
                           {k: v for k, v in self.preprocess.items() if v is not None})


@dataclass(frozen=True)
class CalibSettings:
    data: str | None = option(
        None, "--calib", metavar="DIR", path="data",
        help="calibration samples: images (.png .jpg .jpeg .bmp, preprocessed per "
             "DIR/preprocess.json and the flags below), .npy (one sample or a batch on axis "
             "0) or .npz (arrays keyed by input name); or FILE.py:FN, a data loader "
             "(runs the script's code)")
    cache: Path | None = option(
        None, "--calib-cache", metavar="FILE", path="path",
        help="reuse a TensorRT calibration cache; recalibrates (and says why) when it lacks "
             "a tensor of this model")
    method: str = option(  # measured best: see README "calibrate"
        "auto", "--calib-method", choices=CALIB_METHODS,
        help="threshold method (default {default}). entropy: TensorRT EntropyCalibration2; "
             "max; percentile; mse: least quantization error; auto: per tensor, whichever "
             "of these quantizes it with the least error (report.json records each "
             "tensor's method and amax)")
    percentile: float = option(99.99, "--percentile",
                               help="for --calib-method percentile (default {default})")
    high_precision: str = option(  # what INT8 leaves in float (ModelOpt's default too)
        "fp16", "--high-precision", choices=("fp16", "fp32"),
        help="precision of the layers INT8 leaves in float, in the same graph (default "
             "fp16, FP32 kept where FP16 cannot hold the values; fp32: INT8 Q/DQ + FP32 "
             "only)")
    weight_rounding: str = option(  # measured best: see README "quantize"
        "gptq", "--weight-rounding", choices=("gptq", "nearest"),
        help="how INT8 weights round onto their per-channel grid (default {default}). "
             "gptq: each layer's rounding errors are compensated within the layer against "
             "its calibration inputs (GPTQ), so its output error is least; nearest: each "
             "weight to its nearest step")
    bias_correction: str = option(  # on: quant/bias.py; measured in README "quantize"
        "off", "--bias-correction", choices=("on", "off"),
        help="empirical bias correction (default {default}): every Conv/Gemm bias in graph "
             "order, one after the other, absorbs the shift INT8 causes in its output's "
             "mean on the first {bias_samples} calibration samples (one inference pass per "
             "layer; the graph keeps its shape). Measured on PP-OCRv4 rec and YOLOv8n: "
             "better on data of other generators in most runs, worse in some (README)")

    smoothquant: str = option(  # on/off measured: README "calibrate", bench/bench_smooth.py
        "auto", "--smoothquant", choices=("auto", "off"),
        help="SmoothQuant before calibration (default {default}). auto: each LayerNorm/"
             "RMSNorm output feeding MatMul/Gemm weights is divided per channel by s (the "
             "weights' rows multiplied by s), its strength alpha chosen by the least W8A8 "
             "output error on sampled calibration inputs (alpha 0, no smoothing, included), "
             "so a transformer's few outlier channels stop setting the INT8 range; the "
             "scales are written beside calib.cache (calib.cache.smooth.json); off: "
             "quantize the graph as it is")

    equalize: str = option(  # on/off measured: bench/results/accuracy.md, bench_independent.py
        "off", "--equalize", choices=("on", "off"),
        help="activation equalisation of conv inputs before calibration (default {default}). "
             "on: the input of each pointwise (1x1) or depthwise Conv is divided per channel "
             "by s and the conv's weights multiplied by s, its strength chosen as "
             "SmoothQuant's by the least W8A8 output error on sampled calibration patches "
             "(no scaling included); 1/s is folded into the constant affine, "
             "BatchNormalization or Conv (through Relu) that produces the input, so the graph "
             "keeps its shape, and inputs with no such producer are left alone. Measured on "
             "PP-OCRv4 rec: better or worse than off depending on the calibration draw "
             "(README)")

    def __post_init__(self) -> None:
        _choice("calib-method", self.method, CALIB_METHODS)
        _choice("equalize", self.equalize, ("on", "off"))
        _choice("bias-correction", self.bias_correction, ("on", "off"))
        _choice("smoothquant", self.smoothquant, ("auto", "off"))
        _choice("high-precision", self.high_precision, ("fp16", "fp32"))
        _choice("weight-rounding", self.weight_rounding, ("gptq", "nearest"))
        _finite("percentile", self.percentile, 50.0, 100.0)
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache))
        if self.data is not None:
            object.__setattr__(self, "data", str(self.data))


@dataclass(frozen=True)
class Fp16Settings:
    keep: tuple[str, ...] = option((), "--fp16-keep", metavar="OP_OR_NODE,...",
                                   help="more op types or node names to keep in FP32")
    io: bool = option(False, "--fp16-io", help="FP16 graph inputs and outputs too")
    mode: str = option("graph", "--fp16-mode", choices=FP16_MODES,
                       help="graph (default); flag: TensorRT <= 10 only, BuilderFlag.FP16 on "
                            "the FP32 graph")

    def __post_init__(self) -> None:
        _choice("fp16-mode", self.mode, FP16_MODES)
        keep = self.keep.split(",") if isinstance(self.keep, str) else self.keep
        object.__setattr__(self, "keep", tuple(k.strip() for k in keep if k.strip()))

    @property
    def keep_ops(self) -> frozenset[str]:
        """KEEP_FP32_OPS plus the op types in `keep` (capitalised, no '/')."""
        return KEEP_FP32_OPS | {k for k in self.keep if k[:1].isupper() and "/" not in k}

    @property
    def keep_nodes(self) -> frozenset[str]:
        return frozenset(self.keep) - self.keep_ops


INT4_METHODS = ("awq", "gptq", "nearest")


@dataclass(frozen=True)
class Int4Settings:
    block_size: int = option(
        128, "--int4-block-size", name="int4_block_size", metavar="B",
        help="with --int4-weights: weights per scale along the reduction axis (16-4096, a "
             "power of two; default {default}, ModelOpt's)")
    method: str = option(  # measured: bench/bench_int4.py, README "int4"
        "awq", "--int4-method", name="int4_method", choices=INT4_METHODS,
        help="with --int4-weights, on the --calib data: awq (default) searches the "
             "activation-aware scaling and clipping that minimise each layer's output error; "
             "gptq rounds each layer's weights with GPTQ on block scales clipped to its "
             "output error (layer inputs wider than 8192: awq): better on data like the "
             "calibration set, worse on other data; nearest rounds each weight, no data "
             "needed")

    def __post_init__(self) -> None:
        b = self.block_size
        if not isinstance(b, int) or not 16 <= b <= 4096 or b & (b - 1):
            raise OptionError("--int4-block-size", f"{b} is not a power of two in 16-4096")
        _choice("int4-method", self.method, INT4_METHODS)


GATE_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
            "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


@dataclass(frozen=True)
class Gate:
    """`name>=value` (also >, <=, <): a metric of the validation record, or a score of the
    --metric-script plug-in, that must hold."""

    name: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        return bool(GATE_OPS[self.op](x, self.value))  # NaN never holds

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse_gate(text: Any, flag: str = "gate") -> Gate:
    if isinstance(text, Gate):
        return text
    import re

    m = re.fullmatch(r"\s*([A-Za-z_][\w.:/-]*)\s*(>=|<=|>|<)\s*(\S+)\s*", str(text))
    try:
        value = float(m.group(3)) if m else math.nan
    except ValueError:
        value = math.nan
    if not m or not math.isfinite(value):
        raise OptionError(f"--{flag}", f"'{text}' is not NAME>=NUMBER (or >, <=, <), e.g. "
                            "strings_equal>=0.95 or cosine_mean>=0.99")
    return Gate(m.group(1), m.group(2), value)


@dataclass(frozen=True)
class GateSettings:
    min_top1_agreement: float | None = option(None, "--min-top1-agreement", metavar="F",
                                              help="e.g. 0.99")
    min_cosine: float | None = option(
        None, "--min-cosine", metavar="F",
        help="e.g. 0.98: per output, the mean per-sample cosine and the per-channel cosine "
             "(worst axis); outputs with up to 4 values per sample: correlation and relative error")
    gates: tuple[Gate, ...] = option(
        (), "--gate", name="gates", action="append", metavar="NAME>=X",
        help="any metric of the validation record or score of --metric-script (e.g. "
             "strings_equal>=0.95, output.max_abs_err<=0.1, label_accuracy>=0.99); also > < "
             "<=; repeatable")
    metric_script: Any = option(  # FILE.py:FN, or (API) a callable: task scores
        None, "--metric-script", metavar="FILE.py:FN", path="script",
        help="task metric: FN(reference, candidate, names) -> {{score: value}}, given "
             "{{output: array}} (batch axis first, all samples) and the sample names; the "
             "scores go to report.json and --gate. Runs the script's code")
    accuracy_target: Gate | None = option(  # the mixed-precision search's goal
        None, "--accuracy-target", metavar="NAME>=X",
        help="with --int8: when the INT8 model misses this (a --gate expression, e.g. "
             "cosine_mean>=0.99 or strings_equal>=0.95), measure each quantized region's "
             "cost on --val and return the fewest regions to FP16/FP32 until it holds; with "
             "--fp16, the fewest FP16 nodes to FP32 when the FP16 model misses it. Chosen "
             "on half of --val, judged on the other half; also a gate")

    def __post_init__(self) -> None:
        _finite("min-top1-agreement", self.min_top1_agreement)
        _finite("min-cosine", self.min_cosine)
        object.__setattr__(self, "gates", tuple(parse_gate(g) for g in _many(self.gates)))
        if self.accuracy_target is not None:
            object.__setattr__(self, "accuracy_target",
                               parse_gate(self.accuracy_target, "accuracy-target"))
        m = self.metric_script
        if m is not None and not callable(m):
            target, sep, fn = str(m).rpartition(":")
            if not (sep and fn and target.endswith(".py")):
                raise OptionError("--metric-script", f"'{m}' is not FILE.py:FUNCTION")
            object.__setattr__(self, "metric_script", str(m))


MAX_WORKSPACE_MB = 1 << 20  # 1 TiB: beyond any GPU's memory (the builder's size_t overflowed)


@dataclass(frozen=True)
class EngineSettings:
    """Every setting that changes the engine; all of them go into the cache key."""

    profiles: tuple[Profile, ...] = option(
        (), "--shapes", action="append", metavar="NAME:MIN,OPT,MAX",
        help="optimization profile, e.g. input:1x3x224x224,8x3x224x224,32x3x224x224 "
             "(default: static shapes, or batch 1/8/32 for a dynamic batch)")
    workspace_mb: int = option(2048, "--workspace", name="workspace_mb", metavar="MB",
                               help="builder workspace limit (default {default})")
    opt_level: int = option(3, "--opt-level", metavar="0-5",
                            help="builder optimization level (default {default})")
    hardware_compat: str = option("none", "--hardware-compat", choices=HARDWARE_COMPAT,
                                  help="default none")
    version_compatible: bool = option(False, "--version-compatible",
                                      help="engines that newer TensorRT runtimes can load")
    refittable: bool = option(
        False, "--refittable",
        help="engines whose weights can be replaced after the build (BuilderFlag.REFIT), "
             "e.g. with TensorRT's OnnxParserRefitter from an ONNX model of the same graph")
    strip_weights: bool = option(
        False, "--strip-weights",
        help="weight-stripped engines (BuilderFlag.STRIP_PLAN): the plan leaves out the "
             "weights it can refit and gets them, when loaded, from the ONNX model it was "
             "built from (OUT/model.<precision>.onnx, named in report.json); refit with "
             "identical weights (REFIT_IDENTICAL) unless --refittable")
    weight_streaming: bool = option(
        False, "--weight-streaming",
        help="engines that can keep weights in host memory and stream them to the GPU "
             "(BuilderFlag.WEIGHT_STREAMING; strongly typed networks only)")
    weight_streaming_budget: str = option(  # applied when an engine is loaded: not in the cache key
        "auto", "--weight-streaming-budget", metavar="auto|PCT|BYTES",
        help="with --weight-streaming: GPU memory for weights when trtbuild runs the engine "
             "(validate, bench): auto (TensorRT's choice, default), a percentage of the "
             "streamable weights (50%) or a size (512MiB, 2GiB)")
    fp16_flag: bool = False  # TensorRT <= 10 only: weakly typed network + BuilderFlag.FP16
    calibrator: str = option(  # trt: TensorRT <= 10 IInt8EntropyCalibrator2, FP32 graph
        "qdq", "--calibrator", choices=CALIBRATORS,
        help="INT8 engines: qdq (default) builds the Q/DQ model; trt (TensorRT <= 10 only) "
             "lets IInt8EntropyCalibrator2 calibrate the FP32 graph from the same --calib "
             "data")
    plugins: tuple[str, ...] = option(
        (), "--plugins", nargs="+", metavar="LIB.so|DIR", path="paths",
        help="plugin libraries to load (a directory: its *.so files); none by default. "
             "Their code runs in the builder's process")

    def __post_init__(self) -> None:
        profiles = tuple(parse_profile_spec(p) if isinstance(p, str) else p
                         for p in _many(self.profiles))
        object.__setattr__(self, "profiles", profiles)
        if len({p.name for p in profiles}) != len(profiles):
            raise OptionError("--shapes", "an input name is given twice")
        if not isinstance(self.workspace_mb, int) or not 1 <= self.workspace_mb <= MAX_WORKSPACE_MB:
            raise OptionError("--workspace", f"{self.workspace_mb} MB must be between 1 and "
                                f"{MAX_WORKSPACE_MB} (1 TiB; the builder takes a byte count)")
        if self.opt_level not in range(6):
            raise OptionError("--opt-level", f"{self.opt_level} must be 0-5")
        _choice("hardware-compat", self.hardware_compat, HARDWARE_COMPAT)
        _choice("calibrator", self.calibrator, CALIBRATORS)
        object.__setattr__(self, "plugins", _plugin_files(_many(self.plugins)))
        parse_stream_budget(self.weight_streaming_budget)

    def key_fields(self) -> dict[str, Any]:
        from dataclasses import asdict

        from .files import file_sha256

        d = asdict(self)
        del d["weight_streaming_budget"]  # how much of the engine's weights sit on the GPU at run time
        d["profiles"] = [asdict(p) for p in self.profiles]
        d["plugins"] = [file_sha256(Path(p)) for p in self.plugins]
        return d


@dataclass(frozen=True)
class TargetSettings:
    """Which builder, which architectures, and where engines are cached."""

    target: str = option(
        "auto", "--target", choices=TARGETS,
        help="auto (default): build engines when a builder is installed, else stop after "
             "the CPU stages and say why (exit 0); engine: a missing builder is exit 3; "
             "onnx: never build engines")
    builder: str = option("auto", "--builder", choices=BUILDERS,
                          help="auto (default): the first importable of tensorrt, "
                               "tensorrt_rtx")
    archs: tuple[str, ...] = option(
        (), "--arch", name="archs", metavar="sm_86,sm_89",
        help="target architectures, one engine each. TensorRT-RTX: any of {rtx_archs} (no "
             "GPU needed; default {default_rtx_archs}); TensorRT: the local GPU (default) or "
             "ampere+. native = this machine's GPU")
    cache_dir: Path | None = option(
        None, "--cache-dir", metavar="DIR", path="path",
        help="the cache of engines and of the CPU stages' outputs (default: "
             "$XDG_CACHE_HOME/trtbuild/engines)")
    use_cache: bool = option(  # --no-cache: recompute stages, rebuild engines
        True, "--no-cache", name="cache", action="store_false",
        help="recompute every stage and build every engine; read and store nothing in the "
             "cache")

    def __post_init__(self) -> None:
        _choice("target", self.target, TARGETS)
        _choice("builder", self.builder, BUILDERS)
        archs = self.archs.split(",") if isinstance(self.archs, str) else self.archs
        archs = tuple(a.strip() for a in archs if a.strip())
        for a in archs:
            if a not in ("native", "ampere+") and not (a.startswith("sm_") and a[3:].isdigit()):
                raise OptionError("--arch", f"'{a}' is not a compute capability like sm_86 "
                                    "(or native, ampere+)")
        object.__setattr__(self, "archs", archs)


@dataclass(frozen=True)
class BenchSettings:
    enabled: bool = option(
        False, "--bench", name="bench",
        help="measure latency: engines on this GPU (CUDA events), else the ONNX models with "
             "ONNX Runtime on the CPU; plus PyTorch eager")
    warmup: int = option(5, "--warmup", metavar="N", help="default {default}")
    iterations: int = option(50, "--iterations", metavar="N",
                             help="timed runs per model and shape, at most (default {default})")
    duration: float = option(  # seconds per model and shape at most (trtexec: 3 s)
        3.0, "--duration", metavar="S",
        help="seconds of timed runs per model and shape, at most: timing stops at "
             "--iterations runs or S seconds, whichever comes first, after at least one "
             "run; warm-up stops at --warmup runs or S/5 s (default {default:g})")
    baseline: Path | None = option(
        None, "--baseline", metavar="OLD_report.json", path="path",
        help="compare p50 latencies with an earlier report's bench results")
    max_regression: float = option(  # 0.05 = 5%; the CLI and a manifest may say "5%"
        0.05, "--max-regression", metavar="PCT", type=str,
        help="with --baseline: exit 1 when a p50 latency grew by more (default "
             "{default:.0%})")

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise OptionError("--iterations", f"{self.iterations} must be >= 1")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise OptionError("--warmup", f"{self.warmup} must be >= 0")
        _finite("duration", self.duration, 0.0)
        if isinstance(self.max_regression, str):
            object.__setattr__(self, "max_regression", parse_regression(self.max_regression))
        _finite("max-regression", self.max_regression, 0.0)
        if self.baseline is not None:
            object.__setattr__(self, "baseline", Path(self.baseline))


SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3,
              "mb": 10**6, "gb": 10**9}


def parse_stream_budget(text: str) -> tuple[str, float]:
    """--weight-streaming-budget: ('auto', 0), ('fraction', 0.5) for '50%', or
    ('bytes', n) for '512MiB' / '2GB' / '1000000'. Raises TrtBuildError(2)."""
    value = str(text).strip().lower()
    if value == "auto":
        return "auto", 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[kmg]i?b|b)?", value)
    if m and m.group(2) == "%" and 0 < float(m.group(1)) <= 100:
        return "fraction", float(m.group(1)) / 100
    size = float(m.group(1)) * SIZE_UNITS[m.group(2) or ""] if m and m.group(2) != "%" else 0
    if size >= 1:
        return "bytes", size
    raise OptionError("--weight-streaming-budget", f"{text!r} is not auto, a percentage in "
                        "(0, 100] or a size like 512MiB")


def _plugin_files(given: tuple) -> tuple[str, ...]:
    """Plugin libraries named explicitly; a directory stands for its *.so files."""
    files: list[str] = []
    for p in map(Path, given):
        files += sorted(str(f) for f in p.glob("*.so")) if p.is_dir() else [str(p)]
    return tuple(files)


def parse_regression(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise OptionError("--max-regression", f"'{text}' is not a percentage like 5%")
    _finite("max-regression", value, 0.0)
    return value


@dataclass(frozen=True)
class BuildSettings:
    """Everything `build` needs: the precisions, the data, and one section per stage."""

    src: str
    out: Path | None = option(None, "--out",
                              help="output directory (default: trtbuild-out/<model>/)")
    fp32: bool = option(False, "--fp32", help="also build an FP32 engine (the default when "
                        "neither --fp16 nor --int8 is given)")
    fp16: bool = option(False, "--fp16",
                        help="convert the graph to FP16 (FP32 kept for LayerNorm/Softmax/"
                             "reductions and Exp/Log/Pow) and check its accuracy on the CPU")
    int8: bool = option(False, "--int8", help="calibrate and quantize (Q/DQ ONNX + TensorRT "
                        "calibration cache), then check accuracy on the CPU")
    fp8: bool = option(
        False, "--fp8",
        help="FP8 (E4M3) Q/DQ where INT8 would go, scaled by the --calib data's max: "
             "model.fp8.onnx and its engines for Ada and newer (sm_89, sm_120), checked on "
             "the CPU like INT8")
    int4_weights: bool = option(
        False, "--int4-weights",
        help="weight-only INT4 (block-wise DequantizeLinear on MatMul/Gemm weights, "
             "activations in float: TensorRT's weight-only INT4 GEMM): model.int4.onnx and "
             "its engines, checked on the CPU like INT8")
    val: str | None = option(  # held-out data for every accuracy check
        None, "--val", metavar="DIR", path="data",
        help="held-out validation samples (same formats as --calib, a FILE.py:FN loader "
             "included, whose code runs; DIR/labels.csv `file,label` adds label accuracy)")
    export: ExportSettings = ExportSettings()
    data: DataSettings = DataSettings()
    calib: CalibSettings = CalibSettings()
    fp16_options: Fp16Settings = Fp16Settings()
    int4: Int4Settings = Int4Settings()
    gates: GateSettings = GateSettings()
    engine: EngineSettings = EngineSettings()
    targets: TargetSettings = TargetSettings()
    bench: BenchSettings = BenchSettings()

    def out_dir(self, name: str) -> Path:
        return Path(self.out) if self.out else Path("trtbuild-out") / name


@dataclass(frozen=True)
class Declared:
    """Where an option lives: BuildSettings section (None: a top-level field) and field,
    the field's annotation (its type) and default, and how it is given (Flag)."""

    section: str | None
    field: str
    annotation: str
    default: Any
    flag: Flag


def _declared() -> dict[str, Declared]:
    """API name -> Declared, for every field declared with option()."""
    found: dict[str, Declared] = {}

    def add(section: str | None, cls: type, holder: Any) -> None:
        for f in fields(cls):
            if "option" in f.metadata:
                found[f.metadata["option"].api_name] = Declared(
                    section, f.name, str(f.type), getattr(holder, f.name), f.metadata["option"])
    base = BuildSettings("-")
    add(None, BuildSettings, base)
    for top in fields(BuildSettings):
        if top.name != "src" and "option" not in top.metadata:
            add(top.name, type(top.default), top.default)
    return found


FLAGS = _declared()
# API keyword (= CLI option dest = manifest key) -> (BuildSettings section, field)
OPTIONS: dict[str, tuple[str, str]] = {k: (d.section, d.field) for k, d in FLAGS.items()
                                       if d.section}
TOP_LEVEL = {k for k, d in FLAGS.items() if d.section is None}


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Options -> (top-level fields, {section: {field: value}}). Unknown names: TypeError."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        if name in TOP_LEVEL:
            top[name] = value
        elif name in OPTIONS:
            section, key = OPTIONS[name]
            sections.setdefault(section, {})[key] = value
        else:
            raise TypeError(f"unknown option '{name}' (options: "
                            f"{', '.join(sorted(TOP_LEVEL | set(OPTIONS)))})")
    return top, sections


def section(cls: type, values: dict[str, Any]) -> Any:
    """`cls(**values)`, values None left at the default."""
    return cls(**{k: v for k, v in values.items() if v is not None})


def build_settings(src: str, **options: Any) -> BuildSettings:
    """BuildSettings from keyword options (see OPTIONS); every value checked."""
    top, sections = split_options(options)
    base = BuildSettings(src=str(src), **{k: v for k, v in top.items() if v is not None})
    made = {name: section(type(getattr(base, name)), values) for name, values in sections.items()}
    s = replace(base, **made)
    if s.fp16_options.mode == "flag":
        s = replace(s, engine=replace(s.engine, fp16_flag=s.fp16))
    return s

