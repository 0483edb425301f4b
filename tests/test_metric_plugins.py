"""The PP-OCR task-metric plug-ins (examples/metrics/ppocr.py) on hand-made outputs and on one
real PP-OCRv4 rec run, and bench/bench_accuracy.py's INT8 MAC share on a hand-made Q/DQ
graph."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ppocr = _load(REPO / "examples" / "metrics" / "ppocr.py", "ppocr_metrics")


def one_hot(seqs, classes=6):
    """(N, T, C) scores whose argmax per step is the given class sequence."""
    x = np.full((len(seqs), len(seqs[0]), classes), 0.01, np.float32)
    for n, s in enumerate(seqs):
        x[n, np.arange(len(s)), s] = 0.9
    return x


def test_ctc_decode_collapses_repeats_and_drops_blanks():
    out = ppocr.ctc_decode(one_hot([[0, 3, 3, 0, 3, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]]))
    assert out == [(3, 3, 1), ()]


def test_edit_distance():
    assert ppocr.edit_distance((1, 2, 3), (1, 2, 3)) == 0
    assert ppocr.edit_distance((1, 2, 3), (1, 3)) == 1
    assert ppocr.edit_distance((), (4, 5)) == 2
    assert ppocr.edit_distance((1, 2), (2, 1)) == 2


def test_ctc_strings_scores():
    ref = one_hot([[1, 1, 0, 2], [3, 0, 4, 4], [5, 0, 0, 0], [2, 2, 2, 2]])
    same = ppocr.ctc_strings({"y": ref}, {"y": ref.copy()}, list("abcd"))
    assert same == {"strings_equal": 1.0, "char_accuracy": 1.0}
    cand = one_hot([[1, 1, 0, 2], [3, 0, 4, 0], [5, 0, 0, 0], [2, 0, 2, 2]])
    got = ppocr.ctc_strings({"y": ref}, {"y": cand}, list("abcd"))
    # sample 2 loses nothing (4 4 collapses to 4), sample 4 gains a character: 3 of 4 equal
    assert got["strings_equal"] == pytest.approx(0.75)
    assert got["char_accuracy"] == pytest.approx(1 - 1 / 6)   # 1 edit over 6 reference chars


def test_ctc_strings_time_major_and_extra_outputs():
    ref = one_hot([[1, 0, 2], [3, 3, 0]])
    cand = one_hot([[1, 0, 2], [3, 0, 3]])
    tmajor = lambda x: x.transpose(1, 0, 2)  # noqa: E731 - a (T, N, C) CTC output
    got = ppocr.ctc_strings({"logits": tmajor(ref), "aux": np.zeros((2, 1))},
                            {"logits": tmajor(cand), "aux": np.ones((2, 1))}, ["a", "b"])
    assert got["strings_equal"] == 0.5


def test_ctc_strings_nan_candidate_is_not_equal():
    ref = one_hot([[1, 0, 2]])
    cand = np.full_like(ref, np.nan)
    assert ppocr.ctc_strings({"y": ref}, {"y": cand}, ["a"])["strings_equal"] == 0.0


def page(rects, h=64, w=96, p=0.9):
    m = np.zeros((1, h, w), np.float32)
    for x0, y0, x1, y1 in rects:
        m[0, y0:y1, x0:x1] = p
    return m


def test_boxes_from_probability_map():
    got = ppocr.boxes(page([(2, 3, 30, 13), (40, 20, 90, 30), (60, 50, 61, 60)])[0])
    assert sorted(map(tuple, got.astype(int))) == [(2, 3, 30, 13), (40, 20, 90, 30)]  # 1-px dropped


def test_det_f1_scores():
    ref = np.stack([page([(2, 3, 30, 13), (40, 20, 90, 30)]), page([(5, 5, 50, 15)])])
    assert ppocr.det_f1({"m": ref}, {"m": ref.copy()}, ["a", "b"]) == \
        {"box_f1": 1.0, "pixel_f1": 1.0}
    # page 1: one box lost; page 2: the box shifted by half its width (IoU 1/3: unmatched)
    cand = np.stack([page([(2, 3, 30, 13)]), page([(27, 5, 72, 15)])])
    got = ppocr.det_f1({"m": ref}, {"m": cand}, ["a", "b"])
    assert got["box_f1"] == pytest.approx(2 * 1 / (3 + 2))
    # a box slightly smaller (IoU >= 0.5) still matches; probabilities below 0.3 are no box
    near = np.stack([page([(3, 4, 29, 12), (40, 20, 90, 30)]), page([(5, 5, 50, 15)])])
    near[1] += page([(60, 40, 90, 60)], p=0.2)
    assert ppocr.det_f1({"m": ref}, {"m": near}, ["a", "b"])["box_f1"] == 1.0
    empty = np.zeros((1, 1, 8, 8), np.float32)
    assert ppocr.det_f1({"m": empty}, {"m": empty}, ["a"])["box_f1"] == 1.0


def test_ctc_strings_on_a_real_ppocr_rec_run():
    ort = pytest.importorskip("onnxruntime")
    from corpus import ENTRIES, normalize, text_lines

    path = next(e for e in ENTRIES if e.name == "ppocr_rec").locate()
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    images, texts = text_lines(8, 48, 320, seed=7)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[0].name
    ref = sess.run(None, {"x": np.concatenate([normalize(im) for im in images])})[0]
    assert ref.shape[:2] == (8, 40)
    # the model's own character list (metadata): class 0 is the blank, the last one a space
    chars = next(p.value for p in onnx.load(str(path)).metadata_props
                 if p.key == "character").splitlines()
    decoded = ["".join((chars + [" "])[k - 1] for k in seq) for seq in ppocr.ctc_decode(ref)]
    assert sum(d.replace(" ", "") == t.replace(" ", "") for d, t in zip(decoded, texts)) >= 6

    names = [f"{k:03d}.npy" for k in range(8)]
    assert ppocr.ctc_strings({name: ref}, {name: ref.copy()}, names)["strings_equal"] == 1.0
    cand = ref.copy()
    cand[0] = 0.0
    cand[0, :, 0] = 1.0   # sample 0 all blank: decodes to the empty string
    got = ppocr.ctc_strings({name: ref}, {name: cand}, names)
    assert got["strings_equal"] == pytest.approx(7 / 8)
    assert 0.0 < got["char_accuracy"] < 1.0


def _qdq_model(path, cast=False):
    """x -> Q/DQ [-> Cast] -> Conv(DQ weight) -> Flatten -> MatMul(FP32 weight) -> y."""
    w = numpy_helper.from_array(np.zeros((4, 2, 3, 3), np.int8), "w_q")
    w_s = numpy_helper.from_array(np.full(4, 0.1, np.float32), "w_s")
    w_z = numpy_helper.from_array(np.zeros(4, np.int8), "w_z")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    m = numpy_helper.from_array(np.ones((4 * 6 * 6, 5), np.float32), "m")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd0" if cast else "xd"]),
             *([helper.make_node("Cast", ["xd0"], ["xd"], to=TensorProto.FLOAT)] if cast else []),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [w, w_s, w_z, s, z, m])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)


def test_int8_mac_share(tmp_path):
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(REPO / "bench"))
    from bench_accuracy import int8_mac_share

    _qdq_model(tmp_path / "m.onnx")
    conv = 4 * 6 * 6 * (2 * 3 * 3)        # output elements x (C_in/group x kernel)
    matmul = 5 * (4 * 6 * 6)              # output elements x K
    expect = conv / (conv + matmul)
    assert int8_mac_share(tmp_path / "m.onnx") == pytest.approx(expect)
    feed = {"x": np.zeros((3, 2, 8, 8), np.float32)}   # batch cancels out
    assert int8_mac_share(tmp_path / "m.onnx", feed) == pytest.approx(expect)
    _qdq_model(tmp_path / "cast.onnx", cast=True)       # DQ -> Cast -> Conv still counts
    assert int8_mac_share(tmp_path / "cast.onnx") == pytest.approx(expect)


yolo = _load(REPO / "examples" / "metrics" / "yolo.py", "yolo_metrics")


def yolo_output(dets: list[tuple[float, float, float, float, int, float]], classes: int = 3,
                anchors: int = 50) -> np.ndarray:
    """One image's (4 + classes, anchors) prediction: the given (cx, cy, w, h, class, score)
    at the first anchors, each also at the next anchor slightly shifted (NMS removes it),
    low scores elsewhere."""
    pred = np.zeros((4 + classes, anchors))
    pred[:4] = 10.0
    pred[4:] = 0.01
    for k, (cx, cy, w, h, c, s) in enumerate(dets):
        for j, shift in ((2 * k, 0.0), (2 * k + 1, 1.0)):
            pred[:4, j] = (cx + shift, cy, w, h)
            pred[4 + c, j] = s - 0.1 * shift
    return pred


def test_yolo_detections_f1():
    ref = np.stack([yolo_output([(50, 50, 20, 20, 0, 0.9), (150, 80, 30, 40, 2, 0.6)]),
                    yolo_output([])])
    same = yolo.detections_f1({"output0": ref}, {"output0": ref.copy()}, ["a", "b"])
    assert same == {"det_f1": 1.0, "det_recall": 1.0, "det_precision": 1.0, "detections": 2.0}
    lost = ref.copy()
    lost[0, 4 + 2, :4] = 0.2              # the second box's score falls under 0.25
    moved = ref.copy()
    moved[0, 4 + 2, 2:4], moved[0, 4 + 1, 2:4] = 0.01, 0.6  # same box, another class
    extra = ref.copy()
    extra[1] = yolo_output([(30, 30, 10, 10, 1, 0.5)])   # a detection in the empty image
    for cand, want in ((lost, (2 / 3, 0.5, 1.0)), (moved, (0.5, 0.5, 0.5)),
                       (extra, (0.8, 1.0, 2 / 3))):
        got = yolo.detections_f1({"output0": ref}, {"output0": cand}, ["a", "b"])
        assert (got["det_f1"], got["det_recall"], got["det_precision"]) == \
            pytest.approx(want)
