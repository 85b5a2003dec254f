"""Images decoded in worker processes, in order, a bounded number of batches ahead.

prepare needs all files decoded before it can split them (a file that does not decode is
quarantined and takes no part in the split), but must not hold the pixels in memory: the
workers decode (:func:`decode_ahead`), and the main process appends each image to a
scratch ``.npy`` in file order as the results arrive (:func:`decode_all`). ``tlearn
probe`` feeds the frozen base from :func:`decode_ahead` the same way.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
from tqdm import tqdm

from tlearn.data.images import BadImage, load_rgb
from tlearn.data.store import ArrayWriter
from tlearn.errors import DataError
from tlearn.io import file_digest

MANIFEST = "manifest.json"
BATCH = 16  # files per task sent to a worker
#: Decoded images waiting to be used at most (bytes): decoding runs ahead (in tlearn
#: probe, while TensorFlow imports and the base is built), but a large folder never sits
#: in memory.
DECODED_AHEAD_BYTES = 256 * 2**20
T = TypeVar("T")
Loaded = tuple[np.ndarray | None, str | None]  # load: (the image, None) or (None, why not)


class RawFile(NamedTuple):
    path: str          # relative to the raw folder
    label: str         # class name
    split: str | None  # the split the source gave, or None


class Decoded(NamedTuple):
    digest: str        # sha256 of the file's bytes (finds exact duplicates)
    error: str | None  # why it is quarantined, or None when its pixels are in the array


def list_files(raw: Path, has_splits: bool) -> list[RawFile]:
    """Every image file of ``raw/[<split>/]<class>/``, sorted; hidden files left out."""
    found = []
    for path in sorted(raw.rglob("*")):
        rel = path.relative_to(raw)
        if not path.is_file() or rel.as_posix() == MANIFEST \
                or any(p.startswith(".") for p in rel.parts):
            continue
        if has_splits and len(rel.parts) >= 3:
            found.append(RawFile(rel.as_posix(), rel.parts[1], rel.parts[0]))
        elif not has_splits and len(rel.parts) >= 2:
            found.append(RawFile(rel.as_posix(), rel.parts[0], None))
    return found


def decode_all(raw: Path, files: list[RawFile], scratch: Path, size: int, mode: str,
               max_pixels: int, min_side: int) -> list[Decoded]:
    """Decode ``files`` into row i of ``scratch`` (uint8 ``(len(files), size, size, 3)``;
    a quarantined file leaves its row black). Returns each file's digest and error."""
    decode = functools.partial(_decode, size=size, mode=mode, max_pixels=max_pixels,
                               min_side=min_side)
    blank = np.zeros((1, size, size, 3), np.uint8)
    results = []
    with worker_pool() as pool, \
            ArrayWriter(scratch, len(files), (size, size, 3), "uint8") as out:
        decoded = decode_ahead(pool, decode, [raw / f.path for f in files], BATCH,
                               ahead=batches_ahead(BATCH, size))
        for digest, image, error in tqdm(decoded, total=len(files), desc="prepare",
                                         unit="img", disable=None):
            out.write(blank if image is None else image[None])
            results.append(Decoded(digest, error))
    return results


@contextlib.contextmanager
def worker_pool() -> Iterator[ProcessPoolExecutor]:
    """Decoding processes (:func:`worker_count`). A worker that dies (out of memory) fails
    the work (BrokenProcessPool) instead of hanging it, as ``multiprocessing.Pool`` does.
    Forked when TensorFlow is not yet imported (a fork after it is unsafe), else spawned;
    the workers leave Ctrl-C to the main process, and the CPU to it when it needs it (they
    run niced: in tlearn probe, its imports are what the decoding must not delay). Pending
    work is dropped on the way out."""
    method = "spawn" if "tensorflow" in sys.modules else "fork"
    pool = ProcessPoolExecutor(worker_count(), mp_context=multiprocessing.get_context(method),
                               initializer=_worker_start)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _worker_start() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(10)  # below the main process


def batches_ahead(batch_size: int, size: int) -> int:
    """How many batches of ``size`` px images :data:`DECODED_AHEAD_BYTES` holds."""
    return max(1, DECODED_AHEAD_BYTES // (batch_size * size * size * 3))


def decode_ahead(pool: ProcessPoolExecutor, load: Callable[[Path], T], files: Sequence[Path],
                 batch_size: int, ahead: int) -> Iterator[T]:
    """``load`` of each file in ``pool``, in order. The first ``ahead`` batches of
    ``batch_size`` are submitted before this returns, so decoding starts now; each batch
    taken submits the next one."""
    starts = iter(range(0, len(files), batch_size))
    pending: deque[Future] = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append(pool.submit(_load_all, load, files[start:start + batch_size]))

    for _ in range(ahead):
        submit()

    def results() -> Iterator[T]:
        while pending:
            try:
                batch = pending.popleft().result()
            except BrokenProcessPool:
                raise DataError("a process decoding the images died (out of memory?)") from None
            submit()
            yield from batch

    return results()


def _load_all(load: Callable[[Path], T], files: Sequence[Path]) -> list[T]:
    return [load(path) for path in files]


def worker_count() -> int:
    """Decoding processes: one per core, at most 8."""
    return min(os.cpu_count() or 1, 8)


def load(path: Path, size: int, mode: str, max_pixels: int, min_side: int) -> Loaded:
    """``(the image as prepare makes it, None)``, or ``(None, why it cannot be used)``."""
    try:
        return load_rgb(path, size, mode, max_pixels, min_side), None
    except BadImage as exc:
        return None, str(exc)


def _decode(path: Path, size: int, mode: str, max_pixels: int, min_side: int):
    """Worker: ``(sha256 of the bytes, image array or None, quarantine reason or None)``."""
    return file_digest(path), *load(path, size, mode, max_pixels, min_side)
