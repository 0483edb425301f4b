"""Calibration/validation datasets: images, .npy, .npz, or a data-loader script.

Samples are read in sorted file order and streamed in batches; nothing is kept after a batch.
Everything that can be checked without decoding (file kinds, .npy/.npz headers, image sizes)
is checked before any inference starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import OptionError, TrtBuildError
from ..onnx.inputs import InputSpec, model_inputs
from . import loader
from .arrays import Header, load_npy, npy_header, npz_arrays, npz_headers
from .images import Preprocess, open_image
from .labels import read_labels

if TYPE_CHECKING:
    from ..config import DataSettings

__all__ = ["Dataset", "Preprocess", "open_dataset", "check_source", "read_labels", "rows"]
log = logging.getLogger(__name__)
LOADER_CAP = 100_000  # samples a loader script may yield without --max-samples
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}
ARRAY_EXTS = {".npy", ".npz"}
Batch = dict[str, np.ndarray]


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
        self.script = str(source) if is_script(str(source)) else None
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
            self._check_array(path, self.inputs[0] if len(self.inputs) == 1 else None,
                              npy_header(path))
        elif ext == ".npz":
            headers = npz_headers(path)
            for spec in self.inputs:
                if spec.name not in headers:
                    raise TrtBuildError(f"{path}: no array for input '{spec.name}' "
                                        f"(has {sorted(headers)})")
                self._check_array(path, spec, headers[spec.name])
        else:
            self._check_image(path)

    def _check_image(self, path: Path) -> None:
        with open_image(path) as im:
            w, h = im.size
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
                                f"'{self.inputs[0].name}' expects {self.inputs[0].shape[1:]}"
                                f"{_size_hint(self.inputs[0], p)}")

    def _check_array(self, path: Path, spec: InputSpec | None, arr: Header | np.ndarray) -> None:
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
                feed = {self.inputs[0].name: load_npy(path)}
            else:
                feed = npz_arrays(path, [s.name for s in self.inputs])
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
        call = loader.parse(self.script)
        cap = self.max_samples or LOADER_CAP
        try:
            for k, item in enumerate(loader.items(call, self.inputs)):
                if k >= cap:
                    if self.max_samples:
                        return
                    raise TrtBuildError(f"{self.script}: the data loader yielded more than "
                                        f"{LOADER_CAP} samples; give --max-samples N to use "
                                        "the first N")
                if not isinstance(item, dict):
                    raise TrtBuildError(f"{self.script}: item {k} is {type(item).__name__}, "
                                        "expected a dict {input_name: array}")
                yield f"{self.script}[{k}]", self._checked(f"{self.script}[{k}]", item)
        except TrtBuildError:
            raise
        except SystemExit as e:  # the loader's exit is not trtbuild's
            raise TrtBuildError(f"{self.script}: the data loader called sys.exit({e.code})")
        except Exception as e:
            raise TrtBuildError(f"{self.script}: data loader raised {type(e).__name__}: {e}")

    def batches(self) -> Iterator[Batch]:
        """Samples concatenated along axis 0 into batches (named_batches)."""
        for _, batch in named_batches(self):
            yield batch


def named_batches(data: Any, limit: int | None = None) -> Iterator[tuple[list[str], Batch]]:
    """(each row's sample name, batch) of `data` (a Dataset, or anything with samples() and
    batch_size): samples concatenated along axis 0 into batches of `batch_size` rows (last
    one smaller); a sample of other shapes than the batch so far (a longer sentence, a
    wider text line) starts a new batch. `limit`: no sample is read once that many rows
    were."""
    pending: list[Batch] = []
    names: list[str] = []
    taken = 0
    for origin, feed in data.samples():
        if limit is not None and taken >= limit:
            break
        taken += rows(feed)
        if pending and not joinable(pending[0], feed):
            yield names, concat(pending)
            pending, names = [], []
        pending.append(feed)
        names += [origin] * rows(feed)
        if len(names) >= data.batch_size:  # batch_size 1: also every model without a
            yield names, concat(pending)   # stackable batch axis
            pending, names = [], []
    if pending:
        yield names, concat(pending)


def _size_hint(spec: InputSpec, p: Preprocess) -> str:
    """What makes the images fit a static square input: the flags with their numbers."""
    hw = spec.dims[2:4] if p.layout == "NCHW" else spec.dims[1:3]
    if len(hw) != 2 or hw[0] != hw[1] or hw[0] < 1 or p.crop:
        return ""
    side = hw[0]
    return (f": add --resize {round(side * 256 / 224)} --crop {side} (shorter side, then "
            f"centre crop, as for ImageNet) or --resize {side} --crop {side}")


def rows(feed: Batch) -> int:
    """Samples in a feed: the length of axis 0 of its first non-scalar array."""
    return next((len(a) for a in feed.values() if np.ndim(a)), 1)


def joinable(a: Batch, b: Batch) -> bool:
    """Can the two feeds be joined on axis 0: the same inputs, each with the same shape past
    axis 0?"""
    return a.keys() == b.keys() and all(
        np.ndim(a[k]) == np.ndim(b[k]) and np.shape(a[k])[1:] == np.shape(b[k])[1:] for k in a)


def concat(feeds: list[Batch]) -> Batch:
    """Feeds joined along axis 0 (one feed: itself)."""
    return {k: np.concatenate([f[k] for f in feeds]) if len(feeds) > 1 else feeds[0][k]
            for k in feeds[0]}


def is_script(text: str) -> bool:
    """Does `text` name a loader, FILE.py:FN or FILE.py:FN(key=value, ...)?"""
    return loader.SPEC.fullmatch(str(text).strip()) is not None


def open_dataset(source: str | Path, model: Any, s: "DataSettings") -> Dataset:
    """Samples for `model` (a ModelProto) from a directory or FILE.py:FN, read with the data
    settings (batch size, sample cap, preprocessing overrides) wherever data is read."""
    pre = None
    if not is_script(str(source)) and Path(source).is_dir():
        pre = Preprocess.from_dir(Path(source), **s.preprocess)
    return Dataset(source, model_inputs(model), s.batch_size, s.max_samples, pre)


def check_source(source: str, flag: str) -> None:
    """Before any work: a data directory exists and holds samples, or a FILE.py:FN exists.
    Raises TrtBuildError(2) naming the path."""
    if is_script(str(source)):
        path = Path(loader.parse(str(source)).path)
        if not path.is_file():
            raise OptionError(flag, "no such data loader script", where=path)
        return
    folder = Path(source)
    if not folder.is_dir() and ".py:" in str(source):  # e.g. a call missing its ')'
        raise OptionError(flag, "not a loader call; give FILE.py:FN or FILE.py:FN(key=value, ...)",
                          where=source)
    if not folder.is_dir():
        raise OptionError(flag, "no such data directory", where=folder)
    if not any(p.suffix.lower() in IMAGE_EXTS | ARRAY_EXTS for p in folder.iterdir()):
        raise TrtBuildError(f"{folder}: no samples (.png .jpg .jpeg .bmp .npy .npz) in directory")
