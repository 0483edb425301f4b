"""The release manifest: a TOML file of defaults, then one table per model.

    [defaults]                        # any build option by its API name (config.OPTIONS)
    precisions = ["fp16", "int8"]
    archs = ["sm_86", "sm_89"]
    calib = "data/calib"              # relative paths: against the manifest's directory

    [models.digits]
    src = "trtbuild.demo.digits:digits_cnn"
    precisions = ["fp32", "int8"]     # a model's own value replaces the default

    [release]                         # optional: how the release runs, not what it builds
    shared_dir = "/mnt/nfs/rel"       # models' directories here (every Ray node mounts it)
    calib_shard_samples = 2048        # --ray: larger calibration sets are sharded

`load(path)` checks the whole file before any work starts and raises one TrtBuildError
(exit 2) that lists every problem, each naming its table and key. A release is one job per
(model, precision, architecture): `Manifest.jobs()`.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..config import FLAGS, OPTIONS, PRECISIONS, TOP_LEVEL, BuildSettings, build_settings
from ..errors import OptionError, TrtBuildError

# Build options a release sets itself: fp32/fp16/int8 per job (from `precisions`), `out`.
NOT_KEYS = {
    **{p: f"'{p}' is not a manifest key: use precisions = [\"{p}\", ...]" for p in PRECISIONS},
    "out": "'out' is not a manifest key: the release chooses each model's output directory",
    **{k: f"'{k}' is not a manifest key yet: a release builds fp32, fp16 and int8 engines "
          "(INT4, FP8: trtbuild MODEL --int4-weights / --fp8)"
       for k in ("int4_weights", "int4_block_size", "int4_method", "fp8")},
}
SETTING_KEYS = frozenset((set(OPTIONS) | TOP_LEVEL) - set(NOT_KEYS))
DEFAULT_KEYS = SETTING_KEYS | {"precisions"}
MODEL_KEYS = DEFAULT_KEYS | {"src"}
# Meaningful with INT8 only: a model without int8 ignores them when they come from [defaults].
INT8_ONLY = ("calib", "calib_cache", "accuracy_target")
# Options naming files (declared with a path kind) that check_files can check one at a time
# (calibration ones with int8); the cache directory is checked where it is used, so that
# `cache = false` needs none.
FILE_KEYS = tuple(k for k, d in FLAGS.items() if d.flag.path and k != "cache_dir")
CALIB_KEYS = ("calib", "calib_cache")
# [release]: keys about how the release runs. Sharding costs a second inference pass (calib.
# merge), so it pays only on sets large enough to keep several machines busy.
RELEASE_KEYS = {"shared_dir": "a string", "calib_shard_samples": "an integer"}
CALIB_SHARD_SAMPLES = 2048
# A model's name becomes a directory name: no separators, no leading dot, short enough for
# any file system (a 300-character name failed with ENAMETOOLONG after workers started), and
# not the name of a file the release writes into OUT
MODEL_NAME = re.compile(r"(?!\.)[A-Za-z0-9_.-]{1,100}")
RESERVED = {"release.json", "release.html", ".release.lock"}


@dataclass(frozen=True)
class Job:
    """One engine of a release: a model at one precision for one architecture."""

    model: str
    precision: str
    arch: str

    @property
    def key(self) -> str:
        """'digits/int8/sm_86': unique within a release, usable as a relative path."""
        return f"{self.model}/{self.precision}/{self.arch}"


@dataclass(frozen=True)
class ModelEntry:
    """One [models.NAME] table with [defaults] applied.

    `options` are its build options by API name (paths absolute), without src, precisions
    and archs; `settings` is everything checked: one flag per precision, every arch."""

    name: str
    src: str
    precisions: tuple[str, ...]       # in PRECISIONS order: fp32, fp16, int8
    archs: tuple[str, ...]            # in the manifest's order
    options: dict[str, Any]
    settings: BuildSettings


@dataclass(frozen=True)
class Manifest:
    path: Path                        # absolute
    models: list[ModelEntry]          # in the file's order
    shared_dir: Path | None = None    # [release]: the models' directories (default: OUT)
    calib_shard_samples: int = CALIB_SHARD_SAMPLES  # [release]: shard sets larger than this

    def model(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def jobs(self) -> list[Job]:
        """Every (model, precision, arch): models in file order, then fp32/fp16/int8, then
        archs in the manifest's order."""
        return [Job(m.name, p, a) for m in self.models for p in m.precisions for a in m.archs]


