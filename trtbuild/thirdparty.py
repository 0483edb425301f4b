"""Third-party libraries that print on their own: imported here, kept quiet unless -v.

Polygraphy prints on stdout (its warnings, and a "'colored' module is not installed" line
that would break --json); ONNX Runtime prints coloured graph-optimizer warnings on stderr.
Polygraphy also fixes at its first import whether it drives `tensorrt` or `tensorrt_rtx`
(POLYGRAPHY_USE_TENSORRT_RTX, read by polygraphy/config.py), so the flavour is chosen here.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("trtbuild")


def verbose() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def polygraphy(rtx: bool = False) -> Any:
    """Import polygraphy (on first use with the TensorRT flavour `rtx` asks for), silenced
    unless -v. Returns polygraphy.config, whose USE_TENSORRT_RTX tells the flavour in use."""
    if "polygraphy" not in sys.modules and rtx:
        os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"
    from polygraphy import config
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False
    if not verbose():
        G_LOGGER.module_severity = G_LOGGER.CRITICAL + 1
    quiet_onnxruntime()  # Polygraphy's sessions use ONNX Runtime's default logger
    return config


def quiet_onnxruntime() -> None:
    """ONNX Runtime's default logger (sessions that others create) warns only with -v."""
    import onnxruntime as ort

    ort.set_default_logger_severity(ort_severity())


def ort_severity() -> int:
    """ONNX Runtime log level for our sessions: warnings only with -v."""
    return 2 if verbose() else 4  # errors too: trtbuild reports them in its own line
