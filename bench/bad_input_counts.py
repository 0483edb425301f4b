"""The bad-input suite's table cases (tests/test_bad_inputs.py) against any trtbuild checkout,
classified as the suite does: ok / traceback / wrong code / message / artifact left / hang.

Usage: .venv/bin/python bench/bad_input_counts.py ROOT DIGITS.onnx
  ROOT         a checkout whose `trtbuild` package is run (e.g. a `git worktree` of an older
               commit; it is put first on PYTHONPATH)
  DIGITS.onnx  the exported digits demo (`trtbuild export trtbuild.demo.digits:digits_cnn -o ..`)
The special-file case writes to a FIFO it creates, never to /dev/null.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    root, digits = sys.argv[1], sys.argv[2]
    os.environ["TRTBUILD_TEST_DIGITS"] = str(Path(digits).resolve())
    import test_bad_inputs as suite

    counts: dict[str, int] = {}
    for name, (setup, code, needle) in suite.CASES.items():
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            args = setup(tmp)
            env = {**os.environ, "PYTHONPATH": root, "XDG_CACHE_HOME": str(tmp / "xdg")}
            try:
                proc = subprocess.run([sys.executable, "-m", "trtbuild", *map(str, args)],
                                      capture_output=True, text=True, cwd=tmp, env=env,
                                      timeout=300)
                verdict = suite.classify(proc, code, needle, tmp / "o")
                if verdict == "message" and proc.returncode == code:
                    verdict = "ok (other wording)"
            except subprocess.TimeoutExpired:
                verdict = "hang"
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:<20} {name}")
    print(f"{root}: {sum(counts.values())} cases: {counts}")


if __name__ == "__main__":
    main()
