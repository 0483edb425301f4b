"""labels.csv (`file,label`) beside validation samples: label accuracy for classifiers."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import TrtBuildError


def read_labels(folder: Path) -> dict[str, int] | None:
    """labels.csv (`file,label`, header optional) in a validation directory, if present."""
    path = Path(folder) / "labels.csv"
    return read_labels_file(path) if path.is_file() else None


def read_labels_file(path: Path) -> dict[str, int]:
    """A `file,label` CSV (header optional) at `path`: {file: label}."""
    labels = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) >= 2 and row[1].strip().lstrip("-").isdigit():
                    labels[row[0].strip()] = int(row[1])
    except UnicodeDecodeError as e:
        raise TrtBuildError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    except (csv.Error, OSError) as e:
        raise TrtBuildError(f"{path}: not a readable labels.csv ({e})")
    return labels


