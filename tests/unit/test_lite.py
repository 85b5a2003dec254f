"""EfficientNet-Lite port: exact ImageNet logits, safe weight reading, strict mapping, cache.

The reference arrays in shared/reference/ were produced by the PyTorch implementation
with the same weights; the port must match them to 1e-4. Models are built once per
module (building costs ~0.5 s each) and share one temporary weights cache.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlearn.errors import TlearnError
from tlearn.models import lite

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
ESPRESSO, TABBY, TIGER_CAT = 967, 281, 282
PHOTO_TOP1 = [967, 282, 560, 657]  # coffee, chelsea, astronaut, rocket


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """Keep the converted weights out of the user's real cache."""
    cache = tmp_path_factory.mktemp("tlearn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLEARN_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """coffee, chelsea, astronaut, rocket; RGB 0..255 at 224 px."""
    return np.load(REFERENCE / "photos_rgb255_224.npy")


@pytest.fixture(scope="module")
def lite0(module_cache) -> keras.Model:
    return lite.build("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, np.ndarray]:
    return lite.load_state_dict(lite.package_weights_file("efficientnet_lite0"))


@pytest.fixture(scope="module")
def untrained_lite0() -> keras.Model:
    return lite.build("efficientnet_lite0", input_shape=(64, 64, 3), weights=None)


def normalise(rgb255: np.ndarray) -> np.ndarray:
    """The preprocessing the backbone registry applies in front of the model."""
    return ((rgb255 - 127.0) / 128.0).astype(np.float32)


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Inference without Model.predict's tracing overhead (a few images per call)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def top5(logits: np.ndarray) -> list[list[int]]:
    return np.argsort(-logits, axis=1)[:, :5].tolist()


# --------------------------------------------------------------------------------------
# helpers that write PyTorch zip-format files by hand (no torch needed)
# --------------------------------------------------------------------------------------

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
                  np.dtype("int64"): "LongStorage"}


def _p_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _p_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _p_ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_p_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _tensor_pickle(key: str, storage: str, numel: int, offset: int,
                   shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Opcodes for ``_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())``."""
    persistent_id = (b"(" + _p_str("storage") + f"ctorch\n{storage}\n".encode()
                     + _p_str(key) + _p_str("cpu") + _p_int(numel) + b"N" + b"t")
    return (b"ctorch._utils\n_rebuild_tensor_v2\n" + b"(" + persistent_id + b"Q"
            + _p_int(offset) + _p_ints(shape) + _p_ints(stride) + b"\x89"
            + b"ccollections\nOrderedDict\n)R" + b"t" + b"R")


def write_torch_zip(path: Path, entries: dict[str, tuple],
                    storages: dict[str, np.ndarray]) -> Path:
    """A zip-format ``.pth`` as torch.save writes it.

    ``entries``: name -> (storage key, offset, shape, stride); ``storages``: key -> flat array.
    """
    body = b"".join(
        _p_str(name) + _tensor_pickle(key, _STORAGE_NAMES[storages[key].dtype],
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


def write_hostile_zip(path: Path, payload: object, protocol: int) -> Path:
    """A zip-format ``.pth`` whose data.pkl is ``pickle.dumps(payload)``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=protocol))
    return path


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


# --------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------


def test_block_counts_and_widths_follow_the_reference_scaling():
    # lite1/2 repeat the middle stages more; first and last stage stay at one block
    counts = {name: len(lite.block_plan(spec)) for name, spec in lite.VARIANTS.items()}
    assert counts == {"efficientnet_lite0": 16, "efficientnet_lite1": 21,
                      "efficientnet_lite2": 21, "efficientnet_lite3": 24,
                      "efficientnet_lite4": 30}
    lite2 = [b.filters_out for b in lite.block_plan(lite.VARIANTS["efficientnet_lite2"])]
    assert sorted(set(lite2)) == [16, 24, 48, 88, 120, 208, 352]
    assert [lite.VARIANTS[f"efficientnet_lite{i}"].resolution for i in range(5)] == \
        [224, 240, 260, 280, 300]


@pytest.mark.parametrize("variant, millions", [("efficientnet_lite3", 8.2),
                                               ("efficientnet_lite4", 13.0)])
def test_shape_only_variants_have_the_published_size(variant, millions):
    model = lite.build(variant, input_shape=(64, 64, 3), weights=None)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == millions  # EfficientNet-Lite README table
    with pytest.raises(lite.WeightsError, match="no ImageNet weights package"):
        lite.build(variant, input_shape=(64, 64, 3))


def test_layers_are_named_for_fine_tuning_and_bn_is_keras_bn(lite0):
    names = [layer.name for layer in lite0.layers]
    for name in ("stem_conv", "block1a_dwconv", "block6a_expand_conv", "block6d_add",
                 "top_conv", "top_bn", "top_activation", "predictions"):
        assert name in names
    assert lite0.name == "efficientnet_lite0"
    bns = [layer for layer in lite0.layers if "bn" in layer.name]
    assert bns and all(isinstance(layer, keras.layers.BatchNormalization) for layer in bns)
    assert {layer.epsilon for layer in bns} == {1e-3}


def test_bad_variant_and_input_shape_are_refused():
    with pytest.raises(TlearnError, match="efficientnet_lite9"):
        lite.build("efficientnet_lite9", weights=None)
    with pytest.raises(TlearnError, match="at least 32"):
        lite.build("efficientnet_lite0", input_shape=(16, 16, 3), weights=None)


# --------------------------------------------------------------------------------------
# exactness against the PyTorch reference
# --------------------------------------------------------------------------------------


def test_lite0_matches_reference_logits_on_random_input(lite0):
    x = np.load(REFERENCE / "lite0_input_normalized_224.npy")
    expected = np.load(REFERENCE / "lite0_logits_normalized_224.npy")
    logits = predict(lite0, x)
    assert np.abs(logits - expected).max() < 1e-4


def test_lite0_matches_reference_logits_on_photos(lite0, photos):
    expected = np.load(REFERENCE / "lite0_logits_photos_224.npy")
    logits = predict(lite0, normalise(photos))
    assert np.abs(logits - expected).max() < 1e-4
    assert logits.argmax(axis=1).tolist() == PHOTO_TOP1


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_load_every_tensor_and_recognise_the_photos(variant, photos):
    size = lite.VARIANTS[variant].resolution
    model = lite.build(variant, input_shape=(size, size, 3))
    state_dict = lite.load_state_dict(lite.package_weights_file(variant))
    tensors = [n for n in state_dict if not n.endswith(".num_batches_tracked")]
    assert len(tensors) == len(model.weights)
    np.testing.assert_array_equal(model.get_layer("top_conv").kernel.numpy(),
                                  state_dict["_conv_head.weight"].transpose(2, 3, 1, 0))

    resized = tf.image.resize(photos[:2], (size, size), method="bicubic").numpy()
    coffee, chelsea = top5(predict(model, normalise(resized)))
    assert ESPRESSO in coffee
    assert TIGER_CAT in chelsea or TABBY in chelsea


# --------------------------------------------------------------------------------------
# include_top=False
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, cells", [(96, 3), (160, 5)])
def test_headless_model_outputs_the_feature_map(size, cells):
    headless = lite.build("efficientnet_lite0", input_shape=(size, size, 3), include_top=False)
    assert headless.name == "efficientnet_lite0"
    assert headless.output.shape == (None, cells, cells, 1280)
    assert all(layer.name not in ("avg_pool", "predictions") for layer in headless.layers)


def test_headless_features_equal_the_full_models_pre_pooling_features(photos):
    headless = lite.build("efficientnet_lite0", input_shape=(96, 96, 3), include_top=False)
    full = lite.build("efficientnet_lite0", input_shape=(96, 96, 3))
    x = normalise(tf.image.resize(photos, (96, 96), method="bicubic").numpy())

    features = predict(headless, x)
    pre_pooling = keras.Model(full.input, full.get_layer("top_activation").output)
    np.testing.assert_array_equal(features, predict(pre_pooling, x))
    assert features.min() >= 0.0 and features.max() <= 6.0  # after ReLU6
    classifier = full.get_layer("predictions")  # pooling + dense on the features = logits
    pooled = features.mean(axis=(1, 2))
    logits = pooled @ classifier.kernel.numpy() + classifier.bias.numpy()
    np.testing.assert_allclose(predict(full, x), logits, atol=1e-4)


# --------------------------------------------------------------------------------------
# the torch-free reader
# --------------------------------------------------------------------------------------


def test_package_file_is_the_legacy_format_and_reads_completely(lite0_state_dict):
    path = lite.package_weights_file("efficientnet_lite0")
    assert path.name == "efficientnet-lite0-57934424.pth" and not zipfile.is_zipfile(path)
    assert len(lite0_state_dict) == 296
    assert lite0_state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state_dict["_fc.weight"].dtype == np.float32
    assert lite0_state_dict["_bn0.num_batches_tracked"].dtype == np.int64


def test_zip_format_with_strides_offsets_and_dtypes(tmp_path):
    shared = np.arange(12, dtype=np.float32)
    half = np.array([0.5, -2.0, 1024.0], dtype=np.float16)
    count = np.array([7], dtype=np.int64)
    path = write_torch_zip(tmp_path / "mixed.pth", {
        "matrix": ("0", 0, (3, 4), (4, 1)),
        "transposed": ("0", 0, (4, 3), (1, 4)),  # non-contiguous view of the same storage
        "tail": ("0", 8, (2, 2), (2, 1)),  # storage offset
        "half": ("1", 0, (3,), (1,)),
        "scalar": ("2", 0, (), ()),
    }, {"0": shared, "1": half, "2": count})

    loaded = lite.load_state_dict(path)
    np.testing.assert_array_equal(loaded["matrix"], shared.reshape(3, 4))
    np.testing.assert_array_equal(loaded["transposed"], shared.reshape(3, 4).T)
    np.testing.assert_array_equal(loaded["tail"], shared[8:].reshape(2, 2))
    np.testing.assert_array_equal(loaded["half"], half)
    assert loaded["half"].dtype == np.float16
    assert loaded["scalar"].shape == () and loaded["scalar"] == 7


def test_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    path = write_torch_zip(tmp_path / "overrun.pth", {"w": ("0", 0, (3, 3), (3, 1))},
                           {"0": np.zeros(4, dtype=np.float32)})
    with pytest.raises(lite.WeightsError, match="outside its storage"):
        lite.load_state_dict(path)


@pytest.mark.parametrize("payload, protocol, refused", [
    (RunsShell, 2, "posix.system"),  # GLOBAL opcode; os.system lives in posix
    (RunsEval, 4, "builtins.eval"),  # STACK_GLOBAL opcode
])
def test_zip_pickle_naming_another_global_is_refused_without_running_it(
        tmp_path, payload, protocol, refused):
    marker = tmp_path / "pwned"
    path = write_hostile_zip(tmp_path / "evil.pth", payload(marker), protocol)
    with pytest.raises(lite.UnsafePickleError, match=refused) as error:
        lite.load_state_dict(path)
    assert isinstance(error.value, TlearnError)
    assert not marker.exists()


@pytest.mark.parametrize("target", [b"ctorch\nFloatStorage\n",
                                    b"ctorch._utils\n_rebuild_tensor_v2\n"])
def test_pickle_cannot_modify_allowed_objects_with_build(tmp_path, target):
    # GLOBAL <allowed>; EMPTY_DICT; 'dtype' -> 'O'; SETITEM; BUILD: would re-type every
    # later FloatStorage in the process (or patch the rebuild function) if accepted
    data_pkl = b"\x80\x02" + target + b"}" + _p_str("dtype") + _p_str("O") + b"s" + b"b."
    path = tmp_path / "build.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
    with pytest.raises(lite.UnsafePickleError, match="BUILD"):
        lite.load_state_dict(path)
    assert lite.SAFE_GLOBALS[("torch", "FloatStorage")].dtype == "<f4"


def test_legacy_pickle_naming_another_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil-legacy.pth"
    path.write_bytes(pickle.dumps(lite.LEGACY_MAGIC, protocol=2)
                     + pickle.dumps(lite.LEGACY_PROTOCOL, protocol=2)
                     + pickle.dumps({"little_endian": True}, protocol=2)
                     + pickle.dumps(RunsEval(marker), protocol=2))
    with pytest.raises(lite.UnsafePickleError, match=r"__builtin__\.eval"):  # protocol 2 name
        lite.load_state_dict(path)
    assert not marker.exists()


def test_non_pytorch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(lite.WeightsError, match="notes.pth"):
        lite.load_state_dict(path)


# --------------------------------------------------------------------------------------
# strict mapping
# --------------------------------------------------------------------------------------


def test_missing_tensor_is_named_and_nothing_is_assigned(untrained_lite0, lite0_state_dict):
    state_dict = dict(lite0_state_dict)
    del state_dict["_blocks.3._bn1.running_var"]
    before = untrained_lite0.get_layer("stem_conv").kernel.numpy()
    with pytest.raises(lite.WeightsError, match=r"missing tensors.*_blocks\.3\._bn1\.running_var"):
        lite.assign_state_dict(untrained_lite0, state_dict)
    np.testing.assert_array_equal(untrained_lite0.get_layer("stem_conv").kernel.numpy(), before)


def test_extra_tensor_is_named(untrained_lite0, lite0_state_dict):
    state_dict = dict(lite0_state_dict)
    state_dict["_blocks.16._bn0.weight"] = np.ones(1152, dtype=np.float32)
    with pytest.raises(lite.WeightsError, match=r"unused tensors.*_blocks\.16\._bn0\.weight"):
        lite.assign_state_dict(untrained_lite0, state_dict)


def test_wrong_shape_is_named(untrained_lite0, lite0_state_dict):
    state_dict = dict(lite0_state_dict)
    state_dict["_fc.bias"] = np.zeros(10, dtype=np.float32)
    with pytest.raises(lite.WeightsError, match=r"_fc\.bias.*predictions"):
        lite.assign_state_dict(untrained_lite0, state_dict)


def test_every_tensor_but_num_batches_tracked_is_assigned(untrained_lite0, lite0_state_dict):
    count = lite.assign_state_dict(untrained_lite0, lite0_state_dict)
    assert count == len(untrained_lite0.weights) == 296 - 49  # 49 BatchNorms' counters


def test_weights_from_a_zip_pth_path_equal_the_package_weights(tmp_path, lite0_state_dict):
    path = write_state_dict_zip(tmp_path / "lite0-copy.pth", lite0_state_dict)
    from_file = lite.build("efficientnet_lite0", input_shape=(64, 64, 3), weights=path)
    from_package = lite.build("efficientnet_lite0", input_shape=(64, 64, 3))
    for a, b in zip(from_file.weights, from_package.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------


def test_second_build_loads_the_cached_weights_h5(tmp_path, monkeypatch, photos):
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path))
    pth = lite.package_weights_file("efficientnet_lite0")
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()[:16]
    expected = tmp_path / f"efficientnet_lite0-{digest}.weights.h5"
    x = normalise(tf.image.resize(photos, (128, 128), method="bicubic").numpy())

    first = predict(lite.build("efficientnet_lite0", input_shape=(128, 128, 3)), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [expected.name]  # no temp files left

    def must_not_convert(path):
        raise AssertionError(f"converted {path} again instead of using the cache")

    monkeypatch.setattr(lite, "load_state_dict", must_not_convert)
    second = predict(lite.build("efficientnet_lite0", input_shape=(128, 128, 3)), x)
    np.testing.assert_array_equal(first, second)
    headless = lite.build("efficientnet_lite0", input_shape=(128, 128, 3), include_top=False)
    assert headless.output.shape == (None, 4, 4, 1280)


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TLEARN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lite.cache_dir() == tmp_path / "tlearn"
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "mine"))
    assert lite.cache_dir() == tmp_path / "mine"


def test_damaged_cache_is_rebuilt_and_keras_weight_files_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "cache"))
    cached = lite.cached_weights_path("efficientnet_lite0",
                                      lite.package_weights_file("efficientnet_lite0"))
    cached.parent.mkdir()
    cached.write_bytes(b"half-written by a killed process")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)

    rebuilt = lite.build("efficientnet_lite0", input_shape=(64, 64, 3), include_top=False)
    assert cached.stat().st_size > 1_000_000  # replaced by the real conversion
    headless_file = tmp_path / "headless.weights.h5"
    rebuilt.save_weights(headless_file)
    for weights in (cached, headless_file):  # full-model and headless Keras weight files
        model = lite.build("efficientnet_lite0", input_shape=(64, 64, 3), include_top=False,
                           weights=weights)
        np.testing.assert_array_equal(predict(model, x), predict(rebuilt, x))
    with pytest.raises(lite.WeightsError, match="headless.weights.h5"):
        lite.build("efficientnet_lite0", input_shape=(64, 64, 3), weights=headless_file)
