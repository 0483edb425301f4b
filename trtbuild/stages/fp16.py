"""FP16 stage: the graph in float16 (trtbuild.quant.fp16), then its accuracy on the CPU
against the FP32 model. ONNX Runtime runs the FP16 model where it can: a session is first
created in a child process, because ONNX Runtime can crash outright on FP16 graphs
(SIGSEGV creating a session on torchvision's vit_b_16); where that fails or crashes, the
check runs the Cast round-trip simulation instead and the record says why."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..context import Context
from ..onnx import io
from ..quant import fp16
from . import validate

log = logging.getLogger(__name__)


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings.fp16_options
    clean = ctx.clean_model()
    model, info = fp16.convert(clean, s)
    out = ctx.out / "model.fp16.onnx"
    io.check_model(model, out)
    io.save(model, out)
    ctx.artifacts.fp16 = out
    check = out
    problem = session_problem(out)
    if problem is None:
        info["cpu_check"] = "fp16 model"
    else:
        check = ctx.out / "model.fp16sim.onnx"
        io.save(fp16.simulated(clean, s), check)
        info["cpu_check"] = f"cast round-trip simulation ({problem})"
        log.warning("%s: checked by simulation: %s", out, problem)
    record = validate.check(ctx, check, "fp16")
    record.update(info, output=str(out))
    return record


CHILD = """
import sys
import onnxruntime as ort
opts = ort.SessionOptions()
opts.log_severity_level = 3
try:
    ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
except Exception as e:
    print(str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__)
    sys.exit(3)
"""


def session_problem(path: Path, timeout: float = 600) -> str | None:
    """None when ONNX Runtime creates a session on `path` in a child process; else what
    went wrong (its error line, or the signal that killed it)."""
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                               text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"ONNX Runtime took over {timeout:.0f} s to create a session"
    if child.returncode == 0:
        return None
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        return f"ONNX Runtime crashed ({name}) creating a session on {path.name}"
    return child.stdout.strip() or f"ONNX Runtime failed (exit {child.returncode})"
