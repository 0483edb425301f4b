"""Where the stages meet (#8): settings that reach every stage, the single commands, the
engine runtime path, console hygiene, and an install that is not a source checkout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import REPO, no_gpu, run_cli

from trtbuild.demo import VAL_DIR


def test_data_flags_apply_to_val_without_int8(tmp_path):
    # --resize 16 makes the 8x8 digits 16x16: the FP16 check reads --val with it and refuses
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--val", VAL_DIR, "--resize",
                   "16", "--target", "onnx", "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    assert "image gives shape (1, 16, 16)" in proc.stderr
    # --max-samples limits calibration only: held-out data is judged whole (#10)
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--val", VAL_DIR,
                   "--max-samples", "40", "--target", "onnx", "--out", tmp_path / "p", "--json")
    assert proc.returncode == 0, proc.stderr
    fp16 = next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "fp16")
    assert fp16["samples"] == len(list(Path(VAL_DIR).glob("*.png")))


def test_help_command():
    top = run_cli("help")
    assert top.returncode == 0 and "calibrate" in top.stdout and "exit codes" in top.stdout
    build = run_cli("help", "build")
    assert build.returncode == 0 and "--calib-method" in build.stdout
    assert "usage: trtbuild build" in build.stdout
    bad = run_cli("help", "nope")
    assert bad.returncode == 2 and "no command 'nope'" in bad.stderr


def test_the_help_names_every_option_that_runs_code():
    """Issue 19: --val FILE.py:FN ran a loader's code with no word of it in the help."""
    from trtbuild.cli.args import DESCRIPTION, build_parser, commands

    subs = commands(build_parser())
    helps = {a.option_strings[0] if a.option_strings else a.dest: a.help or ""
             for name in ("build", "release") for a in subs[name]._actions}
    for flag in ("--calib", "--val", "--data-loader-script", "--metric-script", "--plugins",
                 "manifest"):
        assert re.search(r"\bruns?\b", helps[flag].lower()), (flag, helps[flag])
        assert flag in DESCRIPTION or flag == "manifest"


