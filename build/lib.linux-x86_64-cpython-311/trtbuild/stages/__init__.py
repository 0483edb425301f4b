"""The pipeline stages, one module each, every one `run(ctx) -> record` (trtbuild.context).

export -> clean -> fp16 -> calibrate -> quantize -> validate -> engines -> validate engines
-> bench. `build` runs them in order (trtbuild.pipeline); the single commands compose the
same functions.
"""
