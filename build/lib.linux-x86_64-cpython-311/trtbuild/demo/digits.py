"""Digits CNN factory, usable as SRC `trtbuild.demo.digits:digits_cnn`.

Input: (N, 1, 8, 8) float32 in [0, 1] (PNG value / 255). Output: (N, 10) logits.
"""

from __future__ import annotations

from typing import Any

from . import WEIGHTS


def build_module() -> Any:
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def digits_cnn() -> tuple[Any, Any]:
    """The trained CNN (weights from safetensors: no pickle) and one example input."""
    import torch
    from safetensors.torch import load_file

    model = build_module()
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.eval(), torch.zeros(1, 1, 8, 8)
