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
