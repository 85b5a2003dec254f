"""tlearn.data.store: arrays and splits written and read in batches."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.data import store
from tlearn.data.store import Split


def images(n: int, size: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_array_written_in_batches_reads_back_whole_in_slices_and_by_index(tmp_path):
    data = images(10)
    with store.ArrayWriter(tmp_path / "a.npy", 10, (6, 6, 3), "uint8") as out:
        for start in range(0, 10, 4):
            out.write(data[start:start + 4])
    assert np.array_equal(np.load(tmp_path / "a.npy"), data)  # a plain .npy file
    reader = store.ArrayReader(tmp_path / "a.npy")
    assert len(reader) == 10 and reader.shape == (10, 6, 6, 3)
    assert np.array_equal(reader.read(3, 7), data[3:7])
    assert np.array_equal(reader.read(8, 99), data[8:])
    assert np.array_equal(reader.take([7, 0, 7, 2]), data[[7, 0, 7, 2]])
    assert np.array_equal(np.concatenate(list(reader.batches(3))), data)


def test_float_arrays_and_a_short_write_is_an_error(tmp_path):
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    with store.ArrayWriter(tmp_path / "x.npy", 5, (4,), "float32") as out:
        out.write(x)
    assert np.array_equal(store.ArrayReader(tmp_path / "x.npy").take([4, 1]), x[[4, 1]])
    with pytest.raises(ValueError, match="3 rows written, 5 declared"):
        with store.ArrayWriter(tmp_path / "y.npy", 5, (4,), "float32") as out:
            out.write(x[:3])
    with pytest.raises(ValueError, match=r"rows of shape \(3,\), expected \(4,\)"):
        with store.ArrayWriter(tmp_path / "z.npy", 5, (4,), "float32") as out:
            out.write(x[:, :3])


def test_split_round_trip_batches_and_digest(tmp_path):
    split = Split(images(7), np.arange(7) % 3, np.array([f"c{i % 3}/{i}.png" for i in range(7)]))
    store.save_split(tmp_path / "train", split)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [
        "files.json", "images.npy", "labels.npy"]
    reader = store.SplitReader(tmp_path / "train")
    assert len(reader) == 7 and reader.image_shape == (6, 6, 3)
    batches = list(reader.batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert list(batches[1].files) == list(split.files[3:6])
    whole = reader.load()
    assert np.array_equal(whole.images, split.images) and list(whole.labels) == list(split.labels)
    digest = store.split_digest(tmp_path / "train")
    store.save_split(tmp_path / "copy", split)
    assert store.split_digest(tmp_path / "copy") == digest      # content, not the folder
    store.save_split(tmp_path / "other", Split(split.images, split.labels[::-1], split.files))
    assert store.split_digest(tmp_path / "other") != digest


def test_a_missing_split_is_one_line(tmp_path):
    with pytest.raises(store.DataError, match="not a prepared split.*run `tlearn prepare`"):
        store.SplitReader(tmp_path / "nothing")


def test_reading_a_large_split_in_batches_keeps_memory_flat(tmp_path):
    """Explicit reads, not a memory map: a pass over 120 MB adds far less than that."""
    import resource

    n, size = 800, 224  # 150 KB per image
    with store.ArrayWriter(tmp_path / "big.npy", n, (size, size, 3), "uint8") as out:
        for _ in range(n // 100):
            out.write(np.full((100, size, size, 3), 7, np.uint8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = 0
    for batch in store.ArrayReader(tmp_path / "big.npy").batches(32):
        total += int(batch[:, 0, 0, 0].sum())
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert total == 7 * n
    assert grown_mb < 40, f"peak memory grew by {grown_mb:.0f} MB"


def test_rows_read_into_a_given_array_in_place(tmp_path):
    x = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    reader = store.ArrayReader(tmp_path / "x.npy")
    out = np.zeros((9, 4), "float32")
    assert reader.read_into(out[2:6], start=1) is not None
    assert np.array_equal(out[2:6], x[1:5]) and not out[:2].any() and not out[6:].any()
    assert np.array_equal(reader.take([5, 0], out=out[:2]), x[[5, 0]])
    assert np.array_equal(out[:2], x[[5, 0]])
    assert reader.take([]).shape == (0, 4)
    with pytest.raises(ValueError, match="rows 4:7 of 6"):
        reader.read_into(out[:3], start=4)
    with pytest.raises(ValueError, match="cannot read 2 rows"):
        reader.read_into(np.zeros((2, 4), "float64"))
