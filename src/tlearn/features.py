"""Cached features: the frozen base runs once over every split, so the head phase
(and tuning) trains on small arrays in seconds instead of images in minutes."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlearn import paths


@dataclass(frozen=True)
class FeatureSet:
    x: np.ndarray  # (N, D) pooled vectors, or (N, h, w, C) maps for a flatten head
    y: np.ndarray  # (N,) class indices

    def __len__(self) -> int:
        return len(self.y)


def extract(extractor: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    if len(images) == 0:
        return np.zeros((0, *extractor.output.shape[1:]), dtype="float32")
    return extractor.predict(images, batch_size=batch_size, verbose=1 if sys.stdout.isatty() else 0)


def feature_file(split: str, folder: Path = paths.FEATURES) -> Path:
    return folder / f"{split}.npz"


def save(path: Path, features: FeatureSet) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=features.x, y=features.y)


def load(split: str, folder: Path = paths.FEATURES) -> FeatureSet:
    with np.load(feature_file(split, folder)) as data:
        return FeatureSet(x=data["x"], y=data["y"])


def load_training(folder: Path = paths.FEATURES) -> FeatureSet:
    """Training features: the original training split plus its augmented copies."""
    parts = [load("train", folder), load("augmented", folder)]
    return FeatureSet(x=np.concatenate([p.x for p in parts]),
                      y=np.concatenate([p.y for p in parts]))
