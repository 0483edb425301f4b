"""The digits demo: a small CNN trained on scikit-learn's bundled digits (8x8, 10 classes)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CALIB_DIR = REPO / "calib" / "digits" / "calib"
VAL_DIR = REPO / "calib" / "digits" / "val"
WEIGHTS = Path(__file__).with_name("digits_cnn.safetensors")
SRC = "trtbuild.demo.digits:digits_cnn"
