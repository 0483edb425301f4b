"""What GPU this machine has, asked of nvidia-smi (no CUDA import, nothing to install)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from typing import Any


@functools.lru_cache(maxsize=1)
def gpu_info() -> dict[str, Any] | None:
    """{name, arch 'sm_XY', compute_capability, driver, cuda} of GPU 0, or None."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip().splitlines()
        header = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, cc, driver = [s.strip() for s in out[0].split(",")[:3]]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"name": name, "compute_capability": cc, "arch": "sm_" + cc.replace(".", ""),
            "driver": driver, "cuda": cuda.group(1) if cuda else None}