def test_calibrate_a_fresh_torch_export(tmp_path, factory_file):
    # torch.onnx.export output carries no intermediate shapes: calibrate prepares it first
    import torch

    sys.path.insert(0, str(factory_file.parent))
    try:
        import mynet
    finally:
        sys.path.pop(0)
    module, example = mynet.make()
    path = tmp_path / "fresh.onnx"
    torch.onnx.export(module, (example,), str(path), input_names=["input"], dynamo=False,
                      dynamic_axes={"input": {0: "b"}})
    assert not onnx.load(str(path)).graph.value_info
    calib = tmp_path / "calib"
    calib.mkdir()
    import numpy as np

    for i in range(4):
        np.save(calib / f"{i}.npy", np.random.default_rng(i).random((2, 3, 16, 16), np.float32))
    proc = run_cli("calibrate", path, "--calib", calib, "-o", tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = [s["stage"] for s in json.loads(proc.stdout)["stages"]]
    assert stages == ["clean", "calibrate", "quantize"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "calib.cache", "model.clean.onnx", "model.int8.onnx", "report.html", "report.json"]


def test_nothing_to_quantize_is_one_line(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    calib = tmp_path / "calib"
    calib.mkdir()
    import numpy as np

    np.save(calib / "a.npy", np.ones((1, 4), np.float32))
    proc = run_cli("calibrate", path, "--calib", calib, "-o", tmp_path / "o")
    assert proc.returncode == 2 and "nothing to quantize" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@no_gpu
def test_native_arch_without_a_gpu_is_exit_3(digits_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    proc = run_cli(digits_onnx / "model.onnx", "--arch", "native", "--out", tmp_path / "o",
                   "--cache-dir", tmp_path / "c")
    assert proc.returncode == 3 and "no local GPU" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def rtx_build(tmp_path_factory):
    trt = pytest.importorskip("tensorrt_rtx")
    tmp = tmp_path_factory.mktemp("rtx")
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--arch", "sm_86", "--out",
                   tmp / "o", "--cache-dir", tmp / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    return tmp, json.loads(proc.stdout), trt


def test_engine_records_name_builder_and_full_version(rtx_build):
    tmp, report, trt = rtx_build
    build = next(s for s in report["stages"] if s["stage"] == "build")
    (e,) = build["engines"]
    assert e["builder"] == "tensorrt-rtx" and e["builder_version"] == trt.__version__
    assert trt.__version__.count(".") == 3  # build number included
    manifest = json.loads((Path(e["cache_entry"]) / "manifest.json").read_text())
    assert manifest["builder_version"] == trt.__version__


def test_a_refused_engine_is_reported_per_engine(rtx_build, monkeypatch):
    """The real TensorRT-RTX runtime refuses the engine on this GPU-less machine; the stage
    pretends the machine could run engines, to reach the per-engine path."""
    from trtbuild.config import build_settings
    from trtbuild.context import Context, Engine
    from trtbuild.report import Report
    from trtbuild.stages import validate
    from trtbuild.trt import runtime

    tmp, report, trt = rtx_build
    out = tmp / "o"
    engine = Engine(out / "engines" / "sm_86" / "model.fp16.engine", "sm_86", "fp16",
                    "tensorrt-rtx", trt.__version__)
    with pytest.raises(runtime.EngineRefused, match="refused the engine"):
        runtime.load(engine)
    monkeypatch.setattr(runtime, "machine_refusal", lambda: None)
    ctx = Context(build_settings("x", val=str(VAL_DIR)), out, Report(None))
    ctx.artifacts.clean = out / "model.clean.onnx"
    ctx.artifacts.engines.append(engine)
    record = validate.run_engines(ctx)
    (entry,) = record.engines
    assert entry.refused and entry.builder == "tensorrt-rtx"
    assert record.gate_failures == []


def test_build_progress_reaches_the_display(digits_onnx):
    pytest.importorskip("tensorrt_rtx")
    from trtbuild.config import EngineSettings
    from trtbuild.trt import backend, builder

    phases: list[str] = []
    out = builder.build(backend.load_backend("tensorrt-rtx"), digits_onnx / "model.clean.onnx",
                        "sm_89", EngineSettings(), on_phase=phases.append)
    assert out.engine and phases and phases == out.phases


def test_bench_runs_record_their_device(digits_onnx):
    proc = run_cli("bench", digits_onnx / "model.clean.onnx", "--iterations", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {r["device"] for r in json.loads(proc.stdout)["runs"]} == {"cpu"}


def test_json_stdout_is_clean_and_third_parties_quiet(tmp_path):
    # --fp16 + --int8 drive Polygraphy and ONNX Runtime; stdout must be exactly one JSON doc
    proc = run_cli("demo", "--out", tmp_path / "d", "--json", "--target", "onnx")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    assert "colored" not in proc.stdout + proc.stderr
    assert "[W:onnxruntime" not in proc.stderr and "[W]" not in proc.stdout


@pytest.mark.slow
def test_non_editable_install_runs_the_demo(tmp_path):
    """`pip install .` (not editable) into a separate directory: the demo finds its weights
    and images as package data, from a working directory that is not the checkout."""
    import shutil

    source, target = tmp_path / "src", tmp_path / "site"  # build outside the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "trtbuild-out"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True,
                   cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "trtbuild", "demo", "--out", "d",
                           "--target", "onnx"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    import trtbuild

    assert str(target) not in trtbuild.__file__
    assert (tmp_path / "d" / "model.int8.onnx").is_file()
    assert "label accuracy" in proc.stdout


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """{trtbuild module: the trtbuild modules it imports, at any depth in its code} and
    (module, name) for every private name one module imports from another or reads as an
    attribute of another (`pipeline._helper` after `from .. import pipeline`)."""
    import ast

    root = REPO / "trtbuild"
    mods = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {}
    private = []
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps = set()
        tree = ast.parse(path.read_text())
        bound: dict[str, str] = {}  # local name -> the trtbuild module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in mods else target)
                    if full in mods:
                        bound[alias.asname or alias.name] = full
                    module = full in mods or any(  # a private module (_hist.c built) is fine
                        REPO.joinpath(*full.split(".")).parent.glob(f"{alias.name}.*.so"))
                    if alias.name.startswith("_") and not alias.name.startswith("__") and \
                            not module:
                        private.append((mod, f"{target}.{alias.name}"))
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
                bound.update({a.asname: a.name for a in node.names if a.asname and a.name in mods})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in bound and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and bound[node.value.id] != mod:
                private.append((mod, f"{bound[node.value.id]}.{node.attr}"))
        edges[mod] = {d for d in deps if d in mods and d != mod}
    return edges, private


def test_no_import_cycles_and_no_private_names_across_modules():
    """Issue 19: report <-> report_html and release.run <-> release.ray_backend were cycles,
    and release/html.py used report_html's private helpers. Lazy imports inside functions
    count too: a cycle there is still two modules that need each other."""
    edges, private = _imports()
    assert private == []
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        seen[mod] = 1
        for dep in sorted(edges[mod]):
            assert seen.get(dep) != 1, " -> ".join(path[path.index(dep):] + [mod, dep])
            if dep not in seen:
                visit(dep, path + [mod])
        seen[mod] = 2
    for mod in sorted(edges):
        if mod not in seen:
            visit(mod, [])
