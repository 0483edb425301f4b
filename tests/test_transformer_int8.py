"""INT8 on a BERT-style encoder (transformers, random weights, built offline from a config):
integer token/mask inputs pass untouched, masking sentinels set no range, and the pooled
output keeps its direction (mean cosine >= 0.98 on held-out inputs)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli

pytest.importorskip("transformers")

FACTORY = '''
import torch
from transformers import BertConfig, BertModel


class Encoder(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def make():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64,
                     attn_implementation="eager")
    ids = torch.randint(0, 200, (1, 16))
    return Encoder(BertModel(cfg).eval()), (ids, torch.ones(1, 16, dtype=torch.int64))
'''


def _token_samples(folder, n, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        length = rng.integers(3, 17)  # padded sequences: the mask matters
        mask = np.zeros((1, 16), np.int64)
        mask[0, :length] = 1
        np.savez(folder / f"{i:03d}.npz", input_ids=rng.integers(0, 200, (1, 16)),
                 attention_mask=mask)


@pytest.fixture(scope="module")
def bert_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    (tmp / "bert.py").write_text(FACTORY)
    _token_samples(tmp / "calib", 48, 0)
    _token_samples(tmp / "val", 48, 1)
    proc = run_cli(f"{tmp / 'bert.py'}:make", "--input", "input_ids:1x16",
                   "--input", "attention_mask:1x16", "--int8", "--calib", tmp / "calib",
                   "--val", tmp / "val", "--out", tmp / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    return tmp / "out", {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}


def test_pooled_output_cosine(bert_build):
    _, stages = bert_build
    outputs = stages["validate"]["outputs"]
    assert outputs["output_1"]["cosine_mean"] >= 0.98  # pooled
    assert outputs["output_0"]["cosine_mean"] >= 0.98  # token states
    assert all(m["non_finite"] == 0 for m in outputs.values())


def test_integer_inputs_untouched_and_ranges_finite(bert_build):
    out, stages = bert_build
    model = onnx.load(str(out / "model.int8.onnx"))
    q_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert not q_inputs & {"input_ids", "attention_mask"}
    assert stages["quantize"]["quantized_activations"] > 0
    from trtbuild.calib import cachefile as calib_cache

    amaxes = calib_cache.read(out / "calib.cache")
    assert amaxes and all(np.isfinite(a) and 0 < a < 1e4 for a in amaxes.values())
    assert "input_ids" not in amaxes
