"""Releases (#11): many models x precisions x GPU architectures from one manifest.

`manifest.load(path)` reads and checks the TOML manifest; `Manifest.jobs()` lists the work.
"""
