"""The fine-tune's batches, straight from a split on disk: shuffled by a seed and the epoch
number and augmented per batch for training, in file order for validation. A batch's
random draws depend on the seed, the epoch and its index alone, so a resumed run sees
exactly what an uninterrupted one would, whichever thread makes the batch (tf.data makes
the next one while the model trains)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tlearn.config import AugmentParams
from tlearn.data.augmentation import BATCH, ORDER, Augmenter
from tlearn.data.feed import batch_pipeline
from tlearn.data.store import SplitReader

NO_AUGMENTATION = AugmentParams(copies=0, rotation=0.0, translation=0.0, zoom=0.0,
                                contrast=0.0, horizontal_flip=False, vertical_flip=False)


class ImageBatches:
    """Batches of ``(float32 images, one-hot labels)`` from ``split``; shuffled and
    augmented when ``seed`` is given (training), in file order when not (validation).
    :attr:`dataset` is what fit takes: a batch's images, labels and random draws are
    read in numpy (:meth:`load`); its pixels are augmented and cast by graph ops in tf.data
    (the same Keras ops run eagerly inside a ``numpy_function`` took twice as long)."""

    def __init__(self, split: SplitReader, n_classes: int, batch_size: int,
                 seed: int | None = None, augment: AugmentParams | None = None):
        self.split, self.n_classes, self.batch_size = split, n_classes, batch_size
        self.seed = seed
        # Validation (no seed) is not augmented: an augmenter with nothing to do.
        self.augmenter = Augmenter(augment if seed is not None and augment is not None
                                   else NO_AUGMENTATION)
        self.set_epoch(0)
        h, w, channels = split.image_shape
        self.dataset = batch_pipeline(
            self.load, calls=len(self), graph_fn=self._augment,
            signature=(tf.TensorSpec((None, h, w, channels), tf.uint8),
                       tf.TensorSpec((None, n_classes), tf.float32),
                       tf.TensorSpec((None, 8), tf.float32),            # affine transforms
                       tf.TensorSpec((None, 1, 1, 1), tf.float32)))     # contrast factors

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's order (from the seed and ``epoch`` alone); each batch's
        augmentation is drawn when the batch is made, from the seed, epoch and its index."""
        n = len(self.split)
        self.epoch = epoch
        self.order = (np.arange(n) if self.seed is None
                      else np.random.default_rng([self.seed, ORDER, epoch]).permutation(n))

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def load(self, index: int) -> tuple[np.ndarray, ...]:
        """Batch ``index`` of this epoch: uint8 images, one-hot labels, and the augmenter's
        draws for it (the identity without augmentation). Reads ``self.order`` when the
        batch is made: fit starts after :meth:`set_epoch`."""
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        # Read in file order (sequential on disk), then put back in the drawn order.
        ascending = np.argsort(rows, kind="stable")
        images = np.empty((len(rows), *self.split.image_shape), np.uint8)
        images[ascending] = self.split.images.take(rows[ascending])
        labels = np.eye(self.n_classes, dtype="float32")[self.split.labels[rows]]
        rng = np.random.default_rng([self.seed or 0, BATCH, self.epoch, index])
        return images, labels, *self.augmenter.draw(len(rows), *images.shape[1:3], rng)

    def _augment(self, images, labels, transforms, factors):
        return tf.cast(self.augmenter.apply(images, transforms, factors), tf.float32), labels
