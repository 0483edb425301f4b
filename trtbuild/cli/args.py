"""The parser: one argument group per stage, made from the options declared on the settings
dataclasses (trtbuild.config.FLAGS: flag, help, type, default, API name = dest). Flags
default to None = "not given": the defaults live in trtbuild.config only."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, NoReturn

from ..config import BUILDERS, FLAGS, OPTIONS, PREPROCESS, TOP_LEVEL, VALIDATE_PRECISIONS, Flag
from ..quant.bias import BIAS_SAMPLES
from ..trt.backend import DEFAULT_RTX_ARCHS, RTX_ARCHS
from ..version import __version__

DESCRIPTION = """\
trtbuild: PyTorch or ONNX -> cleaned, calibrated, quantized TensorRT engines, with proof.

pipeline: export -> clean -> calibrate -> quantize -> build -> cache -> validate -> bench
`trtbuild SRC ...` is short for `trtbuild build SRC ...`; `trtbuild help COMMAND` explains one.

SRC is one of: model.onnx | path/to/file.py:factory | package.module:factory |
torchvision:NAME. A factory returns a torch.nn.Module or (module, example_inputs).

Options that run code: a FILE.py:FN or module:FN SRC, --data-loader-script, --calib or
--val given as FILE.py:FN, --metric-script (and a release manifest's src, calib, val and
metric_script keys) import and call Python; --plugins loads shared libraries into the
builder. Give only files you trust.

