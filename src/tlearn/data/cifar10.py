"""CIFAR-10 (``data.source: cifar10``): the official python-version tarball, converted to
``<split>/<class>/<index>.png`` with the official class names and the official split
(50,000 training images in data_batch_1..5, 10,000 test images in test_batch; prepare
carves validation from train).

The batches are Python pickles: dicts of a uint8 array ``data`` (N, 3072: the red, green
and blue 32 x 32 planes of each image, row by row), a list ``labels`` and the file names.
They are read from the tarball without extracting it, by an unpickler that builds numpy
arrays and nothing else: a tampered tarball cannot run code.
"""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tlearn.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    url: str
    size: int      # bytes, as published
    sha256: str


#: https://www.cs.toronto.edu/~kriz/cifar.html publishes the URL, the size (163 MB) and
#: the md5 c58f30108f718f92721af3b95e74349a; the sha256 is the one Keras verifies.
ARCHIVE = Archive(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    size=170_498_071,
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META = "batches.meta"
SIDE = 32

#: The only globals a batch may name: rebuilding a numpy array (numpy 1 and 2 spellings),
#: and ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED = frozenset({("numpy", "ndarray"), ("numpy", "dtype"),
                      ("numpy.core.multiarray", "_reconstruct"),
                      ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")})


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(data: bytes, member: str) -> dict[str, object]:
    """A batch (or the meta file) as a dict with str keys; DataError if it is not one."""
    try:
        # encoding="bytes": the batches were pickled by Python 2, whose str are bytes here
        loaded = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: not a CIFAR batch
        raise DataError(f"data.source: cifar10 member {member} is not a CIFAR-10 batch "
                        f"({exc})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"data.source: cifar10 member {member} is not a CIFAR-10 batch")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in loaded.items()}


def batch_images(batch: dict[str, object], member: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8, labels (N,))`` of one batch."""
    data, labels = batch.get("data"), batch.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * SIDE * SIDE and isinstance(labels, list)
            and len(labels) == len(data)):
        raise DataError(f"data.source: cifar10 member {member} does not hold uint8 data "
                        f"(N, {3 * SIDE * SIDE}) and N labels")
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return images, np.asarray(labels, dtype=np.int64)


def class_names(meta: dict[str, object]) -> list[str]:
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"data.source: cifar10 {META} has no label_names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read(archive: Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The class names and ``{split: (images, labels)}`` of the tarball, in the official
    order (train: data_batch_1..5)."""
    try:
        with tarfile.open(archive) as tar:
            def member(name: str) -> bytes:
                file = None
                try:
                    file = tar.extractfile(f"{FOLDER}/{name}")
                except KeyError:
                    pass
                if file is None:  # missing, or not a regular file
                    raise DataError(f"data.source: {archive} has no {FOLDER}/{name} "
                                    "(not the CIFAR-10 python version)")
                return file.read()

            names = class_names(read_pickle(member(META), META))
            splits = {}
            for split, batches in BATCHES.items():
                parts = [batch_images(read_pickle(member(b), b), b) for b in batches]
                splits[split] = (np.concatenate([images for images, _ in parts]),
                                 np.concatenate([labels for _, labels in parts]))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"data.source: {archive} is not a readable CIFAR-10 tarball "
                        f"({exc})") from None
    for split, (_, labels) in splits.items():
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"data.source: cifar10 {split} has labels outside "
                            f"0..{len(names) - 1}")
    return names, splits


def convert(archive: Path, target: Path) -> None:
    """Write every image of the tarball as ``target/<split>/<class>/<split>_<index>.png``
    (index: its place in the official order; the file names stored in the pickle are not
    used as paths)."""
    names, splits = read(archive)
    for split, (images, labels) in splits.items():
        for folder in {names[label] for label in labels}:
            (target / split / folder).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(tqdm(zip(images, labels), total=len(labels),
                                                    desc=f"cifar10 {split}", unit="img",
                                                    disable=None)):
            Image.fromarray(image).save(target / split / names[label] / f"{split}_{index:05d}.png")
        log.info("cifar10: %s: %d images", split, len(labels))


def check(path: Path, archive: Archive) -> None:
    """The downloaded file has the published size (its sha256 was checked on download)."""
    size = path.stat().st_size
    if size != archive.size:
        raise DataError(f"data.source: {path} has {size:,} bytes, the CIFAR-10 tarball "
                        f"{archive.size:,}")
