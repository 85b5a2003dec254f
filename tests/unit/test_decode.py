"""Decoding in worker processes: in order, started at once, a bounded number of batches
ahead, and a clear error when a worker dies."""

from __future__ import annotations

import functools
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

from tlearn.data import decode
from tlearn.errors import DataError


class CountingPool:
    """An executor that runs a task when its result is asked for, and counts the tasks
    waiting; ``broken``: the futures fail as a dead worker's do."""

    def __init__(self, broken: bool = False):
        self.waiting = self.most = 0
        self.broken = broken

    def submit(self, fn, *args):
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        pool = self

        class Future:
            def result(self):
                pool.waiting -= 1
                if pool.broken:
                    raise BrokenProcessPool("a process terminated abruptly")
                return fn(*args)

        return Future()


def test_decoding_starts_at_once_and_runs_ahead_by_at_most_the_given_batches():
    pool = CountingPool()
    decoded = decode.decode_ahead(pool, lambda i: i * 10, list(range(23)), 5, ahead=3)
    assert pool.waiting == 3  # submitted before anything is taken
    assert list(decoded) == [i * 10 for i in range(23)]
    assert pool.most == 3
    assert list(decode.decode_ahead(CountingPool(), lambda i: i, [], 5, ahead=3)) == []
    assert decode.batches_ahead(64, 192) == 37 and decode.batches_ahead(10**6, 224) == 1


def test_a_dead_worker_is_a_data_error_not_a_hang():
    decoded = decode.decode_ahead(CountingPool(broken=True), lambda i: i, [1, 2], 1, ahead=1)
    with pytest.raises(DataError, match=r"a process decoding the images died \(out of memory"):
        next(decoded)


def test_real_workers_decode_images_in_order_and_name_the_bad_ones(tmp_path, img):
    files = [img.save(tmp_path / f"{i}.png", img.solid(10, 12, (i * 20, 0, 0)))
             for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    load = functools.partial(decode.load, size=8, mode="crop", max_pixels=10**6, min_side=1)
    with decode.worker_pool() as pool:  # spawned here: pytest has imported TensorFlow
        loaded = list(decode.decode_ahead(pool, load, [*files, tmp_path / "bad.png"], 2, 2))
    assert [int(image[0, 0, 0]) for image, _ in loaded[:5]] == [0, 20, 40, 60, 80]
    assert loaded[5] == (None, "not an image (unrecognised format)")
    assert all(isinstance(image, np.ndarray) for image, _ in loaded[:5])
