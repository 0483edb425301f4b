"""`trtbuild release` against the shell loop it replaces, and Ray against the local pool.

The manifest is the release tests' (tests/test_release.py: the digits demo + a tiny ONNX
model, x fp16/int8 x sm_86/sm_89, real TensorRT-RTX builds). Each timing starts cold: its
own output directory and its own empty engine cache.

  sequential   one `trtbuild SRC --PRECISION --arch ARCH ...` per (model, precision, arch),
               one after the other (each redoes export, clean, calibration): the sum
  release      `trtbuild release MANIFEST --workers N` (shared stages once, N workers)
  ray          `trtbuild release MANIFEST --ray` (a local Ray runtime, started by the run)

Usage: .venv/bin/python bench/bench_release.py [--workers 2] [--repeat 3] [--quick] [--json]
Prints sequential / release (issue #11: >= 1.5 on a 2-core machine) and ray / release
(Ray's overhead), each the median of --repeat rounds (a round runs all three in turn, so
load from other processes falls on each alike). --quick: the digits model at one
architecture (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRTBUILD = [sys.executable, "-m", "trtbuild"]
TARGET = 1.5


def manifest(folder: Path, quick: bool) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from test_release import write_manifest  # the tests' manifest, as the issue asks

    path = write_manifest(folder)
    if quick:  # digits only, one architecture
        text = path.read_text().replace('archs = ["sm_86", "sm_89"]', 'archs = ["sm_86"]')
        path.write_text(text.split("\n[models.tiny]")[0] + "\n")
    return path


def sequential_commands(path: Path, out: Path) -> list[list[str]]:
    """The plain runs a shell loop would make: one per (model, precision, arch), each with
    the model's own options as flags."""
    from trtbuild.release.manifest import INT8_ONLY, load

    runs = []
    for entry in load(path).models:
        for precision in entry.precisions:
            flags: list[str] = []
            for key, value in entry.options.items():
                if key in INT8_ONLY and precision != "int8":
                    continue  # calibration flags need --int8
                name = {"gates": "gate"}.get(key, key)
                for v in value if isinstance(value, list) else [value]:
                    flags += [f"--{name.replace('_', '-')}", str(v)]
            for arch in entry.archs:
                runs.append([*TRTBUILD, entry.src, f"--{precision}", "--arch", arch, *flags,
                             "--out", str(out / f"{entry.name}-{precision}-{arch}")])
    return runs


def timed(cmd: list[str], cache: Path, cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench_release: {' '.join(cmd)} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-2000:]}")
    return seconds


def one_round(workers: int, quick: bool) -> tuple[list[float], float, float, int]:
    """(sequential runs' seconds, release seconds, ray seconds, release jobs), all cold."""
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        tmp = Path(tmp)
        path = manifest(tmp, quick)
        seq = [timed(cmd, tmp / "cache-seq", path.parent)
               for cmd in sequential_commands(path, tmp / "seq")]
        pool = timed([*TRTBUILD, "release", str(path), "--out", str(tmp / "pool"), "--workers",
                      str(workers)], tmp / "cache-pool", path.parent)
        ray = timed([*TRTBUILD, "release", str(path), "--out", str(tmp / "ray"), "--ray"],
                    tmp / "cache-ray", path.parent)
        jobs = json.loads((tmp / "pool" / "release.json").read_text())["totals"]["jobs"]
    return seq, pool, ray, jobs


def measure(workers: int, quick: bool, repeat: int) -> dict:
    rounds = [one_round(workers, quick) for _ in range(repeat)]
    seq = statistics.median(sum(r[0]) for r in rounds)
    pool = statistics.median(r[1] for r in rounds)
    ray = statistics.median(r[2] for r in rounds)
    return {"engines": len(rounds[0][0]), "jobs": rounds[0][3], "workers": workers,
            "cores": os.cpu_count(), "repeat": repeat,
            "rounds": [{"sequential_s": round(sum(s), 2), "release_s": round(p, 2),
                        "ray_s": round(r, 2)} for s, p, r, _ in rounds],
            "sequential_s": round(seq, 2), "release_s": round(pool, 2), "ray_s": round(ray, 2),
            "speedup": round(seq / pool, 2), "ray_overhead": round(ray / pool, 2),
            "target_speedup": TARGET}


def table(r: dict) -> str:
    return "\n".join([
        f"{r['engines']} engines ({r['jobs']} release jobs), {r['cores']} cores, median of "
        f"{r['repeat']}",
        f"  {'sequential trtbuild runs (sum)':<34} {r['sequential_s']:8.2f} s",
        f"  {'release --workers ' + str(r['workers']):<34} {r['release_s']:8.2f} s",
        f"  {'release --ray (local runtime)':<34} {r['ray_s']:8.2f} s",
        f"  speedup sequential / release   {r['speedup']:.2f}x (target >= {TARGET})",
        f"  Ray overhead ray / release     {r['ray_overhead']:.2f}x"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="digits at one arch: a smoke run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = measure(args.workers, args.quick, max(1, args.repeat))
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
