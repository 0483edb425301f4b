"""Tokenized text from a JSONL file, for transformer encoders.

    trtbuild minilm.onnx --int8 --data-loader-script \\
        "calib/text.py:load(path='sentences.jsonl', max_length=128)"

One JSON object per line. A line that already holds token ids (`input_ids`, and where the
model takes them `attention_mask`, `token_type_ids`, or any other input by name) is used
as it is; a line with only text (`text_field`, default "text") is tokenized with
`tokenizer`, a Hugging Face tokenizer.json (needs the `tokenizers` package). Inputs a line
lacks: `attention_mask` ones over its tokens, `token_type_ids` and other integer inputs
zeros. Sequences are cut or zero-padded to `max_length`, or to the model's fixed sequence
length; without either they keep their own length (samples of one length are batched
together). `limit=N` stops after N lines.
"""

import json
from pathlib import Path

import numpy as np

from trtbuild.data.loader import complete


def load(path, inputs=None, tokenizer=None, text_field="text", max_length=None, limit=0,
         extra=None):
    path = Path(path)
    tok = None
    if tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer))
    names = [i.name for i in inputs] if inputs else ["input_ids", "attention_mask"]
    length = max_length or _fixed_length(inputs)
    with open(path, encoding="utf-8") as f:
        taken = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit and taken >= limit:
                return
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: not a JSON object")
            if "input_ids" not in row:
                if tok is None:
                    raise ValueError(f"{path}:{lineno}: no input_ids; give tokenizer= (a "
                                     "tokenizer.json) to tokenize its text")
                enc = tok.encode(str(row[text_field]))
                row = {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
                       "token_type_ids": enc.type_ids, **row}
            ids = list(row["input_ids"])
            row.setdefault("attention_mask", [1] * len(ids))
            feed = {}
            for name in names:
                if name in row:
                    feed[name] = _fit(np.asarray(row[name]), length)[None]
                elif name not in (extra or {}) and _per_token(name, inputs):
                    feed[name] = np.zeros((1, length or len(ids)), np.int64)
            taken += 1
            yield complete(feed, inputs, extra)


def _per_token(name, inputs):
    """Is input `name` (batch, tokens)? Without the model's inputs: assume so."""
    return not inputs or any(i.name == name and len(i.shape) == 2 for i in inputs)


def _fixed_length(inputs):
    for i in inputs or []:
        if len(i.shape) == 2 and isinstance(i.shape[1], int) and i.shape[1] > 0:
            return i.shape[1]
    return None


def _fit(x, length):
    if not length:
        return x
    return x[:length] if len(x) >= length else np.pad(x, (0, length - len(x)))
