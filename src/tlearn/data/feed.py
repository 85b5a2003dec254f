"""What ``model.fit`` and ``model.evaluate`` take: tf.data pipelines of batches made by a
Python function, without tf.data's autotuning (:func:`untuned`), and the head's batches of
cached feature rows (:class:`RowBatches`). The fine-tune's image batches are
:class:`tlearn.data.batches.ImageBatches`; both draw each epoch from a seed and the epoch
number alone, so a resumed run sees exactly what an uninterrupted one would."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tlearn.data.augmentation import ORDER

#: Batches of the head's rows gathered per Python call (RowBatches): a call per batch
#: made an epoch a fifth longer; a call of 32 (10 MB at 1280 features) left ~40 MB of
#: freed chunks in the allocator's per-thread pools.
HEAD_BATCHES_PER_GATHER = 8


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` without tf.data's autotuning. Its optimisation thread runs in rounds up
    to seconds apart, and deleting an iterator waits for the round in progress: every
    ``model.fit`` or ``evaluate`` call ends by deleting one, which made a fine-tune epoch
    (one ``fit`` call) up to ~8 s, 40%, longer here. A fixed prefetch is all these
    pipelines need."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def batch_pipeline(make: Callable[[int], tuple], *, calls: int,
                   signature: tuple[tf.TensorSpec, ...],
                   graph_fn: Callable[..., tuple] | None = None) -> tf.data.Dataset:
    """What ``make(i)`` returns, for ``i`` in ``range(calls)``, one call ahead of the
    model. ``make`` is Python (numpy) run in tf.data's thread, returning arrays that match
    ``signature``; ``graph_fn``, when given, is traced once into graph ops applied to
    them."""

    def call(index):
        arrays = tf.numpy_function(make, [index], tuple(spec.dtype for spec in signature))
        for array, spec in zip(arrays, signature):
            array.set_shape(spec.shape)
        return graph_fn(*arrays) if graph_fn else tuple(arrays)

    dataset = tf.data.Dataset.range(calls).map(call)
    return untuned(dataset.prefetch(1))


class RowBatches:
    """Shuffled training batches ``(float32 x, one-hot labels)`` gathered from the arrays
    in memory, as tf.data (:attr:`dataset`). ``from_tensor_slices`` + ``shuffle`` held the
    features twice more (a tensor copy and the shuffle buffer); here only the epoch's order
    (one index per row) and the batches in flight are extra.

    Each epoch's order is drawn from the seed and the epoch number alone
    (:meth:`set_epoch`), so a run repeats exactly and each epoch sees every row once in a
    new order. One Python call gathers the rows of ``HEAD_BATCHES_PER_GATHER`` batches and
    tf.data splits them into batches, the ones ``from_tensor_slices(...).batch()`` would
    make."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int,
                 seed: int):
        self.x, self.labels = x, np.asarray(labels, dtype=np.int64)
        self.n_classes, self.batch_size, self.seed = n_classes, batch_size, seed
        self.chunk_rows = batch_size * HEAD_BATCHES_PER_GATHER
        self.set_epoch(0)
        gathered = batch_pipeline(
            self.chunk, calls=math.ceil(len(x) / self.chunk_rows),
            signature=(tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                       tf.TensorSpec((None, n_classes), tf.float32)))
        self.dataset = (gathered.rebatch(batch_size)
                        .apply(tf.data.experimental.assert_cardinality(len(self))))

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's order of the rows (from the seed and ``epoch`` alone)."""
        self.order = np.random.default_rng([self.seed, ORDER, epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and one-hot labels of the epoch's ``index``-th run of ``chunk_rows`` rows.
        Reads ``self.order`` when the batches are made: fit starts after set_epoch."""
        rows = self.order[index * self.chunk_rows:(index + 1) * self.chunk_rows]
        return (self.x[rows].astype(np.float32, copy=False),
                np.eye(self.n_classes, dtype=np.float32)[self.labels[rows]])
