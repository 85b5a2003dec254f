"""Every raw image decoded once, in parallel, into one array on disk.

prepare needs all files decoded before it can split them (a file that does not decode is
quarantined and takes no part in the split), but must not hold the pixels in memory: a
worker pool decodes, and the main process appends each image to a scratch ``.npy`` in
file order as the results arrive.
"""

from __future__ import annotations

import functools
import os
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from tlearn.data.images import BadImage, load_rgb
from tlearn.data.store import ArrayWriter
from tlearn.io import file_digest

MANIFEST = "manifest.json"


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
    with Pool(worker_count()) as pool, \
            ArrayWriter(scratch, len(files), (size, size, 3), "uint8") as out:
        decoded = pool.imap(decode, [raw / f.path for f in files], chunksize=16)
        for digest, image, error in tqdm(decoded, total=len(files), desc="prepare",
                                         unit="img", disable=None):
            out.write(blank if image is None else image[None])
            results.append(Decoded(digest, error))
    return results


def worker_count() -> int:
    """Decoding processes: one per core, at most 8."""
    return min(os.cpu_count() or 1, 8)


def load(path: Path, size: int, mode: str, max_pixels: int, min_side: int,
         ) -> tuple[np.ndarray | None, str | None]:
    """``(the image as prepare makes it, None)``, or ``(None, why it cannot be used)``."""
    try:
        return load_rgb(path, size, mode, max_pixels, min_side), None
    except BadImage as exc:
        return None, str(exc)


def _decode(path: Path, size: int, mode: str, max_pixels: int, min_side: int):
    """Worker: ``(sha256 of the bytes, image array or None, quarantine reason or None)``."""
    return file_digest(path), *load(path, size, mode, max_pixels, min_side)
