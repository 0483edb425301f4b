"""Image samples: decoding and preprocessing (resize, crop, colour, scale, mean/std, layout),
configured by DIR/preprocess.json and flag overrides."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import LAYOUTS
from ..errors import TrtBuildError

MAX_PIXELS = 64_000_000  # larger images are refused: decompression bombs, not samples


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
        spec = folder / "preprocess.json"
        values = given_spec(folder, overrides)
        where = spec if spec.is_file() else "preprocess flags"
        for key, value in values.items():
            _check_value(where, key, value)
        for key in ("mean", "std"):
            values[key] = tuple(float(v) for v in values.get(key, ()))
        return replace(cls(), **values)

    def apply(self, path: Path) -> np.ndarray:
        """Decode one image into a (C, H, W) or (H, W, C) array. Raises naming the file."""

        with open_image(path) as im:
            try:
                return self.from_image(im)
            except (OSError, ValueError, SyntaxError) as e:
                raise TrtBuildError(f"{path}: cannot decode image ({e})")

    def from_image(self, im: Any) -> np.ndarray:
        """A decoded PIL image through the same steps."""
        im = self._geometry(im.convert("L" if self.grayscale else "RGB"))
        x = np.asarray(im, dtype=np.float32)
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




TYPES = {"resize": int, "crop": int, "grayscale": bool, "scale": float, "mean": list,
         "std": list, "layout": str, "dtype": str}
CHOICES = {"layout": LAYOUTS, "dtype": ("float32", "float16")}


def given_spec(folder: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a run was given: `folder`'s preprocess.json (if any) with the
    non-None `overrides` (flags) on top; what report.json records for later commands."""
    spec = Path(folder) / "preprocess.json" if folder else None
    values = _read_spec(spec) if spec and spec.is_file() else {}
    return {**values, **{k: v for k, v in overrides.items() if v is not None}}


def _read_spec(spec: Path) -> dict[str, Any]:
    try:
        values = json.loads(spec.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TrtBuildError(f"{spec}: not UTF-8 text ({e.reason} at byte {e.start})")
    except json.JSONDecodeError as e:
        raise TrtBuildError(f"{spec}: not valid JSON ({e.msg} at line {e.lineno})")
    except OSError as e:
        raise TrtBuildError(f"{spec}: cannot read ({e.strerror or e})")
    if not isinstance(values, dict):
        raise TrtBuildError(f"{spec}: must be a JSON object like {{\"resize\": 256}}, not "
                            f"{type(values).__name__}")
    unknown = set(values) - {f.name for f in fields(Preprocess)}
    if unknown:
        raise TrtBuildError(f"{spec}: unknown keys {sorted(unknown)}")
    return values


def _check_value(where: Any, key: str, value: Any) -> None:
    """One preprocessing value: its type, range, and choices."""
    want = TYPES[key]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and value > 0
    if want is list:
        ok = isinstance(value, (list, tuple)) and len(value) in (1, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value) and (key != "std" or all(v > 0 for v in value))
    if want is int and ok:
        ok = 0 <= value <= 16384
    if ok and key in CHOICES:
        ok = value in CHOICES[key]
    if not ok:
        hint = f"one of {', '.join(CHOICES[key])}" if key in CHOICES else {
            int: "an integer 0-16384", float: "a positive number", bool: "true or false",
            list: "1 or 3 finite numbers" + (" > 0" if key == "std" else "")}[want]
        raise TrtBuildError(f"{where}: {key} must be {hint}, not {value!r}")


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """PIL image, refusing decompression bombs (over MAX_PIXELS) and undecodable files."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise TrtBuildError(f"{path}: image of {im.size[0]}x{im.size[1]} pixels is over "
                                    f"the {MAX_PIXELS} pixel limit")
            yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TrtBuildError(f"{path}: refused as a decompression bomb ({e})")
    except (OSError, ValueError, SyntaxError) as e:
        raise TrtBuildError(f"{path}: cannot decode image ({e})")
