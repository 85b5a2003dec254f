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
from tlearn.data.store import ArrayReader, ArrayWriter, SplitReader
from tlearn.errors import DataError


@dataclass(frozen=True)
class FeatureSet:
    # (N, D) pooled vectors, or (N, h, w, C) maps for a flatten head; from open_split,
    # an ArrayReader of them on disk
    x: np.ndarray | ArrayReader
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
    # np.load reads a plain .npy file straight into the one array it returns.
    where = feature_folder(split, folder)
    return FeatureSet(x=np.load(where / "x.npy"), y=np.load(where / "y.npy"))


def open_split(split: str, folder: Path = paths.FEATURES) -> FeatureSet:
    """A split's labels in memory and its features on disk (``x`` an
    :class:`~tlearn.data.store.ArrayReader`): for scoring a chunk at a time, so the split's
    size does not count in memory."""
    where = feature_folder(split, folder)
    return FeatureSet(x=ArrayReader(where / "x.npy"), y=np.load(where / "y.npy"))


#: The splits the head (and tuning and the baselines) train on, in this order.
TRAINING_SPLITS = ("train", "augmented")


def training_labels(folder: Path = paths.FEATURES) -> np.ndarray:
    """The class indices of :func:`load_training`'s rows, without reading the features
    (to choose a sample of the rows first)."""
    return np.concatenate([np.load(feature_folder(s, folder) / "y.npy")
                           for s in TRAINING_SPLITS])


def load_training(folder: Path = paths.FEATURES, rows: np.ndarray | None = None) -> FeatureSet:
    """Training features: the original training split plus its augmented copies, each
    read straight into its part of one array (concatenating loaded parts held the whole
    twice). ``rows``: only these rows of that concatenation (ascending), read one by one, so
    a sample of a large set costs the sample's memory, not the set's."""
    readers = [ArrayReader(feature_folder(s, folder) / "x.npy") for s in TRAINING_SPLITS]
    first = readers[0]
    for reader in readers[1:]:
        if (reader.shape[1:], reader.dtype) != (first.shape[1:], first.dtype):
            raise DataError(f"{reader.path}: rows of {reader.shape[1:]} {reader.dtype}, but "
                            f"{first.path} has {first.shape[1:]} {first.dtype}")
    y = training_labels(folder)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if np.any(np.diff(rows) <= 0) or (len(rows) and not 0 <= rows[0] <= rows[-1] < len(y)):
            raise ValueError(f"rows must ascend within 0..{len(y) - 1}")
        y = y[rows]
    x = np.empty((len(y), *first.shape[1:]), first.dtype)
    start = 0  # where this part's rows begin in the concatenation
    for reader in readers:
        if rows is None:
            reader.read_into(x[start:start + len(reader)])
        else:  # ascending rows: this part's fill one contiguous slice of x
            lo, hi = np.searchsorted(rows, [start, start + len(reader)])
            reader.take(rows[lo:hi] - start, out=x[lo:hi])
        start += len(reader)
    return FeatureSet(x, y)
