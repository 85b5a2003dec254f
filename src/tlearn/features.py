"""Cached features: the frozen base runs once over every split, so the head phase (and
tuning and the classical baselines) trains on small arrays in seconds instead of images
in minutes. One folder per split: ``x.npy`` (float32 ``(N, D)`` pooled vectors, or
``(N, h, w, C)`` maps for a flatten head) and ``y.npy`` (class indices)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tlearn import paths
from tlearn.data.store import ArrayWriter, SplitReader


@dataclass(frozen=True)
class FeatureSet:
    x: np.ndarray  # (N, D) pooled vectors, or (N, h, w, C) maps for a flatten head
    y: np.ndarray  # (N,) class indices

    def __len__(self) -> int:
        return len(self.y)


def feature_folder(split: str, folder: Path = paths.FEATURES) -> Path:
    return folder / split


def extract(extractor, images: SplitReader, target: Path, batch_size: int) -> tuple[int, ...]:
    """Run ``extractor`` over every image of a split, batch by batch, into ``target``;
    returns the shape of one feature vector (or map)."""
    shape = tuple(int(d) for d in extractor.output.shape[1:])
    target.mkdir(parents=True)
    with ArrayWriter(target / "x.npy", len(images), shape, "float32") as out:
        for batch in tqdm(_float_batches(images, batch_size), total=-(-len(images) // batch_size),
                          desc=target.name, unit="batch", disable=None):
            out.write(np.asarray(extractor.predict_on_batch(batch)))
    np.save(target / "y.npy", images.labels)
    return shape


def _float_batches(images: SplitReader, batch_size: int) -> Iterator[np.ndarray]:
    for batch in images.batches(batch_size):
        yield batch.images.astype("float32")


def save(target: Path, features: FeatureSet) -> None:
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / "x.npy", features.x)
    np.save(target / "y.npy", features.y)


def load(split: str, folder: Path = paths.FEATURES) -> FeatureSet:
    where = feature_folder(split, folder)
    return FeatureSet(x=np.load(where / "x.npy"), y=np.load(where / "y.npy"))


def load_training(folder: Path = paths.FEATURES) -> FeatureSet:
    """Training features: the original training split plus its augmented copies."""
    parts = [load("train", folder), load("augmented", folder)]
    return FeatureSet(x=np.concatenate([p.x for p in parts]),
                      y=np.concatenate([p.y for p in parts]))
