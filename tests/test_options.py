"""The option registry (issue 19, finding 7): each option declared once, as a field of a
settings dataclass (trtbuild.config.option); the CLI parser, config.OPTIONS and the release
manifest's keys are made from those declarations."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from trtbuild.cli.args import build_parser, commands, options
from trtbuild.config import FLAGS, OPTIONS, TOP_LEVEL, BuildSettings, build_settings
from trtbuild.release.manifest import DEFAULT_KEYS, FILE_KEYS

# a CLI value for each option and what its settings field holds after build_settings;
# a new option without a row here fails test_every_option_reaches_its_field
SAMPLES = {
    "out": ("o", Path("o")), "fp32": (None, True), "fp16": (None, True), "int8": (None, True),
    "val": ("V", "V"), "inputs": ("x:1x3x8x8", (("x", (1, 3, 8, 8)),)),
    "dynamic_batch": ("no", False), "opset": ("18", 18), "calib_batch_size": ("4", 4),
    "max_samples": ("9", 9), "calib": ("C", "C"), "calib_cache": ("c.cache", Path("c.cache")),
    "calib_method": ("mse", "mse"), "percentile": ("99.5", 99.5),
    "high_precision": ("fp32", "fp32"), "weight_rounding": ("nearest", "nearest"),
    "bias_correction": ("on", "on"), "smoothquant": ("off", "off"), "equalize": ("on", "on"),
    "fp16_io": (None, True),
    "fp16_mode": ("flag", "flag"),
    "fp16_keep": ("Conv,n1", ("Conv", "n1")), "min_top1_agreement": ("0.9", 0.9),
    "min_cosine": ("0.8", 0.8), "metric_script": ("m.py:f", "m.py:f"),
    "workspace_mb": ("512", 512), "opt_level": ("5", 5), "hardware_compat": ("ampere+", "ampere+"),
    "version_compatible": (None, True), "refittable": (None, True),
    "strip_weights": (None, True), "weight_streaming": (None, True),
    "weight_streaming_budget": ("40%", "40%"), "calibrator": ("trt", "trt"), "target": ("onnx", "onnx"),
    "builder": ("tensorrt", "tensorrt"), "archs": ("sm_86,sm_89", ("sm_86", "sm_89")),
    "cache_dir": ("D", Path("D")), "cache": (None, False), "bench": (None, True),
    "warmup": ("2", 2), "iterations": ("7", 7), "duration": ("1.5", 1.5),
    "fp8": (None, True), "int4_weights": (None, True), "int4_block_size": ("64", 64),
    "int4_method": ("nearest", "nearest"),
    "baseline": ("b.json", Path("b.json")), "max_regression": ("10%", 0.1),
}
STRUCTURED = {"gates", "accuracy_target", "shapes", "plugins", "preprocess"}  # checked below


def test_every_option_reaches_its_field():
    """Given on the command line, each option lands in the field it is declared on."""
    assert set(SAMPLES) | STRUCTURED == set(FLAGS)
    parser = commands(build_parser())["build"]
    for name, (text, expected) in SAMPLES.items():
        flag = FLAGS[name].flag.flags[0]
        given = [flag] if text is None else [f"{flag}={text}"] if text.startswith("-") else (
            [f"--no-{flag[2:]}"] if text == "no" else [flag, text])
        opts = options(parser.parse_args(["m.onnx", *given]))
        assert set(opts) == {name}, (name, opts)
        s = build_settings("m.onnx", **opts)
        section, key = OPTIONS.get(name, (None, name))
        holder = getattr(s, section) if section else s
        assert getattr(holder, key) == expected, name


def test_structured_options_parse_into_their_types():
    parser = commands(build_parser())["build"]
    args = parser.parse_args(["m.onnx", "--gate", "cosine_mean>=0.9", "--gate", "n<3",
                              "--accuracy-target", "det_f1>=0.95", "--shapes",
                              "x:1x3x8x8,2x3x8x8,4x3x8x8", "--resize", "10", "--mean", "0.5",
                              "0.4", "0.3", "--no-grayscale"])
    s = build_settings("m.onnx", **options(args))
    assert [str(g) for g in s.gates.gates] == ["cosine_mean>=0.9", "n<3"]
    assert str(s.gates.accuracy_target) == "det_f1>=0.95"
    assert s.engine.profiles[0].name == "x" and s.engine.profiles[0].max == (4, 3, 8, 8)
    assert s.data.preprocess == {"resize": 10, "mean": [0.5, 0.4, 0.3], "grayscale": False}


def test_each_option_is_declared_once_and_generated_everywhere():
    """Every field of every section is an option or internal (named here); the build
    command has exactly the declared flags with their API names as dests; the manifest
    takes every option but those a release sets itself; path-kind options are the ones
    whose files a manifest check looks at."""
    internal = {("engine", "fp16_flag"), ("export", "atol"), ("export", "rtol"), (None, "src")}
    declared = {(d.section, d.field) for d in FLAGS.values()}
    for top in fields(BuildSettings):
        if top.name in TOP_LEVEL or top.name == "src":
            assert (None, top.name) in declared | internal
            continue
        for f in fields(type(top.default)):
            assert (top.name, f.name) in declared | internal, (top.name, f.name)
    parser = commands(build_parser())["build"]
    dests = {a.dest: a.option_strings for a in parser._actions if a.option_strings}
    for name, d in FLAGS.items():
        if d.flag.flags:
            assert dests[name][:len(d.flag.flags)] == list(d.flag.flags), name
    assert DEFAULT_KEYS >= set(FLAGS) - {"out", "fp32", "fp16", "int8", "fp8", "int4_weights",
                                         "int4_block_size", "int4_method"}
    assert set(FILE_KEYS) == {"val", "calib", "calib_cache", "metric_script", "plugins",
                              "baseline"}  # cache_dir: checked only when the cache is on


@pytest.mark.parametrize("flag, default", [("--opset", "17"), ("--calib-method", "auto"),
                                           ("--duration", "3"), ("--max-regression", "5%")])
def test_help_names_the_declared_default(flag, default):
    action = next(a for a in commands(build_parser())["build"]._actions
                  if flag in a.option_strings)
    assert f"default {default}" in action.help.replace("%%", "%")
