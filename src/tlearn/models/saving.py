"""Keras model files that are the same bytes for the same model.

Keras writes into a ``.keras`` file (a zip) the time of saving, each entry's file time and
mode, and Python object ids (``shared_object_id``: which layers share an object, such as
their dtype policy). DVC hashes the file, so every rerun's model looked new and a fresh
clone's ``make run`` changed ``dvc.lock``. :func:`save_model` writes the zip again with
fixed times and modes and the ids numbered in order of appearance; the weights are the
same bytes already (h5py does not track times).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from tlearn.io import atomic_path

_OBJECT_ID = re.compile(rb'"shared_object_id": (\d+)')
#: Keras' own entries first, in its order; any other (assets) after them by name.
_FIRST = ("metadata.json", "config.json", "model.weights.h5")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold
_FILE_MODE = 0o600 << 16             # what Keras gives the entries it writes from memory
_UNIX = 3                            # ZipInfo.create_system


def save_model(model, path: str | Path) -> None:
    """``model.save`` to ``path``, atomically (a killed save leaves no half file), as the
    same bytes for the same model. The weights are copied through, not held in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent) as scratch:
        saved = Path(scratch) / path.name
        model.save(saved)
        with zipfile.ZipFile(saved) as original, atomic_path(path) as tmp, \
                zipfile.ZipFile(tmp, "w") as rewritten:
            for info in sorted(original.infolist(), key=_entry_order):
                fixed = zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME)
                fixed.compress_type, fixed.external_attr = info.compress_type, _FILE_MODE
                fixed.create_system = _UNIX
                if info.filename in ("metadata.json", "config.json"):
                    rewritten.writestr(fixed, _normalised(info.filename, original.read(info)))
                    continue
                with original.open(info) as source, rewritten.open(
                        fixed, "w", force_zip64=info.file_size > zipfile.ZIP64_LIMIT) as target:
                    shutil.copyfileobj(source, target, 1 << 20)


def _entry_order(info: zipfile.ZipInfo) -> tuple[int, str]:
    return (_FIRST.index(info.filename) if info.filename in _FIRST else len(_FIRST),
            info.filename)


def _normalised(name: str, data: bytes) -> bytes:
    if name == "metadata.json":
        return json.dumps({**json.loads(data), "date_saved": ""}).encode()
    numbers: dict[bytes, int] = {}
    return _OBJECT_ID.sub(lambda m: b'"shared_object_id": %d' % numbers.setdefault(
        m.group(1), len(numbers)), data)
