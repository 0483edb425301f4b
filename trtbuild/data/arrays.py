""".npy and .npz samples, read without pickles; every damaged file is one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrtBuildError


class Header:
    """Shape and dtype of an array not read yet (for the up-front checks)."""

    def __init__(self, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype = shape, dtype


def _read_header(f: Any, where: str, size: int | None) -> Header:
    """The .npy header at f's position; checks dtype and (if `size` given) that the file
    holds all the data the header promises."""
    from numpy.lib import format as npy

    try:
        major, _ = npy.read_magic(f)
        read = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
        shape, _, dtype = read(f)
    except (OSError, ValueError, EOFError) as e:
        raise TrtBuildError(f"{where}: not a readable .npy array ({e})")
    if dtype.hasobject:
        raise TrtBuildError(f"{where}: holds Python objects (pickles are never loaded)")
    if dtype.kind not in "fiub":
        raise TrtBuildError(f"{where}: dtype {dtype} is not a number type")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size is not None and size - f.tell() < need:
        raise TrtBuildError(f"{where}: truncated ({size - f.tell()} of {need} data bytes)")
    return Header(tuple(shape), dtype)


def npy_header(path: Path) -> Header:
    """Shape and dtype from a .npy header alone; a truncated file is refused here."""
    try:
        with open(path, "rb") as f:
            return _read_header(f, str(path), path.stat().st_size)
    except OSError as e:
        raise TrtBuildError(f"{path}: cannot read ({e.strerror or e})")


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise TrtBuildError(f"{path}: not a readable .npy file ({e})")


def npz_headers(path: Path) -> dict[str, Header]:
    """{array name: header} of every member of a .npz, without reading the data."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                with z.open(info) as f:
                    out[name] = _read_header(f, f"{path}[{name}]", None)
                    need = int(np.prod(out[name].shape, dtype=np.int64)) * out[name].dtype.itemsize
                    if info.file_size - f.tell() < need:
                        raise TrtBuildError(f"{path}[{name}]: truncated array")
            return out
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise TrtBuildError(f"{path}: not a readable .npz file ({e})")


def npz_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The named arrays of a .npz (CRC-checked by zipfile as they are read)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in names}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise TrtBuildError(f"{path}: not a readable .npz file ({e})")
