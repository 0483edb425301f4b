"""TensorRT calibration cache (text): `TRT-<ver>-<Algorithm>` then `name: <hex float32 scale>`.

The hex digits are the big-endian IEEE-754 bits of scale = amax / 127.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from ..errors import TrtBuildError
from ..files import write_text

TRT_VERSION = "100300"  # TensorRT 10.3 writes its version as MAJOR*10000+MINOR*100+PATCH
ALGORITHMS = {"entropy": "EntropyCalibration2", "percentile": "EntropyCalibration2",
              "mse": "EntropyCalibration2", "auto": "EntropyCalibration2",
              "max": "MinMaxCalibration"}


def encode(amaxes: dict[str, float], method: str = "entropy", version: str = TRT_VERSION) -> str:
    lines = [f"TRT-{version}-{ALGORITHMS[method]}"]
    for name, amax in amaxes.items():
        if "\n" in name or "\r" in name:
            raise TrtBuildError(f"tensor name {name!r} contains a line break: a TensorRT "
                                "calibration cache (one `name: scale` per line) cannot hold it")
        lines.append(f"{name}: {struct.pack('>f', max(amax, 1e-12) / 127.0).hex()}")
    return "\n".join(lines) + "\n"


def write(path: Path, amaxes: dict[str, float], method: str = "entropy") -> None:
    write_text(path, encode(amaxes, method))


def read(path: Path) -> dict[str, float]:
    """name -> amax. Raises TrtBuildError naming the file for anything malformed."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrtBuildError(f"{path}: cannot read calibration cache ({e})")
    if not lines or not lines[0].startswith("TRT-") or lines[0].count("-") < 2:
        raise TrtBuildError(f"{path}: not a TensorRT calibration cache (no TRT-<ver>-<algo> header)")
    amaxes = {}
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        try:
            scale = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        except (ValueError, struct.error):
            scale = None
        if not sep or scale is None:
            raise TrtBuildError(f"{path}:{k}: malformed cache line '{line[:80]}'")
        if not (math.isfinite(scale) and scale > 0):
            raise TrtBuildError(f"{path}:{k}: scale {scale} for '{name.strip()}' is not a "
                                "positive finite number")
        amaxes[name.strip()] = scale * 127.0
    return amaxes
