"""The digits demo: a small CNN trained on scikit-learn's bundled digits (8x8, 10 classes).

Its weights and its calibration/validation images ship inside the package (package data),
so `trtbuild demo` runs from any install, editable or not.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
CALIB_DIR = HERE / "data" / "calib"
VAL_DIR = HERE / "data" / "val"
WEIGHTS = HERE / "digits_cnn.safetensors"
SRC = "trtbuild.demo.digits:digits_cnn"
# `trtbuild demo` = `trtbuild build SRC` with these options (flags given on top win)
OPTIONS = {"out": "trtbuild-out/digits", "fp32": True, "fp16": True, "int8": True, "calib": str(CALIB_DIR),
           "val": str(VAL_DIR), "min_top1_agreement": 0.98}
