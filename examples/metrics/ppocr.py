"""Task metrics for PP-OCR models, as trtbuild metric plug-ins.

Each function takes the reference outputs, the candidate outputs (both {output name: array},
every sample concatenated along the batch axis) and the sample names (one per row), and
returns named scores in [0, 1] that gates can name:

    trtbuild rec.onnx --int8 --calib c/ --val v/ \\
        --metric-script examples/metrics/ppocr.py:ctc_strings --gate strings_equal>=0.95

- ctc_strings: PP-OCR text recognition (CTC, (N, T, C) softmax; blank = class 0):
  strings_equal (share of samples whose greedy decode equals the reference's) and
  char_accuracy (1 - edit distance / reference length, over all samples).
- det_f1: PP-OCR (DBNet) text detection ((N, 1, H, W) probability map): boxes from the
  connected regions above 0.3, matched one-to-one at IoU >= 0.5: box_f1; pixel_f1 (the
  thresholded maps compared pixel by pixel).

Only numpy (and scipy.ndimage for det_f1) are needed.
"""

from __future__ import annotations

import numpy as np

BLANK = 0             # PP-OCR's CTC blank index
DET_THRESHOLD = 0.3   # PP-OCR's DB postprocess binarisation threshold (det_db_thresh)
MIN_BOX_SIDE = 3      # PP-OCR drops boxes whose shorter side is below 3 pixels
MATCH_IOU = 0.5


def _pick(outputs: dict[str, np.ndarray], ndim: int, what: str) -> tuple[str, np.ndarray]:
    """The first output with `ndim` dimensions (sorted by name when several)."""
    for name in outputs:
        if np.ndim(outputs[name]) == ndim:
            return name, np.asarray(outputs[name])
    shapes = {k: np.shape(v) for k, v in outputs.items()}
    raise ValueError(f"{what}: no {ndim}-D output among {shapes}")


def _batch_first(x: np.ndarray, n: int) -> np.ndarray:
    """(N, T, C) as given, or (T, N, C) -> (N, T, C) when axis 1 is the sample axis."""
    if x.shape[0] != n and x.shape[1] == n:
        return x.transpose(1, 0, *range(2, x.ndim))
    return x


def ctc_decode(probs: np.ndarray, blank: int = BLANK) -> list[tuple[int, ...]]:
    """Greedy CTC decode of (N, T, C) scores: argmax per step, repeats collapsed, blanks
    dropped; one tuple of class indices per sample."""
    best = np.asarray(probs).argmax(-1)
    out = []
    for row in best:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(int(c) for c in row[keep & (row != blank)]))
    return out


def edit_distance(a: tuple, b: tuple) -> int:
    """Levenshtein distance between two sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def ctc_strings(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                names: list[str]) -> dict[str, float]:
    name, ref = _pick(reference, 3, "ctc_strings")
    cand = np.asarray(candidate[name])
    n = len(names) or ref.shape[0]
    ref, cand = _batch_first(ref, n), _batch_first(cand, n)
    r, c = ctc_decode(ref), ctc_decode(cand)
    if not r:
        return {"strings_equal": 1.0, "char_accuracy": 1.0}
    equal = sum(x == y for x, y in zip(r, c)) / len(r)
    errors = sum(edit_distance(x, y) for x, y in zip(r, c))
    chars = sum(len(x) for x in r)
    char_acc = 1.0 - errors / chars if chars else float(errors == 0)
    return {"strings_equal": float(equal), "char_accuracy": float(max(char_acc, 0.0))}


def boxes(prob: np.ndarray, threshold: float = DET_THRESHOLD,
          min_side: int = MIN_BOX_SIDE) -> np.ndarray:
    """Axis-aligned boxes (x0, y0, x1, y1), end-exclusive, of the 8-connected regions of one
    (H, W) probability map above `threshold`; regions thinner than `min_side` dropped."""
    from scipy import ndimage

    labels, count = ndimage.label(prob > threshold, structure=np.ones((3, 3), bool))
    out = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        y, x = sl
        if min(y.stop - y.start, x.stop - x.start) >= min_side:
            out.append((x.start, y.start, x.stop, y.stop))
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n, 4) and b (m, 4) -> (n, m)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(ref: np.ndarray, cand: np.ndarray, min_iou: float = MATCH_IOU) -> int:
    """Boxes matched one-to-one at IoU >= min_iou, greedily by decreasing IoU."""
    if not len(ref) or not len(cand):
        return 0
    m = iou(ref, cand)
    pairs = np.argwhere(m >= min_iou)
    pairs = pairs[np.argsort(-m[pairs[:, 0], pairs[:, 1]], kind="stable")]
    used_r, used_c, n = set(), set(), 0
    for i, j in pairs:
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            n += 1
    return n


def det_f1(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
           names: list[str]) -> dict[str, float]:
    name, ref = _pick(reference, 4, "det_f1")
    cand = np.asarray(candidate[name])
    matched = n_ref = n_cand = 0
    pix_both = pix_sum = 0
    for r, c in zip(ref, cand):
        r2, c2 = r.reshape(-1, *r.shape[-2:])[0], c.reshape(-1, *c.shape[-2:])[0]
        br, bc = boxes(r2), boxes(c2)
        matched += match(br, bc)
        n_ref, n_cand = n_ref + len(br), n_cand + len(bc)
        mr, mc = r2 > DET_THRESHOLD, c2 > DET_THRESHOLD
        pix_both += int((mr & mc).sum())
        pix_sum += int(mr.sum() + mc.sum())
    box = 2.0 * matched / (n_ref + n_cand) if n_ref + n_cand else 1.0
    pix = 2.0 * pix_both / pix_sum if pix_sum else 1.0
    return {"box_f1": float(box), "pixel_f1": float(pix)}
