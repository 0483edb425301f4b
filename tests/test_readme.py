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
