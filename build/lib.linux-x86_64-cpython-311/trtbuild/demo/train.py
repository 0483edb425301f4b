"""Train the digits CNN and write its weights and the calib/val PNG splits.

`python -m trtbuild.demo.train` (needs scikit-learn; a few seconds on CPU). Deterministic.
Split: 1797 images -> train 1297 (of which the first 256 are the calibration set), val 500.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np

from . import CALIB_DIR, VAL_DIR, WEIGHTS
from .digits import build_module

N_VAL, N_CALIB = 500, 256


def load_digits_u8() -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 0..255 (what the PNGs hold) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    return images, d.target.astype(np.int64)


def train(images: np.ndarray, labels: np.ndarray, epochs: int = 40) -> object:
    import torch

    torch.manual_seed(0)
    model = build_module()
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def write_split(folder, images: np.ndarray, labels: np.ndarray, with_csv: bool) -> None:
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = []
    for i, (img, label) in enumerate(zip(images, labels)):
        name = f"{i:04d}_{label}.png"
        Image.fromarray(img, mode="L").save(folder / name)
        rows.append((name, int(label)))
    (folder / "preprocess.json").write_text(
        '{"grayscale": true, "scale": 0.00392156862745098, "layout": "NCHW"}\n')
    if with_csv:
        with open(folder / "labels.csv", "w", newline="") as f:
            csv.writer(f).writerows([("file", "label"), *rows])


def main() -> None:
    import torch
    from safetensors.torch import save_file

    images, labels = load_digits_u8()
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    tr_x, tr_y, va_x, va_y = images[N_VAL:], labels[N_VAL:], images[:N_VAL], labels[:N_VAL]
    model = train(tr_x, tr_y)
    with torch.no_grad():
        pred = model(torch.from_numpy(va_x[:, None].astype(np.float32) / 255.0)).argmax(1)
    print(f"val accuracy: {(pred.numpy() == va_y).mean():.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS))
    write_split(CALIB_DIR, tr_x[:N_CALIB], tr_y[:N_CALIB], with_csv=False)
    write_split(VAL_DIR, va_x, va_y, with_csv=True)


if __name__ == "__main__":
    main()
