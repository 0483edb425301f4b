"""Task metric for YOLOv8-style detectors (Ultralytics export: one (N, 4 + C, A) output of
box centre/size in pixels and C class scores per anchor), as a trtbuild metric plug-in:

    trtbuild yolov8n.onnx --int8 --calib c/ --val v/ \\
        --metric-script examples/metrics/yolo.py:detections_f1 --gate det_f1>=0.95

- det_f1: the candidate's detections against the reference's, per image: anchors whose best
  class score is >= 0.25, non-maximum suppression per class at IoU 0.7 (Ultralytics'
  predict defaults), then matched one-to-one at IoU >= 0.5 with the same class; F1 over
  all images. 1.0 when neither finds anything.
- det_recall, det_precision: the same matches over the reference's and the candidate's
  detections.

Only numpy is needed.
"""

from __future__ import annotations

import numpy as np

CONF = 0.25       # Ultralytics' predict defaults: confidence, NMS IoU, candidates, kept
NMS_IOU = 0.7
MAX_NMS = 30000
MAX_DET = 300
MATCH_IOU = 0.5


def _pick(outputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The first 3-D output with 4 + classes (at least 5) rows on axis 1, fewer than anchors
    (a transposed (N, anchors, 4 + C) export is not read as boxes)."""
    for name, x in outputs.items():
        if np.ndim(x) == 3 and 5 <= np.shape(x)[1] < np.shape(x)[2]:
            return name, np.asarray(x, np.float64)
    raise ValueError(f"yolo: no (N, 4 + C, anchors) output among "
                     f"{ {k: np.shape(v) for k, v in outputs.items()} }")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n, 4) and b (m, 4), (x0, y0, x1, y1) -> (n, m)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def detections(pred: np.ndarray, conf: float = CONF, nms_iou: float = NMS_IOU
               ) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 4) corners, classes (n,)) of one image's (4 + C, A) prediction."""
    scores = pred[4:].max(axis=0)
    keep = scores >= conf
    cls = pred[4:].argmax(axis=0)[keep]
    cx, cy, w, h = pred[:4, keep]
    box = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    order = np.argsort(-scores[keep], kind="stable")[:MAX_NMS]
    chosen: list[int] = []
    for i in order:  # greedy NMS within each class
        same = [j for j in chosen if cls[j] == cls[i]]
        if not same or iou(box[i:i + 1], box[same]).max() < nms_iou:
            chosen.append(int(i))
            if len(chosen) == MAX_DET:
                break
    return box[chosen].reshape(-1, 4), cls[chosen]


def _matches(ref: tuple[np.ndarray, np.ndarray], cand: tuple[np.ndarray, np.ndarray]) -> int:
    """Detections matched one-to-one (same class, IoU >= MATCH_IOU), by decreasing IoU."""
    if not len(ref[0]) or not len(cand[0]):
        return 0
    m = iou(ref[0], cand[0]) * (ref[1][:, None] == cand[1][None, :])
    pairs = np.argwhere(m >= MATCH_IOU)
    pairs = pairs[np.argsort(-m[pairs[:, 0], pairs[:, 1]], kind="stable")]
    used_r, used_c = set(), set()
    for i, j in pairs:
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
    return len(used_r)


def detections_f1(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  names: list[str]) -> dict[str, float]:
    name, ref = _pick(reference)
    cand = np.asarray(candidate[name], np.float64)
    matched = n_ref = n_cand = 0
    for r, c in zip(ref, cand):
        dr, dc = detections(r), detections(c)
        matched += _matches(dr, dc)
        n_ref, n_cand = n_ref + len(dr[0]), n_cand + len(dc[0])
    f1 = 2.0 * matched / (n_ref + n_cand) if n_ref + n_cand else 1.0
    return {"det_f1": float(f1), "det_recall": matched / n_ref if n_ref else 1.0,
            "det_precision": matched / n_cand if n_cand else 1.0, "detections": float(n_ref)}
