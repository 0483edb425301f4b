"""Only the optional C speed-up for calibration histograms; metadata lives in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and trtbuild falls back to
numpy (same results, about 6x slower histogramming).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("trtbuild.calib._hist", ["trtbuild/calib/_hist.c"],
                             extra_compile_args=["-O3"], optional=True)])
