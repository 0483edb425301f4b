"""Export stage: torch.nn.Module -> ONNX, checked and compared once against PyTorch."""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import onnxio
from .errors import GATE_FAILED, TrtBuildError
from .files import atomic_path
from .source import Source

log = logging.getLogger(__name__)
DEFAULT_OPSET = 17  # widest TensorRT 8.6-11 / RTX parser support; Q/DQ later raises it to 19


@dataclass(frozen=True)
class ExportSettings:
    input_names: tuple[str, ...] = ()
    dynamic_batch: bool = True
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    rtol: float = 1e-3
    input_shapes: tuple[tuple[int, ...], ...] = ()  # --input shapes, checked for ONNX SRCs


@dataclass
class ExportResult:
    path: Path
    inputs: dict[str, list] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    opset: int = DEFAULT_OPSET

    def record(self) -> dict[str, Any]:
        return {"output": str(self.path), "inputs": self.inputs, "outputs": self.outputs,
                "opset": self.opset, "max_abs_err": self.max_abs_err,
                "max_rel_err": self.max_rel_err}


def export(src: Source, out: Path, settings: ExportSettings = ExportSettings()) -> ExportResult:
    """Write `out` from SRC. ONNX SRCs are checked and copied; torch SRCs exported and compared.

    Raises TrtBuildError(code 2) for bad input, (code 1) when outputs differ beyond tolerance.
    """
    if src.kind == "onnx":
        model = onnxio.load(src.path)
        _check_inputs(src.path, dict(zip(settings.input_names, settings.input_shapes)),
                      _io_shapes(model)[0])
        with atomic_path(out) as tmp:
            shutil.copyfile(src.path, tmp)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        return ExportResult(out, _io_shapes(model)[0], _io_shapes(model)[1], opset=opset)
    return _export_torch(src, out, settings)


def _check_inputs(path: Path, given: dict, model: dict[str, list]) -> None:
    """--input on an ONNX SRC: each name must exist and its shape fit (rank, static dims)."""
    from .shapes import check_rank

    for name, shape in given.items():
        if name not in model:
            raise TrtBuildError(f"{path}: --input {name}: no such model input "
                                f"(inputs: {', '.join(model)})")
        check_rank(name, shape, [d if isinstance(d, int) and d > 0 else -1 for d in model[name]])


def _export_torch(src: Source, out: Path, s: ExportSettings) -> ExportResult:
    import onnx
    import torch

    examples = src.example_inputs
    names = list(s.input_names) or (["input"] if len(examples) == 1 else
                                    [f"input_{i}" for i in range(len(examples))])
    if len(names) != len(examples):
        raise TrtBuildError(f"{src.text}: {len(names)} --input names for {len(examples)} inputs")
    with torch.no_grad():
        reference = _flatten(src.module(*examples))
    out_names = ["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))]
    axes = {n: {0: "batch"} for n in names + out_names} if s.dynamic_batch else None
    with atomic_path(out) as tmp:
        try:
            with warnings.catch_warnings():  # tracer chatter is not the user's business
                warnings.simplefilter("ignore")
                torch.onnx.export(src.module, examples, str(tmp), input_names=names,
                                  output_names=out_names, dynamic_axes=axes,
                                  opset_version=s.opset, do_constant_folding=True, dynamo=False)
        except Exception as e:
            raise TrtBuildError(f"{src.text}: torch.onnx.export failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}")
        model = onnx.load(str(tmp))
        onnxio.check_model(model, src.text)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.save(model, str(tmp))
        abs_err, rel_err = _compare(model, names, examples, reference)
        if abs_err > s.atol + s.rtol * max(float(np.max(np.abs(r))) for r in reference):
            raise TrtBuildError(f"{src.text}: exported ONNX differs from PyTorch: max abs error "
                                f"{abs_err:.3g} (rel {rel_err:.3g})", GATE_FAILED)
    ins, outs = _io_shapes(model)
    return ExportResult(out, ins, outs, abs_err, rel_err, s.opset)


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


def _compare(model: Any, names: list[str], examples: tuple, reference: list) -> tuple[float, float]:
    sess = onnxio.session(model)
    feed = {n: x.detach().cpu().numpy() for n, x in zip(names, examples)
            if n in {i.name for i in sess.get_inputs()}}
    got = sess.run(None, feed)
    abs_err = onnxio.max_abs_diff(got, reference)
    scale = max(float(np.max(np.abs(r))) for r in reference) or 1.0
    return abs_err, abs_err / scale


def _io_shapes(model: Any) -> tuple[dict[str, list], list[str]]:
    def dims(vi: Any) -> list:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    inits = {i.name for i in model.graph.initializer}
    ins = {i.name: dims(i) for i in model.graph.input if i.name not in inits}
    return ins, [o.name for o in model.graph.output]
