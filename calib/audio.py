"""Audio clips from a folder, resampled to the model's sample rate.

    trtbuild vad.onnx --int8 --data-loader-script \\
        "calib/audio.py:load(folder='clips', rate=16000, window=512, extra={'sr': 16000})"

Every .wav in `folder` (PCM 8/16/24/32-bit or 32-bit float, any channels, mixed to mono)
is resampled to `rate` (polyphase, scipy's resample_poly; linear interpolation without
scipy) as float32 in [-1, 1]. With `window=N` each clip is cut into consecutive windows
of N samples (every `hop`, default N; a short tail is dropped), each one sample; with
`seconds=S` clips are cut or zero-padded to S seconds; otherwise a clip is one sample of
its own length. The audio goes to `input` (default: the model's first input) as
(1, samples), or (1, 1, samples) for a 3-D input; other inputs come from `extra`
({name: value}) or are zeros of their shape (an RNN state). `limit=N` stops after N samples.
"""

import wave
from math import gcd
from pathlib import Path

import numpy as np

from trtbuild.data.loader import complete


def load(folder, inputs=None, rate=16000, window=0, hop=0, seconds=None, input=None,
         extra=None, limit=0):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of clips")
    name = input or (inputs[0].name if inputs else "input")
    rank = next((len(i.shape) for i in inputs or [] if i.name == name), 2)
    taken = 0
    for path in sorted(folder.glob("*.wav")):
        clip = resample(*read_wav(path), rate)
        if seconds:
            n = int(round(seconds * rate))
            clip = clip[:n] if len(clip) >= n else np.pad(clip, (0, n - len(clip)))
        pieces = [clip]
        if window:
            step = hop or window
            pieces = [clip[s:s + window] for s in range(0, len(clip) - window + 1, step)]
        for piece in pieces:
            if limit and taken >= limit:
                return
            x = piece.astype(np.float32)[None]
            taken += 1
            yield complete({name: x[None] if rank == 3 else x}, inputs, extra)


def read_wav(path):
    """(mono float32 samples in [-1, 1], sample rate) of a WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except wave.Error:  # e.g. IEEE float WAV, which the wave module does not read
        from scipy.io import wavfile

        rate, data = wavfile.read(str(path))
        x = data.astype(np.float32)
        if data.dtype.kind in "iu":
            x = x / float(np.iinfo(data.dtype).max)
        return (x.mean(axis=1) if x.ndim == 2 else x), rate
    if width == 3:  # 24-bit: widen to 32 by a zero low byte
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw = np.concatenate([np.zeros((len(b), 1), np.uint8), b], axis=1).tobytes()
        width = 4
    kind = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, kind).astype(np.float32)
    x = (x - 128) / 128 if width == 1 else x / float(np.iinfo(kind).max)
    return x.reshape(-1, channels).mean(axis=1), rate


def resample(x, rate_in, rate_out):
    if rate_in == rate_out:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError:
        n = int(round(len(x) * rate_out / rate_in))
        return np.interp(np.arange(n) * rate_in / rate_out, np.arange(len(x)), x)
    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)
