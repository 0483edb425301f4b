"""The release manifest (#11 part 1): real TOML files on disk, checked whole before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO

from trtbuild import demo
from trtbuild.errors import BAD_INPUT, TrtBuildError
from trtbuild.release.manifest import Job, load

EXAMPLE = REPO / "examples" / "release" / "manifest.toml"


def problems(path: Path) -> list[str]:
    """The problem lines of the TrtBuildError that loading `path` raises (header checked)."""
    with pytest.raises(TrtBuildError) as info:
        load(path)
    assert info.value.code == BAD_INPUT
    head, *lines = info.value.message.splitlines()
    n = len(lines)
    assert head == f"{path}: {n} problem{'' if n == 1 else 's'}:"
    assert all(line.startswith(f"{path}: ") for line in lines)
    return [line.removeprefix(f"{path}: ") for line in lines]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def samples(folder: Path, n: int = 2) -> Path:
    """A data directory with `n` of the digits demo's images (and its preprocess.json)."""
    folder.mkdir(parents=True)
    for image in sorted(demo.CALIB_DIR.glob("*.png"))[:n]:
        shutil.copy(image, folder)
    shutil.copy(demo.CALIB_DIR / "preprocess.json", folder)
    return folder


def test_example_manifest_loads_with_its_jobs():
    m = load(EXAMPLE)
    assert m.path == EXAMPLE.resolve()
    assert [e.name for e in m.models] == ["digits", "resnet18"]
    assert [j.key for j in m.jobs()] == [
        "digits/fp16/sm_86", "digits/fp16/sm_89", "digits/int8/sm_86", "digits/int8/sm_89",
        "resnet18/fp32/sm_86", "resnet18/fp32/sm_89", "resnet18/fp16/sm_86",
        "resnet18/fp16/sm_89"]
    assert m.jobs()[2] == Job("digits", "int8", "sm_86")
    digits, resnet = m.models
    assert digits.src == demo.SRC and digits.precisions == ("fp16", "int8")
    assert Path(digits.options["calib"]) == demo.CALIB_DIR  # relative to the manifest
    s = digits.settings
    assert (s.fp32, s.fp16, s.int8) == (False, True, True)
    assert Path(s.calib.data) == demo.CALIB_DIR and Path(s.val) == demo.VAL_DIR
    assert s.targets.archs == ("sm_86", "sm_89") and s.gates.min_top1_agreement == 0.98
    assert [str(g) for g in s.gates.gates] == ["cosine_mean>=0.99"]  # from [defaults]
    r = resnet.settings
    assert resnet.precisions == ("fp32", "fp16") and (r.fp32, r.fp16, r.int8) == (True, True, False)
    assert r.engine.profiles[0].max == (8, 3, 224, 224)
    assert "src" not in resnet.options and "precisions" not in resnet.options
    assert m.model("resnet18") is resnet


def test_every_problem_is_listed_at_once(tmp_path):
    samples(tmp_path / "val")
    path = write(tmp_path / "release.toml", """
modles = 1

[defaults]
precisions = ["fp16", "int8"]
archs = ["sm_86"]
calib = "data/calib"

[models.a]
src = "torchvision:resnet18"
calib_methd = "max"

[models.b]
src = "torchvision:resnet18"
precisions = ["fp32", "fp8"]

[models.c]
precisions = ["fp32"]
val = "val"

[models.d]
src = "torchvision:resnet18"
archs = ["sm_86", "sm86"]
int8 = true
opset = "17"
""")
    assert problems(path) == [
        "unknown key 'modles' (did you mean 'models'?)",
        f"[defaults] calib: {tmp_path}/data/calib: no such data directory",
        "[models.a] unknown key 'calib_methd' (did you mean 'calib_method'?)",
        "[models.b] precisions: 'fp8' is not one of fp32, fp16, int8",
        "[models.c] src: missing (a .onnx file, FILE.py:FN, package.module:FN or "
        "torchvision:NAME)",
        "[models.d] archs: 'sm86' is not a compute capability like sm_86 (or native, ampere+)",
        "[models.d] 'int8' is not a manifest key: use precisions = [\"int8\", ...]",
        "[models.d] opset: expected an integer, got a string \"17\"",
    ]


