"""``data.source: cifar10``: a small tarball in the official format (cifar-10-batches-py/
data_batch_1..5, test_batch, batches.meta; pickled dicts of numpy arrays) served from
127.0.0.1 in place of the real one, downloaded, verified, converted to PNGs per class,
and prepared with validation carved from the official training split."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_config
from tlearn import paths
from tlearn.data import cifar10
from tlearn.errors import DataError
from tlearn.io import read_json
from tlearn.stages import download, prepare

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]
PER_BATCH = 14          # 5 batches: 70 training images, 7 per class
PIXEL = (5, 7)          # row, column of the planted pixel
PLANTED = (201, 17, 99)  # its red, green, blue


def batch(images: np.ndarray, labels: list[int], name: str) -> bytes:
    """A batch as CIFAR-10 stores it: bytes keys, uint8 data (N, 3072) of R, G, B planes."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]},
                        protocol=2)


def tarball(path: Path, members: dict[str, bytes]) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tarball's bytes and the train/test images and labels it holds."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5 * PER_BATCH, 32, 32, 3), dtype=np.uint8)
    train_labels = [i % 10 for i in range(5 * PER_BATCH)]
    train[23][PIXEL] = PLANTED  # data_batch_2's 10th image
    test = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    test_labels = list(range(9, -1, -1))
    members = {"batches.meta": pickle.dumps({b"label_names": [n.encode() for n in NAMES],
                                             b"num_cases_per_batch": PER_BATCH,
                                             b"num_vis": 3072}, protocol=2)}
    for i in range(5):
        part = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        members[f"data_batch_{i + 1}"] = batch(train[part], train_labels[part],
                                               f"training batch {i + 1} of 5")
    members["test_batch"] = batch(test, test_labels, "testing batch 1 of 1")
    data = tarball(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz", members)
    return data, (train, train_labels), (test, test_labels), members


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Serve files from a folder on 127.0.0.1; returns (folder, url of a name)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, lambda name: f"http://127.0.0.1:{httpd.server_port}/{name}"
    httpd.shutdown()
    httpd.server_close()


def serve_as_cifar10(served, monkeypatch, data: bytes, name="cifar-10-python.tar.gz"):
    folder, url = served
    (folder / name).write_bytes(data)
    monkeypatch.setattr(cifar10, "ARCHIVE", cifar10.Archive(
        url=url(name), size=len(data), sha256=hashlib.sha256(data).hexdigest()))


def test_download_converts_the_official_split_to_pngs_per_class(project, served, monkeypatch,
                                                               dataset):
    data, (train, train_labels), (test, test_labels), _ = dataset
    serve_as_cifar10(served, monkeypatch, data)
    metrics = download.run(make_config({"data.source": "cifar10"}))
    assert metrics == {"n_files": 80, "n_classes": 10}

    manifest = read_json(paths.MANIFEST)
    assert manifest["kind"] == "cifar10" and manifest["sha256"] == cifar10.ARCHIVE.sha256
    assert manifest["splits"] == ["train", "test"] and manifest["classes"] == sorted(NAMES)
    assert manifest["counts"] == {"train": dict.fromkeys(sorted(NAMES), 7),
                                  "test": dict.fromkeys(sorted(NAMES), 1)}
    # a known pixel of a known image: training image 23 (data_batch_2's 10th) is a cat
    planted = Image.open(paths.RAW / "train" / "cat" / "train_00023.png")
    assert planted.size == (32, 32) and planted.mode == "RGB"
    assert tuple(np.asarray(planted)[PIXEL]) == PLANTED
    for index in (0, 23, 69):  # every image is its array, byte for byte
        png = paths.RAW / "train" / NAMES[train_labels[index]] / f"train_{index:05d}.png"
        assert np.array_equal(np.asarray(Image.open(png)), train[index])
    assert np.array_equal(np.asarray(Image.open(paths.RAW / "test" / "airplane" /
                                                "test_00009.png")), test[9])
    assert test_labels[9] == 0

    # the official test split stays whole; validation is carved from the training split
    prepared = prepare.run(make_config({"data.source": "cifar10", "prepare.image_size": 32}))
    assert (prepared["n_train"], prepared["n_validation"], prepared["n_test"]) == (60, 10, 10)


def test_a_tarball_that_would_run_code_is_refused(project, served, monkeypatch, dataset,
                                                  tmp_path):
    *_, members = dataset
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = {**members, "data_batch_2": pickle.dumps({b"data": Exploit()}, protocol=2)}
    serve_as_cifar10(served, monkeypatch, tarball(tmp_path / "evil.tar.gz", evil))
    with pytest.raises(DataError, match=r"data_batch_2 is not a CIFAR-10 batch .*refusing "
                                        r"to load (posix|os)\.system"):
        download.run(make_config({"data.source": "cifar10"}))
    assert not marker.exists() and not paths.RAW.exists()


def test_a_tarball_without_the_batches_is_refused(project, served, monkeypatch, dataset,
                                                  tmp_path):
    *_, members = dataset
    partial = {k: v for k, v in members.items() if k != "test_batch"}
    serve_as_cifar10(served, monkeypatch, tarball(tmp_path / "partial.tar.gz", partial))
    with pytest.raises(DataError, match="has no cifar-10-batches-py/test_batch"):
        download.run(make_config({"data.source": "cifar10"}))


def test_the_published_checksum_is_the_one_used(project, dataset):
    assert cifar10.ARCHIVE.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="data.sha256: cifar10 is verified against its "
                                        "published sha256 6d958be0"):
        download.run(make_config({"data.source": "cifar10", "data.sha256": "ab" * 32}))
