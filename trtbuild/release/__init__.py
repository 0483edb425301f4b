"""Releases (#11): many models x precisions x GPU architectures from one manifest.

manifest.py  `load(path)` reads and checks the TOML manifest; `Manifest.jobs()` lists the work
run.py       `release(...)`: the driver, a local pool of spawned workers, resume (the CLI's
             `trtbuild release`, the API's `trtbuild.api.release`)
jobs.py      what a worker runs: a model's prepare job, or one (precision, arch) engine job
journal.py   OUT/release.json: the journal, totals, failures, the --baseline comparison
html.py      OUT/release.html
"""
