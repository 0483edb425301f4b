"""Data loader scripts: `FILE.py:FN` (Polygraphy's convention: FN() yields {input: array})
or `FILE.py:FN(key=value, ...)` with Python literals as arguments, so one loader (the
ready ones in the repository's `calib/`) serves many folders without editing it. A loader
that takes an `inputs` parameter is given the model's inputs (a list of InputSpec: name,
shape with str/None for symbolic dims, numpy dtype) to fit its samples to.

The helpers below are what the ready loaders share: fitting a PIL image to an image input
and filling the inputs a sample does not provide (an RNN state, a sample rate).
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from ..errors import TrtBuildError
from .images import Preprocess

SPEC = re.compile(r"(?s)(.+?\.py):([A-Za-z_]\w*)(?:\((.*)\))?")


@dataclass(frozen=True)
class LoaderCall:
    """A parsed `FILE.py:FN(key=value, ...)`."""

    text: str
    path: str
    fn: str
    kwargs: dict


def parse(text: str) -> LoaderCall | None:
    """The loader call `text` names, or None when it is not of that form (a directory).
    Raises TrtBuildError(2) for arguments that are not `key=literal`."""
    m = SPEC.fullmatch(str(text).strip())
    if not m:
        return None
    path, fn, args = m.groups()
    kwargs: dict = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            if call.args:
                raise ValueError("positional arguments")
            for kw in call.keywords:
                if kw.arg is None:
                    raise ValueError("**")
                kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (SyntaxError, ValueError) as e:
            raise TrtBuildError(f"{text}: loader arguments must be key=value with Python "
                                f"literal values, e.g. {fn}(folder='photos', limit=64) ({e})")
    return LoaderCall(str(text), path, fn, kwargs)


def items(call: LoaderCall, inputs: list) -> Iterator[Any]:
    """The items FN yields, called with the given arguments (and `inputs=` when FN takes it
    and the call does not set it)."""
    from ..onnx.source import import_target

    fn = getattr(import_target(call.path), call.fn, None)
    if not callable(fn):
        raise TrtBuildError(f"{call.text}: {call.path} has no callable '{call.fn}'")
    kwargs = dict(call.kwargs)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "inputs" in params and "inputs" not in kwargs:
        kwargs["inputs"] = inputs
    unknown = [k for k in kwargs if k not in params] if params and not any(
        p.kind == p.VAR_KEYWORD for p in params.values()) else []
    if unknown:
        raise TrtBuildError(f"{call.text}: {call.fn}() takes no argument {unknown[0]!r} "
                            f"(it takes: {', '.join(params) or 'none'})")
    return iter(fn(**kwargs))


def preprocessing(folder: Any, fn: str, overrides: dict) -> Preprocess:
    """`folder`'s preprocess.json with a loader's keyword arguments on top; an argument that
    is no preprocessing key is refused as an unknown argument of `fn`."""
    from pathlib import Path

    from .images import TYPES

    unknown = sorted(set(overrides) - set(TYPES))
    if unknown:
        raise TypeError(f"{fn}() takes no argument {unknown[0]!r} (preprocessing keys: "
                        f"{', '.join(TYPES)})")
    return Preprocess.from_dir(Path(folder), **overrides)


def image_input(inputs: list) -> Any:
    """The first 4-D input (an image batch), or None."""
    return next((i for i in inputs or [] if len(i.shape) == 4), None)


def fit_image(im: Any, spec: Any, pre: Preprocess, size: Any = None,
              letterbox: bool = False, fill: int = 114) -> np.ndarray:
    """One PIL image as an array for image input `spec` (or, without one, for `size`):
    channels and layout from the input's shape when the preprocessing does not set them;
    when the input (or `size`, an int or (h, w)) has a fixed height and width and the
    preprocessing neither resizes nor crops, resized to exactly that size, or with
    `letterbox` scaled to fit and padded with grey `fill` (YOLO's 114), centred."""
    from PIL import Image

    layout, channels, hw = pre.layout, None, None
    if spec is not None:
        d = spec.dims
        if d[1] in (1, 3) and d[3] not in (1, 3):
            layout, channels, hw = "NCHW", d[1], d[2:4]
        elif d[3] in (1, 3):
            layout, channels, hw = "NHWC", d[3], d[1:3]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
    pre = replace(pre, layout=layout, grayscale=pre.grayscale or channels == 1)
    im = im.convert("L" if pre.grayscale else "RGB")
    if hw and min(hw) > 0 and not (pre.resize or pre.crop):
        h, w = int(hw[0]), int(hw[1])
        if letterbox:
            k = min(w / im.size[0], h / im.size[1])
            inner = im.resize((max(1, round(im.size[0] * k)), max(1, round(im.size[1] * k))),
                              Image.BILINEAR)
            canvas = Image.new(im.mode, (w, h), fill if im.mode == "L" else (fill,) * 3)
            canvas.paste(inner, ((w - inner.size[0]) // 2, (h - inner.size[1]) // 2))
            im = canvas
        elif im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
    return pre.from_image(im)


def complete(feed: dict, inputs: list, extra: dict | None = None) -> dict:
    """`feed` with every other model input added: from `extra` ({name: value}), else zeros
    of the input's shape (symbolic dims as 1; a batch axis added later). Raises naming an
    input that can be neither."""
    out = dict(feed)
    for spec in inputs or []:
        if spec.name in out:
            continue
        if extra and spec.name in extra:
            out[spec.name] = np.asarray(extra[spec.name], dtype=spec.dtype)
            continue
        out[spec.name] = np.zeros([max(d, 1) for d in spec.dims], dtype=spec.dtype)
    return out
