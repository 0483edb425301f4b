"""Frames of a video file, fitted to the model's image input.

    trtbuild MODEL --int8 --data-loader-script "calib/video.py:load(path='street.mp4', every=15)"

Decodes `path` with OpenCV (any container and codec its FFmpeg build reads) and keeps every
`every`-th frame (default 10: consecutive frames are near copies and add little to a
calibration set), converted from OpenCV's BGR to RGB, then fitted as calib/images.py fits
an image (the same keyword arguments: resize, crop, scale, mean, std, grayscale, layout;
a preprocess.json beside the video is read too).
`limit=N` stops after N frames.
"""

from pathlib import Path

from trtbuild.data.loader import complete, fit_image, image_input, preprocessing


def load(path, inputs=None, every=10, limit=0, extra=None, **preprocess):
    import cv2
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this video")
    pre = preprocessing(path.parent, "load", preprocess)
    spec = image_input(inputs)
    name = spec.name if spec is not None else (inputs[0].name if inputs else "input")
    taken = index = 0
    try:
        while not (limit and taken >= limit):
            ok, frame = cap.read()
            if not ok:
                break
            if index % max(1, int(every)) == 0:
                im = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                taken += 1
                yield complete({name: fit_image(im, spec, pre)[None]}, inputs, extra)
            index += 1
    finally:
        cap.release()
    if taken == 0:
        raise ValueError(f"{path}: no frame could be decoded")
