"""The ready loaders in calib/ (images, COCO detection, JSONL text, audio, video frames) on
small generated data, read through trtbuild's Dataset and fed to real ONNX Runtime sessions;
the FILE.py:FN(key=value) form of --data-loader-script."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO, run_cli
from onnx import TensorProto, helper
from PIL import Image

from trtbuild.data import Dataset, is_script, loader
from trtbuild.demo import VAL_DIR
from trtbuild.errors import TrtBuildError
from trtbuild.onnx.inputs import model_inputs

CALIB = REPO / "calib"


def _model(inputs: list, path: Path) -> Path:
    """A model summing every input (each cast to float, reduced to one number per row)."""
    nodes, terms = [], []
    for name, elem, _shape in inputs:
        src = name
        if elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
            src = f"{name}_f"
        nodes.append(helper.make_node("ReduceSum", [src], [f"{name}_s"], keepdims=0))
        terms.append(f"{name}_s")
    nodes.append(helper.make_node("Sum", terms, ["y"]))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, e, s)
                                           for n, e, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _samples(spec: str, model_path: Path, batch_size: int = 4) -> list[dict]:
    """Batches of the loader call `spec` for the model, each run by ONNX Runtime."""
    model = onnx.load(model_path)
    ds = Dataset(spec, model_inputs(model), batch_size=batch_size)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    batches = list(ds.batches())
    for b in batches:
        assert np.isfinite(sess.run(None, b)[0]).all()
    return batches


def test_loader_call_parsing():
    call = loader.parse("calib/images.py:load(folder='C:/x', per_class=2, mean=(0.5, 0.5, 0.5))")
    assert (call.path, call.fn) == ("calib/images.py", "load")
    assert call.kwargs == {"folder": "C:/x", "per_class": 2, "mean": (0.5, 0.5, 0.5)}
    assert loader.parse("load.py:data").kwargs == {}
    assert loader.parse("some/folder") is None
    assert is_script("a.py:fn(x=1)") and not is_script("photos")
    for bad in ("a.py:fn(1)", "a.py:fn(x=open('f'))", "a.py:fn(**d)", "a.py:fn(x=)"):
        with pytest.raises(TrtBuildError, match="key=value with Python literal"):
            loader.parse(bad)
    from trtbuild.data import check_source
    with pytest.raises(TrtBuildError, match="not a loader call"):  # its ')' missing
        check_source("calib/images.py:load(folder='a'", "--data-loader-script")


def test_images_fit_the_input_and_balance_classes(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (folder / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    model = _model([("images", TensorProto.FLOAT, ["n", 3, 32, 32])], tmp_path / "m.onnx")
    batches = _samples(f"{CALIB / 'images.py'}:load(folder='{folder}', per_class=2)", model)
    x = np.concatenate([b["images"] for b in batches])
    assert x.shape == (4, 3, 32, 32)  # 0.png-3.png: two of label 0, two of label 1
    want = np.asarray(Image.open(folder / "2.png").convert("RGB").resize((32, 32), Image.BILINEAR),
                      np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(x[2], want, atol=1e-6)
    # NHWC and one channel, from the model's input shape alone; preprocessing arguments apply
    model = _model([("x", TensorProto.FLOAT, ["n", 16, 16, 1])], tmp_path / "g.onnx")
    x = _samples(f"{CALIB / 'images.py'}:load(folder='{folder}', limit=3, scale=1.0)",
                 model)[0]["x"]
    assert x.shape == (3, 16, 16, 1) and x.max() > 1


@pytest.mark.slow  # 9 s: a whole INT8 build from the CLI
def test_images_loader_builds_the_demo_from_the_cli(tmp_path):
    spec = f"{CALIB / 'images.py'}:load(folder='{VAL_DIR}', per_class=3)"
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--data-loader-script", spec,
                   "--target", "onnx", "--out", tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    calib = next(s for s in report["stages"] if s["stage"] == "calibrate")
    assert calib["samples"] == 30  # 3 of each of the 10 digits
    bad = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--data-loader-script",
                  f"{CALIB / 'images.py'}:load(folder='{VAL_DIR}', per_klass=3)",
                  "--target", "onnx", "--out", tmp_path / "bad")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].count("takes no argument 'per_klass'") == 1


def test_coco_letterbox_and_selection(tmp_path):
    (tmp_path / "images").mkdir()
    colours = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
    for i, c in colours.items():
        Image.new("RGB", (128, 64), c).save(tmp_path / "images" / f"{i}.png")
    doc = {"images": [{"id": i, "file_name": f"{i}.png", "width": 128, "height": 64}
                      for i in colours],
           "annotations": [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5]},
                           {"image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5]}],
           "categories": [{"id": 7, "name": "thing"}]}
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    model = _model([("images", TensorProto.FLOAT, ["n", 3, 64, 64])], tmp_path / "m.onnx")
    x = _samples(f"{CALIB / 'coco.py'}:load(annotations='{ann}', images='{tmp_path / 'images'}')",
                 model)[0]["images"]
    assert x.shape == (2, 3, 64, 64)  # image 3 has no objects
    np.testing.assert_allclose(x[0, :, 0, 0], 114 / 255, atol=1e-6)   # the grey band above
    np.testing.assert_allclose(x[0, :, 32, 32], [1, 0, 0], atol=1e-6)  # the picture, centred
    one = _samples(f"{CALIB / 'coco.py'}:load(annotations='{ann}', per_category=1, "
                   f"images='{tmp_path / 'images'}', letterbox=False)", model)[0]["images"]
    assert one.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(one[0, :, 0, 0], [1, 0, 0], atol=1e-6)  # stretched, no band


def test_text_jsonl_pretokenized_and_tokenized(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 5, "world": 6}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "s.jsonl").write_text(
        json.dumps({"input_ids": [1, 2, 3, 4]}) + "\n\n" + json.dumps({"text": "hello world x"})
        + "\n")
    model = _model([("input_ids", TensorProto.INT64, ["n", "s"]),
                    ("attention_mask", TensorProto.INT64, ["n", "s"]),
                    ("token_type_ids", TensorProto.INT64, ["n", "s"])], tmp_path / "m.onnx")
    spec = (f"{CALIB / 'text.py'}:load(path='{tmp_path / 's.jsonl'}', "
            f"tokenizer='{tmp_path / 'tokenizer.json'}', max_length=5)")
    b = _samples(spec, model)[0]
    np.testing.assert_array_equal(b["input_ids"], [[1, 2, 3, 4, 0], [5, 6, 0, 0, 0]])  # x: [UNK]
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(b["token_type_ids"], np.zeros((2, 5)))
    # without max_length each keeps its length: two batches
    spec = spec.replace(", max_length=5", "")
    assert [b["input_ids"].shape for b in _samples(spec, model)] == [(1, 4), (1, 3)]
    with pytest.raises(TrtBuildError, match="no input_ids; give tokenizer="):
        _samples(f"{CALIB / 'text.py'}:load(path='{tmp_path / 's.jsonl'}')", model)


def _wav(path: Path, x: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    kind = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    scale = np.iinfo(kind).max
    y = (x * 127 + 128) if width == 1 else x * scale
    data = np.repeat(y[:, None], channels, axis=1).astype(kind)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def test_audio_resampled_windowed_with_state_and_rate(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    t = np.arange(4000) / 8000  # 0.5 s at 8 kHz
    _wav(clips / "a.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 8000, width=2, channels=2)
    _wav(clips / "b.wav", 0.5 * np.sin(2 * np.pi * 500 * t), 8000, width=1)
    model = _model([("input", TensorProto.FLOAT, ["n", "t"]),
                    ("state", TensorProto.FLOAT, [2, "n", 4]),
                    ("sr", TensorProto.INT64, [])], tmp_path / "vad.onnx")
    spec = (f"{CALIB / 'audio.py'}:load(folder='{clips}', rate=16000, window=512, "
            "extra={'sr': 16000})")
    batches = _samples(spec, model)
    assert len(batches) == 2 * (8000 // 512)  # a static state axis: one window per batch
    first = batches[0]
    assert first["input"].shape == (1, 512) and first["sr"] == 16000
    assert first["state"].shape == (2, 1, 4) and not first["state"].any()
    whole = np.concatenate([b["input"][0] for b in batches[:8000 // 512]])
    peak = np.argmax(np.abs(np.fft.rfft(whole))) * 16000 / len(whole)
    assert abs(peak - 1000) < 20 and abs(np.abs(whole).max() - 0.5) < 0.02
    # seconds=: cut or padded to that length, one sample per clip
    model = _model([("input", TensorProto.FLOAT, ["n", 1, "t"])], tmp_path / "c.onnx")
    x = _samples(f"{CALIB / 'audio.py'}:load(folder='{clips}', seconds=0.75)", model)
    assert x[0]["input"].shape == (2, 1, 12000)


def test_video_frames(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    for k in range(10):
        out.write(np.full((32, 48, 3), (0, 0, 20 * k), np.uint8))  # BGR: red grows
    out.release()
    model = _model([("images", TensorProto.FLOAT, ["n", 3, 16, 16])], tmp_path / "m.onnx")
    x = _samples(f"{CALIB / 'video.py'}:load(path='{path}', every=3)", model)[0]["images"]
    assert x.shape == (4, 3, 16, 16)
    np.testing.assert_allclose(x[:, 0].mean(axis=(1, 2)) * 255, [0, 60, 120, 180], atol=6)
    assert x[:, 1:].max() < 6 / 255
