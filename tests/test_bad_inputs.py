"""The bad-input suite (#9): what a user or a release pipeline can hand trtbuild.

Each case runs the real CLI in a process and is classified: ok (the documented exit code,
one `trtbuild: error:` line naming the problem, no traceback, nothing stale or torn left in
the output directory), or traceback / wrong code / artifact left. `bench/bad_input_counts.py`
prints the counts for any checkout.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, TRTBUILD, no_gpu, run_cli
from onnx import TensorProto, helper

DIGITS = "trtbuild.demo.digits:digits_cnn"
CASES: dict[str, tuple] = {}  # name -> (setup(tmp) -> args, exit code, needle)


def case(name: str, code: int, needle: str):
    def register(setup):
        CASES[name] = (setup, code, needle)
        return setup
    return register


def _calib(tmp: Path, n: int = 4) -> Path:
    d = tmp / "calib"
    d.mkdir(exist_ok=True)
    for i in range(n):
        np.save(d / f"{i}.npy", np.random.default_rng(i).random((1, 1, 8, 8), np.float32))
    return d


def _int8(tmp: Path, calib: Path, *more: str) -> list:
    return [DIGITS, "--int8", "--calib", calib, "--target", "onnx", "--out", tmp / "o", *more]


# --- data files -------------------------------------------------------------------------
@case("truncated .npy", 2, "truncated")
def _(tmp):
    d = _calib(tmp)
    (d / "0.npy").write_bytes((d / "0.npy").read_bytes()[:150])
    return _int8(tmp, d)


def _npz(tmp: Path, data: bytes | None = None, **arrays) -> Path:
    d = tmp / "calib"
    d.mkdir()
    path = d / "a.npz"
    if data is None:
        np.savez(path, **arrays)
    else:
        path.write_bytes(data)
    return d


@case("truncated .npz", 2, "a.npz")
def _(tmp):
    d = _npz(tmp, input=np.ones((1, 1, 8, 8), np.float32))
    (d / "a.npz").write_bytes((d / "a.npz").read_bytes()[:300])
    return _int8(tmp, d)


@case("bad-CRC .npz", 2, "a.npz")
def _(tmp):
    d = _npz(tmp, input=np.ones((1, 1, 8, 8), np.float32))
    raw = bytearray((d / "a.npz").read_bytes())
    raw[200] ^= 0xFF  # inside the array data: the member's CRC no longer matches
    (d / "a.npz").write_bytes(bytes(raw))
    return _int8(tmp, d)


@case("0-byte .npz", 2, "a.npz")
def _(tmp):
    return _int8(tmp, _npz(tmp, b""))


@case("object-array .npz", 2, "pickles are never loaded")
def _(tmp):
    d = tmp / "calib"
    d.mkdir()
    with zipfile.ZipFile(d / "a.npz", "w") as z:  # written by hand: numpy pickles objects
        with z.open("input.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return _int8(tmp, d)


@case("PNG decompression bomb", 2, "bomb.png")
def _(tmp):
    from PIL import Image

    d = tmp / "calib"
    d.mkdir()
    Image.new("1", (20000, 20000)).save(d / "bomb.png")
    return _int8(tmp, d)


def _png_dir(tmp: Path, spec: bytes) -> Path:
    from PIL import Image

    d = tmp / "calib"
    d.mkdir()
    Image.new("L", (8, 8)).save(d / "a.png")
    (d / "preprocess.json").write_bytes(spec)
    return d


for _text, _needle in ((b"[]", "must be a JSON object"), (b"null", "must be a JSON object"),
                       (b"\xff\xfe{", "not UTF-8"), (b'{"resize": "big"}', "resize must be"),
                       (b'{"std": [0, 1, 1]}', "std must be"), (b'{"layout": 3}', "layout")):
    case(f"preprocess.json {_text[:12]!r}", 2, _needle)(
        lambda tmp, t=_text: _int8(tmp, _png_dir(tmp, t), "--grayscale"))


def _val_labels(tmp: Path, labels: bytes) -> list:
    d = _calib(tmp)
    (d / "labels.csv").write_bytes(labels)
    return [DIGITS, "--fp16", "--val", d, "--target", "onnx", "--out", tmp / "o"]


case("labels.csv non-UTF-8", 2, "not UTF-8")(lambda tmp: _val_labels(tmp, b"0.npy,\xff\n"))
case("labels.csv huge field", 2, "labels.csv")(
    lambda tmp: _val_labels(tmp, b'"' + b"x" * 200_000 + b'",1\n'))


# --- models that pass onnx.checker but not ONNX Runtime ---------------------------------
def _model(tmp: Path, node, x, y, opset: int = 17, extra=()) -> Path:
    graph = helper.make_graph([node] if node else [], "g", [x], [y] if y else [])
    path = tmp / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra]),
              str(path))
    return path


def _vi(name, dtype=TensorProto.FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _onnx_case(name, code, needle, **kw):
    def setup(tmp):
        node = kw.get("node", helper.make_node("Relu", ["x"], ["y"]))
        dtype = kw.get("dtype", TensorProto.FLOAT)
        shape = kw.get("shape", (1, 4))
        y = None if kw.get("no_output") else _vi("y", dtype, shape)
        path = _model(tmp, node, _vi("x", dtype, shape), y, kw.get("opset", 17),
                      kw.get("extra", ()))
        return [path, "--out", tmp / "o", "--target", "onnx"]
    case(name, code, needle)(setup)


_onnx_case("custom-domain op", 3, "not a registered function/op",
           node=helper.make_node("Foo", ["x"], ["y"], domain="my.d"),
           extra=[helper.make_opsetid("my.d", 1)])
_onnx_case("opset 99", 3, "ONNX Runtime", opset=99)
_onnx_case("string input", 3, "numeric tensors only",
           node=helper.make_node("Identity", ["x"], ["y"]), dtype=TensorProto.STRING)
_onnx_case("complex input", 3, "numeric tensors only",
           node=helper.make_node("Identity", ["x"], ["y"]), dtype=TensorProto.COMPLEX64)
_onnx_case("zero dim", 2, "invalid dimensions", shape=(0, 4))
_onnx_case("huge dims", 2, "too large", shape=(100000, 100000))
_onnx_case("no outputs", 2, "no graph outputs", no_output=True)


# --- flags and values --------------------------------------------------------------------
def _flags(*flags):
    return lambda tmp: [DIGITS, "--out", tmp / "o", "--cache-dir", tmp / "c", *flags]


for _flag, _value, _code, _needle in (
        ("--workspace", "-1", 2, "--workspace"), ("--workspace", "0", 2, "--workspace"),
        ("--shapes", "input:1x8x8,1x8x8,1x8x8", 2, "rank 3 given"),
        ("--arch", "native", 3, "no local GPU"), ("--arch", "../escape", 2, "--arch"),
        ("--min-cosine", "nan", 2, "not a finite number"),
        ("--min-top1-agreement", "nan", 2, "not a finite number"),
        ("--max-regression", "nan", 2, "not a finite number"),
        ("--percentile", "-5", 2, "--percentile"), ("--max-samples", "-1", 2, "--max-samples"),
        ("--calib-batch-size", "0", 2, "--calib-batch-size"), ("--opset", "99", 2, "--opset")):
    case(f"{_flag} {_value}", _code, _needle)(_flags(_flag, _value))


@case("--plugins with a non-library file", 2, "not a shared library")
def _(tmp):
    (tmp / "fake.so").write_text("not a library")
    return _flags("--plugins", tmp / "fake.so")(tmp)


@case("bench -o into a missing directory", 2, "does not exist")
def _(tmp):
    return ["bench", _digits_onnx(tmp), "-o", tmp / "missing" / "r.json"]


for _text in (b"[]", b"\xff", b'{"stages": [{"stage": "bench", "runs": [1, 2]}]}',
              b'{"stages": "x"}', b'{"stages": [{"stage": "bench", "runs": [{"runner": "a", '
              b'"p50_ms": "fast"}]}]}'):
    def _baseline(tmp, t=_text):
        (tmp / "old.json").write_bytes(t)
        return ["bench", _digits_onnx(tmp), "--iterations", "2", "--baseline", tmp / "old.json"]
    case(f"malformed baseline {_text[:20]!r}", 2, "old.json")(_baseline)


def _digits_onnx(tmp: Path) -> Path:
    src = Path(os.environ["TRTBUILD_TEST_DIGITS"])
    dst = tmp / "digits.onnx"
    dst.write_bytes(src.read_bytes())
    return dst


for _scale in ("00000000", "bf800000"):  # 0.0 and -1.0
    def _cache(tmp, s=_scale):
        (tmp / "c.cache").write_text(f"TRT-100300-EntropyCalibration2\ninput: {s}\n")
        return [_digits_onnx(tmp), "--int8", "--calib-cache", tmp / "c.cache", "--target",
                "onnx", "--out", tmp / "o"]
    case(f"calib cache scale {_scale}", 2, "positive finite")(_cache)


# --- data-loader scripts ----------------------------------------------------------------
@case("loader calls sys.exit(0)", 2, "called sys.exit(0)")
def _(tmp):
    (tmp / "load.py").write_text("import sys\ndef data():\n    sys.exit(0)\n    yield {}\n")
    return _int8(tmp, f"{tmp / 'load.py'}:data")[:2] + [
        "--data-loader-script", f"{tmp / 'load.py'}:data", "--target", "onnx", "--out",
        tmp / "o"]


# --- output paths -----------------------------------------------------------------------
@case("export -o a FIFO (as /dev/null)", 2, "not a regular file")
def _(tmp):
    # a FIFO of our own, not the real /dev/null: a regression must not break the machine
    # (the old code, run as root, replaced /dev/null with a regular file)
    os.mkfifo(tmp / "special")
    return ["export", DIGITS, "-o", tmp / "special"]


@case("release manifest a FIFO", 2, "not a regular file")
def _(tmp):
    os.mkfifo(tmp / "release.toml")  # reading it blocked the check forever
    return ["release", tmp / "release.toml", "--out", tmp / "o"]


@case("release manifest of 2 MB", 2, "a manifest is at most")
def _(tmp):
    (tmp / "release.toml").write_text("#" * (2 << 20))
    return ["release", tmp / "release.toml", "--out", tmp / "o"]


@case("torchvision name with ../", 2, "no such torchvision model")
def _(tmp):
    return ["torchvision:../../escape/leaf", "--out", tmp / "o"]


@case("tensor name with a newline", 2, "line break")
def _(tmp):
    nodes = [helper.make_node("Conv", ["x", "w"], ["a\nb"]),
             helper.make_node("Conv", ["a\nb", "w2"], ["y"])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 2.0])
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [1, 2, 1, 1], [1.0, 1.0])
    graph = helper.make_graph(nodes, "g", [_vi("x", shape=(1, 1, 4, 4))],
                              [_vi("y", shape=(1, 1, 4, 4))], [w, w2])
    path = tmp / "nl.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    calib = tmp / "calib"
    calib.mkdir()
    np.save(calib / "a.npy", np.ones((1, 1, 4, 4), np.float32))
    return [path, "--int8", "--calib", calib, "--target", "onnx", "--out", tmp / "o"]


@case("--cache-dir is a file", 2, "not a directory")
def _(tmp):
    (tmp / "afile").write_text("x")
    return [DIGITS, "--target", "onnx", "--out", tmp / "o", "--cache-dir", tmp / "afile" / "sub"]


@case("--cache-dir names a file", 2, "afile: not a directory")
def _(tmp):
    (tmp / "afile").write_text("x")
    return [DIGITS, "--target", "onnx", "--out", tmp / "o", "--cache-dir", tmp / "afile"]


@case("--cache-dir /dev/null", 2, "/dev/null: not a directory")
def _(tmp):
    return [DIGITS, "--target", "onnx", "--out", tmp / "o", "--cache-dir", "/dev/null"]


@case("--workspace past the builder's range", 2, "--workspace")
def _(tmp):
    return [DIGITS, "--arch", "sm_86", "--out", tmp / "o", "--workspace", "99999999999999"]


@case("--out not UTF-8", 2, "not a UTF-8 path")
def _(tmp):  # a byte 0xff in the name: torch's exporter failed on it after loading the model
    return [DIGITS, "--target", "onnx", "--out", tmp / os.fsdecode(b"o\xff")]


@pytest.fixture(scope="module", autouse=True)
def digits_model(digits_onnx):
    os.environ["TRTBUILD_TEST_DIGITS"] = str(digits_onnx / "model.onnx")


def classify(proc, code: int, needle: str, out: Path) -> str:
    """ok | traceback | wrong code | message | artifact left"""
    if "Traceback" in proc.stderr or "internal error" in proc.stderr:
        return "traceback"
    if proc.returncode != code:
        return "wrong code"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("trtbuild: error:")]
    if len(errors) != 1 or needle not in errors[0]:
        return "message"
    if out.exists() and _disagrees(out):
        return "artifact left"
    return "ok"


def _disagrees(out: Path) -> bool:
    """Files in `out` that report.json does not list, or temp files."""
    files = {p for p in out.rglob("*") if p.is_file()}
    if any("trtbuild-tmp-" in p.name for p in files):
        return True
    report = out / "report.json"
    listed = {report, report.with_suffix(".html")}
    if report.is_file():
        for s in json.loads(report.read_text())["stages"]:
            listed |= {Path(s["output"])} if "output" in s else set()
            listed |= {Path(e["path"]) for e in s.get("engines", []) if "path" in e}
    return bool(files - listed)


NEEDS_NO_GPU = {"--arch native"}  # exit 3 only where there is no GPU


@pytest.mark.parametrize("name", [pytest.param(n, marks=no_gpu) if n in NEEDS_NO_GPU else n
                                  for n in CASES])
def test_bad_input(name, tmp_path):
    setup, code, needle = CASES[name]
    args = setup(tmp_path)
    proc = run_cli(*args, cwd=tmp_path)
    verdict = classify(proc, code, needle, tmp_path / "o")
    assert verdict == "ok", f"{verdict}: exit {proc.returncode}\n{proc.stderr}"


def test_special_output_file_is_untouched(tmp_path):
    os.mkfifo(tmp_path / "special")
    for cmd in (["export", DIGITS, "-o", tmp_path / "special"],
                ["clean", _digits_onnx(tmp_path), "-o", tmp_path / "special"],
                ["bench", _digits_onnx(tmp_path), "--iterations", "1", "-o",
                 tmp_path / "special"]):
        assert run_cli(*cmd).returncode == 2
        assert stat.S_ISFIFO(os.lstat(tmp_path / "special").st_mode)


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_rerun_into_the_same_out_leaves_nothing_stale(tmp_path):
    calib = _calib(tmp_path)
    out = tmp_path / "o"
    run_cli(DIGITS, "--int8", "--calib", calib, "--target", "onnx", "--out", out, check=True)
    assert (out / "model.int8.onnx").is_file() and (out / "calib.cache").is_file()
    (out / "model.onnx.trtbuild-tmp-999999").write_text("left by a killed run")
    (out / "notes.tmp-999999").write_text("a user's file that only looks like a temp")
    (out / ".trtbuild-work-999999-x1").mkdir()  # a large export's staging, killed
    (out / ".trtbuild-work-999999-x1" / "model.onnx").write_bytes(b"x" * 1000)
    run_cli(DIGITS, "--fp16", "--target", "onnx", "--out", out, check=True)
    (out / "notes.tmp-999999").unlink()  # kept: not one of trtbuild's temp names
    assert not (out / ".trtbuild-work-999999-x1").exists()
    assert not _disagrees(out), sorted(p.name for p in out.iterdir())
    assert not (out / "model.int8.onnx").exists() and (out / "model.fp16.onnx").is_file()


def test_a_loader_without_end_is_bounded(tmp_path):
    (tmp_path / "load.py").write_text(
        "import numpy as np\ndef data():\n    while True:\n"
        "        yield {'input': np.ones((1, 1, 8, 8), np.float32)}\n")
    proc = run_cli(DIGITS, "--int8", "--data-loader-script", f"{tmp_path / 'load.py'}:data",
                   "--max-samples", "40", "--target", "onnx", "--out", tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    calib = next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "calibrate")
    assert calib["samples"] == 40


# --- the engine cache in states that used to crash every later build ---------------------
def _break_cache(cache: Path, how: str) -> None:
    entry = next(p for p in cache.glob("sm_*/*/*") if p.is_dir() and "trtbuild-tmp-" not in p.name)
    if how == "manifest []":
        (entry / "manifest.json").write_text("[]")
    elif how == "manifest not UTF-8":
        (entry / "manifest.json").write_bytes(b"\xff\xfe")
    elif how == "dangling symlink entry":
        import shutil

        shutil.rmtree(entry)
        entry.symlink_to(cache / "nowhere")
    elif how == "engine.plan is a directory":
        (entry / "engine.plan").unlink()
        (entry / "engine.plan").mkdir()
    elif how == "engine.plan -> /dev/zero":
        (entry / "engine.plan").unlink()
        (entry / "engine.plan").symlink_to("/dev/zero")
    elif how == "lock path is a directory":
        lock = entry.parent / f".{entry.name}.lock"
        lock.unlink()
        lock.mkdir()
    elif how == "quarantine is a file":
        (cache / "quarantine").write_text("x")
        (entry / "manifest.json").write_text("[]")
    elif how == "tag path is a file":
        import shutil

        tag = entry.parent
        shutil.rmtree(tag)
        tag.write_text("x")


CACHE_STATES = ["manifest []", "manifest not UTF-8", "dangling symlink entry",
                "engine.plan is a directory", "engine.plan -> /dev/zero",
                "lock path is a directory", "quarantine is a file", "tag path is a file"]


@pytest.mark.parametrize("how", CACHE_STATES)
def test_damaged_cache_is_quarantined_and_rebuilt(how, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    cache = tmp_path / "c"
    args = [_digits_onnx(tmp_path), "--arch", "sm_86", "--cache-dir", cache, "--json"]
    run_cli(*args, "--out", tmp_path / "a", check=True)
    _break_cache(cache, how)
    for cmd in (["cache", "ls", "--cache-dir", cache], ["cache", "verify", "--cache-dir", cache]):
        proc = run_cli(*cmd)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli(*args, "--out", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    build = next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "build")
    assert build["engines"][0]["bytes"] > 10_000
    assert run_cli("cache", "verify", "--cache-dir", cache).returncode == 0


def test_prune_sweeps_temp_dirs_of_killed_builds(tmp_path):
    from trtbuild.cache import EngineCache

    tag = tmp_path / "c" / "sm_86" / "trt-rtx-1.7.1"
    (tag / "abc.trtbuild-tmp-999999").mkdir(parents=True)
    (tag / "abc.trtbuild-tmp-999999" / "engine.plan").write_bytes(b"x" * 100)
    EngineCache(tmp_path / "c").prune(max_age_days=365)
    assert not (tag / "abc.trtbuild-tmp-999999").exists()


# --- signals and kills ------------------------------------------------------------------
def _start(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    return subprocess.Popen([*TRTBUILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


@pytest.mark.slow  # about 9 s
def test_sigterm_is_one_line_and_leaves_no_temp_files(tmp_path):
    (tmp_path / "slow.py").write_text(  # a loader that takes 50 s: the signal lands in it
        "import time, numpy as np\ndef data():\n    for _ in range(100):\n"
        "        time.sleep(0.5)\n        yield {'input': np.ones((1, 1, 8, 8), np.float32)}\n")
    p = _start([DIGITS, "--int8", "--fp16", "--data-loader-script",
                f"{tmp_path / 'slow.py'}:data", "--target", "onnx", "--out", tmp_path / "o",
                "--json"], tmp_path)
    time.sleep(8)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "trtbuild: interrupted"
    assert "Traceback" not in err
    report = json.loads(out)  # --json: what ran before the signal, and why it stopped
    assert report["error"] == {"exit_code": 130, "message": "interrupted"}
    assert [s["stage"] for s in report["stages"]][:2] == ["export", "clean"]
    assert not [x for x in (tmp_path / "o").rglob("*") if "trtbuild-tmp-" in x.name]


@pytest.mark.slow  # over ~12 s on 2 cores
def test_kill_9_loop_then_rerun_leaves_nothing_torn(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    calib = _calib(tmp_path, 32)
    args = [DIGITS, "--int8", "--fp16", "--calib", calib, "--arch", "sm_86", "--cache-dir",
            tmp_path / "c", "--out", tmp_path / "o"]
    for delay in (1.0, 2.5, 3.5, 4.5, 6.0):
        p = _start(args, tmp_path)
        time.sleep(delay)
        p.kill()
        p.communicate()
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o"
    assert not _disagrees(out)
    for name in ("model.onnx", "model.clean.onnx", "model.fp16.onnx", "model.int8.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)))
    assert not [x for x in (tmp_path / "c").rglob("*") if "trtbuild-tmp-" in x.name]
    assert run_cli("cache", "verify", "--cache-dir", tmp_path / "c").returncode == 0


def test_eight_concurrent_builds_share_one_cache(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    model = _digits_onnx(tmp_path)
    procs = [_start([model, "--arch", "sm_86", "--cache-dir", tmp_path / "c", "--out",
                     tmp_path / f"o{k}", "--json"], tmp_path) for k in range(8)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        reports.append(next(s for s in json.loads(out)["stages"] if s["stage"] == "build"))
    assert sum(r["built"] for r in reports) == 1
    assert len({r["engines"][0]["sha256"] for r in reports}) == 1


def test_read_only_cache_still_serves_hits(tmp_path, monkeypatch):
    """The sandbox runs as root, which ignores file modes, so the read-only filesystem is
    simulated where the cache first writes (EROFS from mkdir): a hit needs no write."""
    import errno

    from trtbuild.cache import EngineCache

    cache = EngineCache(tmp_path / "c")
    first = cache.get_or_build("sm_86", "trt-x", "k" * 64, lambda: (b"E" * 100, {}))
    assert not first.hit

    def read_only(self, folder):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    monkeypatch.setattr(EngineCache, "_make_dirs", read_only)
    again = cache.get_or_build("sm_86", "trt-x", "k" * 64, lambda: pytest.fail("rebuilt"))
    assert again.hit and again.engine == b"E" * 100
    miss = cache.get_or_build("sm_86", "trt-x", "m" * 64, lambda: (b"F" * 10, {}))
    assert not miss.hit and not cache.entry("sm_86", "trt-x", "m" * 64).exists()


def _main(capsys, *argv) -> tuple[int, list[str]]:
    from trtbuild.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_read_only_out_fails_before_any_stage(tmp_path, monkeypatch, capsys):
    """Root ignores file modes here, so a read-only --out is simulated where trtbuild first
    writes into it (EROFS); it used to end as an internal error after the work."""
    import errno

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if ".write-check" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code, err = _main(capsys, DIGITS, "--out", tmp_path / "o", "--target", "onnx")
    assert code == 2 and err[-1] == (f"trtbuild: error: {tmp_path / 'o'}: cannot write to "
                                     "output directory (Read-only file system)")
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """ENOSPC (or a permission refused) anywhere in a run: exit 2, the path and what to do,
    never 'internal error'; a release job says the same in its journal entry."""
    import errno

    from trtbuild import report
    from trtbuild.release import jobs

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report, "write_text", full)
    code, err = _main(capsys, DIGITS, "--out", tmp_path / "o", "--target", "onnx")
    assert code == 2 and len(err) == 1 and err[0].startswith("trtbuild: error: ")
    assert err[0].endswith("report.json: No space left on device (free some space or point "
                           "--out/--cache-dir elsewhere)")

    def unreadable():
        raise PermissionError(errno.EACCES, "Permission denied", "calib/")

    job = jobs._measured(unreadable, dict)
    assert (job["status"], job["exit_code"]) == ("failed", 2)
    assert job["error"] == "calib/: Permission denied (check the path's permissions)"


def test_a_model_tensorrt_cannot_parse_is_one_line(tmp_path):
    """TensorRT's ONNX parser prints 'Unsupported ONNX data type: INT16 (5)' straight to
    file descriptor 2 beside its reported errors; the user sees only trtbuild's line."""
    pytest.importorskip("tensorrt_rtx")
    from onnx import numpy_helper

    nodes = [helper.make_node("Add", ["audio", "one"], ["s"]),  # int16 arithmetic: kept
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("audio", TensorProto.INT16,
                                                                      [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                          [numpy_helper.from_array(np.array([1], np.int16), "one")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "i16.onnx")
    proc = run_cli(tmp_path / "i16.onnx", "--arch", "sm_86", "--out", tmp_path / "o",
                   "--cache-dir", tmp_path / "c")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtbuild: error: ")
    assert "model.clean.onnx" in lines[0]  # the file TensorRT was given
    assert "cannot parse" in lines[0]
