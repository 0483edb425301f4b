"""The real-model corpus: models shipped inside pip packages (weights as published), and
real or generated inputs for them (skimage.data photos, Pillow-rendered text lines, tone
and noise audio). Each entry: where the ONNX file is, how to make its calibration and
validation data, and the flags a user would pass.

    python -m tests.corpus OUTDIR     # writes OUTDIR/<model>/{calib,val}/ for every entry
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


def package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_file() else None


def photos(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """n RGB crops (size x size, uint8) from scikit-image's bundled photos."""
    from PIL import Image
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field"]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = getattr(data, names[k % len(names)])()
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(img[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(crop.convert("RGB")))
    return out


# photos independent of photos() (which calibration uses): other scikit-image pictures,
# randomly cropped, flipped, and shifted in brightness and contrast. "dev" may be looked at
# while developing; "final" only for the final table (bench/bench_accuracy.py).
OTHER_PHOTOS = {
    "dev": ["immunohistochemistry", "camera", "coins", "moon", "clock", "stereo_motorcycle"],
    "final": ["retina", "grass", "brick", "page", "text", "horse", "colorwheel", "gravel"],
}


def other_photos(n: int, size: int, generator: str, seed: int = 0) -> list[np.ndarray]:
    """n RGB crops (size x size, uint8) from OTHER_PHOTOS[generator], with random flips and
    brightness/contrast (grey pictures as RGB)."""
    from PIL import Image
    from skimage import data

    names = OTHER_PHOTOS[generator]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = getattr(data, names[k % len(names)])()
        img = img[0] if isinstance(img, tuple) else img
        img = img.astype(np.uint8) * 255 if img.dtype == bool else img  # horse: a mask
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(0.4, 1.0))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = np.asarray(Image.fromarray(img[y:y + s, x:x + s]).resize((size, size),
                                                                        Image.BILINEAR), np.float32)
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        crop = (crop - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-30, 30)
        out.append(np.clip(crop, 0, 255).astype(np.uint8))
    return out


def yolo_input(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as Ultralytics' YOLOv8 exports take it: (1, 3, H, W), /255."""
    return (rgb.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)


WORDS = ["invoice", "total", "2024-11-26", "TensorRT", "quantize", "Polygraphy", "engine",
         "latency", "12.50 EUR", "calibration", "ONNX", "deployment", "page 3 of 7", "hello"]


def text_lines(n: int, height: int, width: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """n rendered text lines (RGB uint8, height x width) and their strings."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=int(height * 0.6))
    images, texts = [], []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
        im = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
        ImageDraw.Draw(im).text((4, height * 0.15), text, fill=(0, 0, 0), font=font)
        images.append(np.asarray(im))
        texts.append(text)
    return images, texts


def text_crops(n: int, height: int, width: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """n text-line inputs as PP-OCR's recognizer gets them from its detector: a tight crop
    of the rendered text (random size, ink and paper), resized to `height` keeping its
    aspect, normalised, right-padded with zeros to `width` (rapidocr's resize_norm_img).
    (1, 3, height, width) float32 each, and their strings."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    inputs, texts = [], []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
        font = ImageFont.load_default(size=int(rng.integers(28, 44)))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(2, 8))
        im = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad),
                       tuple(int(v) for v in rng.integers(190, 256, 3)))
        ImageDraw.Draw(im).text((pad - left, pad - top), text, font=font,
                                fill=tuple(int(v) for v in rng.integers(0, 70, 3)))
        w = min(width, int(np.ceil(height * im.width / im.height)))
        x = np.zeros((1, 3, height, width), np.float32)
        x[..., :w] = normalize(np.asarray(im.resize((w, height), Image.BILINEAR)))
        inputs.append(x)
        texts.append(text)
    return inputs, texts


FONT_DIRS = (Path("/usr/share/fonts/truetype/liberation"), Path("/usr/share/fonts/truetype/dejavu"))
# Generators of text lines independent of text_crops (which calibration uses): other fonts,
# texts, sizes and paper. "dev" may be looked at while developing; "final" only for the
# final table (bench/bench_accuracy.py).
OTHER_TEXT = {
    "dev": {"fonts": "Liberation*.ttf", "sizes": (22, 60), "paper": (150, 256),
            "ink": (0, 110), "noise": 12.0, "blur": 0.0},
    "final": {"fonts": "DejaVu*.ttf", "sizes": (18, 64), "paper": (120, 256),
              "ink": (0, 90), "noise": 6.0, "blur": 0.8},
}
CHARS = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
         "!#$%&()*+,-./:;<=>?@[]_")
WORDS_OTHER = ["shipping", "Order #4471", "qty 3", "VAT 19%", "Berlin", "2025/07/01",
               "(555) 013-2200", "Model X-200", "subtotal:", "rev. B", "ACME GmbH", "N/A",
               "www.example.org", "42.00 USD", "lot 7731-K", "Seite 2", "zip 10115"]


def fonts_for(generator: str) -> list[Path]:
    """The TrueType files a generator of OTHER_TEXT draws with (none on a machine without
    the Liberation/DejaVu packages: the caller says so)."""
    pattern = OTHER_TEXT[generator]["fonts"]
    return sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob(pattern))