exit codes: 0 ok, 1 an accuracy/latency gate failed, 2 bad input, 3 missing capability,
4 internal error (a bug, or a crash in a library trtbuild drives), 130 interrupted."""


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but a failure's one line (and --json's output): no "
                        "progress, stage lines or warnings")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (the human summary goes to stderr)")


# values that help texts name besides an option's own default
HELP_VALUES = {"bias_samples": BIAS_SAMPLES, "rtx_archs": ", ".join(RTX_ARCHS),
               "default_rtx_archs": ",".join(DEFAULT_RTX_ARCHS)}
TYPES = {"int": int, "float": float, "Path": Path}


def add(g: Any, *names: str) -> None:
    """The flags of the options `names` (API names), as declared in trtbuild.config."""
    for name in names:
        d = FLAGS[name]
        g.add_argument(*d.flag.flags, **_argparse(d.flag, name, d.annotation, d.default))


def _argparse(flag: Flag, dest: str, annotation: str = "", default: Any = None) -> dict:
    kw = dict(flag.kwargs)
    kw["dest"] = dest
    if kw.get("action") == "boolean":
        kw["action"] = argparse.BooleanOptionalAction
    elif annotation == "bool" and "action" not in kw:
        kw["action"] = "store_true"
    if "action" not in kw and "type" not in kw and annotation.removesuffix(" | None") in TYPES:
        kw["type"] = TYPES[annotation.removesuffix(" | None")]
    if kw.get("action") in ("store_true", "store_false"):
        kw["default"] = None  # not given; given means the opposite of the default
    if flag.help is not None:
        kw["help"] = flag.help.format(default=default, **HELP_VALUES).replace("%", "%%")
    return kw


def export_group(p: argparse.ArgumentParser) -> None:
    add(p.add_argument_group("export (torch SRCs)"), "inputs", "dynamic_batch", "opset")


def data_group(p: argparse.ArgumentParser) -> None:
    add(p.add_argument_group("reading --calib and --val data"), "calib_batch_size",
        "max_samples")
    g = p.add_argument_group("image preprocessing (overrides DIR/preprocess.json)")
    for key, flag in PREPROCESS.items():
        g.add_argument(*flag.flags, **_argparse(flag, key))


def calib_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (INT8)")
    add(g, "calib")
    g.add_argument("--data-loader-script", metavar="FILE.py:FN",
                   help="instead of --calib: FN() yields {input_name: array} dicts (Polygraphy's "
                        "convention); FILE.py:FN(key=value, ...) passes literal arguments, and FN "
                        "gets the model's inputs as inputs= when it takes them. Ready loaders for "
                        "image folders, COCO sets, JSONL text, audio and video: calib/README.md. "
                        "Runs the script's code")
    add(g, "calib_cache", "calib_method", "high_precision", "weight_rounding", "bias_correction",
        "smoothquant", "equalize", "percentile")


def gate_group(p: argparse.ArgumentParser, with_val: bool = True) -> None:
    g = p.add_argument_group("accuracy gates (exit 1 when not met)")
    add(g, *(["val"] if with_val else []), "min_top1_agreement", "min_cosine", "gates",
        "metric_script")


def fp16_group(p: argparse.ArgumentParser) -> None:
    add(p.add_argument_group("FP16"), "fp16", "fp16_io", "fp16_keep", "fp16_mode")


def engine_group(p: argparse.ArgumentParser) -> None:
    add(p.add_argument_group("engines (TensorRT 10/11 or TensorRT-RTX)"), "target", "builder",
        "archs", "shapes", "workspace_mb", "opt_level", "hardware_compat", "version_compatible",
        "refittable", "strip_weights", "weight_streaming",
        "weight_streaming_budget", "plugins", "cache_dir", "cache", "calibrator")


def bench_group(p: argparse.ArgumentParser, with_flag: bool = True) -> None:
    add(p.add_argument_group("latency"), *(["bench"] if with_flag else []), "warmup",
        "iterations", "duration", "baseline", "max_regression")


def pipeline_groups(p: argparse.ArgumentParser) -> None:
    """Flags of the stages after export (precision, data, calibration, gates, engines)."""
    add(p, "int8", "fp8", "fp32")
    fp16_group(p)
    calib_group(p)
    data_group(p)
    gate_group(p)
    add(p.add_argument_group("weight-only INT4"), "int4_weights", "int4_block_size",
        "int4_method")
    add(p.add_argument_group("mixed precision"), "accuracy_target")
    engine_group(p)
    bench_group(p)


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped option (its subcommands are Parsers too:
    add_subparsers makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = sorted(self._options())
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
                if word.startswith("-") and close:
                    hints.append((close[0], word))
            if len(hints) == 1:
                message += f" (did you mean {hints[0][0]}?)"
            elif hints:
                message += f" (did you mean {', '.join(f'{a} for {b}' for a, b in hints)}?)"
        super().error(message)

    def _options(self) -> set[str]:
        """Every option string of this parser and its subcommands."""
        found = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= set(sub._option_string_actions)
        return found


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="trtbuild", description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"trtbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("build", help="run the pipeline on SRC into an output directory")
    p.add_argument("src", metavar="SRC")
    add(p, "out")
    export_group(p)
    pipeline_groups(p)
    common(p)

    p = sub.add_parser("demo", help="the digits demo: build the bundled CNN with its data")
    p.add_argument("--out", type=Path, help="output directory (default: trtbuild-out/digits/)")
    pipeline_groups(p)
    common(p)

    p = sub.add_parser("export", help="PyTorch -> ONNX, checked against PyTorch's output")
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    export_group(p)
    common(p)

    p = sub.add_parser("clean", help="GraphSurgeon cleanup passes (fold, no-ops, shapes)")
    p.add_argument("model", type=Path, metavar="IN.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    common(p)

    p = sub.add_parser("calibrate", help="INT8 calibration of an ONNX model: model.clean.onnx, "
                       "calib.cache, model.int8.onnx (Q/DQ) and report.json in OUTDIR")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    calib_group(p)
    data_group(p)
    add(p.add_argument_group("cache"), "cache_dir", "cache")
    common(p)

    p = sub.add_parser("validate", help="accuracy of CANDIDATE.onnx against REFERENCE.onnx "
                       "on --val data (Polygraphy, ONNX Runtime on the CPU); images are read "
                       "as the build that wrote CANDIDATE read them (its report.json), unless "
                       "the --val folder has a preprocess.json; flags override either")
    p.add_argument("reference", type=Path, metavar="REFERENCE.onnx")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE.onnx")
    p.add_argument("--precision", choices=VALIDATE_PRECISIONS, default="int8",
                   help="selects Polygraphy's default tolerances (default int8)")
    gate_group(p)
    data_group(p)
    common(p)

    p = sub.add_parser("bench", help="latency of MODEL.onnx (ONNX Runtime, CPU) or ENGINE (GPU, "
                       "with the runtime that built it) at each profile shape; --baseline "
                       "compares")
    p.add_argument("model", type=Path, metavar="MODEL.onnx|ENGINE")
    add(p, "shapes", "weight_streaming_budget")
    p.add_argument("--reference", type=Path, metavar="MODEL.onnx",
                   help="for an engine: the ONNX model that gives input names and shapes")
    p.add_argument("--builder", choices=BUILDERS, default="auto",
                   help="for an engine not listed in a trtbuild report.json: its runtime")
    p.add_argument("-o", "--output", type=Path, metavar="report.json",
                   help="write the results as a report (usable as a later --baseline)")
    bench_group(p, with_flag=False)
    common(p)

    p = sub.add_parser("release", help="a release from a TOML manifest: every model x "
                       "precision x arch on a local pool of workers (or Ray tasks), "
                       "resumable, with release.json and release.html")
    p.add_argument("manifest", type=Path, metavar="MANIFEST.toml",
                   help="the models and their options; its src, calib, val and metric_script "
                        "keys may name Python (FILE.py:FN, module:FN) that runs, and plugins "
                        "shared libraries that load: give only manifests you trust")
    p.add_argument("--out", type=Path, help="output directory (default: "
                   "trtbuild-out/release-<manifest name>/); rerun to resume")
    p.add_argument("--baseline", type=Path, metavar="OLD/release.json",
                   help="compare engine sizes and accuracy with a previous release")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes (default: min(cores, jobs); a job waits while free "
                          "memory is below the largest job's peak RSS)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="jobs as Ray tasks: alone, on a local Ray runtime; with HOST:PORT, on "
                          "that cluster (pip install 'trtbuild[ray]'; put it after MANIFEST)")
    common(p)

    p = sub.add_parser("info", help="GPU, compute capability, TensorRT versions, and the "
                       "engine cache key prefix for this machine")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    common(p)

    p = sub.add_parser("cache", help="the engine cache: ls | verify | prune")
    p.add_argument("action", choices=("ls", "verify", "prune"),
                   help="ls: one row per entry (model, precision, arch, builder, size, age) "
                        "and the total; verify: re-hash every entry, quarantine damaged ones "
                        "(exit 1 if any); prune: remove old entries")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    p.add_argument("--arch", metavar="SM", help="ls: only engines for this arch (sm_86)")
    p.add_argument("--model", metavar="TEXT", help="ls: only entries whose source model "
                                                    "contains TEXT")
    p.add_argument("--max-age-days", type=float, help="prune: remove entries older than this")
    p.add_argument("--max-size-mb", type=float, help="prune: then the oldest until under this")
    common(p)

    p = sub.add_parser("inspect", help="what an engine is: builder and version, target "
                       "arch, precision, I/O and profile shapes, source model, from its cache "
                       "record (no GPU needed)")
    p.add_argument("target", metavar="ENGINE_OR_KEY",
                   help="an engine file (OUT/engines/sm_86/model.int8.engine, or any file "
                        "whose sha256 a cache entry or report.json records) or a cache key "
                        "(8+ leading hex digits)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    common(p)

    p = sub.add_parser("help", help="this help, or `trtbuild help COMMAND` for one command")
    p.add_argument("topic", nargs="?", metavar="COMMAND")
    parser.set_defaults(subparsers=dict(sub.choices))  # the one list of commands
    return parser


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: subparser}."""
    return parser.get_default("subparsers")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The API options the parsed flags give (only those given; config has the defaults)."""
    given = {k: v for k, v in vars(args).items()
             if (k in OPTIONS or k in TOP_LEVEL) and v is not None}
    if getattr(args, "data_loader_script", None):
        from ..errors import TrtBuildError

        if args.calib:
            raise TrtBuildError("give --calib or --data-loader-script, not both")
        given["calib"] = args.data_loader_script
    pre = {k: getattr(args, k) for k in PREPROCESS if getattr(args, k, None) is not None}
    if pre:
        given["preprocess"] = pre
    return given
