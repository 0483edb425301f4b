"""Every settings dataclass and every default, each defined once.

The public API (`trtbuild.build(...)`) and the CLI (one argument group per section) both
produce keyword options; `build_settings` routes each option to its section through
`OPTIONS`, and each section checks its own values (bad values raise TrtBuildError(2)).
Strings are accepted where the CLI would give them ('input:1x3x8x8', '5%').
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import TrtBuildError
from .onnx.shapes import Profile, Shape, parse_input_spec, parse_profile_spec

DEFAULT_OPSET = 17  # widest TensorRT 8.6-11 / RTX parser support; Q/DQ later raises it to 19
CALIB_METHODS = ("entropy", "max", "percentile", "mse", "auto")
PRECISIONS = ("fp32", "fp16", "int8")
FP16_MODES = ("graph", "flag")
CALIBRATORS = ("qdq", "trt")
LAYOUTS = ("NCHW", "NHWC")
BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")
TARGETS = ("auto", "onnx", "engine")
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")
PREPROCESS_KEYS = ("resize", "crop", "grayscale", "scale", "mean", "std", "layout", "dtype")
# Reductions inside normalisation/softmax, and math whose range overflows FP16.
KEEP_FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceL2",
    "ReduceLogSumExp", "ReduceSumSquare", "Exp", "Log", "Pow", "Range", "RandomNormal",
    "RandomUniform", "RandomNormalLike", "RandomUniformLike", "ConstantOfShape", "Constant",
    "EyeLike", "NonMaxSuppression", "TopK", "CumSum", "Einsum",
})


def _many(value: Any) -> tuple:
    """A single string or path given where a list is expected is one item, not letters."""
    return (value,) if isinstance(value, (str, Path)) else tuple(value)


def _finite(name: str, value: float | None, low: float | None = None,
            high: float | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrtBuildError(f"--{name}: {value!r} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise TrtBuildError(f"--{name}: {value} is outside [{low}, {high}]")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrtBuildError(f"--{name}: '{value}' is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ExportSettings:
    inputs: tuple[tuple[str, Shape], ...] = ()  # --input NAME:SHAPE, in the model's order
    dynamic_batch: bool = True
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        specs = tuple(parse_input_spec(s) if isinstance(s, str) else (s[0], tuple(s[1]))
                      for s in _many(self.inputs))
        if len({n for n, _ in specs}) != len(specs):
            raise TrtBuildError("--input: an input name is given twice")
        object.__setattr__(self, "inputs", specs)
        if not isinstance(self.opset, int) or not 7 <= self.opset <= 25:
            raise TrtBuildError(f"--opset: {self.opset} is outside the supported 7-25")


@dataclass(frozen=True)
class DataSettings:
    """How samples are read, wherever calibration (--calib) or validation (--val) data is."""

    batch_size: int = 16
    max_samples: int = 0              # 0 = all
    preprocess: dict = field(default_factory=dict)  # overrides of DIR/preprocess.json

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TrtBuildError(f"--calib-batch-size: {self.batch_size} must be >= 1")
        if not isinstance(self.max_samples, int) or self.max_samples < 0:
            raise TrtBuildError(f"--max-samples: {self.max_samples} must be >= 0 (0 = all)")
        unknown = set(self.preprocess) - set(PREPROCESS_KEYS)
        if unknown:
            raise TrtBuildError(f"preprocess: unknown keys {sorted(unknown)}")
        object.__setattr__(self, "preprocess",
                           {k: v for k, v in self.preprocess.items() if v is not None})


@dataclass(frozen=True)
class CalibSettings:
    data: str | None = None           # directory, or FILE.py:FN yielding {input: array}
    cache: Path | None = None         # reuse a TensorRT calibration cache
    method: str = "auto"              # measured best: see README "calibrate"
    percentile: float = 99.99
    high_precision: str = "fp16"      # what INT8 leaves in float (ModelOpt's default too)
    weight_rounding: str = "gptq"     # measured best: see README "quantize"
    bias_correction: str = "off"      # on: quant/bias.py; measured in README "quantize"

    def __post_init__(self) -> None:
        _choice("calib-method", self.method, CALIB_METHODS)
        _choice("bias-correction", self.bias_correction, ("on", "off"))
        _choice("high-precision", self.high_precision, ("fp16", "fp32"))
        _choice("weight-rounding", self.weight_rounding, ("gptq", "nearest"))
        _finite("percentile", self.percentile, 50.0, 100.0)
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache))
        if self.data is not None:
            object.__setattr__(self, "data", str(self.data))


@dataclass(frozen=True)
class Fp16Settings:
    keep: tuple[str, ...] = ()        # --fp16-keep: more op types or node names in FP32
    io: bool = False                  # FP16 graph inputs and outputs too
    mode: str = "graph"               # flag: TensorRT <= 10 BuilderFlag.FP16 on the FP32 graph

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
        raise TrtBuildError(f"--{flag}: '{text}' is not NAME>=NUMBER (or >, <=, <), e.g. "
                            "strings_equal>=0.95 or cosine_mean>=0.99")
    return Gate(m.group(1), m.group(2), value)


@dataclass(frozen=True)
class GateSettings:
    min_top1_agreement: float | None = None
    min_cosine: float | None = None
    gates: tuple[Gate, ...] = ()      # --gate NAME>=X, repeatable
    metric_script: Any = None         # FILE.py:FN, or (API) a callable: task scores
    accuracy_target: Gate | None = None  # --accuracy-target: mixed-precision search goal

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
                raise TrtBuildError(f"--metric-script: '{m}' is not FILE.py:FUNCTION")
            object.__setattr__(self, "metric_script", str(m))


MAX_WORKSPACE_MB = 1 << 20  # 1 TiB: beyond any GPU's memory (the builder's size_t overflowed)


@dataclass(frozen=True)
class EngineSettings:
    """Every setting that changes the engine; all of them go into the cache key."""

    profiles: tuple[Profile, ...] = ()
    workspace_mb: int = 2048
    opt_level: int = 3
    hardware_compat: str = "none"
    version_compatible: bool = False
    fp16_flag: bool = False  # TensorRT <= 10 only: weakly typed network + BuilderFlag.FP16
    calibrator: str = "qdq"  # "trt": TensorRT <= 10 IInt8EntropyCalibrator2 on the FP32 graph
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        profiles = tuple(parse_profile_spec(p) if isinstance(p, str) else p
                         for p in _many(self.profiles))
        object.__setattr__(self, "profiles", profiles)
        if len({p.name for p in profiles}) != len(profiles):
            raise TrtBuildError("--shapes: an input name is given twice")
        if not isinstance(self.workspace_mb, int) or not 1 <= self.workspace_mb <= MAX_WORKSPACE_MB:
            raise TrtBuildError(f"--workspace: {self.workspace_mb} MB must be between 1 and "
                                f"{MAX_WORKSPACE_MB} (1 TiB; the builder takes a byte count)")
        if self.opt_level not in range(6):
            raise TrtBuildError(f"--opt-level: {self.opt_level} must be 0-5")
        _choice("hardware-compat", self.hardware_compat, HARDWARE_COMPAT)
        _choice("calibrator", self.calibrator, CALIBRATORS)
        object.__setattr__(self, "plugins", _plugin_files(_many(self.plugins)))

    def key_fields(self) -> dict[str, Any]:
        from dataclasses import asdict

        from .files import file_sha256

        d = asdict(self)
        d["profiles"] = [asdict(p) for p in self.profiles]
        d["plugins"] = [file_sha256(Path(p)) for p in self.plugins]
        return d


@dataclass(frozen=True)
class TargetSettings:
    """Which builder, which architectures, and where engines are cached."""

    target: str = "auto"              # auto: engines if a builder is installed; engine: required
    builder: str = "auto"
    archs: tuple[str, ...] = ()
    cache_dir: Path | None = None
    use_cache: bool = True            # --no-cache: recompute stages, rebuild engines

    def __post_init__(self) -> None:
        _choice("target", self.target, TARGETS)
        _choice("builder", self.builder, BUILDERS)
        archs = self.archs.split(",") if isinstance(self.archs, str) else self.archs
        archs = tuple(a.strip() for a in archs if a.strip())
        for a in archs:
            if a not in ("native", "ampere+") and not (a.startswith("sm_") and a[3:].isdigit()):
                raise TrtBuildError(f"--arch: '{a}' is not a compute capability like sm_86 "
                                    "(or native, ampere+)")
        object.__setattr__(self, "archs", archs)


@dataclass(frozen=True)
class BenchSettings:
    enabled: bool = False
    warmup: int = 5
    iterations: int = 50
    duration: float = 3.0             # seconds per model and shape at most (trtexec: 3 s)
    baseline: Path | None = None
    max_regression: float = 0.05      # 0.05 = 5%

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise TrtBuildError(f"--iterations: {self.iterations} must be >= 1")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise TrtBuildError(f"--warmup: {self.warmup} must be >= 0")
        _finite("duration", self.duration, 0.0)
        if isinstance(self.max_regression, str):
            object.__setattr__(self, "max_regression", parse_regression(self.max_regression))
        _finite("max-regression", self.max_regression, 0.0)
        if self.baseline is not None:
            object.__setattr__(self, "baseline", Path(self.baseline))


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
        raise TrtBuildError(f"--max-regression: '{text}' is not a percentage like 5%")
    _finite("max-regression", value, 0.0)
    return value


@dataclass(frozen=True)
class BuildSettings:
    """Everything `build` needs: the precisions, the data, and one section per stage."""

    src: str
    out: Path | None = None
    fp32: bool = False                # also an FP32 engine (the default without fp16/int8)
    fp16: bool = False
    int8: bool = False
    val: str | None = None            # held-out data for every accuracy check
    export: ExportSettings = ExportSettings()
    data: DataSettings = DataSettings()
    calib: CalibSettings = CalibSettings()
    fp16_options: Fp16Settings = Fp16Settings()
    gates: GateSettings = GateSettings()
    engine: EngineSettings = EngineSettings()
    targets: TargetSettings = TargetSettings()
    bench: BenchSettings = BenchSettings()

    def out_dir(self, name: str) -> Path:
        return Path(self.out) if self.out else Path("trtbuild-out") / name


# API keyword (= CLI option dest) -> (BuildSettings section, field). One name, one meaning.
OPTIONS: dict[str, tuple[str, str]] = {
    "inputs": ("export", "inputs"), "dynamic_batch": ("export", "dynamic_batch"),
    "opset": ("export", "opset"),
    "calib_batch_size": ("data", "batch_size"), "max_samples": ("data", "max_samples"),
    "preprocess": ("data", "preprocess"),
    "calib": ("calib", "data"), "calib_cache": ("calib", "cache"),
    "calib_method": ("calib", "method"), "percentile": ("calib", "percentile"),
    "high_precision": ("calib", "high_precision"),
    "weight_rounding": ("calib", "weight_rounding"),
    "bias_correction": ("calib", "bias_correction"),
    "fp16_io": ("fp16_options", "io"), "fp16_mode": ("fp16_options", "mode"),
    "fp16_keep": ("fp16_options", "keep"),
    "min_top1_agreement": ("gates", "min_top1_agreement"), "min_cosine": ("gates", "min_cosine"),
    "gates": ("gates", "gates"), "metric_script": ("gates", "metric_script"),
    "accuracy_target": ("gates", "accuracy_target"),
    "shapes": ("engine", "profiles"), "workspace_mb": ("engine", "workspace_mb"),
    "opt_level": ("engine", "opt_level"), "hardware_compat": ("engine", "hardware_compat"),
    "version_compatible": ("engine", "version_compatible"), "plugins": ("engine", "plugins"),
    "calibrator": ("engine", "calibrator"),
    "target": ("targets", "target"), "builder": ("targets", "builder"),
    "archs": ("targets", "archs"), "cache_dir": ("targets", "cache_dir"),
    "cache": ("targets", "use_cache"),
    "bench": ("bench", "enabled"), "warmup": ("bench", "warmup"),
    "iterations": ("bench", "iterations"), "duration": ("bench", "duration"),
    "baseline": ("bench", "baseline"),
    "max_regression": ("bench", "max_regression"),
}
TOP_LEVEL = {f.name for f in fields(BuildSettings)} - {"src"} - {s for s, _ in OPTIONS.values()}


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

# The defaults, for help texts (each still defined once, above).
EXPORT_DEFAULTS, DATA_DEFAULTS, CALIB_DEFAULTS = ExportSettings(), DataSettings(), CalibSettings()
ENGINE_DEFAULTS, BENCH_DEFAULTS = EngineSettings(), BenchSettings()
