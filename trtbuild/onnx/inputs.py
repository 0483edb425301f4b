"""The one reader of a model's inputs: name, shape (symbolic dims as str/None), dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MISSING_CAPABILITY, TrtBuildError

MAX_RANDOM_ELEMENTS = 1 << 28  # 1 GiB of float32: larger check inputs are a shape problem


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape (str/None for symbolic dims) and numpy dtype."""

    name: str
    shape: tuple
    dtype: np.dtype

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape with -1 for every symbolic or unknown dimension."""
        return tuple(d if isinstance(d, int) and d > 0 else -1 for d in self.shape)

    @property
    def batchable(self) -> bool:
        """Is axis 0 a batch axis samples can be stacked on (symbolic)? Scalars and inputs
        with a static first dim (batch-1 models, RNN states (2, batch, 128)) are not."""
        return bool(self.shape) and self.dims[0] < 0

    def fits(self, shape: tuple) -> bool:
        """Does an array of `shape` fit this input exactly (rank and static dims)?"""
        return len(shape) == len(self.dims) and all(
            w < 0 or w == g for w, g in zip(self.dims, shape))

    def fits_sample(self, shape: tuple) -> bool:
        """Is `shape` one sample without the batch axis (only where axis 0 is a batch axis
        or a static 1)?"""
        return bool(self.shape) and self.dims[0] in (-1, 1) and \
            len(shape) == len(self.dims) - 1 and self.fits((1, *shape))


def model_inputs(model: Any) -> list[InputSpec]:
    """Graph inputs (initializers excluded) of an ONNX ModelProto."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in t.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        except (KeyError, TypeError, ValueError):  # undefined, or not a tensor at all
            dtype = np.dtype(object)
        specs.append(InputSpec(vi.name, shape, dtype))
    return specs


def check_supported(model: Any, where: str) -> None:
    """Inputs trtbuild can feed: numeric or bool tensors (no strings, complex numbers,
    sequences or maps). Raises TrtBuildError(3)."""
    for vi in model.graph.input:
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            raise TrtBuildError(f"{where}: input '{vi.name}' is a {kind}, not a tensor: "
                                "TensorRT takes tensors only", MISSING_CAPABILITY)
    for spec in model_inputs(model):
        if spec.dtype.kind not in "fiub":
            raise TrtBuildError(f"{where}: input '{spec.name}' has dtype {spec.dtype}: "
                                "trtbuild feeds numeric tensors only", MISSING_CAPABILITY)


def model_outputs(model: Any) -> list[str]:
    return [o.name for o in model.graph.output]


def random_feed(model: Any, batch: int = 1, seed: int = 0,
                shapes: dict[str, tuple] | None = None, dim: int = 1) -> dict[str, np.ndarray]:
    """Seeded random inputs for a ModelProto: given `shapes`, else symbolic first dims get
    `batch` and other symbolic dims `dim`; integer inputs get 0/1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in model_inputs(model):
        dims = (shapes or {}).get(spec.name) or tuple(
            d if d > 0 else (batch if k == 0 else dim) for k, d in enumerate(spec.dims))
        if int(np.prod(dims, dtype=np.float64)) > MAX_RANDOM_ELEMENTS:
            raise TrtBuildError(f"input '{spec.name}': shape {dims} is too large for a check "
                                f"input (over {MAX_RANDOM_ELEMENTS} elements); give --shapes")
        if np.issubdtype(spec.dtype, np.integer) or spec.dtype == np.bool_:
            feed[spec.name] = rng.integers(0, 2, size=dims).astype(spec.dtype)
        else:
            feed[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
    return feed
