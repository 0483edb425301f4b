"""Dataset reading: real files on disk, every bad-input case names the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trtbuild.data import Dataset, Preprocess, read_labels
from trtbuild.demo import CALIB_DIR, VAL_DIR
from trtbuild.errors import TrtBuildError
from trtbuild.onnx.inputs import InputSpec

IMG = [InputSpec("input", ("batch", 1, 8, 8), np.dtype(np.float32))]
VEC = [InputSpec("x", ("batch", 4), np.dtype(np.float32))]


def test_digits_images_with_preprocess_json():
    ds = Dataset(CALIB_DIR, IMG, batch_size=100)
    assert len(ds) == 256
    batches = list(ds.batches())
    assert [len(b["input"]) for b in batches] == [100, 100, 56]
    x = batches[0]["input"]
    assert x.shape == (100, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)
    # sorted order: the first sample is the first file
    first = np.asarray(Image.open(sorted(CALIB_DIR.glob("*.png"))[0]), np.float32) / 255
    np.testing.assert_allclose(x[0, 0], first, atol=1e-6)


def test_labels_csv():
    labels = read_labels(VAL_DIR)
    assert len(labels) == 500 and set(labels.values()) == set(range(10))


def test_resize_crop_rgb_nhwc(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(tmp_path / "a.png")
    pre = Preprocess.from_dir(tmp_path, resize=10, crop=8, layout="NHWC",
                              mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    spec = [InputSpec("img", ("n", 8, 8, 3), np.dtype(np.float32))]
    (x,) = [b["img"] for b in Dataset(tmp_path, spec, preprocess=pre).batches()]
    assert x.shape == (1, 8, 8, 3) and np.allclose(x, 1.0)


def test_npy_single_and_batched_and_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(4, np.float32))
    np.save(tmp_path / "b.npy", np.zeros((3, 4), np.float64))
    ds = Dataset(tmp_path, VEC, batch_size=8)
    (batch,) = list(ds.batches())
    assert batch["x"].shape == (4, 4) and batch["x"].dtype == np.float32
    two = [VEC[0], InputSpec("ids", ("batch", 5), np.dtype(np.int64))]
    d2 = tmp_path / "z"
    d2.mkdir()
    np.savez(d2 / "s.npz", x=np.ones((2, 4), np.float32), ids=np.arange(10).reshape(2, 5))
    (b,) = list(Dataset(d2, two).batches())
    assert b["ids"].dtype == np.int64 and b["ids"].shape == (2, 5)


def test_loader_script(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\ndef load():\n"
                      "    for i in range(5):\n        yield {'x': np.full((1, 4), i, np.float32)}\n")
    ds = Dataset(f"{script}:load", VEC, batch_size=2, max_samples=3)
    assert [b["x"][:, 0].tolist() for b in ds.batches()] == [[0, 1], [2]]


def _error(tmp_path, inputs=VEC, source=None) -> str:
    with pytest.raises(TrtBuildError) as e:
        list(Dataset(source or tmp_path, inputs).batches())
    assert e.value.code == 2
    return e.value.message


def test_empty_and_unreadable_directories(tmp_path):
    assert "no samples" in _error(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    assert "no samples" in _error(tmp_path)
    assert "does not exist" in _error(tmp_path, source=tmp_path / "missing")


def test_corrupt_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    assert "broken.png" in _error(tmp_path, IMG)


def test_wrong_shape_names_file_expected_and_actual(tmp_path):
    np.save(tmp_path / "bad.npy", np.ones((2, 5), np.float32))
    msg = _error(tmp_path)
    assert "bad.npy" in msg and "(2, 5)" in msg and "'batch', 4" in msg


def test_image_of_wrong_size(tmp_path):
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "big.png")
    (tmp_path / "preprocess.json").write_text('{"grayscale": true}')
    msg = _error(tmp_path, IMG)
    assert "big.png" in msg and "(1, 9, 9)" in msg


def test_nan_and_dtype(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([1, np.nan, 0, 0], np.float32))
    assert "nan.npy" in _error(tmp_path) and "NaN or Inf" in _error(tmp_path)
    d = tmp_path / "ints"
    d.mkdir()
    np.save(d / "i.npy", np.ones(4, np.int64))
    assert "dtype int64" in _error(d)


def test_loader_script_that_raises(tmp_path):
    script = tmp_path / "bad_loader.py"
    script.write_text("def load():\n    yield from ()\n    raise ValueError('disk gone')\n")
    msg = _error(tmp_path, source=f"{script}:load")
    assert "bad_loader.py" in msg and "ValueError: disk gone" in msg


def test_bad_preprocess_json(tmp_path):
    (tmp_path / "preprocess.json").write_text('{"sclae": 1}')
    np.save(tmp_path / "a.npy", np.ones(4, np.float32))
    with pytest.raises(TrtBuildError, match="unknown keys"):
        Preprocess.from_dir(tmp_path)
