"""tlearn.features: the cached features read back, the training set (train + augmented
copies) as one array without a second copy, or only the rows a sample needs."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tlearn import features
from tlearn.errors import DataError
from tlearn.features import FeatureSet


def parts(folder, n_train: int = 7, n_augmented: int = 5, dims: int = 3):
    rng = np.random.default_rng(0)
    train = FeatureSet(rng.normal(size=(n_train, dims)).astype("float32"), np.arange(n_train))
    augmented = FeatureSet(rng.normal(size=(n_augmented, dims)).astype("float32"),
                           100 + np.arange(n_augmented))
    features.save(features.feature_folder("train", folder), train)
    features.save(features.feature_folder("augmented", folder), augmented)
    return train, augmented


def test_load_training_is_train_then_augmented(tmp_path):
    train, augmented = parts(tmp_path)
    loaded = features.load_training(tmp_path)
    assert loaded.x.dtype == np.float32 and loaded.x.flags.c_contiguous
    assert np.array_equal(loaded.x, np.concatenate([train.x, augmented.x]))
    assert np.array_equal(loaded.y, np.concatenate([train.y, augmented.y]))
    assert np.array_equal(features.training_labels(tmp_path), loaded.y)


def test_load_training_reads_only_the_rows_asked_for(tmp_path):
    train, augmented = parts(tmp_path)
    whole = features.load_training(tmp_path)
    for rows in ([0, 3, 6, 7, 11], [8, 9], [1, 2], []):
        sample = features.load_training(tmp_path, rows=np.array(rows, dtype=int))
        assert np.array_equal(sample.x, whole.x[rows]) and np.array_equal(sample.y, whole.y[rows])
    for bad in ([3, 1], [2, 2], [12]):
        with pytest.raises(ValueError, match="rows must ascend within 0..11"):
            features.load_training(tmp_path, rows=np.array(bad))


def test_parts_of_different_widths_are_one_line(tmp_path):
    parts(tmp_path)
    features.save(features.feature_folder("augmented", tmp_path),
                  FeatureSet(np.zeros((2, 4), "float32"), np.zeros(2, int)))
    with pytest.raises(DataError, match=r"augmented/x.npy: rows of \(4,\) float32, but"):
        features.load_training(tmp_path)


def test_load_training_holds_the_training_set_once(tmp_path):
    """Concatenating two loaded parts held 2x the set at its peak; reading each part into
    its place in the one array holds it once."""
    n, dims = 4000, 2560  # 2 x 41 MB
    for split in features.TRAINING_SPLITS:
        features.save(features.feature_folder(split, tmp_path),
                      FeatureSet(np.ones((n, dims), "float32"), np.zeros(n, int)))
    tracemalloc.start()  # numpy reports its allocations to it: the call's own peak
    try:
        loaded = features.load_training(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loaded.x.sum() == 2 * n * dims
    assert peak < 1.25 * loaded.x.nbytes, f"peak memory {peak / 2**20:.0f} MB"
