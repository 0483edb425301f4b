"""The README's two set-up commands: CI runs the second verbatim; the first ends in the demo."""

from __future__ import annotations

import json
import re

from conftest import REPO, run_cli


def _setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert cmds[1] in (REPO / ".ci" / "run").read_text().splitlines()
    assert cmds[0].endswith("trtbuild demo")


def test_demo_main_job_runs(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "d", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["export"]["max_abs_err"] < 1e-4


def test_readme_python_api_example_runs(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import SESSION_CACHE

    section = (REPO / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.+?)\n```", section, re.S)[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": SESSION_CACHE}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "'candidate'" in lines[0]  # the label accuracy record
    assert sum("tensorrt-rtx" in ln for ln in lines) == 4  # fp16 + int8 x 2 archs
    assert lines[-1] == "2 missing.json: no such baseline report"
    assert (tmp_path / "out" / "cal" / "model.int8.onnx").is_file()


def test_readme_metric_script_example_scores_ctc_strings():
    import numpy as np

    section = (REPO / "README.md").read_text().split("### Accuracy:", 1)[1].split("\n## ", 1)[0]
    namespace: dict = {}
    exec(re.findall(r"```python\n(.+?)\n```", section, re.S)[0], namespace)
    # CTC (N, T, C), blank 0: sample 0 "ab" both; 1 "ab" vs "aab" (a blank splits the
    # repeat); 2 "c" vs "b"
    eye = np.eye(4, dtype=np.float32)
    ref = np.stack([eye[[1, 0, 2, 2]], eye[[1, 1, 2, 0]], eye[[3, 0, 0, 0]]])
    cand = np.stack([eye[[1, 0, 2, 0]], eye[[1, 0, 1, 2]], eye[[2, 0, 0, 0]]])
    scores = namespace["strings"]({"y": ref}, {"y": cand}, ["a", "b", "c"])
    assert scores == {"strings_equal": 1 / 3}
