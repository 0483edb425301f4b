"""Shared fixtures: real tiny models built in code, the digits demo exported once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRTBUILD = [sys.executable, "-m", "trtbuild"]
# one engine cache for this test session, never the user's and never a previous session's
SESSION_CACHE = tempfile.mkdtemp(prefix="trtbuild-test-cache-")
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = SESSION_CACHE  # in-process builds too (engines, stage outputs)

def _has_gpu() -> bool:
    from trtbuild.trt.gpu import gpu_info

    return gpu_info() is not None


# a test that checks what happens on a machine without a GPU (CI's) says so
no_gpu = pytest.mark.skipif(_has_gpu(), reason="checks the behaviour without a GPU")

FACTORY_FILE = '''
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(self.drop(y).reshape(x.shape[0], -1))

def make():
    torch.manual_seed(0)
    return Net(), torch.randn(1, 3, 16, 16)

def make_plain():
    torch.manual_seed(0)
    return Net()

def boom():
    raise RuntimeError("weights missing")

def not_a_module():
    return 42
'''


def run_samples(model, xs, name: str = "x"):
    """ONNX Runtime (CPU) on each sample of `xs` as a batch of one, outputs concatenated: a
    ModelProto's first output over a set of inputs."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {name: x[None]})[0] for x in xs])


def run_cli(*args: str, cwd: Path | None = None, check: bool = False,
            setup=None) -> subprocess.CompletedProcess:
    """Run `python -m trtbuild ARGS` (after `setup()`, if given) with a private engine cache."""
    if setup:
        setup()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env["XDG_CACHE_HOME"] = SESSION_CACHE
    proc = subprocess.run([*TRTBUILD, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(FACTORY_FILE)
    return path


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo CNN exported and cleaned once: (model.onnx, model.clean.onnx) in one dir."""
    out = tmp_path_factory.mktemp("digits")
    run_cli("build", "trtbuild.demo.digits:digits_cnn", "--out", out, "--target", "onnx",
            check=True)
    return out


@pytest.fixture(scope="session")
def encoder_onnx(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer TransformerEncoder exported once per session (dynamic batch, opset 17)."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.1)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    path = str(tmp_path_factory.mktemp("enc") / "enc.onnx")
    torch.onnx.export(enc, (torch.randn(1, 6, 32),), path, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                      opset_version=17, dynamo=False)
    return path


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (the README's test command and CI do)")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only with --run-slow, when -m names markers itself, or when
    named on the command line (FILE::TEST): the default `pytest -q` is the fast layer."""
    if config.getoption("--run-slow") or config.option.markexpr:
        return
    named = {a.split("[")[0] for a in config.args if "::" in a}
    slow = [item for item in items if "slow" in item.keywords
            and not any(item.nodeid.split("[")[0].endswith(n.split("/")[-1]) for n in named)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]
