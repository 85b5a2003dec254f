"""Arrays on disk that are written and read in batches, so memory never grows with the
dataset: a 40,000-image split is streamed through the stages 64 images at a time.

A prepared split is a folder: ``images.npy`` (uint8 ``(N, size, size, 3)`` RGB),
``labels.npy`` (int64 index into labels.json) and ``files.json`` (each image's path
relative to data/raw, or ``"<file>#<copy>"`` for an augmented copy). Plain ``.npy`` files,
uncompressed, so a batch is one read at a known offset. They are read with explicit reads,
not memory maps: the pages of a memory-mapped file count towards the process' memory
until the kernel needs them back, so a full pass over a large split would look (and, for
``ru_maxrss``, be) as large as the split.

``preprocess.json`` beside the splits records how the images were made (size and resize
mode): later stages check it against params.yaml, and it travels with the trained model
so ``tlearn predict`` square-ifies new images exactly as the training images were.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlearn.errors import DataError
from tlearn.io import file_digest, read_json, write_json

IMAGES, LABELS, FILES = "images.npy", "labels.npy", "files.json"
BATCH_SIZE = 64


# --------------------------------------------------------------------------------------
# One .npy array, written and read a batch at a time
# --------------------------------------------------------------------------------------


class ArrayWriter:
    """Write an ``(n, *item_shape)`` .npy file batch by batch; ``n`` is known up front.
    The file is complete (every row written) when the ``with`` block ends, else it is an
    error."""

    def __init__(self, path: Path, n: int, item_shape: tuple[int, ...], dtype: str):
        self.path, self.n, self.dtype = Path(path), n, np.dtype(dtype)
        self.item_shape, self.written = tuple(item_shape), 0
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (n, *self.item_shape)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.item_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, expected "
                             f"{self.item_shape}")
        self.file.write(rows.tobytes())
        self.written += len(rows)

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.file.close()
        if error is None and self.written != self.n:
            raise ValueError(f"{self.path}: {self.written} rows written, {self.n} declared")


class ArrayReader:
    """Rows of a .npy file read on demand (a slice, or any rows by index)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise DataError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` in one read."""
        stop = len(self) if stop is None else min(stop, len(self))
        count = max(stop - start, 0)
        data = np.fromfile(self.path, dtype=self.dtype, count=count * self.row_bytes
                           // self.dtype.itemsize, offset=self.offset + start * self.row_bytes)
        return data.reshape((count, *self.shape[1:]))

    def read_into(self, out: np.ndarray, start: int = 0) -> np.ndarray:
        """Rows ``start:start + len(out)`` read straight into ``out`` (C-contiguous, this
        file's dtype and row shape): no temporary array, so filling a slice of a larger
        array costs nothing beyond that array."""
        self._check_out(out, len(out))
        if start + len(out) > len(self):
            raise ValueError(f"{self.path}: rows {start}:{start + len(out)} of {len(self)}")
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * self.row_bytes)
            done = 0
            while done < len(view):  # a raw read may return fewer bytes than asked
                got = f.readinto(view[done:])
                if not got:
                    raise DataError(f"{self.path}: the file ends before row {len(self)}")
                done += got
        return out

    def take(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Rows in the order given (a shuffled batch): one positioned read per row; into
        ``out`` when given (as :meth:`read_into`)."""
        if out is None:
            out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        self._check_out(out, len(indices))
        view = out.reshape(-1).view(np.uint8).reshape(len(indices), self.row_bytes)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for row, index in enumerate(indices):
                view[row] = np.frombuffer(
                    os.pread(fd, self.row_bytes, self.offset + int(index) * self.row_bytes),
                    dtype=np.uint8)
        finally:
            os.close(fd)
        return out

    def batches(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield self.read(start, start + batch_size)

    def _check_out(self, out: np.ndarray, rows: int) -> None:
        if (out.shape != (rows, *self.shape[1:]) or out.dtype != self.dtype
                or not out.flags.c_contiguous):
            raise ValueError(f"{self.path}: cannot read {rows} rows of {self.shape[1:]} "
                             f"{self.dtype} into a {'' if out.flags.c_contiguous else 'non-'}"
                             f"contiguous {out.shape} {out.dtype} array")


# --------------------------------------------------------------------------------------
# Image splits
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A split (or a batch of one) in memory."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64 index into labels.json
    files: np.ndarray   # (N,) str, path relative to data/raw (or "<file>#<copy>")

    def __len__(self) -> int:
        return len(self.labels)


class SplitReader:
    """A prepared split on disk: labels and file names in memory, images on demand."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        if not (folder / IMAGES).is_file():
            raise DataError(f"{folder}: not a prepared split (no {IMAGES}); run `tlearn prepare`")
        self.folder, self.images = folder, ArrayReader(folder / IMAGES)
        self.labels = np.load(folder / LABELS, allow_pickle=False)
        self.files = np.array(read_json(folder / FILES), dtype=str)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.images.shape[1:]

    def batches(self, batch_size: int = BATCH_SIZE) -> Iterator[Split]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield Split(self.images.read(start, stop), self.labels[start:stop],
                        self.files[start:stop])

    def load(self) -> Split:
        """All of it in memory: for small splits, tests and figures."""
        return Split(self.images.read(), self.labels, self.files)


class SplitWriter:
    """Write a split of ``n`` images batch by batch into a new folder."""

    def __init__(self, folder: Path, n: int, image_shape: tuple[int, ...]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images = ArrayWriter(self.folder / IMAGES, n, image_shape, "uint8")
        self.labels: list[np.ndarray] = []
        self.files: list[str] = []

    def write(self, batch: Split) -> None:
        self.images.write(batch.images)
        self.labels.append(np.asarray(batch.labels, dtype=np.int64))
        self.files += [str(f) for f in batch.files]

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.images.__exit__(kind, error, traceback)
        if error is None:
            labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
            np.save(self.folder / LABELS, labels)
            self.folder.joinpath(FILES).write_text(json.dumps(self.files), encoding="utf-8")


def split_digest(folder: Path) -> str:
    """sha256 of a split's files together: identifies the split whatever its folder."""
    digest = hashlib.sha256()
    for name in (IMAGES, LABELS, FILES):
        digest.update(f"{name}\0{file_digest(Path(folder) / name)}\n".encode())
    return digest.hexdigest()


def save_split(folder: Path, split: Split) -> None:
    """A whole in-memory split to disk (small data and tests)."""
    with SplitWriter(folder, len(split), split.images.shape[1:]) as writer:
        writer.write(split)


def load_split(folder: Path) -> Split:
    return SplitReader(folder).load()


# --------------------------------------------------------------------------------------
# How the images were made
# --------------------------------------------------------------------------------------


def save_preprocess(path: Path, image_size: int, resize_mode: str) -> None:
    write_json(path, {"image_size": image_size, "resize_mode": resize_mode})


def load_preprocess(path: Path) -> dict:
    if not path.is_file():  # prepared by an older tlearn, or not at all
        raise DataError(f"{path} not found: run `tlearn prepare` (or `dvc repro -f prepare`)")
    return read_json(path)


def check_preprocess(path: Path, image_size: int, resize_mode: str) -> None:
    """Fail in one line when the prepared images are not what params.yaml now asks for
    (a stage run by hand after editing ``prepare`` without rerunning prepare)."""
    made = load_preprocess(path)
    wanted = {"image_size": image_size, "resize_mode": resize_mode}
    if made != wanted:
        raise DataError(f"{path.parent} holds {made['image_size']} px {made['resize_mode']} "
                        f"images but params.yaml asks for {image_size} px {resize_mode}: "
                        "run `tlearn prepare` (or `dvc repro`)")
