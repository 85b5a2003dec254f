"""Training batches straight from a split on disk: shuffled by a seed and the epoch
number, augmented per batch, one-hot labels. A batch's random draws depend on the seed,
the epoch and its index alone, so a resumed run sees exactly what an uninterrupted one
would, whichever thread makes the batch (tf.data makes the next ones while the model
trains)."""

from __future__ import annotations

import math

import keras
import numpy as np

from tlearn.config import AugmentParams
from tlearn.data.augmentation import BATCH, ORDER, Augmenter
from tlearn.data.store import SplitReader


class ImageBatches(keras.utils.PyDataset):
    """Batches of ``(float32 images, one-hot labels)`` from ``split``; shuffled and
    augmented when ``seed`` is given (training), in file order when not (validation)."""

    def __init__(self, split: SplitReader, n_classes: int, batch_size: int,
                 seed: int | None = None, augment: AugmentParams | None = None):
        super().__init__()
        self.split, self.n_classes, self.batch_size = split, n_classes, batch_size
        self.seed = seed
        self.augmenter = Augmenter(augment) if seed is not None and augment is not None else None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's order (from the seed and ``epoch`` alone); each batch's
        augmentation is drawn when the batch is made, from the seed, epoch and its index."""
        n = len(self.split)
        self.epoch = epoch
        self.order = (np.arange(n) if self.seed is None
                      else np.random.default_rng([self.seed, ORDER, epoch]).permutation(n))

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        # Read in file order (sequential on disk), then put back in the drawn order.
        ascending = np.argsort(rows, kind="stable")
        images = np.empty((len(rows), *self.split.image_shape), np.uint8)
        images[ascending] = self.split.images.take(rows[ascending])
        if self.augmenter is not None:
            rng = np.random.default_rng([self.seed, BATCH, self.epoch, index])
            images = self.augmenter(images, rng)
        x = images.astype("float32")
        y = np.eye(self.n_classes, dtype="float32")[self.split.labels[rows]]
        return x, y