def test_checks_across_options_once_each_option_is_good(tmp_path):
    samples(tmp_path / "calib")
    (tmp_path / "empty").mkdir()
    (tmp_path / "calib.cache").write_bytes(b"TRT-8600-EntropyCalibration2\n")
    write(tmp_path / "m.py", "def score(ref, cand, names):\n    return {}\n")
    path = write(tmp_path / "release.toml", """
[defaults]
archs = ["sm_86"]
precisions = ["fp16", "int8"]

[models.nocalib]
src = "torchvision:resnet18"
calib = "empty"

[models.trt]
src = "torchvision:resnet18"
calibrator = "trt"
calib_cache = "calib.cache"

[models.fp16only]
src = "torchvision:resnet18"
precisions = ["fp16"]
calib_cache = "calib.cache"

[models.script]
src = "torchvision:resnet18"
calib = "calib"
metric_script = "m.py:nope"
""")
    (tmp_path / "m.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    assert problems(path) == [
        f"[models.nocalib] calib: {tmp_path}/empty: no samples (.png .jpg .jpeg .bmp .npy "
        ".npz) in directory",
        "[models.trt] --calibrator trt calibrates in TensorRT from --calib data: give --calib "
        "DIR or --data-loader-script (a cache alone is not enough)",
        "[models.fp16only] calib_cache: needs \"int8\" in precisions",
    ]
    assert not (tmp_path / "ran").exists()  # a rejected manifest runs none of its scripts
    alone = write(tmp_path / "alone.toml", path.read_text().split("[models.nocalib]")[0]
                  + path.read_text()[path.read_text().index("[models.script]"):])
    assert problems(alone) == [f"[models.script] metric_script: {tmp_path}/m.py:nope: "
                               f"{tmp_path}/m.py has no callable 'nope'"]


def test_int8_options_from_defaults_apply_where_int8_is_built(tmp_path):
    samples(tmp_path / "calib")
    path = write(tmp_path / "release.toml", """
[defaults]
archs = ["sm_86"]
precisions = ["fp16", "int8"]
calib = "calib"
accuracy_target = "cosine_mean>=0.99"

[models.mixed]
src = "torchvision:resnet18"
calib_method = "max"

[models.fp16only]
src = "torchvision:resnet18"
precisions = ["fp16"]
""")
    m = load(path)
    mixed = m.model("mixed").settings
    assert mixed.calib.data == str(tmp_path / "calib") and mixed.calib.method == "max"
    assert str(mixed.gates.accuracy_target) == "cosine_mean>=0.99"
    only = m.model("fp16only")
    assert only.settings.calib.data is None and only.settings.gates.accuracy_target is None
    assert "calib" not in only.options and [j.key for j in m.jobs()][-1] == "fp16only/fp16/sm_86"


def test_int8_needs_calibration_data(tmp_path):
    path = write(tmp_path / "release.toml", """
[models.x]
src = "torchvision:resnet18"
precisions = ["int8"]
archs = ["sm_89"]
""")
    assert problems(path) == ["[models.x] precisions: int8 needs calib (a directory or "
                              "FILE.py:FN) or calib_cache, here or in [defaults]"]


def test_syntax_error_is_one_problem_with_its_line(tmp_path):
    path = write(tmp_path / "broken.toml", "[defaults]\nprecisions = [\"fp16\"\n"
                                           "archs = [\"sm_86\"]\n")
    [line] = problems(path)
    assert line.startswith("invalid TOML: ") and "(at line 3, column 1)" in line


def test_unreadable_manifest_is_one_line(tmp_path):
    for path, says in ((tmp_path / "nope.toml", "no such manifest file"),
                       (tmp_path, "not a regular file")):
        with pytest.raises(TrtBuildError) as info:
            load(path)
        assert info.value.code == BAD_INPUT
        assert info.value.message.startswith(f"{path}: {says}") and "\n" not in info.value.message


