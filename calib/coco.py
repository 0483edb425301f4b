"""Calibration images of a COCO-style detection set, letterboxed as detectors expect.

    trtbuild yolo.onnx --int8 --data-loader-script \\
        "calib/coco.py:load(annotations='val/instances.json', images='val/images')"

Reads the annotation file's `images` list (file_name, in the file's order) and, with
`with_objects=True` (the default), keeps the images that have at least one annotation;
`per_category=N` keeps images until every category has N images that show it. Each
image is scaled to fit the model's fixed input height and width (or `size`, an int or
(h, w), for a dynamic one), keeping its aspect, and padded with grey 114 (YOLO's
letterbox; `letterbox=False` stretches instead), then scaled by `scale` (1/255).
`images` defaults to the annotation file's folder; `limit=N` stops after N images.
"""

import json
from pathlib import Path

from trtbuild.data.images import Preprocess, open_image
from trtbuild.data.loader import complete, fit_image, image_input


def load(annotations, images=None, inputs=None, size=None, letterbox=True, with_objects=True,
         per_category=0, scale=1 / 255, limit=0, extra=None):
    annotations = Path(annotations)
    doc = json.loads(annotations.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{annotations}: not a COCO annotation file (no 'images' list)")
    root = Path(images) if images else annotations.parent
    shows = {}
    for a in doc.get("annotations", []):
        shows.setdefault(a["image_id"], set()).add(a.get("category_id"))
    spec = image_input(inputs)
    if spec is None and size is None:
        raise ValueError("the model has no 4-D image input; give size=")
    if spec is not None and min(spec.dims[1:]) < 1 and size is None:
        raise ValueError(f"input '{spec.name}' {spec.shape} has a dynamic size; give size=")
    pre = Preprocess(scale=float(scale))
    counts = {}
    taken = 0
    for entry in doc["images"]:
        cats = shows.get(entry.get("id"), set())
        if with_objects and not cats:
            continue
        if per_category:
            if all(counts.get(c, 0) >= per_category for c in cats):
                continue
            for c in cats:
                counts[c] = counts.get(c, 0) + 1
        if limit and taken >= limit:
            return
        with open_image(root / entry["file_name"]) as im:
            x = fit_image(im, spec, pre, size=size, letterbox=letterbox)
        taken += 1
        yield complete({spec.name if spec else "images": x[None]}, inputs, extra)
