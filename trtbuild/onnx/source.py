"""SRC parsing and loading: `file.py:factory`, `pkg.module:factory`, `torchvision:NAME`, `.onnx`.

Loading runs user code (the factory), never unpickles weights itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MISSING_CAPABILITY, TrtBuildError
from .shapes import Shape, check_rank

TORCHVISION_DEFAULT_SHAPE = (1, 3, 224, 224)


@dataclass
class Source:
    """A parsed SRC. `kind` is 'onnx' (path set) or 'torch' (module and examples set)."""

    text: str
    kind: str
    name: str
    path: Path | None = None
    module: Any = None
    example_inputs: tuple | None = None


def parse(text: str) -> Source:
    """Classify SRC without importing anything heavy."""
    if text.endswith(".onnx"):
        path = Path(text)
        if not path.is_file():
            raise TrtBuildError(f"{text}: no such ONNX file")
        return Source(text, "onnx", safe_name(path.stem), path=path)
    target, sep, factory = text.rpartition(":")
    if not sep or not target or not factory:
        raise TrtBuildError(f"{text}: SRC must be a .onnx file, file.py:factory, "
                            "package.module:factory or torchvision:NAME")
    if target.endswith(".py") and not Path(target).is_file():
        raise TrtBuildError(f"{target}: no such Python file")
    return Source(text, "torch", safe_name(factory))


def check_findable(src: Source) -> None:
    """Without running any of its code: a torch SRC's module can be found (a module:FN's
    top-level package by importlib.util.find_spec, a torchvision NAME in its model list).
    Raises TrtBuildError(2) naming SRC; a FILE.py's existence parse() checked."""
    import importlib.util

    if src.kind != "torch":
        return
    target, _, factory = src.text.rpartition(":")
    if target == "torchvision":
        _torchvision_models(factory)
    elif not target.endswith(".py"):
        try:
            found = importlib.util.find_spec(target.split(".")[0])
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise TrtBuildError(f"{src.text}: cannot import module {target.split('.')[0]!r}")


def safe_name(name: str) -> str:
    """`name` usable as one directory name: no separators, no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", name).lstrip(".")
    return cleaned or "model"


def load(src: Source, input_shapes: dict[str, Shape] | None = None) -> Source:
    """Import the factory and call it; fills `module` and `example_inputs` for torch SRCs."""
    if src.kind == "onnx":
        return src
    target, _, factory = src.text.rpartition(":")
    if target == "torchvision":
        module = _torchvision(factory)
        examples = None
    else:
        fn = getattr(import_target(target), factory, None)
        if fn is None or not callable(fn):
            raise TrtBuildError(f"{src.text}: {target} has no callable '{factory}'")
        module, examples = _call_factory(src.text, fn)
    src.module = module.eval()
    src.example_inputs = _examples(src.text, target, examples, input_shapes)
    return src


def import_target(target: str) -> Any:
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            spec = importlib.util.spec_from_file_location(f"trtbuild_src_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            return mod
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise TrtBuildError(f"{target}: cannot import module ({e})")
    except (Exception, SystemExit) as e:  # user code failing (or exiting) at import time
        raise TrtBuildError(f"{target}: importing failed: {type(e).__name__}: {e}")


def _call_factory(text: str, fn: Any) -> tuple[Any, Any]:
    import torch

    try:
        result = fn()
    except (Exception, SystemExit) as e:  # the factory's exit is not trtbuild's
        raise TrtBuildError(f"{text}: factory raised {type(e).__name__}: {e}")
    module, examples = result, None
    if isinstance(result, tuple) and len(result) == 2:
        module, examples = result
    if not isinstance(module, torch.nn.Module):
        raise TrtBuildError(f"{text}: factory returned {type(module).__name__}, "
                            "expected a torch.nn.Module or (module, example_inputs)")
    return module, examples


def _torchvision_models(name: str) -> Any:
    """torchvision.models, once `name` is one of them (exit 3 without torchvision, 2 for
    another name)."""
    try:
        import torchvision
    except ImportError:
        raise TrtBuildError("torchvision is not installed: pip install torchvision",
                            MISSING_CAPABILITY)
    if name not in torchvision.models.list_models():
        raise TrtBuildError(f"torchvision:{name}: no such torchvision model")
    return torchvision.models


def _torchvision(name: str) -> Any:
    import inspect

    import torch

    builder = _torchvision_models(name).get_model_builder(name)
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # else segmentation/detection models download
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights every run: same ONNX, engine cache hits
        return builder(**kwargs)


def _examples(text: str, target: str, examples: Any, shapes: dict[str, Shape] | None) -> tuple:
    """Example inputs: the factory's, else --input shapes (random), else torchvision's default."""
    import torch

    if examples is not None:
        examples = tuple(examples) if isinstance(examples, (tuple, list)) else (examples,)
        if not all(isinstance(x, torch.Tensor) for x in examples):
            raise TrtBuildError(f"{text}: example_inputs must be tensors")
    elif target == "torchvision":
        examples = (torch.randn(TORCHVISION_DEFAULT_SHAPE, generator=torch.Generator().manual_seed(0)),)
    if shapes:
        if examples is not None:
            if len(shapes) != len(examples):
                raise TrtBuildError(f"--input: {len(shapes)} given, the model takes {len(examples)}")
            for (name, shape), x in zip(shapes.items(), examples):
                check_rank(name, shape, [-1] * x.dim())
        gen = torch.Generator().manual_seed(0)
        dtypes = [x.dtype for x in examples] if examples else [torch.float32] * len(shapes)
        return tuple(torch.randn(s, generator=gen).to(d) if d.is_floating_point
                     else torch.zeros(s, dtype=d) for s, d in zip(shapes.values(), dtypes))
    if examples is None:
        raise TrtBuildError(f"{text}: the factory returned no example inputs; give --input NAME:SHAPE")
    return examples
