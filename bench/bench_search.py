"""What `--accuracy-target` costs, in validation passes (issue 17, part 2).

Usage: .venv/bin/python bench/bench_search.py [digits rec yolo bert] [--work DIR] [--keep]

Each model of bench/bench_accuracy.py is built twice in one process, with the same data
and options (`--int8 --calib --val --target onnx`, the stage cache on, so the second build
reuses clean, calibrate and quantize): once plain, once with the case's accuracy target.
Printed per model: the plain build's validate stage (FP32 and INT8 over every validation
sample), the target build's sensitivity stage, their ratio (the issue's target: at most 2x),
what the target build's validate stage cost after the search, and the search's answer
(regions in float, INT8 MAC share, the value it reports and on which samples).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as ba  # noqa: E402


def stage_seconds(result) -> dict[str, float]:
    return {s["stage"]: s.get("seconds", float("nan")) for s in result.report["stages"]}


def one(name: str, work: Path) -> dict:
    import trtbuild
    from trtbuild.errors import TrtBuildError

    case = ba.CASES[name](work, quick=False)
    base = dict(int8=True, calib=str(case.calib_dir), val=str(case.val_dir), target="onnx",
                cache_dir=str(work / "cache"), **case.build_options)
    with ba._quiet():
        plain = trtbuild.build(str(case.fp32), out=work / "plain", **base)
    t0 = time.perf_counter()
    try:
        with ba._quiet():
            searched = trtbuild.build(str(case.fp32), out=work / "target", **base,
                                      **case.target)
        report = searched.report
    except TrtBuildError as e:  # a missed target still writes its report
        import json
        report = json.loads((work / "target" / "report.json").read_text())
        report["error"] = e.message
    wall = time.perf_counter() - t0
    p = stage_seconds(plain)
    t = {s["stage"]: s.get("seconds", float("nan")) for s in report["stages"]}
    sens = next(s for s in report["stages"] if s["stage"] == "sensitivity")
    return {"model": case.name, "validate": p["validate"], "search": t["sensitivity"],
            "ratio": t["sensitivity"] / p["validate"], "validate_after": t.get("validate"),
            "wall": wall, "sens": sens, "error": report.get("error")}


def _held(s: dict) -> str:
    """Where the reported value was measured, when the search held samples out."""
    if not s.get("held_out"):
        return ""
    return (f" on {s['held_out']} held-out samples ({s['search_value']:.4f} on the "
            f"{s['searched_on']} searched on)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["digits", "rec", "yolo", "bert"])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_search_"))
    print("| model | validate (plain) s | sensitivity s | ratio | validate after s | "
          "evaluations | regions in float | INT8 MACs | before -> after |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for name in args.models:
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            r = one(name, work)
            s = r["sens"]
            kinds = [st.get("measure", "?")[0] for st in s.get("steps", [])]
            print(f"| {r['model']} | {r['validate']:.1f} | {r['search']:.1f} | "
                  f"**{r['ratio']:.2f}x** | {r['validate_after'] or float('nan'):.1f} | "
                  f"{s.get('evaluations')} ({''.join(kinds)}) | "
                  f"{s.get('fallback_regions')}/{s.get('regions_total')} | "
                  f"{s.get('int8_mac_coverage', float('nan')):.3f} | "
                  f"{s.get('before', float('nan')):.4f} -> {s.get('after', float('nan')):.4f}"
                  f"{_held(s)}"
                  f"{' (' + r['error'][:80] + ')' if r['error'] else ''} |", flush=True)
            print(f"  {r['model']} seconds in the sensitivity stage: {s.get('seconds_in')}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
