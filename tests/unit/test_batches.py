"""tlearn.data.batches: training batches from disk, drawn from the seed and the epoch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_config
from tlearn.data.batches import ImageBatches
from tlearn.data.store import Split, SplitReader, save_split


@pytest.fixture
def split(tmp_path) -> SplitReader:
    rng = np.random.default_rng(0)
    save_split(tmp_path / "train", Split(rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
                                         np.arange(10) % 2, np.array([str(i) for i in range(10)])))
    return SplitReader(tmp_path / "train")


def epoch(batches: ImageBatches) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(batches[i] for i in range(len(batches))))
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
