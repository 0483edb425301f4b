"""The stage list and the driver that runs stages into one output directory.

Every stage is `run(ctx) -> record`; `run_stages` times each, adds its record to
report.json (written after every stage, so a failed run keeps what ran) and stops with
exit 1 on a failed gate. `build` and the single commands (calibrate, validate, bench) all
go through `run_stages`.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

from .config import BuildSettings
from .context import Context
from .errors import GATE_FAILED, MISSING_CAPABILITY, OptionError, TrtBuildError
from .files import check_utf8, ensure_dir, refuse_links, writes_so_far, written_since
from .records import StageRecord
from .report import Report, Timer
from .stages import bench, calibrate, clean, engines, export, fp8, fp16, int4, quantize, sensitivity, validate

log = logging.getLogger(__name__)
Stage = Callable[[Context], StageRecord]
OnStage = Callable[[str, StageRecord], None]


def stages_for(s: BuildSettings) -> list[tuple[str, Stage]]:
    """The `build` stage list for these settings, in order."""
    stages: list[tuple[str, Stage]] = [("export", export.run), ("clean", clean.run)]
    if s.fp16 and s.fp16_options.mode == "graph":
        stages.append(("fp16", fp16.run))
    if s.int4_weights:
        stages.append(("int4", int4.run))
    if s.fp8:
        stages.append(("fp8", fp8.run))
    if s.int8:
        stages += [("calibrate", calibrate.run), ("quantize", quantize.run)]
        if s.gates.accuracy_target is not None:
            stages.append(("sensitivity", sensitivity.run))
        stages.append(("validate", functools.partial(validate.run, precision="int8")))
    if s.targets.target != "onnx":
        stages += [("build", engines.run), ("validate_engines", validate.run_engines)]
    if s.bench.enabled:
        stages.append(("bench", bench.run))
    return stages


def new_context(settings: BuildSettings, out: Path, model: str) -> Context:
    report = Report(out / "report.json", model=model, preprocess=given_preprocess(settings))
    return Context(settings, out, report)


def run_stages(ctx: Context, stages: list[tuple[str, Stage]],
               on_stage: OnStage | None = None,
               on_work: Callable[[str], None] | None = None) -> Context:
    """Run `stages` on `ctx` in order (`on_work(name)` before each one that is not served
    from the stage cache). Raises TrtBuildError (bad input, failed gate)."""
    for name, stage in stages:
        log.info("stage %s: start", name)
        before, mark = _stamps(_files(ctx.out)), writes_so_far()
        with Timer() as t:
            try:
                record, key = _cached(ctx, name)
                if record is None:
                    if on_work:
                        on_work(name)
                    record = stage(ctx)
                    if key:  # what it wrote: new files, and files it rewrote
                        after = _stamps(_files(ctx.out))
                        ctx.stage_cache.save(ctx, name, key, record, sorted(
                            p for p, stamp in after.items() if before.get(p) != stamp))
            except BaseException as e:  # what the failed stage wrote is not in the report
                ours = written_since(mark)  # not another process's files
                for path in _files(ctx.out) - before.keys() if ctx.owns_out else ():
                    if os.path.realpath(path) in ours:
                        path.unlink(missing_ok=True)
                ctx.report.finish("failed", f"{name}: " + (
                    e.message if isinstance(e, TrtBuildError) else f"{type(e).__name__}: {e}"))
                if isinstance(e, TrtBuildError):
                    e.report = _written_page(ctx)
                raise
        if _heavy(ctx):
            from .onnx import io

            io.trim_heap()  # freed copies back to the system: kept, they raised later peaks
        # the process's peak so far: with each stage's, where memory went (large models)
        if record.peak_rss_mb is None:
            record.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        record = ctx.report.add(name, t.seconds, record)
        log.info("stage %s: done in %.2fs", name, t.seconds)
        if on_stage:
            try:
                on_stage(name, record)
            except BaseException as e:  # the report says the run did not finish
                ctx.report.finish("failed", f"{name}: {type(e).__name__}: {e}")
                raise
        failed_parts = getattr(record, "failed", None)
        if failed_parts:  # parts failed, the rest is kept and in the report
            message = f"{name}: " + "; ".join(
                f"{f.precision}@{f.arch}: {f.error}" for f in failed_parts)
            ctx.report.finish("failed", message)
            failed = TrtBuildError(message, failed_parts[0].code, record.to_json())
            failed.report = _written_page(ctx)
            raise failed
        if record.gate_failures:
            message = f"{name} gate failed: " + "; ".join(record.gate_failures)
            ctx.report.finish("gate_failed", message)
            failed = TrtBuildError(message, GATE_FAILED, record.to_json())
            failed.report = _written_page(ctx)
            raise failed
    ctx.report.finish("passed")
    return ctx


def _written_page(ctx: Context) -> Path | None:
    """report.html of this run, when the report was written (for the error line)."""
    from .report_html import html_path

    path = ctx.report.path and html_path(ctx.report.path)
    return path if path is not None and ctx.report.stages and path.is_file() else None


def _cached(ctx: Context, name: str) -> tuple[StageRecord | None, str | None]:
    """(the stored record, restored into ctx and OUT, or None; the key to store under, or
    None when this stage is not cached in this run)."""
    from .stagecache import SPECS

    if ctx.stage_cache is None or name not in SPECS:
        return None, None
    key, why = ctx.stage_cache.key(ctx, name)
    if key is None:
        log.info("stage %s: not cached: %s", name, why)
        return None, None
    record = ctx.stage_cache.load(ctx, name, key)
    if record is not None:
        record.reused = key[:16]
    return record, key if record is None else None


ARTIFACTS = ("report.json", "report.html", "model.onnx", "model.onnx.data", "model.clean.onnx",
             "model.clean.onnx.data", "model.fp16.onnx", "model.fp16.onnx.data",
             "model.fp16sim.onnx", "calib.cache", "calib.trt.cache", "model.int8.onnx",
             "model.int8.onnx.data", "model.int4.onnx", "model.int4.onnx.data",
             "model.fp8.onnx", "model.fp8.onnx.data")


def clear_previous(out: Path, keep: tuple[Path, ...] = ()) -> list[str]:
    """Remove what an earlier run left in `out` (trtbuild's own artifact names, engines, and
    temp files of processes that are gone), so the directory and report.json agree. Files in
    `keep` (the run's own inputs) are never touched. Returns what was removed."""
    from .files import stale_temp_files, stale_work_dirs

    kept = {p.resolve() for p in keep}
    found = [out / n for n in ARTIFACTS] + sorted((out / "engines").glob("*/model.*.engine"))
    removed = []
    folders = [out, *((out / "engines").glob("*") if (out / "engines").is_dir() else [])]
    for path in found + [t for d in folders for t in stale_temp_files(d)]:
        if path.is_file() and not path.is_symlink() and path.resolve() not in kept:
            path.unlink()
            removed.append(path.name)
    for folder in stale_work_dirs(out):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    for arch in sorted((out / "engines").glob("*")) if (out / "engines").is_dir() else []:
        if arch.is_dir() and not any(arch.iterdir()):
            arch.rmdir()
    if removed:
        log.info("%s: removed %d files of an earlier run", out, len(removed))
    return removed


def _heavy(ctx: Context) -> bool:
    """Is the run's model (with its weights file) over io.HEAVY_BYTES? The cleaned model
    once there is one: trtbuild names its weights file (a user's file may name it anything)."""
    from .onnx.io import HEAVY_BYTES

    path = ctx.artifacts.clean or ctx.artifacts.model
    files = [path, path.with_name(f"{path.name}.data")] if path else []
    return sum(f.stat().st_size for f in files if f.is_file()) > HEAVY_BYTES


def _stamps(paths: set[Path]) -> dict[Path, tuple]:
    """(inode, mtime, size) of each file: a rewritten file (replaced atomically) differs."""
    return {p: (st.st_ino, st.st_mtime_ns, st.st_size) for p in paths for st in [p.stat()]}


def _files(folder: Path) -> set[Path]:
    """Trtbuild's artifacts in `folder` (top level and engines/), report.json excluded."""
    if not folder.is_dir():
        return set()
    found = {p for p in folder.iterdir() if p.is_file() and p.name != "report.json"}
    return found | set((folder / "engines").glob("*/*.engine"))


def in_out_dir(out: Path, work: Callable[[Path], Context],
               keep: tuple[Path, ...] = ()) -> Context:
    """Create `out` (clearing an earlier run's artifacts), run `work(out)`; on bad input
    remove `out` again if this run created it and left it empty."""
    check_utf8(out, "--out")
    created = not out.exists()
    ensure_dir(out)
    refuse_links(out, ARTIFACTS)
    clear_previous(out, keep)
    try:
        return work(out)
    except TrtBuildError as e:
        if e.code != GATE_FAILED and created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def run(settings: BuildSettings, on_stage: OnStage | None = None) -> Context:
    """`build`: every stage into settings.out_dir(); each writes its artifact and a record
    in report.json. Raises TrtBuildError on bad input or a failed gate."""
    from .onnx import source

    src = source.parse(settings.src)  # validates SRC before creating any directory
    check_files(settings)
    choose_engine_runtime(settings)
    check_targets(settings)
    loaded = check_data(settings, src)
    out = settings.out_dir(src.name)
    keep = tuple(p for p in (src.path, settings.calib.cache) if p is not None)

    torch_import = TorchImport(settings, src)

    def work(o: Path) -> Context:
        nonlocal loaded
        ctx = new_context(settings, o, settings.src)
        ctx.source, loaded = loaded, None  # the export stage lets go of it
        ctx.stage_cache = stage_cache(settings)
        return run_stages(ctx, stages_for(settings), on_stage, torch_import.before)
    try:
        return in_out_dir(out, work, keep)
    finally:
        torch_import.join()  # never exit (or fail) while a thread is inside an import


class TorchImport:
    """GPTQ needs torch (1.1-1.4 s to import) from the calibrate stage on: import it in a
    thread while the stages before it run, started when the first stage actually runs (a
    rerun served from the stage cache never imports it). A failed import is left for the
    stage that needs torch to report.

    Only our own code may run beside it: `import torch.x` in another thread while torch is
    half-imported fails ("partially initialized module"; Python waits only on the module
    named, not on its parent), and inspect.getmodule's caches are shared (polygraphy is
    imported before the thread starts). So only an ONNX SRC without loader scripts qualifies, the
    thread starts only before EARLY stages, and it is joined before any other stage."""

    EARLY = ("export", "clean", "fp16")  # our code only: onnx, ONNX Runtime, numpy

    def __init__(self, s: BuildSettings, src: Any):
        import sys

        from .data import is_script

        self.wanted = (s.int8 and s.calib.weight_rounding == "gptq" and src.kind == "onnx"
                       and "torch" not in sys.modules
                       and not any(d and is_script(d) for d in (s.calib.data, s.val)))
        self.thread: threading.Thread | None = None

    def before(self, stage: str) -> None:
        """Called before each stage that runs."""
        if stage not in self.EARLY:
            self.join()
        elif self.wanted and self.thread is None:
            _import_polygraphy()
            self.thread = threading.Thread(target=_import_torch, name="trtbuild-import-torch")
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _import_polygraphy() -> None:
    """Polygraphy's modules register their names through inspect.getmodule, whose shared
    caches race with torch's import in the other thread (CI: "'NoneType' object has no
    attribute '__all__'" in the fp16 check), so the modules the checks use come first."""
    from .thirdparty import polygraphy

    polygraphy()
    import polygraphy.backend.onnxrt  # noqa: F401
    import polygraphy.comparator  # noqa: F401


def _import_torch() -> None:
    try:
        import torch  # noqa: F401
    except BaseException:  # noqa: BLE001 - the stage that needs torch imports it and says
        pass


def given_preprocess(s: BuildSettings) -> dict[str, Any]:
    """The preprocessing of the run's image data (the calibration folder's preprocess.json,
    else the validation folder's, with the flags on top), recorded in report.json so that
    `trtbuild validate` and `bench` on its models need no flags repeated."""
    from .data import is_script
    from .data.images import given_spec

    folders = [Path(d) for d in (s.calib.data, s.val) if d and not is_script(str(d))]
    spec = next((f for f in folders if (f / "preprocess.json").is_file()), None)
    return given_spec(spec, s.data.preprocess)


def stage_cache(s: BuildSettings) -> Any:
    """Where the CPU stages' outputs are reused from (None: --no-cache)."""
    from .stagecache import StageCache

    return StageCache(s.targets.cache_dir) if s.targets.use_cache else None


def check_targets(s: BuildSettings) -> None:
    """Before any work: the engine builder and every --arch it must target (exit 3), so a
    wrong --arch fails in a second, not after export, clean and calibration."""
    if s.engine.weight_streaming_budget != "auto" and not s.engine.weight_streaming:
        raise TrtBuildError("--weight-streaming-budget is for engines built with "
                            "--weight-streaming")
    if s.targets.target == "onnx":
        return
    from .trt.backend import load_backend, target_archs

    try:
        found = load_backend(s.targets.builder)
    except TrtBuildError:
        if s.targets.target == "engine":
            raise
        return  # target auto: the engines stage records that none was built
    archs = target_archs(found, s.targets.archs, s.engine.hardware_compat)
    from .stages.fp8 import has_fp8

    no_fp8 = [a for a in archs if not has_fp8(a)]
    if s.fp8 and no_fp8:
        fix = "give --arch sm_89 (or sm_120)" if found.is_rtx else \
            "build on a GPU with FP8 (sm_89 and newer)"
        raise OptionError("--fp8", f"{', '.join(no_fp8)} has no FP8 (Ada sm_89 and newer): "
                          f"{fix}", code=MISSING_CAPABILITY)
    from .trt.builder import check_refit

    check_refit(found, archs[0], s.engine)


def check_data(s: BuildSettings, src: Any) -> Any:
    """Before any work: every calibration and validation sample file against the model's
    inputs (shapes, dtypes, image sizes after preprocessing; exit 2 naming the file). An
    ONNX SRC is read without its weights; a torch SRC is loaded (and returned, for the
    export stage) and checked against its example inputs. Loader scripts run later."""
    import numpy as np

    from .data import Dataset, is_script
    from .onnx import source
    from .onnx.inputs import InputSpec

    folders = [d for d in (s.calib.data, s.val) if d and not is_script(str(d))]
    if not folders:
        return None
    loaded = None
    if src.kind == "onnx":
        inputs = _onnx_inputs(src.path)
        if inputs is None:
            return None  # the export stage says what is wrong with the file
    elif src.text.startswith("torchvision:") and not s.export.inputs:
        inputs = [InputSpec("input", ("N", *source.TORCHVISION_DEFAULT_SHAPE[1:]),
                            np.dtype(np.float32))]  # known without importing torch (4 s)
    else:
        loaded = source.load(src, dict(s.export.inputs) or None)
        inputs = _example_inputs(loaded, s)
    from .data.images import Preprocess

    for folder in folders:
        pre = Preprocess.from_dir(Path(folder), **s.data.preprocess)
        Dataset(folder, inputs, s.data.batch_size, s.data.max_samples, pre)
    return loaded


def _onnx_inputs(path: Path) -> list | None:
    import onnx

    from .onnx.inputs import model_inputs

    try:
        return model_inputs(onnx.load(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001 - io.load in the export stage names the problem
        return None


def _example_inputs(src: Any, s: BuildSettings) -> list:
    """InputSpecs for a torch SRC's example inputs, named as the export stage names them,
    with a free batch axis."""
    import numpy as np

    from .onnx.inputs import InputSpec

    def dtype(x: Any) -> np.dtype:
        try:
            return np.dtype(str(x.dtype).removeprefix("torch."))
        except TypeError:  # bfloat16: no numpy dtype; a float sample fits it
            return np.dtype(np.float32)

    examples = src.example_inputs
    names = [n for n, _ in s.export.inputs] or (
        ["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))])
    return [InputSpec(n, ("N", *x.shape[1:]) if x.dim() else (),
                      dtype(x))
            for n, x in zip(names, examples)]


def check_files(s: BuildSettings, run_code: bool = True) -> None:
    """Paths named in the settings that must exist, checked before any work. `run_code`:
    also import --metric-script to check its function (a release manifest's check does that
    only once nothing else is wrong with it)."""
    if s.int8 and not s.calib.data and not s.calib.cache:
        raise TrtBuildError("--int8 needs calibration data: --calib DIR, --data-loader-script "
                            "FILE.py:FN or --calib-cache FILE")
    if not s.int8 and s.calib.cache:
        raise TrtBuildError("--calib-cache needs --int8")
    if not s.int4_weights and s.int4 != type(s.int4)():
        raise TrtBuildError("--int4-method and --int4-block-size need --int4-weights")
    int4_data = s.int4_weights and s.int4.method != "nearest"
    if not s.int8 and s.calib.data and not int4_data and not s.fp8:
        raise TrtBuildError("--calib and --data-loader-script need --int8, --fp8 or "
                            "--int4-weights with --int4-method awq or gptq")
    if s.fp8 and not s.calib.data:
        raise TrtBuildError("--fp8 scales activations by their range on calibration data: "
                            "give --calib DIR or --data-loader-script FILE.py:FN")
    if int4_data and not s.calib.data:
        raise OptionError("--int4-weights", f"--int4-method {s.int4.method} chooses each "
                          "layer's weights on calibration data: give --calib DIR, or "
                          "--int4-method nearest")
    from .data import check_source, read_labels

    if s.calib.data:
        check_source(s.calib.data, "--calib")
    if s.val:
        check_source(s.val, "--val")
        if Path(s.val).is_dir():
            read_labels(Path(s.val))
    if s.int8 and s.engine.calibrator == "trt" and not s.calib.data:
        raise TrtBuildError("--calibrator trt calibrates in TensorRT from --calib data: give "
                            "--calib DIR or --data-loader-script (a cache alone is not enough)")
    if s.calib.cache and not s.calib.cache.is_file():
        raise TrtBuildError(f"{s.calib.cache}: no such calibration cache")
    if s.bench.baseline and not s.bench.baseline.is_file():
        raise TrtBuildError(f"{s.bench.baseline}: no such baseline report")
    if s.gates.metric_script is not None:
        from .metrics import load_metric, metric_file

        if run_code:
            load_metric(s.gates.metric_script)  # a missing file or function: exit 2 now
        else:
            metric_file(s.gates.metric_script)
    if s.engine.weight_streaming and ((s.fp16 and s.fp16_options.mode == "flag")
                                      or (s.int8 and s.engine.calibrator == "trt")):
        from .trt.builder import STREAMING_NEEDS_TYPED

        raise TrtBuildError(STREAMING_NEEDS_TYPED)
    if s.gates.accuracy_target is not None and s.engine.calibrator == "trt":
        raise TrtBuildError("--accuracy-target chooses Q/DQ regions; --calibrator trt builds "
                            "from the FP32 graph and would discard them: use one or the other")
    if s.gates.accuracy_target is not None and not s.int8 and not (
            s.fp16 and s.fp16_options.mode == "graph"):
        raise TrtBuildError("--accuracy-target needs --int8 or --fp16 (it chooses which INT8 "
                            "regions or FP16 nodes fall back to a wider type)")
    for lib in s.engine.plugins:
        check_library(Path(lib))
    if s.targets.use_cache:
        check_cache_dir(s.targets.cache_dir)


def check_cache_dir(root: Path | None) -> None:
    """The cache root (--cache-dir or the default) must be a directory or creatable as one:
    a file or /dev/null there ended in an internal error after the CPU stages."""
    from .cache import default_root

    path = check_utf8(Path(root) if root is not None else default_root(), "--cache-dir")
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise TrtBuildError(f"{p}: not a directory (--cache-dir {path}); give a "
                                    "directory, or --no-cache")
            return


def check_library(path: Path) -> None:
    """A plugin library must be an ELF shared object (TensorRT dlopens it in-process)."""
    if not path.is_file():
        raise TrtBuildError(f"{path}: no such plugin library")
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:4] != b"\x7fELF" or int.from_bytes(head[16:18], "little") != 3:  # ET_DYN
        raise TrtBuildError(f"{path}: not a shared library (plugins are ELF .so files)")


def choose_engine_runtime(s: BuildSettings) -> None:
    """Polygraphy binds to tensorrt or tensorrt_rtx at its first import; on a GPU machine
    whose engines will come from TensorRT-RTX, bind it to RTX before any stage imports it."""
    from .trt import runtime
    from .trt.backend import load_backend

    if s.targets.target == "onnx" or runtime.machine_refusal():
        return
    try:
        rtx = load_backend(s.targets.builder).is_rtx
    except TrtBuildError:
        return
    from .thirdparty import polygraphy

    polygraphy(rtx=rtx)