def test_wrong_types_name_the_key(tmp_path):
    path = write(tmp_path / "release.toml", """
defaults = 3
[models.x]
src = "torchvision:resnet18"
precisions = ["fp16"]
archs = "sm_86"
dynamic_batch = "yes"
gates = [0.99]
percentile = true
max_regression = "5%"
preprocess = "resize"
""")
    assert problems(path) == [
        "defaults: expected a table [defaults], got an integer 3",
        "[models.x] dynamic_batch: expected a boolean, got a string \"yes\"",
        "[models.x] gates: expected a string or an array of strings, got an array [0.99]",
        "[models.x] percentile: expected a number, got a boolean true",
        "[models.x] preprocess: expected a table, got a string \"resize\"",
    ]


def test_relative_paths_resolve_against_the_manifest_not_the_cwd(tmp_path, monkeypatch):
    rel = tmp_path / "release"
    samples(rel / "data" / "calib")
    val = samples(rel / "data" / "val")
    (val / "labels.csv").write_text("file,label\n0000_5.png,5\n")
    (rel / "calib.cache").write_bytes(b"TRT-8600-EntropyCalibration2\n")
    write(rel / "models" / "net.py", "def make():\n    raise RuntimeError('not called')\n")
    write(rel / "metrics.py", "def score(ref, cand, names):\n    return {}\n")
    write(rel / "release.toml", """
[defaults]
archs = ["sm_86"]
calib = "data/calib"
val = "data/val"
metric_script = "metrics.py:score"
cache_dir = "engine-cache"

[models.net]
src = "models/net.py:make"
precisions = ["fp32", "int8"]
calib_cache = "calib.cache"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative manifest path, from another directory
    m = load(Path("..") / "release" / "release.toml")
    net = m.model("net")
    assert net.src == f"{rel}/models/net.py:make"
    assert net.options["calib"] == str(rel / "data" / "calib")
    s = net.settings
    assert (s.calib.data, s.val) == (str(rel / "data" / "calib"), str(rel / "data" / "val"))
    assert s.calib.cache == rel / "calib.cache"
    assert s.gates.metric_script == f"{rel}/metrics.py:score"
    assert s.targets.cache_dir == rel / "engine-cache"
    assert m.path == rel / "release.toml"


def test_a_cache_dir_is_checked_only_when_the_cache_is_used(tmp_path):
    """`cache = false` with a cache_dir that is a file loads (the plain build with
    --no-cache ignores --cache-dir too); with the cache on it is one clear error."""
    (tmp_path / "not-a-dir").write_text("")
    text = """
[defaults]
archs = ["sm_86"]
cache_dir = "not-a-dir"
{cache}
[models.digits]
src = "trtbuild.demo.digits:digits_cnn"
precisions = ["fp32"]
"""
    off = load(write(tmp_path / "off.toml", text.format(cache="cache = false")))
    assert off.model("digits").settings.targets.cache_dir == tmp_path / "not-a-dir"
    with pytest.raises(TrtBuildError, match="not-a-dir"):
        load(write(tmp_path / "on.toml", text.format(cache=""))).model("digits")


def test_model_names(tmp_path):
    path = write(tmp_path / "names.toml", """
[defaults]
src = "torchvision:resnet18"
precisions = ["fp16"]
archs = ["sm_86"]

[models."my model"]
src = "torchvision:resnet18"
[models.".."]
src = "torchvision:resnet18"
[models."resnet.v1-5_b"]
src = "torchvision:resnet18"
[models.ResNet]
src = "torchvision:resnet18"
[models.resnet]
src = "torchvision:resnet18"
[models.r.v2]
src = "torchvision:resnet18"
[models."release.json"]
src = "torchvision:resnet18"
[models."mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm"]
src = "torchvision:resnet18"
""")
    rule = ("use up to 100 letters, digits, _ . - , no leading dot, and not release.json or "
            "release.html (it names the model's output directory)")
    assert problems(path) == [
        "[defaults] 'src' belongs in each [models.NAME] table",
        f"[models.\"my model\"] 'my model' is not a model name: {rule}",
        f"[models.\"..\"] '..' is not a model name: {rule}",
        "[models.r] unknown key 'v2' (a model name with a dot needs quotes: "
        "[models.\"r.v2\"])",
        "[models.r] src: missing (a .onnx file, FILE.py:FN, package.module:FN or "
        "torchvision:NAME)",
        f"[models.\"release.json\"] 'release.json' is not a model name: {rule}",
        f"[models.{'m' * 101}] '{'m' * 101}' is not a model name: {rule}",
        "[models.resnet] differs from [models.ResNet] only in case (their output directories "
        "would collide)",
    ]
    # the same table twice is a TOML error, with its line
    dup = write(tmp_path / "dup.toml", "[models.a]\nsrc = \"torchvision:resnet18\"\n"
                                       "[models.a]\nsrc = \"torchvision:resnet18\"\n")
    [line] = problems(dup)
    assert "invalid TOML: " in line and "line 3" in line


def test_no_models_and_empty_lists(tmp_path):
    assert problems(write(tmp_path / "empty.toml", "[defaults]\narchs = [\"sm_86\"]\n")) == [
        "no models: add a [models.NAME] table"]
    path = write(tmp_path / "lists.toml", """
[models.x]
src = "torchvision:resnet18"
precisions = []
archs = []
[models.y]
src = "torchvision:resnet18"
precisions = ["fp16", "fp16"]
archs = ["sm_86", "sm_86"]
[models.z]
src = "torchvision:resnet18"
""")
    assert problems(path) == [
        "[models.x] precisions: empty: list at least one of fp32, fp16, int8",
        "[models.x] archs: empty: list at least one, e.g. [\"sm_86\"]",
        "[models.y] precisions: a precision is listed twice",
        "[models.y] archs: an architecture is listed twice",
        "[models.z] precisions: missing: set it here or in [defaults]",
        "[models.z] archs: missing: set it here or in [defaults]",
    ]


def test_release_table(tmp_path):
    """[release]: how the release runs (the shared directory, the calibration shard size)."""
    model = '[models.d]\nsrc = "trtbuild.demo.digits:digits_cnn"\nprecisions = ["fp16"]\n' \
        'archs = ["sm_86"]\n'
    m = load(write(tmp_path / "ok.toml", model))
    assert m.shared_dir is None and m.calib_shard_samples == 2048
    m = load(write(tmp_path / "rel.toml", model + '[release]\nshared_dir = "nfs/rel"\n'
                   'calib_shard_samples = 64\n'))
    assert m.shared_dir == tmp_path / "nfs" / "rel" and m.calib_shard_samples == 64
    (tmp_path / "file").write_text("")
    bad = write(tmp_path / "bad.toml", model + '[release]\nshared_dir = "file"\n'
                'calib_shard_samples = 0\nshard_dir = 1\n')
    assert problems(bad) == [
        f"[release] shared_dir: {tmp_path / 'file'} is not a directory",
        "[release] calib_shard_samples: 0 must be >= 1",
        "[release] unknown key 'shard_dir' (did you mean 'shared_dir'?)"]
    wrong = write(tmp_path / "wrong.toml", model + '[release]\ncalib_shard_samples = "64"\n')
    assert problems(wrong) == ['[release] calib_shard_samples: expected an integer, got a '
                               'string "64"']


def test_a_missing_metric_script_names_the_key_not_the_flag(tmp_path):
    samples(tmp_path / "calib")
    path = write(tmp_path / "release.toml", """
[models.x]
src = "torchvision:resnet18"
precisions = ["int8"]
archs = ["sm_86"]
calib = "calib"
metric_script = "nothere.py:score"
""")
    assert problems(path) == [f"[models.x] metric_script: {tmp_path}/nothere.py: no such file"]
