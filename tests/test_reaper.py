"""The reaper of a local Ray runtime (trtbuild.release.reaper), without Ray: processes a
driver starts after the reaper end when the driver is killed with -9; those it had before
are left alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from test_release import alive

from trtbuild.release.reaper import descendants, proc_stat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")

DRIVER = f"""
import os, subprocess, sys, time
sys.path.insert(0, {str(REPO)!r})
from trtbuild.release import reaper
before = subprocess.Popen(["sleep", "60"])
watcher = reaper.watch(os.getpid())
after = subprocess.Popen(["sleep", "60"])
print(before.pid, after.pid, flush=True)
time.sleep(60)
"""


def test_what_the_driver_started_after_the_reaper_dies_with_it():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    before = after = 0
    try:
        before, after = map(int, driver.stdout.readline().split())
        time.sleep(1.5)  # the reaper looks once a second
        tree = descendants(driver.pid)
        assert {before, after} <= set(tree)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert alive({after: tree[after]}, 10) == []
        assert proc_stat(before) is not None  # there before the reaper: not its business
    finally:
        for pid in (before, after):
            if pid and proc_stat(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)
        if driver.poll() is None:
            driver.kill()