MAX_MANIFEST_BYTES = 1 << 20


def load(path: str | Path) -> Manifest:
    """Read and check the manifest at `path`. Raises TrtBuildError (exit 2): one line when
    the file cannot be read, else 'PATH: N problems:' and one line per problem."""
    import stat

    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO hung the check, /dev/zero filled memory
            raise TrtBuildError(f"{path}: not a regular file; give a manifest .toml file")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise TrtBuildError(f"{path}: {st.st_size} bytes; a manifest is at most "
                                f"{MAX_MANIFEST_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TrtBuildError(f"{path}: no such manifest file")
    except OSError as e:
        raise TrtBuildError(f"{path}: cannot read the manifest: {e.strerror}")
    except UnicodeDecodeError as e:
        raise _failed(path, [f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"])
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message ends "(at line L, column C)"
        raise _failed(path, [f"{path}: invalid TOML: {e}"])
    checker = _Checker(path)
    models = checker.manifest(doc)
    run = checker.release(checker.table(doc, "release"))
    if checker.problems:
        raise _failed(path, checker.problems)
    for entry in models:  # a metric script's code runs only for a manifest otherwise good
        if entry.settings.gates.metric_script is not None:
            from ..metrics import load_metric

            try:
                load_metric(entry.settings.gates.metric_script)
            except TrtBuildError as e:
                checker.add(_table_name(entry.name), "metric_script", e.message)
    if checker.problems:
        raise _failed(path, checker.problems)
    return Manifest(path.resolve(), models, **run)


def _failed(path: Path, problems: list[str]) -> TrtBuildError:
    n = len(problems)
    return TrtBuildError("\n".join([f"{path}: {n} problem{'' if n == 1 else 's'}:", *problems]))


class _Checker:
    """Checks one parsed manifest, collecting problems as 'PATH: [TABLE] KEY: message'."""

    def __init__(self, path: Path):
        self.path = path
        self.base = path.resolve().parent
        self.problems: list[str] = []

    def add(self, table: str | None, key: str | None, message: str) -> None:
        where = f"[{table}] " if table else ""
        what = f"{key}: " if key else ""
        self.problems.append(f"{self.path}: {where}{what}{message}")

    def manifest(self, doc: dict[str, Any]) -> list[ModelEntry]:
        for key, value in doc.items():
            if key not in ("defaults", "models", "release"):
                self.unknown(None, key, value, ("defaults", "models", "release"))
        defaults, bad_defaults = self.options("defaults", self.table(doc, "defaults"),
                                              DEFAULT_KEYS)
        models = self.table(doc, "models")
        if not models and isinstance(doc.get("models", {}), dict):
            self.add(None, None, "no models: add a [models.NAME] table")
        entries = []
        for name, raw in models.items():
            entry = self.model(name, raw, defaults, bad_defaults)
            if entry is not None:
                entries.append(entry)
        self.case_collisions(list(models))
        return entries

    def release(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The [release] table's checked values (shared_dir resolved)."""
        good: dict[str, Any] = {}
        for key, value in raw.items():
            kind = RELEASE_KEYS.get(key)
            if kind is None:
                self.unknown("release", key, value, RELEASE_KEYS)
            elif not _is(kind, value):
                self.add("release", key, f"expected {kind}, got {_describe(value)}")
            elif key == "calib_shard_samples" and value < 1:
                self.add("release", key, f"{value} must be >= 1")
            elif key == "shared_dir" and Path(_path(value, self.base)).exists() \
                    and not Path(_path(value, self.base)).is_dir():
                self.add("release", key, f"{_path(value, self.base)} is not a directory")
            else:
                good[key] = Path(_path(value, self.base)) if key == "shared_dir" else value
        return good

    def table(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if isinstance(value, dict):
            return value
        self.add(None, key, f"expected a table [{key}], got {_describe(value)}")
        return {}

    def model(self, name: str, raw: Any, defaults: dict[str, Any],
              bad_defaults: set[str]) -> ModelEntry | None:
        table = _table_name(name)
        before = len(self.problems)
        if not MODEL_NAME.fullmatch(name) or name.lower() in RESERVED:
            self.add(table, None, f"'{name[:120]}' is not a model name: use up to 100 letters, "
                     "digits, _ . - , no leading dot, and not release.json or release.html (it "
                     "names the model's output directory)")
        if not isinstance(raw, dict):
            self.add("models", name, f"expected a table [{table}], got {_describe(raw)}")
            return None
        own, bad = self.options(table, raw, MODEL_KEYS, model=name)
        bad |= bad_defaults - raw.keys()  # listed under [defaults] already
        options = {**defaults, **own}
        src = options.pop("src", None)
        precisions = options.pop("precisions", None)
        archs = options.pop("archs", None)
        if "src" not in raw:
            self.add(table, "src", "missing (a .onnx file, FILE.py:FN, package.module:FN or "
                     "torchvision:NAME)")
        for key, value in (("precisions", precisions), ("archs", archs)):
            if value is None and key not in bad:
                self.add(table, key, "missing: set it here or in [defaults]")
        if precisions and "int8" not in precisions:
            for key in INT8_ONLY:
                if key in own:
                    self.add(table, key, "needs \"int8\" in precisions")
                options.pop(key, None)
        if len(self.problems) > before or bad:
            return None  # the whole check would only repeat what is listed already
        if "int8" in precisions and not any(k in options for k in CALIB_KEYS):
            self.add(table, "precisions", "int8 needs calib (a directory or FILE.py:FN) or "
                     "calib_cache, here or in [defaults]")
            return None
        from ..pipeline import check_files

        flags = {p: p in precisions for p in PRECISIONS}
        try:  # what no single option shows, e.g. calibrator = "trt" with calib_cache only
            settings = build_settings(src, archs=archs, **flags, **options)
            check_files(settings, run_code=False)  # load() imports scripts once all is well
        except TrtBuildError as e:
            self.add(table, None, e.message)
            return None
        return ModelEntry(name, src, precisions, settings.targets.archs, options, settings)

    def options(self, table: str, raw: dict[str, Any], allowed: frozenset[str],
                model: str | None = None) -> tuple[dict[str, Any], set[str]]:
        """The table's good options (paths resolved) and the keys whose values are bad."""
        good: dict[str, Any] = {}
        bad: set[str] = set()
        for key, value in raw.items():
            if key not in allowed:
                self.unknown(table, key, value, allowed, model)
                continue
            try:
                good[key] = self.option(key, value)
            except TrtBuildError as e:
                self.add(table, key, e.problem if isinstance(e, OptionError) else e.message)
                bad.add(key)
        return good, bad

    def option(self, key: str, value: Any) -> Any:
        """`value` type-checked, its paths resolved, checked alone as build_settings and
        check_files would. Raises TrtBuildError."""
        kind = _kind(key)
        if kind is not None and not _is(kind, value):
            raise TrtBuildError(f"expected {kind}, got {_describe(value)}")
        value = _resolve(key, value, self.base)
        if key == "precisions":
            return _precisions(value)
        if key == "src":
            from ..onnx import source

            source.parse(value)
            return value
        s = build_settings("manifest", **{key: value}, int8=key in CALIB_KEYS)
        if key in FILE_KEYS:
            from ..pipeline import check_files

            check_files(s, run_code=False)
        if key == "archs":
            if not s.targets.archs:
                raise TrtBuildError("empty: list at least one, e.g. [\"sm_86\"]")
            if len(set(s.targets.archs)) != len(s.targets.archs):
                raise TrtBuildError("an architecture is listed twice")
        return value

    def unknown(self, table: str | None, key: str, value: Any, allowed: Iterable[str],
                model: str | None = None) -> None:
        if key in NOT_KEYS:
            message = NOT_KEYS[key]
        elif key == "src" and table == "defaults":
            message = "'src' belongs in each [models.NAME] table"
        else:
            message = f"unknown key '{key}'"
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif model is not None and isinstance(value, dict):  # [models.a.b] nests tables
                message += f" (a model name with a dot needs quotes: [models.\"{model}.{key}\"])"
        self.add(table, None, message)

    def case_collisions(self, names: list[str]) -> None:
        """Names equal but for case would share a directory on case-insensitive disks."""
        seen: dict[str, str] = {}
        for name in names:
            first = seen.setdefault(name.lower(), name)
            if first != name:
                self.add(_table_name(name), None, f"differs from [{_table_name(first)}] only "
                         "in case (their output directories would collide)")


def _table_name(name: str) -> str:
    """'models.NAME' as TOML spells it: quoted unless NAME is a bare key."""
    return f"models.{name if re.fullmatch(r'[A-Za-z0-9_-]+', name) else json.dumps(name)}"


def _precisions(value: str | list[str]) -> tuple[str, ...]:
    given = [value] if isinstance(value, str) else list(value)
    if not given:
        raise TrtBuildError(f"empty: list at least one of {', '.join(PRECISIONS)}")
    for p in given:
        if p not in PRECISIONS:
            raise TrtBuildError(f"'{p}' is not one of {', '.join(PRECISIONS)}")
    if len(set(given)) != len(given):
        raise TrtBuildError("a precision is listed twice")
    return tuple(p for p in PRECISIONS if p in given)


# --- value types, from the settings dataclasses' annotations (so new options are covered)

STRINGS = "a string or an array of strings"
KINDS = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string",
         "Path": "a string", "dict": "a table", "Any": "a string", "Gate": "a string"}
KIND_OVERRIDES = {"precisions": STRINGS, "src": "a string",
                  "max_regression": "a number or a string"}  # 0.05 or "5%"


def _kind(key: str) -> str | None:
    """What TOML value `key` takes ('a boolean', ...); None: left to build_settings."""
    if key in KIND_OVERRIDES:
        return KIND_OVERRIDES[key]
    annotation = FLAGS[key].annotation.removesuffix(" | None")
    return STRINGS if annotation.startswith("tuple[") else KINDS.get(annotation)


def _is(kind: str, value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "a boolean": isinstance(value, bool),
        "an integer": isinstance(value, int) and not isinstance(value, bool),
        "a number": number,
        "a number or a string": number or isinstance(value, str),
        "a string": isinstance(value, str),
        "a table": isinstance(value, dict),
        STRINGS: isinstance(value, str) or (isinstance(value, list)
                                            and all(isinstance(v, str) for v in value)),
    }[kind]


def _describe(value: Any) -> str:
    """A TOML value's type and text: 'a string "17"'."""
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table")]
    kind = next((k for t, k in kinds if isinstance(value, t)), "a date/time")
    return f"{kind} {json.dumps(value, default=str)}"


# --- paths: relative to the manifest's directory, whatever the current directory

def _resolve(key: str, value: Any, base: Path) -> Any:
    """`value` with the paths in it made absolute, as the option's declared path kind says
    (trtbuild.config.Flag.path; src: a script or an .onnx file)."""
    kind = "script" if key == "src" else FLAGS[key].flag.path if key in FLAGS else None
    if kind == "paths":
        return [_path(v, base) for v in value] if isinstance(value, list) else _path(value, base)
    if kind == "path":  # Path, as the CLI gives them
        return Path(_path(value, base))
    if kind == "data":
        from ..data import loader

        call = loader.parse(value)
        if call is not None:  # FILE.py:FN(...): the file is relative, the arguments are not
            return f"{_path(call.path, base)}:{call.text.strip()[len(call.path) + 1:]}"
        return _path(value, base)
    if kind == "script":
        target, sep, fn = value.rpartition(":")
        if sep and fn and target.endswith(".py"):  # FILE.py:FN
            return f"{_path(target, base)}:{fn}"
        if key == "src" and value.endswith(".onnx"):
            return _path(value, base)
    return value


def _path(text: str, base: Path) -> str:
    path = Path(text).expanduser()
    return str((base / path).resolve() if not path.is_absolute() else path)
