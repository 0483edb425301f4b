"""Export stage: torch.nn.Module -> ONNX, checked and compared once against PyTorch."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_OPSET, ExportSettings
from ..context import Context
from ..errors import GATE_FAILED, TrtBuildError
from ..files import WORK_DIR, atomic_path
from ..onnx import io, source
from ..onnx.inputs import model_inputs, model_outputs, random_feed
from ..onnx.source import Source
from ..records import ExportRecord

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    path: Path
    inputs: dict[str, list] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    opset: int = DEFAULT_OPSET
    data_dependent: dict[str, str] = field(default_factory=dict)
    static_batch: str | None = None
    copied: bool = False  # an ONNX SRC, copied: no PyTorch output to compare with

    def record(self) -> dict[str, Any]:
        r = {"output": str(self.path), "inputs": self.inputs, "outputs": self.outputs,
             "opset": self.opset, "max_abs_err": self.max_abs_err,
             "max_rel_err": self.max_rel_err}
        if self.copied:
            r["source"] = "onnx"
        if self.data_dependent:
            r["data_dependent_outputs"] = self.data_dependent
        if self.static_batch:
            r["static_batch"] = self.static_batch
        return r


def run(ctx: Context) -> ExportRecord:
    """SRC -> out/model.onnx; a torch SRC's module is kept only for --bench's eager latency
    baseline (Context.take_source)."""
    s = ctx.settings.export
    src = ctx.take_source(lambda: source.load(source.parse(ctx.settings.src),
                                              dict(s.inputs) or None))
    result = export(src, ctx.out / "model.onnx", s)
    ctx.artifacts.model = result.path
    return ExportRecord.of(result.record())


def export(src: Source, out: Path, settings: ExportSettings = ExportSettings()) -> ExportResult:
    """Write `out` from SRC. ONNX SRCs are checked and copied; torch SRCs exported and compared.

    Raises TrtBuildError(code 2) for bad input, (code 1) when outputs differ beyond tolerance.
    """
    if src.kind == "onnx":
        model = io.load(src.path)
        _check_inputs(src.path, dict(settings.inputs), _io_shapes(model))
        if io.uses_external_data(src.path):  # one self-contained file (or model.onnx.data)
            io.save(model, out)
        else:
            with atomic_path(out) as tmp:
                shutil.copyfile(src.path, tmp)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        return ExportResult(out, _io_shapes(model), model_outputs(model), opset=opset,
                            copied=True)
    return _export_torch(src, out, settings)


def _check_inputs(path: Path, given: dict, model: dict[str, list]) -> None:
    """--input on an ONNX SRC: each name must exist and its shape fit (rank, static dims)."""
    from ..onnx.shapes import check_rank

    for name, shape in given.items():
        if name not in model:
            raise TrtBuildError(f"{path}: --input {name}: no such model input "
                                f"(inputs: {', '.join(model)})")
        check_rank(name, shape, [d if isinstance(d, int) and d > 0 else -1 for d in model[name]])


def _export_torch(src: Source, out: Path, s: ExportSettings) -> ExportResult:
    import onnx
    import torch

    examples = src.example_inputs
    names = [n for n, _ in s.inputs] or (["input"] if len(examples) == 1 else
                                    [f"input_{i}" for i in range(len(examples))])
    if len(names) != len(examples):
        raise TrtBuildError(f"{src.text}: {len(names)} --input names for {len(examples)} inputs")
    with torch.no_grad():
        reference = _flatten(src.module(*examples))
    out_names = ["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))]
    axes = {n: {0: "batch"} for n in names + out_names} if s.dynamic_batch else None
    static_note = None
    # a private folder: past 2 GiB torch writes one external file per weight beside the
    # model; io.save below writes OUT's model.onnx (+ model.onnx.data) once it checked out
    with tempfile.TemporaryDirectory(prefix=f"{WORK_DIR}{os.getpid()}-", dir=out.parent) as folder:
        tmp = Path(folder) / "model.onnx"
        _torch_export(src, examples, tmp, names, out_names, axes, s.opset)
        if axes and not _runs_at_batch_2(tmp):
            # the module hard-codes its traced batch (e.g. SSD splits the batch into images)
            static_note = "the traced graph does not run at batch 2: exported with static batch"
            log.warning("%s: %s", src.text, static_note)
            for f in Path(folder).iterdir():
                f.unlink()
            _torch_export(src, examples, tmp, names, out_names, None, s.opset)
        model = onnx.load(str(tmp))
    io.check_model(model, src.text)
    model = io.infer_shapes(model)
    loose = io.data_dependent_outputs(model)
    abs_err, rel_err, problems = _compare(model, names, examples, reference, loose)
    scale = max((float(np.max(np.abs(r))) for n, r in zip(model_outputs(model), reference)
                 if n not in loose and r.size), default=0.0)
    if problems or abs_err > s.atol + s.rtol * scale:
        detail = "; ".join(problems) or f"max abs error {abs_err:.3g} (rel {rel_err:.3g})"
        raise TrtBuildError(f"{src.text}: exported ONNX differs from PyTorch: {detail}",
                            GATE_FAILED)
    io.save(model, out)  # atomic; past 2 GiB with model.onnx.data beside it
    result = ExportResult(out, _io_shapes(model), model_outputs(model), abs_err, rel_err, s.opset)
    result.static_batch = static_note
    result.data_dependent = {n: f"after {op}: compared by dtype and rank only (selection and "
                                f"order follow score ties)" for n, op in loose.items()}
    return result


def _torch_export(src: Source, examples: tuple, path: Path, names: list[str],
                  out_names: list[str], axes: dict | None, opset: int) -> None:
    import torch

    try:
        with warnings.catch_warnings():  # tracer chatter is not the user's business
            warnings.simplefilter("ignore")
            torch.onnx.export(src.module, examples, str(path), input_names=names,
                              output_names=out_names, dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as e:
        raise TrtBuildError(f"{src.text}: torch.onnx.export failed: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}")


def _runs_at_batch_2(path: Path) -> bool:
    """Does ONNX Runtime run the exported model with batch 2 on every dynamic input?"""
    import onnx

    model = onnx.load(str(path))
    try:
        io.session(model).run(None, random_feed(model, batch=2))
    except Exception:  # noqa: BLE001 - any ORT failure means: not batch-dynamic
        return False
    return True


def _flatten(value: Any) -> list[np.ndarray]:
    """Tensors of a nested output (tensor, tuple, list, dict, HF ModelOutput) in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flatten(v)]
    return []


def _compare(model: Any, names: list[str], examples: tuple, reference: list,
             loose: dict[str, str]) -> tuple[float, float, list[str]]:
    sess = io.session(model)
    feed = {n: x.detach().cpu().numpy() for n, x in zip(names, examples)
            if n in {i.name for i in model_inputs(model)}}
    got = sess.run(None, feed)
    if len(got) != len(reference):
        return 0.0, 0.0, [f"{len(got)} outputs, PyTorch gives {len(reference)}"]
    abs_err, problems = io.compare_outputs(model_outputs(model), reference, got, loose)
    scale = max((float(np.max(np.abs(r))) for r in reference if r.size), default=0.0) or 1.0
    return abs_err, abs_err / scale, problems


def _io_shapes(model: Any) -> dict[str, list]:
    """{input: dims} with symbolic dims by name, for the record."""
    return {i.name: [d if isinstance(d, int) else (d or "?") for d in i.shape]
            for i in model_inputs(model)}
