"""Write PyTorch zip-format ``.pth`` files by hand, opcode by opcode (no torch needed).

Used by the reader tests (test_pth.py) and the weight-mapping tests (test_lite_weights.py).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
                  np.dtype("int64"): "LongStorage"}


def pickle_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def pickle_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def pickle_ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(pickle_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _tensor_pickle(key: str, storage: str, numel: int, offset: int,
                   shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Opcodes for ``_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())``."""
    persistent_id = (b"(" + pickle_str("storage") + f"ctorch\n{storage}\n".encode()
                     + pickle_str(key) + pickle_str("cpu") + pickle_int(numel) + b"N" + b"t")
    return (b"ctorch._utils\n_rebuild_tensor_v2\n" + b"(" + persistent_id + b"Q"
            + pickle_int(offset) + pickle_ints(shape) + pickle_ints(stride) + b"\x89"
            + b"ccollections\nOrderedDict\n)R" + b"t" + b"R")


def write_torch_zip(path: Path, entries: dict[str, tuple],
                    storages: dict[str, np.ndarray]) -> Path:
    """A zip-format ``.pth`` as torch.save writes it.

    ``entries``: name -> (storage key, offset, shape, stride); ``storages``: key -> flat array.
    """
    body = b"".join(
        pickle_str(name) + _tensor_pickle(key, _STORAGE_NAMES[storages[key].dtype],
                                          storages[key].size, offset, shape, stride)
        for name, (key, offset, shape, stride) in entries.items())
    data_pkl = b"\x80\x02" + b"ccollections\nOrderedDict\n)R" + b"(" + body + b"u" + b"."
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, flat in storages.items():
            little_endian = flat.astype(flat.dtype.newbyteorder("<"))
            archive.writestr(f"archive/data/{key}", little_endian.tobytes())
    return path


def write_state_dict_zip(path: Path, state_dict: dict[str, np.ndarray]) -> Path:
    """Every tensor contiguous in its own storage."""
    entries, storages = {}, {}
    for i, (name, value) in enumerate(state_dict.items()):
        value = np.ascontiguousarray(value)
        strides = tuple(s // value.itemsize for s in value.strides)
        entries[name] = (str(i), 0, value.shape, strides)
        storages[str(i)] = value.reshape(-1)
    return write_torch_zip(path, entries, storages)