def other_text_crops(n: int, height: int, width: int, generator: str, seed: int = 0
                     ) -> tuple[list[np.ndarray], list[str]]:
    """Like text_crops (the recognizer's input and the strings), drawn by another generator
    of OTHER_TEXT: its fonts, sizes, paper shades with pixel noise and blur, and texts that
    mix WORDS_OTHER with random strings of CHARS (1-14 characters)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    spec, fonts = OTHER_TEXT[generator], fonts_for(generator)
    if not fonts:
        raise FileNotFoundError(f"no {spec['fonts']} fonts in {FONT_DIRS}")
    rng = np.random.default_rng(seed)
    inputs, texts = [], []
    for _ in range(n):
        if rng.random() < 0.5:
            text = " ".join(rng.choice(WORDS_OTHER, size=int(rng.integers(1, 3))))
        else:
            text = "".join(rng.choice(list(CHARS), size=int(rng.integers(1, 15))))
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]),
                                  size=int(rng.integers(*spec["sizes"])))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(1, 10))
        paper = tuple(int(v) for v in rng.integers(*spec["paper"], 3))
        im = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
        ImageDraw.Draw(im).text((pad - left, pad - top), text, font=font,
                                fill=tuple(int(v) for v in rng.integers(*spec["ink"], 3)))
        if spec["blur"]:
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, spec["blur"]))))
        pixels = np.asarray(im, np.float32) + rng.normal(0, spec["noise"], (im.height, im.width, 1))
        im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        w = min(width, int(np.ceil(height * im.width / im.height)))
        x = np.zeros((1, 3, height, width), np.float32)
        x[..., :w] = normalize(np.asarray(im.resize((w, height), Image.BILINEAR)))
        inputs.append(x)
        texts.append(text)
    return inputs, texts


def normalize(img: np.ndarray, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    """uint8 HWC -> float32 1xCxHxW, (x/255 - mean) / std (PP-OCR's preprocessing)."""
    x = (img.astype(np.float32) / 255.0 - mean) / std
    return x.transpose(2, 0, 1)[None].copy()


def audio(n: int, samples: int, seed: int = 0) -> list[np.ndarray]:
    """n clips of 16 kHz audio: voiced-like harmonic tones with vibrato, and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    clips = []
    for k in range(n):
        f0 = rng.uniform(90, 250)
        wave = sum(np.sin(2 * np.pi * f0 * h * t + 3 * np.sin(2 * np.pi * 5 * t)) / h
                   for h in range(1, 6))
        x = 0.3 * wave * (k % 3 != 2) + rng.normal(0, 0.02 + 0.05 * (k % 3 == 2), samples)
        clips.append(x.astype(np.float32))
    return clips


@dataclass
class Entry:
    name: str
    locate: Callable[[], Path | None]
    make: Callable[[Path, int, int], None]     # (dir, count, seed) -> writes samples
    flags: list[str] = field(default_factory=list)


def _npy(write: Callable[[int], np.ndarray]) -> Callable[[Path, int, int], None]:
    def make(folder: Path, n: int, seed: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            np.save(folder / f"{k:03d}.npy", write(seed * 1000 + k))
    return make


def _npz(write: Callable[[int], dict]) -> Callable[[Path, int, int], None]:
    def make(folder: Path, n: int, seed: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            np.savez(folder / f"{k:03d}.npz", **write(seed * 1000 + k))
    return make


def _vad(with_sr: bool) -> Callable[[Path, int, int], None]:
    def write(k: int) -> dict:
        d = {"input": audio(1, 512 if with_sr else 576, k)[0][None],
             "state": np.zeros((2, 1, 128), np.float32)}
        if with_sr:
            d["sr"] = np.array(16000, np.int64)
        return d
    return _npz(write)


RAPIDOCR = "rapidocr_onnxruntime"
ENTRIES = [
    Entry("ppocr_det", lambda: package_file(RAPIDOCR, "models", "ch_PP-OCRv4_det_infer.onnx"),
          _npy(lambda k: normalize(photos(1, 320, k)[0])),
          ["--shapes", "x:1x3x320x320,1x3x320x320,1x3x640x640"]),
    Entry("ppocr_rec", lambda: package_file(RAPIDOCR, "models", "ch_PP-OCRv4_rec_infer.onnx"),
          _npy(lambda k: text_crops(1, 48, 320, k)[0][0]),
          ["--shapes", "x:1x3x48x320,1x3x48x320,1x3x48x640"]),
    Entry("ppocr_cls", lambda: package_file(RAPIDOCR, "models",
                                            "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
          _npy(lambda k: text_crops(1, 48, 192, k)[0][0]),
          ["--shapes", "x:1x3x48x192,1x3x48x192,1x3x48x192"]),
    # YOLOv8n (SiLU, DFL head; Ultralytics export, 320x320): nudenet's detector, /255 input
    Entry("yolov8n_nudenet", lambda: package_file("nudenet", "320n.onnx"),
          _npy(lambda k: yolo_input(photos(1, 320, k)[0])),
          ["--shapes", "images:1x3x320x320,1x3x320x320,1x3x640x640"]),
    Entry("silero_vad", lambda: package_file("silero_vad", "data", "silero_vad.onnx"),
          _vad(True)),
    Entry("silero_vad_16k_op15", lambda: package_file("silero_vad", "data",
                                                      "silero_vad_16k_op15.onnx"), _vad(True)),
    Entry("silero_vad_op18_ifless", lambda: package_file("silero_vad", "data",
                                                         "silero_vad_op18_ifless.onnx"),
          _vad(True)),
    Entry("silero_vad_openvino_16k", lambda: package_file("silero_vad", "data",
                                                          "silero_vad_openvino_16k.onnx"),
          _vad(False)),
]


def write_all(out: Path) -> None:
    for e in ENTRIES:
        e.make(out / e.name / "calib", 8, 0)
        e.make(out / e.name / "val", 4, 1)


