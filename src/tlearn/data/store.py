"""Prepared splits on disk: one uncompressed ``.npz`` per split (uint8 images, int labels,
source file names). Uncompressed so reading is a plain memory copy (see ``make bench``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64 index into labels.json
    files: np.ndarray   # (N,) str, path relative to data/raw (or "<file>#<copy>")

    def __len__(self) -> int:
        return len(self.labels)


def save_split(path: Path, split: Split) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
        np.savez(f, images=split.images, labels=split.labels, files=split.files)


def load_split(path: Path) -> Split:
    with np.load(path, allow_pickle=False) as data:
        return Split(images=data["images"], labels=data["labels"], files=data["files"])
