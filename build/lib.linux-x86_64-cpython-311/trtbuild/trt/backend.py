"""Which TensorRT flavour builds engines here, and for which GPU architectures.

TensorRT 10/11 (`tensorrt`) builds for the local GPU (or `ampere+`); TensorRT-RTX
(`tensorrt_rtx`) builds ahead of time for named compute capabilities
(`IBuilderConfig.set_compute_capability(ComputeCapability.SM86, 0)`) and needs no GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import MISSING_CAPABILITY, TrtBuildError
from .gpu import gpu_info

log = logging.getLogger(__name__)
MODULES = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}
RTX_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_120", "sm_121")
DEFAULT_RTX_ARCHS = ("sm_86", "sm_89")


@dataclass(frozen=True)
class Backend:
    """An importable TensorRT flavour: `name` as on the CLI, its module and full version
    (`module.__version__`, build number included, e.g. 1.7.1.4)."""

    name: str
    trt: Any
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    @property
    def tag(self) -> str:
        """Cache directory name: builder and major.minor.patch version."""
        return f"{'trt-rtx' if self.is_rtx else 'trt'}-{'.'.join(self.version.split('.')[:3])}"


def load_backend(choice: str = "auto") -> Backend:
    """The builder to use. Raises TrtBuildError(3) when the chosen one is not installed."""
    import importlib

    names = [choice] if choice != "auto" else ["tensorrt", "tensorrt-rtx"]
    for name in names:
        try:
            module = importlib.import_module(MODULES[name])
            if not hasattr(module, "Builder"):  # PyPI's `tensorrt` stub without its libraries
                raise ImportError(f"{MODULES[name]} has no Builder")
            return Backend(name, module, str(module.__version__))
        except (ImportError, OSError) as e:
            log.debug("builder %s unavailable: %s", name, e)
    want = "tensorrt or tensorrt-rtx" if choice == "auto" else choice
    raise TrtBuildError(f"no TensorRT builder: {want} is not installed "
                        "(pip install -e '.[rtx]' for TensorRT-RTX)", MISSING_CAPABILITY)


def installed_backends() -> dict[str, dict[str, str]]:
    """{name: {version, tag} or {missing: why}} for every flavour (for `trtbuild info`)."""
    out: dict[str, dict[str, str]] = {}
    for name in MODULES:
        try:
            b = load_backend(name)
            out[name] = {"version": b.version, "tag": b.tag}
        except TrtBuildError as e:
            out[name] = {"missing": e.message}
    return out


def native_arch() -> str | None:
    """Compute capability of GPU 0 as 'sm_XY' (nvidia-smi), or None without a GPU."""
    info = gpu_info()
    return info["arch"] if info else None


def resolve_arch(backend: Backend, arch: str) -> str:
    """The concrete architecture an `--arch` value builds for ('native' -> the local GPU's
    'sm_XY'), after checking that this builder can target it, so no engine is built that the
    runtime would refuse. Raises TrtBuildError(3)."""
    if arch == "ampere+":
        if backend.is_rtx:
            raise TrtBuildError(f"--arch ampere+: TensorRT-RTX builds for {', '.join(RTX_ARCHS)}",
                                MISSING_CAPABILITY)
        return arch
    local = native_arch()
    if arch == "native":
        if local is None:
            raise TrtBuildError("--arch native: no local GPU found (nvidia-smi); name an "
                                "architecture like sm_86", MISSING_CAPABILITY)
        arch = local
    if backend.is_rtx and arch not in RTX_ARCHS:
        where = " (this machine's GPU)" if arch == local else ""
        raise TrtBuildError(f"--arch {arch}{where}: TensorRT-RTX {backend.version} builds and "
                            f"runs only {', '.join(RTX_ARCHS)}", MISSING_CAPABILITY)
    if not backend.is_rtx and arch != local:
        raise TrtBuildError(f"--arch {arch}: TensorRT builds for the local GPU "
                            f"({local or 'none found'}) or with --hardware-compat ampere+",
                            MISSING_CAPABILITY)
    return arch


def target_archs(backend: Backend, archs: tuple[str, ...], hardware_compat: str) -> list[str]:
    """The architectures to build, resolved and checked (see resolve_arch)."""
    if not archs:
        if backend.is_rtx:
            archs = DEFAULT_RTX_ARCHS
        elif hardware_compat == "ampere+":
            archs = ("ampere+",)
        else:
            archs = ("native",)
    resolved = [resolve_arch(backend, a) for a in archs]
    return list(dict.fromkeys(resolved))


def make_logger(trt: Any) -> Any:
    """A TensorRT ILogger that routes messages to logging (debug) and keeps the errors in
    `.errors` for the one-line message the user sees."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
            log.debug("TensorRT: %s", msg)
    return Logger()
