"""Calibration images from a folder, fitted to the model's image input.

    trtbuild MODEL --int8 --data-loader-script "calib/images.py:load(folder='photos')"

Every .png/.jpg/.jpeg/.bmp in `folder` (sorted by name) is decoded, converted to the
input's channels, and resized to its height and width when those are fixed and neither
`resize` nor `crop` is given; then scaled, normalised and laid out as `folder`'s
preprocess.json and the keyword arguments say (the keys of `--resize --crop --scale --mean
--std --grayscale --layout`). With `per_class=N` and a labels.csv (`file,label`; `labels=`
names another one) only the first N images of each label are used: a calibration set
balanced over classes. `limit=N` stops after N images.
"""

from pathlib import Path

from trtbuild.data.images import open_image
from trtbuild.data.labels import read_labels, read_labels_file
from trtbuild.data.loader import complete, fit_image, image_input, preprocessing

EXTS = {".png", ".jpg", ".jpeg", ".bmp"}


def load(folder, inputs=None, labels=None, per_class=0, limit=0, extra=None, **preprocess):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such image folder")
    pre = preprocessing(folder, "load", preprocess)
    spec = image_input(inputs)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTS)
    if per_class:
        table = read_labels_file(Path(labels)) if labels else read_labels(folder)
        if table is None:
            raise FileNotFoundError(f"{folder}: per_class needs a labels.csv")
        taken = {}
        kept = []
        for f in files:
            label = table.get(f.name)
            if label is not None and taken.get(label, 0) < per_class:
                taken[label] = taken.get(label, 0) + 1
                kept.append(f)
        files = kept
    for k, path in enumerate(files):
        if limit and k >= limit:
            return
        with open_image(path) as im:
            x = fit_image(im, spec, pre)
        name = spec.name if spec is not None else (inputs[0].name if inputs else "input")
        yield complete({name: x[None]}, inputs, extra)

