"""tlearn.data.batches and tlearn.data.feed: the fine-tune's image batches from disk and
the head's feature rows from memory, as tf.data, drawn from the seed and the epoch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_config
from tlearn.data.batches import ImageBatches
from tlearn.data.feed import RowBatches
from tlearn.data.store import Split, SplitReader, save_split


@pytest.fixture
def split(tmp_path) -> SplitReader:
    rng = np.random.default_rng(0)
    save_split(tmp_path / "train", Split(rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
                                         np.arange(10) % 2, np.array([str(i) for i in range(10)])))
    return SplitReader(tmp_path / "train")


def epoch(batches: ImageBatches) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the current epoch, through the pipeline fit takes."""
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in batches.dataset))
    return np.concatenate(xs), np.concatenate(ys)


def test_validation_batches_are_the_split_in_order(split):
    batches = ImageBatches(split, 2, batch_size=4)
    assert len(batches) == 3
    x, y = epoch(batches)
    assert x.dtype == np.float32 and np.array_equal(x, split.load().images.astype("float32"))
    assert np.array_equal(y.argmax(1), split.labels) and y.shape == (10, 2)


def test_training_batches_depend_on_the_seed_and_epoch_alone(split):
    flips = dataclasses.replace(make_config().augment, rotation=0.0, translation=0.0, zoom=0.0,
                                contrast=0.0, horizontal_flip=True)
    a, b = (ImageBatches(split, 2, 4, seed=1, augment=flips) for _ in range(2))
    a.set_epoch(3)
    b.set_epoch(0)
    epoch(b)  # another epoch drawn first, as before a resume
    b.set_epoch(3)
    assert all(np.array_equal(u, v) for u, v in zip(epoch(a), epoch(b)))
    a.set_epoch(4)
    x4, y4 = epoch(a)
    x3, y3 = epoch(b)
    assert not np.array_equal(y4, y3)  # another order
    # each image is the original or its mirror, with its own label
    originals = split.load().images.astype("float32")
    for image, label in zip(x4, y4.argmax(1)):
        match = [i for i in range(10) if np.array_equal(image, originals[i])
                 or np.array_equal(image, originals[i][:, ::-1])]
        assert match and split.labels[match[0]] == label


def test_the_pipeline_augments_in_graph_as_the_augmenter_does_eagerly(split):
    # Graph ops in tf.data give what the augmenter gives eagerly with the same draws.
    cfg = dataclasses.replace(make_config().augment, contrast=0.2, horizontal_flip=True)
    batches = ImageBatches(split, 2, 4, seed=1, augment=cfg)
    batches.set_epoch(2)
    piped = list(batches.dataset)
    assert len(piped) == len(batches) == int(batches.dataset.cardinality()) == 3
    for index, (x, y) in enumerate(piped):
        images, labels, *draws = batches.load(index)
        expected = batches.augmenter.apply(images, *draws)
        assert x.dtype == "float32" and np.array_equal(x.numpy(), np.asarray(expected, "float32"))
        assert np.array_equal(y.numpy(), labels)
    # Autotuning's thread made deleting each fit's iterator wait seconds (untuned).
    assert batches.dataset.options().autotune.enabled is False
    rows = RowBatches(np.zeros((5, 2)), np.zeros(5), 2, batch_size=2, seed=0)
    assert rows.dataset.options().autotune.enabled is False


def row_epoch(batches: RowBatches, epoch: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Batch sizes, rows and one-hot labels of one epoch, in the order given."""
    batches.set_epoch(epoch)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in batches.dataset])
    return [len(x) for x in xs], np.concatenate(xs), np.concatenate(ys)


def test_row_batches_give_every_row_once_per_epoch_in_a_seeded_order():
    # 1000 rows in batches of 16 (8 per gather, the last short); row i is [i, -i]
    x = np.stack([np.arange(1000), -np.arange(1000)], axis=1).astype("float32")
    labels = np.arange(1000) % 3
    batches = RowBatches(x, labels, 3, batch_size=16, seed=4)
    sizes, rows, y = row_epoch(batches, 0)
    assert sizes == [16] * 62 + [8] and len(batches) == 63  # as from_tensor_slices().batch()
    assert sorted(rows[:, 0].astype(int)) == list(range(1000))  # every row once
    assert np.array_equal(rows[:, 1], -rows[:, 0])              # rows stay whole
    assert np.array_equal(y, np.eye(3)[labels[rows[:, 0].astype(int)]])
    assert rows.dtype == y.dtype == np.float32
    _, second, _ = row_epoch(batches, 1)
    assert not np.array_equal(second, rows)                      # a new order each epoch
    _, again, _ = row_epoch(batches, 0)
    assert np.array_equal(again, rows)                           # drawn from seed and epoch
    _, fresh, _ = row_epoch(RowBatches(x, labels, 3, 16, seed=4), 1)
    assert np.array_equal(fresh, second)                         # alone: resumable
    _, other_seed, _ = row_epoch(RowBatches(x, labels, 3, 16, seed=5), 0)
    assert not np.array_equal(other_seed, rows)


def test_row_batches_cast_images_to_float32():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    (batch, y), = RowBatches(x, np.array([0, 1]), 2, 8, seed=0).dataset
    assert batch.dtype == "float32" and batch.shape == (2, 4, 4, 3)
    assert sorted(batch.numpy()[:, 0, 0, 0]) == [0, 48]
