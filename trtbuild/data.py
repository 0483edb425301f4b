"""Calibration/validation datasets: images, .npy, .npz, or a data-loader script.

Samples are read in sorted file order and streamed in batches; nothing is kept after a batch.
Everything that can be checked without decoding (file kinds, .npy/.npz headers, image sizes)
is checked before any inference starts.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import TrtBuildError
from .onnx.inputs import InputSpec, model_inputs

if TYPE_CHECKING:
    from .config import DataSettings

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}
ARRAY_EXTS = {".npy", ".npz"}
Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize shorter side, center crop, colour, scale, mean/std, layout."""

    resize: int = 0
    crop: int = 0
    grayscale: bool = False
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = "NCHW"
    dtype: str = "float32"

    @classmethod
    def from_dir(cls, folder: Path, **overrides: Any) -> "Preprocess":
        """`preprocess.json` in `folder` (if any), then non-None `overrides` on top."""
        values: dict[str, Any] = {}
        spec = folder / "preprocess.json"
        if spec.is_file():
            try:
                values = json.loads(spec.read_text())
            except json.JSONDecodeError as e:
                raise TrtBuildError(f"{spec}: not valid JSON ({e.msg} at line {e.lineno})")
            unknown = set(values) - {f.name for f in fields(cls)}
            if unknown:
                raise TrtBuildError(f"{spec}: unknown keys {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("mean", "std"):
            values[key] = tuple(float(v) for v in values.get(key, ()))
        p = replace(cls(), **values)
        if p.layout not in ("NCHW", "NHWC"):
            raise TrtBuildError(f"preprocess layout must be NCHW or NHWC, not {p.layout}")
        return p

    def apply(self, path: Path) -> np.ndarray:
        """Decode one image into a (C, H, W) or (H, W, C) array. Raises naming the file."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.grayscale else "RGB")
                im = self._geometry(im)
                x = np.asarray(im, dtype=np.float32)
        except (OSError, ValueError, SyntaxError) as e:
            raise TrtBuildError(f"{path}: cannot decode image ({e})")
        x = x[..., None] if x.ndim == 2 else x
        x = x * np.float32(self.scale)
        if self.mean:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std or (1.0,), np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _geometry(self, im: Any) -> Any:
        from PIL import Image

        if self.resize:
            w, h = im.size
            k = self.resize / min(w, h)
            im = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR)
        if self.crop:
            w, h = im.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            im = im.crop((left, top, left + self.crop, top + self.crop))
        return im


class Dataset:
    """Samples from a directory or a loader script, streamed as batches of dicts.

    `len(ds)` is the number of samples (known up front, except for loader scripts: None).
    """

    def __init__(self, source: str | Path, inputs: list[InputSpec], batch_size: int = 16,
                 max_samples: int = 0, preprocess: Preprocess | None = None):
        # samples are stacked on axis 0 only when every input has a batch axis there
        stackable = all(i.batchable for i in inputs)
        self.inputs, self.max_samples = inputs, max_samples
        self.batch_size = max(1, batch_size) if stackable else 1
        self.script = str(source) if _is_script(str(source)) else None
        self.folder = None if self.script else Path(source)
        self.files: list[Path] = []
        if self.folder is not None:
            self.preprocess = preprocess or Preprocess.from_dir(self.folder)
            self.files = self._scan()

    def __len__(self) -> int:
        return len(self.files) if self.script is None else 0

    def _scan(self) -> list[Path]:
        folder = self.folder
        if not folder.is_dir():
            raise TrtBuildError(f"{folder}: calibration data directory does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS | ARRAY_EXTS)
        if not files:
            raise TrtBuildError(f"{folder}: no samples (.png .jpg .jpeg .bmp .npy .npz) in directory")
        if self.max_samples:
            files = files[: self.max_samples]
        if any(p.suffix.lower() in IMAGE_EXTS for p in files) and len(self.inputs) != 1:
            raise TrtBuildError(f"{folder}: images feed one input; the model has {len(self.inputs)}")
        for p in files:
            self._check_header(p)
        return files

    def _check_header(self, path: Path) -> None:
        ext = path.suffix.lower()
        if ext == ".npy":
            shape, dtype = _npy_header(path)
            self._check_array(path, self.inputs[0] if len(self.inputs) == 1 else None,
                              _Header(shape, dtype))
        elif ext == ".npz":
            with _open_npz(path) as z:
                for spec in self.inputs:
                    if spec.name not in z.files:
                        raise TrtBuildError(f"{path}: no array for input '{spec.name}' "
                                            f"(has {sorted(z.files)})")
        else:
            self._check_image(path)

    def _check_image(self, path: Path) -> None:
        from PIL import Image

        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, ValueError, SyntaxError) as e:
            raise TrtBuildError(f"{path}: cannot decode image ({e})")
        p = self.preprocess
        if p.crop:
            w = h = p.crop
        elif p.resize:
            k = p.resize / min(w, h)
            w, h = max(1, round(w * k)), max(1, round(h * k))
        c = 1 if p.grayscale else 3
        shape = (c, h, w) if p.layout == "NCHW" else (h, w, c)
        if not self.inputs[0].fits_sample(shape):
            raise TrtBuildError(f"{path}: image gives shape {shape}, model input "
                                f"'{self.inputs[0].name}' expects {self.inputs[0].shape[1:]}")

    def _check_array(self, path: Path, spec: InputSpec | None, arr: Any) -> None:
        if spec is None:
            raise TrtBuildError(f"{path}: .npy feeds one input; the model has "
                                f"{len(self.inputs)} (use .npz keyed by input name)")
        if not spec.fits(arr.shape) and not spec.fits_sample(arr.shape):
            one = f" (one sample {spec.shape[1:]} or a batch)" if spec.batchable else ""
            raise TrtBuildError(f"{path}: shape {arr.shape} does not fit input '{spec.name}' "
                                f"{spec.shape}{one}")
        if np.issubdtype(arr.dtype, np.floating) != np.issubdtype(spec.dtype, np.floating) or \
                arr.dtype.kind not in "fiub":
            raise TrtBuildError(f"{path}: dtype {arr.dtype} does not fit input '{spec.name}' "
                                f"({spec.dtype})")

    def samples(self) -> Iterator[tuple[str, Batch]]:
        """(origin, {input: array with a batch axis}) per file or loader item, checked."""
        if self.script:
            yield from self._script_samples()
            return
        for path in self.files:
            ext = path.suffix.lower()
            if ext in IMAGE_EXTS:
                feed = {self.inputs[0].name: self.preprocess.apply(path)[None]}
            elif ext == ".npy":
                arr = np.load(path, allow_pickle=False)
                feed = {self.inputs[0].name: arr}
            else:
                with _open_npz(path) as z:
                    feed = {s.name: z[s.name] for s in self.inputs}
            yield str(path), self._checked(str(path), feed)

    def _checked(self, origin: str, feed: Batch) -> Batch:
        out = {}
        for spec in self.inputs:
            if spec.name not in feed:
                raise TrtBuildError(f"{origin}: no array for input '{spec.name}'")
            arr = np.asarray(feed[spec.name])
            if spec.fits_sample(arr.shape):
                arr = arr[None]
            self._check_array(Path(origin), spec, arr)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise TrtBuildError(f"{origin}: sample contains NaN or Inf")
            out[spec.name] = arr.astype(spec.dtype, copy=False)
        return out

    def _script_samples(self) -> Iterator[tuple[str, Batch]]:
        from .onnx.source import import_target

        target, _, fn_name = self.script.rpartition(":")
        fn = getattr(import_target(target), fn_name, None)
        if not callable(fn):
            raise TrtBuildError(f"{self.script}: {target} has no callable '{fn_name}'")
        try:
            for k, item in enumerate(fn()):
                if self.max_samples and k >= self.max_samples:
                    return
                if not isinstance(item, dict):
                    raise TrtBuildError(f"{self.script}: item {k} is {type(item).__name__}, "
                                        "expected a dict {input_name: array}")
                yield f"{self.script}[{k}]", self._checked(f"{self.script}[{k}]", item)
        except TrtBuildError:
            raise
        except Exception as e:
            raise TrtBuildError(f"{self.script}: data loader raised {type(e).__name__}: {e}")

    def batches(self) -> Iterator[Batch]:
        """Samples concatenated along axis 0 into batches of `batch_size` (last one smaller)."""
        pending: list[Batch] = []
        count = 0
        for _, feed in self.samples():
            if self.batch_size == 1:  # also every model without a stackable batch axis
                yield feed
                continue
            pending.append(feed)
            count += rows(feed)
            if count >= self.batch_size:
                yield _concat(pending)
                pending, count = [], 0
        if pending:
            yield _concat(pending)


class _Header:
    """Shape and dtype of an array not read yet (for the up-front checks)."""

    def __init__(self, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype = shape, dtype


def _npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a .npy header alone, without reading the data."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            major, _ = npy.read_magic(f)
            read = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, ValueError) as e:
        raise TrtBuildError(f"{path}: not a readable .npy file ({e})")
    if dtype.hasobject:
        raise TrtBuildError(f"{path}: .npy holds Python objects (pickles are never loaded)")
    return tuple(shape), dtype


def rows(feed: Batch) -> int:
    """Samples in a feed: the length of axis 0 of its first non-scalar array."""
    return next((len(a) for a in feed.values() if np.ndim(a)), 1)


def _concat(feeds: list[Batch]) -> Batch:
    return {k: np.concatenate([f[k] for f in feeds]) if len(feeds) > 1 else feeds[0][k]
            for k in feeds[0]}


def _is_script(text: str) -> bool:
    target, sep, fn = text.rpartition(":")
    return bool(sep and fn and target.endswith(".py"))


def _open_npz(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TrtBuildError(f"{path}: not a readable .npz file ({e})")


def read_labels(folder: Path) -> dict[str, int] | None:
    """labels.csv (`file,label`, header optional) in a validation directory, if present."""
    path = Path(folder) / "labels.csv"
    if not path.is_file():
        return None
    labels = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[1].strip().lstrip("-").isdigit():
                labels[row[0].strip()] = int(row[1])
    return labels


def open_dataset(source: str | Path, model: Any, s: "DataSettings") -> Dataset:
    """Samples for `model` (a ModelProto) from a directory or FILE.py:FN, read with the data
    settings (batch size, sample cap, preprocessing overrides) wherever data is read."""
    pre = None
    if not _is_script(str(source)) and Path(source).is_dir():
        pre = Preprocess.from_dir(Path(source), **s.preprocess)
    return Dataset(source, model_inputs(model), s.batch_size, s.max_samples, pre)


def check_source(source: str, flag: str) -> None:
    """Before any work: a data directory exists and holds samples, or a FILE.py:FN exists.
    Raises TrtBuildError(2) naming the path."""
    if _is_script(str(source)):
        path = Path(str(source).rpartition(":")[0])
        if not path.is_file():
            raise TrtBuildError(f"{path}: {flag}: no such data loader script")
        return
    folder = Path(source)
    if not folder.is_dir():
        raise TrtBuildError(f"{folder}: {flag}: no such data directory")
    if not any(p.suffix.lower() in IMAGE_EXTS | ARRAY_EXTS for p in folder.iterdir()):
        raise TrtBuildError(f"{folder}: no samples (.png .jpg .jpeg .bmp .npy .npz) in directory")
