"""Typed stage records (issue 19, finding 6): one schema written by the stage and read back
by every consumer, tolerant of what other trtbuild versions wrote."""

from __future__ import annotations

import json

from trtbuild.records import EngineRecord, engine_records


def test_engine_record_round_trips_through_json():
    record = EngineRecord("int8", "sm_89", "o/engines/sm_89/model.int8.engine", True,
                          "tensorrt-rtx", "1.7.1.116", key="ab" * 32, bytes=123,
                          layer_dtypes={"INT8": 3}, refit_from=None)
    assert EngineRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_records_of_other_versions_are_read_or_skipped():
    build = {"stage": "build", "engines": [
        {"precision": "fp16", "arch": "sm_86", "path": "p", "cache_hit": False,
         "a_field_from_a_newer_version": 1},          # unknown keys ignored
        {"precision": "int8", "arch": "sm_86"},          # required path missing: skipped
        "not a record", None]}
    (found,) = engine_records(build)
    assert (found.precision, found.path, found.weights_stripped) == ("fp16", "p", False)
    assert engine_records({"stage": "build", "engines": "oops"}) == []
    assert engine_records(None) == [] and engine_records({"skipped": "no builder"}) == []


def test_every_stage_record_of_a_build_is_its_type_and_round_trips(tmp_path):
    """A real build (fp16 + int8 with a target, engines skipped): each stage returned its
    typed record (Record.of checked it against the schema), and report.json reads back to
    records that write the same JSON."""
    import trtbuild.api as api
    from trtbuild.demo import CALIB_DIR, SRC, VAL_DIR
    from trtbuild.records import RECORDS, parse_stages

    result = api.build(SRC, tmp_path / "o", cache=False,
                       fp16=True, int8=True, calib=str(CALIB_DIR), val=str(VAL_DIR),
                       target="onnx", accuracy_target="top1_agreement>=0.9")
    written = json.loads((tmp_path / "o" / "report.json").read_text())
    records = parse_stages(written)
    assert [r.stage for r in records] == ["export", "clean", "fp16", "calibrate", "quantize",
                                          "sensitivity", "validate"]
    for record, raw in zip(records, written["stages"]):
        assert type(record) is RECORDS[record.stage]
        assert json.loads(json.dumps(record.to_json())) == raw
    validate = records[-1]
    assert validate.outputs["output"].top1_agreement > 0.9 and validate.label_accuracy.labelled
    assert records[5].regions and all(g.precision in ("int8", "fp16") for g in records[5].regions)
    assert result.stage("validate") == written["stages"][-1]


def test_a_stage_and_its_record_type_must_agree():
    import numpy as np
    import pytest

    from trtbuild.records import CalibrateRecord, ValidateRecord

    with pytest.raises(TypeError, match=r"outputs: unknown field\(s\) \['cosine'\]"):
        ValidateRecord.of({"outputs": {"y": {"cosine": 1.0}}})
    with pytest.raises(TypeError, match="samples"):
        CalibrateRecord.of({"samples": "many"})
    # what JSON would take: numpy scalars, tuples
    r = ValidateRecord.of({"samples": np.int64(3), "outputs": {"y": {"cosine_mean": np.float32(0.5)}}})
    assert r.samples == 3 and r.outputs["y"].cosine_mean == 0.5


def test_nan_and_absent_stay_apart_through_json():
    """A NaN metric is written as null and read back as NaN; a metric never measured is
    absent and reads back as None (report.html shows n/a and red for the first only)."""
    import math

    from trtbuild.records import OutputMetrics, ValidateRecord
    from trtbuild.report import dumps

    record = ValidateRecord(stage="validate", outputs={"y": OutputMetrics(cosine_mean=math.nan)})
    text = dumps(record.to_json())
    assert json.loads(text)["outputs"]["y"] == {"cosine_mean": None}
    back = ValidateRecord.from_json(json.loads(text))
    assert math.isnan(back.outputs["y"].cosine_mean) and back.outputs["y"].top1_agreement is None


def test_other_versions_records_are_read_leniently():
    from trtbuild.records import BenchRecord, SensitivityRecord, parse_stage

    odd = parse_stage({"stage": "sensitivity", "seconds": "slow", "after": "high",
                       "regions": [{"node": "a", "macs": 3}, "junk", {"node": 5}],
                       "new_key": 1})
    assert isinstance(odd, SensitivityRecord) and odd.after is None and odd.seconds == 0.0
    assert [g.node for g in odd.regions] == ["a", None] and odd.regions[0].macs == 3.0
    newer = parse_stage({"stage": "validate", "outputs": {"y": {"cosine_mean": 0.9,
                                                                 "psnr_db": 41.5}}})
    assert newer.outputs["y"].values() == {"cosine_mean": 0.9, "psnr_db": 41.5}
    assert newer.to_json()["outputs"]["y"]["psnr_db"] == 41.5  # written back as it was
    assert type(parse_stage({"stage": "a_future_stage", "seconds": 1})).__name__ == "StageRecord"
    assert parse_stage({"seconds": 1}) is None and parse_stage("x") is None
    assert BenchRecord.from_json({"stage": "bench", "runs": None}).runs == []


def test_labels_that_name_no_sample_leave_no_label_accuracy(tmp_path, capsys):
    """labels.csv naming none of the samples gave an empty label accuracy, which the
    console then formatted: exit 4 (review of the typed records)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trtbuild.cli import main

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "m.onnx"))
    (tmp_path / "val").mkdir()
    for k in range(4):
        np.save(tmp_path / "val" / f"s{k}.npy", np.random.default_rng(k).random((1, 4), np.float32))
    (tmp_path / "val" / "labels.csv").write_text("file,label\nother0.npy,1\n")
    code = main([str(tmp_path / "m.onnx"), "--fp16", "--val", str(tmp_path / "val"),
                 "--target", "onnx", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    fp16 = next(s for s in json.loads((tmp_path / "o" / "report.json").read_text())["stages"]
                if s["stage"] == "fp16")
    assert "label_accuracy" not in fp16 and "label accuracy" not in capsys.readouterr().out


def test_a_stages_none_stays_none_and_errors_cross_processes():
    """Record.of keeps a stage's None (not measured) as None; only JSON's null is NaN.
    TrtBuildError and OptionError pickle whole (workers hand them back)."""
    import pickle

    from trtbuild.errors import OptionError, TrtBuildError
    from trtbuild.records import OutputMetrics

    assert OutputMetrics.of({"correlation": None}).correlation is None
    option = pickle.loads(pickle.dumps(OptionError("--calib", "no such data directory",
                                                   where="d", code=3)))
    assert (option.message, option.problem, option.code) == (
        "d: --calib: no such data directory", "d: no such data directory", 3)
    error = pickle.loads(pickle.dumps(TrtBuildError("gate", 1, {"stage": "validate"})))
    assert (error.message, error.code, error.record) == ("gate", 1, {"stage": "validate"})


def test_json_output_names_the_exit_code_of_a_full_disk(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from trtbuild import api
    from trtbuild.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "o" / "x"))

    monkeypatch.setattr(api, "build", full)
    code = main(["build", "m.onnx", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 2 and printed["error"]["exit_code"] == 2
    assert printed["error"]["message"].endswith("No space left on device (free some space or "
                                                "point --out/--cache-dir elsewhere)")
