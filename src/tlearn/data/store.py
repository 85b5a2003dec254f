"""Prepared splits on disk: one uncompressed ``.npz`` per split (uint8 images, int labels,
source file names). Uncompressed so reading is a plain memory copy (see ``make bench``).

``preprocess.json`` beside them records how the images were made (size and resize mode):
later stages check it against params.yaml, and it travels with the trained model so
``tlearn predict`` square-ifies new images exactly as the training images were."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlearn.errors import DataError
from tlearn.io import read_json, write_json


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


def save_preprocess(path: Path, image_size: int, resize_mode: str) -> None:
    write_json(path, {"image_size": image_size, "resize_mode": resize_mode})


def load_preprocess(path: Path) -> dict:
    if not path.is_file():  # prepared by an older tlearn, or not at all
        raise DataError(f"{path} not found: run `tlearn prepare` (or `dvc repro -f prepare`)")
    return read_json(path)


def check_preprocess(path: Path, image_size: int, resize_mode: str) -> None:
    """Fail in one line when the prepared images are not what params.yaml now asks for
    (a stage run by hand after editing ``prepare`` without rerunning prepare)."""
    made = load_preprocess(path)
    wanted = {"image_size": image_size, "resize_mode": resize_mode}
    if made != wanted:
        raise DataError(f"{path.parent} holds {made['image_size']} px {made['resize_mode']} "
                        f"images but params.yaml asks for {image_size} px {resize_mode}: "
                        "run `tlearn prepare` (or `dvc repro`)")
